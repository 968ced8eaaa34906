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
pub mod system;
pub mod watcher;

pub use api::Api;
pub use backoff::Backoff;
pub use informer::{Change, Informer};
pub use queue::WorkQueue;
pub use store::Store;

/// The API server address could not be used.
#[derive(Debug, thiserror::Error)]
#[error("API server address {address:?}: {reason}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// Why it is unusable.
    pub reason: String,
}

pub use skiff_pki::tls::ClientTls;

/// Connects a channel to the API server at `url`: `https://HOST:PORT`
/// over TLS with `tls` (the CA to trust and the client's certificate), or
/// `http://HOST:PORT` in plaintext (a server started `--insecure`).
///
/// # Errors
/// A malformed address, or a scheme that does not match `tls`. The
/// connection itself is made lazily and retried, so a server that starts
/// later is fine.
pub fn connect_lazy_with(
    url: &str,
    tls: Option<&ClientTls>,
) -> Result<tonic::transport::Channel, AddressError> {
    let error = |reason: String| AddressError {
        address: url.to_string(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| error(format!("{e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| error("no host".into()))?
        .to_string();
    match (uri.scheme_str(), tls) {
        (Some("https"), Some(tls)) => {
            let port = uri.port_u16().unwrap_or(443);
            // TLS is ours (the connector), so tonic sees plain http.
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
                .map_err(|e| error(e.to_string()))?;
            let connector = tls.connector(&host).map_err(|e| error(e.to_string()))?;
            Ok(endpoint.connect_with_connector_lazy(connector))
        }
        (Some("https"), None) => Err(error(
            "https needs credentials (a client config with the cluster CA and a certificate)"
                .into(),
        )),
        (Some("http"), None) => {
            let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
                .map_err(|e| error(e.to_string()))?;
            Ok(endpoint.tcp_nodelay(true).connect_lazy())
        }
        (Some("http"), Some(_)) => Err(error(
            "credentials are for https://; http:// is for a server started with --insecure".into(),
        )),
        _ => Err(error("the scheme must be https:// or http://".into())),
    }
}

/// Connects a plaintext channel to the API server at `url`
/// (`http://127.0.0.1:6443`, a server started `--insecure`).
///
/// # Errors
/// When the address is malformed. The connection itself is made lazily
/// and retried, so a server that starts later is fine.
pub fn connect_lazy(url: &str) -> Result<tonic::transport::Channel, AddressError> {
    connect_lazy_with(url, None)
}
