//! The agent's configuration ([`Config`], [`RuntimeKind`]) and why it
//! could not start ([`Error`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{credentials, network, proxy};
use skiff::names::DEFAULT_SERVICE_CIDR;

/// Which runtime runs the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The Docker Engine on this machine.
    Docker,
    /// Host processes, for machines with no Docker engine.
    Process,
    /// Docker when an engine answers, else host processes (`skiff up`).
    Auto,
    /// Nothing runs: containers are records (a simulated node).
    Fake,
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://127.0.0.1:6443` (`http://` when it runs
    /// `--insecure`).
    pub server: String,
    /// A bootstrap token and the CA's pin, to join when no certificate is
    /// stored in the data dir yet.
    pub join: Option<credentials::JoinToken>,
    /// This node's name.
    pub node_name: String,
    /// Where pod volumes live.
    pub data_dir: PathBuf,
    /// Which runtime.
    pub runtime: RuntimeKind,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Where the agent's gRPC service listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address the API server reaches this node at (default: the
    /// listen address, or 127.0.0.1 when that is unspecified).
    pub node_ip: Option<String>,
    /// How often the lease is renewed (Kubernetes: 10 s).
    pub lease_renew: Duration,
    /// How often the node status is posted.
    pub status_every: Duration,
    /// How often the runtime is relisted to notice containers that died.
    pub relist_every: Duration,
    /// How often every pod is synced anyway (configMap and secret
    /// volumes follow their sources at this pace).
    pub resync_every: Duration,
    /// Crash backoff: first delay and cap (Kubernetes: 10 s, 5 min).
    pub backoff: (Duration, Duration),
    /// The Docker network pods attach to.
    pub network: String,
    /// How many pods the node takes.
    pub max_pods: u32,
    /// The program the process runtime starts its shims with (the agent's
    /// own binary, `skiff` or `skiff-agent`, run as `… shim DIR -- ARGV`).
    pub shim: Option<PathBuf>,
    /// How the service proxy programs this node.
    pub proxy: proxy::Mode,
    /// The service CIDR: its addresses no Service claims are refused by
    /// the proxy, so they never leave the machine.
    pub service_cidr: Option<String>,
    /// The LoadBalancer pool (CIDR or FIRST-LAST), refused alike where no
    /// Service holds the address (none: the pool is not known here).
    pub lb_pool: Option<String>,
    /// Whether the agent serves the cluster DNS to its pods (on the pod
    /// network's gateway, port [`Config::dns_port`]).
    pub cluster_dns: bool,
    /// The cluster DNS port (53; pods' resolv.conf cannot name another).
    pub dns_port: u16,
    /// How often the proxy rewrites its rules even with nothing changed
    /// (repairing drift).
    pub proxy_resync: Duration,
    /// How often container and node resource usage is sampled (usage is
    /// the rate between two samples).
    pub stats_every: Duration,
    /// The pod network: Docker's bridge network, or CNI routed between
    /// nodes.
    pub pod_network: network::Options,
}

impl Config {
    /// Defaults as the kubelet's, for node `node_name`.
    pub fn new(server: &str, node_name: &str, data_dir: PathBuf) -> Self {
        Self {
            server: server.to_string(),
            join: None,
            node_name: node_name.to_string(),
            data_dir,
            runtime: RuntimeKind::Docker,
            labels: BTreeMap::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 10250)),
            node_ip: None,
            lease_renew: Duration::from_secs(10),
            status_every: Duration::from_secs(10),
            relist_every: Duration::from_secs(1),
            resync_every: Duration::from_secs(10),
            backoff: (Duration::from_secs(10), Duration::from_secs(300)),
            network: "skiff".into(),
            max_pods: 110,
            shim: std::env::current_exe().ok(),
            proxy: proxy::Mode::Auto,
            service_cidr: Some(DEFAULT_SERVICE_CIDR.to_string()),
            lb_pool: None,
            cluster_dns: true,
            dns_port: 53,
            proxy_resync: Duration::from_secs(30),
            stats_every: Duration::from_secs(10),
            pod_network: network::Options::default(),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is malformed.
    #[error(transparent)]
    Address(#[from] skiff_client::AddressError),
    /// The container runtime did not answer or refused to set up.
    #[error("container runtime: {0}")]
    Runtime(#[from] skiff_runtime::Error),
    /// The data dir or the listen address is unusable.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The actor system did not start.
    #[error("starting the pod workers: {0}")]
    Thread(String),
    /// The service proxy cannot run in the mode asked.
    #[error("service proxy: {0}")]
    Proxy(String),
    /// The node has no certificate and cannot get one.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// The pod network cannot be set up.
    #[error("pod network: {0}")]
    Network(String),
}
