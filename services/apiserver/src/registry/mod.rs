//! The generic registry: Create / Get / List / Update / UpdateStatus /
//! Delete / Watch for every kind, with Kubernetes' semantics.
//!
//! Every write is a conditional store write on the revision the registry
//! read, so a concurrent writer can never be overwritten silently: a client
//! that sent a resourceVersion gets ABORTED, one that did not is retried
//! against the new state (last write wins).
//!
//! The registry's own state and shared checks are here; each operation
//! sits in a file of its own beside it: `create`, `read` (get, list),
//! `write` (update, update status), `delete`, `watch`, and the
//! subresources and admission steps they use: `binding`, `eviction`
//! (deletes that honour disruption budgets), `admission`
//! (namespace lifecycle, Pod Security, service accounts), `limits`
//! (LimitRanger), `quota` (ResourceQuota charges), `claims`
//! (Service addresses and node ports).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff::Resource as _;
use skiff::pb::api::v1::ListRequest;
use skiff::pb::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use skiff::pb::scheduling::v1::PriorityClass;
use skiff::validation::FieldErrors;
use skiff::wkt::Timestamp;
use skiff_store::Store;

use crate::allocator::{Allocator, Cidr};
use crate::cache::decode;
use crate::error::{ApiError, Result};
use crate::index::Index;
use crate::podsecurity::PodSecurity;
use crate::strategy::{self, Strategy};

mod claims;
use claims::node_ports_of;

mod admission;
mod binding;
mod create;
mod delete;
mod eviction;
mod limits;
pub mod master;
mod quota;
mod read;
mod watch;
pub use watch::Delivery;
mod write;

/// A bootstrapped registry over a new embedded store in `dir`, for tests.
#[cfg(test)]
pub(crate) async fn test_registry(
    dir: &tempfile::TempDir,
) -> (Arc<dyn skiff_store::Store>, Registry) {
    let store: Arc<dyn skiff_store::Store> = Arc::new(
        skiff_store::EmbeddedStore::open(dir.path().join("state.redb")).expect("a new store"),
    );
    let registry = Registry::new(
        Arc::clone(&store),
        Duration::from_secs(10),
        "10.96.0.0/24".parse().expect("a CIDR"),
        30000..=30010,
    );
    registry.bootstrap().await.expect("bootstrap");
    (store, registry)
}

/// The largest object the API stores (etcd's default request limit).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// Keys read per store call while listing with a limit.
const LIST_CHUNK: usize = 500;
/// Attempts of an unconditional update that keeps losing races.
const MAX_RETRIES: usize = 16;
/// Kinds whose deletion may wait for their dependents (Foreground) or
/// release them (Orphan): the owners the garbage collector knows.
pub const OWNER_KINDS: &[&str] = &[
    "ReplicaSet",
    "ReplicationController",
    "Deployment",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
];
pub use skiff::names::{
    FOREGROUND_FINALIZER, NODE_LEASE_NAMESPACE, ORPHAN_FINALIZER, SYSTEM_NAMESPACES,
};
/// A watch of kind `K`: its events until an error, the last item.
pub type WatchStream<K> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<watch::Delivery<K>>> + Send>>;

/// The registry shared by the API actors.
pub struct Registry {
    store: Arc<dyn Store>,
    /// Which namespaces exist, for admission without a store read
    /// (Kubernetes' NamespaceLifecycle admission does the same with an
    /// informer). A name the index does not know yet is looked up in the
    /// store.
    namespaces: Arc<Index<Namespace>>,
    /// The PriorityClasses, for Priority admission without a store read
    /// per pod (Kubernetes' admission reads a lister too).
    priority_classes: Arc<Index<PriorityClass>>,
    /// The ResourceQuotas: a create in a namespace without any is not
    /// charged (and reads no quota).
    quotas: Arc<Index<ResourceQuota>>,
    /// The LimitRanges, for LimitRanger admission of pods and claims.
    limit_ranges: Arc<Index<LimitRange>>,
    /// Namespaces the store had no LimitRange in when the index had none
    /// either, and when that was read: trusted for [`limits::MISS_TTL`],
    /// as Kubernetes' LimitRanger trusts its live lookups, so that pod
    /// creates in namespaces without ranges do not list the store each.
    limit_range_misses: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// The indexes' watch loops; stopped by [`Registry::close`].
    index_tasks: [tokio::task::JoinHandle<()>; 4],
    /// One watch cache per kind (in a cell the kind's watches wait on
    /// while it starts), created on first watch.
    caches: tokio::sync::Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// How often watchers that asked for them get BOOKMARK events.
    bookmark_interval: Duration,
    /// Services' cluster IPs.
    allocator: Allocator,
    /// Whether pods get their service account's token mounted (a cluster
    /// that issues tokens: TLS).
    service_account_tokens: bool,
    /// Pod Security admission's settings.
    pod_security: PodSecurity,
}

