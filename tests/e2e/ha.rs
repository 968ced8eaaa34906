//! The control plane's availability: API servers in front of an etcd
//! cluster, and what clients see when a store member dies or hangs.

use std::time::{Duration, Instant};

use skiff::pb::core::v1::ConfigMap;
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::Api;
use skiff_testkit::ServerProcess;
use skiff_testkit::etcd::EtcdCluster;
use tonic::Code;

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// etcd stopped (SIGSTOP: connections open, nothing answers) turns
/// requests into an error within seconds that says the store is the
/// trouble, over gRPC and on the CLI; thawed, the same requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_is_an_error_within_seconds_not_a_request_that_never_returns() {
    let etcd = EtcdCluster::start(1).unwrap();
    let server = ServerProcess::start(&["--etcd".into(), etcd.endpoints().join(",")]).unwrap();
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let configmaps = Api::<ConfigMap>::new(channel);
    configmaps.create(configmap("before")).await.unwrap();

    etcd.freeze(0);
    let started = Instant::now();
    let err = configmaps
        .create(configmap("during"))
        .await
        .expect_err("etcd answers nothing");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the error took {took:?}");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{err:?}"
    );
    assert!(
        err.message().contains("could not reach its store"),
        "{err:?}"
    );
    // The CLI says it is the server's store, not the server, that is out.
    // (A write: reads may be served from the API server's watch cache.)
    let out = std::process::Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["delete", "configmap", "before", "--server"])
        .arg(server.url())
        .env("SKIFF_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Error from server"), "{stderr}");
    assert!(stderr.contains("could not reach its store"), "{stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");

    etcd.thaw(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match configmaps.create(configmap("after")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(Instant::now() < deadline, "after thawing: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    configmaps.get("default", "after").await.unwrap();
}
