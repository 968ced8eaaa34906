//! Server-side Tables: what `kubectl get` prints, with the same columns
//! as `skiff get` (both come from [`skiff::table`]). Columns only `-o wide`
//! shows have priority 1.

use std::time::SystemTime;

use http::HeaderMap;
use serde_json::{Value, json};

/// What each row carries of its object (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// Its metadata, as a PartialObjectMetadata (the default: kubectl
    /// reads the namespace and labels from it).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// Reads `includeObject`.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Whether the client asks for a Table (`as=Table;g=meta.k8s.io`, v1 or
/// v1beta1, anywhere in its Accept list).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|choice| {
                let params: Vec<&str> = choice.split(';').map(str::trim).collect();
                params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
            })
        })
}

/// `Pod` objects (with apiVersion and kind set) as a Table.
pub fn of(kind: &str, items: &[Value], resource_version: &str, include: Include) -> Value {
    let now = SystemTime::now();
    let narrow = skiff::table::rows(kind, &[], false, false, now)[0].len();
    let mut rows = skiff::table::rows(kind, items, true, false, now).into_iter();
    let header = rows.next().unwrap_or_default();
    let columns: Vec<Value> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({
                "name": title(name),
                "type": "string",
                "format": if i == 0 && name == "NAME" { "name" } else { "" },
                "description": "",
                "priority": if i < narrow { 0 } else { 1 },
            })
        })
        .collect();
    let rows: Vec<Value> = rows
        .zip(items)
        .map(|(cells, item)| {
            let mut row = json!({"cells": cells});
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": item.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
                Include::Object => row["object"] = item.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// The Table of `items` (a list's), each encoded by `encode` only when
/// its row is made, a few hundred at a time: a long list is never all in
/// memory as JSON at once.
///
/// # Errors
/// What `encode` fails with.
pub fn of_all<K, E>(
    kind: &str,
    items: Vec<K>,
    encode: impl Fn(K) -> Result<Value, E>,
    resource_version: &str,
    include: Include,
) -> Result<Value, E> {
    const BATCH: usize = 256;
    let mut table = of(kind, &[], resource_version, include);
    let mut rows = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch = items
            .by_ref()
            .take(BATCH)
            .map(&encode)
            .collect::<Result<Vec<Value>, E>>()?;
        let mut part = of(kind, &batch, resource_version, include);
        if let Some(Value::Array(more)) = part.as_object_mut().and_then(|p| p.remove("rows")) {
            rows.extend(more);
        }
    }
    table["rows"] = Value::Array(rows);
    Ok(table)
}

/// `CLUSTER-IP` → `Cluster-IP`, `NAME` → `Name`: Kubernetes' column names
/// (kubectl upper-cases them again).
fn title(header: &str) -> String {
    header
        .split(' ')
        .map(|word| {
            word.split('-')
                .map(|part| {
                    if matches!(part, "IP" | "OS") {
                        return part.to_string();
                    }
                    let lower = part.to_lowercase();
                    let mut chars = lower.chars();
                    chars
                        .next()
                        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_carry_kubectl_columns_and_mark_the_wide_ones() {
        let pod = json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.2"},
        });
        let table = of("Pod", &[pod], "42", Include::Metadata);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(&names[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(table["columnDefinitions"][0]["format"], "name");
        assert_eq!(table["columnDefinitions"][4]["priority"], 0);
        assert_eq!(table["columnDefinitions"][5]["name"], "IP");
        assert_eq!(table["columnDefinitions"][5]["priority"], 1);
        let row = &table["rows"][0];
        assert_eq!(row["cells"][0], "web");
        assert_eq!(row["cells"][2], "Running");
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["metadata"]["namespace"], "prod");
        assert_eq!(table["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn column_names_read_like_kubernetes() {
        assert_eq!(title("CLUSTER-IP"), "Cluster-IP");
        assert_eq!(title("LAST SCHEDULE"), "Last Schedule");
        assert_eq!(title("OS-IMAGE"), "OS-Image");
    }

    #[test]
    fn kubectl_get_asks_for_a_table() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wanted(&headers));
        headers.insert(http::header::ACCEPT, "application/json".parse().unwrap());
        assert!(!wanted(&headers));
    }
}
