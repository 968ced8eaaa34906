//! The API server's own Service, `default/kubernetes`, as pods see it.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff::pb::core::v1::{Endpoints, Pod, Service};
use skiff_testkit::wait_until;

use super::{Ranges, cluster};

/// Client libraries' in-cluster config: a pod finds the API server by
/// `KUBERNETES_SERVICE_HOST`/`PORT` (the `default/kubernetes` Service,
/// the service range's first address, port 443, whose Endpoints are the
/// server's advertised address) and reaches it through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_finds_and_reaches_the_api_server_by_the_kubernetes_service() {
    let ranges = Ranges {
        service_cidr: "10.205.0.0/24",
        node_ports: 31251..=31260,
        lb_pool: "127.0.205.1-127.0.205.9",
    };
    let c = cluster("proxy-master", "docker", "iptables", &ranges).await;
    let master = c
        .api::<Service>()
        .get("default", "kubernetes")
        .await
        .unwrap();
    let spec = master.spec.unwrap();
    assert_eq!(spec.cluster_ip, "10.205.0.1");
    assert_eq!(spec.ports[0].port, 443);
    assert_eq!(spec.ports[0].name, "https");
    let endpoints = c
        .api::<Endpoints>()
        .get("default", "kubernetes")
        .await
        .unwrap();
    let subset = &endpoints.subsets[0];
    assert_eq!(subset.addresses[0].ip, "127.0.0.1");
    assert_eq!(subset.ports[0].name, "https");

    c.start_client().await;
    let env = c.in_client("env");
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=10.205.0.1\n"),
        "{env}"
    );
    assert!(env.contains("KUBERNETES_SERVICE_PORT=443\n"), "{env}");
    assert!(env.contains("KUBERNETES_SERVICE_PORT_HTTPS=443\n"), "{env}");
    assert!(
        env.contains("KUBERNETES_PORT_443_TCP=tcp://10.205.0.1:443\n"),
        "{env}"
    );
    // The test's server is plaintext (--insecure), so busybox can ask it.
    let version = c.in_client(
        "timeout 10 wget -q -O- http://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version",
    );
    assert!(version.contains("\"gitVersion\""), "{version:?}");

    // A pod with enableServiceLinks off still gets the API's variables.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unlinked", "namespace": "default"},
        "spec": {"enableServiceLinks": false, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": c.image, "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    c.api::<Pod>().create(pod).await.unwrap();
    wait_until(
        "the unlinked pod runs",
        Duration::from_secs(60),
        async || {
            c.api::<Pod>()
                .get("default", "unlinked")
                .await
                .is_ok_and(|p| p.status.is_some_and(|s| s.phase == "Running"))
        },
    )
    .await;
    let env = Command::new("docker")
        .args(["exec", &c.container("unlinked", "c"), "env"])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.contains("KUBERNETES_SERVICE_HOST=10.205.0.1\n"),
        "{env}"
    );
}
