//! The Job controller: runs pods of a Job's template until `completions`
//! of them succeed, at most `parallelism` at a time; fails the Job when
//! its pods fail more than `backoffLimit` times (restarts count under
//! `restartPolicy: OnFailure`) or it runs past `activeDeadlineSeconds`;
//! recreates failed pods with Kubernetes' backoff (10 s, doubling, at most
//! 6 min); `suspend` stops its pods; `ttlSecondsAfterFinished` deletes a
//! finished Job (and, through the garbage collector, its pods). Finished
//! pods are kept, so their logs can be read.
//!
//! Each reconcile plans from the caches ([`plan`], a pure function), with
//! expectations for creates the cache has not shown yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::batch::v1::{Job, JobCondition, JobStatus};
use skiff::pb::core::v1::Pod;
use skiff::pb::meta::v1::{ObjectMeta, OwnerReference};
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::replicaset::{controller_of, created_at, delete_exactly, is_active};
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// Creates not observed within this long are forgotten.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);
/// The first wait before a failed pod is replaced (Kubernetes').
const BACKOFF_BASE_SECS: i64 = 10;
/// The longest.
const BACKOFF_MAX_SECS: i64 = 360;

/// How a job ended: its condition type, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// "Complete" or "Failed".
    pub kind: &'static str,
    /// e.g. "BackoffLimitExceeded".
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// What one reconcile does and reports.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create.
    pub create: usize,
    /// Active pods to delete, by name (the job finished or is suspended).
    pub delete: Vec<String>,
    /// The job finishes now.
    pub finish: Option<Finish>,
    /// The status to report.
    pub status: JobStatus,
    /// Look again after this long (a backoff or a deadline to wait out).
    pub retry_after: Option<Duration>,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// Whether the Job holds condition `kind` (`Complete`, `Failed`, ...).
pub(crate) fn condition(job: &Job, kind: &str) -> bool {
    job.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == kind && c.status == "True")
    })
}

fn timestamp(seconds: i64) -> skiff::wkt::Timestamp {
    skiff::wkt::Timestamp { seconds, nanos: 0 }
}

