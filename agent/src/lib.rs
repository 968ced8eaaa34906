//! Skiff's node agent (its kubelet): makes the node's containers match the
//! pods bound to it, and reports what is true.
//!
//! # Layout
//!
//! - `config`: the agent's [`Config`] and why it could not start ([`Error`]).
//! - [`credentials`]: the node's certificate: joining with a bootstrap
//!   token, keeping it, rotating it.
//! - [`node`]: registers the Node, renews its Lease, posts its status.
//! - [`manager`]: the pod manager actor: one [`worker`] per pod, woken by
//!   the pod watch and by a relist of the runtime every second.
//! - [`worker`]: the pod worker actor: sandbox, volumes, init containers,
//!   containers, restarts with crash backoff, graceful stop, status.
//! - [`containers`]: pod container → runtime spec (env, mounts, limits).
//! - [`volumes`]: emptyDir, hostPath, configMap, secret and projected
//!   volumes, and the directories of persistentVolumeClaims' volumes.
//! - [`sources`]: what pods read from the API for their volumes and env
//!   (ConfigMaps, Secrets, Services, projected tokens).
//! - [`fieldpath`]: the downward API's field paths and resource fields,
//!   for env and volumes alike.
//! - [`storage`]: where local-path volumes are made on this node, and
//!   their removal once deleted.
//! - [`subpath`]: paths under a volume a pod cannot redirect (subPath
//!   mounts pinned by bind mounts, projected files written beneath).
//! - [`status`]: the pod status from what the runtime shows.
//! - [`prober`]: liveness, readiness and startup probes.
//! - [`server`]: the agent's gRPC service (logs, exec, stats), which the
//!   API server proxies to.
//! - [`stats`]: container and node resource usage sampling.
//! - [`network`]: the pod network under CNI: the node's podCIDR on a
//!   bridge, routes to other nodes' pods (host-gw, VXLAN), masquerade.
//! - [`hollow`]: simulated nodes for scale tests.
//!
//! Restart safety: the agent keeps nothing on disk about its pods; every
//! container carries labels naming its pod, container and attempt, so a
//! restarted agent adopts what runs (same ids, same restart counts) and
//! removes what belongs to pods deleted meanwhile.

mod config;
pub mod containers;
pub mod credentials;
pub mod dns;
pub mod fieldpath;
pub mod hollow;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod netpol;
pub mod network;
pub mod node;
pub mod prober;
pub mod proxy;
pub mod security;
pub mod server;
pub mod sources;
pub mod stats;
pub mod status;
pub mod storage;
pub mod subpath;
pub mod volumes;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor as _;
use skiff::pb::agent::v1::agent_server::AgentServer;
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{ConfigMap, Endpoints, Node, Pod, Secret, Service};
use skiff_client::watcher::Params;
use skiff_client::{Api, Informer};
use skiff_runtime::docker::PodNetwork;
use skiff_runtime::{DockerRuntime, FakeRuntime, ProcessRuntime, Runtime};

pub use config::{Config, Error, RuntimeKind};
pub use skiff::names::{DEFAULT_SERVICE_CIDR, NODE_LEASE_NAMESPACE};

