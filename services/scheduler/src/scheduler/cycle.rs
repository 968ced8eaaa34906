//! One scheduling cycle: the best node for a pod (filter, then score,
//! the nominated node first), the pod assumed there, and its binding (and
//! its waiting claims') in the background; or why it fits nowhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument as _;

use skiff::ObjectRef;
use skiff::pb::core::v1::{Binding, ObjectReference, Pod};
use skiff::pb::meta::v1::ObjectMeta;

use super::cache::with_nominated;
use super::{Outcome, Scheduler, metrics};
use crate::framework::NodeInfo;
use crate::plugins::volume_binding::{self, PodVolumes};

/// Filtering stops once this many nodes fit (Kubernetes' minimum of
/// feasible nodes to find); scoring more rarely changes the choice.
const MIN_FEASIBLE: usize = 100;
/// ... or this share of the nodes, if larger.
const FEASIBLE_PERCENT: usize = 10;

impl Scheduler {
    /// Decides where one pod goes, assumes it there and binds it in the
    /// background.
    pub(super) async fn schedule_one(&mut self, key: &ObjectRef) {
        let Some(pod) = self.pod_informer.store.get(&key.namespace, &key.name) else {
            // Gone (its deletion may have been missed in a lag): so is
            // its priority.
            self.queue.set_priority(key, 0);
            return;
        };
        if !self.is_ours(&pod) {
            self.queue.set_priority(key, 0);
            return;
        }
        if self.cache.assumed.contains(key) {
            return;
        }
        // Scheduling gates hold the pod back until all are removed (an
        // update of the pod brings it back to the queue).
        if pod
            .spec
            .as_ref()
            .is_some_and(|s| !s.scheduling_gates.is_empty())
        {
            self.report_gated(&pod).await;
            return;
        }
        // The scheduling cycle joins the trace of whoever created the pod.
        let span = tracing::info_span!(
            "schedule",
            pod = %key,
            node = tracing::field::Empty,
        );
        if let Some(meta) = &pod.metadata {
            skiff_telemetry::join_object(&span, &meta.annotations);
        }
        let timer = metrics::latency().start_timer();
        let picked = span.in_scope(|| self.pick(&pod));
        timer.observe_duration();
        match picked {
            Ok((node, volumes)) => {
                span.record("node", node.as_str());
                metrics::attempts("scheduled").inc();
                self.unschedulable.remove(key);
                self.cache.place(Arc::clone(&pod), &node);
                self.cache.assumed.insert(key.clone());
                // Placed: it counts on its node as a pod now, not as a
                // nomination.
                if !self.nominated.is_empty() {
                    self.track_nomination(key, None);
                }
                let binding = Binding {
                    metadata: Some(ObjectMeta {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        uid: pod
                            .metadata
                            .as_ref()
                            .map(|m| m.uid.clone())
                            .unwrap_or_default(),
                        ..Default::default()
                    }),
                    target: Some(ObjectReference {
                        kind: "Node".into(),
                        name: node,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let api = self.pods.clone();
                let claims = self.claims.clone();
                let volumes_api = self.volumes.clone();
                let uid = pod
                    .metadata
                    .as_ref()
                    .map(|m| m.uid.clone())
                    .unwrap_or_default();
                let outcomes = self.outcomes_tx.clone();
                let key = key.clone();
                tokio::spawn(
                    async move {
                        let node = binding
                            .target
                            .as_ref()
                            .map(|t| t.name.clone())
                            .unwrap_or_default();
                        let bound = async {
                            volume_binding::bind_claims(
                                &claims,
                                &volumes_api,
                                &volumes.waiting,
                                &node,
                            )
                            .await?;
                            api.bind(binding).await
                        };
                        if let Err(status) = bound.await {
                            let _ = outcomes.send(Outcome::BindFailed(key, uid, status));
                        }
                    }
                    .instrument(span),
                );
            }
            Err(message) => {
                metrics::attempts("unschedulable").inc();
                tracing::debug!(pod = %key, %message, "unschedulable");
                self.unschedulable.insert(key.clone());
                self.backoff(key);
                self.report_unschedulable(&pod, &message)
                    .instrument(span.clone())
                    .await;
                self.preempt(&pod).instrument(span).await;
            }
        }
    }

    /// The best node for `pod` and what its claims need there, or the
    /// FailedScheduling message.
    fn pick(&mut self, pod: &Pod) -> Result<(String, PodVolumes), String> {
        let total = self.cache.nodes.len();
        if total == 0 {
            return Err("0/0 nodes are available: no nodes registered.".into());
        }
        let stores = volume_binding::Stores {
            claims: self.claim_informer.store.clone(),
            volumes: self.volume_informer.store.clone(),
            classes: self.class_informer.store.clone(),
        };
        let mut volumes = PodVolumes::of(pod, &stores)
            .map_err(|reason| format!("0/{total} nodes are available: {reason}."))?;
        volumes.forget_gone_nodes(|n| self.cache.nodes.contains_key(n));
        let all_volumes = if volumes.is_empty() {
            Vec::new()
        } else {
            stores.volumes.list()
        };
        let enough = MIN_FEASIBLE.max(total * FEASIBLE_PERCENT / 100);
        let start = self.next_start % total;
        let ahead = with_nominated(&self.cache.nodes, &self.nominated, pod);
        let all = self.cache.ordered(&ahead);
        let prepared = self.profile.prepare(pod, &all);
        // A pod preemption made room for goes there if it still fits
        // (kube-scheduler tries the nominated node first).
        let nominated = pod
            .status
            .as_ref()
            .map_or("", |s| s.nominated_node_name.as_str());
        if let Some(info) = all
            .iter()
            .find(|n| !nominated.is_empty() && n.name() == nominated)
            && self
                .profile
                .filter_with(pod, info, &prepared)
                .and_then(|()| volumes.filter(&info.node, &all_volumes))
                .is_ok()
        {
            return Ok((nominated.to_string(), volumes));
        }
        let mut feasible: Vec<&NodeInfo> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut examined = 0;
        for i in 0..total {
            let info = all[(start + i) % total];
            examined += 1;
            let fits = self
                .profile
                .filter_with(pod, info, &prepared)
                .and_then(|()| volumes.filter(&info.node, &all_volumes));
            match fits {
                Ok(()) => {
                    feasible.push(info);
                    if feasible.len() >= enough {
                        break;
                    }
                }
                Err(reason) => *reasons.entry(reason).or_insert(0) += 1,
            }
        }
        self.next_start = (start + examined) % total;
        if feasible.is_empty() {
            let mut parts: Vec<(usize, String)> =
                reasons.into_iter().map(|(r, n)| (n, r)).collect();
            parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let detail: Vec<String> = parts.iter().map(|(n, r)| format!("{n} {r}")).collect();
            return Err(format!(
                "0/{total} nodes are available: {}.",
                detail.join(", ")
            ));
        }
        let scores = self.profile.score(pod, &feasible, &all);
        let best = scores
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (**s, std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
        Ok((feasible[best].name().to_string(), volumes))
    }
}
