//! The Store conformance suite: every check runs against every backend —
//! the embedded store (its journal, and a redb file as stores created
//! before the journal have) and a real etcd started for the test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use skiff_store::{Error, EventKind, ListOptions, Store, WatchStream};

/// How often the embedded store under test reports a watch's progress
/// (the test etcd: every 200 ms): often, so that the checks below see
/// reports within their time.
const PROGRESS: Duration = Duration::from_millis(100);

/// A store under test and whatever keeps it alive.
struct Backend {
    store: Arc<dyn Store>,
    _etcd: Option<skiff_testkit::Etcd>,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = skiff_store::EmbeddedStore::open(dir.path().join("state"))
        .unwrap()
        .with_progress_every(PROGRESS);
    Backend {
        store: Arc::new(store),
        _etcd: None,
        _dir: Some(dir),
    }
}

async fn redb() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = skiff_store::EmbeddedStore::open_redb(dir.path().join("state.redb"))
        .unwrap()
        .with_progress_every(PROGRESS);
    Backend {
        store: Arc::new(store),
        _etcd: None,
        _dir: Some(dir),
    }
}

async fn etcd() -> Backend {
    let etcd = skiff_testkit::Etcd::start().unwrap();
    let store = skiff_store::EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        _etcd: Some(etcd),
        _dir: None,
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next item of a watch, failing after a generous timeout. A progress
/// report is checked against the last one, `reported` (never backwards),
/// and a change too (never at or below a report already made).
async fn next_checked(stream: &mut WatchStream, reported: &mut i64) -> skiff_store::Event {
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch stalled")
        .expect("watch ended")
        .expect("watch error");
    if next.is_progress() {
        assert!(next.revision() >= *reported, "progress went back: {next:?}");
        *reported = next.revision();
    } else {
        assert!(
            next.revision() > *reported,
            "a change at {} after a report of {reported}",
            next.revision()
        );
    }
    next
}

/// Takes `n` changes from a watch, the progress reports between them
/// checked ([`next_checked`]) and skipped.
async fn take(stream: &mut WatchStream, n: usize) -> Vec<skiff_store::Event> {
    let mut out = Vec::new();
    let mut reported = 0;
    while out.len() < n {
        let next = next_checked(stream, &mut reported).await;
        if !next.is_progress() {
            out.push(next);
        }
    }
    out
}

async fn create_get_and_refuse_duplicates(s: Arc<dyn Store>) {
    let r1 = s.create("/t/a", b("1")).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(kv.value, b("1"));
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r1);
    assert!(matches!(
        s.create("/t/a", b("2")).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().value, b("1"));
    assert!(s.get("/t/missing").await.unwrap().is_none());
}

async fn update_and_delete_are_guarded_by_revision(s: Arc<dyn Store>) {
    let r1 = s.create("/t/k", b("1")).await.unwrap();
    let r2 = s.update("/t/k", b("2"), Some(r1)).await.unwrap();
    assert!(r2 > r1);
    match s.update("/t/k", b("3"), Some(r1)).await {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, r2),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert!(matches!(
        s.update("/t/nope", b("x"), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/t/k", Some(r1)).await,
        Err(Error::Conflict { .. })
    ));
    let kv = s.get("/t/k").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.create_revision), (b("2"), r1));
    let (r3, prev) = s.delete("/t/k", Some(r2)).await.unwrap();
    assert!(r3 > r2);
    assert_eq!(prev.value, b("2"));
    assert!(s.get("/t/k").await.unwrap().is_none());
    assert!(matches!(
        s.delete("/t/k", None).await,
        Err(Error::NotFound { .. })
    ));
}

async fn revisions_are_global_and_monotonic(s: Arc<dyn Store>) {
    let mut last = s.current_revision().await.unwrap();
    for i in 0..10 {
        let rev = s.create(&format!("/t/{i}"), b("v")).await.unwrap();
        assert_eq!(rev, last + 1, "every write takes the next revision");
        last = rev;
    }
    assert_eq!(s.current_revision().await.unwrap(), last);
}

