//! The service proxy (kube-proxy's part of the agent): makes every
//! Service's ClusterIP, NodePorts and LoadBalancer addresses reach its
//! **ready** endpoints.
//!
//! The proxy watches Services and Endpoints, reduces them to a list of
//! [`ServicePort`]s (pure, [`service_ports`]) and hands that whole list to
//! a [`Backend`] on every change and every `resync` period:
//!
//! - [`iptables`]: kernel NAT rules, as kube-proxy's iptables mode, where
//!   the agent runs as root beside the containers' network (Docker).
//!   The rules live in chains of the agent's own, rewritten whole with one
//!   `iptables-restore`, so a restarted agent repairs drift and a deleted
//!   Service leaves nothing behind. They stay when the agent stops, so
//!   connections through a Service outlive an agent restart.
//! - [`userspace`]: TCP listeners on the NodePorts (and on LoadBalancer
//!   addresses that are local), relaying to endpoints, where kernel rules
//!   cannot be written (not root, no iptables, or pods on the host's
//!   network with the process runtime). ClusterIPs are not reachable in
//!   this mode: they are virtual addresses only the kernel can answer.
//!
//! The rules are only computed from complete caches: until both watches
//! have listed, nothing is written (an agent restarting must not drop the
//! rules of Services it has not read yet).

pub mod iptables;
pub mod userspace;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use skiff::pb::core::v1::{Endpoints, Service};
use skiff_client::Store;

/// How the proxy programs the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables when the agent can write kernel rules, else userspace.
    Auto,
    /// Kernel NAT rules.
    Iptables,
    /// TCP relays on NodePorts and local LoadBalancer addresses.
    Userspace,
    /// No proxy on this node.
    None,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "iptables" => Ok(Self::Iptables),
            "userspace" => Ok(Self::Userspace),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown proxy mode {other:?}: one of auto, iptables, userspace, none"
            )),
        }
    }
}

/// Session affinity timeout when a Service asks for ClientIP affinity and
/// gives none (Kubernetes' default: 3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// One port of one Service, as the proxy programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (may be empty when the Service has one port).
    pub port_name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The ClusterIP (none for headless Services).
    pub cluster_ip: Option<Ipv4Addr>,
    /// The Service port.
    pub port: u16,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// LoadBalancer ingress addresses and externalIPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// ClientIP session affinity, in seconds.
    pub affinity: Option<u32>,
    /// Ready endpoints, sorted.
    pub endpoints: Vec<SocketAddrV4>,
    /// With `externalTrafficPolicy: Local`: the ready endpoints on this
    /// node, the only ones traffic from outside (NodePort, LoadBalancer,
    /// externalIPs) goes to, keeping its client address.
    pub local: Option<Vec<SocketAddrV4>>,
}

impl ServicePort {
    /// The endpoints traffic from outside the cluster goes to.
    pub fn external_endpoints(&self) -> &[SocketAddrV4] {
        self.local.as_deref().unwrap_or(&self.endpoints)
    }
}

impl ServicePort {
    /// `namespace/name:port/protocol`, unique per node.
    pub fn key(&self) -> String {
        format!(
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port_name, self.protocol
        )
    }
}

