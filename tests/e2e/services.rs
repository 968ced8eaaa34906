//! Services' cluster IPs, allocated by the API server from its range:
//! unique, honoured or refused when requested, released on delete,
//! immutable, and consistent across restarts (leaked claims repaired).

use std::collections::HashSet;

use serde_json::json;
use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::core::v1::Service;
use skiff_apiserver::StoreConfig;
use skiff_client::Api;

fn service(name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}], "clusterIP": cluster_ip}
    }))
    .unwrap()
}

fn ip_of(s: &Service) -> String {
    s.spec.as_ref().unwrap().cluster_ip.clone()
}

async fn start_server(
    dir: &std::path::Path,
    cidr: &str,
) -> (skiff_apiserver::ApiServer, Api<Service>) {
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(dir.join("state.redb")),
    );
    config.actors = 1;
    config.service_cidr = cidr.parse().unwrap();
    // A store just closed in this process may take a moment to let go of
    // the file.
    let mut started = skiff_apiserver::ApiServer::start(config.clone()).await;
    for _ in 0..100 {
        if started.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        started = skiff_apiserver::ApiServer::start(config.clone()).await;
    }
    let server = started.expect("the API server starts");
    let api = Api::new(skiff_testkit::channel(server.addr).await.unwrap());
    (server, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_are_unique_requested_released_and_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api) = start_server(dir.path(), "10.96.0.0/24").await;
    // Asked for before any random one, so none can have taken it.
    let wanted = api.create(service("wanted", "10.96.0.250")).await.unwrap();
    assert_eq!(ip_of(&wanted), "10.96.0.250");
    let mut seen = HashSet::from([ip_of(&wanted)]);
    for i in 0..20 {
        let created = api.create(service(&format!("s{i}"), "")).await.unwrap();
        let ip = ip_of(&created);
        assert!(ip.starts_with("10.96.0."), "{ip} is in the range");
        assert_eq!(created.spec.as_ref().unwrap().cluster_ips, vec![ip.clone()]);
        assert!(seen.insert(ip), "no address twice");
    }

    // A requested address is honoured, and then taken.
    let taken = api
        .create(service("again", "10.96.0.250"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::InvalidArgument);
    assert!(
        taken.message().contains("10.96.0.250") && taken.message().contains("already allocated"),
        "{}",
        taken.message()
    );
    let outside = api
        .create(service("outside", "10.97.0.1"))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), tonic::Code::InvalidArgument);
    assert!(
        outside.message().contains("10.96.0.0/24"),
        "the range is named: {}",
        outside.message()
    );
    let garbage = api
        .create(service("garbage", "not-an-ip"))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);

    // Headless services get none.
    let headless = api.create(service("headless", "None")).await.unwrap();
    assert_eq!(ip_of(&headless), "None");

    // Immutable: an update without it keeps it; another one is refused.
    let mut update = api.get("default", "wanted").await.unwrap();
    update.spec.as_mut().unwrap().cluster_ip.clear();
    update.spec.as_mut().unwrap().cluster_ips.clear();
    update
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("v".into(), "2".into());
    let kept = api.update(update).await.unwrap();
    assert_eq!(ip_of(&kept), "10.96.0.250");
    let mut change = kept.clone();
    change.spec.as_mut().unwrap().cluster_ip = "10.96.0.251".into();
    let refused = api.update(change).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("immutable"),
        "{}",
        refused.message()
    );

    // Released on delete: the address can be had again.
    api.delete(DeleteRequest {
        namespace: "default".into(),
        name: "wanted".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let reused = api.create(service("reuse", "10.96.0.250")).await.unwrap();
    assert_eq!(ip_of(&reused), "10.96.0.250");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_survive_restarts_and_leaked_claims_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api) = start_server(dir.path(), "10.96.1.0/24").await;
    let kept = api.create(service("kept", "10.96.1.10")).await.unwrap();
    assert_eq!(ip_of(&kept), "10.96.1.10");
    server.stop().await.unwrap();

    // A claim left behind by a crash between the claim and the write.
    {
        use skiff_store::Store as _;
        // The stopped server lets go of the file once its last task ends.
        let path = dir.path().join("state.redb");
        let mut store = skiff_store::EmbeddedStore::open(&path);
        for _ in 0..100 {
            if store.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            store = skiff_store::EmbeddedStore::open(&path);
        }
        let store = store.expect("the store file is free after the server stopped");
        store
            .create(
                "/registry/allocations/serviceips/10.96.1.20",
                "default/ghost".into(),
            )
            .await
            .unwrap();
    }

    let (_server, api) = start_server(dir.path(), "10.96.1.0/24").await;
    let taken = api
        .create(service("thief", "10.96.1.10"))
        .await
        .unwrap_err();
    assert!(
        taken.message().contains("already allocated"),
        "still held after a restart: {}",
        taken.message()
    );
    let repaired = api.create(service("heir", "10.96.1.20")).await.unwrap();
    assert_eq!(
        ip_of(&repaired),
        "10.96.1.20",
        "the leaked claim was released at startup"
    );
}