/// Whether a failed write surely did not happen (so its claims may go).
fn definite(e: &skiff_store::Error) -> bool {
    matches!(
        e,
        skiff_store::Error::Conflict { .. }
            | skiff_store::Error::NotFound { .. }
            | skiff_store::Error::AlreadyExists { .. }
    )
}

/// The Kubernetes name of a kind in messages: `pods`.
fn kind_name<K: Strategy>() -> String {
    K::PLURAL.to_string()
}

fn object_name(namespace: &str, name: &str) -> String {
    skiff::ObjectRef::new(namespace, name).to_string()
}

fn not_found<K: Strategy>(namespace: &str, name: &str) -> ApiError {
    ApiError::NotFound {
        kind: kind_name::<K>(),
        name: object_name(namespace, name),
    }
}

/// Now, at Kubernetes' timestamp precision (seconds).
pub fn now() -> Timestamp {
    skiff::time::now_seconds()
}

/// Parses a resourceVersion the client sent; "" means none.
fn parse_rv(rv: &str, field: &str) -> Result<Option<i64>> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "{field}: Invalid value: {rv:?}: must be a resourceVersion returned by the server"
            ))
        })
}

/// apiVersion and kind, if the client sent them, must be this kind's.
fn check_type_meta<K: Strategy>(obj: &K) -> Result<()> {
    let (api_version, kind) = obj.type_meta();
    if !kind.is_empty() && kind != K::KIND {
        return Err(ApiError::Invalid(format!(
            "kind: Invalid value: {kind:?}: this is the {} service, which takes kind {:?}; send {kind} objects to its own service",
            K::SERVICE,
            K::KIND
        )));
    }
    if !api_version.is_empty() && api_version != K::API_VERSION {
        return Err(ApiError::Invalid(format!(
            "apiVersion: Invalid value: {api_version:?}: {} is served as {:?}",
            K::KIND,
            K::API_VERSION
        )));
    }
    Ok(())
}

/// Sets the namespace a request addresses: "default" when a namespaced
/// object names none; nothing for cluster-scoped kinds.
fn effective_namespace<K: Strategy>(namespace: &str) -> String {
    match (K::NAMESPACED, namespace.is_empty()) {
        (true, true) => "default".to_string(),
        (true, false) => namespace.to_string(),
        (false, _) => String::new(),
    }
}

/// Checks an object before it is written; returns its encoded form. An
/// update (`before`: the stored object) is not refused for errors the
/// stored object already had.
fn admit<K: Strategy>(obj: &mut K, before: Option<&K>) -> Result<Bytes> {
    let mut errors = FieldErrors::default();
    match obj.metadata() {
        Some(meta) => strategy::validate_metadata::<K>(meta, &mut errors),
        None => errors.required("metadata"),
    }
    obj.validate(&mut errors);
    if before.is_none() {
        obj.validate_create(&mut errors);
    }
    if let Some(before) = before
        && !errors.is_empty()
    {
        let mut had = FieldErrors::default();
        before.validate(&mut had);
        errors.retain_new(&had);
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid(format!(
            "{} {:?} is invalid: {errors}",
            K::KIND,
            obj.name()
        )));
    }
    let bytes = encode_stored(obj);
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::Invalid(format!(
            "{} {:?} is invalid: object is {} bytes, more than the limit of {MAX_OBJECT_BYTES} bytes (1.5 MiB)",
            K::KIND,
            obj.name(),
            bytes.len()
        )));
    }
    Ok(bytes.into())
}

