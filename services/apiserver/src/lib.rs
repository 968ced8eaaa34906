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
//! - [`actor`]: the API actors the services forward every call to.
//! - [`registry`]: the generic object semantics (versions, generation,
//!   finalizers, selectors, paging, watch).
//! - [`strategy`]: per-kind defaults, validation and selectable fields.
//! - [`cache`]: the watch cache (one store watch per kind).
//! - [`error`]: API errors and their gRPC codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_store::{EmbeddedStore, EtcdStore, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod actor;
pub mod cache;
pub mod error;
pub mod registry;
pub mod service;
pub mod strategy;

pub use error::ApiError;
pub use registry::Registry;

/// How long a stopping server waits for calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Where the state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded single-file store at this path.
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
    /// the history older than the revision seen at the previous one, so
    /// watchers can resume from versions up to two intervals old.
    pub compaction_interval: Duration,
}

impl Config {
    /// Defaults: one actor per core, bookmarks every 10 s.
    pub fn new(listen: SocketAddr, store: StoreConfig) -> Self {
        Self {
            listen,
            store,
            actors: 0,
            bookmark_interval: Duration::from_secs(10),
            compaction_interval: Duration::from_secs(300),
        }
    }
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
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
    system: actix::System,
    /// Health reporting and compaction; aborted on stop.
    background: Vec<JoinHandle<()>>,
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
            Arc::new(EmbeddedStore::open(path)?)
        }
        StoreConfig::Etcd(endpoints) => Arc::new(EtcdStore::connect(endpoints).await?),
    })
}

/// Starts the actor system on its own thread with `count` API actors.
fn start_actors(
    registry: Arc<Registry>,
    count: usize,
) -> Result<(Arc<actor::ActorPool>, actix::System), ServeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
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
    rx.recv()
        .map_err(|_| ServeError::Actors("the actor system did not start".into()))
}

// === impl ApiServer ===

impl ApiServer {
    /// Opens the store, creates the system namespaces, starts the actors
    /// and serves gRPC in the background.
    ///
    /// # Errors
    /// See [`ServeError`].
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let store = open_store(&config.store).await?;
        let registry = Arc::new(Registry::new(Arc::clone(&store), config.bookmark_interval));
        registry.bootstrap().await?;
        let actors = if config.actors == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            config.actors
        };
        let (pool, system) = start_actors(registry, actors)?;

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

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(skiff::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 speaks only v1alpha reflection.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(skiff::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let background = vec![
            tokio::spawn(report_health(health, Arc::clone(&pool))),
            tokio::spawn(compact_periodically(store, config.compaction_interval)),
        ];

        let (shutdown, stopped) = oneshot::channel::<()>();
        let routes = service::routes(&pool);
        // Our own listener: tonic's tcp_nodelay only covers sockets it binds,
        // and without it small replies wait for delayed ACKs (~40 ms).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |conn| {
                conn.inspect(|s| {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::debug!(error = %e, "setting TCP_NODELAY");
                    }
                })
            },
        );
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(routes)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await?;
            Ok(())
        });
        tracing::info!(%addr, actors, "API server listening");
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            task,
            system,
            background,
        })
    }

    /// Stops accepting calls, finishes the ones in flight, stops the actors.
    ///
    /// # Errors
    /// When the server had failed.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Open watches never finish by themselves: give calls in flight a
        // moment, then close what is left.
        let result = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ServeError::Actors(format!("server task failed: {e}"))),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        };
        for task in &self.background {
            task.abort();
        }
        self.system.stop();
        result
    }

    /// Waits until the server stops by itself (it only does on failure).
    ///
    /// # Errors
    /// The failure.
    pub async fn wait(&mut self) -> Result<(), ServeError> {
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Actors(format!("server task failed: {e}"))),
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

/// Compacts the store's history every `interval`, keeping one interval.
async fn compact_periodically(store: Arc<dyn Store>, interval: Duration) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = match store.current_revision().await {
            Ok(rev) => rev,
            Err(e) => {
                tracing::warn!(error = %e, "reading the store revision for compaction");
                continue;
            }
        };
        if let Some(rev) = previous.filter(|rev| *rev > 0) {
            match store.compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted the store"),
                Err(e) => tracing::warn!(error = %e, revision = rev, "compacting the store"),
            }
        }
        previous = Some(now);
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
    let mut server = ApiServer::start(config).await?;
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            server.stop().await
        }
        result = server.wait() => result,
    }
}
