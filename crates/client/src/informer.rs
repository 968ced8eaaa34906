//! Informers: a watcher feeding a cache, with change notifications for
//! whoever (a controller's queue, a scheduler) must react.

use std::sync::Arc;

use skiff::Resource;
use tokio::sync::broadcast;

use crate::api::Api;
use crate::store::{Store, store};
use crate::watcher::{self, Event, Params};

/// A change, as notified to subscribers: the object after it (or its last
/// state for deletes).
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// Created or updated (also sent for every object after a relist).
    Applied(Arc<K>),
    /// Deleted.
    Deleted(Arc<K>),
}

/// Changes buffered per informer for its subscribers. A subscriber that
/// falls further behind gets `Lagged` and resyncs from the store; a larger
/// buffer costs memory in every informer of every component (preallocated).
const CHANGES_BUFFER: usize = 1024;

/// A running informer of kind `K`.
pub struct Informer<K> {
    /// The cache.
    pub store: Store<K>,
    changes: broadcast::Sender<Change<K>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for Informer<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K: Resource> Informer<K> {
    /// Starts listing and watching `params` through `api`.
    pub fn start(api: Api<K>, params: Params) -> Self {
        let (writer, reader) = store::<K>();
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let notify = changes.clone();
        let mut events = watcher::watch(api, params);
        let task = tokio::spawn(async move {
            // One allocation per object, shared by the cache and every
            // subscriber.
            while let Some(event) = events.recv().await {
                match event {
                    Event::Restarted(items) => {
                        let items: Vec<Arc<K>> = items.into_iter().map(Arc::new).collect();
                        // Deleted while the watch was down: say so.
                        for gone in writer.replace(items.clone()) {
                            let _ = notify.send(Change::Deleted(gone));
                        }
                        for obj in items {
                            let _ = notify.send(Change::Applied(obj));
                        }
                    }
                    Event::Applied(obj) => {
                        let obj = Arc::new(obj);
                        writer.insert(Arc::clone(&obj));
                        let _ = notify.send(Change::Applied(obj));
                    }
                    Event::Deleted(obj) => {
                        writer.remove(&obj.object_ref());
                        let _ = notify.send(Change::Deleted(Arc::new(obj)));
                    }
                }
            }
        });
        Self {
            store: reader,
            changes,
            task,
        }
    }

    /// Subscribes to changes from now on. A subscriber that falls behind
    /// gets `Lagged` and should resync from the store.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }
}
