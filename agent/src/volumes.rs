//! A pod's volumes on the node: emptyDir directories under the agent's
//! data dir (removed with the pod), hostPath as given, and configMap and
//! secret volumes as projected files, rewritten atomically (write, then
//! rename) when their source changes, so a running container sees updates.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use skiff::pb::core::v1::{ConfigMap, KeyToPath, Pod, Secret, Volume};
use skiff_client::Api;

/// Why a pod's volumes could not be prepared: shown to the user as the
/// waiting reason `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A referenced ConfigMap or Secret (or key) is missing.
    #[error("{0}")]
    Missing(String),
    /// The volume type is not one this agent provides.
    #[error("volume {name:?}: {kind} volumes are not supported by the skiff agent")]
    Unsupported {
        /// The volume.
        name: String,
        /// Its type.
        kind: &'static str,
    },
    /// A hostPath did not pass its type check.
    #[error("volume {name:?}: hostPath {path:?}: {problem}")]
    HostPath {
        /// The volume.
        name: String,
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The API could not be asked.
    #[error("reading {what}: {status}")]
    Api {
        /// What was being read.
        what: String,
        /// What the API said.
        status: tonic::Status,
    },
    /// Writing to the node's disk failed.
    #[error("volume {name:?}: {source}")]
    Io {
        /// The volume.
        name: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// Reads ConfigMaps and Secrets for volumes and env.
#[derive(Clone)]
pub struct Sources {
    /// ConfigMaps.
    pub configmaps: Api<ConfigMap>,
    /// Secrets.
    pub secrets: Api<Secret>,
    /// Services, for the service environment variables.
    pub services: Api<skiff::pb::core::v1::Service>,
}

impl Sources {
    /// The Services of a namespace.
    ///
    /// # Errors
    /// The API could not be asked.
    pub async fn services(&self, ns: &str) -> Result<Vec<skiff::pb::core::v1::Service>, Error> {
        let list = self
            .services
            .list(skiff::pb::api::v1::ListRequest {
                namespace: ns.to_string(),
                ..Default::default()
            })
            .await
            .map_err(|status| Error::Api {
                what: format!("services in {ns}"),
                status,
            })?;
        Ok(list.items)
    }

    /// A ConfigMap's data (binaryData included), or None when it does not
    /// exist.
    pub async fn configmap(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        match self.configmaps.get(ns, name).await {
            Ok(cm) => {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(cm.binary_data.into_iter().map(|(k, v)| (k, v.to_vec())));
                Ok(Some(data))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Api {
                what: format!("configmap {ns}/{name}"),
                status,
            }),
        }
    }

    /// A Secret's data, or None when it does not exist.
    pub async fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, Error> {
        match self.secrets.get(ns, name).await {
            Ok(s) => Ok(Some(
                s.data.into_iter().map(|(k, v)| (k, v.to_vec())).collect(),
            )),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Api {
                what: format!("secret {ns}/{name}"),
                status,
            }),
        }
    }
}

/// Where a pod's files live on the node.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Where one volume lives on the node (hostPath: the host path itself).
pub fn volume_path(data_dir: &Path, uid: &str, volume: &Volume) -> PathBuf {
    match &volume.host_path {
        Some(host) => PathBuf::from(&host.path),
        None => pod_dir(data_dir, uid).join("volumes").join(&volume.name),
    }
}

/// Whether containers must see this volume read-only whatever the mount
/// says (projected API data is read-only in Kubernetes).
pub fn forced_read_only(volume: &Volume) -> bool {
    volume.config_map.is_some() || volume.secret.is_some()
}

/// Makes every volume of the pod exist with current content.
///
/// # Errors
/// The first volume that cannot be prepared.
pub async fn prepare(data_dir: &Path, pod: &Pod, sources: &Sources) -> Result<(), Error> {
    let meta = pod.metadata.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    for volume in &spec.volumes {
        let path = volume_path(data_dir, &meta.uid, volume);
        let io = |source| Error::Io {
            name: volume.name.clone(),
            source,
        };
        if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&path).map_err(io)?;
        } else if let Some(host) = &volume.host_path {
            check_host_path(
                &volume.name,
                &host.path,
                host.r#type.as_deref().unwrap_or(""),
            )?;
        } else if let Some(cm) = &volume.config_map {
            let data = sources.configmap(&meta.namespace, &cm.name).await?;
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
        } else {
            let kind = if volume.persistent_volume_claim.is_some() {
                "persistentVolumeClaim"
            } else if volume.downward_api.is_some() {
                "downwardAPI"
            } else if volume.projected.is_some() {
                "projected"
            } else {
                "untyped"
            };
            return Err(Error::Unsupported {
                name: volume.name.clone(),
                kind,
            });
        }
    }
    Ok(())
}

/// Removes everything the pod had on the node's disk (emptyDirs and
/// projections; never hostPaths).
pub fn remove_pod_dir(data_dir: &Path, uid: &str) {
    let dir = pod_dir(data_dir, uid);
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

/// Writes `files` under `dir`, each atomically, and removes files that are
/// no longer part of the projection.
fn project(dir: &Path, files: &[Projected], default_mode: i32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut keep = BTreeSet::new();
    for (rel, content, mode) in files {
        let rel = Path::new(rel);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            continue;
        }
        let target = dir.join(rel);
        keep.insert(target.clone());
        if std::fs::read(&target).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = target.with_extension("skiff-tmp");
        std::fs::write(&tmp, content)?;
        let mode = mode.unwrap_or(default_mode) as u32 & 0o777;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &target)?;
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
mod tests {
    use super::*;

    #[test]
    fn projection_rewrites_changed_files_and_drops_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![
            ("a".to_string(), b"1".to_vec(), None),
            ("b".to_string(), b"2".to_vec(), Some(0o600)),
        ];
        project(dir.path(), &files, 0o644).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        let mode = std::fs::metadata(dir.path().join("b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        project(dir.path(), &[("a".to_string(), b"3".to_vec(), None)], 0o644).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"3");
        assert!(!dir.path().join("b").exists(), "a removed key's file goes");
    }

    #[test]
    fn projection_refuses_paths_outside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("vol");
        project(
            &inner,
            &[("../escape".to_string(), b"x".to_vec(), None)],
            0o644,
        )
        .unwrap();
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn items_name_keys_that_must_exist_unless_optional() {
        let data = BTreeMap::from([("k".to_string(), b"v".to_vec())]);
        let items = vec![KeyToPath {
            key: "missing".into(),
            path: "p".into(),
            mode: None,
        }];
        assert!(matches!(
            select("v", &data, &items, false),
            Err(Error::Missing(_))
        ));
        assert!(select("v", &data, &items, true).unwrap().is_empty());
    }

    #[test]
    fn host_path_types_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        check_host_path("v", made.to_str().unwrap(), "DirectoryOrCreate").unwrap();
        assert!(made.is_dir());
        assert!(check_host_path("v", made.to_str().unwrap(), "File").is_err());
        assert!(check_host_path("v", "/nonexistent/x", "Directory").is_err());
    }
}
