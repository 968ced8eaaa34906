//! The NetworkPolicy rules of one node, rendered from the cluster's pods,
//! namespaces and policies (pure: the tests read what it writes).
//!
//! In the filter table, in chains of the node's own (`SKP-<node tag>-…`):
//!
//! ```text
//! FORWARD (first) ─► FWD ─ established/related: RETURN
//!                        ─ -s local pod (egress-isolated) ─► OUT-h
//!                        ─ -d local pod (ingress-isolated) ─► IN-h
//! IN-h:  one rule per allowed (source, port): RETURN; then REJECT
//! OUT-h: one rule per allowed (destination, port): RETURN; then REJECT
//! ```
//!
//! A pod is isolated in a direction once a policy of its namespace selects
//! it with that policy type; what any of them allows passes (a union).
//! Replies and connections open before a policy came keep flowing
//! (conntrack), as Kubernetes asks. Traffic from the node itself (probes)
//! is not forwarded and so never filtered. A Service's traffic is judged
//! after its DNAT, by the pod it reaches. Peers: pods by labels (of the
//! policy's namespace, or of the namespaces a namespaceSelector picks),
//! address blocks less their exceptions; ports by number, range
//! (`endPort`) or a pod's named port.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use skiff::Resource as _;
use skiff::cidr::Ipv4Cidr;
use skiff::pb::core::v1::{Namespace, Pod};
use skiff::pb::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use skiff::selector::LabelSelector;
use skiff::wkt::value::Kind as ValueKind;

/// A pod as the rules see it.
#[derive(Debug, Clone)]
struct Member {
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: Ipv4Addr,
    node: String,
    /// Named container ports: name → (protocol, number).
    ports: BTreeMap<String, (String, u16)>,
    /// Being deleted: still isolated, never a peer (its address may soon
    /// be another pod's).
    terminating: bool,
}

impl Member {
    fn of(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref()?;
        if spec.host_network || matches!(status.phase.as_str(), "Succeeded" | "Failed") {
            return None;
        }
        let ip = status.pod_ip.parse().ok()?;
        let meta = pod.metadata.as_ref()?;
        let terminating = meta.deletion_timestamp.is_some();
        let ports = spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .flat_map(|c| &c.ports)
            .filter(|p| !p.name.is_empty())
            .filter_map(|p| {
                let number = u16::try_from(p.container_port).ok()?;
                let protocol = if p.protocol.is_empty() {
                    "TCP"
                } else {
                    &p.protocol
                };
                Some((p.name.clone(), (protocol.to_string(), number)))
            })
            .collect();
        Some(Self {
            namespace: meta.namespace.clone(),
            labels: meta.labels.clone().into_iter().collect(),
            ip,
            node: spec.node_name.clone(),
            ports,
            terminating,
        })
    }
}

/// Where traffic may come from or go to: an address block, or a pod (whose
/// named ports then mean something).
#[derive(Debug, Clone)]
enum Peer<'a> {
    Block(Ipv4Cidr),
    Pod(&'a Member),
}

impl Peer<'_> {
    fn cidr(&self) -> String {
        match self {
            Self::Block(cidr) => cidr.to_string(),
            Self::Pod(member) => format!("{}/32", member.ip),
        }
    }
}

/// What the rules are made from.
pub struct Cluster {
    members: Vec<Member>,
    /// Namespace name → its labels (with `kubernetes.io/metadata.name`).
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    policies: Vec<Arc<NetworkPolicy>>,
}

impl Cluster {
    /// The cluster as the caches show it.
    pub fn new(
        pods: &[Arc<Pod>],
        namespaces: &[Arc<Namespace>],
        policies: &[Arc<NetworkPolicy>],
    ) -> Self {
        let namespaces = namespaces
            .iter()
            .map(|ns| {
                let mut labels: BTreeMap<String, String> = ns
                    .metadata
                    .as_ref()
                    .map(|m| m.labels.clone().into_iter().collect())
                    .unwrap_or_default();
                labels.insert(
                    skiff::names::NAMESPACE_NAME_LABEL.into(),
                    ns.name().to_string(),
                );
                (ns.name().to_string(), labels)
            })
            .collect();
        Self {
            members: pods.iter().filter_map(|p| Member::of(p)).collect(),
            namespaces,
            policies: policies.to_vec(),
        }
    }
}

