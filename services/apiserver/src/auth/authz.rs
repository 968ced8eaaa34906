//! May the caller do it: `system:masters` may do anything; a node
//! (`system:node:NAME` in `system:nodes`) is held to Kubernetes' node
//! authorizer and NodeRestriction rules; everyone else gets what RBAC
//! grants.

use std::sync::Arc;

use skiff::pb::api::v1::GetRequest;
use skiff::pb::authentication::v1::{NonResourceRule, ResourceRule, RulesReviewStatus, UserInfo};
use skiff::pb::core::v1::{Node, PersistentVolume, Pod};

use super::attributes::Attributes;
use super::authn::{MASTERS, NODES};
use super::rbac::Rbac;
use crate::registry::{NODE_LEASE_NAMESPACE, Registry};

/// The decision on one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, and why.
    Allow(String),
    /// Refused, and why (may be empty).
    Deny(String),
}

/// The label prefix nodes may not set on themselves.
pub const RESTRICTED_LABELS: &str = "node-restriction.kubernetes.io/";

/// Decides actions.
pub struct Authorizer {
    /// Looks up pods (is it bound to the calling node?).
    pub registry: Arc<Registry>,
    /// Roles and bindings.
    pub rbac: Arc<Rbac>,
    /// What each pod's node is and which secrets and configmaps it uses
    /// (Kubernetes' node authorizer graph); None on a plaintext server.
    pub pod_refs: Option<Arc<crate::index::Index<Pod, PodRefs>>>,
}

/// What the node authorizer keeps of a pod.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodRefs {
    /// The node it is bound to.
    pub node: String,
    /// The Secrets it uses (volumes, env, envFrom, image pull secrets).
    pub secrets: Vec<String>,
    /// The ConfigMaps it uses.
    pub configmaps: Vec<String>,
    /// The PersistentVolumeClaims it uses.
    pub claims: Vec<String>,
}

impl PodRefs {
    /// What `pod` refers to.
    pub fn of(pod: Pod) -> Self {
        let spec = pod.spec.unwrap_or_default();
        let mut refs = Self {
            node: spec.node_name.clone(),
            ..Default::default()
        };
        for volume in &spec.volumes {
            if let Some(s) = &volume.secret {
                refs.secrets.push(s.secret_name.clone());
            }
            if let Some(c) = &volume.config_map {
                refs.configmaps.push(c.name.clone());
            }
            if let Some(c) = &volume.persistent_volume_claim {
                refs.claims.push(c.claim_name.clone());
            }
            for part in volume.projected.iter().flat_map(|p| &p.sources) {
                if let Some(s) = &part.secret {
                    refs.secrets.push(s.name.clone());
                }
                if let Some(c) = &part.config_map {
                    refs.configmaps.push(c.name.clone());
                }
            }
        }
        for c in spec.containers.iter().chain(&spec.init_containers) {
            for env in c.env.iter().filter_map(|e| e.value_from.as_ref()) {
                if let Some(s) = &env.secret_key_ref {
                    refs.secrets.push(s.name.clone());
                }
                if let Some(c) = &env.config_map_key_ref {
                    refs.configmaps.push(c.name.clone());
                }
            }
            for from in &c.env_from {
                if let Some(s) = &from.secret_ref {
                    refs.secrets.push(s.name.clone());
                }
                if let Some(c) = &from.config_map_ref {
                    refs.configmaps.push(c.name.clone());
                }
            }
        }
        refs.secrets
            .extend(spec.image_pull_secrets.iter().map(|s| s.name.clone()));
        refs
    }

    fn uses(&self, resource: &str, name: &str) -> bool {
        let names = match resource {
            "secrets" => &self.secrets,
            "persistentvolumeclaims" => &self.claims,
            _ => &self.configmaps,
        };
        names.iter().any(|n| n == name)
    }
}

/// The node a caller is, when it is one.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES) {
        return None;
    }
    user.username.strip_prefix("system:node:")
}

