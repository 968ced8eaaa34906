//! Kinds Kubernetes 1.35 still serves in a second version: each is
//! stored once, in the version Skiff's protos define, and shown in the
//! other through a lossless conversion of its JSON, both ways, as
//! Kubernetes converts through its internal form. What the other version
//! has no field for travels in annotations, as Kubernetes keeps it:
//!
//! - `autoscaling/v1` HorizontalPodAutoscaler (stored as `autoscaling/v2`):
//!   one CPU utilization target; other metrics, behavior, current
//!   metrics and conditions in `autoscaling.alpha.kubernetes.io/*`.
//! - `events.k8s.io/v1` Event (stored as core `v1`): the same event under
//!   its newer names (`regarding`, `note`, `deprecatedSource`, ...).

use serde_json::{Map, Value, json};

/// A version of a stored kind served besides its own.
pub struct View {
    /// As served: `autoscaling`, `v1`.
    pub group: &'static str,
    pub version: &'static str,
    /// The stored kind's group and version (its `proto/kinds.tsv` line).
    pub stored_group: &'static str,
    pub stored_version: &'static str,
    /// Its plural, the same in both.
    pub plural: &'static str,
    /// The stored JSON shown in this version.
    pub to_view: fn(Value) -> Value,
    /// This version's JSON read into the stored one.
    pub from_view: fn(Value) -> Value,
    /// Field selector names of this version → the stored kind's.
    pub selectors: &'static [(&'static str, &'static str)],
}

/// Every such version.
pub static VIEWS: &[View] = &[
    View {
        group: "autoscaling",
        version: "v1",
        stored_group: "autoscaling",
        stored_version: "v2",
        plural: "horizontalpodautoscalers",
        to_view: hpa_to_v1,
        from_view: hpa_from_v1,
        selectors: &[],
    },
    View {
        group: "events.k8s.io",
        version: "v1",
        stored_group: "",
        stored_version: "v1",
        plural: "events",
        to_view: event_to_events_v1,
        from_view: event_from_events_v1,
        selectors: &[
            ("regarding.kind", "involvedObject.kind"),
            ("regarding.namespace", "involvedObject.namespace"),
            ("regarding.name", "involvedObject.name"),
            ("regarding.uid", "involvedObject.uid"),
            ("regarding.apiVersion", "involvedObject.apiVersion"),
            (
                "regarding.resourceVersion",
                "involvedObject.resourceVersion",
            ),
            ("regarding.fieldPath", "involvedObject.fieldPath"),
            ("reportingController", "reportingComponent"),
            ("deprecatedSource", "source"),
        ],
    },
];

/// The view served at `group/version/resource`, if that is one.
pub fn view_at(group: &str, version: &str, resource: &str) -> Option<&'static View> {
    VIEWS
        .iter()
        .find(|v| v.group == group && v.version == version && v.plural == resource)
}

