//! The node lifecycle controller: a node whose lease has not been renewed
//! for the grace period gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable:NoExecute` taint; once it has been
//! unreachable for the eviction timeout, its pods are deleted so that their
//! controllers replace them elsewhere. A node that renews again loses the
//! taint.
//!
//! Staleness is measured with this process's own clock: when a lease's
//! renewTime last *changed*, as observed here, not the time it names
//! (clocks of other machines may be off).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff::ObjectRef;
use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{Node, NodeCondition, NodeStatus, Pod, Taint};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// The taint an unreachable node gets.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub use skiff::names::NODE_LEASE_NAMESPACE as LEASE_NAMESPACE;

/// The controller's timings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A node silent this long is NotReady (Unknown).
    pub grace: Duration,
    /// An unreachable node's pods are evicted after this long.
    pub eviction: Duration,
}

impl Default for Timing {
    /// Kubernetes' defaults: 40 s and 5 min.
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(40),
            eviction: Duration::from_secs(300),
        }
    }
}

/// What this process has seen of a node.
struct Seen {
    /// The lease's renewTime when it last changed (seconds, nanos).
    renew: Option<(i64, i32)>,
    /// When it changed, on our clock.
    at: Instant,
    /// When we first saw the node unreachable.
    unreachable_since: Option<Instant>,
}

/// See the module doc. Keys are nodes.
pub struct NodeLifecycleController {
    /// NodeNotReady events.
    recorder: std::sync::Arc<Recorder>,
    nodes: Api<Node>,
    node_store: Store<Node>,
    lease_store: Store<Lease>,
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    timing: Timing,
    seen: Mutex<HashMap<String, Seen>>,
}

fn ready_status(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
        .map_or("", |c| c.status.as_str())
}

/// The taint an unreachable node carries.
fn unreachable_taint() -> Taint {
    Taint {
        key: UNREACHABLE_TAINT.into(),
        effect: "NoExecute".into(),
        ..Default::default()
    }
}

/// Whether the pod tolerates `taint` with no time limit.
fn tolerates_for_good(pod: &Pod, taint: &Taint) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.tolerations
            .iter()
            .any(|t| t.toleration_seconds.is_none() && skiff::nodes::tolerates(t, taint))
    })
}

fn has_unreachable_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .is_some_and(|s| s.taints.iter().any(|t| t.key == UNREACHABLE_TAINT))
}

