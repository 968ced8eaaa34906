//! Every kind the API serves, behind one object-safe interface over JSON
//! values: the commands work on any kind by name (`pods`, `po`,
//! `deployment.apps`), and the typed protobuf client does the talking.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use skiff::Resource;
use skiff::json::{from_value, with_type};
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
    skiff::json::to_value(obj)
        .map_err(|e| tonic::Status::internal(format!("encoding as JSON: {e}")))
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
        let obj: K = from_value(value.clone())?;
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
}
