//! The pod network of a node when pods are plumbed by CNI: the node's
//! block of the cluster CIDR (`spec.podCIDR`, given by the controller
//! manager) on a bridge, routes to every other node's block, and the
//! masquerade of traffic leaving the cluster.
//!
//! - [`Options`]: the mode (`docker`: Skiff's Docker bridge network, one
//!   machine; `cni`) and the backend between nodes (`vxlan`, `host-gw`,
//!   `none`), as k3s' `--flannel-backend`.
//! - [`start`]: what the agent runs under CNI: waits for the node's
//!   block, [`prepare`]s the node, keeps the [`routes`] and sweeps the
//!   addresses of sandboxes gone.
//! - [`prepare`]: before pods run — the bridge with the block's gateway
//!   address, the VXLAN device, the CNI network configured, and what a
//!   crash left half-made undone.
//! - [`routes`]: keeps the routes (and VXLAN neighbours) to the other
//!   nodes and the masquerade rules in step with the Nodes.
//! - [`ip`]: the `ip` and `bridge` commands it runs (iproute2), in the
//!   agent's network namespace — which is the node's.

pub mod ip;
pub mod routes;

use std::path::PathBuf;
use std::time::Duration;

use skiff::cidr::Ipv4Cidr;
use skiff::pb::core::v1::Node;
use skiff_client::Api;

/// Where pods' addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A Docker bridge network (one machine: pods of other nodes are not
    /// reachable).
    Docker,
    /// CNI plugins, from the node's podCIDR, routed between nodes.
    Cni,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Self::Docker),
            "cni" => Ok(Self::Cni),
            other => Err(format!("unknown pod network {other:?}: docker or cni")),
        }
    }
}

/// How pods reach the pods of other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A kernel VXLAN device: nodes need only reach each other's
    /// addresses (UDP 8472).
    Vxlan,
    /// A route per node via its address: nodes must share a link.
    HostGw,
    /// No routes between nodes (one node, or routes made by others).
    None,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vxlan" => Ok(Self::Vxlan),
            "host-gw" => Ok(Self::HostGw),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown network backend {other:?}: vxlan, host-gw or none"
            )),
        }
    }
}

/// The VXLAN device of the pod network.
pub const VXLAN_DEVICE: &str = "skiff.1";
/// Its VXLAN network identifier.
pub const VNI: u32 = 1;
/// Its UDP port (the kernel's default, flannel's too).
pub const VXLAN_PORT: u16 = 8472;
/// Bytes VXLAN adds to every packet (outer IPv4, UDP, VXLAN, Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The Node annotation carrying a node's VXLAN device address, which the
/// other nodes need to reach its pods.
pub const VTEP_MAC_ANNOTATION: &str = "skiff.io/vxlan-vtep-mac";

/// How the node's pod network is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Docker network or CNI.
    pub mode: Mode,
    /// Between nodes.
    pub backend: Backend,
    /// The pod addresses of the whole cluster (traffic leaving it is
    /// masqueraded).
    pub cluster_cidr: Ipv4Cidr,
    /// Where the CNI plugins are.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The bridge pods are on.
    pub bridge: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Docker,
            backend: Backend::Vxlan,
            cluster_cidr: skiff::names::DEFAULT_CLUSTER_CIDR
                .parse()
                .expect("a valid CIDR"),
            cni_bin_dirs: skiff_runtime::cni::DEFAULT_PLUGIN_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            bridge: "skiff0".into(),
        }
    }
}

/// The host interface the node's address is on, and its MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Its name (`eth0`).
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
}

