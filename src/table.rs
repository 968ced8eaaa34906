//! kubectl's tables: columns per kind read from the objects' JSON, aligned
//! with three spaces between columns; `wide` adds columns; `-A` adds
//! NAMESPACE first.

use std::time::{Duration, SystemTime};

use serde_json::Value;

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

/// A volume's or claim's STATUS: its phase, or `Terminating` once deleted
/// (kubectl's).
fn volume_phase(item: &Value) -> String {
    if item
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        "Terminating".into()
    } else {
        str_at(item, "/status/phase").to_string()
    }
}

/// Access modes as kubectl abbreviates them, in its order: `RWO,ROX`.
fn access_modes(modes: &Value) -> String {
    let modes: Vec<&str> = modes
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// Whether a StorageClass's annotations make it the cluster's default
/// (the beta annotation counts too, as in Kubernetes).
fn is_default_class(annotations: &Value) -> bool {
    crate::names::DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .any(|key| annotations[*key] == "true")
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
            "Pod" => {
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
            "Deployment" => {
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
            "ReplicaSet" | "ReplicationController" => vec![
                name,
                item.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string(),
                int_at(item, "/status/replicas").to_string(),
                int_at(item, "/status/readyReplicas").to_string(),
                created,
            ],
            "Service" => {
                let ports: Vec<String> = item["spec"]["ports"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                let port = int_at(p, "/port");
                                let node = int_at(p, "/nodePort");
                                let proto = p["protocol"].as_str().unwrap_or("TCP");
                                if node > 0 {
                                    format!("{port}:{node}/{proto}")
                                } else {
                                    format!("{port}/{proto}")
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let external: Vec<&str> = item["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .map(|i| i.iter().filter_map(|x| x["ip"].as_str()).collect())
                    .unwrap_or_default();
                vec![
                    name,
                    none_if_empty(str_at(item, "/spec/type")).replace("<none>", "ClusterIP"),
                    none_if_empty(str_at(item, "/spec/clusterIP")),
                    none_if_empty(&external.join(",")),
                    none_if_empty(&ports.join(",")),
                    created,
                ]
            }
            "Node" => {
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
            "Namespace" => vec![name, none_if_empty(str_at(item, "/status/phase")), created],
            "Endpoints" => {
                let mut eps = Vec::new();
                for subset in item["subsets"].as_array().cloned().unwrap_or_default() {
                    let ports: Vec<i64> = subset["ports"]
                        .as_array()
                        .map(|p| p.iter().map(|x| int_at(x, "/port")).collect())
                        .unwrap_or_default();
                    for a in subset["addresses"].as_array().cloned().unwrap_or_default() {
                        let ip = a["ip"].as_str().unwrap_or("");
                        if ports.is_empty() {
                            eps.push(ip.to_string());
                        }
                        for p in &ports {
                            eps.push(format!("{ip}:{p}"));
                        }
                    }
                }
                vec![name, none_if_empty(&eps.join(",")), created]
            }
            "ConfigMap" | "Secret" => {
                let n = item["data"].as_object().map_or(0, |d| d.len())
                    + item["binaryData"].as_object().map_or(0, |d| d.len());
                vec![name, n.to_string(), created]
            }
            "Event" => {
                let last = if item["lastTimestamp"].is_null() {
                    &item["metadata"]["creationTimestamp"]
                } else {
                    &item["lastTimestamp"]
                };
                let object = format!(
                    "{}/{}",
                    str_at(item, "/involvedObject/kind").to_lowercase(),
                    str_at(item, "/involvedObject/name")
                );
                vec![
                    age(last, now),
                    str_at(item, "/type").to_string(),
                    str_at(item, "/reason").to_string(),
                    object,
                    str_at(item, "/message").to_string(),
                ]
            }
            "HorizontalPodAutoscaler" => {
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
            "Job" => {
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
            "CronJob" => {
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
            "DaemonSet" => {
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
            "RoleBinding" | "ClusterRoleBinding" => vec![
                name,
                format!(
                    "{}/{}",
                    str_at(item, "/roleRef/kind"),
                    str_at(item, "/roleRef/name")
                ),
                created,
            ],
            "Role" | "ClusterRole" | "LimitRange" => vec![
                name,
                str_at(item, "/metadata/creationTimestamp").to_string(),
            ],
            "ResourceQuota" => {
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
            "ControllerRevision" => {
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
            "StatefulSet" => vec![
                name,
                format!(
                    "{}/{}",
                    int_at(item, "/status/readyReplicas"),
                    item.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                created,
            ],
            "PersistentVolume" => {
                let claim = match str_at(item, "/spec/claimRef/name") {
                    "" => String::new(),
                    claim => format!("{}/{claim}", str_at(item, "/spec/claimRef/namespace")),
                };
                vec![
                    name,
                    str_at(item, "/spec/capacity/storage").to_string(),
                    access_modes(&item["spec"]["accessModes"]),
                    str_at(item, "/spec/persistentVolumeReclaimPolicy").to_string(),
                    volume_phase(item),
                    claim,
                    str_at(item, "/spec/storageClassName").to_string(),
                    "<unset>".into(),
                    str_at(item, "/status/reason").to_string(),
                    created,
                ]
            }
            "PersistentVolumeClaim" => vec![
                name,
                volume_phase(item),
                str_at(item, "/spec/volumeName").to_string(),
                str_at(item, "/status/capacity/storage").to_string(),
                access_modes(&item["status"]["accessModes"]),
                str_at(item, "/spec/storageClassName").to_string(),
                "<unset>".into(),
                created,
            ],
            "StorageClass" => {
                let default = item
                    .pointer("/metadata/annotations")
                    .is_some_and(is_default_class);
                vec![
                    if default {
                        format!("{name} (default)")
                    } else {
                        name
                    },
                    str_at(item, "/provisioner").to_string(),
                    item.pointer("/reclaimPolicy")
                        .and_then(Value::as_str)
                        .unwrap_or("Delete")
                        .to_string(),
                    item.pointer("/volumeBindingMode")
                        .and_then(Value::as_str)
                        .unwrap_or("Immediate")
                        .to_string(),
                    item.pointer("/allowVolumeExpansion")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
                        .to_string(),
                    created,
                ]
            }
            "PriorityClass" => vec![
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
            ],
            "PodDisruptionBudget" => {
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
            _ => vec![name, created],
        };
        if wide {
            match kind {
                "RoleBinding" | "ClusterRoleBinding" => {
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
                "Pod" => {
                    row.push(none_if_empty(str_at(item, "/status/podIP")));
                    row.push(none_if_empty(str_at(item, "/spec/nodeName")));
                }
                "Node" => {
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
                "Deployment"
                | "ReplicaSet"
                | "ReplicationController"
                | "DaemonSet"
                | "StatefulSet" => {
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
                "PersistentVolume" | "PersistentVolumeClaim" => row.push(
                    item.pointer("/spec/volumeMode")
                        .and_then(Value::as_str)
                        .unwrap_or("Filesystem")
                        .to_string(),
                ),
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
