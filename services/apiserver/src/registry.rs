//! The generic registry: Create / Get / List / Update / UpdateStatus /
//! Delete / Watch for every kind, with Kubernetes' semantics.
//!
//! Every write is a conditional store write on the revision the registry
//! read, so a concurrent writer can never be overwritten silently: a client
//! that sent a resourceVersion gets ABORTED, one that did not is retried
//! against the new state (last write wins).

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use skiff::pb::api::v1::{DeleteRequest, EventType, GetRequest, ListRequest, WatchRequest};
use skiff::pb::core::v1::{Binding, Namespace, Service, ServiceAccount};
use skiff::pb::meta::v1::ListMeta;
use skiff::selector::{FieldSelector, LabelSelector};
use skiff::validation::FieldErrors;
use skiff::wkt::Timestamp;
use skiff::{Resource as _, keys};
use skiff_store::{EventKind, ListOptions, Store};
use tokio::sync::mpsc;

use crate::allocator::{Allocator, Cidr};
use crate::cache::{Change, WatchCache, decode};
use crate::error::{ApiError, Result};
use crate::index::Index;
use crate::podsecurity::PodSecurity;
use crate::strategy::{self, Strategy};

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
    "Job",
    "CronJob",
];
/// The finalizer of a Foreground deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an Orphan deletion.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// Events buffered per watch response stream.
const WATCH_STREAM_BUFFER: usize = 256;
/// Where nodes' heartbeat Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// A watch response stream of kind `K`.
pub type WatchStream<K> = tokio_stream::wrappers::ReceiverStream<
    Result<<K as skiff::Resource>::WatchEvent, tonic::Status>,
>;

/// The registry shared by the API actors.
pub struct Registry {
    store: Arc<dyn Store>,
    /// Which namespaces exist, for admission without a store read
    /// (Kubernetes' NamespaceLifecycle admission does the same with an
    /// informer). A name the index does not know yet is looked up in the
    /// store.
    namespaces: Arc<Index<Namespace>>,
    /// The index's watch loop; stopped by [`Registry::close`].
    index_task: tokio::task::JoinHandle<()>,
    /// One watch cache per kind, created on first watch.
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

/// A Service's cluster IP cannot change: an update without one keeps the
/// one it has.
///
/// # Errors
/// INVALID_ARGUMENT when the update changes or drops it.
fn keep_cluster_ip<K: Strategy>(current: &K, next: &mut K) -> Result<()> {
    let held = current.cluster_ip();
    match next.cluster_ip_request() {
        Some(Some(ip)) if !held.is_empty() && ip != held => Err(ApiError::Invalid(format!(
            "spec.clusterIP: Invalid value: {ip:?}: field is immutable (it is {held:?})"
        ))),
        Some(None) if !held.is_empty() => {
            next.set_cluster_ip(&held);
            Ok(())
        }
        None if !held.is_empty() => Err(ApiError::Invalid(format!(
            "spec.clusterIP: Invalid value: \"None\": field is immutable (it is {held:?}); delete and re-create the service"
        ))),
        Some(_) if held.is_empty() && current.cluster_ip_request().is_none() => Err(ApiError::Invalid(
            "spec.type: a service without a cluster IP (headless or ExternalName) cannot get one by an update; delete and re-create it".into(),
        )),
        _ => Ok(()),
    }
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

/// As [`definite`], for the API's errors.
fn definite_api(e: &ApiError) -> bool {
    !matches!(e, ApiError::Unavailable(_) | ApiError::Internal(_))
}

/// The node ports an object holds.
fn node_ports_of<K: Strategy>(obj: &K) -> Vec<u16> {
    obj.node_port_requests()
        .into_iter()
        .filter_map(|(_, np, _, _)| np)
        .collect()
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

/// Checks an object before it is written; returns its encoded form.
fn admit<K: Strategy>(obj: &K) -> Result<Bytes> {
    let mut errors = FieldErrors::default();
    match obj.metadata() {
        Some(meta) => strategy::validate_metadata::<K>(meta, &mut errors),
        None => errors.required("metadata"),
    }
    obj.validate(&mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid(format!(
            "{} {:?} is invalid: {errors}",
            K::KIND,
            obj.name()
        )));
    }
    let mut stored = obj.clone();
    stored.clear_type_meta();
    stored.metadata_mut().resource_version.clear();
    let bytes = stored.encode_to_vec();
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

fn random_suffix() -> String {
    // Kubernetes' alphabet: no vowels (no words), no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A position in a paged list: the revision of the first page and the
/// last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

impl ContinueToken {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str) -> Result<Self> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(|| {
                ApiError::Invalid(
                    "continue: Invalid value: not a token returned by this server's List".into(),
                )
            })
    }
}

/// What a list or watch selects.
struct Filter {
    /// Only keys under this prefix (the namespace).
    prefix: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new<K: Strategy>(namespace: &str, labels: &str, fields: &str) -> Result<Self> {
        if K::NAMESPACED
            && !namespace.is_empty()
            && let Err(reason) = skiff::validation::is_dns1123_label(namespace)
        {
            return Err(ApiError::Invalid(format!(
                "namespace: Invalid value: {namespace:?}: {reason}"
            )));
        }
        let labels = LabelSelector::parse(labels)
            .map_err(|e| ApiError::Invalid(format!("labelSelector: {e}")))?;
        let allowed = strategy::selectable_fields::<K>();
        let fields = FieldSelector::parse_with(fields, &allowed)
            .map_err(|e| ApiError::Invalid(format!("fieldSelector: {e}")))?;
        Ok(Self {
            prefix: keys::list::<K>(namespace),
            labels,
            fields,
        })
    }

    fn matches<K: Strategy>(&self, key: &str, obj: &K) -> bool {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        let labels = obj.metadata().map_or(&NO_LABELS, |m| &m.labels);
        key.starts_with(&self.prefix)
            && (self.labels.is_empty() || self.labels.matches(labels))
            && (self.fields.is_empty() || self.fields.matches(|f| strategy::field_value(obj, f)))
    }

    /// What a change means to this watcher: a change that makes an object
    /// start (stop) matching is an ADDED (DELETED) event for it.
    fn classify<K: Strategy>(&self, change: &Change<K>) -> Option<EventType> {
        let old = change
            .prev
            .as_ref()
            .is_some_and(|p| self.matches(&change.key, &**p));
        if change.kind == EventKind::Delete && change.prev.is_none() {
            // The deleted object's last state is unknown (compacted): every
            // watcher of its namespace hears of the delete.
            return change
                .key
                .starts_with(&self.prefix)
                .then_some(EventType::Deleted);
        }
        let new = change.kind == EventKind::Put && self.matches(&change.key, &*change.object);
        match (old, new) {
            (false, true) => Some(EventType::Added),
            (true, true) => Some(EventType::Modified),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        }
    }
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
        let (namespaces, index_task) = Index::start(Arc::clone(&store));
        Self {
            allocator: Allocator::new(Arc::clone(&store), service_cidr, node_ports),
            namespaces,
            index_task,
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
        self.index_task.abort();
    }

    /// Creates the namespaces that always exist.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn bootstrap(&self) -> Result<()> {
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

    /// Claims the cluster IP `obj` asks for (and records it in `obj`);
    /// returns what to release if the write then fails.
    async fn claim_cluster_ip<K: Strategy>(&self, obj: &mut K) -> Result<Option<String>> {
        let Some(wanted) = obj.cluster_ip_request() else {
            return Ok(None);
        };
        let wanted = match wanted {
            Some(text) => Some(text.parse::<std::net::Ipv4Addr>().map_err(|_| {
                ApiError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {text:?}: must be a valid IPv4 address, \"None\", or empty"
                ))
            })?),
            None => None,
        };
        let owner = object_name(obj.namespace(), obj.name());
        let ip = self.allocator.claim(wanted, &owner).await?.to_string();
        obj.set_cluster_ip(&ip);
        Ok(Some(ip))
    }

