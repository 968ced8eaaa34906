//! The Deployment controller: one ReplicaSet per pod template, rolled
//! from the old ones to the new one as Kubernetes does.
//!
//! - The new ReplicaSet is the one whose `pod-template-hash` label is the
//!   hash of the Deployment's template; it is created (`NAME-HASH`, with
//!   the next revision) when missing, and an old one whose template comes
//!   back (a rollback) gets the next revision again.
//! - RollingUpdate ([`rolling`]): the new set grows while the total stays
//!   within replicas + maxSurge; old sets shrink while at least replicas −
//!   maxUnavailable stay available (unavailable old replicas first, oldest
//!   sets first). Recreate: the old sets go to 0, and once their pods are
//!   gone the new set goes to replicas.
//! - Paused: only scaling, no rollout. Rollback: the annotation
//!   `skiff.dev/rollback-to-revision: N` (0: the previous revision) copies
//!   that revision's template back, like `kubectl rollout undo`.
//! - Old sets scaled to 0 beyond revisionHistoryLimit are deleted.
//! - Status: replicas, updated, ready, available, unavailable; conditions
//!   Available and Progressing (ProgressDeadlineExceeded when no step was
//!   made for progressDeadlineSeconds). Events: ScalingReplicaSet,
//!   DeploymentRollback.
//!
//! Files: the sync here; [`rolling`] (the rollout's arithmetic),
//! `rollback.rs` and `status.rs` beside it.

mod rollback;
pub mod rolling;
mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use skiff::pb::core::v1::{Pod, PodTemplateSpec};
use skiff::pb::meta::v1::{LabelSelector as WireSelector, ObjectMeta};
use skiff::selector::LabelSelector;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// The label that ties a ReplicaSet and its pods to one template.
pub use skiff::names::POD_TEMPLATE_HASH_LABEL as HASH_LABEL;
/// A ReplicaSet's revision (and the Deployment's current one).
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The Deployment's replicas a ReplicaSet was last sized for.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// Set on a Deployment to roll back to a revision (0: the previous one).
pub const ROLLBACK_TO: &str = "skiff.dev/rollback-to-revision";

