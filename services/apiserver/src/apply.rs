//! Server-side apply on objects as JSON: a manager's applied
//! configuration merged into the live object, with Kubernetes' field
//! ownership (`metadata.managedFields`, FieldsV1 tries).
//!
//! - The fields an applied configuration sets become its manager's
//!   (`operation: Apply`); lists merge by their merge key where Kubernetes
//!   declares one (containers by name, ports, env, ...), else they are
//!   one field (atomic).
//! - A field another manager owns and the configuration sets to another
//!   value is a conflict (409, one cause per field) unless `force`, which
//!   takes the field over.
//! - A field the manager applied before and applies no longer is removed,
//!   unless another manager owns it too.
//!
//! - Other writes record their fields too (`operation: Update`, see
//!   [`record_update`]): a field changed by `kubectl scale` or a
//!   controller is theirs, so an applier that sets it otherwise conflicts,
//!   as on Kubernetes. Tracked when the writer names itself
//!   (`fieldManager`) on create, and on every update of an object that has
//!   managed fields.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field: the FieldsV1 keys from the root (`f:spec`, `k:{"name":"c"}`,
/// `.` for a list item itself).
type Path = Vec<String>;

/// Fields of an object no manager owns (the server's, or identity).
const UNMANAGED: &[&str] = &["apiVersion", "kind", "status"];
const UNMANAGED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Who writes, for field ownership: the request's `fieldManager`, or a
/// name for the client (its user), and whether the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    /// The manager's name.
    pub manager: String,
    /// Whether the client named it (creates are tracked only then).
    pub explicit: bool,
}

tokio::task_local! {
    /// The writer of the call being served (set by the door, carried to
    /// the API actor with the call).
    static WRITER: Writer;
}

/// Runs `work` as written by `writer` (None: nobody in particular).
pub async fn as_writer<F: std::future::Future>(writer: Option<Writer>, work: F) -> F::Output {
    match writer {
        Some(writer) => WRITER.scope(writer, work).await,
        None => work.await,
    }
}

/// The writer of the call being served, if the door named one.
pub fn writer() -> Option<Writer> {
    WRITER.try_with(Clone::clone).ok()
}

fn entry(
    manager: &str,
    operation: &str,
    api_version: &str,
    now: &str,
    set: &BTreeSet<Path>,
) -> Value {
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": to_trie(set),
    })
}

/// The managed fields after `manager` changed `old` into `new` by a write
/// other than apply: the fields it changed become its own (`Update`) and
/// nobody else's; fields that are gone are nobody's.
pub fn record_update(
    old: &Value,
    new: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
) -> Vec<Value> {
    let mut entries: Vec<Value> = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let all: BTreeSet<Path> = fields(old).union(&fields(new)).cloned().collect();
    let changed: BTreeSet<Path> = all
        .into_iter()
        .filter(|p| {
            if p.last().is_some_and(|l| l == ".") {
                at(old, p).is_none() != at(new, p).is_none()
            } else {
                at(old, p) != at(new, p)
            }
        })
        .collect();
    entries.retain(|e| {
        e.get("fieldsV1")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    });
    if changed.is_empty() {
        return entries;
    }
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Update")
    };
    let mut mine: BTreeSet<Path> = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| from_trie(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    for entry in entries.iter_mut().filter(|e| !is_mine(e)) {
        let mut theirs = from_trie(entry.get("fieldsV1").unwrap_or(&Value::Null));
        let before = theirs.len();
        theirs.retain(|p| !changed.contains(p));
        if theirs.len() != before {
            entry["fieldsV1"] = to_trie(&theirs);
        }
    }
    mine.extend(changed.iter().filter(|p| at(new, p).is_some()).cloned());
    mine.retain(|p| at(new, p).is_some());
    entries.retain(|e| !is_mine(e));
    if !mine.is_empty() {
        entries.push(entry(manager, "Update", api_version, now, &mine));
    }
    entries.retain(|e| {
        e.get("fieldsV1")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    });
    entries
}

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Fields another manager owns with another value: (manager, field as
    /// Kubernetes prints it: `.spec.replicas`).
    Conflicts(Vec<(String, String)>),
}

impl Error {
    /// Kubernetes' message: `Apply failed with 1 conflict: conflict with
    /// "kubectl": .spec.replicas`.
    pub fn message(&self) -> String {
        let Error::Conflicts(conflicts) = self;
        if let [(manager, field)] = conflicts.as_slice() {
            return format!("Apply failed with 1 conflict: conflict with {manager:?}: {field}");
        }
        let mut managers: Vec<&String> = conflicts.iter().map(|(m, _)| m).collect();
        managers.dedup();
        let mut text = format!("Apply failed with {} conflicts:", conflicts.len());
        for manager in managers {
            text.push_str(&format!(" conflicts with {manager:?}:"));
            for (_, field) in conflicts.iter().filter(|(m, _)| m == manager) {
                text.push_str(&format!("\n- {field}"));
            }
        }
        text
    }
}

