use std::time::Duration;

use bytes::Bytes;

use crate::{EmbeddedStore, ListOptions, Store};

/// Writes `n` keys of `size` bytes at once (one batch: one commit).
async fn put_all(store: &EmbeddedStore, n: usize, size: usize, round: u8) {
    let value = Bytes::from(vec![round; size]);
    let writes = (0..n).map(|i| {
        let value = value.clone();
        async move {
            let key = format!("/registry/big/{i:04}");
            match store.update(&key, value.clone(), None).await {
                Ok(_) => {}
                Err(crate::Error::NotFound { .. }) => {
                    store.create(&key, value).await.unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    futures::future::join_all(writes).await;
}

/// ~48 MiB of history (200 keys of 80 KiB, written three times, then
/// deleted) and one small key, `/registry/small/kept`, live.
async fn churn_away(store: &EmbeddedStore) {
    for round in 0..3 {
        put_all(store, 200, 80 * 1024, round).await;
    }
    store
        .create("/registry/small/kept", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    for i in 0..200 {
        store
            .delete(&format!("/registry/big/{i:04}"), None)
            .await
            .unwrap();
    }
}

/// What [`churn_away`] left live is there, and only that.
async fn only_the_small_key_is_left(store: &EmbeddedStore) {
    let kept = store.get("/registry/small/kept").await.unwrap().unwrap();
    assert_eq!(kept.value.as_ref(), b"kept");
    let big = store
        .list(ListOptions {
            prefix: "/registry/big/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(big.kvs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_history_gives_the_redb_file_back_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open_redb(&path).unwrap();
    churn_away(&store).await;
    let grown = std::fs::metadata(&path).unwrap().len();
    assert!(grown > 40 << 20, "the history takes room: {grown} bytes");
    let revision = store.current_revision().await.unwrap();
    store.compact(revision).await.unwrap();
    // The writer rewrites the file right after answering the compaction,
    // before the next write: that write's wait is the rewrite's time.
    let started = std::time::Instant::now();
    let next = store
        .create("/registry/small/after", Bytes::from_static(b"after"))
        .await
        .unwrap();
    let waited = started.elapsed();
    let shrunk = std::fs::metadata(&path).unwrap().len();
    assert!(shrunk < grown / 16, "{grown} → {shrunk} bytes");
    eprintln!(
        "store file: {} KiB → {} KiB; the next write waited {waited:?}",
        grown >> 10,
        shrunk >> 10
    );
    assert!(next > revision);

    // What is live is all there, and the store goes on.
    only_the_small_key_is_left(&store).await;
    drop(store);
    // The writer thread lets the file go once it sees the last clone gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match EmbeddedStore::open_redb(&path) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopening: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(reopened.current_revision().await.unwrap(), next);
    assert!(
        reopened
            .get("/registry/small/after")
            .await
            .unwrap()
            .is_some()
    );
}

/// A rewrite copies what is in use while everything waits: with more than
/// 16 MiB live it is not done (the file keeps its free pages for later
/// writes instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_live_redb_state_is_not_rewritten_while_everything_waits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open_redb(&path).unwrap();
    // 24 MiB live, written three times.
    for round in 0..3 {
        put_all(&store, 300, 80 * 1024, round).await;
    }
    let grown = std::fs::metadata(&path).unwrap().len();
    let revision = store.current_revision().await.unwrap();
    store.compact(revision).await.unwrap();
    store
        .create("/registry/small/after", Bytes::from_static(b"after"))
        .await
        .unwrap();
    let after = std::fs::metadata(&path).unwrap().len();
    assert_eq!(after, grown, "not rewritten");
    let live = store
        .list(ListOptions {
            prefix: "/registry/big/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(live.kvs.len(), 300);
}

/// Bytes in the files of directory `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Opens the store at `path`, waiting for a dropped one's writer thread
/// to let it go.
async fn reopen(path: &std::path::Path) -> EmbeddedStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedStore::open(path) {
            Ok(store) => break store,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopening: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Why opening the store at `path` fails, once a dropped one's writer
/// has let it go.
async fn refused(path: &std::path::Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedStore::open(path) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e)
                if e.to_string().contains("open in another process")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return e.to_string(),
        }
    }
}

/// The journal's compactions delete the log segments before them (each
/// compaction starts a segment and snapshots the state, so the log up to
/// the one before is no longer needed): the directory follows the state,
/// and a reopened store has its state and the history kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_compactions_delete_the_log_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    churn_away(&store).await;
    let grown = dir_bytes(&path);
    assert!(grown > 40 << 20, "the history takes room: {grown} bytes");
    // As the API server does: each compaction drops what came before the
    // one before it.
    let first = store.current_revision().await.unwrap();
    store.compact(first).await.unwrap();
    let after = store
        .create("/registry/small/after", Bytes::from_static(b"after"))
        .await
        .unwrap();
    store.compact(after).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let shrunk = loop {
        let now = dir_bytes(&path);
        if now < grown / 16 || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(shrunk < grown / 16, "{grown} → {shrunk} bytes");
    eprintln!("store: {} KiB → {} KiB", grown >> 10, shrunk >> 10);
    drop(store);

    let store = reopen(&path).await;
    assert_eq!(store.current_revision().await.unwrap(), after);
    assert_eq!(store.oldest_kept(0).await.unwrap(), after);
    only_the_small_key_is_left(&store).await;
    // History from the compacted revision on is still served.
    let mut watch = store.watch("/registry/small/", after).await.unwrap();
    let event = futures::StreamExt::next(&mut watch).await.unwrap().unwrap();
    assert_eq!(event.revision(), after);
    assert!(matches!(
        store.watch("/registry/", after - 1).await,
        Err(crate::Error::Compacted { .. })
    ));
    let next = store
        .create("/registry/small/next", Bytes::from_static(b"next"))
        .await
        .unwrap();
    assert_eq!(next, after + 1);
}

/// A batch a crash interrupted is at the end of the last segment, cut
/// short: it was never acknowledged, and opening drops it. Damage
/// anywhere else is not a crash, and the store refuses to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_drops_a_write_cut_short_and_refuses_damage() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    let mut last = 0;
    for i in 0..10 {
        last = store
            .create(&format!("/k/{i}"), Bytes::from(vec![b'v'; 100]))
            .await
            .unwrap();
    }
    let segment = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let whole = std::fs::metadata(&segment).unwrap().len();
    // One more batch, then only its first bytes on disk: a crash in the
    // middle of its write (it was never acknowledged: not synced).
    store
        .create("/k/cut", Bytes::from(vec![b'c'; 1000]))
        .await
        .unwrap();
    drop(store);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(whole + 40).unwrap();
    drop(file);
    let store = reopen(&path).await;
    assert_eq!(store.current_revision().await.unwrap(), last);
    assert!(store.get("/k/cut").await.unwrap().is_none());
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), whole);
    last = store.create("/k/next", Bytes::new()).await.unwrap();
    assert_eq!(last, 11);
    let whole = std::fs::metadata(&segment).unwrap().len();
    drop(store);
    // A crash may also leave the file longer, its last pages zeros.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(&[0; 4096]).unwrap();
    drop(file);
    let store = reopen(&path).await;
    assert_eq!(store.current_revision().await.unwrap(), last);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), whole);
    drop(store);

    // A flipped byte inside a record: its checksum fails, and records
    // follow it, so it is not a write cut short.
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let err = refused(&path).await;
    assert!(err.contains("damaged"), "{err}");
}

/// A log that skips revisions (a segment lost between two others) would
/// file every later change under the wrong revision: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_refuses_a_log_with_a_segment_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    // Three segments: each compaction starts one, and these compactions
    // are too early to let any go.
    for round in 0..3_i64 {
        for i in 0..3 {
            store
                .create(&format!("/k/{round}/{i}"), Bytes::new())
                .await
                .unwrap();
        }
        store.compact(round + 1).await.unwrap();
    }
    drop(store);
    let mut segments: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    // The newest snapshot has the state: the segments are read for the
    // history alone, which the hole would shift.
    std::fs::remove_file(&segments[1]).unwrap();
    let err = refused(&path).await;
    assert!(err.contains("damaged"), "{err}");
}

/// A log that lost its start (the history from the compacted revision)
/// would serve watches from there without their first changes: refused,
/// though the snapshot has the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_refuses_a_log_without_the_history_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    for i in 0..3 {
        store
            .create(&format!("/k/{i}"), Bytes::new())
            .await
            .unwrap();
    }
    // A snapshot at 3, a new segment after it.
    store.compact(3).await.unwrap();
    drop(store);
    drop(reopen(&path).await);
    let first = path.join(format!("wal-{:020}.log", 1));
    assert!(first.exists());
    assert!(
        std::fs::read_dir(&path).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|e| e == "snap"))
    );
    std::fs::remove_file(&first).unwrap();
    let err = refused(&path).await;
    assert!(
        err.contains("damaged") && err.contains("after the oldest kept"),
        "{err}"
    );
}

