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

/// Connects a channel to the API server at `url` (`http://127.0.0.1:6443`).
///
/// # Errors
/// When the address is malformed. The connection itself is made lazily
/// and retried, so a server that starts later is fine.
pub fn connect_lazy(url: &str) -> Result<tonic::transport::Channel, AddressError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|source| {
        AddressError {
            address: url.to_string(),
            source,
        }
    })?;
    Ok(endpoint.tcp_nodelay(true).connect_lazy())
}
