//! Workloads: ReplicationControllers, ReplicaSets, Deployments,
//! DaemonSets and StatefulSets (templates, selectors, update strategies),
//! and the ControllerRevisions of their history.

use skiff::pb::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy,
    ReplicaSet, RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy,
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use skiff::pb::core::v1::{PodSpec, PodTemplateSpec, ReplicationController};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::selector::LabelSelector;
use skiff::validation::{self, FieldErrors};
use skiff::wkt::{Value, value::Kind as ValueKind};

use super::pod::{default_pod_spec, validate_pod_spec};
use super::*;

pub(super) fn default_template(template: &mut Option<PodTemplateSpec>) {
    if let Some(spec) = template.as_mut().and_then(|t| t.spec.as_mut()) {
        default_pod_spec(spec);
    }
}

/// Checks a workload's template against its selector: the template must
/// exist and its labels must match, or the controller would never see the
/// pods it creates.
pub(super) fn validate_template(
    template: Option<&PodTemplateSpec>,
    selector: Result<Option<LabelSelector>, String>,
    errors: &mut FieldErrors,
) {
    let selector = match selector {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            errors.required("spec.selector");
            None
        }
        Err(reason) => {
            errors.push("spec.selector", format!("Invalid value: {reason}"));
            None
        }
    };
    let Some(template) = template else {
        errors.required("spec.template");
        return;
    };
    let labels = template
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    validation::validate_labels("spec.template.metadata.labels", &labels, errors);
    if let Some(selector) = selector {
        if selector.is_empty() {
            errors.push("spec.selector", "Invalid value: empty selector is invalid");
        } else if !selector.matches(&labels) {
            errors.push(
                "spec.template.metadata.labels",
                format!("Invalid value: selector {selector} does not match template labels"),
            );
        }
    }
    match &template.spec {
        Some(spec) => validate_pod_spec("spec.template.spec", spec, errors),
        None => errors.required("spec.template.spec"),
    }
}

pub(super) fn meta_selector(
    selector: Option<&skiff::pb::meta::v1::LabelSelector>,
) -> Result<Option<LabelSelector>, String> {
    let Some(s) = selector else { return Ok(None) };
    LabelSelector::try_from(s)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A ReplicaSet's or Deployment's replicas, selector and template.
fn validate_workload(
    replicas: Option<i32>,
    selector: Option<&skiff::pb::meta::v1::LabelSelector>,
    template: Option<&PodTemplateSpec>,
    errors: &mut FieldErrors,
) {
    validate_replicas(replicas, errors);
    validate_template(template, meta_selector(selector), errors);
}

fn validate_replicas(replicas: Option<i32>, errors: &mut FieldErrors) {
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errors.invalid(
            "spec.replicas",
            r.to_string(),
            "must be greater than or equal to 0",
        );
    }
}

impl Strategy for ReplicationController {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            // Kubernetes: an empty selector defaults to the template's labels.
            if spec.selector.is_empty()
                && let Some(labels) = spec
                    .template
                    .as_ref()
                    .and_then(|t| t.metadata.as_ref())
                    .map(|m| m.labels.clone())
            {
                spec.selector = labels;
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_replicas(spec.replicas, errors);
        let selector = if spec.selector.is_empty() {
            Ok(None)
        } else {
            LabelSelector::from_parts(&spec.selector, &[])
                .map(Some)
                .map_err(|e| e.to_string())
        };
        validate_template(spec.template.as_ref(), selector, errors);
    }
}

impl Strategy for ReplicaSet {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_workload(
            spec.replicas,
            spec.selector.as_ref(),
            spec.template.as_ref(),
            errors,
        );
    }
}

/// An int-or-string that is a count or a percentage ("25%").
pub(super) fn validate_int_or_percent(path: &str, value: Option<&Value>, errors: &mut FieldErrors) {
    match value.and_then(|v| v.kind.as_ref()) {
        None => {}
        Some(ValueKind::NumberValue(n)) if *n >= 0.0 && n.fract() == 0.0 => {}
        Some(ValueKind::StringValue(s))
            if s.strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .is_some() => {}
        Some(_) => errors.push(
            path,
            "Invalid value: must be a non-negative integer or a percentage like \"25%\"",
        ),
    }
}

