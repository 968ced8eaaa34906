//! Fields Skiff stores no behaviour for yet, refused when set: a user
//! who asks for a pod spread over zones, a preStop hook or a Service
//! that keeps client addresses gets a precise "not supported by Skiff"
//! naming the field, never an object that is accepted and then silently
//! not done. `docs/FIELDS.md` lists every field and what acts on it;
//! a field leaves this file when something does.

use skiff::pb::core::v1::{
    Container, PersistentVolumeSpec, PodSpec, ServiceAccount, ServiceSpec, Toleration,
};
use skiff::pb::storage::v1::StorageClass;
use skiff::validation::FieldErrors;

/// Refuses `path`: `what` is "not supported by Skiff".
fn refuse(errors: &mut FieldErrors, path: String, what: &str) {
    errors.forbidden(path, format!("{what} not supported by Skiff"));
}

/// The pod-level fields nothing on a Skiff node or in its scheduler acts
/// on yet.
pub(super) fn pod_spec(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
    if !spec.image_pull_secrets.is_empty() {
        refuse(
            errors,
            format!("{path}.imagePullSecrets"),
            "pulling images with registry credentials is",
        );
    }
    if let Some(affinity) = &spec.affinity {
        let pod_affinity = affinity.pod_affinity.iter().flat_map(|a| {
            affinity_terms(
                &a.required_during_scheduling_ignored_during_execution,
                &a.preferred_during_scheduling_ignored_during_execution,
            )
            .map(|t| ("podAffinity", t))
        });
        let pod_anti_affinity = affinity.pod_anti_affinity.iter().flat_map(|a| {
            affinity_terms(
                &a.required_during_scheduling_ignored_during_execution,
                &a.preferred_during_scheduling_ignored_during_execution,
            )
            .map(|t| ("podAntiAffinity", t))
        });
        for (which, term) in pod_affinity.chain(pod_anti_affinity) {
            let labelled = term
                .namespace_selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty() || !s.match_expressions.is_empty());
            if labelled {
                refuse(
                    errors,
                    format!("{path}.affinity.{which}.namespaceSelector"),
                    "selecting namespaces by label (the scheduler does not read namespaces; list them in `namespaces`, or use {} for all) is",
                );
            }
        }
    }
    if spec
        .runtime_class_name
        .as_deref()
        .is_some_and(|r| !r.is_empty())
    {
        refuse(
            errors,
            format!("{path}.runtimeClassName"),
            "runtime classes are",
        );
    }
    if !spec.overhead.is_empty() {
        refuse(errors, format!("{path}.overhead"), "pod overhead is");
    }
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        errors.not_supported(format!("{path}.os.name"), &os.name, &["linux"]);
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        toleration(&format!("{path}.tolerations[{i}]"), t, errors);
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        if let Some(dir) = &v.empty_dir {
            let vpath = format!("{path}.volumes[{i}].emptyDir");
            if !matches!(dir.medium.as_str(), "" | "Memory") {
                refuse(
                    errors,
                    format!("{vpath}.medium"),
                    "an emptyDir medium other than the node's disk or memory is",
                );
            }
            if !dir.size_limit.is_empty() && dir.medium != "Memory" {
                refuse(
                    errors,
                    format!("{vpath}.sizeLimit"),
                    "a size limit on a disk emptyDir (the kubelet evicts a pod past it) is",
                );
            }
        }
    }
}

/// A pod (anti-)affinity's terms, required and preferred.
fn affinity_terms<'a>(
    required: &'a [skiff::pb::core::v1::PodAffinityTerm],
    preferred: &'a [skiff::pb::core::v1::WeightedPodAffinityTerm],
) -> impl Iterator<Item = &'a skiff::pb::core::v1::PodAffinityTerm> {
    required.iter().chain(
        preferred
            .iter()
            .filter_map(|w| w.pod_affinity_term.as_ref()),
    )
}

/// Kubernetes' DefaultTolerationSeconds admission gives every pod these
/// two: what Skiff's node lifecycle does anyway (an unreachable node's
/// pods go after 300 s), so exported pods carrying them are accepted.
fn default_toleration(t: &Toleration) -> bool {
    matches!(
        t.key.as_str(),
        "node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable"
    ) && t.operator == "Exists"
        && t.effect == "NoExecute"
        && t.toleration_seconds == Some(300)
}

fn toleration(path: &str, t: &Toleration, errors: &mut FieldErrors) {
    if t.toleration_seconds.is_some() && !default_toleration(t) {
        refuse(
            errors,
            format!("{path}.tolerationSeconds"),
            "evicting after a toleration's seconds is",
        );
    }
}

