//! In-memory copies of one kind, kept current by a store watch: what the
//! API server consults on every call without a store read (which
//! namespaces exist, the RBAC roles and bindings), as Kubernetes' admission
//! and authorizers do with informers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skiff::keys;
use skiff_store::{EventKind, ListOptions, Store};

use crate::cache::decode;
use crate::strategy::Strategy;

/// The objects of kind `K` (or what `project` keeps of each, `V`), by
/// namespace and name.
pub struct Index<K, V = K> {
    /// (namespace, name) → object.
    objects: RwLock<HashMap<(String, String), Arc<V>>>,
    /// What is kept of an object.
    project: fn(K) -> V,
    /// True once the first list is in.
    synced: tokio::sync::watch::Sender<bool>,
}

impl<K: Strategy> Index<K> {
    /// Starts following `store`, keeping whole objects; the task ends
    /// when aborted.
    pub fn start(store: Arc<dyn Store>) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        Self::start_projected(store, |k| k)
    }
}

impl<K: Strategy, V: Send + Sync + 'static> Index<K, V> {
    /// Starts following `store`, keeping `project` of each object.
    pub fn start_projected(
        store: Arc<dyn Store>,
        project: fn(K) -> V,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let index = Arc::new(Self {
            objects: RwLock::new(HashMap::new()),
            project,
            synced: tokio::sync::watch::channel(false).0,
        });
        let task = tokio::spawn(Arc::clone(&index).follow(store));
        (index, task)
    }

    /// One object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<V>> {
        let key = (namespace.to_string(), name.to_string());
        self.objects.read().ok()?.get(&key).cloned()
    }

    /// Every object (of `namespace`, when given).
    pub fn list(&self, namespace: Option<&str>) -> Vec<Arc<V>> {
        let Ok(objects) = self.objects.read() else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, obj)| Arc::clone(obj))
            .collect()
    }

    /// Whether the first list is in.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list is in, at most `within`; whether it is.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let mut synced = self.synced.subscribe();
        tokio::time::timeout(within, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn apply(&self, objects: &mut HashMap<(String, String), Arc<V>>, key: &str, obj: Option<K>) {
        let Some((namespace, name)) = keys::parse::<K>(key) else {
            return;
        };
        let key = (namespace.to_string(), name.to_string());
        match obj {
            Some(obj) => {
                objects.insert(key, Arc::new((self.project)(obj)));
            }
            None => {
                objects.remove(&key);
            }
        }
    }

    /// List, then watch from the list's revision; on any error, again.
    async fn follow(self: Arc<Self>, store: Arc<dyn Store>) {
        use futures::StreamExt as _;
        let prefix = keys::kind::<K>();
        loop {
            let listed = store
                .list(ListOptions {
                    prefix: prefix.clone(),
                    ..Default::default()
                })
                .await;
            let revision = match listed {
                Ok(page) => {
                    // Built aside and swapped in whole: a reader never
                    // sees a half-listed index.
                    let mut fresh = HashMap::new();
                    for kv in &page.kvs {
                        self.apply(&mut fresh, &kv.key, decode::<K>(&kv.value, kv.mod_revision));
                    }
                    if let Ok(mut objects) = self.objects.write() {
                        *objects = fresh;
                    }
                    self.synced.send_replace(true);
                    page.revision
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = K::KIND, "listing for the index");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match store.watch(&prefix, revision + 1).await {
                Ok(mut stream) => {
                    while let Some(Ok(event)) = stream.next().await {
                        let obj = match event.kind {
                            EventKind::Put => decode::<K>(&event.kv.value, event.revision()),
                            EventKind::Delete => None,
                            EventKind::Progress => continue,
                        };
                        if let Ok(mut objects) = self.objects.write() {
                            self.apply(&mut objects, &event.kv.key, obj);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, kind = K::KIND, "watching for the index"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
