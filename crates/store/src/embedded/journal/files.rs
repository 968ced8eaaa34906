//! The journal's files: how records, batches and snapshots are framed on
//! disk, their names, and the snapshots written and cleaned up at each
//! compaction.

use super::*;

/// One record of a log segment: a change, or a compaction.
#[derive(Clone, PartialEq, Message)]
pub(super) struct WalRecord {
    /// The change's revision (0 for a compaction).
    #[prost(int64, tag = "1")]
    pub(super) revision: i64,
    #[prost(message, optional, tag = "2")]
    pub(super) entry: Option<LogEntry>,
    /// History before this revision was dropped (0: not a compaction).
    #[prost(int64, tag = "3")]
    pub(super) compact: i64,
}

/// A snapshot's first record.
#[derive(Clone, PartialEq, Message)]
pub(super) struct SnapshotHeader {
    /// The revision the state is at.
    #[prost(int64, tag = "1")]
    pub(super) revision: i64,
    /// The compacted revision when it was taken.
    #[prost(int64, tag = "2")]
    pub(super) compacted: i64,
    /// How many key records follow.
    #[prost(uint64, tag = "3")]
    pub(super) keys: u64,
}

/// One key of a snapshot.
#[derive(Clone, PartialEq, Message)]
pub(super) struct SnapshotKey {
    #[prost(string, tag = "1")]
    pub(super) key: String,
    #[prost(message, optional, tag = "2")]
    pub(super) record: Option<Record>,
}

pub(super) fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Embedded(format!("{}: {e}", path.display()).into())
}

pub(super) fn corrupt(path: &Path, what: &str) -> Error {
    Error::Embedded(
        format!(
            "{}: {what}: the store is damaged (not a write a crash cut short); restore it from a backup",
            path.display()
        )
        .into(),
    )
}

/// Appends `message` to `buf` as one record.
pub(super) fn frame(buf: &mut Vec<u8>, message: &impl Message) {
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
pub(super) fn unframe(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, 8 + len))
}

/// Starts a batch in `buf` (empty): its header, filled in by [`seal`].
pub(super) fn open_batch(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&[0; BATCH_HEADER]);
}

/// Completes the batch `buf` holds.
pub(super) fn seal(buf: &mut [u8]) {
    let len = (buf.len() - BATCH_HEADER) as u64;
    let crc = crc32fast::hash(&buf[BATCH_HEADER..]);
    buf[..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf[8..16].copy_from_slice(&len.to_le_bytes());
}

/// The batch at the start of `bytes`: its records and its whole length,
/// or `None` if it is not a whole, intact batch.
pub(super) fn unbatch(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let end = batch_end(bytes)?;
    // Never written empty: an empty frame is not mistaken for a batch.
    if end == BATCH_HEADER {
        return None;
    }
    let body = bytes.get(BATCH_HEADER..end)?;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    (crc32fast::hash(body) == crc).then_some((body, end))
}

/// Where the batch starting `bytes` says it ends, if its header is whole.
pub(super) fn batch_end(bytes: &[u8]) -> Option<usize> {
    if bytes.get(..4)? != BATCH_MAGIC.to_le_bytes() {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?)).ok()?;
    BATCH_HEADER.checked_add(len)
}

/// Files named `<prefix><revision><suffix>` in `dir`, by revision.
pub(super) fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(i64, PathBuf)>> {
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

pub(super) fn segment_path(dir: &Path, first: i64) -> PathBuf {
    dir.join(format!("wal-{first:020}.log"))
}

pub(super) fn snapshot_path(dir: &Path, revision: i64) -> PathBuf {
    dir.join(format!("snap-{revision:020}.snap"))
}

/// The store's directory and files are its owner's alone (they hold
/// Secrets), as etcd keeps its data directory.
pub(super) const PRIVATE_DIR: u32 = 0o700;

/// Creates (or, without `truncate`, opens) a file only its owner may read.
pub(super) fn private_file(path: &Path, truncate: bool) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))
}

/// Makes the directory's entries (a created or renamed file) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// A snapshot's state: (revision, compacted, keys).
pub(super) fn load_snapshot(path: &Path) -> Result<(i64, i64, BTreeMap<Arc<str>, Record>)> {
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
pub(super) fn write_snapshot(
    dir: &Path,
    revision: i64,
    compacted: i64,
    kv: &[(Arc<str>, Record)],
) -> Result<()> {
    let tmp = dir.join(format!("snap-{revision:020}.tmp"));
    let file = private_file(&tmp, true)?;
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
pub(super) fn clean(dir: &Path, revision: i64, compacted: i64) -> Result<()> {
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
