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
            println!("Skiff is up.");
            println!(
                "  API server:  {} (gRPC; reflection and health on)",
                server.addr
            );
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
            server.stop().await.context("stopping the API server")?;
        }
    }
    Ok(())
}
