//! The plugin framework, as Kubernetes' scheduler framework: Filter
//! plugins say whether a pod fits a node (and why not), Score plugins rank
//! the nodes that fit; a profile names the plugins and their weights.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::pb::core::v1::{Node, Pod};
use skiff::quantity::Quantity;

use crate::plugins;

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
            let r = c.resources.clone().unwrap_or_default();
            let mut merged = r.limits.clone();
            merged.extend(r.requests);
            Self::from_map(&merged)
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
    /// The node.
    pub node: Arc<Node>,
    /// Pods on it (bound, or assumed while their binding is in flight).
    pub pods: Vec<Arc<Pod>>,
    /// The sum of their requests.
    pub requested: Resources,
    /// Its allocatable resources.
    pub allocatable: Resources,
}

impl NodeInfo {
    /// A node with nothing on it yet.
    pub fn new(node: Arc<Node>) -> Self {
        let allocatable = node
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
        Self {
            node,
            pods: Vec::new(),
            requested: Resources::default(),
            allocatable,
        }
    }

    /// Counts a pod against the node.
    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.requested = self.requested.plus(Resources::of_pod(&pod));
        self.pods.push(pod);
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.as_ref().map_or("", |m| m.name.as_str())
    }
}

/// Why a node does not fit a pod: a short reason, counted per reason in
/// FailedScheduling events ("2 Insufficient cpu").
pub type Reason = String;

/// Decides whether a pod may run on a node.
pub trait FilterPlugin: Send + Sync {
    /// The plugin's registered name.
    fn name(&self) -> &'static str;
    /// Ok if `pod` fits `node`, else why not.
    ///
    /// # Errors
    /// The reason the node does not fit.
    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason>;
}

/// Ranks the nodes that fit, each from 0 to [`MAX_SCORE`].
pub trait ScorePlugin: Send + Sync {
    /// The plugin's registered name.
    fn name(&self) -> &'static str;
    /// How good each of `nodes` (all that passed the filters) is for
    /// `pod`, in order. All at once, so that plugins comparing nodes (such
    /// as spreading) prepare once per pod.
    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64>;
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

/// Every plugin Skiff knows, by name.
pub fn registry() -> BTreeMap<&'static str, Factory> {
    let mut r: BTreeMap<&'static str, Factory> = BTreeMap::new();
    r.insert(plugins::node_name::NAME, || {
        Plugin::Filter(Box::new(plugins::node_name::NodeName))
    });
    r.insert(plugins::node_unschedulable::NAME, || {
        Plugin::Filter(Box::new(plugins::node_unschedulable::NodeUnschedulable))
    });
    r.insert(plugins::node_ready::NAME, || {
        Plugin::Filter(Box::new(plugins::node_ready::NodeReady))
    });
    r.insert(plugins::resources_fit::NAME, || {
        Plugin::Filter(Box::new(plugins::resources_fit::NodeResourcesFit))
    });
    r.insert(plugins::node_affinity::NAME, || {
        Plugin::Filter(Box::new(plugins::node_affinity::NodeAffinity))
    });
    r.insert(plugins::taint_toleration::NAME, || {
        Plugin::Filter(Box::new(plugins::taint_toleration::TaintToleration))
    });
    r.insert(plugins::node_ports::NAME, || {
        Plugin::Filter(Box::new(plugins::node_ports::NodePorts))
    });
    r.insert(plugins::resources_fit::LEAST_ALLOCATED, || {
        Plugin::Score(Box::new(plugins::resources_fit::LeastAllocated))
    });
    r.insert(plugins::resources_fit::BALANCED_ALLOCATION, || {
        Plugin::Score(Box::new(plugins::resources_fit::BalancedAllocation))
    });
    r.insert(plugins::spread::NAME, || {
        Plugin::Score(Box::new(plugins::spread::OwnerSpread))
    });
    r.insert(plugins::node_affinity::PREFERRED, || {
        Plugin::Score(Box::new(plugins::node_affinity::PreferredNodeAffinity))
    });
    r.insert(plugins::taint_toleration::PREFER_NO_SCHEDULE, || {
        Plugin::Score(Box::new(plugins::taint_toleration::PreferNoSchedule))
    });
    r
}

