//! The client config (`~/.skiff/config`, or `$SKIFF_CONFIG`): where the
//! cluster is and who the client is, like a kubeconfig. `skiff up` writes
//! it; `skiff server` writes one per component in its data dir.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skiff_client::ClientTls;

/// The default API server address.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:6443";

/// What the config file holds.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// The API server, `https://127.0.0.1:6443` (`http://` for a server
    /// started `--insecure`).
    pub server: String,
    /// The namespace commands use when none is given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The cluster CA's certificate (PEM): the server must chain to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority: String,
    /// The client's certificate (PEM): who it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_certificate: String,
    /// The certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_key: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn default_namespace() -> String {
    "default".into()
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: DEFAULT_SERVER.into(),
            namespace: default_namespace(),
            certificate_authority: String::new(),
            client_certificate: String::new(),
            client_key: String::new(),
        }
    }
}

/// Why the client config cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a client config.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: serde_yaml::Error,
    },
    /// An `https://` server without a CA to check it by.
    #[error("{0} is https but the config has no certificateAuthority")]
    NoCa(String),
    /// The CA or the client's certificate and key do not parse.
    #[error(transparent)]
    Tls(skiff_pki::Error),
    /// The CA does not parse.
    #[error("the client config's certificateAuthority: {0}")]
    Ca(#[source] skiff_pki::Error),
}

impl ClientConfig {
    /// A config for `server` with a CA and a client identity.
    pub fn with_identity(server: &str, ca_pem: &str, identity: &skiff_pki::Identity) -> Self {
        Self {
            server: server.to_string(),
            certificate_authority: ca_pem.to_string(),
            client_certificate: identity.cert_pem.clone(),
            client_key: identity.key_pem.clone(),
            ..Self::default()
        }
    }

    /// The TLS settings the config describes: None for `http://`.
    ///
    /// # Errors
    /// `https://` without a CA, or PEM that does not parse.
    pub fn tls(&self) -> Result<Option<ClientTls>, Error> {
        if !self.server.starts_with("https://") {
            return Ok(None);
        }
        if self.certificate_authority.is_empty() {
            return Err(Error::NoCa(self.server.clone()));
        }
        let identity = (!self.client_certificate.is_empty()).then(|| skiff_pki::Identity {
            cert_pem: self.client_certificate.clone(),
            key_pem: self.client_key.clone(),
        });
        ClientTls::new(
            &self.certificate_authority,
            identity.as_ref(),
            skiff_pki::tls::ServerCheck::Name,
        )
        .map(Some)
        .map_err(Error::Tls)
    }

    /// The CA's public-key pin (`sha256:...`), for `skiff agent --ca-hash`.
    ///
    /// # Errors
    /// No CA in the config.
    pub fn ca_hash(&self) -> Result<String, Error> {
        skiff_pki::spki_hash(&self.certificate_authority).map_err(Error::Ca)
    }
}

/// Where the config lives: `$SKIFF_CONFIG`, else `~/.skiff/config`.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".skiff")
        .join("config")
}

