//! Crash safety: kill -9 of `skiff server` in the middle of a write load
//! loses no acknowledged write, on either store backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff::pb::api::v1::ListRequest;
use skiff::pb::core::v1::{ConfigMap, config_maps_client::ConfigMapsClient};
use skiff::pb::meta::v1::ObjectMeta;

const WRITERS: usize = 8;

/// Runs a create load against `url` until the server dies; returns the
/// names whose creates were acknowledged.
async fn load_until_killed(url: String, server: &mut skiff_testkit::ServerProcess) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let acked = Arc::clone(&acked);
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut client) = ConfigMapsClient::connect(url).await else {
                return;
            };
            for i in 0..100_000 {
                let name = format!("w{w}-{i}");
                let cm = ConfigMap {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        ..Default::default()
                    }),
                    data: [("n".to_string(), i.to_string())].into_iter().collect(),
                    ..Default::default()
                };
                match client.create(cm).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the load run, then crash the server mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acked.lock().unwrap().len() < 1000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.process.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let names = acked.lock().unwrap().clone();
    assert!(
        names.len() >= 1000,
        "the load never got going ({} creates)",
        names.len()
    );
    names
}

async fn check(store_args: Vec<String>) {
    let mut server = skiff_testkit::ServerProcess::start(&store_args).unwrap();
    let acked = load_until_killed(server.url(), &mut server).await;
    let restarted = skiff_testkit::ServerProcess::start(&store_args).unwrap();
    let mut client = ConfigMapsClient::connect(restarted.url()).await.unwrap();
    let list = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let present: std::collections::HashSet<String> = list
        .items
        .iter()
        .map(|c| c.metadata.as_ref().unwrap().name.clone())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost after kill -9, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "kill -9 after {} acknowledged creates: all present ({} objects stored)",
        acked.len(),
        present.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    check(vec!["--data-dir".into(), dir.path().display().to_string()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_on_etcd() {
    let etcd = skiff_testkit::Etcd::start().unwrap();
    check(vec!["--etcd".into(), etcd.endpoint.clone()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly_and_a_restart_resumes_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    let mut server = skiff_testkit::ServerProcess::start(&args).unwrap();
    let mut client = ConfigMapsClient::connect(server.url()).await.unwrap();
    client
        .create(ConfigMap {
            metadata: Some(ObjectMeta {
                name: "kept".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // An open watch must not hold the shutdown up.
    let _watch = client
        .watch(skiff::pb::api::v1::WatchRequest::default())
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.process.terminate(Duration::from_secs(10));
        (status, server)
    })
    .await
    .unwrap();
    let exit = status.0.expect("exits after SIGTERM");
    assert!(exit.success(), "exit status {exit:?}");
    let restarted = skiff_testkit::ServerProcess::start(&args).unwrap();
    let mut client = ConfigMapsClient::connect(restarted.url()).await.unwrap();
    let kept = client
        .get(skiff::pb::api::v1::GetRequest {
            namespace: "default".into(),
            name: "kept".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.metadata.unwrap().name, "kept");
}
