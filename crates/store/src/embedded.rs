//! The embedded store: durable on every acknowledged write, kept in a
//! journal (a log of changes and snapshots, see [`journal`]) or, for a
//! store created before it, one redb file.
//!
//! A redb file has three tables: `kv` (key → current record), `log`
//! (revision → the change made at that revision, with the previous
//! record, for watches and reads at a past revision) and `meta` (current
//! and compacted revisions). The journal keeps the same records: `kv` in
//! memory, `log` as its log on disk.
//!
//! With either, all writes go through one writer thread that commits them
//! in groups: every request waiting when a commit starts joins the same
//! batch, so one fsync acknowledges many writes (etcd's batching, without
//! a network hop). A write is acknowledged only after its batch is durable
//! (the journal's append synced; redb's transaction committed with
//! `Durability::Immediate`), so it survives kill -9. Committed changes are
//! then published to live watchers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{RwLock, broadcast, mpsc, oneshot};

use crate::{
    Error, Event, EventKind, KeyValue, ListOptions, ListResult, Result, Store, WatchStream,
    prefix_end,
};

mod journal;
mod writer;
use journal::{Journal, JournalWriter};
use writer::Writer;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// redb's page cache. Its default (1 GiB) lets a busy server's memory grow
/// far past its working set; the kernel's page cache backs misses.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Committed batches kept for live watchers; a watcher that falls further
/// behind re-reads the log instead.
const BROADCAST_CAPACITY: usize = 1024;
/// Events buffered per watch stream.
const WATCH_BUFFER: usize = 1024;
/// After a compaction of history, the file is rewritten to give its free
/// pages back (redb's compact: reads and writes wait meanwhile, as tasks,
/// not threads) once they are at least this many bytes and half the
/// file: the file then follows the live state instead of its largest
/// history.
const SHRINK_MIN_BYTES: u64 = 16 * 1024 * 1024;
/// ...and only while the pages in use are at most this many bytes: the
/// rewrite copies them with everything waiting, so it is done when it is
/// short (a store at rest after churn), never in the middle of churn. A
/// soak that rewrote ~200 MiB in use every 80 s stalled the store long
/// enough for the controller manager to lose its lease at each one.
const SHRINK_MAX_USED_BYTES: u64 = 16 * 1024 * 1024;

/// A key's current state, as stored in `kv`.
#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    create_revision: i64,
    #[prost(int64, tag = "2")]
    mod_revision: i64,
    #[prost(bytes = "bytes", tag = "3")]
    value: Bytes,
}

/// One change, as stored in `log` under its revision.
#[derive(Clone, PartialEq, Message)]
struct LogEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bool, tag = "2")]
    delete: bool,
    /// The record after a put (unset for a delete).
    #[prost(message, optional, tag = "3")]
    record: Option<Record>,
    /// The record before the change, if the key existed.
    #[prost(message, optional, tag = "4")]
    prev: Option<Record>,
}

/// A [`LogEntry`]'s key alone: decoding it skips the records without
/// copying them, so reading the history of one prefix does not decode
/// every other key's changes.
#[derive(Clone, PartialEq, prost::Message)]
struct LogKey {
    #[prost(string, tag = "1")]
    key: String,
}

impl LogEntry {
    fn into_event(self, revision: i64) -> Event {
        let kind = if self.delete {
            EventKind::Delete
        } else {
            EventKind::Put
        };
        let record = self.record.unwrap_or_default();
        let create_revision = if self.delete {
            self.prev.as_ref().map_or(0, |p| p.create_revision)
        } else {
            record.create_revision
        };
        Event {
            kind,
            kv: KeyValue {
                key: self.key.clone(),
                value: record.value,
                create_revision,
                mod_revision: revision,
            },
            prev: self.prev.map(|p| p.into_kv(self.key)),
        }
    }
}

