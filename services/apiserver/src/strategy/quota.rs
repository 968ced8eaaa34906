//! ResourceQuotas and LimitRanges (core/v1), as Kubernetes validates and
//! defaults them: a quota's caps are known resource names with
//! non-negative quantities (whole numbers for object counts) and its
//! scopes known and compatible with what it caps; a LimitRange item's
//! bounds are ordered (min ≤ default request ≤ default ≤ max) and a
//! container item's default request and default fall back to its default
//! and max.
//!
//! What acts on them is admission (`registry/limits.rs`,
//! `registry/quota.rs`) and the quota controller.

use std::collections::BTreeMap;

use skiff::pb::core::v1::{LimitRange, LimitRangeItem, ResourceQuota};
use skiff::quantity::Quantity;
use skiff::quota::{
    SCOPE_PRIORITY_CLASS, SCOPES, STANDARD_NAMES, scope_allows, scope_requirements,
};

use super::*;

/// LimitRange item types.
pub const LIMIT_TYPES: &[&str] = &["Container", "Pod", "PersistentVolumeClaim"];

/// Whether a capped resource is a count of objects (whole numbers only).
fn is_count(name: &str) -> bool {
    name.starts_with("count/")
        || name.ends_with("/persistentvolumeclaims")
        || matches!(
            name,
            "pods"
                | "services"
                | "replicationcontrollers"
                | "resourcequotas"
                | "secrets"
                | "configmaps"
                | "persistentvolumeclaims"
                | "services.nodeports"
                | "services.loadbalancers"
        )
}

fn validate_quantities(
    path: &str,
    map: &BTreeMap<String, String>,
    integers: bool,
    errors: &mut FieldErrors,
) {
    for (name, value) in map {
        let qpath = format!("{path}[{name}]");
        match value.parse::<Quantity>() {
            Ok(q) if q.milli_value() < 0 => {
                errors.invalid(&qpath, value, "must be greater than or equal to 0")
            }
            Ok(q) if integers && is_count(name) && q.milli_value() % 1000 != 0 => {
                errors.invalid(&qpath, value, "must be an integer")
            }
            Ok(_) => {}
            Err(e) => errors.invalid(&qpath, value, e.to_string()),
        }
    }
}

fn validate_quota_name(path: &str, name: &str, errors: &mut FieldErrors) {
    let qualified = name.contains('/')
        && name
            .split_once('/')
            .is_some_and(|(prefix, rest)| !prefix.is_empty() && !rest.is_empty());
    // Extended resources (`requests.example.com/gpu`) and huge pages
    // may be capped by their requests.
    let extended = name.starts_with("hugepages-")
        || name
            .strip_prefix("requests.")
            .is_some_and(|r| r.contains('/') || r.starts_with("hugepages-"));
    if STANDARD_NAMES.contains(&name) || qualified || extended {
        return;
    }
    errors.invalid(
        format!("{path}[{name}]"),
        name,
        "must be a standard resource type or fully qualified",
    );
}

