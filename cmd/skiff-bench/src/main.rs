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
//!   image, N at once, in the same run; and the ratio. The node's pods
//!   are on its Docker network, or (`--pod-network cni`) plumbed by CNI
//!   on a simulated host, created there by one `skiff apply`.
//!
//! - `store`, `list`, `proxy`, `netperf`, `idle`: see their modules.
//!
//! One module per bench; this file holds the command line and the helpers
//! they share (figures, the load driver, the pod they create).
//!
//! Each prints a table and, as its last line, one JSON object of figures.
//! Runs are bounded in time and count and stop by themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
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

mod api;
mod idle;
mod ingress;
mod list;
mod netperf;
mod podstart;
mod proxy;
mod scale;
mod schedule;
mod soak;
mod store;
mod watch;

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
        /// The agent's pod network: docker (its Docker network, the
        /// default), or cni (a `--pod-network cni` node on a host the
        /// bench simulates with a network namespace; needs root).
        #[arg(long, default_value = "docker", value_parser = ["docker", "cni"])]
        pod_network: String,
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
    /// HTTP requests through the ingress controller vs straight to the
    /// backend, same run.
    Ingress {
        /// Seconds per measurement (each path is measured twice,
        /// interleaved).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
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
        /// Also create on an embedded store kept in a redb file (as
        /// stores made before the journal are), beside the journal.
        #[arg(long)]
        redb: bool,
    },
    /// The embedded store alone: creates/s on the journal and on a redb
    /// file vs raw etcd puts, and the journal's recovery time for N MiB of
    /// history.
    Store {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrency levels.
        #[arg(long, value_delimiter = ',', default_value = "16,128")]
        concurrency: Vec<usize>,
        /// MiB of history to recover.
        #[arg(long, default_value_t = 1024)]
        history_mib: u64,
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
        /// How often each hollow node renews its lease (a kubelet: 10 s).
        #[arg(long, default_value_t = skiff_testkit::KUBELET_LEASE_RENEW_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        lease_renew_secs: u64,
        /// Leave the raw-create phase's pods in place while scheduling
        /// (the scheduler then also holds them).
        #[arg(long)]
        keep_raw_pods: bool,
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
    /// The footprint at rest: resident memory of an idle `skiff up` and
    /// of idle agents joined to it (`skiff agent` and `skiff-agent`).
    Idle {
        /// Seconds left idle before sampling.
        #[arg(long, default_value_t = 20)]
        settle: u64,
        /// Samples, a second apart.
        #[arg(long, default_value_t = 10)]
        samples: usize,
    },
    /// Churn for N minutes (namespaces with a Deployment, Service and
    /// ConfigMap on hollow nodes, scaled, rolled and deleted) and print
    /// each component's RSS, fds and threads, the store's size and cycle
    /// times over time, with their slopes.
    Soak {
        /// How long to churn.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Hollow nodes.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Churn loops running at once.
        #[arg(long, default_value_t = 2)]
        loops: usize,
        /// Replicas of each cycle's Deployment (then half of them).
        #[arg(long, default_value_t = 20)]
        replicas: i32,
        /// Seconds between samples.
        #[arg(long, default_value_t = 30)]
        sample_secs: u64,
    },
    /// Watch fan-out: delivery latency of changes to many watchers.
    Watch {
        /// Number of watchers.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Number of changes to time.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        /// Watch over the Kubernetes HTTP API (JSON lines over HTTP/2, as
        /// client-go) instead of gRPC.
        #[arg(long)]
        http: bool,
        /// Bytes of padding in the watched object, so its events are the
        /// size of real objects' (a Pod's are 1-3 KB; HTTP/2 sends a data
        /// frame of 256 bytes or more by itself, not copied into a batch).
        #[arg(long, default_value_t = 0)]
        object_bytes: usize,
        /// Milliseconds from one change's answer to the next change. Raise
        /// it for many large watchers: at 20, 10,000 watchers of a
        /// Pod-sized object are more than two cores can feed, and the
        /// latency measures the queue, not the fan-out.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
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

impl Figures {
    /// The mean of several runs of one measurement (their ops summed).
    fn mean(runs: &[Figures]) -> Figures {
        #[allow(clippy::cast_precision_loss)]
        let n = runs.len().max(1) as f64;
        Figures {
            ops: runs.iter().map(|f| f.ops).sum(),
            per_sec: runs.iter().map(|f| f.per_sec).sum::<f64>() / n,
            p50_ms: runs.iter().map(|f| f.p50_ms).sum::<f64>() / n,
            p99_ms: runs.iter().map(|f| f.p99_ms).sum::<f64>() / n,
        }
    }
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
/// `skiff server` (its state in `dir`, with `server_args`), `nodes`
/// hollow nodes registered, the scheduler and the controller manager, all
/// as processes; dropped in that order, the controllers first.
struct HollowCluster {
    controllers: skiff_testkit::ChildGuard,
    scheduler: skiff_testkit::SchedulerProcess,
    hollow: skiff_testkit::ChildGuard,
    server: skiff_testkit::ServerProcess,
    channel: Channel,
}

impl HollowCluster {
    async fn start(
        dir: &std::path::Path,
        server_args: &[String],
        nodes: usize,
    ) -> anyhow::Result<Self> {
        let mut args = vec!["--data-dir".to_string(), dir.display().to_string()];
        args.extend_from_slice(server_args);
        let server = skiff_testkit::ServerProcess::start(&args)?;
        let url = server.url();
        let channel = skiff_client::connect_lazy(&url)?;
        let hollow = skiff_testkit::hollow_nodes_renewing(
            &url,
            nodes,
            "hollow-node-",
            skiff_testkit::KUBELET_LEASE_RENEW_SECS,
        )?;
        let node_api = skiff_client::Api::<skiff::pb::core::v1::Node>::new(channel.clone());
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
        Ok(Self {
            controllers,
            scheduler,
            hollow,
            server,
            channel,
        })
    }
}

/// A selector for `labels` and a template of pods carrying them: the
/// bench pod without resources (hollow nodes account for nothing).
fn bench_template(
    labels: std::collections::BTreeMap<String, String>,
) -> (
    skiff::pb::meta::v1::LabelSelector,
    skiff::pb::core::v1::PodTemplateSpec,
) {
    let mut pod = bench_pod("template".into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].resources = None;
    }
    let selector = skiff::pb::meta::v1::LabelSelector {
        match_labels: labels.clone(),
        ..Default::default()
    };
    let template = skiff::pb::core::v1::PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels,
            ..Default::default()
        }),
        spec: pod.spec,
    };
    (selector, template)
}

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Api {
            seconds,
            concurrency,
            no_etcd_api,
            http,
            redb,
        } => api::bench_api(seconds, concurrency, !no_etcd_api, http, redb).await,
        Command::Store {
            seconds,
            concurrency,
            history_mib,
        } => store::bench_store(seconds, concurrency, history_mib).await,
        Command::Soak {
            minutes,
            nodes,
            loops,
            replicas,
            sample_secs,
        } => {
            soak::bench_soak(soak::Soak {
                minutes,
                nodes,
                loops,
                replicas,
                sample_secs,
            })
            .await
        }
        Command::Watch {
            watchers,
            changes,
            http,
            object_bytes,
            interval_ms,
        } => {
            let interval = Duration::from_millis(interval_ms);
            watch::bench_watch(watchers, changes, http, object_bytes, interval).await
        }
        Command::Idle { settle, samples } => idle::bench_idle(settle, samples).await,
        Command::Schedule {
            nodes,
            pods,
            concurrency,
            lease_renew_secs,
            keep_raw_pods,
        } => {
            let harness = schedule::Harness {
                lease_renew_secs,
                keep_raw_pods,
            };
            schedule::bench_schedule(nodes, pods, concurrency, harness).await
        }
        Command::Scale { nodes, replicas } => scale::bench_scale(nodes, replicas).await,
        Command::List { pods, rounds } => list::bench_list(pods, rounds).await,
        Command::Podstart { pods, pod_network } => {
            podstart::bench_podstart(pods, &pod_network).await
        }
        Command::Proxy {
            seconds,
            concurrency,
        } => proxy::bench_proxy(seconds, concurrency).await,
        Command::Ingress {
            seconds,
            concurrency,
        } => ingress::bench_ingress(seconds, concurrency).await,
        Command::Netperf {
            seconds,
            connections,
        } => netperf::bench_netperf(seconds, connections).await,
    }
}