/// A container's fields nothing acts on yet.
pub(super) fn container(path: &str, c: &Container, errors: &mut FieldErrors) {
    if let Some(lifecycle) = &c.lifecycle {
        for (name, handler) in [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ] {
            let Some(handler) = handler else { continue };
            let hpath = format!("{path}.lifecycle.{name}");
            if handler.tcp_socket.is_some() {
                refuse(
                    errors,
                    format!("{hpath}.tcpSocket"),
                    "a tcpSocket lifecycle handler (deprecated; the kubelet never runs one) is",
                );
            }
        }
    }
    if c.restart_policy.as_deref().is_some_and(|p| !p.is_empty()) {
        refuse(
            errors,
            format!("{path}.restartPolicy"),
            "sidecar containers (an init container's restartPolicy) are",
        );
    }
    if !c.volume_devices.is_empty() {
        refuse(
            errors,
            format!("{path}.volumeDevices"),
            "raw block devices are",
        );
    }
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let mpath = format!("{path}.volumeMounts[{i}]");
        if m.mount_propagation
            .as_deref()
            .is_some_and(|p| !p.is_empty() && p != "None")
        {
            refuse(
                errors,
                format!("{mpath}.mountPropagation"),
                "mount propagation is",
            );
        }
        if !m.sub_path_expr.is_empty() {
            refuse(errors, format!("{mpath}.subPathExpr"), "subPathExpr is");
        }
    }
}

/// A Service's fields no part of Skiff acts on yet.
pub(super) fn service(spec: &ServiceSpec, errors: &mut FieldErrors) {
    if !spec.load_balancer_source_ranges.is_empty() {
        refuse(
            errors,
            "spec.loadBalancerSourceRanges".into(),
            "limiting load balancer clients by source range is",
        );
    }
    if spec.internal_traffic_policy.as_deref() == Some("Local") {
        refuse(
            errors,
            "spec.internalTrafficPolicy".into(),
            "\"Local\" (node-local endpoints only) is",
        );
    }
    if spec.allocate_load_balancer_node_ports == Some(false) {
        refuse(
            errors,
            "spec.allocateLoadBalancerNodePorts".into(),
            "a load balancer without node ports is",
        );
    }
    if spec
        .traffic_distribution
        .as_deref()
        .is_some_and(|t| !t.is_empty())
    {
        refuse(
            errors,
            "spec.trafficDistribution".into(),
            "topology-aware traffic distribution is",
        );
    }
}

/// Scaling policies (rates) and the choice between them: Skiff's
/// autoscaler applies the stabilization windows only.
pub(super) fn autoscaler_behavior(
    behavior: Option<&skiff::pb::autoscaling::v2::HorizontalPodAutoscalerBehavior>,
    errors: &mut FieldErrors,
) {
    let Some(behavior) = behavior else { return };
    for (direction, rules) in [
        ("scaleUp", &behavior.scale_up),
        ("scaleDown", &behavior.scale_down),
    ] {
        let Some(rules) = rules else { continue };
        if !rules.policies.is_empty() && !default_policies(direction, &rules.policies) {
            refuse(
                errors,
                format!("spec.behavior.{direction}.policies"),
                "scaling policies (rate limits) are",
            );
        }
        if !matches!(rules.select_policy.as_str(), "" | "Max") {
            refuse(
                errors,
                format!("spec.behavior.{direction}.selectPolicy"),
                "a select policy other than \"Max\" is",
            );
        }
    }
}

/// A DaemonSet's surge (Skiff's rolling update replaces within
/// maxUnavailable only).
pub(super) fn daemon_set(spec: &skiff::pb::apps::v1::DaemonSetSpec, errors: &mut FieldErrors) {
    let surge = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref());
    let zero = surge.is_none_or(|v| match &v.kind {
        Some(skiff::wkt::value::Kind::NumberValue(n)) => *n == 0.0,
        Some(skiff::wkt::value::Kind::StringValue(s)) => s == "0" || s == "0%",
        _ => true,
    });
    if !zero {
        refuse(
            errors,
            "spec.updateStrategy.rollingUpdate.maxSurge".into(),
            "surging a DaemonSet's rolling update is",
        );
    }
}

/// Legacy service account token Secrets (Kubernetes' token controller
/// fills them; Skiff issues tokens through TokenRequest only).
pub(super) fn secret(secret: &skiff::pb::core::v1::Secret, errors: &mut FieldErrors) {
    if secret.r#type == "kubernetes.io/service-account-token" {
        refuse(
            errors,
            "type".into(),
            "\"kubernetes.io/service-account-token\" (long-lived tokens filled in by a controller; use `kubectl create token`) is",
        );
    }
}

