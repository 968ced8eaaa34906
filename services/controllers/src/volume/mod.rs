//! The PersistentVolume controller (Kubernetes' binder, its protection
//! controllers and Skiff's local provisioner, in one loop).
//!
//! Keys are claims (`namespace/name`) and volumes (`/name`: volumes have
//! no namespace). For a claim:
//!
//! - unbound: the best matching volume ([`skiff::volumes::best_match`])
//!   is bound to it, in Kubernetes' order (the volume's claimRef, its
//!   phase Bound, the claim's volumeName, its phase Bound), each step
//!   idempotent so an interrupted binding resumes. No match: a class
//!   whose provisioner is Skiff's local one gets a volume made — for
//!   `WaitForFirstConsumer`, on the node the scheduler picked for the
//!   claim's first pod (the `volume.kubernetes.io/selected-node`
//!   annotation), for `Immediate` on a node that can hold one — as a
//!   `hostPath` directory under that node's agent data dir
//!   (its `skiff.io/local-path-root` annotation), pinned to the node by
//!   node affinity and reserved for the claim. Otherwise the claim waits,
//!   with an Event saying why;
//! - bound to a volume that is gone: Lost;
//! - deleted: it goes once no pod that has not finished uses it (its
//!   `kubernetes.io/pvc-protection` finalizer, confirmed against a live
//!   list of pods).
//!
//! For a volume: Available while free, Bound while its claim holds it,
//! Released once the claim is gone (confirmed with a live read: a cache
//! behind must never delete data), then by its reclaim policy kept
//! (Retain) or deleted (Delete: local-path volumes; the agent of their
//! node removes the directory and then the `skiff.io/local-path`
//! finalizer; any other volume is Failed, there is nothing Skiff can
//! delete it with). A deleted volume goes once no claim is bound to it
//! (`kubernetes.io/pv-protection`).
//!
//! The claim side is in `claims`, the volume side in `released`; this
//! file keeps the controller's state, the pure helpers and the wiring.

use std::sync::Arc;
use std::time::Duration;

use skiff::names::{
    BIND_COMPLETED_ANNOTATION, BOUND_BY_CONTROLLER_ANNOTATION, HOSTNAME_LABEL,
    LOCAL_PATH_FINALIZER, LOCAL_PATH_PROVISIONER, LOCAL_PATH_ROOT_ANNOTATION,
    PROVISIONED_BY_ANNOTATION, PV_PROTECTION_FINALIZER, PVC_PROTECTION_FINALIZER,
    SELECTED_NODE_ANNOTATION, STORAGE_PROVISIONER_ANNOTATION,
};
use skiff::pb::core::v1::{
    HostPathVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeSpec, PersistentVolumeStatus, Pod, VolumeNodeAffinity,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::pb::storage::v1::StorageClass;
use skiff::{ObjectRef, Resource as _, volumes};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

mod claims;
mod released;

/// How soon a claim that waits on something no watch reports (a node able
/// to hold local volumes) is looked at again.
const RETRY: Duration = Duration::from_secs(5);

/// See the module doc.
pub struct VolumeController {
    recorder: Arc<Recorder>,
    claims: (Api<PersistentVolumeClaim>, Store<PersistentVolumeClaim>),
    volumes: (Api<PersistentVolume>, Store<PersistentVolume>),
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    pods: (Api<Pod>, Store<Pod>),
}

/// What a claim's class says about how it gets a volume.
enum Provisioning {
    /// Skiff's local provisioner makes it.
    Local,
    /// Someone else ("kubernetes.io/no-provisioner": an administrator).
    Other(String),
    /// The class does not exist.
    MissingClass(String),
    /// The claim asks for no class: only volumes made by hand.
    NoClass,
}

fn is_deleting<K: skiff::Resource>(obj: &K) -> bool {
    obj.metadata()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

fn has_finalizer<K: skiff::Resource>(obj: &K, finalizer: &str) -> bool {
    obj.metadata()
        .is_some_and(|m| m.finalizers.iter().any(|f| f == finalizer))
}

fn volume_phase(pv: &PersistentVolume) -> &str {
    pv.status.as_ref().map_or("", |s| s.phase.as_str())
}

fn claim_phase(pvc: &PersistentVolumeClaim) -> &str {
    pvc.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// Whether a pod still counts as using its claims (it has not finished).
fn pod_uses(pod: &Pod, claim: &str) -> bool {
    let finished = pod
        .status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed");
    !finished
        && pod.spec.as_ref().is_some_and(|s| {
            s.volumes.iter().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
            })
        })
}

/// The claims a pod uses, as keys.
pub fn claims_of(pod: &Pod) -> Vec<ObjectRef> {
    pod.spec
        .iter()
        .flat_map(|s| &s.volumes)
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| ObjectRef::new(pod.namespace(), &c.claim_name))
        .collect()
}

/// The name of the volume the local provisioner makes for a claim
/// (Kubernetes' `pvc-<uid>`).
pub fn provisioned_name(pvc: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", pvc.uid())
}

