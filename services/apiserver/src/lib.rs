//! Skiff's API server: the only door to the cluster state.
//!
//! Clients speak gRPC: one service per kind (`skiff.core.v1.Pods`, ...)
//! with Create / Get / List / Update / UpdateStatus / Delete / Watch, plus
//! server reflection and the standard health service, so `grpcurl` works
//! with no .proto files at hand.
//!
//! # Layout
//!
//! - [`service`]: the tonic services, generated for every kind.
//! - [`serve`]: the connections: HTTP/2 and HTTP/1.1 (with upgrades) on
//!   one listener.
//! - [`actor`]: the API actors the services forward every call to (a
//!   typed message per operation: measured faster than calling the
//!   registry directly, figures there).
//! - [`registry`]: the generic object semantics (versions, generation,
//!   finalizers, selectors, paging, watch), one operation per file, with
//!   binding, eviction, admission, quotas, limits and claims beside them.
//! - [`apply`]: server-side apply on objects as JSON (field ownership,
//!   conflicts, `managedFields`).
//! - [`strategy`]: per-kind defaults, validation and selectable fields,
//!   one file per kind family (`pod/` split by part).
//! - [`podsecurity`]: Pod Security admission (namespace labels, the
//!   cluster default, exemptions).
//! - [`cache`]: the watch cache (one store watch per kind).
//! - [`deadline`]: every request's deadline (60 s, 30 s for reads; none
//!   for watches and streams).
//! - [`auth`]: who is calling and may it (a tower layer), and the
//!   identity services (join, renew, service-account tokens, who am I).
//! - [`http`]: the Kubernetes HTTP API (kubectl, helm, client libraries)
//!   on the same port, over the same actors.
//! - [`error`]: API errors and their gRPC codes.
//! - [`index`]: in-memory copies of a kind kept current by a store watch
//!   (namespaces for admission, RBAC objects for the authorizer).
//! - [`usage`]: resource usage (metrics.k8s.io) gathered from the agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_store::{EmbeddedStore, EtcdStore, Store};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod actor;
pub mod allocator;
pub mod apply;
pub mod auth;
pub mod cache;
pub mod compaction;
pub mod deadline;
pub mod error;
pub mod http;
pub mod index;
pub mod logs;
pub mod podsecurity;
pub mod registry;
pub mod serve;
pub mod service;
pub mod strategy;
pub mod usage;

pub use error::ApiError;
pub use registry::Registry;

/// How long a stopping server waits for calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded store at this path (its directory; a redb file if
    /// one is there).
    Embedded(PathBuf),
    /// An etcd cluster at these endpoints.
    Etcd(Vec<String>),
}

/// How to run the API server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The store backend.
    pub store: StoreConfig,
    /// API actors (one thread each); 0 means one per core.
    pub actors: usize,
    /// Period of BOOKMARK events on watches that ask for them.
    pub bookmark_interval: Duration,
    /// How often the store's history is compacted. Each compaction drops
    /// the history older than the revision sampled one interval before
    /// (the sample is kept in the store: a restart does not delay it), so
    /// watchers can resume from versions at least one interval old.
    pub compaction_interval: Duration,
    /// Where Services' cluster IPs come from.
    pub service_cidr: allocator::Cidr,
    /// Where NodePort and LoadBalancer Services' node ports come from.
    pub node_ports: std::ops::RangeInclusive<u16>,
    /// Where Prometheus metrics are served (`/metrics`); none: not served
    /// (they are still counted).
    pub metrics_addr: Option<SocketAddr>,
    /// TLS, authentication and authorization (see [`auth`]). None:
    /// plaintext, and every caller may do anything (`--insecure`).
    pub security: Option<Arc<auth::Security>>,
    /// Pod Security admission: the default level and exempt namespaces.
    pub pod_security: podsecurity::PodSecurity,
    /// The address pods reach this server at (the `kubernetes` Service's
    /// endpoint); None: the listen address, or when listening on all
    /// addresses, this host's (by its name).
    pub advertise_address: Option<std::net::IpAddr>,
}

pub use skiff::names::DEFAULT_SERVICE_CIDR;

impl Config {
    /// Defaults: one actor per core, bookmarks every 10 s.
    pub fn new(listen: SocketAddr, store: StoreConfig) -> Self {
        Self {
            listen,
            store,
            actors: 0,
            bookmark_interval: Duration::from_secs(10),
            compaction_interval: Duration::from_secs(300),
            service_cidr: DEFAULT_SERVICE_CIDR.parse().expect("a valid default CIDR"),
            node_ports: allocator::DEFAULT_NODE_PORTS,
            metrics_addr: None,
            security: None,
            pod_security: podsecurity::PodSecurity::default(),
            advertise_address: None,
        }
    }
}

