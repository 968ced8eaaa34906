//! Serving connections: HTTP/2 (gRPC, kubectl) and HTTP/1.1 (with
//! upgrades: kubectl's WebSocket exec) on one listener, each request
//! carrying who is at the other end ([`PeerInfo`]) for authentication.
//!
//! tonic's own server serves HTTP/1.1 without upgrades, so the API server
//! serves its connections itself with hyper; the routes and layers are
//! the same tower services tonic builds.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use skiff_pki::tls::{Conn, PeerInfo};
use tonic::body::Body;
use tonic::transport::server::Connected as _;
use tower::ServiceExt as _;

/// How long an HTTP/2 connection may stay silent before a ping, and how
/// long the ping may take: dead peers (a crashed agent's watches) are
/// found and their streams freed.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves every connection of `incoming` with `service` until `stop`
/// turns true, then lets the requests in flight finish (their caller
/// bounds how long).
pub async fn connections<S, B>(
    incoming: impl futures::Stream<Item = std::io::Result<Conn>> + Send + 'static,
    service: S,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    // A header read timeout of hyper's (30 s) needs the timer.
    builder.http1().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut incoming = Box::pin(incoming);
    loop {
        let conn = tokio::select! {
            conn = incoming.next() => conn,
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        let conn = match conn {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "accepting a connection");
                continue;
            }
            None => break,
        };
        let peer: PeerInfo = conn.connect_info();
        let service =
            service
                .clone()
                .map_request(move |request: http::Request<hyper::body::Incoming>| {
                    let mut request = request.map(Body::new);
                    request.extensions_mut().insert(peer.clone());
                    request
                });
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), TowerToHyperService::new(service))
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    // Accepted but not yet served: closed now, not after the drain.
    drop(incoming);
    graceful.shutdown().await;
}