/// Plans a reconcile of `job` over the pods it owns, with `creating`
/// creates in flight, at `now` (seconds since the epoch).
pub fn plan(job: &Job, owned: &[Arc<Pod>], creating: usize, now: i64) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let previous = job.status.clone().unwrap_or_default();
    let on_failure = spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .is_some_and(|s| s.restart_policy == "OnFailure");
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
    let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed_pods: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p) == "Failed").collect();
    let restarts: i32 = if on_failure {
        owned
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| &s.container_statuses)
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let failed = failed_pods.len() as i32 + restarts;
    let mut plan = Plan {
        status: JobStatus {
            conditions: previous.conditions.clone(),
            start_time: previous.start_time.or(Some(timestamp(now))),
            completion_time: previous.completion_time,
            active: active.len() as i32,
            succeeded,
            failed,
            ready: Some(active.iter().filter(|p| skiff::pods::is_ready(p)).count() as i32),
        },
        ..Default::default()
    };
    let stop_active = |plan: &mut Plan| {
        plan.delete = active.iter().map(|p| p.name().to_string()).collect();
    };
    if condition(job, "Complete") || condition(job, "Failed") {
        stop_active(&mut plan);
        return plan;
    }
    if spec.suspend == Some(true) {
        stop_active(&mut plan);
        if !condition(job, "Suspended") {
            plan.status.conditions.push(JobCondition {
                r#type: "Suspended".into(),
                status: "True".into(),
                last_transition_time: Some(timestamp(now)),
                reason: "JobSuspended".into(),
                message: "Job suspended".into(),
                ..Default::default()
            });
        }
        return plan;
    }
    plan.status.conditions.retain(|c| c.r#type != "Suspended");
    let started = plan.status.start_time.as_ref().map_or(now, |t| t.seconds);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let finish = if failed > backoff_limit {
        Some(Finish {
            kind: "Failed",
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit".into(),
        })
    } else if spec
        .active_deadline_seconds
        .is_some_and(|d| now >= started + d)
    {
        Some(Finish {
            kind: "Failed",
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline".into(),
        })
    } else {
        let done = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        done.then(|| Finish {
            kind: "Complete",
            reason: "Completed",
            message: "Job completed".into(),
        })
    };
    if let Some(finish) = finish {
        stop_active(&mut plan);
        if finish.kind == "Complete" {
            plan.status.completion_time = Some(timestamp(now));
        }
        plan.status.conditions.push(JobCondition {
            r#type: finish.kind.into(),
            status: "True".into(),
            last_probe_time: Some(timestamp(now)),
            last_transition_time: Some(timestamp(now)),
            reason: finish.reason.into(),
            message: finish.message.clone(),
        });
        plan.finish = Some(finish);
        return plan;
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let wanted = match spec.completions {
        Some(c) => parallelism.min((c - succeeded).max(0)),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    let missing = (wanted as usize).saturating_sub(active.len() + creating);
    if missing > 0 && !failed_pods.is_empty() {
        // Failed pods are replaced after a backoff that doubles with each
        // failure.
        let exponent = (failed - 1).clamp(0, 16) as u32;
        let delay = (BACKOFF_BASE_SECS << exponent).min(BACKOFF_MAX_SECS);
        let last = failed_pods
            .iter()
            .map(|p| created_at::<Pod>(p))
            .max()
            .unwrap_or(0);
        if now < last + delay {
            plan.retry_after = Some(Duration::from_secs((last + delay - now).unsigned_abs()));
            return plan;
        }
    }
    plan.create = missing;
    if let Some(deadline) = spec.active_deadline_seconds {
        let left = (started + deadline - now).max(1).unsigned_abs();
        plan.retry_after = Some(Duration::from_secs(left));
    }
    plan
}

/// See the module doc.
pub struct JobController {
    recorder: Arc<Recorder>,
    jobs: Api<Job>,
    job_store: Store<Job>,
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    /// Creates not yet seen, per job: pod name → when it was made.
    creating: Mutex<HashMap<ObjectRef, HashMap<String, Instant>>>,
}

fn now_secs() -> i64 {
    skiff::time::now_seconds().seconds
}

impl JobController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        jobs: (Api<Job>, Store<Job>),
        pods: (Api<Pod>, Store<Pod>),
    ) -> Self {
        Self {
            recorder,
            jobs: jobs.0,
            job_store: jobs.1,
            pods: pods.0,
            pod_store: pods.1,
            creating: Mutex::new(HashMap::new()),
        }
    }

    /// The job a pod belongs to, if any.
    pub fn owner_of(pod: &Pod) -> Option<ObjectRef> {
        controller_of(pod)
            .filter(|o| o.kind == Job::KIND)
            .map(|o| ObjectRef::new(pod.namespace(), o.name.clone()))
    }

    fn event(&self, job: &Job, kind: EventType, reason: &'static str, message: String) {
        let (recorder, job) = (Arc::clone(&self.recorder), job.clone());
        tokio::spawn(async move {
            recorder.record(&job, kind, reason, &message).await;
        });
    }

    fn pod_for(job: &Job) -> Pod {
        let meta = job.metadata.clone().unwrap_or_default();
        let template = job
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        Pod {
            metadata: Some(ObjectMeta {
                generate_name: format!("{}-", meta.name),
                namespace: meta.namespace,
                labels: tmeta.labels,
                annotations: tmeta.annotations,
                owner_references: vec![OwnerReference {
                    api_version: Job::API_VERSION.into(),
                    kind: Job::KIND.into(),
                    name: meta.name,
                    uid: meta.uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }],
                ..Default::default()
            }),
            spec: template.spec,
            ..Default::default()
        }
    }

    /// Deletes a finished job whose time to live is up; otherwise how long
    /// is left.
    async fn expire(&self, job: &Job) -> Result<Option<Duration>, Error> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(None);
        };
        let finished = job
            .status
            .as_ref()
            .into_iter()
            .flat_map(|s| &s.conditions)
            .filter(|c| matches!(c.r#type.as_str(), "Complete" | "Failed") && c.status == "True")
            .filter_map(|c| c.last_transition_time.as_ref())
            .map(|t| t.seconds)
            .max();
        let Some(finished) = finished else {
            return Ok(None);
        };
        let left = finished + i64::from(ttl) - now_secs();
        if left > 0 {
            return Ok(Some(Duration::from_secs(left.unsigned_abs())));
        }
        let request = DeleteRequest {
            propagation_policy: "Background".into(),
            ..delete_exactly(job)
        };
        match self.jobs.delete(request).await {
            Ok(_) => {
                tracing::info!(job = %job.name(), "deleted: its time to live after finishing is up");
                Ok(None)
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(job) = self.job_store.get(&key.namespace, &key.name) else {
            if let Ok(mut all) = self.creating.lock() {
                all.remove(&key);
            }
            return Ok(Action::AwaitChange);
        };
        if job
            .metadata()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let uid = job.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        let owned: Vec<Arc<Pod>> = self
            .pod_store
            .list()
            .into_iter()
            .filter(|p| p.namespace() == key.namespace)
            .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == uid))
            .collect();
        // Creates in flight: made, not yet in the cache.
        let creating = {
            let mut all = self
                .creating
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let made = all.entry(key.clone()).or_default();
            made.retain(|name, at| {
                at.elapsed() < EXPECTATION_TTL && !owned.iter().any(|p| p.name() == name)
            });
            made.len()
        };
        let plan = plan(&job, &owned, creating, now_secs());
        for _ in 0..plan.create {
            match self.pods.create(Self::pod_for(&job)).await {
                Ok(pod) => {
                    self.event(
                        &job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name()),
                    );
                    if let Ok(mut all) = self.creating.lock() {
                        all.entry(key.clone())
                            .or_default()
                            .insert(pod.name().to_string(), Instant::now());
                    }
                }
                Err(s) => {
                    self.event(
                        &job,
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {}", s.message()),
                    );
                    return Err(s.into());
                }
            }
        }
        for name in &plan.delete {
            let Some(pod) = owned.iter().find(|p| p.name() == name) else {
                continue;
            };
            match self.pods.delete(delete_exactly(pod.as_ref())).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        if let Some(finish) = &plan.finish {
            let kind = if finish.kind == "Complete" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            self.event(&job, kind, finish.reason, finish.message.clone());
        }
        let mut updated = (*job).clone();
        if updated.status.as_ref() != Some(&plan.status) {
            updated.status = Some(plan.status.clone());
            match self.jobs.update_status(updated).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                    return Ok(Action::Requeue(Duration::from_secs(1)));
                }
                Err(s) => return Err(s.into()),
            }
        }
        if let Some(left) = self.expire(&job).await? {
            return Ok(Action::Requeue(left));
        }
        if plan.create > 0 || creating > 0 {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        Ok(plan
            .retry_after
            .map_or(Action::AwaitChange, Action::Requeue))
    }
}

