//! A pod's volumes on the node: emptyDir directories under the agent's
//! data dir (removed with the pod), hostPath as given, a
//! persistentVolumeClaim's bound volume (its directory on this node), and configMap,
//! secret, downwardAPI and projected volumes as files, rewritten
//! atomically (write, then rename) when their source changes, so a running
//! container sees updates. What they read from the API (ConfigMaps,
//! Secrets, projected tokens) comes through [`crate::sources`].

use skiff::Resource as _;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use skiff::pb::core::v1::{DownwardApiVolumeFile, KeyToPath, Pod, PodSpec, Volume};
use skiff::quantity::Quantity;

use crate::fieldpath;
use crate::sources::{Error, Sources};
use crate::subpath;

/// Where each persistentVolumeClaim volume of a pod is on this node, by
/// volume name.
pub type ClaimDirs = BTreeMap<String, PathBuf>;

/// The directory on node `node` of the volume claim `ns/claim` is bound
/// to, made if its type says so (a local-path volume's, on first use,
/// writable by any user as k3s's local-path makes them).
///
/// # Errors
/// The claim is missing or unbound, its volume is missing, of another
/// node, or of a type the agent cannot mount.
pub async fn claim_dir(
    sources: &Sources,
    ns: &str,
    volume: &str,
    claim: &str,
    node: &str,
) -> Result<(PathBuf, bool), Error> {
    let problem = |problem: String| Error::Claim {
        name: volume.to_string(),
        problem,
    };
    let pvc = match sources.claims.get(ns, claim).await {
        Ok(pvc) => pvc,
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Err(Error::Missing(format!(
                "persistentvolumeclaim {claim:?} not found"
            )));
        }
        Err(status) => {
            return Err(Error::Api {
                what: format!("persistentvolumeclaim {ns}/{claim}"),
                status,
            });
        }
    };
    let bound = pvc.status.as_ref().is_some_and(|s| s.phase == "Bound");
    let pv_name = skiff::volumes::claim_volume(&pvc);
    if !bound || pv_name.is_empty() {
        return Err(Error::Unbound {
            name: volume.to_string(),
            claim: claim.to_string(),
        });
    }
    let pv = sources.volumes.get("", pv_name).await.map_err(|status| {
        if status.code() == tonic::Code::NotFound {
            problem(format!("persistentvolume {pv_name:?} not found"))
        } else {
            Error::Api {
                what: format!("persistentvolume {pv_name}"),
                status,
            }
        }
    })?;
    // The volume must name the claim back (its uid too): a claim that
    // only says it is bound to a volume gets nothing.
    let claim_uid = pvc.uid();
    let names_it = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_some_and(|r| r.namespace == ns && r.name == claim && r.uid == claim_uid);
    if !names_it {
        return Err(problem(format!(
            "persistentvolume {pv_name:?} is not bound to persistentvolumeclaim {claim:?}"
        )));
    }
    if let Some(home) = skiff::volumes::pinned_node(&pv).filter(|home| *home != node) {
        return Err(problem(format!(
            "persistentvolume {pv_name:?} is on node {home:?}, not on this node ({node:?})"
        )));
    }
    let spec = pv.spec.clone().unwrap_or_default();
    let (path, kind) = match (&spec.host_path, &spec.local) {
        (Some(host), _) => (host.path.clone(), host.r#type.clone().unwrap_or_default()),
        (None, Some(local)) => (local.path.clone(), "Directory".to_string()),
        (None, None) => {
            return Err(problem(format!(
                "persistentvolume {pv_name:?} is neither hostPath nor local: the skiff agent cannot mount it"
            )));
        }
    };
    // A local-path volume's directory is made writable by any user,
    // as k3s's local-path makes them; other hostPaths as hostPath does.
    let local_path = pv
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.get(skiff::names::PROVISIONED_BY_ANNOTATION))
        .is_some_and(|p| p == skiff::names::LOCAL_PATH_PROVISIONER);
    let made = local_path && kind == "DirectoryOrCreate" && !Path::new(&path).exists();
    check_host_path(volume, &path, &kind)?;
    if made {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).map_err(
            |source| Error::Io {
                name: volume.to_string(),
                source,
            },
        )?;
    }
    // Kubernetes changes ownership (fsGroup) of `local` volumes only,
    // never of a hostPath one.
    Ok((PathBuf::from(path), spec.local.is_some()))
}

