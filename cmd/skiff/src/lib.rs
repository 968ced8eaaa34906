//! The `skiff` command, and `skiff-agent`: the node agent alone.
//!
//! `skiff server` runs the API server; `skiff up` runs an all-in-one
//! cluster in the foreground. Parsing flags and wiring only: the work is in
//! the library crates. `skiff-agent` takes `skiff agent`'s flags and runs
//! the same agent; its binary holds the agent's code alone, so less of it
//! is paged in on a node (idle and joined: ~16 MiB resident, against ~24
//! MiB as `skiff agent`; `skiff-bench idle`).
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

/// How a process writes its logs and where it sends its traces: the
/// flags every command takes.
#[derive(clap::Args)]
struct Output {
    /// How logs are written to stderr: text (for people) or json (one
    /// object per line, for log collectors). The level comes from
    /// RUST_LOG (default info).
    #[arg(long, global = true, env = "SKIFF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Export traces by OTLP/gRPC to this collector (`http://HOST:4317`).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff: a small, fast Kubernetes")]
struct Cli {
    #[command(flatten)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// The process runtime's per-container shim: the agent starts its own
/// binary with `shim DIR -- ARGV` for each container.
#[derive(Parser)]
#[command(name = "shim")]
struct Shim {
    /// The container's directory.
    dir: PathBuf,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// Runs `… shim DIR -- ARGV` when that is the command, before anything
/// reads flags from the environment or starts logging: the shim's
/// environment is its container's, and a pod's `SKIFF_LOG_FORMAT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is not the shim's to follow. Its exit
/// code; None for every other command.
fn shim() -> Option<i32> {
    if std::env::args_os().nth(1).is_none_or(|arg| arg != "shim") {
        return None;
    }
    // "shim" stands for the program's name: DIR -- ARGV follow.
    let shim = Shim::parse_from(std::env::args_os().skip(1));
    let ran = skiff_runtime::process::shim(&shim.dir, &shim.argv).context("running the shim");
    Some(ran.unwrap_or_else(|e| {
        eprintln!("{e:#}");
        1
    }))
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
    /// Run the node agent: the pods bound to this node, on Docker
    /// (`skiff-agent` is the same agent in a smaller binary).
    Agent(agent::AgentArgs),
    /// Run the controller manager in the foreground.
    ControllerManager(controllers::ControllerArgs),
    /// Run the ingress controller in the foreground: HTTP and HTTPS
    /// routed by Ingresses to Services.
    Ingress(ingress::IngressArgs),
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
            Self::Agent(_) | Self::HollowNodes(_) => "skiff-agent",
            Self::Client(_) => "skiff",
        }
    }
}

/// What both binaries do first: raise the open-file limit and, when the
/// command is the shim, run it and exit.
fn prelude() {
    common::raise_open_file_limit();
    if let Some(code) = shim() {
        std::process::exit(code);
    }
}

/// `skiff`: runs the command its arguments name and exits with its code.
pub fn skiff() {
    prelude();
    skiff_command();
}

#[tokio::main]
async fn skiff_command() {
    let cli = Cli::parse();
    let (service, client) = (cli.command.service_name(), cli.command.client_name());
    let exit = finish(service, &cli.output, client, run(cli.command)).await;
    std::process::exit(exit)
}

/// `skiff-agent`'s command line: `skiff agent`'s flags.
#[derive(Parser)]
#[command(
    name = "skiff-agent",
    version,
    about = "Skiff's node agent: the pods bound to this node, on Docker (as `skiff agent`, in a smaller binary)"
)]
struct AgentCli {
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    agent: agent::AgentArgs,
}

/// `skiff-agent`: runs the node agent (or a container's shim) and exits
/// with its code.
pub fn skiff_agent() {
    prelude();
    skiff_agent_command();
}

#[tokio::main]
async fn skiff_agent_command() {
    let cli = AgentCli::parse();
    let agent = cli.agent;
    let exit = finish("skiff-agent", &cli.output, None, async move {
        agent::run(agent).await.map(|()| 0)
    })
    .await;
    std::process::exit(exit)
}

/// Starts logging and tracing as `output` says, runs `work` (a client
/// command as one trace named `client`), and returns the exit code:
/// errors print as kubectl's do (one message, no "Error:" debug dump) and
/// exit 1.
async fn finish(
    service: &'static str,
    output: &Output,
    client: Option<&'static str>,
    work: impl Future<Output = anyhow::Result<i32>>,
) -> i32 {
    use tracing::Instrument as _;
    let telemetry =
        match skiff_telemetry::init(service, &output.log_format, output.otlp_endpoint.as_deref()) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
    // A client command is one trace: its calls carry this span's context.
    let span = match client {
        Some(name) => tracing::info_span!(
            "skiff",
            otel.name = %format!("skiff {name}"),
            otel.kind = "client",
        ),
        None => tracing::Span::none(),
    };
    let result = work.instrument(span).await;
    telemetry.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// Runs the command; its exit code.
async fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Server(args) => server::run(args).await?,
        Command::Up(args) => up::run(args).await?,
        Command::Scheduler(args) => scheduler::run(args).await?,
        Command::HollowNodes(args) => hollow::run(args).await?,
        Command::Agent(args) => agent::run(args).await?,
        Command::ControllerManager(args) => controllers::run(args).await?,
        Command::Ingress(args) => ingress::run(args).await?,
        Command::Client(command) => return client::run(command).await,
    }
    Ok(0)
}
