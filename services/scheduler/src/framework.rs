//! The plugin framework, as Kubernetes' scheduler framework: Filter
//! plugins say whether a pod fits a node (and why not), Score plugins rank
//! the nodes that fit. The plugins and their registry are in
//! [`crate::plugins`]; which of them run, and with what weights, is a
//! [`crate::profile::Profile`].

use skiff::Resource as _;
use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::pb::core::v1::{Node, Pod};
use skiff::quantity::Quantity;

/// Highest score a plugin gives a node.
pub const MAX_SCORE: i64 = 100;

/// Resources a pod asks for or a node offers, in the units scheduling
/// compares: CPU in millicores, memory in bytes, pods as a count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU, millicores.
    pub milli_cpu: i64,
    /// Memory, bytes.
    pub memory: i64,
    /// Pod slots.
    pub pods: i64,
}

impl Resources {
    /// Reads `cpu`, `memory` and `pods` from a quantity map; unparsable
    /// values count as zero (the API validates pod quantities).
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let q = |k: &str| map.get(k).and_then(|v| v.parse::<Quantity>().ok());
        Self {
            milli_cpu: q("cpu").map_or(0, |q| q.milli_value()),
            memory: q("memory").map_or(0, |q| q.value()),
            pods: q("pods").map_or(0, |q| q.value()),
        }
    }

    /// What a pod requests: the sum over its containers (a container's
    /// limit stands for a missing request), or the largest init
    /// container's if that is more, as Kubernetes computes it; one pod
    /// slot.
    pub fn of_pod(pod: &Pod) -> Self {
        let Some(spec) = &pod.spec else {
            return Self {
                pods: 1,
                ..Self::default()
            };
        };
        let container = |c: &skiff::pb::core::v1::Container| {
            let Some(r) = &c.resources else {
                return Self::default();
            };
            // A request, else the limit that stands for it.
            let q = |k: &str| {
                r.requests
                    .get(k)
                    .or_else(|| r.limits.get(k))
                    .and_then(|v| v.parse::<Quantity>().ok())
            };
            Self {
                milli_cpu: q("cpu").map_or(0, |q| q.milli_value()),
                memory: q("memory").map_or(0, |q| q.value()),
                pods: 0,
            }
        };
        let mut total = Self::default();
        for c in &spec.containers {
            let r = container(c);
            total.milli_cpu += r.milli_cpu;
            total.memory += r.memory;
        }
        for c in &spec.init_containers {
            let r = container(c);
            total.milli_cpu = total.milli_cpu.max(r.milli_cpu);
            total.memory = total.memory.max(r.memory);
        }
        total.pods = 1;
        total
    }

    /// `self + other`, saturating.
    pub fn plus(self, other: Self) -> Self {
        Self {
            milli_cpu: self.milli_cpu.saturating_add(other.milli_cpu),
            memory: self.memory.saturating_add(other.memory),
            pods: self.pods.saturating_add(other.pods),
        }
    }
}

/// A node and what is already placed on it (bound and assumed pods).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node. Replace it through [`NodeInfo::set_node`] only: what is
    /// read from it (`allocatable`, `ready`) is kept beside it.
    pub node: Arc<Node>,
    /// Pods on it (bound, or assumed while their binding is in flight).
    pub pods: Vec<Arc<Pod>>,
    /// The sum of their requests.
    pub requested: Resources,
    /// Its allocatable resources.
    pub allocatable: Resources,
    /// How many of its pods have pod affinity or anti-affinity terms (the
    /// inter-pod affinity plugin looks at the cluster's pods only when
    /// some have, or the pod being placed has).
    pub with_affinity: usize,
    /// How many of its pods have required anti-affinity terms (which
    /// every incoming pod is checked against).
    pub with_required_anti: usize,
    /// Whether its Ready condition is True (read once per change of the
    /// node, not once per pod scheduled).
    pub ready: bool,
}

