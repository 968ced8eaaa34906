//! Resource quotas: what an object uses of its namespace's quotas, and
//! which quotas count it — one set of rules for the API server's quota
//! admission (which charges a quota before an object is written) and the
//! quota controller (which recounts `status.used` from the objects).
//!
//! The resource names are Kubernetes': `pods`, `services`, `secrets`...
//! (object counts, also as `count/<plural>[.<group>]` for any kind),
//! `requests.cpu` (and `cpu`), `limits.memory`, `requests.storage`,
//! `<class>.storageclass.storage.k8s.io/requests.storage`,
//! `services.loadbalancers`, `services.nodeports`.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, BTreeSet};

use crate::Resource;
use crate::pb::core::v1::{
    Container, PersistentVolumeClaim, Pod, PodSpec, ResourceQuota, ResourceQuotaSpec,
    ScopedResourceSelectorRequirement, Service,
};
use crate::quantity::Quantity;

/// Quantities by resource name.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Pods with an active deadline.
pub const SCOPE_TERMINATING: &str = "Terminating";
/// Pods without an active deadline.
pub const SCOPE_NOT_TERMINATING: &str = "NotTerminating";
/// Pods with no CPU or memory requests or limits.
pub const SCOPE_BEST_EFFORT: &str = "BestEffort";
/// Pods with some CPU or memory request or limit.
pub const SCOPE_NOT_BEST_EFFORT: &str = "NotBestEffort";
/// Pods by their PriorityClass (with an operator and values).
pub const SCOPE_PRIORITY_CLASS: &str = "PriorityClass";
/// Pods with affinity terms that look into other namespaces.
pub const SCOPE_CROSS_NAMESPACE_POD_AFFINITY: &str = "CrossNamespacePodAffinity";
/// Every scope Kubernetes knows.
pub const SCOPES: &[&str] = &[
    SCOPE_TERMINATING,
    SCOPE_NOT_TERMINATING,
    SCOPE_BEST_EFFORT,
    SCOPE_NOT_BEST_EFFORT,
    SCOPE_PRIORITY_CLASS,
    SCOPE_CROSS_NAMESPACE_POD_AFFINITY,
];

/// The resources a pod's own request or limit makes mandatory when a
/// quota caps them (Kubernetes' backward-compatible rule).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];
/// Resources with a bare name as well as `requests.<name>`, and with a
/// `limits.<name>`.
const STANDARD: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Parses a map of quantities; an unparsable entry is left out (the API
/// validates quantities before it stores them).
pub fn parse(map: &BTreeMap<String, String>) -> ResourceList {
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), v.parse::<Quantity>().ok()?)))
        .collect()
}

/// A list as the API writes it.
pub fn to_strings(list: &ResourceList) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

/// `a + b`, resource by resource (saturating at the largest quantity). A
/// zero takes the format of what is added to it, as in Kubernetes: 0 plus
/// `256Mi` is `256Mi`, not `268435456`.
pub fn add(a: &mut ResourceList, b: &ResourceList) {
    for (k, v) in b {
        let sum = match a.get(k) {
            Some(have) if have.is_zero() => *v,
            // Past the largest quantity: the largest, which passes any cap
            // (never the old total, which a huge request would slip under).
            Some(have) => have
                .checked_add(v)
                .unwrap_or_else(|| Quantity::from_milli(i64::MAX)),
            None => *v,
        };
        a.insert(k.clone(), sum);
    }
}

/// The entries of `list` named in `names`.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names
        .into_iter()
        .filter_map(|k| Some((k.clone(), *list.get(k)?)))
        .collect()
}

/// What `after` uses beyond `before`: the increases only (an update is
/// charged for what it adds, as Kubernetes' quota admission does).
pub fn increase(after: &ResourceList, before: &ResourceList) -> ResourceList {
    after
        .iter()
        .filter_map(|(k, v)| {
            let grown = match before.get(k) {
                Some(was) => v.checked_sub(was)?,
                None => *v,
            };
            (grown > Quantity::default()).then_some((k.clone(), grown))
        })
        .collect()
}

/// `k=v,k=v` in name order, as Kubernetes' quota messages print lists.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn requirements<'a>(
    c: &'a Container,
    pick: fn(&'a crate::pb::core::v1::ResourceRequirements) -> &'a BTreeMap<String, String>,
) -> ResourceList {
    c.resources
        .as_ref()
        .map(|r| parse(pick(r)))
        .unwrap_or_default()
}

fn max_into(a: &mut ResourceList, b: &ResourceList) {
    for (k, v) in b {
        if a.get(k).is_none_or(|have| v > have) {
            a.insert(k.clone(), *v);
        }
    }
}

