//! The ReplicaSet and ReplicationController controller: keeps N pods of a
//! template alive, adopts matching orphans, releases pods that stop
//! matching, and reports replicas / ready / available in the status.
//!
//! Both kinds share one reconcile through [`ReplicaOwner`]. Creates and
//! deletes not yet seen by the pod informer are remembered
//! ("expectations"), so that a reconcile running before the cache catches
//! up neither creates nor deletes twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::apps::v1::{ReplicaSet, ReplicaSetStatus};
use skiff::pb::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerStatus,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::selector::LabelSelector;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// Creates/deletes not observed within this long are forgotten (the
/// cache must have missed them; the next reconcile recounts).
const EXPECTATION_TTL: Duration = Duration::from_secs(60);
/// Most pods created or deleted by one reconcile.
const BURST: usize = 500;

/// What the controller needs from a kind that owns replicas.
pub trait ReplicaOwner: Resource {
    /// Desired replicas (default 1).
    fn replicas(&self) -> i32;
    /// The pod selector.
    ///
    /// # Errors
    /// A selector the API should not have accepted.
    fn selector(&self) -> Result<LabelSelector, String>;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Seconds a pod must be ready to count as available.
    fn min_ready_seconds(&self) -> i32;
    /// Writes the counts into the status; true if it changed.
    fn set_status(&mut self, counts: Counts) -> bool;
}

/// What a status reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Pods owned and active.
    pub replicas: i32,
    /// Of those, carrying every template label.
    pub fully_labeled: i32,
    /// Of those, Ready.
    pub ready: i32,
    /// Of those, Ready for minReadySeconds.
    pub available: i32,
    /// The generation these counts answer.
    pub observed_generation: i64,
}

impl ReplicaOwner for ReplicaSet {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn selector(&self) -> Result<LabelSelector, String> {
        let Some(sel) = self.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            return Err("no selector".into());
        };
        LabelSelector::try_from(sel).map_err(|e| e.to_string())
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().map_or(0, |s| s.min_ready_seconds)
    }

    fn set_status(&mut self, c: Counts) -> bool {
        let status = self.status.get_or_insert_with(ReplicaSetStatus::default);
        let before = status.clone();
        status.replicas = c.replicas;
        status.fully_labeled_replicas = c.fully_labeled;
        status.ready_replicas = c.ready;
        status.available_replicas = c.available;
        status.observed_generation = c.observed_generation;
        *status != before
    }
}

impl ReplicaOwner for ReplicationController {
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn selector(&self) -> Result<LabelSelector, String> {
        let sel = self.spec.as_ref().map(|s| &s.selector);
        match sel {
            Some(sel) if !sel.is_empty() => {
                LabelSelector::from_parts(sel, &[]).map_err(|e| e.to_string())
            }
            _ => Err("no selector".into()),
        }
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec.as_ref().map_or(0, |s| s.min_ready_seconds)
    }

    fn set_status(&mut self, c: Counts) -> bool {
        let status = self
            .status
            .get_or_insert_with(ReplicationControllerStatus::default);
        let before = status.clone();
        status.replicas = c.replicas;
        status.fully_labeled_replicas = c.fully_labeled;
        status.ready_replicas = c.ready;
        status.available_replicas = c.available;
        status.observed_generation = c.observed_generation;
        *status != before
    }
}

/// Pending creates and deletes of one owner, by pod name.
#[derive(Default)]
struct Expectations {
    creates: HashMap<String, Instant>,
    deletes: HashMap<String, Instant>,
}

/// The controller for one owner kind.
pub struct ReplicaController<K> {
    /// SuccessfulCreate / SuccessfulDelete events.
    recorder: Arc<Recorder>,
    owners: Api<K>,
    owner_store: Store<K>,
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    expectations: Mutex<HashMap<ObjectRef, Expectations>>,
}

/// The owner reference with `controller: true`, if any.
/// When an object was created, in seconds (0: unknown).
pub(crate) fn created_at<K: Resource>(obj: &K) -> i64 {
    obj.metadata()
        .and_then(|m| m.creation_timestamp.as_ref())
        .map_or(0, |t| t.seconds)
}