/// The object as the store keeps it: without apiVersion, kind and
/// resourceVersion. Those are taken off `obj` for the encoding and put
/// back (a copy of the whole object cost a create ~3 % of its time).
fn encode_stored<K: Strategy>(obj: &mut K) -> Vec<u8> {
    let type_meta = obj.type_meta();
    if type_meta != ("", "") && type_meta != (K::API_VERSION, K::KIND) {
        // Half a type (only apiVersion, or only kind: `check_type_meta`
        // lets those by) is not what `set_type_meta` would put back.
        let mut stored = obj.clone();
        stored.clear_type_meta();
        stored.metadata_mut().resource_version.clear();
        return stored.encode_to_vec();
    }
    let typed = type_meta != ("", "");
    obj.clear_type_meta();
    let version = std::mem::take(&mut obj.metadata_mut().resource_version);
    let bytes = obj.encode_to_vec();
    obj.metadata_mut().resource_version = version;
    if typed {
        obj.set_type_meta();
    }
    bytes
}

fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels (no words), no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

// === impl Registry ===

impl Registry {
    /// A registry over `store`. Must be called inside a tokio runtime: it
    /// starts the namespace index.
    pub fn new(
        store: Arc<dyn Store>,
        bookmark_interval: Duration,
        service_cidr: Cidr,
        node_ports: std::ops::RangeInclusive<u16>,
    ) -> Self {
        let (namespaces, namespace_task) = Index::start(Arc::clone(&store));
        let (priority_classes, class_task) = Index::start(Arc::clone(&store));
        let (quotas, quota_task) = Index::start(Arc::clone(&store));
        let (limit_ranges, range_task) = Index::start(Arc::clone(&store));
        Self {
            allocator: Allocator::new(Arc::clone(&store), service_cidr, node_ports),
            namespaces,
            priority_classes,
            quotas,
            limit_ranges,
            limit_range_misses: Default::default(),
            index_tasks: [namespace_task, class_task, quota_task, range_task],
            store,
            caches: tokio::sync::Mutex::new(HashMap::new()),
            bookmark_interval,
            service_account_tokens: false,
            pod_security: PodSecurity::default(),
        }
    }

    /// The registry, judging pods by `settings` (Pod Security admission;
    /// by default `baseline` is enforced everywhere but `kube-system`).
    pub fn with_pod_security(mut self, settings: PodSecurity) -> Self {
        self.pod_security = settings;
        self
    }

    /// The registry, mounting service-account tokens into the pods it
    /// creates (Kubernetes' ServiceAccount admission) when `on`.
    pub fn with_service_account_tokens(mut self, on: bool) -> Self {
        self.service_account_tokens = on;
        self
    }

    /// Stops the registry's own background work (the namespace index), so
    /// that the store can be released once the last call is gone.
    pub fn close(&self) {
        for task in &self.index_tasks {
            task.abort();
        }
    }

