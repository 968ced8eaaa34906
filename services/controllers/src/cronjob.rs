//! The CronJob controller: at each time the schedule names (in UTC or
//! the CronJob's `timeZone`), a Job of the template, named
//! `CRONJOB-<scheduled minute>` so that a run is made once however often
//! the controller looks; a run missed by more than
//! `startingDeadlineSeconds` is skipped; `concurrencyPolicy` Forbid skips
//! a run while one is active and Replace stops the active ones; `suspend`
//! makes none; finished Jobs beyond the history limits are deleted (with
//! their pods). After a long outage only the latest missed run is made, as
//! Kubernetes does.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::batch::v1::{CronJob, CronJobSpec, Job};
use skiff::pb::core::v1::ObjectReference;
use skiff::schedule::Schedule;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::job::condition;
use crate::replicaset::created_at;
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// Missed runs counted before giving up counting (Kubernetes: 100).
const MISSED_CAP: usize = 100;

/// How a Job ended: Some(true) complete, Some(false) failed, None not yet.
fn finished(job: &Job) -> Option<bool> {
    if condition(job, "Complete") {
        Some(true)
    } else if condition(job, "Failed") {
        Some(false)
    } else {
        None
    }
}

/// Records `schedule` as `uid`'s; whether it differs from the one before
/// (none before: no change).
fn schedule_changed_in(
    seen: &mut std::collections::HashMap<String, String>,
    uid: &str,
    schedule: &str,
) -> bool {
    seen.insert(uid.to_string(), schedule.to_string())
        .is_some_and(|before| before != schedule)
}

/// Where a Job records the time its run was scheduled for.
const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// When the run a Job was made for was scheduled: its annotation, else
/// the minute its name ends in.
fn scheduled_at(job: &Job) -> Option<i64> {
    let meta = job.metadata.as_ref()?;
    if let Some(at) = meta
        .annotations
        .get(SCHEDULED_ANNOTATION)
        .and_then(|at| skiff::time::parse_rfc3339(at))
    {
        return Some(at);
    }
    let minute: i64 = meta.name.rsplit('-').next()?.parse().ok()?;
    Some(minute * 60)
}

/// The Job a CronJob makes for the run scheduled at `at`.
pub fn job_for(cron: &CronJob, at: i64) -> Job {
    skiff::schedule::job_for(
        cron,
        format!("{}-{}", cron.name(), at / 60),
        (SCHEDULED_ANNOTATION, skiff::time::rfc3339(at)),
    )
}

/// The finished Jobs beyond the CronJob's history limits, oldest last
/// kept: of `owned` (newest first), the complete ones past
/// `successfulJobsHistoryLimit` (default 3) and the failed ones past
/// `failedJobsHistoryLimit` (default 1). Running Jobs are never history.
fn beyond_history<'a>(spec: &CronJobSpec, owned: &'a [Arc<Job>]) -> Vec<&'a Arc<Job>> {
    let keep_ok = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
    let keep_failed = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
    let (mut ok, mut failed) = (0, 0);
    owned
        .iter()
        .filter(|job| match finished(job) {
            Some(true) => {
                ok += 1;
                ok > keep_ok
            }
            Some(false) => {
                failed += 1;
                failed > keep_failed
            }
            None => false,
        })
        .collect()
}

/// The time runs are counted from: the last recorded run, or the newest
/// made one if later, or `now` when the schedule changed; never further
/// back than `startingDeadlineSeconds` (runs older than that could not
/// start anyway, and are not counted as missed).
fn count_from(
    recorded: i64,
    made: Option<i64>,
    schedule_changed: bool,
    starting_deadline: Option<i64>,
    now: i64,
) -> i64 {
    let mut since = recorded.max(made.unwrap_or(i64::MIN));
    if schedule_changed {
        since = since.max(now);
    }
    if let Some(deadline) = starting_deadline {
        since = since.max(now - deadline - 1);
    }
    since
}

/// What a look at a CronJob does about its runs.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// No run is due (or the CronJob is suspended).
    Nothing,
    /// The run scheduled at this time is past `startingDeadlineSeconds`:
    /// skipped, and recorded as the last scheduled.
    Missed(i64),
    /// The run scheduled at this time waits: one is active and
    /// `concurrencyPolicy` is Forbid.
    Held(i64),
    /// Start the run scheduled at `at`; with `replace` (Replace), the
    /// active Jobs are deleted first. Allow starts it beside them.
    Start { at: i64, replace: bool },
}

