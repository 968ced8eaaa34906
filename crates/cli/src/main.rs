//! The `skiff` command.
//!
//! `skiff server` runs the API server; `skiff up` runs an all-in-one
//! cluster in the foreground. Parsing flags and wiring only: the work is in
//! the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod security;

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

impl Command {
    /// The command's name for a client command (its one trace's root
    /// span); None for the long-running components, whose spans are
    /// their own roots.
    fn client_name(&self) -> Option<&'static str> {
        Some(match self {
            Self::Apply(_) => "apply",
            Self::Create(_) => "create",
            Self::Get(_) => "get",
            Self::Describe(_) => "describe",
            Self::Delete(_) => "delete",
            Self::Scale(_) => "scale",
            Self::Rollout(_) => "rollout",
            Self::Logs(_) => "logs",
            Self::Exec(_) => "exec",
            Self::Top(_) => "top",
            Self::Label(_) => "label",
            Self::Annotate(_) => "annotate",
            Self::ClusterInfo(_) => "cluster-info",
            Self::Token(_) => "token",
            Self::Auth(_) => "auth",
            Self::Version(_) | Self::ApiResources => return None,
            Self::Server(_)
            | Self::Up(_)
            | Self::Scheduler(_)
            | Self::HollowNodes(_)
            | Self::Agent(_)
            | Self::ControllerManager(_)
            | Self::Shim { .. } => return None,
        })
    }

    /// OpenTelemetry's service.name of this process.
    fn service_name(&self) -> &'static str {
        match self {
            Self::Server(_) => "skiff-apiserver",
            Self::Up(_) => "skiff-up",
            Self::Scheduler(_) => "skiff-scheduler",
            Self::ControllerManager(_) => "skiff-controller-manager",
            Self::Agent(_) | Self::HollowNodes(_) | Self::Shim { .. } => "skiff-agent",
            _ => "skiff",
        }
    }
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
    /// Run the node agent: the pods bound to this node, on Docker.
    Agent(AgentArgs),
    /// Create or update objects from manifests (YAML or JSON; files,
    /// directories, `-` for stdin).
    Apply(ApplyArgs),
    /// Create objects from manifests (existing ones are an error).
    Create(ApplyArgs),
    /// List objects as a table (or -o yaml|json|name|wide).
    Get(GetArgs),
    /// Show an object's fields, conditions and Events.
    Describe(TargetArgs),
    /// Delete objects by name or by manifest.
    Delete(DeleteArgs),
    /// Set the replicas of a Deployment, ReplicaSet or ReplicationController.
    Scale(ScaleArgs),
    /// Watch, list, undo, pause or resume a Deployment's rollouts.
    Rollout(RolloutArgs),
    /// Print a container's log.
    Logs(LogsArgs),
    /// Run a command in a container (`skiff exec POD -- CMD ARGS`).
    Exec(ExecArgs),
    /// Show the CPU and memory use of nodes or pods (sampled by the
    /// agents every few seconds).
    Top(TopArgs),
    /// Add, change (--overwrite) or remove (`key-`) labels.
    Label(MetadataArgs),
    /// Add, change (--overwrite) or remove (`key-`) annotations.
    Annotate(MetadataArgs),
    /// The kinds the server serves.
    ApiResources,
    /// Where the cluster is and whether it answers.
    ClusterInfo(ClientArgs),
    /// The client's version (and the server's address).
    Version(ClientArgs),
    /// The process runtime's per-container shim (started by the agent).
    #[command(hide = true)]
    Shim {
        /// The container's directory.
        dir: PathBuf,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Run the controller manager in the foreground.
    ControllerManager(ControllerArgs),
    /// Bootstrap tokens for joining nodes (`create`, `list`, `delete`).
    Token(TokenArgs),
    /// Who the server takes you for (`whoami`), and what you may do
    /// (`can-i VERB RESOURCE [NAME]`).
    Auth(AuthArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Make a bootstrap token; prints it, the CA hash and the join command.
    Create {
        /// How long it works (`1h`, `30m`, `24h`; `0` never expires).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What it is for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// The bootstrap tokens and when they expire.
    List,
    /// Delete bootstrap tokens (by id or whole token): they stop working
    /// at once.
    Delete {
        /// Token ids (`abcdef`) or tokens (`abcdef.0123456789abcdef`).
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

#[derive(clap::Args)]
struct AuthArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    action: AuthAction,
}

#[derive(Subcommand)]
enum AuthAction {
    /// Your user name and groups, as the server sees them.
    Whoami,
    /// Whether you may VERB RESOURCE (`pods`, `pods/log`,
    /// `deployments.apps`) [NAME]; prints yes or no (exit code 0 or 1).
    CanI {
        /// get, list, watch, create, update, delete, ...
        verb: String,
        /// `pods`, `pods/log`, `deployments.apps`, `nodes` ...
        resource: String,
        /// One object.
        name: Option<String>,
    },
}

/// Where a component finds the API server and its credentials: a client
/// config (as `skiff server` writes one per component in its data dir,
/// or `skiff up` in ~/.skiff/config), or just an address.
#[derive(clap::Args, Clone)]
struct ConnectArgs {
    /// The API server (default: the config's; `http://` for a server
    /// started --insecure).
    #[arg(long)]
    server: Option<String>,
    /// A client config with the cluster CA and this component's
    /// certificate (default: $SKIFF_CONFIG or ~/.skiff/config).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConnectArgs {
    fn resolve(&self) -> anyhow::Result<(String, Option<skiff_client::ClientTls>)> {
        let (server, tls, _) = connection(self.server.as_deref(), self.config.as_deref())?;
        Ok((server, tls))
    }
}

/// The server address and TLS settings from `--server` and a client
/// config (`--config`, else $SKIFF_CONFIG or ~/.skiff/config): `https://`
/// uses the config's CA and certificate, `http://` none.
fn connection(
    server: Option<&str>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<(
    String,
    Option<skiff_client::ClientTls>,
    skiff_ctl::config::ClientConfig,
)> {
    let path = config.map_or_else(skiff_ctl::config::path, std::path::Path::to_path_buf);
    let loaded = skiff_ctl::config::load_from(&path)
        .map_err(|e| anyhow::anyhow!("error: reading the client config: {e}"))?;
    let server = server.map_or_else(|| loaded.server.clone(), str::to_string);
    let server = if server.contains("://") {
        server
    } else if loaded.certificate_authority.is_empty() {
        format!("http://{server}")
    } else {
        format!("https://{server}")
    };
    if !server.starts_with("https://") {
        return Ok((server, None, loaded));
    }
    if loaded.certificate_authority.is_empty() {
        anyhow::bail!(
            "error: {server} speaks TLS, but {} holds no certificateAuthority: use the config `skiff up` wrote (~/.skiff/config) or the admin.config `skiff server` wrote in its data dir (--config, or $SKIFF_CONFIG); http:// is only for a server started --insecure",
            path.display()
        );
    }
    let tls = loaded
        .tls()
        .map_err(|e| anyhow::anyhow!("error: {}: {e}", path.display()))?;
    Ok((server, tls, loaded))
}

#[derive(clap::Args)]
struct ControllerArgs {
    #[command(flatten)]
    connect: ConnectArgs,
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
    /// Seconds between each HorizontalPodAutoscaler's looks at its
    /// metrics.
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period_secs: u64,
    /// Where LoadBalancer Services' addresses come from: a CIDR or a
    /// range FIRST-LAST ("" leaves them pending). The default is on
    /// loopback: the addresses answer on this machine only.
    #[arg(long, default_value = skiff_controllers::DEFAULT_LB_POOL)]
    lb_pool: String,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(clap::Args)]
struct HollowArgs {
    #[command(flatten)]
    connect: ConnectArgs,
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
    #[command(flatten)]
    connect: ConnectArgs,
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
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// Where the cluster is: flags, else `~/.skiff/config`, else 127.0.0.1:6443.
#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// The API server (default: from ~/.skiff/config or $SKIFF_CONFIG).
    #[arg(long, env = "SKIFF_SERVER", global = true)]
    server: Option<String>,
    /// The namespace (default: the config's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The client config: the server, the cluster CA and your certificate
    /// (default: $SKIFF_CONFIG, else ~/.skiff/config).
    #[arg(long = "config", global = true)]
    config: Option<PathBuf>,
}

impl ClientArgs {
    fn ctl(&self) -> anyhow::Result<skiff_ctl::Ctl> {
        let (server, tls, config) = connection(self.server.as_deref(), self.config.as_deref())?;
        let namespace = self.namespace.clone().unwrap_or(config.namespace);
        Ok(skiff_ctl::Ctl::new(&server, tls.as_ref(), &namespace)?)
    }
}

#[derive(clap::Args)]
struct ApplyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Manifest files or directories (`-` for stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// `client`: check the manifests and compare, send nothing; `server`:
    /// the server checks and admits everything, and writes nothing.
    #[arg(long, value_parser = ["none", "client", "server"], default_value = "none")]
    dry_run: String,
}

#[derive(clap::Args)]
struct GetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The kind (`pods`, `po`, `deployment`, ...).
    kind: String,
    /// Names (default: all).
    names: Vec<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    /// Field selector (`status.phase=Running`).
    #[arg(long, default_value = "")]
    field_selector: String,
    /// Output: wide, yaml, json or name.
    #[arg(short = 'o', long, default_value = "")]
    output: String,
    /// After listing, print changes as they happen.
    #[arg(short = 'w', long)]
    watch: bool,
}

#[derive(clap::Args)]
struct TargetArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// KIND NAME or KIND/NAME.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
}

#[derive(clap::Args)]
struct DeleteArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// KIND NAME..., or KIND/NAME.
    target: Vec<String>,
    /// Delete what these manifests name.
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// background, foreground or orphan.
    #[arg(long, default_value = "background")]
    cascade: String,
}

#[derive(clap::Args)]
struct ScaleArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// KIND NAME or KIND/NAME.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    replicas: i32,
}

