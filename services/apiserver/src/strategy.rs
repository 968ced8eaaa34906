//! Per-kind rules: defaults, what a create resets, validation, and the
//! fields a field selector may name (Kubernetes' "strategy" per registry).

use std::collections::BTreeMap;

use skiff::Resource;
use skiff::pb::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use skiff::pb::autoscaling::v2::{
    HorizontalPodAutoscaler, MetricSpec, MetricTarget, ResourceMetricSource,
};
use skiff::pb::batch::v1::Job;
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    ConfigMap, ConfigMapProjection, Container, DownwardApiProjection, DownwardApiVolumeFile,
    Endpoints, Event, KeyToPath, Namespace, NamespaceSpec, NamespaceStatus, Node,
    ObjectFieldSelector, Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec,
    ProjectedVolumeSource, ReplicationController, Secret, Service, ServiceAccount,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::pb::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff::quantity::Quantity;
use skiff::selector::LabelSelector;
use skiff::validation::{self, FieldErrors};
use skiff::wkt::{Value, value::Kind as ValueKind};

/// Where pods find their service account's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The finalizer that keeps a deleted namespace until its content is gone.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// The shape names of a kind must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 label: 63 characters, no dots (Services, Namespaces).
    Label,
    /// A DNS-1123 subdomain: 253 characters, dots allowed (most kinds).
    Subdomain,
    /// Anything usable in a path but `.`, `..`, `/` and `%` (RBAC kinds,
    /// whose names are like `system:kube-scheduler`).
    PathSegment,
}

/// What the API does differently per kind. Every method has the common
/// behaviour as its default, so most kinds need only a line.
pub trait Strategy: Resource {
    /// What a name must look like.
    const NAME_RULE: NameRule = NameRule::Subdomain;
    /// Fields a field selector may name besides metadata.name and
    /// metadata.namespace.
    const FIELDS: &'static [&'static str] = &[];

    /// The value of a kind-specific selectable field.
    fn field(&self, _path: &str) -> Option<String> {
        None
    }

    /// Fills in defaults, as Kubernetes' defaulting does on every write.
    fn default_fields(&mut self) {}

    /// Resets what a client may not set on create (the status, usually).
    fn prepare_create(&mut self) {
        self.clear_status();
    }

    /// Checks the kind's own fields (metadata is checked for every kind).
    fn validate(&self, _errors: &mut FieldErrors) {}

    /// Checks an update against the stored object (fields that may not
    /// change once set).
    fn validate_update(&self, old: &Self, _errors: &mut FieldErrors) {
        let _ = old;
    }

    /// Called when a delete marks the object (finalizers remain): e.g. a
    /// namespace's phase becomes Terminating.
    fn mark_deleting(&mut self) {}

    /// The cluster IP the object needs: None when it needs none (other
    /// kinds, headless and ExternalName Services); `Some(None)` for any
    /// free one; `Some(Some(ip))` for that one.
    fn cluster_ip_request(&self) -> Option<Option<String>> {
        None
    }

    /// Records the cluster IP it was given.
    fn set_cluster_ip(&mut self, _ip: &str) {}

    /// The cluster IP it holds ("" for none).
    fn cluster_ip(&self) -> String {
        String::new()
    }

    /// The node ports it needs (NodePort and LoadBalancer Services): per
    /// port, its index, the node port asked for (None: any), its port and
    /// protocol.
    fn node_port_requests(&self) -> Vec<(usize, Option<u16>, i32, String)> {
        Vec::new()
    }

    /// Records the node port given to port `index`.
    fn set_node_port(&mut self, _index: usize, _port: u16) {}

    /// Kubernetes' graceful deletion: `Some(seconds)` when a Delete only
    /// marks the object (deletionTimestamp, deletionGracePeriodSeconds) and
    /// whoever runs it removes it once stopped; None deletes it now.
    /// `requested` is the Delete's gracePeriodSeconds.
    fn graceful_delete_seconds(&self, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// The service account the object runs as, for Kubernetes'
    /// ServiceAccount admission (pods: `spec.serviceAccountName`, else
    /// `default`); None for kinds that run nothing.
    fn service_account(&self) -> Option<String> {
        None
    }

    /// Kubernetes' ServiceAccount admission, on create in a cluster that
    /// issues tokens, once `account` is known to exist: pods run as it and
    /// get its token (see [`Pod`]'s). Other kinds: nothing.
    fn admit_service_account(&mut self, account: &ServiceAccount) {
        let _ = account;
    }

    /// What Pod Security admission judges: the pod spec the object runs
    /// and its metadata, and whether a violation refuses the write (a
    /// pod's own spec) or is only warned about (a workload's template, as
    /// Kubernetes does: its pods are refused when they are created).
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        None
    }

    /// Binds the object to `node` (the binding subresource).
    ///
    /// # Errors
    /// Why it cannot be bound: the kind has no binding, or it is bound
    /// already.
    fn bind(&mut self, node: &str) -> Result<(), String> {
        let _ = node;
        Err(format!("{} has no binding subresource", Self::KIND))
    }
}

