//! Watch: from the kind's watch cache (or a store watch of its own for an
//! older version), filtered per client, with bookmarks.

use std::any::TypeId;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::{EventType, WatchRequest};
use skiff_store::ListOptions;

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

/// What a watch sends.
pub enum Delivery<K> {
    /// A change from the kind's watch cache or the store, shared by every
    /// watcher it reaches (encode it once: [`Change::protobuf`]), as
    /// `EventType` (a change reads as ADDED or DELETED to a watcher whose
    /// selector it enters or leaves).
    Change(EventType, Arc<Change<K>>),
    /// An object for this watcher only: the current state at the start
    /// (ADDED) or a bookmark.
    Object(EventType, K),
}

impl<K: Strategy> Delivery<K> {
    /// The gRPC event: a change's shared encoding, copied, not encoded.
    pub fn into_event(self) -> K::WatchEvent {
        match self {
            Self::Change(kind, change) => K::encoded_event(kind, change.protobuf()),
            Self::Object(kind, object) => K::into_event(kind, object),
        }
    }
}

/// Where a watcher's changes come from.
enum Source<K> {
    /// The kind's watch cache: its backlog, then its live channel.
    Cache {
        backlog: std::collections::VecDeque<Arc<Change<K>>>,
        live: crate::cache::Live<Arc<Change<K>>>,
        cache: Arc<WatchCache<K>>,
    },
    /// A store watch of its own (the version predates the cache window),
    /// counted while open.
    Store {
        stream: skiff_store::WatchStream,
        _open: OpenStoreWatch,
    },
}

/// One open store watch of a watcher's own, counted by kind in
/// `skiff_apiserver_store_watches` (each decodes every change itself: many
/// of them mean clients watching from versions the cache does not keep).
struct OpenStoreWatch(prometheus::IntGauge);

/// The kind's `skiff_apiserver_store_watches`.
fn store_watches<K: Strategy>() -> prometheus::IntGauge {
    skiff_metrics::gauge_vec(
        "skiff_apiserver_store_watches",
        "open watches (gRPC and HTTP) served by a store watch of their own, not the kind's watch cache (their version is older than its window), by kind",
        &["kind"],
    )
    .with_label_values(&[K::KIND])
}

