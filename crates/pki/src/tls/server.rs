//! The server side of Skiff's TLS: [`ServerTls`], the accept loop
//! ([`handshakes`]) with its bounds on unfinished handshakes
//! ([`HandshakeLimits`]), and the connections it yields ([`Conn`]), which
//! tell each request who is calling ([`PeerInfo`]).

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{SwappableIdentity, provider, roots};
use crate::{Error, Identity, Parsed, Result};

/// Unfinished handshakes a server keeps in all: past it, a new
/// connection closes the oldest unfinished one.
pub const MAX_PENDING_HANDSHAKES: usize = 8192;

/// Unfinished handshakes a server keeps from one peer address (an IPv6
/// /64): past it, a new connection from that address closes its oldest
/// unfinished one. A
/// client that opens sockets and sends nothing thus holds a bounded number
/// of them, and cannot keep a new connection from its own address (or any
/// other) from being served.
pub const MAX_PENDING_PER_PEER: usize = 512;

/// How long a server waits for a client to finish its TLS handshake: a
/// silent or half-open connection is closed then.
pub const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a server demands client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// A client without one is refused in the handshake (agents: only the
    /// API server calls them).
    Required,
    /// A client may come without one (and authenticate by a token); one
    /// it presents must chain to the CA (the API server).
    Optional,
}

/// A server's TLS settings.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    identity: SwappableIdentity,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Serves `identity`; client certificates must chain to
    /// `client_ca_pem`.
    ///
    /// # Errors
    /// PEM that does not parse.
    pub fn new(
        identity: &Identity,
        client_ca_pem: &str,
        client_certs: ClientCerts,
    ) -> Result<Self> {
        let identity = SwappableIdentity::new(Some(identity))?;
        Self::with_identity(identity, client_ca_pem, client_certs)
    }

    /// As [`ServerTls::new`], serving an identity shared with a client
    /// config (an agent serves with the certificate it calls with).
    ///
    /// # Errors
    /// PEM that does not parse.
    pub fn with_identity(
        identity: SwappableIdentity,
        client_ca_pem: &str,
        client_certs: ClientCerts,
    ) -> Result<Self> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots(client_ca_pem)?, provider());
        let verifier = match client_certs {
            ClientCerts::Required => verifier,
            ClientCerts::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| Error::Invalid(format!("client certificate verifier: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(identity.clone()));
        // HTTP/1.1 too: the API server's Kubernetes HTTP API takes it
        // (WebSocket upgrades, clients without HTTP/2).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Every connection authenticates afresh (see the client's).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            identity,
        })
    }

    /// The served certificate (set it to rotate).
    pub fn identity(&self) -> &SwappableIdentity {
        &self.identity
    }

    /// The TLS handshake on an accepted socket.
    ///
    /// # Errors
    /// The handshake failed or took longer than
    /// [`SERVER_HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<Conn> {
        let remote = tcp.peer_addr().ok();
        let tls = tokio::time::timeout(SERVER_HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        let certs: Option<Arc<Vec<CertificateDer<'static>>>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
        let identity = certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|c| Parsed::from_der(c))
            .map(Arc::new);
        // The connection lives no longer than the certificate it was
        // authenticated with: a client whose certificate was rotated
        // reconnects with the new one by then at the latest.
        let expires = identity.as_ref().map(|id| {
            let left = id.not_after - time::OffsetDateTime::now_utc();
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            Box::pin(tokio::time::sleep(left))
        });
        Ok(Conn::Tls {
            stream: Box::new(tls),
            peer: PeerInfo {
                remote,
                certs,
                identity,
            },
            expires,
        })
    }
}

/// One server's bounds on unfinished handshakes, shared by every accept
/// loop of that server (the API server runs one per actor).
#[derive(Clone)]
pub struct HandshakeLimits(Arc<std::sync::Mutex<Pending>>);

impl Default for HandshakeLimits {
    /// [`MAX_PENDING_PER_PEER`] and [`MAX_PENDING_HANDSHAKES`].
    fn default() -> Self {
        Self(Arc::new(std::sync::Mutex::new(Pending::new(
            MAX_PENDING_PER_PEER,
            MAX_PENDING_HANDSHAKES,
        ))))
    }
}

impl HandshakeLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The table stays sound whatever panicked while holding it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The address whose unfinished handshakes are counted together: an IPv4
/// address (IPv4-mapped IPv6 ones as IPv4), or an IPv6 /64 (what one
/// client usually holds whole).
pub(super) fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

