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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::Instrument as _;

use actix::prelude::*;
use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::core::v1::{Container as PodContainer, Pod};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::wkt::Timestamp;
use skiff_client::Api;
use skiff_client::events::{EventType, Recorder};
use skiff_runtime::{Container, Error as RuntimeError, PullPolicy, Runtime, State, labels};

use crate::containers::{self, Placement, Role};
use crate::status::{self, Observed, ProbeState};
use crate::volumes::{self, Sources};
use crate::{lifecycle, prober, security};

/// What every worker of the node shares.
pub struct Shared {
    /// The container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Pods, for status and final deletion.
    pub pods: Api<Pod>,
    /// ConfigMaps and Secrets, for volumes and env.
    pub sources: Sources,
    /// Events about pods.
    pub recorder: Recorder,
    /// This node's name.
    pub node_name: String,
    /// This node's IP (the pods' hostIP).
    pub node_ip: String,
    /// Where pod volumes live.
    pub data_dir: PathBuf,
    /// Crash backoff: first delay and cap (Kubernetes: 10 s, 5 min).
    pub backoff: (Duration, Duration),
    /// The cluster DNS pods of this node use, when the agent serves it.
    pub cluster_dns: Option<std::net::IpAddr>,
    /// The host's nameservers, listed after it (names outside the cluster).
    pub upstream_dns: Vec<String>,
}

/// Restarts that keep failing back off from `backoff.0` doubling to
/// `backoff.1`; a container that ran this many times the cap resets it
/// (10 minutes for the kubelet's 5-minute cap).
const BACKOFF_RESET_FACTOR: u32 = 2;

/// One backoff window (crash restarts or image pulls of one container).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// The current window.
    delay: Duration,
    /// When the event that opened it happened.
    since: SystemTime,
}

/// What a sync carries from one run to the next.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Crash and pull backoffs by `crash/NAME` and `pull/NAME`.
    backoff: HashMap<String, Backoff>,
    /// Why each container is waiting, for its status.
    waiting: HashMap<String, (String, String)>,
    /// The last failed pull of each container's image, for the backoff
    /// message.
    pull_errors: HashMap<String, String>,
    /// When the agent took the pod on (its startTime).
    start_time: Option<Timestamp>,
    /// When an exit with no recorded time was first seen, by container id
    /// (the backoff counts from then).
    exits_seen: HashMap<String, SystemTime>,
    /// The last failure to create or start each container, shown while it
    /// backs off.
    start_errors: HashMap<String, (String, String)>,
    /// The pod reached Succeeded or Failed: nothing starts again.
    terminal: bool,
    /// The pod outlived its `activeDeadlineSeconds`: it is Failed.
    deadline_exceeded: bool,
    /// Termination messages of exited containers, by container id (read
    /// once: an exited container's message does not change).
    messages: HashMap<String, String>,
}

impl SyncState {
    /// Time left in `key`'s backoff window, while one is open.
    fn remaining(&self, key: &str) -> Option<Duration> {
        let b = self.backoff.get(key)?;
        let elapsed = SystemTime::now()
            .duration_since(b.since)
            .unwrap_or_default();
        b.delay.checked_sub(elapsed).filter(|d| !d.is_zero())
    }

    /// Opens `key`'s next window from now: `initial` at first, then
    /// doubling up to `max`; returns its length.
    fn open_window(&mut self, key: String, (initial, max): (Duration, Duration)) -> Duration {
        let delay = self
            .backoff
            .get(&key)
            .map_or(initial, |b| (b.delay * 2).min(max));
        self.backoff.insert(
            key,
            Backoff {
                delay,
                since: SystemTime::now(),
            },
        );
        delay
    }
}

/// A snapshot of the worker's inputs for one sync.
struct Inputs {
    /// The pod; None once the API has deleted it.
    pod: Option<Arc<Pod>>,
    /// The last pod seen (for the grace period after deletion).
    last: Arc<Pod>,
    /// Probe results by container id.
    probes: HashMap<String, ProbeState>,
}

