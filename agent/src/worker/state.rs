//! What the pod worker's parts share: the node-wide [`Shared`], the state a
//! sync carries from one run to the next, a sync's inputs and outcome, and
//! small readings of the pod.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::pb::core::v1::{Container as PodContainer, Pod};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::wkt::Timestamp;
use skiff_client::Api;
use skiff_client::events::Recorder;
use skiff_runtime::{Container, Error as RuntimeError, Runtime, State};

use crate::sources::Sources;
use crate::status::ProbeState;

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
    /// This node's allocatable resources (the downward API's value of an
    /// unset limit).
    pub allocatable: crate::fieldpath::Allocatable,
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
pub(super) const BACKOFF_RESET_FACTOR: u32 = 2;

/// One backoff window (crash restarts or image pulls of one container).
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    /// The current window.
    pub(super) delay: Duration,
    /// When the event that opened it happened.
    pub(super) since: SystemTime,
}

/// What a sync carries from one run to the next.
#[derive(Debug, Default)]
pub struct SyncState {
    /// Crash and pull backoffs by `crash/NAME` and `pull/NAME`.
    pub(super) backoff: HashMap<String, Backoff>,
    /// Why each container is waiting, for its status.
    pub(super) waiting: HashMap<String, (String, String)>,
    /// The last failed pull of each container's image, for the backoff
    /// message.
    pub(super) pull_errors: HashMap<String, String>,
    /// When the agent took the pod on (its startTime).
    pub(super) start_time: Option<Timestamp>,
    /// When an exit with no recorded time was first seen, by container id
    /// (the backoff counts from then).
    pub(super) exits_seen: HashMap<String, SystemTime>,
    /// The last failure to create or start each container, shown while it
    /// backs off.
    pub(super) start_errors: HashMap<String, (String, String)>,
    /// The pod reached Succeeded or Failed: nothing starts again.
    pub(super) terminal: bool,
    /// The pod outlived its `activeDeadlineSeconds`: it is Failed.
    pub(super) deadline_exceeded: bool,
    /// Termination messages of exited containers, by container id (read
    /// once: an exited container's message does not change).
    pub(super) messages: HashMap<String, String>,
}

impl SyncState {
    /// Time left in `key`'s backoff window, while one is open.
    pub(super) fn remaining(&self, key: &str) -> Option<Duration> {
        let b = self.backoff.get(key)?;
        let elapsed = SystemTime::now()
            .duration_since(b.since)
            .unwrap_or_default();
        b.delay.checked_sub(elapsed).filter(|d| !d.is_zero())
    }

    /// Opens `key`'s next window from now: `initial` at first, then
    /// doubling up to `max`; returns its length.
    pub(super) fn open_window(
        &mut self,
        key: String,
        (initial, max): (Duration, Duration),
    ) -> Duration {
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
pub(super) struct Inputs {
    /// The pod; None once the API has deleted it.
    pub(super) pod: Option<Arc<Pod>>,
    /// The last pod seen (for the grace period after deletion).
    pub(super) last: Arc<Pod>,
    /// Probe results by container id.
    pub(super) probes: HashMap<String, ProbeState>,
}

/// What a sync tells the actor.
#[derive(Default)]
pub(super) struct Outcome {
    /// Everything is gone: stop the worker.
    pub(super) finished: bool,
    /// The sync failed midway: what it saw is incomplete, so the probers
    /// are left as they are.
    pub(super) failed: bool,
    /// Running app containers with probes: (id, spec, pod IP).
    pub(super) probe_targets: Vec<(String, PodContainer, String)>,
    /// Sync again after this long (a backoff ends).
    pub(super) requeue: Option<Duration>,
}

/// Why a sync failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub(super) enum SyncError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("writing pod status: {0}")]
    Status(tonic::Status),
}

pub(super) fn meta(pod: &Pod) -> ObjectMeta {
    pod.metadata.clone().unwrap_or_default()
}

pub(super) fn is_running(c: &Container) -> bool {
    matches!(c.state, State::Running { .. })
}

/// Seconds the pod's containers get between SIGTERM and SIGKILL.
pub(super) fn grace_period(pod: &Pod) -> Duration {
    let m = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let secs = m
        .deletion_grace_period_seconds
        .or(spec.termination_grace_period_seconds)
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}
