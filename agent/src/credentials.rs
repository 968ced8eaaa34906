//! The agent's identity: `system:node:NAME`, a certificate from the
//! cluster CA kept in `DATA_DIR/pki` (`ca.crt`, `node.crt`, `node.key`).
//!
//! First start (like kubeadm's join): the agent is given a bootstrap token
//! and the CA's public-key pin. It learns the CA from the server's
//! handshake, accepting it only if its key has the pin, then sends a CSR
//! for a key of its own with the token; the server signs it for
//! `system:node:NAME`. Later starts use the stored certificate, and a
//! rotation task renews it (a new key, through `Certificates/Renew` with
//! the current certificate) once 80 % of its life is gone; the new one is
//! used from the next connection on, by the client and by the agent's own
//! server alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use skiff::pb::authentication::v1::certificates_client::CertificatesClient;
use skiff::pb::authentication::v1::{JoinRequest, RenewRequest};
use skiff_pki::Identity;
use skiff_pki::tls::{ClientTls, ServerCheck, SwappableIdentity};

/// The share of a certificate's life after which it is renewed (the
/// kubelet renews at 70–90 %).
pub const RENEW_AT: f64 = 0.8;

/// A bootstrap token and the CA pin, for a first join.
#[derive(Clone)]
pub struct JoinToken {
    /// `ID.SECRET`, from `skiff token create`.
    pub token: String,
    /// `sha256:...`, the CA public key's pin.
    pub ca_hash: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret half never shows.
        let id = self.token.split('.').next().unwrap_or_default();
        f.debug_struct("JoinToken")
            .field("id", &id)
            .field("ca_hash", &self.ca_hash)
            .finish()
    }
}

/// Why the agent has no identity.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing stored and no token to join with.
    #[error(
        "no credentials in {dir} for {server}: on the server run `skiff token create` and start the agent with --token TOKEN --ca-hash sha256:... (or --server http://... for a server started --insecure)"
    )]
    NoCredentials {
        /// Where they would be.
        dir: PathBuf,
        /// The server.
        server: String,
    },
    /// Reading or writing the files, or a certificate that does not parse.
    #[error("credentials: {0}")]
    Pki(#[from] skiff_pki::Error),
    /// The server refused the join or could not be reached.
    #[error("joining {server}: {message}")]
    Join {
        /// The server.
        server: String,
        /// What it said.
        message: String,
    },
}

/// How long one server may take to show its CA when joining.
const JOIN_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The agent's CA and (rotating) certificate.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The cluster CA.
    pub ca_pem: String,
    /// The certificate the agent presents and serves with.
    pub identity: SwappableIdentity,
    /// Where they are kept.
    dir: PathBuf,
}

