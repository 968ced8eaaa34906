//! LimitRanger admission, on create: a pod's containers get the default
//! requests and limits of their namespace's LimitRanges where they set
//! none (and the `kubernetes.io/limit-ranger` annotation says which), then
//! each container, the pod as a whole, and a claim's storage request must
//! lie within the ranges' min, max and limit/request ratio.

use std::any::Any;
use std::collections::BTreeMap;

use skiff::pb::core::v1::{Container, LimitRange, PersistentVolumeClaim, Pod};
use skiff::quantity::Quantity;
use skiff::quota::{ResourceList, parse, pod_limits, pod_requests};

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

/// How long a lookup that found no LimitRange in a namespace is trusted
/// while the index has none there either (Kubernetes' LimitRanger: 30 s).
/// A range created meanwhile is in the index within milliseconds, and the
/// index is always read first.
pub(super) const MISS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The annotation naming what LimitRanger defaulted.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

impl Registry {
    /// Applies the namespace's LimitRanges to a pod or claim being
    /// created (nothing else is touched).
    ///
    /// # Errors
    /// PERMISSION_DENIED (Kubernetes' 403) naming every bound passed.
    pub(super) async fn admit_limit_ranges<K: Strategy>(&self, obj: &mut K) -> Result<()> {
        let namespace = obj.namespace().to_string();
        let name = obj.name().to_string();
        let any: &mut (dyn Any + Send) = obj;
        if !any.is::<Pod>() && !any.is::<PersistentVolumeClaim>() {
            return Ok(());
        }
        let mut ranges = self.indexed(&self.limit_ranges, &namespace).await?;
        if ranges.is_empty() {
            // One just created may not be in the index yet: Kubernetes'
            // LimitRanger looks up the store too when its cache has none,
            // and trusts that lookup for a while.
            let fresh_miss = self
                .limit_range_misses
                .lock()
                .ok()
                .and_then(|misses| misses.get(&namespace).copied())
                .is_some_and(|at| at.elapsed() < MISS_TTL);
            if fresh_miss {
                return Ok(());
            }
            let read_at = std::time::Instant::now();
            ranges = self.listed(&namespace).await?;
            if let Ok(mut misses) = self.limit_range_misses.lock() {
                if ranges.is_empty() {
                    misses.retain(|_, at| at.elapsed() < MISS_TTL);
                    misses.insert(namespace.clone(), read_at);
                } else {
                    misses.remove(&namespace);
                }
            }
        }
        if ranges.is_empty() {
            return Ok(());
        }
        let mut errors = Vec::new();
        if let Some(pod) = any.downcast_mut::<Pod>() {
            for range in &ranges {
                default_pod(range, pod);
            }
            for range in &ranges {
                validate_pod(range, pod, &mut errors);
            }
        } else if let Some(claim) = any.downcast_ref::<PersistentVolumeClaim>() {
            for range in &ranges {
                validate_claim(range, claim, &mut errors);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(ApiError::Denied(format!(
                "{} {name:?} is forbidden: {}",
                K::PLURAL,
                errors[0]
            ))),
            _ => Err(ApiError::Denied(format!(
                "{} {name:?} is forbidden: [{}]",
                K::PLURAL,
                errors.join(", ")
            ))),
        }
    }
}

/// The range's Container defaults: (requests, limits).
fn container_defaults(range: &LimitRange) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for item in range.spec.iter().flat_map(|s| &s.limits) {
        if item.r#type == "Container" {
            requests.extend(item.default_request.clone());
            limits.extend(item.default.clone());
        }
    }
    (requests, limits)
}

