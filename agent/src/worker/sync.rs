//! One sync of a pod: tear it down when it is gone, else sandbox, volumes,
//! init containers, app containers with crash backoff, then its status.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use skiff::pb::core::v1::{Container as PodContainer, Pod};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::events::EventType;
use skiff_runtime::{Container, Error as RuntimeError, State, labels};

use super::start::Starter;
use super::state::{
    BACKOFF_RESET_FACTOR, Backoff, Inputs, Outcome, Shared, SyncError, SyncState, grace_period,
    is_running, meta,
};
use super::teardown::{declared, probe_kill_grace, stop_container, stop_pod, teardown};
use crate::containers::{self, Placement, Role};
use crate::prober;
use crate::status::{self, Observed, ProbeState};
use crate::volumes;

/// One pass over the pod: tear it down when it is gone, else sandbox,
/// volumes, init containers in order, app containers, then status.
pub(super) async fn sync(
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
        allocatable: shared.allocatable.clone(),
    };
    let containers: Vec<Container> = containers
        .into_iter()
        .filter(|c| c.label(labels::CONTAINER_NAME) != labels::SANDBOX)
        .collect();

    state.waiting.clear();
    // A volume that cannot be prepared blocks only the containers that
    // must start; running ones carry on.
    let prepared = volumes::prepare(
        &shared.data_dir,
        &shared.node_name,
        &pod,
        &shared.sources,
        &shared.allocatable,
    )
    .await;
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
pub(super) async fn back_off(
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
pub(super) fn crash_backoff(
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

/// Reads the termination message of each exited container not read yet:
/// its terminationMessagePath file, or with `FallbackToLogsOnError` and a
/// failure and no file content, the end of its log.
pub(super) async fn read_messages(
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
pub(super) const DEADLINE_MESSAGE: &str =
    "Pod was active on the node longer than the specified deadline";

/// Writes the pod's status when it differs from what the API has.
pub(super) async fn report(
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