/// The address pods reach a server bound to `bound` at: `configured`,
/// else the bound address, else (bound to all) the source address of this
/// host's default route (as kube-apiserver picks it), else its first
/// non-loopback IPv4 address by its name, else loopback.
pub async fn advertise_address(
    configured: Option<std::net::IpAddr>,
    bound: SocketAddr,
) -> SocketAddr {
    if let Some(ip) = configured {
        return SocketAddr::new(ip, bound.port());
    }
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // A UDP socket "connected" to a documentation address (TEST-NET-1) is
    // a route lookup: nothing is sent.
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|local| local.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified() && !ip.is_loopback());
    if let Some(ip) = routed {
        return SocketAddr::new(ip, bound.port());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let found = match tokio::net::lookup_host((host.trim(), bound.port())).await {
        Ok(addrs) => addrs.filter(|a| a.is_ipv4() && !a.ip().is_loopback()).min(),
        Err(_) => None,
    };
    found.unwrap_or_else(|| {
        tracing::warn!(
            "no address of this host's name to advertise: pods are told 127.0.0.1 (give --advertise-address)"
        );
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
    })
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or reached.
    #[error("opening the store: {0}")]
    Store(#[from] skiff_store::Error),
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Creating the system namespaces failed.
    #[error("bootstrapping the cluster state: {0}")]
    Bootstrap(#[from] ApiError),
    /// The actor system failed to start.
    #[error("starting the API actors: {0}")]
    Actors(String),
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load the descriptors (a build bug).
    #[error("building reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A running API server.
pub struct ApiServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where its metrics are served, when asked.
    pub metrics_addr: Option<SocketAddr>,
    /// Tells every arbiter's gRPC server to stop.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// One message per arbiter's gRPC server when it ends.
    ended: mpsc::UnboundedReceiver<Result<(), ServeError>>,
    /// Servers still running.
    running: usize,
    system: actix::System,
    /// The actor system's thread, joined on stop.
    actor_thread: Option<std::thread::JoinHandle<()>>,
    /// Kept to stop its background work on stop.
    registry: Arc<Registry>,
    /// The accept loop, health reporting and compaction; aborted on stop.
    background: Vec<JoinHandle<()>>,
    /// This server's address in the `kubernetes` Service's Endpoints.
    advertise: SocketAddr,
}

/// Opens the configured store.
///
/// # Errors
/// When the file cannot be opened or etcd does not answer.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, skiff_store::Error> {
    Ok(match config {
        StoreConfig::Embedded(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| skiff_store::Error::Embedded(Box::new(e)))?;
            }
            Arc::new(skiff_store::Metered::new(
                Arc::new(EmbeddedStore::open(path)?),
                "embedded",
            ))
        }
        StoreConfig::Etcd(endpoints) => Arc::new(skiff_store::Metered::new(
            Arc::new(EtcdStore::connect(endpoints).await?),
            "etcd",
        )),
    })
}

/// Starts the actor system on its own thread with `count` API actors.
fn start_actors(
    registry: Arc<Registry>,
    count: usize,
) -> Result<
    (
        Arc<actor::ActorPool>,
        actix::System,
        std::thread::JoinHandle<()>,
    ),
    ServeError,
> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("skiff-actors".into())
        .spawn(move || {
            let system = actix::System::new();
            system.block_on(async move {
                let pool = actor::ActorPool::start(registry, count);
                let _ = tx.send((Arc::new(pool), actix::System::current()));
            });
            if let Err(e) = system.run() {
                tracing::error!(error = %e, "actor system failed");
            }
        })
        .map_err(|e| ServeError::Actors(e.to_string()))?;
    let (pool, system) = rx
        .recv()
        .map_err(|_| ServeError::Actors("the actor system did not start".into()))?;
    Ok((pool, system, thread))
}

/// Accepts connections and deals them out to the arbiters round-robin.
/// Each socket moves as a std socket and is registered with its arbiter's
/// own reactor there, so all its I/O stays on that thread.
async fn accept_loop(
    listener: TcpListener,
    arbiters: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
) {
    let mut next = 0usize;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without it small replies wait for delayed ACKs (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY");
        }
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        if arbiters[next % arbiters.len()].send(stream).is_err() {
            return;
        }
        next = next.wrapping_add(1);
    }
}

// === impl ApiServer ===

