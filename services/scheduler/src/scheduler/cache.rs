//! The scheduler's cache: every node with the pods counted against it,
//! bound or *assumed* (chosen, binding in flight), so that the next
//! decision sees a pod before the API confirms it; and the nodes as pods
//! nominated by preemption see them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use skiff::pb::core::v1::{Node, Pod};
use skiff::{ObjectRef, Resource as _};

use crate::framework::NodeInfo;
use crate::preemption;

/// The scheduler's view of the cluster.
#[derive(Default)]
pub(super) struct Cache {
    /// Every node, with the pods counted against it, in name order (the
    /// order each cycle walks them in: no sort per pod).
    pub(super) nodes: BTreeMap<String, NodeInfo>,
    /// Where each counted pod is (bound or assumed), even on a node the
    /// cache does not know yet (it is counted when the node arrives).
    placed: HashMap<ObjectRef, (String, Arc<Pod>)>,
    /// Pods chosen for a node whose binding has not been seen yet.
    pub(super) assumed: HashSet<ObjectRef>,
}

impl Cache {
    pub(super) fn set_node(&mut self, node: Arc<Node>) {
        let name = node.name().to_string();
        if let Some(info) = self.nodes.get_mut(&name) {
            // A known node changed: its pods stay as counted.
            info.set_node(node);
            return;
        }
        let mut info = NodeInfo::new(node);
        for (node_name, pod) in self.placed.values() {
            if *node_name == name {
                info.add_pod(Arc::clone(pod));
            }
        }
        self.nodes.insert(name, info);
    }

    /// Every node in name order, with those nominated pods are headed for
    /// as `ahead` has them.
    pub(super) fn ordered<'a>(&'a self, ahead: &'a HashMap<&str, NodeInfo>) -> Vec<&'a NodeInfo> {
        self.nodes
            .iter()
            .map(|(name, info)| {
                if ahead.is_empty() {
                    info
                } else {
                    ahead.get(name.as_str()).unwrap_or(info)
                }
            })
            .collect()
    }

    pub(super) fn remove_node(&mut self, name: &str) {
        // Its pods stay placed: if the node comes back they count again.
        self.nodes.remove(name);
    }

    pub(super) fn place(&mut self, pod: Arc<Pod>, node: &str) {
        let key = pod.object_ref();
        if self.placed.get(&key).is_some_and(|(n, _)| n != node) {
            self.unplace(&key);
        }
        self.placed
            .insert(key.clone(), (node.to_string(), Arc::clone(&pod)));
        if let Some(info) = self.nodes.get_mut(node) {
            match info.pods.iter_mut().find(|p| p.object_ref() == key) {
                // Refresh the stored copy (the assumed one becomes bound).
                Some(slot) => *slot = pod,
                None => info.add_pod(pod),
            }
        }
    }

    pub(super) fn unplace(&mut self, key: &ObjectRef) {
        self.assumed.remove(key);
        let Some((node, _)) = self.placed.remove(key) else {
            return;
        };
        if let Some(info) = self.nodes.get_mut(&node) {
            let before = std::mem::take(&mut info.pods);
            let mut rebuilt = NodeInfo::new(Arc::clone(&info.node));
            for pod in before.into_iter().filter(|p| &p.object_ref() != key) {
                rebuilt.add_pod(pod);
            }
            *info = rebuilt;
        }
    }

    /// Rebuilds everything from the informers' stores (after a relist).
    /// Assumed pods stay assumed while they exist unbound.
    pub(super) fn rebuild(&mut self, nodes: &[Arc<Node>], pods: &[Arc<Pod>]) {
        let assumed: Vec<(ObjectRef, String)> = self
            .assumed
            .iter()
            .filter_map(|k| self.placed.get(k).map(|(n, _)| (k.clone(), n.clone())))
            .collect();
        let by_key: HashMap<ObjectRef, &Arc<Pod>> =
            pods.iter().map(|p| (p.object_ref(), p)).collect();
        *self = Cache::default();
        for node in nodes {
            self.set_node(Arc::clone(node));
        }
        for pod in pods {
            if let Some(node) = bound_node(pod).filter(|_| !finished(pod)) {
                self.place(Arc::clone(pod), node);
            }
        }
        for (key, node) in assumed {
            if let Some(pod) = by_key.get(&key).filter(|p| bound_node(p).is_none()) {
                self.place(Arc::clone(pod), &node);
                self.assumed.insert(key);
            }
        }
    }
}

pub(super) fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .map(|s| s.node_name.as_str())
        .filter(|n| !n.is_empty())
}

/// The nodes that pods nominated by preemption are headed for, with
/// those of them that come before `pod` (no lower priority, not `pod`
/// itself) counted on them.
pub(super) fn with_nominated<'a>(
    nodes: &'a BTreeMap<String, NodeInfo>,
    nominated: &'a HashMap<String, HashMap<ObjectRef, Arc<Pod>>>,
    pod: &Pod,
) -> HashMap<&'a str, NodeInfo> {
    if nominated.is_empty() {
        return HashMap::new();
    }
    let key = pod.object_ref();
    let wanted = preemption::priority(pod);
    nominated
        .iter()
        .filter_map(|(node, pods)| {
            let info = nodes.get(node)?;
            let ahead: Vec<Arc<Pod>> = pods
                .iter()
                .filter(|(k, p)| **k != key && preemption::priority(p) >= wanted)
                .map(|(_, p)| Arc::clone(p))
                .collect();
            if ahead.is_empty() {
                return None;
            }
            let mut info = info.clone();
            for p in ahead {
                info.add_pod(p);
            }
            Some((node.as_str(), info))
        })
        .collect()
}

pub(super) fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
}