async fn list_pages_at_one_revision(s: Arc<dyn Store>) {
    for i in 0..10 {
        s.create(&format!("/p/{i:02}"), b("old")).await.unwrap();
    }
    s.create("/q/outside", b("x")).await.unwrap();
    let first = s
        .list(ListOptions {
            prefix: "/p/".into(),
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.kvs.len(), 4);
    assert!(first.more);
    // Changes after the first page must not show in the later ones.
    let kv = s.get("/p/05").await.unwrap().unwrap();
    s.update("/p/05", b("new"), Some(kv.mod_revision))
        .await
        .unwrap();
    s.delete("/p/06", None).await.unwrap();
    s.create("/p/99", b("new")).await.unwrap();
    let mut keys: Vec<String> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut after = first.kvs.last().map(|kv| kv.key.clone());
    loop {
        let page = s
            .list(ListOptions {
                prefix: "/p/".into(),
                start_after: after.clone(),
                limit: 4,
                revision: first.revision,
            })
            .await
            .unwrap();
        assert_eq!(page.revision, first.revision);
        for kv in &page.kvs {
            assert_eq!(
                kv.value,
                b("old"),
                "{} read at the first page's revision",
                kv.key
            );
        }
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    let want: Vec<String> = (0..10).map(|i| format!("/p/{i:02}")).collect();
    assert_eq!(keys, want);
    let now = s
        .list(ListOptions {
            prefix: "/p/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(now.kvs.len(), 10, "one deleted, one added");
}

async fn watch_replays_every_change_in_order(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap() + 1;
    let r1 = s.create("/w/a", b("1")).await.unwrap();
    s.create("/x/other", b("x")).await.unwrap();
    let r2 = s.update("/w/a", b("2"), Some(r1)).await.unwrap();
    let (r3, _) = s.delete("/w/a", None).await.unwrap();
    let mut w = s.watch("/w/", start).await.unwrap();
    let events = take(&mut w, 3).await;
    let seen: Vec<(EventKind, i64)> = events.iter().map(|e| (e.kind, e.revision())).collect();
    assert_eq!(
        seen,
        vec![
            (EventKind::Put, r1),
            (EventKind::Put, r2),
            (EventKind::Delete, r3)
        ]
    );
    assert_eq!(events[1].prev.as_ref().unwrap().value, b("1"));
    assert_eq!(events[2].prev.as_ref().unwrap().value, b("2"));
    // And live changes after the replay.
    let r4 = s.create("/w/b", b("live")).await.unwrap();
    let live = take(&mut w, 1).await;
    assert_eq!(
        (live[0].revision(), live[0].kv.value.clone()),
        (r4, b("live"))
    );
}

async fn watch_resumed_after_disconnect_misses_nothing_and_repeats_nothing(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap() + 1;
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..200 {
                revs.push(s.create(&format!("/r/{i:03}"), b("v")).await.unwrap());
            }
            revs
        })
    };
    let mut seen = Vec::new();
    let mut from = start;
    // Watch, drop the watch after a few events, resume from the last seen
    // revision + 1, until every write has been seen.
    while seen.len() < 200 {
        let mut w = s.watch("/r/", from).await.unwrap();
        let n = (200 - seen.len()).min(37);
        for e in take(&mut w, n).await {
            seen.push(e.revision());
            from = e.revision() + 1;
        }
    }
    let written = writer.await.unwrap();
    assert_eq!(
        seen, written,
        "resumed watches deliver every write exactly once, in order"
    );
}

async fn concurrent_updates_have_exactly_one_winner(s: Arc<dyn Store>) {
    let rev = s.create("/c/k", b("0")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.update("/c/k", b(&format!("{i}")), Some(rev)).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners, 1);
}

async fn compaction_makes_old_revisions_unavailable(s: Arc<dyn Store>) {
    let first = s.create("/z/a", b("1")).await.unwrap();
    for i in 0..5 {
        s.create(&format!("/z/{i}"), b("v")).await.unwrap();
    }
    let current = s.current_revision().await.unwrap();
    s.compact(current).await.unwrap();
    let watched = match s.watch("/z/", first).await {
        Err(e) => Err(e),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(item)) => item.map(|_| ()),
            other => panic!("expected a compaction error, got {other:?}"),
        },
    };
    assert!(
        matches!(watched, Err(Error::Compacted { .. })),
        "watch from a compacted revision: {watched:?}"
    );
    let listed = s
        .list(ListOptions {
            prefix: "/z/".into(),
            revision: first,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(listed, Err(Error::Compacted { .. })),
        "list at a compacted revision: {listed:?}"
    );
    // The present is untouched and watchable.
    let mut w = s.watch("/z/", current).await.unwrap();
    assert_eq!(take(&mut w, 1).await[0].revision(), current);
}

