//! Skiff's ingress controller on real Docker: Ingresses with hosts, paths
//! and TLS in front of two Deployments, asked with curl as a user would.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff::pb::apps::v1::Deployment;
use skiff::pb::core::v1::{Endpoints, Secret, Service};
use skiff::pb::networking::v1::{Ingress, IngressClass};
use skiff_testkit::{modify, wait_until};

use super::{Cluster, Ranges, cluster};

/// curl's answer: `CODE BODY` (the body trimmed), or `ERR why`.
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", " %{http_code}"])
        .args(args)
        .output()
        .expect("running curl (scripts/deps installs it)");
    if !out.status.success() {
        return format!("ERR {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once(' ').unwrap_or(("", &text));
    format!("{code} {}", body.trim())
}

impl Cluster {
    /// A Deployment `name` of busybox httpd pods answering `name` at `/`
    /// and `name-api` under `/api/`, behind Service `name` port 80 (`http`).
    async fn web(&self, name: &str, replicas: i32) {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": self.image,
                        "command": ["sh", "-c", format!("mkdir -p /www/api && echo {name} > /www/index.html && echo {name}-api > /www/api/index.html && exec httpd -f -p 8080 -h /www")],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                           "periodSeconds": 1, "failureThreshold": 1}
                    }]}
                }
            }
        }))
        .unwrap();
        self.api::<Deployment>().create(deployment).await.unwrap();
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .unwrap();
        self.api::<Service>().create(service).await.unwrap();
    }

    async fn ready_endpoints(&self, name: &str) -> usize {
        self.api::<Endpoints>()
            .get("default", name)
            .await
            .map(|e| e.subsets.iter().map(|s| s.addresses.len()).sum())
            .unwrap_or(0)
    }

    async fn scale(&self, name: &str, replicas: i32) {
        modify(&self.api::<Deployment>(), "default", name, |d| {
            d.spec.as_mut().unwrap().replicas = Some(replicas);
        })
        .await;
        wait_until(
            &format!("{name} has {replicas} ready endpoints"),
            Duration::from_secs(90),
            async || self.ready_endpoints(name).await == replicas as usize,
        )
        .await;
    }
}