/// The value of any selectable field of `obj`, or None if it is not one.
pub fn field_value<K: Strategy>(obj: &K, path: &str) -> Option<String> {
    match path {
        "metadata.name" => Some(obj.name().to_string()),
        "metadata.namespace" => Some(obj.namespace().to_string()),
        _ => obj.field(path),
    }
}

/// Every field a selector may name for kind `K`.
pub fn selectable_fields<K: Strategy>() -> Vec<&'static str> {
    let mut fields = vec!["metadata.name", "metadata.namespace"];
    fields.extend_from_slice(K::FIELDS);
    fields
}

/// Checks the metadata every kind shares.
pub fn validate_metadata<K: Strategy>(meta: &ObjectMeta, errors: &mut FieldErrors) {
    if meta.name.is_empty() {
        errors.required("metadata.name");
    } else {
        let check = match K::NAME_RULE {
            NameRule::Label => validation::is_dns1123_label(&meta.name),
            NameRule::Subdomain => validation::is_dns1123_subdomain(&meta.name),
            NameRule::PathSegment => validation::is_path_segment_name(&meta.name),
        };
        if let Err(reason) = check {
            errors.invalid("metadata.name", &meta.name, &reason);
        }
    }
    if K::NAMESPACED
        && let Err(reason) = validation::is_dns1123_label(&meta.namespace)
    {
        errors.invalid("metadata.namespace", &meta.namespace, &reason);
    }
    validation::validate_labels("metadata.labels", &meta.labels, errors);
    validation::validate_annotations("metadata.annotations", &meta.annotations, errors);
    for (i, owner) in meta.owner_references.iter().enumerate() {
        let path = format!("metadata.ownerReferences[{i}]");
        for (field, value) in [
            ("apiVersion", &owner.api_version),
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                errors.required(format!("{path}.{field}"));
            }
        }
    }
    if meta
        .owner_references
        .iter()
        .filter(|o| o.controller == Some(true))
        .count()
        > 1
    {
        errors.push(
            "metadata.ownerReferences",
            "Invalid value: only one reference can have controller set to true",
        );
    }
}

// === pods ===