/// Kubernetes' defaulting of a pod by one range: what a container does
/// not set, it gets, and the annotation lists it.
fn default_pod(range: &LimitRange, pod: &mut Pod) {
    let (requests, limits) = container_defaults(range);
    if requests.is_empty() && limits.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let mut merge = |c: &mut Container, what: &str| {
        let r = c.resources.get_or_insert_with(Default::default);
        let mut set_limits = Vec::new();
        for (k, v) in &limits {
            if !r.limits.contains_key(k) {
                r.limits.insert(k.clone(), v.clone());
                set_limits.push(k.as_str());
            }
        }
        let mut set_requests = Vec::new();
        for (k, v) in &requests {
            if !r.requests.contains_key(k) {
                r.requests.insert(k.clone(), v.clone());
                set_requests.push(k.as_str());
            }
        }
        if !set_requests.is_empty() {
            notes.push(format!(
                "{} request for {what} {}",
                set_requests.join(", "),
                c.name
            ));
        }
        if !set_limits.is_empty() {
            notes.push(format!(
                "{} limit for {what} {}",
                set_limits.join(", "),
                c.name
            ));
        }
    };
    for c in &mut spec.containers {
        merge(c, "container");
    }
    for c in &mut spec.init_containers {
        merge(c, "init container");
    }
    if !notes.is_empty() {
        pod.metadata
            .get_or_insert_with(Default::default)
            .annotations
            .insert(
                LIMIT_RANGER_ANNOTATION.into(),
                format!("LimitRanger plugin set: {}", notes.join("; ")),
            );
    }
}

fn min_constraint(
    kind: &str,
    name: &str,
    bound: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(request) = requests.get(name) else {
        return Some(format!(
            "minimum {name} usage per {kind} is {bound}.  No request is specified"
        ));
    };
    if request < bound {
        return Some(format!(
            "minimum {name} usage per {kind} is {bound}, but request is {request}"
        ));
    }
    match limits.get(name) {
        Some(limit) if limit < bound => Some(format!(
            "minimum {name} usage per {kind} is {bound}, but limit is {limit}"
        )),
        _ => None,
    }
}

fn max_constraint(
    kind: &str,
    name: &str,
    bound: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let Some(limit) = limits.get(name) else {
        return Some(format!(
            "maximum {name} usage per {kind} is {bound}.  No limit is specified"
        ));
    };
    if limit > bound {
        return Some(format!(
            "maximum {name} usage per {kind} is {bound}, but limit is {limit}"
        ));
    }
    match requests.get(name) {
        Some(request) if request > bound => Some(format!(
            "maximum {name} usage per {kind} is {bound}, but request is {request}"
        )),
        _ => None,
    }
}

fn ratio_constraint(
    kind: &str,
    name: &str,
    bound: &Quantity,
    requests: &ResourceList,
    limits: &ResourceList,
) -> Option<String> {
    let request = requests.get(name).filter(|q| !q.is_zero());
    let Some(request) = request else {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {bound}, but no request is specified or request is 0"
        ));
    };
    let limit = limits.get(name).filter(|q| !q.is_zero());
    let Some(limit) = limit else {
        return Some(format!(
            "{name} max limit to request ratio per {kind} is {bound}, but no limit is specified or limit is 0"
        ));
    };
    let ratio = limit.milli_value() as f64 / request.milli_value() as f64;
    (ratio * 1000.0 > bound.milli_value() as f64).then(|| {
        format!(
            "{name} max limit to request ratio per {kind} is {bound}, but provided ratio is {ratio:.6}"
        )
    })
}

/// Checks `requests`/`limits` against one item's min, max and ratio.
fn check_item(
    kind: &str,
    item: &skiff::pb::core::v1::LimitRangeItem,
    requests: &ResourceList,
    limits: &ResourceList,
    errors: &mut Vec<String>,
) {
    for (name, bound) in parse(&item.min) {
        errors.extend(min_constraint(kind, &name, &bound, requests, limits));
    }
    for (name, bound) in parse(&item.max) {
        errors.extend(max_constraint(kind, &name, &bound, requests, limits));
    }
    for (name, bound) in parse(&item.max_limit_request_ratio) {
        errors.extend(ratio_constraint(kind, &name, &bound, requests, limits));
    }
}

fn validate_pod(range: &LimitRange, pod: &Pod, errors: &mut Vec<String>) {
    let Some(spec) = &pod.spec else {
        return;
    };
    for item in range.spec.iter().flat_map(|s| &s.limits) {
        match item.r#type.as_str() {
            "Container" => {
                for c in spec.containers.iter().chain(&spec.init_containers) {
                    let r = c.resources.clone().unwrap_or_default();
                    check_item(
                        "Container",
                        item,
                        &parse(&r.requests),
                        &parse(&r.limits),
                        errors,
                    );
                }
            }
            "Pod" => check_item("Pod", item, &pod_requests(spec), &pod_limits(spec), errors),
            _ => {}
        }
    }
}

