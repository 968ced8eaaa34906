//! The journal's writer thread: decides each batch of writes, appends
//! and syncs it, applies it, and starts segments and snapshots.

use super::*;

/// The segment the writer appends to.
pub(in crate::embedded) struct Segment {
    pub(super) file: Arc<File>,
    pub(super) len: u64,
    pub(super) first: i64,
}

impl Segment {
    pub(super) fn create(dir: &Path, first: i64) -> Result<Self> {
        let path = segment_path(dir, first);
        let file = OpenOptions::new()
            .mode(0o600)
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
pub(in crate::embedded) struct JournalWriter {
    pub(in crate::embedded) journal: Arc<Journal>,
    pub(in crate::embedded) segment: Segment,
    pub(in crate::embedded) inbox: mpsc::UnboundedReceiver<Pending>,
    pub(in crate::embedded) events: broadcast::Sender<Arc<[Event]>>,
    /// The snapshot being written, if any.
    pub(in crate::embedded) snapshotting: Option<std::thread::JoinHandle<()>>,
    /// Why the log can no longer be written: a failed write could not
    /// be cut off it.
    pub(in crate::embedded) failed: Option<String>,
}

impl JournalWriter {
    pub(in crate::embedded) fn run(mut self) {
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
                if pending.op.value_len() + pending.op.key_len() > MAX_VALUE_BYTES {
                    outcomes.push(Err(Error::Embedded(
                        format!(
                            "a key and value of {} bytes: the store takes at most {MAX_VALUE_BYTES}",
                            pending.op.value_len() + pending.op.key_len()
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
