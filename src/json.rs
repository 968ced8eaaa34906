//! Objects as Kubernetes' JSON, for every door that speaks it (the HTTP
//! API, the CLI's manifests and `-o json|yaml`): one conversion.
//!
//! The serde forms come from pbjson (proto3 JSON, camelCase), made to
//! read like Kubernetes' at build time (64-bit integers as numbers, the
//! fields Kubernetes always writes written even when zero: `build.rs`);
//! what is left is done on the JSON value here: timestamps in UTC end in
//! `Z`, IntOrString numbers (protobuf doubles) are integers, and
//! quantities written as numbers (`cpu: 1`) are read.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Resource;

/// An object as Kubernetes' JSON.
///
/// # Errors
/// When serde fails (a map with non-string keys: a bug).
pub fn to_value<T: Serialize>(obj: &T) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(obj)?;
    kubernetes_forms(&mut value);
    Ok(value)
}

/// Reads an object from Kubernetes' JSON; the error names the field
/// (`spec.containers[0]: unknown field \`imag\``).
///
/// # Errors
/// The field and what is wrong with it.
pub fn from_value<K: DeserializeOwned>(mut value: Value) -> Result<K, Error> {
    quantities_as_strings(&mut value);
    read(&value)
}

/// Reads an object from JSON already through [`quantities_as_strings`],
/// without taking (or copying) it: a caller that retries after fixing the
/// JSON keeps it.
///
/// # Errors
/// The field and what is wrong with it.
pub fn read<K: DeserializeOwned>(value: &Value) -> Result<K, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        Error {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Why JSON does not read as an object: where (`spec.containers[0]`, empty
/// for the top) and what is wrong (``unknown field `imag` ``); shown as
/// `PATH: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The field, dot-separated with indexes; empty for the whole object.
    pub path: String,
    /// What serde said.
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

/// Sets `apiVersion` and `kind` (list items come without them).
pub fn with_type<K: Resource>(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(K::API_VERSION.into()));
        map.insert("kind".into(), Value::String(K::KIND.into()));
    }
    value
}

/// Fields that hold a protobuf Timestamp.
fn is_time_key(key: &str) -> bool {
    key.ends_with("Timestamp")
        || key.ends_with("Time")
        || matches!(key, "startedAt" | "finishedAt" | "timeAdded" | "time")
}

/// Quantities written as numbers (`cpu: 1`, `memory: 1000`), which
/// manifests allow and the protobuf maps of strings do not: made strings
/// before a manifest is read.
pub fn quantities_as_strings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if matches!(
                    key.as_str(),
                    "limits" | "requests" | "overhead" | "capacity" | "allocatable" | "hard"
                ) && let Value::Object(q) = v
                {
                    for amount in q.values_mut() {
                        if let Value::Number(n) = amount {
                            *amount = Value::String(n.to_string());
                        }
                    }
                } else {
                    quantities_as_strings(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(quantities_as_strings),
        _ => {}
    }
}

/// Whole-number doubles as integers, everywhere in `value`.
fn integers(value: &mut Value) {
    match value {
        Value::Object(map) => map.values_mut().for_each(integers),
        Value::Array(items) => items.iter_mut().for_each(integers),
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15)
            {
                *value = Value::from(f as i64);
            }
        }
        _ => {}
    }
}

/// Timestamps as Kubernetes writes them (`Z`, not `+00:00`) and
/// IntOrString numbers as integers (`8080`, not `8080.0`). Maps of user
/// data (labels, annotations, data) are left alone but for their numbers.
pub fn kubernetes_forms(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if matches!(
                    key.as_str(),
                    "labels"
                        | "annotations"
                        | "data"
                        | "stringData"
                        | "binaryData"
                        | "nodeSelector"
                ) {
                    // User data: left as written, but for numbers that
                    // travelled as protobuf doubles (a ControllerRevision's
                    // `data` holds a whole template).
                    integers(v);
                    continue;
                }
                if is_time_key(key) {
                    // Only at timestamp fields: user data is left as written.
                    if let Value::String(text) = v
                        && text.len() >= 20
                        && text.ends_with("+00:00")
                    {
                        let trimmed = text.trim_end_matches("+00:00").to_string();
                        *text = format!("{trimmed}Z");
                    }
                } else {
                    kubernetes_forms(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(kubernetes_forms),
        // IntOrString values travel as protobuf doubles.
        Value::Number(_) => integers(value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::core::v1::Pod;

    #[test]
    fn user_data_keeps_its_form_and_timestamps_end_in_z() {
        let mut v = serde_json::json!({
            "metadata": {"creationTimestamp": "2026-11-26T10:00:00+00:00"},
            "spec": {"containers": [{"env": [{"name": "T", "value": "2024-01-01T00:00:00+00:00"}]}]}
        });
        kubernetes_forms(&mut v);
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-11-26T10:00:00Z");
        assert_eq!(
            v["spec"]["containers"][0]["env"][0]["value"],
            "2024-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn objects_read_like_kubernetes_json() {
        let pod: Pod = from_value(serde_json::json!({
            "metadata": {"name": "q", "generation": "3", "deletionGracePeriodSeconds": 30},
            "spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": 1, "memory": 1000}}}]},
            "status": {"containerStatuses": [{"name": "c"}]}
        }))
        .unwrap();
        let v = to_value(&pod).unwrap();
        // 64-bit integers are numbers, as Go clients need them.
        assert_eq!(v["metadata"]["generation"], 3);
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 30);
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        // Fields Kubernetes always writes are there at their zero value.
        let status = &v["status"]["containerStatuses"][0];
        assert_eq!(status["restartCount"], 0);
        assert_eq!(status["ready"], false);
        assert_eq!(status["image"], "");
        assert_eq!(with_type::<Pod>(v)["apiVersion"], "v1");
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let bad = serde_json::json!({
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "imag": "busybox"}]}
        });
        let err = from_value::<Pod>(bad).unwrap_err();
        assert!(
            err.to_string().contains("spec.containers[0]") && err.message.contains("imag"),
            "{err}"
        );
        let err = from_value::<Pod>(serde_json::json!({"metadata": {"name": 5}})).unwrap_err();
        assert!(err.to_string().contains("metadata.name"), "{err}");
    }
}