fn default_pod_spec(spec: &mut PodSpec) {
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

fn validate_pod_spec(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
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

fn validate_protocol(path: &str, protocol: &str, errors: &mut FieldErrors) {
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

// === workloads ===

fn default_template(template: &mut Option<PodTemplateSpec>) {
    if let Some(spec) = template.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

/// Checks a workload's template against its selector: the template must
/// exist and its labels must match, or the controller would never see the
/// pods it creates.
fn validate_template(
    template: Option<&PodTemplateSpec>,
    selector: Result<Option<LabelSelector>, String>,
    errors: &mut FieldErrors,
) {
    let selector = match selector {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            errors.required("spec.selector");
            None
        }
        Err(reason) => {
            errors.push("spec.selector", format!("Invalid value: {reason}"));
            None
        }
    };
    let Some(template) = template else {
        errors.required("spec.template");
        return;
    };
    let labels = template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    validation::validate_labels("spec.template.metadata.labels", &labels, errors);
    if let Some(selector) = selector {
        if selector.is_empty() {
            errors.push("spec.selector", "Invalid value: empty selector is invalid");
        } else if !selector.matches(&labels) {
            errors.push(
                "spec.template.metadata.labels",
                format!("Invalid value: selector {selector} does not match template labels"),
            );
        }
    }
    match &template.spec {
        Some(spec) => validate_pod_spec("spec.template.spec", spec, errors),
        None => errors.required("spec.template.spec"),
    }
}

fn meta_selector(
    selector: Option<&skiff::pb::meta::v1::LabelSelector>,
) -> Result<Option<LabelSelector>, String> {
    let Some(s) = selector else { return Ok(None) };
    let expressions: Vec<(String, String, Vec<String>)> = s
        .match_expressions
        .iter()
        .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone()))
        .collect();
    LabelSelector::from_parts(&s.match_labels, &expressions)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A ReplicaSet's or Deployment's replicas, selector and template.
fn validate_workload(
    replicas: Option<i32>,
    selector: Option<&skiff::pb::meta::v1::LabelSelector>,
    template: Option<&PodTemplateSpec>,
    errors: &mut FieldErrors,
) {
    validate_replicas(replicas, errors);
    validate_template(template, meta_selector(selector), errors);
}

fn validate_replicas(replicas: Option<i32>, errors: &mut FieldErrors) {
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errors.invalid(
            "spec.replicas",
            r.to_string(),
            "must be greater than or equal to 0",
        );
    }
}

impl Strategy for ReplicationController {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            // Kubernetes: an empty selector defaults to the template's labels.
            if spec.selector.is_empty()
                && let Some(labels) = spec
                    .template
                    .as_ref()
                    .and_then(|t| t.metadata.as_ref())
                    .map(|m| m.labels.clone())
            {
                spec.selector = labels;
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_replicas(spec.replicas, errors);
        let selector = if spec.selector.is_empty() {
            Ok(None)
        } else {
            LabelSelector::from_parts(&spec.selector, &[])
                .map(Some)
                .map_err(|e| e.to_string())
        };
        validate_template(spec.template.as_ref(), selector, errors);
    }
}

impl Strategy for ReplicaSet {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_workload(
            spec.replicas,
            spec.selector.as_ref(),
            spec.template.as_ref(),
            errors,
        );
    }
}

/// An int-or-string that is a count or a percentage ("25%").
fn validate_int_or_percent(path: &str, value: Option<&Value>, errors: &mut FieldErrors) {
    match value.and_then(|v| v.kind.as_ref()) {
        None => {}
        Some(ValueKind::NumberValue(n)) if *n >= 0.0 && n.fract() == 0.0 => {}
        Some(ValueKind::StringValue(s))
            if s.strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .is_some() => {}
        Some(_) => errors.push(
            path,
            "Invalid value: must be a non-negative integer or a percentage like \"25%\"",
        ),
    }
}

impl Strategy for Deployment {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            spec.progress_deadline_seconds.get_or_insert(600);
            let strategy = spec
                .strategy
                .get_or_insert_with(DeploymentStrategy::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let percent = |p: &str| Value {
                    kind: Some(ValueKind::StringValue(p.into())),
                };
                let ru = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDeployment::default);
                ru.max_unavailable.get_or_insert_with(|| percent("25%"));
                ru.max_surge.get_or_insert_with(|| percent("25%"));
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_workload(
            spec.replicas,
            spec.selector.as_ref(),
            spec.template.as_ref(),
            errors,
        );
        if let Some(strategy) = &spec.strategy {
            match strategy.r#type.as_str() {
                "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            ru.max_unavailable.as_ref(),
                            errors,
                        );
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxSurge",
                            ru.max_surge.as_ref(),
                            errors,
                        );
                    }
                }
                "Recreate" => {
                    if strategy.rolling_update.is_some() {
                        errors.push(
                            "spec.strategy.rollingUpdate",
                            "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                        );
                    }
                }
                other => errors.push(
                    "spec.strategy.type",
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
                    ),
                ),
            }
        }
    }
}

