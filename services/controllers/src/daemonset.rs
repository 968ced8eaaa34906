//! The DaemonSet controller: one pod of the template on every node the
//! template may run on (its node selector and required node affinity match
//! the node, and it tolerates the node's NoSchedule/NoExecute taints).
//!
//! Each reconcile plans from the caches ([`plan`], a pure function): a pod
//! to create on every such node without one, the extra pods of a node
//! that runs several, the pods of nodes that should run none, failed pods
//! (replaced on the next pass), and, for a RollingUpdate, the pods of an
//! old template as far as `maxUnavailable` allows (unavailable ones
//! first). Pods are bound to their node directly (`spec.nodeName`), and
//! get Kubernetes' daemon tolerations (not-ready, unreachable,
//! unschedulable, pressure), so a daemon keeps running on a sick or
//! cordoned node. Templates are told apart by the
//! `controller-revision-hash` label. Creates and deletes the cache has not
//! shown yet are remembered (expectations), as in the ReplicaSet
//! controller.
//!
//! Its history is kept as Kubernetes keeps it ([`crate::history`]): one
//! ControllerRevision per template it ran, so `kubectl rollout
//! history|undo daemonset` work.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff::pb::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use skiff::pb::core::v1::{Node, Pod, Toleration};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::deployment::{rolling, template_hash};
use crate::history::{History, revision_of};
use crate::replicaset::{created_at, delete_exactly, is_active, is_available};
use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

pub use crate::history::REVISION_LABEL;
/// Creates/deletes not observed within this long are forgotten.
const EXPECTATION_TTL: Duration = Duration::from_secs(60);

/// The tolerations every daemon pod gets (Kubernetes' daemon defaults):
/// it stays on a node that is not ready, unreachable or cordoned.
fn daemon_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: key.into(),
        operator: "Exists".into(),
        effect: effect.into(),
        ..Default::default()
    };
    vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The pod the daemon set runs on `node` (before its name is generated).
pub fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let meta = ds.metadata.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels;
    labels.insert(REVISION_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = node.to_string();
    for t in daemon_tolerations() {
        if !spec.tolerations.contains(&t) {
            spec.tolerations.push(t);
        }
    }
    Pod {
        metadata: Some(ObjectMeta {
            generate_name: format!("{}-", meta.name),
            namespace: meta.namespace.clone(),
            labels,
            annotations: tmeta.annotations,
            owner_references: vec![ds.controller_reference()],
            ..Default::default()
        }),
        spec: Some(spec),
        ..Default::default()
    }
}

/// What one reconcile does and reports.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes to create a pod on.
    pub create_on: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to report.
    pub status: DaemonSetStatus,
}

