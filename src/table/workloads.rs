//! The columns of workloads: pods, their controllers (Deployments,
//! ReplicaSets, ReplicationControllers, DaemonSets, StatefulSets and their
//! ControllerRevisions), Jobs and CronJobs, HorizontalPodAutoscalers and
//! PodDisruptionBudgets.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{age, human, int_at, none_if_empty, pod_status, str_at};

/// A Pod's row: readiness, STATUS ([`pod_status`]) and restarts.
pub(super) fn pod(item: &Value, name: String, created: String) -> Vec<String> {
    let statuses = item["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = item["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c["ready"].as_bool() == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| int_at(c, "/restartCount")).sum();
    vec![
        name,
        format!("{ready}/{total}"),
        pod_status(item),
        restarts.to_string(),
        created,
    ]
}

/// A Deployment's row.
pub(super) fn deployment(item: &Value, name: String, created: String) -> Vec<String> {
    let want = item
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    vec![
        name,
        format!("{}/{want}", int_at(item, "/status/readyReplicas")),
        int_at(item, "/status/updatedReplicas").to_string(),
        int_at(item, "/status/availableReplicas").to_string(),
        created,
    ]
}

/// A ReplicaSet's (or ReplicationController's) row.
pub(super) fn replica_set(item: &Value, name: String, created: String) -> Vec<String> {
    vec![
        name,
        item.pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .to_string(),
        int_at(item, "/status/replicas").to_string(),
        int_at(item, "/status/readyReplicas").to_string(),
        created,
    ]
}

/// A HorizontalPodAutoscaler's row: its target and metrics.
pub(super) fn horizontal_pod_autoscaler(
    item: &Value,
    name: String,
    created: String,
) -> Vec<String> {
    let reference = format!(
        "{}/{}",
        str_at(item, "/spec/scaleTargetRef/kind"),
        str_at(item, "/spec/scaleTargetRef/name")
    );
    let current = item["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let targets: Vec<String> = item["spec"]["metrics"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let name = str_at(m, "/resource/name");
                    let now = current
                        .iter()
                        .find(|c| str_at(c, "/resource/name") == name)
                        .map(|c| &c["resource"]["current"]);
                    match m.pointer("/resource/target/averageUtilization") {
                        Some(want) => format!(
                            "{name}: {}/{want}%",
                            now.and_then(|n| n["averageUtilization"].as_i64())
                                .map_or("<unknown>".to_string(), |n| format!("{n}%"))
                        ),
                        None => format!(
                            "{name}: {}/{}",
                            now.and_then(|n| n["averageValue"].as_str())
                                .unwrap_or("<unknown>"),
                            str_at(m, "/resource/target/averageValue")
                        ),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    vec![
        name,
        reference,
        none_if_empty(&targets.join(", ")),
        item.pointer("/spec/minReplicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .to_string(),
        int_at(item, "/spec/maxReplicas").to_string(),
        int_at(item, "/status/currentReplicas").to_string(),
        created,
    ]
}

/// A Job's row: status, completions and duration.
pub(super) fn job(item: &Value, name: String, created: String, now: SystemTime) -> Vec<String> {
    let holds = |kind: &str| {
        item["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
    };
    let status = if holds("Failed") {
        "Failed"
    } else if holds("Complete") {
        "Complete"
    } else if holds("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    let succeeded = int_at(item, "/status/succeeded");
    let completions = match item.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => format!(
            "{succeeded}/1 of {}",
            item.pointer("/spec/parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(1)
        ),
    };
    let at = |v: &Value| {
        v.as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok())
    };
    let duration = match at(&item["status"]["startTime"]) {
        Some(start) => {
            let end = at(&item["status"]["completionTime"]).unwrap_or(now);
            human(end.duration_since(start).unwrap_or(Duration::ZERO))
        }
        None => "<none>".into(),
    };
    vec![name, status.into(), completions, duration, created]
}

/// A CronJob's row.
pub(super) fn cron_job(
    item: &Value,
    name: String,
    created: String,
    now: SystemTime,
) -> Vec<String> {
    let last = &item["status"]["lastScheduleTime"];
    vec![
        name,
        str_at(item, "/spec/schedule").to_string(),
        item.pointer("/spec/timeZone")
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_string(),
        item.pointer("/spec/suspend")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string()
            .replace("false", "False")
            .replace("true", "True"),
        item["status"]["active"]
            .as_array()
            .map_or(0, Vec::len)
            .to_string(),
        if last.is_string() {
            age(last, now)
        } else {
            "<none>".into()
        },
        created,
    ]
}

/// A DaemonSet's row.
pub(super) fn daemon_set(item: &Value, name: String, created: String) -> Vec<String> {
    let selector: Vec<String> = item
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    vec![
        name,
        int_at(item, "/status/desiredNumberScheduled").to_string(),
        int_at(item, "/status/currentNumberScheduled").to_string(),
        int_at(item, "/status/numberReady").to_string(),
        int_at(item, "/status/updatedNumberScheduled").to_string(),
        int_at(item, "/status/numberAvailable").to_string(),
        none_if_empty(&selector.join(",")),
        created,
    ]
}

/// A ControllerRevision's row: its controller and revision.
pub(super) fn controller_revision(item: &Value, name: String, created: String) -> Vec<String> {
    // kubectl's: the controlling owner as `daemonset.apps/NAME`.
    let owner = item["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|owners| owners.iter().find(|o| o["controller"] == true))
        .map(|o| {
            let group = o["apiVersion"]
                .as_str()
                .and_then(|v| v.split_once('/'))
                .map_or("", |(g, _)| g);
            let kind = o["kind"].as_str().unwrap_or("").to_lowercase();
            let name = o["name"].as_str().unwrap_or("");
            if group.is_empty() {
                format!("{kind}/{name}")
            } else {
                format!("{kind}.{group}/{name}")
            }
        });
    vec![
        name,
        owner.unwrap_or_else(|| "<none>".into()),
        int_at(item, "/revision").to_string(),
        created,
    ]
}

/// A StatefulSet's row.
pub(super) fn stateful_set(item: &Value, name: String, created: String) -> Vec<String> {
    vec![
        name,
        format!(
            "{}/{}",
            int_at(item, "/status/readyReplicas"),
            item.pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
        ),
        created,
    ]
}

/// A PodDisruptionBudget's row.
pub(super) fn pod_disruption_budget(item: &Value, name: String, created: String) -> Vec<String> {
    // IntOrString: a count or a percentage; "N/A" when unset.
    let bound = |path: &str| match item.pointer(path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".into(),
    };
    vec![
        name,
        bound("/spec/minAvailable"),
        bound("/spec/maxUnavailable"),
        item.pointer("/status/disruptionsAllowed")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        created,
    ]
}

/// `-o wide` for a Pod: its IP and node.
pub(super) fn pod_wide(item: &Value, row: &mut Vec<String>) {
    row.push(none_if_empty(str_at(item, "/status/podIP")));
    row.push(none_if_empty(str_at(item, "/spec/nodeName")));
}

/// `-o wide` for a pod controller: its containers, images and (but for a StatefulSet) selector.
pub(super) fn controller_wide(kind: &str, item: &Value, row: &mut Vec<String>) {
    let containers = item
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    let selector = item["spec"]["selector"]
        .get("matchLabels")
        .unwrap_or(&item["spec"]["selector"])
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    row.extend([names.join(","), images.join(",")]);
    if kind != "StatefulSet" {
        row.push(none_if_empty(&selector));
    }
}