/// What a sync tells the actor.
#[derive(Default)]
struct Outcome {
    /// Everything is gone: stop the worker.
    finished: bool,
    /// The sync failed midway: what it saw is incomplete, so the probers
    /// are left as they are.
    failed: bool,
    /// Running app containers with probes: (id, spec, pod IP).
    probe_targets: Vec<(String, PodContainer, String)>,
    /// Sync again after this long (a backoff ends).
    requeue: Option<Duration>,
}

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
    container_id: String,
    state: ProbeState,
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
    shared: Arc<Shared>,
    uid: String,
    pod: Option<Arc<Pod>>,
    last: Arc<Pod>,
    probes: HashMap<String, ProbeState>,
    /// The probers running, by container id.
    probers: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Taken by a running sync.
    state: Option<SyncState>,
    /// An input changed since the running sync started.
    dirty: bool,
    /// The pending requeue.
    requeue: Option<SpawnHandle>,
    manager: Recipient<Finished>,
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
            let outcome = match sync(&shared, &uid, inputs, &mut state).await {
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

// === the sync ===

/// Why a sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("writing pod status: {0}")]
    Status(tonic::Status),
}

fn meta(pod: &Pod) -> ObjectMeta {
    pod.metadata.clone().unwrap_or_default()
}

fn is_running(c: &Container) -> bool {
    matches!(c.state, State::Running { .. })
}

