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
//!
//! The decisions are in `plan` (pure, unit-tested in `tests`); this file
//! keeps the controller that carries them out, and its wiring.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::batch::v1::Job;
use skiff::pb::core::v1::Pod;
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::replicaset::delete_exactly;
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};
pub use skiff::names::{JOB_COMPLETION_INDEX_ANNOTATION, JOB_INDEX_FAILURE_COUNT_ANNOTATION};

mod plan;
pub(crate) use plan::condition;
pub use plan::{Finish, Plan, failure_rule, index_of, plan};

/// Creates not observed within this long are forgotten.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// Creates not yet seen of one job: pod name → when it was made and its
/// index (Indexed jobs).
type Creating = HashMap<String, (Instant, Option<i32>)>;

/// See the module doc.
pub struct JobController {
    recorder: Arc<Recorder>,
    jobs: Api<Job>,
    job_store: Store<Job>,
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    /// Creates not yet seen, per job: pod name → when it was made and its
    /// index (Indexed jobs).
    creating: Mutex<HashMap<ObjectRef, Creating>>,
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
        pod.controlled_by()
            .filter(|o| o.kind == Job::KIND)
            .map(|o| ObjectRef::new(pod.namespace(), o.name.clone()))
    }

    fn event(&self, job: &Job, kind: EventType, reason: &'static str, message: String) {
        let (recorder, job) = (Arc::clone(&self.recorder), job.clone());
        tokio::spawn(async move {
            recorder.record(&job, kind, reason, &message).await;
        });
    }

    /// A pod of the job; of an Indexed job, the pod of `index` (with the
    /// failures of that index so far): its index in an annotation, a
    /// label, `JOB_COMPLETION_INDEX` and its hostname, as Kubernetes does.
    pub fn pod_for(job: &Job, index: Option<(i32, i32)>) -> Pod {
        let meta = job.metadata.clone().unwrap_or_default();
        let template = job
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        let tmeta = template.metadata.unwrap_or_default();
        let (mut labels, mut annotations) = (tmeta.labels, tmeta.annotations);
        let mut spec = template.spec;
        let mut generate_name = format!("{}-", meta.name);
        if let Some((index, failures)) = index {
            let value = index.to_string();
            labels.insert(JOB_COMPLETION_INDEX_ANNOTATION.into(), value.clone());
            annotations.insert(JOB_COMPLETION_INDEX_ANNOTATION.into(), value.clone());
            if job
                .spec
                .as_ref()
                .is_some_and(|s| s.backoff_limit_per_index.is_some())
            {
                annotations.insert(
                    JOB_INDEX_FAILURE_COUNT_ANNOTATION.into(),
                    failures.to_string(),
                );
            }
            generate_name = format!("{}-{index}-", meta.name);
            if let Some(spec) = spec.as_mut() {
                // (The API refuses jobs whose NAME-INDEX is no DNS label.)
                spec.hostname = format!("{}-{index}", meta.name);
                for c in spec
                    .containers
                    .iter_mut()
                    .chain(spec.init_containers.iter_mut())
                {
                    if c.env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                        continue;
                    }
                    c.env.push(skiff::pb::core::v1::EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: value.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        Pod {
            metadata: Some(ObjectMeta {
                generate_name,
                namespace: meta.namespace,
                labels,
                annotations,
                owner_references: vec![job.controller_reference()],
                ..Default::default()
            }),
            spec,
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
            .filter(|p| p.controlled_by().is_some_and(|o| o.uid == uid))
            .collect();
        // Creates in flight: made, not yet in the cache.
        let creating = {
            let mut all = self
                .creating
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let made = all.entry(key.clone()).or_default();
            made.retain(|name, (at, _)| {
                at.elapsed() < EXPECTATION_TTL && !owned.iter().any(|p| p.name() == name)
            });
            made.values().map(|(_, index)| *index).collect::<Vec<_>>()
        };
        let plan = plan(&job, &owned, &creating, now_secs());
        let creates = std::iter::repeat_n(None, plan.create)
            .chain(plan.create_indexes.iter().map(|i| Some(*i)));
        for index in creates {
            match self.pods.create(Self::pod_for(&job, index)).await {
                Ok(pod) => {
                    self.event(
                        &job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name()),
                    );
                    if let Ok(mut all) = self.creating.lock() {
                        all.entry(key.clone()).or_default().insert(
                            pod.name().to_string(),
                            (Instant::now(), index.map(|(i, _)| i)),
                        );
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
        if plan.create > 0 || !plan.create_indexes.is_empty() || !creating.is_empty() {
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
mod tests;
