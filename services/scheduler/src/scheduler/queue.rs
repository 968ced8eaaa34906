//! What enters the queue and when: which pods are ours, the informers'
//! changes to pods and nodes, the nominations preemption made, and the
//! backoff of pods that fit nowhere.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::core::v1::{Node, Pod};
use skiff::{ObjectRef, Resource as _};
use skiff_client::Change;

use super::Scheduler;
use super::cache::{bound_node, finished};
use crate::preemption;

/// First retry of an unschedulable pod, doubling to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before retrying an unschedulable pod.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Scheduler {
    pub(super) fn is_ours(&self, pod: &Pod) -> bool {
        let name = pod.spec.as_ref().map_or("", |s| s.scheduler_name.as_str());
        (name.is_empty() || name == self.settings.scheduler_name)
            && bound_node(pod).is_none()
            && pod
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_none())
            && !finished(pod)
    }

    /// Lets every unschedulable pod try again: the cluster changed.
    pub(super) fn retry_unschedulable(&mut self) {
        for key in self.unschedulable.drain() {
            self.queue.add(key);
        }
    }

    /// Keeps [`Self::nominated`]: a pending pod of ours with a nominated
    /// node is there, anything else is not.
    pub(super) fn track_nomination(&mut self, key: &ObjectRef, pod: Option<&Arc<Pod>>) {
        for pods in self.nominated.values_mut() {
            pods.remove(key);
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
        let Some(pod) = pod.filter(|p| self.is_ours(p)) else {
            return;
        };
        let node = pod
            .status
            .as_ref()
            .map_or("", |s| s.nominated_node_name.as_str());
        if !node.is_empty() {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .insert(key.clone(), Arc::clone(pod));
        }
    }

    pub(super) fn on_pod(&mut self, change: Change<Pod>) {
        match change {
            Change::Applied(pod) => {
                let key = pod.object_ref();
                if !self.nominated.is_empty()
                    || pod
                        .status
                        .as_ref()
                        .is_some_and(|s| !s.nominated_node_name.is_empty())
                {
                    self.track_nomination(&key, Some(&pod));
                }
                if let Some(node) = bound_node(&pod) {
                    let node = node.to_string();
                    self.cache.assumed.remove(&key);
                    if finished(&pod) {
                        self.cache.unplace(&key);
                        self.retry_unschedulable();
                    } else {
                        self.cache.place(pod, &node);
                    }
                    self.attempts.remove(&key);
                    self.queue.set_priority(&key, 0);
                } else if self.is_ours(&pod) && !self.unschedulable.contains(&key) {
                    self.queue.set_priority(&key, preemption::priority(&pod));
                    self.queue.add(key);
                }
            }
            Change::Deleted(pod) => {
                let key = pod.object_ref();
                if !self.nominated.is_empty() {
                    self.track_nomination(&key, None);
                }
                self.queue.set_priority(&key, 0);
                self.cache.unplace(&key);
                self.unschedulable.remove(&key);
                self.attempts.remove(&key);
                self.retry_unschedulable();
            }
        }
    }

    pub(super) fn on_node(&mut self, change: Change<Node>) {
        match change {
            Change::Applied(node) => self.cache.set_node(node),
            Change::Deleted(node) => self.cache.remove_node(node.name()),
        }
        self.retry_unschedulable();
    }

    pub(super) fn backoff(&mut self, key: &ObjectRef) {
        let n = self.attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        let delay = INITIAL_BACKOFF
            .saturating_mul(1 << (*n - 1).min(8))
            .min(MAX_BACKOFF);
        self.queue.add_after(key.clone(), delay);
    }
}
