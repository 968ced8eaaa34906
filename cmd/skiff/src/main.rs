//! The `skiff` command.
//!
//! `skiff server` runs the API server; `skiff up` runs an all-in-one
//! cluster in the foreground. Parsing flags and wiring only: the work is in
//! the library crates.
//!
//! # Layout
//!
//! One file per command group, each its flags and its `run`: [`server`]
//! (and the API server's flags `up` shares), [`up`], [`agent`],
//! [`scheduler`], [`controllers`] (the controller manager), [`hollow`]
//! (hollow nodes), [`client`] (the kubectl-like commands); [`common`] for
//! what several share (finding the server, metrics, signals) and
//! [`security`] for the cluster CA and the components' client configs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod agent;
mod bootstrap;
mod client;
mod common;
mod controllers;
mod etcd;
mod hollow;
mod https;
mod ingress;
mod publish;
mod scheduler;
mod security;
mod server;
mod up;

/// mimalloc: the API path allocates many short-lived buffers, and glibc's
/// malloc spent a sixth of the CPU on them in `skiff-bench api`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff: a small, fast Kubernetes")]
struct Cli {
    /// How logs are written to stderr: text (for people) or json (one
    /// object per line, for log collectors). The level comes from
    /// RUST_LOG (default info).
    #[arg(long, global = true, env = "SKIFF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Export traces by OTLP/gRPC to this collector (`http://HOST:4317`).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server in the foreground.
    Server(server::ServerArgs),
    /// Run an all-in-one cluster in the foreground (embedded store).
    Up(up::UpArgs),
    /// Run the scheduler in the foreground.
    Scheduler(scheduler::SchedulerArgs),
    /// Run simulated (hollow) nodes in one process, for scale tests.
    HollowNodes(hollow::HollowArgs),
    /// Run the node agent: the pods bound to this node, on Docker.
    Agent(agent::AgentArgs),
    /// Run the controller manager in the foreground.
    ControllerManager(controllers::ControllerArgs),
    /// Run the ingress controller in the foreground: HTTP and HTTPS
    /// routed by Ingresses to Services.
    Ingress(ingress::IngressArgs),
    /// The process runtime's per-container shim (started by the agent).
    #[command(hide = true)]
    Shim {
        /// The container's directory.
        dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

impl Command {
    /// The command's name for a client command (its one trace's root
    /// span); None for the long-running components, whose spans are
    /// their own roots.
    fn client_name(&self) -> Option<&'static str> {
        match self {
            Self::Client(command) => command.name(),
            _ => None,
        }
    }

    /// OpenTelemetry's service.name of this process.
    fn service_name(&self) -> &'static str {
        match self {
            Self::Server(_) => "skiff-apiserver",
            Self::Up(_) => "skiff-up",
            Self::Scheduler(_) => "skiff-scheduler",
            Self::ControllerManager(_) => "skiff-controller-manager",
            Self::Ingress(_) => "skiff-ingress",
            Self::Agent(_) | Self::HollowNodes(_) | Self::Shim { .. } => "skiff-agent",
            Self::Client(_) => "skiff",
        }
    }
}

#[tokio::main]
async fn main() {
    use tracing::Instrument as _;
    common::raise_open_file_limit();
    let cli = Cli::parse();
    let telemetry = match skiff_telemetry::init(
        cli.command.service_name(),
        &cli.log_format,
        cli.otlp_endpoint.as_deref(),
    ) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    // A client command is one trace: its calls carry this span's context.
    let span = match cli.command.client_name() {
        Some(name) => tracing::info_span!(
            "skiff",
            otel.name = %format!("skiff {name}"),
            otel.kind = "client",
        ),
        None => tracing::Span::none(),
    };
    let result = run(cli).instrument(span).await;
    telemetry.shutdown();
    // Errors print as kubectl's do (one message, no "Error:" debug dump)
    // and exit non-zero.
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the command; its exit code.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Server(args) => server::run(args).await?,
        Command::Up(args) => up::run(args).await?,
        Command::Scheduler(args) => scheduler::run(args).await?,
        Command::HollowNodes(args) => hollow::run(args).await?,
        Command::Agent(args) => agent::run(args).await?,
        Command::ControllerManager(args) => controllers::run(args).await?,
        Command::Ingress(args) => ingress::run(args).await?,
        Command::Shim { dir, argv } => {
            return skiff_runtime::process::shim(&dir, &argv).context("running the shim");
        }
        Command::Client(command) => return client::run(command).await,
    }
    Ok(0)
}
