//! `skiff server --etcd … --cluster-token TOKEN`: API servers of one
//! cluster share its CA, the CA's key and the token signing key through
//! the store they share, sealed with the token ([`skiff_pki::sealed`]), as
//! k3s' servers do: the first server publishes its own; a server whose
//! data dir has none takes them from the store; a server whose CA is not
//! the cluster's refuses to start. Without the token nothing is published
//! and the files are copied by hand (kubeadm's manual way).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use skiff_store::Store as _;

/// Where the sealed bundle lives (outside `/registry/`, no object's key).
pub(crate) const KEY: &str = "/skiff/bootstrap/pki";
/// The files of `DATA_DIR/pki` every server of the cluster shares, and
/// their modes.
const FILES: [(&str, u32); 3] = [("ca.crt", 0o644), ("ca.key", 0o600), ("sa.key", 0o600)];

/// Before the server loads its keys: the cluster's, written into `pki`
/// where it has none. Whether the store had them.
///
/// # Errors
/// The store does not answer, the token does not open the bundle, or this
/// server already has a CA that is not the cluster's.
pub(crate) async fn fetch(
    store: &skiff_store::EtcdStore,
    token: &str,
    pki: &Path,
) -> anyhow::Result<bool> {
    let Some(kv) = store
        .get(KEY)
        .await
        .context("reading the cluster's keys from etcd")?
    else {
        return Ok(false);
    };
    let plain = skiff_pki::sealed::open(token, KEY, &kv.value).context(
        "opening the cluster's keys: is --cluster-token the one the first server was given?",
    )?;
    let bundle: BTreeMap<String, String> =
        serde_json::from_slice(&plain).context("the cluster's keys in etcd are not a bundle")?;
    std::fs::create_dir_all(pki).with_context(|| format!("creating {}", pki.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(pki, std::fs::Permissions::from_mode(0o700))?;
    }
    // Every file checked before any is written: never a certificate
    // beside another CA's key.
    let mut missing = Vec::new();
    for (file, mode) in FILES {
        let want = bundle
            .get(file)
            .with_context(|| format!("the cluster's keys in etcd lack {file}"))?;
        let path = pki.join(file);
        match std::fs::read_to_string(&path) {
            Ok(have) if have == *want => {}
            Ok(_) => anyhow::bail!(
                "{} is not the cluster's (another CA than the one the other servers share): move {} away to take the cluster's",
                path.display(),
                pki.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push((path, want, mode)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    for (path, want, mode) in missing {
        skiff_pki::ca::write_atomic(&path, want, mode)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(pki = %pki.display(), "took the cluster's CA and token key from etcd");
    Ok(true)
}

/// After the server made its keys (no other server had published any):
/// publishes them, sealed with `token`. False when another server did so
/// meanwhile (this one must take those instead).
///
/// # Errors
/// The store does not answer, or the files are unreadable.
pub(crate) async fn publish(
    store: &skiff_store::EtcdStore,
    token: &str,
    pki: &Path,
) -> anyhow::Result<bool> {
    let mut bundle = BTreeMap::new();
    for (file, _) in FILES {
        let path = pki.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        bundle.insert(file.to_string(), text);
    }
    let sealed = skiff_pki::sealed::seal(token, KEY, &serde_json::to_vec(&bundle)?)?;
    match store.create(KEY, sealed.into()).await {
        Ok(_) => {
            tracing::info!(
                "published the cluster's CA and token key to etcd, sealed with the cluster token"
            );
            Ok(true)
        }
        Err(skiff_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e).context("publishing the cluster's keys to etcd"),
    }
}

/// Whether `pki` holds keys of its own already (a server that had them
/// before the cluster published any must not lose them).
pub(crate) fn has_keys(pki: &Path) -> bool {
    FILES.iter().any(|(file, _)| pki.join(file).exists())
}

/// Removes the keys this run made (a server that lost the race to publish
/// takes the winner's; its certificates are issued again from them).
pub(crate) fn forget(pki: &Path) {
    for (file, _) in FILES {
        let _ = std::fs::remove_file(pki.join(file));
    }
}

/// The shortest token accepted: the bundle can be copied out of etcd and
/// guessed at offline.
pub(crate) const MIN_TOKEN_LEN: usize = 16;