impl Strategy for Deployment {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.replicas.get_or_insert(1);
            spec.revision_history_limit.get_or_insert(10);
            spec.progress_deadline_seconds.get_or_insert(600);
            let strategy = spec
                .strategy
                .get_or_insert_with(DeploymentStrategy::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let percent = |p: &str| Value {
                    kind: Some(ValueKind::StringValue(p.into())),
                };
                let ru = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDeployment::default);
                ru.max_unavailable.get_or_insert_with(|| percent("25%"));
                ru.max_surge.get_or_insert_with(|| percent("25%"));
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_workload(
            spec.replicas,
            spec.selector.as_ref(),
            spec.template.as_ref(),
            errors,
        );
        if let Some(strategy) = &spec.strategy {
            match strategy.r#type.as_str() {
                "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxUnavailable",
                            ru.max_unavailable.as_ref(),
                            errors,
                        );
                        validate_int_or_percent(
                            "spec.strategy.rollingUpdate.maxSurge",
                            ru.max_surge.as_ref(),
                            errors,
                        );
                    }
                }
                "Recreate" => {
                    if strategy.rolling_update.is_some() {
                        errors.push(
                            "spec.strategy.rollingUpdate",
                            "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                        );
                    }
                }
                other => errors.push(
                    "spec.strategy.type",
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""
                    ),
                ),
            }
        }
    }
}

/// A ControllerRevision is a snapshot: its data never changes (as in
/// Kubernetes); its revision number may (a rollback renumbers the
/// revision it returns to).
impl Strategy for ControllerRevision {
    fn validate(&self, errors: &mut FieldErrors) {
        if self.revision < 0 {
            errors.invalid(
                "revision",
                self.revision,
                "must be greater than or equal to 0",
            );
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if self.data != old.data {
            errors.invalid("data", "", "field is immutable");
        }
    }
}

impl Strategy for DaemonSet {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            spec.revision_history_limit.get_or_insert(10);
            let strategy = spec
                .update_strategy
                .get_or_insert_with(DaemonSetUpdateStrategy::default);
            if strategy.r#type.is_empty() {
                strategy.r#type = "RollingUpdate".into();
            }
            if strategy.r#type == "RollingUpdate" {
                let count = |n: f64| Value {
                    kind: Some(ValueKind::NumberValue(n)),
                };
                let ru = strategy
                    .rolling_update
                    .get_or_insert_with(RollingUpdateDaemonSet::default);
                ru.max_unavailable.get_or_insert_with(|| count(1.0));
                ru.max_surge.get_or_insert_with(|| count(0.0));
            }
            default_template(&mut spec.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        unsupported::daemon_set(spec, errors);
        validate_template(
            spec.template.as_ref(),
            meta_selector(spec.selector.as_ref()),
            errors,
        );
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map_or("Always", |s| s.restart_policy.as_str());
        if restart != "Always" {
            errors.push(
                "spec.template.spec.restartPolicy",
                format!("Unsupported value: {restart:?}: supported values: \"Always\""),
            );
        }
        if let Some(strategy) = &spec.update_strategy {
            match strategy.r#type.as_str() {
                "RollingUpdate" => {
                    if let Some(ru) = &strategy.rolling_update {
                        validate_int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            ru.max_unavailable.as_ref(),
                            errors,
                        );
                        validate_int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxSurge",
                            ru.max_surge.as_ref(),
                            errors,
                        );
                    }
                }
                "OnDelete" => {}
                other => errors.push(
                    "spec.updateStrategy.type",
                    format!(
                        "Unsupported value: {other:?}: supported values: \"OnDelete\", \"RollingUpdate\""
                    ),
                ),
            }
        }
    }
}