impl Reconciler for JobController {
    fn name(&self) -> &'static str {
        "job"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.job_store, key)
    }
}

// === wiring ===

/// Starts the Job controller: woken by Jobs and their pods.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(JobController::new(
        Arc::clone(&shared.recorder),
        (Api::new(shared.channel.clone()), shared.jobs.store.clone()),
        (Api::new(shared.channel.clone()), shared.pods.store.clone()),
    ));
    let store = shared.jobs.store.clone();
    Controller::new(controller)
        .for_kind(&shared.jobs)
        .watches(&shared.pods, |change| {
            JobController::owner_of(changed(change))
                .into_iter()
                .collect()
        })
        .run(move || keys_of(&store), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::batch::v1::JobSpec;
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
        assert_eq!(plan(&j, &[], 0, 100).create, 2);
        let owned = [
            pod("a", "Succeeded", 1),
            pod("b", "Succeeded", 2),
            pod("c", "Succeeded", 3),
            pod("d", "Running", 4),
        ];
        let p = plan(&j, &owned, 0, 100);
        assert_eq!((p.create, p.status.succeeded, p.status.active), (1, 3, 1));
        // A create in flight counts.
        assert_eq!(plan(&j, &owned, 1, 100).create, 0);
    }

    #[test]
    fn enough_successes_complete_the_job_and_stop_the_rest() {
        let j = job(Some(2), 3, 6);
        let owned = [
            pod("a", "Succeeded", 1),
            pod("b", "Succeeded", 2),
            pod("c", "Running", 3),
        ];
        let p = plan(&j, &owned, 0, 100);
        assert_eq!(p.finish.as_ref().map(|f| f.kind), Some("Complete"));
        assert_eq!(p.delete, ["c"]);
        assert!(p.status.completion_time.is_some());
        assert!(
            p.status
                .conditions
                .iter()
                .any(|c| c.r#type == "Complete" && c.status == "True")
        );
        // Without completions, one success completes once the others end.
        let any = job(None, 2, 6);
        assert!(
            plan(
                &any,
                &[pod("a", "Succeeded", 1), pod("b", "Running", 2)],
                0,
                100
            )
            .finish
            .is_none()
        );
        assert!(
            plan(
                &any,
                &[pod("a", "Succeeded", 1), pod("b", "Failed", 2)],
                0,
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
        let p = plan(&j, &[pod("a", "Failed", 100)], 0, 105);
        assert_eq!(p.create, 0);
        assert_eq!(p.retry_after, Some(Duration::from_secs(5)));
        assert_eq!(plan(&j, &[pod("a", "Failed", 100)], 0, 111).create, 1);
        // Two failures: 20 s after the last.
        let two = [pod("a", "Failed", 100), pod("b", "Failed", 120)];
        assert_eq!(plan(&j, &two, 0, 130).create, 0);
        assert_eq!(plan(&j, &two, 0, 141).create, 1);
        // A third exceeds backoffLimit 2.
        let three = [
            pod("a", "Failed", 100),
            pod("b", "Failed", 120),
            pod("c", "Failed", 150),
        ];
        let p = plan(&j, &three, 0, 200);
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
        let p = plan(&j, &[Arc::new(running)], 0, 100);
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
        let early = plan(&j, &running, 0, 110);
        assert!(early.finish.is_none());
        assert_eq!(early.retry_after, Some(Duration::from_secs(20)));
        let late = plan(&j, &running, 0, 131);
        assert_eq!(late.finish.map(|f| f.reason), Some("DeadlineExceeded"));
        assert_eq!(late.delete, ["a"]);
        let mut suspended = job(Some(1), 1, 6);
        suspended.spec.as_mut().unwrap().suspend = Some(true);
        let p = plan(&suspended, &running, 0, 110);
        assert_eq!((p.create, p.delete.clone()), (0, vec!["a".to_string()]));
        assert!(p.status.conditions.iter().any(|c| c.r#type == "Suspended"));
    }
}