impl Record {
    fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

fn emb(e: impl Into<redb::Error>) -> Error {
    Error::Embedded(Box::new(e.into()))
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// A write waiting for the writer thread.
enum Op {
    Create {
        key: String,
        value: Bytes,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Option<i64>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
    },
    Compact {
        revision: i64,
    },
}

impl Op {
    /// The bytes of the key it writes.
    fn key_len(&self) -> usize {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key.len(),
            Op::Compact { .. } => 0,
        }
    }

    /// The bytes of the value it writes.
    fn value_len(&self) -> usize {
        match self {
            Op::Create { value, .. } | Op::Update { value, .. } => value.len(),
            Op::Delete { .. } | Op::Compact { .. } => 0,
        }
    }
}

/// What a write did: the revision it got and, for deletes, the old value.
type OpResult = Result<(i64, Option<KeyValue>)>;

struct Pending {
    op: Op,
    reply: oneshot::Sender<OpResult>,
}

/// The embedded store. Cheap to clone; the writer thread stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// How often a watch reports progress (see [`crate::PROGRESS_EVERY`]).
    progress_every: Duration,
}

struct Inner {
    /// Where the state is kept.
    engine: Engine,
    /// The writer thread's inbox.
    writes: mpsc::UnboundedSender<Pending>,
    /// Committed batches of events, in revision order.
    events: broadcast::Sender<Arc<[Event]>>,
}

/// The two ways the embedded store keeps its state.
enum Engine {
    /// A directory with a log of changes and snapshots, the state in
    /// memory (see [`journal`]): every new store.
    Journal(Arc<Journal>),
    /// One redb file: stores created before the journal, opened as they
    /// are. Read-locked for every transaction's life, write-locked (by
    /// the writer) only to compact the file. A tokio lock: a read waiting
    /// for a compaction waits as a task, not a worker thread.
    Redb(Arc<RwLock<Database>>),
}

// === impl EmbeddedStore ===

