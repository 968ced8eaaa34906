//! Routes to the other nodes' pods, and the masquerade of traffic leaving
//! the cluster: flannel's model, driven by the Node objects (each node's
//! InternalIP, `spec.podCIDR` and, for VXLAN, its device's MAC address in
//! [`super::VTEP_MAC_ANNOTATION`]).
//!
//! - `host-gw`: per node, `BLOCK via NODE_IP dev UPLINK` (nodes share a
//!   link).
//! - `vxlan`: per node, a permanent neighbour (the block's network address
//!   → the node's VXLAN MAC), a forwarding entry (that MAC → the node's
//!   address) and `BLOCK via BLOCK_NETWORK dev skiff.1 onlink`, in that
//!   order, so the kernel never has to ask.
//!
//! What is wanted is computed whole from the Nodes ([`plan`], pure) and
//! compared with what the kernel has (Skiff's routes carry their own
//! protocol number), on every Node change and every 10 s; a node that is
//! gone loses its entries. The masquerade rules ([`masquerade_rules`]):
//! pod to pod keeps its addresses; pods to the outside, and hosts to pods
//! of other nodes, are masqueraded; FORWARD accepts the cluster's traffic
//! (Docker's hosts drop forwarded packets by default).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use skiff::cidr::Ipv4Cidr;
use skiff::pb::core::v1::Node;
use skiff_client::{Change, Store};

use super::ip::{self, Route};
use super::{Backend, VTEP_MAC_ANNOTATION, VXLAN_DEVICE};

/// Another node, as routing to its pods needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its InternalIP.
    pub ip: Ipv4Addr,
    /// Its block.
    pub pod_cidr: Ipv4Cidr,
    /// Its VXLAN device's MAC, when it published one.
    pub vtep_mac: Option<String>,
}

/// The other nodes with an address and a block.
pub fn peers<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &str) -> Vec<Peer> {
    nodes
        .into_iter()
        .filter_map(|node| {
            let meta = node.metadata.as_ref()?;
            if meta.name == me {
                return None;
            }
            let pod_cidr = node.spec.as_ref()?.pod_cidr.parse().ok()?;
            let ip = node
                .status
                .as_ref()?
                .addresses
                .iter()
                .find(|a| a.r#type == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some(Peer {
                name: meta.name.clone(),
                ip,
                pod_cidr,
                vtep_mac: meta.annotations.get(VTEP_MAC_ANNOTATION).cloned(),
            })
        })
        .collect()
}

/// What the kernel should hold for `peers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes to their blocks.
    pub routes: BTreeSet<Route>,
    /// VXLAN neighbours: (block network address, MAC).
    pub neighbours: BTreeSet<(String, String)>,
    /// VXLAN forwarding entries: (MAC, node address).
    pub fdb: BTreeSet<(String, String)>,
}

/// The entries `backend` needs for `peers`, on uplink `uplink`. A VXLAN
/// peer that has not published its MAC yet is left out until it does.
pub fn plan(backend: Backend, uplink: &str, peers: &[Peer]) -> Plan {
    let mut plan = Plan::default();
    for peer in peers {
        match backend {
            Backend::None => {}
            Backend::HostGw => {
                plan.routes.insert(Route {
                    dst: peer.pod_cidr.to_string(),
                    gateway: peer.ip.to_string(),
                    dev: uplink.to_string(),
                    onlink: false,
                });
            }
            Backend::Vxlan => {
                let Some(mac) = &peer.vtep_mac else { continue };
                let network = peer.pod_cidr.network().to_string();
                plan.neighbours.insert((network.clone(), mac.clone()));
                plan.fdb.insert((mac.clone(), peer.ip.to_string()));
                plan.routes.insert(Route {
                    dst: peer.pod_cidr.to_string(),
                    gateway: network,
                    dev: VXLAN_DEVICE.to_string(),
                    onlink: true,
                });
            }
        }
    }
    plan
}

/// The chain prefix of node `node`'s network rules (`SKN-` and the hash
/// the proxy's `SKF-` chains use).
pub fn chain_prefix(node: &str) -> String {
    crate::proxy::iptables::prefix(node).replacen("SKF-", "SKN-", 1)
}

