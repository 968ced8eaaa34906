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
//!
//! The client side (with first contact) is in `tls/client.rs`, the
//! server side in `tls/server.rs`; both share the crypto [`provider`]
//! and the [`SwappableIdentity`] defined here, and are re-exported here.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Identity, Result};

mod client;
mod server;

pub use client::{
    ClientStream, ClientTls, Connector, HANDSHAKE_TIMEOUT, ServerCheck, fetch_pinned_ca, probe_tls,
};
pub use server::{
    ClientCerts, Conn, HandshakeLimits, MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_PEER, PeerInfo,
    SERVER_HANDSHAKE_TIMEOUT, ServerTls, handshakes,
};

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

/// A certificate chain and its key, ready for a rustls resolver.
///
/// # Errors
/// PEM text that holds no certificate or no usable key.
pub fn certified(identity: &Identity) -> Result<Arc<CertifiedKey>> {
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

#[cfg(test)]
mod tests;