/// A pod's requests or limits as Kubernetes totals them: its containers
/// and sidecars (init containers that keep running) add up; each other
/// init container runs alone beside the sidecars started before it; the
/// pod needs the larger of the two.
fn aggregate(
    spec: &PodSpec,
    pick: fn(&crate::pb::core::v1::ResourceRequirements) -> &BTreeMap<String, String>,
) -> ResourceList {
    let mut total = ResourceList::new();
    for c in &spec.containers {
        add(&mut total, &requirements(c, pick));
    }
    let mut sidecars = ResourceList::new();
    let mut init_peak = ResourceList::new();
    for c in &spec.init_containers {
        let own = requirements(c, pick);
        let at_start = if c.restart_policy.as_deref() == Some("Always") {
            add(&mut total, &own);
            add(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut with = own;
            add(&mut with, &sidecars);
            with
        };
        max_into(&mut init_peak, &at_start);
    }
    max_into(&mut total, &init_peak);
    total
}

/// What a pod requests, in total.
pub fn pod_requests(spec: &PodSpec) -> ResourceList {
    aggregate(spec, |r| &r.requests)
}

/// A pod's limits, in total.
pub fn pod_limits(spec: &PodSpec) -> ResourceList {
    aggregate(spec, |r| &r.limits)
}

/// Whether a pod still counts against quotas: not finished, and not past
/// the grace period of its deletion (at `now`, Unix seconds).
pub fn pod_counts(pod: &Pod, now: i64) -> bool {
    let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
    if phase == "Succeeded" || phase == "Failed" {
        return false;
    }
    match pod.metadata.as_ref() {
        Some(m) => match (&m.deletion_timestamp, m.deletion_grace_period_seconds) {
            (Some(at), Some(grace)) => now <= at.seconds.saturating_add(grace),
            _ => true,
        },
        None => true,
    }
}

/// What one pod uses (whether it counts is [`pod_counts`]'s).
pub fn pod_usage(pod: &Pod) -> ResourceList {
    let mut usage = ResourceList::new();
    let one = Quantity::from_milli(1000);
    usage.insert("pods".into(), one);
    usage.insert("count/pods".into(), one);
    let Some(spec) = &pod.spec else {
        return usage;
    };
    for (name, q) in pod_requests(spec) {
        if STANDARD.contains(&name.as_str()) {
            usage.insert(name.clone(), q);
        }
        usage.insert(format!("requests.{name}"), q);
    }
    for (name, q) in pod_limits(spec) {
        if STANDARD.contains(&name.as_str()) {
            usage.insert(format!("limits.{name}"), q);
        }
    }
    usage
}

/// What one pod uses at `now`: all of [`pod_usage`] while it counts
/// ([`pod_counts`]), else only its object count (`count/pods`), as in
/// Kubernetes.
pub fn pod_usage_at(pod: &Pod, now: i64) -> ResourceList {
    if pod_counts(pod, now) {
        return pod_usage(pod);
    }
    [("count/pods".to_string(), Quantity::from_milli(1000))].into()
}

/// What one Service uses: itself, and its node ports and load balancer.
pub fn service_usage(service: &Service) -> ResourceList {
    let mut usage = ResourceList::new();
    let one = Quantity::from_milli(1000);
    usage.insert("services".into(), one);
    usage.insert("count/services".into(), one);
    let spec = service.spec.clone().unwrap_or_default();
    if spec.r#type == "LoadBalancer" {
        usage.insert("services.loadbalancers".into(), one);
    }
    if spec.r#type == "NodePort" || spec.r#type == "LoadBalancer" {
        let ports = i64::try_from(spec.ports.len()).unwrap_or(i64::MAX);
        usage.insert(
            "services.nodeports".into(),
            Quantity::from_milli(ports.saturating_mul(1000)),
        );
    }
    usage
}

/// What one claim uses: itself and the storage it asks for, also under
/// its class's names.
pub fn claim_usage(claim: &PersistentVolumeClaim) -> ResourceList {
    let mut usage = ResourceList::new();
    let one = Quantity::from_milli(1000);
    usage.insert("persistentvolumeclaims".into(), one);
    usage.insert("count/persistentvolumeclaims".into(), one);
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.get("storage"))
        .and_then(|v| v.parse::<Quantity>().ok());
    if let Some(q) = storage {
        usage.insert("requests.storage".into(), q);
    }
    if let Some(class) = spec.storage_class_name.filter(|c| !c.is_empty()) {
        let prefix = format!("{class}.storageclass.storage.k8s.io/");
        usage.insert(format!("{prefix}persistentvolumeclaims"), one);
        if let Some(q) = storage {
            usage.insert(format!("{prefix}requests.storage"), q);
        }
    }
    usage
}

