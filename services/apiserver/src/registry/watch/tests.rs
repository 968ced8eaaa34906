use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use skiff::Resource as _;
use skiff::pb::core::v1::ConfigMap;
use skiff::pb::meta::v1::ObjectMeta;
use skiff_store::{EmbeddedStore, Store};

use super::*;

/// How long the tests' caches keep changes.
const FRESH: Duration = Duration::from_secs(600);

/// A store in `dir` and a ConfigMap watch cache over it keeping `window`
/// changes (for [`FRESH`]) with `fanout` of slack per live watcher.
async fn cache(
    dir: &tempfile::TempDir,
    window: usize,
    fanout: usize,
) -> (Arc<dyn Store>, Arc<WatchCache<ConfigMap>>) {
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("state.redb")).unwrap());
    let cache = WatchCache::start_sized(Arc::clone(&store), window, fanout, FRESH)
        .await
        .unwrap();
    (store, cache)
}

/// Writes `n` ConfigMaps named `prefix-i`; returns the last revision once
/// the cache has it.
async fn write(store: &dyn Store, cache: &WatchCache<ConfigMap>, prefix: &str, n: usize) -> i64 {
    let mut last = 0;
    for i in 0..n {
        let object = ConfigMap {
            metadata: Some(ObjectMeta {
                name: format!("{prefix}-{i}"),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = skiff::keys::object::<ConfigMap>("default", &format!("{prefix}-{i}"));
        last = store
            .create(&key, object.encode_to_vec().into())
            .await
            .unwrap();
    }
    caught_up(cache, last).await;
    last
}

fn source(cache: &Arc<WatchCache<ConfigMap>>, from: i64) -> Source<ConfigMap> {
    let sub = cache.subscribe(from).expect("inside the window");
    Source::Cache {
        backlog: sub.backlog.into(),
        live: sub.live,
        cache: Arc::clone(cache),
    }
}

#[tokio::test]
async fn a_change_is_encoded_once_for_every_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = cache(&dir, 64, 16).await;
    let from = store.current_revision().await.unwrap();
    let (mut a, mut b) = (source(&cache, from), source(&cache, from));
    write(&*store, &cache, "cm", 1).await;
    let seen_a = next_change(&mut a, from).await.unwrap();
    let seen_b = next_change(&mut b, from).await.unwrap();
    assert!(Arc::ptr_eq(&seen_a, &seen_b), "one decoded change shared");
    let (bytes_a, bytes_b) = (seen_a.protobuf(), seen_b.protobuf());
    assert_eq!(
        bytes_a.as_ptr(),
        bytes_b.as_ptr(),
        "the second watcher sends the first one's bytes"
    );
    // The JSON of HTTP watchers likewise, made by the first one.
    let mut made = 0;
    for _ in 0..3 {
        let json = seen_b.json(|object| {
            made += 1;
            Some(
                serde_json::to_vec(&skiff::json::to_value(object).ok()?)
                    .ok()?
                    .into(),
            )
        });
        assert!(json.is_some_and(|j| j.starts_with(b"{")));
    }
    assert_eq!(made, 1, "encoded once, then shared");
    // What goes on the wire is the event with the object in it.
    let event = Delivery::Change(EventType::Added, seen_a).into_event();
    let read = <ConfigMap as skiff::Resource>::WatchEvent::decode(event.encode_to_vec().as_slice())
        .unwrap();
    let (kind, object) = ConfigMap::event_parts(read);
    assert_eq!(kind, EventType::Added);
    let object = object.unwrap();
    assert_eq!(object.name(), "cm-0");
    assert_eq!(object.resource_version(), (from + 1).to_string());
}

#[tokio::test]
async fn a_watcher_behind_the_live_channel_catches_up_from_the_window() {
    let dir = tempfile::tempdir().unwrap();
    // 4 changes of slack, 64 kept: a watcher 20 behind lags the channel.
    let (store, cache) = cache(&dir, 64, 4).await;
    let from = store.current_revision().await.unwrap();
    let mut slow = source(&cache, from);
    let last = write(&*store, &cache, "cm", 20).await;
    let mut sent = from;
    while sent < last {
        let change = next_change(&mut slow, sent).await.unwrap();
        assert_eq!(change.revision, sent + 1, "nothing skipped, nothing twice");
        sent = change.revision;
    }
}

#[tokio::test]
async fn a_watcher_behind_the_window_is_told_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    // 8 changes kept: a watcher 20 behind has lost changes for good.
    let (store, cache) = cache(&dir, 8, 4).await;
    let from = store.current_revision().await.unwrap();
    let mut slow = source(&cache, from);
    write(&*store, &cache, "cm", 20).await;
    let err = next_change(&mut slow, from).await.unwrap_err();
    assert!(matches!(err, ApiError::Expired(_)), "{err:?}");
    assert!(err.to_string().contains("too old"), "{err}");
    // A watcher that kept up is not affected.
    let now = store.current_revision().await.unwrap();
    let mut current = source(&cache, now);
    let last = write(&*store, &cache, "later", 1).await;
    assert_eq!(next_change(&mut current, now).await.unwrap().revision, last);
}

#[tokio::test]
async fn a_cache_at_rest_lets_go_of_changes_older_than_its_fresh_time() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("state.redb")).unwrap());
    let fresh = Duration::from_millis(300);
    let cache = WatchCache::<ConfigMap>::start_sized(Arc::clone(&store), 64, 16, fresh)
        .await
        .unwrap();
    let from = store.current_revision().await.unwrap();
    let last = write(&*store, &cache, "cm", 5).await;
    assert_eq!(
        cache.subscribe(from).unwrap().backlog.len(),
        5,
        "kept while fresh"
    );
    // Nothing is written meanwhile: the cache's own timer lets them go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.subscribe(from).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "changes kept past their time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A watcher at the present is still served from memory, with nothing
    // to replay; one from before is left to the store (which still has it).
    assert!(cache.subscribe(last).unwrap().backlog.is_empty());
    let mut older = store
        .watch(&skiff::keys::kind::<ConfigMap>(), from + 1)
        .await
        .unwrap();
    use futures::StreamExt as _;
    assert_eq!(older.next().await.unwrap().unwrap().revision(), from + 1);
}

