//! What several commands share: finding the API server and credentials,
//! serving metrics, waiting for a signal, process limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;

/// Where a component finds the API server and its credentials: a client
/// config (as `skiff server` writes one per component in its data dir,
/// or `skiff up` in ~/.skiff/config), or just an address.
#[derive(clap::Args, Clone)]
pub(crate) struct ConnectArgs {
    /// The API server (default: the config's; `http://` for a server
    /// started --insecure).
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// A client config with the cluster CA and this component's
    /// certificate (default: $SKIFF_CONFIG or ~/.skiff/config).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

impl ConnectArgs {
    pub(crate) fn resolve(&self) -> anyhow::Result<(String, Option<skiff_client::ClientTls>)> {
        let (server, tls, _) = connection(self.server.as_deref(), self.config.as_deref())?;
        Ok((server, tls))
    }
}

/// The server address and TLS settings from `--server` and a client
/// config (`--config`, else $SKIFF_CONFIG or ~/.skiff/config): `https://`
/// uses the config's CA and certificate, `http://` none.
pub(crate) fn connection(
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

/// Where `skiff up` keeps its state by default: `~/.skiff/data`.
pub(crate) fn default_data_dir() -> std::path::PathBuf {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join(".skiff")
        .join("data")
}

/// The host's name, as a node name.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Serves `/metrics` on `--metrics-addr` when given (the task ends with
/// the process).
pub(crate) async fn serve_metrics(
    addr: Option<SocketAddr>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let (_, task) = skiff_metrics::serve(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}"))?;
    Ok(Some(task))
}

/// `--lb-pool`: a pool, or none when empty.
pub(crate) fn lb_pool(pool: &str) -> anyhow::Result<Option<skiff_controllers::service::Pool>> {
    if pool.is_empty() {
        return Ok(None);
    }
    pool.parse()
        .map(Some)
        .map_err(|e: String| anyhow::anyhow!("--lb-pool: {e}"))
}

/// How the controller manager gives nodes their pod address blocks.
#[derive(clap::Args, Clone)]
pub(crate) struct NodeCidrArgs {
    /// Give every node a block of `--cluster-cidr` as its `spec.podCIDR`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) allocate_node_cidrs: bool,
    /// The pod addresses of the whole cluster.
    #[arg(long, default_value = skiff_controllers::nodeipam::DEFAULT_CLUSTER_CIDR)]
    pub(crate) cluster_cidr: String,
    /// The prefix length of each node's block (/24: 254 pods a node).
    #[arg(long, default_value_t = skiff_controllers::nodeipam::DEFAULT_NODE_MASK)]
    pub(crate) node_cidr_mask_size: u8,
}

impl NodeCidrArgs {
    /// The allocator's ranges (None when allocation is off); blocks in
    /// `service_cidr` are never given.
    pub(crate) fn ranges(
        &self,
        service_cidr: &str,
    ) -> anyhow::Result<Option<skiff_controllers::nodeipam::Ranges>> {
        if !self.allocate_node_cidrs {
            return Ok(None);
        }
        let cluster = self
            .cluster_cidr
            .parse()
            .map_err(|e: skiff::validation::Invalid| anyhow::anyhow!("--cluster-cidr: {e}"))?;
        let service = service_cidr.parse().ok();
        skiff_controllers::nodeipam::Ranges::new(cluster, self.node_cidr_mask_size, service)
            .map(Some)
            .map_err(anyhow::Error::msg)
    }
}

/// How an agent gives its pods their network.
#[derive(clap::Args, Clone)]
pub(crate) struct PodNetworkArgs {
    /// Where pods' addresses come from: docker (Skiff's Docker bridge
    /// network; pods of one machine only) or cni (the node's podCIDR,
    /// plumbed by the CNI plugins and routed between nodes).
    #[arg(long, default_value = "docker", value_parser = ["docker", "cni"])]
    pub(crate) pod_network: String,
    /// How pods reach other nodes' pods under CNI: vxlan (nodes need only
    /// reach each other, UDP 8472), host-gw (a route per node: nodes share
    /// a link) or none.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "host-gw", "none"])]
    pub(crate) flannel_backend: String,
    /// Where the CNI plugins are (default: /usr/lib/cni, /opt/cni/bin).
    #[arg(long)]
    pub(crate) cni_bin_dir: Vec<PathBuf>,
}

impl PodNetworkArgs {
    /// The agent's network options, in cluster CIDR `cluster_cidr`.
    pub(crate) fn options(
        &self,
        cluster_cidr: &str,
    ) -> anyhow::Result<skiff_agent::network::Options> {
        let mut options = skiff_agent::network::Options {
            mode: self.pod_network.parse().map_err(anyhow::Error::msg)?,
            backend: self.flannel_backend.parse().map_err(anyhow::Error::msg)?,
            cluster_cidr: cluster_cidr
                .parse()
                .map_err(|e: skiff::validation::Invalid| anyhow::anyhow!("--cluster-cidr: {e}"))?,
            ..Default::default()
        };
        if !self.cni_bin_dir.is_empty() {
            options.cni_bin_dirs.clone_from(&self.cni_bin_dir);
        }
        Ok(options)
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub(crate) async fn shutdown_signal() {
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
pub(crate) fn raise_open_file_limit() {
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