/// Plans a reconcile of `ds` over `nodes` and the pods it owns (`owned`,
/// including terminating and finished ones), for the template `hash`.
/// Nodes with a create already in flight are in `creating`.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    owned: &[Arc<Pod>],
    hash: &str,
    creating: &[String],
) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let probe = daemon_pod(ds, "", hash);
    let min_ready = spec.min_ready_seconds;
    let mut by_node: BTreeMap<&str, Vec<&Arc<Pod>>> = BTreeMap::new();
    for pod in owned {
        let node = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
        by_node.entry(node).or_default().push(pod);
    }
    let mut plan = Plan::default();
    let mut status = DaemonSetStatus {
        observed_generation: ds.generation(),
        ..Default::default()
    };
    // (node, its one active pod) for the rolling update below.
    let mut running: Vec<&Arc<Pod>> = Vec::new();
    let mut names: Vec<&str> = nodes.iter().map(|n| n.name()).collect();
    names.sort_unstable();
    for node in nodes {
        let name = node.name();
        let should_run = skiff::nodes::affinity_allows(&probe, node)
            && skiff::nodes::untolerated_taint(&probe, node).is_none();
        let pods = by_node.remove(name).unwrap_or_default();
        let mut active: Vec<&Arc<Pod>> = pods.iter().copied().filter(|p| is_active(p)).collect();
        // Failed daemon pods are deleted; the node gets a new one.
        for pod in &pods {
            let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
            let deleting = pod
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some());
            if phase == "Failed" && !deleting {
                plan.delete.push(pod.name().to_string());
            }
        }
        if !should_run {
            if !active.is_empty() {
                status.number_misscheduled += 1;
            }
            plan.delete
                .extend(active.iter().map(|p| p.name().to_string()));
            continue;
        }
        status.desired_number_scheduled += 1;
        if active.is_empty() {
            if !creating.iter().any(|n| n == name) {
                plan.create_on.push(name.to_string());
            }
            continue;
        }
        status.current_number_scheduled += 1;
        // One pod per node: the oldest stays (an updated one first).
        active.sort_by_key(|p| (revision_of(p) != hash, created_at::<Pod>(p)));
        plan.delete
            .extend(active[1..].iter().map(|p| p.name().to_string()));
        let pod = active[0];
        if revision_of(pod) == hash {
            status.updated_number_scheduled += 1;
        }
        if skiff::pods::is_ready(pod) {
            status.number_ready += 1;
        }
        if is_available(pod, min_ready) {
            status.number_available += 1;
        }
        running.push(pod);
    }
    // Pods on nodes that are gone.
    for pods in by_node.values() {
        plan.delete.extend(
            pods.iter()
                .filter(|p| is_active(p))
                .map(|p| p.name().to_string()),
        );
    }
    status.number_unavailable = status.desired_number_scheduled - status.number_available;

    let rolling = spec
        .update_strategy
        .as_ref()
        .filter(|s| s.r#type != "OnDelete")
        .map(|s| s.rolling_update.clone().unwrap_or_default());
    if let Some(ru) = rolling {
        let max_unavailable = rolling::int_or_percent(
            ru.max_unavailable.as_ref(),
            status.desired_number_scheduled,
            false,
        )
        .unwrap_or(1)
        .max(1);
        let mut budget = max_unavailable - status.number_unavailable;
        let mut old: Vec<&&Arc<Pod>> = running.iter().filter(|p| revision_of(p) != hash).collect();
        // Unavailable old pods cost no availability: they go first.
        old.sort_by_key(|p| (is_available(p, min_ready), created_at::<Pod>(p)));
        for pod in old {
            if !is_available(pod, min_ready) {
                plan.delete.push(pod.name().to_string());
            } else if budget > 0 {
                plan.delete.push(pod.name().to_string());
                budget -= 1;
            }
        }
    }
    plan.delete.sort();
    plan.delete.dedup();
    plan.status = status;
    plan
}

/// Pending creates (by node) and deletes (by pod name) of one daemon set.
#[derive(Default)]
struct Expectations {
    creates: HashMap<String, Instant>,
    deletes: HashMap<String, Instant>,
}

/// See the module doc.
pub struct DaemonSetController {
    recorder: Arc<Recorder>,
    daemonsets: Api<DaemonSet>,
    ds_store: Store<DaemonSet>,
    history: History,
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    node_store: Store<Node>,
    expectations: Mutex<HashMap<ObjectRef, Expectations>>,
}

