//! The pod worker: one actix actor per pod on the node, making the pod's
//! containers match its spec and reporting its status.
//!
//! The actor owns the pod's inputs (the pod as the API has it, probe
//! results) and a [`SyncState`] (backoffs, waiting reasons). Every input
//! change marks it dirty and starts a sync unless one is running; a sync
//! takes the state out of the actor, works against the runtime (always
//! listing the pod's containers afresh: the runtime is the truth, so a
//! repeated sync never duplicates a container), and hands the state back.
//! Syncs of one pod never overlap; syncs of different pods do.
//!
//! # Layout
//!
//! - this file: the actor, its messages and its scheduling of syncs;
//! - `state`: what a sync shares and carries ([`Shared`], [`SyncState`]);
//! - `sync`: one pass over the pod, and its status report;
//! - `start`: creating and starting one container;
//! - `teardown`: stopping containers and removing a deleted pod.

mod start;
mod state;
mod sync;
mod teardown;

pub use state::{Shared, SyncState};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use actix::prelude::*;
use skiff::pb::core::v1::{Container as PodContainer, Pod};

use crate::prober;
use crate::status::ProbeState;
use state::{Inputs, Outcome, meta};

// === messages ===

/// The pod as the API has it now; None when it was deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Desired(pub Option<Arc<Pod>>);

/// Something about the pod's containers may have changed: sync.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// A prober's new conclusion about a container.
#[derive(Message)]
#[rtype(result = "()")]
struct Probed {
    pub(super) container_id: String,
    pub(super) state: ProbeState,
}

/// Sent to the manager when a worker has torn its pod down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished {
    /// The pod's uid.
    pub uid: String,
    /// The worker (a newer worker of the same uid must not be forgotten).
    pub worker: Addr<PodWorker>,
}

/// The actor.
pub struct PodWorker {
    pub(super) shared: Arc<Shared>,
    pub(super) uid: String,
    pub(super) pod: Option<Arc<Pod>>,
    pub(super) last: Arc<Pod>,
    pub(super) probes: HashMap<String, ProbeState>,
    /// The probers running, by container id.
    pub(super) probers: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Taken by a running sync.
    pub(super) state: Option<SyncState>,
    /// An input changed since the running sync started.
    pub(super) dirty: bool,
    /// The pending requeue.
    pub(super) requeue: Option<SpawnHandle>,
    pub(super) manager: Recipient<Finished>,
}

impl PodWorker {
    /// A worker for `pod` (None: only containers are left, the pod is
    /// gone: `last` names it).
    pub fn new(
        shared: Arc<Shared>,
        pod: Option<Arc<Pod>>,
        last: Arc<Pod>,
        manager: Recipient<Finished>,
    ) -> Self {
        let uid = last
            .metadata
            .as_ref()
            .map(|m| m.uid.clone())
            .unwrap_or_default();
        Self {
            shared,
            uid,
            pod,
            last,
            probes: HashMap::new(),
            probers: HashMap::new(),
            state: Some(SyncState::default()),
            dirty: false,
            requeue: None,
            manager,
        }
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.take() else {
            self.dirty = true;
            return;
        };
        self.dirty = false;
        let inputs = Inputs {
            pod: self.pod.clone(),
            last: Arc::clone(&self.last),
            probes: self.probes.clone(),
        };
        let shared = Arc::clone(&self.shared);
        let uid = self.uid.clone();
        let span = self.span();
        let work = async move {
            let mut state = state;
            let outcome = match sync::sync(&shared, &uid, inputs, &mut state).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "syncing the pod; retrying");
                    Outcome {
                        failed: true,
                        requeue: Some(Duration::from_secs(2)),
                        ..Default::default()
                    }
                }
            };
            (state, outcome)
        }
        .instrument(span);
        ctx.spawn(work.into_actor(self).map(|(state, outcome), act, ctx| {
            act.state = Some(state);
            act.apply(outcome, ctx);
            if act.dirty {
                act.kick(ctx);
            }
        }));
    }

    /// The span of one sync. Until the pod runs, syncs are its start and
    /// join the trace that created it (info: exported); stopping is a
    /// trace of its own; the steady state's syncs are debug only.
    fn span(&self) -> tracing::Span {
        let meta = meta(&self.last);
        let pod = format!("{}/{}", meta.namespace, meta.name);
        let phase = self.last.status.as_ref().map_or("", |s| s.phase.as_str());
        let stopping = self.pod.as_ref().is_none_or(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some())
        });
        if stopping {
            tracing::info_span!("pod stop", %pod)
        } else if phase.is_empty() || phase == "Pending" {
            let span = tracing::info_span!("pod start", %pod);
            skiff_telemetry::join_object(&span, &meta.annotations);
            span
        } else {
            tracing::debug_span!("pod sync", %pod)
        }
    }

    fn apply(&mut self, outcome: Outcome, ctx: &mut Context<Self>) {
        if outcome.finished {
            for (_, prober) in self.probers.drain() {
                prober.abort();
            }
            self.manager.do_send(Finished {
                uid: self.uid.clone(),
                worker: ctx.address(),
            });
            ctx.stop();
            return;
        }
        if outcome.failed {
            self.schedule(outcome.requeue, ctx);
            return;
        }
        // Probers follow the running containers.
        let running: HashMap<String, (PodContainer, String)> = outcome
            .probe_targets
            .into_iter()
            .map(|(id, spec, ip)| (id, (spec, ip)))
            .collect();
        self.probers.retain(|id, task| {
            let keep = running.contains_key(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        self.probes.retain(|id, _| running.contains_key(id));
        for (id, (spec, pod_ip)) in running {
            if self.probers.contains_key(&id) || self.probes.get(&id).is_some_and(|p| p.failed) {
                continue;
            }
            self.probes
                .entry(id.clone())
                .or_insert_with(|| prober::initial_state(&spec));
            let addr = ctx.address();
            let target = prober::Target {
                runtime: Arc::clone(&self.shared.runtime),
                container_id: id.clone(),
                spec,
                pod_ip,
            };
            let container_id = id.clone();
            let task = tokio::spawn(prober::run(target, move |state| {
                addr.do_send(Probed {
                    container_id: container_id.clone(),
                    state,
                });
            }));
            self.probers.insert(id, task);
        }
        self.schedule(outcome.requeue, ctx);
    }

    /// Replaces the pending requeue with one after `after` (or none).
    fn schedule(&mut self, after: Option<Duration>, ctx: &mut Context<Self>) {
        if let Some(handle) = self.requeue.take() {
            ctx.cancel_future(handle);
        }
        if let Some(after) = after {
            self.requeue = Some(ctx.run_later(after, |act, ctx| {
                act.requeue = None;
                act.kick(ctx);
            }));
        }
    }
}

impl Actor for PodWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.kick(ctx);
    }
}

impl Handler<Desired> for PodWorker {
    type Result = ();

    fn handle(&mut self, msg: Desired, ctx: &mut Self::Context) {
        if let Some(pod) = &msg.0 {
            self.last = Arc::clone(pod);
        }
        self.pod = msg.0;
        self.kick(ctx);
    }
}

impl Handler<Wake> for PodWorker {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.kick(ctx);
    }
}

impl Handler<Probed> for PodWorker {
    type Result = ();

    fn handle(&mut self, msg: Probed, ctx: &mut Self::Context) {
        if self.probers.contains_key(&msg.container_id) {
            self.probes.insert(msg.container_id, msg.state);
            self.kick(ctx);
        }
    }
}