impl Authorizer {
    /// Decides whether `user` may do `attrs`.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Decision {
        if user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(format!("{MASTERS} may do anything"));
        }
        if let Some(node) = node_name(user) {
            return self.node(node, attrs).await;
        }
        match self.rbac.authorize(user, attrs).await {
            Ok(why) => Decision::Allow(why),
            Err(why) => Decision::Deny(why),
        }
    }

    /// Everything `user` may do in `namespace`, as rules (Kubernetes'
    /// SelfSubjectRulesReview): everything for `system:masters`; the rules
    /// of its RBAC bindings otherwise, with what every authenticated
    /// caller may do (read discovery and health, review itself). A node's
    /// list is incomplete: the node rules decide by its pods, not by rules.
    pub fn rules_review(&self, user: &UserInfo, namespace: &str) -> RulesReviewStatus {
        let all = |verbs: &[&str]| verbs.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        if user.groups.iter().any(|g| g == MASTERS) {
            return RulesReviewStatus {
                resource_rules: vec![ResourceRule {
                    verbs: all(&["*"]),
                    api_groups: all(&["*"]),
                    resources: all(&["*"]),
                    resource_names: Vec::new(),
                }],
                non_resource_rules: vec![NonResourceRule {
                    verbs: all(&["*"]),
                    non_resource_urls: all(&["*"]),
                }],
                incomplete: false,
                evaluation_error: String::new(),
            };
        }
        let mut status = RulesReviewStatus {
            incomplete: node_name(user).is_some(),
            ..Default::default()
        };
        // Kubernetes' system:basic-user and system:discovery.
        status.resource_rules.push(ResourceRule {
            verbs: all(&["create"]),
            api_groups: all(&["authorization.k8s.io"]),
            resources: all(&["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
            resource_names: Vec::new(),
        });
        status.resource_rules.push(ResourceRule {
            verbs: all(&["create"]),
            api_groups: all(&["authentication.k8s.io"]),
            resources: all(&["selfsubjectreviews"]),
            resource_names: Vec::new(),
        });
        status.non_resource_rules.push(NonResourceRule {
            verbs: all(&["get"]),
            non_resource_urls: all(&[
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/healthz",
                "/livez",
                "/openapi",
                "/openapi/*",
                "/readyz",
                "/version",
                "/version/",
            ]),
        });
        // A node is judged by the node rules alone, never by RBAC.
        let rbac_rules = if status.incomplete {
            Vec::new()
        } else {
            self.rbac.rules_for(user, namespace)
        };
        for rule in rbac_rules {
            if rule.non_resource_urls.is_empty() {
                status.resource_rules.push(ResourceRule {
                    verbs: rule.verbs,
                    api_groups: rule.api_groups,
                    resources: rule.resources,
                    resource_names: rule.resource_names,
                });
            } else {
                status.non_resource_rules.push(NonResourceRule {
                    verbs: rule.verbs,
                    non_resource_urls: rule.non_resource_urls,
                });
            }
        }
        status
    }

    /// Kubernetes' escalation rule for RBAC writes: a Role or ClusterRole
    /// may only grant what its writer holds (or the writer may `escalate`
    /// it), and a binding may only grant a role whose every rule the writer
    /// holds (or the writer may `bind` it).
    ///
    /// # Errors
    /// What the writer would grant that it does not hold.
    pub async fn no_escalation(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), String> {
        use prost::Message as _;
        use skiff::pb::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
        if attrs.group != crate::strategy::RBAC_GROUP
            || !matches!(attrs.verb.as_str(), "create" | "update")
            || user.groups.iter().any(|g| g == MASTERS)
        {
            return Ok(());
        }
        let Some(message) = attrs.message.as_deref() else {
            return Ok(());
        };
        let bad = |e: prost::DecodeError| e.to_string();
        let may = async |verb: &str, resource: &str, name: &str| {
            let asked = Attributes {
                verb: verb.into(),
                group: crate::strategy::RBAC_GROUP.into(),
                resource: resource.into(),
                namespace: attrs.namespace.clone(),
                name: name.into(),
                ..Default::default()
            };
            self.rbac.authorize(user, &asked).await.is_ok()
        };
        let (wanted, escape) = match attrs.resource.as_str() {
            "roles" => (
                Role::decode(message).map_err(bad)?.rules,
                may("escalate", "roles", &attrs.name).await,
            ),
            "clusterroles" => (
                ClusterRole::decode(message).map_err(bad)?.rules,
                may("escalate", "clusterroles", &attrs.name).await,
            ),
            "rolebindings" | "clusterrolebindings" => {
                let role_ref = if attrs.resource == "rolebindings" {
                    RoleBinding::decode(message).map_err(bad)?.role_ref
                } else {
                    ClusterRoleBinding::decode(message).map_err(bad)?.role_ref
                }
                .unwrap_or_default();
                let plural = if role_ref.kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", plural, &role_ref.name).await {
                    return Ok(());
                }
                let rules = self
                    .rbac
                    .referenced_rules(&role_ref, &attrs.namespace)
                    .ok_or_else(|| {
                        format!(
                            "{} {:?} not found (only a writer who may bind it can refer to it)",
                            role_ref.kind, role_ref.name
                        )
                    })?;
                (rules, false)
            }
            _ => return Ok(()),
        };
        if escape {
            return Ok(());
        }
        let held = self.rbac.rules_for(user, &attrs.namespace);
        let missing = super::rbac::uncovered(&held, &wanted);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "user {:?} is attempting to grant RBAC permissions not currently held: {}",
                user.username,
                missing.join(", ")
            ))
        }
    }

    /// The stored pod `attrs` names, if any.
    async fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.registry
            .get(GetRequest {
                namespace: namespace.into(),
                name: name.into(),
            })
            .await
            .ok()
    }

    /// What a node may do: read what running its pods needs; write its own
    /// Node and Lease, Events, and the status of (and the deletion of) the
    /// pods bound to it; ask for tokens of its pods' service accounts; and
    /// renew its own certificate.
    async fn node(&self, node: &str, attrs: &Attributes) -> Decision {
        let allow = |why: &str| Decision::Allow(format!("node {node:?}: {why}"));
        let deny = |why: String| Decision::Deny(why);
        let read = matches!(attrs.verb.as_str(), "get" | "list" | "watch");
        let group = attrs.group.as_str();
        match (group, attrs.full_resource().as_str(), attrs.verb.as_str()) {
            ("", "nodes", _) | ("", "nodes/status", _) if read => allow("nodes are readable"),
            ("", "nodes/status", "update") => {
                if attrs.name == node {
                    allow("its own Node's status")
                } else {
                    deny(format!("node {node:?} may only change its own Node"))
                }
            }
            ("", "nodes", "create" | "update") => {
                if attrs.name != node {
                    deny(format!("node {node:?} may only change its own Node"))
                } else if let Err(why) = self.own_node_change(attrs).await {
                    deny(format!("node {node:?}: {why}"))
                } else {
                    allow("its own Node")
                }
            }
            ("coordination.k8s.io", "leases", "get" | "create" | "update") => {
                if attrs.namespace == NODE_LEASE_NAMESPACE && attrs.name == node {
                    allow("its own Lease")
                } else {
                    deny(format!(
                        "node {node:?} may only use its own Lease {NODE_LEASE_NAMESPACE}/{node}"
                    ))
                }
            }
            ("", "pods", _) if read => allow("pods are readable"),
            ("", "pods/status", "update") | ("", "pods", "delete") => {
                match self.pod(&attrs.namespace, &attrs.name).await {
                    // Not there: the call fails on its own (NotFound).
                    None => allow("no such pod"),
                    Some(pod) => {
                        let bound = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
                        if bound == node {
                            allow("the pod is bound to it")
                        } else if bound.is_empty() {
                            deny(format!(
                                "node {node:?} may only change pods bound to it; this pod is not bound"
                            ))
                        } else {
                            deny(format!(
                                "node {node:?} may only change pods bound to it; this pod is bound to {bound:?}"
                            ))
                        }
                    }
                }
            }
            ("", "services" | "endpoints", _) if read => allow("services are readable"),
            // The agent enforces NetworkPolicies: which pods they select
            // and allow depends on every namespace's labels.
            ("", "namespaces", _) | ("networking.k8s.io", "networkpolicies", _) if read => {
                allow("network policies and the namespaces they select are readable")
            }
            ("", "configmaps" | "secrets" | "persistentvolumeclaims", "get") => {
                self.referenced(node, attrs).await
            }
            // Which volume a claim is bound to, and where it is: the agent
            // mounts it, and removes the directories of its node's
            // local-path volumes once they are deleted.
            ("", "persistentvolumes", _) if read => allow("persistent volumes are readable"),
            ("", "persistentvolumes", "update") => self.own_local_volume(node, attrs).await,
            // Kubernetes' system:node role: write Events, never read them
            // (they tell of every namespace's objects).
            ("", "events", "create" | "update" | "patch") => allow("writing events"),
            ("", "serviceaccounts/token", "create") => self.token_for(node, attrs).await,
            ("certificates.k8s.io", "certificatesigningrequests/selfnodeclient", "create") => {
                allow("renewing its own certificate")
            }
            _ => deny(format!(
                "node {node:?} may not; nodes may read pods, nodes, services, endpoints, namespaces, network policies and persistent volumes, get the configmaps, secrets and claims their pods use, and write their own Node, Lease, their pods' status, their deleted local volumes and events"
            )),
        }
    }

    /// A node may get a Secret or ConfigMap only when a pod bound to it
    /// uses it. The index answers; a miss is confirmed with a live read of
    /// the namespace's pods on the node (the index may be moments behind a
    /// binding the agent has already seen).
    async fn referenced(&self, node: &str, attrs: &Attributes) -> Decision {
        let resource = attrs.resource.as_str();
        let allow = || Decision::Allow(format!("node {node:?}: a pod bound to it uses it"));
        let indexed = self.pod_refs.as_ref().is_some_and(|index| {
            index
                .list(Some(&attrs.namespace))
                .iter()
                .any(|p| p.node == node && p.uses(resource, &attrs.name))
        });
        if indexed {
            return allow();
        }
        let live = self
            .registry
            .list::<Pod>(skiff::pb::api::v1::ListRequest {
                namespace: attrs.namespace.clone(),
                field_selector: format!("spec.nodeName={node}"),
                ..Default::default()
            })
            .await;
        let used = live.is_ok_and(|pods| {
            pods.items
                .into_iter()
                .any(|p| PodRefs::of(p).uses(resource, &attrs.name))
        });
        if used {
            allow()
        } else {
            Decision::Deny(format!(
                "no pod bound to node {node:?} uses this {}",
                resource.trim_end_matches('s')
            ))
        }
    }

    /// A node may update a PersistentVolume only to say it has removed
    /// its directory: a local-path volume of that node, being deleted,
    /// whose update only takes the `skiff.io/local-path` finalizer off.
    async fn own_local_volume(&self, node: &str, attrs: &Attributes) -> Decision {
        let stored = self
            .registry
            .get::<PersistentVolume>(GetRequest {
                namespace: String::new(),
                name: attrs.name.clone(),
            })
            .await;
        let Ok(pv) = stored else {
            // Not there: the call fails on its own (NotFound).
            return Decision::Allow(format!("node {node:?}: no such volume"));
        };
        let meta = pv.metadata.clone().unwrap_or_default();
        let local_path = meta
            .annotations
            .get(skiff::names::PROVISIONED_BY_ANNOTATION)
            .is_some_and(|p| p == skiff::names::LOCAL_PATH_PROVISIONER);
        let only_released = || {
            use prost::Message as _;
            let Some(next) = attrs
                .message
                .as_deref()
                .and_then(|m| PersistentVolume::decode(m).ok())
            else {
                return false;
            };
            let next_meta = next.metadata.clone().unwrap_or_default();
            let mut remaining = meta.finalizers.clone();
            remaining.retain(|f| f != skiff::names::LOCAL_PATH_FINALIZER);
            next.spec == pv.spec
                && next_meta.finalizers == remaining
                && next_meta.labels == meta.labels
                && next_meta.annotations == meta.annotations
                && next_meta.owner_references == meta.owner_references
        };
        if local_path
            && meta.deletion_timestamp.is_some()
            && skiff::volumes::pinned_node(&pv) == Some(node)
            && only_released()
        {
            Decision::Allow(format!(
                "node {node:?}: a deleted local-path volume of its own"
            ))
        } else {
            Decision::Deny(format!(
                "node {node:?} may only update the deleted local-path volumes of its own node, to remove their skiff.io/local-path finalizer"
            ))
        }
    }

    /// What a node may not do to its own Node (Kubernetes'
    /// NodeRestriction): set or change `node-restriction.kubernetes.io/`
    /// labels, or change its taints once registered (they are the cluster's
    /// to set: the node lifecycle controller, an administrator).
    async fn own_node_change(&self, attrs: &Attributes) -> Result<(), String> {
        use prost::Message as _;
        let Some(message) = attrs.message.as_deref() else {
            return Ok(());
        };
        let next = Node::decode(message).map_err(|e| e.to_string())?;
        let stored: Option<Node> = self
            .registry
            .get(GetRequest {
                namespace: String::new(),
                name: attrs.name.clone(),
            })
            .await
            .ok()
            // A create is judged against no Node: one that exists already
            // is refused as AlreadyExists after this, not as a change.
            .filter(|_| attrs.verb != "create");
        let restricted = |n: Option<&Node>| -> Vec<(String, String)> {
            n.and_then(|n| n.metadata.as_ref())
                .map(|m| {
                    m.labels
                        .iter()
                        .filter(|(k, _)| k.starts_with(RESTRICTED_LABELS))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        if restricted(Some(&next)) != restricted(stored.as_ref()) {
            return Err(format!(
                "may not set or change {RESTRICTED_LABELS}* labels (they are for the cluster's administrators)"
            ));
        }
        // Its pod range is the controller manager's to give: a node that
        // chose its own could take another node's pods' traffic.
        let cidrs = |n: Option<&Node>| {
            n.and_then(|n| n.spec.as_ref())
                .map(|s| (s.pod_cidr.clone(), s.pod_cidrs.clone()))
                .unwrap_or_default()
        };
        if cidrs(Some(&next)) != cidrs(stored.as_ref()) {
            return Err(
                "may not set or change its podCIDR (the controller manager assigns it)".into(),
            );
        }
        if let Some(stored) = &stored {
            let taints = |n: &Node| {
                n.spec
                    .as_ref()
                    .map(|s| s.taints.clone())
                    .unwrap_or_default()
            };
            if taints(&next) != taints(stored) {
                return Err("may not change its taints".into());
            }
        }
        Ok(())
    }

    /// A node may have tokens made only for the service account of a pod
    /// bound to it, bound to that pod.
    async fn token_for(&self, node: &str, attrs: &Attributes) -> Decision {
        let Some((pod_name, uid)) = &attrs.bound_pod else {
            return Decision::Deny(format!(
                "node {node:?} may only request tokens bound to a pod (spec.boundObjectRef)"
            ));
        };
        let Some(pod) = self.pod(&attrs.namespace, pod_name).await else {
            return Decision::Deny(format!("no pod {}/{pod_name}", attrs.namespace));
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let account = if spec.service_account_name.is_empty() {
            "default"
        } else {
            spec.service_account_name.as_str()
        };
        let same_uid =
            uid.is_empty() || skiff::Resource::metadata(&pod).is_some_and(|m| m.uid == *uid);
        if spec.node_name != node || !same_uid {
            Decision::Deny(format!(
                "node {node:?} may only request tokens for pods bound to it"
            ))
        } else if account != attrs.name {
            Decision::Deny(format!(
                "pod {pod_name:?} runs as service account {account:?}, not {:?}",
                attrs.name
            ))
        } else {
            Decision::Allow(format!("node {node:?}: its pod's service account"))
        }
    }
}
