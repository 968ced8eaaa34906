//! `externalTrafficPolicy: Local` on one node with the loopback pool (as
//! `skiff up` runs): the node's own connections to the load balancer
//! address and to localhost's NodePort are masqueraded and answered (a pod
//! cannot answer 127.0.0.1).

use std::time::Duration;

use serde_json::json;
use skiff_testkit::wait_until;

use super::{Ranges, cluster, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_load_balancer_answers_this_hosts_own_connections() {
    let ranges = Ranges {
        service_cidr: "10.208.0.0/24",
        node_ports: 31281..=31290,
        lb_pool: "127.0.208.1-127.0.208.9",
    };
    let c = cluster("proxy-local", "docker", "iptables", &ranges).await;
    c.deploy_who(1).await;
    let created = c
        .create_service(
            json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                               "selector": {"app": "who"},
                               "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}),
        )
        .await;
    let node_port = u16::try_from(created.spec.unwrap().ports[0].node_port).unwrap();
    c.wait_ready(1).await;
    let lb = c.load_balancer_address().await;
    let pods = c.pod_names().await;
    for addr in [format!("{lb}:80"), format!("127.0.0.1:{node_port}")] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let mut answer = String::new();
        wait_until(
            &format!("{addr} answers"),
            Duration::from_secs(30),
            async || {
                answer = http_get(addr).unwrap_or_default();
                pods.contains(&answer)
            },
        )
        .await;
    }
}
