//! The journal engine: the store's current state in memory, every change
//! appended to a log on disk, and a snapshot of the state at each
//! compaction (etcd's shape: a write-ahead log, an in-memory index and
//! snapshots).
//!
//! A write costs one append of the change (the key, the new record and
//! the one it replaced) to the open log segment; a batch of writes, one
//! append and one `fdatasync`, and nobody in it is answered before that
//! returns. Only then is the batch applied to the state in memory, so a
//! read never sees a write that a crash could take back.
//!
//! The store's directory holds:
//! - `LOCK`, locked (an advisory lock) while a process has the store open;
//! - `wal-<R>.log`, log segments, each holding the changes from revision R
//!   on until the next segment's first; a new one is started at each
//!   compaction and when one reaches [`SEGMENT_BYTES`];
//! - `snap-<R>.snap`, the whole state at revision R (every key's record),
//!   written at each compaction beside the log (written under a
//!   temporary name, synced, then renamed, so it is whole or absent).
//!
//! Opening loads the newest snapshot and replays the segments after it.
//! Segments before the compacted revision and already in a snapshot are
//! deleted, and older snapshots with them: the directory follows the
//! state and the history kept, not everything ever written. History
//! (changes from the compacted revision on) stays on disk: memory holds,
//! per change, only where it is in its segment and its key.
//!
//! Records in both kinds of file are `[length: u32][CRC-32 of the
//! payload: u32][payload: protobuf]`, little-endian. In a segment, each
//! batch's records are wrapped in one more frame, `[magic: u32][length:
//! u32][CRC-32: u32][records]`, appended with one write and synced before
//! the next batch is written: only the last batch of the last segment can
//! be left unfinished by a crash, and it was never acknowledged. Opening
//! cuts a bad batch off there when no good batch follows it; a bad batch
//! anywhere else is damage, and the store refuses to open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::writer::change;
use super::*;

/// A log segment grows to about this size before the next one is
/// started (compaction deletes whole segments).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The first bytes of every batch in a segment (`SKJ1`).
const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"SKJ1");
/// A batch's frame before its records: magic, checksum, length (u64).
const BATCH_HEADER: usize = 16;
/// The largest value the journal stores (the API server's objects are at
/// most 1.5 MiB): a change, which holds a value and the one it replaced,
/// then always fits a record.
pub(super) const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// A batch stops taking writes once their values come to this much.
pub(super) const MAX_BATCH_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// The largest record a file may hold (a sanity bound when reading
/// lengths back: objects are at most 1.5 MiB, a change holds two).
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// One record of a log segment: a change, or a compaction.
#[derive(Clone, PartialEq, Message)]
struct WalRecord {
    /// The change's revision (0 for a compaction).
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(message, optional, tag = "2")]
    entry: Option<LogEntry>,
    /// History before this revision was dropped (0: not a compaction).
    #[prost(int64, tag = "3")]
    compact: i64,
}

/// A snapshot's first record.
#[derive(Clone, PartialEq, Message)]
struct SnapshotHeader {
    /// The revision the state is at.
    #[prost(int64, tag = "1")]
    revision: i64,
    /// The compacted revision when it was taken.
    #[prost(int64, tag = "2")]
    compacted: i64,
    /// How many key records follow.
    #[prost(uint64, tag = "3")]
    keys: u64,
}

/// One key of a snapshot.
#[derive(Clone, PartialEq, Message)]
struct SnapshotKey {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    record: Option<Record>,
}

/// Where a change since the compacted revision is on disk.
#[derive(Clone)]
struct Loc {
    segment: Arc<File>,
    offset: u64,
    len: u32,
    key: Arc<str>,
}

/// The state shared by readers and the writer.
struct State {
    kv: BTreeMap<Arc<str>, Record>,
    /// Every change from revision `first` on: `history[i]` is revision
    /// `first + i`. Nothing before the compacted revision.
    history: VecDeque<Loc>,
    first: i64,
    revision: i64,
    compacted: i64,
}

/// The journal of one store directory: what readers share.
pub(super) struct Journal {
    dir: PathBuf,
    state: RwLock<State>,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Embedded(format!("{}: {e}", path.display()).into())
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::Embedded(
        format!(
            "{}: {what}: the store is damaged (not a write a crash cut short); restore it from a backup",
            path.display()
        )
        .into(),
    )
}

