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

/// Whether `mac` is a unicast Ethernet address written `aa:bb:cc:dd:ee:ff`.
pub fn is_unicast_mac(mac: &str) -> bool {
    let octets: Vec<&str> = mac.split(':').collect();
    octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 0)
        && mac != "00:00:00:00:00:00"
}

/// This node, as [`peers`] judges the others against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// Its name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its block.
    pub pod_cidr: Ipv4Cidr,
    /// Its VXLAN device's MAC.
    pub vtep_mac: Option<String>,
}

/// The other nodes with an address and a block, oldest Node first.
///
/// Each node writes its own address and VXLAN MAC, so a node could claim
/// another's: a claim that collides with this node's or an older node's
/// block, address or MAC is left out (the older holder keeps it), and a
/// MAC that is not a unicast address is ignored. A node can only ever
/// misroute traffic for its own block, never receive another's.
pub fn peers<'a>(nodes: impl IntoIterator<Item = &'a Node>, me: &Me) -> Vec<Peer> {
    let mut nodes: Vec<&Node> = nodes.into_iter().collect();
    nodes.sort_by_key(|n| {
        let meta = n.metadata.as_ref();
        let created = meta
            .and_then(|m| m.creation_timestamp.as_ref())
            .map(|t| (t.seconds, t.nanos));
        (created, meta.map(|m| m.name.clone()))
    });
    let mut blocks = vec![me.pod_cidr];
    let mut addresses = BTreeSet::from([me.ip]);
    let mut macs: BTreeSet<String> = me.vtep_mac.iter().map(|m| m.to_lowercase()).collect();
    let mut out = Vec::new();
    for node in nodes {
        let Some(meta) = node.metadata.as_ref() else {
            continue;
        };
        if meta.name == me.name {
            continue;
        }
        let Some(pod_cidr) = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.parse::<Ipv4Cidr>().ok())
        else {
            continue;
        };
        let Some(ip) = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.iter().find(|a| a.r#type == "InternalIP"))
            .and_then(|a| a.address.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if blocks.iter().any(|b| b.overlaps(&pod_cidr)) || !addresses.insert(ip) {
            tracing::warn!(node = %meta.name, %ip, %pod_cidr, "a node claims a block or an address another node holds: not routed to");
            continue;
        }
        blocks.push(pod_cidr);
        let vtep_mac = meta
            .annotations
            .get(VTEP_MAC_ANNOTATION)
            .map(|m| m.to_lowercase())
            .filter(|m| is_unicast_mac(m))
            .filter(|m| {
                let fresh = macs.insert(m.clone());
                if !fresh {
                    tracing::warn!(node = %meta.name, mac = %m, "a node claims a VXLAN MAC another node holds: not tunnelled to");
                }
                fresh
            });
        out.push(Peer {
            name: meta.name.clone(),
            ip,
            pod_cidr,
            vtep_mac,
        });
    }
    out
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
    // Appended: the service proxy's rules (which refuse addresses no
    // Service holds) come first.
    let jump = |out: &mut String, table: &str, builtin: &str, target: &str| {
        let line = crate::proxy::iptables::jump_rule(prefix, builtin, target);
        if !existing.jumps.contains(&format!("{table}:{line}")) {
            let _ = writeln!(out, "{line}");
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
/// routes. Each entry on its own: one the kernel refuses (a peer's
/// gateway off the link) does not keep the others from being made.
///
/// # Errors
/// Every refusal, one per line (tried again on the next sync).
pub async fn apply(backend: Backend, plan: &Plan) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    if backend == Backend::Vxlan {
        let current: BTreeSet<(String, String)> =
            ip::neighbours(VXLAN_DEVICE).await?.into_iter().collect();
        for (addr, _) in current.difference(&plan.neighbours) {
            note(
                ip::run(&["neigh", "del", addr, "dev", VXLAN_DEVICE])
                    .await
                    .map(drop),
            );
        }
        for (addr, mac) in plan.neighbours.difference(&current) {
            let args = [
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                VXLAN_DEVICE,
                "nud",
                "permanent",
            ];
            note(ip::run(&args).await.map(drop));
        }
        let current: BTreeSet<(String, String)> =
            ip::fdb(VXLAN_DEVICE).await?.into_iter().collect();
        for (mac, dst) in current.difference(&plan.fdb) {
            let args = ["fdb", "del", mac, "dev", VXLAN_DEVICE, "dst", dst, "self"];
            note(ip::bridge(&args).await.map(drop));
        }
        // `replace`: one destination per MAC, never a copy to a second.
        for (mac, dst) in plan.fdb.difference(&current) {
            let args = [
                "fdb",
                "replace",
                mac,
                "dev",
                VXLAN_DEVICE,
                "dst",
                dst,
                "self",
                "permanent",
            ];
            note(ip::bridge(&args).await.map(drop));
        }
    }
    let current: BTreeSet<Route> = ip::routes().await?.into_iter().collect();
    let wanted: BTreeSet<&str> = plan.routes.iter().map(|r| r.dst.as_str()).collect();
    for route in &current {
        if !wanted.contains(route.dst.as_str()) {
            note(ip::delete_route(&route.dst).await);
        }
    }
    for route in plan.routes.difference(&current) {
        note(ip::replace_route(route).await);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
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
    /// This node's address.
    pub ip: Ipv4Addr,
    /// This node's VXLAN MAC.
    pub vtep_mac: Option<String>,
}

/// Keeps routes and rules in step with the Nodes: on a Node change that
/// changes what is wanted, and every 10 s (repairing what someone
/// removed). Returns why it stopped: this node's own block is no longer
/// the one its pods are on (its Node was deleted and registered again
/// with another), so the agent must start over.
pub async fn run(
    local: Local,
    nodes: Store<Node>,
    mut changes: tokio::sync::broadcast::Receiver<Change<Node>>,
) -> String {
    nodes.wait_synced().await;
    let prefix = chain_prefix(&local.node);
    let me = Me {
        name: local.node.clone(),
        ip: local.ip,
        pod_cidr: local.pod_cidr,
        vtep_mac: local.vtep_mac.clone(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    let mut applied: Option<Plan> = None;
    let mut forced = true;
    loop {
        let own = nodes
            .get("", &local.node)
            .and_then(|n| n.spec.as_ref().map(|s| s.pod_cidr.clone()))
            .and_then(|b| b.parse::<Ipv4Cidr>().ok());
        if let Some(own) = own.filter(|b| *b != local.pod_cidr) {
            return format!(
                "this node's podCIDR is now {own}, not the {} its pods are on (its Node was deleted and registered again): restart the agent",
                local.pod_cidr
            );
        }
        let listed = nodes.list();
        let peers = peers(listed.iter().map(|n| &**n), &me);
        let plan = plan(local.backend, &local.uplink, &peers);
        if forced || applied.as_ref() != Some(&plan) {
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
                .await?;
                Ok::<_, String>(())
            }
            .await;
            match result {
                Ok(()) => {
                    if !last_error.is_empty() {
                        tracing::info!("pod routes in step again");
                        last_error.clear();
                    }
                    applied = Some(plan);
                }
                Err(e) => {
                    if e != last_error {
                        tracing::warn!(error = %e, "programming the routes to other nodes' pods");
                        last_error = e;
                    }
                    applied = None;
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => forced = true,
            changed = changes.recv() => {
                forced = false;
                if matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return "the Node watch ended".into();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skiff::pb::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use skiff::pb::meta::v1::ObjectMeta;

    use super::*;

    fn me(name: &str) -> Me {
        Me {
            name: name.into(),
            ip: "192.168.250.11".parse().unwrap(),
            pod_cidr: "10.42.0.0/24".parse().unwrap(),
            vtep_mac: Some("aa:bb:cc:dd:ee:00".into()),
        }
    }

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
        let peers = peers(&nodes, &me("a"));
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
        let plan = plan(Backend::HostGw, "eth0", &peers(&nodes, &me("a")));
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
        let plan = plan(Backend::Vxlan, "eth0", &peers(&nodes, &me("a")));
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
            super::plan(Backend::None, "eth0", &peers(&nodes, &me("a"))),
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
            "-A POSTROUTING -m comment --comment \"skiff {prefix}\" -j {prefix}-POSTRTG"
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
        assert!(!again.contains("-A POSTROUTING"), "{again}");
        assert!(!again.contains("-A FORWARD"), "{again}");
    }

    fn created(mut node: Node, seconds: i64) -> Node {
        node.metadata
            .get_or_insert_with(Default::default)
            .creation_timestamp = Some(skiff::wkt::Timestamp { seconds, nanos: 0 });
        node
    }

    /// A node holding its own certificate writes its own annotations and
    /// addresses: claiming another node's VXLAN MAC would have every node
    /// send it a copy of that node's pods' traffic, and claiming its
    /// address or block would pull that traffic its way.
    #[test]
    fn attack_a_node_claims_another_nodes_vtep_mac_address_or_block() {
        let nodes = [
            created(
                node("b", "10.99.2.2", "10.42.1.0/24", Some("AA:BB:CC:DD:EE:01")),
                1,
            ),
            // Later, claiming b's MAC: tunnelled to with no MAC at all.
            created(
                node(
                    "evil",
                    "10.99.9.2",
                    "10.42.9.0/24",
                    Some("aa:bb:cc:dd:ee:01"),
                ),
                5,
            ),
            // Claiming this node's own MAC, or a multicast one.
            created(
                node(
                    "evil2",
                    "10.99.8.2",
                    "10.42.8.0/24",
                    Some("aa:bb:cc:dd:ee:00"),
                ),
                6,
            ),
            created(
                node(
                    "evil3",
                    "10.99.7.2",
                    "10.42.7.0/24",
                    Some("01:00:5e:00:00:01"),
                ),
                7,
            ),
            // Claiming b's address, or this node's block.
            created(
                node(
                    "evil4",
                    "10.99.2.2",
                    "10.42.6.0/24",
                    Some("aa:bb:cc:dd:ee:06"),
                ),
                8,
            ),
            created(
                node(
                    "evil5",
                    "10.99.5.2",
                    "10.42.0.0/24",
                    Some("aa:bb:cc:dd:ee:05"),
                ),
                9,
            ),
        ];
        let peers = peers(&nodes, &me("a"));
        let by_name: BTreeMap<&str, &Peer> = peers.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(by_name["b"].vtep_mac.as_deref(), Some("aa:bb:cc:dd:ee:01"));
        for name in ["evil", "evil2", "evil3"] {
            assert_eq!(by_name[name].vtep_mac, None, "{name}");
        }
        assert!(!by_name.contains_key("evil4") && !by_name.contains_key("evil5"));
        let plan = plan(Backend::Vxlan, "eth0", &peers);
        let macs: Vec<&String> = plan.fdb.iter().map(|(mac, _)| mac).collect();
        assert_eq!(
            macs,
            [&"aa:bb:cc:dd:ee:01".to_string()],
            "one destination per MAC"
        );
        assert!(is_unicast_mac("02:42:ac:11:00:02"));
        assert!(!is_unicast_mac("02:42:ac:11:00") && !is_unicast_mac("zz:42:ac:11:00:02"));
    }
}
