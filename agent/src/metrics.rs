//! The agent's Prometheus metrics (served by `skiff agent --metrics-addr`,
//! or with everything else by `skiff up --metrics-addr`). Families are
//! found once: the registry's lookup takes a process-wide lock.

use std::sync::OnceLock;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};
use skiff::pb::core::v1::Pod;
use skiff_runtime::{Container, State, labels};

fn probes() -> &'static IntCounterVec {
    static PROBES: OnceLock<IntCounterVec> = OnceLock::new();
    PROBES.get_or_init(|| {
        skiff_metrics::counter_vec(
            "skiff_agent_probe_results_total",
            "probe runs, by probe and result",
            &["probe", "result"],
        )
    })
}

fn restarts() -> &'static IntCounterVec {
    static RESTARTS: OnceLock<IntCounterVec> = OnceLock::new();
    RESTARTS.get_or_init(|| {
        skiff_metrics::counter_vec(
            "skiff_agent_container_restarts_total",
            "containers started again after they ended",
            &[],
        )
    })
}

fn pod_start() -> &'static HistogramVec {
    static POD_START: OnceLock<HistogramVec> = OnceLock::new();
    POD_START.get_or_init(|| {
        skiff_metrics::seconds_vec(
            "skiff_agent_pod_start_duration_seconds",
            "from a pod's creation to its first container started on this node",
            &[],
        )
    })
}

fn running_gauges() -> &'static (IntGaugeVec, IntGaugeVec) {
    static RUNNING: OnceLock<(IntGaugeVec, IntGaugeVec)> = OnceLock::new();
    RUNNING.get_or_init(|| {
        (
            skiff_metrics::gauge_vec(
                "skiff_agent_running_containers",
                "containers running on this node (sandboxes not counted)",
                &[],
            ),
            skiff_metrics::gauge_vec(
                "skiff_agent_running_pods",
                "pods with a running container on this node",
                &[],
            ),
        )
    })
}

/// A probe ran: `probe` is startup, liveness or readiness.
pub fn probe(probe: &str, passed: bool) {
    probes()
        .with_label_values(&[probe, if passed { "success" } else { "failure" }])
        .inc();
}

/// A container was started; `attempt` 0 is its first start. The first
/// start of a pod's first app container also times the pod's start
/// (from its creation, as the kubelet's pod start duration).
pub fn container_started(pod: &Pod, attempt: u32, first_of_pod: bool) {
    if attempt > 0 {
        restarts().with_label_values::<&str>(&[]).inc();
    }
    let created = pod
        .metadata
        .as_ref()
        .and_then(|m| m.creation_timestamp.as_ref())
        .map(|t| t.seconds);
    if let (true, 0, Some(created)) = (first_of_pod, attempt, created) {
        let now = skiff::time::now().seconds;
        #[allow(clippy::cast_precision_loss)]
        let seconds = (now - created).max(0) as f64;
        pod_start().with_label_values::<&str>(&[]).observe(seconds);
    }
}

/// What the runtime shows after a relist: running containers (app and
/// init, not sandboxes) and the pods they belong to.
pub fn relisted(containers: &[Container]) {
    let running: Vec<&Container> = containers
        .iter()
        .filter(|c| matches!(c.state, State::Running { .. }))
        .filter(|c| c.label(labels::CONTAINER_NAME) != labels::SANDBOX)
        .collect();
    let pods: std::collections::BTreeSet<&str> =
        running.iter().map(|c| c.label(labels::POD_UID)).collect();
    let (containers_gauge, pods_gauge) = running_gauges();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    containers_gauge
        .with_label_values::<&str>(&[])
        .set(count(running.len()));
    pods_gauge
        .with_label_values::<&str>(&[])
        .set(count(pods.len()));
}