/// The latest run due between `since` and `now`, and what to do about it
/// with `active` Jobs running; and whether too many runs were missed to
/// count (Kubernetes' TooManyMissedTimes).
fn plan(
    spec: &CronJobSpec,
    schedule: &Schedule,
    since: i64,
    now: i64,
    active: usize,
) -> (Run, bool) {
    if spec.suspend == Some(true) {
        return (Run::Nothing, false);
    }
    let (latest, missed) = schedule.latest_between(since, now, MISSED_CAP);
    let too_many = missed >= MISSED_CAP;
    let Some(at) = latest else {
        return (Run::Nothing, too_many);
    };
    let run = if spec.starting_deadline_seconds.is_some_and(|d| now - at > d) {
        Run::Missed(at)
    } else if active > 0 && spec.concurrency_policy == "Forbid" {
        Run::Held(at)
    } else {
        Run::Start {
            at,
            replace: active > 0 && spec.concurrency_policy == "Replace",
        }
    };
    (run, too_many)
}

/// See the module doc.
pub struct CronJobController {
    /// The schedule each CronJob (by key) had at its last look: a changed
    /// one counts runs from now, as Kubernetes does (no run of the new
    /// schedule "missed" in the past).
    schedules: std::sync::Mutex<std::collections::HashMap<String, String>>,
    recorder: Arc<Recorder>,
    cronjobs: Api<CronJob>,
    cron_store: Store<CronJob>,
    jobs: Api<Job>,
    job_store: Store<Job>,
}