/// Where a pod's files live on the node.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Where one volume lives on the node (hostPath: the host path itself; a
/// claim: its volume's directory, as [`prepare`] found it).
pub fn volume_path(data_dir: &Path, uid: &str, volume: &Volume, claims: &ClaimDirs) -> PathBuf {
    if let Some(dir) = claims.get(&volume.name) {
        return dir.clone();
    }
    match &volume.host_path {
        Some(host) => PathBuf::from(&host.path),
        None => pod_dir(data_dir, uid).join("volumes").join(&volume.name),
    }
}

/// Whether containers must see this volume read-only whatever the mount
/// says (projected API data is read-only in Kubernetes).
pub fn forced_read_only(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
        || volume
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.read_only)
}

/// A downward API file's content: the pod's name, namespace, uid, labels
/// or annotations (all, as `key="value"` lines, or one), or a container's
/// resource.
fn downward(
    pod: &Pod,
    item: &DownwardApiVolumeFile,
    volume: &str,
    allocatable: &fieldpath::Allocatable,
) -> Result<Vec<u8>, Error> {
    let unsupported = |what: &str| {
        Error::Missing(format!(
            "volume {volume:?}: downward API item {:?}: unsupported {what}",
            item.path
        ))
    };
    if let Some(field) = &item.field_ref {
        let path = field.field_path.as_str();
        let value = fieldpath::volume_value(pod, path)
            .ok_or_else(|| unsupported(&format!("fieldRef {path:?}")))?;
        return Ok(value.into_bytes());
    }
    if let Some(resource) = &item.resource_field_ref {
        let container = fieldpath::named_container(pod, &resource.container_name)
            .ok_or_else(|| unsupported(&format!("container {:?}", resource.container_name)))?;
        let value = fieldpath::resource_value(
            container,
            &resource.resource,
            &resource.divisor,
            allocatable,
        )
        .ok_or_else(|| unsupported(&format!("resource {:?}", resource.resource)))?;
        return Ok(value.into_bytes());
    }
    Err(unsupported("item without fieldRef or resourceFieldRef"))
}

/// The files of a projected volume, from every source in order.
async fn projected(
    pod: &Pod,
    volume: &Volume,
    source: &skiff::pb::core::v1::ProjectedVolumeSource,
    sources: &Sources,
    allocatable: &fieldpath::Allocatable,
) -> Result<Vec<Projected>, Error> {
    let namespace = pod
        .metadata
        .as_ref()
        .map(|m| m.namespace.clone())
        .unwrap_or_default();
    let mut files = Vec::new();
    for part in &source.sources {
        if let Some(cm) = &part.config_map {
            let optional = cm.optional.unwrap_or(false);
            match sources.configmap(&namespace, &cm.name, true).await? {
                Some(data) => files.extend(select(&volume.name, &data, &cm.items, optional)?),
                None if optional => {}
                None => {
                    return Err(Error::Missing(format!("configmap {:?} not found", cm.name)));
                }
            }
        } else if let Some(secret) = &part.secret {
            let optional = secret.optional.unwrap_or(false);
            match sources.secret(&namespace, &secret.name).await? {
                Some(data) => files.extend(select(&volume.name, &data, &secret.items, optional)?),
                None if optional => {}
                None => {
                    return Err(Error::Missing(format!(
                        "secret {:?} not found",
                        secret.name
                    )));
                }
            }
        } else if let Some(api) = &part.downward_api {
            for item in &api.items {
                files.push((
                    item.path.clone(),
                    downward(pod, item, &volume.name, allocatable)?,
                    item.mode,
                ));
            }
        } else if let Some(token) = &part.service_account_token {
            let value = sources.tokens.get(pod, token).await?;
            // The volume's mode (Kubernetes' admission asks 0644).
            files.push((token.path.clone(), value.into_bytes(), None));
        }
    }
    Ok(files)
}

