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
        let (uid, name) = self
            .metadata
            .as_ref()
            .map(|m| (m.uid.clone(), m.name.clone()))
            .unwrap_or_default();
        let Some(spec) = &mut self.spec else { return };
        if spec.parallelism.is_none() && spec.completions.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.suspend.get_or_insert(false);
        spec.manual_selector.get_or_insert(false);
        if spec.completion_mode.is_empty() {
            spec.completion_mode = "NonIndexed".into();
        }
        // Kubernetes' generated selector: the job's uid, on the selector
        // and the template (and the legacy labels beside it).
        if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
            spec.selector = Some(skiff::pb::meta::v1::LabelSelector {
                match_labels: [(JOB_UID_LABEL.to_string(), uid.clone())].into(),
                ..Default::default()
            });
            let meta = spec
                .template
                .get_or_insert_with(PodTemplateSpec::default)
                .metadata
                .get_or_insert_with(ObjectMeta::default);
            for (key, value) in [
                (JOB_UID_LABEL, &uid),
                ("controller-uid", &uid),
                (JOB_NAME_LABEL, &name),
                ("job-name", &name),
            ] {
                meta.labels.insert(key.into(), value.clone());
            }
        }
        default_template(&mut spec.template);
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
        if !matches!(spec.completion_mode.as_str(), "" | "NonIndexed") {
            errors.invalid(
                "spec.completionMode",
                &spec.completion_mode,
                "supported values: \"NonIndexed\" (Indexed jobs are not supported)",
            );
        }
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
        if let Some(zone) = spec
            .time_zone
            .as_deref()
            .filter(|z| !matches!(*z, "UTC" | "Etc/UTC"))
        {
            errors.invalid("spec.timeZone", zone, "only \"UTC\" is supported");
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
        let name = self.metadata.as_ref().map_or("", |m| m.name.as_str());
        if name.len() > 52 {
            errors.invalid("metadata.name", name, "must be no more than 52 characters");
        }
    }
}
