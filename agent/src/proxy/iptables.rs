//! The iptables backend: kube-proxy's iptables mode, in chains of the
//! agent's own.
//!
//! Every chain is named `SKF-<node tag>-…` (the tag is a hash of the node
//! name, so several agents on one host, as in the tests, never touch each
//! other's rules). A sync reads the current rules (`iptables-save`),
//! renders the whole ruleset ([`render`], pure), and writes it with one
//! `iptables-restore --noflush`: declaring a chain flushes it, so the
//! result is exactly the rendered rules; chains of ours that are no longer
//! rendered are flushed and deleted; jumps from the built-in chains are
//! added when missing.
//!
//! The shape, per service port with ready endpoints (nat table):
//!
//! ```text
//! PREROUTING, OUTPUT ─► SERVICES ─ -d clusterIP --dport P ─► SVC-h
//!                                ─ -d lbIP --dport P ───────► EXT-h ─► MARK-MASQ, SVC-h
//!                                ─ dst local ─► NODEPORTS ─ --dport NP ─► EXT-h
//! SVC-h: from 127.0.0.0/8 → MARK-MASQ; ClientIP affinity (recent);
//!        one SEP per endpoint, chosen at random with equal odds
//! SEP-h: from itself (hairpin) → MARK-MASQ; DNAT to ip:port
//! POSTROUTING ─► POSTROUTING: marked → mark cleared, MASQUERADE
//! ```
//!
//! Connections to a ClusterIP are masqueraded only when they could not come
//! back otherwise: from loopback (a pod cannot answer 127.0.0.1) and
//! hairpin ones (a pod reaching itself through its Service). Everything
//! else keeps its source address, so pods see their real clients and the
//! host's connections to a ClusterIP cost one DNAT only (masquerading them
//! too halved the request rate in `skiff-bench proxy`, through port reuse
//! against the pod's TIME_WAIT sockets). NodePort and LoadBalancer
//! traffic is masqueraded, as kube-proxy does for
//! `externalTrafficPolicy: Cluster`; with `Local` it goes only to this
//! node's endpoints, unmasqueraded (marked to pass FORWARD), so pods see
//! their clients, and a node without one does not take it in.
//!
//! In the filter table, a service port with no ready endpoint is rejected
//! (connection refused at once, as kube-proxy does), and so is anything
//! else sent to the service range or the LoadBalancer pool, so traffic to
//! an address no rule claims never leaves the machine. NodePort traffic
//! is accepted in FORWARD ahead of Docker's isolation rules. Traffic from
//! other machines to loopback addresses (which `route_localnet` would
//! otherwise let in) is neither NATed nor accepted, as kube-proxy blocks
//! it, so loopback node ports and load balancer addresses stay local.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Backend, ServicePort};

/// The mark of connections to masquerade (a bit Docker does not use).
pub const MASQ_MARK: &str = "0x40000/0x40000";
/// The mark of outside connections to pass FORWARD without masquerading
/// (`externalTrafficPolicy: Local`: the pod sees its client).
pub const LOCAL_MARK: &str = "0x80000/0x80000";

/// The chain prefix of a node: `SKF-` and 6 hex digits of its name's hash.
pub fn prefix(node: &str) -> String {
    format!("SKF-{:06x}", fnv1a(node.as_bytes()) & 0xff_ffff)
}

/// FNV-1a, 64 bits: stable across builds and processes (chain names must
/// be the same after a restart, so no randomly keyed hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Chain names fit iptables' limit (28 characters): prefix (10) + `-SVC-`
/// + 12 hex digits.
fn chain(prefix: &str, kind: &str, key: &str) -> String {
    format!(
        "{prefix}-{kind}-{:012X}",
        fnv1a(key.as_bytes()) & 0xffff_ffff_ffff
    )
}

/// The ranges whose unclaimed addresses are refused.
#[derive(Debug, Clone, Default)]
pub struct Ranges {
    /// The service CIDR (`10.43.0.0/16`).
    pub service_cidr: Option<String>,
    /// The LoadBalancer pool (a CIDR or a range FIRST-LAST).
    pub lb_pool: Option<String>,
}

