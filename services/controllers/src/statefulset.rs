//! The StatefulSet controller: pods with stable identities. Ordinal `i`
//! is the pod `NAME-i` (from `spec.ordinals.start`), with hostname
//! `NAME-i` and subdomain `spec.serviceName` (so the headless Service's
//! DNS answers `NAME-i.SERVICE.NS.svc.cluster.local`), and a claim per
//! volume claim template, `TEMPLATE-NAME-i`, made before its pod and kept
//! when the pod goes: a replaced pod finds its data again.
//!
//! Each reconcile plans from the caches ([`plan`], a pure function), as
//! Kubernetes' `StatefulSetControl` does:
//!
//! - `OrderedReady` (default): ordinals are created in order, each Running
//!   and Ready before the next; a failed pod is replaced; surplus ordinals
//!   are removed highest first, one at a time, only while every other pod
//!   is healthy. `Parallel`: all at once.
//! - `RollingUpdate`: once all pods are healthy, the highest ordinal at or
//!   above `partition` that runs an old revision is deleted (and made
//!   again from the new template), one at a time; ordinals below the
//!   partition keep the current revision, also when they are recreated.
//!   `OnDelete`: only pods deleted by hand take the new template.
//! - Claims the set made for ordinals it no longer has are deleted when
//!   `persistentVolumeClaimRetentionPolicy.whenScaled` is `Delete`; with
//!   `whenDeleted: Delete` its claims name it as their owner and the
//!   garbage collector deletes them after it (a `--cascade=orphan` delete
//!   releases them with its pods).
//!
//! Templates are told apart by ControllerRevisions ([`crate::history`]),
//! whose names are the pods' `controller-revision-hash` label, so
//! `kubectl rollout history|undo statefulset` work.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use skiff::pb::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::deployment::template_hash;
use crate::history::{History, REVISION_LABEL, owner_reference};
use crate::replicaset::{controller_of, delete_exactly, is_available};
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// The label naming a pod's stable name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The name of ordinal `ordinal`'s pod.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name())
}

/// The ordinal of a pod of `set`, from its name.
pub fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    pod.name()
        .strip_prefix(set.name())?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|o: &i32| *o >= 0)
}

/// The claim of template `template` for ordinal `ordinal`.
pub fn claim_name(template: &str, set: &StatefulSet, ordinal: i32) -> String {
    format!("{template}-{}-{ordinal}", set.name())
}

fn start_of(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .map_or(0, |o| o.start)
}

fn partition_of(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
}

fn replicas_of(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The name of the revision of template `hash` (the pods' label).
pub fn revision_name(set: &StatefulSet, hash: &str) -> String {
    format!(
        "{}-{hash}",
        set.name().chars().take(223).collect::<String>()
    )
}

/// The pod of ordinal `ordinal`, from `template` at revision `revision`.
pub fn pod_for(set: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Pod {
    let meta = set.metadata.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let name = pod_name(set, ordinal);
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels;
    labels.insert(REVISION_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = name.clone();
    pod_spec.subdomain = spec.service_name.clone();
    for claim in &spec.volume_claim_templates {
        let volume = Volume {
            name: claim.name().to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(claim.name(), set, ordinal),
                read_only: false,
            }),
            ..Default::default()
        };
        match pod_spec.volumes.iter_mut().find(|v| v.name == volume.name) {
            Some(v) => *v = volume,
            None => pod_spec.volumes.push(volume),
        }
    }
    Pod {
        metadata: Some(ObjectMeta {
            name,
            namespace: meta.namespace,
            labels,
            annotations: tmeta.annotations,
            owner_references: vec![owner_reference(set)],
            ..Default::default()
        }),
        spec: Some(pod_spec),
        ..Default::default()
    }
}

/// The label a claim a set uses carries: the set's uid (only such claims
/// are deleted when the set scales down under `whenScaled: Delete`; a
/// claim kept from an earlier set of the same name becomes the new set's
/// once it uses it, as on Kubernetes).
pub const SET_UID_LABEL: &str = "statefulset.skiff.io/uid";

/// Whether the set's claims go with it (`whenDeleted: Delete`): they name
/// it as an owner, and the garbage collector deletes them after it.
fn claims_go_with(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .is_some_and(|p| p.when_deleted == "Delete")
}

/// The owner reference a claim of a `whenDeleted: Delete` set carries (not
/// a controller: the claim is not the set's to run).
fn claim_owner(set: &StatefulSet) -> skiff::pb::meta::v1::OwnerReference {
    skiff::pb::meta::v1::OwnerReference {
        controller: None,
        ..set.controller_reference()
    }
}

/// The claims ordinal `ordinal` needs, from the claim templates: labelled
/// with the set's selector and uid, owned by the set when its claims go
/// with it.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let uid = set
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let selector_labels = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .map(|template| {
            let tmeta = template.metadata.clone().unwrap_or_default();
            let mut labels = tmeta.labels;
            labels.extend(selector_labels.clone());
            labels.insert(SET_UID_LABEL.into(), uid.clone());
            PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: claim_name(&tmeta.name, set, ordinal),
                    namespace: set.namespace().to_string(),
                    labels,
                    annotations: tmeta.annotations,
                    owner_references: if claims_go_with(set) {
                        vec![claim_owner(set)]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                }),
                spec: template.spec.clone(),
                ..Default::default()
            }
        })
        .collect()
}

