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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.latest() < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache never saw {last}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
