//! Pods: defaults (Kubernetes'), validation of the spec, its volumes
//! and containers, ServiceAccount admission and the binding.

use skiff::pb::core::v1::{
    ConfigMapProjection, Container, DownwardApiProjection, DownwardApiVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, PodCondition, PodSpec, PodStatus, ProjectedVolumeSource,
    ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::quantity::Quantity;
use skiff::validation::{self, FieldErrors};

use super::*;

pub(super) fn default_pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.is_empty() {
        spec.restart_policy = "Always".into();
    }
    if spec.dns_policy.is_empty() {
        spec.dns_policy = "ClusterFirst".into();
    }
    if spec.scheduler_name.is_empty() {
        spec.scheduler_name = "default-scheduler".into();
    }
    spec.termination_grace_period_seconds.get_or_insert(30);
    if spec.host_network {
        // Kubernetes: a host-network pod's ports are the host's.
        for c in spec
            .init_containers
            .iter_mut()
            .chain(spec.containers.iter_mut())
        {
            for p in &mut c.ports {
                if p.host_port == 0 {
                    p.host_port = p.container_port;
                }
            }
        }
    }
    for c in spec
        .init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
    {
        default_container(c);
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_empty() {
        // Kubernetes: an untagged or :latest image is re-pulled every time.
        let tag = c
            .image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        c.image_pull_policy = match tag {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
        .into();
    }
    if c.termination_message_path.is_empty() {
        c.termination_message_path = "/dev/termination-log".into();
    }
    if c.termination_message_policy.is_empty() {
        c.termination_message_policy = "File".into();
    }
    for p in &mut c.ports {
        if p.protocol.is_empty() {
            p.protocol = "TCP".into();
        }
    }
}

pub(super) fn validate_pod_spec(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
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
        && !super::scheduling::PREEMPTION_POLICIES.contains(&policy)
    {
        errors.not_supported(
            format!("{path}.preemptionPolicy"),
            policy,
            super::scheduling::PREEMPTION_POLICIES,
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

/// A container's lifecycle handlers and probes, as Kubernetes validates
/// them: exactly one handler each, a command to run, a port, a known
/// scheme; none of them on an init container (Skiff has no sidecars); a
/// probe's own grace period positive, and never on a readiness probe.
fn validate_hooks_and_probes(path: &str, c: &Container, init: bool, errors: &mut FieldErrors) {
    use skiff::pb::core::v1::{ExecAction, HttpGetAction};
    let handler = |hpath: String,
                   exec: Option<&ExecAction>,
                   http: Option<&HttpGetAction>,
                   others: usize,
                   errors: &mut FieldErrors| {
        let count = usize::from(exec.is_some()) + usize::from(http.is_some()) + others;
        if count == 0 {
            errors.push(hpath.clone(), "Required value: must specify a handler type");
        } else if count > 1 {
            errors.forbidden(hpath.clone(), "may not specify more than 1 handler type");
        }
        if exec.is_some_and(|e| e.command.is_empty()) {
            errors.required(format!("{hpath}.exec.command"));
        }
        if let Some(http) = http {
            match http.port.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(skiff::wkt::value::Kind::NumberValue(n))
                    if validation::is_valid_port_num(*n as i32).is_ok() && n.fract() == 0.0 => {}
                Some(skiff::wkt::value::Kind::StringValue(name))
                    if validation::is_port_name(name).is_ok() => {}
                _ => errors.push(
                    format!("{hpath}.httpGet.port"),
                    "Invalid value: must be a port number between 1 and 65535 or a port name",
                ),
            }
            if !matches!(http.scheme.as_str(), "" | "HTTP" | "HTTPS") {
                errors.not_supported(
                    format!("{hpath}.httpGet.scheme"),
                    &http.scheme,
                    &["HTTP", "HTTPS"],
                );
            }
        }
    };
    if let Some(lifecycle) = &c.lifecycle {
        if init && (lifecycle.post_start.is_some() || lifecycle.pre_stop.is_some()) {
            errors.forbidden(
                format!("{path}.lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            );
        }
        for (name, h) in [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ] {
            let Some(h) = h else { continue };
            let others = usize::from(h.tcp_socket.is_some()) + usize::from(h.sleep.is_some());
            handler(
                format!("{path}.lifecycle.{name}"),
                h.exec.as_ref(),
                h.http_get.as_ref(),
                others,
                errors,
            );
            if h.sleep.as_ref().is_some_and(|s| s.seconds < 0) {
                errors.invalid(
                    format!("{path}.lifecycle.{name}.sleep.seconds"),
                    h.sleep.as_ref().map_or(0, |s| s.seconds),
                    "must be greater than or equal to 0",
                );
            }
        }
    }
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(probe) = probe else { continue };
        let ppath = format!("{path}.{name}");
        if init {
            errors.forbidden(
                ppath.clone(),
                "may not be set for init containers without restartPolicy=Always",
            );
        }
        let others = usize::from(probe.tcp_socket.is_some()) + usize::from(probe.grpc.is_some());
        handler(
            ppath.clone(),
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            others,
            errors,
        );
        if let Some(grace) = probe.termination_grace_period_seconds {
            if name == "readinessProbe" {
                errors.invalid(
                    format!("{ppath}.terminationGracePeriodSeconds"),
                    grace,
                    "must not be set for readinessProbes",
                );
            } else if grace <= 0 {
                errors.invalid(
                    format!("{ppath}.terminationGracePeriodSeconds"),
                    grace,
                    "must be greater than 0",
                );
            }
        }
    }
}

/// Pod (anti-)affinity terms and topology spread constraints, as
/// Kubernetes validates them.
fn validate_placement(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
    let term =
        |tpath: String, t: &skiff::pb::core::v1::PodAffinityTerm, errors: &mut FieldErrors| {
            if t.topology_key.is_empty() {
                errors.push(
                    format!("{tpath}.topologyKey"),
                    "Required value: can not be empty",
                );
            } else if let Err(reason) = validation::is_qualified_name(&t.topology_key) {
                errors.invalid(format!("{tpath}.topologyKey"), &t.topology_key, &reason);
            }
            if let Some(selector) = &t.label_selector
                && let Err(e) = skiff::selector::LabelSelector::try_from(selector)
            {
                errors.invalid(format!("{tpath}.labelSelector"), "…", e.to_string());
            }
        };
    if let Some(affinity) = &spec.affinity {
        for (which, required, preferred) in [
            (
                "podAffinity",
                affinity
                    .pod_affinity
                    .as_ref()
                    .map(|a| &a.required_during_scheduling_ignored_during_execution),
                affinity
                    .pod_affinity
                    .as_ref()
                    .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
            ),
            (
                "podAntiAffinity",
                affinity
                    .pod_anti_affinity
                    .as_ref()
                    .map(|a| &a.required_during_scheduling_ignored_during_execution),
                affinity
                    .pod_anti_affinity
                    .as_ref()
                    .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
            ),
        ] {
            let base = format!("{path}.affinity.{which}");
            for (i, t) in required.into_iter().flatten().enumerate() {
                term(
                    format!("{base}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                    t,
                    errors,
                );
            }
            for (i, w) in preferred.into_iter().flatten().enumerate() {
                let wpath = format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                if !(1..=100).contains(&w.weight) {
                    errors.invalid(
                        format!("{wpath}.weight"),
                        w.weight,
                        "must be in the range 1-100",
                    );
                }
                match &w.pod_affinity_term {
                    Some(t) => term(format!("{wpath}.podAffinityTerm"), t, errors),
                    None => errors.required(format!("{wpath}.podAffinityTerm")),
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let cpath = format!("{path}.topologySpreadConstraints[{i}]");
        if c.max_skew <= 0 {
            errors.invalid(
                format!("{cpath}.maxSkew"),
                c.max_skew,
                "must be greater than zero",
            );
        }
        if c.topology_key.is_empty() {
            errors.push(
                format!("{cpath}.topologyKey"),
                "Required value: can not be empty",
            );
        } else if let Err(reason) = validation::is_qualified_name(&c.topology_key) {
            errors.invalid(format!("{cpath}.topologyKey"), &c.topology_key, &reason);
        }
        match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" | "ScheduleAnyway" => {
                if !seen.insert((c.topology_key.clone(), c.when_unsatisfiable.clone())) {
                    errors.push(
                        format!("{cpath}.{{topologyKey, whenUnsatisfiable}}"),
                        format!(
                            "Duplicate value: \"{}, {}\"",
                            c.topology_key, c.when_unsatisfiable
                        ),
                    );
                }
            }
            other => errors.not_supported(
                format!("{cpath}.whenUnsatisfiable"),
                other,
                &["DoNotSchedule", "ScheduleAnyway"],
            ),
        }
        if let Some(min) = c.min_domains {
            if min <= 0 {
                errors.invalid(format!("{cpath}.minDomains"), min, "must be greater than 0");
            } else if c.when_unsatisfiable != "DoNotSchedule" {
                errors.invalid(
                    format!("{cpath}.minDomains"),
                    min,
                    "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                );
            }
        }
        for (field, value) in [
            ("nodeAffinityPolicy", &c.node_affinity_policy),
            ("nodeTaintsPolicy", &c.node_taints_policy),
        ] {
            if let Some(v) = value
                .as_deref()
                .filter(|v| !matches!(*v, "Honor" | "Ignore"))
            {
                errors.not_supported(format!("{cpath}.{field}"), v, &["Honor", "Ignore"]);
            }
        }
        if let Some(selector) = &c.label_selector
            && let Err(e) = skiff::selector::LabelSelector::try_from(selector)
        {
            errors.invalid(format!("{cpath}.labelSelector"), "…", e.to_string());
        }
    }
}

/// Kubernetes' rule for a path the agent joins under a volume (item
/// paths, `subPath`): relative, no `..` component, and for files the
/// agent writes, not starting with `..` (its own names).
fn validate_local_path(path: &str, value: &str, written: bool, errors: &mut FieldErrors) {
    let p = std::path::Path::new(value);
    if p.is_absolute() {
        errors.invalid(path, value, "must be a relative path");
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        errors.invalid(path, value, "must not contain '..'");
    } else if written && value.starts_with("..") {
        errors.invalid(path, value, "must not start with '..'");
    }
}

/// The item paths of configMap, secret, downwardAPI and projected volumes.
fn validate_volume_paths(path: &str, v: &Volume, errors: &mut FieldErrors) {
    let items = |source: &str, items: &[KeyToPath], errors: &mut FieldErrors| {
        for (j, item) in items.iter().enumerate() {
            let ipath = format!("{path}.{source}.items[{j}].path");
            if item.path.is_empty() {
                errors.required(ipath);
            } else {
                validate_local_path(&ipath, &item.path, true, errors);
            }
        }
    };
    let files = |source: &str, files: &[DownwardApiVolumeFile], errors: &mut FieldErrors| {
        for (j, file) in files.iter().enumerate() {
            let fpath = format!("{path}.{source}.items[{j}].path");
            if file.path.is_empty() {
                errors.required(fpath);
            } else {
                validate_local_path(&fpath, &file.path, true, errors);
            }
        }
    };
    if let Some(cm) = &v.config_map {
        items("configMap", &cm.items, errors);
    }
    if let Some(secret) = &v.secret {
        items("secret", &secret.items, errors);
    }
    if let Some(api) = &v.downward_api {
        files("downwardAPI", &api.items, errors);
    }
    if let Some(projected) = &v.projected {
        for (k, part) in projected.sources.iter().enumerate() {
            let source = format!("projected.sources[{k}]");
            if let Some(cm) = &part.config_map {
                items(&format!("{source}.configMap"), &cm.items, errors);
            }
            if let Some(secret) = &part.secret {
                items(&format!("{source}.secret"), &secret.items, errors);
            }
            if let Some(api) = &part.downward_api {
                files(&format!("{source}.downwardAPI"), &api.items, errors);
            }
            if let Some(token) = &part.service_account_token {
                let tpath = format!("{path}.{source}.serviceAccountToken.path");
                if token.path.is_empty() {
                    errors.required(tpath);
                } else {
                    validate_local_path(&tpath, &token.path, true, errors);
                }
            }
        }
    }
}

fn validate_container(
    path: &str,
    c: &Container,
    volumes: &std::collections::HashSet<&str>,
    errors: &mut FieldErrors,
) {
    if c.name.is_empty() {
        errors.required(format!("{path}.name"));
    } else if let Err(reason) = validation::is_dns1123_label(&c.name) {
        errors.invalid(format!("{path}.name"), &c.name, &reason);
    }
    if c.image.trim().is_empty() {
        errors.required(format!("{path}.image"));
    }
    if !matches!(
        c.termination_message_policy.as_str(),
        "" | "File" | "FallbackToLogsOnError"
    ) {
        errors.not_supported(
            format!("{path}.terminationMessagePolicy"),
            &c.termination_message_policy,
            &["File", "FallbackToLogsOnError"],
        );
    }
    if !c.termination_message_path.is_empty() && !c.termination_message_path.starts_with('/') {
        errors.invalid(
            format!("{path}.terminationMessagePath"),
            &c.termination_message_path,
            "must be an absolute path",
        );
    }
    for (i, p) in c.ports.iter().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        if validation::is_valid_port_num(p.container_port).is_err() {
            errors.invalid(
                format!("{ppath}.containerPort"),
                p.container_port.to_string(),
                "must be between 1 and 65535, inclusive",
            );
        }
        if p.host_port != 0 && validation::is_valid_port_num(p.host_port).is_err() {
            errors.invalid(
                format!("{ppath}.hostPort"),
                p.host_port.to_string(),
                "must be between 1 and 65535, inclusive",
            );
        }
        if !p.name.is_empty()
            && let Err(reason) = validation::is_port_name(&p.name)
        {
            errors.invalid(format!("{ppath}.name"), &p.name, &reason);
        }
        validate_protocol(&format!("{ppath}.protocol"), &p.protocol, errors);
    }
    for (i, e) in c.env.iter().enumerate() {
        if let Err(reason) = validation::is_env_var_name(&e.name) {
            errors.invalid(format!("{path}.env[{i}].name"), &e.name, &reason);
        }
    }
    for (i, m) in c.volume_mounts.iter().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            errors.push(
                format!("{path}.volumeMounts[{i}].name"),
                format!("Not found: {:?}", m.name),
            );
        }
        if m.mount_path.is_empty() {
            errors.required(format!("{path}.volumeMounts[{i}].mountPath"));
        }
        if !m.sub_path.is_empty() {
            validate_local_path(
                &format!("{path}.volumeMounts[{i}].subPath"),
                &m.sub_path,
                false,
                errors,
            );
        }
    }
    if let Some(r) = &c.resources {
        for (which, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, value) in map {
                let qpath = format!("{path}.resources.{which}[{name}]");
                match value.parse::<Quantity>() {
                    Ok(q) if q.milli_value() < 0 => {
                        errors.invalid(&qpath, value, "must be greater than or equal to 0")
                    }
                    Ok(_) => {}
                    Err(e) => errors.invalid(&qpath, value, e.to_string()),
                }
            }
        }
        for (name, request) in &r.requests {
            let (Some(limit), Ok(asked)) = (r.limits.get(name), request.parse::<Quantity>()) else {
                continue;
            };
            if limit.parse::<Quantity>().is_ok_and(|l| asked > l) {
                errors.invalid(
                    format!("{path}.resources.requests[{name}]"),
                    request,
                    format!("must be less than or equal to {name} limit of {limit}"),
                );
            }
        }
    }
}

/// A container with a limit and no request for a resource requests its
/// limit.
fn requests_from_limits(c: &mut Container) {
    if let Some(r) = &mut c.resources {
        for (name, limit) in &r.limits {
            r.requests
                .entry(name.clone())
                .or_insert_with(|| limit.clone());
        }
    }
}

pub(super) fn validate_protocol(path: &str, protocol: &str, errors: &mut FieldErrors) {
    if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
        errors.push(
            path,
            format!(
                "Unsupported value: {protocol:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
            ),
        );
    }
}

impl Strategy for Pod {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        Some((self.metadata.as_ref(), self.spec.as_ref()?, true))
    }

    fn priority_request(&self) -> Option<super::PriorityRequest> {
        let spec = self.spec.as_ref()?;
        Some(super::PriorityRequest {
            class: spec.priority_class_name.clone(),
            priority: spec.priority,
            preemption_policy: spec.preemption_policy.clone(),
        })
    }

    fn keep_admitted(&mut self, current: &Self) {
        // A bound pod's nomination (how it got its room) outlives status
        // writes that do not know it, an agent's (kubelet's status patches
        // leave it too); a pending pod's is the scheduler's to clear.
        let bound = current
            .spec
            .as_ref()
            .is_some_and(|s| !s.node_name.is_empty());
        if let (true, Some(status), Some(old)) =
            (bound, self.status.as_mut(), current.status.as_ref())
            && status.nominated_node_name.is_empty()
        {
            status
                .nominated_node_name
                .clone_from(&old.nominated_node_name);
        }
        let (Some(spec), Some(old)) = (self.spec.as_mut(), current.spec.as_ref()) else {
            return;
        };
        if spec.priority.is_none() {
            spec.priority = old.priority;
        }
        if spec.preemption_policy.is_none() {
            spec.preemption_policy.clone_from(&old.preemption_policy);
        }
    }

    fn set_priority(&mut self, class: &str, value: i32, policy: &str) {
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        class.clone_into(&mut spec.priority_class_name);
        spec.priority = Some(value);
        spec.preemption_policy = Some(policy.to_string());
    }

    const FIELDS: &'static [&'static str] = &["spec.nodeName", "status.phase"];

    fn field(&self, path: &str) -> Option<String> {
        match path {
            "spec.nodeName" => Some(self.spec.as_ref().map_or("", |s| &s.node_name).to_string()),
            "status.phase" => Some(self.status.as_ref().map_or("", |s| &s.phase).to_string()),
            _ => None,
        }
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            default_pod_spec(spec);
            // Kubernetes' pod defaulting (templates keep theirs).
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                requests_from_limits(c);
            }
        }
    }

    fn prepare_create(&mut self) {
        self.status = Some(PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
    }

    /// The pod runs as `spec.serviceAccountName` (default `default`) and,
    /// unless `automountServiceAccountToken: false` (on the pod, else on
    /// the account) or a container already mounts something there, gets Kubernetes' `kube-api-access-*`
    /// projected volume at `/var/run/secrets/kubernetes.io/serviceaccount`
    /// in every container: a token bound to the pod (`token`), the
    /// cluster CA (`ca.crt`) and the namespace (`namespace`).
    fn service_account(&self) -> Option<String> {
        let spec = self.spec.clone().unwrap_or_default();
        Some(if !spec.service_account_name.is_empty() {
            spec.service_account_name
        } else if !spec.service_account.is_empty() {
            spec.service_account
        } else {
            "default".into()
        })
    }

    /// Kubernetes' rule: a pod's spec is fixed once created, but for its
    /// containers' images, `activeDeadlineSeconds` and added tolerations
    /// (so the account it runs as, its node and its volumes cannot be
    /// swapped under it).
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let mutable_cleared = |pod: &Pod| {
            let mut spec = pod.spec.clone().unwrap_or_default();
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut())
            {
                c.image.clear();
                // Pods stored before requests were defaulted from limits
                // compare as if they had been.
                requests_from_limits(c);
            }
            spec.active_deadline_seconds = None;
            // Scheduling gates may be removed (checked below).
            spec.scheduling_gates.clear();
            spec
        };
        let gates = |p: &Pod| {
            p.spec
                .as_ref()
                .map(|s| s.scheduling_gates.clone())
                .unwrap_or_default()
        };
        let (before, now) = (gates(old), gates(self));
        if now.iter().any(|g| !before.contains(g)) {
            errors.forbidden(
                "spec.schedulingGates",
                "only deletion is allowed, but found new scheduling gate",
            );
        }
        // Kubernetes: a deadline may be set, or lowered, never raised or
        // removed.
        let deadline = |p: &Pod| p.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        match (deadline(old), deadline(self)) {
            (Some(_), None) => errors.invalid(
                "spec.activeDeadlineSeconds",
                "null",
                "must not update from a positive integer to nil value",
            ),
            (Some(before), Some(now)) if now > before => errors.invalid(
                "spec.activeDeadlineSeconds",
                now,
                "must be less than or equal to previous value",
            ),
            _ => {}
        }
        let (mut next, prev) = (mutable_cleared(self), mutable_cleared(old));
        let added_only = prev
            .tolerations
            .iter()
            .all(|t| next.tolerations.contains(t));
        if added_only {
            next.tolerations.clone_from(&prev.tolerations);
        }
        if next != prev {
            errors.push(
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)",
            );
        }
    }

    fn admit_service_account(&mut self, account: &ServiceAccount) {
        let name = self.service_account().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        spec.service_account_name = name;
        // The pod's own choice wins over its account's.
        let automount = spec
            .automount_service_account_token
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        if !automount {
            return;
        }
        let mounted = spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .any(|c| {
                c.volume_mounts
                    .iter()
                    .any(|m| m.mount_path == SERVICE_ACCOUNT_DIR)
            });
        if mounted {
            return;
        }
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let name = format!("kube-api-access-{suffix}");
        spec.volumes.push(Volume {
            name: name.clone(),
            projected: Some(ProjectedVolumeSource {
                sources: vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: String::new(),
                            expiration_seconds: Some(3607),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }],
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardApiProjection {
                            items: vec![DownwardApiVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    api_version: "v1".into(),
                                    field_path: "metadata.namespace".into(),
                                }),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    },
                ],
                default_mode: Some(0o644),
            }),
            ..Default::default()
        });
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut())
        {
            c.volume_mounts.push(VolumeMount {
                name: name.clone(),
                read_only: true,
                mount_path: SERVICE_ACCOUNT_DIR.into(),
                ..Default::default()
            });
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        match &self.spec {
            Some(spec) => {
                validate_pod_spec("spec", spec, errors);
                // A gated pod is neither created bound nor bound.
                if !spec.scheduling_gates.is_empty() && !spec.node_name.is_empty() {
                    errors.forbidden(
                        "spec.nodeName",
                        "cannot be set until all schedulingGates have been removed",
                    );
                }
            }
            None => errors.required("spec"),
        }
    }

    /// A pod bound to a node and not finished gets its grace period (the
    /// request's, else terminationGracePeriodSeconds): its agent stops the
    /// containers, then deletes it for good with a grace of 0. Pods no
    /// agent runs go at once.
    fn graceful_delete_seconds(&self, requested: Option<i64>) -> Option<i64> {
        let spec = self.spec.as_ref()?;
        let phase = self.status.as_ref().map_or("", |s| s.phase.as_str());
        if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let grace = requested
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    fn bind(&mut self, node: &str) -> Result<(), String> {
        let pod = self.object_ref();
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        if !spec.node_name.is_empty() {
            return Err(format!(
                "pod {pod} is already assigned to node {:?}",
                spec.node_name
            ));
        }
        spec.node_name = node.to_string();
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(PodCondition {
            r#type: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(crate::registry::now()),
            ..Default::default()
        });
        Ok(())
    }
}
