//! Local-path volumes on this node: the directory they are made under
//! (`<data dir>/storage`, published on the Node as the
//! `skiff.io/local-path-root` annotation, where the controller manager's
//! provisioner reads it), and their removal. A local-path volume of this
//! node that is deleted keeps the `skiff.io/local-path` finalizer until
//! this agent has acted, once it is the volume's last finalizer (no claim
//! holds the volume: `kubernetes.io/pv-protection` is gone): under reclaim
//! policy `Delete` the directory is removed, under `Retain` it is kept;
//! then the agent removes the finalizer and the volume goes.
//!
//! Only a directory exactly `<root>/<volume name>` is ever removed: a
//! volume whose path says anything else (made by hand, or edited to point
//! at the host's files) keeps its finalizer and is reported, never
//! followed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff::Resource as _;
use skiff::names::{LOCAL_PATH_FINALIZER, LOCAL_PATH_PROVISIONER, PROVISIONED_BY_ANNOTATION};
use skiff::pb::core::v1::PersistentVolume;
use skiff_client::{Api, Change, Informer};

/// How often every volume is looked at again (a removal or update that
/// failed is retried then).
const RESCAN: Duration = Duration::from_secs(10);

/// Where local-path volumes are made on this node.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// What this node's agent does for a deleted local-path volume.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Remove its directory (reclaim policy Delete), then the finalizer.
    RemoveDir(PathBuf),
    /// Only remove the finalizer: the data stays (Retain).
    KeepDir,
}

/// What this node's agent must do for `pv`: Some for a deleted local-path
/// volume of node `node` whose last finalizer is `skiff.io/local-path`;
/// None for every other volume (and while a claim still holds it).
///
/// # Errors
/// A volume of this node whose path is not `<root>/<its name>`: its
/// directory is not removed.
pub fn doomed(pv: &PersistentVolume, node: &str, root: &Path) -> Result<Option<Cleanup>, String> {
    let Some(meta) = pv.metadata.as_ref() else {
        return Ok(None);
    };
    let ours = meta
        .annotations
        .get(PROVISIONED_BY_ANNOTATION)
        .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
    let due = meta.deletion_timestamp.is_some() && meta.finalizers == [LOCAL_PATH_FINALIZER];
    if !ours || !due || skiff::volumes::pinned_node(pv) != Some(node) {
        return Ok(None);
    }
    let policy = pv
        .spec
        .as_ref()
        .map_or("", |s| s.persistent_volume_reclaim_policy.as_str());
    if policy != "Delete" {
        return Ok(Some(Cleanup::KeepDir));
    }
    let expected = root.join(&meta.name);
    let path = skiff::volumes::path(pv).unwrap_or("");
    let plain_name = !meta.name.is_empty() && !meta.name.contains('/') && meta.name != "..";
    if plain_name && Path::new(path) == expected {
        Ok(Some(Cleanup::RemoveDir(expected)))
    } else {
        Err(format!(
            "volume {:?}: its path {path:?} is not {} — not removed",
            meta.name,
            expected.display()
        ))
    }
}

/// Carries out `cleanup` (removing a directory does not follow symbolic
/// links inside it) and then removes the volume's finalizer.
async fn remove(api: &Api<PersistentVolume>, name: &str, cleanup: Cleanup) -> Result<(), String> {
    let shown = match cleanup {
        Cleanup::RemoveDir(dir) => {
            let shown = dir.display().to_string();
            tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("removing {shown}: {e}"))?;
            shown
        }
        Cleanup::KeepDir => "(kept: reclaim policy Retain)".to_string(),
    };
    let mut fresh = match api.get("", name).await {
        Ok(pv) => pv,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) => return Err(s.message().to_string()),
    };
    fresh
        .metadata_mut()
        .finalizers
        .retain(|f| f != LOCAL_PATH_FINALIZER);
    fresh.status = None;
    match api.update(fresh).await {
        Ok(_) => {
            tracing::info!(volume = %name, dir = %shown, "local-path volume removed");
            Ok(())
        }
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(s.message().to_string()),
    }
}