/// The `iptables-restore --noflush` input for the masquerade and forward
/// rules of a node with block `pod_cidr` in `cluster`; `existing` is what
/// `iptables-save` shows of our chains (jumps already there are not added
/// twice).
pub fn masquerade_rules(
    prefix: &str,
    cluster: Ipv4Cidr,
    pod_cidr: Ipv4Cidr,
    existing: &crate::proxy::iptables::Existing,
) -> String {
    let mut out = String::new();
    let post = format!("{prefix}-POSTRTG");
    let fwd = format!("{prefix}-FORWARD");
    let jump = |out: &mut String, table: &str, builtin: &str, target: &str| {
        let line = crate::proxy::iptables::jump_rule(prefix, builtin, target);
        if !existing.jumps.contains(&format!("{table}:{line}")) {
            let _ = writeln!(
                out,
                "-I {builtin} 1 -m comment --comment \"skiff {prefix}\" -j {target}"
            );
        }
    };
    let _ = writeln!(out, "*nat\n:{post} - [0:0]");
    let _ = writeln!(
        out,
        "-A {post} -s {cluster} -d {cluster} -m comment --comment \"pod to pod keeps its addresses\" -j RETURN"
    );
    let _ = writeln!(
        out,
        "-A {post} -s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"pods to the outside\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(out, "-A {post} ! -s {cluster} -d {pod_cidr} -j RETURN");
    let _ = writeln!(
        out,
        "-A {post} ! -s {cluster} -d {cluster} -m comment --comment \"hosts to pods of other nodes\" -j MASQUERADE --random-fully"
    );
    jump(&mut out, "nat", "POSTROUTING", &post);
    let _ = writeln!(out, "COMMIT\n*filter\n:{fwd} - [0:0]");
    let _ = writeln!(out, "-A {fwd} -s {cluster} -j ACCEPT");
    let _ = writeln!(out, "-A {fwd} -d {cluster} -j ACCEPT");
    jump(&mut out, "filter", "FORWARD", &fwd);
    out.push_str("COMMIT\n");
    out
}

/// Brings the kernel's entries to `plan`: stale ones removed, missing or
/// different ones (re)made — neighbours, then forwarding entries, then
/// routes.
///
/// # Errors
/// The first command the kernel refused (the rest are still tried on the
/// next sync).
pub async fn apply(backend: Backend, plan: &Plan) -> Result<(), String> {
    if backend == Backend::Vxlan {
        let current: BTreeSet<(String, String)> =
            ip::neighbours(VXLAN_DEVICE).await?.into_iter().collect();
        for (addr, _) in current.difference(&plan.neighbours) {
            ip::run(&["neigh", "del", addr, "dev", VXLAN_DEVICE]).await?;
        }
        for (addr, mac) in plan.neighbours.difference(&current) {
            ip::run(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                VXLAN_DEVICE,
                "nud",
                "permanent",
            ])
            .await?;
        }
        let current: BTreeSet<(String, String)> =
            ip::fdb(VXLAN_DEVICE).await?.into_iter().collect();
        for (mac, dst) in current.difference(&plan.fdb) {
            ip::bridge(&["fdb", "del", mac, "dev", VXLAN_DEVICE, "dst", dst, "self"]).await?;
        }
        for (mac, dst) in plan.fdb.difference(&current) {
            ip::bridge(&[
                "fdb",
                "append",
                mac,
                "dev",
                VXLAN_DEVICE,
                "dst",
                dst,
                "self",
                "permanent",
            ])
            .await?;
        }
    }
    let current: BTreeSet<Route> = ip::routes().await?.into_iter().collect();
    let wanted: BTreeSet<&str> = plan.routes.iter().map(|r| r.dst.as_str()).collect();
    for route in &current {
        if !wanted.contains(route.dst.as_str()) {
            ip::delete_route(&route.dst).await?;
        }
    }
    for route in plan.routes.difference(&current) {
        ip::replace_route(route).await?;
    }
    Ok(())
}

/// What the route keeper needs to know of this node.
#[derive(Debug, Clone)]
pub struct Local {
    /// The node's name.
    pub node: String,
    /// Between nodes.
    pub backend: Backend,
    /// The interface of the node's address.
    pub uplink: String,
    /// The whole cluster's pod addresses.
    pub cluster: Ipv4Cidr,
    /// This node's block.
    pub pod_cidr: Ipv4Cidr,
}

