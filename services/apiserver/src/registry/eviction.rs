//! The eviction subresource: a pod deleted unless the PodDisruptionBudget
//! covering it would be broken (Kubernetes' EvictionREST). The budget's
//! status is the ledger: each eviction it allows takes one of its
//! `disruptionsAllowed` and is written into `disruptedPods` before the pod
//! is deleted, so two evictions racing cannot both spend the last one (the
//! status write is conditional on the version read).

use std::any::Any;

use skiff::disruption::{self, ALWAYS_ALLOW, MAX_DISRUPTED_PODS};
use skiff::keys;
use skiff::pb::api::v1::{DeleteRequest, ListRequest, Preconditions};
use skiff::pb::core::v1::Pod;
use skiff::pb::policy::v1::{Eviction, PodDisruptionBudget};

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

/// Kubernetes' words for an eviction a budget refuses.
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// What the budgets say of an eviction.
enum Verdict {
    /// Delete the pod.
    Delete,
    /// Delete the pod only as it was read: it is not ready, and may go
    /// only while it stays so.
    DeleteIfUnchanged,
    /// A budget changed meanwhile: look again.
    Retry,
}

impl Registry {
    /// Evicts a pod: deletes it with the eviction's options unless a
    /// disruption budget covering it allows no disruption now. With
    /// `dry_run`, only checks.
    ///
    /// # Errors
    /// NotFound; TOO_MANY_REQUESTS (RESOURCE_EXHAUSTED) when a budget
    /// refuses; INTERNAL when two budgets cover the pod (Kubernetes
    /// refuses that too); UNIMPLEMENTED for kinds other than pods.
    pub async fn evict<K: Strategy>(&self, eviction: Eviction, dry_run: bool) -> Result<K> {
        if K::KIND != "Pod" {
            return Err(ApiError::Unsupported(format!(
                "{} has no eviction subresource",
                K::KIND
            )));
        }
        let meta = eviction.metadata.unwrap_or_default();
        let namespace = effective_namespace::<K>(&meta.namespace);
        let name = meta.name;
        if name.is_empty() {
            return Err(ApiError::Invalid(
                "metadata.name: Required value: the pod to evict".into(),
            ));
        }
        let options = eviction.delete_options.unwrap_or_default();
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some((obj, mod_rev)) = self.read::<K>(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let Some(pod) = (&obj as &dyn Any).downcast_ref::<Pod>() else {
                return Err(ApiError::Internal("a Pod that is not a pod".into()));
            };
            if let Some(p) = &options.preconditions
                && !p.uid.is_empty()
                && p.uid != pod.uid()
            {
                return Err(ApiError::Precondition(format!(
                    "precondition failed: uid in precondition is {:?}, the pod's uid is {:?}",
                    p.uid,
                    pod.uid()
                )));
            }
            let verdict = if disruption::ignores_budgets(pod) {
                // As it was read: a pending pod that starts meanwhile is
                // asked again (a finished one stays finished).
                let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
                if matches!(phase, "Succeeded" | "Failed") {
                    Verdict::Delete
                } else {
                    Verdict::DeleteIfUnchanged
                }
            } else {
                self.ask_budget(pod, dry_run).await?
            };
            let mut preconditions = options.preconditions.clone();
            let pinned = match verdict {
                Verdict::Retry => continue,
                Verdict::Delete => false,
                Verdict::DeleteIfUnchanged => {
                    let p = preconditions.get_or_insert_with(Preconditions::default);
                    let pin = p.resource_version.is_empty();
                    if pin {
                        p.resource_version = mod_rev.to_string();
                    }
                    pin
                }
            };
            if dry_run {
                return Ok(obj);
            }
            let delete = DeleteRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                propagation_policy: options.propagation_policy.clone(),
                preconditions,
                grace_period_seconds: options.grace_period_seconds,
            };
            return match self.delete::<K>(delete).await {
                // It changed since it was judged unready: judge it again.
                Err(ApiError::Conflict { .. }) if pinned => continue,
                result => result,
            };
        }
        // A 429 as a refusal is: drains wait and ask again.
        Err(ApiError::TooManyRequests {
            message: format!(
                "Cannot evict pod {:?} now: it or its disruption budget kept changing.",
                object_name(&namespace, &name)
            ),
            cause: "too many concurrent evictions and updates; try again".into(),
        })
    }

    /// What the budget covering `pod` says, taking one disruption from it
    /// when it allows one (but on a dry run).
    async fn ask_budget(&self, pod: &Pod, dry_run: bool) -> Result<Verdict> {
        let namespace = pod.namespace();
        let list = self
            .list::<PodDisruptionBudget>(ListRequest {
                namespace: namespace.to_string(),
                ..Default::default()
            })
            .await?;
        let (_, budgets) = PodDisruptionBudget::list_parts(list);
        let mut covering = budgets.into_iter().filter(|b| disruption::covers(b, pod));
        let Some(mut budget) = covering.next() else {
            return Ok(Verdict::Delete);
        };
        if covering.next().is_some() {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
        let budget_name = budget.name().to_string();
        let generation = budget.generation();
        let spec = budget.spec.clone().unwrap_or_default();
        let status = budget.status.get_or_insert_with(Default::default);
        if !skiff::pods::is_ready(pod) {
            let policy = spec.unhealthy_pod_eviction_policy.as_deref();
            let budget_met =
                status.desired_healthy > 0 && status.current_healthy >= status.desired_healthy;
            if policy == Some(ALWAYS_ALLOW) || budget_met {
                return Ok(Verdict::DeleteIfUnchanged);
            }
        }
        if status.observed_generation < generation {
            return Err(ApiError::TooManyRequests {
                message: REFUSED.into(),
                cause: format!(
                    "The disruption budget {budget_name} is still being processed by the server."
                ),
            });
        }
        if status.disruptions_allowed < 0 {
            return Err(ApiError::Forbidden(format!(
                "poddisruptionbudgets {budget_name:?} is forbidden: pdb disruptions allowed is negative"
            )));
        }
        if status.disrupted_pods.len() > MAX_DISRUPTED_PODS {
            return Err(ApiError::Forbidden(format!(
                "poddisruptionbudgets {budget_name:?} is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller"
            )));
        }
        if status.disruptions_allowed == 0 {
            return Err(ApiError::TooManyRequests {
                message: REFUSED.into(),
                cause: format!(
                    "The disruption budget {budget_name} needs {} healthy pods and has {} currently",
                    status.desired_healthy, status.current_healthy
                ),
            });
        }
        status.disruptions_allowed -= 1;
        if status.disruptions_allowed == 0 {
            disruption::set_allowed_condition(status, None, now());
        }
        if dry_run {
            return Ok(Verdict::Delete);
        }
        let pod_name = pod.name();
        status.disrupted_pods.insert(pod_name.to_string(), now());
        match self.update_status(budget).await {
            Ok(_) => Ok(Verdict::Delete),
            Err(ApiError::Conflict { .. }) => Ok(Verdict::Retry),
            Err(e) => Err(e),
        }
    }
}