impl NodeInfo {
    /// A node with nothing on it yet.
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = Self {
            node: Arc::clone(&node),
            pods: Vec::new(),
            requested: Resources::default(),
            allocatable: Resources::default(),
            with_affinity: 0,
            with_required_anti: 0,
            ready: false,
        };
        info.set_node(node);
        info
    }

    /// Replaces the node (a newer version of it), keeping its pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.allocatable = node
            .status
            .as_ref()
            .map(|s| {
                if s.allocatable.is_empty() {
                    Resources::from_map(&s.capacity)
                } else {
                    Resources::from_map(&s.allocatable)
                }
            })
            .unwrap_or_default();
        self.ready = skiff::nodes::is_ready(&node);
        self.node = node;
    }

    /// Counts a pod against the node.
    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested = self.requested.plus(Resources::of_pod(&pod));
        if has_pod_affinity(&pod) {
            self.with_affinity += 1;
        }
        let required_anti = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_deref())
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some_and(|a| {
                !a.required_during_scheduling_ignored_during_execution
                    .is_empty()
            });
        if required_anti {
            self.with_required_anti += 1;
        }
        self.pods.push(pod);
    }

    /// The node's value of label `key` (a topology domain).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.node
            .metadata
            .as_ref()
            .and_then(|m| m.labels.get(key))
            .map(String::as_str)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.name()
    }
}

/// Whether the pod has any pod affinity or anti-affinity term.
pub fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_deref())
        .is_some_and(|a| {
            a.pod_affinity.as_ref().is_some_and(|p| {
                !p.required_during_scheduling_ignored_during_execution
                    .is_empty()
                    || !p
                        .preferred_during_scheduling_ignored_during_execution
                        .is_empty()
            }) || a.pod_anti_affinity.as_ref().is_some_and(|p| {
                !p.required_during_scheduling_ignored_during_execution
                    .is_empty()
                    || !p
                        .preferred_during_scheduling_ignored_during_execution
                        .is_empty()
            })
        })
}

/// Why a node does not fit a pod: a short reason, counted per reason in
/// FailedScheduling events ("2 Insufficient cpu").
pub type Reason = String;

/// What a filter plugin prepared for one pod from the whole cluster
/// (Kubernetes' PreFilter state).
pub type Prepared = Box<dyn std::any::Any + Send + Sync>;

/// Decides whether a pod may run on a node.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's registered name.
    fn name(&self) -> &'static str;
    /// Ok if `pod` fits `node`, else why not.
    ///
    /// # Errors
    /// The reason the node does not fit.
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason>;
    /// Prepares, once per pod, what [`Self::filter_prepared`] needs from
    /// every node of the cluster (pods across topology domains); `None`
    /// when the plugin has nothing to check for this pod.
    fn pre_filter(&self, _pod: &Pod, _all: &[&NodeInfo]) -> Option<Prepared> {
        None
    }
    /// [`Self::filter`] with what [`Self::pre_filter`] prepared.
    ///
    /// # Errors
    /// The reason the node does not fit.
    fn filter_prepared(
        &self,
        pod: &Pod,
        node: &NodeInfo,
        _prepared: &Prepared,
    ) -> Result<(), Reason> {
        self.filter(pod, node)
    }
}

/// Ranks the nodes that fit, each from 0 to [`MAX_SCORE`].
pub trait ScorePlugin: Send + Sync {
    /// The plugin's registered name.
    fn name(&self) -> &'static str;
    /// How good each of `nodes` (all that passed the filters) is for
    /// `pod`, in order. All at once, so that plugins comparing nodes (such
    /// as spreading) prepare once per pod.
    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64>;
    /// [`Self::score`] knowing every node of the cluster (`all`), for
    /// plugins that count pods across topology domains.
    fn score_among(&self, pod: &Pod, nodes: &[&NodeInfo], _all: &[&NodeInfo]) -> Vec<i64> {
        self.score(pod, nodes)
    }
}

/// Scores each node on its own, for plugins that need no comparison.
pub fn per_node(nodes: &[&NodeInfo], f: impl Fn(&NodeInfo) -> i64) -> Vec<i64> {
    nodes.iter().map(|n| f(n)).collect()
}

/// A plugin as the registry builds it.
pub enum Plugin {
    /// A filter.
    Filter(Box<dyn FilterPlugin>),
    /// A scorer.
    Score(Box<dyn ScorePlugin>),
}

/// Builds a plugin.
pub type Factory = fn() -> Plugin;
