//! `skiff-bench proxy`: requests through a ClusterIP and a NodePort vs
//! straight to the pod.

// The shared helpers and imports of the bench binary.
use super::*;

/// One HTTP/1.0 `GET /` on a new connection, read to the end.
async fn http_get(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut body = Vec::with_capacity(512);
    stream.read_to_end(&mut body).await?;
    anyhow::ensure!(body.starts_with(b"HTTP/1.1 200"), "{addr}: not a 200");
    Ok(())
}

/// The service range of the proxy benchmark (its own, so it claims no
/// address another cluster on this host uses).
const PROXY_BENCH_CIDR: &str = "10.209.0.0/24";

pub(crate) async fn bench_proxy(seconds: f64, concurrency: usize) -> anyhow::Result<()> {
    let image = skiff_testkit::test_image().await?;
    let dir = tempfile::tempdir()?;
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse()?,
        StoreConfig::Embedded(dir.path().join("proxy")),
    );
    config.service_cidr = PROXY_BENCH_CIDR.parse().map_err(anyhow::Error::msg)?;
    config.node_ports = 31290..=31299;
    let server = skiff_apiserver::ApiServer::start(config).await?;
    let url = format!("http://{}", server.addr);
    let node = skiff_testkit::AgentNode::start_with(
        &url,
        "bench-proxy",
        "docker",
        &[
            "--proxy-mode=iptables",
            &format!("--service-cidr={PROXY_BENCH_CIDR}"),
        ],
    )?;
    let _controllers = skiff_testkit::controller_manager(&url, &[])?;
    let channel = skiff_testkit::channel(server.addr).await?;
    let pods = skiff_client::Api::<Pod>::new(channel.clone());
    let services = skiff_client::Api::<skiff::pb::core::v1::Service>::new(channel.clone());
    // Two pods behind two Services: the NodePort path has a pod of its
    // own. Connections to one pod address share one space of translated
    // tuples (the host's address and port to the pod's), and conntrack
    // keeps each closed one 120 s: the direct and ClusterIP runs would
    // otherwise leave the NodePort run tens of thousands of them to step
    // around, which measures the order of the runs, not the path.
    let mut addresses = Vec::new();
    for (name, kind) in [("web", "ClusterIP"), ("web-np", "NodePort")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0, "containers": [{
                "name": "httpd", "image": image,
                "command": ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
            }]}
        }))?;
        pods.create(pod).await?;
        let service: skiff::pb::core::v1::Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": kind, "selector": {"app": name},
                     "ports": [{"port": 80, "targetPort": "http"}]}
        }))?;
        let spec = services.create(service).await?.spec.unwrap_or_default();
        let cluster: std::net::SocketAddr = format!("{}:80", spec.cluster_ip).parse()?;
        let node_port: std::net::SocketAddr =
            format!("127.0.0.1:{}", spec.ports[0].node_port).parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let direct: std::net::SocketAddr = loop {
            let ip = pods
                .get("default", name)
                .await?
                .status
                .map(|s| s.pod_ip)
                .unwrap_or_default();
            if !ip.is_empty() && http_get(cluster).await.is_ok() {
                break format!("{ip}:8080").parse()?;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "service {name} did not answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        addresses.push((direct, cluster, node_port));
    }
    let [(direct, cluster, _), (_, _, node_port)] = addresses[..] else {
        unreachable!("two services")
    };

    let measure =
        |addr: std::net::SocketAddr| drive(concurrency, seconds, move |_, _| http_get(addr));
    // Interleaved, twice each, so a noisy moment hurts both sides alike.
    let mut runs: [Vec<Figures>; 3] = Default::default();
    for _ in 0..2 {
        for (i, addr) in [direct, cluster, node_port].into_iter().enumerate() {
            runs[i].push(measure(addr).await?);
        }
    }
    let [d, c, p] = [
        Figures::mean(&runs[0]),
        Figures::mean(&runs[1]),
        Figures::mean(&runs[2]),
    ];
    println!(
        "HTTP GET on a new connection each, {concurrency} clients, {seconds} s x 2 per path, busybox httpd"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "", "req/s", "p50 ms", "p99 ms"
    );
    for (label, f) in [
        ("pod IP directly (raw, same run)", d),
        ("ClusterIP (iptables DNAT)", c),
        ("NodePort 127.0.0.1 (DNAT+SNAT, own pod)", p),
    ] {
        println!(
            "{label:<40} {:>10.0} {:>10.2} {:>10.2}",
            f.per_sec, f.p50_ms, f.p99_ms
        );
    }
    for (label, f) in [
        ("ratio ClusterIP / direct (target >= 0.9)", c),
        ("ratio NodePort / direct (target >= 0.8)", p),
    ] {
        println!(
            "{label:<40} {:>10.2} {:>10.2} {:>10.2}",
            f.per_sec / d.per_sec,
            f.p50_ms / d.p50_ms,
            f.p99_ms / d.p99_ms
        );
    }
    println!(
        "{}",
        json!({
            "bench": "proxy", "concurrency": concurrency,
            "direct_per_sec": d.per_sec, "direct_p99_ms": d.p99_ms,
            "cluster_ip_per_sec": c.per_sec, "cluster_ip_p99_ms": c.p99_ms,
            "node_port_per_sec": p.per_sec, "node_port_p99_ms": p.p99_ms,
            "ratio_per_sec": c.per_sec / d.per_sec, "ratio_p99": c.p99_ms / d.p99_ms,
            "node_port_ratio_per_sec": p.per_sec / d.per_sec,
        })
    );
    drop(node);
    Ok(())
}
