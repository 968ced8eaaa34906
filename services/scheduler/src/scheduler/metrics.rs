//! The scheduler's Prometheus metrics (found once: the registry's lookup
//! takes a process-wide lock, and these are on the scheduling path).

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