/// Where the history starts: the embedded store records it, etcd is
/// asked with reads at past revisions (the trait's own answer).
async fn the_oldest_kept_revision_is_where_the_history_starts(s: Arc<dyn Store>) {
    let first = s.create("/o/0", b("v")).await.unwrap();
    for i in 1..40 {
        s.create(&format!("/o/{i}"), b("v")).await.unwrap();
    }
    let now = s.current_revision().await.unwrap();
    for from in [0, first, first + 17, now] {
        assert_eq!(s.oldest_kept(from).await.unwrap(), from, "from {from}");
    }
    let compacted = first + 23;
    s.compact(compacted).await.unwrap();
    for (from, oldest) in [
        (0, compacted),
        (first, compacted),
        (compacted - 1, compacted),
        (compacted, compacted),
        (compacted + 7, compacted + 7),
        (now, now),
    ] {
        assert_eq!(s.oldest_kept(from).await.unwrap(), oldest, "from {from}");
    }
    // What it answers is readable; the revision before it is not.
    let at = |revision| {
        s.list(ListOptions {
            prefix: "/o/".into(),
            revision,
            ..Default::default()
        })
    };
    assert_eq!(at(compacted).await.unwrap().kvs.len(), 24);
    assert!(matches!(
        at(compacted - 1).await,
        Err(Error::Compacted { .. })
    ));
}

/// A watch of a prefix nobody writes learns how far the store has moved
/// on; resumed after that, it still misses nothing, even once the history
/// before it is compacted.
async fn a_quiet_watch_reports_progress_past_other_writes(s: Arc<dyn Store>) {
    let mut w = s.watch("/quiet/", 0).await.unwrap();
    let mut busy = 0;
    for i in 0..5 {
        busy = s.create(&format!("/busy/{i}"), b("v")).await.unwrap();
    }
    let reached = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = w.next().await.expect("watch ended").expect("watch error");
            assert!(
                event.is_progress(),
                "a change under a quiet prefix: {event:?}"
            );
            assert!(event.kv.key.is_empty() && event.prev.is_none());
            if event.revision() >= busy {
                return event.revision();
            }
        }
    })
    .await
    .expect("no progress report past the other writes");
    assert!(reached <= s.current_revision().await.unwrap());
    // Reports do not run ahead of changes (`take` checks): a change comes
    // next.
    let change = s.create("/quiet/a", b("q")).await.unwrap();
    assert_eq!(take(&mut w, 1).await[0].revision(), change);
    // The history before the report compacted, a watch resumed after it
    // is served, from the change on.
    s.compact(reached).await.unwrap();
    let mut resumed = s.watch("/quiet/", reached + 1).await.unwrap();
    assert_eq!(take(&mut resumed, 1).await[0].revision(), change);
}

/// Changes under a prefix interleaved with changes elsewhere, pausing
/// between them for longer than the stores' report interval: the watch
/// delivers every change once, in order, with reports between them that
/// never go back and never claim a revision a change still to come has.
async fn progress_between_changes_never_runs_ahead_of_them(s: Arc<dyn Store>) {
    let start = s.current_revision().await.unwrap() + 1;
    let mut written = Vec::new();
    for i in 0..3 {
        written.push(s.create(&format!("/m/in/{i}"), b("v")).await.unwrap());
        s.create(&format!("/m/out/{i}"), b("v")).await.unwrap();
    }
    let mut w = s.watch("/m/in/", start).await.unwrap();
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 3..8 {
                revs.push(s.create(&format!("/m/in/{i}"), b("v")).await.unwrap());
                s.create(&format!("/m/out/{i}"), b("v")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            revs
        })
    };
    let (mut changes, mut reports, mut reported) = (Vec::new(), 0, 0);
    while changes.len() < 8 {
        let next = next_checked(&mut w, &mut reported).await;
        if next.is_progress() {
            reports += 1;
        } else {
            changes.push(next.revision());
        }
    }
    written.extend(writer.await.unwrap());
    assert_eq!(changes, written, "every change once, in order");
    assert!(reports > 0, "no progress report in the pauses");
}

