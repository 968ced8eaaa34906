//! The client config (`~/.skiff/config`, or `$SKIFF_CONFIG`): where the
//! cluster is, like a kubeconfig. `skiff up` writes it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The default API server address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:6443";

/// What the config file holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientConfig {
    /// The API server, `http://127.0.0.1:6443`.
    pub server: String,
    /// The namespace commands use when none is given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: DEFAULT_SERVER.into(),
            namespace: default_namespace(),
        }
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

/// The config, or the defaults when there is none.
///
/// # Errors
/// A config file that exists but does not parse (named in the message).
pub fn load() -> Result<ClientConfig, String> {
    let p = path();
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Writes the config (creating its directory).
///
/// # Errors
/// The file cannot be written.
pub fn save(config: &ClientConfig) -> std::io::Result<PathBuf> {
    let p = path();
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_yaml::to_string(config).map_err(std::io::Error::other)?;
    std::fs::write(
        &p,
        format!("# Written by `skiff up`: where the cluster is.\n{text}"),
    )?;
    Ok(p)
}
