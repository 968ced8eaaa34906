//! Jobs and CronJobs (batch/v1).

use skiff::pb::batch::v1::{CronJob, Job};
use skiff::pb::core::v1::{PodSpec, PodTemplateSpec};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::validation::FieldErrors;

use super::workloads::{default_template, meta_selector, validate_template};
use super::*;

pub use skiff::names::{JOB_NAME_LABEL, JOB_UID_LABEL};

impl Strategy for Job {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self.spec.as_ref()?.template.as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.parallelism.is_none() && spec.completions.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        // With a limit per index, the job-wide one is off unless given.
        let job_wide = if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        };
        spec.backoff_limit.get_or_insert(job_wide);
        if spec.pod_replacement_policy.is_none() {
            let policy = if spec.pod_failure_policy.is_some() {
                "Failed"
            } else {
                "TerminatingOrFailed"
            };
            spec.pod_replacement_policy = Some(policy.into());
        }
        for rule in spec
            .pod_failure_policy
            .iter_mut()
            .flat_map(|p| p.rules.iter_mut())
        {
            for pattern in &mut rule.on_pod_conditions {
                if pattern.status.is_empty() {
                    pattern.status = "True".into();
                }
            }
        }
        spec.suspend.get_or_insert(false);
        spec.manual_selector.get_or_insert(false);
        if spec.completion_mode.is_empty() {
            spec.completion_mode = "NonIndexed".into();
        }
        default_template(&mut spec.template);
    }

    /// Kubernetes' generated selector, on create only: the job's uid on
    /// its selector and its labels on the template (the legacy ones beside
    /// them); labels the user set are kept, and refused by validation if
    /// they conflict.
    fn prepare_create(&mut self) {
        self.clear_status();
        let (uid, name) = (self.uid().to_string(), self.name().to_string());
        let Some(spec) = &mut self.spec else { return };
        if spec.manual_selector == Some(true) || uid.is_empty() {
            return;
        }
        let meta = spec
            .template
            .get_or_insert_with(PodTemplateSpec::default)
            .metadata
            .get_or_insert_with(ObjectMeta::default);
        for (key, value) in generated_labels(&uid, &name) {
            meta.labels
                .entry(key.into())
                .or_insert_with(|| value.to_string());
        }
        spec.selector
            .get_or_insert_with(Default::default)
            .match_labels
            .entry(JOB_UID_LABEL.into())
            .or_insert(uid);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        validate_template(
            spec.template.as_ref(),
            meta_selector(spec.selector.as_ref()),
            errors,
        );
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .map_or("", |s| s.restart_policy.as_str());
        if !matches!(restart, "Never" | "OnFailure") {
            errors.push(
                "spec.template.spec.restartPolicy",
                format!(
                    "Unsupported value: {restart:?}: supported values: \"OnFailure\", \"Never\""
                ),
            );
        }
        for (field, value) in [
            ("spec.parallelism", spec.parallelism),
            ("spec.completions", spec.completions),
            ("spec.backoffLimit", spec.backoff_limit),
        ] {
            if let Some(v) = value.filter(|v| *v < 0) {
                errors.invalid(field, v.to_string(), "must be greater than or equal to 0");
            }
        }
        if spec.active_deadline_seconds.is_some_and(|d| d <= 0) {
            errors.push(
                "spec.activeDeadlineSeconds",
                "Invalid value: must be greater than 0",
            );
        }
        validate_indexed(spec, restart, errors);
        validate_generated_selector(self, errors);
        // Each index's pod is named NAME-INDEX in its hostname.
        let name = self.name();
        if spec.completion_mode == "Indexed"
            && !name.is_empty()
            && let Some(last) = spec.completions.filter(|c| *c > 0)
        {
            let host = format!("{name}-{}", last - 1);
            if validation::is_dns1123_label(&host).is_err() {
                errors.invalid(
                    "metadata.name",
                    name,
                    format!("will not able to create pod with invalid DNS label: {host}"),
                );
            }
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else {
            return;
        };
        // An Indexed job's completions change only with its parallelism
        // (Kubernetes' elastic Indexed jobs).
        let elastic = new.completion_mode == "Indexed" && new.completions == new.parallelism;
        // The template is fixed once the job has started; a suspended job
        // that never ran may still be changed (Kubernetes allows its
        // scheduling fields).
        let unstarted = new.suspend == Some(true)
            && self.status.as_ref().is_none_or(|s| s.start_time.is_none());
        if new.template != old.template && !unstarted {
            errors.forbidden(
                "spec.template",
                "field is immutable once the job has started (suspend a job that never ran to change it)",
            );
        }
        for (field, same) in [
            (
                "spec.completionMode",
                new.completion_mode == old.completion_mode,
            ),
            (
                "spec.completions",
                new.completions == old.completions || elastic,
            ),
            (
                "spec.podFailurePolicy",
                new.pod_failure_policy == old.pod_failure_policy,
            ),
            (
                "spec.backoffLimitPerIndex",
                new.backoff_limit_per_index == old.backoff_limit_per_index,
            ),
            (
                "spec.successPolicy",
                new.success_policy == old.success_policy,
            ),
            ("spec.selector", new.selector == old.selector),
            ("spec.managedBy", new.managed_by == old.managed_by),
        ] {
            if !same {
                errors.invalid(field, "…", "field is immutable");
            }
        }
    }
}

