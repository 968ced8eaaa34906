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
    let metrics_port = skiff_testkit::free_port().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".to_string(),
        dir.path().display().to_string(),
        format!("--metrics-addr={metrics}"),
    ])
    .unwrap();
    let pods = Api::<Pod>::new(skiff_testkit::channel(server.addr).await.unwrap());
    // The metrics page may open a moment after the gRPC port.
    skiff_testkit::wait_for_port(metrics, Duration::from_secs(20)).unwrap();
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
    // A watch open while scraping is counted as a watcher; it gets the
    // three pods first, counted as events sent.
    let mut watch = pods.watch(Default::default()).await.unwrap();
    for _ in 0..3 {
        watch.message().await.unwrap().unwrap();
    }
    let after = scrape(metrics);
    assert!(
        value(
            &after,
            "skiff_apiserver_watch_events_sent_total",
            &[("kind", "Pod")]
        ) >= 3.0
    );
    assert_eq!(created(&after) - created(&before), 3.0);
    assert_eq!(missing(&after) - missing(&before), 1.0);
    assert_eq!(value(&after, "skiff_apiserver_watchers", &[]), 1.0);
    // Store operations are timed under the API.
    assert!(
        value(
            &after,
            "skiff_store_operation_duration_seconds_count",
            &[
                ("backend", "embedded"),
                ("operation", "create"),
                ("result", "ok")
            ]
        ) >= 3.0
    );
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

/// Polls `scrape` of `addr` until `ok` holds; panics with the scrape.
async fn wait_for_metric(
    what: &str,
    addr: SocketAddr,
    ok: impl Fn(&prometheus_parse::Scrape) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    skiff_testkit::wait_for_port(addr, Duration::from_secs(60)).unwrap();
    loop {
        let scraped = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        if ok(&scraped) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not seen in {:?}",
            scraped
                .samples
                .iter()
                .map(|s| format!("{}{:?}", s.metric, s.labels))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_metrics_that_move_with_the_work() {
    let image = skiff_testkit::test_image().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = || -> SocketAddr {
        format!("127.0.0.1:{}", skiff_testkit::free_port().unwrap())
            .parse()
            .unwrap()
    };
    let (api_metrics, scheduler_metrics, manager_metrics, agent_metrics) =
        (addr(), addr(), addr(), addr());
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".to_string(),
        dir.path().display().to_string(),
        format!("--metrics-addr={api_metrics}"),
    ])
    .unwrap();
    let url = server.url();
    let _scheduler = skiff_testkit::ChildGuard::new(
        std::process::Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(["scheduler", "--server", &url, "--lease-duration-secs=2"])
            .arg(format!("--metrics-addr={scheduler_metrics}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _manager = skiff_testkit::controller_manager_with(
        &url,
        &[],
        &[&format!("--metrics-addr={manager_metrics}")],
    )
    .unwrap();
    let _node = skiff_testkit::AgentNode::start_with(
        &url,
        "metrics",
        "docker",
        &[&format!("--metrics-addr={agent_metrics}")],
    )
    .unwrap();
    let rs: skiff::pb::apps::v1::ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "m", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "m"}},
            "template": {
                "metadata": {"labels": {"app": "m"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "c", "image": image, "command": ["sleep", "3600"],
                    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}
                }]}
            }
        }
    }))
    .unwrap();
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    Api::<skiff::pb::apps::v1::ReplicaSet>::new(channel.clone())
        .create(rs)
        .await
        .unwrap();

    let at_least =
        |metric: &'static str, labels: &'static [(&'static str, &'static str)], n: f64| {
            move |s: &prometheus_parse::Scrape| value(s, metric, labels) >= n
        };
    wait_for_metric(
        "API server: the ReplicaSet's create",
        api_metrics,
        at_least(
            "skiff_apiserver_requests_total",
            &[
                ("kind", "ReplicaSets"),
                ("method", "Create"),
                ("code", "Ok"),
            ],
            1.0,
        ),
    )
    .await;
    wait_for_metric(
        "scheduler: two pods scheduled, timed",
        scheduler_metrics,
        |s| {
            value(
                s,
                "skiff_scheduler_schedule_attempts_total",
                &[("result", "scheduled")],
            ) >= 2.0
                && value(s, "skiff_scheduler_scheduling_duration_seconds_count", &[]) >= 2.0
        },
    )
    .await;
    wait_for_metric(
        "controller manager: replicaset reconciles",
        manager_metrics,
        at_least(
            "skiff_controller_reconcile_duration_seconds_count",
            &[("controller", "replicasets")],
            1.0,
        ),
    )
    .await;
    wait_for_metric(
        "agent: two running pods, their start timed, readiness probed",
        agent_metrics,
        |s| {
            value(s, "skiff_agent_running_pods", &[]) >= 2.0
                && value(s, "skiff_agent_pod_start_duration_seconds_count", &[]) >= 2.0
                && value(
                    s,
                    "skiff_agent_probe_results_total",
                    &[("probe", "readiness"), ("result", "success")],
                ) >= 1.0
        },
    )
    .await;
}
