//! NetworkPolicies enforced by the agent on real Docker: the Kubernetes
//! docs' examples, each checked by a matrix of pods probing a server on
//! two ports, applied and removed in turn.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::core::v1::{Namespace, Pod};
use skiff::pb::networking::v1::NetworkPolicy;
use skiff_testkit::wait_until;

use super::{Cluster, Ranges, cluster};

/// The clients (pod name, namespace) and the server's ports.
const CLIENTS: [(&str, &str); 3] = [("front", "shop"), ("other", "shop"), ("visitor", "guest")];
const PORTS: [u16; 2] = [8080, 9090];

impl Cluster {
    async fn running(
        &self,
        namespace: &str,
        name: &str,
        labels: serde_json::Value,
        command: &str,
    ) -> String {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "c", "image": self.image, "command": ["sh", "-c", command],
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "alt", "containerPort": 9090}],
            }]}
        }))
        .unwrap();
        self.api::<Pod>().create(pod).await.unwrap();
        let mut ip = String::new();
        wait_until(
            &format!("{namespace}/{name} runs"),
            Duration::from_secs(60),
            async || {
                let pod = self.api::<Pod>().get(namespace, name).await;
                ip = pod
                    .ok()
                    .and_then(|p| p.status)
                    .filter(|s| s.phase == "Running")
                    .map(|s| s.pod_ip)
                    .unwrap_or_default();
                !ip.is_empty()
            },
        )
        .await;
        ip
    }

    /// Whether pod `from` gets the server's page at `ip:port`.
    fn reaches(&self, from: &str, ip: &str, port: u16) -> bool {
        let out = Command::new("docker")
            .args([
                "exec",
                &self.container(from, "c"),
                "timeout",
                "3",
                "wget",
                "-q",
                "-O-",
            ])
            .arg(format!("http://{ip}:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("web")
    }

    /// Who reaches the server on which port.
    fn matrix(&self, ip: &str) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        for (client, _) in CLIENTS {
            for port in PORTS {
                out.insert(format!("{client}:{port}"), self.reaches(client, ip, port));
            }
        }
        out
    }

    /// Waits until the matrix is `allowed` (the others denied).
    async fn expect(&self, what: &str, ip: &str, allowed: &[&str]) {
        let want: BTreeMap<String, bool> = CLIENTS
            .iter()
            .flat_map(|(c, _)| PORTS.map(|p| format!("{c}:{p}")))
            .map(|k| {
                let yes = allowed.contains(&k.as_str());
                (k, yes)
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let seen = self.matrix(ip);
            if seen == want || std::time::Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(seen, want, "{what}");
    }

    async fn policy(&self, namespace: &str, name: &str, spec: serde_json::Value) {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        }))
        .unwrap();
        self.api::<NetworkPolicy>().create(policy).await.unwrap();
    }

    async fn unpolicy(&self, namespace: &str, name: &str) {
        self.api::<NetworkPolicy>()
            .delete(DeleteRequest {
                namespace: namespace.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_allow_exactly_what_they_say_and_their_removal_restores_traffic() {
    let ranges = Ranges {
        service_cidr: "10.207.0.0/24",
        node_ports: 31271..=31280,
        lb_pool: "127.0.207.1-127.0.207.9",
    };
    let c = cluster("proxy-netpol", "docker", "iptables", &ranges).await;
    for (name, labels) in [("shop", json!({})), ("guest", json!({"team": "guest"}))] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        c.api::<Namespace>().create(namespace).await.unwrap();
    }
    let web = c
        .running(
            "shop",
            "web",
            json!({"app": "web"}),
            "mkdir -p /www && echo web > /www/index.html && httpd -p 9090 -h /www && exec httpd -f -p 8080 -h /www",
        )
        .await;
    let visitor_ip = {
        let mut ip = String::new();
        for (name, namespace) in CLIENTS {
            let labels = if name == "other" {
                json!({})
            } else {
                json!({"role": "frontend"})
            };
            let got = c.running(namespace, name, labels, "exec sleep 3600").await;
            if name == "visitor" {
                ip = got;
            }
        }
        ip
    };
    let service: skiff::pb::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let cluster_ip = c
        .api::<skiff::pb::core::v1::Service>()
        .create(service)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip;
    wait_until(
        "the ClusterIP answers",
        Duration::from_secs(30),
        async || c.reaches("other", &cluster_ip, 80),
    )
    .await;
    let all: Vec<&str> = vec![
        "front:8080",
        "front:9090",
        "other:8080",
        "other:9090",
        "visitor:8080",
        "visitor:9090",
    ];
    c.expect("no policy: everyone reaches web", &web, &all)
        .await;

    // A connection open before a deny keeps going: "other" connects now
    // and sends its request after the policy is in.
    let established = {
        let container = c.container("other", "c");
        let script =
            format!("(sleep 4; printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 2) | nc {web} 8080");
        std::thread::spawn(move || {
            let out = Command::new("docker")
                .args(["exec", &container, "sh", "-c", &script])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The docs' default-deny-ingress.
    c.policy(
        "shop",
        "default-deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )
    .await;
    c.expect("default deny: no one", &web, &[]).await;
    let answer = established.join().unwrap();
    assert!(
        answer.contains("web"),
        "the established connection was cut: {answer:?}"
    );
    c.unpolicy("shop", "default-deny-ingress").await;
    c.expect("the deny removed: everyone again", &web, &all)
        .await;

    // Allow from a namespace by its label: the visitor only.
    c.policy(
        "shop",
        "from-guests",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "guest"}}}]}]}),
    )
    .await;
    c.expect(
        "from the guest namespace",
        &web,
        &["visitor:8080", "visitor:9090"],
    )
    .await;
    // Through the Service's ClusterIP the same: judged after the DNAT, by
    // the pod reached and the real client.
    assert!(
        c.reaches("visitor", &cluster_ip, 80),
        "the visitor through the ClusterIP"
    );
    assert!(
        !c.reaches("other", &cluster_ip, 80),
        "other through the ClusterIP"
    );
    // And from pods with a label, on one (named) port: the union.
    c.policy(
        "shop",
        "frontends-on-http",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                            "ports": [{"protocol": "TCP", "port": "http"}]}]}),
    )
    .await;
    c.expect(
        "plus shop's frontends on http",
        &web,
        &["front:8080", "visitor:8080", "visitor:9090"],
    )
    .await;
    c.unpolicy("shop", "from-guests").await;
    c.unpolicy("shop", "frontends-on-http").await;
    c.expect("both removed", &web, &all).await;

    // Egress of the frontends to an address block on one port (and not
    // to the visitor's address, excepted from the block).
    c.policy(
        "shop",
        "front-egress",
        json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": format!("{web}/32")}},
                                  {"ipBlock": {"cidr": format!("{visitor_ip}/30"), "except": [format!("{visitor_ip}/32")]}}],
                           "ports": [{"port": 8080}]}]}),
    )
    .await;
    c.expect(
        "front reaches web on 8080 only; the others are not isolated",
        &web,
        &[
            "front:8080",
            "other:8080",
            "other:9090",
            "visitor:8080",
            "visitor:9090",
        ],
    )
    .await;
    c.unpolicy("shop", "front-egress").await;
    c.expect("all removed", &web, &all).await;
}
