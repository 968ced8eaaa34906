//! Skiff's ingress controller (`skiff ingress`, started by `skiff up`): an
//! HTTP and HTTPS reverse proxy on the node that routes by the Ingresses
//! of its classes to their Services' ready endpoints, as k3s ships
//! Traefik. Leader-free: every copy (one per node) serves the same table.
//!
//! # Layout
//!
//! - [`routes`]: the routing table built from the Ingresses, and the TLS
//!   certificates by SNI name.
//! - [`resolve`]: a backend's ready endpoints, from the Service and
//!   Endpoints caches, at request time.
//! - [`proxy`]: the request path: matching, forwarding, upgrades.
//! - here: the informers, the table's rebuilds, the IngressClass `skiff`,
//!   Ingress status, the listeners, access logs and metrics.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff::Resource as _;
use skiff::pb::core::v1::{Endpoints, Secret, Service};
use skiff::pb::networking::v1::{
    Ingress, IngressClass, IngressClassSpec, IngressLoadBalancerIngress, IngressLoadBalancerStatus,
    IngressStatus,
};
use skiff_client::{Api, Informer, Store};
use tokio::net::TcpListener;

pub mod proxy;
pub mod resolve;
pub mod routes;

use routes::{Backend, Routes};

/// The controller name of Skiff's IngressClasses.
pub const CONTROLLER: &str = "skiff.io/ingress";
/// The IngressClass the controller makes (the cluster's default).
pub const DEFAULT_CLASS: &str = "skiff";

/// How to run the ingress controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://127.0.0.1:6443` (`http://` when it runs
    /// `--insecure`).
    pub server: String,
    /// The CA to trust and the certificate to present (None: plaintext).
    pub tls: Option<skiff_client::ClientTls>,
    /// Where plain HTTP is served (None: not at all).
    pub http: Option<SocketAddr>,
    /// Where HTTPS is served (None: not at all).
    pub https: Option<SocketAddr>,
    /// The IngressClass made at start, marked default when no other class
    /// is ("" makes none).
    pub class: String,
    /// The addresses written to the status of the Ingresses served (the
    /// node's addresses).
    pub addresses: Vec<String>,
}

impl Config {
    /// Ports 80 and 443 on all addresses, against `server`.
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            tls: None,
            http: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            class: DEFAULT_CLASS.to_string(),
            addresses: Vec::new(),
        }
    }
}

/// Why the controller cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is malformed.
    #[error(transparent)]
    Address(#[from] skiff_client::AddressError),
    /// A port could not be listened on.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// The TLS server could not be set up.
    #[error("setting up TLS: {0}")]
    Tls(String),
}

/// What every request reads: the table and the caches.
pub struct State {
    routes: RwLock<Arc<Routes>>,
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    upstream: proxy::Upstream,
    requests: prometheus::IntCounterVec,
    latency: prometheus::HistogramVec,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ingress state")
    }
}