/// Seconds the pod's containers get between SIGTERM and SIGKILL.
fn grace_period(pod: &Pod) -> Duration {
    let m = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let secs = m
        .deletion_grace_period_seconds
        .or(spec.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// One pass over the pod: tear it down when it is gone, else sandbox,
/// volumes, init containers in order, app containers, then status.
async fn sync(
    shared: &Shared,
    uid: &str,
    inputs: Inputs,
    state: &mut SyncState,
) -> Result<Outcome, SyncError> {
    let containers = shared.runtime.list(Some(uid)).await?;
    let deleting = inputs
        .pod
        .as_ref()
        .is_none_or(|p| meta(p).deletion_timestamp.is_some());
    if deleting {
        teardown(shared, &inputs, &containers).await?;
        return Ok(Outcome {
            finished: true,
            ..Default::default()
        });
    }
    let pod = inputs.pod.clone().expect("not deleting, so present");
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    state.terminal |= phase == "Succeeded" || phase == "Failed";
    state
        .start_time
        .get_or_insert_with(skiff::time::now_seconds);
    let mut requeue: Option<Duration> = None;
    let mut soonest = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));

    // activeDeadlineSeconds, counted from the pod's startTime: past it,
    // the pod fails and what runs is stopped (the kubelet's rule). A pod
    // already failed for it stays so after an agent restart.
    state.deadline_exceeded |= pod
        .status
        .as_ref()
        .is_some_and(|s| s.reason == "DeadlineExceeded");
    if let Some(deadline) = spec.active_deadline_seconds
        && !state.terminal
    {
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time)
            .or(state.start_time)
            .map_or(0, |t| t.seconds);
        let active = skiff::time::now_seconds().seconds - started;
        if active >= deadline {
            state.deadline_exceeded = true;
            state.terminal = true;
            shared
                .recorder
                .record(
                    &*pod,
                    EventType::Warning,
                    "DeadlineExceeded",
                    DEADLINE_MESSAGE,
                )
                .await;
        } else {
            soonest(Duration::from_secs((deadline - active).max(1) as u64));
        }
    }

    if state.terminal {
        // Kubernetes stops what is left of a finished pod, sandbox included,
        // and keeps the containers for their logs.
        stop_pod(shared, &pod, &containers, grace_period(&pod)).await?;
        let containers = shared.runtime.list(Some(uid)).await?;
        report(shared, &pod, &containers, &inputs.probes, state, None).await?;
        return Ok(Outcome::default());
    }

    // The sandbox.
    let mut containers = containers;
    let sandboxes: Vec<Container> = containers
        .iter()
        .filter(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX)
        .cloned()
        .collect();
    let live_sandbox = sandboxes
        .iter()
        .filter(|c| is_running(c))
        .max_by_key(|c| status::attempt(c))
        .cloned();
    let sandbox = match live_sandbox {
        Some(s) => s,
        None => {
            // A dead sandbox takes the pod's network with it: what ran in it
            // is stopped and everything (init containers included) starts
            // again in a new one.
            stop_pod(shared, &pod, &containers, grace_period(&pod)).await?;
            for c in &sandboxes {
                shared.runtime.remove(&c.id).await?;
            }
            let attempt = sandboxes
                .iter()
                .map(|c| status::attempt(c) + 1)
                .max()
                .unwrap_or(0);
            if let Some(problem) = containers::hostname_problem(&pod) {
                shared
                    .recorder
                    .record(
                        &*pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &problem,
                    )
                    .await;
                return Err(RuntimeError::Runtime(problem).into());
            }
            shared
                .runtime
                .run_sandbox(&containers::sandbox_spec(
                    &pod,
                    attempt,
                    shared.cluster_dns,
                    &shared.upstream_dns,
                ))
                .await?;
            // Afresh: the containers just stopped are no longer running.
            containers = shared.runtime.list(Some(uid)).await?;
            containers
                .iter()
                .filter(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX && is_running(c))
                .max_by_key(|c| status::attempt(c))
                .cloned()
                .ok_or_else(|| RuntimeError::Runtime("the new sandbox is not running".into()))?
        }
    };
    let sandbox_attempt = status::attempt(&sandbox).to_string();
    // A host-network pod has the node's address.
    let pod_ip = if spec.host_network {
        shared.node_ip.clone()
    } else {
        sandbox.ip.clone().unwrap_or_default()
    };
    let resolv_conf = containers::host_network_resolv_conf(
        &shared.data_dir,
        &pod,
        shared.cluster_dns,
        &shared.upstream_dns,
    )
    .map_err(|e| RuntimeError::Runtime(format!("writing the pod's resolv.conf: {e}")))?;
    let mut placement = Placement {
        pod_ip,
        host_ip: shared.node_ip.clone(),
        node_name: shared.node_name.clone(),
        claim_dirs: Default::default(),
        resolv_conf,
    };
    let containers: Vec<Container> = containers
        .into_iter()
        .filter(|c| c.label(labels::CONTAINER_NAME) != labels::SANDBOX)
        .collect();

    state.waiting.clear();
    // A volume that cannot be prepared blocks only the containers that
    // must start; running ones carry on.
    let prepared =
        volumes::prepare(&shared.data_dir, &shared.node_name, &pod, &shared.sources).await;
    let config_error = match prepared {
        Ok(claim_dirs) => {
            placement.claim_dirs = claim_dirs;
            None
        }
        Err(e) => {
            shared
                .recorder
                .record(&*pod, EventType::Warning, "FailedMount", &e.to_string())
                .await;
            Some(e.to_string())
        }
    };
    let starter = Starter {
        shared,
        pod: &pod,
        sandbox: &sandbox,
        placement: &placement,
        config_error: config_error.as_deref(),
    };

    // Init containers, one at a time, in order; only those of the current
    // sandbox count.
    let mut initialized = true;
    for c in &spec.init_containers {
        let all = status::instances(&containers, Role::Init, &c.name);
        let current: Vec<&Container> = all
            .iter()
            .copied()
            .filter(|i| i.label(labels::SANDBOX_ATTEMPT) == sandbox_attempt)
            .collect();
        let next = all.first().map_or(0, |i| status::attempt(i) + 1);
        match current.first().map(|i| (*i, &i.state)) {
            Some((_, State::Exited { exit_code: 0, .. })) => continue,
            Some((i, State::Created)) => {
                starter.start_created(c, i, state, &mut soonest).await?;
            }
            Some((
                i,
                State::Exited {
                    exit_code,
                    finished_at,
                    ..
                },
            )) => {
                if status::restarts(&spec.restart_policy, *exit_code) {
                    match crash_backoff(shared, state, &c.name, &i.id, *finished_at) {
                        Some(wait) => back_off(shared, &pod, c, state, wait, &mut soonest).await,
                        None => {
                            starter
                                .start(c, Role::Init, next, &all, state, &mut soonest)
                                .await?;
                        }
                    }
                }
            }
            Some(_) => {}
            None => {
                starter
                    .start(c, Role::Init, next, &all, state, &mut soonest)
                    .await?;
            }
        }
        initialized = false;
        break;
    }

    let mut probe_targets = Vec::new();
    if initialized {
        for c in &spec.containers {
            let found = status::instances(&containers, Role::App, &c.name);
            let Some(latest) = found.first().copied() else {
                starter
                    .start(c, Role::App, 0, &found, state, &mut soonest)
                    .await?;
                continue;
            };
            match &latest.state {
                State::Created => {
                    starter
                        .start_created(c, latest, state, &mut soonest)
                        .await?
                }
                State::Running { .. }
                    if latest.label(labels::SANDBOX_ATTEMPT) != sandbox_attempt =>
                {
                    // Still in a sandbox that is gone: it has no network.
                    stop_container(shared, &pod, latest, grace_period(&pod)).await?;
                    soonest(Duration::ZERO);
                }
                State::Running { .. } => {
                    if inputs.probes.get(&latest.id).is_some_and(|p| p.failed) {
                        let why = format!(
                            "container {} failed its liveness probe, will be restarted",
                            c.name
                        );
                        shared
                            .recorder
                            .record(&*pod, EventType::Normal, "Killing", &why)
                            .await;
                        // A probe's own grace period, when it has one, is
                        // the kill's (Kubernetes' probe-level grace).
                        let started = inputs.probes.get(&latest.id).is_none_or(|p| p.started);
                        let grace = probe_kill_grace(c, &pod, started);
                        stop_container(shared, &pod, latest, grace).await?;
                        soonest(Duration::ZERO);
                    } else if prober::has_probes(c) {
                        probe_targets.push((
                            latest.id.clone(),
                            c.clone(),
                            placement.pod_ip.clone(),
                        ));
                    }
                }
                State::Exited {
                    exit_code,
                    finished_at,
                    ..
                } => {
                    if status::restarts(&spec.restart_policy, *exit_code) {
                        match crash_backoff(shared, state, &c.name, &latest.id, *finished_at) {
                            Some(wait) => {
                                back_off(shared, &pod, c, state, wait, &mut soonest).await
                            }
                            None => {
                                let next = status::attempt(latest) + 1;
                                starter
                                    .start(c, Role::App, next, &found, state, &mut soonest)
                                    .await?;
                            }
                        }
                    }
                }
                State::Unknown(_) => {}
            }
        }
    } else {
        for c in &spec.containers {
            state
                .waiting
                .insert(c.name.clone(), ("PodInitializing".into(), String::new()));
        }
    }

    let containers = shared.runtime.list(Some(uid)).await?;
    report(
        shared,
        &pod,
        &containers,
        &inputs.probes,
        state,
        Some(&sandbox),
    )
    .await?;
    Ok(Outcome {
        probe_targets,
        requeue,
        ..Default::default()
    })
}

