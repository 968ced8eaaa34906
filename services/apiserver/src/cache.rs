//! The watch cache: one store watch per kind, fanned out to every client.
//!
//! A background task follows the store from half a window of revisions
//! before the cache was created (or from where the store's history
//! starts, if later), decodes each change once, keeps the most recent
//! changes in a window, and broadcasts them. A client watching from a
//! revision inside the window is served from memory; N watchers of a kind
//! cost one store watch. A client asking for an older revision is
//! answered by the store directly (or told the revision has expired).

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{EventKind, Store};
use tokio::sync::broadcast;

use crate::strategy::Strategy;

mod live;
pub use live::Live;

/// Changes kept per kind for watchers that resume from a recent revision.
pub(crate) const WINDOW: usize = 4 * 1024;
/// Changes buffered per live watcher before it is cut off as too slow.
const FANOUT_BUFFER: usize = 1024;
/// How long a change stays in the window (Kubernetes' watch cache keeps
/// events for its `eventFreshDuration`, 75 s): a server at rest lets go of
/// its history, and a client resuming from an older version is served by
/// the store instead.
const FRESH: Duration = Duration::from_secs(75);

/// One change to an object of kind `K`, decoded once for every watcher.
#[derive(Debug)]
pub struct Change<K> {
    /// The change's revision.
    pub revision: i64,
    /// Put or delete.
    pub kind: EventKind,
    /// The object after a put; for a delete, its last state. Its
    /// resourceVersion is `revision`.
    pub object: Arc<K>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<K>>,
    /// The store key (namespace filtering without decoding).
    pub key: String,
    /// `object` in protobuf, encoded by the first watcher that sends it.
    protobuf: OnceLock<Bytes>,
    /// `object` in JSON, encoded by the first HTTP watcher that sends it.
    json: OnceLock<Bytes>,
}

impl<K: Strategy> Change<K> {
    /// Decodes a store event; None for a progress report, and (logged) if
    /// the stored bytes are not a `K`, which only a corrupt store or a
    /// foreign writer can cause.
    pub fn from_event(event: skiff_store::Event) -> Option<Self> {
        Self::from_event_after(event, None)
    }

    /// [`Self::from_event`], where `known` may be the object as the
    /// previous change of its key left it (with that change's revision):
    /// if it is the one the event replaced, it is shared as `prev` rather
    /// than decoded again.
    fn from_event_after(event: skiff_store::Event, known: Option<(i64, Arc<K>)>) -> Option<Self> {
        let revision = event.revision();
        let prev = event.prev.as_ref().and_then(|p| match known {
            Some((at, object)) if at == p.mod_revision => Some(object),
            _ => decode::<K>(&p.value, p.mod_revision).map(Arc::new),
        });
        let object = match event.kind {
            EventKind::Put => decode::<K>(&event.kv.value, revision).map(Arc::new),
            EventKind::Progress => return None,
            EventKind::Delete => Some(Arc::new(match prev.as_ref() {
                Some(p) => {
                    let mut last = (**p).clone();
                    last.metadata_mut().resource_version = revision.to_string();
                    last
                }
                // etcd omits the previous value when its revision has been
                // compacted: name the deleted object from its key.
                None => {
                    let mut gone = K::default();
                    gone.set_type_meta();
                    let (namespace, name) =
                        skiff::keys::parse::<K>(&event.kv.key).unwrap_or_default();
                    let meta = gone.metadata_mut();
                    meta.namespace = namespace.to_string();
                    meta.name = name.to_string();
                    meta.resource_version = revision.to_string();
                    gone
                }
            })),
        };
        let Some(object) = object else {
            tracing::error!(kind = K::KIND, key = %event.kv.key, "undecodable object in store; skipped");
            return None;
        };
        Some(Self {
            revision,
            kind: event.kind,
            object,
            prev,
            key: event.kv.key,
            protobuf: OnceLock::new(),
            json: OnceLock::new(),
        })
    }

    /// The object's protobuf encoding, made once for every watcher.
    pub fn protobuf(&self) -> Bytes {
        self.protobuf
            .get_or_init(|| Bytes::from(self.object.encode_to_vec()))
            .clone()
    }

    /// The object's JSON (as `encode` writes it), made once for every
    /// watcher that shows the object as stored; None if `encode` fails.
    pub fn json(&self, encode: impl FnOnce(&K) -> Option<Bytes>) -> Option<Bytes> {
        if let Some(json) = self.json.get() {
            return Some(json.clone());
        }
        let json = encode(&self.object)?;
        Some(self.json.get_or_init(|| json).clone())
    }
}