/// The hash of a pod template, as the `pod-template-hash` label: FNV-1a
/// over the template's encoding without that label.
pub fn template_hash(template: Option<&PodTemplateSpec>, collisions: i32) -> String {
    let mut template = template.cloned().unwrap_or_default();
    if let Some(m) = template.metadata.as_mut() {
        m.labels.remove(HASH_LABEL);
    }
    let mut bytes = prost::Message::encode_to_vec(&template);
    // After a name collision (a set by that name that is not ours), the
    // count changes the hash, as Kubernetes' collisionCount does.
    if collisions > 0 {
        bytes.extend_from_slice(&collisions.to_le_bytes());
    }
    let hash = bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .as_ref()
        .and_then(|m| m.annotations.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The old sets (oldest first in `olds`) to delete: those at 0 replicas
/// beyond revisionHistoryLimit (default 10), oldest first, as (name, uid).
fn beyond_history(d: &Deployment, olds: &[ReplicaSet]) -> Vec<(String, String)> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let idle: Vec<&ReplicaSet> = olds
        .iter()
        .filter(|rs| replicas(rs) == 0 && status(rs).replicas == 0)
        .collect();
    idle[..idle.len().saturating_sub(limit)]
        .iter()
        .map(|rs| {
            let m = rs.metadata.clone().unwrap_or_default();
            (m.name, m.uid)
        })
        .collect()
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status(rs: &ReplicaSet) -> skiff::pb::apps::v1::ReplicaSetStatus {
    rs.status.clone().unwrap_or_default()
}

fn selector(sel: Option<&WireSelector>) -> Result<LabelSelector, Error> {
    let Some(sel) = sel else {
        return Err(Error::Other("deployment has no selector".into()));
    };
    LabelSelector::try_from(sel).map_err(|e| Error::Other(e.to_string()))
}

fn now_seconds() -> i64 {
    skiff::time::now_seconds().seconds
}

/// See the module doc.
pub struct DeploymentController {
    recorder: Arc<Recorder>,
    deployments: Api<Deployment>,
    deployment_store: Store<Deployment>,
    replicasets: Api<ReplicaSet>,
    replicaset_store: Store<ReplicaSet>,
    pod_store: Store<Pod>,
}

/// What one reconcile changed, for the Progressing condition.
#[derive(Default)]
struct Step {
    /// A ReplicaSet was created or scaled.
    progressed: bool,
    /// Why, for the condition.
    reason: &'static str,
}

impl DeploymentController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        deployments: (Api<Deployment>, Store<Deployment>),
        replicasets: (Api<ReplicaSet>, Store<ReplicaSet>),
        pod_store: Store<Pod>,
    ) -> Self {
        Self {
            recorder,
            deployments: deployments.0,
            deployment_store: deployments.1,
            replicasets: replicasets.0,
            replicaset_store: replicasets.1,
            pod_store,
        }
    }

    /// The Deployment a ReplicaSet change concerns: its controller.
    pub fn owner_of(rs: &ReplicaSet) -> Option<ObjectRef> {
        let meta = rs.metadata.as_ref()?;
        let owner = meta
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")?;
        Some(ObjectRef::new(meta.namespace.clone(), owner.name.clone()))
    }

    /// The Deployment's ReplicaSets: those it controls, plus orphans its
    /// selector matches (adopted here).
    async fn owned(&self, d: &Deployment, sel: &LabelSelector) -> Result<Vec<ReplicaSet>, Error> {
        let meta = d.metadata.clone().unwrap_or_default();
        let mut owned = Vec::new();
        for rs in self.replicaset_store.list() {
            let rs_meta = rs.metadata.clone().unwrap_or_default();
            if rs_meta.namespace != meta.namespace || rs_meta.deletion_timestamp.is_some() {
                continue;
            }
            let controller = rs_meta
                .owner_references
                .iter()
                .find(|o| o.controller == Some(true));
            match controller {
                Some(o) if o.uid == meta.uid => owned.push((*rs).clone()),
                Some(_) => {}
                None => {
                    let labels = rs
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .and_then(|t| t.metadata.as_ref())
                        .map(|m| m.labels.clone())
                        .unwrap_or_default();
                    if !sel.is_empty() && sel.matches(&labels) {
                        let mut adopted = (*rs).clone();
                        adopted
                            .metadata
                            .get_or_insert_with(Default::default)
                            .owner_references
                            .push(d.controller_reference());
                        match self.replicasets.update(adopted).await {
                            Ok(rs) => owned.push(rs),
                            Err(s) if s.code() == tonic::Code::NotFound => {}
                            Err(s) => return Err(s.into()),
                        }
                    }
                }
            }
        }
        Ok(owned)
    }

    async fn scale(&self, d: &Deployment, rs: &mut ReplicaSet, to: i32) -> Result<(), Error> {
        let from = replicas(rs);
        if from == to {
            return Ok(());
        }
        let mut next = rs.clone();
        next.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let d_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        next.metadata
            .get_or_insert_with(Default::default)
            .annotations
            .insert(DESIRED_REPLICAS.into(), d_replicas.to_string());
        next.status = None;
        *rs = self.replicasets.update(next).await?;
        let direction = if to > from { "up" } else { "down" };
        let message = format!(
            "Scaled {direction} replica set {} from {from} to {to}",
            rs.name()
        );
        self.recorder
            .record(d, EventType::Normal, "ScalingReplicaSet", &message)
            .await;
        Ok(())
    }

    async fn create_new(
        &self,
        d: &Deployment,
        hash: &str,
        revision: i64,
    ) -> Result<ReplicaSet, Error> {
        let meta = d.metadata.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let mut template = spec.template.clone().unwrap_or_default();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .insert(HASH_LABEL.into(), hash.into());
        let mut rs_selector = spec.selector.clone().unwrap_or_default();
        rs_selector
            .match_labels
            .insert(HASH_LABEL.into(), hash.into());
        let mut labels = template
            .metadata
            .as_ref()
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.into());
        let rs = ReplicaSet {
            metadata: Some(ObjectMeta {
                name: format!("{}-{hash}", meta.name),
                namespace: meta.namespace.clone(),
                labels,
                annotations: BTreeMap::from([
                    (REVISION.to_string(), revision.to_string()),
                    (
                        DESIRED_REPLICAS.to_string(),
                        spec.replicas.unwrap_or(1).to_string(),
                    ),
                ]),
                owner_references: vec![d.controller_reference()],
                ..Default::default()
            }),
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector: Some(rs_selector),
                template: Some(template),
            }),
            ..Default::default()
        };
        match self.replicasets.create(rs).await {
            // The cache had not seen it yet: ours, if we control it.
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let name = format!("{}-{hash}", meta.name);
                let existing = self.replicasets.get(&meta.namespace, &name).await?;
                let ours = existing.controlled_by().is_some_and(|o| o.uid == meta.uid);
                if ours {
                    return Ok(existing);
                }
                let mut bumped = d.clone();
                let status = bumped.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                self.deployments.update_status(bumped).await?;
                Err(Error::Other(format!(
                    "replica set {name:?} exists and is not this deployment's: trying another name"
                )))
            }
            Ok(rs) => {
                let message = format!(
                    "Created new replica set {} (revision {revision})",
                    rs.name()
                );
                tracing::info!(deployment = %d.object_ref(), replicaset = rs.name(), revision, "new replica set");
                self.recorder
                    .record(d, EventType::Normal, "ScalingReplicaSet", &message)
                    .await;
                Ok(rs)
            }
            Err(s) => Err(s.into()),
        }
    }

    /// Pods still alive of the given ReplicaSets (Recreate waits for none).
    fn live_pods_of(&self, sets: &[ReplicaSet]) -> usize {
        let uids: Vec<&str> = sets.iter().map(|rs| rs.uid()).collect();
        self.pod_store
            .list()
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().map_or("", |s| s.phase.as_str());
                phase != "Succeeded"
                    && phase != "Failed"
                    && p.owner_references()
                        .iter()
                        .any(|o| uids.contains(&o.uid.as_str()))
            })
            .count()
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(d) = self.deployment_store.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let d: Deployment = (*d).clone();
        let meta = d.metadata.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let sel = selector(spec.selector.as_ref())?;
        let mut owned = self.owned(&d, &sel).await?;
        // A paused Deployment keeps the request until it is resumed.
        if let Some(wanted) = meta.annotations.get(ROLLBACK_TO)
            && !spec.paused
        {
            return self.rollback(&d, wanted, &owned).await;
        }
        let want = spec.replicas.unwrap_or(1);
        let collisions = d
            .status
            .as_ref()
            .and_then(|s| s.collision_count)
            .unwrap_or(0);
        let hash = template_hash(spec.template.as_ref(), collisions);
        let max_revision = owned.iter().map(revision).max().unwrap_or(0);
        let mut step = Step::default();

        let position = owned
            .iter()
            .position(|rs| rs.labels().get(HASH_LABEL) == Some(&hash));
        let mut new = match position {
            Some(i) => Some(owned.remove(i)),
            None if spec.paused => None,
            None => {
                step = Step {
                    progressed: true,
                    reason: "NewReplicaSetCreated",
                };
                Some(self.create_new(&d, &hash, max_revision + 1).await?)
            }
        };
        // Oldest first: they shrink first.
        owned.sort_by_key(revision);
        let mut olds = owned;

        // A template that comes back (rollback) is the newest revision
        // again; minReadySeconds is not part of the template, so it follows.
        if let Some(rs) = new.as_mut() {
            let stale_revision = revision(rs) < max_revision && !spec.paused;
            let stale_min_ready =
                rs.spec.as_ref().map_or(0, |s| s.min_ready_seconds) != spec.min_ready_seconds;
            if stale_revision || stale_min_ready {
                let mut next = rs.clone();
                if stale_revision {
                    next.metadata
                        .get_or_insert_with(Default::default)
                        .annotations
                        .insert(REVISION.into(), (max_revision + 1).to_string());
                }
                next.spec
                    .get_or_insert_with(Default::default)
                    .min_ready_seconds = spec.min_ready_seconds;
                next.status = None;
                *rs = self.replicasets.update(next).await?;
            }
        }

        let strategy = spec.strategy.clone().unwrap_or_default();
        let mut requeue = None;
        if spec.paused {
            // Scaling only, and only for a real scaling event (the sets
            // were sized for another replica count): a pause mid-rollout
            // keeps the surge. Growth goes to the newest set; shrinking
            // takes from the oldest first.
            let total: i32 = new.iter().chain(olds.iter()).map(replicas).sum();
            let sized_for = new
                .as_ref()
                .or_else(|| olds.iter().max_by_key(|rs| revision(rs)))
                .and_then(|rs| {
                    rs.metadata
                        .as_ref()?
                        .annotations
                        .get(DESIRED_REPLICAS)
                        .cloned()
                });
            if total != want && sized_for.as_deref() != Some(want.to_string().as_str()) {
                if want > total {
                    let target = match new.as_mut() {
                        Some(rs) => Some(rs),
                        None => olds.iter_mut().max_by_key(|rs| revision(rs)),
                    };
                    if let Some(rs) = target {
                        let to = replicas(rs) + want - total;
                        self.scale(&d, rs, to).await?;
                    }
                } else {
                    let mut excess = total - want;
                    for rs in olds.iter_mut().chain(new.as_mut()) {
                        if excess == 0 {
                            break;
                        }
                        let down = replicas(rs).min(excess);
                        if down > 0 {
                            self.scale(&d, rs, replicas(rs) - down).await?;
                            excess -= down;
                        }
                    }
                }
            }
        } else if let Some(new_rs) = new.as_mut() {
            if strategy.r#type == "Recreate" {
                let mut scaled_old = false;
                for old in olds.iter_mut().filter(|rs| replicas(rs) > 0) {
                    self.scale(&d, old, 0).await?;
                    scaled_old = true;
                }
                if scaled_old {
                    step = Step {
                        progressed: true,
                        reason: "ReplicaSetUpdated",
                    };
                } else if self.live_pods_of(&olds) > 0 {
                    // The old pods must be gone before new ones start.
                    requeue = Some(Duration::from_secs(1));
                } else if replicas(new_rs) != want {
                    self.scale(&d, new_rs, want).await?;
                    step = Step {
                        progressed: true,
                        reason: "ReplicaSetUpdated",
                    };
                }
            } else {
                let ru = strategy.rolling_update.clone().unwrap_or_default();
                let (surge, unavailable) =
                    rolling::fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), want)
                        .map_err(Error::Other)?;
                let all: i32 = replicas(new_rs) + olds.iter().map(replicas).sum::<i32>();
                let target = rolling::new_replicas(want, surge, all, replicas(new_rs));
                if target != replicas(new_rs) {
                    self.scale(&d, new_rs, target).await?;
                    step = Step {
                        progressed: true,
                        reason: "ReplicaSetUpdated",
                    };
                }
                let new_counts = rolling::Counts {
                    replicas: replicas(new_rs),
                    available: status(new_rs).available_replicas,
                };
                let old_counts: Vec<rolling::Counts> = olds
                    .iter()
                    .map(|rs| rolling::Counts {
                        replicas: replicas(rs),
                        available: status(rs).available_replicas,
                    })
                    .collect();
                let next = rolling::old_replicas(want, unavailable, new_counts, &old_counts);
                for (old, to) in olds.iter_mut().zip(next) {
                    if to != replicas(old) {
                        self.scale(&d, old, to).await?;
                        step = Step {
                            progressed: true,
                            reason: "ReplicaSetUpdated",
                        };
                    }
                }
            }
        }

        self.cleanup_history(&d, &mut olds).await?;
        let deadline_requeue = self.write_status(&d, new.as_ref(), &olds, step).await?;
        Ok(match (requeue, deadline_requeue) {
            (Some(a), Some(b)) => Action::Requeue(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Action::Requeue(a),
            (None, None) => Action::AwaitChange,
        })
    }

    /// Deletes old sets at 0 replicas beyond revisionHistoryLimit, oldest
    /// first.
    async fn cleanup_history(
        &self,
        d: &Deployment,
        olds: &mut Vec<ReplicaSet>,
    ) -> Result<(), Error> {
        let doomed = beyond_history(d, olds);
        if doomed.is_empty() {
            return Ok(());
        }
        for (name, uid) in &doomed {
            let request = DeleteRequest {
                namespace: d.namespace().to_string(),
                name: name.clone(),
                preconditions: Some(Preconditions {
                    uid: uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match self.replicasets.delete(request).await {
                Ok(_) => {}
                Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {}
                Err(s) => return Err(s.into()),
            }
        }
        olds.retain(|rs| !doomed.iter().any(|(n, _)| n == rs.name()));
        Ok(())
    }
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.deployment_store, key)
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the Deployment controller: woken by Deployments and by their
/// ReplicaSets (an orphan wakes its namespace's deployments, which may
/// adopt it).
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(DeploymentController::new(
        Arc::clone(&shared.recorder),
        (
            Api::new(shared.channel.clone()),
            shared.deployments.store.clone(),
        ),
        (
            Api::new(shared.channel.clone()),
            shared.replicasets.store.clone(),
        ),
        shared.pods.store.clone(),
    ));
    let (deployments, orphans) = (
        shared.deployments.store.clone(),
        shared.deployments.store.clone(),
    );
    Controller::new(controller)
        .for_kind(&shared.deployments)
        .watches(&shared.replicasets, move |change| {
            let rs = changed(change);
            match DeploymentController::owner_of(rs) {
                Some(key) => vec![key],
                None => orphans
                    .list()
                    .iter()
                    .filter(|d| d.namespace() == rs.namespace())
                    .map(|d| d.object_ref())
                    .collect(),
            }
        })
        .reads(&shared.pods.store)
        .run(move || keys_of(&deployments), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{Container, PodSpec};

    fn template(env: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "web".into(),
                    image: env.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn idle_old_sets_beyond_the_history_limit_go_oldest_first() {
        let set = |name: &str, replicas: i32| ReplicaSet {
            metadata: Some(ObjectMeta {
                name: name.into(),
                uid: format!("uid-{name}"),
                ..Default::default()
            }),
            spec: Some(skiff::pb::apps::v1::ReplicaSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Oldest first; r3 still runs pods (a rollout in progress).
        let olds = [set("r1", 0), set("r2", 0), set("r3", 2), set("r4", 0)];
        let limited = |limit: Option<i32>| Deployment {
            spec: Some(skiff::pb::apps::v1::DeploymentSpec {
                revision_history_limit: limit,
                ..Default::default()
            }),
            ..Default::default()
        };
        let names = |d: &Deployment| -> Vec<String> {
            beyond_history(d, &olds)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names(&limited(Some(1))), ["r1", "r2"]);
        assert_eq!(names(&limited(Some(0))), ["r1", "r2", "r4"]);
        assert!(names(&limited(None)).is_empty(), "10 by default");
    }

    #[test]
    fn the_hash_ignores_its_own_label_and_follows_the_template() {
        let a = template("one");
        let mut labelled = a.clone();
        let h = template_hash(Some(&a), 0);
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .insert(HASH_LABEL.into(), h.clone());
        assert_eq!(
            template_hash(Some(&labelled), 0),
            h,
            "a set's template hashes as its deployment's"
        );
        assert_ne!(template_hash(Some(&template("two")), 0), h);
        assert_eq!(h.len(), 8);
    }
}
