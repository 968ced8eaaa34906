//! PodDisruptionBudgets (policy/v1), as Kubernetes'
//! `ValidatePodDisruptionBudget` judges them: one of minAvailable and
//! maxUnavailable, each a count or a percentage up to 100%, a valid
//! selector, a known unhealthy-pod eviction policy. The spec may change
//! (policy/v1); each change is a new generation, and evictions wait until
//! the disruption controller has computed the status for it.

use skiff::disruption::{ALWAYS_ALLOW, IF_HEALTHY_BUDGET};
use skiff::pb::policy::v1::PodDisruptionBudget;
use skiff::selector::LabelSelector;
use skiff::wkt::value::Kind as ValueKind;

use super::*;

impl Strategy for PodDisruptionBudget {
    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            errors.push(
                "spec",
                "Invalid value: minAvailable and maxUnavailable cannot be both set",
            );
        }
        for (path, value) in [
            ("spec.minAvailable", spec.min_available.as_ref()),
            ("spec.maxUnavailable", spec.max_unavailable.as_ref()),
        ] {
            workloads::validate_int_or_percent(path, value, errors);
            if let Some(ValueKind::StringValue(s)) = value.and_then(|v| v.kind.as_ref())
                && s.strip_suffix('%')
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| p > 100)
            {
                errors.invalid(path, s, "must not be greater than 100%");
            }
        }
        if let Some(selector) = &spec.selector
            && let Err(reason) = LabelSelector::try_from(selector)
        {
            errors.push("spec.selector", format!("Invalid value: {reason}"));
        }
        if let Some(policy) = spec.unhealthy_pod_eviction_policy.as_deref()
            && ![ALWAYS_ALLOW, IF_HEALTHY_BUDGET].contains(&policy)
        {
            errors.not_supported(
                "spec.unhealthyPodEvictionPolicy",
                policy,
                &[ALWAYS_ALLOW, IF_HEALTHY_BUDGET],
            );
        }
        if let Some(status) = &self.status {
            for (path, value) in [
                ("status.disruptionsAllowed", status.disruptions_allowed),
                ("status.currentHealthy", status.current_healthy),
                ("status.desiredHealthy", status.desired_healthy),
                ("status.expectedPods", status.expected_pods),
            ] {
                if value < 0 {
                    errors.invalid(path, value, "must be greater than or equal to 0");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::meta::v1::LabelSelectorRequirement;
    use skiff::pb::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use skiff::wkt::Value;

    fn errors_of(pdb: &PodDisruptionBudget) -> String {
        let mut errors = FieldErrors::default();
        pdb.validate(&mut errors);
        errors.to_string()
    }

    fn text(s: &str) -> Option<Value> {
        Some(Value {
            kind: Some(ValueKind::StringValue(s.into())),
        })
    }

    #[test]
    fn a_budget_has_one_bound_of_at_most_100_percent_and_a_known_policy() {
        let pdb = |spec: PodDisruptionBudgetSpec| PodDisruptionBudget {
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(
            errors_of(&pdb(PodDisruptionBudgetSpec {
                min_available: text("50%"),
                selector: Some(Default::default()),
                ..Default::default()
            })),
            ""
        );
        let errors = errors_of(&pdb(PodDisruptionBudgetSpec {
            min_available: text("150%"),
            max_unavailable: text("one"),
            selector: Some(skiff::pb::meta::v1::LabelSelector {
                match_expressions: vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "Within".into(),
                    values: vec![],
                }],
                ..Default::default()
            }),
            unhealthy_pod_eviction_policy: Some("Sometimes".into()),
        }));
        for expected in [
            "spec: Invalid value: minAvailable and maxUnavailable cannot be both set",
            "spec.minAvailable: Invalid value: \"150%\": must not be greater than 100%",
            "spec.maxUnavailable: Invalid value: must be a non-negative integer or a percentage",
            "spec.selector: Invalid value",
            "spec.unhealthyPodEvictionPolicy: Unsupported value: \"Sometimes\"",
        ] {
            assert!(errors.contains(expected), "{expected} in {errors}");
        }
        let negative = PodDisruptionBudget {
            spec: Some(Default::default()),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: -1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(errors_of(&negative).contains("status.disruptionsAllowed: Invalid value: -1"));
    }
}