impl Strategy for StatefulSet {
    /// Its name is its pods' hostnames' prefix: a DNS label.
    const NAME_RULE: NameRule = NameRule::Label;

    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        if spec.pod_management_policy.is_empty() {
            spec.pod_management_policy = "OrderedReady".into();
        }
        let strategy = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        if strategy.r#type.is_empty() {
            strategy.r#type = "RollingUpdate".into();
        }
        if strategy.r#type == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
            ru.partition.get_or_insert(0);
        }
        let policy = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        for field in [&mut policy.when_deleted, &mut policy.when_scaled] {
            if field.is_empty() {
                *field = "Retain".into();
            }
        }
        for claim in &mut spec.volume_claim_templates {
            claim.default_fields();
            claim.status = Some(skiff::pb::core::v1::PersistentVolumeClaimStatus {
                phase: "Pending".into(),
                ..Default::default()
            });
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_replicas(spec.replicas, errors);
        // The template's mounts may name the claim templates: each is a
        // volume of the pods.
        let mut template = spec.template.clone();
        if let Some(pod) = template.as_mut().and_then(|t| t.spec.as_mut()) {
            for claim in &spec.volume_claim_templates {
                let name = claim.name();
                if !pod.volumes.iter().any(|v| v.name == name) {
                    pod.volumes.push(skiff::pb::core::v1::Volume {
                        name: name.to_string(),
                        persistent_volume_claim: Some(
                            skiff::pb::core::v1::PersistentVolumeClaimVolumeSource {
                                claim_name: name.to_string(),
                                read_only: false,
                            },
                        ),
                        ..Default::default()
                    });
                }
            }
        }
        validate_template(
            template.as_ref(),
            meta_selector(spec.selector.as_ref()),
            errors,
        );
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map_or("Always", |s| s.restart_policy.as_str());
        if restart != "Always" {
            errors.not_supported("spec.template.spec.restartPolicy", restart, &["Always"]);
        }
        if !matches!(
            spec.pod_management_policy.as_str(),
            "OrderedReady" | "Parallel"
        ) {
            errors.not_supported(
                "spec.podManagementPolicy",
                &spec.pod_management_policy,
                &["OrderedReady", "Parallel"],
            );
        }
        if let Some(strategy) = &spec.update_strategy {
            match strategy.r#type.as_str() {
                "RollingUpdate" => {
                    let ru = strategy.rolling_update.clone().unwrap_or_default();
                    if let Some(p) = ru.partition.filter(|p| *p < 0) {
                        errors.invalid(
                            "spec.updateStrategy.rollingUpdate.partition",
                            p,
                            "must be greater than or equal to 0",
                        );
                    }
                    let one = ru.max_unavailable.as_ref().is_none_or(
                        |v| matches!(v.kind, Some(ValueKind::NumberValue(n)) if n == 1.0),
                    );
                    if !one {
                        errors.invalid(
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            "…",
                            "only 1 is supported by Skiff (pods are replaced one at a time)",
                        );
                    }
                }
                "OnDelete" => {
                    if strategy.rolling_update.is_some() {
                        errors.forbidden(
                            "spec.updateStrategy.rollingUpdate",
                            "only allowed for updateStrategy 'RollingUpdate'",
                        );
                    }
                }
                other => errors.not_supported(
                    "spec.updateStrategy.type",
                    other,
                    &["OnDelete", "RollingUpdate"],
                ),
            }
        }
        if let Some(policy) = &spec.persistent_volume_claim_retention_policy {
            for (field, value) in [
                ("whenDeleted", &policy.when_deleted),
                ("whenScaled", &policy.when_scaled),
            ] {
                if !matches!(value.as_str(), "" | "Retain" | "Delete") {
                    errors.not_supported(
                        format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                        value,
                        &["Retain", "Delete"],
                    );
                }
            }
        }
        if spec.min_ready_seconds < 0 {
            errors.invalid(
                "spec.minReadySeconds",
                spec.min_ready_seconds,
                "must be greater than or equal to 0",
            );
        }
        if let Some(limit) = spec.revision_history_limit.filter(|l| *l < 0) {
            errors.invalid(
                "spec.revisionHistoryLimit",
                limit,
                "must be greater than or equal to 0",
            );
        }
        if spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .is_some_and(|s| s.active_deadline_seconds.is_some())
        {
            errors.forbidden(
                "spec.template.spec.activeDeadlineSeconds",
                "activeDeadlineSeconds in StatefulSet is not Supported",
            );
        }
        if spec.ordinals.as_ref().is_some_and(|o| o.start < 0) {
            errors.invalid(
                "spec.ordinals.start",
                "…",
                "must be greater than or equal to 0",
            );
        }
        for (i, claim) in spec.volume_claim_templates.iter().enumerate() {
            let path = format!("spec.volumeClaimTemplates[{i}]");
            if let Err(reason) = validation::is_dns1123_label(claim.name()) {
                errors.invalid(format!("{path}.metadata.name"), claim.name(), reason);
            }
            let mut claim_errors = FieldErrors::new();
            claim.validate(&mut claim_errors);
            for e in claim_errors.errors() {
                errors.push(format!("{path}.{}", e.path), e.message.clone());
            }
        }
        // Pods are named NAME-ORDINAL and carry the name in a label
        // (`controller-revision-hash` is NAME-HASH): Kubernetes' limit.
        let name = self.name();
        if name.len() > 52 {
            errors.invalid("metadata.name", name, "must be no more than 52 characters");
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else {
            return;
        };
        let mut comparable = new.clone();
        for (field, before) in [
            (&mut comparable.replicas, old.replicas),
            (
                &mut comparable.revision_history_limit,
                old.revision_history_limit,
            ),
        ] {
            *field = before;
        }
        comparable.template = old.template.clone();
        comparable.update_strategy = old.update_strategy.clone();
        comparable.persistent_volume_claim_retention_policy =
            old.persistent_volume_claim_retention_policy.clone();
        comparable.min_ready_seconds = old.min_ready_seconds;
        comparable.ordinals = old.ordinals;
        if comparable != *old {
            errors.forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            );
        }
    }
}