/// The local-path volume for `pvc` on `node`, under `root` there.
pub fn local_volume(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    node: &str,
    root: &str,
) -> PersistentVolume {
    let name = provisioned_name(pvc);
    let spec = pvc.spec.clone().unwrap_or_default();
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.get("storage"))
        .cloned()
        .unwrap_or_default();
    PersistentVolume {
        metadata: Some(ObjectMeta {
            name: name.clone(),
            annotations: [(
                PROVISIONED_BY_ANNOTATION.to_string(),
                LOCAL_PATH_PROVISIONER.to_string(),
            )]
            .into(),
            finalizers: vec![LOCAL_PATH_FINALIZER.into()],
            ..Default::default()
        }),
        spec: Some(PersistentVolumeSpec {
            capacity: [("storage".to_string(), request)].into(),
            host_path: Some(HostPathVolumeSource {
                path: format!("{}/{name}", root.trim_end_matches('/')),
                r#type: Some("DirectoryOrCreate".into()),
            }),
            access_modes: spec.access_modes.clone(),
            claim_ref: Some(claim_reference(pvc)),
            persistent_volume_reclaim_policy: class
                .reclaim_policy
                .clone()
                .unwrap_or_else(|| "Delete".into()),
            storage_class_name: volumes::claim_class(pvc).to_string(),
            mount_options: class.mount_options.clone(),
            volume_mode: Some("Filesystem".into()),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: vec![node.to_string()],
                        }],
                        ..Default::default()
                    }],
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn claim_reference(pvc: &PersistentVolumeClaim) -> ObjectReference {
    let meta = pvc.metadata.clone().unwrap_or_default();
    ObjectReference {
        kind: "PersistentVolumeClaim".into(),
        api_version: "v1".into(),
        namespace: meta.namespace,
        name: meta.name,
        uid: meta.uid,
        resource_version: meta.resource_version,
        ..Default::default()
    }
}

/// Why a claim that names its volume cannot have it (None: it can).
pub fn unsuitable(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> Option<&'static str> {
    if volumes::capacity(pv) < volumes::requested(pvc) {
        Some("requested PV is too small")
    } else if volumes::volume_class(pv) != volumes::claim_class(pvc) {
        Some("storageClassName does not match")
    } else if !volumes::modes_cover(pv, pvc) {
        Some("incompatible accessMode")
    } else {
        None
    }
}

impl VolumeController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        claims: (Api<PersistentVolumeClaim>, Store<PersistentVolumeClaim>),
        volumes: (Api<PersistentVolume>, Store<PersistentVolume>),
        classes: Store<StorageClass>,
        nodes: Store<Node>,
        pods: (Api<Pod>, Store<Pod>),
    ) -> Self {
        Self {
            recorder,
            claims,
            volumes,
            classes,
            nodes,
            pods,
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        if key.namespace.is_empty() {
            match self.volumes.1.get("", &key.name) {
                Some(pv) => self.sync_volume(&pv).await,
                None => Ok(Action::AwaitChange),
            }
        } else {
            match self.claims.1.get(&key.namespace, &key.name) {
                Some(pvc) => self.sync_claim(&pvc).await,
                None => Ok(Action::AwaitChange),
            }
        }
    }

    async fn event<K: skiff::Resource>(
        &self,
        obj: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        self.recorder.record(obj, kind, reason, message).await;
    }

    /// The keys a claim change wakes: the claim, and the volume it names
    /// (which a deleted claim releases).
    pub fn keys_of_claim(pvc: &PersistentVolumeClaim) -> Vec<ObjectRef> {
        let mut keys = vec![pvc.object_ref()];
        let volume = volumes::claim_volume(pvc);
        if !volume.is_empty() {
            keys.push(ObjectRef::new("", volume));
        }
        keys
    }
}

impl Reconciler for VolumeController {
    fn name(&self) -> &'static str {
        "persistentvolume-binder"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the controller: woken by claims, volumes (and the claims they
/// name, or every waiting claim when one comes free), classes (their
/// waiting claims), and pods (the claims they use, which a deleted claim
/// waits on).
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed};
    use futures::FutureExt as _;
    let controller = Arc::new(VolumeController::new(
        Arc::clone(&shared.recorder),
        (
            Api::new(shared.channel.clone()),
            shared.persistentvolumeclaims.store.clone(),
        ),
        (
            Api::new(shared.channel.clone()),
            shared.persistentvolumes.store.clone(),
        ),
        shared.storageclasses.store.clone(),
        shared.nodes.store.clone(),
        (Api::new(shared.channel.clone()), shared.pods.store.clone()),
    ));
    let claims = shared.persistentvolumeclaims.store.clone();
    let waiting = move |class: Option<&str>| {
        claims
            .list()
            .iter()
            .filter(|c| volumes::claim_volume(c).is_empty())
            .filter(|c| class.is_none_or(|name| volumes::claim_class(c) == name))
            .map(|c| c.object_ref())
            .collect::<Vec<_>>()
    };
    let (for_volumes, for_classes) = (waiting.clone(), waiting);
    let (claims, volumes_store) = (
        shared.persistentvolumeclaims.store.clone(),
        shared.persistentvolumes.store.clone(),
    );
    Controller::new(controller)
        .watches(&shared.persistentvolumeclaims, |change| {
            VolumeController::keys_of_claim(changed(change))
        })
        .watches(&shared.persistentvolumes, move |change| {
            let pv = changed(change);
            let mut keys = vec![ObjectRef::new("", pv.name())];
            match pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
                Some(r) => keys.push(ObjectRef::new(&r.namespace, &r.name)),
                None => keys.extend(for_volumes(None)),
            }
            keys
        })
        .watches(&shared.storageclasses, move |change| {
            for_classes(Some(changed(change).name()))
        })
        .watches(&shared.pods, |change| claims_of(changed(change)))
        .reads(&shared.nodes.store)
        .run(
            move || {
                let mut keys = crate::runtime::keys_of(&claims);
                keys.extend(
                    volumes_store
                        .list()
                        .iter()
                        .map(|v| ObjectRef::new("", v.name())),
                );
                keys
            },
            workers,
        )
        .boxed()
}

#[cfg(test)]
mod tests;