/// Reports CrashLoopBackOff for a container waiting out its backoff.
async fn back_off(
    shared: &Shared,
    pod: &Pod,
    c: &PodContainer,
    state: &mut SyncState,
    wait: Duration,
    soonest: &mut impl FnMut(Duration),
) {
    let delay = state
        .backoff
        .get(&format!("crash/{}", c.name))
        .map_or(0, |b| b.delay.as_secs());
    let m = meta(pod);
    let message = format!(
        "back-off {delay}s restarting failed container={} pod={}_{}",
        c.name, m.name, m.namespace
    );
    shared
        .recorder
        .record(pod, EventType::Warning, "BackOff", &message)
        .await;
    state
        .waiting
        .insert(c.name.clone(), ("CrashLoopBackOff".into(), message));
    soonest(wait);
}

/// `Some(time left)` while a crashed container must wait; None when it
/// may start again now (and the next window is opened). An exit whose time
/// the runtime lost counts from when it was first seen.
fn crash_backoff(
    shared: &Shared,
    state: &mut SyncState,
    name: &str,
    container_id: &str,
    finished_at: Option<SystemTime>,
) -> Option<Duration> {
    let key = format!("crash/{name}");
    let finished = finished_at.unwrap_or_else(|| {
        *state
            .exits_seen
            .entry(container_id.to_string())
            .or_insert_with(SystemTime::now)
    });
    let (initial, max) = shared.backoff;
    let current = state.backoff.get(&key).copied().filter(|b| {
        finished.duration_since(b.since).unwrap_or_default() <= max * BACKOFF_RESET_FACTOR
    });
    if let Some(b) = current {
        let elapsed = SystemTime::now()
            .duration_since(finished)
            .unwrap_or_default();
        if elapsed < b.delay {
            return Some(b.delay - elapsed);
        }
    }
    let delay = current.map_or(initial, |b| (b.delay * 2).min(max));
    state.backoff.insert(
        key,
        Backoff {
            delay,
            since: finished,
        },
    );
    state.exits_seen.remove(container_id);
    None
}