/// Whether `policies` are Kubernetes' defaults for the direction (which
/// it writes into every HPA with a `behavior`, and Skiff's autoscaler
/// applies): up, 4 pods or 100% per 15 s; down, 100% per 15 s.
fn default_policies(
    direction: &str,
    policies: &[skiff::pb::autoscaling::v2::HpaScalingPolicy],
) -> bool {
    let mut have: Vec<(&str, i32, i32)> = policies
        .iter()
        .map(|p| (p.r#type.as_str(), p.value, p.period_seconds))
        .collect();
    have.sort_unstable();
    match direction {
        "scaleUp" => have == [("Percent", 100, 15), ("Pods", 4, 15)],
        _ => have == [("Percent", 100, 15)],
    }
}

/// A ServiceAccount's image pull secrets (added to its pods in
/// Kubernetes).
pub(super) fn service_account(account: &ServiceAccount, errors: &mut FieldErrors) {
    if !account.image_pull_secrets.is_empty() {
        refuse(
            errors,
            "imagePullSecrets".into(),
            "pulling images with registry credentials is",
        );
    }
}

/// Mount options (Skiff's volumes are bind mounts of node directories).
pub(super) fn persistent_volume(spec: &PersistentVolumeSpec, errors: &mut FieldErrors) {
    if !spec.mount_options.is_empty() {
        refuse(
            errors,
            "spec.mountOptions".into(),
            "mount options (Skiff's volumes are bind mounts of node directories) are",
        );
    }
}

/// Mount options, volume expansion, provisioner parameters and allowed
/// topologies (the local-path provisioner takes none).
pub(super) fn storage_class(class: &StorageClass, errors: &mut FieldErrors) {
    if !class.parameters.is_empty() {
        refuse(
            errors,
            "parameters".into(),
            "provisioner parameters (the local-path provisioner takes none) are",
        );
    }
    if !class.allowed_topologies.is_empty() {
        refuse(
            errors,
            "allowedTopologies".into(),
            "restricting provisioning to topologies is",
        );
    }
    if !class.mount_options.is_empty() {
        refuse(
            errors,
            "mountOptions".into(),
            "mount options (Skiff's volumes are bind mounts of node directories) are",
        );
    }
    if class.allow_volume_expansion == Some(true) {
        refuse(
            errors,
            "allowVolumeExpansion".into(),
            "expanding volumes is",
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The errors of a value built from JSON, as the API would say them.
    fn refusals<T: serde::de::DeserializeOwned>(
        value: serde_json::Value,
        check: impl Fn(&T, &mut FieldErrors),
    ) -> String {
        let parsed: T = serde_json::from_value(value).expect("a valid manifest");
        let mut errors = FieldErrors::new();
        check(&parsed, &mut errors);
        errors.to_string()
    }

    fn assert_refused(errors: &str, paths: &[&str]) {
        for path in paths {
            assert!(
                errors.contains(&format!("{path}: Forbidden:")),
                "{path} is refused in: {errors}"
            );
        }
        assert_eq!(
            errors.matches("not supported by Skiff").count(),
            paths.len(),
            "{errors}"
        );
    }

    #[test]
    fn pod_fields_nothing_acts_on_are_refused_by_path() {
        let spec = json!({
            "imagePullSecrets": [{"name": "regcred"}],
            "affinity": {
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone", "namespaceSelector": {"matchLabels": {"team": "a"}}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "zone", "namespaceSelector": {}}}]}
            },
            "runtimeClassName": "gvisor", "overhead": {"cpu": "100m"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}],
            "volumes": [{"name": "m", "emptyDir": {"medium": "HugePages", "sizeLimit": "1Gi"}}],
            "containers": [{
                "name": "app", "image": "busybox",
                "lifecycle": {"preStop": {"tcpSocket": {"port": 80}}},
                "volumeDevices": [{"name": "m", "devicePath": "/dev/xvda"}],
                "restartPolicy": "Always",
                "volumeMounts": [{"name": "m", "mountPath": "/m", "mountPropagation": "Bidirectional", "subPathExpr": "$(POD)"}]
            }]
        });
        let errors = refusals::<PodSpec>(spec, |spec, errors| {
            pod_spec("spec", spec, errors);
            container("spec.containers[0]", &spec.containers[0], errors);
        });
        assert_refused(
            &errors,
            &[
                "spec.imagePullSecrets",
                "spec.affinity.podAffinity.namespaceSelector",
                "spec.runtimeClassName",
                "spec.overhead",
                "spec.tolerations[0].tolerationSeconds",
                "spec.volumes[0].emptyDir.medium",
                "spec.volumes[0].emptyDir.sizeLimit",
                "spec.containers[0].lifecycle.preStop.tcpSocket",
                "spec.containers[0].volumeDevices",
                "spec.containers[0].restartPolicy",
                "spec.containers[0].volumeMounts[0].mountPropagation",
                "spec.containers[0].volumeMounts[0].subPathExpr",
            ],
        );
        // Their defaults (what Kubernetes and its clients fill in) pass.
        let defaults = json!({
            "imagePullSecrets": [], "affinity": {"nodeAffinity": {}, "podAffinity": {}, "podAntiAffinity": {}},
            "preemptionPolicy": "PreemptLowerPriority", "priority": 0,
            "os": {"name": "linux"}, "setHostnameAsFQDN": false,
            "tolerations": [{"key": "k", "operator": "Exists"},
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "m", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
            "containers": [{"name": "app", "image": "busybox",
                "lifecycle": {"preStop": {"exec": {"command": ["true"]}}, "postStart": {"httpGet": {"port": 80, "scheme": "HTTP"}}},
                "restartPolicy": "",
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "volumeMounts": [{"name": "m", "mountPath": "/m", "mountPropagation": "None"}]}]
        });
        let errors = refusals::<PodSpec>(defaults, |spec, errors| {
            pod_spec("spec", spec, errors);
            container("spec.containers[0]", &spec.containers[0], errors);
        });
        assert_eq!(errors, "");
        let windows = refusals::<PodSpec>(json!({"os": {"name": "windows"}}), |spec, errors| {
            pod_spec("spec", spec, errors)
        });
        assert!(windows.contains("spec.os.name: Unsupported value: \"windows\""));
    }

    #[test]
    fn hpa_scaling_policies_are_refused() {
        use skiff::pb::autoscaling::v2::HorizontalPodAutoscalerBehavior;
        let errors = refusals::<HorizontalPodAutoscalerBehavior>(
            json!({"scaleUp": {"policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}], "selectPolicy": "Disabled"},
                   "scaleDown": {"stabilizationWindowSeconds": 60}}),
            |b, errors| autoscaler_behavior(Some(b), errors),
        );
        assert_refused(
            &errors,
            &[
                "spec.behavior.scaleUp.policies",
                "spec.behavior.scaleUp.selectPolicy",
            ],
        );
        // What Kubernetes writes into an HPA with a behavior passes.
        let defaults = refusals::<HorizontalPodAutoscalerBehavior>(
            json!({"scaleUp": {"selectPolicy": "Max", "stabilizationWindowSeconds": 0, "policies": [
                        {"type": "Pods", "value": 4, "periodSeconds": 15},
                        {"type": "Percent", "value": 100, "periodSeconds": 15}]},
                   "scaleDown": {"selectPolicy": "Max", "stabilizationWindowSeconds": 300, "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15}]}}),
            |b, errors| autoscaler_behavior(Some(b), errors),
        );
        assert_eq!(defaults, "");
    }

    #[test]
    fn service_and_storage_fields_nothing_acts_on_are_refused_by_path() {
        let errors = refusals::<ServiceSpec>(
            json!({
                "loadBalancerSourceRanges": ["10.0.0.0/8"],
                "internalTrafficPolicy": "Local", "allocateLoadBalancerNodePorts": false,
                "trafficDistribution": "PreferClose"
            }),
            service,
        );
        assert_refused(
            &errors,
            &[
                "spec.loadBalancerSourceRanges",
                "spec.internalTrafficPolicy",
                "spec.allocateLoadBalancerNodePorts",
                "spec.trafficDistribution",
            ],
        );
        let defaults = refusals::<ServiceSpec>(
            json!({"externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                   "allocateLoadBalancerNodePorts": true}),
            service,
        );
        assert_eq!(defaults, "");
        let errors = refusals::<ServiceAccount>(
            json!({"imagePullSecrets": [{"name": "regcred"}]}),
            service_account,
        );
        assert_refused(&errors, &["imagePullSecrets"]);
        let errors =
            refusals::<PersistentVolumeSpec>(json!({"mountOptions": ["ro"]}), persistent_volume);
        assert_refused(&errors, &["spec.mountOptions"]);
        let errors = refusals::<StorageClass>(
            json!({"provisioner": "skiff.io/local-path", "mountOptions": ["ro"], "allowVolumeExpansion": true,
                   "parameters": {"fsType": "ext4"},
                   "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone", "values": ["a"]}]}]}),
            storage_class,
        );
        assert_refused(
            &errors,
            &[
                "mountOptions",
                "allowVolumeExpansion",
                "parameters",
                "allowedTopologies",
            ],
        );
        let errors = refusals::<skiff::pb::apps::v1::DaemonSetSpec>(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}}}),
            daemon_set,
        );
        assert_refused(&errors, &["spec.updateStrategy.rollingUpdate.maxSurge"]);
        let errors = refusals::<skiff::pb::apps::v1::DaemonSetSpec>(
            json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}),
            daemon_set,
        );
        assert_eq!(errors, "");
        let errors = refusals::<skiff::pb::core::v1::Secret>(
            json!({"type": "kubernetes.io/service-account-token"}),
            secret,
        );
        assert_refused(&errors, &["type"]);
    }
}
