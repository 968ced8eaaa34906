//! Watch: from the kind's watch cache (or a store watch of its own for an
//! older version), filtered per client, with bookmarks.

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::{EventType, WatchRequest};
use skiff_store::ListOptions;
use tokio::sync::mpsc;

use crate::cache::{Change, WatchCache, decode};
use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::read::Filter;
use super::*;

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

impl Registry {
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