fn files(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Whether `cert` is for `user` and still valid.
fn usable(cert: &str, user: &str) -> bool {
    skiff_pki::Parsed::from_pem(cert)
        .is_some_and(|p| p.common_name == user && p.not_after > time::OffsetDateTime::now_utc())
}

impl Credentials {
    /// The client TLS for the API server at `host`.
    ///
    /// # Errors
    /// Stored PEM that does not parse.
    pub fn client(&self) -> Result<ClientTls, Error> {
        Ok(ClientTls::with_identity(
            &self.ca_pem,
            self.identity.clone(),
            ServerCheck::Name,
        )?)
    }

    /// Writes a certificate for `node` from `ca` into `data_dir` unless a
    /// usable one is there (`skiff up`, whose agent is on the server's own
    /// machine, needs no join).
    ///
    /// # Errors
    /// Issuing or writing failed.
    pub fn provision(
        ca: &skiff_pki::Ca,
        data_dir: &Path,
        node: &str,
        validity: Duration,
    ) -> Result<(), Error> {
        let dir = files(data_dir);
        let user = format!("system:node:{node}");
        if let Some(identity) = Identity::load(&dir, "node")?
            && usable(&identity.cert_pem, &user)
            && skiff_pki::ca::read_optional(&dir.join("ca.crt"))?.as_deref()
                == Some(ca.cert_pem.as_str())
        {
            return Ok(());
        }
        let identity = ca.issue_client_for(&user, &["system:nodes"], validity, true)?;
        skiff_pki::ca::write_atomic(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
        identity.save(&dir, "node")?;
        Ok(())
    }

    /// The stored credentials for `node`, or new ones from a join with
    /// `join`.
    ///
    /// # Errors
    /// None stored and no token; a refused join.
    pub async fn obtain(
        server: &str,
        node: &str,
        data_dir: &Path,
        join: Option<&JoinToken>,
    ) -> Result<Self, Error> {
        let dir = files(data_dir);
        let user = format!("system:node:{node}");
        let stored = Identity::load(&dir, "node")?;
        let ca = skiff_pki::ca::read_optional(&dir.join("ca.crt"))?;
        if let (Some(identity), Some(ca_pem)) = (stored, ca)
            && usable(&identity.cert_pem, &user)
        {
            return Ok(Self {
                ca_pem,
                identity: SwappableIdentity::new(Some(&identity))?,
                dir,
            });
        }
        let Some(join) = join else {
            return Err(Error::NoCredentials {
                dir,
                server: server.to_string(),
            });
        };
        let refused = |message: String| Error::Join {
            server: server.to_string(),
            message,
        };
        // The CA from the first of the servers that proves it holds it.
        let mut ca_pem = None;
        let mut failures = Vec::new();
        for uri in skiff_client::servers(server).map_err(|e| refused(e.to_string()))? {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(443);
            let fetched = tokio::time::timeout(
                JOIN_CONNECT_TIMEOUT,
                skiff_pki::tls::fetch_pinned_ca(&host, port, &join.ca_hash),
            )
            .await
            .unwrap_or_else(|_| {
                Err(skiff_pki::Error::Invalid(format!(
                    "reaching {host}:{port}: no answer in {JOIN_CONNECT_TIMEOUT:?}"
                )))
            });
            match fetched {
                Ok(pem) => {
                    ca_pem = Some(pem);
                    break;
                }
                Err(e) => failures.push(e),
            }
        }
        let ca_pem = match ca_pem {
            Some(pem) => pem,
            None => {
                return Err(failures
                    .pop()
                    .map_or_else(|| refused("no server".into()), Error::from));
            }
        };
        let (key_pem, csr) = skiff_pki::new_key_and_csr(&user)?;
        let tls = ClientTls::new(&ca_pem, None, ServerCheck::Name)?;
        let channel = skiff_client::connect_lazy_with(server, Some(&tls))
            .map_err(|e| refused(e.to_string()))?;
        let mut request = tonic::Request::new(JoinRequest {
            node_name: node.to_string(),
            csr,
        });
        let bearer = format!("Bearer {}", join.token.trim())
            .parse()
            .map_err(|_| refused("the token is not printable ASCII".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        let issued = CertificatesClient::new(channel)
            .join(request)
            .await
            .map_err(|s| refused(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let identity = Identity {
            cert_pem: issued.certificate,
            key_pem,
        };
        skiff_pki::ca::write_atomic(&dir.join("ca.crt"), &ca_pem, 0o644)?;
        identity.save(&dir, "node")?;
        tracing::info!(
            node,
            server,
            "joined the cluster: certificate stored in {}",
            dir.display()
        );
        Ok(Self {
            ca_pem,
            identity: SwappableIdentity::new(Some(&identity))?,
            dir,
        })
    }

    /// The current certificate and when it was obtained (the file's time).
    fn current(&self) -> Option<(skiff_pki::Parsed, SystemTime)> {
        let path = self.dir.join("node.crt");
        let cert = std::fs::read_to_string(&path).ok()?;
        let obtained = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        Some((skiff_pki::Parsed::from_pem(&cert)?, obtained))
    }

    /// How long until the certificate is due for renewal.
    fn until_renewal(&self) -> Duration {
        let Some((cert, obtained)) = self.current() else {
            return Duration::from_secs(10);
        };
        let obtained = time::OffsetDateTime::from(obtained);
        let due = obtained + (cert.not_after - obtained) * RENEW_AT;
        let wait = due - time::OffsetDateTime::now_utc();
        Duration::try_from(wait).unwrap_or(Duration::ZERO)
    }

    /// Renews the certificate once through `channel` (which presents the
    /// current one), stores it and swaps it in.
    async fn renew(&self, channel: tonic::transport::Channel) -> Result<(), String> {
        let user = self
            .current()
            .map(|(c, _)| c.common_name)
            .unwrap_or_default();
        let (key_pem, csr) = skiff_pki::new_key_and_csr(&user).map_err(|e| e.to_string())?;
        let issued = CertificatesClient::new(channel)
            .renew(RenewRequest { csr })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let identity = Identity {
            cert_pem: issued.certificate,
            key_pem,
        };
        identity
            .save(&self.dir, "node")
            .map_err(|e| e.to_string())?;
        self.identity.set(&identity).map_err(|e| e.to_string())?;
        tracing::info!(
            user,
            not_after = ?issued.not_after.map(|t| t.seconds),
            "certificate rotated"
        );
        Ok(())
    }

    /// Renews the certificate whenever it is due, until aborted.
    pub async fn rotate(self, channel: tonic::transport::Channel) {
        loop {
            tokio::time::sleep(self.until_renewal().max(Duration::from_secs(1))).await;
            if let Err(e) = self.renew(channel.clone()).await {
                tracing::warn!(error = %e, "renewing the node certificate; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}
