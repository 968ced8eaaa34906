//! Skiff's store: keys, values and global revisions, the way etcd keeps them.
//!
//! The store holds bytes, not typed objects: only the API server reads and
//! writes it, and it alone knows what the bytes mean.
//!
//! # Layout
//!
//! - [`Store`]: the trait every backend implements, with its semantics.
//! - [`embedded`]: the store in one process's directory (a journal; a
//!   redb file for stores made before it), the default for one machine.
//! - [`etcd`]: etcd through etcd-client, for real clusters and HA masters.
//! - [`metered`]: a wrapper timing every operation for Prometheus.
//!
//! Both pass the same conformance suite (`tests/e2e/store_conformance.rs`).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

pub mod embedded;
pub mod etcd;
pub mod metered;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use metered::Metered;

/// What can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// A create found the key already present.
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The existing key.
        key: String,
    },
    /// The key changed since the revision the caller expected.
    #[error("key {key} was modified: expected revision {expected}, current is {current}")]
    Conflict {
        /// The contested key.
        key: String,
        /// The revision the caller based its change on.
        expected: i64,
        /// The key's current modification revision.
        current: i64,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted; the oldest kept revision is {compacted}")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The oldest revision still kept.
        compacted: i64,
    },
    /// The requested revision is newer than the store's.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The store's current revision.
        current: i64,
    },
    /// The store has shut down.
    #[error("the store is closed")]
    Closed,
    /// The embedded database failed.
    #[error("embedded store: {0}")]
    Embedded(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// etcd failed or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[source] etcd_client::Error),
    /// Stored bytes could not be decoded (corruption or a foreign key space).
    #[error("corrupt record under {key}: {source}")]
    Corrupt {
        /// Where the bad record lives.
        key: String,
        /// The decode failure.
        #[source]
        source: prost::DecodeError,
    },
}

impl Error {
    /// Whether this is an etcd call that ran out of time (the client's
    /// deadline, or the server's).
    pub fn is_timeout(&self) -> bool {
        let Self::Etcd(e) = self else { return false };
        match e {
            etcd_client::Error::GRpcStatus(status) => {
                matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) || status.message().contains("Timeout expired")
            }
            other => other.to_string().to_lowercase().contains("timed out"),
        }
    }
}

/// Store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One key's current value and the revisions that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a delete event's object).
    pub value: Bytes,
    /// The revision that created the key.
    pub create_revision: i64,
    /// The revision that last changed the key: the resourceVersion.
    pub mod_revision: i64,
}

/// A list request: a key prefix, a page, and the revision to read at.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys starting with this.
    pub prefix: String,
    /// Only keys strictly greater than this (the previous page's last key).
    pub start_after: Option<String>,
    /// At most this many keys; 0 means all.
    pub limit: usize,
    /// Read as of this revision; 0 means the current one.
    pub revision: i64,
}

/// A page of keys read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ListResult {
    /// The keys, sorted.
    pub kvs: Vec<KeyValue>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Whether keys remain after this page.
    pub more: bool,
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Deleted.
    Delete,
    /// No change: every change under the watched prefix up to the event's
    /// revision (`kv.mod_revision`) has been delivered (etcd's progress
    /// notification). Its key and value are empty and it has no `prev`.
    /// A watch of a prefix nobody writes thus learns how far the store has
    /// moved on, and one that must be resumed (a lost connection) resumes
    /// after it, not from a revision compaction may have dropped since.
    Progress,
}