/// The connections a server serves: each accepted socket, after its TLS
/// handshake when `tls` is given (each handshake in its own task, so a slow
/// or silent client holds up nobody). Failed handshakes (another CA's
/// certificate, plaintext, a port scan) are logged at debug and dropped;
/// unfinished ones are bounded per peer address and in all
/// ([`MAX_PENDING_PER_PEER`], [`MAX_PENDING_HANDSHAKES`]: the oldest goes)
/// and in time ([`SERVER_HANDSHAKE_TIMEOUT`]).
pub fn handshakes(
    sockets: impl tokio_stream::Stream<Item = TcpStream> + Send + 'static,
    tls: Option<ServerTls>,
    limits: HandshakeLimits,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let pending = limits;
    tokio::spawn(async move {
        let mut sockets = std::pin::pin!(sockets);
        while let Some(tcp) = tokio_stream::StreamExt::next(&mut sockets).await {
            // Without it small replies wait for delayed ACKs (~40 ms).
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            let peer = tcp
                .peer_addr()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            let (closed_tx, closed) = tokio::sync::oneshot::channel();
            let id = pending.lock().add(peer_key(peer), closed_tx);
            let pending = pending.clone();
            tokio::spawn(async move {
                let accepted = tokio::select! {
                    accepted = tls.accept(tcp) => Some(accepted),
                    _ = closed => None,
                };
                pending.lock().remove(id);
                match accepted {
                    Some(Ok(conn)) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    None => {
                        tracing::debug!(%peer, "unfinished TLS handshake closed for a newer one")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The unfinished handshakes of a server, oldest first, by peer address
/// and in all. Dropping an entry's sender closes its connection.
pub(super) struct Pending {
    /// Most entries of one address.
    per_peer: usize,
    /// Most entries in all.
    total: usize,
    /// The id the next entry gets (ids grow: smaller is older).
    next: u64,
    /// Every entry: its address and what closes it.
    pub(super) all:
        std::collections::BTreeMap<u64, (std::net::IpAddr, tokio::sync::oneshot::Sender<()>)>,
    /// The entries of each address.
    pub(super) by_peer:
        std::collections::HashMap<std::net::IpAddr, std::collections::BTreeSet<u64>>,
}

impl Pending {
    pub(super) fn new(per_peer: usize, total: usize) -> Self {
        Self {
            per_peer,
            total,
            next: 0,
            all: Default::default(),
            by_peer: Default::default(),
        }
    }

    /// Adds a handshake from `peer`, closing the oldest of its address (or
    /// of all) when over a bound.
    pub(super) fn add(
        &mut self,
        peer: std::net::IpAddr,
        close: tokio::sync::oneshot::Sender<()>,
    ) -> u64 {
        let id = self.next;
        self.next += 1;
        self.all.insert(id, (peer, close));
        let mine = self.by_peer.entry(peer).or_default();
        mine.insert(id);
        if mine.len() > self.per_peer
            && let Some(oldest) = mine.first().copied()
        {
            self.remove(oldest);
        }
        if self.all.len() > self.total
            && let Some(oldest) = self.all.keys().next().copied()
        {
            self.remove(oldest);
        }
        id
    }

    /// Forgets a handshake (finished, or closed by dropping its sender).
    pub(super) fn remove(&mut self, id: u64) {
        let Some((peer, _close)) = self.all.remove(&id) else {
            return;
        };
        if let Some(mine) = self.by_peer.get_mut(&peer) {
            mine.remove(&id);
            if mine.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}

/// Who is at the other end of a server connection: tonic puts it into
/// every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Its address.
    pub remote: Option<SocketAddr>,
    /// The certificate chain it presented (verified against the CA), if
    /// any.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Its certificate, read back once at the handshake.
    pub identity: Option<Arc<Parsed>>,
}

impl PeerInfo {
    /// The caller's verified certificate, read back, while it is valid
    /// (None once it has expired, on a connection that outlived it).
    pub fn certificate(&self) -> Option<Parsed> {
        self.identity
            .as_deref()
            .filter(|id| id.not_after > time::OffsetDateTime::now_utc())
            .cloned()
    }
}

/// A server connection, plaintext (`--insecure`) or TLS.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, with what the handshake said about the caller.
    Tls {
        /// The stream.
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        /// The caller.
        peer: PeerInfo,
        /// When the caller's certificate expires: the connection ends then.
        expires: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

/// Whether a TLS connection has outlived its caller's certificate (the
/// error that ends it), registering the wake-up when not yet.
fn outlived(
    expires: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
) -> Option<std::io::Error> {
    let sleep = expires.as_mut()?;
    sleep.as_mut().poll(cx).is_ready().then(|| {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the peer's certificate expired",
        )
    })
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(tcp) => PeerInfo {
                remote: tcp.peer_addr().ok(),
                ..Default::default()
            },
            Self::Tls { peer, .. } => peer.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls {
                stream, expires, ..
            } => match outlived(expires, cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Pin::new(stream.as_mut()).poll_read(cx, buf),
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls {
                stream, expires, ..
            } => match outlived(expires, cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Pin::new(stream.as_mut()).poll_write(cx, buf),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }
}