/// One direction of a pod's isolation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

fn selector(s: Option<&skiff::pb::meta::v1::LabelSelector>) -> Option<LabelSelector> {
    // Validation refused bad selectors; an unreadable one selects nothing.
    s.map_or(Some(LabelSelector::everything()), |s| {
        LabelSelector::try_from(s).ok()
    })
}

/// The peers a rule's list names (None: any).
fn peers<'a>(
    cluster: &'a Cluster,
    list: &[NetworkPolicyPeer],
    namespace: &str,
) -> Option<Vec<Peer<'a>>> {
    if list.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for peer in list {
        if let Some(block) = &peer.ip_block {
            let Ok(cidr) = Ipv4Cidr::parse_loose(&block.cidr) else {
                continue;
            };
            let except: Vec<Ipv4Cidr> = block
                .except
                .iter()
                .filter_map(|e| Ipv4Cidr::parse_loose(e).ok())
                .collect();
            out.extend(cidr.without(&except).into_iter().map(Peer::Block));
            continue;
        }
        let pods = match &peer.pod_selector {
            Some(s) => LabelSelector::try_from(s).ok(),
            None => Some(LabelSelector::everything()),
        };
        let Some(pods) = pods else { continue };
        let in_namespace = |ns: &str| match &peer.namespace_selector {
            None => ns == namespace,
            Some(s) => LabelSelector::try_from(s)
                .ok()
                .zip(cluster.namespaces.get(ns))
                .is_some_and(|(s, labels)| s.matches(labels)),
        };
        out.extend(
            cluster
                .members
                .iter()
                .filter(|m| !m.terminating && in_namespace(&m.namespace) && pods.matches(&m.labels))
                .map(Peer::Pod),
        );
    }
    Some(out)
}

/// `-p proto [--dport N[:M]]` for each port of a rule against a pod that
/// has `named` ports (None: every port); empty when none resolves.
fn port_matches(
    ports: &[NetworkPolicyPort],
    named: Option<&BTreeMap<String, (String, u16)>>,
) -> Option<Vec<String>> {
    if ports.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for port in ports {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        match port.port.as_ref().and_then(|v| v.kind.as_ref()) {
            None => out.push(format!("-p {}", protocol.to_lowercase())),
            Some(ValueKind::NumberValue(n)) => {
                // Validation keeps these in 1-65535; anything else would
                // make iptables refuse every rule of the node.
                if !(1.0..=65535.0).contains(n)
                    || port.end_port.is_some_and(|e| !(1..=65535).contains(&e))
                {
                    continue;
                }
                let start = *n as u32;
                match port.end_port {
                    Some(end) if end as u32 > start => out.push(format!(
                        "-p {} --dport {start}:{end}",
                        protocol.to_lowercase()
                    )),
                    _ => out.push(format!("-p {} --dport {start}", protocol.to_lowercase())),
                }
            }
            Some(ValueKind::StringValue(name)) => {
                if let Some((proto, number)) = named.and_then(|n| n.get(name))
                    && proto.eq_ignore_ascii_case(protocol)
                {
                    out.push(format!("-p {} --dport {number}", protocol.to_lowercase()));
                }
            }
            Some(_) => {}
        }
    }
    Some(out)
}