// === services ===

impl Strategy for Service {
    const NAME_RULE: NameRule = NameRule::Label;

    fn cluster_ip_request(&self) -> Option<Option<String>> {
        let spec = self.spec.as_ref()?;
        match (spec.r#type.as_str(), spec.cluster_ip.as_str()) {
            ("ExternalName", _) | (_, "None") => None,
            (_, "") => Some(None),
            (_, ip) => Some(Some(ip.to_string())),
        }
    }

    fn set_cluster_ip(&mut self, ip: &str) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.cluster_ip = ip.to_string();
        spec.cluster_ips = vec![ip.to_string()];
    }

    fn cluster_ip(&self) -> String {
        // Only a Service that needs an address holds one (an ExternalName
        // Service's clusterIP field claims nothing).
        match self.cluster_ip_request() {
            Some(Some(ip)) => ip,
            _ => String::new(),
        }
    }

    fn node_port_requests(&self) -> Vec<(usize, Option<u16>, i32, String)> {
        let Some(spec) = self.spec.as_ref() else {
            return Vec::new();
        };
        if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
            return Vec::new();
        }
        spec.ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let wanted = u16::try_from(p.node_port).ok().filter(|n| *n > 0);
                (i, wanted, p.port, p.protocol.clone())
            })
            .collect()
    }

    fn set_node_port(&mut self, index: usize, port: u16) {
        if let Some(p) = self.spec.as_mut().and_then(|s| s.ports.get_mut(index)) {
            p.node_port = i32::from(port);
        }
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            if spec.r#type.is_empty() {
                spec.r#type = "ClusterIP".into();
            }
            if spec.session_affinity.is_empty() {
                spec.session_affinity = "None".into();
            }
            // Only NodePort and LoadBalancer Services hold node ports.
            if !matches!(spec.r#type.as_str(), "NodePort" | "LoadBalancer") {
                for p in &mut spec.ports {
                    p.node_port = 0;
                }
            }
            for p in &mut spec.ports {
                if p.protocol.is_empty() {
                    p.protocol = "TCP".into();
                }
                if p.target_port.is_none() {
                    p.target_port = Some(Value {
                        kind: Some(ValueKind::NumberValue(f64::from(p.port))),
                    });
                }
            }
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        let supported = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !supported.contains(&spec.r#type.as_str()) {
            errors.push(
                "spec.type",
                format!(
                    "Unsupported value: {:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                    spec.r#type
                ),
            );
        }
        if spec.r#type != "ExternalName" && spec.ports.is_empty() {
            errors.required("spec.ports");
        }
        for (i, p) in spec.ports.iter().enumerate() {
            if !(0..=65535).contains(&p.node_port) {
                errors.push(
                    format!("spec.ports[{i}].nodePort"),
                    format!(
                        "Invalid value: {}: must be between 1 and 65535",
                        p.node_port
                    ),
                );
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if spec.ports.len() > 1 && p.name.is_empty() {
                errors.required(format!("{path}.name"));
            }
            if !p.name.is_empty() && !names.insert(p.name.as_str()) {
                errors.push(
                    format!("{path}.name"),
                    format!("Duplicate value: {:?}", p.name),
                );
            }
            if validation::is_valid_port_num(p.port).is_err() {
                errors.invalid(
                    format!("{path}.port"),
                    p.port.to_string(),
                    "must be between 1 and 65535, inclusive",
                );
            }
            validate_protocol(&format!("{path}.protocol"), &p.protocol, errors);
            match p.target_port.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(ValueKind::NumberValue(n))
                    if n.fract() == 0.0 && (1.0..=65535.0).contains(n) => {}
                Some(ValueKind::StringValue(s)) if validation::is_port_name(s).is_ok() => {}
                Some(ValueKind::StringValue(s))
                    if s.parse::<i32>()
                        .is_ok_and(|n| validation::is_valid_port_num(n).is_ok()) => {}
                None => {}
                Some(_) => errors.push(
                    format!("{path}.targetPort"),
                    "Invalid value: must be a port number (1-65535) or a port name",
                ),
            }
        }
        validation::validate_labels("spec.selector", &spec.selector, errors);
        if !matches!(spec.session_affinity.as_str(), "None" | "ClientIP") {
            errors.push(
                "spec.sessionAffinity",
                format!(
                    "Unsupported value: {:?}: supported values: \"ClientIP\", \"None\"",
                    spec.session_affinity
                ),
            );
        }
    }
}

