//! May the caller do it: `system:masters` may do anything; a node
//! (`system:node:NAME` in `system:nodes`) is held to Kubernetes' node
//! authorizer and NodeRestriction rules; everyone else gets what RBAC
//! grants.

use std::sync::Arc;

use skiff::pb::api::v1::GetRequest;
use skiff::pb::authentication::v1::UserInfo;
use skiff::pb::core::v1::Pod;

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

/// Decides actions.
pub struct Authorizer {
    /// Looks up pods (is it bound to the calling node?).
    pub registry: Arc<Registry>,
    /// Roles and bindings.
    pub rbac: Arc<Rbac>,
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
            ("", "nodes", "create" | "update") | ("", "nodes/status", "update") => {
                if attrs.name == node {
                    allow("its own Node")
                } else {
                    deny(format!("node {node:?} may only change its own Node"))
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
            ("", "configmaps" | "secrets", "get") => allow("its pods' volumes and env"),
            ("", "events", "create" | "update" | "get" | "list") => allow("events"),
            ("", "serviceaccounts/token", "create") => self.token_for(node, attrs).await,
            ("certificates.k8s.io", "certificatesigningrequests/selfnodeclient", "create") => {
                allow("renewing its own certificate")
            }
            _ => deny(format!(
                "node {node:?} may not; nodes may read pods, nodes, services and endpoints, get configmaps and secrets, and write their own Node, Lease, events and their pods' status"
            )),
        }
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