/// `config` (the manager's whole intent) applied to `live` (None: the
/// object does not exist yet) by `manager`: the object to write, its
/// `metadata.managedFields` set. `now` is the entry's time (RFC 3339).
///
/// # Errors
/// Conflicts with other managers' fields, unless `force`.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
    now: &str,
) -> Result<Value, Error> {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("status");
    }
    let mut entries: Vec<Value> = live
        .and_then(|l| l.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
    };
    let before: BTreeSet<Path> = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| from_trie(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .unwrap_or_default();
    let wanted = fields(&config);
    let empty = json!({});
    let live_value = live.unwrap_or(&empty);
    // Conflicts: another manager's field set to another value.
    let mut conflicts = Vec::new();
    for entry in entries.iter_mut().filter(|e| !is_mine(e)) {
        let other = entry
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut theirs = from_trie(entry.get("fieldsV1").unwrap_or(&Value::Null));
        let clashing: Vec<Path> = wanted
            .iter()
            .filter(|p| p.last().is_some_and(|l| l != "."))
            .filter(|p| theirs.contains(*p))
            .filter(|p| at(live_value, p) != at(&config, p))
            .cloned()
            .collect();
        if clashing.is_empty() {
            continue;
        }
        if force {
            for p in &clashing {
                theirs.remove(p);
            }
            entry["fieldsV1"] = to_trie(&theirs);
        } else {
            conflicts.extend(clashing.iter().map(|p| (other.clone(), printed(p))));
        }
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflicts(conflicts));
    }
    let others: BTreeSet<Path> = entries
        .iter()
        .filter(|e| !is_mine(e))
        .flat_map(|e| from_trie(e.get("fieldsV1").unwrap_or(&Value::Null)))
        .collect();
    let mut merged = live_value.clone();
    merge(&mut merged, &config, "");
    // What this manager applied before and no longer does, and nobody
    // else owns, goes: the deepest first.
    let mut gone: Vec<&Path> = before
        .difference(&wanted)
        .filter(|p| !others.contains(*p))
        .filter(|p| !others.iter().any(|o| o.starts_with(p) && o.len() > p.len()))
        .collect();
    gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in gone {
        remove(&mut merged, path);
    }
    entries.retain(|e| !is_mine(e));
    entries.retain(|e| {
        e.get("fieldsV1")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
    });
    entries.push(entry(manager, "Apply", api_version, now, &wanted));
    if let Some(meta) = merged
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
    Ok(merged)
}

/// The field names along `path` (`spec.template.spec.containers`), for the
/// merge-key table.
fn names(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The merge key of the list at `path` whose items look like `sample`.
fn key_of(path: &str, sample: Option<&Value>) -> Option<&'static str> {
    crate::http::patch::merge_key(path, sample)
}

/// The fields a configuration sets.
fn fields(config: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    if let Some(map) = config.as_object() {
        for (key, value) in map {
            if UNMANAGED.contains(&key.as_str()) {
                continue;
            }
            if key == "metadata" {
                if let Some(meta) = value.as_object() {
                    for (k, v) in meta {
                        if k == "annotations" {
                            // The server's trace annotation is nobody's.
                            let mut own = v.clone();
                            if let Some(map) = own.as_object_mut() {
                                map.remove(skiff_telemetry::TRACE_ANNOTATION);
                            }
                            if own.as_object().is_some_and(|m| !m.is_empty()) {
                                walk(
                                    &own,
                                    &mut vec!["f:metadata".into(), "f:annotations".into()],
                                    "metadata.annotations",
                                    &mut out,
                                );
                            }
                            continue;
                        }
                        if !UNMANAGED_META.contains(&k.as_str()) {
                            walk(
                                v,
                                &mut vec!["f:metadata".into(), format!("f:{k}")],
                                &names("metadata", k),
                                &mut out,
                            );
                        }
                    }
                }
                continue;
            }
            walk(value, &mut vec![format!("f:{key}")], key, &mut out);
        }
    }
    out
}