    /// Gives `obj`'s ports their node ports: the ones asked for (claimed
    /// unless `current` holds them), the ones `current` gave the same port,
    /// or free ones. Returns the ports newly claimed (to release if the
    /// write fails).
    async fn claim_node_ports<K: Strategy>(
        &self,
        current: Option<&K>,
        obj: &mut K,
    ) -> Result<Vec<u16>> {
        let held: Vec<(i32, String, u16)> = current
            .map(|c| {
                c.node_port_requests()
                    .into_iter()
                    .filter_map(|(_, np, port, proto)| np.map(|n| (port, proto, n)))
                    .collect()
            })
            .unwrap_or_default();
        let owner = object_name(obj.namespace(), obj.name());
        let requests = obj.node_port_requests();
        // The same node port asked for twice is refused before anything is
        // claimed.
        for (i, wanted, _, _) in &requests {
            if let Some(np) = wanted
                && requests[..*i].iter().any(|(_, w, _, _)| w == &Some(*np))
            {
                return Err(ApiError::Invalid(format!(
                    "spec.ports[{i}].nodePort: Duplicate value: {np}"
                )));
            }
        }
        let mut newly = Vec::new();
        let mut used: Vec<u16> = Vec::new();
        for (i, wanted, port, proto) in requests {
            let field = format!("spec.ports[{i}].nodePort");
            if let Some(np) = wanted
                && used.contains(&np)
            {
                self.release_ports(&newly, &owner).await;
                return Err(ApiError::Invalid(format!("{field}: Duplicate value: {np}")));
            }
            let wanted = wanted.or_else(|| {
                held.iter()
                    .find(|(p, pr, np)| *p == port && *pr == proto && !used.contains(np))
                    .map(|(_, _, np)| *np)
            });
            let given = match wanted {
                Some(np) if held.iter().any(|(_, _, h)| *h == np) => Ok(np),
                Some(np) => self
                    .allocator
                    .claim_port(Some(np), &owner, &field)
                    .await
                    .inspect(|p| newly.push(*p)),
                None => match held.iter().find(|(p, pr, _)| *p == port && *pr == proto) {
                    Some((_, _, np)) => Ok(*np),
                    None => self
                        .allocator
                        .claim_port(None, &owner, &field)
                        .await
                        .inspect(|p| newly.push(*p)),
                },
            };
            match given {
                Ok(np) => {
                    used.push(np);
                    obj.set_node_port(i, np);
                }
                Err(e) => {
                    self.release_ports(&newly, &owner).await;
                    return Err(e);
                }
            }
        }
        Ok(newly)
    }

    async fn release_ports(&self, ports: &[u16], owner: &str) {
        for port in ports {
            self.allocator.release_port(*port, owner).await;
        }
    }