/// The chains of ours that exist now, per table, and the jumps to them
/// from the built-in chains (as `iptables-save` prints them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// nat chains with our prefix.
    pub nat: BTreeSet<String>,
    /// filter chains with our prefix.
    pub filter: BTreeSet<String>,
    /// `-A BUILTIN … -j OURS` lines, as `table:line`.
    pub jumps: BTreeSet<String>,
}

/// The jumps from built-in chains: (table, built-in chain, our chain).
fn jumps(prefix: &str) -> [(&'static str, &'static str, String); 7] {
    [
        ("nat", "PREROUTING", format!("{prefix}-SERVICES")),
        ("nat", "OUTPUT", format!("{prefix}-SERVICES")),
        ("nat", "POSTROUTING", format!("{prefix}-POSTROUTING")),
        ("filter", "FORWARD", format!("{prefix}-FORWARD")),
        ("filter", "FORWARD", format!("{prefix}-SERVICES")),
        ("filter", "OUTPUT", format!("{prefix}-SERVICES")),
        ("filter", "INPUT", format!("{prefix}-EXTERNAL")),
    ]
}

/// The rule line of a jump, as `iptables-save` prints it.
pub fn jump_rule(prefix: &str, builtin: &str, target: &str) -> String {
    format!("-A {builtin} -m comment --comment \"skiff {prefix}\" -j {target}")
}

/// Reads our chains and jumps out of `iptables-save` output.
pub fn parse_existing(prefix: &str, save: &str) -> Existing {
    let mut existing = Existing::default();
    let mut table = "";
    let ours = format!("{prefix}-");
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = if name == "nat" {
                "nat"
            } else if name == "filter" {
                "filter"
            } else {
                ""
            };
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&ours) {
                match table {
                    "nat" => existing.nat.insert(name.to_string()),
                    "filter" => existing.filter.insert(name.to_string()),
                    _ => false,
                };
            }
        } else if !table.is_empty()
            && line.starts_with("-A ")
            && !line.starts_with(&format!("-A {ours}"))
            && line.contains(&format!("--comment \"skiff {prefix}\" -j {ours}"))
        {
            existing.jumps.insert(format!("{table}:{line}"));
        }
    }
    existing
}

/// Rules of `chain` sending each connection to one of `seps` at random
/// with equal odds, and (with ClientIP affinity of `affinity` seconds) a
/// returning client to the one it had.
fn balance(nat: &mut String, chain: &str, seps: &[String], affinity: Option<u32>) {
    if let Some(seconds) = affinity {
        for sep in seps {
            let _ = writeln!(
                nat,
                "-A {chain} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {seconds} --reap -j {sep}"
            );
        }
    }
    let n = seps.len();
    for (i, sep) in seps.iter().enumerate() {
        if i + 1 < n {
            #[allow(clippy::cast_precision_loss)]
            let probability = 1.0 / (n - i) as f64;
            let _ = writeln!(
                nat,
                "-A {chain} -m statistic --mode random --probability {probability:.10} -j {sep}"
            );
        } else {
            let _ = writeln!(nat, "-A {chain} -j {sep}");
        }
    }
}