/// Makes every volume of the pod exist with current content.
///
/// # Errors
/// The first volume that cannot be prepared.
pub async fn prepare(
    data_dir: &Path,
    node: &str,
    pod: &Pod,
    sources: &Sources,
    allocatable: &fieldpath::Allocatable,
) -> Result<ClaimDirs, Error> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut claims = ClaimDirs::new();
    let mut local_claims = std::collections::HashSet::new();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let fs_group = pod_sc.fs_group.and_then(|g| u32::try_from(g).ok());
    let fs_group_policy = pod_sc.fs_group_change_policy.unwrap_or_default();
    for volume in &spec.volumes {
        let path = volume_path(data_dir, &meta.uid, volume, &claims);
        let io = |source| Error::Io {
            name: volume.name.clone(),
            source,
        };
        if let Some(dir) = volume.empty_dir.as_ref().filter(|d| d.medium == "Memory") {
            // Only ever inside the pod's own directory.
            if !path.starts_with(pod_dir(data_dir, &meta.uid)) {
                return Err(io(std::io::Error::other(
                    "a Memory emptyDir outside the pod's directory",
                )));
            }
            if memory_empty_dir(&path, memory_size(dir, &spec)).map_err(io)? {
                // A fresh tmpfs (after a reboot): fsGroup owns it anew.
                let marker = pod_dir(data_dir, &meta.uid)
                    .join("fsgroup")
                    .join(&volume.name);
                let _ = std::fs::remove_file(marker);
            }
        } else if volume.empty_dir.is_some() {
            if !path.is_dir() {
                std::fs::create_dir_all(&path).map_err(io)?;
                // Kubernetes' emptyDir: writable by whatever user the
                // containers run as.
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(io)?;
            }
        } else if let Some(host) = &volume.host_path {
            check_host_path(
                &volume.name,
                &host.path,
                host.r#type.as_deref().unwrap_or(""),
            )?;
        } else if let Some(cm) = &volume.config_map {
            let data = sources.configmap(&meta.namespace, &cm.name, true).await?;
            let Some(data) = data.or_else(|| cm.optional.unwrap_or(false).then(BTreeMap::new))
            else {
                return Err(Error::Missing(format!("configmap {:?} not found", cm.name)));
            };
            let files = select(&volume.name, &data, &cm.items, cm.optional.unwrap_or(false))?;
            project(&path, &files, cm.default_mode.unwrap_or(0o644)).map_err(io)?;
        } else if let Some(secret) = &volume.secret {
            let data = sources.secret(&meta.namespace, &secret.secret_name).await?;
            let Some(data) = data.or_else(|| secret.optional.unwrap_or(false).then(BTreeMap::new))
            else {
                return Err(Error::Missing(format!(
                    "secret {:?} not found",
                    secret.secret_name
                )));
            };
            let files = select(
                &volume.name,
                &data,
                &secret.items,
                secret.optional.unwrap_or(false),
            )?;
            project(&path, &files, secret.default_mode.unwrap_or(0o644)).map_err(io)?;
        } else if let Some(api) = &volume.downward_api {
            let files = api
                .items
                .iter()
                .map(|item| {
                    Ok((
                        item.path.clone(),
                        downward(pod, item, &volume.name, allocatable)?,
                        item.mode,
                    ))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            project(&path, &files, api.default_mode.unwrap_or(0o644)).map_err(io)?;
        } else if let Some(source) = &volume.projected {
            let files = projected(pod, volume, source, sources, allocatable).await?;
            project(&path, &files, source.default_mode.unwrap_or(0o644)).map_err(io)?;
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let (dir, local) = claim_dir(
                sources,
                &meta.namespace,
                &volume.name,
                &claim.claim_name,
                node,
            )
            .await?;
            if local {
                local_claims.insert(volume.name.clone());
            }
            claims.insert(volume.name.clone(), dir);
        } else {
            return Err(Error::Unsupported {
                name: volume.name.clone(),
                kind: "untyped",
            });
        }
        if let Some(gid) = fs_group {
            let owned = volume.host_path.is_none()
                && (volume.persistent_volume_claim.is_none()
                    || local_claims.contains(&volume.name));
            if owned {
                let (data_dir, uid, volume, claims) = (
                    data_dir.to_path_buf(),
                    meta.uid.clone(),
                    volume.clone(),
                    claims.clone(),
                );
                let policy = fs_group_policy.clone();
                tokio::task::spawn_blocking(move || {
                    own_volume(&data_dir, &uid, &volume, &claims, gid, &policy)
                })
                .await
                .map_err(|e| io(std::io::Error::other(e.to_string())))?
                .map_err(io)?;
            }
        }
    }
    Ok(claims)
}

/// A `medium: Memory` emptyDir's size: its `sizeLimit`, else the sum of
/// the pod's memory limits when every container has one (Kubernetes'
/// rule), else the kernel's default for a tmpfs (half the memory).
fn memory_size(dir: &skiff::pb::core::v1::EmptyDirVolumeSource, spec: &PodSpec) -> Option<i64> {
    let asked = dir
        .size_limit
        .parse::<Quantity>()
        .ok()
        .map(|q| q.value())
        .filter(|v| *v > 0);
    let pod_limit: Option<i64> = spec
        .containers
        .iter()
        .map(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.get("memory"))
                .and_then(|q| q.parse::<Quantity>().ok())
                .map(|q| q.value())
        })
        .sum();
    match (asked, pod_limit) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

