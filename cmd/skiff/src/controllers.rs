//! `skiff controller-manager`: the controller manager in the foreground.

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::common::{
    ConnectArgs, NodeCidrArgs, connection, lb_pool, serve_metrics, shutdown_signal,
};

#[derive(clap::Args)]
pub(crate) struct ControllerArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Reconcile workers per controller.
    #[arg(long, default_value_t = 4)]
    pub(crate) workers: usize,
    /// Take part in leader election (so several managers can run).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) leader_elect: bool,
    /// This manager's identity in the election (default: random).
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub(crate) lease_duration_secs: u64,
    /// Seconds a node may go without renewing its lease before it is
    /// marked NotReady.
    #[arg(long, default_value_t = 40)]
    pub(crate) node_monitor_grace_period_secs: u64,
    /// Seconds a NotReady node keeps its pods before they are evicted.
    #[arg(long, default_value_t = 300)]
    pub(crate) pod_eviction_timeout_secs: u64,
    /// Seconds between each HorizontalPodAutoscaler's looks at its
    /// metrics.
    #[arg(long, default_value_t = 15)]
    pub(crate) horizontal_pod_autoscaler_sync_period_secs: u64,
    /// Where LoadBalancer Services' addresses come from: a CIDR or a
    /// range FIRST-LAST, or "" for the Ready nodes' own addresses (k3s's
    /// ServiceLB). The default is on loopback: the addresses answer on
    /// this machine only.
    #[arg(long, default_value = skiff_controllers::DEFAULT_LB_POOL)]
    pub(crate) lb_pool: String,
    #[command(flatten)]
    pub(crate) node_cidrs: NodeCidrArgs,
    /// The cluster's service range (as the API server's): never given to
    /// nodes as pod addresses.
    #[arg(long, default_value = skiff_apiserver::DEFAULT_SERVICE_CIDR)]
    pub(crate) service_cluster_ip_range: String,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// Runs the controllers until a signal (while leading, unless told).
pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let _metrics = serve_metrics(args.metrics_addr).await?;
    let (server, tls, client) = connection(
        args.connect.server.as_deref(),
        args.connect.config.as_deref(),
    )?;
    let mut config = skiff_controllers::Config::new(&server);
    config.tls = tls;
    config.root_ca = (server.starts_with("https://") && !client.certificate_authority.is_empty())
        .then_some(client.certificate_authority);
    config.workers = args.workers;
    config.leader_elect = args.leader_elect;
    if let Some(identity) = args.identity {
        config.identity = identity;
    }
    config.lease_duration = std::time::Duration::from_secs(args.lease_duration_secs.max(1));
    config.node_timing = skiff_controllers::nodelifecycle::Timing {
        grace: std::time::Duration::from_secs(args.node_monitor_grace_period_secs),
        eviction: std::time::Duration::from_secs(args.pod_eviction_timeout_secs),
    };
    config.lb_pool = lb_pool(&args.lb_pool)?;
    config.node_cidrs = args.node_cidrs.ranges(&args.service_cluster_ip_range)?;
    config.autoscaler_sync =
        std::time::Duration::from_secs(args.horizontal_pod_autoscaler_sync_period_secs.max(1));
    skiff_controllers::run(config, shutdown_signal())
        .await
        .context("running the controller manager")?;
    Ok(())
}
