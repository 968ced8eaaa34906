//! Hollow nodes: N simulated agents in one process.
//!
//! Each node registers (Node with capacity, Ready condition and system
//! info), renews its Lease in `kube-node-lease`, and marks the pods bound
//! to it Running, and finishes their graceful deletion. One pod watch serves every hollow node of the process
//! (the field selector `spec.nodeName!=` sends only bound pods), and a
//! bounded pool of workers writes their status.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Node, NodeCondition, NodeStatus,
    NodeSystemInfo, Pod, PodCondition, PodStatus,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource as _};
use skiff_client::watcher::{self, Event, Params};
use skiff_client::{Api, WorkQueue};

/// How to simulate the nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://127.0.0.1:6443` (`http://` when it runs
    /// `--insecure`).
    pub server: String,
    /// The CA to trust and the certificate to present (None: plaintext).
    pub tls: Option<skiff_client::ClientTls>,
    /// How many nodes.
    pub count: usize,
    /// Node names are this plus an index.
    pub prefix: String,
    /// Each node's CPU capacity.
    pub cpu: String,
    /// Each node's memory capacity.
    pub memory: String,
    /// Each node's pod capacity.
    pub pods: String,
    /// How often each node renews its lease.
    pub lease_renew: Duration,
    /// Concurrent writes (registrations, renewals, pod status).
    pub workers: usize,
}

impl Config {
    /// `count` nodes of 4 CPUs, 16 GiB and 110 pods, renewing every 10 s.
    pub fn new(server: &str, count: usize) -> Self {
        Self {
            server: server.to_string(),
            tls: None,
            count,
            prefix: "hollow-node-".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: "110".into(),
            lease_renew: Duration::from_secs(10),
            workers: 32,
        }
    }

    fn name(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }
}

/// Why the hollow nodes could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is malformed.
    #[error(transparent)]
    Address(#[from] skiff_client::AddressError),
    /// A node could not be registered.
    #[error("registering node {node}: {status}")]
    Register {
        /// The node.
        node: String,
        /// What the API said.
        status: tonic::Status,
    },
}

