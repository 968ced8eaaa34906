//! Skiff's API client, shared by the scheduler, the controllers, the agent
//! and the CLI: everything but the API server talks to the cluster
//! through it.
//!
//! # Layout
//!
//! - [`Api`]: the typed object API of any kind over a gRPC channel.
//! - [`watcher`]: list + watch with resume and relist, as a state machine.
//! - [`store`]: the informer cache (one writer, cloneable readers).
//! - [`Informer`]: a watcher feeding a cache, with change notifications.
//! - [`WorkQueue`]: the deduplicating, rate-limited controller queue.
//! - [`Backoff`]: exponential backoff with jitter.
//! - [`leader`]: leader election through a Lease.
//! - [`events`]: recording deduplicated Events.

pub mod api;
pub mod backoff;
pub mod events;
pub mod informer;
pub mod leader;
pub mod queue;
pub mod store;
pub mod watcher;

pub use api::Api;
pub use backoff::Backoff;
pub use informer::{Change, Informer};
pub use queue::WorkQueue;
pub use store::Store;

/// The API server address could not be used.
#[derive(Debug, thiserror::Error)]
#[error("API server address {address:?}: {source}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// Why it is unusable.
    #[source]
    pub source: tonic::transport::Error,
}

/// A client's TLS settings (PEM): the CA the server's certificate must
/// chain to, and the client's own certificate and key (mTLS).
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster CA.
    pub ca_pem: String,
    /// The client's certificate (its identity: CN user, O groups).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// Connects a channel to the API server at `url` over TLS with a client
/// certificate (`https://127.0.0.1:6443`), or plaintext when `tls` is
/// None.
///
/// # Errors
/// A malformed address or TLS setting. The connection itself is made
/// lazily and retried.
pub fn connect_lazy_with(
    url: &str,
    tls: Option<&ClientTls>,
) -> Result<tonic::transport::Channel, AddressError> {
    let error = |source| AddressError {
        address: url.to_string(),
        source,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(error)?;
    if let Some(tls) = tls {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &tls.cert_pem,
                &tls.key_pem,
            ));
        endpoint = endpoint.tls_config(config).map_err(error)?;
    }
    Ok(endpoint.tcp_nodelay(true).connect_lazy())
}

/// Connects a channel to the API server at `url` (`http://127.0.0.1:6443`).
///
/// # Errors
/// When the address is malformed. The connection itself is made lazily
/// and retried, so a server that starts later is fine.
pub fn connect_lazy(url: &str) -> Result<tonic::transport::Channel, AddressError> {
    connect_lazy_with(url, None)
}