/// One change (or progress report), as delivered by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put, delete, or a progress report.
    pub kind: EventKind,
    /// The key after the change; `mod_revision` is the change's revision
    /// (a report's: the revision reached). For a delete, `value` is empty.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision of the change (of a progress report: the revision
    /// reached).
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    /// A progress report: every change up to `revision` delivered.
    pub fn progress(revision: i64) -> Self {
        Self {
            kind: EventKind::Progress,
            kv: KeyValue {
                key: String::new(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    /// Whether this is a progress report, not a change.
    pub fn is_progress(&self) -> bool {
        self.kind == EventKind::Progress
    }
}

/// How often the embedded store's watches report progress
/// ([`EventKind::Progress`]) while the store moves on without a change
/// under their prefix: well within the history the API server keeps (one
/// compaction interval, five minutes by default; with an interval under
/// about a minute a quiet kind may still resume from a compacted revision,
/// and then lists again as before), so a watch resumed after its last
/// report finds its revision still kept. etcd reports at its own
/// `--watch-progress-notify-interval` (`--experimental-...` before 3.6;
/// ten minutes unless set); the etcd Skiff starts has [`ETCD_PROGRESS_ENV`].
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The environment Skiff starts etcd with so that its watches report
/// progress as often as the embedded store's: both spellings of the
/// setting, since etcd before 3.6 knows only the experimental one and
/// after 3.6 only the other, and an environment variable it does not know
/// is only warned about (an unknown flag would stop it).
pub const ETCD_PROGRESS_ENV: [(&str, &str); 2] = [
    ("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "30s"),
    ("ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", "30s"),
];

/// An ordered stream of changes, ending with an error if the store can no
/// longer deliver (e.g. [`Error::Compacted`]).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// A key-value store with global, monotonic revisions, as etcd keeps them.
///
/// Every successful write gets the next revision. Reads and watches see
/// writes in revision order. Conflicting writes are detected with
/// revisions, never with locks held across calls.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    ///
    /// # Errors
    /// Backend failures only; a missing key is `Ok(None)`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads keys under a prefix, sorted, a page at a time, at one revision.
    ///
    /// # Errors
    /// [`Error::Compacted`] when `options.revision` is no longer kept,
    /// [`Error::FutureRevision`] when it is ahead of the store.
    async fn list(&self, options: ListOptions) -> Result<ListResult>;

    /// Creates a key; returns the revision of the write.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the key is present.
    async fn create(&self, key: &str, value: Bytes) -> Result<i64>;

    /// Replaces an existing key's value; returns the revision of the write.
    /// With `expected`, the write only happens if the key's mod revision
    /// still equals it.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the key is absent, [`Error::Conflict`] when
    /// it changed since `expected`.
    async fn update(&self, key: &str, value: Bytes, expected: Option<i64>) -> Result<i64>;

    /// Deletes a key; returns the revision of the delete and the value it
    /// had. With `expected`, only if the mod revision still equals it.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] as for [`Store::update`].
    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)>;

    /// Streams every change under `prefix` with revision ≥ `start_revision`,
    /// in order, with no gaps and no repeats. `start_revision` 0 means
    /// changes after the current revision. Between changes, while the
    /// store's revision moves on without one under `prefix`, progress
    /// reports ([`EventKind::Progress`]) say how far the watch has got
    /// (see [`PROGRESS_EVERY`]): a report at R comes after every change up
    /// to R and before every later one.
    ///
    /// # Errors
    /// [`Error::Compacted`] (now or later in the stream) when the history
    /// from `start_revision` is gone: the caller must list again.
    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream>;

    /// The revision of the latest write.
    ///
    /// # Errors
    /// Backend failures.
    async fn current_revision(&self) -> Result<i64>;

    /// The oldest revision, `from` or later, whose state the store still
    /// keeps: a read at it is served, and a watch from the next one. Never
    /// more than the current revision.
    ///
    /// This default asks with reads at past revisions of a prefix no key
    /// has (a binary search between `from` and the current revision, at
    /// most ~log2 of their distance reads); a store that records where its
    /// history starts answers at once.
    ///
    /// # Errors
    /// Backend failures.
    async fn oldest_kept(&self, from: i64) -> Result<i64> {
        let current = self.current_revision().await?;
        let kept = async |revision: i64| {
            let probe = ListOptions {
                prefix: NO_KEYS.to_string(),
                limit: 1,
                revision,
                ..ListOptions::default()
            };
            match self.list(probe).await {
                Ok(_) => Ok(true),
                Err(Error::Compacted { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        };
        // Revision 0 in a read means the current one: revision 1 kept is
        // all history kept.
        if from >= current || kept(from.max(1)).await? {
            return Ok(from.min(current));
        }
        // `low` compacted, `high` kept (the current revision always is).
        let (mut low, mut high) = (from.max(1), current);
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if kept(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        Ok(high)
    }

    /// Discards history before `revision`: later watches and lists from an
    /// older revision get [`Error::Compacted`].
    ///
    /// # Errors
    /// [`Error::FutureRevision`] when `revision` is ahead of the store.
    async fn compact(&self, revision: i64) -> Result<()>;
}

/// A prefix no key of Skiff's has (they start with `/`): a read of it at a
/// past revision only asks whether the store still has that revision.
const NO_KEYS: &str = "\u{1}";

/// The smallest key greater than every key starting with `prefix` (etcd's
/// range end for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