impl NodeLifecycleController {
    /// A controller over the shared caches.
    pub fn new(
        recorder: std::sync::Arc<Recorder>,
        nodes: (Api<Node>, Store<Node>),
        lease_store: Store<Lease>,
        pods: (Api<Pod>, Store<Pod>),
        timing: Timing,
    ) -> Self {
        Self {
            recorder,
            nodes: nodes.0,
            node_store: nodes.1,
            lease_store,
            pods: pods.0,
            pod_store: pods.1,
            timing,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// How often nodes are looked at.
    pub fn period(&self) -> Duration {
        (self.timing.grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }

    /// (silent for, unreachable for) of a node, updating what we saw.
    fn observe(&self, name: &str, unreachable: bool) -> (Duration, Option<Duration>) {
        let renew = self
            .lease_store
            .get(LEASE_NAMESPACE, name)
            .and_then(|l| l.spec.as_ref().and_then(|s| s.renew_time))
            .map(|t| (t.seconds, t.nanos));
        let Ok(mut seen) = self.seen.lock() else {
            return (Duration::ZERO, None);
        };
        let entry = seen.entry(name.to_string()).or_insert(Seen {
            renew,
            // A node we just met gets a full grace period.
            at: Instant::now(),
            unreachable_since: None,
        });
        if entry.renew != renew {
            entry.renew = renew;
            entry.at = Instant::now();
        }
        if unreachable {
            entry.unreachable_since.get_or_insert_with(Instant::now);
        } else {
            entry.unreachable_since = None;
        }
        (
            entry.at.elapsed(),
            entry.unreachable_since.map(|t| t.elapsed()),
        )
    }

    async fn mark_unreachable(&self, node: &Node) -> Result<(), Error> {
        let mut updated = node.clone();
        let status = updated.status.get_or_insert_with(NodeStatus::default);
        let now = skiff::time::now_seconds();
        status.conditions.retain(|c| c.r#type != "Ready");
        status.conditions.push(NodeCondition {
            r#type: "Ready".into(),
            status: "Unknown".into(),
            reason: "NodeStatusUnknown".into(),
            message: "Kubelet stopped posting node status.".into(),
            last_transition_time: Some(now),
            ..Default::default()
        });
        let updated = self.nodes.update_status(updated).await?;
        self.set_taint(updated, true).await
    }

    async fn set_taint(&self, mut node: Node, on: bool) -> Result<(), Error> {
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.taints.retain(|t| t.key != UNREACHABLE_TAINT);
        if on {
            spec.taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                effect: "NoExecute".into(),
                time_added: Some(skiff::time::now_seconds()),
                ..Default::default()
            });
        }
        node.status = None;
        self.nodes.update(node).await?;
        Ok(())
    }

    /// Deletes the pods bound to `node`: gracefully (they show as
    /// terminating until their agent, if it comes back, finishes them; their
    /// controllers replace them meanwhile), or with `grace` 0, at once.
    async fn evict(
        &self,
        node: &str,
        grace: Option<i64>,
        spared: impl Fn(&Pod) -> bool,
    ) -> Result<usize, Error> {
        let victims: Vec<_> = self
            .pod_store
            .list()
            .into_iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name == node))
            .filter(|p| !spared(p))
            .filter(|p| {
                p.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none() || grace == Some(0))
            })
            .collect();
        for pod in &victims {
            let request = DeleteRequest {
                grace_period_seconds: grace,
                ..crate::replicaset::delete_exactly(pod.as_ref())
            };
            match self.pods.delete(request).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::Aborted => {
                }
                Err(s) => return Err(s.into()),
            }
        }
        Ok(victims.len())
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let period = self.period();
        let Some(node) = self.node_store.get("", &key.name) else {
            if let Ok(mut seen) = self.seen.lock() {
                seen.remove(&key.name);
            }
            // Kubernetes' pod GC: pods bound to a node that no longer
            // exists have no agent to finish them; they go at once.
            let n = self.evict(&key.name, Some(0), |_| false).await?;
            if n > 0 {
                tracing::warn!(node = %key.name, pods = n, "deleted the pods of a deleted node");
            }
            return Ok(Action::AwaitChange);
        };
        let unknown = ready_status(&node) == "Unknown";
        let (silent, unreachable_for) = self.observe(&key.name, unknown);
        if silent > self.timing.grace {
            if !unknown {
                tracing::warn!(node = %key.name, silent = ?silent, "node stopped renewing its lease: NotReady");
                self.mark_unreachable(&node).await?;
                let message = format!("Node {} status is now: NodeNotReady", key.name);
                self.recorder
                    .record(&*node, EventType::Warning, "NodeNotReady", &message)
                    .await;
            } else if !has_unreachable_taint(&node) {
                // Marked, but the taint did not land: add it now.
                self.set_taint((*node).clone(), true).await?;
            } else if unreachable_for.is_some_and(|d| d > self.timing.eviction) {
                // A pod that tolerates the taint for good stays (DaemonSet
                // pods do); the others have waited out the eviction time
                // (Kubernetes' default tolerationSeconds, 300).
                let n = self
                    .evict(&key.name, None, |p| {
                        tolerates_for_good(p, &unreachable_taint())
                    })
                    .await?;
                if n > 0 {
                    tracing::warn!(node = %key.name, pods = n, "evicted the pods of an unreachable node");
                }
            }
        } else if has_unreachable_taint(&node) && ready_status(&node) == "True" {
            // Back: the agent reported Ready again.
            self.set_taint((*node).clone(), false).await?;
        }
        // Other NoExecute taints (an admin's `kubectl taint ... :NoExecute`)
        // evict at once the pods that do not tolerate them all.
        let no_execute: Vec<Taint> = node
            .spec
            .as_ref()
            .map(|s| {
                s.taints
                    .iter()
                    .filter(|t| t.effect == "NoExecute" && t.key != UNREACHABLE_TAINT)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !no_execute.is_empty() {
            let n = self
                .evict(&key.name, None, |p| {
                    no_execute.iter().all(|t| tolerates_for_good(p, t))
                })
                .await?;
            if n > 0 {
                tracing::warn!(node = %key.name, pods = n, "evicted pods not tolerating the node's NoExecute taints");
            }
        }
        Ok(Action::Requeue(period))
    }
}

impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the node lifecycle controller: each reconcile requeues itself
/// every period; new nodes come in through their changes.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, keys_of};
    use futures::FutureExt as _;
    let controller = std::sync::Arc::new(NodeLifecycleController::new(
        std::sync::Arc::clone(&shared.recorder),
        (Api::new(shared.channel.clone()), shared.nodes.store.clone()),
        shared.leases.store.clone(),
        (Api::new(shared.channel.clone()), shared.pods.store.clone()),
        shared.timing,
    ));
    let store = shared.nodes.store.clone();
    Controller::new(controller)
        .for_kind(&shared.nodes)
        .reads(&shared.leases.store)
        .reads(&shared.pods.store)
        .run(move || keys_of(&store), workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{PodSpec, Toleration};

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                tolerations,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_toleration_without_seconds_spares_a_pod_for_good() {
        let taint = unreachable_taint();
        let daemon = pod(vec![Toleration {
            key: UNREACHABLE_TAINT.into(),
            operator: "Exists".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }]);
        assert!(tolerates_for_good(&daemon, &taint));
        let timed = pod(vec![Toleration {
            toleration_seconds: Some(300),
            ..daemon.spec.clone().unwrap().tolerations[0].clone()
        }]);
        assert!(!tolerates_for_good(&timed, &taint));
        assert!(!tolerates_for_good(&pod(vec![]), &taint));
        let admin = Taint {
            key: "maintenance".into(),
            value: "yes".into(),
            effect: "NoExecute".into(),
            ..Default::default()
        };
        assert!(!tolerates_for_good(&daemon, &admin));
        let everything = pod(vec![Toleration {
            operator: "Exists".into(),
            ..Default::default()
        }]);
        assert!(tolerates_for_good(&everything, &admin));
    }
}