impl View {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// A field selector of this version in the stored kind's names.
    pub fn stored_selector(&self, selector: &str) -> String {
        selector
            .split(',')
            .map(|term| {
                let at = term.find(['=', '!']).unwrap_or(term.len());
                let (field, rest) = term.split_at(at);
                let field = self
                    .selectors
                    .iter()
                    .find(|(view, _)| *view == field.trim())
                    .map_or(field, |(_, stored)| stored);
                format!("{field}{rest}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `apiVersion` set to this version's, where the object names one
    /// (list items do not).
    pub fn shown(&self, value: Value) -> Value {
        let mut value = (self.to_view)(value);
        if let Some(version) = value.get_mut("apiVersion") {
            *version = json!(self.api_version());
        }
        value
    }

    /// The stored form of this version's object, `apiVersion` the stored
    /// kind's where the object names one.
    pub fn stored(&self, value: Value) -> Value {
        let mut value = (self.from_view)(value);
        if let Some(version) = value.get_mut("apiVersion") {
            *version = json!(if self.stored_group.is_empty() {
                self.stored_version.to_string()
            } else {
                format!("{}/{}", self.stored_group, self.stored_version)
            });
        }
        value
    }
}

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";

/// Moves `value` into the annotation `key` as JSON text (nothing for
/// null or an empty list).
fn to_annotation(object: &mut Value, key: &str, value: Option<Value>) {
    let Some(value) = value.filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    else {
        return;
    };
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let metadata = object.entry("metadata").or_insert_with(|| json!({}));
    if let Some(metadata) = metadata.as_object_mut() {
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(key.into(), json!(value.to_string()));
        }
    }
}

/// Takes the annotation `key` back out as JSON (an empty annotation map
/// left behind is removed).
fn from_annotation(object: &mut Value, key: &str) -> Option<Value> {
    let metadata = object.get_mut("metadata")?.as_object_mut()?;
    let annotations = metadata.get_mut("annotations")?.as_object_mut()?;
    let text = annotations.remove(key)?;
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    serde_json::from_str(text.as_str()?).ok()
}

/// Whether a v2 metric is the CPU utilization target v1 has a field for.
fn is_cpu_utilization(metric: &Value, part: &str) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric
            .pointer(&format!("/resource/{part}/averageUtilization"))
            .is_some()
        && (part == "current"
            || metric
                .pointer("/resource/target/type")
                .and_then(Value::as_str)
                == Some("Utilization"))
}

/// autoscaling/v2 → v1.
fn hpa_to_v1(mut hpa: Value) -> Value {
    let spec = hpa
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .map(std::mem::take);
    if let Some(mut spec) = spec {
        let metrics = spec.remove("metrics");
        let mut others = Vec::new();
        for metric in metrics
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default()
        {
            if is_cpu_utilization(&metric, "target")
                && !spec.contains_key("targetCPUUtilizationPercentage")
            {
                spec.insert(
                    "targetCPUUtilizationPercentage".into(),
                    metric["resource"]["target"]["averageUtilization"].clone(),
                );
            } else {
                others.push(metric);
            }
        }
        let behavior = spec.remove("behavior");
        hpa["spec"] = Value::Object(spec);
        to_annotation(&mut hpa, METRICS, Some(Value::Array(others)));
        to_annotation(&mut hpa, BEHAVIOR, behavior);
    }
    let status = hpa
        .get_mut("status")
        .and_then(Value::as_object_mut)
        .map(std::mem::take);
    if let Some(mut status) = status {
        let mut others = Vec::new();
        let current = status.remove("currentMetrics");
        for metric in current
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default()
        {
            if is_cpu_utilization(&metric, "current")
                && !status.contains_key("currentCPUUtilizationPercentage")
            {
                status.insert(
                    "currentCPUUtilizationPercentage".into(),
                    metric["resource"]["current"]["averageUtilization"].clone(),
                );
            } else {
                others.push(metric);
            }
        }
        let conditions = status.remove("conditions");
        hpa["status"] = Value::Object(status);
        to_annotation(&mut hpa, CURRENT_METRICS, Some(Value::Array(others)));
        to_annotation(&mut hpa, CONDITIONS, conditions);
    }
    hpa
}

/// autoscaling/v1 → v2.
fn hpa_from_v1(mut hpa: Value) -> Value {
    let mut metrics = Vec::new();
    let mut spec = hpa
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .map(std::mem::take);
    if let Some(target) = spec
        .as_mut()
        .and_then(|s| s.remove("targetCPUUtilizationPercentage"))
        .filter(|t| !t.is_null())
    {
        metrics.push(json!({
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }));
    }
    if let Some(Value::Array(more)) = from_annotation(&mut hpa, METRICS) {
        metrics.extend(more);
    }
    let behavior = from_annotation(&mut hpa, BEHAVIOR);
    if let Some(mut spec) = spec.take() {
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(behavior) = behavior {
            spec.insert("behavior".into(), behavior);
        }
        hpa["spec"] = Value::Object(spec);
    }
    let mut current = Vec::new();
    let mut status = hpa
        .get_mut("status")
        .and_then(Value::as_object_mut)
        .map(std::mem::take);
    if let Some(cpu) = status
        .as_mut()
        .and_then(|s| s.remove("currentCPUUtilizationPercentage"))
        .filter(|c| !c.is_null())
    {
        current.push(json!({
            "type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": cpu}},
        }));
    }
    if let Some(Value::Array(more)) = from_annotation(&mut hpa, CURRENT_METRICS) {
        current.extend(more);
    }
    let conditions = from_annotation(&mut hpa, CONDITIONS);
    if let Some(mut status) = status.take() {
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(conditions) = conditions {
            status.insert("conditions".into(), conditions);
        }
        hpa["status"] = Value::Object(status);
    }
    hpa
}

/// Core v1 Event field names → events.k8s.io/v1's.
const EVENT_NAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn renamed(value: Value, from_core: bool) -> Value {
    let Value::Object(fields) = value else {
        return value;
    };
    let out: Map<String, Value> = fields
        .into_iter()
        .map(|(key, v)| {
            let name = EVENT_NAMES
                .iter()
                .find(|(core, new)| if from_core { *core == key } else { *new == key })
                .map_or(key.clone(), |(core, new)| {
                    if from_core { new } else { core }.to_string()
                });
            (name, v)
        })
        .collect();
    Value::Object(out)
}

/// Core v1 → events.k8s.io/v1.
fn event_to_events_v1(event: Value) -> Value {
    renamed(event, true)
}

/// events.k8s.io/v1 → core v1.
fn event_from_events_v1(event: Value) -> Value {
    renamed(event, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa_v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75}}}],
                "conditions": [{"type": "AbleToScale", "status": "True"}],
            },
        })
    }

    #[test]
    fn an_autoscaler_reads_in_v1_and_back_without_loss() {
        let view = view_at("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v1 = view.shown(hpa_v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(v1["spec"].get("metrics").is_none());
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        let kept: Value =
            serde_json::from_str(v1["metadata"]["annotations"][METRICS].as_str().unwrap()).unwrap();
        assert_eq!(kept[0]["resource"]["name"], "memory");
        assert_eq!(view.stored(v1), hpa_v2());
    }

    #[test]
    fn a_v1_autoscaler_is_a_cpu_target() {
        let view = view_at("autoscaling", "v1", "horizontalpodautoscalers").unwrap();
        let v2 = view.stored(json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50},
        }));
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert!(v2["metadata"].get("annotations").is_none());
    }

    #[test]
    fn events_read_under_their_new_names_and_back() {
        let view = view_at("events.k8s.io", "v1", "events").unwrap();
        let core = json!({
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "hi",
            "source": {"component": "skiff-agent"}, "count": 2, "reason": "Started",
        });
        let new = view.shown(core.clone());
        assert_eq!(new["apiVersion"], "events.k8s.io/v1");
        assert_eq!(new["regarding"]["name"], "p");
        assert_eq!(new["note"], "hi");
        assert_eq!(new["deprecatedCount"], 2);
        assert_eq!(view.stored(new), core);
        assert_eq!(
            view.stored_selector("regarding.name=p,reason!=x"),
            "involvedObject.name=p,reason!=x"
        );
    }
}
