//! Tests of the CronJob controller's decisions.

use super::*;
use skiff::pb::meta::v1::ObjectMeta;

#[test]
fn a_run_has_one_name_per_scheduled_minute() {
    let cron = CronJob {
        metadata: Some(ObjectMeta {
            name: "nightly".into(),
            namespace: "default".into(),
            uid: "u".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let job = job_for(&cron, 1_796_083_200);
    let meta = job.metadata.unwrap();
    assert_eq!(meta.name, "nightly-29934720");
    assert_eq!(meta.owner_references[0].kind, "CronJob");
    assert!(meta.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"].ends_with('Z'));
    assert_eq!(
        job_for(&cron, 1_796_083_259).metadata.unwrap().name,
        "nightly-29934720"
    );
}

#[test]
fn a_job_tells_the_run_it_was_made_for() {
    let cron = CronJob {
        metadata: Some(ObjectMeta {
            name: "nightly".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let at = 1_796_083_200;
    assert_eq!(scheduled_at(&job_for(&cron, at)), Some(at));
    // Without the annotation, by the minute in its name.
    let mut job = job_for(&cron, at);
    job.metadata.as_mut().unwrap().annotations.clear();
    assert_eq!(scheduled_at(&job), Some(at));
}

#[test]
fn a_changed_schedule_is_noticed_but_a_first_look_is_not() {
    let mut seen = std::collections::HashMap::new();
    assert!(!schedule_changed_in(&mut seen, "u", "0 3 * * *"));
    assert!(!schedule_changed_in(&mut seen, "u", "0 3 * * *"));
    assert!(schedule_changed_in(&mut seen, "u", "0 4 * * *"));
    assert!(!schedule_changed_in(&mut seen, "u", "0 4 * * *"));
}

fn spec(extra: serde_json::Value) -> CronJobSpec {
    let mut spec = serde_json::json!({"schedule": "* * * * *"});
    if let (Some(spec), serde_json::Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    skiff::json::from_value(spec).unwrap()
}

/// A Job of the CronJob, finished as `end` says (None: running).
fn job(name: &str, end: Option<bool>) -> Arc<Job> {
    let conditions = match end {
        Some(ok) => {
            serde_json::json!([{"type": if ok {"Complete"} else {"Failed"}, "status": "True"}])
        }
        None => serde_json::json!([]),
    };
    Arc::new(
        skiff::json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": conditions},
        }))
        .unwrap(),
    )
}

#[test]
fn history_limits_keep_the_newest_finished_jobs_of_each_end() {
    // Newest first, as the controller sorts them.
    let owned = [
        job("running", None),
        job("ok-5", Some(true)),
        job("failed-3", Some(false)),
        job("ok-4", Some(true)),
        job("ok-3", Some(true)),
        job("failed-2", Some(false)),
        job("ok-2", Some(true)),
        job("failed-1", Some(false)),
        job("ok-1", Some(true)),
    ];
    let names = |spec: &CronJobSpec| -> Vec<String> {
        beyond_history(spec, &owned)
            .iter()
            .map(|j| j.name().to_string())
            .collect()
    };
    // Kubernetes' defaults: three complete, one failed.
    assert_eq!(
        names(&spec(serde_json::json!({}))),
        ["failed-2", "ok-2", "failed-1", "ok-1"]
    );
    assert_eq!(
        names(&spec(
            serde_json::json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 2})
        )),
        ["ok-4", "ok-3", "ok-2", "failed-1", "ok-1"]
    );
    // Zero keeps none; a running Job is never history.
    assert_eq!(
        names(&spec(
            serde_json::json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0})
        ))
        .len(),
        8
    );
}

const MINUTE: i64 = 1_796_083_200;

fn every_minute() -> Schedule {
    skiff::schedule::parse_in("* * * * *", None).unwrap()
}

#[test]
fn a_run_later_than_its_starting_deadline_is_missed_not_started() {
    let now = MINUTE + 30;
    let late = spec(serde_json::json!({"startingDeadlineSeconds": 10}));
    assert_eq!(
        plan(&late, &every_minute(), MINUTE - 60, now, 0),
        (Run::Missed(MINUTE), false)
    );
    let in_time = spec(serde_json::json!({"startingDeadlineSeconds": 60}));
    assert_eq!(
        plan(&in_time, &every_minute(), MINUTE - 60, now, 0),
        (
            Run::Start {
                at: MINUTE,
                replace: false
            },
            false
        )
    );
    // Without a deadline, a run is started however late.
    assert_eq!(
        plan(
            &spec(serde_json::json!({})),
            &every_minute(),
            MINUTE - 60,
            MINUTE + 59,
            0
        )
        .0,
        Run::Start {
            at: MINUTE,
            replace: false
        }
    );
}

#[test]
fn the_starting_deadline_bounds_how_far_back_runs_are_counted() {
    // A day down: 1,440 runs missed. Without a deadline, more than
    // Kubernetes counts; with one, only the runs within it count.
    let now = MINUTE + 10;
    let since = count_from(MINUTE - 86_400, None, false, None, now);
    assert_eq!(since, MINUTE - 86_400);
    let (run, too_many) = plan(&spec(serde_json::json!({})), &every_minute(), since, now, 0);
    assert!(too_many);
    assert_eq!(
        run,
        Run::Start {
            at: MINUTE,
            replace: false
        },
        "only the latest missed run is made"
    );
    let since = count_from(MINUTE - 86_400, None, false, Some(200), now);
    assert_eq!(since, now - 201);
    let deadline = spec(serde_json::json!({"startingDeadlineSeconds": 200}));
    assert!(!plan(&deadline, &every_minute(), since, now, 0).1);
    // A newer made run and a changed schedule count from later still.
    assert_eq!(
        count_from(MINUTE - 600, Some(MINUTE - 60), false, None, now),
        MINUTE - 60
    );
    assert_eq!(count_from(MINUTE - 600, None, true, None, now), now);
}

#[test]
fn concurrency_policy_holds_replaces_or_allows_beside_an_active_run() {
    let now = MINUTE + 5;
    let run = |policy: &str, active: usize| {
        let spec = spec(serde_json::json!({"concurrencyPolicy": policy}));
        plan(&spec, &every_minute(), MINUTE - 60, now, active).0
    };
    assert_eq!(run("Forbid", 1), Run::Held(MINUTE));
    assert_eq!(
        run("Forbid", 0),
        Run::Start {
            at: MINUTE,
            replace: false
        }
    );
    assert_eq!(
        run("Replace", 2),
        Run::Start {
            at: MINUTE,
            replace: true
        }
    );
    assert_eq!(
        run("Allow", 3),
        Run::Start {
            at: MINUTE,
            replace: false
        }
    );
    // Suspended: nothing, whatever is due.
    let suspended = spec(serde_json::json!({"suspend": true}));
    assert_eq!(
        plan(&suspended, &every_minute(), MINUTE - 600, now, 0).0,
        Run::Nothing
    );
    // Nothing due since the last run.
    assert_eq!(
        plan(
            &spec(serde_json::json!({})),
            &every_minute(),
            MINUTE,
            now,
            0
        )
        .0,
        Run::Nothing
    );
}