/// A value larger than the journal takes is refused, and the store goes
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_refuses_a_value_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state")).unwrap();
    let big = Bytes::from(vec![0; super::journal::MAX_VALUE_BYTES + 1]);
    let err = store.create("/k/big", big).await.unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
    assert_eq!(store.create("/k/small", Bytes::new()).await.unwrap(), 1);
}

/// The store holds Secrets: its directory and files are its owner's
/// alone.
#[tokio::test]
async fn journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    store.create("/k/secret", Bytes::new()).await.unwrap();
    store.compact(1).await.unwrap();
    drop(store);
    drop(reopen(&path).await);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    let files: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "snap"))
    );
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// Two servers on one store would each believe they own its revisions:
/// the second open is refused while the first holds it.
#[tokio::test]
async fn journal_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let first = EmbeddedStore::open(&path).unwrap();
    let err = EmbeddedStore::open(&path)
        .err()
        .expect("second open refused");
    assert!(err.to_string().contains("open in another process"), "{err}");
    drop(first);
    reopen(&path).await;
}

/// A watcher that stops reading while thousands of commits go by falls
/// behind the live channel and catches up from the log: every change once,
/// in order, and the progress reports (frequent here) never past a change
/// still to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_catches_up_from_the_log_in_order() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb"))
        .unwrap()
        .with_progress_every(Duration::from_millis(1));
    let mut watch = store.watch("/lag/in/", 0).await.unwrap();
    // More commits (one each) than the watch's buffer and the live
    // channel hold together, some outside the prefix.
    let mut written = Vec::new();
    for i in 0..(super::WATCH_BUFFER + super::BROADCAST_CAPACITY + 200) {
        let key = format!("/lag/in/{i:05}");
        written.push(store.create(&key, Bytes::new()).await.unwrap());
        if i % 100 == 0 {
            let other = format!("/lag/out/{i:05}");
            store.create(&other, Bytes::new()).await.unwrap();
        }
    }
    let (mut changes, mut reported) = (Vec::new(), 0);
    while changes.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch error");
        if event.is_progress() {
            assert!(event.revision() >= reported, "progress went back");
            reported = event.revision();
        } else {
            assert!(
                event.revision() > reported,
                "a change after a report past it"
            );
            changes.push(event.revision());
        }
    }
    assert_eq!(changes, written, "every change once, in order");
}