/// The labels a Job's pods carry unless its selector is manual.
fn generated_labels<'a>(uid: &'a str, name: &'a str) -> [(&'static str, &'a str); 4] {
    [
        (JOB_UID_LABEL, uid),
        ("controller-uid", uid),
        (JOB_NAME_LABEL, name),
        ("job-name", name),
    ]
}

/// Without `manualSelector`, the selector and the template's labels must
/// be the generated ones (Kubernetes' ValidateGeneratedSelector): labels
/// the user set in their place, or a selector of their own that the
/// job's pods would not match, are refused.
fn validate_generated_selector(job: &Job, errors: &mut FieldErrors) {
    let Some(spec) = &job.spec else { return };
    let uid = job.uid();
    if spec.manual_selector == Some(true) || uid.is_empty() {
        return;
    }
    let labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    let mut generated = std::collections::BTreeMap::new();
    for (key, want) in generated_labels(uid, job.name()) {
        let path = format!("spec.template.metadata.labels[{key}]");
        match labels.get(key) {
            None => errors.push(path, format!("Required value: must be '{want}'")),
            Some(value) if value != want => {
                errors.invalid(path, value.as_str(), format!("must be '{want}'"));
            }
            Some(_) => {}
        }
        generated.insert(key.to_string(), want.to_string());
    }
    // The selector must select the pods the job makes, by what they carry.
    let matches = meta_selector(spec.selector.as_ref())
        .ok()
        .flatten()
        .is_some_and(|s| s.matches(&generated));
    if !matches {
        errors.invalid("spec.selector", "…", "`selector` not auto-generated");
    }
}

impl Strategy for CronJob {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        let template = self
            .spec
            .as_ref()?
            .job_template
            .as_ref()?
            .spec
            .as_ref()?
            .template
            .as_ref()?;
        Some((template.metadata.as_ref(), template.spec.as_ref()?, false))
    }

    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.concurrency_policy.is_empty() {
            spec.concurrency_policy = "Allow".into();
        }
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(job) = spec.job_template.as_mut().and_then(|t| t.spec.as_mut()) {
            default_template(&mut job.template);
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        if spec.schedule.is_empty() {
            errors.required("spec.schedule");
        } else if let Err(why) = skiff::schedule::parse(&spec.schedule) {
            errors.invalid("spec.schedule", &spec.schedule, &why);
        }
        if let Some(zone) = spec.time_zone.as_deref()
            && let Err(why) = skiff::schedule::time_zone(zone)
        {
            errors.invalid("spec.timeZone", zone, why);
        }
        if !matches!(
            spec.concurrency_policy.as_str(),
            "Allow" | "Forbid" | "Replace"
        ) {
            errors.invalid(
                "spec.concurrencyPolicy",
                &spec.concurrency_policy,
                "supported values: \"Allow\", \"Forbid\", \"Replace\"",
            );
        }
        // The Job it makes, checked as one (its selector is generated
        // when it is made), so a bad template is refused now, not at each
        // run.
        let template = spec.job_template.clone().unwrap_or_default();
        let job = Job {
            metadata: template.metadata,
            spec: template.spec,
            ..Default::default()
        };
        let mut job_errors = FieldErrors::new();
        match &job.spec {
            Some(_) => job.validate(&mut job_errors),
            None => job_errors.required("spec"),
        }
        // Its selector is given when the Job is made.
        for e in job_errors
            .errors()
            .iter()
            .filter(|e| !e.path.starts_with("spec.selector"))
        {
            errors.push(format!("spec.jobTemplate.{}", e.path), e.message.clone());
        }
        if let Some(job) = &job.spec {
            if job.selector.is_some() {
                errors.invalid(
                    "spec.jobTemplate.spec.selector",
                    "…",
                    "`selector` will be auto-generated",
                );
            }
            if job.manual_selector == Some(true) {
                errors.not_supported(
                    "spec.jobTemplate.spec.manualSelector",
                    true,
                    &["nil", "false"],
                );
            }
        }
        for (field, value) in [
            (
                "spec.startingDeadlineSeconds",
                spec.starting_deadline_seconds,
            ),
            (
                "spec.successfulJobsHistoryLimit",
                spec.successful_jobs_history_limit.map(i64::from),
            ),
            (
                "spec.failedJobsHistoryLimit",
                spec.failed_jobs_history_limit.map(i64::from),
            ),
        ] {
            if let Some(v) = value.filter(|v| *v < 0) {
                errors.invalid(field, v.to_string(), "must be greater than or equal to 0");
            }
        }
        // Its Jobs are named NAME-<minute> (11 more characters) and carry
        // the name in a label: Kubernetes' limit.
        let name = self.name();
        if name.len() > 52 {
            errors.invalid("metadata.name", name, "must be no more than 52 characters");
        }
    }
}

