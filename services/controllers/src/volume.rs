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

fn uid_of<K: skiff::Resource>(obj: &K) -> String {
    obj.metadata().map(|m| m.uid.clone()).unwrap_or_default()
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
    format!("pvc-{}", uid_of(pvc))
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

    // --- claims ---

    async fn sync_claim(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        if is_deleting(pvc) {
            return self.release_claim(pvc).await;
        }
        if volumes::claim_volume(pvc).is_empty() {
            self.sync_unbound(pvc).await
        } else {
            self.sync_named(pvc).await
        }
    }

    /// A claim with no volume yet: bind the best match, or make one.
    async fn sync_unbound(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        self.set_claim_phase(pvc, "Pending").await?;
        let class_name = volumes::claim_class(pvc);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get("", class_name))
            .flatten();
        let wait = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        let selected = pvc
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(SELECTED_NODE_ANNOTATION))
            .cloned();
        if wait && selected.is_none() {
            self.event(
                pvc,
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(Action::AwaitChange);
        }
        let node = selected.as_ref().and_then(|n| self.nodes.get("", n));
        if let Some(name) = &selected
            && node.is_none()
        {
            self.event(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                &format!("the selected node {name:?} does not exist"),
            )
            .await;
            return Ok(Action::Requeue(RETRY));
        }
        let all = self.volumes.1.list();
        // A volume made for (or reserved to) this claim is its volume,
        // wherever it is.
        if let Some(pv) = all
            .iter()
            .find(|v| !is_deleting(v.as_ref()) && volumes::reserved_for(v, pvc))
        {
            return self.bind(pv, pvc).await;
        }
        if let Some(pv) =
            volumes::best_match(pvc, all.iter().map(|v| v.as_ref()), node.as_deref(), wait)
        {
            return self.bind(pv, pvc).await;
        }
        let provisioning = match &class {
            _ if class_name.is_empty() => Provisioning::NoClass,
            None => Provisioning::MissingClass(class_name.to_string()),
            Some(c) if c.provisioner == LOCAL_PATH_PROVISIONER => Provisioning::Local,
            Some(c) => Provisioning::Other(c.provisioner.clone()),
        };
        match provisioning {
            Provisioning::Local => {
                let class = class.expect("a local class");
                self.provision(pvc, &class, node.as_deref()).await
            }
            Provisioning::NoClass => {
                self.event(
                    pvc,
                    EventType::Normal,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Provisioning::MissingClass(name) => {
                self.event(
                    pvc,
                    EventType::Warning,
                    "ProvisioningFailed",
                    &format!("storageclass.storage.k8s.io {name:?} not found"),
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Provisioning::Other(provisioner) => {
                let message = if provisioner == "kubernetes.io/no-provisioner" {
                    format!(
                        "no persistent volumes available for this claim of class {class_name:?}: its volumes are made by hand"
                    )
                } else {
                    format!(
                        "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
                    )
                };
                self.event(pvc, EventType::Normal, "ExternalProvisioning", &message)
                    .await;
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Makes a local-path volume for the claim (reserved for it: the next
    /// sync binds it). `node` is the selected one, if the class waits for
    /// the first consumer; else a node that can hold local volumes.
    async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        node: Option<&Node>,
    ) -> Result<Action, Error> {
        let root_of = |n: &Node| {
            n.metadata
                .as_ref()
                .and_then(|m| m.annotations.get(LOCAL_PATH_ROOT_ANNOTATION))
                .filter(|r| r.starts_with('/'))
                .cloned()
        };
        let target = match node {
            Some(n) => match root_of(n) {
                Some(root) => (n.name().to_string(), root),
                None => {
                    self.event(
                        pvc,
                        EventType::Warning,
                        "ProvisioningFailed",
                        &format!(
                            "node {:?} cannot hold local-path volumes: its agent publishes no {LOCAL_PATH_ROOT_ANNOTATION} annotation (a hollow node, or an agent that cannot make directories)",
                            n.name()
                        ),
                    )
                    .await;
                    return Ok(Action::Requeue(RETRY));
                }
            },
            None => {
                let mut able: Vec<(String, String)> = self
                    .nodes
                    .list()
                    .iter()
                    .filter(|n| skiff::nodes::is_ready(n))
                    .filter_map(|n| root_of(n).map(|r| (n.name().to_string(), r)))
                    .collect();
                able.sort();
                // Spread by the claim's uid, so claims do not all land on
                // the first node.
                let pick = uid_of(pvc).bytes().map(usize::from).sum::<usize>();
                match able.get(pick % able.len().max(1)) {
                    Some(t) => t.clone(),
                    None => {
                        self.event(
                            pvc,
                            EventType::Warning,
                            "ProvisioningFailed",
                            "no ready node can hold local-path volumes",
                        )
                        .await;
                        return Ok(Action::Requeue(RETRY));
                    }
                }
            }
        };
        let (node_name, root) = target;
        if !pvc
            .metadata
            .as_ref()
            .is_some_and(|m| m.annotations.contains_key(STORAGE_PROVISIONER_ANNOTATION))
        {
            let mut marked = pvc.clone();
            marked.metadata_mut().annotations.insert(
                STORAGE_PROVISIONER_ANNOTATION.into(),
                LOCAL_PATH_PROVISIONER.into(),
            );
            marked.status = None;
            match self.claims.0.update(marked).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            }
        }
        self.event(
            pvc,
            EventType::Normal,
            "Provisioning",
            &format!(
                "External provisioner is provisioning volume for claim \"{}/{}\"",
                pvc.namespace(),
                pvc.name()
            ),
        )
        .await;
        let pv = local_volume(pvc, class, &node_name, &root);
        let name = pv.name().to_string();
        match self.volumes.0.create(pv).await {
            Ok(_) => {
                self.event(
                    pvc,
                    EventType::Normal,
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {name} on node {node_name}"),
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Action::AwaitChange),
            Err(s) => {
                self.event(
                    pvc,
                    EventType::Warning,
                    "ProvisioningFailed",
                    &format!("creating volume {name}: {}", s.message()),
                )
                .await;
                Err(s.into())
            }
        }
    }

    /// A claim that names its volume (bound, or pre-bound by its author).
    async fn sync_named(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        let name = volumes::claim_volume(pvc);
        let Some(pv) = self.volumes.1.get("", name) else {
            if claim_phase(pvc) == "Bound" {
                self.set_claim_phase(pvc, "Lost").await?;
                self.event(
                    pvc,
                    EventType::Warning,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                )
                .await;
            } else {
                self.set_claim_phase(pvc, "Pending").await?;
                self.event(
                    pvc,
                    EventType::Normal,
                    "FailedBinding",
                    &format!("volume {name:?} not found"),
                )
                .await;
            }
            return Ok(Action::AwaitChange);
        };
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        match claim_ref {
            None => {
                if let Some(why) = unsuitable(&pv, pvc) {
                    self.set_claim_phase(pvc, "Pending").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "VolumeMismatch",
                        &format!("Cannot bind to requested volume {name:?}: {why}"),
                    )
                    .await;
                    return Ok(Action::AwaitChange);
                }
                self.bind(&pv, pvc).await
            }
            Some(_) if volumes::reserved_for(&pv, pvc) => self.bind(&pv, pvc).await,
            Some(_) => {
                if claim_phase(pvc) == "Bound" {
                    self.set_claim_phase(pvc, "Lost").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "ClaimMisbound",
                        "Two claims are bound to the same volume, this one is bound incorrectly",
                    )
                    .await;
                } else {
                    self.set_claim_phase(pvc, "Pending").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "FailedBinding",
                        &format!("volume {name:?} already bound to a different claim."),
                    )
                    .await;
                }
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Binds `pv` and `pvc`, each step once: the volume's claimRef, its
    /// phase, the claim's volumeName, its phase.
    async fn bind(
        &self,
        pv: &PersistentVolume,
        pvc: &PersistentVolumeClaim,
    ) -> Result<Action, Error> {
        let reference = claim_reference(pvc);
        let pv_ref_ok = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid == reference.uid && r.name == reference.name);
        let mut pv = pv.clone();
        if !pv_ref_ok {
            let by_us = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
            if let Some(spec) = pv.spec.as_mut() {
                spec.claim_ref = Some(reference);
            }
            if by_us {
                pv.metadata_mut()
                    .annotations
                    .insert(BOUND_BY_CONTROLLER_ANNOTATION.into(), "yes".into());
            }
            pv.status = None;
            pv = match self.volumes.0.update(pv).await {
                Ok(updated) => updated,
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            };
        }
        if volume_phase(&pv) != "Bound" {
            pv = self.set_volume_phase(&pv, "Bound", "", "").await?;
        }
        let volume_name = pv.name().to_string();
        let mut pvc = pvc.clone();
        let bound_by_us = volumes::claim_volume(&pvc).is_empty();
        let annotated = pvc
            .metadata
            .as_ref()
            .is_some_and(|m| m.annotations.contains_key(BIND_COMPLETED_ANNOTATION));
        if bound_by_us || !annotated {
            if let Some(spec) = pvc.spec.as_mut() {
                spec.volume_name = volume_name.clone();
            }
            let annotations = &mut pvc.metadata_mut().annotations;
            annotations.insert(BIND_COMPLETED_ANNOTATION.into(), "yes".into());
            if bound_by_us {
                annotations.insert(BOUND_BY_CONTROLLER_ANNOTATION.into(), "yes".into());
            }
            pvc.status = None;
            pvc = match self.claims.0.update(pvc).await {
                Ok(updated) => updated,
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            };
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let status = PersistentVolumeClaimStatus {
            phase: "Bound".into(),
            access_modes: spec.access_modes,
            capacity: spec.capacity,
            ..pvc.status.clone().unwrap_or_default()
        };
        if pvc.status.as_ref() != Some(&status) {
            let mut updated = pvc.clone();
            updated.status = Some(status);
            self.claims.0.update_status(updated).await?;
            tracing::info!(claim = %pvc.object_ref(), volume = %volume_name, "bound");
        }
        Ok(Action::AwaitChange)
    }

    /// A deleted claim goes once no unfinished pod uses it.
    async fn release_claim(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        if !has_finalizer(pvc, PVC_PROTECTION_FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let namespace = pvc.namespace();
        let cached = self
            .pods
            .1
            .list()
            .iter()
            .any(|p| p.namespace() == namespace && pod_uses(p, pvc.name()));
        if cached {
            return Ok(Action::AwaitChange);
        }
        // The cache may not have a pod created a moment ago yet.
        let live = self
            .pods
            .0
            .list(skiff::pb::api::v1::ListRequest {
                namespace: namespace.to_string(),
                ..Default::default()
            })
            .await?;
        if live.items.iter().any(|p| pod_uses(p, pvc.name())) {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        let mut done = pvc.clone();
        done.metadata_mut()
            .finalizers
            .retain(|f| f != PVC_PROTECTION_FINALIZER);
        done.status = None;
        match self.claims.0.update(done).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => Err(s.into()),
        }
    }

    async fn set_claim_phase(&self, pvc: &PersistentVolumeClaim, phase: &str) -> Result<(), Error> {
        if claim_phase(pvc) == phase {
            return Ok(());
        }
        let mut updated = pvc.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.phase = phase.into();
        if phase != "Bound" {
            status.access_modes.clear();
            status.capacity.clear();
        }
        match self.claims.0.update_status(updated).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    // --- volumes ---

    async fn sync_volume(&self, pv: &PersistentVolume) -> Result<Action, Error> {
        let deleting = is_deleting(pv);
        let claim_ref = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.clone())
            .filter(|r| !r.uid.is_empty());
        let Some(claim_ref) = claim_ref else {
            // Free, or reserved for a claim by its author (waiting for it).
            if deleting {
                return self.release_volume(pv, false).await;
            }
            self.set_volume_phase(pv, "Available", "", "").await?;
            return Ok(Action::AwaitChange);
        };
        let cached = self
            .claims
            .1
            .get(&claim_ref.namespace, &claim_ref.name)
            .filter(|c| uid_of(c.as_ref()) == claim_ref.uid);
        if let Some(claim) = cached {
            let elsewhere = volumes::claim_volume(&claim);
            let by_us = pv
                .metadata
                .as_ref()
                .is_some_and(|m| m.annotations.contains_key(BOUND_BY_CONTROLLER_ANNOTATION));
            if !elsewhere.is_empty() && elsewhere != pv.name() && by_us && !deleting {
                // A binding that went to another volume: this one is free
                // again (Kubernetes' binder does the same).
                let mut freed = pv.clone();
                if let Some(spec) = freed.spec.as_mut() {
                    spec.claim_ref = None;
                }
                freed
                    .metadata_mut()
                    .annotations
                    .remove(BOUND_BY_CONTROLLER_ANNOTATION);
                freed.status = None;
                return match self.volumes.0.update(freed).await {
                    Ok(_) => Ok(Action::AwaitChange),
                    Err(s) if s.code() == tonic::Code::Aborted => {
                        Ok(Action::Requeue(Duration::from_millis(100)))
                    }
                    Err(s) => Err(s.into()),
                };
            }
            // The claim's own sync finishes a binding in progress.
            return if deleting {
                self.release_volume(pv, true).await
            } else {
                Ok(Action::AwaitChange)
            };
        }
        // Gone from the cache: confirmed before anything is released.
        match self
            .claims
            .0
            .get(&claim_ref.namespace, &claim_ref.name)
            .await
        {
            Ok(live) if uid_of(&live) == claim_ref.uid => {
                return if deleting {
                    self.release_volume(pv, true).await
                } else {
                    Ok(Action::Requeue(Duration::from_millis(500)))
                };
            }
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
        let released = if volume_phase(pv) == "Released" {
            pv.clone()
        } else {
            self.set_volume_phase(pv, "Released", "", "").await?
        };
        if deleting {
            return self.release_volume(&released, false).await;
        }
        self.reclaim(&released).await
    }

    /// Carries out a released volume's reclaim policy.
    async fn reclaim(&self, pv: &PersistentVolume) -> Result<Action, Error> {
        let policy = pv
            .spec
            .as_ref()
            .map_or("", |s| s.persistent_volume_reclaim_policy.as_str());
        if policy != "Delete" {
            return Ok(Action::AwaitChange);
        }
        let ours = pv
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(PROVISIONED_BY_ANNOTATION))
            .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
        if !ours {
            if volume_phase(pv) != "Failed" {
                let message = "Skiff deletes only the volumes its local-path provisioner made: remove this volume's data and the volume by hand";
                self.set_volume_phase(pv, "Failed", "VolumeFailedDelete", message)
                    .await?;
                self.event(pv, EventType::Warning, "VolumeFailedDelete", message)
                    .await;
            }
            return Ok(Action::AwaitChange);
        }
        // Exactly the volume judged released: a change since (a new
        // claim, another policy) stops the delete.
        let mut request = crate::replicaset::delete_exactly(pv);
        if let Some(preconditions) = request.preconditions.as_mut() {
            preconditions.resource_version = pv
                .metadata
                .as_ref()
                .map(|m| m.resource_version.clone())
                .unwrap_or_default();
        }
        match self.volumes.0.delete(request).await {
            Ok(_) => {
                tracing::info!(volume = %pv.name(), "released local-path volume deleted");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => {
                self.event(pv, EventType::Warning, "VolumeFailedDelete", s.message())
                    .await;
                Err(s.into())
            }
        }
    }

    /// A deleted volume goes once no claim holds it (`held`: the claim its
    /// claimRef names still exists, as the cache or a live read shows).
    async fn release_volume(&self, pv: &PersistentVolume, held: bool) -> Result<Action, Error> {
        if held || !has_finalizer(pv, PV_PROTECTION_FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let mut done = pv.clone();
        done.metadata_mut()
            .finalizers
            .retain(|f| f != PV_PROTECTION_FINALIZER);
        done.status = None;
        match self.volumes.0.update(done).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => Err(s.into()),
        }
    }

    async fn set_volume_phase(
        &self,
        pv: &PersistentVolume,
        phase: &str,
        reason: &str,
        message: &str,
    ) -> Result<PersistentVolume, Error> {
        let current = pv.status.clone().unwrap_or_default();
        if current.phase == phase && current.reason == reason && current.message == message {
            return Ok(pv.clone());
        }
        let mut updated = pv.clone();
        updated.status = Some(PersistentVolumeStatus {
            phase: phase.into(),
            reason: reason.into(),
            message: message.into(),
            last_phase_transition_time: Some(skiff::time::now_seconds()),
        });
        match self.volumes.0.update_status(updated).await {
            Ok(stored) => Ok(stored),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(pv.clone()),
            Err(s) => Err(s.into()),
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
mod tests {
    use super::*;
    use skiff::pb::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};

    fn claim() -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: Some(ObjectMeta {
                name: "data".into(),
                namespace: "shop".into(),
                uid: "1234".into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                resources: Some(VolumeResourceRequirements {
                    requests: [("storage".to_string(), "1Gi".to_string())].into(),
                    ..Default::default()
                }),
                storage_class_name: Some("local-path".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_provisioned_volume_is_reserved_for_its_claim_and_pinned_to_its_node() {
        let class = StorageClass {
            provisioner: LOCAL_PATH_PROVISIONER.into(),
            reclaim_policy: Some("Retain".into()),
            ..Default::default()
        };
        let pvc = claim();
        let pv = local_volume(&pvc, &class, "node-a", "/var/lib/skiff/storage/");
        assert_eq!(pv.name(), "pvc-1234");
        assert_eq!(volumes::path(&pv), Some("/var/lib/skiff/storage/pvc-1234"));
        assert_eq!(volumes::pinned_node(&pv), Some("node-a"));
        assert!(volumes::reserved_for(&pv, &pvc));
        assert_eq!(unsuitable(&pv, &pvc), None);
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy, "Retain");
        assert_eq!(spec.capacity["storage"], "1Gi");
        assert!(has_finalizer(&pv, LOCAL_PATH_FINALIZER));
    }

    #[test]
    fn a_named_volume_must_suit_its_claim() {
        let class = StorageClass::default();
        let pvc = claim();
        let mut small = local_volume(&pvc, &class, "a", "/r");
        small
            .spec
            .as_mut()
            .unwrap()
            .capacity
            .insert("storage".into(), "10Mi".into());
        assert_eq!(unsuitable(&small, &pvc), Some("requested PV is too small"));
    }

    #[test]
    fn only_unfinished_pods_hold_a_claim() {
        let mut pod = Pod {
            spec: Some(skiff::pb::core::v1::PodSpec {
                volumes: vec![skiff::pb::core::v1::Volume {
                    name: "v".into(),
                    persistent_volume_claim: Some(
                        skiff::pb::core::v1::PersistentVolumeClaimVolumeSource {
                            claim_name: "data".into(),
                            read_only: false,
                        },
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(pod_uses(&pod, "data"));
        assert!(!pod_uses(&pod, "other"));
        pod.status = Some(skiff::pb::core::v1::PodStatus {
            phase: "Succeeded".into(),
            ..Default::default()
        });
        assert!(!pod_uses(&pod, "data"));
    }
}
