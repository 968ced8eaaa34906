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
//! batch's records are wrapped in one more frame, `[magic: u32][CRC-32:
//! u32][length: u64][records]`, appended with one write and synced before
//! the next batch is written: only the last batch of the last segment can
//! be left unfinished by a crash, and it was never acknowledged. Opening
//! cuts a bad batch off there when no good batch follows it; a bad batch
//! anywhere else is damage, and so is a log that does not reach the
//! snapshot's revision or starts after the compacted one: the store
//! refuses to open.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::writer::change;
use super::*;

mod files;
mod writer;
use files::*;
pub(super) use writer::JournalWriter;
pub(super) use writer::Segment;

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

/// Changes the history's index keeps room for however few it holds.
const HISTORY_ROOM_KEPT: usize = 4096;

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

// === impl Journal ===

impl Journal {
    /// Opens (or creates) the store in directory `dir`: the journal, and
    /// the writer's open segment.
    pub(super) fn open(dir: &Path) -> Result<(Arc<Self>, Segment)> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR)
                .create(dir)
                .map_err(|e| io(dir, e))?;
            // The new directory's own entry, so that a store whose writes
            // were acknowledged does not vanish with it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock = private_file(&lock_path, false)?;
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
                    // A good batch after it means it is not the last one:
                    // looked for after its own end if its header is whole
                    // (its records may hold anything), else anywhere.
                    let after = batch_end(&bytes[at..]).map_or(at + 1, |end| at + end);
                    let damaged =
                        !last || (after..bytes.len()).any(|i| unbatch(&bytes[i..]).is_some());
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
        // The log must reach the state (a snapshot is only ever taken of
        // changes already synced to it) and hold the history kept.
        let end = due.unwrap_or(revision + 1);
        if end != revision + 1 {
            return Err(corrupt(
                dir,
                &format!(
                    "the log ends at revision {}, before the snapshot's {revision}",
                    end - 1
                ),
            ));
        }
        let kept_from = first.unwrap_or(revision + 1);
        if let Some(first) = Some(kept_from).filter(|f| revision >= 1 && *f > compacted.max(1)) {
            return Err(corrupt(
                dir,
                &format!("the log starts at revision {first}, after the oldest kept ({compacted})"),
            ));
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

    /// Forgets where the changes before `revision` are, and gives back
    /// the room they took once what is kept fills less than a quarter of
    /// it: an interval of churn otherwise leaves the index its size for
    /// good.
    fn drop_before(&mut self, revision: i64) {
        let before = self.history.len();
        while self.first < revision && self.history.pop_front().is_some() {
            self.first += 1;
        }
        self.first = self.first.max(revision.min(self.revision + 1));
        let (len, capacity) = (self.history.len(), self.history.capacity());
        if len < before && capacity > HISTORY_ROOM_KEPT && len < capacity / 4 {
            self.history.shrink_to((len * 2).max(HISTORY_ROOM_KEPT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of changes, then a compaction of all but the last few: the
    /// index gives back the room the burst took and still finds the
    /// changes kept where they are.
    #[test]
    fn the_history_index_gives_back_its_room_after_a_compaction() {
        let dir = tempfile::tempdir().expect("temp dir");
        let segment = Arc::new(File::create(dir.path().join("segment")).expect("file"));
        let key: Arc<str> = Arc::from("/registry/k");
        let burst: i64 = 100_000;
        let mut state = State {
            kv: BTreeMap::new(),
            history: VecDeque::new(),
            first: 1,
            revision: burst,
            compacted: 0,
        };
        for offset in 0..burst as u64 {
            state.history.push_back(Loc {
                segment: Arc::clone(&segment),
                offset,
                len: 1,
                key: Arc::clone(&key),
            });
        }
        state.drop_before(burst - 9);
        assert_eq!((state.first, state.history.len()), (burst - 9, 10));
        assert!(
            state.history.capacity() <= 2 * HISTORY_ROOM_KEPT,
            "room for {} changes kept for 10",
            state.history.capacity()
        );
        let kept: Vec<(i64, u64)> = state
            .changes(1, burst, |_| true)
            .iter()
            .map(|(revision, loc)| (*revision, loc.offset))
            .collect();
        let expected: Vec<(i64, u64)> = (burst - 9..=burst).map(|r| (r, r as u64 - 1)).collect();
        assert_eq!(kept, expected);
    }
}