#[derive(clap::Args)]
struct RolloutArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// status, history, undo, pause or resume.
    #[arg(value_parser = ["status", "history", "undo", "pause", "resume"])]
    action: String,
    /// deployment/NAME (or deployment NAME).
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
    /// undo: the revision to go back to (default: the previous one).
    #[arg(long, default_value_t = 0)]
    to_revision: i64,
    /// status: how long to wait, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(clap::Args)]
struct TopArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// `nodes` (`node`, `no`) or `pods` (`pod`, `po`).
    #[arg(value_parser = ["nodes", "node", "no", "pods", "pod", "po"])]
    what: String,
    /// Only this node or pod.
    name: Option<String>,
    /// Pods of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    /// One line per container (pods).
    #[arg(long)]
    containers: bool,
    /// Biggest first by `cpu` or `memory`.
    #[arg(long)]
    sort_by: Option<String>,
}

#[derive(clap::Args)]
struct LogsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The pod.
    pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long, default_value = "")]
    container: String,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<i64>,
    /// The previous, terminated instance of the container.
    #[arg(short = 'p', long)]
    previous: bool,
}

#[derive(clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The pod.
    pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long, default_value = "")]
    container: String,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Give the command a terminal (with -i: an interactive shell).
    #[arg(short = 't', long)]
    tty: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct MetadataArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// KIND NAME (or KIND/NAME), then key=value or key- pairs.
    #[arg(required = true, num_args = 2..)]
    args: Vec<String>,
    /// Replace existing values.
    #[arg(long)]
    overwrite: bool,
}

