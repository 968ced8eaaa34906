//! The columns of storage: PersistentVolumes, PersistentVolumeClaims and
//! StorageClasses.

use serde_json::Value;

use super::str_at;

/// A volume's or claim's STATUS: its phase, or `Terminating` once deleted
/// (kubectl's).
fn volume_phase(item: &Value) -> String {
    if item
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        "Terminating".into()
    } else {
        str_at(item, "/status/phase").to_string()
    }
}

/// Access modes as kubectl abbreviates them, in its order: `RWO,ROX`.
fn access_modes(modes: &Value) -> String {
    let modes: Vec<&str> = modes
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| modes.contains(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// Whether a StorageClass's annotations make it the cluster's default
/// (the beta annotation counts too, as in Kubernetes).
fn is_default_class(annotations: &Value) -> bool {
    crate::names::DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .any(|key| annotations[*key] == "true")
}

/// A PersistentVolume's row.
pub(super) fn persistent_volume(item: &Value, name: String, created: String) -> Vec<String> {
    let claim = match str_at(item, "/spec/claimRef/name") {
        "" => String::new(),
        claim => format!("{}/{claim}", str_at(item, "/spec/claimRef/namespace")),
    };
    vec![
        name,
        str_at(item, "/spec/capacity/storage").to_string(),
        access_modes(&item["spec"]["accessModes"]),
        str_at(item, "/spec/persistentVolumeReclaimPolicy").to_string(),
        volume_phase(item),
        claim,
        str_at(item, "/spec/storageClassName").to_string(),
        "<unset>".into(),
        str_at(item, "/status/reason").to_string(),
        created,
    ]
}

/// A PersistentVolumeClaim's row.
pub(super) fn persistent_volume_claim(item: &Value, name: String, created: String) -> Vec<String> {
    vec![
        name,
        volume_phase(item),
        str_at(item, "/spec/volumeName").to_string(),
        str_at(item, "/status/capacity/storage").to_string(),
        access_modes(&item["status"]["accessModes"]),
        str_at(item, "/spec/storageClassName").to_string(),
        "<unset>".into(),
        created,
    ]
}

/// A StorageClass's row (its name marked when it is the default).
pub(super) fn storage_class(item: &Value, name: String, created: String) -> Vec<String> {
    let default = item
        .pointer("/metadata/annotations")
        .is_some_and(is_default_class);
    vec![
        if default {
            format!("{name} (default)")
        } else {
            name
        },
        str_at(item, "/provisioner").to_string(),
        item.pointer("/reclaimPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Delete")
            .to_string(),
        item.pointer("/volumeBindingMode")
            .and_then(Value::as_str)
            .unwrap_or("Immediate")
            .to_string(),
        item.pointer("/allowVolumeExpansion")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        created,
    ]
}

/// `-o wide` for a PersistentVolume or PersistentVolumeClaim: its volume mode.
pub(super) fn volume_mode(item: &Value) -> String {
    item.pointer("/spec/volumeMode")
        .and_then(Value::as_str)
        .unwrap_or("Filesystem")
        .to_string()
}