impl ApiServer {
    /// Opens the store, creates the system namespaces, starts the actors
    /// and serves gRPC in the background: one gRPC server per actor
    /// arbiter, each serving the connections dealt to it.
    ///
    /// # Errors
    /// See [`ServeError`].
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
        let store = open_store(&config.store).await?;
        let registry = Arc::new(
            Registry::new(
                Arc::clone(&store),
                config.bookmark_interval,
                config.service_cidr,
                config.node_ports.clone(),
            )
            .with_service_account_tokens(config.security.is_some())
            .with_pod_security(config.pod_security.clone()),
        );
        registry.bootstrap().await?;
        // The `kubernetes` Service leads here before the first call is
        // served; trouble with it is logged and tried again, never fatal.
        let advertise = advertise_address(config.advertise_address, addr).await;
        if let Err(e) = registry.reconcile_master(advertise).await {
            tracing::warn!(error = %e, "keeping the kubernetes Service's endpoints");
        }
        let actors = if config.actors == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.actors
        };
        auth::bootstrap_policy(&registry).await?;
        let rbac = Arc::new(auth::rbac::Rbac::start(&store));
        let (pod_refs, pod_refs_task) = match &config.security {
            Some(_) => {
                let (index, task) =
                    index::Index::start_projected(Arc::clone(&store), auth::authz::PodRefs::of);
                (Some(index), Some(task))
            }
            None => (None, None),
        };
        let authorizer = Arc::new(auth::authz::Authorizer {
            registry: Arc::clone(&registry),
            rbac,
            pod_refs,
        });
        let authenticator = config
            .security
            .as_ref()
            .map(|security| auth::authn::Authenticator {
                registry: Arc::clone(&registry),
                token_key: Arc::clone(&security.token_key),
                issuer: security.issuer.clone(),
            });
        let checker = Arc::new(auth::Checker::new(authenticator, Arc::clone(&authorizer)));
        let identity = config.security.as_ref().map(|security| {
            Arc::new(auth::services::IdentityServices {
                security: Arc::clone(security),
                registry: Arc::clone(&registry),
                authorizer: Arc::clone(&authorizer),
            })
        });
        let agent_tls = config.security.as_ref().map(|s| logs::AgentTls {
            ca_pem: s.ca.cert_pem.clone(),
            identity: s.agent_client.clone(),
        });
        let server_tls = config.security.as_ref().map(|s| s.tls.clone());
        let (pool, system, actor_thread) = match start_actors(Arc::clone(&registry), actors) {
            Ok(started) => started,
            Err(e) => {
                registry.close();
                return Err(e);
            }
        };

        // Calls are counted by a layer around every route (handlers are
        // not touched); the page is served when an address is given.
        let grpc_metrics = skiff_metrics::GrpcMetricsLayer::new(skiff_metrics::GrpcMetrics::new(
            "skiff_apiserver",
        ));
        let metrics = match config.metrics_addr {
            Some(at) => Some(
                skiff_metrics::serve(at)
                    .await
                    .map_err(|source| ServeError::Bind { addr: at, source })?,
            ),
            None => None,
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let mut inboxes = Vec::new();
        // One bound on unfinished handshakes for the whole server.
        let handshake_limits = skiff_pki::tls::HandshakeLimits::default();
        for i in 0..pool.len() {
            let (actor, arbiter) = pool.get(i);
            let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            inboxes.push(tx);
            let proxy =
                std::sync::Arc::new(logs::PodLogsService::new(actor.clone(), agent_tls.clone()));
            let logs = skiff::pb::core::v1::pod_logs_server::PodLogsServer::from_arc(
                std::sync::Arc::clone(&proxy),
            );
            let usage_service =
                Arc::new(usage::UsageService::new(actor.clone(), agent_tls.clone()));
            let usage = usage::server(Arc::clone(&usage_service));
            let http_api = http::HttpApi::new(
                actor.clone(),
                Arc::clone(&checker),
                std::sync::Arc::clone(&proxy),
                identity.clone(),
                usage_service,
            );
            let exec = skiff::pb::core::v1::pod_exec_server::PodExecServer::from_arc(
                std::sync::Arc::clone(&proxy),
            );
            let port_forward =
                skiff::pb::core::v1::pod_port_forward_server::PodPortForwardServer::from_arc(proxy);
            let routes = service::routes(&actor);
            let reflection_v1 = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(skiff::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?;
            // grpcurl 1.8 speaks only v1alpha reflection.
            let reflection_v1alpha = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(skiff::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()?;
            let health_service = health_service.clone();
            let grpc_metrics = grpc_metrics.clone();
            let server_tls = server_tls.clone();
            let handshake_limits = handshake_limits.clone();
            let auth_layer = auth::AuthLayer(Arc::clone(&checker));
            let identity = identity.clone();
            let stop = shutdown.subscribe();
            let ended_tx = ended_tx.clone();
            arbiter.spawn(async move {
                let sockets = tokio_stream::StreamExt::filter_map(
                    tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                    |socket| tokio::net::TcpStream::from_std(socket).ok(),
                );
                let incoming = skiff_pki::tls::handshakes(sockets, server_tls, handshake_limits);
                let mut routes = routes;
                if let Some(identity) = identity {
                    use skiff::pb::authentication::v1 as authentication;
                    routes = routes
                        .add_service(
                            authentication::certificates_server::CertificatesServer::from_arc(
                                Arc::clone(&identity),
                            ),
                        )
                        .add_service(
                            authentication::service_account_tokens_server::ServiceAccountTokensServer::from_arc(
                                Arc::clone(&identity),
                            ),
                        )
                        .add_service(
                            authentication::identity_server::IdentityServer::from_arc(identity),
                        );
                }
                let routes = routes
                    .add_service(logs)
                    .add_service(exec)
                    .add_service(port_forward)
                    .add_service(usage)
                    .add_service(reflection_v1)
                    .add_service(reflection_v1alpha)
                    .add_service(health_service);
                // Whatever no gRPC service takes goes to the Kubernetes
                // HTTP API.
                let routes = tonic::service::Routes::from(
                    routes.into_axum_router().fallback_service(http_api),
                )
                .prepare();
                let service = tower::ServiceBuilder::new()
                    .layer(skiff_telemetry::GrpcTraceLayer)
                    .layer(grpc_metrics)
                    .layer(auth_layer)
                    .layer(deadline::DeadlineLayer)
                    .service(routes);
                serve::connections(incoming, service, stop).await;
                let _ = ended_tx.send(Ok(()));
            });
        }
        let mut background = vec![
            tokio::spawn(accept_loop(listener, inboxes)),
            tokio::spawn(report_health(health, Arc::clone(&pool))),
            tokio::spawn(compaction::run(store, config.compaction_interval)),
        ];
        background.extend(pod_refs_task);
        background.push(registry::master::spawn_reconciler(
            Arc::clone(&registry),
            advertise,
        ));
        if let Some(security) = config.security.clone() {
            background.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    if let Err(e) = security.renew_if_due() {
                        tracing::warn!(error = %e, "renewing the API server's certificates");
                    }
                }
            }));
        }
        let metrics_addr = metrics.map(|(at, task)| {
            background.push(task);
            at
        });
        tracing::info!(%addr, actors, "API server listening");
        Ok(Self {
            addr,
            metrics_addr,
            shutdown,
            ended,
            running: pool.len(),
            system,
            actor_thread: Some(actor_thread),
            registry,
            background,
            advertise,
        })
    }

    /// Stops accepting calls, finishes the ones in flight, stops the actors.
    ///
    /// # Errors
    /// When a server had failed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.background[0].abort();
        let _ = self.shutdown.send(true);
        // Open watches never finish by themselves: give calls in flight a
        // moment, then close what is left with the actor system.
        let mut result = Ok(());
        let drain = async {
            while self.running > 0 {
                match self.ended.recv().await {
                    Some(r) => {
                        self.running -= 1;
                        if r.is_err() && result.is_ok() {
                            result = r;
                        }
                    }
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain).await;
        for task in &self.background {
            task.abort();
        }
        // Out of the `kubernetes` Service's Endpoints (its lease would
        // expire anyway).
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.registry.release_master(self.advertise),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leaving the kubernetes Service's endpoints"),
            Err(_) => tracing::warn!("leaving the kubernetes Service's endpoints took too long"),
        }
        self.registry.close();
        self.system.stop();
        if let Some(thread) = self.actor_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// Waits until a server stops by itself (it only does on failure).
    ///
    /// # Errors
    /// The failure.
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        match self.ended.recv().await {
            Some(result) => {
                self.running -= 1;
                result.and(Err(ServeError::Actors("a gRPC server stopped".into())))
            }
            None => Err(ServeError::Actors("every gRPC server stopped".into())),
        }
    }
}

/// Keeps the health service in line with the actors: NOT_SERVING while
/// any API actor is down.
async fn report_health(health: tonic_health::server::HealthReporter, pool: Arc<actor::ActorPool>) {
    let mut serving = None;
    loop {
        let now = pool.healthy();
        if serving != Some(now) {
            let status = if now {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            for name in service::SERVICE_NAMES {
                health.set_service_status(*name, status).await;
            }
            serving = Some(now);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs the API server until `shutdown` resolves (the `skiff server`
/// command).
///
/// # Errors
/// When it cannot start or fails while serving.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_until(ApiServer::start(config).await?, shutdown).await
}

/// Serves with a started `server` until `shutdown` resolves, then stops
/// it.
///
/// # Errors
/// When it fails while serving.
pub async fn serve_until(
    mut server: ApiServer,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            server.stop().await
        }
        result = server.wait() => result,
    }
}
