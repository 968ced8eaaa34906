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
    let mut names = std::collections::HashSet::new();
    let volumes: std::collections::HashSet<&str> =
        spec.volumes.iter().map(|v| v.name.as_str()).collect();
    for (i, v) in spec.volumes.iter().enumerate() {
        if let Err(reason) = validation::is_dns1123_label(&v.name) {
            errors.invalid(format!("{path}.volumes[{i}].name"), &v.name, &reason);
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
            }
            spec.active_deadline_seconds = None;
            spec
        };
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
            Some(spec) => validate_pod_spec("spec", spec, errors),
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