/// What starting a container of the pod needs.
struct Starter<'a> {
    shared: &'a Shared,
    pod: &'a Arc<Pod>,
    sandbox: &'a Container,
    placement: &'a Placement,
    /// Why the pod's volumes are not ready, if they are not.
    config_error: Option<&'a str>,
}

impl Starter<'_> {
    /// Records a failure to create or start a container as its waiting
    /// reason, and backs off before the next try.
    async fn failed(
        &self,
        c: &PodContainer,
        reason: &str,
        message: String,
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) {
        let delay = state.open_window(format!("start/{}", c.name), self.shared.backoff);
        self.shared
            .recorder
            .record(&**self.pod, EventType::Warning, "Failed", &message)
            .await;
        state
            .start_errors
            .insert(c.name.clone(), (reason.to_string(), message.clone()));
        state
            .waiting
            .insert(c.name.clone(), (reason.into(), message));
        soonest(delay);
    }

    /// Starts a container that was created but never started (the agent
    /// stopped in between); one that will not start is removed, so that a
    /// new attempt follows.
    async fn start_created(
        &self,
        c: &PodContainer,
        instance: &Container,
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<(), SyncError> {
        if let Err(e) = self.shared.runtime.start(&instance.id).await {
            self.shared.runtime.remove(&instance.id).await?;
            self.failed(c, "RunContainerError", e.to_string(), state, soonest)
                .await;
        }
        Ok(())
    }

    /// Starts a new instance of a container: image, spec, create, start.
    /// A failure becomes the container's waiting reason (with a backoff),
    /// not an error of the sync, so the other containers go on.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        c: &PodContainer,
        role: Role,
        attempt: u32,
        older: &[&Container],
        state: &mut SyncState,
        soonest: &mut impl FnMut(Duration),
    ) -> Result<(), SyncError> {
        let (shared, pod) = (self.shared, self.pod);
        if let Some(error) = self.config_error {
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), error.to_string()),
            );
            soonest(shared.backoff.0);
            return Ok(());
        }
        // A recent failure to create or start: wait out its backoff.
        if let Some(left) = state.remaining(&format!("start/{}", c.name)) {
            if let Some(why) = state.start_errors.get(&c.name).cloned() {
                state.waiting.insert(c.name.clone(), why);
            }
            soonest(left);
            return Ok(());
        }
        let pull_key = format!("pull/{}", c.name);
        if let Some(left) = state.remaining(&pull_key) {
            let last = state
                .pull_errors
                .get(&c.name)
                .map_or(String::new(), |e| format!(": {e}"));
            let message = format!("Back-off pulling image {:?}{last}", c.image);
            state
                .waiting
                .insert(c.name.clone(), ("ImagePullBackOff".into(), message));
            soonest(left);
            return Ok(());
        }
        let policy = PullPolicy::for_image(&c.image_pull_policy, &c.image);
        match shared.runtime.ensure_image(&c.image, policy).await {
            Ok(_) => {
                state.backoff.remove(&pull_key);
                state.pull_errors.remove(&c.name);
            }
            Err(e @ (RuntimeError::ImagePull { .. } | RuntimeError::ImageNeverPull(_))) => {
                let reason = if matches!(e, RuntimeError::ImageNeverPull(_)) {
                    "ErrImageNeverPull"
                } else {
                    "ErrImagePull"
                };
                let delay = state.open_window(pull_key, shared.backoff);
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "Failed", &e.to_string())
                    .await;
                state
                    .waiting
                    .insert(c.name.clone(), (reason.into(), e.to_string()));
                state.pull_errors.insert(c.name.clone(), e.to_string());
                soonest(delay);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let mut spec = match containers::container_spec(
            pod,
            c,
            role,
            attempt,
            &self.sandbox.id,
            self.placement,
            &shared.data_dir,
            &shared.sources,
        )
        .await
        {
            Ok(spec) => spec,
            Err(e) => {
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "Failed", &e.to_string())
                    .await;
                state.waiting.insert(
                    c.name.clone(),
                    ("CreateContainerConfigError".into(), e.to_string()),
                );
                soonest(shared.backoff.0);
                return Ok(());
            }
        };
        // The kubelet's runAsNonRoot check, against the image's user.
        let verdict = if security::needs_image_user(pod, c) {
            match shared.runtime.image_user(&c.image).await {
                Ok(user) => security::verify_run_as_non_root(pod, c, &user),
                Err(e) => Err(e.to_string()),
            }
        } else {
            security::verify_run_as_non_root(pod, c, "")
        };
        if let Err(message) = verdict {
            shared
                .recorder
                .record(&**pod, EventType::Warning, "Failed", &message)
                .await;
            state.waiting.insert(
                c.name.clone(),
                ("CreateContainerConfigError".into(), message),
            );
            soonest(shared.backoff.0);
            return Ok(());
        }
        spec.labels.insert(
            labels::SANDBOX_ATTEMPT.into(),
            status::attempt(self.sandbox).to_string(),
        );
        // Keep one dead instance (for `logs --previous`), remove the rest.
        for old in older.iter().skip(1) {
            shared.runtime.remove(&old.id).await?;
        }
        let id = match shared.runtime.create(&spec).await {
            Ok(id) => id,
            Err(e) => {
                self.failed(c, "CreateContainerError", e.to_string(), state, soonest)
                    .await;
                return Ok(());
            }
        };
        if let Err(e) = shared.runtime.start(&id).await {
            shared.runtime.remove(&id).await?;
            self.failed(c, "RunContainerError", e.to_string(), state, soonest)
                .await;
            return Ok(());
        }
        // postStart, before the pod's next container starts; a failure
        // kills this one, which then restarts by the pod's policy.
        if let Some(post_start) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let target = lifecycle::Target {
                runtime: &shared.runtime,
                container_id: &id,
                spec: c,
                pod,
                pod_ip: &self.placement.pod_ip,
            };
            if let Err(message) =
                lifecycle::run(post_start, &target, lifecycle::POST_START_LIMIT).await
            {
                shared
                    .recorder
                    .record(&**pod, EventType::Warning, "FailedPostStartHook", &message)
                    .await;
                // Killed as the kubelet kills it: its preStop hook first.
                let started = Container {
                    id: id.clone(),
                    name: spec.name.clone(),
                    image: spec.image.clone(),
                    image_id: String::new(),
                    labels: spec.labels.clone(),
                    state: State::Running { started_at: None },
                    ip: None,
                    created: 0,
                };
                stop_container(shared, pod, &started, grace_period(pod)).await?;
                soonest(Duration::ZERO);
                return Ok(());
            }
        }
        state.backoff.remove(&format!("start/{}", c.name));
        state.start_errors.remove(&c.name);
        let first_of_pod = role == Role::App
            && pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .is_some_and(|first| first.name == c.name);
        crate::metrics::container_started(pod, attempt, first_of_pod);
        let message = format!("Started container {}", c.name);
        shared
            .recorder
            .record(&**pod, EventType::Normal, "Started", &message)
            .await;
        Ok(())
    }
}