/// Which plugins run, and each scorer's weight. Loaded from a JSON file:
/// `{"filters": ["NodeName", ...], "scores": [{"name": "LeastAllocated", "weight": 1}, ...]}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ProfileConfig {
    /// Filter plugins, in order.
    pub filters: Vec<String>,
    /// Score plugins and their weights.
    pub scores: Vec<WeightedName>,
}

/// A score plugin's name and weight.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct WeightedName {
    /// Registered plugin name.
    pub name: String,
    /// Multiplier of its 0–100 score.
    #[serde(default = "one")]
    pub weight: i64,
}

fn one() -> i64 {
    1
}

impl Default for ProfileConfig {
    /// Kubernetes' default profile, for the plugins Skiff has.
    fn default() -> Self {
        let filters = [
            plugins::node_name::NAME,
            plugins::node_unschedulable::NAME,
            plugins::node_ready::NAME,
            plugins::node_affinity::NAME,
            plugins::taint_toleration::NAME,
            plugins::node_ports::NAME,
            plugins::resources_fit::NAME,
        ];
        let scores = [
            (plugins::resources_fit::LEAST_ALLOCATED, 1),
            (plugins::resources_fit::BALANCED_ALLOCATION, 1),
            (plugins::spread::NAME, 2),
            (plugins::node_affinity::PREFERRED, 2),
            (plugins::taint_toleration::PREFER_NO_SCHEDULE, 3),
        ];
        Self {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            scores: scores
                .iter()
                .map(|(name, weight)| WeightedName {
                    name: name.to_string(),
                    weight: *weight,
                })
                .collect(),
        }
    }
}

/// Errors building a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A name the registry does not know.
    #[error("unknown scheduler plugin {name:?}; known plugins: {known}")]
    Unknown {
        /// The name.
        name: String,
        /// Every registered name.
        known: String,
    },
    /// A filter listed as a scorer or the other way round.
    #[error("plugin {0:?} is not a {1} plugin")]
    WrongKind(String, &'static str),
    /// The file could not be read or parsed.
    #[error("reading scheduler profile {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A built profile: the filters and weighted scorers to run.
pub struct Profile {
    /// Filters, in order.
    pub filters: Vec<Box<dyn FilterPlugin>>,
    /// Scorers and their weights.
    pub scores: Vec<(Box<dyn ScorePlugin>, i64)>,
}

impl Profile {
    /// Builds the plugins `config` names.
    ///
    /// # Errors
    /// Unknown names, or a plugin of the wrong kind.
    pub fn build(config: &ProfileConfig) -> Result<Self, ProfileError> {
        let registry = registry();
        let known = || registry.keys().copied().collect::<Vec<_>>().join(", ");
        let make = |name: &str| {
            registry
                .get(name)
                .map(|f| f())
                .ok_or_else(|| ProfileError::Unknown {
                    name: name.to_string(),
                    known: known(),
                })
        };
        let mut filters = Vec::new();
        for name in &config.filters {
            match make(name)? {
                Plugin::Filter(f) => filters.push(f),
                Plugin::Score(_) => return Err(ProfileError::WrongKind(name.clone(), "filter")),
            }
        }
        let mut scores = Vec::new();
        for w in &config.scores {
            match make(&w.name)? {
                Plugin::Score(s) => scores.push((s, w.weight)),
                Plugin::Filter(_) => return Err(ProfileError::WrongKind(w.name.clone(), "score")),
            }
        }
        Ok(Self { filters, scores })
    }

    /// Loads a profile config from a JSON file.
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn load(path: &std::path::Path) -> Result<ProfileConfig, ProfileError> {
        let err = |reason: String| ProfileError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// Runs the filters; the first failing one's reason.
    ///
    /// # Errors
    /// Why the node does not fit.
    pub fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        self.filters.iter().try_for_each(|f| f.filter(pod, node))
    }

    /// The weighted total score of each of `nodes`, in order.
    pub fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let mut totals = vec![0; nodes.len()];
        for (plugin, weight) in &self.scores {
            for (total, score) in totals.iter_mut().zip(plugin.score(pod, nodes)) {
                *total += score.clamp(0, MAX_SCORE) * weight;
            }
        }
        totals
    }
}