    /// Releases what a deleted object held (a Service's address and ports).
    async fn release_claims<K: Strategy>(&self, gone: &K) {
        let owner = object_name(gone.namespace(), gone.name());
        let ip = gone.cluster_ip();
        if !ip.is_empty() {
            self.allocator.release(&ip, &owner).await;
        }
        self.release_ports(&node_ports_of(gone), &owner).await;
    }

    async fn read<K: Strategy>(&self, key: &str) -> Result<Option<(K, i64)>> {
        let Some(kv) = self.store.get(key).await? else {
            return Ok(None);
        };
        let obj = decode::<K>(&kv.value, kv.mod_revision)
            .ok_or_else(|| ApiError::Internal(format!("undecodable {} at {key}", K::KIND)))?;
        Ok(Some((obj, kv.mod_revision)))
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let terminating = |namespace: &str| {
            ApiError::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            ))
        };
        let terminating_now = self.namespaces.get("", namespace).map(|ns| {
            ns.metadata()
                .is_some_and(|m| m.deletion_timestamp.is_some())
        });
        match terminating_now {
            Some(false) => return Ok(()),
            Some(true) => return Err(terminating(namespace)),
            None => {}
        }
        let key = keys::object::<Namespace>("", namespace);
        match self.read::<Namespace>(&key).await? {
            None => Err(ApiError::NotFound {
                kind: "namespaces".into(),
                name: namespace.to_string(),
            }),
            Some((ns, _))
                if ns
                    .metadata()
                    .is_some_and(|m| m.deletion_timestamp.is_some()) =>
            {
                Err(terminating(namespace))
            }
            Some(_) => Ok(()),
        }
    }

    /// Pod Security admission (see [`crate::podsecurity`]) by the
    /// namespace's labels as the index has them; a refusal is judged again
    /// against the stored namespace, which a label just written may be
    /// ahead of the index with.
    ///
    /// # Errors
    /// PERMISSION_DENIED with Kubernetes' words.
    async fn admit_pod_security<K: Strategy>(&self, obj: &K) -> Result<()> {
        let Some(judged) = obj.pod_security() else {
            return Ok(());
        };
        let namespace = obj.namespace();
        let name = obj.name();
        let labels_of = |ns: &Namespace| {
            ns.metadata
                .as_ref()
                .map(|m| m.labels.clone())
                .unwrap_or_default()
        };
        let cached = self.namespaces.get("", namespace).map(|ns| labels_of(&ns));
        let judge = |labels: &BTreeMap<String, String>| {
            self.pod_security
                .admit(namespace, labels, (K::PLURAL, name), judged)
        };
        match judge(&cached.clone().unwrap_or_default()) {
            Ok(()) => Ok(()),
            Err(refused) => {
                let key = keys::object::<Namespace>("", namespace);
                match self.read::<Namespace>(&key).await? {
                    Some((ns, _)) if Some(labels_of(&ns)) != cached => judge(&labels_of(&ns)),
                    _ => Err(refused),
                }
            }
        }
    }

    /// The service account `namespace/name` an object will run as.
    /// `default` may be moments from existing in a new namespace (its
    /// controller makes it): it is waited for, up to two seconds, as
    /// Kubernetes' admission does.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when it does not exist.
    async fn service_account(&self, namespace: &str, name: &str) -> Result<ServiceAccount> {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let key = keys::object::<ServiceAccount>(namespace, name);
        let tries = if name == "default" { 20 } else { 1 };
        for i in 0..tries {
            if let Some((account, _)) = self.read::<ServiceAccount>(&key).await? {
                return Ok(account);
            }
            if i + 1 < tries {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(ApiError::Forbidden(format!(
            "error looking up service account {namespace}/{name}: serviceaccount {name:?} not found"
        )))
    }

    /// Creates an object.
    ///
    /// # Errors
    /// Invalid objects, a missing namespace, an existing name.
    pub async fn create<K: Strategy>(&self, obj: K) -> Result<K> {
        self.create_with(obj, false).await
    }

    /// Create, or with `dry_run` everything create does (defaults,
    /// validation, admission, the name check) but the write: the object is
    /// returned as it would be stored, without a resourceVersion.
    ///
    /// # Errors
    /// As [`Registry::create`].
    pub async fn create_with<K: Strategy>(&self, mut obj: K, dry_run: bool) -> Result<K> {
        check_type_meta(&obj)?;
        let meta = obj.metadata_mut();
        if !meta.resource_version.is_empty() {
            return Err(ApiError::Invalid(
                "metadata.resourceVersion: Invalid value: must be empty when creating an object"
                    .into(),
            ));
        }
        meta.namespace = effective_namespace::<K>(&meta.namespace);
        let generated = meta.name.is_empty() && !meta.generate_name.is_empty();
        if generated {
            meta.name = format!("{}{}", meta.generate_name, random_suffix());
        }
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.creation_timestamp = Some(now());
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.generation = 1;
        // Whoever acts on the object joins the trace that created it.
        skiff_telemetry::annotate(&mut meta.annotations);
        obj.default_fields();
        obj.prepare_create();
        if self.service_account_tokens
            && let Some(account) = obj.service_account()
        {
            let found = self.service_account(obj.namespace(), &account).await?;
            obj.admit_service_account(&found);
        }
        if K::NAMESPACED {
            self.ensure_namespace(obj.namespace()).await?;
            self.admit_pod_security(&obj).await?;
        }
        let owner = object_name(obj.namespace(), obj.name());
        // An object that claims addresses or ports is checked first: nothing
        // is claimed for one that will be refused.
        if obj.cluster_ip_request().is_some() || !obj.node_port_requests().is_empty() {
            admit(&obj)?;
        }
        let claimed = if dry_run {
            None
        } else {
            self.claim_cluster_ip(&mut obj).await?
        };
        let ports = if dry_run {
            Ok(Vec::new())
        } else {
            self.claim_node_ports(None, &mut obj).await
        };
        let result = match ports {
            Ok(ports) => {
                let result = self.create_claimed(obj, generated, dry_run).await;
                if matches!(&result, Err(e) if definite_api(e)) {
                    self.release_ports(&ports, &owner).await;
                }
                result
            }
            Err(e) => Err(e),
        };
        if matches!(&result, Err(e) if definite_api(e))
            && let Some(ip) = claimed
        {
            self.allocator.release(&ip, &owner).await;
        }
        result
    }

    async fn create_claimed<K: Strategy>(
        &self,
        mut obj: K,
        generated: bool,
        dry_run: bool,
    ) -> Result<K> {
        for attempt in 0..MAX_RETRIES {
            // The first name was drawn before admission (which names it).
            if generated && attempt > 0 {
                let meta = obj.metadata_mut();
                meta.name = format!("{}{}", meta.generate_name, random_suffix());
            }
            let bytes = admit(&obj)?;
            let key = keys::object::<K>(obj.namespace(), obj.name());
            if dry_run {
                if !generated && self.read::<K>(&key).await?.is_some() {
                    return Err(ApiError::AlreadyExists {
                        kind: kind_name::<K>(),
                        name: object_name(obj.namespace(), obj.name()),
                    });
                }
                obj.set_type_meta();
                return Ok(obj);
            }
            match self.store.create(&key, bytes).await {
                Ok(rev) => {
                    obj.metadata_mut().resource_version = rev.to_string();
                    obj.set_type_meta();
                    return Ok(obj);
                }
                Err(skiff_store::Error::AlreadyExists { .. }) if generated => continue,
                Err(skiff_store::Error::AlreadyExists { .. }) => {
                    return Err(ApiError::AlreadyExists {
                        kind: kind_name::<K>(),
                        name: object_name(obj.namespace(), obj.name()),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::AlreadyExists {
            kind: kind_name::<K>(),
            name: format!(
                "generated names for {:?}",
                obj.metadata().map(|m| &m.generate_name)
            ),
        })
    }

    /// Reads one object.
    ///
    /// # Errors
    /// NotFound.
    pub async fn get<K: Strategy>(&self, req: GetRequest) -> Result<K> {
        let namespace = effective_namespace::<K>(&req.namespace);
        let key = keys::object::<K>(&namespace, &req.name);
        match self.read::<K>(&key).await? {
            Some((obj, _)) => Ok(obj),
            None => Err(not_found::<K>(&namespace, &req.name)),
        }
    }

    /// Lists objects, filtered and paged.
    ///
    /// # Errors
    /// Bad selectors or continue tokens; an expired continue token.
    pub async fn list<K: Strategy>(&self, req: ListRequest) -> Result<K::List> {
        let filter = Filter::new::<K>(&req.namespace, &req.label_selector, &req.field_selector)?;
        let limit = usize::try_from(req.limit.max(0)).unwrap_or(usize::MAX);
        let (mut revision, mut start_after) = if req.r#continue.is_empty() {
            (0, None)
        } else {
            let token = ContinueToken::decode(&req.r#continue)?;
            (token.rv, Some(token.start))
        };
        let mut items = Vec::new();
        let mut next = None;
        'pages: loop {
            // Read in chunks: a selector matching few objects must not cost
            // one store read per object.
            let want = if limit == 0 {
                0
            } else {
                (limit - items.len()).max(LIST_CHUNK)
            };
            let page = self
                .store
                .list(ListOptions {
                    prefix: filter.prefix.clone(),
                    start_after: start_after.clone(),
                    limit: want,
                    revision,
                })
                .await
                .map_err(|e| match e {
                    skiff_store::Error::Compacted { .. } => ApiError::Expired(
                        "continue: the list's resourceVersion has been compacted; start the list again without a continue token".into(),
                    ),
                    other => other.into(),
                })?;
            revision = page.revision;
            let count = page.kvs.len();
            for (i, kv) in page.kvs.into_iter().enumerate() {
                let Some(obj) = decode::<K>(&kv.value, kv.mod_revision) else {
                    return Err(ApiError::Internal(format!(
                        "undecodable {} at {}",
                        K::KIND,
                        kv.key
                    )));
                };
                if filter.matches(&kv.key, &obj) {
                    items.push(obj);
                }
                start_after = Some(kv.key);
                if limit > 0 && items.len() == limit {
                    // Full: continue after this key if anything follows.
                    if i + 1 < count || page.more {
                        next = start_after.clone();
                    }
                    break 'pages;
                }
            }
            if !page.more {
                break;
            }
        }
        let metadata = ListMeta {
            resource_version: revision.to_string(),
            r#continue: next
                .map(|start| {
                    ContinueToken {
                        rv: revision,
                        start,
                    }
                    .encode()
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        Ok(K::into_list(metadata, items))
    }

    /// Replaces an object's spec and metadata (not its status).
    ///
    /// # Errors
    /// NotFound, a stale resourceVersion (Conflict), invalid objects.
    pub async fn update<K: Strategy>(&self, obj: K) -> Result<K> {
        self.write(obj, false, false).await
    }

    /// Update without writing (`dry_run`): the object as it would be.
    ///
    /// # Errors
    /// As [`Registry::update`].
    pub async fn update_dry_run<K: Strategy>(&self, obj: K) -> Result<K> {
        self.write(obj, false, true).await
    }

    /// Replaces an object's status only.
    ///
    /// # Errors
    /// As [`Registry::update`]; Unsupported for kinds without status.
    pub async fn update_status<K: Strategy>(&self, obj: K) -> Result<K> {
        if !K::HAS_STATUS {
            return Err(ApiError::Unsupported(format!("{} has no status", K::KIND)));
        }
        self.write(obj, true, false).await
    }

    async fn write<K: Strategy>(&self, mut obj: K, status_only: bool, dry_run: bool) -> Result<K> {
        check_type_meta(&obj)?;
        let namespace = effective_namespace::<K>(obj.namespace());
        obj.metadata_mut().namespace = namespace.clone();
        let name = obj.name().to_string();
        if name.is_empty() {
            return Err(ApiError::Invalid("metadata.name: Required value".into()));
        }
        let requested = parse_rv(obj.resource_version(), "metadata.resourceVersion")?;
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let conflict = || ApiError::Conflict {
                kind: kind_name::<K>(),
                name: object_name(&namespace, &name),
                requested: obj.resource_version().to_string(),
                current: kv.mod_revision,
            };
            if requested.is_some_and(|rv| rv != kv.mod_revision) {
                return Err(conflict());
            }
            let current = decode::<K>(&kv.value, kv.mod_revision)
                .ok_or_else(|| ApiError::Internal(format!("undecodable {} at {key}", K::KIND)))?;
            let next = if status_only {
                let sent_uid = obj.metadata().map_or("", |m| m.uid.as_str());
                let cur_uid = current.metadata().map_or("", |m| m.uid.as_str());
                if !sent_uid.is_empty() && sent_uid != cur_uid {
                    return Err(ApiError::Precondition(format!(
                        "metadata.uid: Invalid value: {sent_uid:?}: the object's uid is {cur_uid:?} (it was deleted and re-created?)"
                    )));
                }
                let mut next = current.clone();
                next.copy_status_from(&obj);
                next
            } else {
                let mut next = self.merge_update(&current, &obj)?;
                keep_cluster_ip(&current, &mut next)?;
                next
            };
            let cur_meta = current.metadata().cloned().unwrap_or_default();
            let next_meta = next.metadata().cloned().unwrap_or_default();
            // The last finalizer is gone from an object whose deletion is
            // not waiting out a grace period: it goes.
            if dry_run {
                // Checked and admitted; nothing is written (not even a
                // finalizer's last removal). An unchanged object comes back
                // as it is; a changed one without a resourceVersion, since it
                // has none yet.
                if admit(&next)? == kv.value {
                    return Ok(current);
                }
                let mut next = next;
                next.metadata_mut().resource_version.clear();
                next.set_type_meta();
                return Ok(next);
            }
            let mut next = next;
            let deleting = cur_meta.deletion_timestamp.is_some()
                && cur_meta.deletion_grace_period_seconds.unwrap_or(0) == 0
                && next_meta.finalizers.is_empty();
            // An object about to go claims nothing new.
            let newly = if status_only || deleting {
                Vec::new()
            } else {
                if !next.node_port_requests().is_empty() {
                    admit(&next)?;
                }
                self.claim_node_ports(Some(&current), &mut next).await?
            };
            let owner = object_name(&namespace, &name);
            let result = if deleting {
                // The last finalizer is gone: the object goes.
                admit(&next)?;
                let deleted = self
                    .store
                    .delete(&key, Some(kv.mod_revision))
                    .await
                    .map(|(rev, _)| rev);
                if let Ok(rev) = deleted {
                    self.release_claims(&current).await;
                    next.metadata_mut().resource_version = rev.to_string();
                    next.set_type_meta();
                    return Ok(next);
                }
                deleted
            } else {
                let bytes = match admit(&next) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.release_ports(&newly, &owner).await;
                        return Err(e);
                    }
                };
                if bytes == kv.value {
                    // Nothing changed: no write, no new resourceVersion.
                    return Ok(current);
                }

                self.store.update(&key, bytes, Some(kv.mod_revision)).await
            };
            // Release only when the write surely did not happen (a timeout
            // may have committed it; the startup repair settles that case).
            if let Err(e) = &result
                && definite(e)
            {
                self.release_ports(&newly, &owner).await;
            }
            match result {
                Ok(rev) => {
                    // Ports the update no longer uses go back to the range.
                    let kept: Vec<u16> = node_ports_of(&next);
                    let stale: Vec<u16> = node_ports_of(&current)
                        .into_iter()
                        .filter(|p| !kept.contains(p))
                        .collect();
                    self.release_ports(&stale, &owner).await;
                    next.metadata_mut().resource_version = rev.to_string();
                    next.set_type_meta();
                    return Ok(next);
                }
                Err(skiff_store::Error::Conflict { .. }) if requested.is_none() => continue,
                Err(skiff_store::Error::Conflict { current, .. }) => {
                    return Err(ApiError::Conflict {
                        kind: kind_name::<K>(),
                        name: object_name(&namespace, &name),
                        requested: obj.resource_version().to_string(),
                        current,
                    });
                }
                Err(skiff_store::Error::NotFound { .. }) => {
                    return Err(not_found::<K>(&namespace, &name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to update; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }

    /// The object an Update produces: the client's spec and metadata, with
    /// the fields only the server sets kept from `current`.
    fn merge_update<K: Strategy>(&self, current: &K, obj: &K) -> Result<K> {
        let cur = current.metadata().cloned().unwrap_or_default();
        if obj.status_set() && !obj.same_status(current) {
            return Err(ApiError::Invalid(format!(
                "status: Forbidden: the status of {} {:?} can only be changed through UpdateStatus; send the status you read, or none",
                K::KIND,
                obj.name()
            )));
        }
        let mut next = obj.clone();
        next.copy_status_from(current);
        next.default_fields();
        let mut errors = FieldErrors::default();
        next.validate_update(current, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::Invalid(format!(
                "{} {:?} is invalid: {errors}",
                K::KIND,
                obj.name()
            )));
        }
        let meta = next.metadata_mut();
        if !meta.uid.is_empty() && meta.uid != cur.uid {
            return Err(ApiError::Precondition(format!(
                "metadata.uid: Invalid value: {:?}: the object's uid is {:?} (it was deleted and re-created?)",
                meta.uid, cur.uid
            )));
        }
        meta.uid = cur.uid.clone();
        meta.creation_timestamp = cur.creation_timestamp;
        meta.deletion_timestamp = cur.deletion_timestamp;
        meta.deletion_grace_period_seconds = cur.deletion_grace_period_seconds;
        meta.generate_name = if meta.generate_name.is_empty() {
            cur.generate_name.clone()
        } else {
            meta.generate_name.clone()
        };
        meta.generation = cur.generation;
        if cur.deletion_timestamp.is_some() {
            let added: Vec<&String> = meta
                .finalizers
                .iter()
                .filter(|f| !cur.finalizers.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                )));
            }
        }
        if next.spec_fingerprint() != current.spec_fingerprint() {
            let meta = next.metadata_mut();
            meta.generation = cur.generation + 1;
            // A new spec is new work: its trace is this request's.
            skiff_telemetry::annotate(&mut meta.annotations);
        }
        // Kept when a writer leaves it out (it is the server's to set).
        let trace = skiff_telemetry::TRACE_ANNOTATION;
        if let Some(value) = cur.annotations.get(trace) {
            next.metadata_mut()
                .annotations
                .entry(trace.to_string())
                .or_insert_with(|| value.clone());
        }
        Ok(next)
    }

    /// Deletes an object, or marks it deleted while finalizers remain.
    ///
    /// # Errors
    /// NotFound, failed preconditions, protected namespaces.
    pub async fn delete<K: Strategy>(&self, req: DeleteRequest) -> Result<K> {
        let namespace = effective_namespace::<K>(&req.namespace);
        let name = req.name.clone();
        // Foreground and Orphan are finalizers the garbage collector acts
        // on (deleting, or releasing, the dependents first). Only kinds
        // that own others take them; for the rest they mean Background.
        let propagation = match req.propagation_policy.as_str() {
            "" | "Background" => None,
            "Foreground" | "Orphan" if !OWNER_KINDS.contains(&K::KIND) => None,
            "Foreground" => Some(FOREGROUND_FINALIZER),
            "Orphan" => Some(ORPHAN_FINALIZER),
            other => {
                return Err(ApiError::Invalid(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        };
        if K::KIND == "Namespace" && SYSTEM_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "namespace {name:?} may not be deleted: it is a system namespace"
            )));
        }
        let expected_rv = match &req.preconditions {
            Some(p) => parse_rv(&p.resource_version, "preconditions.resourceVersion")?,
            None => None,
        };
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some((current, mod_rev)) = self.read::<K>(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let meta = current.metadata().cloned().unwrap_or_default();
            if let Some(p) = &req.preconditions
                && !p.uid.is_empty()
                && p.uid != meta.uid
            {
                return Err(ApiError::Precondition(format!(
                    "precondition failed: uid in precondition is {:?}, the object's uid is {:?}",
                    p.uid, meta.uid
                )));
            }
            if let Some(rv) = expected_rv
                && rv != mod_rev
            {
                return Err(ApiError::Conflict {
                    kind: kind_name::<K>(),
                    name: object_name(&namespace, &name),
                    requested: rv.to_string(),
                    current: mod_rev,
                });
            }
            if let Some(grace) = current.graceful_delete_seconds(req.grace_period_seconds) {
                // Already terminating with as short a grace: nothing to do.
                if meta.deletion_timestamp.is_some()
                    && meta
                        .deletion_grace_period_seconds
                        .is_some_and(|g| g <= grace)
                {
                    return Ok(current);
                }
                match self.mark_deleted(&current, &key, mod_rev, grace).await {
                    Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                    result => {
                        return result.map_err(|e| self.write_error::<K>(e, &namespace, &name))?;
                    }
                }
            }
            let mut current = current;
            let mut meta = meta;
            if let Some(finalizer) = propagation
                && meta.deletion_timestamp.is_none()
                && !meta.finalizers.iter().any(|f| f == finalizer)
            {
                meta.finalizers.push(finalizer.to_string());
                current.metadata_mut().finalizers = meta.finalizers.clone();
            }
            if !meta.finalizers.is_empty() {
                if meta.deletion_timestamp.is_some()
                    && meta.deletion_grace_period_seconds.unwrap_or(0) == 0
                {
                    return Ok(current);
                }
                // Kinds without graceful deletion have no grace period: the
                // object goes as soon as its finalizers do.
                let grace = 0;
                match self.mark_deleted(&current, &key, mod_rev, grace).await {
                    Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                    result => {
                        return result.map_err(|e| self.write_error::<K>(e, &namespace, &name))?;
                    }
                }
            }
            match self.store.delete(&key, Some(mod_rev)).await {
                Ok((rev, _)) => {
                    let mut gone = current;
                    gone.metadata_mut().resource_version = rev.to_string();
                    self.release_claims(&gone).await;
                    return Ok(gone);
                }
                Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                Err(e) => return Err(self.write_error::<K>(e, &namespace, &name)),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to delete; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }

    /// Marks an object deleted (deletionTimestamp `grace` seconds ahead,
    /// deletionGracePeriodSeconds) at `mod_rev`; it stays until its
    /// finalizers are gone or its agent finishes it.
    async fn mark_deleted<K: Strategy>(
        &self,
        current: &K,
        key: &str,
        mod_rev: i64,
        grace: i64,
    ) -> Result<Result<K>, skiff_store::Error> {
        let mut marked = current.clone();
        let m = marked.metadata_mut();
        let mut at = now();
        at.seconds += grace;
        m.deletion_timestamp = Some(at);
        m.deletion_grace_period_seconds = Some(grace);
        marked.mark_deleting();
        let bytes = match admit(&marked) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Err(e)),
        };
        let rev = self.store.update(key, bytes, Some(mod_rev)).await?;
        marked.metadata_mut().resource_version = rev.to_string();
        Ok(Ok(marked))
    }

    fn write_error<K: Strategy>(
        &self,
        e: skiff_store::Error,
        namespace: &str,
        name: &str,
    ) -> ApiError {
        match e {
            skiff_store::Error::NotFound { .. } => not_found::<K>(namespace, name),
            skiff_store::Error::Conflict {
                expected, current, ..
            } => ApiError::Conflict {
                kind: kind_name::<K>(),
                name: object_name(namespace, name),
                requested: expected.to_string(),
                current,
            },
            other => other.into(),
        }
    }

    /// Binds an object (a pod) to a node: sets spec.nodeName and the
    /// PodScheduled condition in one write.
    ///
    /// # Errors
    /// NotFound; ABORTED when it is bound already or its uid differs;
    /// INVALID_ARGUMENT without a target node.
    pub async fn bind<K: Strategy>(&self, binding: Binding) -> Result<K> {
        let meta = binding.metadata.unwrap_or_default();
        let namespace = effective_namespace::<K>(&meta.namespace);
        let name = meta.name;
        let node = binding.target.map(|t| (t.kind, t.name)).unwrap_or_default();
        if !(node.0.is_empty() || node.0 == "Node") {
            return Err(ApiError::Invalid(format!(
                "target.kind: Unsupported value: {:?}: a binding's target is a Node",
                node.0
            )));
        }
        if node.1.is_empty() {
            return Err(ApiError::Invalid(
                "target.name: Required value: the node to bind to".into(),
            ));
        }
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some((mut obj, mod_rev)) = self.read::<K>(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let uid = obj.metadata().map(|m| m.uid.clone()).unwrap_or_default();
            if !meta.uid.is_empty() && meta.uid != uid {
                return Err(ApiError::Precondition(format!(
                    "precondition failed: binding is for uid {:?}, the object's uid is {uid:?}",
                    meta.uid
                )));
            }
            obj.bind(&node.1).map_err(ApiError::Precondition)?;
            let bytes = admit(&obj)?;
            match self.store.update(&key, bytes, Some(mod_rev)).await {
                Ok(rev) => {
                    obj.metadata_mut().resource_version = rev.to_string();
                    return Ok(obj);
                }
                // Changed meanwhile: read again (and fail if now bound).
                Err(skiff_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(self.write_error::<K>(e, &namespace, &name)),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to bind; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }

    async fn cache<K: Strategy>(&self) -> Result<Arc<WatchCache<K>>> {
        let mut caches = self.caches.lock().await;
        if let Some(cache) = caches.get(&TypeId::of::<K>())
            && let Ok(cache) = Arc::clone(cache).downcast::<WatchCache<K>>()
        {
            return Ok(cache);
        }
        let cache = WatchCache::<K>::start(Arc::clone(&self.store)).await?;
        caches.insert(
            TypeId::of::<K>(),
            cache.clone() as Arc<dyn Any + Send + Sync>,
        );
        Ok(cache)
    }

    /// Starts a watch. Changes come from the kind's watch cache when the
    /// requested version is recent, from the store otherwise.
    ///
    /// # Errors
    /// Bad selectors or versions; OUT_OF_RANGE when the version is gone.
    pub async fn watch<K: Strategy>(&self, req: WatchRequest) -> Result<WatchStream<K>> {
        let filter = Filter::new::<K>(&req.namespace, &req.label_selector, &req.field_selector)?;
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER);
        let requested = parse_rv(&req.resource_version, "resourceVersion")?.unwrap_or(0);
        if requested > 0 {
            let current = self.store.current_revision().await?;
            if requested > current {
                return Err(ApiError::Invalid(format!(
                    "resourceVersion: Invalid value: {requested}: the newest version is {current}; watch from a version a read returned"
                )));
            }
        }
        // The cache first: a list read after it starts is inside its window.
        let cache = self.cache::<K>().await?;
        // Without a version: the current state as ADDED events, then changes.
        let mut initial = Vec::new();
        let start = if requested == 0 {
            let page = self
                .store
                .list(ListOptions {
                    prefix: filter.prefix.clone(),
                    ..Default::default()
                })
                .await?;
            for kv in page.kvs {
                if let Some(obj) = decode::<K>(&kv.value, kv.mod_revision)
                    && filter.matches(&kv.key, &obj)
                {
                    initial.push(obj);
                }
            }
            page.revision
        } else {
            requested
        };
        let source = match cache.subscribe(start) {
            Some(sub) => Source::Cache {
                backlog: sub.backlog.into(),
                live: sub.live,
                generation: sub.generation,
                cache,
            },
            None => {
                let stream =
                    self.store
                        .watch(&filter.prefix, start + 1)
                        .await
                        .map_err(|e| match e {
                            skiff_store::Error::Compacted { .. } => expired(start),
                            other => other.into(),
                        })?;
                Source::Store(stream)
            }
        };
        let watcher = Watcher::<K> {
            filter,
            source,
            tx,
            sent: start,
            bookmarks: req.allow_bookmarks.then_some(self.bookmark_interval),
        };
        tokio::spawn(watcher.run(initial));
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn expired(rv: i64) -> ApiError {
    ApiError::Expired(format!(
        "resourceVersion {rv} is too old: the history after it has been compacted; list again and watch from the list's resourceVersion"
    ))
}

/// Where a watcher's changes come from.
enum Source<K> {
    /// The kind's watch cache: its backlog, then its live channel.
    Cache {
        backlog: std::collections::VecDeque<Arc<Change<K>>>,
        live: tokio::sync::broadcast::Receiver<Arc<Change<K>>>,
        generation: u64,
        cache: Arc<WatchCache<K>>,
    },
    /// A store watch of its own (the version predates the cache window).
    Store(skiff_store::WatchStream),
}

/// One client's watch: filters changes and sends them down its stream.
struct Watcher<K: Strategy> {
    filter: Filter,
    source: Source<K>,
    tx: mpsc::Sender<Result<K::WatchEvent, tonic::Status>>,
    /// The last revision sent (or the watch's starting revision).
    sent: i64,
    /// Bookmark period, if the client asked for bookmarks.
    bookmarks: Option<Duration>,
}

impl<K: Strategy> Watcher<K> {
    async fn run(mut self, initial: Vec<K>) {
        let sent_events = skiff_metrics::counter_vec(
            "skiff_apiserver_watch_events_sent_total",
            "watch events sent to watchers, by kind",
            &["kind"],
        )
        .with_label_values(&[K::KIND]);
        for obj in initial {
            if self
                .tx
                .send(Ok(K::into_event(EventType::Added, obj)))
                .await
                .is_err()
            {
                return;
            }
            sent_events.inc();
        }
        let period = self
            .bookmarks
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let bookmarks = self.bookmarks.is_some();
        loop {
            let step = tokio::select! {
                () = self.tx.closed() => return,
                _ = tick.tick(), if bookmarks => None,
                next = next_change(&mut self.source, self.sent) => Some(next),
            };
            let Some(next) = step else {
                self.bookmark().await;
                continue;
            };
            let change = match next {
                Ok(change) => change,
                Err(e) => {
                    let _ = self.tx.send(Err(e.into())).await;
                    return;
                }
            };
            if change.revision <= self.sent {
                continue;
            }
            self.sent = change.revision;
            if let Some(kind) = self.filter.classify(&change) {
                let event = K::into_event(kind, (*change.object).clone());
                if self.tx.send(Ok(event)).await.is_err() {
                    return;
                }
                sent_events.inc();
            }
        }
    }

    async fn bookmark(&mut self) {
        let progress = match &self.source {
            Source::Cache {
                backlog,
                live,
                generation,
                cache,
            } if backlog.is_empty() => cache.progress(live, *generation),
            _ => None,
        };
        let rv = progress.unwrap_or(self.sent).max(self.sent);
        self.sent = rv;
        let mut obj = K::default();
        obj.set_type_meta();
        obj.metadata_mut().resource_version = rv.to_string();
        let _ = self
            .tx
            .send(Ok(K::into_event(EventType::Bookmark, obj)))
            .await;
    }
}

/// The next change from a watcher's source.
async fn next_change<K: Strategy>(source: &mut Source<K>, sent: i64) -> Result<Arc<Change<K>>> {
    match source {
        Source::Cache { backlog, live, .. } => {
            if let Some(change) = backlog.pop_front() {
                return Ok(change);
            }
            match live.recv().await {
                Ok(change) => Ok(change),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    Err(ApiError::Unavailable(format!(
                        "watch fell too far behind; resume from resourceVersion {sent}"
                    )))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    Err(ApiError::Unavailable(format!(
                        "watch cache restarted; resume from resourceVersion {sent}"
                    )))
                }
            }
        }
        Source::Store(stream) => {
            use futures::StreamExt as _;
            loop {
                match stream.next().await {
                    Some(Ok(event)) => {
                        if let Some(change) = Change::<K>::from_event(event) {
                            return Ok(Arc::new(change));
                        }
                    }
                    Some(Err(skiff_store::Error::Compacted { .. })) => return Err(expired(sent)),
                    Some(Err(e)) => return Err(e.into()),
                    None => {
                        return Err(ApiError::Unavailable(format!(
                            "store watch ended; resume from resourceVersion {sent}"
                        )));
                    }
                }
            }
        }
    }
}