/// The rules of chain `name` for `pod` isolated in `direction` by
/// `policies` (those of its namespace selecting it with that type).
fn isolation_chain(
    cluster: &Cluster,
    pod: &Member,
    direction: Direction,
    policies: &[&NetworkPolicy],
) -> Vec<String> {
    let flag = match direction {
        Direction::Ingress => "-s",
        Direction::Egress => "-d",
    };
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |line: String, lines: &mut Vec<String>| {
        if seen.insert(line.clone()) {
            lines.push(line);
        }
    };
    for policy in policies {
        let spec = policy.spec.clone().unwrap_or_default();
        let rules: Vec<(&[NetworkPolicyPort], &[NetworkPolicyPeer])> = match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .map(|r| (r.ports.as_slice(), r.from.as_slice()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .map(|r| (r.ports.as_slice(), r.to.as_slice()))
                .collect(),
        };
        for (ports, list) in rules {
            let peers = peers(cluster, list, policy.namespace());
            match (direction, peers) {
                // Ingress: named ports are the isolated pod's own.
                (Direction::Ingress, peers) => {
                    let matches = port_matches(ports, Some(&pod.ports));
                    let sources: Vec<Option<String>> = match &peers {
                        None => vec![None],
                        Some(peers) => peers.iter().map(|p| Some(p.cidr())).collect(),
                    };
                    for source in sources {
                        let from = source.map(|s| format!(" {flag} {s}")).unwrap_or_default();
                        match &matches {
                            None => push(format!("{from} -j RETURN"), &mut lines),
                            Some(ms) => ms
                                .iter()
                                .for_each(|m| push(format!("{from} {m} -j RETURN"), &mut lines)),
                        }
                    }
                }
                // Egress: named ports are the destination pod's.
                (Direction::Egress, peers) => {
                    // To anywhere: numbered ports to any address, named
                    // ones to every pod that has them.
                    if peers.is_none() && ports.iter().any(is_named) {
                        let (named, numbered): (Vec<_>, Vec<_>) =
                            ports.iter().cloned().partition(is_named);
                        if let Some(ms) = port_matches(&numbered, None) {
                            ms.iter()
                                .for_each(|m| push(format!(" {m} -j RETURN"), &mut lines));
                        }
                        for member in cluster.members.iter().filter(|m| !m.terminating) {
                            let to = format!(" {flag} {}/32", member.ip);
                            for m in port_matches(&named, Some(&member.ports)).unwrap_or_default() {
                                push(format!("{to} {m} -j RETURN"), &mut lines);
                            }
                        }
                        continue;
                    }
                    let destinations: Vec<Option<Peer<'_>>> = match peers {
                        None => vec![None],
                        Some(peers) => peers.into_iter().map(Some).collect(),
                    };
                    for destination in destinations {
                        let named = match &destination {
                            Some(Peer::Pod(m)) => Some(&m.ports),
                            _ => None,
                        };
                        let to = destination
                            .as_ref()
                            .map(|d| format!(" {flag} {}", d.cidr()))
                            .unwrap_or_default();
                        match port_matches(ports, named) {
                            None => push(format!("{to} -j RETURN"), &mut lines),
                            Some(ms) => ms
                                .iter()
                                .for_each(|m| push(format!("{to} {m} -j RETURN"), &mut lines)),
                        }
                    }
                }
            }
        }
    }
    lines.push(" -p tcp -j REJECT --reject-with tcp-reset".into());
    lines.push(" -j REJECT --reject-with icmp-port-unreachable".into());
    lines
}

/// The chain of a local pod's isolation in one direction, named after
/// its address (unique among the node's live pods, so no two pods ever
/// share a chain): `SKP-<tag>-I-0A2A0005`.
fn pod_chain(prefix: &str, direction: Direction, ip: Ipv4Addr) -> String {
    let short = if direction == Direction::Ingress {
        "I"
    } else {
        "O"
    };
    format!("{prefix}-{short}-{:08X}", u32::from(ip))
}

fn is_named(port: &NetworkPolicyPort) -> bool {
    matches!(
        port.port.as_ref().and_then(|v| v.kind.as_ref()),
        Some(ValueKind::StringValue(_))
    )
}

/// The chain prefix of node `node`'s policy rules (`SKP-` and the tag
/// its proxy chains carry).
pub fn prefix(node: &str) -> String {
    let proxy = crate::proxy::iptables::prefix(node);
    proxy.replacen("SKF-", "SKP-", 1)
}

/// The jump from FORWARD, as `iptables-save` prints it.
pub fn jump(prefix: &str) -> String {
    format!("-A FORWARD -m comment --comment \"skiff {prefix}\" -j {prefix}-FWD")
}

