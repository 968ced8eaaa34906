//! The disruption controller: each PodDisruptionBudget's status, as
//! Kubernetes' disruption controller computes it — the pods it covers,
//! how many are expected (the pods, or their controllers' replicas when
//! the budget is a percentage or a maxUnavailable), how many must stay
//! healthy, how many are, and so how many may be evicted now
//! (`disruptionsAllowed`, which the API server's eviction spends).
//!
//! Evictions the API server allowed are listed in `disruptedPods` until
//! the pod is seen going, or for two minutes at most: meanwhile they do
//! not count as healthy, so two drains cannot spend one disruption twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use skiff::disruption::{self, DISRUPTION_TIMEOUT_SECONDS};
use skiff::pb::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use skiff::pb::core::v1::{Pod, ReplicationController};
use skiff::pb::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use skiff::wkt::Timestamp;
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::deployment::rolling::int_or_percent;
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// See the module doc. Keys are budgets.
pub struct DisruptionController {
    api: Api<PodDisruptionBudget>,
    budgets: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    replicationcontrollers: Store<ReplicationController>,
    statefulsets: Store<StatefulSet>,
    recorder: Arc<Recorder>,
}

/// The controllers whose replicas a budget may count from.
pub struct Scales<'a> {
    /// ReplicaSets (and through them, Deployments).
    pub replicasets: &'a Store<ReplicaSet>,
    /// Deployments.
    pub deployments: &'a Store<Deployment>,
    /// ReplicationControllers.
    pub replicationcontrollers: &'a Store<ReplicationController>,
    /// StatefulSets.
    pub statefulsets: &'a Store<StatefulSet>,
}

impl Scales<'_> {
    /// The uid and replicas of the controller that scales `pod`
    /// (Kubernetes' finders: ReplicationController, ReplicaSet or the
    /// Deployment above it, StatefulSet), or why there is none.
    fn of(&self, pod: &Pod) -> Result<(String, i32), String> {
        let namespace = pod.namespace();
        let no_controller = || format!("found no controllers for pod {:?}", pod.name());
        let owner = pod.controlled_by().ok_or_else(no_controller)?;
        let same = |uid: &str| uid == owner.uid;
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = self
                    .replicasets
                    .get(namespace, &owner.name)
                    .filter(|rs| same(rs.uid()))
                    .ok_or_else(no_controller)?;
                if let Some(deploy) = rs.controlled_by().filter(|o| o.kind == "Deployment") {
                    let d = self
                        .deployments
                        .get(namespace, &deploy.name)
                        .filter(|d| d.uid() == deploy.uid)
                        .ok_or_else(no_controller)?;
                    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    return Ok((deploy.uid.clone(), replicas));
                }
                let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                Ok((owner.uid.clone(), replicas))
            }
            "ReplicationController" => {
                let rc = self
                    .replicationcontrollers
                    .get(namespace, &owner.name)
                    .filter(|rc| same(rc.uid()))
                    .ok_or_else(no_controller)?;
                let replicas = rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                Ok((owner.uid.clone(), replicas))
            }
            "StatefulSet" => {
                let sts = self
                    .statefulsets
                    .get(namespace, &owner.name)
                    .filter(|s| same(s.uid()))
                    .ok_or_else(no_controller)?;
                let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                Ok((owner.uid.clone(), replicas))
            }
            _ => Err(no_controller()),
        }
    }
}

/// Seconds of `ts`.
fn seconds(ts: Option<&Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds)
}