/// A `medium: Memory` emptyDir: a tmpfs mounted at the volume's
/// directory (once; the pod's directory unmounts it on removal), open to
/// every uid as a disk emptyDir is, of `size` bytes. True when it was
/// mounted now.
fn memory_empty_dir(path: &Path, size: Option<i64>) -> std::io::Result<bool> {
    std::fs::create_dir_all(path)?;
    let parent = path.parent().unwrap_or(path);
    let on_its_own = rustix::fs::stat(path)?.st_dev != rustix::fs::stat(parent)?.st_dev;
    if on_its_own {
        return Ok(false);
    }
    let mut options = "mode=0777".to_string();
    if let Some(size) = size.filter(|s| *s > 0) {
        options.push_str(&format!(",size={size}"));
    }
    rustix::mount::mount(
        "tmpfs",
        path,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(
            std::ffi::CString::new(options)
                .map_err(std::io::Error::other)?
                .as_c_str(),
        ),
    )?;
    Ok(true)
}

/// `fsGroup` on one volume (an emptyDir, projected files or a `local`
/// claim; never a hostPath: Kubernetes leaves the host's files alone,
/// nor a read-only claim). Files the agent projects (configMap, secret,
/// downward API, projected) are rewritten on updates, so they are owned
/// on every preparation; an emptyDir or a claim once per pod, when it
/// is first prepared for it (the kubelet's mount), or only when its top
/// directory differs with `fsGroupChangePolicy: OnRootMismatch`.
fn own_volume(
    data_dir: &Path,
    uid: &str,
    volume: &Volume,
    claims: &ClaimDirs,
    gid: u32,
    policy: &str,
) -> std::io::Result<()> {
    let path = volume_path(data_dir, uid, volume, claims);
    let read_only = forced_read_only(volume);
    let claim = volume.persistent_volume_claim.is_some();
    if volume.host_path.is_some() || claim && read_only {
        return Ok(());
    }
    let projected = volume.empty_dir.is_none() && !claim;
    if projected {
        return crate::security::set_group_ownership(&path, gid, read_only);
    }
    if policy == "OnRootMismatch" && crate::security::group_ownership_matches(&path, gid, read_only)
    {
        return Ok(());
    }
    let marker = pod_dir(data_dir, uid).join("fsgroup").join(&volume.name);
    if marker.exists() {
        return Ok(());
    }
    crate::security::set_group_ownership(&path, gid, read_only)?;
    std::fs::create_dir_all(marker.parent().expect("a marker has a parent"))?;
    std::fs::write(&marker, gid.to_string())
}

