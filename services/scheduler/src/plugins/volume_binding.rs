//! VolumeBinding: a pod goes only where its PersistentVolumeClaims' volumes
//! can be used, as Kubernetes' plugin of the same name decides it.
//!
//! Before the nodes are filtered ([`PodVolumes::of`], Kubernetes'
//! PreFilter) every claim must exist and not be being deleted, and a claim
//! still unbound must wait for its first consumer (an unbound claim of an
//! `Immediate` class is the binder's to bind first). Per node
//! ([`PodVolumes::filter`]): each bound volume's node affinity must allow
//! the node; each waiting claim must find a free volume usable there, or
//! be one the local provisioner can make there (the node publishes where)
//! — unless a volume is already reserved for it (then its node) or an
//! earlier pod's node was written on it (then that node).
//! Once a node is chosen, the scheduler writes it on each waiting claim
//! (`volume.kubernetes.io/selected-node`) and binds the pod only when the
//! claims are bound (Kubernetes' PreBind).
//!
//! It is not listed in profiles: a pod whose volumes cannot be used where
//! it runs cannot run, whatever the profile.

use std::sync::Arc;
use std::time::Duration;

use skiff::Resource as _;
use skiff::names::{LOCAL_PATH_PROVISIONER, LOCAL_PATH_ROOT_ANNOTATION, SELECTED_NODE_ANNOTATION};
use skiff::pb::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use skiff::pb::storage::v1::StorageClass;
use skiff::volumes;
use skiff_client::{Api, Store};

use crate::framework::Reason;

/// The plugin's name.
pub const NAME: &str = "VolumeBinding";

/// A bound volume's node affinity excludes the node.
pub const NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
/// No free volume usable on the node, and none can be made there.
pub const BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";

/// The claims, volumes and classes the scheduler mirrors.
#[derive(Clone)]
pub struct Stores {
    /// Claims.
    pub claims: Store<PersistentVolumeClaim>,
    /// Volumes.
    pub volumes: Store<PersistentVolume>,
    /// Classes.
    pub classes: Store<StorageClass>,
}

/// A claim waiting for its first consumer, and its class.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// The claim.
    pub claim: Arc<PersistentVolumeClaim>,
    /// Whether Skiff's local provisioner makes its volumes.
    pub local_provisioner: bool,
    /// A volume already reserved for it (made for it, or named by it):
    /// only its nodes fit.
    pub reserved: Option<Arc<PersistentVolume>>,
    /// The node an earlier pod was placed on for it: only that node fits
    /// (while it exists: see `forget_gone_nodes`).
    pub selected: Option<String>,
    /// Its selected node is gone: the one chosen now replaces it.
    pub reselect: bool,
}

/// What a pod's claims ask of a node.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    /// The volumes its bound claims hold.
    pub bound: Vec<Arc<PersistentVolume>>,
    /// Its claims that wait for it to be scheduled.
    pub waiting: Vec<Waiting>,
}