/// The config at `path`, or the defaults when there is none.
///
/// # Errors
/// A config file that exists but does not parse (named in the message).
pub fn load_from(p: &Path) -> Result<ClientConfig, Error> {
    match std::fs::read_to_string(p) {
        Ok(text) => serde_yaml::from_str(&text).map_err(|source| Error::Parse {
            path: p.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(source) => Err(Error::Read {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// The config at [`path`], or the defaults when there is none.
///
/// # Errors
/// A config file that exists but does not parse (named in the message).
pub fn load() -> Result<ClientConfig, Error> {
    load_from(&path())
}

/// Writes `config` to `path` (its owner only: it holds a key), creating
/// its directory.
///
/// # Errors
/// The file cannot be written.
pub fn save_to(config: &ClientConfig, p: &Path, written_by: &str) -> std::io::Result<()> {
    skiff_pki::ca::write_atomic(p, &to_text(config, written_by), 0o600)
        .map_err(std::io::Error::other)
}

/// The config as its file holds it, saying who wrote it.
pub fn to_text(config: &ClientConfig, written_by: &str) -> String {
    let text = serde_yaml::to_string(config).unwrap_or_default();
    format!("# Written by `{written_by}`: where the cluster is and who you are.\n{text}")
}

/// Writes the config to [`path`].
///
/// # Errors
/// The file cannot be written.
pub fn save(config: &ClientConfig) -> std::io::Result<PathBuf> {
    let p = path();
    save_to(config, &p, "skiff up")?;
    Ok(p)
}

/// The config as a kubeconfig, for kubectl, helm and every Kubernetes
/// client (`KUBECONFIG=~/.skiff/kubeconfig kubectl get nodes`): cluster
/// `skiff`, user `user`, context `skiff`, credentials inline.
pub fn kubeconfig(config: &ClientConfig, user: &str) -> String {
    use base64::Engine as _;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let mut cluster = serde_json::json!({"server": config.server});
    if !config.certificate_authority.is_empty() {
        cluster["certificate-authority-data"] = b64(&config.certificate_authority).into();
    }
    let mut credentials = serde_json::json!({});
    if !config.client_certificate.is_empty() {
        credentials["client-certificate-data"] = b64(&config.client_certificate).into();
        credentials["client-key-data"] = b64(&config.client_key).into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "skiff", "context": {
            "cluster": "skiff", "user": user, "namespace": config.namespace,
        }}],
        "current-context": "skiff",
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Writes the kubeconfig of `config` (owner only).
///
/// # Errors
/// The file cannot be written.
pub fn save_kubeconfig(
    config: &ClientConfig,
    user: &str,
    p: &Path,
    written_by: &str,
) -> std::io::Result<()> {
    skiff_pki::ca::write_atomic(
        p,
        &format!(
            "# Written by `{written_by}`: for kubectl, helm and other Kubernetes clients.\n{}",
            kubeconfig(config, user)
        ),
        0o600,
    )
    .map_err(std::io::Error::other)
}

/// Where `skiff up` writes the admin's kubeconfig: `kubeconfig` beside
/// the client config (`~/.skiff/kubeconfig`).
pub fn kubeconfig_path() -> PathBuf {
    path().with_file_name("kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfigs_carry_the_server_ca_and_credentials_inline() {
        let dir = tempfile::tempdir().unwrap();
        let ca = skiff_pki::Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
        let config = ClientConfig::with_identity("https://127.0.0.1:6443", &ca.cert_pem, &admin);
        let path = dir.path().join("kubeconfig");
        save_kubeconfig(&config, "admin", &path, "test").unwrap();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["current-context"], "skiff");
        assert_eq!(
            doc["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        use base64::Engine as _;
        let ca_data = doc["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ca_data)
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), ca.cert_pem);
        assert!(doc["users"][0]["user"]["client-key-data"].is_string());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_config_round_trips_and_its_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = skiff_pki::Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let admin = ca.issue_client("admin", &["system:masters"]).unwrap();
        let config = ClientConfig::with_identity("https://127.0.0.1:6443", &ca.cert_pem, &admin);
        let file = dir.path().join("config");
        save_to(&config, &file, "a test").unwrap();
        assert_eq!(load_from(&file).unwrap(), config);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(config.tls().unwrap().is_some());
        assert!(config.ca_hash().unwrap().starts_with("sha256:"));
        assert!(!format!("{config:?}").contains("PRIVATE"));
        let insecure = ClientConfig {
            server: "http://127.0.0.1:6443".into(),
            ..ClientConfig::default()
        };
        assert!(insecure.tls().unwrap().is_none());
        let broken = ClientConfig::default();
        assert!(
            broken
                .tls()
                .unwrap_err()
                .to_string()
                .contains("certificateAuthority")
        );
    }
}