/// The chains and rules of node `node` (chain name → its rule lines,
/// each starting with a space or empty), in order.
pub fn chains(cluster: &Cluster, node: &str) -> BTreeMap<String, Vec<String>> {
    let prefix = prefix(node);
    let forward = format!("{prefix}-FWD");
    let mut out = BTreeMap::new();
    let mut jumps = vec![" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_string()];
    let mut ingress_jumps = Vec::new();
    for pod in cluster.members.iter().filter(|m| m.node == node) {
        for direction in [Direction::Egress, Direction::Ingress] {
            let kind = if direction == Direction::Ingress {
                "Ingress"
            } else {
                "Egress"
            };
            let selecting: Vec<&NetworkPolicy> = cluster
                .policies
                .iter()
                .map(AsRef::as_ref)
                .filter(|p| p.namespace() == pod.namespace)
                .filter(|p| {
                    let spec = p.spec.as_ref();
                    spec.is_some_and(|s| s.policy_types.iter().any(|t| t == kind))
                        && selector(spec.and_then(|s| s.pod_selector.as_ref()))
                            .is_some_and(|s| s.matches(&pod.labels))
                })
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let flag = if direction == Direction::Ingress {
                "-d"
            } else {
                "-s"
            };
            let name = pod_chain(&prefix, direction, pod.ip);
            let jump = format!(" {flag} {}/32 -j {name}", pod.ip);
            if direction == Direction::Ingress {
                ingress_jumps.push(jump);
            } else {
                jumps.push(jump);
            }
            out.insert(name, isolation_chain(cluster, pod, direction, &selecting));
        }
    }
    // Egress checks first, then ingress: traffic between two isolated
    // pods of this node passes both.
    jumps.extend(ingress_jumps);
    out.insert(forward, jumps);
    out
}

/// Where our jump from FORWARD is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    /// Not there.
    Missing,
    /// First (only other nodes' policy jumps before it: their chains judge
    /// only their own pods).
    First,
    /// Behind rules that could accept what a policy refuses (Docker's, a
    /// service proxy's, put first after ours).
    Behind,
}

/// The `iptables-restore --noflush` input that makes the node's chains
/// exactly `chains`, deletes `existing` chains no longer wanted, and puts
/// the jump from FORWARD first when it is not.
pub fn render(
    prefix: &str,
    chains: &BTreeMap<String, Vec<String>>,
    existing: &BTreeSet<String>,
    jump_now: Jump,
) -> String {
    let mut out = String::from("*filter\n");
    for name in chains.keys() {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for (name, rules) in chains {
        for rule in rules {
            let _ = writeln!(out, "-A {name}{rule}");
        }
    }
    for stale in existing.iter().filter(|c| !chains.contains_key(*c)) {
        let _ = writeln!(out, "-F {stale}");
    }
    for stale in existing.iter().filter(|c| !chains.contains_key(*c)) {
        let _ = writeln!(out, "-X {stale}");
    }
    let rule = jump(prefix);
    if jump_now == Jump::Behind {
        let _ = writeln!(out, "{}", rule.replacen("-A ", "-D ", 1));
    }
    if jump_now != Jump::First {
        let _ = writeln!(out, "{}", rule.replacen("-A FORWARD", "-I FORWARD 1", 1));
    }
    out.push_str("COMMIT\n");
    out
}

/// Our chains and where our jump is, from `iptables-save -t filter`.
pub fn existing(prefix: &str, save: &str) -> (BTreeSet<String>, Jump) {
    let ours = format!(":{prefix}-");
    let chains = save
        .lines()
        .filter(|l| l.starts_with(&ours))
        .filter_map(|l| l[1..].split_whitespace().next())
        .map(str::to_string)
        .collect();
    let jump = jump(prefix);
    let mut state = Jump::Missing;
    let mut others_first = true;
    for line in save.lines().filter(|l| l.starts_with("-A FORWARD ")) {
        if line == jump {
            state = if others_first {
                Jump::First
            } else {
                Jump::Behind
            };
            break;
        }
        others_first &= line.contains(" -j SKP-");
    }
    (chains, state)
}

#[cfg(test)]
mod tests;