fn quantities(config: &Config) -> std::collections::BTreeMap<String, String> {
    [
        ("cpu", &config.cpu),
        ("memory", &config.memory),
        ("pods", &config.pods),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Registers (or re-registers) one node and reports it Ready.
async fn register(api: &Api<Node>, config: &Config, name: &str) -> Result<(), tonic::Status> {
    let created = api
        .create(Node {
            metadata: Some(ObjectMeta {
                name: name.to_string(),
                labels: [
                    (skiff::names::HOSTNAME_LABEL.to_string(), name.to_string()),
                    ("skiff.dev/hollow".to_string(), "true".to_string()),
                ]
                .into_iter()
                .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let node = match created {
        Ok(node) => node,
        Err(s) if s.code() == tonic::Code::AlreadyExists => api.get("", name).await?,
        Err(s) => return Err(s),
    };
    // Another writer (the controller manager giving it a podCIDR) may
    // change the Node meanwhile: read it again and retry.
    let mut node = node;
    for _ in 0..10 {
        match post_ready(api, config, node.clone()).await {
            Err(s) if s.code() == tonic::Code::Aborted => node = api.get("", name).await?,
            other => return other,
        }
    }
    post_ready(api, config, node).await
}

/// Posts a hollow node's Ready status on `node`.
async fn post_ready(api: &Api<Node>, config: &Config, mut node: Node) -> Result<(), tonic::Status> {
    let at = skiff::time::now();
    node.status = Some(NodeStatus {
        capacity: quantities(config),
        allocatable: quantities(config),
        conditions: vec![NodeCondition {
            r#type: "Ready".into(),
            status: "True".into(),
            reason: "KubeletReady".into(),
            message: "hollow node is posting ready status".into(),
            last_heartbeat_time: Some(at),
            last_transition_time: Some(at),
        }],
        node_info: Some(NodeSystemInfo {
            operating_system: std::env::consts::OS.into(),
            architecture: std::env::consts::ARCH.into(),
            container_runtime_version: "fake://0".into(),
            kubelet_version: concat!("skiff-hollow/", env!("CARGO_PKG_VERSION")).into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    api.update_status(node).await.map(|_| ())
}

/// Creates or renews one node's lease.
async fn renew(api: &Api<Lease>, config: &Config, name: &str) -> Result<(), tonic::Status> {
    crate::node::renew_lease(api, name, config.lease_renew).await
}

/// The status a hollow node reports for a pod it "runs".
fn running(pod: &Pod) -> PodStatus {
    let at = skiff::time::now();
    let condition = |kind: &str| PodCondition {
        r#type: kind.into(),
        status: "True".into(),
        last_transition_time: Some(at),
        ..Default::default()
    };
    let containers = pod
        .spec
        .as_ref()
        .map_or(&[][..], |s| s.containers.as_slice());
    PodStatus {
        phase: "Running".into(),
        conditions: ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|k| condition(k))
            .collect(),
        start_time: Some(at),
        container_statuses: containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                ready: true,
                started: Some(true),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(at),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Runs `config.count` hollow nodes until `shutdown` resolves.
///
/// # Errors
/// A bad address, or a node the API refuses to register.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let channel = skiff_client::connect_lazy_with(&config.server, config.tls.as_ref())?;
    let nodes = Api::<Node>::new(channel.clone());
    let leases = Api::<Lease>::new(channel.clone());
    let pods = Api::<Pod>::new(channel);
    let config = Arc::new(config);

    // Register every node, a bounded number at a time.
    let names: Vec<String> = (0..config.count).map(|i| config.name(i)).collect();
    let started = std::time::Instant::now();
    for chunk in names.chunks(config.workers.max(1)) {
        let results = futures::future::join_all(chunk.iter().map(|name| {
            let (nodes, leases, config) = (nodes.clone(), leases.clone(), Arc::clone(&config));
            async move {
                register(&nodes, &config, name).await?;
                renew(&leases, &config, name).await
            }
        }))
        .await;
        for (name, result) in chunk.iter().zip(results) {
            result.map_err(|status| Error::Register {
                node: name.clone(),
                status,
            })?;
        }
    }
    tracing::info!(nodes = config.count, elapsed = ?started.elapsed(), "hollow nodes registered");

    let ours: Arc<HashSet<String>> = Arc::new(names.iter().cloned().collect());
    let renewals = tokio::spawn(renew_forever(leases, Arc::clone(&config), names));
    let queue = WorkQueue::<ObjectRef>::new();
    let mut workers = Vec::new();
    let latest: Arc<std::sync::Mutex<std::collections::HashMap<ObjectRef, Pod>>> = Arc::default();
    for _ in 0..config.workers.max(1) {
        let (queue, pods, latest) = (queue.clone(), pods.clone(), Arc::clone(&latest));
        workers.push(tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                let pod = latest.lock().ok().and_then(|mut m| m.remove(&key));
                if let Some(mut pod) = pod {
                    let meta = pod.metadata.clone().unwrap_or_default();
                    let result = if meta.deletion_timestamp.is_some() {
                        // Nothing runs, so nothing to stop: finish the
                        // graceful deletion at once, as an agent would.
                        pods.delete(DeleteRequest {
                            namespace: meta.namespace,
                            name: meta.name,
                            grace_period_seconds: Some(0),
                            preconditions: Some(Preconditions {
                                uid: meta.uid,
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                    } else {
                        pod.status = Some(running(&pod));
                        pods.update_status(pod).await.map(|_| ())
                    };
                    match result {
                        Ok(_) => queue.forget(&key),
                        Err(s)
                            if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) =>
                        {
                            queue.forget(&key)
                        }
                        Err(s) => {
                            tracing::debug!(pod = %key, status = %s, "reporting Running; retrying");
                            queue.add_rate_limited(key.clone());
                        }
                    }
                }
                queue.done(&key);
            }
        }));
    }
    let mut events = watcher::watch(
        pods.clone(),
        Params {
            field_selector: "spec.nodeName!=".into(),
            ..Default::default()
        },
    );
    let mut offer = |pod: Pod| {
        let node = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
        let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
        let deleting = pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        if ours.contains(node) && (phase == "Pending" || deleting) {
            let key = pod.object_ref();
            if let Ok(mut m) = latest.lock() {
                m.insert(key.clone(), pod);
            }
            queue.add(key);
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            event = events.recv() => match event {
                Some(Event::Restarted(items)) => items.into_iter().for_each(&mut offer),
                Some(Event::Applied(pod)) => offer(pod),
                Some(Event::Deleted(_)) => {}
                None => break,
            },
        }
    }
    queue.shut_down();
    renewals.abort();
    for w in workers {
        w.abort();
    }
    Ok(())
}

/// Renews every node's lease each `lease_renew`, spread evenly over it.
async fn renew_forever(leases: Api<Lease>, config: Arc<Config>, names: Vec<String>) {
    let per_node = config.lease_renew / names.len().max(1) as u32;
    let mut tick = tokio::time::interval(per_node.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for name in names.iter().cycle() {
        tick.tick().await;
        let (leases, config, name) = (leases.clone(), Arc::clone(&config), name.clone());
        tokio::spawn(async move {
            if let Err(s) = renew(&leases, &config, &name).await {
                tracing::debug!(node = %name, status = %s, "renewing lease");
            }
        });
    }
}
