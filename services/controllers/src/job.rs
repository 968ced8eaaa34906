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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::batch::v1::{Job, JobCondition, JobStatus};
use skiff::pb::core::v1::Pod;
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::replicaset::{controller_of, created_at, delete_exactly, is_active};
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};
pub use skiff::names::{JOB_COMPLETION_INDEX_ANNOTATION, JOB_INDEX_FAILURE_COUNT_ANNOTATION};

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
    /// Pods to create (a NonIndexed job).
    pub create: usize,
    /// Indexes to create a pod for (an Indexed job), each with the
    /// failures of that index so far.
    pub create_indexes: Vec<(i32, i32)>,
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

/// The completion index of a pod of an Indexed job.
pub fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .as_ref()?
        .annotations
        .get(JOB_COMPLETION_INDEX_ANNOTATION)?
        .parse()
        .ok()
        .filter(|i: &i32| *i >= 0)
}

/// The first rule of the job's pod failure policy a failed pod matches:
/// its action and Kubernetes' words for the match.
pub fn failure_rule(job: &Job, pod: &Pod) -> Option<(String, String)> {
    let policy = job.spec.as_ref()?.pod_failure_policy.as_ref()?;
    let status = pod.status.as_ref()?;
    let who = format!("{}/{}", pod.namespace(), pod.name());
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(codes) = &rule.on_exit_codes {
            let matched = status
                .init_container_statuses
                .iter()
                .chain(&status.container_statuses)
                .filter(|c| codes.container_name.as_ref().is_none_or(|n| *n == c.name))
                .find_map(|c| {
                    let code = c.state.as_ref()?.terminated.as_ref()?.exit_code;
                    let hit = match codes.operator.as_str() {
                        "In" => codes.values.contains(&code),
                        "NotIn" => code != 0 && !codes.values.contains(&code),
                        _ => false,
                    };
                    hit.then(|| (c.name.clone(), code))
                });
            if let Some((container, code)) = matched {
                return Some((
                    rule.action.clone(),
                    format!(
                        "Container {container} for pod {who} failed with exit code {code} matching {} rule at index {i}",
                        rule.action
                    ),
                ));
            }
        }
        for pattern in &rule.on_pod_conditions {
            let wanted = if pattern.status.is_empty() {
                "True"
            } else {
                pattern.status.as_str()
            };
            if status
                .conditions
                .iter()
                .any(|c| c.r#type == pattern.r#type && c.status == wanted)
            {
                return Some((
                    rule.action.clone(),
                    format!(
                        "Pod {who} has condition {} matching {} rule at index {i}",
                        pattern.r#type, rule.action
                    ),
                ));
            }
        }
    }
    None
}

fn failed_condition(reason: &'static str, message: impl Into<String>) -> Finish {
    Finish {
        kind: "Failed",
        reason,
        message: message.into(),
    }
}

/// A failed pod, and the failure policy rule it matches (its action and
/// what to say).
type FailedPod<'a> = (&'a Arc<Pod>, Option<(String, String)>);

/// Creates not yet seen of one job: pod name → when it was made and its
/// index (Indexed jobs).
type Creating = HashMap<String, (Instant, Option<i32>)>;

/// When a pod's containers ended (the latest), else when it was made.
fn finished_at(pod: &Pod) -> i64 {
    pod.status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .chain(&s.init_container_statuses)
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.seconds)
        .max()
        .unwrap_or_else(|| created_at::<Pod>(pod))
}