impl Strategy for ResourceQuota {
    fn validate(&self, errors: &mut FieldErrors) {
        let spec = self.spec.clone().unwrap_or_default();
        for name in spec.hard.keys() {
            validate_quota_name("spec.hard", name, errors);
        }
        validate_quantities("spec.hard", &spec.hard, true, errors);
        let mut seen = Vec::new();
        for (i, scope) in spec.scopes.iter().enumerate() {
            let path = format!("spec.scopes[{i}]");
            if !SCOPES.contains(&scope.as_str()) {
                errors.not_supported(&path, scope, SCOPES);
            } else if seen.contains(&scope) {
                errors.duplicate(&path, scope);
            }
            seen.push(scope);
        }
        if let Some(selector) = &spec.scope_selector {
            for (i, r) in selector.match_expressions.iter().enumerate() {
                let path = format!("spec.scopeSelector.matchExpressions[{i}]");
                if !SCOPES.contains(&r.scope_name.as_str()) {
                    errors.not_supported(format!("{path}.scopeName"), &r.scope_name, SCOPES);
                }
                let operators = ["In", "NotIn", "Exists", "DoesNotExist"];
                if !operators.contains(&r.operator.as_str()) {
                    errors.not_supported(format!("{path}.operator"), &r.operator, &operators);
                    continue;
                }
                if r.scope_name != SCOPE_PRIORITY_CLASS && r.operator != "Exists" {
                    errors.invalid(
                        format!("{path}.operator"),
                        &r.operator,
                        "must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity",
                    );
                }
                match r.operator.as_str() {
                    "In" | "NotIn" if r.values.is_empty() => errors.push(
                        format!("{path}.values"),
                        "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
                    ),
                    "Exists" | "DoesNotExist" if !r.values.is_empty() => errors.invalid(
                        format!("{path}.values"),
                        format!("{:?}", r.values),
                        "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
                    ),
                    _ => {}
                }
            }
        }
        let scopes: Vec<String> = scope_requirements(&spec)
            .into_iter()
            .map(|r| r.scope_name)
            .collect();
        for (a, b) in [
            ("Terminating", "NotTerminating"),
            ("BestEffort", "NotBestEffort"),
        ] {
            if scopes.iter().any(|s| s == a) && scopes.iter().any(|s| s == b) {
                errors.invalid("spec.scopes", format!("{a}, {b}"), "conflicting scopes");
            }
        }
        for scope in scopes.iter().filter(|s| SCOPES.contains(&s.as_str())) {
            for name in spec.hard.keys().filter(|n| !scope_allows(scope, n)) {
                errors.invalid(
                    format!("spec.hard[{name}]"),
                    name,
                    format!("unsupported scope applied to resource: scope {scope} caps only what pods use"),
                );
            }
        }
        if let Some(status) = &self.status {
            validate_quantities("status.hard", &status.hard, false, errors);
            validate_quantities("status.used", &status.used, false, errors);
        }
    }
}

