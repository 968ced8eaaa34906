//! The columns of what pods are served and configured by: Services,
//! Endpoints, ConfigMaps and Secrets, and of Events.

use std::time::SystemTime;

use serde_json::Value;

use super::{age, int_at, none_if_empty, str_at};

/// A Service's row: type, IPs and ports.
pub(super) fn service(item: &Value, name: String, created: String) -> Vec<String> {
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

/// An Endpoints' row: every `ip:port`.
pub(super) fn endpoints(item: &Value, name: String, created: String) -> Vec<String> {
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

/// A ConfigMap's or Secret's row: how many keys it holds.
pub(super) fn data(item: &Value, name: String, created: String) -> Vec<String> {
    let n = item["data"].as_object().map_or(0, |d| d.len())
        + item["binaryData"].as_object().map_or(0, |d| d.len());
    vec![name, n.to_string(), created]
}

/// An Event's row (kubectl shows no NAME for events).
pub(super) fn event(item: &Value, now: SystemTime) -> Vec<String> {
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