/// The status `budget` should have over `pods` (those it covers) at
/// `now`, and when to look again (an eviction that will time out); or why
/// it cannot be computed.
///
/// # Errors
/// A percentage or maxUnavailable budget over a pod no known controller
/// scales (Kubernetes refuses evictions then: 0 allowed, SyncFailed).
pub fn compute(
    budget: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scales: &Scales<'_>,
    now: Timestamp,
) -> Result<(PodDisruptionBudgetStatus, Option<Duration>), String> {
    let spec = budget.spec.clone().unwrap_or_default();
    let is_percent = |v: &Option<skiff::wkt::Value>| {
        matches!(
            v.as_ref().and_then(|v| v.kind.as_ref()),
            Some(skiff::wkt::value::Kind::StringValue(_))
        )
    };
    let controllers_scale = || -> Result<i32, String> {
        let mut seen: HashMap<String, i32> = HashMap::new();
        for pod in pods {
            let (uid, replicas) = scales.of(pod)?;
            seen.insert(uid, replicas);
        }
        Ok(seen.values().sum())
    };
    let (expected, desired) = if spec.max_unavailable.is_some() {
        let expected = controllers_scale()?;
        let unavailable = int_or_percent(spec.max_unavailable.as_ref(), expected, true)?;
        (expected, (expected - unavailable).max(0))
    } else if is_percent(&spec.min_available) {
        let expected = controllers_scale()?;
        (
            expected,
            int_or_percent(spec.min_available.as_ref(), expected, true)?,
        )
    } else if spec.min_available.is_some() {
        let count = i32::try_from(pods.len()).unwrap_or(i32::MAX);
        (
            count,
            int_or_percent(spec.min_available.as_ref(), count, true)?,
        )
    } else {
        // Neither bound: nothing expected, so nothing may be evicted
        // (Kubernetes' reading of such a budget).
        (0, 0)
    };
    // Evictions not yet seen carried out: kept while their pod is there,
    // not going, and the eviction younger than the timeout.
    let old = budget
        .status
        .as_ref()
        .map(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let by_name: HashMap<&str, &Pod> = pods.iter().map(|p| (p.name(), p.as_ref())).collect();
    let mut disrupted = BTreeMap::new();
    let mut recheck: Option<i64> = None;
    for (name, at) in old {
        let Some(pod) = by_name.get(name.as_str()) else {
            continue;
        };
        if pod
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            continue;
        }
        let expires = seconds(Some(&at)) + DISRUPTION_TIMEOUT_SECONDS;
        if expires <= now.seconds {
            continue;
        }
        recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
        disrupted.insert(name, at);
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            !disrupted.contains_key(p.name())
                && p.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none())
                && skiff::pods::is_ready(p)
        })
        .count();
    let healthy = i32::try_from(healthy).unwrap_or(i32::MAX);
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    let mut status = PodDisruptionBudgetStatus {
        observed_generation: budget.generation(),
        disrupted_pods: disrupted,
        disruptions_allowed: allowed,
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        conditions: budget
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
    };
    disruption::set_allowed_condition(&mut status, None, now);
    let recheck = recheck.map(|at| Duration::from_secs((at - now.seconds).max(1).unsigned_abs()));
    Ok((status, recheck))
}

impl DisruptionController {
    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(budget) = self.budgets.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        if budget
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list()
            .into_iter()
            .filter(|p| disruption::covers(&budget, p))
            .collect();
        let scales = Scales {
            replicasets: &self.replicasets,
            deployments: &self.deployments,
            replicationcontrollers: &self.replicationcontrollers,
            statefulsets: &self.statefulsets,
        };
        let now = skiff::time::now_seconds();
        if pods.is_empty() {
            self.recorder
                .record(
                    budget.as_ref(),
                    EventType::Normal,
                    "NoPods",
                    "No matching pods found",
                )
                .await;
        }
        let (status, recheck) = match compute(&budget, &pods, &scales, now) {
            Ok(found) => found,
            Err(why) => {
                self.recorder
                    .record(
                        budget.as_ref(),
                        EventType::Warning,
                        "CalculateExpectedPodCountFailed",
                        &format!("Failed to calculate the number of expected pods: {why}"),
                    )
                    .await;
                // Kubernetes' fail-safe: no eviction until it can count;
                // the generation stays unobserved, so evictions say the
                // budget is still being processed.
                let mut status = budget.status.clone().unwrap_or_default();
                status.disruptions_allowed = 0;
                disruption::set_allowed_condition(&mut status, Some(&why), now);
                (status, None)
            }
        };
        if budget.status.as_ref() != Some(&status) {
            let mut updated = (*budget).clone();
            updated.status = Some(status);
            match self.api.update_status(updated).await {
                Ok(_) => {}
                // An eviction spent one meanwhile: its change wakes this
                // budget again once the cache has it.
                Err(s) if s.code() == tonic::Code::Aborted => return Ok(Action::AwaitChange),
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(Action::AwaitChange),
                Err(s) => return Err(s.into()),
            }
        }
        Ok(recheck.map_or(Action::AwaitChange, Action::Requeue))
    }

    /// Every budget in `namespace`: a pod there changed (its labels may
    /// have taken it out of a budget, and a change carries only the new
    /// pod), or a controller's scale did.
    fn budgets_in(&self, namespace: &str) -> Vec<ObjectRef> {
        self.budgets
            .list()
            .into_iter()
            .filter(|b| b.namespace() == namespace)
            .map(|b| ObjectRef::new(b.namespace(), b.name()))
            .collect()
    }
}

