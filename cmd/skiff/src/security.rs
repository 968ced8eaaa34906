//! The server side of TLS for `skiff server` and `skiff up`: the API
//! server's keys and certificates under `DATA_DIR/pki`, and the client
//! configs it writes for the admin and the components (like kubeadm's
//! `admin.conf`, `scheduler.conf`, `controller-manager.conf`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use skiff_apiserver::auth::Security;
use skiff_ctl::config::ClientConfig;
use skiff_pki::Identity;

/// The names clients may reach the API server by: this host, loopback,
/// the listen address, the in-cluster `kubernetes` names and first
/// service address, and `extra` (`--tls-san`).
pub fn serving_names(
    listen: SocketAddr,
    service_cidr: &skiff_apiserver::allocator::Cidr,
    extra: &[String],
) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    names.push(crate::common::host_name());
    let ip = listen.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let first_service = u32::from(service_cidr.base) + 1;
    names.push(IpAddr::from(std::net::Ipv4Addr::from(first_service)).to_string());
    names.extend(extra.iter().filter(|n| !n.is_empty()).cloned());
    names.sort();
    names.dedup();
    names
}

/// The API server's security material under `data_dir/pki`, created on
/// first start.
///
/// # Errors
/// Files that cannot be read or written.
pub fn load(
    data_dir: &Path,
    names: &[String],
    node_cert_validity: std::time::Duration,
) -> anyhow::Result<Arc<Security>> {
    let dir = data_dir.join("pki");
    let mut security = Security::load_or_create(&dir, names).with_context(|| {
        format!(
            "preparing the cluster CA and certificates in {}",
            dir.display()
        )
    })?;
    security.node_cert_validity = node_cert_validity;
    // The keys are their owner's only (0600), and so is their directory
    // (Skiff's own; the data dir around it may be one the user shares, and
    // its credentials are 0600 files).
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(Arc::new(security))
}

/// Puts the CA of `dir` (`ca.crt` and `ca.key`, or cert-manager's
/// `tls.crt` and `tls.key`) into `pki` where it has none; the same CA
/// there already is fine.
///
/// # Errors
/// Unreadable files, a certificate that does not parse, or `pki` holding
/// another CA.
pub fn adopt_ca(dir: &Path, pki: &Path) -> anyhow::Result<()> {
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("--ca-dir: reading {}", dir.join(file).display()))
    };
    let (cert_file, key_file) = if dir.join("ca.key").exists() || !dir.join("tls.key").exists() {
        ("ca.crt", "ca.key")
    } else {
        ("tls.crt", "tls.key")
    };
    let (cert, key) = (read(cert_file)?, read(key_file)?);
    anyhow::ensure!(
        skiff_pki::Parsed::from_pem(&cert).is_some(),
        "--ca-dir: {} is not a PEM certificate",
        dir.join(cert_file).display()
    );
    std::fs::create_dir_all(pki).with_context(|| format!("creating {}", pki.display()))?;
    for (file, text, mode) in [("ca.crt", &cert, 0o644), ("ca.key", &key, 0o600)] {
        let path = pki.join(file);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == *text => {}
            Ok(_) => anyhow::bail!(
                "--ca-dir: {} holds another CA than {}: move {} away to take the given one",
                path.display(),
                dir.display(),
                pki.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skiff_pki::ca::write_atomic(&path, text, mode)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(())
}

/// What [`write_configs`] wrote.
pub struct Configs {
    /// The admin's client config (`system:masters`).
    pub admin: PathBuf,
    /// Its certificate, key and the CA as files (for grpcurl).
    pub admin_files: (PathBuf, PathBuf, PathBuf),
    /// The admin config itself.
    pub admin_config: ClientConfig,
    /// The scheduler's.
    pub scheduler: PathBuf,
    /// The controller manager's.
    pub controller_manager: PathBuf,
    /// The ingress controller's.
    pub ingress: PathBuf,
}

/// `name`'s identity from `dir`, reused while it is valid for a while
/// and from this CA, else issued again.
fn identity(
    security: &Security,
    dir: &Path,
    name: &str,
    user: &str,
    groups: &[&str],
) -> anyhow::Result<Identity> {
    if let Some(id) = Identity::load(dir, name)?
        && skiff_pki::Parsed::from_pem(&id.cert_pem).is_some_and(|p| {
            p.common_name == user
                && p.not_after > time::OffsetDateTime::now_utc() + skiff_pki::RENEW_BEFORE
        })
        && skiff_pki::ca::signed_by(&id.cert_pem, &security.ca.cert_pem)
        && skiff_pki::tls::SwappableIdentity::new(Some(&id)).is_ok()
    {
        return Ok(id);
    }
    let id = security.ca.issue_client(user, groups)?;
    id.save(dir, name)?;
    Ok(id)
}

/// Writes the client configs of the admin, the scheduler, the
/// controller manager and the ingress controller into `data_dir` (owner only), for the server at
/// `url`.
///
/// # Errors
/// Files that cannot be written.
pub fn write_configs(security: &Security, data_dir: &Path, url: &str) -> anyhow::Result<Configs> {
    let pki = data_dir.join("pki");
    let ca = &security.ca.cert_pem;
    let admin = identity(security, &pki, "admin", "admin", &["system:masters"])?;
    let admin_config = ClientConfig::with_identity(url, ca, &admin);
    let scheduler = identity(security, &pki, "scheduler", "system:kube-scheduler", &[])?;
    let controllers = identity(
        security,
        &pki,
        "controller-manager",
        "system:kube-controller-manager",
        &[],
    )?;
    let ingress = identity(
        security,
        &pki,
        "ingress",
        skiff_apiserver::auth::rbac::INGRESS_USER,
        &[],
    )?;
    let write = |name: &str, config: &ClientConfig| -> anyhow::Result<PathBuf> {
        let path = data_dir.join(name);
        skiff_ctl::config::save_to(config, &path, "skiff server")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let kubeconfig = data_dir.join("admin.kubeconfig");
    skiff_ctl::config::save_kubeconfig(&admin_config, "admin", &kubeconfig, "skiff server")
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    Ok(Configs {
        admin: write("admin.config", &admin_config)?,
        admin_files: (
            pki.join("admin.crt"),
            pki.join("admin.key"),
            pki.join("ca.crt"),
        ),
        scheduler: write(
            "scheduler.config",
            &ClientConfig::with_identity(url, ca, &scheduler),
        )?,
        controller_manager: write(
            "controller-manager.config",
            &ClientConfig::with_identity(url, ca, &controllers),
        )?,
        ingress: write(
            "ingress.config",
            &ClientConfig::with_identity(url, ca, &ingress),
        )?,
        admin_config,
    })
}

/// The client TLS of a component whose config is at `path`.
///
/// # Errors
/// A config that cannot be read or holds no usable credentials.
pub fn component_tls(path: &Path) -> anyhow::Result<Option<skiff_client::ClientTls>> {
    let config = skiff_ctl::config::load_from(path).map_err(anyhow::Error::msg)?;
    config.tls().map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests;
