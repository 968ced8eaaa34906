//! The TLS both ends of every Skiff connection speak (rustls, ring).
//!
//! - Clients: [`ClientTls`] trusts the cluster CA and checks the server
//!   either by the name it is reached at (the API server) or by the
//!   identity in its certificate (an agent, whose certificate names no
//!   host). Its own certificate sits in a [`SwappableIdentity`], so a
//!   rotated certificate is used from the next connection on without
//!   rebuilding clients. [`Connector`] plugs it into tonic.
//! - First contact: [`fetch_pinned_ca`] learns the CA from a server whose
//!   CA public key the caller knows by its pin (`sha256:...`), as kubeadm's
//!   discovery does, before any certificate is trusted.
//! - Servers: [`ServerTls`] serves an identity that can be swapped too,
//!   asks for client certificates (required or optional), and its
//!   connections ([`Conn`]) carry the caller's certificates
//!   ([`PeerInfo`]) into every request's extensions, where the
//!   authentication layer reads them.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

/// How long a client waits for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server waits for a client to finish its TLS handshake: a
/// silent or half-open connection is closed then.
pub const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The crypto every config uses (ring; never a process-wide default,
/// which panics when two providers are linked).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(format!("reading certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Invalid("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn certified(identity: &Identity) -> Result<Arc<CertifiedKey>> {
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| Error::Invalid(format!("reading the private key: {e}")))?;
    let key = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(certs(&identity.cert_pem)?, key)))
}

/// A certificate and key that can be replaced while connections use them:
/// certificate rotation without rebuilding clients or servers.
#[derive(Clone, Default)]
pub struct SwappableIdentity(Arc<RwLock<Option<Arc<CertifiedKey>>>>);

impl std::fmt::Debug for SwappableIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwappableIdentity").finish_non_exhaustive()
    }
}

impl SwappableIdentity {
    /// Holds `identity` (none: a client without a certificate).
    ///
    /// # Errors
    /// A certificate or key that does not parse.
    pub fn new(identity: Option<&Identity>) -> Result<Self> {
        let held = identity.map(certified).transpose()?;
        Ok(Self(Arc::new(RwLock::new(held))))
    }

    /// Uses `identity` from the next handshake on.
    ///
    /// # Errors
    /// A certificate or key that does not parse (the old one stays).
    pub fn set(&self, identity: &Identity) -> Result<()> {
        let key = certified(identity)?;
        if let Ok(mut held) = self.0.write() {
            *held = Some(key);
        }
        Ok(())
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().and_then(|held| held.clone())
    }
}

impl ResolvesClientCert for SwappableIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

impl ResolvesServerCert for SwappableIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

// === client ===

/// How a client checks the server it reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCheck {
    /// Its certificate chains to the CA and names the host it is reached
    /// at (the API server).
    Name,
    /// Its certificate chains to the CA and its common name is this
    /// identity (`system:node:NAME`: an agent, reached by the API server).
    Identity(String),
}

/// A client's TLS settings: the CA it trusts, how it checks the server,
/// and its own (swappable) certificate.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    identity: SwappableIdentity,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts `ca_pem`, checks servers by `check`, and presents
    /// `identity` (none: no client certificate).
    ///
    /// # Errors
    /// PEM that does not parse.
    pub fn new(ca_pem: &str, identity: Option<&Identity>, check: ServerCheck) -> Result<Self> {
        let identity = SwappableIdentity::new(identity)?;
        Self::with_identity(ca_pem, identity, check)
    }

    /// As [`ClientTls::new`], sharing an identity another config holds
    /// (rotating it rotates both).
    ///
    /// # Errors
    /// PEM that does not parse.
    pub fn with_identity(
        ca_pem: &str,
        identity: SwappableIdentity,
        check: ServerCheck,
    ) -> Result<Self> {
        let roots = roots(ca_pem)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match check {
            ServerCheck::Name => builder.with_root_certificates(roots),
            ServerCheck::Identity(expected) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(IdentityVerifier {
                    roots,
                    expected,
                    provider: provider(),
                })),
        };
        let mut config = builder.with_client_cert_resolver(Arc::new(identity.clone()));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session carries the certificate of the first one: a
        // rotated certificate must be presented in a full handshake.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            config: Arc::new(config),
            identity,
        })
    }

    /// The certificate this client presents (set it to rotate).
    pub fn identity(&self) -> &SwappableIdentity {
        &self.identity
    }

    /// A connector for tonic (`Endpoint::connect_with_connector_lazy`)
    /// reaching `host` (the name the server's certificate must carry when
    /// checked by name).
    ///
    /// # Errors
    /// A host that is neither a DNS name nor an IP address.
    pub fn connector(&self, host: &str) -> Result<Connector> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| Error::Invalid(format!("server name {host:?}: {e}")))?;
        Ok(Connector {
            config: Arc::clone(&self.config),
            server_name,
        })
    }
}