/// Runs the agent until `shutdown` resolves. Pods keep running when the
/// agent stops (as with the kubelet); a restarted agent adopts them.
///
/// # Errors
/// A bad address, an unusable data dir or listen address, or a runtime
/// that does not answer.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    std::fs::create_dir_all(config.data_dir.join("pods")).map_err(io("creating the data dir"))?;
    // Pods' emptyDirs are open to any uid a container runs as, and their
    // secrets readable: the host's other users stay out (as the kubelet's
    // pods directory does).
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            config.data_dir.join("pods"),
            std::fs::Permissions::from_mode(0o750),
        )
        .map_err(io("restricting the pods dir"))?;
    }
    let storage_root = std::path::absolute(storage::root(&config.data_dir))
        .map_err(io("resolving the local-path storage dir"))?;
    std::fs::create_dir_all(&storage_root).map_err(io("creating the local-path storage dir"))?;
    let credentials = if config.server.starts_with("https://") {
        Some(
            credentials::Credentials::obtain(
                &config.server,
                &config.node_name,
                &config.data_dir,
                config.join.as_ref(),
            )
            .await?,
        )
    } else {
        tracing::warn!(server = %config.server, "plaintext: the agent neither proves who it is nor checks the server (--insecure cluster)");
        None
    };
    // Who the cluster is, for the labels of the node's containers: its
    // CA, or (plaintext) its server, as first seen: kept in the data dir,
    // so a restart with the servers listed otherwise (or a new CA) is the
    // same cluster.
    let cluster_file = config.data_dir.join("cluster-id");
    let cluster = match std::fs::read_to_string(&cluster_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = match &credentials {
                Some(c) => skiff_pki::spki_hash(&c.ca_pem).map_err(credentials::Error::from)?,
                None => format!("plaintext {}", config.server),
            };
            skiff_pki::ca::write_atomic(&cluster_file, &id, 0o644).map_err(|e| Error::Io {
                what: format!("writing {}", cluster_file.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
            id
        }
    };
    let (runtime, cni) = open_runtime(&config, &cluster).await?;
    let client_tls = credentials
        .as_ref()
        .map(credentials::Credentials::client)
        .transpose()?;
    let channel = skiff_client::connect_lazy_with(&config.server, client_tls.as_ref())?;
    let rotation = credentials
        .clone()
        .map(|c| AbortOnDrop(vec![tokio::spawn(c.rotate(channel.clone()))]));
    let pods = Api::<Pod>::new(channel.clone());

    let informer = Informer::start(
        pods.clone(),
        Params {
            field_selector: format!("spec.nodeName={}", config.node_name),
            ..Default::default()
        },
    );
    let mut changes = informer.subscribe();

    // Services first: a proxy mode that cannot run ends the agent before
    // it registers anything.
    // Their tasks end with `service_tasks`, also on the error paths below.
    let services = ServiceFeeds::start(&config, &channel);
    let mut service_tasks = AbortOnDrop(Vec::new());
    service_tasks
        .0
        .extend(start_proxy(&config, runtime.scheme(), services.as_ref(), &channel).await?);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(&format!("listening on {}", config.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(io("reading the listen address"))?;
    // The node's address: --node-ip, else the one it listens on, else
    // (listening on all) the address of the interface of its default
    // route, as the kubelet finds it; loopback when there is none.
    let node_ip = match (&config.node_ip, bound.ip().is_unspecified()) {
        (Some(ip), _) => ip.clone(),
        (None, false) => bound.ip().to_string(),
        (None, true) => match network::ip::default_route_address().await {
            Some(ip) => ip.to_string(),
            None => {
                tracing::warn!(
                    "no IPv4 default route to find this node's address by: using 127.0.0.1 (give --node-ip)"
                );
                "127.0.0.1".to_string()
            }
        },
    };
    // Under CNI with VXLAN, the device exists before the Node is
    // registered: its MAC goes on the Node for the other nodes. A node
    // with no address other nodes can reach (loopback) routes nothing.
    let uplink = match &cni {
        Some(_) => Some(network::uplink(&config, &node_ip).await?),
        None => None,
    };
    let backend = match &uplink {
        Some((_, Some(_))) => config.pod_network.backend,
        _ => network::Backend::None,
    };
    let mut annotations = BTreeMap::from([(
        skiff::names::LOCAL_PATH_ROOT_ANNOTATION.to_string(),
        storage_root.display().to_string(),
    )]);
    let mut vtep_mac = None;
    if let Some((uplink, Some(ip))) = &uplink
        && backend == network::Backend::Vxlan
    {
        let mac = network::ip::ensure_vxlan(
            network::VXLAN_DEVICE,
            network::VNI,
            *ip,
            &uplink.name,
            network::VXLAN_PORT,
            network::pod_mtu(uplink, network::Backend::Vxlan),
        )
        .await
        .map_err(Error::Network)?;
        annotations.insert(network::VTEP_MAC_ANNOTATION.to_string(), mac.clone());
        vtep_mac = Some(mac);
    }
    // Tasks of the node, stopped however `run` ends (an error below too).
    let mut node_tasks = AbortOnDrop(Vec::new());
    let usage = stats::Latest::default();
    node_tasks.0.push(tokio::spawn(
        stats::Sampler::new(Arc::clone(&runtime), &config.node_name, usage.clone())
            .run(config.stats_every),
    ));
    let service = server::AgentService {
        pods: informer.store.clone(),
        runtime: Arc::clone(&runtime),
        usage,
        stats_every: config.stats_every,
    };
    // Over TLS the agent serves with its own certificate and only the
    // API server (or an admin) may call it.
    let server_tls = credentials
        .as_ref()
        .map(|c| {
            skiff_pki::tls::ServerTls::with_identity(
                c.identity.clone(),
                &c.ca_pem,
                skiff_pki::tls::ClientCerts::Required,
            )
        })
        .transpose()
        .map_err(credentials::Error::from)?;
    let sockets = tokio_stream::StreamExt::filter_map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        Result::ok,
    );
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(skiff_telemetry::GrpcTraceLayer)
            .layer(server::ApiServerOnly {
                enforce: server_tls.is_some(),
            })
            .add_service(AgentServer::new(service))
            .serve_with_incoming(skiff_pki::tls::handshakes(
                sockets,
                server_tls,
                skiff_pki::tls::HandshakeLimits::default(),
            )),
    );
    node_tasks.0.push(tokio::spawn(async move {
        let _ = grpc.await;
    }));
    tracing::info!(node = %config.node_name, address = %bound, "agent service listening");

    let facts = Arc::new(node::NodeFacts {
        name: config.node_name.clone(),
        labels: config.labels.clone(),
        annotations,
        ip: node_ip.clone(),
        port: bound.port(),
        runtime: runtime.info().await?,
        max_pods: config.max_pods,
        lease_renew: config.lease_renew,
    });
    let allocatable = facts.resources();
    node_tasks.0.push(tokio::spawn(node::run(
        Api::<Node>::new(channel.clone()),
        Api::<Lease>::new(channel.clone()),
        facts,
        config.status_every,
    )));

    // Under CNI, pods wait for the node's block: then the bridge, the
    // CNI network, what a crash left half-made undone, and the routes.
    let mut network_task = None;
    if let (Some(docker), Some((uplink, ip))) = (&cni, &uplink) {
        let local = network::routes::Local {
            node: config.node_name.clone(),
            backend,
            uplink: uplink.name.clone(),
            cluster: config.pod_network.cluster_cidr,
            pod_cidr: config.pod_network.cluster_cidr,
            ip: ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            vtep_mac,
        };
        tokio::select! {
            started = network::start(&config, &channel, docker, uplink, local) => {
                network_task = Some(started?);
            }
            () = &mut shutdown => return Ok(()),
        }
    }
    let (dns, cluster_dns) = start_dns(&config, runtime.as_ref(), services.as_ref()).await?;
    service_tasks.0.extend(dns);

    let local_volumes = storage::start(channel.clone(), config.node_name.clone(), storage_root);
    let shared = Arc::new(worker::Shared {
        runtime: Arc::clone(&runtime),
        pods,
        sources: sources::Sources {
            configmaps: Api::<ConfigMap>::new(channel.clone()),
            secrets: Api::<Secret>::new(channel.clone()),
            services: Api::new(channel.clone()),
            tokens: sources::Tokens::new(channel.clone()),
            claims: Api::new(channel.clone()),
            volumes: Api::new(channel.clone()),
        },
        recorder: skiff_client::events::Recorder::new(channel, "kubelet"),
        node_name: config.node_name.clone(),
        node_ip,
        allocatable,
        data_dir: config.data_dir.clone(),
        backoff: config.backoff,
        cluster_dns,
        upstream_dns: dns::host_nameservers(),
    });
    let (system, manager) = start_system(shared, informer.store.clone(), config.resync_every)?;

    // Feed the manager: pod changes, and a relist of the runtime.
    let store = informer.store.clone();
    let feed_addr = manager.clone();
    let feed = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match changes.recv().await {
                Ok(change) => feed_addr.do_send(manager::PodChanged(change)),
                Err(RecvError::Lagged(_)) => {
                    for pod in store.list() {
                        feed_addr.do_send(manager::PodChanged(skiff_client::Change::Applied(pod)));
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let relist_addr = manager.clone();
    let relist_runtime = Arc::clone(&runtime);
    let relist_every = config.relist_every;
    let relist = tokio::spawn(async move {
        let mut tick = tokio::time::interval(relist_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match relist_runtime.list(None).await {
                Ok(containers) => {
                    metrics::relisted(&containers);
                    relist_addr.do_send(manager::Relisted(containers));
                }
                Err(e) => tracing::warn!(error = %e, "relisting containers"),
            }
        }
    });

    // Until asked to stop, or the pod network can no longer go on.
    let failed = match network_task.as_mut() {
        Some(task) => tokio::select! {
            () = &mut shutdown => None,
            ended = task => Some(ended.unwrap_or_else(|e| e.to_string())),
        },
        None => {
            (&mut shutdown).await;
            None
        }
    };
    tracing::info!(node = %config.node_name, "agent stopping; pods keep running");
    for task in [feed, relist, local_volumes] {
        task.abort();
    }
    drop(node_tasks);
    drop(rotation);
    // The proxy's rules stay: connections through Services outlive the
    // agent, and the next agent takes the rules over.
    drop(service_tasks);
    drop(services);
    drop(manager);
    system.stop();
    drop(informer);
    match failed {
        Some(why) => Err(Error::Network(why)),
        None => Ok(()),
    }
}

/// Tasks aborted when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The Service and Endpoints caches the proxy and the cluster DNS read.
struct ServiceFeeds {
    services: Informer<Service>,
    endpoints: Informer<Endpoints>,
}

impl ServiceFeeds {
    /// Watches Services and Endpoints when the proxy or the DNS needs them.
    fn start(config: &Config, channel: &tonic::transport::Channel) -> Option<Self> {
        let needed = config.runtime != RuntimeKind::Fake
            && (config.proxy != proxy::Mode::None || config.cluster_dns);
        needed.then(|| Self {
            services: Informer::start(Api::new(channel.clone()), Params::default()),
            endpoints: Informer::start(Api::new(channel.clone()), Params::default()),
        })
    }
}

/// Serves the cluster DNS on the pod network's gateway, when the runtime
/// gives pods a network of their own; returns its task and address.
async fn start_dns(
    config: &Config,
    runtime: &dyn Runtime,
    feeds: Option<&ServiceFeeds>,
) -> Result<
    (
        Option<tokio::task::JoinHandle<()>>,
        Option<std::net::IpAddr>,
    ),
    Error,
> {
    let Some(feeds) = feeds.filter(|_| config.cluster_dns) else {
        return Ok((None, None));
    };
    let Some(gateway) = runtime.pod_gateway().await? else {
        tracing::info!("pods share the host's network: they use the host's DNS");
        return Ok((None, None));
    };
    let dns = dns::ClusterDns::new(
        feeds.services.store.clone(),
        feeds.endpoints.store.clone(),
        dns::CLUSTER_DOMAIN,
    );
    let address = SocketAddr::new(gateway, config.dns_port);
    match dns::serve(dns, address).await {
        Ok(task) => {
            tracing::info!(%address, "cluster DNS serving this node's pods");
            Ok((Some(task), Some(gateway)))
        }
        Err(e) => {
            tracing::warn!(%address, error = %e, "cluster DNS cannot listen: pods use the runtime's DNS");
            Ok((None, None))
        }
    }
}

/// Starts the service proxy in the mode the config asks (`Auto`: kernel
/// rules when iptables answers and pods have a network of their own, else
/// the userspace relay), said in the log; with kernel rules, NetworkPolicy
/// enforcement beside it.
async fn start_proxy(
    config: &Config,
    scheme: &str,
    feeds: Option<&ServiceFeeds>,
    channel: &tonic::transport::Channel,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let Some(feeds) = feeds.filter(|_| config.proxy != proxy::Mode::None) else {
        tracing::warn!("no service proxy: NetworkPolicies are not enforced on this node");
        return Ok(Vec::new());
    };
    let mode = match config.proxy {
        proxy::Mode::Auto if scheme == "docker" && proxy::iptables::available().await => {
            proxy::Mode::Iptables
        }
        proxy::Mode::Auto => proxy::Mode::Userspace,
        proxy::Mode::Iptables if !proxy::iptables::available().await => {
            return Err(Error::Proxy(
                "--proxy-mode iptables: iptables-save does not answer (not root, or iptables not installed)".into(),
            ));
        }
        other => other,
    };
    let mut tasks = Vec::new();
    let backend: Box<dyn proxy::Backend> = if mode == proxy::Mode::Iptables {
        tracing::info!(chains = %proxy::iptables::prefix(&config.node_name), "service proxy: iptables");
        tasks.push(tokio::spawn(netpol::run(
            config.node_name.clone(),
            channel.clone(),
        )));
        Box::new(proxy::iptables::Iptables::new(
            &config.node_name,
            proxy::iptables::Ranges {
                service_cidr: config.service_cidr.clone(),
                lb_pool: config.lb_pool.clone(),
            },
        ))
    } else {
        tracing::info!(
            "service proxy: userspace (NodePorts and local LoadBalancer addresses; ClusterIPs and NetworkPolicies need the iptables mode)"
        );
        Box::new(proxy::userspace::Userspace::new())
    };
    tasks.push(tokio::spawn(proxy::run(
        (feeds.services.store.clone(), feeds.services.subscribe()),
        (feeds.endpoints.store.clone(), feeds.endpoints.subscribe()),
        backend,
        config.proxy_resync,
        config.node_name.clone(),
    )));
    Ok(tasks)
}

/// The runtime the config names (and the Docker runtime again when its
/// pods are on a CNI network), for a node of cluster `cluster`; `Auto`
/// says in the log which it chose.
async fn open_runtime(
    config: &Config,
    cluster: &str,
) -> Result<(Arc<dyn Runtime>, Option<Arc<DockerRuntime>>), Error> {
    let process = || -> Result<Arc<dyn Runtime>, Error> {
        let shim = config.shim.clone().ok_or_else(|| {
            skiff_runtime::Error::Runtime(
                "the process runtime needs the agent's own binary (skiff or skiff-agent) to run its shims".into(),
            )
        })?;
        // Pods share the host network: their IP is the node's.
        let ip = config.node_ip.clone().unwrap_or_else(|| {
            if config.listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                config.listen.ip().to_string()
            }
        });
        let root = config.data_dir.join("process");
        Ok(Arc::new(ProcessRuntime::new(
            root,
            &config.node_name,
            shim,
            &ip,
        )?))
    };
    if config.pod_network.mode == network::Mode::Cni && config.runtime == RuntimeKind::Process {
        return Err(Error::Network(
            "--pod-network cni needs the Docker runtime (host processes share the host's network)"
                .into(),
        ));
    }
    let pod_network = || -> Result<PodNetwork, Error> {
        Ok(match config.pod_network.mode {
            network::Mode::Docker => PodNetwork::Docker(config.network.clone()),
            network::Mode::Cni => PodNetwork::Cni(Arc::new(skiff_runtime::cni::Cni::new(
                config.pod_network.cni_bin_dirs.clone(),
                &config.data_dir.join("cni"),
            )?)),
        })
    };
    let docker = |docker: DockerRuntime| {
        let docker = Arc::new(docker);
        let cni = docker.cni().is_some().then(|| Arc::clone(&docker));
        (docker as Arc<dyn Runtime>, cni)
    };
    Ok(match config.runtime {
        RuntimeKind::Docker => {
            let mut runtime = DockerRuntime::connect(&config.node_name, pod_network()?).await?;
            runtime.join_cluster(cluster).await?;
            docker(runtime)
        }
        RuntimeKind::Fake => (Arc::new(FakeRuntime::default()), None),
        RuntimeKind::Process => (process()?, None),
        RuntimeKind::Auto => {
            match DockerRuntime::connect(&config.node_name, pod_network()?).await {
                Ok(mut runtime) => {
                    tracing::info!(network = %config.network, "runtime: Docker");
                    runtime.join_cluster(cluster).await?;
                    docker(runtime)
                }
                Err(e) if config.pod_network.mode == network::Mode::Cni => {
                    return Err(Error::Network(format!(
                        "--pod-network cni needs the Docker runtime, which does not answer: {e}"
                    )));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Docker engine answers: pods run as host processes (no isolation, no images)");
                    (process()?, None)
                }
            }
        }
    })
}

/// Starts the actor system of the pod manager and its workers on its own
/// thread (actix needs its own runtime; tonic and bollard calls run fine
/// inside it).
fn start_system(
    shared: Arc<worker::Shared>,
    pods: skiff_client::Store<Pod>,
    resync: Duration,
) -> Result<(actix::System, actix::Addr<manager::PodManager>), Error> {
    let spawned = skiff_client::system::spawn("skiff-pods", Some(2), move || {
        manager::PodManager::new(shared, pods, resync).start()
    })
    .map_err(|e| Error::Thread(e.to_string()))?;
    Ok((spawned.system, spawned.started))
}
