//! Several API servers behind one channel: the channel's connector dials
//! them in turn, starting from one picked per process (so a fleet of
//! clients spreads over the servers). A channel reconnects only when its
//! connection died (the server killed, or silent past the keepalive), so
//! a reconnect tries the servers after the last one first and that one
//! last: a server that still accepts connections but answers nothing
//! (hung) is not chosen again while another answers. Each server gets a
//! few seconds to accept; when none does, they get a longer second try
//! (a loaded machine). Requests in flight on the dead connection fail UNAVAILABLE;
//! watchers resume from their last resourceVersion on the new one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// How long one of several servers may take to accept a connection (TCP
/// and TLS) before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the only server may take (a loaded machine's handshakes).
pub const ONLY_SERVER_TIMEOUT: Duration = Duration::from_secs(20);

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A connector over several servers, each reached by its own connector
/// `C` (plain TCP, or TLS checking that server's name).
pub struct Failover<C> {
    targets: Arc<[(http::Uri, C)]>,
    /// The last server that answered.
    current: Arc<AtomicUsize>,
    /// Whether a connection was made before (a call now is a reconnect).
    reconnect: Arc<std::sync::atomic::AtomicBool>,
}

impl<C> Clone for Failover<C> {
    fn clone(&self) -> Self {
        Self {
            targets: Arc::clone(&self.targets),
            current: Arc::clone(&self.current),
            reconnect: Arc::clone(&self.reconnect),
        }
    }
}

impl<C> Failover<C> {
    /// Dials `targets` (address, connector), first the one at `start`.
    ///
    /// # Panics
    /// No targets.
    pub fn new(targets: Vec<(http::Uri, C)>, start: usize) -> Self {
        assert!(!targets.is_empty(), "a failover needs a server");
        let start = start % targets.len();
        Self {
            targets: targets.into(),
            current: Arc::new(AtomicUsize::new(start)),
            reconnect: Arc::default(),
        }
    }
}

impl<C> tower::Service<http::Uri> for Failover<C>
where
    C: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    C::Response: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = std::io::Error;
    type Future = BoxFuture<std::io::Result<C::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let targets = Arc::clone(&self.targets);
        let current = Arc::clone(&self.current);
        let reconnect = Arc::clone(&self.reconnect);
        Box::pin(async move {
            let n = targets.len();
            let last = current.load(Ordering::Relaxed);
            // A reconnect: the last server's connection died; it goes last.
            let first = if reconnect.load(Ordering::Relaxed) && n > 1 {
                last + 1
            } else {
                last
            };
            let passes: &[Duration] = if n > 1 {
                &[CONNECT_TIMEOUT, ONLY_SERVER_TIMEOUT]
            } else {
                &[ONLY_SERVER_TIMEOUT]
            };
            let mut failures = Vec::new();
            for limit in passes {
                failures.clear();
                for k in 0..n {
                    let i = (first + k) % n;
                    let (uri, connector) = &targets[i];
                    let mut connector = connector.clone();
                    let attempt = async {
                        futures::future::poll_fn(|cx| connector.poll_ready(cx))
                            .await
                            .map_err(Into::into)?;
                        connector.call(uri.clone()).await.map_err(Into::into)
                    };
                    match tokio::time::timeout(*limit, attempt).await {
                        Ok(Ok(stream)) => {
                            if i != last {
                                tracing::info!(server = %uri, "API server connection moved to another server");
                            }
                            current.store(i, Ordering::Relaxed);
                            reconnect.store(true, Ordering::Relaxed);
                            return Ok(stream);
                        }
                        Ok(Err(e)) => failures.push(format!("{uri}: {e}")),
                        Err(_) => failures.push(format!("{uri}: no answer in {limit:?}")),
                    }
                }
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("no API server answers ({})", failures.join("; ")),
            ))
        })
    }
}

/// Plain TCP to one server (a cluster started `--insecure`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl tower::Service<http::Uri> for Tcp {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = BoxFuture<std::io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1");
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(tcp))
        })
    }
}

/// Where a process starts in a list of `n` servers: spread by process.
pub fn start_index(n: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    (std::process::id() as usize).wrapping_add(nanos) % n.max(1)
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_dead_server_is_skipped_and_the_answering_one_kept() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        // A port nothing listens on (bound, then released).
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let uri = |a: std::net::SocketAddr| format!("http://{a}").parse::<http::Uri>().unwrap();
        let failover = Failover::new(vec![(uri(dead_addr), Tcp), (uri(live_addr), Tcp)], 0);
        let stream = failover.clone().oneshot(uri(dead_addr)).await.unwrap();
        assert_eq!(stream.inner().peer_addr().unwrap(), live_addr);
        assert_eq!(failover.current.load(Ordering::Relaxed), 1, "the live one");
        // Its connection died: a reconnect tries the others first, and
        // comes back to it when they do not answer.
        let stream = failover.clone().oneshot(uri(dead_addr)).await.unwrap();
        assert_eq!(stream.inner().peer_addr().unwrap(), live_addr);
        drop(live);
        let err = failover.oneshot(uri(dead_addr)).await.unwrap_err();
        assert!(err.to_string().contains("no API server answers"), "{err}");
    }
}
