//! The informer cache: a cloneable reader and a single writer owned by the
//! watch loop.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use skiff::{ObjectRef, Resource};
use tokio::sync::watch;

use crate::watcher::Event;

/// Read access to a cache of kind `K`. Cheap to clone.
pub struct Store<K> {
    objects: Arc<RwLock<HashMap<ObjectRef, Arc<K>>>>,
    synced: watch::Receiver<bool>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            objects: Arc::clone(&self.objects),
            synced: self.synced.clone(),
        }
    }
}

/// The one writer of a [`Store`].
pub struct Writer<K> {
    objects: Arc<RwLock<HashMap<ObjectRef, Arc<K>>>>,
    synced: watch::Sender<bool>,
}

/// A new empty cache: its writer and a reader.
pub fn store<K: Resource>() -> (Writer<K>, Store<K>) {
    let objects = Arc::new(RwLock::new(HashMap::new()));
    let (synced, ready) = watch::channel(false);
    (
        Writer {
            objects: Arc::clone(&objects),
            synced,
        },
        Store {
            objects,
            synced: ready,
        },
    )
}

// === impl Writer ===

impl<K: Resource> Writer<K> {
    /// Applies one watcher event. The first `Restarted` marks the cache
    /// synced.
    pub fn apply(&self, event: &Event<K>) {
        match event {
            Event::Restarted(items) => {
                self.replace(items.iter().cloned().map(Arc::new).collect());
            }
            Event::Applied(obj) => self.insert(Arc::new(obj.clone())),
            Event::Deleted(obj) => self.remove(&obj.object_ref()),
        }
    }

    /// Replaces the whole content (a relist) and marks the cache synced;
    /// returns the objects the new content no longer has (deleted while
    /// nobody watched).
    pub fn replace(&self, items: Vec<Arc<K>>) -> Vec<Arc<K>> {
        let mut gone = Vec::new();
        if let Ok(mut objects) = self.objects.write() {
            let mut old = std::mem::take(&mut *objects);
            for obj in items {
                let key = obj.object_ref();
                old.remove(&key);
                objects.insert(key, obj);
            }
            gone.extend(old.into_values());
        }
        let _ = self.synced.send(true);
        gone
    }

    /// Adds or replaces one object.
    pub fn insert(&self, obj: Arc<K>) {
        if let Ok(mut objects) = self.objects.write() {
            objects.insert(obj.object_ref(), obj);
        }
    }

    /// Removes one object.
    pub fn remove(&self, key: &ObjectRef) {
        if let Ok(mut objects) = self.objects.write() {
            objects.remove(key);
        }
    }
}

// === impl Store ===

impl<K: Resource> Store<K> {
    /// One object by namespace and name.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new(namespace, name);
        self.objects.read().ok()?.get(&key).cloned()
    }

    /// Every cached object (in no particular order).
    pub fn list(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.objects.read().map_or(0, |o| o.len())
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first full list has arrived.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::ConfigMap;
    use skiff::pb::meta::v1::ObjectMeta;

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn restart_replaces_everything_and_marks_synced() {
        let (w, s) = store::<ConfigMap>();
        assert!(!s.is_synced());
        w.apply(&Event::Applied(cm("stale")));
        w.apply(&Event::Restarted(vec![cm("a"), cm("b")]));
        assert!(s.is_synced());
        assert_eq!(s.len(), 2);
        assert!(s.get("default", "stale").is_none());
        w.apply(&Event::Deleted(cm("a")));
        assert!(s.get("default", "a").is_none());
        assert!(s.get("default", "b").is_some());
    }

    #[test]
    fn a_relist_reports_what_was_deleted_meanwhile() {
        let (w, s) = store::<ConfigMap>();
        w.replace(vec![Arc::new(cm("a")), Arc::new(cm("b"))]);
        let gone = w.replace(vec![Arc::new(cm("b")), Arc::new(cm("c"))]);
        let names: Vec<&str> = gone
            .iter()
            .map(|c| c.metadata.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(names, vec!["a"]);
        assert_eq!(s.len(), 2);
    }
}
