//! `skiff agent`: the node agent in the foreground (or, with
//! `--cleanup-proxy`, the removal of its service proxy rules).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::common::{PodNetworkArgs, host_name, lb_pool, serve_metrics, shutdown_signal};

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The API server (`http://` for a server started --insecure).
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub(crate) server: String,
    /// A bootstrap token (`skiff token create`) to join with when the data
    /// dir holds no certificate yet.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The cluster CA's public-key pin (`sha256:...`, printed by `skiff
    /// token create`): the server must prove it has it before the token is
    /// sent.
    #[arg(long)]
    pub(crate) ca_hash: Option<String>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub(crate) node_name: Option<String>,
    /// Where pod volumes live.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    pub(crate) data_dir: PathBuf,
    /// The container runtime: docker; process (host processes, for
    /// machines without Docker); or fake (nothing runs; for tests).
    #[arg(long, default_value = "docker", value_parser = ["docker", "process", "fake"])]
    pub(crate) runtime: String,
    /// Node labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    pub(crate) labels: Vec<String>,
    /// Where the agent's own gRPC service (logs) listens; port 0 picks one.
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub(crate) listen: SocketAddr,
    /// The address the API server reaches this node at.
    #[arg(long)]
    pub(crate) node_ip: Option<String>,
    /// Seconds between lease renewals.
    #[arg(long, default_value_t = 10)]
    pub(crate) lease_renew_secs: u64,
    /// Seconds between node status posts.
    #[arg(long, default_value_t = 10)]
    pub(crate) status_every_secs: u64,
    /// First crash-restart backoff, in seconds (doubles up to the max).
    #[arg(long, default_value_t = 10)]
    pub(crate) crash_backoff_secs: u64,
    /// Longest crash-restart backoff, in seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) crash_backoff_max_secs: u64,
    /// The Docker network pods attach to (created if missing).
    #[arg(long, default_value = "skiff")]
    pub(crate) network: String,
    /// How many pods the node takes.
    #[arg(long, default_value_t = 110)]
    pub(crate) max_pods: u32,
    /// Seconds between syncs of every pod (configMap and secret volumes
    /// follow their sources at this pace).
    #[arg(long, default_value_t = 10)]
    pub(crate) resync_secs: u64,
    /// How often container and node resource usage is sampled, in seconds
    /// (`skiff top` shows the rate between the last two samples).
    #[arg(long, default_value_t = 10)]
    pub(crate) stats_interval_secs: u64,
    /// The service proxy: auto (kernel NAT rules when root beside
    /// Docker, else a userspace relay), iptables, userspace or none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "iptables", "userspace", "none"])]
    pub(crate) proxy_mode: String,
    /// The cluster's service CIDR (as the API server's): addresses in it
    /// that no Service holds are refused on this node.
    #[arg(long, default_value = skiff_apiserver::DEFAULT_SERVICE_CIDR)]
    pub(crate) service_cidr: String,
    /// The cluster's LoadBalancer pool (as the controller manager's):
    /// addresses in it that no Service holds are refused on this node.
    #[arg(long)]
    pub(crate) lb_pool: Option<String>,
    /// Serve the cluster DNS (cluster.local) to this node's pods, on the
    /// pod network's gateway, port 53.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) cluster_dns: bool,
    /// Remove this node's service proxy rules (which stay when the agent
    /// stops, so connections survive restarts) and exit: for a node taken
    /// out of service.
    #[arg(long)]
    pub(crate) cleanup_proxy: bool,
    #[command(flatten)]
    pub(crate) pod_network: PodNetworkArgs,
    /// The pod addresses of the whole cluster (as the controller
    /// manager's): traffic leaving it is masqueraded.
    #[arg(long, default_value = skiff::names::DEFAULT_CLUSTER_CIDR)]
    pub(crate) cluster_cidr: String,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

pub(crate) fn agent_config(args: AgentArgs) -> anyhow::Result<skiff_agent::Config> {
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
    config.pod_network = args.pod_network.options(&args.cluster_cidr)?;
    Ok(config)
}

/// Runs the agent until a signal; with `--cleanup-proxy`, removes the
/// node's proxy rules and returns.
pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.cleanup_proxy {
        let node = args.node_name.unwrap_or_else(host_name);
        skiff_agent::proxy::iptables::cleanup(&node)
            .await
            .map_err(anyhow::Error::msg)
            .context("removing the service proxy rules")?;
        skiff_agent::netpol::cleanup(&node)
            .await
            .map_err(anyhow::Error::msg)
            .context("removing the network policy rules")?;
        println!(
            "removed the service proxy and network policy rules of node {node:?} (chains {}-*, {}-*)",
            skiff_agent::proxy::iptables::prefix(&node),
            skiff_agent::netpol::rules::prefix(&node)
        );
        return Ok(());
    }
    let _metrics = serve_metrics(args.metrics_addr).await?;
    let config = agent_config(args)?;
    skiff_agent::run(config, shutdown_signal())
        .await
        .context("running the agent")?;
    Ok(())
}