impl DaemonSetController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: Arc<Recorder>,
        daemonsets: (Api<DaemonSet>, Store<DaemonSet>),
        revisions: (Api<ControllerRevision>, Store<ControllerRevision>),
        pods: (Api<Pod>, Store<Pod>),
        node_store: Store<Node>,
    ) -> Self {
        Self {
            recorder,
            daemonsets: daemonsets.0,
            ds_store: daemonsets.1,
            history: History::new(revisions.0, revisions.1),
            pods: pods.0,
            pod_store: pods.1,
            node_store,
            expectations: Mutex::new(HashMap::new()),
        }
    }

    /// The daemon set a pod belongs to, if any.
    pub fn owner_of(pod: &Pod) -> Option<ObjectRef> {
        pod.controlled_by()
            .filter(|o| o.kind == DaemonSet::KIND)
            .map(|o| ObjectRef::new(pod.namespace(), o.name.clone()))
    }

    /// Every daemon set (a node change concerns them all).
    pub fn all(&self) -> Vec<ObjectRef> {
        self.ds_store
            .list()
            .iter()
            .map(|d| d.object_ref())
            .collect()
    }

    fn event(&self, ds: &DaemonSet, reason: &'static str, message: String) {
        self.event_of(ds, EventType::Normal, reason, message);
    }

    /// As [`Self::event`], of type `kind`.
    fn event_of(&self, ds: &DaemonSet, kind: EventType, reason: &'static str, message: String) {
        let (recorder, ds) = (Arc::clone(&self.recorder), ds.clone());
        tokio::spawn(async move {
            recorder.record(&ds, kind, reason, &message).await;
        });
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(ds) = self.ds_store.get(&key.namespace, &key.name) else {
            if let Ok(mut all) = self.expectations.lock() {
                all.remove(&key);
            }
            return Ok(Action::AwaitChange);
        };
        if ds
            .metadata()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let uid = ds.metadata().map(|m| m.uid.clone()).unwrap_or_default();
        let owned: Vec<Arc<Pod>> = self
            .pod_store
            .list()
            .into_iter()
            .filter(|p| p.namespace() == key.namespace)
            .filter(|p| p.controlled_by().is_some_and(|o| o.uid == uid))
            .collect();
        let hash = template_hash(ds.spec.as_ref().and_then(|s| s.template.as_ref()), 0);
        let running: Vec<&str> = owned.iter().map(|p| revision_of(p)).collect();
        self.history.record(ds.as_ref(), &hash, &running).await?;
        let nodes = self.node_store.list();
        let (creating, deleting) = {
            let mut all = self
                .expectations
                .lock()
                .map_err(|_| Error::Other("poisoned".into()))?;
            let e = all.entry(key.clone()).or_default();
            let fresh = |at: &Instant| at.elapsed() < EXPECTATION_TTL;
            let on_node = |node: &str| {
                owned
                    .iter()
                    .any(|p| p.spec.as_ref().is_some_and(|s| s.node_name == node))
            };
            e.creates.retain(|node, at| !on_node(node) && fresh(at));
            e.deletes
                .retain(|name, at| owned.iter().any(|p| p.name() == name) && fresh(at));
            (
                e.creates.keys().cloned().collect::<Vec<_>>(),
                e.deletes.keys().cloned().collect::<Vec<_>>(),
            )
        };
        // Pods whose deletion is in flight are gone for the plan.
        let visible: Vec<Arc<Pod>> = owned
            .iter()
            .filter(|p| !deleting.iter().any(|d| d == p.name()))
            .cloned()
            .collect();
        let plan = plan(&ds, &nodes, &visible, &hash, &creating);
        for node in &plan.create_on {
            match self.pods.create(daemon_pod(&ds, node, &hash)).await {
                Ok(pod) => {
                    self.event(
                        &ds,
                        "SuccessfulCreate",
                        format!("Created pod: {}", pod.name()),
                    );
                    if let Ok(mut all) = self.expectations.lock() {
                        all.entry(key.clone())
                            .or_default()
                            .creates
                            .insert(node.clone(), Instant::now());
                    }
                }
                Err(s) => {
                    self.event_of(
                        &ds,
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
                Ok(_) => {
                    self.event(&ds, "SuccessfulDelete", format!("Deleted pod: {name}"));
                    if let Ok(mut all) = self.expectations.lock() {
                        all.entry(key.clone())
                            .or_default()
                            .deletes
                            .insert(name.clone(), Instant::now());
                    }
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
        }
        let mut updated = (*ds).clone();
        if updated.status.as_ref() != Some(&plan.status) {
            updated.status = Some(plan.status.clone());
            match self.daemonsets.update_status(updated).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Aborted || s.code() == tonic::Code::NotFound => {
                }
                Err(s) => return Err(s.into()),
            }
        }
        let min_ready = ds.spec.as_ref().map_or(0, |s| s.min_ready_seconds);
        if min_ready > 0 && plan.status.number_available < plan.status.number_ready {
            return Ok(Action::Requeue(Duration::from_secs(
                min_ready.unsigned_abs().into(),
            )));
        }
        if !plan.create_on.is_empty() || !plan.delete.is_empty() || !creating.is_empty() {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        Ok(Action::AwaitChange)
    }
}

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.ds_store, key)
    }
}