impl Strategy for Endpoints {}

// === cluster objects ===

impl Strategy for Namespace {
    const NAME_RULE: NameRule = NameRule::Label;
    const FIELDS: &'static [&'static str] = &["status.phase"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "status.phase").then(|| self.status.as_ref().map_or("", |s| &s.phase).to_string())
    }

    fn default_fields(&mut self) {
        self.spec.get_or_insert_with(NamespaceSpec::default);
        // The namespace controller removes this once a deleted namespace
        // is empty; until then it stays, Terminating. Live namespaces
        // always carry it, whatever an update sends.
        let meta = self.metadata_mut();
        if meta.deletion_timestamp.is_none()
            && !meta.finalizers.iter().any(|f| f == NAMESPACE_FINALIZER)
        {
            meta.finalizers.push(NAMESPACE_FINALIZER.into());
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if let Some(meta) = &self.metadata {
            crate::podsecurity::validate_labels(&meta.labels, errors);
        }
    }

    fn mark_deleting(&mut self) {
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase = "Terminating".into();
    }

    fn prepare_create(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: "Active".into(),
            ..Default::default()
        });
    }
}

impl Strategy for Node {
    const FIELDS: &'static [&'static str] = &["spec.unschedulable"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "spec.unschedulable").then(|| {
            self.spec
                .as_ref()
                .is_some_and(|s| s.unschedulable)
                .to_string()
        })
    }
}

impl Strategy for Event {
    const FIELDS: &'static [&'static str] = &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "reason",
        "type",
    ];

    fn field(&self, path: &str) -> Option<String> {
        let obj = self.involved_object.as_ref();
        let from = |f: fn(&skiff::pb::core::v1::ObjectReference) -> &String| {
            obj.map_or(String::new(), |o| f(o).clone())
        };
        match path {
            "involvedObject.kind" => Some(from(|o| &o.kind)),
            "involvedObject.namespace" => Some(from(|o| &o.namespace)),
            "involvedObject.name" => Some(from(|o| &o.name)),
            "involvedObject.uid" => Some(from(|o| &o.uid)),
            "reason" => Some(self.reason.clone()),
            "type" => Some(self.r#type.clone()),
            _ => None,
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if self.involved_object.is_none() {
            errors.required("involvedObject");
        }
    }
}

fn validate_data_keys<V>(path: &str, data: &BTreeMap<String, V>, errors: &mut FieldErrors) {
    for key in data.keys() {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && !key.starts_with("..")
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            errors.invalid(
                format!("{path}[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.', and must not start with '..'",
            );
        }
    }
}

impl Strategy for Secret {
    const FIELDS: &'static [&'static str] = &["type"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "type").then(|| self.r#type.clone())
    }

    fn default_fields(&mut self) {
        if self.r#type.is_empty() {
            self.r#type = "Opaque".into();
        }
        // Kubernetes: stringData is write-only, merged into data.
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, v.into_bytes());
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_data_keys("data", &self.data, errors);
    }
}

impl Strategy for ConfigMap {
    fn validate(&self, errors: &mut FieldErrors) {
        validate_data_keys("data", &self.data, errors);
        validate_data_keys("binaryData", &self.binary_data, errors);
        for key in self.data.keys() {
            if self.binary_data.contains_key(key) {
                errors.push(
                    format!("data[{key}]"),
                    "Invalid value: duplicate of key present in binaryData",
                );
            }
        }
    }
}

impl Strategy for ServiceAccount {}

impl Strategy for Lease {
    fn validate(&self, errors: &mut FieldErrors) {
        if let Some(spec) = &self.spec
            && spec.lease_duration_seconds.is_some_and(|d| d <= 0)
        {
            errors.push(
                "spec.leaseDurationSeconds",
                "Invalid value: must be greater than 0",
            );
        }
    }
}