/// Plans a reconcile of `job` over the pods it owns, with creates in
/// flight (`creating`: the index of each, None for a NonIndexed job), at
/// `now` (seconds since the epoch).
pub fn plan(job: &Job, owned: &[Arc<Pod>], creating: &[Option<i32>], now: i64) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let previous = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode == "Indexed";
    let completions = spec.completions.unwrap_or(0);
    let on_failure = spec
        .template
        .as_ref()
        .and_then(|t| t.spec.as_ref())
        .is_some_and(|s| s.restart_policy == "OnFailure");
    // With podReplacementPolicy Failed, a pod being deleted holds its
    // place until it has stopped.
    let wait_for_terminating = spec.pod_replacement_policy.as_deref() == Some("Failed");
    let terminating = owned
        .iter()
        .filter(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some())
                && !matches!(phase(p), "Succeeded" | "Failed")
        })
        .count() as i32;
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| is_active(p)).collect();
    let holding = |p: &&Arc<Pod>| {
        is_active(p)
            || (wait_for_terminating
                && p.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_some())
                && !matches!(phase(p), "Succeeded" | "Failed"))
    };
    let held: Vec<&Arc<Pod>> = owned.iter().filter(holding).collect();
    // Failed pods, with the rule each matches.
    let failures: Vec<FailedPod<'_>> = owned
        .iter()
        .filter(|p| phase(p) == "Failed")
        .map(|p| (p, failure_rule(job, p)))
        .collect();
    let counted =
        |(_, rule): &&FailedPod<'_>| rule.as_ref().is_none_or(|(action, _)| action != "Ignore");
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
    let failed = failures.iter().filter(counted).count() as i32 + restarts;
    // Every failed pod, its failure counted or not.
    let failures_all: Vec<&Arc<Pod>> = failures.iter().map(|(p, _)| *p).collect();

    // Indexed: what each index has done.
    let in_range = |i: &i32| *i < completions;
    // What the status already says stays true when the pods that showed
    // it are gone (deleted by hand, or with their node).
    let before = |set: Option<&str>| {
        set.and_then(|s| skiff::indexes::parse(s, completions).ok())
            .unwrap_or_default()
    };
    let mut completed: BTreeSet<i32> = owned
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .filter_map(|p| index_of(p))
        .filter(in_range)
        .collect();
    completed.extend(before(Some(previous.completed_indexes.as_str())));
    let mut index_failures: BTreeMap<i32, i32> = BTreeMap::new();
    let mut failed_indexes: BTreeSet<i32> = before(previous.failed_indexes.as_deref());
    // An index's failures: those of its pods present, or as its newest
    // pod was told (the failure count it was made with, and its own).
    for pod in owned {
        let Some(i) = index_of(pod).filter(in_range) else {
            continue;
        };
        let told = pod
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(JOB_INDEX_FAILURE_COUNT_ANNOTATION))
            .and_then(|n| n.parse::<i32>().ok())
            .unwrap_or(0);
        let own = i32::from(
            phase(pod) == "Failed"
                && failures
                    .iter()
                    .filter(counted)
                    .any(|(p, _)| p.name() == pod.name()),
        );
        let known = index_failures.entry(i).or_default();
        *known = (*known).max(told + own);
    }
    for (pod, rule) in failures.iter().filter(counted) {
        let Some(i) = index_of(pod).filter(in_range) else {
            continue;
        };
        let present = failures
            .iter()
            .filter(counted)
            .filter(|(p, _)| index_of(p) == Some(i))
            .count() as i32;
        let known = index_failures.entry(i).or_default();
        *known = (*known).max(present);
        if rule
            .as_ref()
            .is_some_and(|(action, _)| action == "FailIndex")
        {
            failed_indexes.insert(i);
        }
    }
    if let Some(limit) = spec.backoff_limit_per_index {
        for (i, n) in &index_failures {
            if *n > limit {
                failed_indexes.insert(*i);
            }
        }
    }
    failed_indexes.retain(|i| !completed.contains(i));
    let succeeded = if indexed {
        completed.len() as i32
    } else {
        owned.iter().filter(|p| phase(p) == "Succeeded").count() as i32
    };
    let mut plan = Plan {
        status: JobStatus {
            conditions: previous.conditions.clone(),
            start_time: previous.start_time.or(Some(timestamp(now))),
            completion_time: previous.completion_time,
            active: active.len() as i32,
            succeeded,
            failed,
            ready: Some(active.iter().filter(|p| skiff::pods::is_ready(p)).count() as i32),
            completed_indexes: if indexed {
                skiff::indexes::format(&completed)
            } else {
                String::new()
            },
            failed_indexes: spec
                .backoff_limit_per_index
                .map(|_| skiff::indexes::format(&failed_indexes)),
            terminating: Some(terminating),
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
    // Decided already: the job ends once its pods have stopped (Kubernetes
    // 1.31+ writes Complete or Failed only then).
    let decided = previous.conditions.iter().find(|c| {
        matches!(c.r#type.as_str(), "SuccessCriteriaMet" | "FailureTarget") && c.status == "True"
    });
    if let Some(decided) = decided {
        stop_active(&mut plan);
        if active.is_empty() && terminating == 0 {
            let kind = if decided.r#type == "SuccessCriteriaMet" {
                plan.status.completion_time = Some(timestamp(now));
                "Complete"
            } else {
                "Failed"
            };
            plan.status.conditions.push(JobCondition {
                r#type: kind.into(),
                status: "True".into(),
                last_probe_time: Some(timestamp(now)),
                last_transition_time: Some(timestamp(now)),
                reason: decided.reason.clone(),
                message: decided.message.clone(),
            });
        }
        return plan;
    }
    if spec.suspend == Some(true) {
        stop_active(&mut plan);
        // A suspended job has not started (its deadline counts from when
        // it runs).
        if !condition(job, "Suspended") {
            plan.status.start_time = None;
            plan.status.conditions.retain(|c| c.r#type != "Suspended");
            plan.status.conditions.push(JobCondition {
                r#type: "Suspended".into(),
                status: "True".into(),
                last_transition_time: Some(timestamp(now)),
                reason: "JobSuspended".into(),
                message: "Job suspended".into(),
                ..Default::default()
            });
        } else {
            plan.status.start_time = previous.start_time;
        }
        return plan;
    }
    if condition(job, "Suspended") {
        // Resumed: it starts now, and says so.
        plan.status.start_time = Some(timestamp(now));
        for c in plan
            .status
            .conditions
            .iter_mut()
            .filter(|c| c.r#type == "Suspended")
        {
            c.status = "False".into();
            c.reason = "JobResumed".into();
            c.message = "Job resumed".into();
            c.last_transition_time = Some(timestamp(now));
        }
    }
    let started = plan.status.start_time.as_ref().map_or(now, |t| t.seconds);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let fail_job = failures
        .iter()
        .find_map(|(_, rule)| rule.as_ref().filter(|(action, _)| action == "FailJob"));
    // A success policy's first rule that holds.
    let success_rule = spec
        .success_policy
        .as_ref()
        .filter(|_| indexed)
        .filter(|_| !completed.is_empty())
        .and_then(|policy| {
            policy.rules.iter().position(|rule| {
                let named = match rule.succeeded_indexes.as_deref() {
                    Some(set) => match skiff::indexes::parse(set, completions) {
                        Ok(set) if !set.is_empty() => Some(set),
                        // Names nothing (or nothing readable): never holds.
                        _ => return false,
                    },
                    None => None,
                };
                let done = match &named {
                    Some(set) => set.iter().filter(|i| completed.contains(i)).count(),
                    None => completed.len(),
                } as i32;
                match (&named, rule.succeeded_count) {
                    (_, Some(count)) => done >= count.max(1),
                    (Some(set), None) => done == set.len() as i32,
                    (None, None) => false,
                }
            })
        });
    let max_failed = spec.max_failed_indexes;
    let finish = if let Some((_, message)) = fail_job {
        Some(failed_condition("PodFailurePolicy", message.clone()))
    } else if failed > backoff_limit {
        Some(failed_condition(
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if spec
        .active_deadline_seconds
        .is_some_and(|d| now >= started + d)
    {
        Some(failed_condition(
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else if max_failed.is_some_and(|m| failed_indexes.len() as i32 > m) {
        Some(failed_condition(
            "MaxFailedIndexesExceeded",
            "Job has exceeded the specified maximal number of failed indexes",
        ))
    } else if indexed
        && !failed_indexes.is_empty()
        && completed.len() + failed_indexes.len() >= completions.max(0) as usize
    {
        Some(failed_condition("FailedIndexes", "Job has failed indexes"))
    } else if let Some(rule) = success_rule {
        Some(Finish {
            kind: "Complete",
            reason: "SuccessPolicy",
            message: format!("Matched rules at index {rule}"),
        })
    } else if indexed {
        (completed.len() >= completions.max(0) as usize).then(|| Finish {
            kind: "Complete",
            reason: "Completed",
            message: "Job completed".into(),
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
        // Kubernetes 1.35 says first that the outcome is decided, and ends
        // the job once its pods have stopped.
        let decided = if finish.kind == "Complete" {
            "SuccessCriteriaMet"
        } else {
            "FailureTarget"
        };
        plan.status.conditions.push(JobCondition {
            r#type: decided.into(),
            status: "True".into(),
            last_probe_time: Some(timestamp(now)),
            last_transition_time: Some(timestamp(now)),
            reason: finish.reason.into(),
            message: finish.message.clone(),
        });
        if active.is_empty() && terminating == 0 {
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
        }
        plan.finish = Some(finish);
        return plan;
    }
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff = |failures: i32, last: i64| -> Option<i64> {
        // Failed pods are replaced after a backoff that doubles with each
        // failure.
        let exponent = (failures - 1).clamp(0, 16) as u32;
        let delay = (BACKOFF_BASE_SECS << exponent).min(BACKOFF_MAX_SECS);
        (now < last + delay).then_some(last + delay - now)
    };
    // When the latest failure of `index` (or of the job) happened: its
    // containers' end, else the pod's creation. Ignored failures count
    // here too: a pod that keeps failing is not replaced at once forever.
    let last_failure = |index: Option<i32>| {
        failures
            .iter()
            .filter(|(p, _)| index.is_none() || index_of(p) == index)
            .map(|(p, _)| finished_at(p))
            .max()
            .unwrap_or(0)
    };
    if indexed {
        // Pods that should not run: of no index or one out of range, of an
        // index that is done, or a second one of an index (the newer go).
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        let mut by_age: Vec<&&Arc<Pod>> = active.iter().collect();
        by_age.sort_by_key(|p| created_at::<Pod>(p));
        for pod in by_age {
            let extra = match index_of(pod).filter(in_range) {
                None => true,
                Some(i) if completed.contains(&i) || failed_indexes.contains(&i) => true,
                // The oldest of an index stays.
                Some(i) => !seen.insert(i),
            };
            if extra {
                plan.delete.push(pod.name().to_string());
            }
        }
        let busy: BTreeSet<i32> = held
            .iter()
            .filter_map(|p| index_of(p))
            .chain(creating.iter().flatten().copied())
            .collect();
        let mut slots = (parallelism as usize).saturating_sub(held.len() + creating.len());
        let mut soonest: Option<i64> = None;
        for i in 0..completions {
            if slots == 0 {
                break;
            }
            if completed.contains(&i) || failed_indexes.contains(&i) || busy.contains(&i) {
                continue;
            }
            let failures = index_failures.get(&i).copied().unwrap_or(0);
            let ignored = failures_all
                .iter()
                .filter(|p| index_of(p) == Some(i))
                .count() as i32;
            let tries = failures.max(ignored);
            if tries > 0
                && let Some(wait) = backoff(tries, last_failure(Some(i)))
            {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
                continue;
            }
            plan.create_indexes.push((i, failures));
            slots -= 1;
        }
        if let Some(wait) = soonest {
            plan.retry_after = Some(Duration::from_secs(wait.unsigned_abs()));
        }
    } else {
        let wanted = match spec.completions {
            Some(c) => parallelism.min((c - succeeded).max(0)),
            None if succeeded > 0 => 0,
            None => parallelism,
        };
        let missing = (wanted as usize).saturating_sub(held.len() + creating.len());
        let tries = failures_all.len() as i32 + restarts;
        if missing > 0
            && tries > 0
            && let Some(wait) = backoff(tries, last_failure(None))
        {
            plan.retry_after = Some(Duration::from_secs(wait.unsigned_abs()));
            return plan;
        }
        plan.create = missing;
    }
    if let Some(deadline) = spec.active_deadline_seconds {
        let left = (started + deadline - now).max(1).unsigned_abs();
        let left = Duration::from_secs(left);
        plan.retry_after = Some(plan.retry_after.map_or(left, |r| r.min(left)));
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
            .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == uid))
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
}