// === wiring ===

/// Starts the DaemonSet controller: woken by DaemonSets, their pods, and
/// every node change (a node that comes, goes or changes labels or taints
/// concerns every daemon set).
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed};
    use futures::FutureExt as _;
    let controller = Arc::new(DaemonSetController::new(
        Arc::clone(&shared.recorder),
        (
            Api::new(shared.channel.clone()),
            shared.daemonsets.store.clone(),
        ),
        (
            Api::new(shared.channel.clone()),
            shared.controllerrevisions.store.clone(),
        ),
        (Api::new(shared.channel.clone()), shared.pods.store.clone()),
        shared.nodes.store.clone(),
    ));
    let (by_node, all) = (Arc::clone(&controller), Arc::clone(&controller));
    Controller::new(controller)
        .for_kind(&shared.daemonsets)
        .watches(&shared.pods, |change| {
            DaemonSetController::owner_of(changed(change))
                .into_iter()
                .collect()
        })
        .watches(&shared.nodes, move |_| by_node.all())
        .watches(&shared.controllerrevisions, |change| {
            let revision = crate::runtime::changed(change);
            revision
                .controlled_by()
                .filter(|o| o.kind == DaemonSet::KIND)
                .map(|o| ObjectRef::new(revision.namespace(), o.name.clone()))
                .into_iter()
                .collect()
        })
        .run(move || all.all(), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use skiff::pb::core::v1::{NodeSpec, PodCondition, PodSpec, PodStatus, PodTemplateSpec, Taint};

    fn node(name: &str, labels: &[(&str, &str)], taints: &[Taint]) -> Arc<Node> {
        Arc::new(Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                taints: taints.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn ds(selector: &[(&str, &str)], max_unavailable: Option<f64>) -> DaemonSet {
        DaemonSet {
            metadata: Some(ObjectMeta {
                name: "agent".into(),
                namespace: "kube-system".into(),
                uid: "ds-uid".into(),
                ..Default::default()
            }),
            spec: Some(DaemonSetSpec {
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: [("app".to_string(), "agent".to_string())].into(),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        node_selector: selector
                            .iter()
                            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                }),
                update_strategy: Some(DaemonSetUpdateStrategy {
                    r#type: "RollingUpdate".into(),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_unavailable: max_unavailable.map(|n| skiff::wkt::Value {
                            kind: Some(skiff::wkt::value::Kind::NumberValue(n)),
                        }),
                        max_surge: None,
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: &str, hash: &str, ready: bool, created: i64) -> Arc<Pod> {
        let mut p = daemon_pod(&ds(&[], None), node, hash);
        let meta = p.metadata.as_mut().unwrap();
        meta.name = name.into();
        meta.creation_timestamp = Some(skiff::wkt::Timestamp {
            seconds: created,
            nanos: 0,
        });
        p.status = Some(PodStatus {
            phase: "Running".into(),
            conditions: vec![PodCondition {
                r#type: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        Arc::new(p)
    }

    #[test]
    fn every_matching_node_gets_one_pod_and_others_none() {
        let nodes = [
            node("a", &[("disk", "ssd")], &[]),
            node("b", &[("disk", "hdd")], &[]),
            node("c", &[("disk", "ssd")], &[]),
        ];
        let d = ds(&[("disk", "ssd")], None);
        let p = plan(&d, &nodes, &[pod("on-b", "b", "h", true, 1)], "h", &[]);
        assert_eq!(p.create_on, ["a", "c"]);
        assert_eq!(p.delete, ["on-b"], "b should run none");
        assert_eq!(p.status.desired_number_scheduled, 2);
        assert_eq!(p.status.number_misscheduled, 1);
        // A create in flight on a is not repeated.
        let again = plan(&d, &nodes, &[], "h", &["a".to_string()]);
        assert_eq!(again.create_on, ["c"]);
    }

    #[test]
    fn taints_keep_pods_out_unless_tolerated_and_sick_nodes_keep_them() {
        let dedicated = Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let unreachable = Taint {
            key: "node.kubernetes.io/unreachable".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        let nodes = [
            node("db", &[], &[dedicated]),
            node("gone", &[], &[unreachable]),
        ];
        let p = plan(&ds(&[], None), &nodes, &[], "h", &[]);
        assert_eq!(
            p.create_on,
            ["gone"],
            "daemons tolerate unreachable, not dedicated"
        );
    }

    #[test]
    fn extra_and_failed_pods_go_and_the_oldest_stays() {
        let nodes = [node("a", &[], &[])];
        let mut failed = (*pod("failed", "a", "h", false, 0)).clone();
        failed.status.as_mut().unwrap().phase = "Failed".into();
        let owned = [
            pod("young", "a", "h", true, 20),
            pod("old", "a", "h", true, 10),
            Arc::new(failed),
        ];
        let p = plan(&ds(&[], None), &nodes, &owned, "h", &[]);
        assert_eq!(p.delete, ["failed", "young"]);
        assert!(p.create_on.is_empty());
        assert_eq!(p.status.current_number_scheduled, 1);
        assert_eq!(p.status.number_ready, 1);
    }

    #[test]
    fn a_rolling_update_replaces_as_many_as_max_unavailable_allows() {
        let nodes: Vec<Arc<Node>> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, &[], &[]))
            .collect();
        let owned = [
            pod("pa", "a", "old", true, 1),
            pod("pb", "b", "old", true, 2),
            pod("pc", "c", "old", false, 3),
            pod("pd", "d", "new", true, 4),
        ];
        // maxUnavailable 2; c is unavailable already: it goes for free,
        // and one available old pod (the oldest) with the budget left.
        let p = plan(&ds(&[], Some(2.0)), &nodes, &owned, "new", &[]);
        assert_eq!(p.delete, ["pa", "pc"]);
        assert_eq!(p.status.updated_number_scheduled, 1);
        assert_eq!(p.status.number_unavailable, 1);
        // OnDelete replaces nothing.
        let mut on_delete = ds(&[], Some(2.0));
        on_delete.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            r#type: "OnDelete".into(),
            rolling_update: None,
        });
        assert!(
            plan(&on_delete, &nodes, &owned, "new", &[])
                .delete
                .is_empty()
        );
    }

    #[test]
    fn a_pod_ready_for_less_than_min_ready_seconds_is_not_yet_available() {
        let nodes: Vec<Arc<Node>> = ["a", "b", "c"].iter().map(|n| node(n, &[], &[])).collect();
        // The new pod on c turned ready just now; the old ones long ago.
        let mut fresh = (*pod("pc", "c", "new", true, 3)).clone();
        fresh.status.as_mut().unwrap().conditions[0].last_transition_time =
            Some(skiff::time::now_seconds());
        let owned = [
            pod("pa", "a", "old", true, 1),
            pod("pb", "b", "old", true, 2),
            Arc::new(fresh),
        ];
        let mut patient = ds(&[], Some(1.0));
        patient.spec.as_mut().unwrap().min_ready_seconds = 3600;
        // maxUnavailable 1 is spent on the new pod: no old one goes yet.
        let p = plan(&patient, &nodes, &owned, "new", &[]);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.status.number_available, 2);
        assert_eq!(p.status.number_unavailable, 1);
        // Without minReadySeconds the new pod counts at once.
        let p = plan(&ds(&[], Some(1.0)), &nodes, &owned, "new", &[]);
        assert_eq!(p.delete, ["pa"]);
        assert_eq!(p.status.number_available, 3);
    }

    #[test]
    fn daemon_pods_are_bound_owned_labelled_and_tolerant() {
        let p = daemon_pod(&ds(&[], None), "n1", "abc");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name, "n1");
        assert!(
            spec.tolerations
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unschedulable")
        );
        let meta = p.metadata.unwrap();
        assert_eq!(meta.labels[REVISION_LABEL], "abc");
        assert_eq!(meta.owner_references[0].kind, "DaemonSet");
        assert_eq!(meta.generate_name, "agent-");
    }
}
