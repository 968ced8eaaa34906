//! Validation of a pod spec as a whole (a pod's, or a workload's
//! template): its containers and volumes each, restart policy, grace
//! period, readiness and scheduling gates, deadline, tolerations, host
//! aliases, node selector and node name.

use skiff::pb::core::v1::PodSpec;
use skiff::validation::{self, FieldErrors};

use super::containers::{validate_container, validate_hooks_and_probes};
use super::placement::validate_placement;
use super::volumes::validate_volume_paths;
use crate::strategy::{securitycontext, unsupported};

pub(in crate::strategy) fn validate_pod_spec(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
    if spec.containers.is_empty() {
        errors.required(format!("{path}.containers"));
    }
    // A class's name is a subdomain: a template naming a malformed one
    // is refused itself, not each pod made from it.
    if !spec.priority_class_name.is_empty()
        && let Err(reason) = validation::is_dns1123_subdomain(&spec.priority_class_name)
    {
        errors.invalid(
            format!("{path}.priorityClassName"),
            &spec.priority_class_name,
            reason,
        );
    }
    if let Some(policy) = spec.preemption_policy.as_deref()
        && !crate::strategy::scheduling::PREEMPTION_POLICIES.contains(&policy)
    {
        errors.not_supported(
            format!("{path}.preemptionPolicy"),
            policy,
            crate::strategy::scheduling::PREEMPTION_POLICIES,
        );
    }
    let mut names = std::collections::HashSet::new();
    let volumes: std::collections::HashSet<&str> =
        spec.volumes.iter().map(|v| v.name.as_str()).collect();
    let mut volume_names = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        if let Err(reason) = validation::is_dns1123_label(&v.name) {
            errors.invalid(format!("{path}.volumes[{i}].name"), &v.name, &reason);
        } else if !volume_names.insert(v.name.as_str()) {
            errors.duplicate(format!("{path}.volumes[{i}].name"), &v.name);
        }
        validate_volume_paths(&format!("{path}.volumes[{i}]"), v, errors);
    }
    for (list, containers) in [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
    ] {
        for (i, c) in containers.iter().enumerate() {
            let cpath = format!("{path}.{list}[{i}]");
            validate_container(&cpath, c, &volumes, errors);
            validate_hooks_and_probes(&cpath, c, list == "initContainers", errors);
            securitycontext::validate_container(&cpath, c, errors);
            unsupported::container(&cpath, c, errors);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errors.push(
                    format!("{cpath}.name"),
                    format!("Duplicate value: {:?}", c.name),
                );
            }
        }
    }
    if !matches!(
        spec.restart_policy.as_str(),
        "Always" | "OnFailure" | "Never"
    ) {
        errors.push(
            format!("{path}.restartPolicy"),
            format!(
                "Unsupported value: {:?}: supported values: \"Always\", \"OnFailure\", \"Never\"",
                spec.restart_policy
            ),
        );
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        errors.push(
            format!("{path}.terminationGracePeriodSeconds"),
            "Invalid value: must be >= 0",
        );
    }
    securitycontext::validate_pod(path, spec, errors);
    validate_placement(path, spec, errors);
    for (i, gate) in spec.readiness_gates.iter().enumerate() {
        if let Err(reason) = validation::is_qualified_name(&gate.condition_type) {
            errors.invalid(
                format!("{path}.readinessGates[{i}].conditionType"),
                &gate.condition_type,
                &reason,
            );
        }
    }
    let mut gates = std::collections::HashSet::new();
    for (i, gate) in spec.scheduling_gates.iter().enumerate() {
        let gpath = format!("{path}.schedulingGates[{i}].name");
        if let Err(reason) = validation::is_qualified_name(&gate.name) {
            errors.invalid(&gpath, &gate.name, &reason);
        } else if !gates.insert(gate.name.as_str()) {
            errors.duplicate(gpath, &gate.name);
        }
    }
    if let Some(deadline) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&deadline)
    {
        errors.invalid(
            format!("{path}.activeDeadlineSeconds"),
            deadline,
            "must be between 1 and 2147483647, inclusive",
        );
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        let tpath = format!("{path}.tolerations[{i}]");
        match t.operator.as_str() {
            "" | "Equal" => {
                if t.key.is_empty() {
                    errors.invalid(
                        format!("{tpath}.operator"),
                        &t.operator,
                        "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
                    );
                }
            }
            "Exists" => {
                if !t.value.is_empty() {
                    errors.invalid(
                        format!("{tpath}.operator"),
                        &t.value,
                        "value must be empty when `operator` is 'Exists'",
                    );
                }
            }
            other => errors.not_supported(format!("{tpath}.operator"), other, &["Equal", "Exists"]),
        }
        match t.effect.as_str() {
            "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute" => {}
            other => errors.not_supported(
                format!("{tpath}.effect"),
                other,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ),
        }
        if t.toleration_seconds.is_some() && t.effect != "NoExecute" {
            errors.invalid(
                format!("{tpath}.effect"),
                &t.effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            );
        }
    }
    for (i, alias) in spec.host_aliases.iter().enumerate() {
        let apath = format!("{path}.hostAliases[{i}]");
        if alias.ip.parse::<std::net::IpAddr>().is_err() {
            errors.invalid(
                format!("{apath}.ip"),
                &alias.ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            );
        }
        for (j, name) in alias.hostnames.iter().enumerate() {
            if let Err(reason) = validation::is_dns1123_subdomain(name) {
                errors.invalid(format!("{apath}.hostnames[{j}]"), name, &reason);
            }
        }
    }
    unsupported::pod_spec(path, spec, errors);
    validation::validate_labels(&format!("{path}.nodeSelector"), &spec.node_selector, errors);
    if !spec.node_name.is_empty()
        && let Err(reason) = validation::is_dns1123_subdomain(&spec.node_name)
    {
        errors.invalid(format!("{path}.nodeName"), &spec.node_name, &reason);
    }
}
