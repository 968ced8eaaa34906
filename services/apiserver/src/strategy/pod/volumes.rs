//! The paths the agent joins under a volume: the item paths of
//! configMap, secret, downwardAPI and projected volumes, and a mount's
//! `subPath`.

use skiff::pb::core::v1::{DownwardApiVolumeFile, KeyToPath, Volume};
use skiff::validation::FieldErrors;

/// Kubernetes' rule for a path the agent joins under a volume (item
/// paths, `subPath`): relative, no `..` component, and for files the
/// agent writes, not starting with `..` (its own names).
pub(super) fn validate_local_path(
    path: &str,
    value: &str,
    written: bool,
    errors: &mut FieldErrors,
) {
    let p = std::path::Path::new(value);
    if p.is_absolute() {
        errors.invalid(path, value, "must be a relative path");
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        errors.invalid(path, value, "must not contain '..'");
    } else if written && value.starts_with("..") {
        errors.invalid(path, value, "must not start with '..'");
    }
}

/// The item paths of configMap, secret, downwardAPI and projected volumes.
pub(super) fn validate_volume_paths(path: &str, v: &Volume, errors: &mut FieldErrors) {
    let items = |source: &str, items: &[KeyToPath], errors: &mut FieldErrors| {
        for (j, item) in items.iter().enumerate() {
            let ipath = format!("{path}.{source}.items[{j}].path");
            if item.path.is_empty() {
                errors.required(ipath);
            } else {
                validate_local_path(&ipath, &item.path, true, errors);
            }
        }
    };
    let files = |source: &str, files: &[DownwardApiVolumeFile], errors: &mut FieldErrors| {
        for (j, file) in files.iter().enumerate() {
            let fpath = format!("{path}.{source}.items[{j}].path");
            if file.path.is_empty() {
                errors.required(fpath);
            } else {
                validate_local_path(&fpath, &file.path, true, errors);
            }
        }
    };
    if let Some(cm) = &v.config_map {
        items("configMap", &cm.items, errors);
    }
    if let Some(secret) = &v.secret {
        items("secret", &secret.items, errors);
    }
    if let Some(api) = &v.downward_api {
        files("downwardAPI", &api.items, errors);
    }
    if let Some(projected) = &v.projected {
        for (k, part) in projected.sources.iter().enumerate() {
            let source = format!("projected.sources[{k}]");
            if let Some(cm) = &part.config_map {
                items(&format!("{source}.configMap"), &cm.items, errors);
            }
            if let Some(secret) = &part.secret {
                items(&format!("{source}.secret"), &secret.items, errors);
            }
            if let Some(api) = &part.downward_api {
                files(&format!("{source}.downwardAPI"), &api.items, errors);
            }
            if let Some(token) = &part.service_account_token {
                let tpath = format!("{path}.{source}.serviceAccountToken.path");
                if token.path.is_empty() {
                    errors.required(tpath);
                } else {
                    validate_local_path(&tpath, &token.path, true, errors);
                }
            }
        }
    }
}
