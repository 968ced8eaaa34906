//! Why a pod waits, told: the PodScheduled=False condition and
//! FailedScheduling events.

use skiff::Resource as _;
use skiff::pb::core::v1::{Pod, PodCondition, PodStatus};
use skiff_client::events::EventType;

use super::Scheduler;

impl Scheduler {
    /// Records why a pod waits: the PodScheduled=False condition (if it
    /// changed) and a FailedScheduling event (counted, not duplicated).
    pub(super) async fn report_unschedulable(&mut self, pod: &Pod, message: &str) {
        self.not_scheduled(pod, "Unschedulable", message).await;
        self.record_event(pod, message).await;
    }

    /// Kubernetes' condition for a pod held back by scheduling gates.
    pub(super) async fn report_gated(&mut self, pod: &Pod) {
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