/// Appends `message` to `buf` as one record.
fn frame(buf: &mut Vec<u8>, message: &impl Message) {
    let len = message.encoded_len();
    buf.reserve(8 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    message
        .encode(buf)
        .expect("a Vec grows to any message's length");
    let crc = crc32fast::hash(&buf[at + 4..]);
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The record at the start of `bytes`: its payload and its whole length,
/// or `None` if it is cut short or fails its checksum.
fn unframe(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, 8 + len))
}

/// Starts a batch in `buf` (empty): its header, filled in by [`seal`].
fn open_batch(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0; BATCH_HEADER]);
}

/// Completes the batch `buf` holds.
fn seal(buf: &mut [u8]) {
    let len = (buf.len() - BATCH_HEADER) as u64;
    let crc = crc32fast::hash(&buf[BATCH_HEADER..]);
    buf[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf[8..16].copy_from_slice(&len.to_le_bytes());
}

/// The batch at the start of `bytes`: its records and its whole length,
/// or `None` if it is not a whole, intact batch.
fn unbatch(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != BATCH_MAGIC {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?)).ok()?;
    // Never written empty: an empty frame is not mistaken for a batch.
    if len == 0 {
        return None;
    }
    let body = bytes.get(BATCH_HEADER..BATCH_HEADER.checked_add(len)?)?;
    (crc32fast::hash(body) == word(4)?).then_some((body, BATCH_HEADER + len))
}

/// Files named `<prefix><revision><suffix>` in `dir`, by revision.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let item = item.map_err(|e| io(dir, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let revision = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(revision) = revision {
            out.push((revision, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, first: i64) -> PathBuf {
    dir.join(format!("wal-{first:020}.log"))
}

fn snapshot_path(dir: &Path, revision: i64) -> PathBuf {
    dir.join(format!("snap-{revision:020}.snap"))
}

/// Makes the directory's entries (a created or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// A snapshot's state: (revision, compacted, keys).
fn load_snapshot(path: &Path) -> Result<(i64, i64, BTreeMap<Arc<str>, Record>)> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let mut at = 0;
    let mut next = || -> Option<&[u8]> {
        let (payload, len) = unframe(&bytes[at..])?;
        at += len;
        Some(payload)
    };
    let header: SnapshotHeader = next()
        .and_then(|p| SnapshotHeader::decode(p).ok())
        .ok_or_else(|| corrupt(path, "a snapshot without its header"))?;
    let mut kv = BTreeMap::new();
    for _ in 0..header.keys {
        let key: SnapshotKey = next()
            .and_then(|p| SnapshotKey::decode(p).ok())
            .ok_or_else(|| corrupt(path, "a snapshot cut short"))?;
        let record = key
            .record
            .ok_or_else(|| corrupt(path, "a snapshot key without its record"))?;
        kv.insert(Arc::from(key.key), record);
    }
    Ok((header.revision, header.compacted, kv))
}

/// Writes the state at `revision` as a snapshot.
fn write_snapshot(
    dir: &Path,
    revision: i64,
    compacted: i64,
    kv: &[(Arc<str>, Record)],
) -> Result<()> {
    let tmp = dir.join(format!("snap-{revision:020}.tmp"));
    let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    let mut out = BufWriter::new(file);
    let mut buf = Vec::new();
    let header = SnapshotHeader {
        revision,
        compacted,
        keys: kv.len() as u64,
    };
    frame(&mut buf, &header);
    for (key, record) in kv {
        let key = SnapshotKey {
            key: key.to_string(),
            record: Some(record.clone()),
        };
        frame(&mut buf, &key);
        if buf.len() >= 1 << 20 {
            out.write_all(&buf).map_err(|e| io(&tmp, e))?;
            buf.clear();
        }
    }
    out.write_all(&buf).map_err(|e| io(&tmp, e))?;
    let file = out.into_inner().map_err(|e| io(&tmp, e.into_error()))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    let path = snapshot_path(dir, revision);
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    sync_dir(dir)
}

