//! The Deployment's status: replica counts from its sets, and the
//! Available and Progressing conditions (ProgressDeadlineExceeded when no
//! step was made for progressDeadlineSeconds).

use std::time::Duration;

use skiff::Resource as _;
use skiff::pb::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};

use super::{
    DeploymentController, REVISION, Step, now_seconds, replicas, revision, rolling, status,
};
use crate::runtime::Error;

impl DeploymentController {
    /// Writes the status; returns when to look again for the progress
    /// deadline.
    pub(super) async fn write_status(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        olds: &[ReplicaSet],
        step: Step,
    ) -> Result<Option<Duration>, Error> {
        let spec = d.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1);
        let all: Vec<&ReplicaSet> = new.into_iter().chain(olds.iter()).collect();
        let sum = |f: fn(&skiff::pb::apps::v1::ReplicaSetStatus) -> i32| {
            all.iter().map(|rs| f(&status(rs))).sum::<i32>()
        };
        let total_spec: i32 = all.iter().map(|rs| replicas(rs)).sum();
        let available = sum(|s| s.available_replicas);
        let updated = new.map_or(0, |rs| status(rs).replicas);
        let old_pods: i32 = olds.iter().map(|rs| status(rs).replicas).sum();
        let previous = d.status.clone().unwrap_or_default();
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        let max_unavailable = if spec
            .strategy
            .as_ref()
            .is_some_and(|s| s.r#type == "Recreate")
        {
            0
        } else {
            rolling::fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), want)
                .map(|(_, u)| u)
                .unwrap_or(0)
        };
        let now = skiff::time::now_seconds();
        let condition = |kind: &str, ok: &str, reason: &str, message: String, touch: bool| {
            let before = previous.conditions.iter().find(|c| c.r#type == kind);
            let same = before.is_some_and(|c| c.status == ok);
            DeploymentCondition {
                r#type: kind.into(),
                status: ok.into(),
                last_update_time: if touch || !same || before.is_some_and(|c| c.reason != reason) {
                    Some(now)
                } else {
                    before.and_then(|c| c.last_update_time)
                },
                last_transition_time: if same {
                    before.and_then(|c| c.last_transition_time)
                } else {
                    Some(now)
                },
                reason: reason.into(),
                message,
            }
        };
        let available_ok = available >= want - max_unavailable;
        let available_condition = if available_ok {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        };
        let complete = new.is_some()
            && updated == want
            && total_spec == want
            && available >= want
            && old_pods == 0;
        let new_name = new.map_or(String::new(), |rs| rs.name().to_string());
        let deadline = spec.progress_deadline_seconds.unwrap_or(600);
        let mut requeue = None;
        // More pods updated, ready or available is progress too.
        let progressed = step.progressed
            || updated > previous.updated_replicas
            || available > previous.available_replicas
            || sum(|s| s.ready_replicas) > previous.ready_replicas;
        let step_reason = if step.progressed {
            step.reason
        } else {
            "ReplicaSetUpdated"
        };
        let progressing = if spec.paused {
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            )
        } else if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet {new_name:?} has successfully progressed."),
                false,
            )
        } else if progressed {
            let message = format!("ReplicaSet {new_name:?} is progressing.");
            condition("Progressing", "True", step_reason, message, true)
        } else {
            let before = previous
                .conditions
                .iter()
                .find(|c| c.r#type == "Progressing");
            let since = before
                .and_then(|c| c.last_update_time)
                .map_or(now.seconds, |t| t.seconds);
            let waited = now_seconds() - since;
            // A finished or paused rollout has no deadline running: its
            // clock starts now.
            let idle = before.is_none_or(|c| {
                c.reason == "NewReplicaSetAvailable" || c.reason == "DeploymentPaused"
            });
            if idle {
                requeue = Some(Duration::from_secs(
                    u64::try_from(deadline.max(1)).unwrap_or(1),
                ));
                let message = format!("ReplicaSet {new_name:?} is progressing.");
                condition("Progressing", "True", "ReplicaSetUpdated", message, true)
            } else if before.is_some_and(|c| c.reason == "ProgressDeadlineExceeded")
                || waited > i64::from(deadline)
            {
                let message = format!("ReplicaSet {new_name:?} has timed out progressing.");
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    message,
                    false,
                )
            } else {
                requeue = Some(Duration::from_secs(
                    (i64::from(deadline) - waited).max(1) as u64
                ));
                match before {
                    Some(c) => c.clone(),
                    None => condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        format!("ReplicaSet {new_name:?} is progressing."),
                        true,
                    ),
                }
            }
        };
        let next = DeploymentStatus {
            observed_generation: d.generation(),
            replicas: sum(|s| s.replicas),
            updated_replicas: updated,
            ready_replicas: sum(|s| s.ready_replicas),
            available_replicas: available,
            unavailable_replicas: (total_spec.max(want) - available).max(0),
            conditions: vec![available_condition, progressing],
            collision_count: previous.collision_count,
        };
        let revision_now = new.map(revision).filter(|r| *r > 0);
        let annotation_stale = revision_now.is_some_and(|r| {
            d.metadata
                .as_ref()
                .and_then(|m| m.annotations.get(REVISION))
                != Some(&r.to_string())
        });
        if annotation_stale {
            let mut annotated = d.clone();
            annotated
                .metadata
                .get_or_insert_with(Default::default)
                .annotations
                .insert(REVISION.into(), revision_now.unwrap_or(0).to_string());
            annotated.status = None;
            self.deployments.update(annotated).await?;
            // The update comes back through the informer: the status is
            // written by that reconcile.
            return Ok(None);
        }
        if d.status.as_ref() != Some(&next) {
            let mut d = d.clone();
            d.status = Some(next);
            match self.deployments.update_status(d).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        // Rollouts are watched through ReplicaSet changes; the deadline
        // needs a clock.
        Ok(requeue)
    }
}
