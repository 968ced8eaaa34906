//! `skiff scheduler`: the scheduler in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::common::{ConnectArgs, serve_metrics, shutdown_signal};

#[derive(clap::Args)]
pub(crate) struct SchedulerArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// A JSON profile: {"filters": [...], "scores": [{"name": ..., "weight": ...}]}.
    #[arg(long)]
    pub(crate) profile: Option<PathBuf>,
    /// Schedule pods whose spec.schedulerName is this.
    #[arg(long, default_value = skiff_scheduler::DEFAULT_SCHEDULER)]
    pub(crate) scheduler_name: String,
    /// Take part in leader election (so several schedulers can run).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) leader_elect: bool,
    /// Seconds a leader's lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub(crate) lease_duration_secs: u64,
    /// This scheduler's identity in the election (default: host name and
    /// a random suffix).
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long)]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// Runs the scheduler until a signal (with leader election unless told).
pub(crate) async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
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
        config.profile = skiff_scheduler::Profile::load(path).context("loading the profile")?;
    }
    skiff_scheduler::run_supervised(config, shutdown_signal())
        .await
        .context("running the scheduler")?;
    Ok(())
}
