//! The scheduling loop: pending pods in, bindings out.
//!
//! Informers mirror nodes and pods; pending pods queue by priority
//! (highest first), then by age. The cache counts every bound pod, and
//! every *assumed* pod (chosen, binding in flight) against its node, so
//! that the next decision sees it before the API confirms it. A pod that
//! fits nowhere gets a FailedScheduling event counting the reasons, the
//! PodScheduled=False condition, and a retry with backoff — sooner when a
//! node, pod, claim, volume or storage class changes.
//!
//! Pods with PersistentVolumeClaims also pass
//! [`VolumeBinding`](crate::plugins::volume_binding): their claims are
//! checked before the nodes, their volumes' nodes per node, and claims
//! that wait for their first pod are given the chosen node and bound
//! before the pod is.
//!
//! # Layout
//!
//! The loop and the scheduler's state are here; the rest sits in files of
//! its own under `scheduler/`:
//!
//! - `cache`: the cache of bound and assumed pods per node.
//! - `queue`: which pods are ours and queue, the informers' changes,
//!   nominations, and the backoff of unschedulable pods.
//! - `cycle`: one scheduling cycle: pick a node, assume the pod there,
//!   bind it (and its waiting claims) in the background.
//! - `preempt`: preemption for a pod that fits nowhere.
//! - `report`: the PodScheduled condition and FailedScheduling events.
//! - `metrics`: the scheduler's Prometheus metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use skiff::pb::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use skiff::pb::policy::v1::PodDisruptionBudget;
use skiff::pb::storage::v1::StorageClass;
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::Recorder;
use skiff_client::{Api, Change, Informer, WorkQueue};
use tokio::sync::mpsc;

use crate::preemption;
use crate::profile::Profile;

mod cache;
mod cycle;
mod metrics;
mod preempt;
mod queue;
mod report;

use cache::Cache;

/// What the loop needs to know about one decision's outcome.
enum Outcome {
    /// The binding of the pod with this uid failed: forget the
    /// assumption and retry the pod.
    BindFailed(ObjectRef, String, tonic::Status),
}

/// How the scheduler is set up.
#[derive(Clone)]
pub struct Settings {
    /// Pods whose spec.schedulerName is this are ours.
    pub scheduler_name: String,
}

/// The scheduler: informers, cache, queue and profile.
pub struct Scheduler {
    settings: Settings,
    profile: Profile,
    pods: Api<Pod>,
    pod_informer: Informer<Pod>,
    node_informer: Informer<Node>,
    claim_informer: Informer<PersistentVolumeClaim>,
    volume_informer: Informer<PersistentVolume>,
    class_informer: Informer<StorageClass>,
    /// Disruption budgets, which preemption spares where it can.
    budget_informer: Informer<PodDisruptionBudget>,
    /// Pending pods nominated to a node by preemption, by node: they
    /// count on it for pods of no higher priority, so the room made for
    /// them is not taken meanwhile.
    nominated: HashMap<String, HashMap<ObjectRef, Arc<Pod>>>,
    /// Claims, to give them their pod's node.
    claims: Api<PersistentVolumeClaim>,
    /// Volumes, to check where a claim's volume was made.
    volumes: Api<PersistentVolume>,
    cache: Cache,
    queue: WorkQueue<ObjectRef>,
    /// Pods that fit nowhere at their last attempt.
    unschedulable: HashSet<ObjectRef>,
    /// Consecutive failed attempts per pod (for backoff).
    attempts: HashMap<ObjectRef, u32>,
    /// Writes FailedScheduling events (deduplicated with a count).
    recorder: Recorder,
    /// Where filtering starts, rotated so that ties spread.
    next_start: usize,
    /// Bind tasks report failures here.
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    /// Taken by `run`.
    outcomes_rx: Option<mpsc::UnboundedReceiver<Outcome>>,
}

/// What woke the loop.
enum Step {
    Pod(Result<Change<Pod>, tokio::sync::broadcast::error::RecvError>),
    Node(Result<Change<Node>, tokio::sync::broadcast::error::RecvError>),
    /// A claim, volume or class changed.
    Storage(Result<(), tokio::sync::broadcast::error::RecvError>),
    Outcome(Outcome),
    Next(ObjectRef),
    Stop,
}

// === impl Scheduler ===