/// Writes ConfigMap `name` (a new one, or over `expected`); its revision.
async fn put(store: &dyn Store, name: &str, n: &str, expected: Option<i64>) -> i64 {
    let object = ConfigMap {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        data: [("n".to_string(), n.to_string())].into(),
        ..Default::default()
    };
    let key = skiff::keys::object::<ConfigMap>("default", name);
    let value = object.encode_to_vec().into();
    match expected {
        None => store.create(&key, value).await.unwrap(),
        Some(rev) => store.update(&key, value, Some(rev)).await.unwrap(),
    }
}

/// Writes a Secret: the store's revision moves, ConfigMaps' do not.
async fn other_kind(store: &dyn Store) {
    let key = skiff::keys::object::<skiff::pb::core::v1::Secret>("default", "other");
    store.create(&key, Vec::new().into()).await.unwrap();
}

fn from(rv: i64) -> WatchRequest {
    WatchRequest {
        namespace: "default".into(),
        resource_version: rv.to_string(),
        ..Default::default()
    }
}

/// The next change's revision and `n`.
async fn next_n(watch: &mut super::WatchStream<ConfigMap>) -> (i64, String) {
    use futures::StreamExt as _;
    let delivery = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch goes on")
        .unwrap();
    let Delivery::Change(_, change) = delivery else {
        panic!("a change, not a bookmark or an initial object");
    };
    (change.revision, change.object.data["n"].clone())
}

#[tokio::test]
async fn the_first_watch_of_a_kind_from_a_listed_version_is_served_from_memory() {
    // A client lists ConfigMaps at `listed`; then a ConfigMap changes and
    // another kind is written (revisions are global) before the kind's
    // first watch starts its cache.
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = crate::registry::test_registry(&dir).await;
    let listed = put(&*store, "cm", "0", None).await;
    let changed = put(&*store, "cm", "1", Some(listed)).await;
    other_kind(&*store).await;
    let mut watch = registry.watch::<ConfigMap>(from(listed)).await.unwrap();
    let cache = registry.cache::<ConfigMap>().await.unwrap();
    assert!(
        cache.subscribe(listed).is_some(),
        "the cache reaches back to the version the first watch asked for"
    );
    // The change made before the watch comes from the store's history,
    // the next one live; every watcher from that version shares them.
    let mut second = registry.watch::<ConfigMap>(from(listed)).await.unwrap();
    assert_eq!(next_n(&mut watch).await, (changed, "1".into()));
    let last = put(&*store, "cm", "2", Some(changed)).await;
    assert_eq!(next_n(&mut watch).await, (last, "2".into()));
    assert_eq!(next_n(&mut second).await, (changed, "1".into()));
    assert_eq!(next_n(&mut second).await, (last, "2".into()));
}

