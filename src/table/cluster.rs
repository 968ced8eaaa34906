//! The columns of cluster and tenancy objects: Nodes, Namespaces,
//! ResourceQuotas, LimitRanges, PriorityClasses and RBAC's roles and
//! bindings.

use serde_json::Value;

use super::{none_if_empty, str_at};

/// A Node's row: readiness, roles and kubelet version.
pub(super) fn node(item: &Value, name: String, created: String) -> Vec<String> {
    let ready = item["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or("").to_string());
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if item.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = item["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    vec![
        name,
        status,
        none_if_empty(&roles.join(",")),
        created,
        none_if_empty(str_at(item, "/status/nodeInfo/kubeletVersion")),
    ]
}

/// A Namespace's row.
pub(super) fn namespace(item: &Value, name: String, created: String) -> Vec<String> {
    vec![name, none_if_empty(str_at(item, "/status/phase")), created]
}

/// A RoleBinding's (or ClusterRoleBinding's) row: its role.
pub(super) fn role_binding(item: &Value, name: String, created: String) -> Vec<String> {
    vec![
        name,
        format!(
            "{}/{}",
            str_at(item, "/roleRef/kind"),
            str_at(item, "/roleRef/name")
        ),
        created,
    ]
}

/// The row of a Role, ClusterRole or LimitRange: its creation time.
pub(super) fn created_at(item: &Value, name: String) -> Vec<String> {
    vec![
        name,
        str_at(item, "/metadata/creationTimestamp").to_string(),
    ]
}

/// A ResourceQuota's row.
pub(super) fn resource_quota(item: &Value, name: String, created: String) -> Vec<String> {
    // kubectl's: `used/hard` of each capped resource, limits.*
    // in their own column.
    let hard = item.pointer("/status/hard").and_then(Value::as_object);
    let (mut request, mut limit) = (Vec::new(), Vec::new());
    for (resource, cap) in hard.into_iter().flatten() {
        let used = item
            .pointer("/status/used")
            .and_then(|u| u.get(resource))
            .and_then(Value::as_str)
            .unwrap_or("0");
        let cell = format!("{resource}: {used}/{}", cap.as_str().unwrap_or(""));
        if resource.starts_with("limits.") {
            limit.push(cell);
        } else {
            request.push(cell);
        }
    }
    vec![name, created, request.join(", "), limit.join(", ")]
}

/// A PriorityClass's row.
pub(super) fn priority_class(item: &Value, name: String, created: String) -> Vec<String> {
    vec![
        name,
        item.pointer("/value")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        item.pointer("/globalDefault")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        created,
        str_at(item, "/preemptionPolicy").to_string(),
    ]
}

/// `-o wide` for a RoleBinding or ClusterRoleBinding: its users, groups and service accounts.
pub(super) fn role_binding_wide(item: &Value, row: &mut Vec<String>) {
    let subjects = item["subjects"].as_array().cloned().unwrap_or_default();
    let of = |kind: &str| -> String {
        subjects
            .iter()
            .filter(|s| s["kind"] == kind)
            .map(|s| match s["namespace"].as_str() {
                Some(ns) if kind == "ServiceAccount" => {
                    format!("{ns}/{}", str_at(s, "/name"))
                }
                _ => str_at(s, "/name").to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    row.push(of("User"));
    row.push(of("Group"));
    row.push(of("ServiceAccount"));
}

/// `-o wide` for a Node: its internal IP, OS image, kernel and container runtime.
pub(super) fn node_wide(item: &Value, row: &mut Vec<String>) {
    let ip = item["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("");
    row.push(none_if_empty(ip));
    row.push(none_if_empty(str_at(item, "/status/nodeInfo/osImage")));
    row.push(none_if_empty(str_at(
        item,
        "/status/nodeInfo/kernelVersion",
    )));
    row.push(none_if_empty(str_at(
        item,
        "/status/nodeInfo/containerRuntimeVersion",
    )));
}