/// `count/<plural>` (core) or `count/<plural>.<group>`: the object-count
/// name of kind `K`.
pub fn count_name<K: Resource>() -> String {
    match K::API_VERSION.split_once('/') {
        Some((group, _)) => format!("count/{}.{group}", K::PLURAL),
        None => format!("count/{}", K::PLURAL),
    }
}

/// Core kinds whose count also goes by their plural alone.
const LEGACY_COUNTS: &[&str] = &[
    "configmaps",
    "secrets",
    "replicationcontrollers",
    "resourcequotas",
];

/// What `obj` uses of a quota: pods, Services and claims by their own
/// rules, any other kind one of its count.
pub fn usage<K: Resource>(obj: &K) -> ResourceList {
    let any: &dyn Any = obj;
    if let Some(pod) = any.downcast_ref::<Pod>() {
        return pod_usage(pod);
    }
    if let Some(service) = any.downcast_ref::<Service>() {
        return service_usage(service);
    }
    if let Some(claim) = any.downcast_ref::<PersistentVolumeClaim>() {
        return claim_usage(claim);
    }
    let one = Quantity::from_milli(1000);
    let mut usage = ResourceList::new();
    usage.insert(count_name::<K>(), one);
    if !K::API_VERSION.contains('/') && LEGACY_COUNTS.contains(&K::PLURAL) {
        usage.insert(K::PLURAL.to_string(), one);
    }
    usage
}

/// The scope requirements of a quota: its scopes (as Exists) and its
/// scope selector's.
pub fn scope_requirements(spec: &ResourceQuotaSpec) -> Vec<ScopedResourceSelectorRequirement> {
    let mut all: Vec<ScopedResourceSelectorRequirement> = spec
        .scopes
        .iter()
        .map(|s| ScopedResourceSelectorRequirement {
            scope_name: s.clone(),
            operator: "Exists".into(),
            values: Vec::new(),
        })
        .collect();
    if let Some(selector) = &spec.scope_selector {
        all.extend(selector.match_expressions.iter().cloned());
    }
    all
}

/// No container requests or limits any CPU or memory (a zero is none, as
/// in Kubernetes' QoS classes).
fn is_best_effort(spec: &PodSpec) -> bool {
    let positive = |map: &BTreeMap<String, String>, k: &str| {
        map.get(k)
            .and_then(|v| v.parse::<Quantity>().ok())
            .is_some_and(|q| q > Quantity::default())
    };
    spec.containers
        .iter()
        .chain(&spec.init_containers)
        .all(|c| {
            c.resources.as_ref().is_none_or(|r| {
                ["cpu", "memory"]
                    .iter()
                    .all(|k| !positive(&r.requests, k) && !positive(&r.limits, k))
            })
        })
}

fn uses_cross_namespace_affinity(spec: &PodSpec) -> bool {
    let Some(affinity) = &spec.affinity else {
        return false;
    };
    let cross = |t: &crate::pb::core::v1::PodAffinityTerm| {
        !t.namespaces.is_empty() || t.namespace_selector.is_some()
    };
    let terms = |required: &[crate::pb::core::v1::PodAffinityTerm],
                 preferred: &[crate::pb::core::v1::WeightedPodAffinityTerm]| {
        required.iter().any(cross)
            || preferred
                .iter()
                .filter_map(|w| w.pod_affinity_term.as_ref())
                .any(cross)
    };
    affinity.pod_affinity.as_ref().is_some_and(|a| {
        terms(
            &a.required_during_scheduling_ignored_during_execution,
            &a.preferred_during_scheduling_ignored_during_execution,
        )
    }) || affinity.pod_anti_affinity.as_ref().is_some_and(|a| {
        terms(
            &a.required_during_scheduling_ignored_during_execution,
            &a.preferred_during_scheduling_ignored_during_execution,
        )
    })
}