// === autoscalers ===

impl Strategy for HorizontalPodAutoscaler {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.is_empty() {
            spec.metrics.push(MetricSpec {
                r#type: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: Some(MetricTarget {
                        r#type: "Utilization".into(),
                        average_utilization: Some(80),
                        ..Default::default()
                    }),
                }),
            });
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        match &spec.scale_target_ref {
            None => errors.required("spec.scaleTargetRef"),
            Some(target) => {
                if !matches!(
                    target.kind.as_str(),
                    "Deployment" | "ReplicaSet" | "ReplicationController"
                ) {
                    errors.invalid(
                        "spec.scaleTargetRef.kind",
                        &target.kind,
                        "supported values: \"Deployment\", \"ReplicaSet\", \"ReplicationController\"",
                    );
                }
                if target.name.is_empty() {
                    errors.required("spec.scaleTargetRef.name");
                }
            }
        }
        let min = spec.min_replicas.unwrap_or(1);
        if min < 1 {
            errors.invalid(
                "spec.minReplicas",
                min.to_string(),
                "must be greater than or equal to 1",
            );
        }
        if spec.max_replicas < min.max(1) {
            errors.invalid(
                "spec.maxReplicas",
                spec.max_replicas.to_string(),
                "must be greater than or equal to minReplicas (and 1)",
            );
        }
        for (i, metric) in spec.metrics.iter().enumerate() {
            let path = format!("spec.metrics[{i}]");
            if metric.r#type != "Resource" {
                errors.invalid(
                    format!("{path}.type"),
                    &metric.r#type,
                    "supported values: \"Resource\"",
                );
                continue;
            }
            let Some(resource) = &metric.resource else {
                errors.required(format!("{path}.resource"));
                continue;
            };
            if !matches!(resource.name.as_str(), "cpu" | "memory") {
                errors.invalid(
                    format!("{path}.resource.name"),
                    &resource.name,
                    "supported values: \"cpu\", \"memory\"",
                );
            }
            let target = resource.target.clone().unwrap_or_default();
            match target.r#type.as_str() {
                "Utilization" if target.average_utilization.is_some_and(|u| u > 0) => {}
                "Utilization" => {
                    errors.required(format!("{path}.resource.target.averageUtilization"))
                }
                "AverageValue" if target.average_value.parse::<Quantity>().is_ok() => {}
                "AverageValue" => errors.invalid(
                    format!("{path}.resource.target.averageValue"),
                    &target.average_value,
                    "must be a quantity like 200m or 64Mi",
                ),
                other => errors.invalid(
                    format!("{path}.resource.target.type"),
                    other,
                    "supported values: \"Utilization\", \"AverageValue\"",
                ),
            }
        }
    }
}

// === jobs ===

/// The label a Job's pods and selector carry: its uid.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label naming a pod's Job.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