/// Waits until the node has its block (`spec.podCIDR`), saying so in the
/// log once.
pub async fn wait_for_pod_cidr(nodes: &Api<Node>, name: &str) -> Ipv4Cidr {
    let mut said = false;
    loop {
        if let Ok(node) = nodes.get("", name).await {
            let cidr = node
                .spec
                .as_ref()
                .map(|s| s.pod_cidr.clone())
                .unwrap_or_default();
            if let Ok(cidr) = cidr.parse::<Ipv4Cidr>() {
                return cidr;
            }
        }
        if !said {
            tracing::info!(
                node = name,
                "waiting for the controller manager to give the node its podCIDR"
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The pod network's MTU on `uplink`: the uplink's (1500 when it is the
/// loopback of a one-machine cluster), less VXLAN's overhead.
pub fn pod_mtu(uplink: &Uplink, backend: Backend) -> u32 {
    let base = if uplink.name == "lo" {
        1500
    } else {
        uplink.mtu
    };
    if backend == Backend::Vxlan {
        base.saturating_sub(VXLAN_OVERHEAD)
    } else {
        base
    }
}

/// Makes the node ready for CNI pods on `pod_cidr`: forwarding on, the
/// bridge with the gateway address (the cluster DNS listens there), the
/// CNI network configured, the VXLAN device's address (`backend`: the
/// one in effect, none on a node with only a loopback address). Returns
/// the network configured.
///
/// # Errors
/// A command the node refused.
pub async fn prepare(
    options: &Options,
    backend: Backend,
    cni: &skiff_runtime::cni::Cni,
    pod_cidr: Ipv4Cidr,
    uplink: &Uplink,
    data_dir: &std::path::Path,
) -> Result<skiff_runtime::cni::BridgeNetwork, String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| format!("turning on IPv4 forwarding: {e}"))?;
    let network = skiff_runtime::cni::BridgeNetwork {
        name: "skiff".into(),
        bridge: options.bridge.clone(),
        pod_cidr,
        mtu: pod_mtu(uplink, backend),
        ipam_dir: data_dir.join("cni").join("ipam"),
    };
    let gateway = format!("{}/{}", network.gateway(), pod_cidr.bits());
    ip::ensure_bridge(&options.bridge, &gateway, network.mtu).await?;
    if backend == Backend::Vxlan {
        ip::run(&[
            "addr",
            "replace",
            &format!("{}/32", pod_cidr.network()),
            "dev",
            VXLAN_DEVICE,
        ])
        .await?;
    }
    cni.configure(network.clone());
    Ok(network)
}

/// The interface of the node's address, and the address when it is one
/// other nodes can route to (not loopback: a one-machine cluster).
pub(crate) async fn uplink(
    config: &crate::Config,
    node_ip: &str,
) -> Result<(Uplink, Option<std::net::Ipv4Addr>), crate::Error> {
    let ip: std::net::Ipv4Addr = node_ip.parse().map_err(|_| {
        crate::Error::Network(format!(
            "the node address {node_ip:?} is not an IPv4 address (give --node-ip)"
        ))
    })?;
    let uplink = ip::uplink_of(ip).await.map_err(crate::Error::Network)?;
    if ip.is_loopback() {
        if config.pod_network.backend != Backend::None {
            tracing::warn!(%ip, "the node address is a loopback address: no routes to other nodes' pods (give --node-ip)");
        }
        return Ok((uplink, None));
    }
    Ok((uplink, Some(ip)))
}

/// Waits for the node's podCIDR, prepares the node for CNI pods on it and
/// starts keeping the routes to other nodes and the masquerade rules (and
/// freeing the addresses of sandboxes gone behind its back). The task
/// ends, saying why, when the node's block is no longer its pods'.
pub(crate) async fn start(
    config: &crate::Config,
    channel: &tonic::transport::Channel,
    docker: &std::sync::Arc<skiff_runtime::DockerRuntime>,
    uplink: &Uplink,
    mut local: routes::Local,
) -> Result<tokio::task::JoinHandle<String>, crate::Error> {
    let Some(cni) = docker.cni() else {
        return Err(crate::Error::Network(
            "the runtime has no CNI network".into(),
        ));
    };
    let nodes = Api::<Node>::new(channel.clone());
    let pod_cidr = wait_for_pod_cidr(&nodes, &config.node_name).await;
    local.pod_cidr = pod_cidr;
    let prepared = prepare(
        &config.pod_network,
        local.backend,
        cni,
        pod_cidr,
        uplink,
        &config.data_dir,
    )
    .await
    .map_err(crate::Error::Network)?;
    let freed = docker.reconcile_network().await?;
    tracing::info!(
        %pod_cidr,
        bridge = %prepared.bridge,
        mtu = prepared.mtu,
        backend = ?local.backend,
        freed,
        "pod network ready (CNI)"
    );
    let informer = skiff_client::Informer::start(nodes, skiff_client::watcher::Params::default());
    let changes = informer.subscribe();
    let reconciler = std::sync::Arc::clone(docker);
    Ok(tokio::spawn(async move {
        let sweep = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                match reconciler.reconcile_network().await {
                    Ok(0) => {}
                    Ok(freed) => tracing::info!(freed, "freed the addresses of sandboxes gone"),
                    Err(e) => tracing::warn!(error = %e, "sweeping pod addresses"),
                }
            }
        };
        // The informer lives as long as the task.
        let store = informer.store.clone();
        let why = tokio::select! {
            why = routes::run(local, store, changes) => why,
            () = sweep => String::new(),
        };
        drop(informer);
        why
    }))
}
