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
//!
//! The decisions are in `plan` (pure, unit-tested in `tests`); this file
//! keeps the controller that carries them out, and its wiring.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use skiff::pb::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::deployment::template_hash;
use crate::history::{History, REVISION_LABEL};
use crate::replicaset::{delete_exactly, is_available};
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

mod plan;
pub use plan::{
    POD_INDEX_LABEL, POD_NAME_LABEL, Plan, SET_UID_LABEL, claim_name, claims_for, ordinal_of, plan,
    pod_for, pod_name, revision_name,
};
use plan::{claim_owner, claims_go_with, partition_of, replicas_of, start_of};

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
        obj.controlled_by()
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
        let other = existing.metadata.as_ref().and_then(|m| {
            m.owner_references
                .iter()
                .find(|o| o.kind == StatefulSet::KIND && o.uid != uid)
        });
        match other {
            // An earlier set of this name owns it, and its collector is
            // about to delete it: wait for that (Kubernetes' stale claim).
            Some(o) if o.name == set.name() => return Ok(false),
            // Another set's: left alone.
            Some(_) => return Ok(true),
            None => {}
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
        let uid = set.uid();
        let owner = pod.controlled_by();
        if owner.is_some_and(|o| o.uid == uid) {
            return Ok(());
        }
        let selected = set
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| skiff::selector::LabelSelector::try_from(s).ok())
            .is_some_and(|s| !s.is_empty() && s.matches(pod.labels()));
        let terminating = pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        if owner.is_none() && selected && !terminating {
            let mut adopted = pod.clone();
            adopted
                .metadata_mut()
                .owner_references
                .push(set.controller_reference());
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
            .filter(|p| p.controlled_by().is_some_and(|o| o.uid == meta.uid))
            .collect();
        let spec = set.spec.clone().unwrap_or_default();
        let hash = template_hash(spec.template.as_ref(), 0);
        let update = revision_name(&set, &hash);
        let prefix = format!("{}-", set.name());
        let running: Vec<String> = owned
            .iter()
            .filter_map(|p| p.labels().get(REVISION_LABEL))
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
mod tests;
