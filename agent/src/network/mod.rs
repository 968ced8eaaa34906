//! The pod network of a node when pods are plumbed by CNI: the node's
//! block of the cluster CIDR (`spec.podCIDR`, given by the controller
//! manager) on a bridge, routes to every other node's block, and the
//! masquerade of traffic leaving the cluster.
//!
//! - [`Options`]: the mode (`docker`: Skiff's Docker bridge network, one
//!   machine; `cni`) and the backend between nodes (`vxlan`, `host-gw`,
//!   `none`), as k3s' `--flannel-backend`.
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
