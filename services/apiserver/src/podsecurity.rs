//! Pod Security admission: Kubernetes' Pod Security Standards
//! ([`skiff::podsecurity`] holds the checks) applied to every pod written
//! through either door, by the namespace's labels
//! (`pod-security.kubernetes.io/enforce`, `-version`; `warn`, `audit`) or
//! the cluster's default where a namespace says nothing.
//!
//! As in Kubernetes: a pod that violates its namespace's `enforce` level
//! is refused (PERMISSION_DENIED, Kubernetes' words); a workload whose
//! template does is stored (its controller's pods are refused as they are
//! created, which its Events show) and, like a pod over its `warn` or
//! `audit` level, logged. Exempt namespaces (`kube-system` by default)
//! are not judged.
//!
//! Secure by default: Skiff enforces `baseline` where a namespace is not
//! labelled (Kubernetes' built-in default is `privileged`), so hostPath,
//! host namespaces, privileged containers, added capabilities and host
//! ports need a namespace labelled to allow them.

use std::collections::{BTreeMap, BTreeSet};

use skiff::pb::core::v1::PodSpec;
use skiff::pb::meta::v1::ObjectMeta;
use skiff::podsecurity::{self as pss, Level, Policy};

use crate::error::{ApiError, Result};

/// The cluster's Pod Security settings (`--pod-security-*`).
#[derive(Debug, Clone)]
pub struct PodSecurity {
    /// The `enforce` (and `warn`, `audit`) level of a namespace that has
    /// no label for it.
    pub default: Level,
    /// Namespaces not judged at all.
    pub exempt_namespaces: BTreeSet<String>,
}

impl Default for PodSecurity {
    /// `baseline` enforced everywhere but `kube-system`.
    fn default() -> Self {
        Self {
            default: Level::Baseline,
            exempt_namespaces: BTreeSet::from(["kube-system".to_string()]),
        }
    }
}

/// One mode's policy from a namespace's labels: the level label (else the
/// default) at the version label (else latest). A label that does not
/// parse (written before validation refused such values) counts as
/// `restricted`, the safe reading.
fn policy(labels: &BTreeMap<String, String>, level: &str, version: &str, default: Level) -> Policy {
    let Some(value) = labels.get(level) else {
        return Policy::latest(default);
    };
    let version = labels.get(version).map_or("", String::as_str);
    Policy::parse(value, version).unwrap_or_else(|_| Policy::latest(Level::Restricted))
}

impl PodSecurity {
    /// Judges `spec` (of the object `resource`/`name`) in a namespace
    /// labelled `labels`.
    ///
    /// # Errors
    /// [`ApiError::Denied`] with Kubernetes' message when `enforced` and
    /// the namespace's enforce level refuses it.
    pub fn admit(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        (resource, name): (&str, &str),
        (meta, spec, enforced): (Option<&ObjectMeta>, &PodSpec, bool),
    ) -> Result<()> {
        if self.exempt_namespaces.contains(namespace) {
            return Ok(());
        }
        let enforce = policy(
            labels,
            pss::ENFORCE_LABEL,
            pss::ENFORCE_VERSION_LABEL,
            self.default,
        );
        let violations = pss::check_pod_spec(enforce.level, meta, spec);
        if !violations.is_empty() {
            if enforced {
                return Err(ApiError::Denied(pss::forbidden_message(
                    resource,
                    name,
                    &enforce,
                    &violations,
                )));
            }
            tracing::warn!(
                namespace,
                name,
                resource,
                "{}: its pods will be refused",
                pss::warning_message(&enforce, &violations)
            );
        }
        for (mode, level, version) in [
            ("warn", pss::WARN_LABEL, pss::WARN_VERSION_LABEL),
            ("audit", pss::AUDIT_LABEL, pss::AUDIT_VERSION_LABEL),
        ] {
            if !labels.contains_key(level) {
                continue;
            }
            let policy = policy(labels, level, version, self.default);
            let violations = pss::check_pod_spec(policy.level, meta, spec);
            if !violations.is_empty() {
                tracing::warn!(
                    namespace,
                    name,
                    resource,
                    mode,
                    "{}",
                    pss::warning_message(&policy, &violations)
                );
            }
        }
        Ok(())
    }
}

/// Kubernetes' validation of the Pod Security labels of a namespace.
pub fn validate_labels(
    labels: &BTreeMap<String, String>,
    errors: &mut skiff::validation::FieldErrors,
) {
    for level in [pss::ENFORCE_LABEL, pss::WARN_LABEL, pss::AUDIT_LABEL] {
        if let Some(value) = labels.get(level)
            && let Err(e) = value.parse::<Level>()
        {
            errors.invalid(format!("metadata.labels[{level}]"), value, e.to_string());
        }
    }
    for version in [
        pss::ENFORCE_VERSION_LABEL,
        pss::WARN_VERSION_LABEL,
        pss::AUDIT_VERSION_LABEL,
    ] {
        if let Some(value) = labels.get(version)
            && let Err(e) = pss::validate_version(value)
        {
            errors.invalid(format!("metadata.labels[{version}]"), value, e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{Container, HostPathVolumeSource, Volume};

    fn host_path_pod() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox".into(),
                ..Default::default()
            }],
            volumes: vec![Volume {
                name: "root".into(),
                host_path: Some(HostPathVolumeSource {
                    path: "/".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_unlabelled_namespace_enforces_the_default_with_kubernetes_words() {
        let err = PodSecurity::default()
            .admit(
                "default",
                &BTreeMap::new(),
                ("pods", "p"),
                (None, &host_path_pod(), true),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"pods "p" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "root")"#
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn a_privileged_label_or_an_exempt_namespace_allows_the_pod() {
        let security = PodSecurity::default();
        let labels = BTreeMap::from([(pss::ENFORCE_LABEL.to_string(), "privileged".to_string())]);
        let spec = host_path_pod();
        assert!(
            security
                .admit("apps", &labels, ("pods", "p"), (None, &spec, true))
                .is_ok()
        );
        assert!(
            security
                .admit(
                    "kube-system",
                    &BTreeMap::new(),
                    ("pods", "p"),
                    (None, &spec, true)
                )
                .is_ok()
        );
    }

    #[test]
    fn templates_are_stored_whatever_they_hold() {
        let spec = host_path_pod();
        assert!(
            PodSecurity::default()
                .admit(
                    "default",
                    &BTreeMap::new(),
                    ("deployments", "d"),
                    (None, &spec, false)
                )
                .is_ok()
        );
    }

    #[test]
    fn an_unreadable_label_counts_as_restricted() {
        let labels = BTreeMap::from([(pss::ENFORCE_LABEL.to_string(), "lax".to_string())]);
        assert_eq!(
            policy(
                &labels,
                pss::ENFORCE_LABEL,
                pss::ENFORCE_VERSION_LABEL,
                Level::Privileged
            )
            .level,
            Level::Restricted
        );
    }

    #[test]
    fn namespace_labels_are_validated() {
        let mut errors = skiff::validation::FieldErrors::new();
        let labels = BTreeMap::from([
            (pss::ENFORCE_LABEL.to_string(), "lax".to_string()),
            (pss::WARN_VERSION_LABEL.to_string(), "v2".to_string()),
        ]);
        validate_labels(&labels, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
