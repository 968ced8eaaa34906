//! The embedded store's writer thread: every write transaction, in
//! batches (group commit), and the file's compaction after history is
//! dropped.

use super::*;

/// How many times a compaction's freed pages are looked for (a read
/// alive at the compaction keeps them pending until it ends), and how far
/// apart.
const SHRINK_CHECKS: u32 = 3;
const SHRINK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The writer thread: owns every write transaction.
pub(super) struct Writer {
    pub(super) db: Arc<RwLock<Database>>,
    /// The store file (its length is what a shrink gives back).
    pub(super) path: std::path::PathBuf,
    pub(super) inbox: mpsc::UnboundedReceiver<Pending>,
    pub(super) events: broadcast::Sender<Arc<[Event]>>,
}

/// Checks still due after a compaction of history, and when the next is.
struct ShrinkDue {
    left: u32,
    next: Instant,
}

// === impl Writer ===

impl Writer {
    pub(super) fn run(mut self) {
        let mut due: Option<ShrinkDue> = None;
        while let Some(first) = self.inbox.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.inbox.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let compacts = batch.iter().any(|p| matches!(p.op, Op::Compact { .. }));
            if !self.commit(batch) {
                continue;
            }
            if compacts {
                due = Some(ShrinkDue {
                    left: SHRINK_CHECKS,
                    next: Instant::now(),
                });
            }
            if let Some(check) = &mut due
                && check.next <= Instant::now()
            {
                check.left -= 1;
                check.next = Instant::now() + SHRINK_CHECK_EVERY;
                if self.shrink() || check.left == 0 {
                    due = None;
                }
            }
        }
    }

    /// Rewrites the file without its free pages when they are many (see
    /// [`SHRINK_MIN_BYTES`]): reads and writes wait meanwhile. Whether
    /// there is nothing more to do (shrunk, too small, or failed).
    fn shrink(&self) -> bool {
        let len = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(_) => return true,
        };
        if len < 2 * SHRINK_MIN_BYTES {
            return true;
        }
        // Pages in use (a walk of every table: only when the file is big).
        let used = (|| -> Result<u64> {
            let db = self.db.blocking_read();
            let txn = db.begin_write().map_err(emb)?;
            let stats = txn.stats().map_err(emb)?;
            txn.abort().map_err(emb)?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })();
        let used = match used {
            Ok(used) => used,
            Err(e) => {
                tracing::warn!(error = %e, "reading the store file's use");
                return true;
            }
        };
        let free = len.saturating_sub(used);
        if used > SHRINK_MAX_USED_BYTES || free < SHRINK_MIN_BYTES || free * 2 < len {
            // Pages a read kept pending may be freed by the next check,
            // and history the next compaction drops.
            return false;
        }
        let started = Instant::now();
        let mut db = self.db.blocking_write();
        let result = db.compact();
        drop(db);
        let after = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        match result {
            Ok(_) => tracing::info!(
                before_mib = len >> 20,
                after_mib = after >> 20,
                took_ms = started.elapsed().as_millis() as u64,
                "store file compacted"
            ),
            Err(e) => tracing::warn!(error = %e, "compacting the store file"),
        }
        true
    }

    /// Applies a batch in one transaction. Each write's outcome is decided
    /// in order against the state left by the writes before it; nobody is
    /// answered until the transaction is durable.
    /// Whether it committed.
    fn commit(&self, batch: Vec<Pending>) -> bool {
        let mut outcomes: Vec<OpResult> = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let result = (|| -> Result<()> {
            let db = self.db.blocking_read();
            let txn = db.begin_write().map_err(emb)?;
            {
                let mut kv = txn.open_table(KV).map_err(emb)?;
                let mut log = txn.open_table(LOG).map_err(emb)?;
                let mut meta = txn.open_table(META).map_err(emb)?;
                let (mut revision, mut compacted) = read_revisions(&meta)?;
                for pending in &batch {
                    let outcome = apply(
                        &pending.op,
                        &mut kv,
                        &mut log,
                        &mut revision,
                        &mut compacted,
                        &mut events,
                    );
                    // A storage failure may have left this write half
                    // applied: abort the whole transaction (everyone in the
                    // batch gets the error; nothing is committed).
                    if let Err(e @ (Error::Embedded(_) | Error::Corrupt { .. })) = outcome {
                        return Err(e);
                    }
                    outcomes.push(outcome);
                }
                meta.insert(META_REVISION, revision as u64).map_err(emb)?;
                meta.insert(META_COMPACTED, compacted as u64).map_err(emb)?;
            }
            txn.commit().map_err(emb)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                if !events.is_empty() {
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(events.into());
                }
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(outcome);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                let message = e.to_string();
                for pending in batch {
                    let _ = pending
                        .reply
                        .send(Err(Error::Embedded(message.clone().into())));
                }
                // Give a failing disk a moment instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        }
    }
}

/// Applies one write inside the writer's transaction.
fn apply(
    op: &Op,
    kv: &mut redb::Table<&str, &[u8]>,
    log: &mut redb::Table<u64, &[u8]>,
    revision: &mut i64,
    compacted: &mut i64,
    events: &mut Vec<Event>,
) -> OpResult {
    let key = match op {
        Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        Op::Compact { revision: to } => {
            if *to > *revision {
                return Err(Error::FutureRevision {
                    requested: *to,
                    current: *revision,
                });
            }
            if *to > *compacted {
                log.retain_in(0..(*to as u64), |_, _| false).map_err(emb)?;
                *compacted = *to;
            }
            return Ok((*revision, None));
        }
    };
    let prev = match kv.get(key.as_str()).map_err(emb)? {
        Some(v) => Some(decode(key, v.value())?),
        None => None,
    };
    let entry = change(op, prev, *revision)?;
    *revision += 1;
    let rev = *revision;
    match &entry.record {
        Some(record) => kv
            .insert(key.as_str(), record.encode_to_vec().as_slice())
            .map_err(emb)?,
        None => kv.remove(key.as_str()).map_err(emb)?,
    };
    log.insert(rev as u64, entry.encode_to_vec().as_slice())
        .map_err(emb)?;
    let prev_kv = entry.prev.clone().map(|p| p.into_kv(key.clone()));
    events.push(entry.into_event(rev));
    Ok((rev, prev_kv))
}

/// The change a create, update or delete makes to its key, decided
/// against the key's record (`prev`) with the store at `revision`: what
/// to log at the next revision, or why the write is refused. Both
/// engines decide with it.
pub(super) fn change(op: &Op, prev: Option<Record>, revision: i64) -> Result<LogEntry> {
    let check = |key: &str, prev: &Option<Record>, expected: Option<i64>| -> Result<()> {
        let Some(prev) = prev else {
            return Err(Error::NotFound {
                key: key.to_string(),
            });
        };
        match expected {
            Some(expected) if expected != prev.mod_revision => Err(Error::Conflict {
                key: key.to_string(),
                expected,
                current: prev.mod_revision,
            }),
            _ => Ok(()),
        }
    };
    match op {
        Op::Create { key, value } | Op::Update { key, value, .. } => {
            match op {
                Op::Create { .. } if prev.is_some() => {
                    return Err(Error::AlreadyExists { key: key.clone() });
                }
                Op::Update { expected, .. } => check(key, &prev, *expected)?,
                _ => {}
            }
            let rev = revision + 1;
            let record = Record {
                create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                mod_revision: rev,
                value: value.clone(),
            };
            Ok(LogEntry {
                key: key.clone(),
                delete: false,
                record: Some(record),
                prev,
            })
        }
        Op::Delete { key, expected } => {
            check(key, &prev, *expected)?;
            Ok(LogEntry {
                key: key.clone(),
                delete: true,
                record: None,
                prev,
            })
        }
        Op::Compact { .. } => unreachable!("a compaction changes no key"),
    }
}