impl EmbeddedStore {
    /// Opens the store at `path`: a redb file if one is there (a store
    /// from before the journal), else the journal directory at `path`,
    /// created if it does not exist.
    ///
    /// # Errors
    /// When the store cannot be opened or is not a Skiff store (for
    /// instance because another process holds it).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_file() {
            Self::open_redb(path)
        } else {
            Self::open_journal(path)
        }
    }

    /// Opens (or creates) a journal store in directory `dir`.
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_journal(dir: impl AsRef<Path>) -> Result<Self> {
        let (journal, segment) = Journal::open(dir.as_ref())?;
        let (writes, inbox) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let writer = JournalWriter {
            journal: Arc::clone(&journal),
            segment,
            inbox,
            events: events.clone(),
            snapshotting: None,
            failed: None,
        };
        Self::start(Engine::Journal(journal), writes, events, move || {
            writer.run()
        })
    }

    /// Opens (or creates) a redb store file at `path`.
    ///
    /// # Errors
    /// As [`EmbeddedStore::open`].
    pub fn open_redb(path: impl AsRef<Path>) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path.as_ref())
            .map_err(emb)?;
        let txn = db.begin_write().map_err(emb)?;
        {
            txn.open_table(KV).map_err(emb)?;
            txn.open_table(LOG).map_err(emb)?;
            txn.open_table(META).map_err(emb)?;
        }
        txn.commit().map_err(emb)?;
        let db = Arc::new(RwLock::new(db));
        let (writes, inbox) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let writer = Writer {
            db: db.clone(),
            path: path.as_ref().to_path_buf(),
            inbox,
            events: events.clone(),
        };
        Self::start(Engine::Redb(db), writes, events, move || writer.run())
    }

    /// Starts the writer thread.
    fn start(
        engine: Engine,
        writes: mpsc::UnboundedSender<Pending>,
        events: broadcast::Sender<Arc<[Event]>>,
        writer: impl FnOnce() + Send + 'static,
    ) -> Result<Self> {
        std::thread::Builder::new()
            .name("skiff-store-writer".into())
            .spawn(writer)
            .map_err(|e| Error::Embedded(Box::new(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                writes,
                events,
            }),
            progress_every: crate::PROGRESS_EVERY,
        })
    }

    /// Reports watches' progress this often instead (tests; at least
    /// every millisecond).
    #[must_use]
    pub fn with_progress_every(mut self, every: Duration) -> Self {
        self.progress_every = every.max(Duration::from_millis(1));
        self
    }

    async fn write(&self, op: Op) -> OpResult {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writes
            .send(Pending { op, reply })
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// (current revision, compacted revision) as committed.
    async fn revisions(&self) -> Result<(i64, i64)> {
        let db = match &self.inner.engine {
            Engine::Journal(journal) => return Ok(journal.revisions()),
            Engine::Redb(db) => db.read().await,
        };
        let txn = db.begin_read().map_err(emb)?;
        let meta = txn.open_table(META).map_err(emb)?;
        read_revisions(&meta)
    }

    /// Log entries with revision in `from..=to` whose key starts with
    /// `prefix`, as events.
    async fn read_log(&self, prefix: &str, from: i64, to: i64) -> Result<Vec<Event>> {
        let db = match &self.inner.engine {
            Engine::Journal(journal) => return journal.read_log(prefix, from, to),
            Engine::Redb(db) => db.read().await,
        };
        let txn = db.begin_read().map_err(emb)?;
        let meta = txn.open_table(META).map_err(emb)?;
        let (_, compacted) = read_revisions(&meta)?;
        if from < compacted {
            return Err(Error::Compacted {
                requested: from,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(emb)?;
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        for item in log.range(from as u64..=to as u64).map_err(emb)? {
            let (rev, bytes) = item.map_err(emb)?;
            let key: LogKey = decode("log", bytes.value())?;
            if key.key.starts_with(prefix) {
                let entry: LogEntry = decode("log", bytes.value())?;
                out.push(entry.into_event(rev.value() as i64));
            }
        }
        Ok(out)
    }
}

/// Where a list's keys start (inclusive: the prefix, or the key after
/// which the page starts if that is later) and end (exclusive; `None`:
/// no end).
fn key_range(options: &ListOptions) -> (&str, Option<String>) {
    let end = String::from_utf8(prefix_end(&options.prefix)).ok();
    let start = options
        .start_after
        .as_deref()
        .filter(|s| *s >= options.prefix.as_str())
        .unwrap_or(&options.prefix);
    (start, end)
}

/// The revision a read asked for (0: the current one), if the store can
/// serve it.
fn read_revision(requested: i64, current: i64, compacted: i64) -> Result<i64> {
    let at = if requested == 0 { current } else { requested };
    if at > current {
        return Err(Error::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(Error::Compacted {
            requested: at,
            compacted,
        });
    }
    Ok(at)
}

fn read_revisions(meta: &impl ReadableTable<&'static str, u64>) -> Result<(i64, i64)> {
    let get =
        |k: &str| -> Result<i64> { Ok(meta.get(k).map_err(emb)?.map_or(0, |v| v.value() as i64)) };
    Ok((get(META_REVISION)?, get(META_COMPACTED)?))
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let db = match &self.inner.engine {
            Engine::Journal(journal) => return Ok(journal.get(key)),
            Engine::Redb(db) => db.read().await,
        };
        let txn = db.begin_read().map_err(emb)?;
        let kv = txn.open_table(KV).map_err(emb)?;
        match kv.get(key).map_err(emb)? {
            Some(bytes) => {
                let record: Record = decode(key, bytes.value())?;
                Ok(Some(record.into_kv(key.to_string())))
            }
            None => Ok(None),
        }
    }

    async fn list(&self, options: ListOptions) -> Result<ListResult> {
        let db = match &self.inner.engine {
            Engine::Journal(journal) => return journal.list(&options),
            Engine::Redb(db) => db.read().await,
        };
        let txn = db.begin_read().map_err(emb)?;
        let meta = txn.open_table(META).map_err(emb)?;
        let (current, compacted) = read_revisions(&meta)?;
        let at = read_revision(options.revision, current, compacted)?;
        let kv = txn.open_table(KV).map_err(emb)?;
        let (start, end) = key_range(&options);
        let range = match &end {
            Some(end) => kv.range::<&str>(start..end.as_str()).map_err(emb)?,
            None => kv.range::<&str>(start..).map_err(emb)?,
        };
        let limit = if options.limit == 0 {
            usize::MAX
        } else {
            options.limit
        };
        let skip = |k: &str| options.start_after.as_deref().is_some_and(|s| k <= s);
        let mut kvs = Vec::new();
        let mut more = false;
        if at == current {
            for item in range {
                let (k, v) = item.map_err(emb)?;
                let k = k.value();
                if skip(k) {
                    continue;
                }
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                let record: Record = decode(k, v.value())?;
                kvs.push(record.into_kv(k.to_string()));
            }
            return Ok(ListResult {
                kvs,
                revision: at,
                more,
            });
        }
        // A past revision: start from the current state and undo every
        // later change in range, using each change's previous record.
        let mut state: BTreeMap<String, Option<Record>> = BTreeMap::new();
        for item in range {
            let (k, v) = item.map_err(emb)?;
            let k = k.value();
            if !skip(k) {
                state.insert(k.to_string(), Some(decode(k, v.value())?));
            }
        }
        let log = txn.open_table(LOG).map_err(emb)?;
        let mut undone = std::collections::HashSet::new();
        for item in log.range((at + 1) as u64..=current as u64).map_err(emb)? {
            let (_, bytes) = item.map_err(emb)?;
            let key: LogKey = decode("log", bytes.value())?;
            let in_range = key.key.starts_with(&options.prefix) && !skip(&key.key);
            // The earliest change after `at` holds the state at `at`.
            if in_range && undone.insert(key.key.clone()) {
                let entry: LogEntry = decode("log", bytes.value())?;
                state.insert(key.key, entry.prev);
            }
        }
        for (k, record) in state {
            let Some(record) = record else { continue };
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(record.into_kv(k));
        }
        Ok(ListResult {
            kvs,
            revision: at,
            more,
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        let op = Op::Create {
            key: key.to_string(),
            value,
        };
        Ok(self.write(op).await?.0)
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<i64>) -> Result<i64> {
        let op = Op::Update {
            key: key.to_string(),
            value,
            expected,
        };
        Ok(self.write(op).await?.0)
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        let op = Op::Delete {
            key: key.to_string(),
            expected,
        };
        let (rev, prev) = self.write(op).await?;
        let prev = prev.ok_or_else(|| Error::NotFound {
            key: key.to_string(),
        })?;
        Ok((rev, prev))
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        // Subscribe before reading the log: every batch committed after the
        // read is then in the channel, so nothing falls between the two.
        let mut live = self.inner.events.subscribe();
        let (current, compacted) = self.revisions().await?;
        let start = if start_revision == 0 {
            current + 1
        } else {
            start_revision
        };
        if start < compacted {
            return Err(Error::Compacted {
                requested: start,
                compacted,
            });
        }
        if start > current + 1 {
            return Err(Error::FutureRevision {
                requested: start,
                current,
            });
        }
        let backlog = self.read_log(prefix, start, current).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        let prefix = prefix.to_string();
        let every = self.progress_every;
        tokio::spawn(async move {
            // The last revision delivered or reported (or known to be
            // before `start`).
            let mut reported = start - 1;
            for event in backlog {
                reported = event.revision();
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            // Every change up to here has been delivered if it was under
            // the prefix: a batch's changes at or below it are repeats.
            let mut done = reported.max(current);
            let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let batch = tokio::select! {
                    batch = live.recv() => batch,
                    _ = progress.tick() => {
                        if done > reported {
                            reported = done;
                            if tx.send(Ok(Event::progress(done))).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    () = tx.closed() => return,
                };
                let (events, last): (Vec<Event>, i64) = match batch {
                    Ok(batch) => {
                        let events = batch
                            .iter()
                            .filter(|e| e.revision() > done && e.kv.key.starts_with(&prefix))
                            .cloned()
                            .collect();
                        (events, batch.last().map_or(done, Event::revision))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the channel: catch up from the log.
                        let now = match store.revisions().await {
                            Ok((now, _)) => now,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        };
                        match store.read_log(&prefix, done + 1, now).await {
                            Ok(events) => (events, now),
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(Error::Closed)).await;
                        return;
                    }
                };
                done = done.max(last);
                for event in events {
                    reported = event.revision();
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.revisions().await?.0)
    }

    async fn oldest_kept(&self, from: i64) -> Result<i64> {
        let (current, compacted) = self.revisions().await?;
        Ok(from.max(compacted).min(current))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(Op::Compact { revision }).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests;