impl CronJobController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        cronjobs: (Api<CronJob>, Store<CronJob>),
        jobs: (Api<Job>, Store<Job>),
    ) -> Self {
        Self {
            schedules: Default::default(),
            recorder,
            cronjobs: cronjobs.0,
            cron_store: cronjobs.1,
            jobs: jobs.0,
            job_store: jobs.1,
        }
    }

    /// The CronJob a Job belongs to, if any.
    pub fn owner_of(job: &Job) -> Option<ObjectRef> {
        job.metadata
            .as_ref()?
            .owner_references
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == CronJob::KIND)
            .map(|o| ObjectRef::new(job.namespace(), o.name.clone()))
    }

    /// Whether `key`'s schedule differs from the one seen last (a first
    /// look is no change: a restarted controller resumes as it was).
    fn schedule_changed(&self, key: &str, schedule: &str) -> bool {
        self.schedules
            .lock()
            .is_ok_and(|mut seen| schedule_changed_in(&mut seen, key, schedule))
    }

    fn event(&self, cron: &CronJob, kind: EventType, reason: &'static str, message: String) {
        let (recorder, cron) = (Arc::clone(&self.recorder), cron.clone());
        tokio::spawn(async move {
            recorder.record(&cron, kind, reason, &message).await;
        });
    }

    async fn delete_job(&self, job: &Job) -> Result<(), Error> {
        let request = DeleteRequest {
            propagation_policy: "Background".into(),
            ..crate::replicaset::delete_exactly(job)
        };
        match self.jobs.delete(request).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(cron) = self.cron_store.get(&key.namespace, &key.name) else {
            if let Ok(mut seen) = self.schedules.lock() {
                seen.remove(&key.to_string());
            }
            return Ok(Action::AwaitChange);
        };
        if cron
            .metadata()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let spec = cron.spec.clone().unwrap_or_default();
        let uid = cron.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        let mut owned: Vec<Arc<Job>> = self
            .job_store
            .list()
            .into_iter()
            .filter(|j| j.namespace() == key.namespace)
            .filter(|j| {
                j.metadata
                    .as_ref()
                    .and_then(|m| {
                        m.owner_references
                            .iter()
                            .find(|o| o.controller == Some(true))
                    })
                    .is_some_and(|o| o.uid == uid)
            })
            .collect();
        owned.sort_by_key(|j| std::cmp::Reverse(created_at(j.as_ref())));
        // History: the newest finished Jobs within the limits stay. A
        // failed deletion is retried at the next look, not a skipped run.
        for job in beyond_history(&spec, &owned) {
            match self.delete_job(job).await {
                Ok(()) => self.event(
                    &cron,
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted job {}", job.name()),
                ),
                Err(e) => {
                    tracing::warn!(cronjob = %key, job = job.name(), error = %e, "deleting an old job")
                }
            }
        }
        // Jobs being deleted are on their way out: neither active for
        // Forbid nor stopped again by Replace.
        let mut active: Vec<Arc<Job>> = owned
            .iter()
            .filter(|j| finished(j).is_none())
            .filter(|j| {
                j.metadata
                    .as_ref()
                    .is_none_or(|m| m.deletion_timestamp.is_none())
            })
            .cloned()
            .collect();
        let schedule = skiff::schedule::parse_in(&spec.schedule, spec.time_zone.as_deref())
            .map_err(|e| Error::Other(e.into()))?;
        let now = skiff::time::now_seconds().seconds;
        let mut status = cron.status.clone().unwrap_or_default();
        // Where to count runs from: the last recorded run, or a newer one
        // whose Job exists (its status write may not have landed, or this
        // cache not have seen it yet), or now when the schedule changed.
        let recorded = status
            .last_schedule_time
            .as_ref()
            .map_or_else(|| created_at(cron.as_ref()), |t| t.seconds);
        let since = count_from(
            recorded,
            owned.iter().filter_map(|j| scheduled_at(j)).max(),
            self.schedule_changed(&key.to_string(), &spec.schedule),
            spec.starting_deadline_seconds,
            now,
        );
        let (run, too_many) = plan(&spec, &schedule, since, now, active.len());
        if too_many {
            self.event(
                &cron,
                EventType::Warning,
                "TooManyMissedTimes",
                "too many missed start times: set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            );
        }
        match run {
            Run::Nothing => {}
            Run::Missed(at) => {
                self.event(
                    &cron,
                    EventType::Warning,
                    "MissSchedule",
                    format!(
                        "Missed scheduled time to start a job: {}",
                        skiff::time::rfc3339(at)
                    ),
                );
                status.last_schedule_time = Some(skiff::wkt::Timestamp {
                    seconds: at,
                    nanos: 0,
                });
            }
            Run::Held(_) => {
                // As Kubernetes: not recorded as scheduled, so the run
                // starts once the active one ends (within the starting
                // deadline); its end wakes this CronJob.
                self.event(
                    &cron,
                    EventType::Normal,
                    "JobAlreadyActive",
                    "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                );
            }
            Run::Start { at, replace } => {
                if replace {
                    for job in active.drain(..) {
                        self.delete_job(&job).await?;
                        self.event(
                            &cron,
                            EventType::Normal,
                            "SuccessfulDelete",
                            format!("Deleted job {}", job.name()),
                        );
                    }
                }
                match self.jobs.create(job_for(&cron, at)).await {
                    Ok(job) => {
                        self.event(
                            &cron,
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created job {}", job.name()),
                        );
                        active.push(Arc::new(job));
                    }
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {
                        // Ours (made by a look whose status write has
                        // not landed) or someone else's: either way not
                        // made twice.
                        tracing::info!(cronjob = %key, at, "the run's Job exists already");
                    }
                    Err(s) => {
                        self.event(
                            &cron,
                            EventType::Warning,
                            "FailedCreate",
                            format!("Error creating job: {}", s.message()),
                        );
                        return Err(s.into());
                    }
                }
                status.last_schedule_time = Some(skiff::wkt::Timestamp {
                    seconds: at,
                    nanos: 0,
                });
            }
        }
        status.active = active
            .iter()
            .map(|j| ObjectReference {
                kind: Job::KIND.into(),
                api_version: Job::API_VERSION.into(),
                namespace: j.namespace().to_string(),
                name: j.name().to_string(),
                uid: j
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        status.active.sort_by(|a, b| a.name.cmp(&b.name));
        let succeeded = owned
            .iter()
            .filter(|j| finished(j) == Some(true))
            .filter_map(|j| j.status.as_ref().and_then(|s| s.completion_time))
            .max_by_key(|t| t.seconds);
        if let Some(t) = succeeded
            && status
                .last_successful_time
                .is_none_or(|last| last.seconds < t.seconds)
        {
            status.last_successful_time = Some(t);
        }
        if cron.status.as_ref() != Some(&status) {
            let mut updated = (*cron).clone();
            updated.status = Some(status);
            match self.cronjobs.update_status(updated).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                    return Ok(Action::Requeue(Duration::from_secs(1)));
                }
                Err(s) => return Err(s.into()),
            }
        }
        // Wake for the next run (a second past it: the clock's time must
        // have reached it).
        let next = schedule.next_after(now).unwrap_or(now + 60);
        Ok(Action::Requeue(Duration::from_secs(
            (next - now + 1).max(1).unsigned_abs(),
        )))
    }
}

impl Reconciler for CronJobController {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.cron_store, key)
    }
}

// === wiring ===

/// Starts the CronJob controller: woken by CronJobs and their Jobs; each
/// CronJob requeues itself for its next run.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(CronJobController::new(
        Arc::clone(&shared.recorder),
        (
            Api::new(shared.channel.clone()),
            shared.cronjobs.store.clone(),
        ),
        (Api::new(shared.channel.clone()), shared.jobs.store.clone()),
    ));
    let store = shared.cronjobs.store.clone();
    Controller::new(controller)
        .for_kind(&shared.cronjobs)
        .watches(&shared.jobs, |change| {
            CronJobController::owner_of(changed(change))
                .into_iter()
                .collect()
        })
        .run(move || keys_of(&store), workers)
        .boxed()
}

#[cfg(test)]
mod tests;
