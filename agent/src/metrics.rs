//! The agent's Prometheus metrics (served by `skiff agent --metrics-addr`,
//! or with everything else by `skiff up --metrics-addr`).

use skiff::pb::core::v1::Pod;
use skiff_runtime::{Container, State, labels};

/// A probe ran: `probe` is startup, liveness or readiness.
pub fn probe(probe: &str, passed: bool) {
    skiff_metrics::counter_vec(
        "skiff_agent_probe_results_total",
        "probe runs, by probe and result",
        &["probe", "result"],
    )
    .with_label_values(&[probe, if passed { "success" } else { "failure" }])
    .inc();
}

/// A container was started; `attempt` 0 is its first start. The first
/// start of a pod's first app container also times the pod's start
/// (from its creation, as the kubelet's pod start duration).
pub fn container_started(pod: &Pod, attempt: u32, first_of_pod: bool) {
    if attempt > 0 {
        skiff_metrics::counter_vec(
            "skiff_agent_container_restarts_total",
            "containers started again after they ended",
            &[],
        )
        .with_label_values::<&str>(&[])
        .inc();
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
        skiff_metrics::seconds_vec(
            "skiff_agent_pod_start_duration_seconds",
            "from a pod's creation to its first container started on this node",
            &[],
        )
        .with_label_values::<&str>(&[])
        .observe(seconds);
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
    let gauge = |name: &str, help: &str, value: usize| {
        skiff_metrics::gauge_vec(name, help, &[])
            .with_label_values::<&str>(&[])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    };
    gauge(
        "skiff_agent_running_containers",
        "containers running on this node (sandboxes not counted)",
        running.len(),
    );
    gauge(
        "skiff_agent_running_pods",
        "pods with a running container on this node",
        pods.len(),
    );
}