impl PodVolumes {
    /// The pod's claims as the stores have them.
    ///
    /// # Errors
    /// Why no node can take the pod now: a claim missing or being
    /// deleted, bound to a volume that does not exist, or unbound in an
    /// `Immediate` class.
    pub fn of(pod: &Pod, stores: &Stores) -> Result<Self, Reason> {
        let mut found = Self::default();
        let namespace = pod.namespace();
        let claims = pod
            .spec
            .iter()
            .flat_map(|s| &s.volumes)
            .filter_map(|v| v.persistent_volume_claim.as_ref());
        for source in claims {
            let name = &source.claim_name;
            let Some(claim) = stores.claims.get(namespace, name) else {
                return Err(format!("persistentvolumeclaim {name:?} not found"));
            };
            if claim
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some())
            {
                return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
            }
            let volume = volumes::claim_volume(&claim);
            let bound = claim.status.as_ref().is_some_and(|s| s.phase == "Bound");
            if !volume.is_empty() && bound {
                match stores.volumes.get("", volume) {
                    Some(pv) if volumes::reserved_for(&pv, &claim) => found.bound.push(pv),
                    Some(_) => {
                        return Err(format!(
                            "persistentvolumeclaim {name:?} names volume {volume:?}, which is bound to another claim"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "persistentvolumeclaim {name:?} is bound to volume {volume:?}, which does not exist"
                        ));
                    }
                }
                continue;
            }
            let class = stores.classes.get("", volumes::claim_class(&claim));
            let waits = class
                .as_ref()
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            if !waits {
                return Err("pod has unbound immediate PersistentVolumeClaims".into());
            }
            let reserved = stores
                .volumes
                .list()
                .into_iter()
                .find(|pv| volumes::reserved_for(pv, &claim) || pv.name() == volume);
            if let Some(pv) = reserved.as_ref().filter(|pv| {
                !volumes::reserved_for(pv, &claim)
                    && pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| !r.uid.is_empty())
            }) {
                return Err(format!(
                    "persistentvolumeclaim {name:?} names volume {:?}, which is bound to another claim",
                    pv.name()
                ));
            }
            let selected = claim
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.get(SELECTED_NODE_ANNOTATION))
                .cloned();
            found.waiting.push(Waiting {
                local_provisioner: class.is_some_and(|c| c.provisioner == LOCAL_PATH_PROVISIONER),
                claim,
                reserved,
                selected,
                reselect: false,
            });
        }
        Ok(found)
    }

    /// Forgets selected nodes that no longer exist (`exists` says which
    /// do): such a claim may go anywhere again, and its annotation is
    /// written anew.
    pub fn forget_gone_nodes(&mut self, exists: impl Fn(&str) -> bool) {
        for w in &mut self.waiting {
            if w.selected.as_deref().is_some_and(|n| !exists(n)) {
                w.selected = None;
                w.reselect = true;
            }
        }
    }

    /// Whether the pod has no claims to consider.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty() && self.waiting.is_empty()
    }

    /// Whether the pod's volumes can be used on `node`.
    ///
    /// # Errors
    /// Kubernetes' reason why not.
    pub fn filter(&self, node: &Node, all: &[Arc<PersistentVolume>]) -> Result<(), Reason> {
        if self.bound.iter().any(|pv| !volumes::node_allows(pv, node)) {
            return Err(NODE_CONFLICT.into());
        }
        let name = node.name();
        for waiting in &self.waiting {
            if waiting.selected.as_deref().is_some_and(|s| s != name) {
                return Err(BIND_CONFLICT.into());
            }
            if let Some(reserved) = &waiting.reserved {
                if !volumes::node_allows(reserved, node) {
                    return Err(NODE_CONFLICT.into());
                }
                continue;
            }
            let free = volumes::best_match(
                &waiting.claim,
                all.iter().map(|v| v.as_ref()),
                Some(node),
                true,
            );
            let can_make = waiting.local_provisioner
                && node
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.annotations.contains_key(LOCAL_PATH_ROOT_ANNOTATION));
            if free.is_none() && !can_make {
                return Err(BIND_CONFLICT.into());
            }
        }
        Ok(())
    }
}

/// How long a pod's binding waits for its claims to be bound on the
/// chosen node (Kubernetes waits up to 10 minutes; a local volume is made
/// in a moment).
pub const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(60);