/// A delete of exactly `obj`: its uid is the precondition, so a newer
/// object of the same name is never deleted in its place.
pub(crate) fn delete_exactly<K: Resource>(obj: &K) -> DeleteRequest {
    let meta = obj.metadata().cloned().unwrap_or_default();
    DeleteRequest {
        namespace: meta.namespace,
        name: meta.name,
        preconditions: Some(Preconditions {
            uid: meta.uid,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Neither finished nor being deleted.
pub(crate) fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    phase != "Succeeded"
        && phase != "Failed"
        && pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_none())
}

/// Ready for at least `min_ready` seconds.
pub(crate) fn is_available(pod: &Pod, min_ready: i32) -> bool {
    if !skiff::pods::is_ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(0, |t| t.seconds);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - since >= i64::from(min_ready)
}

/// Deletion order, as Kubernetes': unscheduled, then pending, then not
/// ready, then the newest.
fn deletion_rank(pod: &Pod) -> (bool, u8, bool, std::cmp::Reverse<i64>) {
    let scheduled = pod.spec.as_ref().is_some_and(|s| !s.node_name.is_empty());
    let phase = match pod.status.as_ref().map_or("", |s| s.phase.as_str()) {
        "Pending" => 0,
        "Running" => 2,
        _ => 1,
    };
    let created = pod
        .metadata
        .as_ref()
        .and_then(|m| m.creation_timestamp.as_ref())
        .map_or(0, |t| t.seconds);
    (
        scheduled,
        phase,
        skiff::pods::is_ready(pod),
        std::cmp::Reverse(created),
    )
}

// === impl ReplicaController ===

impl<K: ReplicaOwner> ReplicaController<K> {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        owners: Api<K>,
        owner_store: Store<K>,
        pods: Api<Pod>,
        pod_store: Store<Pod>,
    ) -> Self {
        Self {
            recorder,
            owners,
            owner_store,
            pods,
            pod_store,
            expectations: Mutex::new(HashMap::new()),
        }
    }

    /// The owner keys a pod change concerns: its controller if it is one
    /// of ours, else every owner in its namespace whose selector matches
    /// it (a candidate for adoption).
    pub fn owners_of(&self, pod: &Pod) -> Vec<ObjectRef> {
        let namespace = pod.namespace();
        if let Some(owner) = pod.controlled_by() {
            return if owner.kind == K::KIND {
                vec![ObjectRef::new(namespace, owner.name.clone())]
            } else {
                Vec::new()
            };
        }
        let labels = pod
            .metadata
            .as_ref()
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        self.owner_store
            .list()
            .iter()
            .filter(|o| o.namespace() == namespace)
            .filter(|o| {
                o.selector()
                    .is_ok_and(|s| !s.is_empty() && s.matches(&labels))
            })
            .map(|o| o.object_ref())
            .collect()
    }

    /// A pod is gone: a create still expected for it will never be seen
    /// present, so stop waiting for it.
    pub fn observe_deleted(&self, pod: &Pod) {
        for key in self.owners_of(pod) {
            self.expect(&key, |e| {
                e.creates.remove(pod.name());
            });
        }
    }

    async fn create_pods(&self, owner: &K, key: &ObjectRef, count: usize) -> Result<(), Error> {
        let Some(template) = owner.template() else {
            return Err(Error::Other(format!(
                "{} {key} has no pod template",
                K::KIND
            )));
        };
        let tmeta = template.metadata.clone().unwrap_or_default();
        let pod = Pod {
            metadata: Some(ObjectMeta {
                generate_name: format!("{}-", key.name),
                namespace: key.namespace.clone(),
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: vec![owner.controller_reference()],
                ..Default::default()
            }),
            spec: template.spec.clone(),
            ..Default::default()
        };
        // Slow start: 1, 2, 4, ... at a time, stopping at the first error
        // (a quota or a bad template fails once, not N times).
        let mut done = 0;
        let mut batch = 1;
        while done < count {
            let n = batch.min(count - done);
            let results =
                futures::future::join_all((0..n).map(|_| self.pods.create(pod.clone()))).await;
            let mut first_error = None;
            for result in results {
                match result {
                    Ok(created) => {
                        let name = created.name().to_string();
                        self.event(owner, "SuccessfulCreate", format!("Created pod: {name}"));
                        self.expect(key, |e| {
                            e.creates.insert(name, Instant::now());
                        });
                    }
                    Err(status) => {
                        first_error.get_or_insert(status);
                    }
                }
            }
            if let Some(status) = first_error {
                // As Kubernetes': what refused the pod (a Pod Security
                // level, a quota, a bad template) shows on its owner.
                self.event_of(
                    owner,
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {}", status.message()),
                );
                return Err(status.into());
            }
            done += n;
            batch *= 2;
        }
        tracing::info!(kind = K::KIND, owner = %key, created = count, "created pods");
        Ok(())
    }

    /// Records an event in the background: never slows the work down.
    fn event(&self, owner: &K, reason: &'static str, message: String) {
        self.event_of(owner, EventType::Normal, reason, message);
    }

    /// As [`Self::event`], of type `kind`.
    fn event_of(&self, owner: &K, kind: EventType, reason: &'static str, message: String) {
        let (recorder, owner) = (Arc::clone(&self.recorder), owner.clone());
        tokio::spawn(async move {
            recorder.record(&owner, kind, reason, &message).await;
        });
    }

    fn expect(&self, key: &ObjectRef, f: impl FnOnce(&mut Expectations)) {
        if let Ok(mut all) = self.expectations.lock() {
            f(all.entry(key.clone()).or_default());
        }
    }

    async fn delete_pods(&self, key: &ObjectRef, victims: Vec<Arc<Pod>>) -> Result<(), Error> {
        let results = futures::future::join_all(
            victims
                .iter()
                .map(|pod| self.pods.delete(delete_exactly(pod.as_ref()))),
        )
        .await;
        let mut first_error = None;
        for (pod, result) in victims.iter().zip(results) {
            match result {
                Ok(_) => {
                    let name = pod.name().to_string();
                    if let Some(owner) = self.owner_store.get(&key.namespace, &key.name) {
                        self.event(&*owner, "SuccessfulDelete", format!("Deleted pod: {name}"));
                    }
                    self.expect(key, |e| {
                        e.deletes.insert(name, Instant::now());
                    });
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                // Keep recording the others' deletes: forgetting one would
                // make the retry delete a replacement too.
                Err(s) => {
                    first_error.get_or_insert(s);
                }
            }
        }
        if let Some(s) = first_error {
            return Err(s.into());
        }
        tracing::info!(kind = K::KIND, owner = %key, deleted = victims.len(), "deleted pods");
        Ok(())
    }

    /// Adopts orphans that match and releases owned pods that do not.
    async fn adopt_and_release(
        &self,
        owner: &K,
        selector: &LabelSelector,
        pods: &[Arc<Pod>],
    ) -> Result<Vec<Arc<Pod>>, Error> {
        let uid = owner.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        let mut owned = Vec::new();
        for pod in pods {
            let labels = pod
                .metadata
                .as_ref()
                .map(|m| m.labels.clone())
                .unwrap_or_default();
            let matches = selector.matches(&labels);
            match pod.controlled_by() {
                Some(c) if c.uid == uid => {
                    if matches {
                        owned.push(Arc::clone(pod));
                    } else {
                        let mut released = (**pod).clone();
                        if let Some(m) = released.metadata.as_mut() {
                            m.owner_references.retain(|o| o.uid != uid);
                        }
                        self.pods.update(released).await?;
                    }
                }
                None if matches && is_active(pod) => {
                    let mut adopted = (**pod).clone();
                    adopted
                        .metadata
                        .get_or_insert_with(Default::default)
                        .owner_references
                        .push(owner.controller_reference());
                    match self.pods.update(adopted).await {
                        Ok(pod) => owned.push(Arc::new(pod)),
                        // Changed meanwhile: the next reconcile sees it.
                        Err(s) if s.code() == tonic::Code::Aborted => {}
                        Err(s) => return Err(s.into()),
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(owner) = self.owner_store.get(&key.namespace, &key.name) else {
            // Deleted: its pods go with the garbage collector.
            if let Ok(mut all) = self.expectations.lock() {
                all.remove(&key);
            }
            return Ok(Action::AwaitChange);
        };
        if owner
            .metadata()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let selector = owner.selector().map_err(Error::Other)?;
        let in_namespace: Vec<Arc<Pod>> = self
            .pod_store
            .list()
            .into_iter()
            .filter(|p| p.namespace() == key.namespace)
            .collect();
        let owned = self
            .adopt_and_release(&owner, &selector, &in_namespace)
            .await?;
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();

        // Expectations: creates not yet seen count as present, deletes not
        // yet seen as gone.
        let present: HashSet<&str> = owned.iter().map(|p| p.name()).collect();
        let (pending_creates, pending_deletes) = {
            let mut all = self
                .expectations
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let e = all.entry(key.clone()).or_default();
            let fresh = |at: &Instant| at.elapsed() < EXPECTATION_TTL;
            e.creates
                .retain(|name, at| !present.contains(name.as_str()) && fresh(at));
            e.deletes
                .retain(|name, at| present.contains(name.as_str()) && fresh(at));
            (e.creates.len(), e.deletes.clone())
        };
        let counted: Vec<Arc<Pod>> = active
            .iter()
            .filter(|p| !pending_deletes.contains_key(p.name()))
            .cloned()
            .collect();
        let want = usize::try_from(owner.replicas().max(0)).unwrap_or(0);
        let have = counted.len() + pending_creates;
        if have < want {
            self.create_pods(&owner, &key, (want - have).min(BURST))
                .await?;
        } else if have > want && pending_creates == 0 {
            let mut victims = counted.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            victims.truncate((have - want).min(BURST));
            self.delete_pods(&key, victims).await?;
        }

        let labels = owner
            .template()
            .and_then(|t| t.metadata.as_ref())
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        let min_ready = owner.min_ready_seconds();
        let counts = Counts {
            replicas: active.len() as i32,
            fully_labeled: active
                .iter()
                .filter(|p| {
                    let l = p.labels();
                    labels.iter().all(|(k, v)| l.get(k) == Some(v))
                })
                .count() as i32,
            ready: active.iter().filter(|p| skiff::pods::is_ready(p)).count() as i32,
            available: active.iter().filter(|p| is_available(p, min_ready)).count() as i32,
            observed_generation: owner.metadata().map_or(0, |m| m.generation),
        };
        let mut updated = (*owner).clone();
        if updated.set_status(counts) {
            match self.owners.update_status(updated).await {
                Ok(_) => {}
                // Changed meanwhile: the change requeues us.
                Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                }
                Err(s) => return Err(s.into()),
            }
        }
        // Pods becoming available after minReadySeconds change no object:
        // look again then.
        if min_ready > 0 && counts.available < counts.ready {
            return Ok(Action::Requeue(Duration::from_secs(min_ready as u64)));
        }
        if pending_creates > 0 || !pending_deletes.is_empty() {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        Ok(Action::AwaitChange)
    }
}

impl<K: ReplicaOwner> Reconciler for ReplicaController<K> {
    fn name(&self) -> &'static str {
        K::PLURAL
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.owner_store, key)
    }
}

// === wiring ===

/// Starts the controller of `K`s (ReplicaSets or ReplicationControllers)
/// kept in `owners`: woken by their changes and by their pods'.
pub fn start<K: ReplicaOwner>(
    shared: Arc<crate::Shared>,
    workers: usize,
    owners: &skiff_client::Informer<K>,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(ReplicaController::new(
        Arc::clone(&shared.recorder),
        Api::<K>::new(shared.channel.clone()),
        owners.store.clone(),
        Api::new(shared.channel.clone()),
        shared.pods.store.clone(),
    ));
    let by_pod = Arc::clone(&controller);
    let store = owners.store.clone();
    Controller::new(controller)
        .for_kind(owners)
        .watches(&shared.pods, move |change| {
            if let skiff_client::Change::Deleted(pod) = change {
                by_pod.observe_deleted(pod);
            }
            by_pod.owners_of(changed(change))
        })
        .run(move || keys_of(&store), workers)
        .boxed()
}

#[cfg(test)]
mod tests;
