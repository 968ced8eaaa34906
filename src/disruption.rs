//! Facts about PodDisruptionBudgets the API server (evictions) and the
//! disruption controller (their status) read the same way.

use crate::pb::core::v1::Pod;
use crate::pb::meta::v1::Condition;
use crate::pb::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use crate::selector::LabelSelector;
use crate::wkt::Timestamp;

/// The condition saying whether an eviction may proceed.
pub const ALLOWED_CONDITION: &str = "DisruptionAllowed";
/// Its reason when it may.
pub const SUFFICIENT_PODS: &str = "SufficientPods";
/// Its reason when no pod may go.
pub const INSUFFICIENT_PODS: &str = "InsufficientPods";
/// Its reason when the budget could not be computed.
pub const SYNC_FAILED: &str = "SyncFailed";
/// The default unhealthy-pod eviction policy: a pod that is not ready may
/// be evicted only while the budget is met.
pub const IF_HEALTHY_BUDGET: &str = "IfHealthyBudget";
/// The other policy: a pod that is not ready may always be evicted.
pub const ALWAYS_ALLOW: &str = "AlwaysAllow";
/// Seconds after which an eviction the controller has not seen carried
/// out stops counting against the budget (Kubernetes' DeletionTimeout).
pub const DISRUPTION_TIMEOUT_SECONDS: i64 = 120;
/// Evictions a budget may hold unconfirmed (Kubernetes'
/// MaxDisruptedPodSize).
pub const MAX_DISRUPTED_PODS: usize = 2000;

/// Whether `budget` covers `pod`: same namespace, and its selector
/// matches the pod's labels (an empty selector matches every pod, none
/// matches none; a selector that does not parse matches none).
pub fn covers(budget: &PodDisruptionBudget, pod: &Pod) -> bool {
    let (Some(meta), Some(pod_meta)) = (budget.metadata.as_ref(), pod.metadata.as_ref()) else {
        return false;
    };
    let Some(selector) = budget.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    meta.namespace == pod_meta.namespace
        && LabelSelector::try_from(selector).is_ok_and(|s| s.matches(&pod_meta.labels))
}

/// Sets the `DisruptionAllowed` condition from `status.disruptionsAllowed`
/// (or to False with `SyncFailed` and `failure`), keeping its transition
/// time while its status stays.
pub fn set_allowed_condition(
    status: &mut PodDisruptionBudgetStatus,
    failure: Option<&str>,
    now: Timestamp,
) {
    let (value, reason, message) = match failure {
        Some(why) => ("False", SYNC_FAILED, why.to_string()),
        None if status.disruptions_allowed > 0 => ("True", SUFFICIENT_PODS, String::new()),
        None => ("False", INSUFFICIENT_PODS, String::new()),
    };
    let observed_generation = status.observed_generation;
    let existing = status
        .conditions
        .iter_mut()
        .find(|c| c.r#type == ALLOWED_CONDITION);
    match existing {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = observed_generation;
        }
        None => status.conditions.push(Condition {
            r#type: ALLOWED_CONDITION.into(),
            status: value.into(),
            observed_generation,
            last_transition_time: Some(now),
            reason: reason.into(),
            message,
        }),
    }
}

/// Whether a pod may be deleted without asking any budget (Kubernetes'
/// canIgnorePDB): it has finished, has not started, or is going already.
pub fn ignores_budgets(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    matches!(phase, "Succeeded" | "Failed" | "Pending")
        || pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::meta::v1::ObjectMeta;
    use crate::pb::policy::v1::PodDisruptionBudgetSpec;

    fn budget(selector: Option<crate::pb::meta::v1::LabelSelector>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: Some(ObjectMeta {
                name: "b".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(PodDisruptionBudgetSpec {
                selector,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(namespace: &str, app: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: "p".into(),
                namespace: namespace.into(),
                labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_budget_covers_the_pods_its_selector_matches_in_its_namespace() {
        let web = budget(Some(crate::pb::meta::v1::LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }));
        assert!(covers(&web, &pod("default", "web")));
        assert!(!covers(&web, &pod("default", "db")));
        assert!(!covers(&web, &pod("other", "web")));
        // policy/v1: an empty selector covers the namespace, none covers
        // nothing.
        let all = budget(Some(Default::default()));
        assert!(covers(&all, &pod("default", "db")));
        assert!(!covers(&budget(None), &pod("default", "db")));
    }

    #[test]
    fn the_allowed_condition_keeps_its_transition_time_while_it_holds() {
        let mut status = PodDisruptionBudgetStatus {
            disruptions_allowed: 1,
            observed_generation: 3,
            ..Default::default()
        };
        let at = |s| Timestamp {
            seconds: s,
            nanos: 0,
        };
        set_allowed_condition(&mut status, None, at(10));
        set_allowed_condition(&mut status, None, at(20));
        let c = &status.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.observed_generation),
            ("True", SUFFICIENT_PODS, 3)
        );
        assert_eq!(c.last_transition_time, Some(at(10)));
        status.disruptions_allowed = 0;
        set_allowed_condition(&mut status, None, at(30));
        assert_eq!(status.conditions[0].reason, INSUFFICIENT_PODS);
        assert_eq!(status.conditions[0].last_transition_time, Some(at(30)));
        set_allowed_condition(&mut status, Some("found no controllers"), at(40));
        assert_eq!(status.conditions[0].reason, SYNC_FAILED);
        assert_eq!(status.conditions[0].message, "found no controllers");
        assert_eq!(status.conditions[0].last_transition_time, Some(at(30)));
        assert_eq!(status.conditions.len(), 1);
    }
}