/// Gives each claim waiting for its first pod the node chosen for it
/// (the binder makes or binds its volume there), and returns once all are
/// bound, each to a volume usable on that node (Kubernetes' PreBind).
///
/// # Errors
/// A claim could not be written, was given another node meanwhile, was
/// not bound in time, or was bound to a volume of another node.
pub async fn bind_claims(
    api: &Api<PersistentVolumeClaim>,
    volumes: &Api<PersistentVolume>,
    waiting: &[Waiting],
    node: &str,
) -> Result<(), tonic::Status> {
    use skiff::names::SELECTED_NODE_ANNOTATION;
    for w in waiting {
        let (namespace, name) = (w.claim.namespace(), w.claim.name());
        let mut attempts = 0;
        loop {
            let mut claim = api.get(namespace, name).await?;
            let selected = claim
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.get(SELECTED_NODE_ANNOTATION));
            if !skiff::volumes::claim_volume(&claim).is_empty()
                || selected.is_some_and(|s| s == node)
            {
                break;
            }
            if let Some(other) = selected.filter(|_| !w.reselect) {
                return Err(tonic::Status::aborted(format!(
                    "persistentvolumeclaim {name:?} was given node {other:?} for another pod"
                )));
            }
            claim
                .metadata_mut()
                .annotations
                .insert(SELECTED_NODE_ANNOTATION.into(), node.into());
            claim.status = None;
            match api.update(claim).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::Aborted && attempts < 5 => attempts += 1,
                Err(s) => return Err(s),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + VOLUME_BIND_TIMEOUT;
    for w in waiting {
        let (namespace, name) = (w.claim.namespace(), w.claim.name());
        loop {
            let claim = api.get(namespace, name).await?;
            if claim.status.as_ref().is_some_and(|s| s.phase == "Bound") {
                let volume = volumes
                    .get("", skiff::volumes::claim_volume(&claim))
                    .await?;
                if let Some(home) = skiff::volumes::pinned_node(&volume).filter(|h| *h != node) {
                    return Err(tonic::Status::aborted(format!(
                        "persistentvolumeclaim {name:?} was bound to a volume on node {home:?}"
                    )));
                }
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                unreserve(api, waiting, node).await;
                return Err(tonic::Status::deadline_exceeded(format!(
                    "persistentvolumeclaim {name:?} was not bound on node {node:?} within {}s",
                    VOLUME_BIND_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Takes this node off the claims that were given it and are still
/// unbound, so that a pod that could not be placed there may go elsewhere
/// (Kubernetes' Unreserve).
async fn unreserve(api: &Api<PersistentVolumeClaim>, waiting: &[Waiting], node: &str) {
    use skiff::names::SELECTED_NODE_ANNOTATION;
    for w in waiting {
        let Ok(mut claim) = api.get(w.claim.namespace(), w.claim.name()).await else {
            continue;
        };
        let ours = claim
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(SELECTED_NODE_ANNOTATION))
            .is_some_and(|n| n == node);
        if !ours || !volumes::claim_volume(&claim).is_empty() {
            continue;
        }
        claim
            .metadata_mut()
            .annotations
            .remove(SELECTED_NODE_ANNOTATION);
        claim.status = None;
        if let Err(status) = api.update(claim).await {
            tracing::debug!(%status, "taking a node off a claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeSpec,
        VolumeNodeAffinity,
    };
    use skiff::pb::meta::v1::ObjectMeta;

    fn node(name: &str, can_hold: bool) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: [(skiff::names::HOSTNAME_LABEL.to_string(), name.to_string())].into(),
                annotations: if can_hold {
                    [(LOCAL_PATH_ROOT_ANNOTATION.to_string(), "/s".to_string())].into()
                } else {
                    Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn local_volume(node: &str) -> Arc<PersistentVolume> {
        Arc::new(PersistentVolume {
            metadata: Some(ObjectMeta {
                name: format!("on-{node}"),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeSpec {
                capacity: [("storage".to_string(), "1Gi".to_string())].into(),
                access_modes: vec!["ReadWriteOnce".into()],
                storage_class_name: "local".into(),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: skiff::names::HOSTNAME_LABEL.into(),
                                operator: "In".into(),
                                values: vec![node.into()],
                            }],
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn claim(class: &str) -> Arc<PersistentVolumeClaim> {
        Arc::new(PersistentVolumeClaim {
            metadata: Some(ObjectMeta {
                name: "data".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(skiff::pb::core::v1::PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                resources: Some(skiff::pb::core::v1::VolumeResourceRequirements {
                    requests: [("storage".to_string(), "1Gi".to_string())].into(),
                    ..Default::default()
                }),
                storage_class_name: Some(class.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn a_bound_local_volume_keeps_its_pod_on_its_node() {
        let volumes = PodVolumes {
            bound: vec![local_volume("a")],
            waiting: Vec::new(),
        };
        assert_eq!(volumes.filter(&node("a", false), &[]), Ok(()));
        assert_eq!(
            volumes.filter(&node("b", true), &[]),
            Err(NODE_CONFLICT.to_string())
        );
    }

    #[test]
    fn a_waiting_claim_needs_a_free_volume_or_a_node_that_can_make_one() {
        let all = vec![local_volume("a")];
        let static_only = PodVolumes {
            bound: Vec::new(),
            waiting: vec![Waiting {
                claim: claim("local"),
                local_provisioner: false,
                reserved: None,
                selected: None,
                reselect: false,
            }],
        };
        assert_eq!(static_only.filter(&node("a", false), &all), Ok(()));
        assert_eq!(
            static_only.filter(&node("b", true), &all),
            Err(BIND_CONFLICT.to_string())
        );
        let provisioned = PodVolumes {
            bound: Vec::new(),
            waiting: vec![Waiting {
                claim: claim("local-path"),
                local_provisioner: true,
                reserved: None,
                selected: None,
                reselect: false,
            }],
        };
        assert_eq!(provisioned.filter(&node("b", true), &all), Ok(()));
        assert_eq!(
            provisioned.filter(&node("hollow", false), &all),
            Err(BIND_CONFLICT.to_string())
        );
    }

    #[test]
    fn a_claim_given_a_node_or_a_volume_keeps_to_it() {
        let all = vec![local_volume("a")];
        let selected = PodVolumes {
            bound: Vec::new(),
            waiting: vec![Waiting {
                claim: claim("local-path"),
                local_provisioner: true,
                reserved: None,
                selected: Some("b".into()),
                reselect: false,
            }],
        };
        assert_eq!(selected.filter(&node("b", true), &all), Ok(()));
        assert_eq!(
            selected.filter(&node("c", true), &all),
            Err(BIND_CONFLICT.to_string())
        );
        let reserved = PodVolumes {
            bound: Vec::new(),
            waiting: vec![Waiting {
                claim: claim("local-path"),
                local_provisioner: true,
                reserved: Some(local_volume("a")),
                selected: None,
                reselect: false,
            }],
        };
        assert_eq!(reserved.filter(&node("a", false), &all), Ok(()));
        assert_eq!(
            reserved.filter(&node("c", true), &all),
            Err(NODE_CONFLICT.to_string())
        );
    }
}
