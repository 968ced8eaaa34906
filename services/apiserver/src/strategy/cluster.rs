//! Cluster objects: namespaces, nodes, events, secrets, configmaps,
//! service accounts and leases.

use std::collections::BTreeMap;

use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    ConfigMap, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, Secret, ServiceAccount,
};
use skiff::validation::FieldErrors;

use super::*;

impl Strategy for Namespace {
    const NAME_RULE: NameRule = NameRule::Label;
    const FIELDS: &'static [&'static str] = &["status.phase"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "status.phase").then(|| self.status.as_ref().map_or("", |s| &s.phase).to_string())
    }

    fn default_fields(&mut self) {
        self.spec.get_or_insert_with(NamespaceSpec::default);
        // The namespace controller removes this once a deleted namespace
        // is empty; until then it stays, Terminating. Live namespaces
        // always carry it, whatever an update sends.
        let meta = self.metadata_mut();
        if meta.deletion_timestamp.is_none()
            && !meta.finalizers.iter().any(|f| f == NAMESPACE_FINALIZER)
        {
            meta.finalizers.push(NAMESPACE_FINALIZER.into());
        }
        // Kubernetes labels every namespace with its name (1.21+), so
        // NetworkPolicies can select one by it.
        if !meta.name.is_empty() {
            let name = meta.name.clone();
            meta.labels
                .insert(skiff::names::NAMESPACE_NAME_LABEL.into(), name);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if let Some(meta) = &self.metadata {
            crate::podsecurity::validate_labels(&meta.labels, errors);
        }
    }

    fn mark_deleting(&mut self) {
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase = "Terminating".into();
    }

    fn prepare_create(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: "Active".into(),
            ..Default::default()
        });
    }
}

impl Strategy for Node {
    const FIELDS: &'static [&'static str] = &["spec.unschedulable"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "spec.unschedulable").then(|| {
            self.spec
                .as_ref()
                .is_some_and(|s| s.unschedulable)
                .to_string()
        })
    }

    /// `podCIDR` and `podCIDRs[0]` say the same, whichever was written.
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.pod_cidrs.is_empty() && !spec.pod_cidr.is_empty() {
            spec.pod_cidrs = vec![spec.pod_cidr.clone()];
        } else if spec.pod_cidr.is_empty() && !spec.pod_cidrs.is_empty() {
            spec.pod_cidr = spec.pod_cidrs[0].clone();
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else { return };
        for (i, taint) in spec.taints.iter().enumerate() {
            let tpath = format!("spec.taints[{i}]");
            if taint.key.is_empty() {
                errors.required(format!("{tpath}.key"));
            } else if let Err(reason) = validation::is_qualified_name(&taint.key) {
                errors.invalid(format!("{tpath}.key"), &taint.key, &reason);
            }
            match taint.effect.as_str() {
                "NoSchedule" | "PreferNoSchedule" | "NoExecute" => {}
                "" => errors.required(format!("{tpath}.effect")),
                other => errors.not_supported(
                    format!("{tpath}.effect"),
                    other,
                    &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                ),
            }
        }
        if spec.pod_cidrs.len() > 1 {
            errors.too_many("spec.podCIDRs", spec.pod_cidrs.len(), 1);
        }
        for (i, cidr) in spec.pod_cidrs.iter().enumerate() {
            if let Err(e) = cidr.parse::<skiff::cidr::Ipv4Cidr>() {
                let reason = if cidr.contains(':') {
                    "IPv6 pod ranges are not supported by Skiff".to_string()
                } else {
                    e.0
                };
                errors.invalid(format!("spec.podCIDRs[{i}]"), cidr, reason);
            }
        }
        if spec.pod_cidrs.first().is_some_and(|c| *c != spec.pod_cidr) {
            errors.invalid(
                "spec.podCIDR",
                &spec.pod_cidr,
                "must equal the first entry of spec.podCIDRs",
            );
        }
    }

    /// A node's pod range is set once: its pods hold addresses from it.
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let cidrs = |n: &Self| {
            n.spec
                .as_ref()
                .map(|s| s.pod_cidrs.clone())
                .unwrap_or_default()
        };
        let (before, after) = (cidrs(old), cidrs(self));
        if !before.is_empty() && before != after {
            errors.forbidden(
                "spec.podCIDRs",
                format!(
                    "node updates may not change podCIDR except from \"\" to valid (it is {})",
                    before.join(",")
                ),
            );
        }
    }
}

