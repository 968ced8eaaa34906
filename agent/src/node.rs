//! The node's side of the node contract: register the Node (capacity,
//! addresses, system info, labels), renew its Lease, and keep its status
//! (Ready condition, heartbeat) current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::coordination::v1::{Lease, LeaseSpec};
use skiff::pb::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::{Api, Backoff};
use skiff_runtime::RuntimeInfo;

use crate::NODE_LEASE_NAMESPACE;

/// What the Node object says about this machine.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// Labels given on the command line (added to the defaults).
    pub labels: BTreeMap<String, String>,
    /// Annotations the agent keeps on its Node (where local-path volumes
    /// are made).
    pub annotations: BTreeMap<String, String>,
    /// The address the API server reaches the agent at.
    pub ip: String,
    /// The agent's gRPC port (logs).
    pub port: u16,
    /// The runtime's view of the host.
    pub runtime: RuntimeInfo,
    /// How many pods the node takes.
    pub max_pods: u32,
    /// How long the lease is valid (4 renew periods, like the kubelet's 40 s
    /// for 10 s renewals).
    pub lease_renew: Duration,
}

impl NodeFacts {
    /// What the node offers pods (its capacity and allocatable alike).
    pub fn resources(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpu".to_string(), self.runtime.cpus.max(1).to_string()),
            (
                "memory".to_string(),
                format!("{}Ki", (self.runtime.memory_bytes / 1024).max(1)),
            ),
            ("pods".to_string(), self.max_pods.to_string()),
        ])
    }

    fn status(&self, previous: Option<&NodeStatus>) -> NodeStatus {
        let now = skiff::time::now_seconds();
        let was_ready = previous
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
            .filter(|c| c.status == "True");
        NodeStatus {
            capacity: self.resources(),
            allocatable: self.resources(),
            conditions: vec![NodeCondition {
                r#type: "Ready".into(),
                status: "True".into(),
                reason: "KubeletReady".into(),
                message: "skiff agent is posting ready status".into(),
                last_heartbeat_time: Some(now),
                last_transition_time: was_ready.and_then(|c| c.last_transition_time).or(Some(now)),
            }],
            addresses: vec![
                NodeAddress {
                    r#type: "InternalIP".into(),
                    address: self.ip.clone(),
                },
                NodeAddress {
                    r#type: "Hostname".into(),
                    address: self.name.clone(),
                },
            ],
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.port),
                }),
            }),
            node_info: Some(NodeSystemInfo {
                kernel_version: self.runtime.kernel_version.clone(),
                os_image: self.runtime.os_image.clone(),
                container_runtime_version: self.runtime.version.clone(),
                kubelet_version: concat!("skiff/", env!("CARGO_PKG_VERSION")).into(),
                operating_system: std::env::consts::OS.into(),
                architecture: match std::env::consts::ARCH {
                    "x86_64" => "amd64".into(),
                    "aarch64" => "arm64".into(),
                    other => other.into(),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Creates the Node (or adopts the existing one, keeping its spec and
/// user labels) and posts its status.
///
/// # Errors
/// What the API said.
pub async fn register(api: &Api<Node>, facts: &NodeFacts) -> Result<(), tonic::Status> {
    let mut labels = BTreeMap::from([
        (skiff::names::HOSTNAME_LABEL.to_string(), facts.name.clone()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        (
            "kubernetes.io/arch".to_string(),
            facts
                .status(None)
                .node_info
                .map(|i| i.architecture)
                .unwrap_or_default(),
        ),
    ]);
    labels.extend(facts.labels.clone());
    let created = api
        .create(Node {
            metadata: Some(ObjectMeta {
                name: facts.name.clone(),
                labels: labels.clone(),
                annotations: facts.annotations.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let node = match created {
        Ok(node) => node,
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            let mut node = api.get("", &facts.name).await?;
            let meta = node.metadata.get_or_insert_with(Default::default);
            let before = (meta.labels.clone(), meta.annotations.clone());
            meta.labels.extend(labels);
            meta.annotations.extend(facts.annotations.clone());
            if (&meta.labels, &meta.annotations) != (&before.0, &before.1) {
                node = api.update(node).await?;
            }
            node
        }
        Err(s) => return Err(s),
    };
    post_status(api, facts, node).await
}

async fn post_status(
    api: &Api<Node>,
    facts: &NodeFacts,
    mut node: Node,
) -> Result<(), tonic::Status> {
    node.status = Some(facts.status(node.status.as_ref()));
    api.update_status(node).await.map(|_| ())
}

/// Creates or renews the lease of node `name` in `kube-node-lease`,
/// valid for 4 renewal periods (the kubelet's 40 s for 10 s renewals).
///
/// # Errors
/// What the API said.
pub async fn renew_lease(
    api: &Api<Lease>,
    name: &str,
    period: Duration,
) -> Result<(), tonic::Status> {
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some((period.as_secs() * 4).max(1) as i32),
        renew_time: Some(skiff::time::now()),
        ..Default::default()
    };
    match api.get(NODE_LEASE_NAMESPACE, name).await {
        Ok(mut lease) => {
            lease.spec = Some(spec);
            api.update(lease).await.map(|_| ())
        }
        Err(s) if s.code() == tonic::Code::NotFound => api
            .create(Lease {
                metadata: Some(ObjectMeta {
                    name: name.to_string(),
                    namespace: NODE_LEASE_NAMESPACE.into(),
                    ..Default::default()
                }),
                spec: Some(spec),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Err(s) => Err(s),
    }
}

/// Registers the node, retrying until the API answers, then renews the
/// lease every `lease_renew` and posts status every `status_every`.
/// Runs until dropped.
pub async fn run(
    nodes: Api<Node>,
    leases: Api<Lease>,
    facts: Arc<NodeFacts>,
    status_every: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while let Err(s) = register(&nodes, &facts).await {
        let delay = backoff.next_delay();
        tracing::warn!(node = %facts.name, status = %s, ?delay, "registering the node; retrying");
        tokio::time::sleep(delay).await;
    }
    tracing::info!(node = %facts.name, "node registered");
    let mut lease_tick = tokio::time::interval(facts.lease_renew);
    let mut status_tick = tokio::time::interval(status_every);
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(s) = renew_lease(&leases, &facts.name, facts.lease_renew).await {
                    tracing::warn!(node = %facts.name, status = %s, "renewing the node lease");
                }
            }
            _ = status_tick.tick() => {
                let result = match nodes.get("", &facts.name).await {
                    Ok(node) => post_status(&nodes, &facts, node).await,
                    // Deleted by someone: register again, as the kubelet does.
                    Err(s) if s.code() == tonic::Code::NotFound => register(&nodes, &facts).await,
                    Err(s) => Err(s),
                };
                if let Err(s) = result {
                    tracing::warn!(node = %facts.name, status = %s, "posting node status");
                }
            }
        }
    }
}