fn validate_claim(range: &LimitRange, claim: &PersistentVolumeClaim, errors: &mut Vec<String>) {
    let requests = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .map(|r| parse(&r.requests))
        .unwrap_or_default();
    let kind = "PersistentVolumeClaim";
    for item in range.spec.iter().flat_map(|s| &s.limits) {
        if item.r#type != kind {
            continue;
        }
        // A claim's limits are not its own to bound: min and max apply to
        // what it requests.
        for (name, bound) in parse(&item.min) {
            errors.extend(min_constraint(
                kind,
                &name,
                &bound,
                &requests,
                &ResourceList::new(),
            ));
        }
        for (name, bound) in parse(&item.max) {
            match requests.get(&name) {
                None => errors.push(format!(
                    "maximum {name} usage per {kind} is {bound}.  No request is specified"
                )),
                Some(request) if request > &bound => errors.push(format!(
                    "maximum {name} usage per {kind} is {bound}, but request is {request}"
                )),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{LimitRangeItem, LimitRangeSpec, PodSpec, ResourceRequirements};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn range(items: Vec<LimitRangeItem>) -> LimitRange {
        LimitRange {
            spec: Some(LimitRangeSpec { limits: items }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn containers_get_what_they_do_not_set_and_the_annotation_says_so() {
        let r = range(vec![LimitRangeItem {
            r#type: "Container".into(),
            default: map(&[("cpu", "500m"), ("memory", "256Mi")]),
            default_request: map(&[("cpu", "100m"), ("memory", "128Mi")]),
            ..Default::default()
        }]);
        let mut p = pod(vec![
            container("web", &[], &[]),
            container("log", &[("memory", "64Mi")], &[("memory", "64Mi")]),
        ]);
        default_pod(&r, &mut p);
        let spec = p.spec.as_ref().unwrap();
        let web = spec.containers[0].resources.as_ref().unwrap();
        assert_eq!(web.requests, map(&[("cpu", "100m"), ("memory", "128Mi")]));
        assert_eq!(web.limits, map(&[("cpu", "500m"), ("memory", "256Mi")]));
        let log = spec.containers[1].resources.as_ref().unwrap();
        assert_eq!(log.requests, map(&[("cpu", "100m"), ("memory", "64Mi")]));
        assert_eq!(
            p.metadata.as_ref().unwrap().annotations[LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: cpu, memory request for container web; cpu, memory limit for container web; cpu request for container log; cpu limit for container log"
        );
    }

    #[test]
    fn bounds_name_the_resource_the_type_and_the_value() {
        let r = range(vec![
            LimitRangeItem {
                r#type: "Container".into(),
                max: map(&[("cpu", "1")]),
                min: map(&[("memory", "64Mi")]),
                max_limit_request_ratio: map(&[("cpu", "2")]),
                ..Default::default()
            },
            LimitRangeItem {
                r#type: "Pod".into(),
                max: map(&[("memory", "1Gi")]),
                ..Default::default()
            },
        ]);
        let p = pod(vec![
            container(
                "a",
                &[("cpu", "500m"), ("memory", "32Mi")],
                &[("cpu", "2"), ("memory", "800Mi")],
            ),
            container(
                "b",
                &[("cpu", "1"), ("memory", "64Mi")],
                &[("cpu", "1"), ("memory", "800Mi")],
            ),
        ]);
        let mut errors = Vec::new();
        validate_pod(&r, &p, &mut errors);
        assert_eq!(
            errors,
            [
                "minimum memory usage per Container is 64Mi, but request is 32Mi",
                "maximum cpu usage per Container is 1, but limit is 2",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
                "maximum memory usage per Pod is 1Gi, but limit is 1600Mi",
            ]
        );
        let none = pod(vec![container("c", &[], &[])]);
        let mut errors = Vec::new();
        validate_pod(&r, &none, &mut errors);
        assert_eq!(
            errors,
            [
                "minimum memory usage per Container is 64Mi.  No request is specified",
                "maximum cpu usage per Container is 1.  No limit is specified",
                "cpu max limit to request ratio per Container is 2, but no request is specified or request is 0",
                "maximum memory usage per Pod is 1Gi.  No limit is specified",
            ]
        );
    }
}
