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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_history_gives_the_file_back_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    // ~48 MiB of history: 200 keys of 80 KiB, written three times.
    for round in 0..3 {
        put_all(&store, 200, 80 * 1024, round).await;
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
    drop(store);
    // The writer thread lets the file go once it sees the last clone gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reopened = loop {
        match EmbeddedStore::open(&path) {
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
async fn a_big_live_state_is_not_rewritten_while_everything_waits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open(&path).unwrap();
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