/// Stops what runs of a pod as the kubelet kills a pod: its containers
/// together (each with its preStop hook and `grace`), then the sandbox,
/// so that hooks still have the pod's network.
async fn stop_pod(
    shared: &Shared,
    pod: &Pod,
    containers: &[Container],
    grace: Duration,
) -> Result<(), RuntimeError> {
    let (sandboxes, apps): (Vec<&Container>, Vec<&Container>) = containers
        .iter()
        .filter(|c| is_running(c))
        .partition(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX);
    let stops = apps.iter().map(|c| stop_container(shared, pod, c, grace));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for sandbox in sandboxes {
        shared.runtime.stop(&sandbox.id, Duration::ZERO).await?;
    }
    Ok(())
}

/// The grace period of a kill for a failed liveness or startup probe:
/// the probe's own `terminationGracePeriodSeconds` when it has one, else
/// the pod's.
fn probe_kill_grace(c: &PodContainer, pod: &Pod, started: bool) -> Duration {
    // The failed probe's own: the startup probe's until it passed.
    let failed = if started {
        &c.liveness_probe
    } else {
        &c.startup_probe
    };
    failed
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map_or_else(
            || grace_period(pod),
            |s| Duration::from_secs(s.max(0) as u64),
        )
}

/// Reads the termination message of each exited container not read yet:
/// its terminationMessagePath file, or with `FallbackToLogsOnError` and a
/// failure and no file content, the end of its log.
async fn read_messages(
    shared: &Shared,
    pod: &Pod,
    containers: &[Container],
    messages: &mut HashMap<String, String>,
) {
    let uid = meta(pod).uid;
    for c in containers {
        let State::Exited { exit_code, .. } = c.state else {
            continue;
        };
        if messages.contains_key(&c.id) {
            continue;
        }
        let Some(spec) = declared(pod, c) else {
            continue;
        };
        let attempt = c.label(labels::ATTEMPT).parse::<u32>().unwrap_or(0);
        let file = containers::termination_log(&shared.data_dir, &uid, &spec.name, attempt);
        let mut message = containers::read_tail(&file, containers::MAX_MESSAGE)
            .map(|bytes| containers::tail_message(&bytes, containers::MAX_MESSAGE))
            .unwrap_or_default();
        if message.is_empty()
            && exit_code != 0
            && spec.termination_message_policy == "FallbackToLogsOnError"
        {
            let (lines, bytes) = containers::MAX_LOG_MESSAGE;
            let options = skiff_runtime::LogOptions {
                tail: Some(lines),
                ..Default::default()
            };
            if let Ok(mut stream) = shared.runtime.logs(&c.id, &options).await {
                let mut log = Vec::new();
                while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
                    log.extend_from_slice(&chunk);
                }
                message = containers::tail_message(&log, bytes);
            }
        }
        messages.insert(c.id.clone(), message);
    }
}

