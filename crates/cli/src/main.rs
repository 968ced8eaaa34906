//! The `skiff` command.
//!
//! `skiff server` runs the API server; `skiff up` runs an all-in-one
//! cluster in the foreground. Parsing flags and wiring only: the work is in
//! the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc: the API path allocates many short-lived buffers, and glibc's
/// malloc spent a sixth of the CPU on them in `skiff-bench api`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff: a small, fast Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server in the foreground.
    Server(ServerArgs),
    /// Run an all-in-one cluster in the foreground (embedded store).
    Up(UpArgs),
    /// Run the scheduler in the foreground.
    Scheduler(SchedulerArgs),
    /// Run simulated (hollow) nodes in one process, for scale tests.
    HollowNodes(HollowArgs),
    /// Run the controller manager in the foreground.
    ControllerManager(ControllerArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// The API server.
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    server: String,
    /// Reconcile workers per controller.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Take part in leader election (so several managers can run).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Seconds a node may go without renewing its lease before it is
    /// marked NotReady.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period_secs: u64,
    /// Seconds a NotReady node keeps its pods before they are evicted.
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout_secs: u64,
}

#[derive(clap::Args)]
struct HollowArgs {
    /// The API server.
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    server: String,
    /// How many nodes.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Node names are this plus an index.
    #[arg(long, default_value = "hollow-node-")]
    prefix: String,
    /// Each node's CPU capacity.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Each node's memory capacity.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// Seconds between each node's lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_renew_secs: u64,
}

#[derive(clap::Args)]
struct SchedulerArgs {
    /// The API server.
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    server: String,
    /// A JSON profile: {"filters": [...], "scores": [{"name": ..., "weight": ...}]}.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = skiff_scheduler::DEFAULT_SCHEDULER)]
    scheduler_name: String,
    /// Take part in leader election (so several schedulers can run).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// This scheduler's identity in the election (default: host name and
    /// a random suffix).
    #[arg(long)]
    identity: Option<String>,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for the embedded store (ignored with --etcd).
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// etcd endpoints (comma-separated); the state goes there instead of
    /// the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// API actor threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    actors: usize,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Directory for the cluster's state.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
}

fn server_config(args: &ServerArgs) -> skiff_apiserver::Config {
    let store = if args.etcd.is_empty() {
        skiff_apiserver::StoreConfig::Embedded(args.data_dir.join("state.redb"))
    } else {
        skiff_apiserver::StoreConfig::Etcd(args.etcd.clone())
    };
    let mut config = skiff_apiserver::Config::new(args.listen, store);
    config.actors = args.actors;
    config
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Server(args) => {
            let config = server_config(&args);
            skiff_apiserver::run(config, shutdown_signal())
                .await
                .context("running the API server")?;
        }
        Command::Scheduler(args) => {
            let mut config = skiff_scheduler::Config::new(&args.server);
            config.scheduler_name = args.scheduler_name;
            config.leader_elect = args.leader_elect;
            if let Some(identity) = args.identity {
                config.identity = identity;
            }
            config.lease_duration = std::time::Duration::from_secs(args.lease_duration_secs.max(1));
            if let Some(path) = &args.profile {
                config.profile =
                    skiff_scheduler::Profile::load(path).context("loading the profile")?;
            }
            skiff_scheduler::run_supervised(config, shutdown_signal())
                .await
                .context("running the scheduler")?;
        }
        Command::ControllerManager(args) => {
            let mut config = skiff_controllers::Config::new(&args.server);
            config.workers = args.workers;
            config.leader_elect = args.leader_elect;
            config.lease_duration = std::time::Duration::from_secs(args.lease_duration_secs.max(1));
            config.node_timing = skiff_controllers::nodelifecycle::Timing {
                grace: std::time::Duration::from_secs(args.node_monitor_grace_period_secs),
                eviction: std::time::Duration::from_secs(args.pod_eviction_timeout_secs),
            };
            skiff_controllers::run(config, shutdown_signal())
                .await
                .context("running the controller manager")?;
        }
        Command::HollowNodes(args) => {
            let mut config = skiff_agent::hollow::Config::new(&args.server, args.count);
            config.prefix = args.prefix;
            config.cpu = args.cpu;
            config.memory = args.memory;
            config.lease_renew = std::time::Duration::from_secs(args.lease_renew_secs.max(1));
            skiff_agent::hollow::run(config, shutdown_signal())
                .await
                .context("running hollow nodes")?;
        }
        Command::Up(args) => {
            let data_dir = match args.data_dir {
                Some(dir) => dir,
                None => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join(".skiff")
                    .join("data"),
            };
            let store = skiff_apiserver::StoreConfig::Embedded(data_dir.join("state.redb"));
            let config = skiff_apiserver::Config::new(args.listen, store);
            let server = skiff_apiserver::ApiServer::start(config)
                .await
                .context("starting the API server")?;
            let scheduler_config = skiff_scheduler::Config::new(&format!("http://{}", server.addr));
            let (stop_controllers, controllers_stopped) = tokio::sync::oneshot::channel::<()>();
            let controllers_config =
                skiff_controllers::Config::new(&format!("http://{}", server.addr));
            let controllers = tokio::spawn(async move {
                let stopped = async {
                    let _ = controllers_stopped.await;
                };
                if let Err(e) = skiff_controllers::run(controllers_config, stopped).await {
                    tracing::error!(error = %e, "controller manager stopped");
                }
            });
            let (stop_scheduler, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
            let scheduler = tokio::spawn(async move {
                let stopped = async {
                    let _ = scheduler_stopped.await;
                };
                if let Err(e) = skiff_scheduler::run_supervised(scheduler_config, stopped).await {
                    tracing::error!(error = %e, "scheduler stopped");
                }
            });
            println!("Skiff is up.");
            println!(
                "  API server:  {} (gRPC; reflection and health on)",
                server.addr
            );
            println!("  scheduler:   running (binds pending pods to Ready nodes)");
            println!("  controllers: replicasets, replicationcontrollers, serviceaccounts");
            println!("  state:       {}", data_dir.display());
            println!("Try:");
            println!("  grpcurl -plaintext {} list", server.addr);
            println!(
                "  grpcurl -plaintext -d '{{\"metadata\":{{\"name\":\"web\"}},\"spec\":{{\"containers\":[{{\"name\":\"web\",\"image\":\"busybox\"}}]}}}}' {} skiff.core.v1.Pods/Create",
                server.addr
            );
            println!("Press Ctrl-C to stop.");
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_scheduler.send(());
            let _ = stop_controllers.send(());
            let _ = scheduler.await;
            let _ = controllers.await;
            server.stop().await.context("stopping the API server")?;
        }
    }
    Ok(())
}