/// The `iptables-restore --noflush` input that makes the node serve
/// exactly `ports`.
pub fn render(prefix: &str, ports: &[ServicePort], ranges: &Ranges, existing: &Existing) -> String {
    let mut nat_chains = BTreeSet::new();
    let mut nat = String::new();
    let mut filter = String::new();
    let services = format!("{prefix}-SERVICES");
    let nodeports = format!("{prefix}-NODEPORTS");
    let masq = format!("{prefix}-MARK-MASQ");
    let postrouting = format!("{prefix}-POSTROUTING");
    for name in [&services, &nodeports, &masq, &postrouting] {
        nat_chains.insert(name.clone());
    }
    // route_localnet lets NATed loopback traffic out, and would let other
    // machines reach loopback addresses (CVE-2020-8558): traffic to
    // 127.0.0.0/8 from elsewhere is never NATed, and dropped below.
    let _ = writeln!(
        nat,
        "-A {services} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"loopback is for this host\" -j RETURN"
    );
    let _ = writeln!(nat, "-A {masq} -j MARK --set-xmark {MASQ_MARK}");
    let _ = writeln!(
        nat,
        "-A {postrouting} -m mark ! --mark {MASQ_MARK} -j RETURN"
    );
    // The mark is cleared before the masquerade, as kube-proxy does: a
    // packet that comes through this chain again (the outer packet of a
    // VXLAN-encapsulated one keeps its inner packet's mark) is not taken
    // for one to masquerade.
    let bit = MASQ_MARK.split_once('/').map_or(MASQ_MARK, |(bit, _)| bit);
    let _ = writeln!(nat, "-A {postrouting} -j MARK --xor-mark {bit}");
    // This host's own connections keep their source port when it is free
    // (one kernel hands out those ports, so their translations rarely
    // race as many sources' do): a client port reused toward the same
    // NodePort and endpoint is then the translated 4-tuple of its last
    // use, whose old conntrack entry the new SYN replaces. With a random
    // port per connection, localhost:NODEPORT to one pod fell from 4,883
    // to 975 requests/s after ~15 s of churn (`skiff-bench proxy --seconds
    // 15`; p99 0.5 s, the client resetting connections: SYNs answered by
    // stale state of other tuples, the exact path not pinned down).
    let _ = writeln!(
        nat,
        "-A {postrouting} -m addrtype --src-type LOCAL -j MASQUERADE"
    );
    let _ = writeln!(nat, "-A {postrouting} -j MASQUERADE --random-fully");

    let filter_services = format!("{prefix}-SERVICES");
    let external = format!("{prefix}-EXTERNAL");
    let forward = format!("{prefix}-FORWARD");
    let filter_chains: BTreeSet<String> = [&filter_services, &external, &forward]
        .into_iter()
        .cloned()
        .collect();
    let _ = writeln!(filter, "-A {forward} -m mark --mark {MASQ_MARK} -j ACCEPT");
    let _ = writeln!(filter, "-A {forward} -m mark --mark {LOCAL_MARK} -j ACCEPT");
    let _ = writeln!(
        filter,
        "-A {external} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment \"loopback is for this host\" -j DROP"
    );

    for port in ports {
        let key = port.key();
        let proto = &port.protocol;
        let comment = format!("-m comment --comment \"{key}\"");
        if port.endpoints.is_empty() {
            let reject = format!("{comment} -j REJECT");
            if let Some(ip) = port.cluster_ip {
                let _ = writeln!(
                    filter,
                    "-A {filter_services} -d {ip}/32 -p {proto} -m {proto} --dport {} {reject}",
                    port.port
                );
            }
            for ip in &port.external_ips {
                let _ = writeln!(
                    filter,
                    "-A {filter_services} -d {ip}/32 -p {proto} -m {proto} --dport {} {reject}",
                    port.port
                );
                let _ = writeln!(
                    filter,
                    "-A {external} -d {ip}/32 -p {proto} -m {proto} --dport {} {reject}",
                    port.port
                );
            }
            if let Some(node_port) = port.node_port {
                let _ = writeln!(
                    filter,
                    "-A {external} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port} {reject}"
                );
            }
            continue;
        }
        let svc = chain(prefix, "SVC", &key);
        let ext = chain(prefix, "EXT", &key);
        nat_chains.insert(svc.clone());
        if let Some(ip) = port.cluster_ip {
            let _ = writeln!(
                nat,
                "-A {services} -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j {svc}",
                port.port
            );
        }
        if !port.external_ips.is_empty() || port.node_port.is_some() {
            nat_chains.insert(ext.clone());
            match &port.local {
                // As kube-proxy with externalTrafficPolicy Cluster: traffic
                // from outside is masqueraded (its reply must come back
                // through this node), and the mark lets it pass FORWARD.
                None => {
                    let _ = writeln!(nat, "-A {ext} -j {masq}");
                    let _ = writeln!(nat, "-A {ext} -j {svc}");
                }
                // Local: this node's own connections (localhost, the
                // loopback pool) go to any endpoint, masqueraded (a pod
                // cannot answer 127.0.0.1), as kube-proxy does; the rest to
                // this node's endpoints only, its client address kept (the
                // reply leaves through this node anyway), and with none
                // here it is not taken in (refused in filter, below).
                Some(local) => {
                    let _ = writeln!(nat, "-A {ext} -m addrtype --src-type LOCAL -j {masq}");
                    let _ = writeln!(nat, "-A {ext} -m addrtype --src-type LOCAL -j {svc}");
                    if local.is_empty() {
                        for ip in &port.external_ips {
                            let _ = writeln!(
                                filter,
                                "-A {external} -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j REJECT",
                                port.port
                            );
                        }
                        if let Some(node_port) = port.node_port {
                            let _ = writeln!(
                                filter,
                                "-A {external} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport {node_port} {comment} -j REJECT"
                            );
                        }
                    } else {
                        let lcl = chain(prefix, "LCL", &key);
                        nat_chains.insert(lcl.clone());
                        let _ = writeln!(nat, "-A {ext} -j MARK --set-xmark {LOCAL_MARK}");
                        let _ = writeln!(nat, "-A {ext} -j {lcl}");
                        let seps: Vec<String> = local
                            .iter()
                            .map(|ep| chain(prefix, "SEP", &format!("{key}@{ep}")))
                            .collect();
                        balance(&mut nat, &lcl, &seps, port.affinity);
                    }
                }
            }
        }
        for ip in &port.external_ips {
            let _ = writeln!(
                nat,
                "-A {services} -d {ip}/32 -p {proto} -m {proto} --dport {} {comment} -j {ext}",
                port.port
            );
        }
        if let Some(node_port) = port.node_port {
            let _ = writeln!(
                nat,
                "-A {nodeports} -p {proto} -m {proto} --dport {node_port} {comment} -j {ext}"
            );
        }
        let _ = writeln!(nat, "-A {svc} -s 127.0.0.0/8 -j {masq}");
        let seps: Vec<String> = port
            .endpoints
            .iter()
            .map(|ep| chain(prefix, "SEP", &format!("{key}@{ep}")))
            .collect();
        balance(&mut nat, &svc, &seps, port.affinity);
        for (sep, ep) in seps.iter().zip(&port.endpoints) {
            nat_chains.insert(sep.clone());
            let _ = writeln!(nat, "-A {sep} -s {}/32 -j {masq}", ep.ip());
            let recent = if port.affinity.is_some() {
                format!("-m recent --name {sep} --mask 255.255.255.255 --rsource --set ")
            } else {
                String::new()
            };
            let _ = writeln!(
                nat,
                "-A {sep} -p {proto} {recent}-m {proto} -j DNAT --to-destination {ep}"
            );
        }
    }
    let _ = writeln!(
        nat,
        "-A {services} -m addrtype --dst-type LOCAL -j {nodeports}"
    );
    for range in [&ranges.service_cidr, &ranges.lb_pool]
        .into_iter()
        .flatten()
    {
        // A CIDR, or a range FIRST-LAST (LB pools may be either).
        let matches = if range.contains('-') {
            format!("-m iprange --dst-range {range}")
        } else {
            format!("-d {range}")
        };
        let _ = writeln!(
            filter,
            "-A {filter_services} {matches} -m comment --comment \"no service at this address\" -j REJECT"
        );
    }

    let mut out = String::new();
    for (table, chains, existing_chains, rules) in [
        ("nat", &nat_chains, &existing.nat, nat),
        ("filter", &filter_chains, &existing.filter, filter),
    ] {
        let _ = writeln!(out, "*{table}");
        let stale: Vec<&String> = existing_chains.difference(chains).collect();
        for name in chains.iter().chain(stale.iter().copied()) {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        out.push_str(&rules);
        for (jump_table, builtin, target) in jumps(prefix) {
            let line = jump_rule(prefix, builtin, &target);
            if jump_table == table && !existing.jumps.contains(&format!("{table}:{line}")) {
                let _ = writeln!(
                    out,
                    "-I {builtin} 1 -m comment --comment \"skiff {prefix}\" -j {target}"
                );
            }
        }
        for name in stale {
            let _ = writeln!(out, "-X {name}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The `iptables-restore --noflush` input that removes the rules and
/// chains in `existing`.
pub fn render_cleanup(existing: &Existing) -> String {
    let mut out = String::new();
    for (table, chains) in [("nat", &existing.nat), ("filter", &existing.filter)] {
        let _ = writeln!(out, "*{table}");
        for line in &existing.jumps {
            if let Some(rule) = line.strip_prefix(&format!("{table}:")) {
                let _ = writeln!(out, "{}", rule.replacen("-A ", "-D ", 1));
            }
        }
        for name in chains {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for name in chains {
            let _ = writeln!(out, "-X {name}");
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Whether iptables can be used here: the binaries answer and we may
/// read the nat table.
pub async fn available() -> bool {
    save().await.is_ok()
}

/// Why iptables could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command could not be run (missing, or its pipes failed).
    #[error("{what}: {source}")]
    Run {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{what}: {stderr}")]
    Refused {
        /// The command, or what it refused.
        what: String,
        /// What it printed.
        stderr: String,
    },
}

impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

/// The nat and filter tables as `iptables-save` prints them.
///
/// # Errors
/// iptables is missing or may not be read.
pub async fn save() -> Result<String, Error> {
    Ok(save_table("nat").await? + &save_table("filter").await?)
}

/// One table as `iptables-save` prints it.
///
/// # Errors
/// iptables is missing or may not be read.
pub async fn save_table(table: &str) -> Result<String, Error> {
    let output = tokio::process::Command::new("iptables-save")
        .args(["-t", table])
        .output()
        .await
        .map_err(|source| Error::Run {
            what: "running iptables-save",
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Refused {
            what: format!("iptables-save -t {table}"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Feeds `input` to `iptables-restore --noflush`.
///
/// # Errors
/// iptables refused the rules.
pub async fn restore(input: &str) -> Result<(), Error> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("iptables-restore")
        .args(["-w", "5", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| Error::Run {
            what: "running iptables-restore",
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|source| Error::Run {
                what: "writing to iptables-restore",
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Run {
            what: "waiting for iptables-restore",
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Refused {
            what: "iptables-restore refused the rules".into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Removes every rule and chain of the agent of node `node` (for a node
/// taken out of service, and for tests that started agents).
///
/// # Errors
/// iptables is not usable or refuses.
pub async fn cleanup(node: &str) -> Result<(), Error> {
    let prefix = prefix(node);
    let existing = parse_existing(&prefix, &save().await?);
    if existing == Existing::default() {
        return Ok(());
    }
    restore(&render_cleanup(&existing)).await
}

/// The iptables backend of one node.
pub struct Iptables {
    prefix: String,
    ranges: Ranges,
}

impl Iptables {
    /// The backend of node `node`. Lets packets from 127.0.0.1 be sent to
    /// pods once NATed (`route_localnet`, as kube-proxy sets it), so
    /// `localhost:NODEPORT` works.
    pub fn new(node: &str, ranges: Ranges) -> Self {
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
            tracing::warn!(error = %e, "cannot set route_localnet: localhost:NODEPORT will not answer");
        }
        Self {
            prefix: prefix(node),
            ranges,
        }
    }
}

#[async_trait::async_trait]
impl Backend for Iptables {
    async fn sync(&mut self, ports: &[ServicePort]) -> Result<(), String> {
        let existing = parse_existing(&self.prefix, &save().await?);
        Ok(restore(&render(&self.prefix, ports, &self.ranges, &existing)).await?)
    }
}