/// Whether a pod is in one scope requirement, as Kubernetes judges it (a
/// PriorityClass requirement is a label selector over the one label
/// `PriorityClass: <class>`, which a pod without a class does not have).
pub fn pod_in_scope(pod: &Pod, requirement: &ScopedResourceSelectorRequirement) -> bool {
    let spec = pod.spec.clone().unwrap_or_default();
    let terminating = spec.active_deadline_seconds.is_some_and(|s| s >= 0);
    match requirement.scope_name.as_str() {
        SCOPE_TERMINATING => terminating,
        SCOPE_NOT_TERMINATING => !terminating,
        SCOPE_BEST_EFFORT => is_best_effort(&spec),
        SCOPE_NOT_BEST_EFFORT => !is_best_effort(&spec),
        SCOPE_CROSS_NAMESPACE_POD_AFFINITY => uses_cross_namespace_affinity(&spec),
        SCOPE_PRIORITY_CLASS => {
            let class = &spec.priority_class_name;
            let has = !class.is_empty();
            match requirement.operator.as_str() {
                "Exists" => has,
                "DoesNotExist" => !has,
                "In" => has && requirement.values.contains(class),
                "NotIn" => !has || !requirement.values.contains(class),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `quota` counts `obj`: a quota with scopes counts only the pods
/// in all of them; one without counts everything.
pub fn quota_counts<K: Resource>(quota: &ResourceQuota, obj: &K) -> bool {
    let requirements = quota
        .spec
        .as_ref()
        .map(scope_requirements)
        .unwrap_or_default();
    if requirements.is_empty() {
        return true;
    }
    let any: &dyn Any = obj;
    match any.downcast_ref::<Pod>() {
        Some(pod) => requirements.iter().all(|r| pod_in_scope(pod, r)),
        None => false,
    }
}

/// Kubernetes' standard quota names (others are `count/...`, qualified
/// or extended names).
pub const STANDARD_NAMES: &[&str] = &[
    "pods",
    "services",
    "replicationcontrollers",
    "resourcequotas",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// Whether a scoped quota may cap `resource` (Kubernetes: a standard
/// name must be `pods`, or for scopes other than BestEffort one of the
/// CPU and memory names; other names are not checked).
pub fn scope_allows(scope: &str, resource: &str) -> bool {
    if !STANDARD_NAMES.contains(&resource) {
        return true;
    }
    let compute = matches!(
        resource,
        "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory"
    );
    match scope {
        SCOPE_BEST_EFFORT => resource == "pods",
        _ => resource == "pods" || compute,
    }
}

/// Whether kind `K`'s usage is measured in `resource` (Kubernetes'
/// evaluator's matching resources): a quota capping it counts objects of
/// `K`, even ones that use none of it.
pub fn covers<K: Resource>(resource: &str) -> bool {
    let kind = TypeId::of::<K>();
    if kind == TypeId::of::<Pod>() {
        matches!(resource, "pods" | "count/pods")
            || STANDARD.contains(&resource)
            || resource.strip_prefix("requests.").is_some_and(|r| {
                STANDARD.contains(&r) || r.contains('/') || r.starts_with("hugepages-")
            })
            || resource
                .strip_prefix("limits.")
                .is_some_and(|r| STANDARD.contains(&r))
    } else if kind == TypeId::of::<Service>() {
        matches!(
            resource,
            "services" | "count/services" | "services.loadbalancers" | "services.nodeports"
        )
    } else if kind == TypeId::of::<PersistentVolumeClaim>() {
        matches!(
            resource,
            "persistentvolumeclaims" | "count/persistentvolumeclaims" | "requests.storage"
        ) || resource
            .split_once(".storageclass.storage.k8s.io/")
            .is_some_and(|(_, r)| r == "requests.storage" || r == "persistentvolumeclaims")
    } else {
        resource == count_name::<K>()
            || (!K::API_VERSION.contains('/')
                && LEGACY_COUNTS.contains(&K::PLURAL)
                && resource == K::PLURAL)
    }
}

/// Why a pod may not be created under a quota that caps CPU or memory:
/// each such capped resource needs a request (or limit) in every
/// container (`must specify requests.cpu for: app`); None when it has
/// them.
pub fn missing_requirements(pod: &Pod, capped: &BTreeSet<String>) -> Option<String> {
    let required: BTreeSet<&str> = MUST_SPECIFY
        .iter()
        .copied()
        .filter(|r| capped.contains(*r))
        .collect();
    if required.is_empty() {
        return None;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let mut missing: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for c in spec.containers.iter().chain(&spec.init_containers) {
        let r = c.resources.clone().unwrap_or_default();
        let mut has = BTreeSet::new();
        for k in ["cpu", "memory"] {
            if r.requests.contains_key(k) {
                has.insert(k.to_string());
                has.insert(format!("requests.{k}"));
            }
            if r.limits.contains_key(k) {
                has.insert(format!("limits.{k}"));
            }
        }
        for r in &required {
            if !has.contains(*r) {
                missing.entry(r).or_default().insert(c.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            format!(
                "{r} for: {}",
                names.iter().cloned().collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// What the objects a quota counts use of what it caps: the sum of
/// `usages` (each an object's [`usage`]) over the names in `hard`, zero
/// for a capped resource none uses.
pub fn used_of<'a>(
    hard: &BTreeMap<String, String>,
    usages: impl IntoIterator<Item = &'a ResourceList>,
) -> ResourceList {
    let mut used: ResourceList = hard
        .keys()
        .map(|k| (k.clone(), Quantity::default()))
        .collect();
    for u in usages {
        add(&mut used, &mask(u, hard.keys()));
    }
    used
}

#[cfg(test)]
mod tests;
