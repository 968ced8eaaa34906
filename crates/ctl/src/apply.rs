//! `apply` and `create`: manifests into the cluster.
//!
//! Apply creates what does not exist and otherwise replaces what the
//! manifest says (every top-level field but metadata and status), merging
//! labels and annotations the way kubectl does through the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation: keys the
//! previous apply set and this one drops are removed, keys others set are
//! kept. The update carries the object's resourceVersion, so a concurrent
//! change makes it fail (ABORTED) instead of being overwritten; a write that
//! changes nothing is `unchanged`.

use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::kinds::Ops;
use crate::manifest::Document;

/// The annotation holding the last applied manifest.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It changed.
    Configured,
    /// It already was so.
    Unchanged,
}

impl Outcome {
    /// kubectl's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

/// `deployment.apps/web`, as kubectl names objects.
pub fn object_name(ops: &dyn Ops, name: &str) -> String {
    let info = ops.info();
    let group = info.group();
    let kind = info.kind.to_lowercase();
    if group.is_empty() {
        format!("{kind}/{name}")
    } else {
        format!("{kind}.{group}/{name}")
    }
}

/// The namespace a document goes to: its own, else `default_ns`; none for
/// cluster-scoped kinds.
pub fn namespace_of(doc: &Document, default_ns: &str) -> String {
    if !doc.ops.info().namespaced {
        return String::new();
    }
    match doc.value["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => default_ns.to_string(),
    }
}

fn metadata_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value["metadata"].is_object() {
        value["metadata"] = Value::Object(Map::new());
    }
    value["metadata"]
        .as_object_mut()
        .expect("just made an object")
}

/// The manifest as sent: its namespace set, status dropped, and the
/// last-applied annotation recording it.
fn prepared(doc: &Document, namespace: &str) -> Value {
    let mut value = doc.value.clone();
    skiff::json::kubernetes_forms(&mut value);
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    if !namespace.is_empty() {
        metadata_mut(&mut value).insert("namespace".into(), Value::String(namespace.into()));
    }
    let record = value.to_string();
    let meta = metadata_mut(&mut value);
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(LAST_APPLIED.into(), Value::String(record));
    }
    value
}

/// How a dry run is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Not: the change is made.
    None,
    /// The client checks the manifest and compares; nothing is sent.
    Client,
    /// The server defaults, validates and admits, and writes nothing.
    Server,
}

/// Applies one document.
///
/// # Errors
/// What the API said (invalid, conflict, not reachable ...).
pub async fn apply(
    channel: &Channel,
    doc: &Document,
    default_ns: &str,
    dry_run: DryRun,
) -> Result<Outcome, tonic::Status> {
    let namespace = namespace_of(doc, default_ns);
    let desired = prepared(doc, &namespace);
    let live = match doc.ops.get(channel, &namespace, doc.name()).await {
        Ok(live) => Some(live),
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(s),
    };
    let Some(live) = live else {
        if dry_run != DryRun::Client {
            doc.ops
                .create(channel, desired, dry_run == DryRun::Server)
                .await?;
        }
        return Ok(Outcome::Created);
    };
    let mut live = live;
    for _ in 0..5 {
        let last: Value = live["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let mut next = merge(&live, &last, &desired);
        if let Some(map) = next.as_object_mut() {
            // The status is the server's; sending the one read is allowed,
            // but none is simpler.
            map.remove("status");
        }
        if dry_run == DryRun::Client {
            return Ok(if next == strip_status(&live) {
                Outcome::Unchanged
            } else {
                Outcome::Configured
            });
        }
        match doc
            .ops
            .update(channel, next, dry_run == DryRun::Server)
            .await
        {
            Ok(written) => {
                let before = live["metadata"]["resourceVersion"].as_str();
                let after = written["metadata"]["resourceVersion"].as_str();
                return Ok(if before == after {
                    Outcome::Unchanged
                } else {
                    Outcome::Configured
                });
            }
            // Changed meanwhile (a controller wrote its status): merge again.
            Err(s) if s.code() == tonic::Code::Aborted => {
                live = doc.ops.get(channel, &namespace, doc.name()).await?;
            }
            Err(s) => return Err(s),
        }
    }
    Err(tonic::Status::aborted(format!(
        "{} keeps changing; try again",
        object_name(&*doc.ops, doc.name())
    )))
}

fn strip_status(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    value
}

/// kubectl apply's three-way merge, over JSON: the live object, with every
/// field the manifest sets overlaid (objects merged key by key, lists and
/// values replaced), and every field the previous apply set but this one
/// dropped removed. Fields others set (replicas after a scale, nodeName,
/// ownerReferences, finalizers, controller annotations) stay.
pub fn merge(live: &Value, last: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(live_map), Value::Object(desired_map)) => {
            let mut merged = live_map.clone();
            if let Value::Object(last_map) = last {
                for key in last_map.keys() {
                    if !desired_map.contains_key(key) {
                        merged.remove(key);
                    }
                }
            }
            for (key, want) in desired_map {
                let value = match merged.get(key) {
                    Some(have) => merge(have, last.get(key).unwrap_or(&Value::Null), want),
                    None => want.clone(),
                };
                merged.insert(key.clone(), value);
            }
            Value::Object(merged)
        }
        _ => desired.clone(),
    }
}

/// Creates one document (an existing object is an error).
///
/// # Errors
/// What the API said: ALREADY_EXISTS, INVALID_ARGUMENT ...
pub async fn create(
    channel: &Channel,
    doc: &Document,
    default_ns: &str,
    dry_run: DryRun,
) -> Result<(), tonic::Status> {
    let namespace = namespace_of(doc, default_ns);
    let mut value = doc.value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    if !namespace.is_empty() {
        metadata_mut(&mut value).insert("namespace".into(), Value::String(namespace));
    }
    if dry_run != DryRun::Client {
        doc.ops
            .create(channel, value, dry_run == DryRun::Server)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_dropped_from_the_manifest_go_and_others_stay() {
        let live = json!({"a": "1", "b": "2", "by-controller": "x"});
        let last = json!({"a": "1", "b": "2"});
        let desired = json!({"a": "10"});
        assert_eq!(
            merge(&live, &last, &desired),
            json!({"a": "10", "by-controller": "x"})
        );
    }

    #[test]
    fn fields_others_set_survive_a_reapply() {
        let live = json!({
            "metadata": {"name": "web", "resourceVersion": "7", "ownerReferences": [{"uid": "u"}]},
            "spec": {"replicas": 5, "nodeName": "n1", "template": {"image": "a"}}
        });
        let last = json!({"metadata": {"name": "web"}, "spec": {"template": {"image": "a"}}});
        let desired = json!({"metadata": {"name": "web"}, "spec": {"template": {"image": "b"}}});
        let merged = merge(&live, &last, &desired);
        assert_eq!(merged["spec"]["replicas"], 5, "scaled by someone else");
        assert_eq!(merged["spec"]["nodeName"], "n1");
        assert_eq!(merged["spec"]["template"]["image"], "b");
        assert_eq!(merged["metadata"]["resourceVersion"], "7");
        assert_eq!(merged["metadata"]["ownerReferences"][0]["uid"], "u");
        let dropped = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let after = merge(
            &merged,
            &dropped,
            &json!({"metadata": {"name": "web"}, "spec": {}}),
        );
        assert!(
            after["spec"].get("replicas").is_none(),
            "a field the last apply set and this one dropped goes"
        );
    }
}
