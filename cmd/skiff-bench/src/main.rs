//! `skiff-bench`: Skiff's benchmarks, each printed next to its raw baseline
//! measured in the same run on the same machine.
//!
//! - `api`: Pod creates/s and p50/p99 latency at 1, 16 and 128 concurrent
//!   clients, through the API server on each store backend, beside raw
//!   etcd puts of the same bytes at the same concurrency, and raw etcd
//!   create-if-absent transactions (the write a create makes).
//! - `watch`: 1,000 watchers of one kind; p50/p99 delivery latency of a
//!   change to every watcher.
//!
//! - `schedule`: hollow nodes and the scheduler: pods bound per second and
//!   create→bound latency, beside the API's raw create rate measured in
//!   the same run (a bind is one more write per pod).
//!
//! - `scale`: a ReplicaSet scaled 0 → N on hollow nodes, with the
//!   controller manager and scheduler as processes: seconds until N pods
//!   run, and the API writes per second it took.
//!
//! - `podstart`: N pods created at once on one Docker node (a real agent):
//!   create→Running p50/p99, beside plain Docker create+start of the same
//!   image, N at once, in the same run; and the ratio.
//!
//! Each prints a table and, as its last line, one JSON object of figures.
//! Runs are bounded in time and count and stop by themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use prost::Message as _;
use serde_json::json;
use skiff::pb::api::v1::{EventType, WatchRequest};
use skiff::pb::core::v1::{
    ConfigMap, Container, ContainerPort, Pod, PodSpec, ResourceRequirements,
    config_maps_client::ConfigMapsClient, pods_client::PodsClient,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_apiserver::StoreConfig;
use tonic::transport::Channel;

/// mimalloc: the API path allocates many short-lived buffers, and glibc's
/// malloc spent a sixth of the CPU on them in `skiff-bench api`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff-bench", about = "Skiff benchmarks against raw baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

mod netperf;

#[derive(Subcommand)]
enum Command {
    /// Pod-to-pod request/response on one host and across hosts (host-gw,
    /// VXLAN) vs host to host over the same links, on hosts simulated
    /// with network namespaces.
    Netperf {
        /// Seconds per measurement (each path is measured twice).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Pod start latency on a Docker node vs plain `docker create+start`.
    Podstart {
        /// Pods (and raw containers) started at once.
        #[arg(long, default_value_t = 20)]
        pods: usize,
    },
    /// HTTP requests through a Service's ClusterIP and NodePort (the
    /// agent's iptables proxy) vs straight to the pod's IP, same run.
    Proxy {
        /// Seconds per measurement (each path is measured twice,
        /// interleaved).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// API create throughput and latency vs raw etcd puts.
    Api {
        /// Seconds per measurement (per backend and concurrency level).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
        concurrency: Vec<usize>,
        /// Skip the API-on-etcd measurement (raw etcd is always measured).
        #[arg(long)]
        no_etcd_api: bool,
        /// Also create over the Kubernetes HTTP API (JSON, HTTP/2) on the
        /// embedded store, beside gRPC in the same run.
        #[arg(long)]
        http: bool,
    },
    /// Scheduling throughput and latency on hollow nodes.
    Schedule {
        /// Hollow nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pods to create and schedule.
        #[arg(long, default_value_t = 10000)]
        pods: usize,
        /// Concurrent creating clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Lists of many pods from the API server's own process: over HTTP
    /// as JSON (client-go, Python), as a Table (`kubectl get pods`), and
    /// over gRPC; time, and the server's resident memory before and at
    /// its peak while listing.
    List {
        /// Pods in the namespace listed.
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Lists of each kind (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// A ReplicaSet scaled from 0 on hollow nodes: time until every pod
    /// runs, and the API write rate that took.
    Scale {
        /// Hollow nodes.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Replicas to scale to.
        #[arg(long, default_value_t = 1000)]
        replicas: i32,
    },
    /// Watch fan-out: delivery latency of changes to many watchers.
    Watch {
        /// Number of watchers.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Number of changes to time.
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
}

/// Figures of one measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    ops: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    Figures {
        ops: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// Runs `op(worker, i)` on `concurrency` workers for `seconds`; returns the
/// latencies of successful ops and the elapsed time.
async fn drive<F, Fut>(concurrency: usize, seconds: f64, op: F) -> anyhow::Result<Figures>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(w, i).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(figures(all, start.elapsed()))
}

/// The Pod every create benchmark writes: a typical small manifest.
fn bench_pod(name: String) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name,
            namespace: "default".into(),
            labels: [("app".to_string(), "bench".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: "busybox:1.36".into(),
                command: vec!["httpd".into(), "-f".into(), "-p".into(), "8080".into()],
                ports: vec![ContainerPort {
                    container_port: 8080,
                    name: "http".into(),
                    ..Default::default()
                }],
                resources: Some(ResourceRequirements {
                    limits: [("cpu".to_string(), "500m".to_string())]
                        .into_iter()
                        .collect(),
                    requests: [("memory".to_string(), "64Mi".to_string())]
                        .into_iter()
                        .collect(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An in-process API server with production defaults on a free port.
async fn start_server(store: StoreConfig) -> anyhow::Result<skiff_apiserver::ApiServer> {
    let config = skiff_apiserver::Config::new("127.0.0.1:0".parse()?, store);
    Ok(skiff_apiserver::ApiServer::start(config).await?)
}

/// Connections per measurement: clients share a few HTTP/2 connections.
fn connections(concurrency: usize) -> usize {
    concurrency.clamp(1, 8)
}

async fn channels(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(skiff_testkit::channel(addr).await?);
    }
    Ok(out)
}

async fn api_creates(
    store: StoreConfig,
    label: &str,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let server = start_server(store).await?;
    let chans = channels(server.addr, connections(concurrency)).await?;
    let clients: Vec<PodsClient<Channel>> = chans.into_iter().map(PodsClient::new).collect();
    let clients = Arc::new(clients);
    let label = label.to_string();
    let result = drive(concurrency, seconds, move |w, i| {
        let mut client = clients[w % clients.len()].clone();
        let pod = bench_pod(format!("{label}-c{concurrency}-w{w}-{i}"));
        async move {
            client.create(pod).await.context("create")?;
            Ok(())
        }
    })
    .await;
    server.stop().await?;
    result
}

/// A plaintext HTTP connector with TCP_NODELAY, as Go's clients (kubectl,
/// client-go) and tonic's channels have it: without it, small writes wait
/// for the peer's delayed ACK (40 ms on Linux).
fn http_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Creates over the Kubernetes HTTP API: the same Pod as JSON, POSTed
/// over HTTP/2 (a few multiplexed connections, as for gRPC).
async fn api_http_creates(
    store: StoreConfig,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let server = start_server(store).await?;
    let url = format!("http://{}/api/v1/namespaces/default/pods", server.addr);
    let clients: Vec<_> = (0..connections(concurrency))
        .map(|_| {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build::<_, http_body_util::Full<bytes::Bytes>>(http_connector())
        })
        .collect();
    let clients = Arc::new(clients);
    let result = drive(concurrency, seconds, move |w, i| {
        let client = clients[w % clients.len()].clone();
        let pod = bench_pod(format!("http-c{concurrency}-w{w}-{i}"));
        let url = url.clone();
        async move {
            let body = serde_json::to_vec(&pod)?;
            let request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
            let response = client.request(request).await.context("HTTP create")?;
            let status = response.status();
            use http_body_util::BodyExt as _;
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status == http::StatusCode::CREATED,
                "HTTP create: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        }
    })
    .await;
    server.stop().await?;
    result
}

/// What a raw etcd baseline writes per op.
#[derive(Clone, Copy)]
enum RawOp {
    /// A plain put.
    Put,
    /// A create-if-absent transaction (compare create_revision = 0, then
    /// put): the write the API server itself makes for a create.
    Txn,
}

async fn raw_etcd(
    endpoint: &str,
    op: RawOp,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let mut clients = Vec::new();
    for _ in 0..connections(concurrency) {
        clients.push(etcd_client::Client::connect([endpoint], None).await?);
    }
    // The same bytes the API server stores for a bench Pod.
    let value = bench_pod("raw".into()).encode_to_vec();
    let clients = Arc::new(clients);
    let tag = match op {
        RawOp::Put => "put",
        RawOp::Txn => "txn",
    };
    drive(concurrency, seconds, move |w, i| {
        let mut kv = clients[w % clients.len()].kv_client();
        let key = format!("/raw/{tag}/c{concurrency}/w{w}/{i}");
        let value = value.clone();
        async move {
            match op {
                RawOp::Put => {
                    kv.put(key, value, None).await.context("etcd put")?;
                }
                RawOp::Txn => {
                    let txn = etcd_client::Txn::new()
                        .when([etcd_client::Compare::create_revision(
                            key.clone(),
                            etcd_client::CompareOp::Equal,
                            0,
                        )])
                        .and_then([etcd_client::TxnOp::put(key, value, None)]);
                    kv.txn(txn).await.context("etcd txn")?;
                }
            }
            Ok(())
        }
    })
    .await
}

async fn bench_api(
    seconds: f64,
    levels: Vec<usize>,
    with_etcd_api: bool,
    with_http: bool,
) -> anyhow::Result<()> {
    let etcd = skiff_testkit::Etcd::start()?;
    let dir = tempfile::tempdir()?;
    println!(
        "{:<12} {:>15} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "concurrency", "target", "ops", "ops/s", "p50 ms", "p99 ms", "vs raw"
    );
    let mut rows = Vec::new();
    for &c in &levels {
        eprintln!("measuring concurrency {c} ({seconds}s each)...");
        let raw = raw_etcd(&etcd.endpoint, RawOp::Put, c, seconds).await?;
        let raw_txn = raw_etcd(&etcd.endpoint, RawOp::Txn, c, seconds).await?;
        let on_etcd = if with_etcd_api {
            api_creates(
                StoreConfig::Etcd(vec![etcd.endpoint.clone()]),
                "etcd",
                c,
                seconds,
            )
            .await?
        } else {
            Figures::default()
        };
        let embedded = api_creates(
            StoreConfig::Embedded(dir.path().join(format!("bench-{c}.redb"))),
            "emb",
            c,
            seconds,
        )
        .await?;
        let http = if with_http {
            api_http_creates(
                StoreConfig::Embedded(dir.path().join(format!("bench-http-{c}.redb"))),
                c,
                seconds,
            )
            .await?
        } else {
            Figures::default()
        };
        for (name, f) in [
            ("raw etcd put", raw),
            ("raw etcd txn", raw_txn),
            ("api (etcd)", on_etcd),
            ("api (embedded)", embedded),
            ("http (embedded)", http),
        ] {
            if f.ops == 0 {
                continue;
            }
            println!(
                "{:<12} {:>15} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7.2}x",
                c,
                name,
                f.ops,
                f.per_sec,
                f.p50_ms,
                f.p99_ms,
                f.per_sec / raw.per_sec
            );
        }
        rows.push(json!({
            "concurrency": c,
            "raw_etcd_puts_per_sec": raw.per_sec,
            "raw_etcd_p50_ms": raw.p50_ms,
            "raw_etcd_p99_ms": raw.p99_ms,
            "raw_etcd_txns_per_sec": raw_txn.per_sec,
            "raw_etcd_txn_p50_ms": raw_txn.p50_ms,
            "raw_etcd_txn_p99_ms": raw_txn.p99_ms,
            "ratio_api_etcd_vs_raw_txn": on_etcd.per_sec / raw_txn.per_sec,
            "api_etcd_creates_per_sec": on_etcd.per_sec,
            "api_etcd_p50_ms": on_etcd.p50_ms,
            "api_etcd_p99_ms": on_etcd.p99_ms,
            "api_embedded_creates_per_sec": embedded.per_sec,
            "api_embedded_p50_ms": embedded.p50_ms,
            "api_embedded_p99_ms": embedded.p99_ms,
            "ratio_api_etcd_vs_raw": on_etcd.per_sec / raw.per_sec,
            "ratio_api_embedded_vs_raw": embedded.per_sec / raw.per_sec,
            "http_embedded_creates_per_sec": http.per_sec,
            "http_embedded_p50_ms": http.p50_ms,
            "http_embedded_p99_ms": http.p99_ms,
            "ratio_http_vs_grpc_embedded": http.per_sec / embedded.per_sec,
        }));
    }
    println!(
        "{}",
        json!({"bench": "api", "seconds": seconds, "results": rows})
    );
    Ok(())
}

async fn bench_watch(watchers: usize, changes: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_server(StoreConfig::Embedded(dir.path().join("watch.redb"))).await?;
    let mut cm = ConfigMapsClient::new(skiff_testkit::channel(server.addr).await?);
    let created = cm
        .create(ConfigMap {
            metadata: Some(ObjectMeta {
                name: "watched".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let rv = created
        .metadata
        .as_ref()
        .map(|m| m.resource_version.clone())
        .unwrap_or_default();

    // Watchers spread over connections (HTTP/2 caps streams per connection).
    let per_conn = 100;
    let chans = channels(server.addr, watchers.div_ceil(per_conn)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for w in 0..watchers {
        let mut client = ConfigMapsClient::new(chans[w / per_conn].clone());
        let tx = tx.clone();
        let rv = rv.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch(WatchRequest {
                    resource_version: rv,
                    ..Default::default()
                })
                .await?
                .into_inner();
            ready.send(()).await.ok();
            let mut seen = 0;
            while seen < changes {
                let Some(event) = stream.next().await else {
                    break;
                };
                let event = event?;
                if event.r#type == EventType::Modified as i32 {
                    let n: usize = event
                        .object
                        .as_ref()
                        .and_then(|o| o.data.get("n"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let _ = tx.send((n, Instant::now()));
                    seen += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    for _ in 0..watchers {
        ready_rx.recv().await.context("watcher failed to start")?;
    }
    eprintln!("{watchers} watchers ready; making {changes} changes...");
    let mut sent_at = Vec::new();
    let mut current = created;
    for n in 0..changes {
        current.data = [("n".to_string(), n.to_string())].into_iter().collect();
        let t = Instant::now();
        current = cm.update(current.clone()).await?.into_inner();
        sent_at.push(t);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::new();
    let mut to_all = vec![Duration::ZERO; changes];
    let collect = async {
        while let Some((n, at)) = rx.recv().await {
            if let Some(sent) = sent_at.get(n) {
                let d = at.saturating_duration_since(*sent);
                latencies.push(d);
                to_all[n] = to_all[n].max(d);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .context("watchers did not receive every change within 60 s")?;
    for t in tasks {
        t.await??;
    }
    server.stop().await?;
    let delivered = latencies.len();
    latencies.sort();
    to_all.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (all50, all99) = (percentile(&to_all, 0.5), percentile(&to_all, 0.99));
    println!(
        "{:<40} {:>10} {:>10}",
        "watch delivery latency", "p50 ms", "p99 ms"
    );
    println!(
        "{:<40} {:>10.2} {:>10.2}",
        "per watcher and change", p50, p99
    );
    println!(
        "{:<40} {:>10.2} {:>10.2}",
        "change reaching all watchers", all50, all99
    );
    println!(
        "{}",
        json!({
            "bench": "watch",
            "watchers": watchers,
            "changes": changes,
            "deliveries": delivered,
            "p50_ms": p50,
            "p99_ms": p99,
            "to_all_p50_ms": all50,
            "to_all_p99_ms": all99,
        })
    );
    Ok(())
}

/// Creates `count` pods in `namespace` from `concurrency` clients; returns
/// each pod's acknowledgement time and the elapsed time.
async fn create_pods(
    api: &skiff_client::Api<Pod>,
    namespace: &str,
    scheduler_name: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(std::collections::HashMap<String, Instant>, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (api, next) = (api.clone(), Arc::clone(&next));
        let (namespace, scheduler_name) = (namespace.to_string(), scheduler_name.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(acked);
                }
                let name = format!("pod-{i}");
                let mut pod = bench_pod(name.clone());
                let meta = pod.metadata.get_or_insert_with(Default::default);
                meta.namespace.clone_from(&namespace);
                if let Some(spec) = pod.spec.as_mut() {
                    spec.scheduler_name.clone_from(&scheduler_name);
                    // Small requests: 10,000 pods fit on 1,000 nodes.
                    spec.containers[0].resources = Some(ResourceRequirements {
                        requests: [("cpu".to_string(), "100m".to_string())]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    });
                }
                api.create(pod).await.context("create")?;
                acked.push((name, Instant::now()));
            }
        }));
    }
    let mut all = std::collections::HashMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

async fn bench_list(pods: usize, rounds: usize) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let dir = tempfile::tempdir()?;
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".into(),
        dir.path().display().to_string(),
    ])?;
    let url = server.url();
    let channel = skiff_client::connect_lazy(&url)?;
    let api = skiff_client::Api::<Pod>::new(channel.clone());
    eprintln!("creating {pods} pods...");
    let started = Instant::now();
    let mut created = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move { api.create(bench_pod(format!("list-{i}"))).await }
        })
        .buffer_unordered(32);
    let mut done = 0;
    while let Some(result) = created.next().await {
        result.context("create")?;
        done += 1;
        if done % 1000 == 0 {
            eprintln!("  {done}/{pods} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    }
    drop(created);
    let pid = server.process.pid();
    let mib = |bytes: Option<u64>| bytes.map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
    let idle = mib(skiff_testkit::rss_bytes(pid));
    // The peak from here on (Linux: 5 resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .context("resetting the server's peak RSS")?;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, http_body_util::Empty<bytes::Bytes>>(http_connector());
    let list_url = format!("{url}/api/v1/namespaces/default/pods");
    let get = async |accept: &str| -> anyhow::Result<(Duration, usize)> {
        let request = http::Request::get(&list_url)
            .header(http::header::ACCEPT, accept)
            .body(http_body_util::Empty::new())?;
        let at = Instant::now();
        let response = client.request(request).await.context("HTTP list")?;
        anyhow::ensure!(
            response.status().is_success(),
            "HTTP list: {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        Ok((at.elapsed(), body.len()))
    };
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (mut json_times, mut table_times, mut grpc_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut json_bytes, mut table_bytes) = (0, 0);
    for _ in 0..rounds.max(1) {
        let (took, bytes) = get("application/json").await?;
        json_times.push(took);
        json_bytes = bytes;
        let (took, bytes) = get("application/json;as=Table;v=v1;g=meta.k8s.io").await?;
        table_times.push(took);
        table_bytes = bytes;
        let at = Instant::now();
        let list = api
            .list(skiff::pb::api::v1::ListRequest {
                namespace: "default".into(),
                ..Default::default()
            })
            .await?;
        grpc_times.push(at.elapsed());
        anyhow::ensure!(
            list.items.len() == pods,
            "gRPC listed {} pods",
            list.items.len()
        );
    }
    let peak = mib(skiff_testkit::peak_rss_bytes(pid));
    drop(server);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (json_ms, table_ms, grpc_ms) = (
        ms(median(json_times)),
        ms(median(table_times)),
        ms(median(grpc_times)),
    );
    println!("{:<48} {:>12}", "measure", "value");
    println!("{:<48} {:>12}", "pods", pods);
    println!("{:<48} {:>12.1}", "HTTP list, JSON: median ms", json_ms);
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, JSON: MiB",
        json_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, Table (kubectl get): median ms", table_ms
    );
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, Table: MiB",
        table_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "{:<48} {:>12.1}",
        "gRPC list (protobuf): median ms", grpc_ms
    );
    println!(
        "{:<48} {:>12.1}",
        "API server RSS before listing (MiB)", idle
    );
    println!(
        "{:<48} {:>12.1}",
        "API server peak RSS while listing (MiB)", peak
    );
    println!(
        "{}",
        json!({
            "bench": "list",
            "pods": pods,
            "http_json_ms": json_ms,
            "http_table_ms": table_ms,
            "grpc_ms": grpc_ms,
            "http_json_bytes": json_bytes,
            "server_rss_mib": idle,
            "server_peak_rss_mib": peak,
        })
    );
    Ok(())
}

async fn bench_schedule(nodes: usize, pods: usize, concurrency: usize) -> anyhow::Result<()> {
    use skiff::pb::core::v1::{Namespace, Node};
    // Each part as its own process, as deployed, so that each one's
    // memory can be read.
    let dir = tempfile::tempdir()?;
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".into(),
        dir.path().display().to_string(),
    ])?;
    let url = server.url();
    let channel = skiff_client::connect_lazy(&url)?;
    let pod_api = skiff_client::Api::<Pod>::new(channel.clone());
    let ns_api = skiff_client::Api::<Namespace>::new(channel.clone());
    for ns in ["bench-raw", "bench"] {
        let mut n = Namespace::default();
        n.metadata.get_or_insert_with(Default::default).name = ns.into();
        ns_api.create(n).await?;
    }

    eprintln!("registering {nodes} hollow nodes...");
    let started = Instant::now();
    let hollow = skiff_testkit::hollow_nodes(&url, nodes)?;
    let node_api = skiff_client::Api::<Node>::new(channel.clone());
    loop {
        let list = node_api.list(Default::default()).await?;
        if list.items.len() >= nodes {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "hollow nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registration = started.elapsed();

    eprintln!("raw API creates ({pods} pods no scheduler takes)...");
    let (_, raw_elapsed) =
        create_pods(&pod_api, "bench-raw", "bench-none", pods, concurrency).await?;
    let raw_rate = pods as f64 / raw_elapsed.as_secs_f64();

    let scheduler = skiff_testkit::SchedulerProcess::start_with(&url, "bench", 15, false)?;
    // Bound pods of the measured namespace, as they are seen.
    let mut bound_watch = pod_api
        .watch(WatchRequest {
            namespace: "bench".into(),
            field_selector: "spec.nodeName!=".into(),
            resource_version: "0".into(),
            ..Default::default()
        })
        .await?;
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let collector = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some(Ok(event)) = bound_watch.next().await {
            if let Some(pod) = event.object {
                let name = pod.metadata.map(|m| m.name).unwrap_or_default();
                if seen.insert(name.clone()) {
                    let _ = bound_tx.send((name, Instant::now()));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("scheduling {pods} pods on {nodes} nodes...");
    let first_create = Instant::now();
    let (acked, create_elapsed) = create_pods(&pod_api, "bench", "", pods, concurrency).await?;
    let mut bound = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while bound.len() < pods {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, bound_rx.recv()).await {
            Ok(Some((name, at))) => {
                bound.insert(name, at);
            }
            _ => anyhow::bail!("only {} of {pods} pods bound within 300 s", bound.len()),
        }
    }
    let last_bound = bound.values().max().copied().unwrap_or(first_create);
    let bind_rate = pods as f64 / last_bound.duration_since(first_create).as_secs_f64();
    let mut latencies: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, at)| acked.get(name).map(|c| at.saturating_duration_since(*c)))
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    collector.abort();
    let mib =
        |pid: u32| skiff_testkit::rss_bytes(pid).map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
    let (server_rss, scheduler_rss, hollow_rss) = (
        mib(server.process.pid()),
        mib(scheduler.process.pid()),
        mib(hollow.pid()),
    );
    drop((scheduler, hollow, server));

    println!("{:<44} {:>12}", "measure", "value");
    println!(
        "{:<44} {:>12.1}",
        "hollow node registration (s)",
        registration.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "raw API pod creates/s (no scheduling)", raw_rate
    );
    println!(
        "{:<44} {:>12.0}",
        "pod creates/s while scheduling",
        pods as f64 / create_elapsed.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "pods bound/s (first create to last bind)", bind_rate
    );
    println!(
        "{:<44} {:>12.2}",
        "bound/s vs raw creates/s",
        bind_rate / raw_rate
    );
    println!("{:<44} {:>12.1}", "create→bound p50 (ms)", p50);
    println!("{:<44} {:>12.1}", "create→bound p99 (ms)", p99);
    println!("{:<44} {:>12.1}", "API server RSS (MiB)", server_rss);
    println!("{:<44} {:>12.1}", "scheduler RSS (MiB)", scheduler_rss);
    println!(
        "{:<44} {:>12.1}",
        "hollow nodes process RSS (MiB)", hollow_rss
    );
    println!(
        "{}",
        json!({
            "bench": "schedule",
            "nodes": nodes,
            "pods": pods,
            "concurrency": concurrency,
            "registration_secs": registration.as_secs_f64(),
            "raw_creates_per_sec": raw_rate,
            "pods_bound_per_sec": bind_rate,
            "ratio_bound_vs_raw_creates": bind_rate / raw_rate,
            "create_to_bound_p50_ms": p50,
            "create_to_bound_p99_ms": p99,
            "apiserver_rss_mib": server_rss,
            "scheduler_rss_mib": scheduler_rss,
            "hollow_nodes_rss_mib": hollow_rss,
        })
    );
    Ok(())
}

async fn bench_scale(nodes: usize, replicas: i32) -> anyhow::Result<()> {
    use skiff::pb::apps::v1::{ReplicaSet, ReplicaSetSpec};
    use skiff::pb::core::v1::{Node, PodTemplateSpec};
    use skiff::pb::meta::v1::LabelSelector;
    let dir = tempfile::tempdir()?;
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".into(),
        dir.path().display().to_string(),
    ])?;
    let url = server.url();
    let channel = skiff_client::connect_lazy(&url)?;
    let hollow = skiff_testkit::hollow_nodes(&url, nodes)?;
    let node_api = skiff_client::Api::<Node>::new(channel.clone());
    let started = Instant::now();
    while node_api.list(Default::default()).await?.items.len() < nodes {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "hollow nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scheduler = skiff_testkit::SchedulerProcess::start_with(&url, "bench", 15, false)?;
    // Hollow nodes run no pod network: no blocks to give them.
    let controllers =
        skiff_testkit::controller_manager_with(&url, &[], &["--allocate-node-cidrs=false"])?;
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "scale".to_string())]
            .into_iter()
            .collect();
    let mut template_pod = bench_pod("template".into());
    if let Some(spec) = template_pod.spec.as_mut() {
        spec.containers[0].resources = None;
    }
    let rs = ReplicaSet {
        metadata: Some(ObjectMeta {
            name: "scale".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: template_pod.spec,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rs_api = skiff_client::Api::<ReplicaSet>::new(channel.clone());
    rs_api.create(rs).await?;
    // Let the controllers' caches sync before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod_api = skiff_client::Api::<Pod>::new(channel.clone());
    let revision = |list: &skiff::pb::core::v1::PodList| {
        list.metadata
            .as_ref()
            .and_then(|m| m.resource_version.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let before = revision(
        &pod_api
            .list(skiff::pb::api::v1::ListRequest {
                limit: 1,
                ..Default::default()
            })
            .await?,
    );
    eprintln!("scaling to {replicas} on {nodes} hollow nodes...");
    let start = Instant::now();
    // The controller writes the status meanwhile: read, change, retry.
    loop {
        let mut rs = rs_api.get("default", "scale").await?;
        if let Some(spec) = rs.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
        rs.status = None;
        match rs_api.update(rs).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => return Err(s.into()),
        }
    }
    let mut running = 0;
    while running < replicas as usize {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "only {running} pods Running after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        running = pod_api
            .list(skiff::pb::api::v1::ListRequest {
                namespace: "default".into(),
                label_selector: "app=scale".into(),
                field_selector: "status.phase=Running".into(),
                ..Default::default()
            })
            .await?
            .items
            .len();
    }
    let elapsed = start.elapsed();
    let after = revision(
        &pod_api
            .list(skiff::pb::api::v1::ListRequest {
                limit: 1,
                ..Default::default()
            })
            .await?,
    );
    let writes = after - before;
    drop((controllers, scheduler, hollow, server));
    println!("{:<44} {:>12}", "measure", "value");
    println!(
        "{:<44} {:>12.2}",
        "seconds until all pods Running",
        elapsed.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "pods Running per second",
        f64::from(replicas) / elapsed.as_secs_f64()
    );
    println!("{:<44} {:>12}", "API writes meanwhile (revisions)", writes);
    println!(
        "{:<44} {:>12.0}",
        "API writes per second",
        writes as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bench": "scale",
            "nodes": nodes,
            "replicas": replicas,
            "seconds_to_running": elapsed.as_secs_f64(),
            "api_writes": writes,
            "api_writes_per_sec": writes as f64 / elapsed.as_secs_f64(),
        })
    );
    Ok(())
}

/// Plain Docker, `n` at once, each timed from its first create call to
/// its last start returning: one container of `image` per unit, or (with
/// `pod_shaped`) what a pod is made of, a pause sandbox plus a container
/// joining its network and IPC namespaces. Everything is removed after.
async fn raw_docker_starts(
    image: &str,
    n: usize,
    pod_shaped: bool,
) -> anyhow::Result<Vec<Duration>> {
    use skiff_runtime::bollard::models::{ContainerCreateBody, HostConfig};
    use skiff_runtime::bollard::query_parameters::{
        CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let docker = skiff_runtime::docker::engine().await?;
    let run = std::process::id();
    let pause = skiff_runtime::docker::pause_image();
    let labels: std::collections::HashMap<String, String> = [
        ("io.skiff.managed".to_string(), "true".to_string()),
        ("io.skiff.bench".to_string(), run.to_string()),
    ]
    .into();
    let starts = (0..n).map(|i| {
        let docker = docker.clone();
        let (image, pause, labels) = (image.to_string(), pause.clone(), labels.clone());
        async move {
            let began = Instant::now();
            let mut ids = Vec::new();
            let mut host_config = None;
            if pod_shaped {
                let body = ContainerCreateBody {
                    image: Some(pause),
                    labels: Some(labels.clone()),
                    host_config: Some(HostConfig {
                        ipc_mode: Some("shareable".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let options = CreateContainerOptionsBuilder::default()
                    .name(&format!("skiff-bench-raw-{run}-{i}-pause"))
                    .build();
                let id = docker.create_container(Some(options), body).await?.id;
                docker.start_container(&id, None).await?;
                let joined = format!("container:{id}");
                host_config = Some(HostConfig {
                    network_mode: Some(joined.clone()),
                    ipc_mode: Some(joined),
                    ..Default::default()
                });
                ids.push(id);
            }
            let body = ContainerCreateBody {
                image: Some(image),
                cmd: Some(vec!["sleep".into(), "3600".into()]),
                labels: Some(labels),
                host_config,
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default()
                .name(&format!("skiff-bench-raw-{run}-{i}"))
                .build();
            let id = docker.create_container(Some(options), body).await?.id;
            docker.start_container(&id, None).await?;
            ids.push(id);
            anyhow::Ok((began.elapsed(), ids))
        }
    });
    let results = futures::future::join_all(starts).await;
    let mut latencies = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok((latency, ids)) => {
                latencies.push(latency);
                for id in ids.iter().rev() {
                    let options = RemoveContainerOptionsBuilder::default().force(true).build();
                    let _ = docker.remove_container(id, Some(options)).await;
                }
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(e.context("plain docker create+start")),
        None => {
            latencies.sort();
            Ok(latencies)
        }
    }
}

async fn bench_podstart(n: usize) -> anyhow::Result<()> {
    use skiff::pb::api::v1::DeleteRequest;
    let image = skiff_testkit::test_image().await?;
    let dir = tempfile::tempdir()?;
    let server = start_server(StoreConfig::Embedded(dir.path().join("podstart.redb"))).await?;
    let url = format!("http://{}", server.addr);
    let node = skiff_testkit::AgentNode::start(&url, "bench-podstart")?;
    let channel = skiff_testkit::channel(server.addr).await?;
    let pods = skiff_client::Api::<Pod>::new(channel.clone());
    let nodes = skiff_client::Api::<skiff::pb::core::v1::Node>::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get("", &node.name).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not register its node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The baselines first, so every side finds the images cached (the
    // agent has built the pause image by now).
    let raw = raw_docker_starts(image, n, false).await?;
    let pairs = raw_docker_starts(image, n, true).await?;

    let list = pods.list(Default::default()).await?;
    let rv = list
        .metadata
        .map(|m| m.resource_version)
        .unwrap_or_default();
    let mut events = pods
        .watch(WatchRequest {
            namespace: "default".into(),
            resource_version: rv,
            ..Default::default()
        })
        .await?;
    let began = Instant::now();
    let mut created = std::collections::HashMap::new();
    let creates = (0..n).map(|i| {
        let pods = pods.clone();
        let node = node.name.clone();
        async move {
            let pod = Pod {
                metadata: Some(ObjectMeta {
                    name: format!("start-{i}"),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_name: node,
                    termination_grace_period_seconds: Some(0),
                    containers: vec![Container {
                        name: "main".into(),
                        image: image.into(),
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let at = Instant::now();
            pods.create(pod).await.map(|_| (format!("start-{i}"), at))
        }
    });
    for result in futures::future::join_all(creates).await {
        let (name, at) = result?;
        created.insert(name, at);
    }
    let mut running: std::collections::HashMap<String, Duration> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while running.len() < n {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("pods not Running within 120 s")?
            .context("the watch ended")??;
        let Some(pod) = event.object else { continue };
        let name = pod
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
        if phase == "Running"
            && let Some(at) = created.get(&name)
        {
            running.entry(name).or_insert_with(|| at.elapsed());
        }
    }
    let total = began.elapsed();
    let mut skiff: Vec<Duration> = running.into_values().collect();
    skiff.sort();
    for i in 0..n {
        let _ = pods
            .delete(DeleteRequest {
                namespace: "default".into(),
                name: format!("start-{i}"),
                ..Default::default()
            })
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.container_ids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (s50, s99) = (percentile(&skiff, 0.5), percentile(&skiff, 0.99));
    let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    let (q50, q99) = (percentile(&pairs, 0.5), percentile(&pairs, 0.99));
    println!("{n} at once on one node, image {image}");
    println!("{:<44} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "docker create+start (raw, same run)", r50, r99
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "docker pause + container (pod-shaped, raw)", q50, q99
    );
    println!(
        "{:<44} {:>10.0} {:>10.0}",
        "skiff pod create -> Running", s50, s99
    );
    println!(
        "{:<44} {:>10.2} {:>10.2}",
        "ratio skiff / raw (target <= 1.5)",
        s50 / r50,
        s99 / r99
    );
    println!(
        "{:<44} {:>10.2} {:>10.2}",
        "ratio skiff / pod-shaped raw",
        s50 / q50,
        s99 / q99
    );
    println!(
        "{:<44} {:>10.2}",
        "seconds until all Running",
        total.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bench": "podstart",
            "pods": n,
            "raw_p50_ms": r50, "raw_p99_ms": r99,
            "skiff_p50_ms": s50, "skiff_p99_ms": s99,
            "ratio_p50": s50 / r50, "ratio_p99": s99 / r99,
            "pod_shaped_p50_ms": q50, "pod_shaped_p99_ms": q99,
            "ratio_pod_shaped_p50": s50 / q50, "ratio_pod_shaped_p99": s99 / q99,
        })
    );
    drop(node);
    Ok(())
}

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

async fn bench_proxy(seconds: f64, concurrency: usize) -> anyhow::Result<()> {
    let image = skiff_testkit::test_image().await?;
    let dir = tempfile::tempdir()?;
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse()?,
        StoreConfig::Embedded(dir.path().join("proxy.redb")),
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
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "httpd", "image": image,
            "command": ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
        }]}
    }))?;
    pods.create(pod).await?;
    let service: skiff::pb::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": "http"}]}
    }))?;
    let service = services.create(service).await?;
    let spec = service.spec.unwrap_or_default();
    let cluster: std::net::SocketAddr = format!("{}:80", spec.cluster_ip).parse()?;
    let node_port: std::net::SocketAddr =
        format!("127.0.0.1:{}", spec.ports[0].node_port).parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let direct: std::net::SocketAddr = loop {
        let ip = pods
            .get("default", "web")
            .await?
            .status
            .map(|s| s.pod_ip)
            .unwrap_or_default();
        if !ip.is_empty() && http_get(cluster).await.is_ok() {
            break format!("{ip}:8080").parse()?;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the service did not answer within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    let combine = |figures: &[Figures]| {
        let n = figures.len() as f64;
        Figures {
            ops: figures.iter().map(|f| f.ops).sum(),
            per_sec: figures.iter().map(|f| f.per_sec).sum::<f64>() / n,
            p50_ms: figures.iter().map(|f| f.p50_ms).sum::<f64>() / n,
            p99_ms: figures.iter().map(|f| f.p99_ms).sum::<f64>() / n,
        }
    };
    let [d, c, p] = [combine(&runs[0]), combine(&runs[1]), combine(&runs[2])];
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
        ("NodePort on 127.0.0.1 (DNAT+SNAT)", p),
    ] {
        println!(
            "{label:<40} {:>10.0} {:>10.2} {:>10.2}",
            f.per_sec, f.p50_ms, f.p99_ms
        );
    }
    println!(
        "{:<40} {:>10.2} {:>10.2} {:>10.2}",
        "ratio ClusterIP / direct (target >= 0.9)",
        c.per_sec / d.per_sec,
        c.p50_ms / d.p50_ms,
        c.p99_ms / d.p99_ms
    );
    println!(
        "{}",
        json!({
            "bench": "proxy", "concurrency": concurrency,
            "direct_per_sec": d.per_sec, "direct_p99_ms": d.p99_ms,
            "cluster_ip_per_sec": c.per_sec, "cluster_ip_p99_ms": c.p99_ms,
            "node_port_per_sec": p.per_sec, "node_port_p99_ms": p.p99_ms,
            "ratio_per_sec": c.per_sec / d.per_sec, "ratio_p99": c.p99_ms / d.p99_ms,
        })
    );
    drop(node);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Api {
            seconds,
            concurrency,
            no_etcd_api,
            http,
        } => bench_api(seconds, concurrency, !no_etcd_api, http).await,
        Command::Watch { watchers, changes } => bench_watch(watchers, changes).await,
        Command::Schedule {
            nodes,
            pods,
            concurrency,
        } => bench_schedule(nodes, pods, concurrency).await,
        Command::Scale { nodes, replicas } => bench_scale(nodes, replicas).await,
        Command::List { pods, rounds } => bench_list(pods, rounds).await,
        Command::Podstart { pods } => bench_podstart(pods).await,
        Command::Proxy {
            seconds,
            concurrency,
        } => bench_proxy(seconds, concurrency).await,
        Command::Netperf {
            seconds,
            connections,
        } => netperf::bench_netperf(seconds, connections).await,
    }
}
