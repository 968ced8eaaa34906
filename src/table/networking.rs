//! The columns of Ingresses and IngressClasses, as kubectl prints them.

use serde_json::Value;

use super::str_at;

/// The most hosts kubectl names before "+ N more...".
const MAX_HOSTS: usize = 3;
/// The widest ADDRESS kubectl shows without `-o wide`.
const ADDRESS_WIDTH: usize = 16;

/// An Ingress' row: class, hosts, addresses, ports.
pub(super) fn ingress(item: &Value, name: String, created: String, wide: bool) -> Vec<String> {
    let class = match item
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
    {
        Some(class) => class.to_string(),
        None => "<none>".into(),
    };
    // kubectl's formatHosts: up to three names, then "+ N more...".
    let rules = item["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in &rules {
        if names.len() == MAX_HOSTS {
            more = true;
        }
        let host = str_at(rule, "/host");
        if !more && !host.is_empty() {
            names.push(host);
        }
    }
    let mut hosts = if names.is_empty() {
        "*".to_string()
    } else {
        names.join(",")
    };
    if more {
        hosts = format!("{hosts} + {} more...", rules.len() - MAX_HOSTS);
    }
    let addresses: std::collections::BTreeSet<&str> = item["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|i| {
            i.iter()
                .filter_map(|x| {
                    [str_at(x, "/ip"), str_at(x, "/hostname")]
                        .into_iter()
                        .find(|a| !a.is_empty())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut address = addresses.into_iter().collect::<Vec<_>>().join(",");
    if !wide && address.len() > ADDRESS_WIDTH {
        address = format!("{}...", &address[..ADDRESS_WIDTH - 3]);
    }
    let tls = item["spec"]["tls"]
        .as_array()
        .is_some_and(|t| !t.is_empty());
    vec![
        name,
        class,
        hosts,
        address,
        if tls { "80, 443" } else { "80" }.into(),
        created,
    ]
}

/// An IngressClass' row: its controller and parameters.
pub(super) fn ingress_class(item: &Value, name: String, created: String) -> Vec<String> {
    let parameters = match item.pointer("/spec/parameters").filter(|p| p.is_object()) {
        None => "<none>".to_string(),
        Some(p) => {
            let mut text = str_at(p, "/kind").to_string();
            if let Some(group) = p.get("apiGroup").and_then(Value::as_str) {
                text = format!("{text}.{group}");
            }
            format!("{text}/{}", str_at(p, "/name"))
        }
    };
    vec![
        name,
        str_at(item, "/spec/controller").to_string(),
        parameters,
        created,
    ]
}

/// A NetworkPolicy's row: the pods it selects.
pub(super) fn network_policy(item: &Value, name: String, created: String) -> Vec<String> {
    vec![name, label_selector(&item["spec"]["podSelector"]), created]
}

/// A label selector as kubectl writes one (`app=web,tier in (a,b)`), or
/// `<none>` when it selects everything.
fn label_selector(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for expression in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = str_at(expression, "/key");
        let values: Vec<&str> = expression["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        parts.push(match str_at(expression, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}
