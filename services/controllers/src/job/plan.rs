//! The Job controller's decisions, pure: what a reconcile creates,
//! deletes and reports, from the Job and the pods it owns (NonIndexed and
//! Indexed jobs, failure and success policies, backoff).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use skiff::Resource;
use skiff::pb::batch::v1::{Job, JobCondition, JobStatus};
use skiff::pb::core::v1::Pod;

use crate::replicaset::{created_at, is_active};
use skiff::names::{JOB_COMPLETION_INDEX_ANNOTATION, JOB_INDEX_FAILURE_COUNT_ANNOTATION};

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

pub(super) fn phase(pod: &Pod) -> &str {
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

pub(super) fn timestamp(seconds: i64) -> skiff::wkt::Timestamp {
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
    // (Read whatever their range: completions may have been lowered.)
    let before = |set: Option<&str>| {
        let mut indexes = set
            .and_then(|s| skiff::indexes::parse(s, i32::MAX).ok())
            .unwrap_or_default();
        indexes.retain(in_range);
        indexes
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
            // A suspended job has not started.
            start_time: previous
                .start_time
                .or((spec.suspend != Some(true)).then(|| timestamp(now))),
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
        // (Its start time stays until it resumes: then it starts again,
        // and its deadline counts from then.)
        if !condition(job, "Suspended") {
            plan.status.conditions.retain(|c| c.r#type != "Suspended");
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
        by_age.sort_by_key(|p| (created_at::<Pod>(p), p.name().to_string()));
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