/// The Job fields of Kubernetes 1.35's Indexed jobs and failure and
/// success policies.
fn validate_indexed(spec: &skiff::pb::batch::v1::JobSpec, restart: &str, errors: &mut FieldErrors) {
    let indexed = match spec.completion_mode.as_str() {
        "" | "NonIndexed" => false,
        "Indexed" => true,
        other => {
            errors.not_supported("spec.completionMode", other, &["Indexed", "NonIndexed"]);
            false
        }
    };
    let completions = spec.completions.unwrap_or(0);
    if indexed {
        if spec.completions.is_none() {
            errors.push(
                "spec.completions",
                "Required value: when completion mode is Indexed",
            );
        }
        if let Some(p) = spec.parallelism.filter(|p| *p > 100_000) {
            errors.invalid(
                "spec.parallelism",
                p,
                "must be less than or equal to 100000 when completion mode is Indexed",
            );
        }
    }
    if let Some(limit) = spec.backoff_limit_per_index {
        if !indexed {
            errors.invalid(
                "spec.backoffLimitPerIndex",
                limit,
                "requires indexed completion mode",
            );
        }
        if limit < 0 {
            errors.invalid(
                "spec.backoffLimitPerIndex",
                limit,
                "must be greater than or equal to 0",
            );
        }
    }
    if let Some(max) = spec.max_failed_indexes {
        if spec.backoff_limit_per_index.is_none() {
            errors.push(
                "spec.backoffLimitPerIndex",
                "Required value: when maxFailedIndexes is specified",
            );
        }
        if max < 0 || (indexed && max > completions) {
            errors.invalid(
                "spec.maxFailedIndexes",
                max,
                "must be greater than or equal to 0 and less than or equal to completions",
            );
        }
    }
    match spec.pod_replacement_policy.as_deref() {
        None | Some("TerminatingOrFailed" | "Failed") => {}
        Some(other) => errors.not_supported(
            "spec.podReplacementPolicy",
            other,
            &["Failed", "TerminatingOrFailed"],
        ),
    }
    if let Some(by) = spec
        .managed_by
        .as_deref()
        .filter(|m| *m != "kubernetes.io/job-controller")
    {
        errors.forbidden(
            "spec.managedBy",
            format!(
                "{by:?}: Jobs managed by another controller are not supported by Skiff (only \"kubernetes.io/job-controller\")"
            ),
        );
    }
    if let Some(policy) = &spec.pod_failure_policy {
        if restart != "Never" {
            errors.invalid(
                "spec.template.spec.restartPolicy",
                restart,
                "only \"Never\" is supported when podFailurePolicy is specified",
            );
        }
        if spec.pod_replacement_policy.as_deref() == Some("TerminatingOrFailed") {
            errors.not_supported(
                "spec.podReplacementPolicy",
                "TerminatingOrFailed",
                &["Failed"],
            );
        }
        if policy.rules.len() > 20 {
            errors.too_many("spec.podFailurePolicy.rules", policy.rules.len(), 20);
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let path = format!("spec.podFailurePolicy.rules[{i}]");
            match rule.action.as_str() {
                "FailJob" | "Ignore" | "Count" => {}
                "FailIndex" if spec.backoff_limit_per_index.is_some() => {}
                "FailIndex" => errors.invalid(
                    format!("{path}.action"),
                    "FailIndex",
                    "requires the backoffLimitPerIndex to be set",
                ),
                other => errors.not_supported(
                    format!("{path}.action"),
                    other,
                    &["Count", "FailIndex", "FailJob", "Ignore"],
                ),
            }
            match (&rule.on_exit_codes, rule.on_pod_conditions.is_empty()) {
                (Some(_), false) => errors.invalid(
                    &path,
                    "…",
                    "specifying both OnExitCodes and OnPodConditions is not supported",
                ),
                (None, true) => errors.invalid(
                    &path,
                    "…",
                    "specifying one of OnExitCodes and OnPodConditions is required",
                ),
                _ => {}
            }
            if let Some(codes) = &rule.on_exit_codes {
                let at = format!("{path}.onExitCodes");
                if let Some(name) = &codes.container_name {
                    let pod = spec.template.as_ref().and_then(|t| t.spec.as_ref());
                    let known = pod.is_some_and(|p| {
                        p.containers
                            .iter()
                            .chain(&p.init_containers)
                            .any(|c| c.name == *name)
                    });
                    if !known {
                        errors.invalid(
                            format!("{at}.containerName"),
                            name,
                            "must be one of the container or initContainer names in the pod template",
                        );
                    }
                }
                if !matches!(codes.operator.as_str(), "In" | "NotIn") {
                    errors.not_supported(
                        format!("{at}.operator"),
                        &codes.operator,
                        &["In", "NotIn"],
                    );
                }
                if codes.values.is_empty() {
                    errors.push(
                        format!("{at}.values"),
                        "Invalid value: []: at least one value is required",
                    );
                }
                if codes.values.len() > 255 {
                    errors.too_many(format!("{at}.values"), codes.values.len(), 255);
                }
                let mut seen = std::collections::BTreeSet::new();
                for (j, value) in codes.values.iter().enumerate() {
                    if !seen.insert(*value) {
                        errors.duplicate(format!("{at}.values[{j}]"), *value);
                    }
                    if codes.operator == "In" && *value == 0 {
                        errors.invalid(
                            format!("{at}.values[{j}]"),
                            0,
                            "must not be 0 for the In operator",
                        );
                    }
                }
            }
            for (j, pattern) in rule.on_pod_conditions.iter().enumerate() {
                let at = format!("{path}.onPodConditions[{j}]");
                if pattern.r#type.is_empty() {
                    errors.required(format!("{at}.type"));
                }
                if !matches!(pattern.status.as_str(), "" | "True" | "False" | "Unknown") {
                    errors.not_supported(
                        format!("{at}.status"),
                        &pattern.status,
                        &["False", "True", "Unknown"],
                    );
                }
            }
        }
    }
    if let Some(policy) = &spec.success_policy {
        if !indexed {
            errors.push(
                "spec.successPolicy",
                "Invalid value: requires indexed completion mode",
            );
        }
        if policy.rules.is_empty() || policy.rules.len() > 20 {
            errors.invalid(
                "spec.successPolicy.rules",
                policy.rules.len(),
                "must have between 1 and 20 rules",
            );
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let path = format!("spec.successPolicy.rules[{i}]");
            if rule.succeeded_indexes.is_none() && rule.succeeded_count.is_none() {
                errors.push(
                    &path,
                    "Required value: at least one of succeededCount or succeededIndexes must be specified",
                );
            }
            let mut size = completions;
            if let Some(set) = &rule.succeeded_indexes {
                match skiff::indexes::parse(set, completions) {
                    Ok(indexes) => size = i32::try_from(indexes.len()).unwrap_or(i32::MAX),
                    Err(why) => errors.invalid(format!("{path}.succeededIndexes"), set, why),
                }
            }
            if let Some(count) = rule.succeeded_count
                && (count < 0 || count > size)
            {
                errors.invalid(
                    format!("{path}.succeededCount"),
                    count,
                    "must be greater than or equal to 0 and at most the number of indexes it names",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