/// What the cache knows, behind one lock so that reading the window and
/// subscribing happen together.
struct State<K> {
    /// Recent changes, oldest first, with when they arrived.
    window: VecDeque<(Instant, Arc<Change<K>>)>,
    /// Each key's object as its latest change in `window` left it (not
    /// for a delete), with that change's revision: the next change of the
    /// key shares it as its `prev` instead of decoding a second copy.
    last: HashMap<String, (i64, Arc<K>)>,
    /// Every change after this revision is in `window` (or still coming).
    window_start: i64,
    /// The latest revision up to which every change of the kind has been
    /// pushed (a change's, or a store's progress report's).
    latest: i64,
    /// Live fan-out.
    tx: broadcast::Sender<Arc<Change<K>>>,
    /// `tx`'s number, unique in the process (a thread's watchers of it
    /// share a relay: see [`Live`]). A new one whenever the cache restarts
    /// (and replaces `tx`): a receiver of an older channel has missed
    /// changes.
    channel: u64,
}

impl<K> State<K> {
    /// Drops the oldest change of the window (and its key's object from
    /// `last`, if no later change of the key replaced it there).
    fn pop_front(&mut self) {
        let Some((_, old)) = self.window.pop_front() else {
            return;
        };
        self.window_start = old.revision;
        if self
            .last
            .get(&old.key)
            .is_some_and(|(at, _)| *at == old.revision)
        {
            self.last.remove(&old.key);
        }
    }
}

/// The watch cache of one kind.
pub struct WatchCache<K> {
    state: Mutex<State<K>>,
    /// Changes kept ([`WINDOW`] but in tests).
    window: usize,
    /// Changes a live watcher may fall behind ([`FANOUT_BUFFER`] but in tests).
    fanout: usize,
    /// How long changes are kept ([`FRESH`] but in tests).
    fresh: Duration,
    _kind: PhantomData<K>,
}

/// A live subscription: the backlog to replay, then the channel.
pub struct Subscription<K> {
    /// Changes after the requested revision already in the window.
    pub backlog: Vec<Arc<Change<K>>>,
    /// Changes still to come.
    pub live: Live<Arc<Change<K>>>,
}

/// Decodes a stored object and stamps its resourceVersion.
pub fn decode<K: Strategy>(bytes: &[u8], revision: i64) -> Option<K> {
    let mut obj = K::decode(bytes).ok()?;
    obj.metadata_mut().resource_version = revision.to_string();
    obj.set_type_meta();
    Some(obj)
}

// === impl WatchCache ===

