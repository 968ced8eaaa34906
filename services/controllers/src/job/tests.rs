//! The Job controller's planner and pods, unit-tested.

use super::plan::timestamp;
use super::*;
use skiff::pb::batch::v1::{JobSpec, JobStatus};
use skiff::pb::core::v1::{ContainerStatus, PodSpec, PodStatus, PodTemplateSpec};

fn job(completions: Option<i32>, parallelism: i32, backoff: i32) -> Job {
    Job {
        metadata: Some(ObjectMeta {
            name: "batch".into(),
            uid: "job-uid".into(),
            ..Default::default()
        }),
        spec: Some(JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(backoff),
            template: Some(PodTemplateSpec {
                spec: Some(PodSpec {
                    restart_policy: "Never".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(name: &str, phase: &str, created: i64) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            creation_timestamp: Some(timestamp(created)),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: phase.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn pods_run_in_parallel_up_to_what_remains() {
    let j = job(Some(5), 2, 6);
    assert_eq!(plan(&j, &[], &[], 100).create, 2);
    let owned = [
        pod("a", "Succeeded", 1),
        pod("b", "Succeeded", 2),
        pod("c", "Succeeded", 3),
        pod("d", "Running", 4),
    ];
    let p = plan(&j, &owned, &[], 100);
    assert_eq!((p.create, p.status.succeeded, p.status.active), (1, 3, 1));
    // A create in flight counts.
    assert_eq!(plan(&j, &owned, &[None], 100).create, 0);
}

#[test]
fn enough_successes_complete_the_job_and_stop_the_rest() {
    let j = job(Some(2), 3, 6);
    let owned = [
        pod("a", "Succeeded", 1),
        pod("b", "Succeeded", 2),
        pod("c", "Running", 3),
    ];
    let p = plan(&j, &owned, &[], 100);
    assert_eq!(p.finish.as_ref().map(|f| f.kind), Some("Complete"));
    assert_eq!(p.delete, ["c"]);
    // Decided; complete once "c" has stopped.
    let holds = |p: &Plan, kind: &str| {
        p.status
            .conditions
            .iter()
            .any(|c| c.r#type == kind && c.status == "True")
    };
    assert!(holds(&p, "SuccessCriteriaMet") && !holds(&p, "Complete"));
    assert!(p.status.completion_time.is_none());
    let mut decided = j.clone();
    decided.status = Some(p.status.clone());
    let p = plan(&decided, &owned[..2], &[], 101);
    assert!(holds(&p, "Complete"));
    assert!(p.status.completion_time.is_some());
    // Without completions, one success completes once the others end.
    let any = job(None, 2, 6);
    assert!(
        plan(
            &any,
            &[pod("a", "Succeeded", 1), pod("b", "Running", 2)],
            &[],
            100
        )
        .finish
        .is_none()
    );
    assert!(
        plan(
            &any,
            &[pod("a", "Succeeded", 1), pod("b", "Failed", 2)],
            &[],
            100
        )
        .finish
        .is_some()
    );
}

#[test]
fn failures_back_off_then_exhaust_the_limit() {
    let j = job(Some(1), 1, 2);
    // One failure at 100: the replacement waits 10 s.
    let p = plan(&j, &[pod("a", "Failed", 100)], &[], 105);
    assert_eq!(p.create, 0);
    assert_eq!(p.retry_after, Some(Duration::from_secs(5)));
    assert_eq!(plan(&j, &[pod("a", "Failed", 100)], &[], 111).create, 1);
    // Two failures: 20 s after the last.
    let two = [pod("a", "Failed", 100), pod("b", "Failed", 120)];
    assert_eq!(plan(&j, &two, &[], 130).create, 0);
    assert_eq!(plan(&j, &two, &[], 141).create, 1);
    // A third exceeds backoffLimit 2.
    let three = [
        pod("a", "Failed", 100),
        pod("b", "Failed", 120),
        pod("c", "Failed", 150),
    ];
    let p = plan(&j, &three, &[], 200);
    assert_eq!(p.finish.map(|f| f.reason), Some("BackoffLimitExceeded"));
}

#[test]
fn restarts_count_as_failures_under_on_failure() {
    let mut j = job(Some(1), 1, 1);
    j.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = "OnFailure".into();
    let mut running = (*pod("a", "Running", 1)).clone();
    running.status.as_mut().unwrap().container_statuses = vec![ContainerStatus {
        restart_count: 2,
        ..Default::default()
    }];
    let p = plan(&j, &[Arc::new(running)], &[], 100);
    assert_eq!(p.status.failed, 2);
    assert_eq!(p.finish.map(|f| f.reason), Some("BackoffLimitExceeded"));
}

#[test]
fn a_deadline_fails_the_job_and_suspend_stops_its_pods() {
    let mut j = job(Some(1), 1, 6);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
    j.status = Some(JobStatus {
        start_time: Some(timestamp(100)),
        ..Default::default()
    });
    let running = [pod("a", "Running", 100)];
    let early = plan(&j, &running, &[], 110);
    assert!(early.finish.is_none());
    assert_eq!(early.retry_after, Some(Duration::from_secs(20)));
    let late = plan(&j, &running, &[], 131);
    assert_eq!(late.finish.map(|f| f.reason), Some("DeadlineExceeded"));
    assert_eq!(late.delete, ["a"]);
    let mut suspended = job(Some(1), 1, 6);
    suspended.spec.as_mut().unwrap().suspend = Some(true);
    let p = plan(&suspended, &running, &[], 110);
    assert_eq!((p.create, p.delete.clone()), (0, vec!["a".to_string()]));
    assert!(p.status.conditions.iter().any(|c| c.r#type == "Suspended"));
}

fn indexed(completions: i32, parallelism: i32) -> Job {
    let mut j = job(Some(completions), parallelism, 6);
    j.spec.as_mut().unwrap().completion_mode = "Indexed".into();
    j
}

fn indexed_pod(name: &str, index: i32, phase: &str, exit: i32, created: i64) -> Arc<Pod> {
    let mut pod = (*pod(name, phase, created)).clone();
    pod.metadata
        .as_mut()
        .unwrap()
        .annotations
        .insert(JOB_COMPLETION_INDEX_ANNOTATION.into(), index.to_string());
    pod.status.as_mut().unwrap().container_statuses = vec![ContainerStatus {
        name: "main".into(),
        state: Some(skiff::pb::core::v1::ContainerState {
            terminated: (phase == "Failed" || phase == "Succeeded").then(|| {
                skiff::pb::core::v1::ContainerStateTerminated {
                    exit_code: exit,
                    ..Default::default()
                }
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    Arc::new(pod)
}

#[test]
fn an_indexed_job_runs_each_index_until_it_succeeds_once() {
    let j = indexed(3, 2);
    assert_eq!(plan(&j, &[], &[], 100).create_indexes, [(0, 0), (1, 0)]);
    let owned = [
        indexed_pod("a", 0, "Succeeded", 0, 1),
        indexed_pod("b", 1, "Running", 0, 2),
    ];
    let p = plan(&j, &owned, &[], 100);
    assert_eq!(p.create_indexes, [(2, 0)]);
    assert_eq!(
        (p.status.completed_indexes.as_str(), p.status.succeeded),
        ("0", 1)
    );
    // An index being made is not made twice.
    assert!(plan(&j, &owned, &[Some(2)], 100).create_indexes.is_empty());
    let done = [
        indexed_pod("a", 0, "Succeeded", 0, 1),
        indexed_pod("b", 1, "Succeeded", 0, 2),
        indexed_pod("c", 2, "Succeeded", 0, 3),
    ];
    let p = plan(&j, &done, &[], 100);
    assert_eq!(p.finish.map(|f| f.reason), Some("Completed"));
    assert_eq!(p.status.completed_indexes, "0-2");
}

#[test]
fn an_index_past_its_own_backoff_limit_fails_alone() {
    let mut j = indexed(3, 3);
    j.spec.as_mut().unwrap().backoff_limit_per_index = Some(1);
    let owned = [
        indexed_pod("a", 0, "Succeeded", 0, 1),
        indexed_pod("b1", 1, "Failed", 1, 2),
        indexed_pod("b2", 1, "Failed", 1, 30),
        indexed_pod("c", 2, "Running", 0, 3),
    ];
    let p = plan(&j, &owned, &[], 100);
    assert_eq!(p.status.failed_indexes.as_deref(), Some("1"));
    assert!(p.create_indexes.is_empty(), "index 1 is not retried");
    assert!(p.finish.is_none(), "index 2 still runs");
    let mut ended = owned.to_vec();
    ended[3] = indexed_pod("c", 2, "Succeeded", 0, 3);
    let p = plan(&j, &ended, &[], 100);
    assert_eq!(p.finish.map(|f| f.reason), Some("FailedIndexes"));
    j.spec.as_mut().unwrap().max_failed_indexes = Some(0);
    let p = plan(&j, &owned, &[], 100);
    assert_eq!(p.finish.map(|f| f.reason), Some("MaxFailedIndexesExceeded"));
    // One failure: the index is retried, with its count.
    let once = [indexed_pod("b1", 1, "Failed", 1, 2)];
    let j = indexed(3, 3);
    let mut per_index = j.clone();
    per_index.spec.as_mut().unwrap().backoff_limit_per_index = Some(1);
    let p = plan(&per_index, &once, &[], 100);
    assert!(p.create_indexes.contains(&(1, 1)), "{:?}", p.create_indexes);
}

#[test]
fn a_pod_failure_policy_fails_the_job_or_ignores_the_failure() {
    use skiff::pb::batch::v1::{
        PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
        PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
    };
    let mut j = job(Some(2), 2, 0);
    j.spec.as_mut().unwrap().pod_failure_policy = Some(PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some("main".into()),
                    operator: "In".into(),
                    values: vec![42],
                }),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: vec![PodFailurePolicyOnPodConditionsPattern {
                    r#type: "DisruptionTarget".into(),
                    status: "True".into(),
                }],
                ..Default::default()
            },
        ],
    });
    let p = plan(&j, &[indexed_pod("a", 0, "Failed", 42, 1)], &[], 100);
    let finish = p.finish.unwrap();
    assert_eq!(finish.reason, "PodFailurePolicy");
    assert!(
        finish
            .message
            .contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{}",
        finish.message
    );
    let mut disrupted = (*indexed_pod("b", 0, "Failed", 1, 1)).clone();
    disrupted.status.as_mut().unwrap().conditions = vec![skiff::pb::core::v1::PodCondition {
        r#type: "DisruptionTarget".into(),
        status: "True".into(),
        ..Default::default()
    }];
    let p = plan(&j, &[Arc::new(disrupted)], &[], 100);
    assert!(
        p.finish.is_none(),
        "backoffLimit 0, but the failure is ignored"
    );
    assert_eq!((p.status.failed, p.create), (0, 2));
}

#[test]
fn a_success_policy_completes_an_indexed_job_early() {
    use skiff::pb::batch::v1::{SuccessPolicy, SuccessPolicyRule};
    let mut j = indexed(3, 3);
    j.spec.as_mut().unwrap().success_policy = Some(SuccessPolicy {
        rules: vec![SuccessPolicyRule {
            succeeded_indexes: Some("0".into()),
            succeeded_count: None,
        }],
    });
    let owned = [
        indexed_pod("a", 0, "Succeeded", 0, 1),
        indexed_pod("b", 1, "Running", 0, 2),
    ];
    let p = plan(&j, &owned, &[], 100);
    assert_eq!(p.finish.map(|f| f.reason), Some("SuccessPolicy"));
    assert_eq!(p.delete, ["b"]);
    assert!(
        p.status
            .conditions
            .iter()
            .any(|c| c.r#type == "SuccessCriteriaMet")
    );
}

#[test]
fn an_indexed_pod_carries_its_index() {
    let mut j = indexed(3, 1);
    j.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .containers = vec![skiff::pb::core::v1::Container {
        name: "main".into(),
        ..Default::default()
    }];
    let pod = JobController::pod_for(&j, Some((2, 0)));
    let meta = pod.metadata.as_ref().unwrap();
    assert_eq!(meta.generate_name, "batch-2-");
    assert_eq!(meta.annotations[JOB_COMPLETION_INDEX_ANNOTATION], "2");
    assert_eq!(meta.labels[JOB_COMPLETION_INDEX_ANNOTATION], "2");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.hostname, "batch-2");
    assert!(
        spec.containers[0]
            .env
            .iter()
            .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value == "2")
    );
}

#[test]
fn what_the_status_says_outlives_the_pods_that_showed_it() {
    let mut j = indexed(3, 3);
    j.spec.as_mut().unwrap().backoff_limit_per_index = Some(0);
    j.status = Some(JobStatus {
        completed_indexes: "0".into(),
        failed_indexes: Some("1".into()),
        ..Default::default()
    });
    // Their pods are gone: index 0 stays done, index 1 failed.
    let p = plan(&j, &[], &[], 100);
    assert_eq!(p.create_indexes, [(2, 0)]);
    assert_eq!(p.status.completed_indexes, "0");
    assert_eq!(p.status.failed_indexes.as_deref(), Some("1"));
}

#[test]
fn ignored_failures_still_wait_and_extra_pods_go() {
    use skiff::pb::batch::v1::{
        PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
    };
    let mut j = job(Some(1), 1, 0);
    j.spec.as_mut().unwrap().pod_failure_policy = Some(PodFailurePolicy {
        rules: vec![PodFailurePolicyRule {
            action: "Ignore".into(),
            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                container_name: None,
                operator: "In".into(),
                values: vec![137],
            }),
            ..Default::default()
        }],
    });
    let p = plan(&j, &[indexed_pod("a", 0, "Failed", 137, 95)], &[], 100);
    assert!(p.finish.is_none());
    assert_eq!(p.create, 0, "replaced after the backoff, not at once");
    assert!(p.retry_after.is_some());
    // An index run twice keeps its oldest pod; a pod of no index goes.
    let j = indexed(2, 2);
    let owned = [
        indexed_pod("old", 0, "Running", 0, 1),
        indexed_pod("new", 0, "Running", 0, 2),
        pod("stray", "Running", 3),
    ];
    let mut deleted = plan(&j, &owned, &[], 100).delete;
    deleted.sort();
    assert_eq!(deleted, ["new", "stray"]);
}

#[test]
fn a_success_policy_never_holds_before_anything_succeeded() {
    use skiff::pb::batch::v1::{SuccessPolicy, SuccessPolicyRule};
    let mut j = indexed(3, 3);
    j.spec.as_mut().unwrap().success_policy = Some(SuccessPolicy {
        rules: vec![SuccessPolicyRule {
            succeeded_indexes: None,
            succeeded_count: Some(0),
        }],
    });
    assert!(plan(&j, &[], &[], 100).finish.is_none());
}

#[test]
fn a_suspended_job_starts_when_resumed() {
    let mut j = job(Some(1), 1, 6);
    j.spec.as_mut().unwrap().suspend = Some(true);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
    let p = plan(&j, &[], &[], 100);
    assert!(p.status.start_time.is_none());
    j.status = Some(p.status);
    j.spec.as_mut().unwrap().suspend = Some(false);
    // Resumed long after: its deadline counts from now.
    let p = plan(&j, &[], &[], 1000);
    assert!(p.finish.is_none());
    assert_eq!(p.status.start_time.map(|t| t.seconds), Some(1000));
    let suspended = p
        .status
        .conditions
        .iter()
        .find(|c| c.r#type == "Suspended")
        .unwrap();
    assert_eq!(
        (suspended.status.as_str(), suspended.reason.as_str()),
        ("False", "JobResumed")
    );
    assert_eq!(p.create, 1);
}

#[test]
fn with_pod_replacement_policy_failed_a_terminating_pod_keeps_its_place() {
    // One pod of two is being deleted but still running.
    let mut going = (*pod("going", "Running", 1)).clone();
    going.metadata.as_mut().unwrap().deletion_timestamp = Some(timestamp(90));
    let owned = [Arc::new(going), pod("staying", "Running", 2)];
    let mut j = job(Some(4), 2, 6);
    // The default (TerminatingOrFailed): replaced at once.
    assert_eq!(plan(&j, &owned, &[], 100).create, 1);
    // Failed: not until it has stopped.
    j.spec.as_mut().unwrap().pod_replacement_policy = Some("Failed".into());
    assert_eq!(plan(&j, &owned, &[], 100).create, 0);
}