impl Strategy for LimitRange {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else {
            return;
        };
        for item in spec.limits.iter_mut().filter(|i| i.r#type == "Container") {
            default_container_item(item);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        let mut types = Vec::new();
        for (i, item) in spec.limits.iter().enumerate() {
            let path = format!("spec.limits[{i}]");
            if !LIMIT_TYPES.contains(&item.r#type.as_str()) {
                errors.not_supported(format!("{path}.type"), &item.r#type, LIMIT_TYPES);
            } else if types.contains(&&item.r#type) {
                errors.duplicate(format!("{path}.type"), &item.r#type);
            }
            types.push(&item.r#type);
            for (field, map) in [
                ("max", &item.max),
                ("min", &item.min),
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("maxLimitRequestRatio", &item.max_limit_request_ratio),
            ] {
                validate_quantities(&format!("{path}.{field}"), map, false, errors);
            }
            if item.r#type == "Pod" {
                for (field, map) in [
                    ("default", &item.default),
                    ("defaultRequest", &item.default_request),
                ] {
                    if !map.is_empty() {
                        errors.forbidden(
                            format!("{path}.{field}"),
                            "may not be specified when `type` is 'Pod'",
                        );
                    }
                }
            }
            if item.r#type == "PersistentVolumeClaim"
                && !item.min.contains_key("storage")
                && !item.max.contains_key("storage")
            {
                errors.push(
                    format!("{path}.limits"),
                    "Required value: either minimum or maximum storage value is required, but neither was provided",
                );
            }
            for (field, map) in [
                ("max", &item.max),
                ("min", &item.min),
                ("default", &item.default),
                ("defaultRequest", &item.default_request),
                ("maxLimitRequestRatio", &item.max_limit_request_ratio),
            ] {
                for name in map.keys() {
                    validate_limit_name(&format!("{path}.{field}"), &item.r#type, name, errors);
                }
            }
            validate_bounds(&path, item, errors);
        }
    }
}

/// A LimitRange bounds what containers and pods use (CPU, memory,
/// ephemeral storage, huge pages, extended resources); a claim item is
/// about `storage` (checked above).
fn validate_limit_name(path: &str, kind: &str, name: &str, errors: &mut FieldErrors) {
    let container = ["cpu", "memory", "ephemeral-storage"].contains(&name)
        || name.starts_with("hugepages-")
        || name.contains('/');
    if matches!(kind, "Container" | "Pod") && !container {
        errors.invalid(
            format!("{path}[{name}]"),
            name,
            "must be a standard resource for containers",
        );
    }
}

/// Kubernetes' LimitRange defaulting of a Container item: a max is also
/// the default limit, a default limit (else a min) the default request.
fn default_container_item(item: &mut LimitRangeItem) {
    for (name, max) in &item.max {
        item.default
            .entry(name.clone())
            .or_insert_with(|| max.clone());
    }
    for (name, default) in &item.default {
        item.default_request
            .entry(name.clone())
            .or_insert_with(|| default.clone());
    }
    for (name, min) in &item.min {
        item.default_request
            .entry(name.clone())
            .or_insert_with(|| min.clone());
    }
}

/// min ≤ default request ≤ default ≤ max, and a limit/request ratio of at
/// least 1 that max/min allow.
fn validate_bounds(path: &str, item: &LimitRangeItem, errors: &mut FieldErrors) {
    let q = |map: &BTreeMap<String, String>, k: &str| {
        map.get(k).and_then(|v| v.parse::<Quantity>().ok())
    };
    let mut names: Vec<&String> = item
        .max
        .keys()
        .chain(item.min.keys())
        .chain(item.default.keys())
        .chain(item.default_request.keys())
        .chain(item.max_limit_request_ratio.keys())
        .collect();
    names.sort();
    names.dedup();
    for k in names {
        let (min, max) = (q(&item.min, k), q(&item.max, k));
        let (default, request) = (q(&item.default, k), q(&item.default_request, k));
        let ratio = q(&item.max_limit_request_ratio, k);
        let mut check = |field: &str, value: Option<Quantity>, bad: bool, message: String| {
            if bad && let Some(v) = value {
                errors.invalid(format!("{path}.{field}[{k}]"), v.to_string(), message);
            }
        };
        if let (Some(lo), Some(hi)) = (min, max) {
            check(
                "min",
                min,
                lo > hi,
                format!("min value {lo} is greater than max value {hi}"),
            );
        }
        if let (Some(lo), Some(r)) = (min, request) {
            check(
                "defaultRequest",
                request,
                lo > r,
                format!("min value {lo} is greater than default request value {r}"),
            );
        }
        if let (Some(r), Some(hi)) = (request, max) {
            check(
                "defaultRequest",
                request,
                r > hi,
                format!("default request value {r} is greater than max value {hi}"),
            );
        }
        if let (Some(r), Some(d)) = (request, default) {
            check(
                "defaultRequest",
                request,
                r > d,
                format!("default request value {r} is greater than default limit value {d}"),
            );
        }
        if let (Some(lo), Some(d)) = (min, default) {
            check(
                "default",
                default,
                lo > d,
                format!("min value {lo} is greater than default value {d}"),
            );
        }
        if let (Some(d), Some(hi)) = (default, max) {
            check(
                "default",
                default,
                d > hi,
                format!("default value {d} is greater than max value {hi}"),
            );
        }
        if let Some(r) = ratio {
            let one = Quantity::from_milli(1000);
            check(
                "maxLimitRequestRatio",
                ratio,
                r < one,
                format!("ratio {r} is less than 1"),
            );
            if let (Some(lo), Some(hi)) = (min, max)
                && lo.milli_value() > 0
            {
                let allowed = hi.milli_value() as f64 / lo.milli_value() as f64;
                let asked = r.milli_value() as f64 / 1000.0;
                check(
                    "maxLimitRequestRatio",
                    ratio,
                    asked > allowed,
                    format!("ratio {r} is greater than max/min = {allowed:.6}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        LimitRangeSpec, ResourceQuotaSpec, ScopeSelector, ScopedResourceSelectorRequirement,
    };

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn quota_errors(spec: ResourceQuotaSpec) -> String {
        let mut errors = FieldErrors::default();
        ResourceQuota {
            spec: Some(spec),
            ..Default::default()
        }
        .validate(&mut errors);
        errors.to_string()
    }

    #[test]
    fn quota_caps_are_known_names_and_counts_are_whole() {
        assert_eq!(
            quota_errors(ResourceQuotaSpec {
                hard: map(&[
                    ("pods", "10"),
                    ("requests.cpu", "1500m"),
                    ("count/deployments.apps", "2"),
                    ("gold.storageclass.storage.k8s.io/requests.storage", "10Gi"),
                ]),
                ..Default::default()
            }),
            ""
        );
        let errors = quota_errors(ResourceQuotaSpec {
            hard: map(&[("pods", "1.5"), ("cpus", "1"), ("memory", "-1")]),
            ..Default::default()
        });
        assert!(
            errors.contains("spec.hard[pods]: Invalid value: \"1.5\": must be an integer"),
            "{errors}"
        );
        assert!(errors.contains("spec.hard[cpus]: Invalid value: \"cpus\": must be a standard resource type or fully qualified"), "{errors}");
        assert!(
            errors.contains(
                "spec.hard[memory]: Invalid value: \"-1\": must be greater than or equal to 0"
            ),
            "{errors}"
        );
    }

    #[test]
    fn quota_scopes_are_known_consistent_and_fit_what_is_capped() {
        let errors = quota_errors(ResourceQuotaSpec {
            hard: map(&[("pods", "1"), ("services", "1")]),
            scopes: vec![
                "Terminating".into(),
                "NotTerminating".into(),
                "Sometimes".into(),
            ],
            ..Default::default()
        });
        assert!(
            errors.contains("spec.scopes[2]: Unsupported value: \"Sometimes\""),
            "{errors}"
        );
        assert!(errors.contains("conflicting scopes"), "{errors}");
        assert!(errors.contains("spec.hard[services]"), "{errors}");
        assert!(!errors.contains("spec.hard[pods]"), "{errors}");
        let errors = quota_errors(ResourceQuotaSpec {
            hard: map(&[("pods", "1")]),
            scope_selector: Some(ScopeSelector {
                match_expressions: vec![
                    ScopedResourceSelectorRequirement {
                        scope_name: "PriorityClass".into(),
                        operator: "In".into(),
                        values: vec![],
                    },
                    ScopedResourceSelectorRequirement {
                        scope_name: "BestEffort".into(),
                        operator: "DoesNotExist".into(),
                        values: vec![],
                    },
                ],
            }),
            ..Default::default()
        });
        assert!(
            errors
                .contains("matchExpressions[0].values: Required value: must be at least one value"),
            "{errors}"
        );
        assert!(
            errors.contains(
                "matchExpressions[1].operator: Invalid value: \"DoesNotExist\": must be 'Exist'"
            ),
            "{errors}"
        );
    }

    #[test]
    fn limit_range_defaults_fall_back_to_max_and_bounds_are_ordered() {
        let mut range = LimitRange {
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    r#type: "Container".into(),
                    max: map(&[("cpu", "2"), ("memory", "1Gi")]),
                    min: map(&[("memory", "64Mi")]),
                    default: map(&[("cpu", "500m")]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        range.default_fields();
        let item = &range.spec.as_ref().unwrap().limits[0];
        assert_eq!(item.default, map(&[("cpu", "500m"), ("memory", "1Gi")]));
        assert_eq!(
            item.default_request,
            map(&[("cpu", "500m"), ("memory", "1Gi")])
        );
        let mut errors = FieldErrors::default();
        range.validate(&mut errors);
        assert_eq!(errors.to_string(), "");

        let bad = LimitRange {
            spec: Some(LimitRangeSpec {
                limits: vec![
                    LimitRangeItem {
                        r#type: "Container".into(),
                        max: map(&[("cpu", "1")]),
                        min: map(&[("cpu", "2")]),
                        default: map(&[("cpu", "3")]),
                        max_limit_request_ratio: map(&[("cpu", "500m")]),
                        ..Default::default()
                    },
                    LimitRangeItem {
                        r#type: "Pod".into(),
                        default: map(&[("cpu", "1")]),
                        ..Default::default()
                    },
                    LimitRangeItem {
                        r#type: "PersistentVolumeClaim".into(),
                        ..Default::default()
                    },
                    LimitRangeItem {
                        r#type: "Node".into(),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let mut errors = FieldErrors::default();
        bad.validate(&mut errors);
        let errors = errors.to_string();
        for want in [
            "spec.limits[0].min[cpu]: Invalid value: \"2\": min value 2 is greater than max value 1",
            "spec.limits[0].default[cpu]: Invalid value: \"3\": default value 3 is greater than max value 1",
            "spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"500m\": ratio 500m is less than 1",
            "spec.limits[1].default: Forbidden: may not be specified when `type` is 'Pod'",
            "spec.limits[2].limits: Required value: either minimum or maximum storage value is required",
            "spec.limits[3].type: Unsupported value: \"Node\"",
        ] {
            assert!(errors.contains(want), "{want} not in {errors}");
        }
    }
}