/// The kubelet's words for a pod past its activeDeadlineSeconds.
const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// The pod's declared container a runtime container is an instance of.
fn declared<'a>(pod: &'a Pod, c: &Container) -> Option<&'a PodContainer> {
    let spec = pod.spec.as_ref()?;
    let name = c.label(labels::CONTAINER_NAME);
    spec.init_containers
        .iter()
        .chain(&spec.containers)
        .find(|d| d.name == name)
}

/// Stops a running container as the kubelet kills one: its preStop hook
/// first (when it has one and there is time), within the grace period,
/// then SIGTERM with what is left (at least 2 s after a hook) and SIGKILL.
async fn stop_container(
    shared: &Shared,
    pod: &Pod,
    c: &Container,
    grace: Duration,
) -> Result<(), RuntimeError> {
    let hook = declared(pod, c).and_then(|d| {
        let pre_stop = d.lifecycle.as_ref()?.pre_stop.as_ref()?;
        Some((d, pre_stop))
    });
    let Some((spec, pre_stop)) = hook.filter(|_| !grace.is_zero()) else {
        return shared.runtime.stop(&c.id, grace).await;
    };
    let started = std::time::Instant::now();
    let pod_ip = pod.status.as_ref().map_or("", |s| s.pod_ip.as_str());
    let target = lifecycle::Target {
        runtime: &shared.runtime,
        container_id: &c.id,
        spec,
        pod,
        pod_ip,
    };
    if let Err(message) = lifecycle::run(pre_stop, &target, grace).await {
        shared
            .recorder
            .record(pod, EventType::Warning, "FailedPreStopHook", &message)
            .await;
    }
    let left = lifecycle::grace_after_hook(grace, started.elapsed());
    shared.runtime.stop(&c.id, left).await
}

