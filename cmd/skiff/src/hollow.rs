//! `skiff hollow-nodes`: simulated nodes in one process, for scale tests.

use anyhow::Context as _;

use crate::common::{ConnectArgs, shutdown_signal};

#[derive(clap::Args)]
pub(crate) struct HollowArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// How many nodes.
    #[arg(long, default_value_t = 100)]
    pub(crate) count: usize,
    /// Node names are this plus an index.
    #[arg(long, default_value = "hollow-node-")]
    pub(crate) prefix: String,
    /// Each node's CPU capacity.
    #[arg(long, default_value = "4")]
    pub(crate) cpu: String,
    /// Each node's memory capacity.
    #[arg(long, default_value = "16Gi")]
    pub(crate) memory: String,
    /// Seconds between each node's lease renewals.
    #[arg(long, default_value_t = 10)]
    pub(crate) lease_renew_secs: u64,
}

/// Runs the hollow nodes until a signal.
pub(crate) async fn run(args: HollowArgs) -> anyhow::Result<()> {
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
    Ok(())
}
