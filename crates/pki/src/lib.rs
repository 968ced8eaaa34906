//! Skiff's certificates, keys and TLS.
//!
//! On first start the API server creates the cluster CA in its data dir
//! (`pki/ca.crt`, `pki/ca.key`, the key readable by its owner only), a
//! serving certificate for its names and addresses, and the identities of
//! the components it trusts; later starts load them. Client identities
//! are certificates from the same CA: the common name is the user
//! (`admin`, `system:node:NAME`), the organizations its groups, as
//! Kubernetes reads them.
//!
//! # Layout
//!
//! - [`ca`]: the CA, issuing certificates, signing CSRs, reading them back
//!   ([`Parsed`]), the CA's public-key pin ([`spki_hash`]), key files.
//! - [`tls`]: rustls configurations both ends use: a client connector
//!   that checks the server by name or by identity and whose certificate
//!   can be swapped (rotation), a pinned first contact (join), and a
//!   server acceptor with optional client certificates whose connections
//!   tell the API who is calling.
//! - [`jwt`]: service-account tokens: ES256 JSON Web Tokens signed with the
//!   server's `sa.key`.

pub mod ca;
pub mod jwt;
pub mod sealed;
pub mod tls;

pub use ca::{
    CA_VALIDITY, CERT_VALIDITY, Ca, Identity, Parsed, RENEW_BEFORE, new_key_and_csr, random_string,
    serving_identity, spki_hash,
};

use std::path::PathBuf;

/// Why certificates, keys or TLS settings could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Generating, signing or parsing a certificate or CSR.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate, key or CSR that does not say what it must.
    #[error("{0}")]
    Invalid(String),
    /// Building a TLS configuration from PEM.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// A token that is malformed, badly signed or expired.
    #[error("token: {0}")]
    Token(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
