//! kubectl's tables: columns per kind read from the objects' JSON, aligned
//! with three spaces between columns; `wide` adds columns; `-A` adds
//! NAMESPACE first.
//!
//! [`rows`] holds every kind's header and dispatches each row to the file
//! of its kind's family: `table/workloads.rs` (pods and their controllers,
//! jobs, autoscalers, disruption budgets), `table/services.rs` (Services,
//! Endpoints, ConfigMaps, Secrets, Events), `table/cluster.rs` (Nodes,
//! Namespaces, quotas, PriorityClasses, RBAC), `table/storage.rs`
//! (volumes, claims, StorageClasses) and `table/networking.rs`
//! (Ingresses, IngressClasses, NetworkPolicies).

use std::time::{Duration, SystemTime};

use serde_json::Value;

mod cluster;
mod networking;
mod services;
mod storage;
mod workloads;

/// kubectl's age: `45s`, `3m12s`, `5h`, `2d3h`, `12d`.
pub fn age(timestamp: &Value, now: SystemTime) -> String {
    let Some(t) = timestamp
        .as_str()
        .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
    else {
        return "<unknown>".into();
    };
    human(now.duration_since(t).unwrap_or(Duration::ZERO))
}

/// A duration as kubectl shows ages.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=86_399 => format!("{}h", s / 3600),
        86_400..=691_199 => {
            let h = (s % 86_400) / 3600;
            if h == 0 {
                format!("{}d", s / 86_400)
            } else {
                format!("{}d{h}h", s / 86_400)
            }
        }
        _ => format!("{}d", s / 86_400),
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn none_if_empty(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// A pod's STATUS column, as kubectl computes it: a terminating pod is
/// `Terminating`; else the waiting or terminated reason of a container
/// (init containers as `Init:…`), else the phase.
pub fn pod_status(pod: &Value) -> String {
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return "Terminating".into();
    }
    let status = &pod["status"];
    let mut reason = str_at(status, "/phase").to_string();
    if let Some(inits) = status["initContainerStatuses"].as_array() {
        let total = pod["spec"]["initContainers"].as_array().map_or(0, Vec::len);
        for (i, c) in inits.iter().enumerate() {
            let waiting = str_at(c, "/state/waiting/reason");
            // proto3 JSON leaves a zero exit code out.
            let exit = c
                .pointer("/state/terminated")
                .filter(|t| t.is_object())
                .map(|t| t.get("exitCode").and_then(Value::as_i64).unwrap_or(0));
            if exit == Some(0) {
                continue;
            }
            return match (waiting, exit) {
                (w, _) if !w.is_empty() && w != "PodInitializing" => format!("Init:{w}"),
                (_, Some(code)) => format!("Init:ExitCode:{code}"),
                _ => format!("Init:{i}/{total}"),
            };
        }
    }
    if let Some(containers) = status["containerStatuses"].as_array() {
        for c in containers.iter().rev() {
            let waiting = str_at(c, "/state/waiting/reason");
            let terminated = str_at(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if !terminated.is_empty() {
                // As kubectl: a finished pod shows how its containers
                // ended (`Completed`, `Error`, `OOMKilled`), not its phase.
                reason = terminated.to_string();
            }
        }
    }
    none_if_empty(&reason)
}

/// The header and rows for `kind`.
pub fn rows(
    kind: &str,
    items: &[Value],
    wide: bool,
    all_namespaces: bool,
    now: SystemTime,
) -> Vec<Vec<String>> {
    let mut header: Vec<&str> = match kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" | "ReplicationController" => {
            vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
        }
        "Service" => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Endpoints" => vec!["NAME", "ENDPOINTS", "AGE"],
        "ConfigMap" | "Secret" => vec!["NAME", "DATA", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "RoleBinding" | "ClusterRoleBinding" => vec!["NAME", "ROLE", "AGE"],
        "Job" => vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "CronJob" => vec![
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE",
        ],
        "HorizontalPodAutoscaler" => vec![
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE",
        ],
        "DaemonSet" => vec![
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE SELECTOR",
            "AGE",
        ],
        "Role" | "ClusterRole" | "LimitRange" => vec!["NAME", "CREATED AT"],
        "ResourceQuota" => vec!["NAME", "AGE", "REQUEST", "LIMIT"],
        "ControllerRevision" => vec!["NAME", "CONTROLLER", "REVISION", "AGE"],
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "PersistentVolume" => vec![
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE",
        ],
        "PersistentVolumeClaim" => vec![
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE",
        ],
        "StorageClass" => vec![
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE",
        ],
        "PriorityClass" => vec!["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"],
        "Ingress" => vec!["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
        "IngressClass" => vec!["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
        "NetworkPolicy" => vec!["NAME", "POD-SELECTOR", "AGE"],
        "PodDisruptionBudget" => vec![
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE",
        ],
        _ => vec!["NAME", "AGE"],
    };
    if wide {
        match kind {
            "RoleBinding" | "ClusterRoleBinding" => {
                header.extend(["USERS", "GROUPS", "SERVICEACCOUNTS"])
            }
            "Pod" => header.extend(["IP", "NODE"]),
            "Node" => header.extend([
                "INTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ]),
            "Deployment" | "ReplicaSet" | "ReplicationController" | "DaemonSet" => {
                header.extend(["CONTAINERS", "IMAGES", "SELECTOR"])
            }
            "StatefulSet" => header.extend(["CONTAINERS", "IMAGES"]),
            "PersistentVolume" | "PersistentVolumeClaim" => header.push("VOLUMEMODE"),
            _ => {}
        }
    }
    let mut table = Vec::with_capacity(items.len() + 1);
    let mut head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    if all_namespaces {
        head.insert(0, "NAMESPACE".into());
    }
    table.push(head);
    for item in items {
        let name = str_at(item, "/metadata/name").to_string();
        let created = age(&item["metadata"]["creationTimestamp"], now);
        let mut row: Vec<String> = match kind {
            "Pod" => workloads::pod(item, name, created),
            "Deployment" => workloads::deployment(item, name, created),
            "ReplicaSet" | "ReplicationController" => workloads::replica_set(item, name, created),
            "Service" => services::service(item, name, created),
            "Node" => cluster::node(item, name, created),
            "Namespace" => cluster::namespace(item, name, created),
            "Endpoints" => services::endpoints(item, name, created),
            "ConfigMap" | "Secret" => services::data(item, name, created),
            "Event" => services::event(item, now),
            "HorizontalPodAutoscaler" => workloads::horizontal_pod_autoscaler(item, name, created),
            "Job" => workloads::job(item, name, created, now),
            "CronJob" => workloads::cron_job(item, name, created, now),
            "DaemonSet" => workloads::daemon_set(item, name, created),
            "RoleBinding" | "ClusterRoleBinding" => cluster::role_binding(item, name, created),
            "Role" | "ClusterRole" | "LimitRange" => cluster::created_at(item, name),
            "ResourceQuota" => cluster::resource_quota(item, name, created),
            "ControllerRevision" => workloads::controller_revision(item, name, created),
            "StatefulSet" => workloads::stateful_set(item, name, created),
            "PersistentVolume" => storage::persistent_volume(item, name, created),
            "PersistentVolumeClaim" => storage::persistent_volume_claim(item, name, created),
            "StorageClass" => storage::storage_class(item, name, created),
            "PriorityClass" => cluster::priority_class(item, name, created),
            "Ingress" => networking::ingress(item, name, created, wide),
            "IngressClass" => networking::ingress_class(item, name, created),
            "NetworkPolicy" => networking::network_policy(item, name, created),
            "PodDisruptionBudget" => workloads::pod_disruption_budget(item, name, created),
            _ => vec![name, created],
        };
        if wide {
            match kind {
                "RoleBinding" | "ClusterRoleBinding" => cluster::role_binding_wide(item, &mut row),
                "Pod" => workloads::pod_wide(item, &mut row),
                "Node" => cluster::node_wide(item, &mut row),
                "Deployment"
                | "ReplicaSet"
                | "ReplicationController"
                | "DaemonSet"
                | "StatefulSet" => workloads::controller_wide(kind, item, &mut row),
                "PersistentVolume" | "PersistentVolumeClaim" => {
                    row.push(storage::volume_mode(item))
                }
                _ => {}
            }
        }
        if all_namespaces {
            row.insert(0, str_at(item, "/metadata/namespace").to_string());
        }
        table.push(row);
    }
    table
}

/// Renders rows as kubectl does: columns padded to their widest cell,
/// three spaces apart, the last column unpadded.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(192)), "3m12s");
        assert_eq!(human(Duration::from_secs(5 * 3600 + 10)), "5h");
        assert_eq!(human(Duration::from_secs(2 * 86_400 + 3 * 3600)), "2d3h");
        assert_eq!(human(Duration::from_secs(12 * 86_400)), "12d");
    }

    #[test]
    fn pod_rows_show_readiness_status_and_restarts() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "prod", "creationTimestamp": "2026-11-26T10:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let now = humantime::parse_rfc3339("2026-11-26T10:05:00Z").unwrap();
        let table = rows("Pod", &[pod], true, true, now);
        assert_eq!(
            table[0],
            [
                "NAMESPACE",
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "IP",
                "NODE"
            ]
        );
        assert_eq!(
            table[1],
            [
                "prod",
                "web-1",
                "1/2",
                "CrashLoopBackOff",
                "3",
                "5m0s",
                "10.0.0.2",
                "n1"
            ]
        );
    }

    #[test]
    fn role_bindings_show_their_role_and_wide_their_subjects() {
        let binding = json!({
            "metadata": {"name": "read-pods", "creationTimestamp": "2026-11-26T10:00:00Z"},
            "roleRef": {"kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "User", "name": "jane"}, {"kind": "Group", "name": "ops"},
                         {"kind": "ServiceAccount", "name": "robot", "namespace": "shop"}]
        });
        let now = humantime::parse_rfc3339("2026-11-26T10:05:00Z").unwrap();
        let table = rows("RoleBinding", &[binding], true, false, now);
        assert_eq!(
            table[0],
            ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
        );
        assert_eq!(
            table[1],
            [
                "read-pods",
                "Role/pod-reader",
                "5m0s",
                "jane",
                "ops",
                "shop/robot"
            ]
        );
    }

    #[test]
    fn columns_align_with_three_spaces() {
        let out = render(&[
            vec!["NAME".into(), "AGE".into()],
            vec!["a-long-name".into(), "5s".into()],
        ]);
        assert_eq!(out, "NAME          AGE\na-long-name   5s\n");
    }

    #[test]
    fn terminating_and_init_states_show_as_kubectl_does() {
        let terminating = json!({"metadata": {"deletionTimestamp": "2026-11-26T10:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&terminating), "Terminating");
        let init = json!({"spec": {"initContainers": [{"name": "i"}]}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"state": {"running": {}}}]}});
        assert_eq!(pod_status(&init), "Init:0/1");
        // A completed init container (proto3 JSON omits exitCode 0) lets
        // the app containers' state show.
        let config_error = json!({"spec": {"initContainers": [{"name": "i"}]}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"state": {"terminated": {"reason": "Completed"}}}],
            "containerStatuses": [{"state": {"waiting": {"reason": "CreateContainerConfigError"}}}]}});
        assert_eq!(pod_status(&config_error), "CreateContainerConfigError");
        let done = json!({"status": {"phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"reason": "Completed"}}}]}});
        assert_eq!(pod_status(&done), "Completed");
        let failed = json!({"status": {"phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"reason": "Error", "exitCode": 3}}}]}});
        assert_eq!(pod_status(&failed), "Error");
    }

    #[test]
    fn claims_and_volumes_read_like_kubectl() {
        let now = SystemTime::now();
        let claim = json!({"metadata": {"name": "data", "deletionTimestamp": "2026-11-26T10:00:00Z"},
            "spec": {"volumeName": "pv1", "storageClassName": "local-path"},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "capacity": {"storage": "1Gi"}}});
        let claims = rows("PersistentVolumeClaim", &[claim], true, false, now);
        assert_eq!(
            claims[1][..7],
            [
                "data",
                "Terminating",
                "pv1",
                "1Gi",
                "RWO,RWX",
                "local-path",
                "<unset>"
            ]
        );
        assert_eq!(claims[1][8], "Filesystem");
        let class = json!({"metadata": {"name": "local-path",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "skiff.io/local-path"});
        let classes = rows("StorageClass", &[class], false, false, now);
        assert_eq!(
            classes[1][..5],
            [
                "local-path (default)",
                "skiff.io/local-path",
                "Delete",
                "Immediate",
                "false"
            ]
        );
    }
}