/// `30000-32767`.
fn port_range(text: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let parsed = text.split_once('-').and_then(|(lo, hi)| {
        Some((
            lo.trim().parse::<u16>().ok()?,
            hi.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((lo, hi)) if lo > 0 && lo <= hi => Ok(lo..=hi),
        _ => anyhow::bail!("--service-node-port-range: {text:?} is not a range like 30000-32767"),
    }
}

fn dry_run(flag: &str) -> skiff_ctl::apply::DryRun {
    match flag {
        "client" => skiff_ctl::apply::DryRun::Client,
        "server" => skiff_ctl::apply::DryRun::Server,
        _ => skiff_ctl::apply::DryRun::None,
    }
}

/// The deployment a rollout command names.
fn deployment_name(target: &[String]) -> anyhow::Result<String> {
    let name = match target {
        [one] => one
            .split_once('/')
            .map(|(kind, name)| (kind, name.to_string())),
        [kind, name] => Some((kind.as_str(), name.clone())),
        _ => None,
    };
    match name {
        Some((kind, name))
            if skiff_ctl::kinds::find(kind).is_some_and(|k| k.info().kind == "Deployment") =>
        {
            Ok(name)
        }
        _ => anyhow::bail!("error: rollout works on deployments: deployment/NAME"),
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The API server (`http://` for a server started --insecure).
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    server: String,
    /// A bootstrap token (`skiff token create`) to join with when the data
    /// dir holds no certificate yet.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's public-key pin (`sha256:...`, printed by `skiff
    /// token create`): the server must prove it has it before the token is
    /// sent.
    #[arg(long)]
    ca_hash: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where pod volumes live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// The container runtime: docker; process (host processes, for
    /// machines without Docker); or fake (nothing runs; for tests).
    #[arg(long, default_value = "docker", value_parser = ["docker", "process", "fake"])]
    runtime: String,
    /// Node labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Where the agent's own gRPC service (logs) listens; port 0 picks one.
    #[arg(long, default_value = "0.0.0.0:10250")]
    listen: SocketAddr,
    /// The address the API server reaches this node at.
    #[arg(long)]
    node_ip: Option<String>,
    /// Seconds between lease renewals.
    #[arg(long, default_value_t = 10)]
    lease_renew_secs: u64,
    /// Seconds between node status posts.
    #[arg(long, default_value_t = 10)]
    status_every_secs: u64,
    /// First crash-restart backoff, in seconds (doubles up to the max).
    #[arg(long, default_value_t = 10)]
    crash_backoff_secs: u64,
    /// Longest crash-restart backoff, in seconds.
    #[arg(long, default_value_t = 300)]
    crash_backoff_max_secs: u64,
    /// The Docker network pods attach to (created if missing).
    #[arg(long, default_value = "skiff")]
    network: String,
    /// How many pods the node takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Seconds between syncs of every pod (configMap and secret volumes
    /// follow their sources at this pace).
    #[arg(long, default_value_t = 10)]
    resync_secs: u64,
    /// How often container and node resource usage is sampled, in seconds
    /// (`skiff top` shows the rate between the last two samples).
    #[arg(long, default_value_t = 10)]
    stats_interval_secs: u64,
    /// The service proxy: auto (kernel NAT rules when root beside
    /// Docker, else a userspace relay), iptables, userspace or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "iptables", "userspace", "none"])]
    proxy_mode: String,
    /// The cluster's service CIDR (as the API server's): addresses in it
    /// that no Service holds are refused on this node.
    #[arg(long, default_value = skiff_apiserver::DEFAULT_SERVICE_CIDR)]
    service_cidr: String,
    /// The cluster's LoadBalancer pool (as the controller manager's):
    /// addresses in it that no Service holds are refused on this node.
    #[arg(long)]
    lb_pool: Option<String>,
    /// Serve the cluster DNS (cluster.local) to this node's pods, on the
    /// pod network's gateway, port 53.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cluster_dns: bool,
    /// Remove this node's service proxy rules (which stay when the agent
    /// stops, so connections survive restarts) and exit: for a node taken
    /// out of service.
    #[arg(long)]
    cleanup_proxy: bool,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// The host's name, as a node name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn agent_config(args: AgentArgs) -> anyhow::Result<skiff_agent::Config> {
    let node = args.node_name.unwrap_or_else(host_name);
    let mut config = skiff_agent::Config::new(&args.server, &node, args.data_dir);
    config.join = match (args.token, args.ca_hash) {
        (Some(token), Some(ca_hash)) => {
            Some(skiff_agent::credentials::JoinToken { token, ca_hash })
        }
        (None, None) => None,
        _ => anyhow::bail!("--token and --ca-hash go together (skiff token create prints both)"),
    };
    config.runtime = match args.runtime.as_str() {
        "fake" => skiff_agent::RuntimeKind::Fake,
        "process" => skiff_agent::RuntimeKind::Process,
        _ => skiff_agent::RuntimeKind::Docker,
    };
    for label in args.labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--labels: {label:?} is not key=value"))?;
        config.labels.insert(k.to_string(), v.to_string());
    }
    config.listen = args.listen;
    config.node_ip = args.node_ip;
    config.lease_renew = std::time::Duration::from_secs(args.lease_renew_secs.max(1));
    config.status_every = std::time::Duration::from_secs(args.status_every_secs.max(1));
    config.backoff = (
        std::time::Duration::from_secs(args.crash_backoff_secs),
        std::time::Duration::from_secs(args.crash_backoff_max_secs.max(args.crash_backoff_secs)),
    );
    config.network = args.network;
    config.max_pods = args.max_pods;
    config.resync_every = std::time::Duration::from_secs(args.resync_secs.max(1));
    config.stats_every = std::time::Duration::from_secs(args.stats_interval_secs.max(1));
    config.proxy = args.proxy_mode.parse().map_err(anyhow::Error::msg)?;
    config.service_cidr = Some(args.service_cidr);
    config.lb_pool = match args.lb_pool.as_deref() {
        None | Some("") => None,
        Some(pool) => {
            lb_pool(pool)?;
            Some(pool.to_string())
        }
    };
    config.cluster_dns = args.cluster_dns;
    Ok(config)
}

/// Serves `/metrics` on `--metrics-addr` when given (the task ends with
/// the process).
async fn serve_metrics(
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let (_, task) = skiff_metrics::serve(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}"))?;
    Ok(Some(task))
}

/// `--lb-pool`: a pool, or none when empty.
fn lb_pool(pool: &str) -> anyhow::Result<Option<skiff_controllers::service::Pool>> {
    if pool.is_empty() {
        return Ok(None);
    }
    pool.parse()
        .map(Some)
        .map_err(|e: String| anyhow::anyhow!("--lb-pool: {e}"))
}

/// The API server's flags, the same on `skiff server` and `skiff up`.
#[derive(clap::Args)]
struct ApiArgs {
    /// Address to serve the API (gRPC) on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// etcd endpoints (comma-separated): the state goes there instead of
    /// the embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The range Services' cluster IPs come from.
    #[arg(long, default_value = skiff_apiserver::DEFAULT_SERVICE_CIDR)]
    service_cidr: String,
    /// The range NodePort Services' node ports come from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Serve plaintext with no authentication: anyone who reaches the
    /// port may do anything. For tests on a machine of your own only.
    #[arg(long)]
    insecure: bool,
    /// More names or addresses clients reach the server by (for its
    /// certificate), comma-separated.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
    /// How long certificates issued to nodes are valid, in seconds
    /// (agents renew theirs at 80 % of that).
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    node_cert_validity_secs: u64,
    /// The Pod Security level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label: privileged, baseline
    /// or restricted. Baseline refuses hostPath volumes, host namespaces,
    /// privileged containers, added capabilities and host ports.
    #[arg(long, default_value = "baseline")]
    pod_security_default: skiff::podsecurity::Level,
    /// Namespaces Pod Security admission does not judge, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    pod_security_exempt_namespaces: Vec<String>,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for the embedded store (ignored with --etcd).
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// API actor threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    actors: usize,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Directory for the cluster's state.
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
    /// Where LoadBalancer Services' addresses come from: a CIDR or a
    /// range FIRST-LAST ("" leaves them pending). The default is on
    /// loopback: the addresses answer on this machine only.
    #[arg(long, default_value = skiff_controllers::DEFAULT_LB_POOL)]
    lb_pool: String,
    /// The service proxy: auto (kernel NAT rules when root beside
    /// Docker, else a userspace relay), iptables, userspace or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "iptables", "userspace", "none"])]
    proxy_mode: String,
}

/// The API server's config from its flags, the state under `data_dir`.
fn api_config(
    args: &ApiArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<skiff_apiserver::Config> {
    let store = if args.etcd.is_empty() {
        skiff_apiserver::StoreConfig::Embedded(data_dir.join("state.redb"))
    } else {
        skiff_apiserver::StoreConfig::Etcd(args.etcd.clone())
    };
    let mut config = skiff_apiserver::Config::new(args.listen, store);
    config.service_cidr = args
        .service_cidr
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--service-cidr: {e}"))?;
    config.node_ports = port_range(&args.service_node_port_range)?;
    config.metrics_addr = args.metrics_addr;
    config.pod_security = skiff_apiserver::podsecurity::PodSecurity {
        default: args.pod_security_default,
        exempt_namespaces: args
            .pod_security_exempt_namespaces
            .iter()
            .filter(|ns| !ns.is_empty())
            .cloned()
            .collect(),
    };
    if args.insecure {
        tracing::warn!(
            "--insecure: serving PLAINTEXT with NO authentication; anyone who can reach {} may do anything",
            args.listen
        );
    } else {
        let names = security::serving_names(args.listen, &config.service_cidr, &args.tls_san);
        config.security = Some(security::load(
            data_dir,
            &names,
            std::time::Duration::from_secs(args.node_cert_validity_secs.max(10)),
        )?);
    }
    Ok(config)
}

/// The address local clients reach a server bound to `addr` at.
fn local_url(addr: SocketAddr, tls: bool) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", addr.port())
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

/// As Go's runtime does for every server: the soft limit on open files
/// raised to the hard one, so that a server's connections are bounded by
/// its own limits (see `skiff_pki::tls::handshakes`), not by a shell's
/// default of 1,024.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || limit.maximum.is_none() && limit.current.is_some() {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("warning: raising the open file limit: {e}");
        }
    }
}

#[tokio::main]
async fn main() {
    use tracing::Instrument as _;
    raise_open_file_limit();
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
        Command::Server(args) => {
            let mut config = api_config(&args.api, &args.data_dir)?;
            config.actors = args.actors;
            let security = config.security.clone();
            let server = skiff_apiserver::ApiServer::start(config)
                .await
                .context("starting the API server")?;
            if let Some(security) = &security {
                let url = local_url(server.addr, true);
                let configs = security::write_configs(security, &args.data_dir, &url)?;
                tracing::info!(
                    admin = %configs.admin.display(),
                    scheduler = %configs.scheduler.display(),
                    controller_manager = %configs.controller_manager.display(),
                    "client configs written (use --config FILE, or SKIFF_CONFIG=FILE for skiff commands)"
                );
            }
            skiff_apiserver::serve_until(server, shutdown_signal())
                .await
                .context("running the API server")?;
        }
        Command::Scheduler(args) => {
            let _metrics = serve_metrics(args.metrics_addr).await?;
            let (server, tls) = args.connect.resolve()?;
            let mut config = skiff_scheduler::Config::new(&server);
            config.tls = tls;
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
            let _metrics = serve_metrics(args.metrics_addr).await?;
            let (server, tls, client) = connection(
                args.connect.server.as_deref(),
                args.connect.config.as_deref(),
            )?;
            let mut config = skiff_controllers::Config::new(&server);
            config.tls = tls;
            config.root_ca = (server.starts_with("https://")
                && !client.certificate_authority.is_empty())
            .then_some(client.certificate_authority);
            config.workers = args.workers;
            config.leader_elect = args.leader_elect;
            config.lease_duration = std::time::Duration::from_secs(args.lease_duration_secs.max(1));
            config.node_timing = skiff_controllers::nodelifecycle::Timing {
                grace: std::time::Duration::from_secs(args.node_monitor_grace_period_secs),
                eviction: std::time::Duration::from_secs(args.pod_eviction_timeout_secs),
            };
            config.lb_pool = lb_pool(&args.lb_pool)?;
            config.autoscaler_sync = std::time::Duration::from_secs(
                args.horizontal_pod_autoscaler_sync_period_secs.max(1),
            );
            skiff_controllers::run(config, shutdown_signal())
                .await
                .context("running the controller manager")?;
        }
        Command::HollowNodes(args) => {
            let (server, tls) = args.connect.resolve()?;
            let mut config = skiff_agent::hollow::Config::new(&server, args.count);
            config.tls = tls;
            config.prefix = args.prefix;
            config.cpu = args.cpu;
            config.memory = args.memory;
            config.lease_renew = std::time::Duration::from_secs(args.lease_renew_secs.max(1));
            skiff_agent::hollow::run(config, shutdown_signal())
                .await
                .context("running hollow nodes")?;
        }
        Command::Apply(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            ctl.apply(&args.files, dry_run(&args.dry_run), false)
                .await?;
        }
        Command::Create(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            ctl.apply(&args.files, dry_run(&args.dry_run), true).await?;
        }
        Command::Get(args) => {
            let output: skiff_ctl::Output = args
                .output
                .parse()
                .map_err(|e: String| anyhow::anyhow!("error: {e}"))?;
            let ctl = args.client.ctl()?;
            let kinds: Vec<&str> = args.kind.split(',').filter(|k| !k.is_empty()).collect();
            for (i, kind) in kinds.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                ctl.get(
                    kind,
                    &args.names,
                    args.all_namespaces,
                    &args.selector,
                    &args.field_selector,
                    output,
                    args.watch && kinds.len() == 1,
                )
                .await?;
            }
        }
        Command::Describe(args) => args.client.ctl()?.describe(&args.target).await?,
        Command::Delete(args) => {
            let ctl = args.client.ctl()?.recursive(args.recursive);
            ctl.delete(&args.target, &args.files, &args.cascade).await?;
        }
        Command::Scale(args) => {
            args.client
                .ctl()?
                .scale(&args.target, args.replicas)
                .await?
        }
        Command::Rollout(args) => {
            let ctl = args.client.ctl()?;
            let name = deployment_name(&args.target)?;
            match args.action.as_str() {
                "status" => {
                    ctl.rollout_status(&name, std::time::Duration::from_secs(args.timeout))
                        .await?
                }
                "history" => ctl.rollout_history(&name).await?,
                "undo" => ctl.rollout_undo(&name, args.to_revision).await?,
                "pause" => ctl.rollout_pause(&name, true).await?,
                _ => ctl.rollout_pause(&name, false).await?,
            }
        }
        Command::Logs(args) => {
            let ctl = args.client.ctl()?;
            ctl.logs(
                &args.pod,
                &args.container,
                args.follow,
                args.tail,
                args.previous,
            )
            .await?;
        }
        Command::Top(args) => {
            let ctl = args.client.ctl()?;
            let table = if matches!(args.what.as_str(), "nodes" | "node" | "no") {
                ctl.top_nodes(
                    args.name.as_deref(),
                    &args.selector,
                    args.sort_by.as_deref(),
                )
                .await?
            } else {
                ctl.top_pods(&skiff_ctl::top::TopPods {
                    name: args.name,
                    all_namespaces: args.all_namespaces,
                    selector: args.selector,
                    containers: args.containers,
                    sort_by: args.sort_by,
                })
                .await?
            };
            print!("{table}");
        }
        Command::Exec(args) => {
            let ctl = args.client.ctl()?;
            let code = if args.stdin || args.tty {
                ctl.exec_attached(
                    &args.pod,
                    &args.container,
                    &args.command,
                    args.stdin,
                    args.tty,
                )
                .await?
            } else {
                ctl.exec(&args.pod, &args.container, &args.command).await?
            };
            return Ok(code);
        }
        Command::Label(args) => {
            args.client
                .ctl()?
                .set_metadata("labels", &args.args, args.overwrite)
                .await?
        }
        Command::Annotate(args) => {
            args.client
                .ctl()?
                .set_metadata("annotations", &args.args, args.overwrite)
                .await?;
        }
        Command::Token(args) => {
            let ctl = args.client.ctl()?;
            match args.action {
                TokenAction::Create { ttl, description } => {
                    let ttl = if ttl == "0" {
                        None
                    } else {
                        Some(
                            humantime::parse_duration(&ttl)
                                .map_err(|e| anyhow::anyhow!("error: --ttl {ttl:?}: {e}"))?,
                        )
                    };
                    let (_, _, config) =
                        connection(args.client.server.as_deref(), args.client.config.as_deref())?;
                    let ca_hash = config
                        .ca_hash()
                        .map_err(|e| anyhow::anyhow!("error: {e}"))?;
                    ctl.token_create(ttl, &description, &ca_hash).await?;
                }
                TokenAction::List => ctl.token_list().await?,
                TokenAction::Delete { tokens } => ctl.token_delete(&tokens).await?,
            }
        }
        Command::Auth(args) => {
            let ctl = args.client.ctl()?;
            match args.action {
                AuthAction::Whoami => ctl.whoami().await?,
                AuthAction::CanI {
                    verb,
                    resource,
                    name,
                } => {
                    let allowed = ctl
                        .can_i(&verb, &resource, name.as_deref().unwrap_or(""))
                        .await?;
                    return Ok(if allowed { 0 } else { 1 });
                }
            }
        }
        Command::ApiResources => print!("{}", skiff_ctl::api_resources()),
        Command::ClusterInfo(client) => client.ctl()?.cluster_info().await?,
        Command::Version(client) => {
            println!("Client Version: skiff {}", env!("CARGO_PKG_VERSION"));
            let config = skiff_ctl::config::load().unwrap_or_default();
            println!("Server: {}", client.server.unwrap_or(config.server));
        }
        Command::Shim { dir, argv } => {
            let code = skiff_runtime::process::shim(&dir, &argv).context("running the shim")?;
            return Ok(code);
        }
        Command::Agent(args) if args.cleanup_proxy => {
            let node = args.node_name.unwrap_or_else(host_name);
            skiff_agent::proxy::iptables::cleanup(&node)
                .await
                .map_err(anyhow::Error::msg)
                .context("removing the service proxy rules")?;
            println!(
                "removed the service proxy rules of node {node:?} (chains {}-*)",
                skiff_agent::proxy::iptables::prefix(&node)
            );
        }
        Command::Agent(args) => {
            let _metrics = serve_metrics(args.metrics_addr).await?;
            let config = agent_config(args)?;
            skiff_agent::run(config, shutdown_signal())
                .await
                .context("running the agent")?;
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
            let config = api_config(&args.api, &data_dir)?;
            let security = config.security.clone();
            let server = skiff_apiserver::ApiServer::start(config)
                .await
                .context("starting the API server")?;
            let url = local_url(server.addr, security.is_some());
            let configs = security
                .as_ref()
                .map(|s| security::write_configs(s, &data_dir, &url))
                .transpose()?;
            let component_tls = |pick: fn(&security::Configs) -> &std::path::Path| {
                configs
                    .as_ref()
                    .map(|c| security::component_tls(pick(c)))
                    .transpose()
                    .map(Option::flatten)
            };
            let mut scheduler_config = skiff_scheduler::Config::new(&url);
            scheduler_config.tls = component_tls(|c| &c.scheduler)?;
            let (stop_controllers, controllers_stopped) = tokio::sync::oneshot::channel::<()>();
            let mut controllers_config = skiff_controllers::Config::new(&url);
            controllers_config.tls = component_tls(|c| &c.controller_manager)?;
            controllers_config.root_ca = security.as_ref().map(|s| s.ca.cert_pem.clone());
            controllers_config.lb_pool = lb_pool(&args.lb_pool)?;
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
            let node = host_name();
            let agent_dir = data_dir.join("agent");
            if let Some(security) = &security {
                // The local agent is on the server's machine: it gets its
                // certificate from the CA directly, no join needed.
                skiff_agent::credentials::Credentials::provision(
                    &security.ca,
                    &agent_dir,
                    &node,
                    security.node_cert_validity,
                )
                .context("issuing the local agent's certificate")?;
            }
            let mut agent_config = skiff_agent::Config::new(&url, &node, agent_dir);
            agent_config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            agent_config.runtime = skiff_agent::RuntimeKind::Auto;
            agent_config.proxy = args.proxy_mode.parse().map_err(anyhow::Error::msg)?;
            agent_config.service_cidr = Some(args.api.service_cidr.clone());
            agent_config.lb_pool = (!args.lb_pool.is_empty()).then(|| args.lb_pool.clone());
            let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
            let agent = tokio::spawn(async move {
                let stopped = async {
                    let _ = agent_stopped.await;
                };
                if let Err(e) = skiff_agent::run(agent_config, stopped).await {
                    tracing::error!(error = %e, "the local agent is not running: pods will stay Pending");
                }
            });
            let client_config = match &configs {
                Some(c) => c.admin_config.clone(),
                None => skiff_ctl::config::ClientConfig {
                    server: url.clone(),
                    ..Default::default()
                },
            };
            let config_path = skiff_ctl::config::save(&client_config)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| format!("(not written: {e})"));
            println!("Skiff is up.");
            println!(
                "  API server:  {url} (gRPC; reflection and health on; {})",
                if security.is_some() {
                    "TLS, client certificates or tokens"
                } else {
                    "PLAINTEXT, no authentication: --insecure"
                }
            );
            println!("  scheduler:   running (binds pending pods to Ready nodes)");
            println!(
                "  controllers: replicasets, replicationcontrollers, deployments, daemonsets, jobs, horizontal pod autoscalers, endpoints, services (load balancer pool {}), namespaces, nodes, garbage collector, serviceaccounts, root CA publisher",
                if args.lb_pool.is_empty() {
                    "none"
                } else {
                    &args.lb_pool
                }
            );
            println!(
                "  pods:        Pod Security {:?} enforced where a namespace has no pod-security.kubernetes.io/enforce label{}",
                args.api.pod_security_default.as_str(),
                match args.api.pod_security_exempt_namespaces.join(",") {
                    exempt if exempt.is_empty() => String::new(),
                    exempt => format!(" ({exempt} exempt)"),
                }
            );
            println!("  agent:       node {node:?} (Docker; pods in the `skiff` network)");
            if args.api.etcd.is_empty() {
                println!("  state:       {} (embedded store)", data_dir.display());
            } else {
                println!("  state:       etcd at {}", args.api.etcd.join(","));
            }
            println!(
                "  client:      {config_path} (skiff get, apply, logs ... use it; you are admin)"
            );
            let grpcurl = match &configs {
                Some(c) => format!(
                    "grpcurl -cacert {} -cert {} -key {}",
                    c.admin_files.2.display(),
                    c.admin_files.0.display(),
                    c.admin_files.1.display()
                ),
                None => "grpcurl -plaintext".to_string(),
            };
            let target = url.split_once("://").map_or(url.as_str(), |(_, t)| t);
            println!("Try:");
            println!("  skiff get nodes");
            println!("  {grpcurl} {target} list");
            if security.is_some() {
                println!(
                    "  skiff token create      # a token for another machine to join: skiff agent --token ..."
                );
            }
            println!(
                "  scripts/busybox-image   # an image to run, built from scratch (no registry needed)"
            );
            println!("Press Ctrl-C to stop.");
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_agent.send(());
            let _ = agent.await;
            let _ = stop_scheduler.send(());
            let _ = stop_controllers.send(());
            let _ = scheduler.await;
            let _ = controllers.await;
            server.stop().await.context("stopping the API server")?;
        }
    }
    Ok(0)
}