impl Strategy for Job {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        let (uid, name) = self
            .metadata
            .as_ref()
            .map(|m| (m.uid.clone(), m.name.clone()))
            .unwrap_or_default();
        let Some(spec) = &mut self.spec else { return };
        if spec.parallelism.is_none() && spec.completions.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.suspend.get_or_insert(false);
        spec.manual_selector.get_or_insert(false);
        if spec.completion_mode.is_empty() {
            spec.completion_mode = "NonIndexed".into();
        }
        // Kubernetes' generated selector: the job's uid, on the selector
        // and the template (and the legacy labels beside it).
        if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
            spec.selector = Some(skiff::pb::meta::v1::LabelSelector {
                match_labels: [(JOB_UID_LABEL.to_string(), uid.clone())].into(),
                ..Default::default()
            });
            let meta = spec
                .template
                .get_or_insert_with(PodTemplateSpec::default)
                .metadata
                .get_or_insert_with(ObjectMeta::default);
            for (key, value) in [
                (JOB_UID_LABEL, &uid),
                ("controller-uid", &uid),
                (JOB_NAME_LABEL, &name),
                ("job-name", &name),
            ] {
                meta.labels.insert(key.into(), value.clone());
            }
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_template(
            spec.template.as_ref(),
            meta_selector(spec.selector.as_ref()),
            errors,
        );
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map_or("", |s| s.restart_policy.as_str());
        if !matches!(restart, "Never" | "OnFailure") {
            errors.push(
                "spec.template.spec.restartPolicy",
                format!(
                    "Unsupported value: {restart:?}: supported values: \"OnFailure\", \"Never\""
                ),
            );
        }
        for (field, value) in [
            ("spec.parallelism", spec.parallelism),
            ("spec.completions", spec.completions),
            ("spec.backoffLimit", spec.backoff_limit),
        ] {
            if let Some(v) = value.filter(|v| *v < 0) {
                errors.invalid(field, v.to_string(), "must be greater than or equal to 0");
            }
        }
        if spec.active_deadline_seconds.is_some_and(|d| d <= 0) {
            errors.push(
                "spec.activeDeadlineSeconds",
                "Invalid value: must be greater than 0",
            );
        }
        if !matches!(spec.completion_mode.as_str(), "" | "NonIndexed") {
            errors.invalid(
                "spec.completionMode",
                &spec.completion_mode,
                "supported values: \"NonIndexed\" (Indexed jobs are not supported)",
            );
        }
    }
}

// === daemon sets ===

impl Strategy for DaemonSet {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.revision_history_limit.get_or_insert(10);
            let strategy = spec
                .update_strategy
                .get_or_insert_with(DaemonSetUpdateStrategy::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let count = |n: f64| Value {
                    kind: Some(ValueKind::NumberValue(n)),
                };
                let ru = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDaemonSet::default);
                ru.max_unavailable.get_or_insert_with(|| count(1.0));
                ru.max_surge.get_or_insert_with(|| count(0.0));
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_template(
            spec.template.as_ref(),
            meta_selector(spec.selector.as_ref()),
            errors,
        );
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map_or("Always", |s| s.restart_policy.as_str());
        if restart != "Always" {
            errors.push(
                "spec.template.spec.restartPolicy",
                format!("Unsupported value: {restart:?}: supported values: \"Always\""),
            );
        }
        if let Some(strategy) = &spec.update_strategy {
            match strategy.r#type.as_str() {
                "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            ru.max_unavailable.as_ref(),
                            errors,
                        );
                        validate_int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxSurge",
                            ru.max_surge.as_ref(),
                            errors,
                        );
                    }
                }
                "OnDelete" => {}
                other => errors.push(
                    "spec.updateStrategy.type",
                    format!(
                        "Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""
                    ),
                ),
            }
        }
    }
}

// === rbac ===