impl OpenStoreWatch {
    fn of<K: Strategy>() -> Self {
        let gauge = store_watches::<K>();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStoreWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One client's watch: filters changes as its stream is polled. No task
/// and no channel of its own: the connection that sends the events polls
/// it, so a change costs each watcher a filter and a copy of shared bytes.
struct Watcher<K: Strategy> {
    filter: Filter,
    source: Source<K>,
    /// The current objects to send first (a watch without a version).
    initial: std::vec::IntoIter<K>,
    /// The last revision sent (or the watch's starting revision).
    sent: i64,
    /// Bookmark ticks, if the client asked for bookmarks.
    bookmarks: Option<tokio::time::Interval>,
    /// Set once an error has been sent: the stream ends after it.
    ended: bool,
    sent_events: prometheus::IntCounter,
}

impl<K: Strategy> Watcher<K> {
    /// The next event, None once the watch has ended.
    async fn next(&mut self) -> Option<Result<Delivery<K>>> {
        if self.ended {
            return None;
        }
        if let Some(object) = self.initial.next() {
            self.sent_events.inc();
            return Some(Ok(Delivery::Object(EventType::Added, object)));
        }
        loop {
            let next = match &mut self.bookmarks {
                Some(tick) => tokio::select! {
                    _ = tick.tick() => None,
                    next = next_change(&mut self.source, self.sent) => Some(next),
                },
                None => Some(next_change(&mut self.source, self.sent).await),
            };
            let Some(next) = next else {
                return Some(Ok(self.bookmark()));
            };
            let change = match next {
                Ok(change) => change,
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            };
            if change.revision <= self.sent {
                continue;
            }
            self.sent = change.revision;
            if let Some(kind) = self.filter.classify(&change) {
                self.sent_events.inc();
                return Some(Ok(Delivery::Change(kind, change)));
            }
        }
    }

    fn bookmark(&mut self) -> Delivery<K> {
        let progress = match &self.source {
            Source::Cache {
                backlog,
                live,
                cache,
            } if backlog.is_empty() => cache.progress(live),
            _ => None,
        };
        let rv = progress.unwrap_or(self.sent).max(self.sent);
        self.sent = rv;
        let mut obj = K::default();
        obj.set_type_meta();
        obj.metadata_mut().resource_version = rv.to_string();
        Delivery::Object(EventType::Bookmark, obj)
    }
}

/// The next change from a watcher's source. A watcher that fell behind
/// the live channel (or whose cache restarted) picks up again from the
/// cache's window when its next change is still there; when it is not,
/// the watch ends as expired ("too old resource version": the client
/// lists again), as Kubernetes' watch cache ends a watcher it cannot feed.
async fn next_change<K: Strategy>(source: &mut Source<K>, sent: i64) -> Result<Arc<Change<K>>> {
    match source {
        Source::Cache {
            backlog,
            live,
            cache,
        } => loop {
            if let Some(change) = backlog.pop_front() {
                return Ok(change);
            }
            match live.recv().await {
                Ok(change) => return Ok(change),
                Err(lost) => {
                    use tokio::sync::broadcast::error::RecvError;
                    let Some(sub) = cache.subscribe(sent) else {
                        return Err(match lost {
                            // The cache started again: the store compacted
                            // the history it was reading.
                            RecvError::Closed => expired(sent),
                            RecvError::Lagged(_) => ApiError::Expired(format!(
                                "too old resource version: {sent}: the watch fell behind the changes kept for it; list again and watch from the list's resourceVersion"
                            )),
                        });
                    };
                    *backlog = sub.backlog.into();
                    *live = sub.live;
                }
            }
        },
        Source::Store { stream, .. } => {
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
    /// The kind's watch cache, started by the kind's first watch. Only
    /// the kind's own watches wait for its start (finding where the
    /// store's history starts may take etcd a few reads).
    async fn cache<K: Strategy>(&self) -> Result<Arc<WatchCache<K>>> {
        type Cell<K> = tokio::sync::OnceCell<Arc<WatchCache<K>>>;
        let cell = {
            let mut caches = self.caches.lock().await;
            let entry = caches
                .entry(TypeId::of::<K>())
                .or_insert_with(|| Arc::new(Cell::<K>::new()));
            match Arc::clone(entry).downcast::<Cell<K>>() {
                Ok(cell) => cell,
                // Keyed by the kind's type: cannot happen.
                Err(_) => {
                    let cell = Arc::new(Cell::<K>::new());
                    *entry = cell.clone();
                    cell
                }
            }
        };
        let cache = cell
            .get_or_try_init(|| WatchCache::<K>::start(Arc::clone(&self.store)))
            .await?;
        Ok(Arc::clone(cache))
    }

    /// Starts a watch. Changes come from the kind's watch cache when the
    /// requested version is recent, from the store otherwise.
    ///
    /// # Errors
    /// Bad selectors or versions; OUT_OF_RANGE when the version is gone.
    pub async fn watch<K: Strategy>(&self, req: WatchRequest) -> Result<WatchStream<K>> {
        let filter = Filter::new::<K>(&req.namespace, &req.label_selector, &req.field_selector)?;
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
                Source::Store {
                    stream,
                    _open: OpenStoreWatch::of::<K>(),
                }
            }
        };
        let bookmarks = req.allow_bookmarks.then(|| {
            let period = self.bookmark_interval.max(Duration::from_millis(10));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            // A slow start (many initial objects) is not made up for with
            // a burst of bookmarks.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        let watcher = Watcher::<K> {
            filter,
            source,
            initial: initial.into_iter(),
            sent: start,
            bookmarks,
            ended: false,
            sent_events: skiff_metrics::counter_vec(
                "skiff_apiserver_watch_events_sent_total",
                "watch events sent to watchers, by kind",
                &["kind"],
            )
            .with_label_values(&[K::KIND]),
        };
        Ok(Box::pin(futures::stream::unfold(
            watcher,
            |mut watcher| async move { watcher.next().await.map(|event| (event, watcher)) },
        )))
    }
}

#[cfg(test)]
mod tests;
