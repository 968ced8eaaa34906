//! The client side of Skiff's TLS: [`ClientTls`] and the [`Connector`]
//! it gives tonic, the server-certificate verifiers (by identity, by CA
//! pin, unchecked), HTTPS probes ([`probe_tls`]) and first contact
//! ([`fetch_pinned_ca`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use super::{SwappableIdentity, provider, roots};
use crate::{Error, Identity, Parsed, Result};

/// How long a client waits for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