fn node_port_service(name: &str, node_port: i32) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "nodePort": node_port}, {"name": "admin", "port": 81}]}
    }))
    .unwrap()
}

fn node_ports(s: &Service) -> Vec<i32> {
    s.spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .map(|p| p.node_port)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_are_allocated_kept_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, api) = start_server(dir.path(), "10.96.2.0/24").await;
    // Asked-for addresses first, before random ones could take them.
    let holder = api.create(service("holder", "10.96.2.77")).await.unwrap();
    assert_eq!(ip_of(&holder), "10.96.2.77");
    let a = api.create(node_port_service("a", 30080)).await.unwrap();
    let ports = node_ports(&a);
    assert_eq!(ports[0], 30080, "the asked-for port");
    assert!((30000..=32767).contains(&ports[1]), "a free one: {ports:?}");
    let clash = api.create(node_port_service("b", 30080)).await.unwrap_err();
    assert_eq!(clash.code(), tonic::Code::InvalidArgument);
    assert!(
        clash.message().contains("spec.ports[0].nodePort")
            && clash.message().contains("already allocated"),
        "{}",
        clash.message()
    );
    let outside = api.create(node_port_service("c", 80)).await.unwrap_err();
    assert!(
        outside.message().contains("30000-32767"),
        "{}",
        outside.message()
    );
    // A failed create leaves nothing claimed: its cluster IP is free again.
    let b = api.create(node_port_service("b", 0)).await.unwrap();
    assert!(
        node_ports(&b)
            .iter()
            .all(|p| *p >= 30000 && !ports.contains(p))
    );

    // An update keeps the ports; turning it into a ClusterIP service
    // releases them.
    let mut update = api.get("default", "a").await.unwrap();
    for p in &mut update.spec.as_mut().unwrap().ports {
        p.node_port = 0;
    }
    let kept = api.update(update).await.unwrap();
    assert_eq!(
        node_ports(&kept),
        ports,
        "the same ports after an update without them"
    );
    let mut cluster = kept.clone();
    cluster.spec.as_mut().unwrap().r#type = "ClusterIP".into();
    let cluster = api.update(cluster).await.unwrap();
    assert_eq!(node_ports(&cluster), vec![0, 0]);
    let reuse = api.create(node_port_service("d", 30080)).await.unwrap();
    assert_eq!(node_ports(&reuse)[0], 30080, "released by the type change");

    // One port twice in a service, or a port out of any range: refused.
    let mut twice = node_port_service("twice", 31000);
    twice.spec.as_mut().unwrap().ports[1].node_port = 31000;
    let dup = api.create(twice).await.unwrap_err();
    assert!(
        dup.message().contains("Duplicate value"),
        "{}",
        dup.message()
    );
    let huge = api
        .create(node_port_service("huge", 70000))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    assert!(
        huge.message().contains("spec.ports[0].nodePort"),
        "{}",
        huge.message()
    );

    // An ExternalName service naming an address claims nothing, so its
    // deletion frees nothing another service holds.
    let external: Service = serde_json::from_value(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.invalid", "clusterIP": "10.96.2.77"}
    }))
    .unwrap();
    api.create(external).await.unwrap();
    api.delete(DeleteRequest {
        namespace: "default".into(),
        name: "ext".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let thief = api
        .create(service("thief", "10.96.2.77"))
        .await
        .unwrap_err();
    assert!(
        thief.message().contains("already allocated"),
        "{}",
        thief.message()
    );

    // Deleted: released.
    api.delete(DeleteRequest {
        namespace: "default".into(),
        name: "d".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let again = api.create(node_port_service("e", 30080)).await.unwrap();
    assert_eq!(node_ports(&again)[0], 30080);
}