fn walk(value: &Value, path: &mut Path, names_path: &str, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                walk(v, path, &names(names_path, k), out);
                path.pop();
            }
        }
        Value::Array(items) => match key_of(names_path, items.first()) {
            Some(key) if items.iter().all(|i| i.get(key).is_some()) => {
                for item in items {
                    path.push(item_key(item, key));
                    let mut marker = path.clone();
                    marker.push(".".into());
                    out.insert(marker);
                    if let Some(map) = item.as_object() {
                        for (k, v) in map {
                            path.push(format!("f:{k}"));
                            walk(v, path, &names(names_path, k), out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// `k:{"name":"c"}` for a list item by its key (ports: with the protocol,
/// as Kubernetes' list-map keys).
fn item_key(item: &Value, key: &str) -> String {
    let mut keys = Map::new();
    keys.insert(
        key.to_string(),
        item.get(key).cloned().unwrap_or(Value::Null),
    );
    if key == "containerPort" || key == "port" {
        keys.insert(
            "protocol".into(),
            item.get("protocol").cloned().unwrap_or(json!("TCP")),
        );
    }
    format!("k:{}", Value::Object(keys))
}

/// The value at `path`, if any.
fn at<'a>(value: &'a Value, path: &Path) -> Option<&'a Value> {
    let mut current = value;
    for element in path {
        current = step(current, element)?;
    }
    Some(current)
}

fn step<'a>(value: &'a Value, element: &str) -> Option<&'a Value> {
    if element == "." {
        return Some(value);
    }
    if let Some(field) = element.strip_prefix("f:") {
        return value.get(field);
    }
    let keys: Map<String, Value> = serde_json::from_str(element.strip_prefix("k:")?).ok()?;
    value
        .as_array()?
        .iter()
        .find(|item| matches_keys(item, &keys))
}

fn matches_keys(item: &Value, keys: &Map<String, Value>) -> bool {
    keys.iter().all(|(k, v)| {
        let found = item.get(k);
        found == Some(v) || (k == "protocol" && found.is_none() && v == "TCP")
    })
}

/// Removes the field at `path` (a list item for `[..., k:{..}, "."]`).
fn remove(value: &mut Value, path: &Path) {
    let (last, parent) = match path.split_last() {
        Some((last, parent)) if last == "." => match parent.split_last() {
            Some((item, grand)) => (item, grand),
            None => return,
        },
        Some(split) => split,
        None => return,
    };
    let mut current = value;
    for element in parent {
        let next = if let Some(field) = element.strip_prefix("f:") {
            current.get_mut(field)
        } else {
            let keys: Option<Map<String, Value>> = element
                .strip_prefix("k:")
                .and_then(|k| serde_json::from_str(k).ok());
            match (keys, current.as_array_mut()) {
                (Some(keys), Some(items)) => items.iter_mut().find(|i| matches_keys(i, &keys)),
                _ => None,
            }
        };
        let Some(next) = next else {
            return;
        };
        current = next;
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = current.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(keys) = last
        .strip_prefix("k:")
        .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
        && let Some(items) = current.as_array_mut()
    {
        items.retain(|i| !matches_keys(i, &keys));
    }
}

/// Merges `config` into `live`: maps key by key, lists with a merge key
/// item by item, everything else replaced.
fn merge(live: &mut Value, config: &Value, names_path: &str) {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) => {
            for (k, v) in config {
                let path = names(names_path, k);
                match live.get_mut(k) {
                    Some(existing) => merge(existing, v, &path),
                    None => {
                        live.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(live), Value::Array(config)) => {
            let Some(key) = key_of(names_path, config.first())
                .filter(|k| config.iter().all(|i| i.get(*k).is_some()))
            else {
                *live = config.clone();
                return;
            };
            for item in config {
                let id = item.get(key);
                match live.iter_mut().find(|l| l.get(key) == id) {
                    Some(existing) => merge(existing, item, names_path),
                    None => live.push(item.clone()),
                }
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// A FieldsV1 trie of `paths`.
fn to_trie(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for element in path {
            node = node
                .entry(element.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("trie nodes are objects");
        }
    }
    Value::Object(root)
}

/// The paths of a FieldsV1 trie: its leaves and its `.` markers.
fn from_trie(trie: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    fn visit(node: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let Some(map) = node.as_object() else {
            return;
        };
        for (k, v) in map {
            path.push(k.clone());
            if v.as_object().is_some_and(Map::is_empty) {
                out.insert(path.clone());
            } else {
                visit(v, path, out);
            }
            path.pop();
        }
    }
    visit(trie, &mut Vec::new(), &mut out);
    out
}

/// A field as Kubernetes prints it in conflicts:
/// `.spec.template.spec.containers[name="c"].image`.
fn printed(path: &Path) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(field) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(keys) = element
            .strip_prefix("k:")
            .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
        {
            let inner: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", inner.join(",")));
        }
    }
    out
}

#[cfg(test)]
mod tests;
