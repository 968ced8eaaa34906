//! Prometheus metrics end to end: `skiff server --metrics-addr` serves
//! `/metrics` in Prometheus' text format (checked with a real parser), and
//! the API server's counters move with the calls a client makes.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use skiff::pb::core::v1::Pod;
use skiff_client::Api;

/// `GET /metrics`, parsed.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_counts_calls_by_kind_method_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = skiff_e2e::free_port().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let server = skiff_e2e::ServerProcess::start(&[
        "--data-dir".to_string(),
        dir.path().display().to_string(),
        format!("--metrics-addr={metrics}"),
    ])
    .unwrap();
    let pods = Api::<Pod>::new(skiff_e2e::channel(server.addr).await.unwrap());
    let before = scrape(metrics);
    let created = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "skiff_apiserver_requests_total",
            &[("kind", "Pods"), ("method", "Create"), ("code", "Ok")],
        )
    };
    let missing = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "skiff_apiserver_requests_total",
            &[("kind", "Pods"), ("method", "Get"), ("code", "NotFound")],
        )
    };
    for i in 0..3 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(pod).await.unwrap();
    }
    assert_eq!(
        pods.get("default", "nope").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A watch open while scraping is counted as a watcher.
    let _watch = pods.watch(Default::default()).await.unwrap();
    let after = scrape(metrics);
    assert_eq!(created(&after) - created(&before), 3.0);
    assert_eq!(missing(&after) - missing(&before), 1.0);
    assert_eq!(value(&after, "skiff_apiserver_watchers", &[]), 1.0);
    assert!(
        value(
            &after,
            "skiff_apiserver_request_duration_seconds_count",
            &[("method", "Create")]
        ) >= 3.0
    );
    // Anything but /metrics is not found.
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
