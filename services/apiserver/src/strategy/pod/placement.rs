//! Where a pod may go: its pod (anti-)affinity terms and topology spread
//! constraints, as Kubernetes validates them.

use skiff::pb::core::v1::PodSpec;
use skiff::validation::{self, FieldErrors};

/// Pod (anti-)affinity terms and topology spread constraints, as
/// Kubernetes validates them.
pub(super) fn validate_placement(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
    let term =
        |tpath: String, t: &skiff::pb::core::v1::PodAffinityTerm, errors: &mut FieldErrors| {
            if t.topology_key.is_empty() {
                errors.push(
                    format!("{tpath}.topologyKey"),
                    "Required value: can not be empty",
                );
            } else if let Err(reason) = validation::is_qualified_name(&t.topology_key) {
                errors.invalid(format!("{tpath}.topologyKey"), &t.topology_key, &reason);
            }
            if let Some(selector) = &t.label_selector
                && let Err(e) = skiff::selector::LabelSelector::try_from(selector)
            {
                errors.invalid(format!("{tpath}.labelSelector"), "…", e.to_string());
            }
        };
    if let Some(affinity) = &spec.affinity {
        for (which, required, preferred) in [
            (
                "podAffinity",
                affinity
                    .pod_affinity
                    .as_ref()
                    .map(|a| &a.required_during_scheduling_ignored_during_execution),
                affinity
                    .pod_affinity
                    .as_ref()
                    .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
            ),
            (
                "podAntiAffinity",
                affinity
                    .pod_anti_affinity
                    .as_ref()
                    .map(|a| &a.required_during_scheduling_ignored_during_execution),
                affinity
                    .pod_anti_affinity
                    .as_ref()
                    .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
            ),
        ] {
            let base = format!("{path}.affinity.{which}");
            for (i, t) in required.into_iter().flatten().enumerate() {
                term(
                    format!("{base}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                    t,
                    errors,
                );
            }
            for (i, w) in preferred.into_iter().flatten().enumerate() {
                let wpath = format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                if !(1..=100).contains(&w.weight) {
                    errors.invalid(
                        format!("{wpath}.weight"),
                        w.weight,
                        "must be in the range 1-100",
                    );
                }
                match &w.pod_affinity_term {
                    Some(t) => term(format!("{wpath}.podAffinityTerm"), t, errors),
                    None => errors.required(format!("{wpath}.podAffinityTerm")),
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let cpath = format!("{path}.topologySpreadConstraints[{i}]");
        if c.max_skew <= 0 {
            errors.invalid(
                format!("{cpath}.maxSkew"),
                c.max_skew,
                "must be greater than zero",
            );
        }
        if c.topology_key.is_empty() {
            errors.push(
                format!("{cpath}.topologyKey"),
                "Required value: can not be empty",
            );
        } else if let Err(reason) = validation::is_qualified_name(&c.topology_key) {
            errors.invalid(format!("{cpath}.topologyKey"), &c.topology_key, &reason);
        }
        match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" | "ScheduleAnyway" => {
                if !seen.insert((c.topology_key.clone(), c.when_unsatisfiable.clone())) {
                    errors.push(
                        format!("{cpath}.{{topologyKey, whenUnsatisfiable}}"),
                        format!(
                            "Duplicate value: \"{}, {}\"",
                            c.topology_key, c.when_unsatisfiable
                        ),
                    );
                }
            }
            other => errors.not_supported(
                format!("{cpath}.whenUnsatisfiable"),
                other,
                &["DoNotSchedule", "ScheduleAnyway"],
            ),
        }
        if let Some(min) = c.min_domains {
            if min <= 0 {
                errors.invalid(format!("{cpath}.minDomains"), min, "must be greater than 0");
            } else if c.when_unsatisfiable != "DoNotSchedule" {
                errors.invalid(
                    format!("{cpath}.minDomains"),
                    min,
                    "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                );
            }
        }
        for (field, value) in [
            ("nodeAffinityPolicy", &c.node_affinity_policy),
            ("nodeTaintsPolicy", &c.node_taints_policy),
        ] {
            if let Some(v) = value
                .as_deref()
                .filter(|v| !matches!(*v, "Honor" | "Ignore"))
            {
                errors.not_supported(format!("{cpath}.{field}"), v, &["Honor", "Ignore"]);
            }
        }
        if let Some(selector) = &c.label_selector
            && let Err(e) = skiff::selector::LabelSelector::try_from(selector)
        {
            errors.invalid(format!("{cpath}.labelSelector"), "…", e.to_string());
        }
    }
}
