//! The Namespace controller: a deleted (Terminating) namespace is emptied
//! — every object of every namespaced kind in it is deleted — and then its
//! `kubernetes` finalizer is removed, which lets the API delete it.

use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::core::v1::Namespace;
use skiff::{ObjectRef, Resource};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

pub use skiff::names::NAMESPACE_FINALIZER as FINALIZER;

/// See the module doc. Keys are namespaces.
pub struct NamespaceController {
    /// Terminating namespaces swept at least once: later looks sweep once,
    /// not twice.
    swept: std::sync::Mutex<std::collections::HashSet<String>>,
    channel: tonic::transport::Channel,
    namespaces: Api<Namespace>,
    namespace_store: Store<Namespace>,
}

/// Deletes every `K` in `namespace`; returns how many there were.
async fn delete_all<K: Resource>(
    channel: &tonic::transport::Channel,
    namespace: &str,
) -> Result<usize, Error> {
    let api = Api::<K>::new(channel.clone());
    let list = api
        .list(ListRequest {
            namespace: namespace.to_string(),
            ..Default::default()
        })
        .await?;
    let (_, items) = K::list_parts(list);
    for obj in &items {
        match api
            .delete(DeleteRequest {
                namespace: namespace.to_string(),
                name: obj.name().to_string(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    Ok(items.len())
}

/// Collects the namespaced kinds `for_each_kind!` lists.
macro_rules! delete_every_kind {
    ($($st:ident $kind:ident, $ty:path, $tr:path, $srv:ty;)*) => {
        /// Deletes everything in `namespace`; returns how many objects
        /// there were.
        async fn delete_everything(
            channel: &tonic::transport::Channel,
            namespace: &str,
        ) -> Result<usize, Error> {
            let mut found = 0;
            $(
                if <$ty as Resource>::NAMESPACED {
                    found += delete_all::<$ty>(channel, namespace).await?;
                }
            )*
            Ok(found)
        }
    };
}

skiff::for_each_kind!(delete_every_kind);

impl NamespaceController {
    /// A controller over the shared namespace cache.
    pub fn new(channel: tonic::transport::Channel, namespace_store: Store<Namespace>) -> Self {
        Self {
            swept: Default::default(),
            namespaces: Api::new(channel.clone()),
            channel,
            namespace_store,
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(ns) = self.namespace_store.get("", &key.name) else {
            if let Ok(mut swept) = self.swept.lock() {
                swept.remove(&key.name);
            }
            return Ok(Action::AwaitChange);
        };
        let meta = ns.metadata.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_none() || !meta.finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let found = delete_everything(&self.channel, &key.name).await?;
        if found > 0 {
            tracing::info!(namespace = %key.name, objects = found, "deleting the content of a terminating namespace");
            // Most objects go at once: at the first look, look again now
            // rather than after a wait. What is left has finalizers or a
            // grace period of its own, and may take a while.
            let first = self
                .swept
                .lock()
                .is_ok_and(|mut swept| swept.insert(key.name.clone()));
            if !first || delete_everything(&self.channel, &key.name).await? > 0 {
                return Ok(Action::Requeue(std::time::Duration::from_millis(500)));
            }
        }
        if let Ok(mut swept) = self.swept.lock() {
            swept.remove(&key.name);
        }
        let mut done = (*ns).clone();
        if let Some(m) = done.metadata.as_mut() {
            m.finalizers.retain(|f| f != FINALIZER);
        }
        done.status = None;
        match self.namespaces.update(done).await {
            Ok(_) => {
                tracing::info!(namespace = %key.name, "namespace emptied and deleted");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(std::time::Duration::from_millis(100)))
            }
            Err(s) => Err(s.into()),
        }
    }
}

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the Namespace controller: woken by namespaces.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, keys_of};
    use futures::FutureExt as _;
    let controller = std::sync::Arc::new(NamespaceController::new(
        shared.channel.clone(),
        shared.namespaces.store.clone(),
    ));
    let store = shared.namespaces.store.clone();
    Controller::new(controller)
        .for_kind(&shared.namespaces)
        .run(move || keys_of(&store), workers)
        .boxed()
}
