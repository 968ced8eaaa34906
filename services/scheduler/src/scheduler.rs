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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use skiff::pb::core::v1::{
    Binding, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition,
    PodStatus,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::pb::policy::v1::PodDisruptionBudget;
use skiff::pb::storage::v1::StorageClass;
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Change, Informer, WorkQueue};
use tokio::sync::mpsc;

use crate::framework::NodeInfo;
use crate::plugins::volume_binding::{self, PodVolumes};
use crate::preemption;
use crate::profile::Profile;

/// First retry of an unschedulable pod, doubling to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before retrying an unschedulable pod.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Filtering stops once this many nodes fit (Kubernetes' minimum of
/// feasible nodes to find); scoring more rarely changes the choice.
const MIN_FEASIBLE: usize = 100;
/// ... or this share of the nodes, if larger.
const FEASIBLE_PERCENT: usize = 10;

/// What the loop needs to know about one decision's outcome.
enum Outcome {
    /// The binding of the pod with this uid failed: forget the
    /// assumption and retry the pod.
    BindFailed(ObjectRef, String, tonic::Status),
}

/// The scheduler's view of the cluster.
#[derive(Default)]
struct Cache {
    /// Every node, with the pods counted against it.
    nodes: HashMap<String, NodeInfo>,
    /// Where each counted pod is (bound or assumed), even on a node the
    /// cache does not know yet (it is counted when the node arrives).
    placed: HashMap<ObjectRef, (String, Arc<Pod>)>,
    /// Pods chosen for a node whose binding has not been seen yet.
    assumed: HashSet<ObjectRef>,
}

impl Cache {
    fn set_node(&mut self, node: Arc<Node>) {
        let name = node.name().to_string();
        let mut info = NodeInfo::new(node);
        for (node_name, pod) in self.placed.values() {
            if *node_name == name {
                info.add_pod(Arc::clone(pod));
            }
        }
        self.nodes.insert(name, info);
    }

    fn remove_node(&mut self, name: &str) {
        // Its pods stay placed: if the node comes back they count again.
        self.nodes.remove(name);
    }

    fn place(&mut self, pod: Arc<Pod>, node: &str) {
        let key = pod.object_ref();
        if self.placed.get(&key).is_some_and(|(n, _)| n != node) {
            self.unplace(&key);
        }
        self.placed
            .insert(key.clone(), (node.to_string(), Arc::clone(&pod)));
        if let Some(info) = self.nodes.get_mut(node) {
            match info.pods.iter_mut().find(|p| p.object_ref() == key) {
                // Refresh the stored copy (the assumed one becomes bound).
                Some(slot) => *slot = pod,
                None => info.add_pod(pod),
            }
        }
    }

    fn unplace(&mut self, key: &ObjectRef) {
        self.assumed.remove(key);
        let Some((node, _)) = self.placed.remove(key) else {
            return;
        };
        if let Some(info) = self.nodes.get_mut(&node) {
            let before = std::mem::take(&mut info.pods);
            let mut rebuilt = NodeInfo::new(Arc::clone(&info.node));
            for pod in before.into_iter().filter(|p| &p.object_ref() != key) {
                rebuilt.add_pod(pod);
            }
            *info = rebuilt;
        }
    }

    /// Rebuilds everything from the informers' stores (after a relist).
    /// Assumed pods stay assumed while they exist unbound.
    fn rebuild(&mut self, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) {
        let assumed: Vec<(ObjectRef, String)> = self
            .assumed
            .iter()
            .filter_map(|k| self.placed.get(k).map(|(n, _)| (k.clone(), n.clone())))
            .collect();
        let by_key: HashMap<ObjectRef, &Arc<Pod>> =
            pods.iter().map(|p| (p.object_ref(), p)).collect();
        *self = Cache::default();
        for node in nodes {
            self.set_node(Arc::clone(node));
        }
        for pod in pods {
            if let Some(node) = bound_node(pod).filter(|_| !finished(pod)) {
                self.place(Arc::clone(pod), node);
            }
        }
        for (key, node) in assumed {
            if let Some(pod) = by_key.get(&key).filter(|p| bound_node(p).is_none()) {
                self.place(Arc::clone(pod), &node);
                self.assumed.insert(key);
            }
        }
    }
}

fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .map(|s| s.node_name.as_str())
        .filter(|n| !n.is_empty())
}

/// The nodes that pods nominated by preemption are headed for, with
/// those of them that come before `pod` (no lower priority, not `pod`
/// itself) counted on them.
fn with_nominated<'a>(
    nodes: &'a HashMap<String, NodeInfo>,
    nominated: &'a HashMap<String, HashMap<ObjectRef, Arc<Pod>>>,
    pod: &Pod,
) -> HashMap<&'a str, NodeInfo> {
    if nominated.is_empty() {
        return HashMap::new();
    }
    let key = pod.object_ref();
    let wanted = preemption::priority(pod);
    nominated
        .iter()
        .filter_map(|(node, pods)| {
            let info = nodes.get(node)?;
            let ahead: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|(k, p)| **k != key && preemption::priority(p) >= wanted)
                .map(|(_, p)| Arc::clone(p))
                .collect();
            if ahead.is_empty() {
                return None;
            }
            let mut info = info.clone();
            for p in ahead {
                info.add_pod(p);
            }
            Some((node.as_str(), info))
        })
        .collect()
}

fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
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

    fn is_ours(&self, pod: &Pod) -> bool {
        let name = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
        (name.is_empty() || name == self.settings.scheduler_name)
            && bound_node(pod).is_none()
            && pod
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_none())
            && !finished(pod)
    }

    /// Lets every unschedulable pod try again: the cluster changed.
    fn retry_unschedulable(&mut self) {
        for key in self.unschedulable.drain() {
            self.queue.add(key);
        }
    }

    /// Keeps [`Self::nominated`]: a pending pod of ours with a nominated
    /// node is there, anything else is not.
    fn track_nomination(&mut self, key: &ObjectRef, pod: Option<&Arc<Pod>>) {
        for pods in self.nominated.values_mut() {
            pods.remove(key);
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
        let Some(pod) = pod.filter(|p| self.is_ours(p)) else {
            return;
        };
        let node = pod
            .status
            .as_ref()
            .map_or("", |s| s.nominated_node_name.as_str());
        if !node.is_empty() {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .insert(key.clone(), Arc::clone(pod));
        }
    }

    fn on_pod(&mut self, change: Change<Pod>) {
        match change {
            Change::Applied(pod) => {
                let key = pod.object_ref();
                if !self.nominated.is_empty()
                    || pod
                        .status
                        .as_ref()
                        .is_some_and(|s| !s.nominated_node_name.is_empty())
                {
                    self.track_nomination(&key, Some(&pod));
                }
                if let Some(node) = bound_node(&pod) {
                    let node = node.to_string();
                    self.cache.assumed.remove(&key);
                    if finished(&pod) {
                        self.cache.unplace(&key);
                        self.retry_unschedulable();
                    } else {
                        self.cache.place(pod, &node);
                    }
                    self.attempts.remove(&key);
                    self.queue.set_priority(&key, 0);
                } else if self.is_ours(&pod) && !self.unschedulable.contains(&key) {
                    self.queue.set_priority(&key, preemption::priority(&pod));
                    self.queue.add(key);
                }
            }
            Change::Deleted(pod) => {
                let key = pod.object_ref();
                if !self.nominated.is_empty() {
                    self.track_nomination(&key, None);
                }
                self.queue.set_priority(&key, 0);
                self.cache.unplace(&key);
                self.unschedulable.remove(&key);
                self.attempts.remove(&key);
                self.retry_unschedulable();
            }
        }
    }

    fn on_node(&mut self, change: Change<Node>) {
        match change {
            Change::Applied(node) => self.cache.set_node(node),
            Change::Deleted(node) => self.cache.remove_node(node.name()),
        }
        self.retry_unschedulable();
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

    fn backoff(&mut self, key: &ObjectRef) {
        let n = self.attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        let delay = INITIAL_BACKOFF
            .saturating_mul(1 << (*n - 1).min(8))
            .min(MAX_BACKOFF);
        self.queue.add_after(key.clone(), delay);
    }

    /// Decides where one pod goes, assumes it there and binds it in the
    /// background.
    async fn schedule_one(&mut self, key: &ObjectRef) {
        let Some(pod) = self.pod_informer.store.get(&key.namespace, &key.name) else {
            // Gone (its deletion may have been missed in a lag): so is
            // its priority.
            self.queue.set_priority(key, 0);
            return;
        };
        if !self.is_ours(&pod) {
            self.queue.set_priority(key, 0);
            return;
        }
        if self.cache.assumed.contains(key) {
            return;
        }
        // Scheduling gates hold the pod back until all are removed (an
        // update of the pod brings it back to the queue).
        if pod
            .spec
            .as_ref()
            .is_some_and(|s| !s.scheduling_gates.is_empty())
        {
            self.report_gated(&pod).await;
            return;
        }
        // The scheduling cycle joins the trace of whoever created the pod.
        let span = tracing::info_span!(
            "schedule",
            pod = %key,
            node = tracing::field::Empty,
        );
        if let Some(meta) = &pod.metadata {
            skiff_telemetry::join_object(&span, &meta.annotations);
        }
        let timer = metrics::latency().start_timer();
        let picked = span.in_scope(|| self.pick(&pod));
        timer.observe_duration();
        match picked {
            Ok((node, volumes)) => {
                span.record("node", node.as_str());
                metrics::attempts("scheduled").inc();
                self.unschedulable.remove(key);
                self.cache.place(Arc::clone(&pod), &node);
                self.cache.assumed.insert(key.clone());
                // Placed: it counts on its node as a pod now, not as a
                // nomination.
                if !self.nominated.is_empty() {
                    self.track_nomination(key, None);
                }
                let binding = Binding {
                    metadata: Some(ObjectMeta {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        uid: pod
                            .metadata
                            .as_ref()
                            .map(|m| m.uid.clone())
                            .unwrap_or_default(),
                        ..Default::default()
                    }),
                    target: Some(ObjectReference {
                        kind: "Node".into(),
                        name: node,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let api = self.pods.clone();
                let claims = self.claims.clone();
                let volumes_api = self.volumes.clone();
                let uid = pod
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                let outcomes = self.outcomes_tx.clone();
                let key = key.clone();
                tokio::spawn(
                    async move {
                        let node = binding
                            .target
                            .as_ref()
                            .map(|t| t.name.clone())
                            .unwrap_or_default();
                        let bound = async {
                            volume_binding::bind_claims(
                                &claims,
                                &volumes_api,
                                &volumes.waiting,
                                &node,
                            )
                            .await?;
                            api.bind(binding).await
                        };
                        if let Err(status) = bound.await {
                            let _ = outcomes.send(Outcome::BindFailed(key, uid, status));
                        }
                    }
                    .instrument(span),
                );
            }
            Err(message) => {
                metrics::attempts("unschedulable").inc();
                tracing::debug!(pod = %key, %message, "unschedulable");
                self.unschedulable.insert(key.clone());
                self.backoff(key);
                self.report_unschedulable(&pod, &message)
                    .instrument(span.clone())
                    .await;
                self.preempt(&pod).instrument(span).await;
            }
        }
    }

    /// The best node for `pod` and what its claims need there, or the
    /// FailedScheduling message.
    fn pick(&mut self, pod: &Pod) -> Result<(String, PodVolumes), String> {
        let total = self.cache.nodes.len();
        if total == 0 {
            return Err("0/0 nodes are available: no nodes registered.".into());
        }
        let stores = volume_binding::Stores {
            claims: self.claim_informer.store.clone(),
            volumes: self.volume_informer.store.clone(),
            classes: self.class_informer.store.clone(),
        };
        let mut volumes = PodVolumes::of(pod, &stores)
            .map_err(|reason| format!("0/{total} nodes are available: {reason}."))?;
        volumes.forget_gone_nodes(|n| self.cache.nodes.contains_key(n));
        let all_volumes = if volumes.is_empty() {
            Vec::new()
        } else {
            stores.volumes.list()
        };
        let enough = MIN_FEASIBLE.max(total * FEASIBLE_PERCENT / 100);
        let mut names: Vec<&String> = self.cache.nodes.keys().collect();
        names.sort_unstable();
        let start = self.next_start % total;
        let ahead = with_nominated(&self.cache.nodes, &self.nominated, pod);
        let all: Vec<&NodeInfo> = names
            .iter()
            .map(|n| ahead.get(n.as_str()).unwrap_or(&self.cache.nodes[*n]))
            .collect();
        let prepared = self.profile.prepare(pod, &all);
        // A pod preemption made room for goes there if it still fits
        // (kube-scheduler tries the nominated node first).
        let nominated = pod
            .status
            .as_ref()
            .map_or("", |s| s.nominated_node_name.as_str());
        if let Some(info) = all
            .iter()
            .find(|n| !nominated.is_empty() && n.name() == nominated)
            && self
                .profile
                .filter_with(pod, info, &prepared)
                .and_then(|()| volumes.filter(&info.node, &all_volumes))
                .is_ok()
        {
            return Ok((nominated.to_string(), volumes));
        }
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut examined = 0;
        for i in 0..total {
            let info = all[(start + i) % total];
            examined += 1;
            let fits = self
                .profile
                .filter_with(pod, info, &prepared)
                .and_then(|()| volumes.filter(&info.node, &all_volumes));
            match fits {
                Ok(()) => {
                    feasible.push(info);
                    if feasible.len() >= enough {
                        break;
                    }
                }
                Err(reason) => *reasons.entry(reason).or_insert(0) += 1,
            }
        }
        self.next_start = (start + examined) % total;
        if feasible.is_empty() {
            let mut parts: Vec<(usize, String)> =
                reasons.into_iter().map(|(r, n)| (n, r)).collect();
            parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let detail: Vec<String> = parts.iter().map(|(n, r)| format!("{n} {r}")).collect();
            return Err(format!(
                "0/{total} nodes are available: {}.",
                detail.join(", ")
            ));
        }
        let scores = self.profile.score(pod, &feasible, &all);
        let best = scores
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (**s, std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        Ok((feasible[best].name().to_string(), volumes))
    }

    /// Kubernetes' DefaultPreemption, for a pod that fits nowhere: picks
    /// the node whose lower-priority pods are fewest and least important
    /// to remove (see [`preemption`]), nominates the pod there, and
    /// deletes the victims gracefully with an Event each. Once they are
    /// gone the pod is tried again, the room kept for it meanwhile.
    async fn preempt(&mut self, pod: &Pod) {
        if !preemption::may_preempt(pod) {
            return;
        }
        let wanted = preemption::priority(pod);
        // Already nominated where lower pods are still going: wait for
        // them rather than remove more (Kubernetes' eligibility check).
        let nominated = pod
            .status
            .as_ref()
            .map_or("", |s| s.nominated_node_name.as_str());
        if let Some(info) = self.cache.nodes.get(nominated)
            && info.pods.iter().any(|p| {
                preemption::priority(p) < wanted
                    && p.metadata
                        .as_ref()
                        .is_some_and(|m| m.deletion_timestamp.is_some())
            })
        {
            return;
        }
        let mut names: Vec<&String> = self.cache.nodes.keys().collect();
        names.sort_unstable();
        let ahead = with_nominated(&self.cache.nodes, &self.nominated, pod);
        let all: Vec<&NodeInfo> = names
            .iter()
            .map(|n| ahead.get(n.as_str()).unwrap_or(&self.cache.nodes[*n]))
            .collect();
        let budgets = self.budget_informer.store.list();
        // The pod's volumes judge nodes too (as in `pick`): room on a node
        // its volume cannot reach is no room.
        let stores = volume_binding::Stores {
            claims: self.claim_informer.store.clone(),
            volumes: self.volume_informer.store.clone(),
            classes: self.class_informer.store.clone(),
        };
        let Ok(volumes) = PodVolumes::of(pod, &stores) else {
            return;
        };
        let all_volumes = if volumes.is_empty() {
            Vec::new()
        } else {
            stores.volumes.list()
        };
        let extra = |info: &NodeInfo| volumes.filter(&info.node, &all_volumes).is_ok();
        let fit = preemption::Fit {
            profile: &self.profile,
            extra: &extra,
        };
        let Some(chosen) = preemption::select(&fit, pod, &all, &budgets) else {
            // No room to make: a nomination made earlier holds nothing.
            if !nominated.is_empty() {
                let key = pod.object_ref();
                if let Ok(updated) = self
                    .edit_status(&key, |status| status.nominated_node_name.clear())
                    .await
                {
                    self.track_nomination(&key, Some(&Arc::new(updated)));
                }
            }
            return;
        };
        let key = pod.object_ref();
        tracing::info!(pod = %key, node = %chosen.node, victims = chosen.victims.len(), "preempting");
        let node = chosen.node.clone();
        let nominated = self
            .edit_status(&key, |status| status.nominated_node_name.clone_from(&node))
            .await;
        match nominated {
            Ok(updated) => self.track_nomination(&key, Some(&Arc::new(updated))),
            Err(status) => {
                tracing::debug!(pod = %key, %status, "nominating");
                return;
            }
        }
        let uid = pod.uid();
        for victim in &chosen.victims {
            self.recorder
                .record(
                    victim.as_ref(),
                    EventType::Normal,
                    "Preempted",
                    &format!("Preempted by pod {uid} on node {}", chosen.node),
                )
                .await;
            let condition = PodCondition {
                r#type: "DisruptionTarget".into(),
                status: "True".into(),
                reason: "PreemptionByScheduler".into(),
                message: format!(
                    "{}: preempting to accommodate a higher priority pod",
                    self.settings.scheduler_name
                ),
                last_transition_time: Some(skiff::time::now_seconds()),
                ..Default::default()
            };
            let marked = self
                .edit_status(&victim.object_ref(), |status| {
                    status.conditions.retain(|c| c.r#type != "DisruptionTarget");
                    status.conditions.push(condition.clone());
                })
                .await;
            if let Err(status) = marked {
                tracing::debug!(victim = %victim.object_ref(), %status, "marking the victim");
            }
            let meta = victim.metadata.clone().unwrap_or_default();
            let deleted = self
                .pods
                .delete(skiff::pb::api::v1::DeleteRequest {
                    namespace: meta.namespace,
                    name: meta.name,
                    preconditions: Some(skiff::pb::api::v1::Preconditions {
                        uid: meta.uid,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await;
            if let Err(status) = deleted
                && status.code() != tonic::Code::NotFound
            {
                tracing::warn!(victim = %victim.object_ref(), %status, "deleting the victim");
            }
        }
    }

    /// Reads pod `key` afresh, changes its status with `change` and writes
    /// it back, again while another writer got there first.
    async fn edit_status(
        &self,
        key: &ObjectRef,
        change: impl Fn(&mut PodStatus),
    ) -> Result<Pod, tonic::Status> {
        let mut last = tonic::Status::aborted("the pod kept changing");
        for _ in 0..5 {
            let mut pod = self.pods.get(&key.namespace, &key.name).await?;
            change(pod.status.get_or_insert_with(PodStatus::default));
            match self.pods.update_status(pod).await {
                Err(status) if status.code() == tonic::Code::Aborted => last = status,
                result => return result,
            }
        }
        Err(last)
    }

    /// Records why a pod waits: the PodScheduled=False condition (if it
    /// changed) and a FailedScheduling event (counted, not duplicated).
    async fn report_unschedulable(&mut self, pod: &Pod, message: &str) {
        self.not_scheduled(pod, "Unschedulable", message).await;
        self.record_event(pod, message).await;
    }

    /// Kubernetes' condition for a pod held back by scheduling gates.
    async fn report_gated(&mut self, pod: &Pod) {
        self.not_scheduled(
            pod,
            "SchedulingGated",
            "Scheduling is blocked due to non-empty scheduling gates",
        )
        .await;
    }

    /// Writes PodScheduled=False with `reason` and `message`, unless the
    /// pod says so already.
    async fn not_scheduled(&mut self, pod: &Pod, reason: &str, message: &str) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "PodScheduled"));
        if current
            .is_some_and(|c| c.status == "False" && c.reason == reason && c.message == message)
        {
            return;
        }
        let mut updated = pod.clone();
        let status = updated.status.get_or_insert_with(PodStatus::default);
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(PodCondition {
            r#type: "PodScheduled".into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.to_string(),
            last_transition_time: Some(skiff::time::now_seconds()),
            ..Default::default()
        });
        if let Err(status) = self.pods.update_status(updated).await {
            tracing::debug!(pod = %pod.object_ref(), %status, reason, "recording PodScheduled=False");
        }
    }

    async fn record_event(&mut self, pod: &Pod, message: &str) {
        self.recorder
            .record(pod, EventType::Warning, "FailedScheduling", message)
            .await;
    }
}

/// The scheduler's Prometheus metrics (found once: the registry's lookup
/// takes a process-wide lock, and these are on the scheduling path).
mod metrics {
    use std::sync::OnceLock;

    /// Scheduling attempts by result: scheduled, unschedulable, error
    /// (the binding failed).
    pub fn attempts(result: &str) -> prometheus::IntCounter {
        static ATTEMPTS: OnceLock<prometheus::IntCounterVec> = OnceLock::new();
        ATTEMPTS
            .get_or_init(|| {
                skiff_metrics::counter_vec(
                    "skiff_scheduler_schedule_attempts_total",
                    "scheduling attempts, by result (scheduled, unschedulable, error)",
                    &["result"],
                )
            })
            .with_label_values(&[result])
    }

    /// Time to choose a node (filter and score) for one pod.
    pub fn latency() -> &'static prometheus::Histogram {
        static LATENCY: OnceLock<prometheus::Histogram> = OnceLock::new();
        LATENCY.get_or_init(|| {
            skiff_metrics::seconds_vec(
                "skiff_scheduler_scheduling_duration_seconds",
                "time to filter and score the nodes for one pod",
                &[],
            )
            .with_label_values::<&str>(&[])
        })
    }

    /// Pods waiting in the scheduling queue.
    pub fn pending() -> &'static prometheus::IntGauge {
        static PENDING: OnceLock<prometheus::IntGauge> = OnceLock::new();
        PENDING.get_or_init(|| {
            skiff_metrics::gauge_vec(
                "skiff_scheduler_pending_pods",
                "pods waiting in the scheduling queue",
                &[],
            )
            .with_label_values::<&str>(&[])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{node, pod};

    #[test]
    fn assumed_pods_count_until_unplaced() {
        let mut cache = Cache::default();
        cache.set_node(Arc::new(node("a", "2", "4Gi")));
        let p = Arc::new(pod("p", "1", "1Gi"));
        cache.place(Arc::clone(&p), "a");
        cache.assumed.insert(p.object_ref());
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
        // The node changes (a status update): its pods stay counted.
        cache.set_node(Arc::new(node("a", "4", "8Gi")));
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
        cache.unplace(&p.object_ref());
        assert_eq!(cache.nodes["a"].requested.milli_cpu, 0);
        assert!(cache.assumed.is_empty());
    }

    #[test]
    fn a_pod_bound_before_its_node_arrives_counts_once_it_does() {
        let mut cache = Cache::default();
        let p = Arc::new(pod("p", "1", "1Gi"));
        cache.place(Arc::clone(&p), "late");
        cache.set_node(Arc::new(node("late", "2", "4Gi")));
        assert_eq!(cache.nodes["late"].requested.milli_cpu, 1000);
        // The bound copy replaces it without counting it twice.
        cache.place(Arc::clone(&p), "late");
        assert_eq!(cache.nodes["late"].requested.milli_cpu, 1000);
        assert_eq!(cache.nodes["late"].pods.len(), 1);
    }
}
