//! Per-kind rules: defaults, what a create resets, validation, and the
//! fields a field selector may name (Kubernetes' "strategy" per registry).
//!
//! The [`Strategy`] trait and the checks every kind shares are here; each
//! kind family's rules sit in a file of their own: `pod`, `workloads`
//! (ReplicationController, ReplicaSet, Deployment, DaemonSet), `service`,
//! `cluster` (namespaces, nodes, events, secrets, configmaps, service
//! accounts, leases), `autoscaling`, `batch`, `rbac`, `storage`
//! (persistent volumes and claims, storage classes), `policy`
//! (disruption budgets), `scheduling` (priority classes), `networking`
//! (ingresses and ingress classes), `quota`
//! (resource quotas and limit ranges).

use skiff::Resource;
use skiff::pb::core::v1::{PodSpec, ServiceAccount};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::validation::{self, FieldErrors};

mod autoscaling;
mod batch;
mod cluster;
mod networking;
mod pod;
mod policy;
mod quota;
mod rbac;
mod scheduling;
mod securitycontext;
mod service;
mod storage;
mod unsupported;
mod workloads;

pub use batch::{JOB_NAME_LABEL, JOB_UID_LABEL};
pub use networking::DEFAULT_INGRESS_CLASS_ANNOTATION;
pub use rbac::RBAC_GROUP;
pub use scheduling::{PREEMPT_LOWER_PRIORITY, SYSTEM_CLASSES, SYSTEM_PREFIX};

/// Where pods find their service account's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub use skiff::names::NAMESPACE_FINALIZER;

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
pub trait Strategy: Resource + serde::Serialize + serde::de::DeserializeOwned {
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

    /// Checks only a create makes (what an update of an object that
    /// already has it may keep).
    fn validate_create(&self, _errors: &mut FieldErrors) {}

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
    /// get its token (see [`Pod`](skiff::pb::core::v1::Pod)'s). Other kinds: nothing.
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

    /// Whether the object asks for the cluster's default StorageClass
    /// (a claim that names no class: Kubernetes' DefaultStorageClass
    /// admission gives it one).
    fn wants_default_storage_class(&self) -> bool {
        false
    }

    /// Whether the object asks for the cluster's default IngressClass (an
    /// Ingress that names no class: Kubernetes' DefaultIngressClass
    /// admission gives it one).
    fn wants_default_ingress_class(&self) -> bool {
        false
    }

    /// Gives the object the IngressClass `class`.
    fn set_ingress_class(&mut self, class: &str) {
        let _ = class;
    }

    /// Gives the object the StorageClass `class`.
    fn set_storage_class(&mut self, class: &str) {
        let _ = class;
    }

    /// Kubernetes' Priority admission, on create: the PriorityClass the
    /// object names ("" for the cluster's default) and the priority and
    /// preemption policy it set itself; None for kinds without a
    /// priority (everything but pods).
    fn priority_request(&self) -> Option<PriorityRequest> {
        None
    }

    /// On update, keeps what admission gave the object at create when the
    /// update leaves it out (a pod's priority and preemption policy: a
    /// `replace` of its manifest changes nothing there); on a status
    /// update, what only another writer sets (a pod's nominated node).
    fn keep_admitted(&mut self, current: &Self) {
        let _ = current;
    }

    /// Gives the object its class's name, value and preemption policy.
    fn set_priority(&mut self, class: &str, value: i32, policy: &str) {
        let _ = (class, value, policy);
    }