impl State {
    /// The current table.
    pub fn routes(&self) -> Arc<Routes> {
        Arc::clone(
            &self
                .routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Logs and counts one answered request.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        backend: Option<&Backend>,
        method: &str,
        path: &str,
        host: &str,
        status: StatusCode,
        started: Instant,
        client: SocketAddr,
    ) {
        let (ingress, service) = backend.map_or(("", String::new()), |b| {
            (b.ingress.as_str(), format!("{}/{}", b.namespace, b.service))
        });
        let elapsed = started.elapsed();
        self.requests
            .with_label_values(&[ingress, &service, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[ingress, &service])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "skiff_ingress::access",
            client = %client.ip(),
            method,
            host,
            path,
            status = status.as_u16(),
            ingress,
            service,
            ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// A running controller.
pub struct IngressController {
    /// Where HTTP is served.
    pub http: Option<SocketAddr>,
    /// Where HTTPS is served.
    pub https: Option<SocketAddr>,
    /// The shared state (the table, for tests and metrics).
    pub state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IngressController {
    /// Stops listening and rebuilding (answered connections finish).
    pub fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Listens, then serves until stopped.
///
/// # Errors
/// A malformed server address or a port that cannot be listened on;
/// everything after is retried.
pub async fn start(config: Config) -> Result<IngressController, Error> {
    let listen = async |addr: Option<SocketAddr>| -> Result<Option<TcpListener>, Error> {
        match addr {
            None => Ok(None),
            Some(addr) => TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|source| Error::Listen { addr, source }),
        }
    };
    let http = listen(config.http).await?;
    let https = listen(config.https).await?;
    let channel = skiff_client::connect_lazy_with(&config.server, config.tls.as_ref())?;
    let informers = Informers {
        ingresses: Informer::start(Api::new(channel.clone()), Default::default()),
        classes: Informer::start(Api::new(channel.clone()), Default::default()),
        secrets: Informer::start(Api::new(channel.clone()), Default::default()),
        services: Informer::start(Api::new(channel.clone()), Default::default()),
        endpoints: Informer::start(Api::new(channel.clone()), Default::default()),
    };
    let state = Arc::new(State {
        routes: RwLock::new(Arc::new(Routes::default())),
        services: informers.services.store.clone(),
        endpoints: informers.endpoints.store.clone(),
        upstream: proxy::upstream(),
        requests: skiff_metrics::counter_vec(
            "skiff_ingress_requests_total",
            "Requests answered by the ingress controller, by Ingress, Service and status code.",
            &["ingress", "service", "code"],
        ),
        latency: skiff_metrics::seconds_vec(
            "skiff_ingress_request_duration_seconds",
            "Time from a request's arrival to its response's headers, by Ingress and Service.",
            &["ingress", "service"],
        ),
    });
    let mut tasks = Vec::new();
    let addrs = (
        http.as_ref().and_then(|l| l.local_addr().ok()),
        https.as_ref().and_then(|l| l.local_addr().ok()),
    );
    if let Some(listener) = http {
        tasks.push(tokio::spawn(serve(listener, None, Arc::clone(&state))));
    }
    if let Some(listener) = https {
        let acceptor = tls_acceptor(Arc::clone(&state))?;
        tasks.push(tokio::spawn(serve(
            listener,
            Some(acceptor),
            Arc::clone(&state),
        )));
    }
    tasks.push(tokio::spawn(keep_class(
        Api::new(channel.clone()),
        config.class.clone(),
    )));
    tasks.push(tokio::spawn(rebuild(
        informers,
        Api::new(channel),
        Arc::clone(&state),
        config.addresses.clone(),
    )));
    Ok(IngressController {
        http: addrs.0,
        https: addrs.1,
        state,
        tasks,
    })
}

/// Runs the controller until `shutdown` resolves.
///
/// # Errors
/// See [`start`].
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let controller = start(config).await?;
    shutdown.await;
    controller.stop();
    Ok(())
}

/// The caches the controller keeps.
struct Informers {
    ingresses: Informer<Ingress>,
    classes: Informer<IngressClass>,
    secrets: Informer<Secret>,
    services: Informer<Service>,
    endpoints: Informer<Endpoints>,
}

/// Makes the IngressClass `class` (once: an administrator may change it),
/// the cluster's default unless another class already is.
async fn keep_class(api: Api<IngressClass>, class: String) {
    if class.is_empty() {
        return;
    }
    let mut backoff =
        skiff_client::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let existing = match api.list(Default::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::debug!(error = %e, "listing IngressClasses");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if existing.iter().any(|c| c.name() == class) {
            return;
        }
        let another_default = existing.iter().any(|c| {
            c.metadata
                .as_ref()
                .and_then(|m| m.annotations.get(routes::DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
        });
        let mut made = IngressClass {
            spec: Some(IngressClassSpec {
                controller: CONTROLLER.into(),
                parameters: None,
            }),
            ..Default::default()
        };
        let meta = made.metadata_mut();
        meta.name.clone_from(&class);
        if !another_default {
            meta.annotations
                .insert(routes::DEFAULT_CLASS_ANNOTATION.into(), "true".into());
        }
        meta.labels
            .insert("app.kubernetes.io/managed-by".into(), "skiff".into());
        match api.create(made).await {
            Ok(_) => {
                tracing::info!(class, default = !another_default, "made the IngressClass");
                return;
            }
            Err(e) if e.code() == tonic::Code::AlreadyExists => return,
            Err(e) => {
                tracing::warn!(class, error = %e, "making the IngressClass");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Rebuilds the table whenever an Ingress, IngressClass or Secret changes
/// (changes that arrive together make one rebuild), and keeps the served
/// Ingresses' status.
async fn rebuild(
    informers: Informers,
    api: Api<Ingress>,
    state: Arc<State>,
    addresses: Vec<String>,
) {
    let mut ingress_changes = informers.ingresses.subscribe();
    let mut class_changes = informers.classes.subscribe();
    let mut secret_changes = informers.secrets.subscribe();
    informers.ingresses.store.wait_synced().await;
    informers.classes.store.wait_synced().await;
    informers.secrets.store.wait_synced().await;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        let classes = informers.classes.store.list();
        let (ours, default) = routes::our_classes(&classes, CONTROLLER);
        let served: Vec<Arc<Ingress>> = informers
            .ingresses
            .store
            .list()
            .into_iter()
            .filter(|i| routes::is_ours(i, &ours, default.as_deref()))
            .collect();
        let table = Routes::build(&served, |ns, name| informers.secrets.store.get(ns, name));
        for (ingress, problem) in &table.problems {
            if reported.insert(format!("{ingress}: {problem}")) {
                tracing::warn!(ingress, problem, "TLS not served");
            }
        }
        tracing::debug!(ingresses = table.served.len(), "routes rebuilt");
        *state
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
        if !addresses.is_empty() {
            for ingress in &served {
                report_status(&api, ingress, &addresses).await;
            }
        }
        // Wait for a change, then for its companions.
        tokio::select! {
            _ = ingress_changes.recv() => {}
            _ = class_changes.recv() => {}
            _ = secret_changes.recv() => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        while ingress_changes.try_recv().is_ok() {}
        while class_changes.try_recv().is_ok() {}
        while secret_changes.try_recv().is_ok() {}
    }
}

/// Adds `addresses` to the Ingress' load balancer status when one is
/// missing. Several controllers (one per node) each add theirs and none
/// removes another's, so they agree instead of rewriting each other (a
/// conflict is retried by the rebuild its own change causes).
async fn report_status(api: &Api<Ingress>, ingress: &Ingress, addresses: &[String]) {
    let current: BTreeSet<String> = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .map(|lb| lb.ingress.iter().map(|a| a.ip.clone()).collect())
        .unwrap_or_default();
    if addresses.iter().all(|a| current.contains(a)) {
        return;
    }
    let all: BTreeSet<String> = current
        .into_iter()
        .chain(addresses.iter().cloned())
        .collect();
    let mut next = ingress.clone();
    next.status = Some(IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: all
                .into_iter()
                .filter(|ip| !ip.is_empty())
                .map(|ip| IngressLoadBalancerIngress {
                    ip,
                    ..Default::default()
                })
                .collect(),
        }),
    });
    if let Err(e) = api.update_status(next).await {
        tracing::debug!(ingress = %format!("{}/{}", ingress.namespace(), ingress.name()), error = %e, "status not written");
    }
}

/// The TLS side: certificates by SNI from the table; h2 and http/1.1.
fn tls_acceptor(state: Arc<State>) -> Result<tokio_rustls::TlsAcceptor, Error> {
    #[derive(Debug)]
    struct BySni(Arc<State>);
    impl rustls::server::ResolvesServerCert for BySni {
        fn resolve(
            &self,
            hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            self.0.routes().cert(hello.server_name()?)
        }
    }
    let mut config = rustls::ServerConfig::builder_with_provider(skiff_pki::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(state)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` (TLS when `tls` is given) and serves
/// each on a task of its own.
async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<State>) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let scheme = if tls.is_some() { "https" } else { "http" };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                proxy::handle(Arc::clone(&state), req, client, scheme, port)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Clients that never finish their headers are cut off.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            builder.http2().timer(hyper_util::rt::TokioTimer::new());
            let result = match tls {
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%client, error = %e, "connection ended");
            }
        });
    }
}
