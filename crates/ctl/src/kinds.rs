//! Every kind the API serves, behind one object-safe interface over JSON
//! values: the commands work on any kind by name (`pods`, `po`,
//! `deployment.apps`), and the typed protobuf client does the talking.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff::Resource;
use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff_client::Api;
use tonic::transport::Channel;

/// What a kind is called and how it is scoped.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// `Deployment`.
    pub kind: &'static str,
    /// `deployments`.
    pub plural: &'static str,
    /// `deploy`.
    pub short_names: &'static [&'static str],
    /// `apps/v1`.
    pub api_version: &'static str,
    /// Lives in a namespace.
    pub namespaced: bool,
}

impl KindInfo {
    /// The API group (`""` for core).
    pub fn group(&self) -> &'static str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// Whether `name` names this kind: the kind, its plural, singular or a
    /// short name, case-insensitively, optionally with `.group`.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        let (name, group) = match name.split_once('.') {
            Some((n, g)) => (n.to_string(), Some(g.to_string())),
            None => (name, None),
        };
        if group.is_some_and(|g| g != self.group()) {
            return false;
        }
        name == self.kind.to_lowercase()
            || name == self.plural
            || self.short_names.contains(&name.as_str())
    }
}

/// A typed object as JSON, and the calls on its kind.
#[async_trait::async_trait]
pub trait Ops: Send + Sync {
    /// Names and scope.
    fn info(&self) -> KindInfo;
    /// Reads a manifest into the kind's type and back: the manifest's
    /// errors name the field (`spec.template.spec.containers[0].imag`).
    ///
    /// # Errors
    /// The field and what is wrong with it.
    fn check(&self, value: &Value) -> Result<Value, String>;
    /// One object.
    async fn get(
        &self,
        channel: &Channel,
        namespace: &str,
        name: &str,
    ) -> Result<Value, tonic::Status>;
    /// Objects in `namespace` ("" for all) that the selectors pick; and the
    /// list's resourceVersion.
    async fn list(
        &self,
        channel: &Channel,
        namespace: &str,
        labels: &str,
        fields: &str,
    ) -> Result<(Vec<Value>, String), tonic::Status>;
    /// Creates the object (with `dry_run`, the server only checks).
    async fn create(
        &self,
        channel: &Channel,
        value: Value,
        dry_run: bool,
    ) -> Result<Value, tonic::Status>;
    /// Replaces the object's spec and metadata (with `dry_run`, the server
    /// only checks).
    async fn update(
        &self,
        channel: &Channel,
        value: Value,
        dry_run: bool,
    ) -> Result<Value, tonic::Status>;
    /// Changes from `version` on: (ADDED|MODIFIED|DELETED, object).
    async fn watch(
        &self,
        channel: &Channel,
        namespace: &str,
        labels: &str,
        fields: &str,
        version: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<(String, Value), tonic::Status>>,
        tonic::Status,
    >;
    /// Deletes the object.
    async fn delete(
        &self,
        channel: &Channel,
        namespace: &str,
        name: &str,
        propagation: &str,
    ) -> Result<Value, tonic::Status>;
}

fn api<K: Resource>(channel: &Channel, dry_run: bool) -> Api<K> {
    let api = Api::<K>::new(channel.clone());
    if dry_run { api.dry_run() } else { api }
}

/// [`Ops`] for kind `K`.
pub struct Typed<K>(PhantomData<fn() -> K>);

fn to_value<K: Serialize>(obj: &K) -> Result<Value, tonic::Status> {
    let mut value = serde_json::to_value(obj)
        .map_err(|e| tonic::Status::internal(format!("encoding as JSON: {e}")))?;
    numbers(&mut value);
    required_defaults(&mut value);
    Ok(value)
}

/// Fields Kubernetes' schemas require that proto3 JSON leaves out when they
/// hold their zero value (a restartCount of 0, an empty machineID).
/// A field and the zero value it gets when missing.
type ZeroField = (&'static str, fn() -> Value);

const REQUIRED: &[(&str, &[ZeroField])] = &[
    (
        "containerStatuses",
        &[
            ("ready", || Value::Bool(false)),
            ("restartCount", || Value::from(0)),
            ("image", empty),
            ("imageID", empty),
        ],
    ),
    (
        "initContainerStatuses",
        &[
            ("ready", || Value::Bool(false)),
            ("restartCount", || Value::from(0)),
            ("image", empty),
            ("imageID", empty),
        ],
    ),
];

fn empty() -> Value {
    Value::String(String::new())
}

/// The nodeInfo fields, all required.
const NODE_INFO: &[&str] = &[
    "machineID",
    "systemUUID",
    "bootID",
    "kernelVersion",
    "osImage",
    "containerRuntimeVersion",
    "kubeletVersion",
    "kubeProxyVersion",
    "operatingSystem",
    "architecture",
];

/// A DaemonSet status's counts, all required.
const DAEMONSET_COUNTS: &[&str] = &[
    "currentNumberScheduled",
    "desiredNumberScheduled",
    "numberMisscheduled",
    "numberReady",
];

fn required_defaults(value: &mut Value) {
    let daemonset = value.get("kind").and_then(Value::as_str) == Some("DaemonSet");
    let Some(status) = value.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    if daemonset {
        for key in DAEMONSET_COUNTS {
            status
                .entry(key.to_string())
                .or_insert_with(|| Value::from(0));
        }
    }
    for (field, defaults) in REQUIRED {
        if let Some(Value::Array(items)) = status.get_mut(*field) {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                for (key, default) in *defaults {
                    item.entry(key.to_string()).or_insert_with(default);
                }
            }
        }
    }
    if let Some(info) = status.get_mut("nodeInfo").and_then(Value::as_object_mut) {
        for key in NODE_INFO {
            info.entry(key.to_string())
                .or_insert_with(|| Value::String(String::new()));
        }
    }
}

/// The proto's int64 fields: proto3 JSON writes them as strings, Kubernetes
/// manifests as numbers.
const INT64_FIELDS: &[&str] = &[
    "activeDeadlineSeconds",
    "capacity",
    "deletionGracePeriodSeconds",
    "expirationSeconds",
    "fsGroup",
    "generation",
    "observedGeneration",
    "remainingItemCount",
    "runAsGroup",
    "runAsUser",
    "seconds",
    "sizeBytes",
    "supplementalGroups",
    "terminationGracePeriodSeconds",
    "tolerationSeconds",
];

/// Fields that hold a protobuf Timestamp.
fn is_time_key(key: &str) -> bool {
    key.ends_with("Timestamp")
        || key.ends_with("Time")
        || matches!(key, "startedAt" | "finishedAt" | "timeAdded")
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

/// Turns the int64 fields' strings back into numbers, so that objects
/// print as valid Kubernetes manifests. Maps of user data (labels,
/// annotations, data) are left alone.
pub fn numbers(value: &mut Value) {
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
                    continue;
                }
                if is_time_key(key) {
                    // RFC 3339 in UTC as Kubernetes writes it: `Z`, not
                    // `+00:00` (only at timestamp fields: user data is left
                    // as written).
                    if let Value::String(text) = v
                        && text.len() >= 20
                        && text.ends_with("+00:00")
                    {
                        let trimmed = text.trim_end_matches("+00:00").to_string();
                        *text = format!("{trimmed}Z");
                    }
                } else if INT64_FIELDS.contains(&key.as_str()) {
                    match v {
                        Value::String(s) => {
                            if let Ok(n) = s.parse::<i64>() {
                                *v = Value::from(n);
                            }
                        }
                        Value::Array(items) => {
                            for item in items.iter_mut() {
                                if let Some(n) = item.as_str().and_then(|s| s.parse::<i64>().ok()) {
                                    *item = Value::from(n);
                                }
                            }
                        }
                        _ => numbers(v),
                    }
                } else {
                    numbers(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(numbers),
        // IntOrString values travel as protobuf doubles: `8080`, not `8080.0`.
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

fn from_value<K: DeserializeOwned>(value: Value) -> Result<K, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Sets `apiVersion` and `kind` (list items come without them).
fn with_type<K: Resource>(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(K::API_VERSION.into()));
        map.insert("kind".into(), Value::String(K::KIND.into()));
    }
    value
}

#[async_trait::async_trait]
impl<K> Ops for Typed<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    fn info(&self) -> KindInfo {
        KindInfo {
            kind: K::KIND,
            plural: K::PLURAL,
            short_names: K::SHORT_NAMES,
            api_version: K::API_VERSION,
            namespaced: K::NAMESPACED,
        }
    }

    fn check(&self, value: &Value) -> Result<Value, String> {
        let mut value = value.clone();
        quantities_as_strings(&mut value);
        let obj: K = from_value(value)?;
        to_value(&obj).map_err(|s| s.message().to_string())
    }

    async fn get(
        &self,
        channel: &Channel,
        namespace: &str,
        name: &str,
    ) -> Result<Value, tonic::Status> {
        let obj = Api::<K>::new(channel.clone()).get(namespace, name).await?;
        Ok(with_type::<K>(to_value(&obj)?))
    }

    async fn list(
        &self,
        channel: &Channel,
        namespace: &str,
        labels: &str,
        fields: &str,
    ) -> Result<(Vec<Value>, String), tonic::Status> {
        let api = Api::<K>::new(channel.clone());
        let mut items = Vec::new();
        let mut token = String::new();
        let version;
        loop {
            let page = api
                .list(ListRequest {
                    namespace: namespace.to_string(),
                    label_selector: labels.to_string(),
                    field_selector: fields.to_string(),
                    limit: 500,
                    r#continue: token.clone(),
                })
                .await?;
            let (meta, objects) = K::list_parts(page);
            for obj in objects {
                items.push(with_type::<K>(to_value(&obj)?));
            }
            if meta.r#continue.is_empty() {
                version = meta.resource_version.clone();
                break;
            }
            token = meta.r#continue;
        }
        Ok((items, version))
    }