/// Deletes what a snapshot at `revision` with history from `compacted`
/// no longer needs: older snapshots, and segments whose every change is
/// before `compacted` and in the snapshot.
fn clean(dir: &Path, revision: i64, compacted: i64) -> Result<()> {
    for (rev, path) in numbered(dir, "snap-", ".snap")? {
        if rev < revision {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    let segments = numbered(dir, "wal-", ".log")?;
    for pair in segments.windows(2) {
        let (_, path) = &pair[0];
        let last = pair[1].0 - 1;
        if last < compacted && last <= revision {
            std::fs::remove_file(path).map_err(|e| io(path, e))?;
        }
    }
    sync_dir(dir)
}

// === impl Journal ===

impl Journal {
    /// Opens (or creates) the store in directory `dir`: the journal, and
    /// the writer's open segment.
    pub(super) fn open(dir: &Path) -> Result<(Arc<Self>, Segment)> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            // The new directory's own entry, so that a store whose writes
            // were acknowledged does not vanish with it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(|e| io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Embedded(
                    format!(
                        "{}: the store is open in another process (or another server in this one)",
                        dir.display()
                    )
                    .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
        }
        for (_, tmp) in numbered(dir, "snap-", ".tmp")? {
            std::fs::remove_file(&tmp).map_err(|e| io(&tmp, e))?;
        }
        let (snapshot, mut compacted, mut kv) = match numbered(dir, "snap-", ".snap")?.last() {
            Some((_, path)) => load_snapshot(path)?,
            None => (0, 0, BTreeMap::new()),
        };
        let mut revision = snapshot;
        let mut history = VecDeque::new();
        let mut first = None;
        let segments = numbered(dir, "wal-", ".log")?;
        let mut open = None;
        // Where the segment before ended (the revision due next).
        let mut due: Option<i64> = None;
        for (i, (start, path)) in segments.iter().enumerate() {
            if let Some(due) = due.filter(|due| due != start) {
                return Err(corrupt(
                    path,
                    &format!("the log jumps from revision {} to {start}", due - 1),
                ));
            }
            let last = i + 1 == segments.len();
            let file = OpenOptions::new()
                .read(true)
                .write(last)
                .open(path)
                .map_err(|e| io(path, e))?;
            let file = Arc::new(file);
            let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
            let mut at = 0;
            let mut expected = *start;
            while at < bytes.len() {
                let Some((body, batch_len)) = unbatch(&bytes[at..]) else {
                    let damaged =
                        !last || (at + 1..bytes.len()).any(|i| unbatch(&bytes[i..]).is_some());
                    if damaged {
                        return Err(corrupt(
                            path,
                            &format!("a bad batch of changes at byte {at}"),
                        ));
                    }
                    // The last batch, which a crash interrupted before it
                    // was synced: never acknowledged.
                    tracing::warn!(
                        segment = %path.display(),
                        at,
                        dropped = bytes.len() - at,
                        "cutting off an unfinished write at the end of the store's log"
                    );
                    file.set_len(at as u64).map_err(|e| io(path, e))?;
                    file.sync_all().map_err(|e| io(path, e))?;
                    break;
                };
                let mut inner = 0;
                while inner < body.len() {
                    let offset = at + BATCH_HEADER + inner;
                    let record = unframe(&body[inner..])
                        .and_then(|(payload, len)| Some((WalRecord::decode(payload).ok()?, len)));
                    let Some((record, len)) = record else {
                        return Err(corrupt(
                            path,
                            &format!("an undecodable record at byte {offset}"),
                        ));
                    };
                    inner += len;
                    compacted = compacted.max(record.compact);
                    let Some(entry) = record.entry else { continue };
                    if record.revision != expected {
                        return Err(corrupt(
                            path,
                            &format!("revision {} where {expected} was due", record.revision),
                        ));
                    }
                    expected += 1;
                    let key: Arc<str> = match kv.get_key_value(entry.key.as_str()) {
                        Some((known, _)) => Arc::clone(known),
                        None => Arc::from(entry.key.as_str()),
                    };
                    if record.revision > snapshot {
                        if record.revision != revision + 1 {
                            return Err(corrupt(
                                path,
                                &format!(
                                    "the log resumes at revision {} after the state at {revision}",
                                    record.revision
                                ),
                            ));
                        }
                        revision = record.revision;
                        match entry.record {
                            Some(r) => {
                                kv.insert(Arc::clone(&key), r);
                            }
                            None => {
                                kv.remove(&key);
                            }
                        }
                    }
                    if first.is_none() {
                        first = Some(record.revision);
                    }
                    history.push_back(Loc {
                        segment: Arc::clone(&file),
                        offset: offset as u64,
                        len: len as u32,
                        key,
                    });
                }
                at += batch_len;
            }
            due = Some(expected);
            if last {
                let len = file.metadata().map_err(|e| io(path, e))?.len();
                open = Some(Segment {
                    file,
                    len,
                    first: *start,
                });
            }
        }
        let open = match open {
            Some(open) => open,
            None => Segment::create(dir, revision + 1)?,
        };
        let mut state = State {
            kv,
            history,
            first: first.unwrap_or(revision + 1),
            revision,
            compacted,
        };
        state.drop_before(compacted);
        tracing::debug!(
            dir = %dir.display(),
            revision,
            compacted,
            keys = state.kv.len(),
            history = state.history.len(),
            "embedded store opened"
        );
        let journal = Arc::new(Self {
            dir: dir.to_path_buf(),
            state: RwLock::new(state),
            _lock: lock,
        });
        Ok((journal, open))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// (current revision, compacted revision).
    pub(super) fn revisions(&self) -> (i64, i64) {
        let state = self.read();
        (state.revision, state.compacted)
    }

    pub(super) fn get(&self, key: &str) -> Option<KeyValue> {
        let state = self.read();
        state
            .kv
            .get(key)
            .map(|record| record.clone().into_kv(key.to_string()))
    }

    /// The change at `loc`, logged at `revision`.
    fn entry(loc: &Loc, revision: i64) -> Result<LogEntry> {
        let mut buf = vec![0; loc.len as usize];
        loc.segment
            .read_exact_at(&mut buf, loc.offset)
            .map_err(|e| Error::Embedded(format!("reading the store's log: {e}").into()))?;
        let (payload, _) = unframe(&buf).ok_or_else(|| {
            Error::Embedded(
                "a record of the store's log changed on disk since it was written".into(),
            )
        })?;
        WalRecord::decode(payload)
            .ok()
            .filter(|r| r.revision == revision)
            .and_then(|r| r.entry)
            .ok_or_else(|| {
                Error::Embedded(
                    format!(
                        "the store's log does not hold revision {revision} where it was indexed"
                    )
                    .into(),
                )
            })
    }

    /// Changes with revision in `from..=to` under `prefix`, as events.
    pub(super) fn read_log(&self, prefix: &str, from: i64, to: i64) -> Result<Vec<Event>> {
        let locs: Vec<(i64, Loc)> = {
            let state = self.read();
            if from < state.compacted {
                return Err(Error::Compacted {
                    requested: from,
                    compacted: state.compacted,
                });
            }
            state.changes(from, to, |key| key.starts_with(prefix))
        };
        locs.iter()
            .map(|(rev, loc)| Ok(Self::entry(loc, *rev)?.into_event(*rev)))
            .collect()
    }

    pub(super) fn list(&self, options: &ListOptions) -> Result<ListResult> {
        let (start, end) = key_range(options);
        let skip = |k: &str| options.start_after.as_deref().is_some_and(|s| k <= s);
        let in_range = |k: &str| {
            k.starts_with(&options.prefix) && !skip(k) && end.as_deref().is_none_or(|e| k < e)
        };
        let limit = if options.limit == 0 {
            usize::MAX
        } else {
            options.limit
        };
        let state = self.read();
        let (current, compacted) = (state.revision, state.compacted);
        let at = read_revision(options.revision, current, compacted)?;
        // A page after the end of the prefix (a continue token from
        // another list) is empty.
        if end.as_deref().is_some_and(|end| start > end) {
            return Ok(ListResult {
                kvs: Vec::new(),
                revision: at,
                more: false,
            });
        }
        let range = state.kv.range::<str, _>((
            std::ops::Bound::Included(start),
            match &end {
                Some(end) => std::ops::Bound::Excluded(end.as_str()),
                None => std::ops::Bound::Unbounded,
            },
        ));
        let mut kvs = Vec::new();
        let mut more = false;
        if at == current {
            for (key, record) in range {
                if skip(key) {
                    continue;
                }
                if kvs.len() == limit {
                    more = true;
                    break;
                }
                kvs.push(record.clone().into_kv(key.to_string()));
            }
            return Ok(ListResult {
                kvs,
                revision: at,
                more,
            });
        }
        // A past revision: the current state, with every later change in
        // range undone from its record of the previous one.
        let mut past: BTreeMap<Arc<str>, Option<Record>> = range
            .filter(|(key, _)| !skip(key))
            .map(|(key, record)| (Arc::clone(key), Some(record.clone())))
            .collect();
        let later = state.changes(at + 1, current, in_range);
        drop(state);
        let mut undone = std::collections::HashSet::new();
        for (rev, loc) in later {
            // The earliest change after `at` holds the state at `at`.
            if undone.insert(Arc::clone(&loc.key)) {
                past.insert(loc.key.clone(), Self::entry(&loc, rev)?.prev);
            }
        }
        for (key, record) in past {
            let Some(record) = record else { continue };
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(record.into_kv(key.to_string()));
        }
        Ok(ListResult {
            kvs,
            revision: at,
            more,
        })
    }
}

// === impl State ===

impl State {
    /// The changes with revision in `from..=to` whose key `wanted` takes.
    fn changes(&self, from: i64, to: i64, wanted: impl Fn(&str) -> bool) -> Vec<(i64, Loc)> {
        let from = from.max(self.first);
        let to = to.min(self.revision);
        (from..=to)
            .filter_map(|rev| {
                let loc = self.history.get((rev - self.first) as usize)?;
                wanted(&loc.key).then(|| (rev, loc.clone()))
            })
            .collect()
    }

    /// Forgets where the changes before `revision` are.
    fn drop_before(&mut self, revision: i64) {
        while self.first < revision && self.history.pop_front().is_some() {
            self.first += 1;
        }
        self.first = self.first.max(revision.min(self.revision + 1));
    }
}

/// The segment the writer appends to.
pub(super) struct Segment {
    file: Arc<File>,
    len: u64,
    first: i64,
}

impl Segment {
    fn create(dir: &Path, first: i64) -> Result<Self> {
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        if let Err(e) = sync_dir(dir) {
            // Not a segment after all: the current one goes on taking
            // the next revisions, which this one's name would claim.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Self {
            file: Arc::new(file),
            len: 0,
            first,
        })
    }
}