    /// Creates the namespaces and priority classes that always exist and,
    /// in a new cluster, the default StorageClass (`local-path`; once: an administrator may
    /// change or delete it).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn bootstrap(&self) -> Result<()> {
        // A new cluster (no `default` namespace yet) gets its default class
        // first: a crash after it still leaves a cluster with both.
        let default_ns = skiff::keys::object::<Namespace>("", "default");
        if self.read::<Namespace>(&default_ns).await?.is_none() {
            self.create_default_storage_class().await?;
        }
        // Kubernetes' two system priority classes, always there (a
        // deleted one comes back at the next start).
        for (name, value) in strategy::SYSTEM_CLASSES {
            let mut class = PriorityClass {
                value: *value,
                description: if name.contains("node") {
                    "Used for system critical pods that must not be moved from their current node."
                } else {
                    "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."
                }
                .into(),
                ..Default::default()
            };
            class.metadata_mut().name = (*name).to_string();
            match self.create(class).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for name in SYSTEM_NAMESPACES {
            let mut ns = Namespace::default();
            ns.metadata_mut().name = (*name).to_string();
            match self.create(ns).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Claims no Service holds (a crash between claim and write) go.
        let services = self.list::<Service>(ListRequest::default()).await?;
        let as_of: i64 = services
            .metadata
            .as_ref()
            .and_then(|m| m.resource_version.parse().ok())
            .unwrap_or(0);
        let held: std::collections::HashSet<String> = services
            .items
            .iter()
            .flat_map(|s| {
                let ports = node_ports_of(s).into_iter().map(|p| p.to_string());
                std::iter::once(s.cluster_ip()).chain(ports)
            })
            .filter(|claim| !claim.is_empty())
            .collect();
        let released = self.allocator.repair(&held, as_of).await?;
        if released > 0 {
            tracing::info!(released, "released cluster IPs no service holds");
        }
        Ok(())
    }

    /// Adds the class of Skiff's local provisioner, as the default one (as
    /// k3s ships local-path).
    async fn create_default_storage_class(&self) -> Result<()> {
        let mut local_path = skiff::pb::storage::v1::StorageClass {
            provisioner: skiff::names::LOCAL_PATH_PROVISIONER.into(),
            reclaim_policy: Some("Delete".into()),
            volume_binding_mode: Some("WaitForFirstConsumer".into()),
            ..Default::default()
        };
        let meta = local_path.metadata_mut();
        meta.name = skiff::names::LOCAL_PATH_CLASS.into();
        meta.annotations
            .insert(skiff::names::DEFAULT_CLASS_ANNOTATION.into(), "true".into());
        match self.create(local_path).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The objects of an index in `namespace`: from the index once it has
    /// listed, else from the store.
    pub(super) async fn indexed<K: Strategy>(
        &self,
        index: &Index<K>,
        namespace: &str,
    ) -> Result<Vec<Arc<K>>> {
        if index.is_synced() {
            return Ok(index.list(Some(namespace)));
        }
        self.listed(namespace).await
    }

    /// The objects of kind `K` in `namespace`, from the store.
    pub(super) async fn listed<K: Strategy>(&self, namespace: &str) -> Result<Vec<Arc<K>>> {
        let list = self
            .list::<K>(ListRequest {
                namespace: namespace.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(K::list_parts(list).1.into_iter().map(Arc::new).collect())
    }

    async fn read<K: Strategy>(&self, key: &str) -> Result<Option<(K, i64)>> {
        let Some(kv) = self.store.get(key).await? else {
            return Ok(None);
        };
        let obj = decode::<K>(&kv.value, kv.mod_revision)
            .ok_or_else(|| ApiError::Internal(format!("undecodable {} at {key}", K::KIND)))?;
        Ok(Some((obj, kv.mod_revision)))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use skiff::Resource as _;
    use skiff::pb::core::v1::Pod;
    use skiff::pb::meta::v1::ObjectMeta;

    use super::encode_stored;

    fn pod(api_version: &str, kind: &str) -> Pod {
        Pod {
            api_version: api_version.into(),
            kind: kind.into(),
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                resource_version: "42".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What is stored has no apiVersion, kind or resourceVersion, and the
    /// object the caller goes on with is as it was, however the client
    /// sent its type (both, none, or one of the two).
    #[test]
    fn the_stored_encoding_leaves_out_type_and_version_and_the_object_as_it_was() {
        for (api_version, kind) in [("v1", "Pod"), ("", ""), ("", "Pod"), ("v1", "")] {
            let sent = pod(api_version, kind);
            let mut obj = sent.clone();
            let stored = Pod::decode(encode_stored(&mut obj).as_slice()).unwrap();
            assert_eq!(obj, sent, "sent as ({api_version:?}, {kind:?})");
            assert_eq!(stored.type_meta(), ("", ""));
            let meta = stored.metadata.unwrap();
            assert_eq!(
                (meta.name.as_str(), meta.resource_version.as_str()),
                ("web", "")
            );
        }
    }
}
