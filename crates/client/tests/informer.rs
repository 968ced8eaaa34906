//! The client against a real in-process API server.

use std::time::Duration;

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::core::v1::ConfigMap;
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::{Api, Change, Informer, watcher::Params};

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn server() -> (skiff_apiserver::ApiServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = skiff_apiserver::StoreConfig::Embedded(dir.path().join("state.redb"));
    let config = skiff_apiserver::Config::new("127.0.0.1:0".parse().unwrap(), store);
    (
        skiff_apiserver::ApiServer::start(config).await.unwrap(),
        dir,
    )
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_api_serves_any_kind() {
    let (server, _dir) = server().await;
    let api = Api::<ConfigMap>::new(
        skiff_client::connect_lazy(&format!("http://{}", server.addr)).unwrap(),
    );
    let created = api.create(cm("a")).await.unwrap();
    let mut read = api.get("default", "a").await.unwrap();
    assert_eq!(read, created);
    read.data.insert("k".into(), "v".into());
    let updated = api.update(read).await.unwrap();
    assert_eq!(updated.data.get("k").map(String::as_str), Some("v"));
    let stale = api.update(created).await.expect_err("stale");
    assert_eq!(stale.code(), tonic::Code::Aborted);
    api.delete(DeleteRequest {
        namespace: "default".into(),
        name: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        api.get("default", "a").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_mirrors_the_server_and_notifies_changes() {
    let (server, _dir) = server().await;
    let api = Api::<ConfigMap>::new(
        skiff_client::connect_lazy(&format!("http://{}", server.addr)).unwrap(),
    );
    for name in ["a", "b", "c"] {
        api.create(cm(name)).await.unwrap();
    }
    let informer = Informer::start(api.clone(), Params::default());
    let mut changes = informer.subscribe();
    informer.store.wait_synced().await;
    assert_eq!(informer.store.len(), 3);
    api.create(cm("d")).await.unwrap();
    api.delete(DeleteRequest {
        namespace: "default".into(),
        name: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = informer.store.clone();
    eventually("the cache to follow", || {
        store.len() == 3
            && store.get("default", "d").is_some()
            && store.get("default", "a").is_none()
    })
    .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .unwrap()
            .unwrap();
        match change {
            Change::Applied(c) if c.metadata.as_ref().unwrap().name == "d" => {
                seen.push("applied d")
            }
            Change::Deleted(c) => seen.push(if c.metadata.as_ref().unwrap().name == "a" {
                "deleted a"
            } else {
                "other"
            }),
            Change::Applied(_) => {}
        }
    }
    assert_eq!(seen, vec!["applied d", "deleted a"]);

    drop(informer);
    server.stop().await.unwrap();
}
