//! Kubernetes' DefaultPreemption for a pod that fits nowhere: the node
//! to make room on, the pod nominated there, the victims marked and
//! deleted.

use std::sync::Arc;

use skiff::pb::core::v1::{Pod, PodCondition, PodStatus};
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::EventType;

use super::Scheduler;
use super::cache::with_nominated;
use crate::framework::NodeInfo;
use crate::plugins::volume_binding::{self, PodVolumes};
use crate::preemption;

impl Scheduler {
    /// Kubernetes' DefaultPreemption, for a pod that fits nowhere: picks
    /// the node whose lower-priority pods are fewest and least important
    /// to remove (see [`preemption`]), nominates the pod there, and
    /// deletes the victims gracefully with an Event each. Once they are
    /// gone the pod is tried again, the room kept for it meanwhile.
    pub(super) async fn preempt(&mut self, pod: &Pod) {
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
        let ahead = with_nominated(&self.cache.nodes, &self.nominated, pod);
        let all = self.cache.ordered(&ahead);
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
}