    /// The name of this object if it is a PriorityClass marked
    /// `globalDefault` (only one may be).
    fn global_default_class(&self) -> Option<&str> {
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

/// What a pod asks of Priority admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityRequest {
    /// The class it names; "" for the cluster's default.
    pub class: String,
    /// The priority it set itself (must match the class's).
    pub priority: Option<i32>,
    /// The preemption policy it set itself (must match the class's).
    pub preemption_policy: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::apps::v1::Deployment;
    use std::collections::BTreeMap;

    use skiff::pb::core::v1::{Container, ContainerPort, Pod, PodSpec, PodTemplateSpec};

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

    fn update_errors_of<K: Strategy>(new: &K, old: &K) -> String {
        let mut errors = FieldErrors::default();
        new.validate_update(old, &mut errors);
        errors.to_string()
    }

    #[test]
    fn immutable_configmaps_and_secrets_refuse_data_changes() {
        use skiff::pb::core::v1::{ConfigMap, Secret};
        let old = ConfigMap {
            data: BTreeMap::from([("a".to_string(), "1".to_string())]),
            immutable: Some(true),
            ..Default::default()
        };
        let mut changed = old.clone();
        changed.data.insert("a".into(), "2".into());
        assert_eq!(
            update_errors_of(&changed, &old),
            "data: Forbidden: field is immutable when `immutable` is set"
        );
        let mut unmarked = old.clone();
        unmarked.immutable = Some(false);
        assert!(update_errors_of(&unmarked, &old).starts_with("immutable: Forbidden"));
        // Labels may still change, and a mutable map's data too.
        assert_eq!(update_errors_of(&old.clone(), &old), "");
        let mutable = ConfigMap {
            immutable: None,
            ..old.clone()
        };
        let mut edited = mutable.clone();
        edited.data.insert("b".into(), "2".into());
        assert_eq!(update_errors_of(&edited, &mutable), "");

        let secret = Secret {
            data: BTreeMap::from([("k".to_string(), b"v".to_vec())]),
            immutable: Some(true),
            r#type: "Opaque".into(),
            ..Default::default()
        };
        let mut changed = secret.clone();
        changed.data.clear();
        changed.r#type = "kubernetes.io/tls".into();
        let errors = update_errors_of(&changed, &secret);
        assert!(
            errors.contains("type: Invalid value: \"kubernetes.io/tls\": field is immutable"),
            "{errors}"
        );
        assert!(
            errors.contains("data: Forbidden: field is immutable when `immutable` is set"),
            "{errors}"
        );
    }

    #[test]
    fn services_are_ipv4_single_stack() {
        use skiff::pb::core::v1::{Service, ServiceSpec};
        let service = |families: &[&str], policy: &str| {
            let mut s = Service {
                spec: Some(ServiceSpec {
                    r#type: "ClusterIP".into(),
                    ports: vec![skiff::pb::core::v1::ServicePort {
                        port: 80,
                        ..Default::default()
                    }],
                    ip_families: families.iter().map(|f| f.to_string()).collect(),
                    ip_family_policy: Some(policy.into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            s.default_fields();
            s
        };
        assert_eq!(errors_of(&service(&["IPv4"], "SingleStack")), "");
        assert_eq!(errors_of(&service(&["IPv4"], "PreferDualStack")), "");
        let errors = errors_of(&service(&["IPv6"], "RequireDualStack"));
        assert!(
            errors.contains(
                "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
            ),
            "{errors}"
        );
        assert!(errors.contains("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"), "{errors}");
    }

    #[test]
    fn hooks_and_probes_need_one_handler_and_stay_off_init_containers() {
        let json = serde_json::json!({
            "initContainers": [{"name": "init", "image": "busybox",
                "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
                "readinessProbe": {"exec": {"command": ["true"]}}}],
            "containers": [{"name": "app", "image": "busybox",
                "lifecycle": {"postStart": {}, "preStop": {"exec": {"command": []}, "sleep": {"seconds": 1}}},
                "livenessProbe": {"httpGet": {"port": 0, "scheme": "http"}, "terminationGracePeriodSeconds": 0},
                "readinessProbe": {"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 5}}]
        });
        let p = pod(serde_json::from_value(json).unwrap());
        let errors = errors_of(&p);
        for expected in [
            "spec.initContainers[0].lifecycle: Forbidden: may not be set for init containers without restartPolicy=Always",
            "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers",
            "spec.containers[0].lifecycle.postStart: Required value: must specify a handler type",
            "spec.containers[0].lifecycle.preStop: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].lifecycle.preStop.exec.command: Required value",
            "spec.containers[0].livenessProbe.httpGet.port: Invalid value",
            "spec.containers[0].livenessProbe.httpGet.scheme: Unsupported value: \"http\"",
            "spec.containers[0].livenessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 5: must not be set for readinessProbes",
        ] {
            assert!(errors.contains(expected), "{expected} in {errors}");
        }
    }

    #[test]
    fn a_priority_class_name_is_a_subdomain_and_the_policy_a_known_one() {
        let json = serde_json::json!({
            "priorityClassName": "Not_A_Name",
            "preemptionPolicy": "Sometimes",
            "containers": [{"name": "app", "image": "busybox"}]
        });
        let errors = errors_of(&pod(serde_json::from_value(json).unwrap()));
        assert!(
            errors.contains("spec.priorityClassName: Invalid value: \"Not_A_Name\""),
            "{errors}"
        );
        assert!(
            errors.contains("spec.preemptionPolicy: Unsupported value: \"Sometimes\""),
            "{errors}"
        );
    }

    #[test]
    fn a_pods_deadline_may_be_set_or_lowered_only() {
        let with = |deadline: Option<i64>| {
            pod(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: "busybox:1.36".into(),
                    ..Default::default()
                }],
                active_deadline_seconds: deadline,
                ..Default::default()
            })
        };
        assert_eq!(update_errors_of(&with(Some(60)), &with(None)), "");
        assert_eq!(update_errors_of(&with(Some(30)), &with(Some(60))), "");
        assert!(
            update_errors_of(&with(Some(90)), &with(Some(60)))
                .contains("must be less than or equal to previous value")
        );
        assert!(
            update_errors_of(&with(None), &with(Some(60)))
                .contains("must not update from a positive integer to nil value")
        );
    }

    #[test]
    fn volume_names_are_unique_and_gated_pods_unbound() {
        let json = serde_json::json!({
            "nodeName": "n1",
            "schedulingGates": [{"name": "example.com/wait"}],
            "volumes": [{"name": "x", "emptyDir": {}}, {"name": "x", "emptyDir": {"medium": "Memory"}}],
            "containers": [{"name": "app", "image": "busybox"}]
        });
        let errors = errors_of(&pod(serde_json::from_value(json).unwrap()));
        assert!(
            errors.contains("spec.volumes[1].name: Duplicate value: \"x\""),
            "{errors}"
        );
        assert!(errors.contains("spec.nodeName: Forbidden: cannot be set until all schedulingGates have been removed"), "{errors}");
    }

    #[test]
    fn a_load_balancers_class_never_changes() {
        use skiff::pb::core::v1::{Service, ServiceSpec};
        let lb = |class: Option<&str>| Service {
            spec: Some(ServiceSpec {
                r#type: "LoadBalancer".into(),
                load_balancer_class: class.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            update_errors_of(&lb(Some("example.com/metal")), &lb(None)).contains(
                "spec.loadBalancerClass: Invalid value: \"example.com/metal\": may not change once set"
            )
        );
        assert_eq!(update_errors_of(&lb(None), &lb(None)), "");
    }

    #[test]
    fn jobs_managed_by_another_controller_are_refused() {
        use skiff::pb::batch::v1::{Job, JobSpec};
        let job = Job {
            spec: Some(JobSpec {
                managed_by: Some("example.com/queue".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(errors_of(&job).contains(
            "spec.managedBy: Forbidden: \"example.com/queue\": Jobs managed by another controller are not supported by Skiff"
        ));
    }

    #[test]
    fn secret_types_require_their_keys() {
        use skiff::pb::core::v1::Secret;
        let secret = |kind: &str, keys: &[&str]| Secret {
            r#type: kind.into(),
            data: keys
                .iter()
                .map(|k| (k.to_string(), b"x".to_vec()))
                .collect(),
            ..Default::default()
        };
        let errors = errors_of(&secret("kubernetes.io/tls", &["tls.crt"]));
        assert_eq!(errors, "data[tls.key]: Required value");
        assert_eq!(
            errors_of(&secret("kubernetes.io/tls", &["tls.crt", "tls.key"])),
            ""
        );
        assert!(
            errors_of(&secret("kubernetes.io/dockerconfigjson", &[]))
                .contains("data[.dockerconfigjson]")
        );
        assert!(
            errors_of(&secret("kubernetes.io/basic-auth", &[]))
                .contains("either username or password")
        );
        assert_eq!(
            errors_of(&secret("kubernetes.io/basic-auth", &["username"])),
            ""
        );
        assert!(
            errors_of(&secret("kubernetes.io/service-account-token", &[]))
                .contains("not supported by Skiff")
        );
        assert_eq!(errors_of(&secret("example.com/anything", &[])), "");
    }

    #[test]
    fn taints_and_tolerations_name_their_effects_and_operators() {
        use skiff::pb::core::v1::{Node, NodeSpec, Taint, Toleration};
        let node = Node {
            spec: Some(NodeSpec {
                taints: vec![Taint {
                    key: "k".into(),
                    effect: "NoExcute".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(
            errors_of(&node).contains("spec.taints[0].effect: Unsupported value: \"NoExcute\"")
        );
        let p = pod(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: "busybox:1.36".into(),
                ..Default::default()
            }],
            tolerations: vec![
                Toleration {
                    key: "k".into(),
                    operator: "Equals".into(),
                    ..Default::default()
                },
                Toleration {
                    key: "k".into(),
                    operator: "Exists".into(),
                    value: "v".into(),
                    ..Default::default()
                },
                Toleration {
                    key: "k".into(),
                    operator: "Exists".into(),
                    effect: "NoSchedule".into(),
                    toleration_seconds: Some(10),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let errors = errors_of(&p);
        assert!(
            errors.contains("spec.tolerations[0].operator: Unsupported value: \"Equals\""),
            "{errors}"
        );
        assert!(
            errors.contains("value must be empty when `operator` is 'Exists'"),
            "{errors}"
        );
        assert!(
            errors.contains("effect must be 'NoExecute' when `tolerationSeconds` is set"),
            "{errors}"
        );
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