#[tokio::test]
async fn the_first_watch_of_a_kind_from_a_compacted_version_is_told_to_relist() {
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = crate::registry::test_registry(&dir).await;
    let listed = put(&*store, "cm", "0", None).await;
    let changed = put(&*store, "cm", "1", Some(listed)).await;
    other_kind(&*store).await;
    store
        .compact(store.current_revision().await.unwrap())
        .await
        .unwrap();
    // Expired ("too old resource version": the client lists again), as
    // the watch starts or as its first event.
    let err = match registry.watch::<ConfigMap>(from(listed)).await {
        Err(e) => e,
        Ok(mut watch) => {
            use futures::StreamExt as _;
            let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("an answer within 10 s")
                .expect("an error before the end");
            first.err().expect("no change from a compacted history")
        }
    };
    assert!(matches!(err, ApiError::Expired(_)), "{err:?}");
    assert!(err.to_string().contains("compacted"), "{err}");
    // A watch from the present is served.
    let now = store.current_revision().await.unwrap();
    let mut current = registry.watch::<ConfigMap>(from(now)).await.unwrap();
    let last = put(&*store, "cm", "2", Some(changed)).await;
    assert_eq!(next_n(&mut current).await, (last, "2".into()));
}

/// Waits until `cache` has read the store up to `revision`.
async fn caught_up(cache: &WatchCache<ConfigMap>, revision: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.latest() < revision {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache never saw {revision}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_cache_reaches_back_half_its_window_or_to_where_the_history_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("state.redb")).unwrap());
    let since = store.current_revision().await.unwrap();
    for i in 0..20 {
        put(&*store, &format!("cm-{i}"), "0", None).await;
    }
    let now = store.current_revision().await.unwrap();
    // 8 kept: the last 4 changes read back (half the window), earlier
    // versions left to the store.
    let small = WatchCache::<ConfigMap>::start_sized(Arc::clone(&store), 8, 4, FRESH)
        .await
        .unwrap();
    caught_up(&small, now).await;
    assert_eq!(small.subscribe(now - 4).unwrap().backlog.len(), 4);
    assert!(small.subscribe(now - 5).is_none(), "left to the store");
    // 64 kept: all 20 read back from the store's history.
    let large = WatchCache::<ConfigMap>::start_sized(Arc::clone(&store), 64, 16, FRESH)
        .await
        .unwrap();
    caught_up(&large, now).await;
    assert_eq!(large.subscribe(since).unwrap().backlog.len(), 20);
    // Compacted: from where the history starts, not before.
    let compacted = now - 6;
    store.compact(compacted).await.unwrap();
    let after = WatchCache::<ConfigMap>::start_sized(Arc::clone(&store), 64, 16, FRESH)
        .await
        .unwrap();
    caught_up(&after, now).await;
    assert_eq!(after.subscribe(compacted).unwrap().backlog.len(), 6);
    assert!(after.subscribe(compacted - 1).is_none(), "compacted");
}

/// `n` writes of Secrets at once: the store's revision moves `n` on,
/// ConfigMaps' do not.
async fn other_kinds(store: &dyn Store, n: usize) {
    let writes = (0..n).map(|i| {
        let key = skiff::keys::object::<skiff::pb::core::v1::Secret>("default", &format!("s{i}"));
        async move { store.create(&key, Vec::new().into()).await }
    });
    futures::future::try_join_all(writes).await.unwrap();
}