impl<K: Strategy> WatchCache<K> {
    /// Starts following the store from half a window of revisions back,
    /// or from the oldest revision the store still keeps if that is later:
    /// the kind's changes since are read back from the store's history
    /// into the window, so that every watch from a version since is served
    /// from memory — the first one, from the version its client listed at
    /// (revisions are global: other kinds' writes move them too), and
    /// clients resuming from older versions after it (informers
    /// reconnecting to a restarted server). Half the window: there is at
    /// most one change per revision, and the other half is left for the
    /// changes made while they are read (a longer replay would push out
    /// changes its first watchers still need).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn start(store: Arc<dyn Store>) -> skiff_store::Result<Arc<Self>> {
        Self::start_sized(store, WINDOW, FANOUT_BUFFER, FRESH).await
    }

    /// [`Self::start`] keeping `window` changes for `fresh` at most, with
    /// live watchers `fanout` changes of slack.
    pub(crate) async fn start_sized(
        store: Arc<dyn Store>,
        window: usize,
        fanout: usize,
        fresh: Duration,
    ) -> skiff_store::Result<Arc<Self>> {
        let current = store.current_revision().await?;
        let kept = i64::try_from(window).unwrap_or(i64::MAX);
        // A compaction between this and the first read of the history is
        // found by that read, in `follow`: the cache then starts again from
        // the present and its watchers are told to relist.
        let from = match store.oldest_kept((current - kept / 2).max(0)).await {
            Ok(from) => from,
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "watch cache: where the store's history starts is unknown; starting at the present");
                current
            }
        };
        let (tx, _) = broadcast::channel(fanout);
        let cache = Arc::new(Self {
            state: Mutex::new(State {
                window: VecDeque::new(),
                last: HashMap::new(),
                window_start: from,
                latest: from,
                tx,
                channel: live::channel_id(),
            }),
            window,
            fanout,
            fresh,
            _kind: PhantomData,
        });
        tokio::spawn(Arc::clone(&cache).follow(store, from));
        tokio::spawn(Self::expire(Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// Lets go of stale changes while nothing new arrives (a push trims
    /// too); ends with the cache.
    async fn expire(cache: std::sync::Weak<Self>) {
        loop {
            let Some(period) = cache.upgrade().map(|c| c.fresh / 3) else {
                return;
            };
            tokio::time::sleep(period).await;
            let Some(cache) = cache.upgrade() else {
                return;
            };
            cache.trim(&mut cache.state.lock().expect("watch cache lock"));
        }
    }

    /// Drops the changes older than `fresh` from the front of the window.
    fn trim(&self, state: &mut State<K>) {
        let now = Instant::now();
        while let Some((at, _)) = state.window.front()
            && now.duration_since(*at) > self.fresh
        {
            state.pop_front();
        }
        if state.window.is_empty() {
            // At rest: the room a burst of keys took goes too.
            state.last.shrink_to_fit();
        }
    }

    /// Follows the store forever, reconnecting on errors. If the store lost
    /// the history the cache needs (compaction), the cache restarts from
    /// the present and cuts off its live watchers so they resume.
    async fn follow(self: Arc<Self>, store: Arc<dyn Store>, mut from: i64) {
        let prefix = skiff::keys::kind::<K>();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut stream = match store.watch(&prefix, from + 1).await {
                Ok(s) => s,
                Err(e) => {
                    from = self.recover(&*store, &e, from).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        delay = Duration::from_millis(100);
                        from = from.max(event.revision());
                        self.push(event);
                    }
                    Err(e) => {
                        from = self.recover(&*store, &e, from).await;
                        break;
                    }
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn recover(&self, store: &dyn Store, err: &skiff_store::Error, from: i64) -> i64 {
        tracing::warn!(kind = K::KIND, error = %err, "watch cache lost its store watch; resuming");
        if !matches!(err, skiff_store::Error::Compacted { .. }) {
            return from;
        }
        let Ok(now) = store.current_revision().await else {
            return from;
        };
        let mut state = self.state.lock().expect("watch cache lock");
        state.window.clear();
        state.last.clear();
        state.window_start = now;
        state.latest = now;
        // Dropping the sender ends every live watcher; they resume from
        // their last revision and, if it is gone, are told to relist.
        state.tx = broadcast::channel(self.fanout).0;
        state.channel = live::channel_id();
        now
    }

    fn push(&self, event: skiff_store::Event) {
        if event.is_progress() {
            // Nothing changed up to it: bookmarks may say so.
            let mut state = self.state.lock().expect("watch cache lock");
            state.latest = state.latest.max(event.revision());
            return;
        }
        // Decoded outside the lock; `last` is only a candidate, taken as
        // `prev` if its revision is the one the event replaced.
        let known = event.prev.as_ref().and_then(|_| {
            let state = self.state.lock().expect("watch cache lock");
            state.last.get(&event.kv.key).cloned()
        });
        let Some(change) = Change::from_event_after(event, known) else {
            return;
        };
        let change = Arc::new(change);
        let revision = change.revision;
        let mut state = self.state.lock().expect("watch cache lock");
        if state.window.len() == self.window {
            state.pop_front();
        }
        self.trim(&mut state);
        if matches!(change.kind, EventKind::Delete) {
            state.last.remove(&change.key);
        } else {
            let last = (revision, Arc::clone(&change.object));
            state.last.insert(change.key.clone(), last);
        }
        state.latest = revision;
        state
            .window
            .push_back((Instant::now(), Arc::clone(&change)));
        let _ = state.tx.send(change);
    }

    /// Subscribes to changes after `revision`, or None when the window no
    /// longer reaches back that far.
    pub fn subscribe(&self, revision: i64) -> Option<Subscription<K>> {
        let state = self.state.lock().expect("watch cache lock");
        if revision < state.window_start {
            return None;
        }
        let backlog = state
            .window
            .iter()
            .filter(|(_, c)| c.revision > revision)
            .map(|(_, c)| Arc::clone(c))
            .collect();
        Some(Subscription {
            backlog,
            live: Live::new(state.tx.subscribe(), state.channel),
        })
    }

    /// The latest revision the cache has seen.
    #[cfg(test)]
    pub(crate) fn latest(&self) -> i64 {
        self.state.lock().expect("watch cache lock").latest
    }

    /// The latest revision the cache has seen, if `live` has nothing
    /// pending, so that a bookmark at that revision skips nothing. None for
    /// a receiver of a restarted cache's old channel: it has missed changes
    /// and must not claim progress.
    pub fn progress(&self, live: &Live<Arc<Change<K>>>) -> Option<i64> {
        let state = self.state.lock().expect("watch cache lock");
        (state.channel == live.channel() && live.is_empty()).then_some(state.latest)
    }
}
