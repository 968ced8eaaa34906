//! The pod manager: the actor that owns the node's pod workers. It
//! starts a worker for each pod bound to the node, forwards the pod's
//! changes to it, and wakes it when a relist of the runtime shows its
//! containers changed (a container died, was killed or removed from
//! outside). Containers of pods the API no longer has get a worker too,
//! which tears them down: that is how a restarted agent cleans up pods
//! deleted while it was away.

use skiff::Resource as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use skiff::pb::core::v1::Pod;
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::{Change, Store};
use skiff_runtime::{Container, labels};

use crate::worker::{Desired, Finished, PodWorker, Shared, Wake};

/// The actor.
pub struct PodManager {
    shared: Arc<Shared>,
    /// The informer's cache of this node's pods.
    pods: Store<Pod>,
    /// Workers by pod uid.
    workers: HashMap<String, Addr<PodWorker>>,
    /// Each pod's containers at the last relist (id and state), to wake
    /// workers only on change.
    seen: HashMap<String, Vec<(String, String)>>,
    /// How often every worker syncs anyway (configMap and secret volumes
    /// follow their sources at this pace).
    resync: std::time::Duration,
}

impl PodManager {
    /// A manager over the pods in `pods`.
    pub fn new(shared: Arc<Shared>, pods: Store<Pod>, resync: std::time::Duration) -> Self {
        Self {
            shared,
            pods,
            workers: HashMap::new(),
            seen: HashMap::new(),
            resync,
        }
    }

    fn start_worker(&mut self, pod: Option<Arc<Pod>>, last: Arc<Pod>, ctx: &mut Context<Self>) {
        let uid = last
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        let worker = PodWorker::new(
            Arc::clone(&self.shared),
            pod,
            last,
            ctx.address().recipient(),
        );
        self.workers.insert(uid, worker.start());
    }
}

impl Actor for PodManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.resync, |act, _| {
            for worker in act.workers.values() {
                worker.do_send(Wake);
            }
        });
    }
}

/// A change of one of the node's pods.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PodChanged(pub Change<Pod>);

/// The runtime's containers (all of this node's), listed just now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relisted(pub Vec<Container>);

/// How many workers are running (for tests and the node status).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountWorkers;

impl Handler<PodChanged> for PodManager {
    type Result = ();

    fn handle(&mut self, msg: PodChanged, ctx: &mut Self::Context) {
        match msg.0 {
            Change::Applied(pod) => {
                let uid = pod
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                let ours = pod
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.node_name == self.shared.node_name);
                if !ours || uid.is_empty() {
                    return;
                }
                match self.workers.get(&uid).filter(|w| w.connected()) {
                    Some(worker) => worker.do_send(Desired(Some(pod))),
                    None => self.start_worker(Some(Arc::clone(&pod)), pod, ctx),
                }
            }
            Change::Deleted(pod) => {
                let uid = pod
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                if let Some(worker) = self.workers.get(&uid) {
                    worker.do_send(Desired(None));
                }
            }
        }
    }
}

impl Handler<Relisted> for PodManager {
    type Result = ();

    fn handle(&mut self, msg: Relisted, ctx: &mut Self::Context) {
        let mut by_pod: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for c in msg.0 {
            by_pod
                .entry(c.label(labels::POD_UID).to_string())
                .or_default()
                .push(c);
        }
        // Pods that lost every container (removed from outside) wake too.
        for uid in self.workers.keys() {
            by_pod.entry(uid.clone()).or_default();
        }
        let synced = self.pods.is_synced();
        let known: std::collections::HashSet<String> = if synced {
            self.pods
                .list()
                .iter()
                .map(|p| p.uid().to_string())
                .collect()
        } else {
            Default::default()
        };
        if synced {
            // Deleted while the pod feed lagged: the worker was not told.
            for (uid, worker) in &self.workers {
                if !known.contains(uid) {
                    worker.do_send(Desired(None));
                }
            }
        }
        for (uid, containers) in by_pod {
            let mut fingerprint: Vec<(String, String)> = containers
                .iter()
                .map(|c| (c.id.clone(), format!("{:?}", c.state)))
                .collect();
            fingerprint.sort();
            let changed = self.seen.get(&uid) != Some(&fingerprint);
            if let Some(worker) = self.workers.get(&uid) {
                if changed {
                    worker.do_send(Wake);
                }
            } else if synced && !known.contains(&uid) && !containers.is_empty() {
                // Left behind by a pod the API no longer has.
                let c = &containers[0];
                let last = Arc::new(Pod {
                    metadata: Some(ObjectMeta {
                        uid: uid.clone(),
                        name: c.label(labels::POD_NAME).to_string(),
                        namespace: c.label(labels::POD_NAMESPACE).to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                tracing::info!(pod = %format!("{}/{}", c.label(labels::POD_NAMESPACE), c.label(labels::POD_NAME)), %uid, "removing the containers of a deleted pod");
                self.start_worker(None, last, ctx);
            }
            self.seen.insert(uid, fingerprint);
        }
    }
}

impl Handler<Finished> for PodManager {
    type Result = ();

    fn handle(&mut self, msg: Finished, _: &mut Self::Context) {
        if self.workers.get(&msg.uid) == Some(&msg.worker) {
            self.workers.remove(&msg.uid);
            self.seen.remove(&msg.uid);
        }
    }
}

impl Handler<CountWorkers> for PodManager {
    type Result = usize;

    fn handle(&mut self, _: CountWorkers, _: &mut Self::Context) -> usize {
        self.workers.len()
    }
}