/// Dials TCP, then TLS, for every connection tonic opens.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

/// The connection a [`Connector`] makes.
pub type ClientStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = ClientStream;
    type Error = std::io::Error;
    type Future = BoxFuture<std::io::Result<ClientStream>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1");
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            // Without it small replies wait for delayed ACKs (~40 ms).
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// Checks a server by the identity in its certificate, not by a name.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

/// The handshake-signature half of a [`ServerCertVerifier`], the same
/// for every verifier here: rustls' own checks with the verifier's
/// `provider`.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let who = Parsed::from_der(end_entity).map(|p| p.common_name);
        if who.as_deref() != Some(self.expected.as_str()) {
            return Err(rustls::Error::General(format!(
                "the server is {:?}, not {:?}",
                who.unwrap_or_default(),
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts a server whose presented chain holds a CA certificate with the
/// pinned public key, that CA signed the server's certificate, and the
/// certificate names the host; remembers the CA.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Parsed::from_der(c).is_some_and(|p| p.is_ca && p.spki_hash == self.pin))
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "no CA certificate the server presented has the public key {}",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        rustls::client::verify_server_name(&cert, server_name)?;
        if let Ok(mut found) = self.found.lock() {
            *found = Some(ca.clone().into_owned());
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts whatever certificate a server shows (its handshake signatures
/// are still checked): the kubelet's HTTPS probes and hooks skip
/// verification, as the pods' certificates are nobody's the node trusts.
#[derive(Debug)]
struct UncheckedVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UncheckedVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Wraps a connection to a pod in TLS without checking the pod's
/// certificate (HTTPS probes and lifecycle hooks, as the kubelet does).
///
/// # Errors
/// The handshake failed.
pub async fn probe_tls(
    tcp: TcpStream,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let verifier = Arc::new(UncheckedVerifier {
        provider: provider(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Connects to `host:port` and returns the cluster CA's certificate (PEM)
/// if the server proves it holds a certificate for `host` signed by a CA
/// whose public key has the pin `pin` (`sha256:` + hex, as
/// `skiff token create` prints it). Nothing is sent but the handshake.
///
/// # Errors
/// The server cannot be reached, or presents no such chain (the message
/// says which).
pub async fn fetch_pinned_ca(host: &str, port: u16, pin: &str) -> Result<String> {
    let pin = pin.trim().to_ascii_lowercase();
    if !pin.starts_with("sha256:") || pin.len() != 7 + 64 {
        return Err(Error::Invalid(format!(
            "CA hash {pin:?}: expected sha256: and 64 hex digits (skiff token create prints it)"
        )));
    }
    let verifier = Arc::new(PinVerifier {
        pin,
        provider: provider(),
        found: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Error::Invalid(format!("server name {host:?}: {e}")))?;
    let io = |e: std::io::Error| Error::Invalid(format!("reaching {host}:{port}: {e}"));
    let tcp = TcpStream::connect((host, port)).await.map_err(io)?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        Error::Invalid(format!(
            "reaching {host}:{port}: the TLS handshake timed out"
        ))
    })?
    .map_err(io)?;
    let found = verifier.found.lock().ok().and_then(|f| f.clone());
    found
        .map(|der| crate::ca::pem("CERTIFICATE", &der))
        .ok_or_else(|| Error::Invalid("the server's CA was not found".into()))
}

// === server ===

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
fn peer_key(ip: std::net::IpAddr) -> std::net::IpAddr {
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
struct Pending {
    /// Most entries of one address.
    per_peer: usize,
    /// Most entries in all.
    total: usize,
    /// The id the next entry gets (ids grow: smaller is older).
    next: u64,
    /// Every entry: its address and what closes it.
    all: std::collections::BTreeMap<u64, (std::net::IpAddr, tokio::sync::oneshot::Sender<()>)>,
    /// The entries of each address.
    by_peer: std::collections::HashMap<std::net::IpAddr, std::collections::BTreeSet<u64>>,
}

impl Pending {
    fn new(per_peer: usize, total: usize) -> Self {
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
    fn add(&mut self, peer: std::net::IpAddr, close: tokio::sync::oneshot::Sender<()>) -> u64 {
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
    fn remove(&mut self, id: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Cluster {
        _dir: tempfile::TempDir,
        ca: crate::Ca,
        server: ServerTls,
        addr: SocketAddr,
        /// What each accepted connection said about its caller.
        peers: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<PeerInfo>>,
    }

    /// A TLS echo server with the CA's serving certificate for
    /// 127.0.0.1, asking for `client_certs`.
    async fn cluster(client_certs: ClientCerts) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::Ca::load_or_create(dir.path()).unwrap();
        let serving = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
        let server = ServerTls::new(&serving, &ca.cert_pem, client_certs).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, peers) = tokio::sync::mpsc::unbounded_channel();
        let accepting = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let accepted = accepting.accept(tcp).await;
                match accepted {
                    Ok(mut conn) => {
                        let _ =
                            tx.send(Ok(tonic::transport::server::Connected::connect_info(&conn)));
                        let mut buf = [0u8; 5];
                        if conn.read_exact(&mut buf).await.is_ok() {
                            let _ = conn.write_all(&buf).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        });
        Cluster {
            _dir: dir,
            ca,
            server,
            addr,
            peers,
        }
    }

    async fn echo(tls: &ClientTls, host: &str, addr: SocketAddr) -> std::io::Result<()> {
        let uri: http::Uri = format!("http://{}:{}", host, addr.port()).parse().unwrap();
        let mut connector = tls.connector(host).unwrap();
        let stream = tower::Service::call(&mut connector, uri).await?;
        let mut stream = stream.into_inner();
        stream.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        Ok(())
    }

    #[tokio::test]
    async fn a_probe_speaks_tls_to_a_server_of_any_ca() {
        // A CA the client knows nothing of, as a pod's own.
        let c = cluster(ClientCerts::Optional).await;
        let tcp = TcpStream::connect(c.addr).await.unwrap();
        let mut stream = probe_tls(tcp, "127.0.0.1").await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        // Plain TCP to it is no TLS server's answer.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = plain.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(probe_tls(tcp, "127.0.0.1").await.is_err());
    }

    #[tokio::test]
    async fn the_server_learns_the_client_identity_and_rotation_takes_effect() {
        let mut c = cluster(ClientCerts::Optional).await;
        let first = c.ca.issue_client("admin", &["system:masters"]).unwrap();
        let tls = ClientTls::new(&c.ca.cert_pem, Some(&first), ServerCheck::Name).unwrap();
        echo(&tls, "127.0.0.1", c.addr).await.unwrap();
        let peer = c.peers.recv().await.unwrap().unwrap();
        assert_eq!(peer.certificate().unwrap().common_name, "admin");

        let second = c.ca.issue_client("someone-else", &[]).unwrap();
        tls.identity().set(&second).unwrap();
        echo(&tls, "127.0.0.1", c.addr).await.unwrap();
        let peer = c.peers.recv().await.unwrap().unwrap();
        assert_eq!(peer.certificate().unwrap().common_name, "someone-else");

        // No certificate is fine when optional: the server knows nobody.
        let anonymous = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
        echo(&anonymous, "127.0.0.1", c.addr).await.unwrap();
        assert!(c.peers.recv().await.unwrap().unwrap().certs.is_none());
    }

    #[tokio::test]
    async fn a_certificate_of_another_ca_or_none_when_required_fails_the_handshake() {
        let mut c = cluster(ClientCerts::Required).await;
        let other_dir = tempfile::tempdir().unwrap();
        let other = crate::Ca::load_or_create(other_dir.path()).unwrap();
        let stranger = other.issue_client("admin", &["system:masters"]).unwrap();
        let tls = ClientTls::new(&c.ca.cert_pem, Some(&stranger), ServerCheck::Name).unwrap();
        let _ = echo(&tls, "127.0.0.1", c.addr).await;
        assert!(
            c.peers.recv().await.unwrap().is_err(),
            "another CA's client"
        );
        let anonymous = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
        let _ = echo(&anonymous, "127.0.0.1", c.addr).await;
        assert!(c.peers.recv().await.unwrap().is_err(), "no certificate");
    }

    #[tokio::test]
    async fn a_server_is_checked_by_name_or_by_identity() {
        let c = cluster(ClientCerts::Optional).await;
        let tls = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
        // The serving certificate names 127.0.0.1, not localhost.
        let wrong = echo(&tls, "localhost", c.addr).await.unwrap_err();
        assert!(wrong.to_string().contains("not valid for name"), "{wrong}");

        // An agent's certificate names no host: checked by identity.
        let node =
            c.ca.issue_client_for(
                "system:node:n1",
                &["system:nodes"],
                CERT_VALIDITY_TEST,
                true,
            )
            .unwrap();
        c.server.identity().set(&node).unwrap();
        let by_name = ClientTls::new(&c.ca.cert_pem, None, ServerCheck::Name).unwrap();
        assert!(echo(&by_name, "127.0.0.1", c.addr).await.is_err());
        let right = ClientTls::new(
            &c.ca.cert_pem,
            None,
            ServerCheck::Identity("system:node:n1".into()),
        )
        .unwrap();
        echo(&right, "127.0.0.1", c.addr).await.unwrap();
        let other = ClientTls::new(
            &c.ca.cert_pem,
            None,
            ServerCheck::Identity("system:node:n2".into()),
        )
        .unwrap();
        let err = echo(&other, "127.0.0.1", c.addr).await.unwrap_err();
        assert!(err.to_string().contains("not \"system:node:n2\""), "{err}");
    }

    const CERT_VALIDITY_TEST: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_connection_ends_when_the_callers_certificate_does() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::Ca::load_or_create(dir.path()).unwrap();
        let serving = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
        let server = ServerTls::new(&serving, &ca.cert_pem, ClientCerts::Required).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = server.accept(tcp).await.unwrap();
            let mut buf = [0u8; 1];
            // Echo until the connection ends.
            while conn.read_exact(&mut buf).await.is_ok() {
                if conn.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let short = ca
            .issue_client_for("brief", &[], Duration::from_secs(2), false)
            .unwrap();
        let tls = ClientTls::new(&ca.cert_pem, Some(&short), ServerCheck::Name).unwrap();
        let mut connector = tls.connector("127.0.0.1").unwrap();
        let uri: http::Uri = format!("http://127.0.0.1:{}", addr.port()).parse().unwrap();
        let mut stream = tower::Service::call(&mut connector, uri)
            .await
            .unwrap()
            .into_inner();
        let mut buf = [0u8; 1];
        stream.write_all(b"a").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = stream.write_all(b"b").await;
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "the server closed the connection: {ended:?}"
        );
    }

    #[tokio::test]
    async fn the_pinned_ca_is_learned_and_a_wrong_pin_is_refused() {
        let c = cluster(ClientCerts::Optional).await;
        let pin = crate::spki_hash(&c.ca.cert_pem).unwrap();
        let ca = fetch_pinned_ca("127.0.0.1", c.addr.port(), &pin)
            .await
            .unwrap();
        assert_eq!(crate::spki_hash(&ca).unwrap(), pin);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let err = fetch_pinned_ca("127.0.0.1", c.addr.port(), &wrong)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
        let err = fetch_pinned_ca("127.0.0.1", c.addr.port(), "abc")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn peers_count_by_ipv4_address_or_ipv6_prefix() {
        let key = |s: &str| peer_key(s.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:127.0.0.1"), key("127.0.0.1"));
        assert_ne!(key("127.0.0.1"), key("127.0.0.2"));
    }

    #[test]
    fn unfinished_handshakes_past_the_bounds_close_the_oldest() {
        let mut pending = Pending::new(2, 3);
        let a = std::net::IpAddr::from([127, 0, 0, 1]);
        let b = std::net::IpAddr::from([127, 0, 0, 2]);
        let mut closed = Vec::new();
        let mut add = |pending: &mut Pending, peer| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            closed.push(rx);
            pending.add(peer, tx)
        };
        let first = add(&mut pending, a);
        add(&mut pending, a);
        add(&mut pending, a);
        // The third from one address closed its first.
        assert!(!pending.all.contains_key(&first));
        assert_eq!(pending.by_peer[&a].len(), 2);
        add(&mut pending, b);
        add(&mut pending, b);
        // Four in all is over three: the oldest of all went.
        assert_eq!(pending.all.len(), 3);
        assert_eq!(pending.by_peer[&a].len(), 1);
        assert!(matches!(
            closed[0].try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(
            closed[4].try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        // A finished handshake leaves no trace.
        let ids: Vec<u64> = pending.all.keys().copied().collect();
        for id in ids {
            pending.remove(id);
        }
        assert!(pending.by_peer.is_empty());
    }
}