/// The journal's writer thread.
pub(super) struct JournalWriter {
    pub(super) journal: Arc<Journal>,
    pub(super) segment: Segment,
    pub(super) inbox: mpsc::UnboundedReceiver<Pending>,
    pub(super) events: broadcast::Sender<Arc<[Event]>>,
    /// The snapshot being written, if any.
    pub(super) snapshotting: Option<std::thread::JoinHandle<()>>,
    /// Why the log can no longer be written: a failed write could not
    /// be cut off it.
    pub(super) failed: Option<String>,
}

impl JournalWriter {
    pub(super) fn run(mut self) {
        while let Some(first) = self.inbox.blocking_recv() {
            let mut bytes = first.op.value_len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_VALUE_BYTES {
                match self.inbox.try_recv() {
                    Ok(p) => {
                        bytes += p.op.value_len();
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let compacted = self.commit(batch);
            if self.failed.is_some() {
                continue;
            }
            let result = if compacted {
                self.checkpoint()
            } else if self.segment.len >= SEGMENT_BYTES {
                self.rotate()
            } else {
                Ok(())
            };
            // The current segment takes the next writes meanwhile; the
            // next compaction (or write) tries again.
            if let Err(e) = result {
                tracing::warn!(error = %e, "embedded store: starting a new log segment");
            }
        }
        if let Some(snapshot) = self.snapshotting.take() {
            let _ = snapshot.join();
        }
    }

    /// Starts a new segment after the current one.
    fn rotate(&mut self) -> Result<()> {
        let next = self.journal.read().revision + 1;
        if next == self.segment.first {
            return Ok(());
        }
        self.segment = Segment::create(&self.journal.dir, next)?;
        Ok(())
    }

    /// After a compaction: a new segment, a snapshot of the state where
    /// the last one ended (written by a thread of its own, which then
    /// deletes what the snapshot and the compaction made useless).
    fn checkpoint(&mut self) -> Result<()> {
        self.rotate()?;
        if let Some(previous) = self.snapshotting.take() {
            let _ = previous.join();
        }
        let (revision, compacted, kv) = {
            let state = self.journal.read();
            let kv: Vec<(Arc<str>, Record)> = state
                .kv
                .iter()
                .map(|(k, r)| (Arc::clone(k), r.clone()))
                .collect();
            (state.revision, state.compacted, kv)
        };
        let dir = self.journal.dir.clone();
        let thread = std::thread::Builder::new()
            .name("skiff-store-snapshot".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let result = write_snapshot(&dir, revision, compacted, &kv)
                    .and_then(|()| clean(&dir, revision, compacted));
                match result {
                    Ok(()) => tracing::info!(
                        revision,
                        keys = kv.len(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "store snapshot written, older log segments deleted"
                    ),
                    Err(e) => tracing::warn!(error = %e, "writing a store snapshot"),
                }
            })
            .map_err(|e| Error::Embedded(Box::new(e)))?;
        self.snapshotting = Some(thread);
        Ok(())
    }

    /// Decides, logs and applies a batch: each write is decided in order
    /// against the state the writes before it left, the batch's changes
    /// are appended and synced, and only then applied and answered.
    /// Whether the compacted revision moved.
    fn commit(&mut self, batch: Vec<Pending>) -> bool {
        if let Some(why) = &self.failed {
            for pending in batch {
                let _ = pending.reply.send(Err(Error::Embedded(why.clone().into())));
            }
            return false;
        }
        let mut outcomes: Vec<OpResult> = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut buf = Vec::new();
        open_batch(&mut buf);
        let mut locs = Vec::new();
        // The batch's changes so far, over the state: key → record after.
        let mut overlay: HashMap<Arc<str>, Option<Record>> = HashMap::new();
        let (base, revision, compacted) = {
            let state = self.journal.read();
            let base = state.compacted;
            let (mut revision, mut compacted) = (state.revision, state.compacted);
            for pending in &batch {
                if pending.op.value_len() > MAX_VALUE_BYTES {
                    outcomes.push(Err(Error::Embedded(
                        format!(
                            "a value of {} bytes: the store takes at most {MAX_VALUE_BYTES}",
                            pending.op.value_len()
                        )
                        .into(),
                    )));
                    continue;
                }
                let key = match &pending.op {
                    Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
                    Op::Compact { revision: to } => {
                        if *to > revision {
                            outcomes.push(Err(Error::FutureRevision {
                                requested: *to,
                                current: revision,
                            }));
                            continue;
                        }
                        if *to > compacted {
                            compacted = *to;
                            frame(
                                &mut buf,
                                &WalRecord {
                                    compact: *to,
                                    ..WalRecord::default()
                                },
                            );
                        }
                        outcomes.push(Ok((revision, None)));
                        continue;
                    }
                };
                // The key as the state or the batch holds it already, if
                // it does: history shares it rather than copying it.
                let (known, prev) = match overlay.get_key_value(key.as_str()) {
                    Some((known, after)) => (Some(Arc::clone(known)), after.clone()),
                    None => match state.kv.get_key_value(key.as_str()) {
                        Some((known, record)) => (Some(Arc::clone(known)), Some(record.clone())),
                        None => (None, None),
                    },
                };
                let entry = match change(&pending.op, prev, revision) {
                    Ok(entry) => entry,
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                };
                revision += 1;
                let offset = self.segment.len + buf.len() as u64;
                let mut record = WalRecord {
                    revision,
                    entry: Some(entry),
                    compact: 0,
                };
                frame(&mut buf, &record);
                let entry = record.entry.take().unwrap_or_default();
                let key = known.unwrap_or_else(|| Arc::from(key.as_str()));
                locs.push(Loc {
                    segment: Arc::clone(&self.segment.file),
                    offset,
                    len: (self.segment.len + buf.len() as u64 - offset) as u32,
                    key: Arc::clone(&key),
                });
                overlay.insert(Arc::clone(&key), entry.record.clone());
                let prev_kv = entry.prev.clone().map(|p| p.into_kv(key.to_string()));
                events.push(entry.into_event(revision));
                outcomes.push(Ok((revision, prev_kv)));
            }
            (base, revision, compacted)
        };
        if buf.len() > BATCH_HEADER {
            seal(&mut buf);
            let written = self
                .segment
                .file
                .write_all_at(&buf, self.segment.len)
                .and_then(|()| self.segment.file.sync_data());
            if let Err(e) = written {
                // Whatever reached the file is not acknowledged: cut it
                // off, and if that fails too, write nothing more.
                let why = format!("writing the store's log: {e}");
                tracing::error!(error = %e, "embedded store: writing its log");
                let cut = self
                    .segment
                    .file
                    .set_len(self.segment.len)
                    .and_then(|()| self.segment.file.sync_all());
                if cut.is_err() {
                    self.failed = Some(why.clone());
                }
                for pending in batch {
                    let _ = pending.reply.send(Err(Error::Embedded(why.clone().into())));
                }
                std::thread::sleep(Duration::from_millis(10));
                return false;
            }
            self.segment.len += buf.len() as u64;
        }
        {
            let mut state = self
                .journal
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for (key, after) in overlay {
                match after {
                    Some(record) => {
                        state.kv.insert(key, record);
                    }
                    None => {
                        state.kv.remove(&key);
                    }
                }
            }
            state.history.extend(locs);
            state.revision = revision;
            state.compacted = compacted;
            state.drop_before(compacted);
        }
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(events.into());
        }
        for (pending, outcome) in batch.into_iter().zip(outcomes) {
            let _ = pending.reply.send(outcome);
        }
        compacted > base
    }
}
