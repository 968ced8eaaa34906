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
//! - [`failover`]: one channel over several API servers.
//! - [`system`]: an actix System on a thread of its own, and
//!   [`Restarting`](system::Restarting), the supervised actor every
//!   controller and the scheduler run in (one backoff).

pub mod api;
pub mod backoff;
pub mod events;
pub mod failover;
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

/// The servers `url` names: one URL, or several separated by commas
/// (`https://a:6443,https://b:6443`; a part without a scheme takes the
/// first part's).
///
/// # Errors
/// A part that is not a URL with a host.
pub fn servers(url: &str) -> Result<Vec<http::Uri>, AddressError> {
    let error = |reason: String| AddressError {
        address: url.to_string(),
        reason,
    };
    let mut scheme = None;
    let mut out = Vec::new();
    for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let full = match (part.contains("://"), scheme) {
            (true, _) => part.to_string(),
            (false, Some(s)) => format!("{s}://{part}"),
            (false, None) => return Err(error("the scheme must be https:// or http://".into())),
        };
        let uri: http::Uri = full.parse().map_err(|e| error(format!("{part:?}: {e}")))?;
        if uri.host().is_none() {
            return Err(error(format!("{part:?}: no host")));
        }
        let this = match uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => return Err(error("the scheme must be https:// or http://".into())),
        };
        if scheme.is_some_and(|s| s != this) {
            return Err(error("every server must have the same scheme".into()));
        }
        scheme = Some(this);
        out.push(uri);
    }
    if out.is_empty() {
        return Err(error("no server".into()));
    }
    Ok(out)
}

/// HTTP/2 pings on every connection, idle or not: a server that stops
/// answering (hung, or its link cut) is found within seconds and the
/// connection moved to another.
const KEEPALIVE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(10),
);

/// Connects a channel to the API server at `url`: `https://HOST:PORT`
/// over TLS with `tls` (the CA to trust and the client's certificate), or
/// `http://HOST:PORT` in plaintext (a server started `--insecure`). With
/// several servers (`https://a:6443,https://b:6443`) the channel uses one
/// at a time and moves to another when it dies ([`failover`]).
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
    let servers = servers(url)?;
    let start = failover::start_index(servers.len());
    let first = &servers[0];
    let endpoint = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        first.authority().map_or("", |a| a.as_str())
    ))
    .map_err(|e| error(e.to_string()))?
    .tcp_nodelay(true)
    .http2_keep_alive_interval(KEEPALIVE.0)
    .keep_alive_timeout(KEEPALIVE.1)
    .keep_alive_while_idle(true);
    match (first.scheme_str(), tls) {
        (Some("https"), Some(tls)) => {
            // TLS is ours (the connector), so tonic sees plain http.
            let targets = servers
                .iter()
                .map(|uri| {
                    let host = uri.host().unwrap_or_default();
                    let connector = tls.connector(host).map_err(|e| error(e.to_string()))?;
                    let port = uri.port_u16().unwrap_or(443);
                    let dial: http::Uri =
                        format!("http://{}:{port}", uri.host().unwrap_or_default())
                            .parse()
                            .map_err(|e| error(format!("{e}")))?;
                    Ok((dial, connector))
                })
                .collect::<Result<Vec<_>, AddressError>>()?;
            Ok(endpoint.connect_with_connector_lazy(failover::Failover::new(targets, start)))
        }
        (Some("https"), None) => Err(error(
            "https needs credentials (a client config with the cluster CA and a certificate)"
                .into(),
        )),
        (Some("http"), None) => {
            let targets = servers
                .into_iter()
                .map(|uri| (uri, failover::Tcp))
                .collect();
            Ok(endpoint.connect_with_connector_lazy(failover::Failover::new(targets, start)))
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
