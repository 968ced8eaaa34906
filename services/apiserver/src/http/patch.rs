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

/// The most operations a JSON patch may have (Kubernetes' limit).
const MAX_JSON_PATCH_OPS: usize = 10_000;
/// The most bytes a JSON patch's `copy` operations may copy in all (the
/// object limit: more could only make an object the API refuses).
const MAX_COPIED_BYTES: usize = crate::registry::MAX_OBJECT_BYTES;

/// Applies `patch` of type `kind` (not Apply) to `original`.
///
/// # Errors
/// A patch that does not parse or does not apply, in words for the user.
pub fn apply(kind: PatchType, original: &Value, patch: &[u8]) -> Result<Value, String> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| format!("the JSON patch does not parse: {e}"))?;
            if ops.len() > MAX_JSON_PATCH_OPS {
                return Err(format!(
                    "the JSON patch has {} operations, more than the {MAX_JSON_PATCH_OPS} allowed",
                    ops.len()
                ));
            }
            // `copy` can double the object at every step: the copied bytes
            // are counted (Kubernetes' accumulated copy size limit).
            let mut copied = 0usize;
            let mut doc = original.clone();
            for op in ops.iter() {
                if let json_patch::PatchOperation::Copy(copy) = op {
                    copied += doc
                        .pointer(copy.from.as_str())
                        .map_or(0, |v| v.to_string().len());
                    if copied > MAX_COPIED_BYTES {
                        return Err(format!(
                            "the JSON patch copies more than {MAX_COPIED_BYTES} bytes"
                        ));
                    }
                }
                // One at a time, to count what each copy copies; a failed
                // operation fails the whole patch (the copy is dropped).
                json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
            }
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
            Ok(strategic(original, &patch, ""))
        }
        PatchType::Apply => Err("server-side apply is not a merge".into()),
    }
}

/// The merge key of the list at `path` (its field names from the root,
/// list indices left out: `spec.template.spec.containers`) whose items
/// look like `sample`, as Kubernetes' types declare it (`patchMergeKey`);
/// None: the list is replaced whole.
pub(crate) fn merge_key(path: &str, sample: Option<&Value>) -> Option<&'static str> {
    let mut fields = path.rsplit('.');
    let field = fields.next().unwrap_or("");
    let parent = fields.next().unwrap_or("");
    Some(match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => "name",
        ("containers" | "initContainers" | "ephemeralContainers", "env") => "name",
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => "containerPort",
        ("containers" | "initContainers" | "ephemeralContainers", "volumeMounts") => "mountPath",
        ("containers" | "initContainers" | "ephemeralContainers", "volumeDevices") => "devicePath",
        ("containers" | "initContainers" | "ephemeralContainers", "resizePolicy") => "resourceName",
        // A pod spec's (a ServiceAccount's own imagePullSecrets, at the
        // root, are replaced).
        ("spec", "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims") => "name",
        ("spec", "topologySpreadConstraints") => "topologyKey",
        ("spec", "hostAliases") => "ip",
        // A Service's ports.
        ("spec", "ports") if sample.is_some_and(|s| s.get("port").is_some()) => "port",
        ("status", "conditions") => "type",
        ("status", "addresses") => "type",
        ("status", "podIPs" | "hostIPs") => "ip",
        ("metadata", "ownerReferences") => "uid",
        // A ServiceAccount's secrets.
        ("", "secrets") => "name",
        _ => return None,
    })
}

/// Lists of plain values merged as sets (Kubernetes' `merge` strategy on
/// primitives).
fn primitive_merge(path: &str) -> bool {
    matches!(path, "metadata.finalizers" | "spec.podCIDRs")
}

/// `path.field`, or `field` at the root.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// A strategic merge of `patch` into `original`, the value at `path`.
fn strategic(original: &Value, patch: &Value, path: &str) -> Value {
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
            Value::Object(inner)
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") =>
            {
                out.remove(key);
            }
            Value::Object(_) => {
                let merged = strategic(
                    out.get(key).unwrap_or(&Value::Null),
                    value,
                    &join(path, key),
                );
                out.insert(key.clone(), merged);
            }
            Value::Array(items) => {
                let merged = merge_list(out.get(key), items, &join(path, key));
                out.insert(key.clone(), merged);
            }
            other => {
                out.insert(key.clone(), other.clone());
            }
        }
    }
    for (list, order) in orders {
        if let Some(Value::Array(items)) = out.get_mut(&list) {
            reorder(items, &order, merge_key(&join(path, &list), order.first()));
        }
    }
    Value::Object(out)
}

/// Merges the patch's items of the list at `path` into the original's.
fn merge_list(original: Option<&Value>, patch: &[Value], path: &str) -> Value {
    let mut items: Vec<Value> = original
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if primitive_merge(path) && patch.iter().all(|v| !v.is_object()) {
        for item in patch {
            if !items.contains(item) {
                items.push(item.clone());
            }
        }
        return Value::Array(items);
    }
    let Some(key) = merge_key(path, patch.iter().find(|p| p.is_object())) else {
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
            (Some(i), false) => items[i] = strategic(&items[i], item, path),
            (None, false) => items.push(strategic(&Value::Null, item, path)),
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
    fn lists_merge_by_the_key_their_place_declares() {
        // A ServiceAccount's secrets merge by name, its imagePullSecrets
        // are replaced; a pod spec's imagePullSecrets merge.
        let patched = smp(
            json!({"secrets": [{"name": "s1"}, {"name": "s2"}], "imagePullSecrets": [{"name": "a"}]}),
            json!({"secrets": [{"name": "s1", "$patch": "delete"}], "imagePullSecrets": [{"name": "b"}]}),
        );
        assert_eq!(patched["secrets"], json!([{"name": "s2"}]));
        assert_eq!(patched["imagePullSecrets"], json!([{"name": "b"}]));
        let pod = smp(
            json!({"spec": {"imagePullSecrets": [{"name": "a"}]}, "status": {"podIPs": [{"ip": "10.0.0.1"}]}}),
            json!({"spec": {"imagePullSecrets": [{"name": "b"}]}, "status": {"podIPs": [{"ip": "fd00::1"}]}}),
        );
        assert_eq!(
            pod["spec"]["imagePullSecrets"],
            json!([{"name": "a"}, {"name": "b"}])
        );
        assert_eq!(pod["status"]["podIPs"].as_array().unwrap().len(), 2);
        // Endpoints' subsets ports and addresses are replaced.
        let endpoints = smp(
            json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}], "ports": [{"port": 80}]}]}),
            json!({"subsets": [{"addresses": [{"ip": "2.2.2.2"}], "ports": [{"port": 81}]}]}),
        );
        assert_eq!(endpoints["subsets"][0]["ports"], json!([{"port": 81}]));
        // A map is deleted with `$patch: delete`.
        let gone = smp(
            json!({"spec": {"selector": {"a": "1"}, "x": 1}}),
            json!({"spec": {"selector": {"$patch": "delete"}}}),
        );
        assert_eq!(gone, json!({"spec": {"x": 1}}));
    }

    #[test]
    fn json_patches_cannot_blow_an_object_up() {
        let doc = json!({"data": {"k": "x".repeat(1024)}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/c{i}")}))
            .collect();
        let err = apply(
            PatchType::Json,
            &doc,
            Value::Array(ops).to_string().as_bytes(),
        )
        .unwrap_err();
        assert!(err.contains("copies more than"), "{err}");
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