impl Reconciler for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the disruption controller: keys are budgets, woken by budgets,
/// by the pods of their namespace and by the controllers whose replicas
/// they count.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = Arc::new(DisruptionController {
        api: Api::new(shared.channel.clone()),
        budgets: shared.poddisruptionbudgets.store.clone(),
        pods: shared.pods.store.clone(),
        replicasets: shared.replicasets.store.clone(),
        deployments: shared.deployments.store.clone(),
        replicationcontrollers: shared.replicationcontrollers.store.clone(),
        statefulsets: shared.statefulsets.store.clone(),
        recorder: Arc::clone(&shared.recorder),
    });
    let (by_pod, by_rs, by_deploy, by_rc, by_sts) = (
        Arc::clone(&controller),
        Arc::clone(&controller),
        Arc::clone(&controller),
        Arc::clone(&controller),
        Arc::clone(&controller),
    );
    let budgets = shared.poddisruptionbudgets.store.clone();
    Controller::new(controller)
        .for_kind(&shared.poddisruptionbudgets)
        .watches(&shared.pods, move |change| {
            by_pod.budgets_in(changed(change).namespace())
        })
        .watches(&shared.replicasets, move |change| {
            by_rs.budgets_in(changed(change).namespace())
        })
        .watches(&shared.deployments, move |change| {
            by_deploy.budgets_in(changed(change).namespace())
        })
        .watches(&shared.replicationcontrollers, move |change| {
            by_rc.budgets_in(changed(change).namespace())
        })
        .watches(&shared.statefulsets, move |change| {
            by_sts.budgets_in(changed(change).namespace())
        })
        .run(move || keys_of(&budgets), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::apps::v1::{DeploymentSpec, ReplicaSetSpec};
    use skiff::pb::core::v1::{PodCondition, PodStatus};
    use skiff::pb::meta::v1::{ObjectMeta, OwnerReference};
    use skiff::pb::policy::v1::PodDisruptionBudgetSpec;
    use skiff::wkt::Value;
    use skiff::wkt::value::Kind;

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn pod(name: &str, ready: bool, owner_ref: Option<OwnerReference>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                owner_references: owner_ref.into_iter().collect(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: "Running".into(),
                conditions: vec![PodCondition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn budget(min: Option<Value>, max: Option<Value>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                generation: 2,
                ..Default::default()
            }),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                selector: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn number(n: f64) -> Option<Value> {
        Some(Value {
            kind: Some(Kind::NumberValue(n)),
        })
    }

    fn text(s: &str) -> Option<Value> {
        Some(Value {
            kind: Some(Kind::StringValue(s.into())),
        })
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    /// Caches holding a Deployment `web` of `replicas` over ReplicaSet
    /// `web-1`.
    struct Stores {
        rs: Store<ReplicaSet>,
        d: Store<Deployment>,
        rc: Store<ReplicationController>,
        sts: Store<StatefulSet>,
    }

    impl Stores {
        fn new(replicas: i32) -> Self {
            let (rs_writer, rs) = skiff_client::store::store::<ReplicaSet>();
            rs_writer.insert(Arc::new(ReplicaSet {
                metadata: Some(ObjectMeta {
                    name: "web-1".into(),
                    namespace: "default".into(),
                    uid: "uid-web-1".into(),
                    owner_references: vec![owner("Deployment", "web")],
                    ..Default::default()
                }),
                spec: Some(ReplicaSetSpec {
                    replicas: Some(2),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            let (d_writer, d) = skiff_client::store::store::<Deployment>();
            d_writer.insert(Arc::new(Deployment {
                metadata: Some(ObjectMeta {
                    name: "web".into(),
                    namespace: "default".into(),
                    uid: "uid-web".into(),
                    ..Default::default()
                }),
                spec: Some(DeploymentSpec {
                    replicas: Some(replicas),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            // The writers may go: the stores keep what was inserted.
            Self {
                rs,
                d,
                rc: skiff_client::store::store::<ReplicationController>().1,
                sts: skiff_client::store::store::<StatefulSet>().1,
            }
        }

        fn scales(&self) -> Scales<'_> {
            Scales {
                replicasets: &self.rs,
                deployments: &self.d,
                replicationcontrollers: &self.rc,
                statefulsets: &self.sts,
            }
        }
    }

    #[test]
    fn a_count_budget_counts_the_pods_and_their_readiness() {
        let stores = Stores::new(4);
        let scales = stores.scales();
        let pods = vec![
            pod("a", true, None),
            pod("b", true, None),
            pod("c", true, None),
            pod("d", false, None),
        ];
        let (status, recheck) =
            compute(&budget(number(2.0), None), &pods, &scales, at(100)).unwrap();
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.current_healthy,
                status.disruptions_allowed,
                status.observed_generation
            ),
            (4, 2, 3, 1, 2)
        );
        assert_eq!(status.conditions[0].reason, "SufficientPods");
        assert_eq!(recheck, None);
        // Unmanaged pods are fine for a count: nothing scales them.
        let (status, _) = compute(&budget(number(3.0), None), &pods, &scales, at(100)).unwrap();
        assert_eq!(status.disruptions_allowed, 0);
        assert_eq!(status.conditions[0].reason, "InsufficientPods");
        // Neither bound: nothing expected, nothing may go.
        let (status, _) = compute(&budget(None, None), &pods, &scales, at(100)).unwrap();
        assert_eq!((status.expected_pods, status.disruptions_allowed), (0, 0));
    }

    #[test]
    fn percentages_and_max_unavailable_count_the_controllers_replicas() {
        let stores = Stores::new(10);
        let scales = stores.scales();
        let mine = || Some(owner("ReplicaSet", "web-1"));
        // 4 of the Deployment's 10 exist and are ready.
        let pods: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| pod(n, true, mine()))
            .collect();
        let (status, _) = compute(&budget(None, number(7.0)), &pods, &scales, at(0)).unwrap();
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (10, 3, 1)
        );
        // 25% of 10 rounds up to 3 unavailable: 7 must stay.
        let (status, _) = compute(&budget(None, text("25%")), &pods, &scales, at(0)).unwrap();
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (7, 0));
        // minAvailable 30% of 10 rounds up to 3.
        let (status, _) = compute(&budget(text("30%"), None), &pods, &scales, at(0)).unwrap();
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (3, 1));
        // A pod nothing scales makes a percentage uncountable.
        let mut stray = pods.clone();
        stray.push(pod("e", true, None));
        let err = compute(&budget(text("30%"), None), &stray, &scales, at(0)).unwrap_err();
        assert_eq!(err, "found no controllers for pod \"e\"");
    }

    #[test]
    fn evictions_count_until_their_pod_goes_or_two_minutes_pass() {
        let stores = Stores::new(3);
        let scales = stores.scales();
        let pods = vec![
            pod("a", true, None),
            pod("b", true, None),
            pod("c", true, None),
        ];
        let mut b = budget(number(1.0), None);
        b.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: [
                ("a".to_string(), at(1000)),
                ("b".to_string(), at(950)),
                ("gone".to_string(), at(1000)),
            ]
            .into(),
            ..Default::default()
        });
        let (status, recheck) = compute(&b, &pods, &scales, at(1060)).unwrap();
        // "b" expires at 950 + 120 = 1070, after now: kept; "gone" has
        // no pod any more: dropped.
        assert_eq!(status.disrupted_pods.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (1, 0));
        assert_eq!(recheck, Some(Duration::from_secs(10)));
        let (status, recheck) = compute(&b, &pods, &scales, at(1075)).unwrap();
        assert_eq!(status.disrupted_pods.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!((status.current_healthy, status.disruptions_allowed), (2, 1));
        assert_eq!(recheck, Some(Duration::from_secs(45)));
    }
}
