//! NetworkPolicy enforcement on this node, as kube-router's and Calico's
//! iptables engines do it: the rules ([`rules`]) for the pods bound here,
//! from every pod, namespace and policy of the cluster, rewritten whole
//! (one `iptables-restore`) whenever one of them changes and every 10 s,
//! so rules changed behind the agent's back are repaired. Runs beside the
//! iptables service proxy (root, kernel rules); the rules stay when the
//! agent stops, as the proxy's do, so isolation does not lapse across a
//! restart; `skiff agent --cleanup-proxy` removes them with the proxy's.

use std::time::Duration;

use skiff::pb::core::v1::{Namespace, Pod};
use skiff::pb::networking::v1::NetworkPolicy;
use skiff_client::{Api, Informer};

use crate::proxy::iptables::{self, Error};

pub mod rules;

/// How often the rules are rewritten without a change (repairing rules
/// changed behind the agent's back, and the jump's place).
const RESYNC: Duration = Duration::from_secs(10);

/// Enforces the policies for node `node` until dropped (the caller aborts
/// the task).
pub async fn run(node: String, channel: tonic::transport::Channel) {
    // Pods on one bridge reach each other without routing: only with
    // br_netfilter's hook do their packets meet FORWARD.
    bridge_netfilter().await;
    let pods: Informer<Pod> = Informer::start(Api::new(channel.clone()), Default::default());
    let namespaces: Informer<Namespace> =
        Informer::start(Api::new(channel.clone()), Default::default());
    let policies: Informer<NetworkPolicy> = Informer::start(Api::new(channel), Default::default());
    let (mut pod_changes, mut ns_changes, mut policy_changes) = (
        pods.subscribe(),
        namespaces.subscribe(),
        policies.subscribe(),
    );
    pods.store.wait_synced().await;
    namespaces.store.wait_synced().await;
    policies.store.wait_synced().await;
    let prefix = rules::prefix(&node);
    tracing::info!(chains = %prefix, "network policies: iptables");
    let mut last = String::new();
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        let cluster = rules::Cluster::new(
            &pods.store.list(),
            &namespaces.store.list(),
            &policies.store.list(),
        );
        let chains = rules::chains(&cluster, &node);
        match sync(&prefix, &chains, &mut last).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "writing the network policy rules (retried)"),
        }
        tokio::select! {
            _ = pod_changes.recv() => {}
            _ = ns_changes.recv() => {}
            _ = policy_changes.recv() => {}
            _ = resync.tick() => { last.clear(); }
        }
        // Changes that come together make one rewrite.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while pod_changes.try_recv().is_ok() {}
        while ns_changes.try_recv().is_ok() {}
        while policy_changes.try_recv().is_ok() {}
    }
}

/// Makes the node's chains `chains` unless they are what was last written
/// (`last`, cleared to force a rewrite).
async fn sync(
    prefix: &str,
    chains: &std::collections::BTreeMap<String, Vec<String>>,
    last: &mut String,
) -> Result<(), Error> {
    let wanted = format!("{chains:?}");
    if *last == wanted {
        return Ok(());
    }
    let save = iptables::save_table("filter").await?;
    let (existing, jump) = rules::existing(prefix, &save);
    if jump == rules::Jump::Behind {
        tracing::info!("network policy jump put back first in FORWARD");
    }
    iptables::restore(&rules::render(prefix, chains, &existing, jump)).await?;
    *last = wanted;
    Ok(())
}

/// Removes node `node`'s policy chains and their jump.
///
/// # Errors
/// iptables is not usable or refuses.
pub async fn cleanup(node: &str) -> Result<(), Error> {
    let prefix = rules::prefix(node);
    let (existing, jump) = rules::existing(&prefix, &iptables::save_table("filter").await?);
    if existing.is_empty() && jump == rules::Jump::Missing {
        return Ok(());
    }
    let mut input = String::from("*filter\n");
    if jump != rules::Jump::Missing {
        input.push_str(&rules::jump(&prefix).replacen("-A ", "-D ", 1));
        input.push('\n');
    }
    for chain in &existing {
        input.push_str(&format!("-F {chain}\n"));
    }
    for chain in &existing {
        input.push_str(&format!("-X {chain}\n"));
    }
    input.push_str("COMMIT\n");
    iptables::restore(&input).await
}

/// Turns on br_netfilter's hook (loading the module when needed): without
/// it, pods on one bridge reach each other without meeting FORWARD, and
/// policies between them do not hold.
async fn bridge_netfilter() {
    const SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if !std::path::Path::new(SYSCTL).exists() {
        let _ = tokio::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .await;
    }
    let set = std::fs::write(SYSCTL, "1").is_ok()
        && std::fs::read_to_string(SYSCTL).is_ok_and(|v| v.trim() == "1");
    if !set {
        tracing::error!(
            "br_netfilter is not available ({SYSCTL}): NetworkPolicies do not hold between pods of one bridge"
        );
    }
}