/// Removes everything the pod had on the node's disk (emptyDirs and
/// projections; never hostPaths).
pub fn remove_pod_dir(data_dir: &Path, uid: &str) {
    let dir = pod_dir(data_dir, uid);
    // A removal through a subPath pin would reach into its volume (the
    // host's own files for a hostPath): nothing goes while one holds.
    if let Err(left) = subpath::unmount_all(&dir) {
        tracing::error!(dir = %dir.display(), mount = %left.display(), "a subPath mount is still in place: the pod's directory is kept");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "removing a pod's directory");
    }
}

fn check_host_path(name: &str, path: &str, kind: &str) -> Result<(), Error> {
    let p = Path::new(path);
    let problem = |problem: &str| Error::HostPath {
        name: name.to_string(),
        path: path.to_string(),
        problem: problem.to_string(),
    };
    let io = |e: std::io::Error| problem(&e.to_string());
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => std::fs::create_dir_all(p).map_err(io),
        "Directory" if p.is_dir() => Ok(()),
        "Directory" => Err(problem("is not a directory")),
        "FileOrCreate" if p.exists() => Ok(()),
        "FileOrCreate" => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            std::fs::File::create(p).map(|_| ()).map_err(io)
        }
        "File" if p.is_file() => Ok(()),
        "File" => Err(problem("is not a file")),
        "Socket" | "CharDevice" | "BlockDevice" if p.exists() => Ok(()),
        "Socket" | "CharDevice" | "BlockDevice" => Err(problem("does not exist")),
        other => Err(problem(&format!("unknown hostPath type {other:?}"))),
    }
}

/// One projected file: its path in the volume, content and mode.
type Projected = (String, Vec<u8>, Option<i32>);

/// The files a configMap/secret volume shows: every key, or the items
/// named (each key must exist unless the volume is optional).
fn select(
    volume: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[KeyToPath],
    optional: bool,
) -> Result<Vec<Projected>, Error> {
    if items.is_empty() {
        return Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), None))
            .collect());
    }
    let mut files = Vec::new();
    for item in items {
        match data.get(&item.key) {
            Some(v) => files.push((item.path.clone(), v.clone(), item.mode)),
            None if optional => {}
            None => {
                return Err(Error::Missing(format!(
                    "volume {volume:?}: key {:?} not found",
                    item.key
                )));
            }
        }
    }
    Ok(files)
}

/// Writes `files` under `dir`, each atomically and never through a
/// symlink out of `dir` ([`subpath::write`]), and removes files that are
/// no longer part of the projection.
fn project(dir: &Path, files: &[Projected], default_mode: i32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut keep = BTreeSet::new();
    for (rel, content, mode) in files {
        // Validation refuses such paths; one stored before it did is skipped.
        if subpath::check_relative(rel).is_err() {
            continue;
        }
        keep.insert(dir.join(rel));
        if subpath::read(dir, rel).as_deref() == Some(content.as_slice()) {
            continue;
        }
        let mode = mode.unwrap_or(default_mode) as u32 & 0o777;
        subpath::write(dir, rel, content, mode).map_err(std::io::Error::other)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && !keep.contains(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