impl Scheduler {
    /// A scheduler talking to the API over `channel`.
    pub fn new(channel: tonic::transport::Channel, settings: Settings, profile: Profile) -> Self {
        let pods = Api::<Pod>::new(channel.clone());
        let nodes = Api::<Node>::new(channel.clone());
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        let recorder = Recorder::new(channel.clone(), &settings.scheduler_name);
        Self {
            settings,
            profile,
            pod_informer: Informer::start(pods.clone(), Default::default()),
            node_informer: Informer::start(nodes, Default::default()),
            claim_informer: Informer::start(Api::new(channel.clone()), Default::default()),
            volume_informer: Informer::start(Api::new(channel.clone()), Default::default()),
            class_informer: Informer::start(Api::new(channel.clone()), Default::default()),
            budget_informer: Informer::start(Api::new(channel.clone()), Default::default()),
            nominated: HashMap::new(),
            claims: Api::new(channel.clone()),
            volumes: Api::new(channel.clone()),
            pods,
            cache: Cache::default(),
            queue: WorkQueue::new(),
            unschedulable: HashSet::new(),
            attempts: HashMap::new(),
            recorder,
            next_start: 0,
            outcomes_tx,
            outcomes_rx: Some(outcomes_rx),
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut pod_changes = self.pod_informer.subscribe();
        let mut node_changes = self.node_informer.subscribe();
        let mut claim_changes = self.claim_informer.subscribe();
        let mut volume_changes = self.volume_informer.subscribe();
        let mut class_changes = self.class_informer.subscribe();
        tokio::select! {
            () = async {
                self.pod_informer.store.wait_synced().await;
                self.node_informer.store.wait_synced().await;
                self.claim_informer.store.wait_synced().await;
                self.volume_informer.store.wait_synced().await;
                self.class_informer.store.wait_synced().await;
                self.budget_informer.store.wait_synced().await;
            } => {}
            () = &mut shutdown => return,
        }
        self.resync();
        tracing::info!(
            nodes = self.cache.nodes.len(),
            pending = self.queue.len(),
            "scheduler caches synced"
        );
        let Some(mut outcomes) = self.outcomes_rx.take() else {
            return;
        };
        let queue = self.queue.clone();
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => Step::Stop,
                change = pod_changes.recv() => Step::Pod(change),
                change = node_changes.recv() => Step::Node(change),
                change = claim_changes.recv() => Step::Storage(change.map(drop)),
                change = volume_changes.recv() => Step::Storage(change.map(drop)),
                change = class_changes.recv() => Step::Storage(change.map(drop)),
                Some(outcome) = outcomes.recv() => Step::Outcome(outcome),
                Some(key) = queue.next() => Step::Next(key),
            };
            use tokio::sync::broadcast::error::RecvError;
            match step {
                Step::Stop
                | Step::Pod(Err(RecvError::Closed))
                | Step::Node(Err(RecvError::Closed))
                | Step::Storage(Err(RecvError::Closed)) => return,
                Step::Pod(Err(RecvError::Lagged(_))) | Step::Node(Err(RecvError::Lagged(_))) => {
                    self.resync();
                }
                Step::Pod(Ok(change)) => self.on_pod(change),
                Step::Node(Ok(change)) => self.on_node(change),
                Step::Storage(_) => self.retry_unschedulable(),
                Step::Outcome(outcome) => self.on_outcome(outcome),
                Step::Next(key) => {
                    self.schedule_one(&key).await;
                    queue.done(&key);
                    metrics::pending().set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// Rebuilds the cache and the queue from the informers' stores.
    fn resync(&mut self) {
        let nodes = self.node_informer.store.list();
        let pods = self.pod_informer.store.list();
        self.cache.rebuild(&nodes, &pods);
        // Nominations too: changes missed in a lag are in the store.
        self.nominated.clear();
        for pod in &pods {
            if pod
                .status
                .as_ref()
                .is_some_and(|s| !s.nominated_node_name.is_empty())
            {
                self.track_nomination(&pod.object_ref(), Some(pod));
            }
        }
        for pod in &pods {
            if self.is_ours(pod) && !self.cache.assumed.contains(&pod.object_ref()) {
                self.queue
                    .set_priority(&pod.object_ref(), preemption::priority(pod));
                self.queue.add(pod.object_ref());
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::BindFailed(key, uid, status) => {
                // A newer pod of the same name has its own assumption.
                let same = self
                    .pod_informer
                    .store
                    .get(&key.namespace, &key.name)
                    .is_none_or(|p| p.uid() == uid);
                if !same {
                    return;
                }
                metrics::attempts("error").inc();
                tracing::warn!(pod = %key, %status, "binding failed; retrying");
                self.cache.unplace(&key);
                self.backoff(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