/// The API group of RBAC's own kinds (users, groups and role refs name it).
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn validate_rules(rules: &[PolicyRule], cluster: bool, errors: &mut FieldErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errors.required(format!("{path}.verbs"));
        }
        if !rule.non_resource_urls.is_empty() {
            if !cluster {
                errors.push(
                    format!("{path}.nonResourceURLs"),
                    "Invalid value: namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !rule.resources.is_empty() || !rule.api_groups.is_empty() {
                errors.push(
                    format!("{path}.nonResourceURLs"),
                    "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if rule.api_groups.is_empty() {
            errors.required(format!("{path}.apiGroups"));
        }
        if rule.resources.is_empty() {
            errors.required(format!("{path}.resources"));
        }
    }
}

fn validate_binding(
    subjects: &[Subject],
    role_ref: Option<&RoleRef>,
    cluster: bool,
    errors: &mut FieldErrors,
) {
    match role_ref {
        None => errors.required("roleRef"),
        Some(r) => {
            if r.api_group != RBAC_GROUP {
                errors.invalid(
                    "roleRef.apiGroup",
                    &r.api_group,
                    format!("supported values: {RBAC_GROUP:?}"),
                );
            }
            let kinds: &[&str] = if cluster {
                &["ClusterRole"]
            } else {
                &["Role", "ClusterRole"]
            };
            if !kinds.contains(&r.kind.as_str()) {
                errors.invalid(
                    "roleRef.kind",
                    &r.kind,
                    format!("supported values: {kinds:?}"),
                );
            }
            if r.name.is_empty() {
                errors.required("roleRef.name");
            }
        }
    }
    for (i, subject) in subjects.iter().enumerate() {
        let path = format!("subjects[{i}]");
        if subject.name.is_empty() {
            errors.required(format!("{path}.name"));
        }
        match subject.kind.as_str() {
            "User" | "Group" => {
                if subject.api_group != RBAC_GROUP {
                    errors.invalid(
                        format!("{path}.apiGroup"),
                        &subject.api_group,
                        format!("supported values: {RBAC_GROUP:?}"),
                    );
                }
            }
            "ServiceAccount" => {
                if !subject.api_group.is_empty() {
                    errors.invalid(
                        format!("{path}.apiGroup"),
                        &subject.api_group,
                        "supported values: \"\"",
                    );
                }
                if cluster && subject.namespace.is_empty() {
                    errors.required(format!("{path}.namespace"));
                }
            }
            other => errors.invalid(
                format!("{path}.kind"),
                other,
                "supported values: \"User\", \"Group\", \"ServiceAccount\"",
            ),
        }
    }
}

/// Subjects written without an apiGroup get RBAC's, as Kubernetes' v1
/// defaulting does for users and groups.
fn default_subjects(subjects: &mut [Subject]) {
    for subject in subjects {
        if subject.api_group.is_empty() && matches!(subject.kind.as_str(), "User" | "Group") {
            subject.api_group = RBAC_GROUP.into();
        }
    }
}

impl Strategy for Role {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, errors: &mut FieldErrors) {
        validate_rules(&self.rules, false, errors);
    }
}

impl Strategy for ClusterRole {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, errors: &mut FieldErrors) {
        validate_rules(&self.rules, true, errors);
    }
}

impl Strategy for RoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn default_fields(&mut self) {
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_binding(&self.subjects, self.role_ref.as_ref(), false, errors);
    }
}

impl Strategy for ClusterRoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn default_fields(&mut self) {
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_binding(&self.subjects, self.role_ref.as_ref(), true, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{ContainerPort, PodSpec};

    fn pod(spec: PodSpec) -> Pod {
        let mut p = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        p.default_fields();
        p
    }

    fn errors_of<K: Strategy>(obj: &K) -> String {
        let mut errors = FieldErrors::default();
        obj.validate(&mut errors);
        errors.to_string()
    }

    #[test]
    fn pod_defaults_follow_kubernetes() {
        let p = pod(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: "busybox:1.36".into(),
                ports: vec![ContainerPort {
                    container_port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
        let spec = p.spec.unwrap();
        assert_eq!(spec.restart_policy, "Always");
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.containers[0].image_pull_policy, "IfNotPresent");
        assert_eq!(spec.containers[0].ports[0].protocol, "TCP");
    }

    #[test]
    fn pod_without_containers_names_the_field() {
        let p = pod(PodSpec::default());
        assert!(errors_of(&p).contains("spec.containers: Required value"));
    }

    #[test]
    fn pod_with_duplicate_container_names_is_rejected() {
        let c = Container {
            name: "a".into(),
            image: "x".into(),
            ..Default::default()
        };
        let p = pod(PodSpec {
            containers: vec![c.clone(), c],
            ..Default::default()
        });
        assert!(errors_of(&p).contains("spec.containers[1].name: Duplicate value"));
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), "web".to_string());
        let mut other = BTreeMap::new();
        other.insert("app".to_string(), "db".to_string());
        let mut d = Deployment {
            spec: Some(skiff::pb::apps::v1::DeploymentSpec {
                selector: Some(skiff::pb::meta::v1::LabelSelector {
                    match_labels: other,
                    ..Default::default()
                }),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels,
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
                            image: "x".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.default_fields();
        let errors = errors_of(&d);
        assert!(
            errors.contains("does not match template labels"),
            "{errors}"
        );
    }
}