#[tokio::test]
async fn watches_from_before_the_first_are_served_from_memory_and_older_ones_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, registry) = crate::registry::test_registry(&dir).await;
    let old = put(&*store, "cm", "0", None).await;
    let changed = put(&*store, "cm", "1", Some(old)).await;
    // More than half a window of revisions: `changed` is out of reach.
    other_kinds(&*store, crate::cache::WINDOW / 2 + 100).await;
    let between = store.current_revision().await.unwrap();
    let recent = put(&*store, "cm", "2", Some(changed)).await;
    other_kind(&*store).await;
    let now = store.current_revision().await.unwrap();
    // The gauge is the process's: exact under nextest (a process per
    // test); no other test here makes a ConfigMap watch read the store.
    let open = || store_watches::<ConfigMap>().get();
    // The kind's cache starts with a watch from the present.
    let _present = registry.watch::<ConfigMap>(from(now)).await.unwrap();
    assert_eq!(open(), 0, "served by the cache");
    // A client resuming from an older version (an informer reconnecting
    // to a restarted server) is served from memory too: the cache read
    // the history back.
    let mut resumed = registry.watch::<ConfigMap>(from(between)).await.unwrap();
    assert_eq!(open(), 0, "read back into the cache");
    assert_eq!(next_n(&mut resumed).await, (recent, "2".into()));
    // Older than half a window: the store's, counted while open.
    let mut older = registry.watch::<ConfigMap>(from(changed)).await.unwrap();
    assert_eq!(open(), 1, "from before the cache's reach: the store's");
    assert_eq!(next_n(&mut older).await, (recent, "2".into()));
    drop(older);
    assert_eq!(open(), 0, "no longer open");
}

/// A kind nobody writes follows the store's progress: its cache's latest
/// revision (where its store watch resumes, and what bookmarks carry)
/// moves past other kinds' writes, so neither falls behind the history a
/// compaction keeps.
#[tokio::test]
async fn a_quiet_kinds_cache_follows_the_stores_progress() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("state.redb"))
            .unwrap()
            .with_progress_every(Duration::from_millis(50)),
    );
    let cache = WatchCache::<ConfigMap>::start_sized(Arc::clone(&store), 64, 64, FRESH)
        .await
        .unwrap();
    let before = cache.latest();
    let watcher = cache.subscribe(before).expect("inside the window");
    other_kinds(&*store, 5).await;
    let now = store.current_revision().await.unwrap();
    assert!(now > before);
    caught_up(&cache, now).await;
    // A bookmark now says so; the watcher was sent nothing.
    assert_eq!(cache.progress(&watcher.live), Some(now));
    assert!(watcher.backlog.is_empty());
}

/// A change's `prev` is the object its key's change before it left, held
/// once for both while that change is in the window (the window then
/// holds each version of an object once, not twice), and decoded from the
/// store's event when that change has left it.
#[tokio::test]
async fn a_change_shares_the_object_its_keys_last_change_left_as_prev() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = cache(&dir, 4, 16).await;
    let from = store.current_revision().await.unwrap();
    let first = put(&*store, "a", "1", None).await;
    let second = put(&*store, "a", "2", Some(first)).await;
    let key = skiff::keys::object::<ConfigMap>("default", "a");
    let (deleted, _) = store.delete(&key, None).await.unwrap();
    caught_up(&cache, deleted).await;
    let changes = cache.subscribe(from).unwrap().backlog;
    let [created, updated, gone] = &changes[..] else {
        panic!("three changes, not {}", changes.len());
    };
    assert_eq!((created.revision, updated.revision), (first, second));
    let prev = updated.prev.as_ref().expect("the update's prev");
    assert!(
        Arc::ptr_eq(prev, &created.object),
        "the created object, shared"
    );
    assert_eq!(prev.data["n"], "1");
    assert_eq!(prev.resource_version(), first.to_string());
    let prev = gone.prev.as_ref().expect("the delete's prev");
    assert!(Arc::ptr_eq(prev, &updated.object));
    assert_eq!(gone.object.data["n"], "2");
    assert_eq!(gone.object.resource_version(), deleted.to_string());

    // Its last change pushed out of the window (four changes kept), a
    // key's next change decodes its prev from the store's event.
    let b1 = put(&*store, "b", "1", None).await;
    caught_up(&cache, b1).await;
    let b1_object = Arc::clone(&cache.subscribe(b1 - 1).unwrap().backlog[0].object);
    for i in 0..4 {
        put(&*store, &format!("c{i}"), "x", None).await;
    }
    let b2 = put(&*store, "b", "2", Some(b1)).await;
    caught_up(&cache, b2).await;
    let changes = cache.subscribe(b2 - 1).unwrap().backlog;
    let prev = changes[0].prev.as_ref().expect("b's prev");
    assert!(
        !Arc::ptr_eq(prev, &b1_object),
        "decoded, not kept past its change"
    );
    assert_eq!(
        (prev.data["n"].as_str(), prev.resource_version().to_string()),
        ("1", b1.to_string())
    );
}
