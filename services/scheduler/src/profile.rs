//! Profiles: which plugins run and each scorer's weight (Kubernetes'
//! default profile for the plugins Skiff has, or a JSON file), built from
//! the plugin registry.

use skiff::pb::core::v1::Pod;

use crate::framework::{FilterPlugin, MAX_SCORE, NodeInfo, Plugin, Prepared, Reason, ScorePlugin};
use crate::plugins;

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
            plugins::topology_spread::NAME,
            plugins::inter_pod_affinity::NAME,
        ];
        let scores = [
            (plugins::resources_fit::LEAST_ALLOCATED, 1),
            (plugins::resources_fit::BALANCED_ALLOCATION, 1),
            (plugins::spread::NAME, 2),
            (plugins::node_affinity::PREFERRED, 2),
            (plugins::taint_toleration::PREFER_NO_SCHEDULE, 3),
            (plugins::topology_spread::SCORE, 2),
            (plugins::inter_pod_affinity::PREFERRED, 2),
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
        let registry = plugins::registry();
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

    /// Runs the filters' PreFilter over the whole cluster, once per pod.
    pub fn prepare(&self, pod: &Pod, all: &[&NodeInfo]) -> Vec<Option<Prepared>> {
        self.filters
            .iter()
            .map(|f| f.pre_filter(pod, all))
            .collect()
    }

    /// Runs the filters with what [`Self::prepare`] made; the first
    /// failing one's reason.
    ///
    /// # Errors
    /// Why the node does not fit.
    pub fn filter_with(
        &self,
        pod: &Pod,
        node: &NodeInfo,
        prepared: &[Option<Prepared>],
    ) -> Result<(), Reason> {
        self.filters
            .iter()
            .zip(prepared)
            .try_for_each(|(f, state)| match state {
                Some(state) => f.filter_prepared(pod, node, state),
                None => f.filter(pod, node),
            })
    }

    /// Runs the filters for a node on its own (the node is the whole
    /// cluster they see: plugins counting pods across nodes see only its
    /// pods); the first failing one's reason. The scheduler itself uses
    /// [`Self::prepare`] and [`Self::filter_with`].
    ///
    /// # Errors
    /// Why the node does not fit.
    pub fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        let prepared = self.prepare(pod, &[node]);
        self.filter_with(pod, node, &prepared)
    }

    /// The weighted total score of each of `nodes` (those that fit, out
    /// of `all`), in order.
    pub fn score(&self, pod: &Pod, nodes: &[&NodeInfo], all: &[&NodeInfo]) -> Vec<i64> {
        let mut totals = vec![0; nodes.len()];
        for (plugin, weight) in &self.scores {
            for (total, score) in totals.iter_mut().zip(plugin.score_among(pod, nodes, all)) {
                *total += score.clamp(0, MAX_SCORE) * weight;
            }
        }
        totals
    }
}
