//! PersistentVolumes, PersistentVolumeClaims (core/v1) and StorageClasses
//! (storage.k8s.io/v1): defaults, validation and what may not change, as
//! Kubernetes' `ValidatePersistentVolume`, `ValidatePersistentVolumeClaim`
//! and `ValidateStorageClass` judge them. Both protection finalizers are
//! put on at create (Kubernetes' StorageObjectInUseProtection admission).

use skiff::names::{PV_PROTECTION_FINALIZER, PVC_PROTECTION_FINALIZER};
use skiff::pb::core::v1::{
    NodeSelector, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus,
};
use skiff::pb::storage::v1::StorageClass;
use skiff::quantity::Quantity;
use skiff::selector::LabelSelector;

use super::*;

const ACCESS_MODES: &[&str] = &[
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

fn add_finalizer(meta: &mut ObjectMeta, finalizer: &str) {
    if !meta.finalizers.iter().any(|f| f == finalizer) {
        meta.finalizers.push(finalizer.to_string());
    }
}

fn validate_access_modes(path: &str, modes: &[String], errors: &mut FieldErrors) {
    if modes.is_empty() {
        return errors.push(path, "Required value: at least 1 access mode is required");
    }
    for mode in modes {
        if !ACCESS_MODES.contains(&mode.as_str()) {
            errors.not_supported(path, mode, ACCESS_MODES);
        }
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        errors.forbidden(path, "may not use ReadWriteOncePod with other access modes");
    }
}

fn validate_volume_mode(path: &str, mode: Option<&str>, errors: &mut FieldErrors) {
    match mode {
        None | Some("Filesystem") => {}
        Some("Block") => errors.invalid(
            path,
            "Block",
            "raw block volumes are not supported by Skiff; use \"Filesystem\"",
        ),
        Some(other) => errors.not_supported(path, other, &["Block", "Filesystem"]),
    }
}

/// A `storage` quantity: present, well-formed and more than zero.
fn validate_storage(path: &str, value: Option<&String>, errors: &mut FieldErrors) {
    let Some(value) = value else {
        return errors.required(path);
    };
    match value.parse::<Quantity>() {
        Ok(q) if q.value() > 0 => {}
        Ok(_) => errors.invalid(path, value, "must be greater than zero"),
        Err(e) => errors.invalid(path, value, e),
    }
}

fn validate_class_name(path: &str, name: &str, errors: &mut FieldErrors) {
    if !name.is_empty()
        && let Err(reason) = validation::is_dns1123_subdomain(name)
    {
        errors.invalid(path, name, reason);
    }
}

fn validate_node_selector(path: &str, selector: &NodeSelector, errors: &mut FieldErrors) {
    if selector.node_selector_terms.is_empty() {
        return errors.required(format!("{path}.nodeSelectorTerms"));
    }
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        let term_path = format!("{path}.nodeSelectorTerms[{i}]");
        if term.match_expressions.is_empty() && term.match_fields.is_empty() {
            errors.required(format!("{term_path}.matchExpressions"));
        }
        for (field, requirements) in [
            ("matchExpressions", &term.match_expressions),
            ("matchFields", &term.match_fields),
        ] {
            for (j, r) in requirements.iter().enumerate() {
                let at = format!("{term_path}.{field}[{j}]");
                if r.key.is_empty() {
                    errors.required(format!("{at}.key"));
                }
                match r.operator.as_str() {
                    "In" | "NotIn" if r.values.is_empty() => {
                        errors.required(format!("{at}.values"));
                    }
                    "Exists" | "DoesNotExist" if !r.values.is_empty() => errors.forbidden(
                        format!("{at}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ),
                    "Gt" | "Lt" if r.values.len() != 1 => errors.push(
                        format!("{at}.values"),
                        "Required value: must be specified single value when `operator` is 'Lt' or 'Gt'",
                    ),
                    "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
                    other => errors.not_supported(
                        format!("{at}.operator"),
                        other,
                        &["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"],
                    ),
                }
            }
        }
    }
}

impl Strategy for PersistentVolume {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.persistent_volume_reclaim_policy.is_empty() {
            spec.persistent_volume_reclaim_policy = "Retain".into();
        }
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    fn prepare_create(&mut self) {
        self.status = Some(PersistentVolumeStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
        add_finalizer(self.metadata_mut(), PV_PROTECTION_FINALIZER);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        unsupported::persistent_volume(spec, errors);
        if spec.capacity.is_empty() {
            errors.required("spec.capacity");
        } else {
            validate_storage(
                "spec.capacity[storage]",
                spec.capacity.get("storage"),
                errors,
            );
            for key in spec.capacity.keys().filter(|k| *k != "storage") {
                errors.not_supported("spec.capacity", key, &["storage"]);
            }
        }
        validate_access_modes("spec.accessModes", &spec.access_modes, errors);
        match (&spec.host_path, &spec.local) {
            (None, None) => errors.push(
                "spec",
                "Required value: must specify a volume type (hostPath or local; other volume types are not supported by Skiff)",
            ),
            (Some(_), Some(_)) => errors.forbidden("spec.local", "may not specify more than 1 volume type"),
            (Some(host), None) => {
                if host.path.is_empty() {
                    errors.required("spec.hostPath.path");
                }
                if host.path.split('/').any(|part| part == "..") {
                    errors.invalid("spec.hostPath.path", &host.path, "must not contain '..'");
                }
            }
            (None, Some(local)) => {
                if local.path.is_empty() {
                    errors.required("spec.local.path");
                } else if !local.path.starts_with('/') {
                    errors.invalid("spec.local.path", &local.path, "must be an absolute path");
                }
                if local.path.split('/').any(|part| part == "..") {
                    errors.invalid("spec.local.path", &local.path, "must not contain '..'");
                }
                if spec.node_affinity.is_none() {
                    errors.push(
                        "spec.nodeAffinity",
                        "Required value: Local volume requires node affinity",
                    );
                }
            }
        }
        match spec.persistent_volume_reclaim_policy.as_str() {
            "Retain" | "Delete" => {}
            "Recycle" => errors.invalid(
                "spec.persistentVolumeReclaimPolicy",
                "Recycle",
                "Recycle is deprecated in Kubernetes and not supported by Skiff; use \"Delete\" or \"Retain\"",
            ),
            other => errors.not_supported(
                "spec.persistentVolumeReclaimPolicy",
                other,
                &["Delete", "Recycle", "Retain"],
            ),
        }
        validate_class_name("spec.storageClassName", &spec.storage_class_name, errors);
        validate_volume_mode("spec.volumeMode", spec.volume_mode.as_deref(), errors);
        if let Some(affinity) = &spec.node_affinity {
            match &affinity.required {
                Some(required) => {
                    validate_node_selector("spec.nodeAffinity.required", required, errors);
                }
                None => errors.required("spec.nodeAffinity.required"),
            }
        }
        if let Some(claim) = &spec.claim_ref {
            if claim.name.is_empty() {
                errors.required("spec.claimRef.name");
            }
            if claim.namespace.is_empty() {
                errors.required("spec.claimRef.namespace");
            }
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else {
            return;
        };
        if new.host_path != old.host_path || new.local != old.local {
            errors.forbidden(
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is immutable after creation",
            );
        }
        if new.volume_mode != old.volume_mode {
            errors.invalid(
                "spec.volumeMode",
                new.volume_mode.as_deref().unwrap_or(""),
                "field is immutable",
            );
        }
        if old.node_affinity.is_some() && new.node_affinity != old.node_affinity {
            errors.invalid("spec.nodeAffinity", "…", "field is immutable once set");
        }
    }
}

impl Strategy for PersistentVolumeClaim {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    fn prepare_create(&mut self) {
        self.status = Some(PersistentVolumeClaimStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
        add_finalizer(self.metadata_mut(), PVC_PROTECTION_FINALIZER);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_access_modes("spec.accessModes", &spec.access_modes, errors);
        let requests = spec.resources.as_ref().map(|r| &r.requests);
        validate_storage(
            "spec.resources[storage]",
            requests.and_then(|r| r.get("storage")),
            errors,
        );
        if let Some(selector) = &spec.selector
            && let Err(e) = LabelSelector::try_from(selector)
        {
            errors.invalid("spec.selector", "…", e);
        }
        validate_class_name(
            "spec.storageClassName",
            spec.storage_class_name.as_deref().unwrap_or(""),
            errors,
        );
        validate_volume_mode("spec.volumeMode", spec.volume_mode.as_deref(), errors);
        if spec.volume_name.contains('/') {
            errors.invalid("spec.volumeName", &spec.volume_name, "must not contain '/'");
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let (Some(new), Some(before)) = (&self.spec, &old.spec) else {
            return;
        };
        // What may change: the volume it is bound to, once (the binder's
        // write), and a class given to a claim that had none.
        let mut comparable = new.clone();
        if before.volume_name.is_empty() {
            comparable.volume_name.clear();
        }
        if before.storage_class_name.is_none() {
            comparable.storage_class_name = None;
        }
        let mut before = before.clone();
        if before.volume_name.is_empty() {
            before.volume_name.clear();
        }
        let bound = !before.volume_name.is_empty();
        if bound && comparable.resources != before.resources {
            let size = |s: &skiff::pb::core::v1::PersistentVolumeClaimSpec| {
                skiff::volumes::requested(&PersistentVolumeClaim {
                    spec: Some(s.clone()),
                    ..Default::default()
                })
            };
            if size(&comparable) < size(&before) {
                errors.forbidden(
                    "spec.resources.requests.storage",
                    "field can not be less than previous value",
                );
            } else {
                errors.forbidden(
                    "spec.resources.requests.storage",
                    "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize (no Skiff provisioner does)",
                );
            }
            comparable.resources = before.resources.clone();
        }
        if comparable != before {
            errors.forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            );
        }
    }

    fn wants_default_storage_class(&self) -> bool {
        self.spec
            .as_ref()
            .is_some_and(|s| s.storage_class_name.is_none())
    }

    fn set_storage_class(&mut self, class: &str) {
        if let Some(spec) = &mut self.spec {
            spec.storage_class_name = Some(class.to_string());
        }
    }
}

impl Strategy for StorageClass {
    fn default_fields(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode
            .get_or_insert_with(|| "Immediate".into());
    }

    fn validate(&self, errors: &mut FieldErrors) {
        unsupported::storage_class(self, errors);
        if self.provisioner.is_empty() {
            errors.required("provisioner");
        } else if let Err(reason) = validation::is_qualified_name(&self.provisioner) {
            errors.invalid("provisioner", &self.provisioner, reason);
        }
        match self.reclaim_policy.as_deref() {
            None | Some("Delete" | "Retain") => {}
            Some(other) => errors.not_supported("reclaimPolicy", other, &["Delete", "Retain"]),
        }
        match self.volume_binding_mode.as_deref() {
            None | Some("Immediate" | "WaitForFirstConsumer") => {}
            Some(other) => errors.not_supported(
                "volumeBindingMode",
                other,
                &["Immediate", "WaitForFirstConsumer"],
            ),
        }
        for (i, term) in self.allowed_topologies.iter().enumerate() {
            if term.match_label_expressions.is_empty() {
                errors.required(format!("allowedTopologies[{i}].matchLabelExpressions"));
            }
            for (j, r) in term.match_label_expressions.iter().enumerate() {
                if r.values.is_empty() {
                    errors.required(format!(
                        "allowedTopologies[{i}].matchLabelExpressions[{j}].values"
                    ));
                }
            }
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if self.parameters != old.parameters {
            errors.forbidden("parameters", "updates to parameters are forbidden.");
        }
        if self.provisioner != old.provisioner {
            errors.forbidden("provisioner", "updates to provisioner are forbidden.");
        }
        if self.reclaim_policy != old.reclaim_policy {
            errors.forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden.");
        }
        if self.volume_binding_mode != old.volume_binding_mode {
            errors.invalid(
                "volumeBindingMode",
                self.volume_binding_mode.as_deref().unwrap_or(""),
                "field is immutable",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        HostPathVolumeSource, LocalVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeSpec,
        VolumeResourceRequirements,
    };

    fn errors_of<K: Strategy>(obj: &K) -> String {
        let mut errors = FieldErrors::default();
        obj.validate(&mut errors);
        errors.to_string()
    }

    fn volume(size: &str) -> PersistentVolume {
        let mut pv = PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                capacity: [("storage".to_string(), size.to_string())].into(),
                access_modes: vec!["ReadWriteOnce".into()],
                host_path: Some(HostPathVolumeSource {
                    path: "/srv/data".into(),
                    r#type: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pv.default_fields();
        pv
    }

    fn claim(size: &str) -> PersistentVolumeClaim {
        let mut pvc = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                resources: Some(VolumeResourceRequirements {
                    requests: [("storage".to_string(), size.to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pvc.default_fields();
        pvc
    }

    #[test]
    fn volumes_default_to_retain_and_check_their_capacity_and_source() {
        let pv = volume("1Gi");
        assert_eq!(errors_of(&pv), "");
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.persistent_volume_reclaim_policy, "Retain");
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert!(errors_of(&volume("lots")).contains("spec.capacity[storage]: Invalid value"));
        assert!(errors_of(&volume("0")).contains("must be greater than zero"));
        let mut local = volume("1Gi");
        let spec = local.spec.as_mut().unwrap();
        spec.host_path = None;
        spec.local = Some(LocalVolumeSource {
            path: "data".into(),
            fs_type: None,
        });
        let errors = errors_of(&local);
        assert!(
            errors.contains("spec.local.path: Invalid value"),
            "{errors}"
        );
        assert!(
            errors.contains("Local volume requires node affinity"),
            "{errors}"
        );
        let mut recycled = volume("1Gi");
        recycled
            .spec
            .as_mut()
            .unwrap()
            .persistent_volume_reclaim_policy = "Recycle".into();
        assert!(errors_of(&recycled).contains("not supported by Skiff"));
    }

    #[test]
    fn a_volume_source_never_changes() {
        let old = volume("1Gi");
        let mut new = old.clone();
        new.spec.as_mut().unwrap().host_path.as_mut().unwrap().path = "/etc".into();
        let mut errors = FieldErrors::default();
        new.validate_update(&old, &mut errors);
        assert!(errors.to_string().contains("spec.persistentvolumesource"));
    }

    #[test]
    fn claims_need_a_size_and_get_their_volume_once() {
        assert_eq!(errors_of(&claim("1Gi")), "");
        let mut unsized_claim = claim("1Gi");
        unsized_claim.spec.as_mut().unwrap().resources = None;
        assert!(errors_of(&unsized_claim).contains("spec.resources[storage]: Required value"));
        let old = claim("1Gi");
        let mut bound = old.clone();
        bound.spec.as_mut().unwrap().volume_name = "pv-1".into();
        let mut errors = FieldErrors::default();
        bound.validate_update(&old, &mut errors);
        assert!(errors.is_empty(), "{errors}");
        let mut rebound = bound.clone();
        rebound.spec.as_mut().unwrap().volume_name = "pv-2".into();
        rebound.validate_update(&bound, &mut errors);
        assert!(errors.to_string().contains("spec: Forbidden"), "{errors}");
        let mut grown = bound.clone();
        grown
            .spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests
            .insert("storage".into(), "2Gi".into());
        let mut errors = FieldErrors::default();
        grown.validate_update(&bound, &mut errors);
        assert!(
            errors
                .to_string()
                .contains("only dynamically provisioned pvc"),
            "{errors}"
        );
    }

    #[test]
    fn raw_block_volumes_and_claims_are_refused() {
        let filesystem = claim("1Gi");
        assert_eq!(
            filesystem.spec.as_ref().unwrap().volume_mode.as_deref(),
            Some("Filesystem")
        );
        let mut block = claim("1Gi");
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(
            errors_of(&block).contains(
                "spec.volumeMode: Invalid value: \"Block\": raw block volumes are not supported by Skiff"
            ),
            "{}",
            errors_of(&block)
        );
        let mut other = claim("1Gi");
        other.spec.as_mut().unwrap().volume_mode = Some("Tape".into());
        assert!(errors_of(&other).contains("spec.volumeMode: Unsupported value: \"Tape\""));
        let mut raw = volume("1Gi");
        raw.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(errors_of(&raw).contains("raw block volumes are not supported by Skiff"));
    }

    #[test]
    fn storage_classes_default_and_keep_their_provisioner() {
        let mut class = StorageClass {
            provisioner: "skiff.io/local-path".into(),
            ..Default::default()
        };
        class.default_fields();
        assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(class.volume_binding_mode.as_deref(), Some("Immediate"));
        assert_eq!(errors_of(&class), "");
        let mut changed = class.clone();
        changed.provisioner = "other.io/x".into();
        let mut errors = FieldErrors::default();
        changed.validate_update(&class, &mut errors);
        assert!(
            errors
                .to_string()
                .contains("updates to provisioner are forbidden")
        );
    }
}