/// Watches the volumes and removes this node's deleted local-path
/// volumes, until aborted.
pub fn start(
    channel: tonic::transport::Channel,
    node: String,
    root: PathBuf,
) -> tokio::task::JoinHandle<()> {
    let api = Api::<PersistentVolume>::new(channel);
    let informer = Informer::start(api.clone(), Default::default());
    tokio::spawn(async move {
        let mut changes = informer.subscribe();
        informer.store.wait_synced().await;
        let mut rescan = tokio::time::interval(RESCAN);
        let mut reported = std::collections::HashSet::new();
        loop {
            let due: Vec<Arc<PersistentVolume>> = tokio::select! {
                change = changes.recv() => match change {
                    Ok(Change::Applied(pv)) => vec![pv],
                    Ok(Change::Deleted(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => informer.store.list(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = rescan.tick() => informer.store.list(),
            };
            for pv in due {
                match doomed(&pv, &node, &root) {
                    Ok(None) => {}
                    Ok(Some(cleanup)) => {
                        if let Err(e) = remove(&api, pv.name(), cleanup).await {
                            tracing::warn!(volume = %pv.name(), error = %e, "removing a local-path volume; retrying");
                        }
                    }
                    Err(refused) => {
                        if reported.insert(pv.name().to_string()) {
                            tracing::error!(%refused, "a deleted local-path volume points outside this node's storage root");
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PersistentVolumeSpec, VolumeNodeAffinity,
    };
    use skiff::pb::meta::v1::ObjectMeta;

    fn deleted_volume(name: &str, path: &str, node: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: Some(ObjectMeta {
                name: name.into(),
                annotations: [(
                    PROVISIONED_BY_ANNOTATION.to_string(),
                    LOCAL_PATH_PROVISIONER.to_string(),
                )]
                .into(),
                finalizers: vec![LOCAL_PATH_FINALIZER.into()],
                deletion_timestamp: Some(skiff::time::now_seconds()),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: "Delete".into(),
                host_path: Some(HostPathVolumeSource {
                    path: path.into(),
                    r#type: None,
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: skiff::names::HOSTNAME_LABEL.into(),
                                operator: "In".into(),
                                values: vec![node.into()],
                            }],
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_this_nodes_deleted_volumes_under_its_root_are_removed() {
        let root = Path::new("/var/lib/skiff/storage");
        let pv = deleted_volume("pvc-1", "/var/lib/skiff/storage/pvc-1", "a");
        assert_eq!(
            doomed(&pv, "a", root),
            Ok(Some(Cleanup::RemoveDir(root.join("pvc-1"))))
        );
        // Another node's: its agent removes it.
        assert_eq!(doomed(&pv, "b", root), Ok(None));
        // Not deleted yet.
        let mut live = pv.clone();
        live.metadata.as_mut().unwrap().deletion_timestamp = None;
        assert_eq!(doomed(&live, "a", root), Ok(None));
        // Made by hand: never removed.
        let mut manual = pv.clone();
        manual.metadata.as_mut().unwrap().annotations.clear();
        assert_eq!(doomed(&manual, "a", root), Ok(None));
    }

    #[test]
    fn a_deleted_volume_a_claim_still_holds_or_that_is_retained_keeps_its_data() {
        let root = Path::new("/var/lib/skiff/storage");
        let mut held = deleted_volume("pvc-1", "/var/lib/skiff/storage/pvc-1", "a");
        held.metadata
            .as_mut()
            .unwrap()
            .finalizers
            .insert(0, skiff::names::PV_PROTECTION_FINALIZER.into());
        assert_eq!(doomed(&held, "a", root), Ok(None));
        let mut retained = deleted_volume("pvc-1", "/var/lib/skiff/storage/pvc-1", "a");
        retained
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_reclaim_policy = "Retain".into();
        assert_eq!(doomed(&retained, "a", root), Ok(Some(Cleanup::KeepDir)));
    }

    #[test]
    fn a_local_path_volume_pointing_outside_the_storage_root_is_never_removed() {
        let root = Path::new("/var/lib/skiff/storage");
        for path in [
            "/etc",
            "/var/lib/skiff/storage",
            "/var/lib/skiff/storage/pvc-1/../../..",
            "/var/lib/skiff/storage/other",
        ] {
            let pv = deleted_volume("pvc-1", path, "a");
            assert!(doomed(&pv, "a", root).is_err(), "{path}");
        }
        let sneaky = deleted_volume("..", "/var/lib/skiff/storage/..", "a");
        assert!(doomed(&sneaky, "a", root).is_err());
    }
}