/// What one reconcile does and reports.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Ordinals to make a pod for (their claims first).
    pub create: Vec<i32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Ordinals removed whose claims go (`whenScaled: Delete`).
    pub release_claims: Vec<i32>,
    /// The status to report.
    pub status: StatefulSetStatus,
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata
        .as_ref()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// Running, Ready, and (with `minReadySeconds`) available.
fn healthy(pod: &Pod, min_ready: i32) -> bool {
    !is_terminating(pod) && phase(pod) == "Running" && is_available(pod, min_ready)
}

/// Plans a reconcile of `set` over the pods it owns, for the template
/// revision `update` (the revision of the current template) and
/// `current` (the revision the pods ran before; `update` when none).
/// `gone_ordinals` are ordinals above the range whose claims still exist.
pub fn plan(
    set: &StatefulSet,
    owned: &[Arc<Pod>],
    current: &str,
    update: &str,
    gone_ordinals: &[i32],
) -> Plan {
    let spec = set.spec.clone().unwrap_or_default();
    let (start, replicas) = (start_of(set), replicas_of(set));
    let end = start + replicas;
    let parallel = spec.pod_management_policy == "Parallel";
    let min_ready = spec.min_ready_seconds;
    let revision = |p: &Pod| {
        p.metadata
            .as_ref()
            .and_then(|m| m.labels.get(REVISION_LABEL).cloned())
            .unwrap_or_default()
    };
    let mut plan = Plan::default();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.as_ref().map_or(0, |m| m.generation),
        current_revision: current.to_string(),
        update_revision: update.to_string(),
        ..Default::default()
    };
    let mut in_range: Vec<(i32, &Arc<Pod>)> = Vec::new();
    let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
    for pod in owned {
        let Some(ordinal) = ordinal_of(set, pod) else {
            continue;
        };
        if !is_terminating(pod) {
            status.replicas += 1;
            if skiff::pods::is_ready(pod) {
                status.ready_replicas += 1;
            }
            if is_available(pod, min_ready) {
                status.available_replicas += 1;
            }
            let rev = revision(pod);
            if rev == current {
                status.current_replicas += 1;
            }
            if rev == update {
                status.updated_replicas += 1;
            }
        }
        if (start..end).contains(&ordinal) {
            in_range.push((ordinal, pod));
        } else {
            condemned.push((ordinal, pod));
        }
    }
    in_range.sort_by_key(|(o, _)| *o);
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

    // Scale up and replace: ordinals in order.
    let mut waiting = false;
    for ordinal in start..end {
        let pod = in_range.iter().find(|(o, _)| *o == ordinal).map(|(_, p)| p);
        match pod {
            None => {
                plan.create.push(ordinal);
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) if !is_terminating(pod) && matches!(phase(pod), "Failed" | "Succeeded") => {
                plan.delete.push(pod.name().to_string());
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) if !healthy(pod, min_ready) && !parallel => {
                waiting = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Scale down: the highest surplus ordinal first.
    if !waiting || parallel {
        for (_, pod) in &condemned {
            if is_terminating(pod) {
                if parallel {
                    continue;
                }
                waiting = true;
                break;
            }
            plan.delete.push(pod.name().to_string());
            if !parallel {
                waiting = true;
                break;
            }
        }
    }
    // Claims of ordinals that are gone.
    let shrink_deletes = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .is_some_and(|p| p.when_scaled == "Delete");
    if shrink_deletes {
        plan.release_claims = gone_ordinals
            .iter()
            .copied()
            .filter(|o| !(start..end).contains(o))
            .filter(|o| !condemned.iter().any(|(c, _)| c == o))
            .collect();
    }
    // Rolling update: the highest old ordinal at or above the partition.
    let rolling = spec
        .update_strategy
        .as_ref()
        .is_none_or(|s| s.r#type != "OnDelete");
    if rolling && !waiting && plan.create.is_empty() && plan.delete.is_empty() {
        // Kubernetes' walk: from the top down to the partition (counted
        // from the first ordinal), the first old pod goes; a pod passed on
        // the way that is not available holds the update back.
        let floor = start + partition_of(set);
        for (ordinal, pod) in in_range.iter().rev() {
            if *ordinal < floor {
                break;
            }
            if revision(pod) != update && !is_terminating(pod) {
                plan.delete.push(pod.name().to_string());
                break;
            }
            if !healthy(pod, min_ready) {
                break;
            }
        }
    }
    // The update is complete once every ordinal runs it and is Ready.
    if status.updated_replicas == replicas
        && status.ready_replicas == replicas
        && in_range.len() == usize::try_from(replicas).unwrap_or(0)
        && condemned.is_empty()
    {
        status.current_revision = update.to_string();
        status.current_replicas = status.updated_replicas;
    }
    plan.status = status;
    plan
}

/// See the module doc.
pub struct StatefulSetController {
    recorder: Arc<Recorder>,
    sets: (Api<StatefulSet>, Store<StatefulSet>),
    history: History,
    revision_store: Store<ControllerRevision>,
    pods: (Api<Pod>, Store<Pod>),
    claims: (Api<PersistentVolumeClaim>, Store<PersistentVolumeClaim>),
}

/// The pod template a revision holds (its data is the patch that puts it
/// back: `{"spec":{"template":{..., "$patch":"replace"}}}`).
fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let data = skiff::json::to_value(revision.data.as_ref()?).ok()?;
    let mut template = data.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    skiff::json::from_value(template).ok()
}

impl StatefulSetController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        sets: (Api<StatefulSet>, Store<StatefulSet>),
        revisions: (Api<ControllerRevision>, Store<ControllerRevision>),
        pods: (Api<Pod>, Store<Pod>),
        claims: (Api<PersistentVolumeClaim>, Store<PersistentVolumeClaim>),
    ) -> Self {
        Self {
            recorder,
            sets,
            history: History::new(revisions.0, revisions.1.clone()),
            revision_store: revisions.1,
            pods,
            claims,
        }
    }

    /// The set a pod belongs to, if any.
    pub fn owner_of<K: Resource>(obj: &K) -> Option<ObjectRef> {
        controller_of(obj)
            .filter(|o| o.kind == StatefulSet::KIND)
            .map(|o| ObjectRef::new(obj.namespace(), o.name.clone()))
    }

    async fn event(&self, set: &StatefulSet, kind: EventType, reason: &str, message: &str) {
        self.recorder.record(set, kind, reason, message).await;
    }

    /// Makes the claims of `ordinal` that do not exist yet; false when one
    /// is being deleted (the pod waits for it to go, then for a new one).
    /// Each is read live: the cache may not show a deletion just made.
    async fn ensure_claims(&self, set: &StatefulSet, ordinal: i32) -> Result<bool, Error> {
        for claim in claims_for(set, ordinal) {
            match self.claims.0.get(claim.namespace(), claim.name()).await {
                Ok(existing) => {
                    if existing
                        .metadata
                        .as_ref()
                        .is_some_and(|m| m.deletion_timestamp.is_some())
                    {
                        return Ok(false);
                    }
                    if !self.own_claim(set, &existing).await? {
                        return Ok(false);
                    }
                    continue;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            let name = claim.name().to_string();
            match self.claims.0.create(claim).await {
                Ok(_) => {
                    self.event(
                        set,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {name} Pod {} in StatefulSet {} success",
                            pod_name(set, ordinal),
                            set.name()
                        ),
                    )
                    .await;
                }
                // Made meanwhile: looked at again on the next pass.
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(false),
                Err(s) => {
                    self.event(
                        set,
                        EventType::Warning,
                        "FailedCreate",
                        &format!(
                            "create Claim {name} for StatefulSet {} failed: {}",
                            set.name(),
                            s.message()
                        ),
                    )
                    .await;
                    return Err(s.into());
                }
            }
        }
        Ok(true)
    }

    /// Makes a claim the set uses its own: its uid label, and an owner
    /// reference exactly when the policy says its claims go with it (the
    /// policy may have changed, or the set been made again). A claim
    /// another StatefulSet owns is left alone; before a claim is tied to
    /// the set, the set is read live (a set being deleted must not gain a
    /// dependent its deletion has not seen: Kubernetes' recheck). False
    /// when it must be looked at again.
    async fn own_claim(
        &self,
        set: &StatefulSet,
        existing: &PersistentVolumeClaim,
    ) -> Result<bool, Error> {
        let uid = set
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let theirs = existing.metadata.as_ref().is_some_and(|m| {
            m.owner_references
                .iter()
                .any(|o| o.kind == StatefulSet::KIND && o.uid != uid)
        });
        if theirs {
            return Ok(true);
        }
        let mut adopted = existing.clone();
        let meta = adopted.metadata_mut();
        meta.labels.insert(SET_UID_LABEL.into(), uid.clone());
        meta.owner_references
            .retain(|o| !(o.kind == StatefulSet::KIND && o.uid == uid));
        if claims_go_with(set) {
            meta.owner_references.push(claim_owner(set));
        }
        if adopted.metadata == existing.metadata {
            return Ok(true);
        }
        match self.sets.0.get(set.namespace(), set.name()).await {
            Ok(live)
                if live
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.uid == uid && m.deletion_timestamp.is_none()) => {}
            Ok(_) => return Ok(false),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(false),
            Err(s) => return Err(s.into()),
        }
        adopted.status = None;
        match self.claims.0.update(adopted).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::Aborted => Ok(false),
            Err(s) => Err(s.into()),
        }
    }

    /// A pod named as one of `set`'s exists and is not its own: adopted
    /// when it has no controller and the selector picks it (Kubernetes'
    /// adoption, so a set recreated after `--cascade=orphan` takes its
    /// pods back), else reported.
    async fn adopt_or_report(&self, set: &StatefulSet, name: &str) -> Result<(), Error> {
        let pod = match self.pods.0.get(set.namespace(), name).await {
            Ok(pod) => pod,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s.into()),
        };
        let uid = set.metadata.as_ref().map_or("", |m| m.uid.as_str());
        let owner = controller_of(&pod);
        if owner.is_some_and(|o| o.uid == uid) {
            return Ok(());
        }
        let selected = set
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| skiff::selector::LabelSelector::from_meta(s).ok())
            .is_some_and(|s| {
                !s.is_empty() && pod.metadata.as_ref().is_some_and(|m| s.matches(&m.labels))
            });
        let terminating = pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        if owner.is_none() && selected && !terminating {
            let mut adopted = pod.clone();
            adopted
                .metadata_mut()
                .owner_references
                .push(owner_reference(set));
            adopted.status = None;
            match self.pods.0.update(adopted).await {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::Aborted => return Ok(()),
                Err(s) => return Err(s.into()),
            }
        }
        if !terminating {
            self.event(
                set,
                EventType::Warning,
                "FailedCreate",
                &format!(
                    "create Pod {name} in StatefulSet {} failed: a pod of that name exists and is not the set's",
                    set.name()
                ),
            )
            .await;
        }
        Ok(())
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(set) = self.sets.1.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let meta = set.metadata.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            self.history.forget(&meta.uid);
            return Ok(Action::AwaitChange);
        }
        let owned: Vec<Arc<Pod>> = self
            .pods
            .1
            .list()
            .into_iter()
            .filter(|p| p.namespace() == key.namespace)
            .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == meta.uid))
            .collect();
        let spec = set.spec.clone().unwrap_or_default();
        let hash = template_hash(spec.template.as_ref(), 0);
        let update = revision_name(&set, &hash);
        let prefix = format!("{}-", set.name());
        let running: Vec<String> = owned
            .iter()
            .filter_map(|p| p.metadata.as_ref()?.labels.get(REVISION_LABEL))
            .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
            .collect();
        let current = set
            .status
            .as_ref()
            .map(|s| s.current_revision.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| update.clone());
        // The current revision is kept whatever the limit: pods below the
        // partition are made from it.
        let mut running = running;
        running.extend(current.strip_prefix(&prefix).map(str::to_string));
        let running: Vec<&str> = running.iter().map(String::as_str).collect();
        self.history.record(set.as_ref(), &hash, &running).await?;
        let templates: Vec<&str> = spec
            .volume_claim_templates
            .iter()
            .map(|t| t.name())
            .collect();
        let end = start_of(&set) + replicas_of(&set);
        let gone_ordinals: Vec<i32> = self
            .claims
            .1
            .list()
            .iter()
            .filter(|c| c.namespace() == key.namespace)
            .filter(|c| {
                c.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none())
            })
            .filter_map(|c| {
                templates.iter().find_map(|t| {
                    c.name()
                        .strip_prefix(&format!("{t}-{}-", set.name()))
                        .and_then(|o| o.parse::<i32>().ok())
                })
            })
            .filter(|o| *o >= end)
            .collect();
        let plan = plan(&set, &owned, &current, &update, &gone_ordinals);
        // The claims of the ordinals it has follow its policy (which may
        // have changed since they were made).
        for ordinal in start_of(&set)..end {
            for claim in claims_for(&set, ordinal) {
                let Some(existing) = self.claims.1.get(claim.namespace(), claim.name()) else {
                    continue;
                };
                let go_with = existing
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == meta.uid));
                let labelled = existing
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.get(SET_UID_LABEL))
                    .is_some_and(|u| *u == meta.uid);
                let deleting = existing
                    .metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_some());
                if !deleting && (go_with != claims_go_with(&set) || !labelled) {
                    self.own_claim(&set, &existing).await?;
                }
            }
        }
        let floor = start_of(&set) + partition_of(&set);
        let mut requeue = false;
        for &ordinal in &plan.create {
            if !self.ensure_claims(&set, ordinal).await? {
                requeue = true;
                continue;
            }
            // Below the partition, a recreated pod keeps the current
            // revision's template.
            let (template, revision) = if ordinal < floor && current != update {
                match self
                    .revision_store
                    .get(&key.namespace, &current)
                    .and_then(|r| template_of(&r))
                {
                    Some(t) => (t, current.clone()),
                    None => {
                        self.event(
                            &set,
                            EventType::Warning,
                            "FailedCreate",
                            &format!(
                                "create Pod {} in StatefulSet {}: its current revision {current} is not found yet",
                                pod_name(&set, ordinal),
                                set.name()
                            ),
                        )
                        .await;
                        requeue = true;
                        continue;
                    }
                }
            } else {
                (spec.template.clone().unwrap_or_default(), update.clone())
            };
            let pod = pod_for(&set, ordinal, &template, &revision);
            let name = pod.name().to_string();
            match self.pods.0.create(pod).await {
                Ok(_) => {
                    self.event(
                        &set,
                        EventType::Normal,
                        "SuccessfulCreate",
                        &format!("create Pod {name} in StatefulSet {} successful", set.name()),
                    )
                    .await;
                }
                // The old pod of that name is still going, or a pod of that
                // name is someone else's: adopted when it is an orphan the
                // selector picks (as Kubernetes does), else reported.
                Err(s) if s.code() == tonic::Code::AlreadyExists => {
                    requeue = true;
                    self.adopt_or_report(&set, &name).await?;
                }
                Err(s) => {
                    self.event(
                        &set,
                        EventType::Warning,
                        "FailedCreate",
                        &format!(
                            "create Pod {name} in StatefulSet {} failed error: {}",
                            set.name(),
                            s.message()
                        ),
                    )
                    .await;
                    return Err(s.into());
                }
            }
        }
        for name in &plan.delete {
            let Some(pod) = owned.iter().find(|p| p.name() == name) else {
                continue;
            };
            match self.pods.0.delete(delete_exactly(pod.as_ref())).await {
                Ok(_) => {
                    self.event(
                        &set,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("delete Pod {name} in StatefulSet {} successful", set.name()),
                    )
                    .await;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        for &ordinal in &plan.release_claims {
            for claim in claims_for(&set, ordinal) {
                // Only the claims this set made.
                let Some(existing) =
                    self.claims
                        .1
                        .get(claim.namespace(), claim.name())
                        .filter(|c| {
                            c.metadata
                                .as_ref()
                                .and_then(|m| m.labels.get(SET_UID_LABEL))
                                .is_some_and(|u| *u == meta.uid)
                        })
                else {
                    continue;
                };
                match self
                    .claims
                    .0
                    .delete(delete_exactly(existing.as_ref()))
                    .await
                {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s.into()),
                }
            }
        }
        let status = StatefulSetStatus {
            conditions: set
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            collision_count: set.status.as_ref().and_then(|s| s.collision_count),
            ..plan.status.clone()
        };
        if set.status.as_ref() != Some(&status) {
            let mut updated = (*set).clone();
            updated.status = Some(status);
            match self.sets.0.update_status(updated).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) if s.code() == tonic::Code::Aborted => requeue = true,
                Err(s) => return Err(s.into()),
            }
        }
        // Pods Ready but not yet available: looked at again when they are.
        let min_ready = spec.min_ready_seconds;
        let maturing = min_ready > 0
            && owned
                .iter()
                .any(|p| skiff::pods::is_ready(p) && !is_available(p, min_ready));
        Ok(if requeue {
            Action::Requeue(Duration::from_millis(500))
        } else if maturing {
            Action::Requeue(Duration::from_secs(1))
        } else {
            Action::AwaitChange
        })
    }
}

impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.sets.1, key)
    }
}

// === wiring ===

/// Starts the StatefulSet controller: woken by StatefulSets, their pods,
/// their revisions, and claims (one being deleted holds its pod back).
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(StatefulSetController::new(
        Arc::clone(&shared.recorder),
        (
            Api::new(shared.channel.clone()),
            shared.statefulsets.store.clone(),
        ),
        (
            Api::new(shared.channel.clone()),
            shared.controllerrevisions.store.clone(),
        ),
        (Api::new(shared.channel.clone()), shared.pods.store.clone()),
        (
            Api::new(shared.channel.clone()),
            shared.persistentvolumeclaims.store.clone(),
        ),
    ));
    let (sets, for_claims) = (
        shared.statefulsets.store.clone(),
        shared.statefulsets.store.clone(),
    );
    Controller::new(controller)
        .for_kind(&shared.statefulsets)
        .watches(&shared.pods, |change| {
            StatefulSetController::owner_of(changed(change).as_ref())
                .into_iter()
                .collect()
        })
        .watches(&shared.controllerrevisions, |change| {
            StatefulSetController::owner_of(changed(change).as_ref())
                .into_iter()
                .collect()
        })
        .watches(&shared.persistentvolumeclaims, move |change| {
            // A claim named TEMPLATE-SET-ORDINAL: its set, if one of the
            // namespace's sets has such a template.
            let claim = changed(change);
            for_claims
                .list()
                .iter()
                .filter(|s| s.namespace() == claim.namespace())
                .filter(|s| {
                    s.spec
                        .iter()
                        .flat_map(|sp| &sp.volume_claim_templates)
                        .any(|t| {
                            claim
                                .name()
                                .starts_with(&format!("{}-{}-", t.name(), s.name()))
                        })
                })
                .map(|s| s.object_ref())
                .collect()
        })
        .run(move || keys_of(&sets), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use skiff::pb::core::v1::{PodCondition, PodSpec, PodStatus};

    fn set(replicas: i32, policy: &str, partition: i32) -> StatefulSet {
        StatefulSet {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "set-uid".into(),
                ..Default::default()
            }),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: "nginx".into(),
                pod_management_policy: policy.into(),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: [("app".to_string(), "web".to_string())].into(),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
                update_strategy: Some(StatefulSetUpdateStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(partition),
                        max_unavailable: None,
                    }),
                }),
                volume_claim_templates: vec![PersistentVolumeClaim {
                    metadata: Some(ObjectMeta {
                        name: "data".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(ordinal: i32, revision: &str, ready: bool) -> Arc<Pod> {
        let set = set(1, "", 0);
        let mut pod = pod_for(&set, ordinal, &PodTemplateSpec::default(), revision);
        pod.status = Some(PodStatus {
            phase: "Running".into(),
            conditions: vec![PodCondition {
                r#type: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        Arc::new(pod)
    }

    #[test]
    fn a_pod_has_its_stable_name_hostname_and_claim() {
        let set = set(3, "", 0);
        let pod = pod_for(
            &set,
            2,
            set.spec.as_ref().unwrap().template.as_ref().unwrap(),
            "web-abc",
        );
        assert_eq!(pod.name(), "web-2");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            (spec.hostname.as_str(), spec.subdomain.as_str()),
            ("web-2", "nginx")
        );
        assert_eq!(
            spec.volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-web-2"
        );
        let labels = &pod.metadata.as_ref().unwrap().labels;
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[REVISION_LABEL], "web-abc");
        assert_eq!(ordinal_of(&set, &pod), Some(2));
        assert_eq!(claims_for(&set, 2)[0].name(), "data-web-2");
    }

    #[test]
    fn ordered_ready_makes_one_pod_at_a_time_and_waits_for_it() {
        let set = set(3, "OrderedReady", 0);
        let p = plan(&set, &[], "r1", "r1", &[]);
        assert_eq!(p.create, [0]);
        let p = plan(&set, &[pod(0, "r1", false)], "r1", "r1", &[]);
        assert!(p.create.is_empty(), "waits for web-0 to be Ready");
        let p = plan(&set, &[pod(0, "r1", true)], "r1", "r1", &[]);
        assert_eq!(p.create, [1]);
        let parallel = super::plan(&super::tests::set(3, "Parallel", 0), &[], "r1", "r1", &[]);
        assert_eq!(parallel.create, [0, 1, 2]);
    }

    #[test]
    fn scaling_down_removes_the_highest_ordinal_first() {
        let set = set(1, "OrderedReady", 0);
        let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&set, &pods, "r1", "r1", &[]);
        assert_eq!(p.delete, ["web-2"]);
        assert_eq!(p.status.replicas, 3);
    }

    #[test]
    fn a_rolling_update_replaces_from_the_top_down_to_the_partition() {
        let set = set(3, "OrderedReady", 2);
        let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
        let p = plan(&set, &pods, "r1", "r2", &[]);
        assert_eq!(p.delete, ["web-2"]);
        let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)];
        let p = plan(&set, &pods, "r1", "r2", &[]);
        assert!(p.delete.is_empty(), "ordinals below the partition stay");
        assert_eq!(p.status.updated_replicas, 1);
        assert_eq!(p.status.current_revision, "r1");
        let all = [pod(0, "r2", true), pod(1, "r2", true), pod(2, "r2", true)];
        let done = plan(
            &super::tests::set(3, "OrderedReady", 0),
            &all,
            "r1",
            "r2",
            &[],
        );
        assert_eq!(done.status.current_revision, "r2");
    }

    #[test]
    fn claims_of_removed_ordinals_go_only_when_asked() {
        let mut set = set(1, "OrderedReady", 0);
        let p = plan(&set, &[pod(0, "r1", true)], "r1", "r1", &[1, 2]);
        assert!(p.release_claims.is_empty(), "Retain by default");
        set.spec
            .as_mut()
            .unwrap()
            .persistent_volume_claim_retention_policy = Some(
            skiff::pb::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: "Retain".into(),
                when_scaled: "Delete".into(),
            },
        );
        let p = plan(
            &set,
            &[pod(0, "r1", true), pod(2, "r1", true)],
            "r1",
            "r1",
            &[1, 2],
        );
        assert_eq!(p.release_claims, [1], "web-2 still runs");
    }

    #[test]
    fn the_partition_counts_from_the_first_ordinal_and_an_unhealthy_pod_is_updated() {
        let mut s = set(3, "Parallel", 1);
        s.spec.as_mut().unwrap().ordinals =
            Some(skiff::pb::apps::v1::StatefulSetOrdinals { start: 5 });
        let pods = [pod(5, "r1", true), pod(6, "r1", false), pod(7, "r1", true)];
        let p = plan(&s, &pods, "r1", "r2", &[]);
        assert_eq!(
            p.delete,
            ["web-7"],
            "a crash-looping pod does not hold the update back"
        );
        let pods = [pod(5, "r1", true), pod(6, "r1", false), pod(7, "r2", true)];
        let p = plan(&s, &pods, "r1", "r2", &[]);
        assert_eq!(p.delete, ["web-6"]);
        let pods = [pod(5, "r1", true), pod(6, "r2", true), pod(7, "r2", true)];
        let p = plan(&s, &pods, "r1", "r2", &[]);
        assert!(p.delete.is_empty(), "ordinal 5 is below start + partition");
    }
}