/// Two hosts and two paths route to the right Services; the TLS host
/// serves its Secret's certificate by SNI; an Ingress naming no class
/// gets the default `skiff`; its status names the controller's address;
/// a backend scaled to nothing answers 503, and back 200; a rolling
/// update of a backend under a client loop costs no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_route_hosts_paths_and_tls_to_services_through_scaling_and_rollouts() {
    let ranges = Ranges {
        service_cidr: "10.206.0.0/24",
        node_ports: 31261..=31270,
        lb_pool: "127.0.206.1-127.0.206.9",
    };
    let c = cluster("proxy-ingress", "docker", "none", &ranges).await;
    let url = format!("http://{}", c.server.addr);
    let mut config = skiff_ingress::Config::new(&url);
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.https = Some("127.0.0.1:0".parse().unwrap());
    config.addresses = vec!["127.0.0.1".into()];
    let controller = skiff_ingress::start(config).await.unwrap();
    let http = controller.http.unwrap();
    let https = controller.https.unwrap();

    // The controller makes its class, the default.
    wait_until(
        "the IngressClass skiff",
        Duration::from_secs(20),
        async || c.api::<IngressClass>().get("", "skiff").await.is_ok(),
    )
    .await;
    let class = c.api::<IngressClass>().get("", "skiff").await.unwrap();
    assert_eq!(class.spec.unwrap().controller, "skiff.io/ingress");
    assert_eq!(
        class.metadata.unwrap().annotations["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );

    c.web("front", 1).await;
    c.web("back", 2).await;
    // A certificate for a.example from a CA the client is given.
    let pki = tempfile::tempdir().unwrap();
    let ca = skiff_pki::Ca::load_or_create(pki.path()).unwrap();
    let id = ca.issue_server(&["a.example".into()]).unwrap();
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "a-tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
    }))
    .unwrap();
    secret
        .data
        .insert("tls.crt".into(), id.cert_pem.into_bytes());
    secret
        .data
        .insert("tls.key".into(), id.key_pem.into_bytes());
    c.api::<Secret>().create(secret).await.unwrap();

    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "tls": [{"hosts": ["a.example"], "secretName": "a-tls"}],
            "rules": [
                {"host": "a.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "front", "port": {"number": 80}}}},
                    {"path": "/api", "pathType": "Prefix",
                     "backend": {"service": {"name": "back", "port": {"name": "http"}}}},
                ]}},
                {"host": "b.example", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": "back", "port": {"number": 80}}}},
                ]}},
            ],
        },
    }))
    .unwrap();
    let created = c.api::<Ingress>().create(ingress).await.unwrap();
    assert_eq!(
        created.spec.unwrap().ingress_class_name.as_deref(),
        Some("skiff"),
        "DefaultIngressClass admission"
    );
    wait_until("the Ingress' status", Duration::from_secs(20), async || {
        c.api::<Ingress>()
            .get("default", "web")
            .await
            .is_ok_and(|i| {
                i.status
                    .and_then(|s| s.load_balancer)
                    .is_some_and(|lb| lb.ingress.iter().any(|a| a.ip == "127.0.0.1"))
            })
    })
    .await;
    wait_until("both backends ready", Duration::from_secs(90), async || {
        c.ready_endpoints("front").await == 1 && c.ready_endpoints("back").await == 2
    })
    .await;

    let base = format!("http://{http}");
    let get =
        |host: &str, path: &str| curl(&["-H", &format!("Host: {host}"), &format!("{base}{path}")]);
    assert_eq!(get("a.example", "/"), "200 front");
    assert_eq!(get("a.example", "/api/"), "200 back-api");
    let apis = get("a.example", "/apis");
    assert!(
        apis.starts_with("404 <HTML>"),
        "front's httpd answers /apis (a prefix matches whole elements): {apis}"
    );
    assert_eq!(get("b.example", "/"), "200 back");
    assert_eq!(get("b.example", "/api/"), "200 back-api");
    // Paths that could mean another path to the backend are refused.
    let dotted = curl(&[
        "--path-as-is",
        "-H",
        "Host: a.example",
        &format!("{base}/api/../x"),
    ]);
    assert!(
        dotted.starts_with("400 400 bad request: dot segments"),
        "{dotted}"
    );
    let unknown = get("c.example", "/");
    assert!(unknown.starts_with("404 404 page not found"), "{unknown}");
    // HTTP/2 in cleartext too (prior knowledge).
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            "-H",
            "Host: a.example",
            &format!("{base}/api/")
        ]),
        "200 back-api"
    );

    // TLS: the Secret's certificate for its SNI name, verified by the CA.
    let resolve = format!("a.example:{}:127.0.0.1", https.port());
    let tls_url = format!("https://a.example:{}/", https.port());
    let ca_path = ca_file.to_str().unwrap();
    assert_eq!(
        curl(&["--resolve", &resolve, "--cacert", ca_path, &tls_url]),
        "200 front"
    );
    assert_eq!(
        curl(&[
            "--http2",
            "--resolve",
            &resolve,
            "--cacert",
            ca_path,
            &format!("{tls_url}api/")
        ]),
        "200 back-api"
    );
    // No certificate for a name no TLS entry has: the handshake fails.
    let other = format!("b.example:{}:127.0.0.1", https.port());
    let refused = curl(&[
        "--resolve",
        &other,
        "-k",
        &format!("https://b.example:{}/", https.port()),
    ]);
    assert!(refused.starts_with("ERR"), "{refused}");

    // No ready endpoint: 503 from the controller; back: 200.
    c.scale("front", 0).await;
    let down = get("a.example", "/");
    assert!(down.starts_with("503 "), "{down}");
    assert!(
        down.contains("default/front has no ready endpoint"),
        "{down}"
    );
    c.scale("front", 1).await;
    assert_eq!(get("a.example", "/"), "200 front");

    // A rolling update of `back` under a bounded client loop: no request
    // fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_stop = std::sync::Arc::clone(&stop);
    let client = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        for _ in 0..3000 {
            if loop_stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            match curl(&["-H", "Host: b.example", &format!("http://{http}/")]) {
                answer if answer == "200 back" => ok += 1,
                answer => failed.push(answer),
            }
        }
        (ok, failed)
    });
    modify(&c.api::<Deployment>(), "default", "back", |d| {
        let template = d.spec.as_mut().unwrap().template.as_mut().unwrap();
        template
            .metadata
            .as_mut()
            .unwrap()
            .annotations
            .insert("rolled".into(), "1".into());
    })
    .await;
    wait_until("the rollout ends", Duration::from_secs(120), async || {
        c.api::<Deployment>()
            .get("default", "back")
            .await
            .is_ok_and(|d| {
                let status = d.status.unwrap_or_default();
                status.updated_replicas == 2
                    && status.ready_replicas == 2
                    && status.replicas == 2
                    && d.metadata.unwrap().generation == status.observed_generation
            })
    })
    .await;
    // The old pods' endpoints are gone; a little more traffic after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    eprintln!(
        "during the rollout: {ok} requests answered, {} failed",
        failed.len()
    );
    assert!(ok > 20, "only {ok} requests answered");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );

    // The access metrics count by Ingress, Service and code.
    let metrics = skiff_metrics::render();
    assert!(
        metrics.contains("skiff_ingress_requests_total{code=\"200\",ingress=\"default/web\",service=\"default/back\"}"),
        "{}",
        metrics.lines().filter(|l| l.contains("skiff_ingress")).collect::<Vec<_>>().join("\n")
    );
    assert!(metrics.contains("skiff_ingress_requests_total{code=\"503\",ingress=\"default/web\",service=\"default/front\"}"));
    controller.stop();
}
