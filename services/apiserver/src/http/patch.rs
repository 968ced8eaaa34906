//! The patch types of `PATCH` besides server-side apply: JSON patch
//! (RFC 6902), JSON merge patch (RFC 7386) and Kubernetes' strategic merge
//! patch, which merges lists of objects by their merge key (containers by
//! name, ports by number, ...) instead of replacing them, and reads the
//! `$patch`, `$setElementOrder`, `$deleteFromPrimitiveList` and
//! `$retainKeys` directives.

use serde_json::Value;

/// A patch's type, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

/// The patch types, as Content-Types.
pub const MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

impl PatchType {
    /// The type a Content-Type names.
    pub fn of(content_type: &str) -> Option<Self> {
        let base = content_type.split(';').next().unwrap_or("").trim();
        Some(match base {
            "application/json-patch+json" => Self::Json,
            "application/merge-patch+json" => Self::Merge,
            "application/strategic-merge-patch+json" => Self::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Self::Apply,
            _ => return None,
        })
    }
}

/// Applies `patch` of type `kind` (not Apply) to `original`.
///
/// # Errors
/// A patch that does not parse or does not apply, in words for the user.
pub fn apply(kind: PatchType, original: &Value, patch: &[u8]) -> Result<Value, String> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| format!("the JSON patch does not parse: {e}"))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| e.to_string())?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| format!("the merge patch does not parse: {e}"))?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| format!("the strategic merge patch does not parse: {e}"))?;
            if !patch.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            Ok(strategic(original, &patch))
        }
        PatchType::Apply => Err("server-side apply is not a merge".into()),
    }
}

/// The merge key of the list at field `field` whose items look like
/// `sample` (Kubernetes' `patchMergeKey`); None: the list is replaced.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "schedulingGates"
        | "resourceClaims" => "name",
        "ports" => {
            // A container's ports merge by number, a Service's by port.
            let has = |key| sample.and_then(|s| s.get(key)).is_some();
            if has("containerPort") || !has("port") {
                "containerPort"
            } else {
                "port"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        "hostAliases" => "ip",
        _ => return None,
    })
}

/// Lists of plain values merged as sets (Kubernetes' `merge` strategy on
/// primitives).
fn primitive_merge(field: &str) -> bool {
    field == "finalizers"
}

/// A strategic merge of `patch` into `original`.
fn strategic(original: &Value, patch: &Value) -> Value {
    let Some(patch_map) = patch.as_object() else {
        return patch.clone();
    };
    if patch_map.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch_map.clone();
        replaced.remove("$patch");
        return Value::Object(replaced);
    }
    let mut out = original.as_object().cloned().unwrap_or_default();
    if let Some(Value::Array(keep)) = patch_map.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$setElementOrder/") {
            if let Value::Array(order) = value {
                orders.push((list.to_string(), order.clone()));
            }
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) = (out.get_mut(list), value) {
                items.retain(|item| !gone.contains(item));
            }
            continue;
        }
        match value {
            Value::Null => {
                out.remove(key);
            }
            Value::Object(_) => {
                let merged = strategic(out.get(key).unwrap_or(&Value::Null), value);
                out.insert(key.clone(), merged);
            }
            Value::Array(items) => {
                let merged = merge_list(out.get(key), items, key);
                out.insert(key.clone(), merged);
            }
            other => {
                out.insert(key.clone(), other.clone());
            }
        }
    }
    for (list, order) in orders {
        if let Some(Value::Array(items)) = out.get_mut(&list) {
            reorder(items, &order, merge_key(&list, order.first()));
        }
    }
    Value::Object(out)
}

/// Merges the patch's items of the list at `field` into the original's.
fn merge_list(original: Option<&Value>, patch: &[Value], field: &str) -> Value {
    let mut items: Vec<Value> = original
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if primitive_merge(field) && patch.iter().all(|v| !v.is_object()) {
        for item in patch {
            if !items.contains(item) {
                items.push(item.clone());
            }
        }
        return Value::Array(items);
    }
    let Some(key) = merge_key(field, patch.iter().find(|p| p.is_object())) else {
        return Value::Array(patch.to_vec());
    };
    // `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            patch
                .iter()
                .filter(|p| p.get("$patch").is_none())
                .cloned()
                .collect(),
        );
    }
    for item in patch {
        let Some(id) = item.get(key) else {
            items.push(item.clone());
            continue;
        };
        let at = items.iter().position(|o| o.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                items.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => items[i] = strategic(&items[i], item),
            (None, false) => items.push(strategic(&Value::Null, item)),
        }
    }
    Value::Array(items)
}

/// Puts `items` in the order `$setElementOrder` gives; items it does not
/// name keep their place after the named ones.
fn reorder(items: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let id = |v: &Value| match key {
        Some(key) => v.get(key).cloned(),
        None => Some(v.clone()),
    };
    let mut ordered = Vec::with_capacity(items.len());
    for wanted in order {
        let wanted = id(wanted);
        if let Some(i) = items.iter().position(|item| id(item) == wanted) {
            ordered.push(items.remove(i));
        }
    }
    ordered.append(items);
    *items = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(original: Value, patch: Value) -> Value {
        apply(
            PatchType::Strategic,
            &original,
            patch.to_string().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn strategic_merge_merges_containers_by_name_and_ports_by_number() {
        let original = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}});
        let patched = smp(
            original,
            json!({"spec": {"containers": [
                {"name": "b", "image": "b:2"},
                {"name": "a", "ports": [{"containerPort": 443}]}
            ]}}),
        );
        let containers = patched["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "a:1");
        assert_eq!(containers[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(containers[1]["image"], "b:2");
    }

    #[test]
    fn strategic_merge_reads_its_directives() {
        let original = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                     "tolerations": [{"key": "k"}]}
        });
        let patched = smp(
            original,
            json!({
                "metadata": {"labels": {"a": null}, "finalizers": ["y"]},
                "spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}],
                    "tolerations": [{"key": "t"}]
                }
            }),
        );
        assert_eq!(patched["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(patched["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            patched["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}])
        );
        // Lists without a merge key are replaced.
        assert_eq!(patched["spec"]["tolerations"], json!([{"key": "t"}]));
        let replaced = smp(
            json!({"spec": {"selector": {"a": "1"}}}),
            json!({"spec": {"selector": {"$patch": "replace", "b": "2"}}}),
        );
        assert_eq!(replaced["spec"]["selector"], json!({"b": "2"}));
    }

    #[test]
    fn services_merge_ports_by_port() {
        let patched = smp(
            json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
        );
        assert_eq!(
            patched["spec"]["ports"],
            json!([{"port": 80, "name": "http", "targetPort": 8080}, {"port": 443}])
        );
    }

    #[test]
    fn json_and_merge_patches_follow_their_rfcs() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1}});
        let patched = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"replace","path":"/spec/replicas","value":3},{"op":"add","path":"/metadata/labels/b","value":"2"}]"#,
        )
        .unwrap();
        assert_eq!(patched["spec"]["replicas"], 3);
        assert_eq!(patched["metadata"]["labels"]["b"], "2");
        let failed = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"test","path":"/spec/replicas","value":2}]"#,
        );
        assert!(failed.is_err());
        let merged = apply(
            PatchType::Merge,
            &doc,
            br#"{"metadata":{"labels":{"a":null}},"spec":{"replicas":2}}"#,
        )
        .unwrap();
        assert_eq!(
            merged,
            json!({"metadata": {"labels": {}}, "spec": {"replicas": 2}})
        );
    }
}