/// Keeps routes and rules in step with the Nodes until dropped: on every
/// change of a Node, and every 10 s (repairing what someone removed).
pub async fn run(
    local: Local,
    nodes: Store<Node>,
    mut changes: tokio::sync::broadcast::Receiver<Change<Node>>,
) {
    nodes.wait_synced().await;
    let prefix = chain_prefix(&local.node);
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        let listed = nodes.list();
        let peers = peers(listed.iter().map(|n| &**n), &local.node);
        let plan = plan(local.backend, &local.uplink, &peers);
        let result = async {
            apply(local.backend, &plan).await?;
            let existing = crate::proxy::iptables::parse_existing(
                &prefix,
                &crate::proxy::iptables::save().await?,
            );
            crate::proxy::iptables::restore(&masquerade_rules(
                &prefix,
                local.cluster,
                local.pod_cidr,
                &existing,
            ))
            .await
        }
        .await;
        match result {
            Ok(()) if !last_error.is_empty() => {
                tracing::info!("pod routes in step again");
                last_error.clear();
            }
            Ok(()) => {}
            Err(e) if e != last_error => {
                tracing::warn!(error = %e, "programming the routes to other nodes' pods");
                last_error = e;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = changes.recv() => {
                if matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use skiff::pb::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use skiff::pb::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, ip: &str, cidr: &str, mac: Option<&str>) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                annotations: mac
                    .map(|m| [(VTEP_MAC_ANNOTATION.to_string(), m.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                pod_cidr: cidr.into(),
                pod_cidrs: vec![cidr.into()],
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: vec![NodeAddress {
                    r#type: "InternalIP".into(),
                    address: ip.into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_an_address_and_a_block() {
        let nodes = [
            node("a", "192.168.250.11", "10.42.0.0/24", None),
            node(
                "b",
                "192.168.250.12",
                "10.42.1.0/24",
                Some("aa:bb:cc:dd:ee:01"),
            ),
            node("c", "192.168.250.13", "", None),
        ];
        let peers = peers(&nodes, "a");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "b");
        assert_eq!(peers[0].vtep_mac.as_deref(), Some("aa:bb:cc:dd:ee:01"));
    }

    #[test]
    fn host_gw_routes_each_block_via_its_node() {
        let nodes = [
            node("b", "192.168.250.12", "10.42.1.0/24", None),
            node("c", "192.168.250.13", "10.42.2.0/24", None),
        ];
        let plan = plan(Backend::HostGw, "eth0", &peers(&nodes, "a"));
        let routes: Vec<String> = plan
            .routes
            .iter()
            .map(|r| format!("{} via {} dev {}", r.dst, r.gateway, r.dev))
            .collect();
        assert_eq!(
            routes,
            [
                "10.42.1.0/24 via 192.168.250.12 dev eth0",
                "10.42.2.0/24 via 192.168.250.13 dev eth0"
            ]
        );
        assert!(plan.neighbours.is_empty() && plan.fdb.is_empty());
    }

    #[test]
    fn vxlan_needs_the_peers_mac_and_routes_onlink_through_the_device() {
        let nodes = [
            node("b", "10.99.2.2", "10.42.1.0/24", Some("aa:bb:cc:dd:ee:01")),
            node("c", "10.99.3.2", "10.42.2.0/24", None),
        ];
        let plan = plan(Backend::Vxlan, "eth0", &peers(&nodes, "a"));
        assert_eq!(plan.routes.len(), 1, "c has no MAC yet");
        let route = plan.routes.first().unwrap();
        assert_eq!(
            (
                route.dst.as_str(),
                route.gateway.as_str(),
                route.dev.as_str(),
                route.onlink
            ),
            ("10.42.1.0/24", "10.42.1.0", VXLAN_DEVICE, true)
        );
        assert!(
            plan.neighbours
                .contains(&("10.42.1.0".into(), "aa:bb:cc:dd:ee:01".into()))
        );
        assert!(
            plan.fdb
                .contains(&("aa:bb:cc:dd:ee:01".into(), "10.99.2.2".into()))
        );
        assert_eq!(
            super::plan(Backend::None, "eth0", &peers(&nodes, "a")),
            Plan::default()
        );
    }

    #[test]
    fn masquerade_keeps_pod_addresses_inside_the_cluster_only() {
        let prefix = chain_prefix("a");
        assert!(prefix.starts_with("SKN-"));
        let rules = masquerade_rules(
            &prefix,
            "10.42.0.0/16".parse().unwrap(),
            "10.42.1.0/24".parse().unwrap(),
            &Default::default(),
        );
        let post: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with(&format!("-A {prefix}-POSTRTG")))
            .collect();
        assert_eq!(post.len(), 4);
        assert!(post[0].contains("-s 10.42.0.0/16 -d 10.42.0.0/16") && post[0].ends_with("RETURN"));
        assert!(post[1].contains("! -d 224.0.0.0/4") && post[1].contains("MASQUERADE"));
        assert!(post[2].contains("! -s 10.42.0.0/16 -d 10.42.1.0/24"));
        assert!(rules.contains(&format!(
            "-I POSTROUTING 1 -m comment --comment \"skiff {prefix}\" -j {prefix}-POSTRTG"
        )));
        assert!(rules.contains(&format!("-A {prefix}-FORWARD -d 10.42.0.0/16 -j ACCEPT")));
        // Jumps already there are not added again.
        let existing = crate::proxy::iptables::parse_existing(
            &prefix,
            &format!(
                "*nat\n:{prefix}-POSTRTG - [0:0]\n{}\n*filter\n{}\n",
                crate::proxy::iptables::jump_rule(
                    &prefix,
                    "POSTROUTING",
                    &format!("{prefix}-POSTRTG")
                ),
                crate::proxy::iptables::jump_rule(&prefix, "FORWARD", &format!("{prefix}-FORWARD"))
            ),
        );
        let again = masquerade_rules(
            &prefix,
            "10.42.0.0/16".parse().unwrap(),
            "10.42.1.0/24".parse().unwrap(),
            &existing,
        );
        assert!(!again.contains("-I POSTROUTING"), "{again}");
        assert!(!again.contains("-I FORWARD"), "{again}");
    }
}