    async fn watch(
        &self,
        channel: &Channel,
        namespace: &str,
        labels: &str,
        fields: &str,
        version: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<(String, Value), tonic::Status>>,
        tonic::Status,
    > {
        use futures::StreamExt as _;
        let stream = Api::<K>::new(channel.clone())
            .watch(skiff::pb::api::v1::WatchRequest {
                namespace: namespace.to_string(),
                label_selector: labels.to_string(),
                field_selector: fields.to_string(),
                resource_version: version.to_string(),
                allow_bookmarks: false,
            })
            .await?;
        let events = stream.filter_map(|event| async move {
            match event {
                Err(s) => Some(Err(s)),
                Ok(event) => {
                    let (kind, obj) = K::event_parts(event);
                    let obj = obj?;
                    let value = to_value(&obj).map(with_type::<K>);
                    Some(value.map(|v| (kind.as_str_name().to_string(), v)))
                }
            }
        });
        Ok(events.boxed())
    }

    async fn create(
        &self,
        channel: &Channel,
        value: Value,
        dry_run: bool,
    ) -> Result<Value, tonic::Status> {
        let obj: K = from_value(value).map_err(tonic::Status::invalid_argument)?;
        let created = api::<K>(channel, dry_run).create(obj).await?;
        Ok(with_type::<K>(to_value(&created)?))
    }

    async fn update(
        &self,
        channel: &Channel,
        value: Value,
        dry_run: bool,
    ) -> Result<Value, tonic::Status> {
        let obj: K = from_value(value).map_err(tonic::Status::invalid_argument)?;
        let updated = api::<K>(channel, dry_run).update(obj).await?;
        Ok(with_type::<K>(to_value(&updated)?))
    }

    async fn delete(
        &self,
        channel: &Channel,
        namespace: &str,
        name: &str,
        propagation: &str,
    ) -> Result<Value, tonic::Status> {
        let gone = Api::<K>::new(channel.clone())
            .delete(DeleteRequest {
                namespace: namespace.to_string(),
                name: name.to_string(),
                propagation_policy: propagation.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(with_type::<K>(to_value(&gone)?))
    }
}

macro_rules! registry {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        /// Every kind the API serves.
        pub fn all() -> Vec<Box<dyn Ops>> {
            vec![$(Box::new(Typed::<$ty>(PhantomData)) as Box<dyn Ops>,)*]
        }
    };
}

skiff::for_each_kind!(registry);

/// The kind a command-line name means (`po`, `pods`, `Pod`,
/// `deployments.apps`).
pub fn find(name: &str) -> Option<Box<dyn Ops>> {
    all().into_iter().find(|k| k.info().matches(name))
}

/// The kind a manifest's `apiVersion` and `kind` name.
pub fn for_manifest(api_version: &str, kind: &str) -> Option<Box<dyn Ops>> {
    all()
        .into_iter()
        .find(|k| k.info().kind == kind && k.info().api_version == api_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_answer_to_kubectl_names() {
        assert_eq!(find("po").unwrap().info().kind, "Pod");
        assert_eq!(find("deployments.apps").unwrap().info().kind, "Deployment");
        assert_eq!(find("Deployment").unwrap().info().kind, "Deployment");
        assert_eq!(find("svc").unwrap().info().kind, "Service");
        assert!(find("deployments.batch").is_none());
        assert!(find("widgets").is_none());
    }

    #[test]
    fn user_data_keeps_its_form_and_numeric_quantities_read() {
        let mut v = serde_json::json!({
            "metadata": {"creationTimestamp": "2026-11-26T10:00:00+00:00", "generation": "3"},
            "spec": {"containers": [{"env": [{"name": "T", "value": "2024-01-01T00:00:00+00:00"}]}]}
        });
        numbers(&mut v);
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-11-26T10:00:00Z");
        assert_eq!(v["metadata"]["generation"], 3);
        assert_eq!(
            v["spec"]["containers"][0]["env"][0]["value"],
            "2024-01-01T00:00:00+00:00"
        );
        let pod = serde_json::json!({
            "metadata": {"name": "q"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1, "memory": 1000}}}]}
        });
        let checked = find("pods").unwrap().check(&pod).unwrap();
        assert_eq!(
            checked["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let pods = find("pods").unwrap();
        let bad = serde_json::json!({
            "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "c", "imag": "busybox"}]}
        });
        let err = pods.check(&bad).unwrap_err();
        assert!(
            err.contains("spec.containers[0]") && err.contains("imag"),
            "{err}"
        );
        let wrong_type = serde_json::json!({"metadata": {"name": 5}});
        let err = pods.check(&wrong_type).unwrap_err();
        assert!(err.contains("metadata.name"), "{err}");
    }
}
