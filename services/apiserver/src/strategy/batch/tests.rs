//! Tests of the Job and CronJob rules: generated selectors.

use super::*;
use skiff::pb::batch::v1::JobSpec;
use skiff::pb::meta::v1::LabelSelector;

fn job(selector: Option<LabelSelector>, manual: Option<bool>) -> Job {
    let mut job = Job {
        metadata: Some(ObjectMeta {
            name: "pi".into(),
            uid: "u-1".into(),
            ..Default::default()
        }),
        spec: Some(JobSpec {
            selector,
            manual_selector: manual,
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: [("app".to_string(), "pi".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    job.default_fields();
    job.prepare_create();
    job
}

fn selector_errors(job: &Job) -> String {
    let mut errors = FieldErrors::default();
    validate_generated_selector(job, &mut errors);
    errors.to_string()
}

fn app(value: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: [("app".to_string(), value.to_string())].into(),
        ..Default::default()
    })
}

fn template_labels(spec: &JobSpec) -> &std::collections::BTreeMap<String, String> {
    &spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .expect("a template with labels")
        .labels
}

#[test]
fn a_jobs_selector_is_generated_unless_it_is_manual() {
    // Generated: the job's uid on the selector and its pods.
    let generated = job(None, None);
    let spec = generated.spec.as_ref().unwrap();
    assert_eq!(spec.manual_selector, Some(false));
    let selector = &spec.selector.as_ref().unwrap().match_labels;
    assert_eq!(selector[JOB_UID_LABEL], "u-1");
    let labels = template_labels(spec);
    assert_eq!(labels[JOB_NAME_LABEL], "pi");
    assert_eq!(labels["controller-uid"], "u-1");
    assert_eq!(labels["app"], "pi", "the user's labels stay");
    assert_eq!(selector_errors(&generated), "");
    // A selector of one's own without manualSelector: refused, as the
    // job's pods alone would not match it.
    assert!(
        selector_errors(&job(app("pi"), None))
            .contains("spec.selector: Invalid value: \"…\": `selector` not auto-generated"),
        "{}",
        selector_errors(&job(app("pi"), None))
    );
    // One that selects by the generated labels is the job's own.
    let by_name = Some(LabelSelector {
        match_labels: [("job-name".to_string(), "pi".to_string())].into(),
        ..Default::default()
    });
    assert_eq!(selector_errors(&job(by_name, None)), "");
    // manualSelector: the selector is the user's, nothing generated.
    let manual = job(app("pi"), Some(true));
    let spec = manual.spec.as_ref().unwrap();
    assert_eq!(spec.selector, app("pi"));
    let labels = template_labels(spec);
    assert!(!labels.contains_key(JOB_UID_LABEL));
    assert_eq!(selector_errors(&manual), "");
    // A generated label the user set to something else: refused.
    let mut conflicting = job(None, None);
    conflicting
        .spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("job-name".into(), "other".into());
    assert!(
        selector_errors(&conflicting).contains(
            "spec.template.metadata.labels[job-name]: Invalid value: \"other\": must be 'pi'"
        ),
        "{}",
        selector_errors(&conflicting)
    );
}

#[test]
fn a_cronjobs_template_leaves_the_selector_to_its_jobs() {
    use skiff::pb::batch::v1::{CronJobSpec, JobTemplateSpec};
    let cron = |selector: Option<LabelSelector>, manual: Option<bool>| {
        let template = job(selector, manual);
        CronJob {
            metadata: Some(ObjectMeta {
                name: "nightly".into(),
                ..Default::default()
            }),
            spec: Some(CronJobSpec {
                schedule: "0 3 * * *".into(),
                job_template: Some(JobTemplateSpec {
                    metadata: None,
                    spec: template.spec,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let errors = |c: &CronJob| {
        let mut errors = FieldErrors::default();
        c.validate(&mut errors);
        errors.to_string()
    };
    assert!(
        errors(&cron(app("pi"), None))
            .contains("spec.jobTemplate.spec.selector: Invalid value: \"…\": `selector` will be auto-generated"),
        "{}",
        errors(&cron(app("pi"), None))
    );
    assert!(
        errors(&cron(None, Some(true)))
            .contains("spec.jobTemplate.spec.manualSelector: Unsupported value: true"),
        "{}",
        errors(&cron(None, Some(true)))
    );
}