/// A page asked for after the end of the prefix (a continue token from a
/// list of another prefix) is empty, not an error.
async fn a_page_after_the_prefix_is_empty(store: Arc<dyn Store>) {
    store.create("/p/a/1", b("1")).await.unwrap();
    store.create("/p/z/1", b("1")).await.unwrap();
    let page = store
        .list(ListOptions {
            prefix: "/p/a/".into(),
            start_after: Some("/p/z/1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.kvs.is_empty() && !page.more, "{page:?}");
    // The same at a past revision.
    let page = store
        .list(ListOptions {
            prefix: "/p/a/".into(),
            start_after: Some("/p/z/1".into()),
            revision: page.revision - 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.kvs.is_empty() && !page.more, "{page:?}");
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::embedded().await;
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
        mod redb_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::redb().await;
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let backend = super::etcd().await;
                    super::$check(backend.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    create_get_and_refuse_duplicates,
    update_and_delete_are_guarded_by_revision,
    revisions_are_global_and_monotonic,
    list_pages_at_one_revision,
    watch_replays_every_change_in_order,
    watch_resumed_after_disconnect_misses_nothing_and_repeats_nothing,
    concurrent_updates_have_exactly_one_winner,
    compaction_makes_old_revisions_unavailable,
    the_oldest_kept_revision_is_where_the_history_starts,
    a_quiet_watch_reports_progress_past_other_writes,
    progress_between_changes_never_runs_ahead_of_them,
    a_page_after_the_prefix_is_empty,
);

/// A store reopened by `open` at `path` has what it had.
async fn keeps_its_state_across_reopen(
    open: fn(&std::path::Path) -> skiff_store::Result<skiff_store::EmbeddedStore>,
    path: &std::path::Path,
) {
    let rev = {
        let s = open(path).unwrap();
        s.create("/d/a", b("kept")).await.unwrap();
        s.create("/d/b", b("gone")).await.unwrap();
        s.update("/d/a", b("kept, changed"), None).await.unwrap();
        s.delete("/d/b", None).await.unwrap().0
    };
    // The writer thread lets go of the store once the last handle drops.
    let mut reopened = None;
    for _ in 0..50 {
        match open(path) {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let s = reopened.expect("reopen");
    let kv = s.get("/d/a").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b("kept, changed"), rev - 1));
    assert!(s.get("/d/b").await.unwrap().is_none());
    assert_eq!(s.current_revision().await.unwrap(), rev);
    // The history came back too: a list in the past, a watch from the start.
    let past = s
        .list(ListOptions {
            prefix: "/d/".into(),
            revision: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let values: Vec<_> = past.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, [b("kept"), b("gone")]);
    let mut watch = s.watch("/d/", 1).await.unwrap();
    let mut reported = 0;
    for revision in 1..=rev {
        let event = loop {
            let event = next_checked(&mut watch, &mut reported).await;
            if !event.is_progress() {
                break event;
            }
        };
        assert_eq!(event.revision(), revision);
    }
}

#[tokio::test]
async fn embedded_store_keeps_its_state_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    keeps_its_state_across_reopen(
        |p| skiff_store::EmbeddedStore::open(p),
        &dir.path().join("state"),
    )
    .await;
}

#[tokio::test]
async fn a_redb_store_keeps_its_state_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    keeps_its_state_across_reopen(|p| skiff_store::EmbeddedStore::open_redb(p), &path).await;
    // A redb file is opened as one from then on.
    assert!(path.is_file());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let s = loop {
        match skiff_store::EmbeddedStore::open(&path) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let kv = s.get("/d/a").await.unwrap().unwrap();
    assert_eq!(kv.value, b("kept, changed"));
    assert!(path.is_file(), "still one redb file");
}