/// The service ports the proxy programs, from the Services and Endpoints
/// the watches show: ExternalName Services and headless Services without
/// NodePorts are skipped; endpoints are matched to Service ports by name
/// and protocol, as the Endpoints controller writes them; only ready
/// addresses are kept; IPv6 addresses are skipped (the proxy is IPv4).
pub fn service_ports(
    services: &[impl Borrow<Service>],
    endpoints: &[impl Borrow<Endpoints>],
    node: &str,
) -> Vec<ServicePort> {
    let endpoints: BTreeMap<(&str, &str), &Endpoints> = endpoints
        .iter()
        .map(Borrow::borrow)
        .filter_map(|e| {
            let meta = e.metadata.as_ref()?;
            Some(((meta.namespace.as_str(), meta.name.as_str()), e))
        })
        .collect();
    let mut out = Vec::new();
    for service in services.iter().map(Borrow::borrow) {
        let (Some(meta), Some(spec)) = (&service.metadata, &service.spec) else {
            continue;
        };
        if spec.r#type == "ExternalName" {
            continue;
        }
        let cluster_ip = spec.cluster_ip.parse::<Ipv4Addr>().ok();
        let mut external_ips = skiff::pods::load_balancer_ips(service);
        external_ips.extend(
            spec.external_ips
                .iter()
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
        external_ips.sort();
        external_ips.dedup();
        let affinity = (spec.session_affinity == "ClientIP").then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let subsets = endpoints
            .get(&(meta.namespace.as_str(), meta.name.as_str()))
            .map(|e| e.subsets.as_slice())
            .unwrap_or_default();
        for port in &spec.ports {
            let protocol = if port.protocol.is_empty() {
                "tcp".to_string()
            } else {
                port.protocol.to_lowercase()
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let node_port = u16::try_from(port.node_port).ok().filter(|p| *p > 0);
            if cluster_ip.is_none() && node_port.is_none() && external_ips.is_empty() {
                continue;
            }
            let addresses = |only_here: bool| {
                let mut ready: Vec<SocketAddrV4> = subsets
                    .iter()
                    .flat_map(|subset| {
                        let target = subset.ports.iter().find(|p| {
                            p.name == port.name
                                && (p.protocol.is_empty() && protocol == "tcp"
                                    || p.protocol.eq_ignore_ascii_case(&protocol))
                        });
                        let target = target.and_then(|p| u16::try_from(p.port).ok());
                        subset
                            .addresses
                            .iter()
                            .filter(move |a| !only_here || a.node_name.as_deref() == Some(node))
                            .filter_map(move |a| {
                                Some(SocketAddrV4::new(a.ip.parse().ok()?, target?))
                            })
                    })
                    .collect();
                ready.sort();
                ready.dedup();
                ready
            };
            let ready = addresses(false);
            let local = (spec.external_traffic_policy == "Local"
                && (node_port.is_some() || !external_ips.is_empty()))
            .then(|| addresses(true));
            out.push(ServicePort {
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
                port_name: port.name.clone(),
                protocol,
                cluster_ip,
                port: number,
                node_port,
                external_ips: external_ips.clone(),
                affinity,
                endpoints: ready,
                local,
            });
        }
    }
    out.sort_by_key(ServicePort::key);
    out
}

/// What programs the node from the service ports.
#[async_trait::async_trait]
pub trait Backend: Send {
    /// Makes the node serve exactly `ports` (all of them, every time).
    async fn sync(&mut self, ports: &[ServicePort]) -> Result<(), String>;
}

/// Runs the proxy until dropped: syncs on every change of Services or
/// Endpoints (changes within `settle` are taken together) and every
/// `resync` anyway (repairing rules changed behind its back).
pub async fn run(
    services: (
        Store<Service>,
        tokio::sync::broadcast::Receiver<skiff_client::Change<Service>>,
    ),
    endpoints: (
        Store<Endpoints>,
        tokio::sync::broadcast::Receiver<skiff_client::Change<Endpoints>>,
    ),
    mut backend: Box<dyn Backend>,
    resync: Duration,
    node: String,
) {
    const SETTLE: Duration = Duration::from_millis(50);
    let (service_store, mut service_changes) = services;
    let (endpoint_store, mut endpoint_changes) = endpoints;
    service_store.wait_synced().await;
    endpoint_store.wait_synced().await;
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<ServicePort>> = None;
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => true,
            changed = service_changes.recv() => {
                if matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                false
            }
            changed = endpoint_changes.recv() => {
                if matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                false
            }
        };
        tokio::time::sleep(SETTLE).await;
        while service_changes.try_recv().is_ok() || endpoint_changes.try_recv().is_ok() {}
        let ports = service_ports(&service_store.list(), &endpoint_store.list(), &node);
        if !forced && last.as_ref() == Some(&ports) {
            continue;
        }
        let started = std::time::Instant::now();
        match backend.sync(&ports).await {
            Ok(()) => {
                tracing::debug!(ports = ports.len(), took = ?started.elapsed(), "service rules synced");
                last = Some(ports);
            }
            Err(e) => {
                tracing::warn!(error = %e, "programming services; retrying");
                last = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick.reset_immediately();
            }
        }
    }
}

#[cfg(test)]
mod tests;