impl Strategy for Event {
    const FIELDS: &'static [&'static str] = &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];

    fn field(&self, path: &str) -> Option<String> {
        let obj = self.involved_object.as_ref();
        let from = |f: fn(&skiff::pb::core::v1::ObjectReference) -> &String| {
            obj.map_or(String::new(), |o| f(o).clone())
        };
        match path {
            "involvedObject.kind" => Some(from(|o| &o.kind)),
            "involvedObject.namespace" => Some(from(|o| &o.namespace)),
            "involvedObject.name" => Some(from(|o| &o.name)),
            "involvedObject.uid" => Some(from(|o| &o.uid)),
            "involvedObject.apiVersion" => Some(from(|o| &o.api_version)),
            "involvedObject.resourceVersion" => Some(from(|o| &o.resource_version)),
            "involvedObject.fieldPath" => Some(from(|o| &o.field_path)),
            "reason" => Some(self.reason.clone()),
            "reportingComponent" => Some(self.reporting_component.clone()),
            // Kubernetes' `source` selector is the source's component.
            "source" => Some(
                self.source
                    .as_ref()
                    .map_or(String::new(), |s| s.component.clone()),
            ),
            "type" => Some(self.r#type.clone()),
            _ => None,
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        if self.involved_object.is_none() {
            errors.required("involvedObject");
        }
    }
}

fn validate_data_keys<V>(path: &str, data: &BTreeMap<String, V>, errors: &mut FieldErrors) {
    for key in data.keys() {
        let ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && !key.starts_with("..")
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            errors.invalid(
                format!("{path}[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.', and must not start with '..'",
            );
        }
    }
}

impl Strategy for Secret {
    const FIELDS: &'static [&'static str] = &["type"];

    fn field(&self, path: &str) -> Option<String> {
        (path == "type").then(|| self.r#type.clone())
    }

    fn default_fields(&mut self) {
        if self.r#type.is_empty() {
            self.r#type = "Opaque".into();
        }
        // Kubernetes: stringData is write-only, merged into data.
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(k, v.into_bytes());
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_data_keys("data", &self.data, errors);
        unsupported::secret(self, errors);
        // Kubernetes' per-type keys.
        let required: &[&str] = match self.r#type.as_str() {
            "kubernetes.io/tls" => &["tls.crt", "tls.key"],
            "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
            "kubernetes.io/dockercfg" => &[".dockercfg"],
            "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
            _ => &[],
        };
        for key in required {
            if !self.data.contains_key(*key) {
                errors.required(format!("data[{key}]"));
            }
        }
        if self.r#type == "kubernetes.io/basic-auth"
            && !self.data.contains_key("username")
            && !self.data.contains_key("password")
        {
            errors.push(
                "data[username]",
                "Required value: either username or password is required",
            );
        }
    }

    /// Kubernetes: the type never changes, and an immutable Secret's data
    /// (and immutability) are fixed.
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if self.r#type != old.r#type {
            errors.invalid("type", &self.r#type, "field is immutable");
        }
        if old.immutable == Some(true) {
            immutable_data(self.immutable, [self.data == old.data], errors);
        }
    }
}

/// Kubernetes' rule for an object marked `immutable: true`: it stays so,
/// and its data (`data`, then `binaryData` for a ConfigMap) never change.
fn immutable_data<const N: usize>(
    now: Option<bool>,
    unchanged: [bool; N],
    errors: &mut FieldErrors,
) {
    const WHY: &str = "field is immutable when `immutable` is set";
    if now != Some(true) {
        errors.forbidden("immutable", WHY);
    }
    for (field, same) in ["data", "binaryData"].iter().zip(unchanged) {
        if !same {
            errors.forbidden(*field, WHY);
        }
    }
}

impl Strategy for ConfigMap {
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if old.immutable == Some(true) {
            immutable_data(
                self.immutable,
                [self.data == old.data, self.binary_data == old.binary_data],
                errors,
            );
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_data_keys("data", &self.data, errors);
        validate_data_keys("binaryData", &self.binary_data, errors);
        for key in self.data.keys() {
            if self.binary_data.contains_key(key) {
                errors.push(
                    format!("data[{key}]"),
                    "Invalid value: duplicate of key present in binaryData",
                );
            }
        }
    }
}

impl Strategy for ServiceAccount {
    fn validate(&self, errors: &mut FieldErrors) {
        unsupported::service_account(self, errors);
    }
}

impl Strategy for Lease {
    fn validate(&self, errors: &mut FieldErrors) {
        if let Some(spec) = &self.spec
            && spec.lease_duration_seconds.is_some_and(|d| d <= 0)
        {
            errors.push(
                "spec.leaseDurationSeconds",
                "Invalid value: must be greater than 0",
            );
        }
    }
}