/// Writes the pod's status when it differs from what the API has.
async fn report(
    shared: &Shared,
    pod: &Pod,
    containers: &[Container],
    probes: &HashMap<String, ProbeState>,
    state: &mut SyncState,
    sandbox: Option<&Container>,
) -> Result<(), SyncError> {
    read_messages(shared, pod, containers, &mut state.messages).await;
    let mut status = status::compute(&Observed {
        pod,
        containers,
        probes,
        waiting: &state.waiting,
        pod_ip: pod
            .spec
            .as_ref()
            .is_some_and(|s| s.host_network)
            .then_some(shared.node_ip.as_str())
            .or(sandbox.and_then(|s| s.ip.as_deref()))
            .or(pod.status.as_ref().map(|s| s.pod_ip.as_str()))
            .filter(|ip| !ip.is_empty()),
        host_ip: &shared.node_ip,
        start_time: state.start_time.unwrap_or_else(skiff::time::now_seconds),
        scheme: shared.runtime.scheme(),
        messages: &state.messages,
    });
    if state.deadline_exceeded {
        status.phase = "Failed".into();
        status.reason = "DeadlineExceeded".into();
        status.message = DEADLINE_MESSAGE.into();
    }
    if status.phase == "Succeeded" || status.phase == "Failed" {
        state.terminal = true;
    }
    if pod.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let m = meta(pod);
    let update = Pod {
        metadata: Some(ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            ..Default::default()
        }),
        status: Some(status),
        ..Default::default()
    };
    match shared.pods.update_status(update).await {
        Ok(_) => Ok(()),
        // Deleted meanwhile: the watch says so next.
        Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => Ok(()),
        Err(s) => Err(SyncError::Status(s)),
    }
}

/// Stops every container of a deleted pod within its grace period, removes
/// them, the sandbox and the pod's directory, and finishes the deletion in
/// the API when the pod is still there (marked for deletion).
async fn teardown(
    shared: &Shared,
    inputs: &Inputs,
    containers: &[Container],
) -> Result<(), SyncError> {
    let known = inputs
        .pod
        .as_deref()
        .or(Some(&*inputs.last).filter(|p| p.spec.is_some()));
    let grace = match known {
        Some(pod) => grace_period(pod),
        // Only the containers are left (the agent restarted after the pod
        // was deleted): they remember the grace period they were made with.
        None => containers
            .iter()
            .filter_map(|c| c.label(labels::GRACE_SECONDS).parse::<u64>().ok())
            .max()
            .map_or(Duration::from_secs(30), Duration::from_secs),
    };
    let (sandboxes, apps): (Vec<&Container>, Vec<&Container>) = containers
        .iter()
        .partition(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX);
    let pod = &inputs.last;
    let running: Vec<&Container> = apps.iter().copied().filter(|c| is_running(c)).collect();
    if !running.is_empty() {
        let names: Vec<&str> = running
            .iter()
            .map(|c| c.label(labels::CONTAINER_NAME))
            .collect();
        let message = format!("Stopping container(s) {}", names.join(", "));
        shared
            .recorder
            .record(&**pod, EventType::Normal, "Killing", &message)
            .await;
    }
    let stops = running
        .iter()
        .map(|c| stop_container(shared, pod, c, grace));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for c in apps.iter().chain(&sandboxes) {
        shared.runtime.remove(&c.id).await?;
    }
    let uid = meta(pod).uid;
    volumes::remove_pod_dir(&shared.data_dir, &uid);
    shared.sources.tokens.forget(&uid);
    if let Some(p) = &inputs.pod {
        let m = meta(p);
        let request = DeleteRequest {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: m.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match shared.pods.delete(request).await {
            Ok(_) => {}
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {}
            Err(s) => return Err(SyncError::Status(s)),
        }
    }
    tracing::info!(pod = %format!("{}/{}", meta(pod).namespace, meta(pod).name), %uid, "pod torn down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{PodSpec, Probe};

    #[test]
    fn a_probes_own_grace_period_wins_over_the_pods() {
        let pod = Pod {
            spec: Some(PodSpec {
                termination_grace_period_seconds: Some(30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = PodContainer {
            liveness_probe: Some(Probe::default()),
            ..Default::default()
        };
        assert_eq!(probe_kill_grace(&c, &pod, true), Duration::from_secs(30));
        c.liveness_probe = Some(Probe {
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        });
        c.startup_probe = Some(Probe {
            termination_grace_period_seconds: Some(7),
            ..Default::default()
        });
        assert_eq!(probe_kill_grace(&c, &pod, true), Duration::from_secs(5));
        // Before it started, the startup probe failed: its own.
        assert_eq!(probe_kill_grace(&c, &pod, false), Duration::from_secs(7));
    }
}
