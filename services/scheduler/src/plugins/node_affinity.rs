//! NodeAffinity: spec.nodeSelector and required node affinity must match
//! the node's labels (filter); preferred node affinity adds its terms'
//! weights (score, as PreferredNodeAffinity).

use skiff::nodes::{affinity_allows, term_matches};
use skiff::pb::core::v1::Pod;

use crate::framework::{FilterPlugin, MAX_SCORE, NodeInfo, Reason, ScorePlugin, per_node};

/// The filter's name.
pub const NAME: &str = "NodeAffinity";
/// The preferred-affinity scorer's name.
pub const PREFERRED: &str = "PreferredNodeAffinity";

/// See the module doc.
pub struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        if affinity_allows(pod, &node.node) {
            Ok(())
        } else {
            Err("node(s) didn't match Pod's node affinity/selector".into())
        }
    }
}

/// Scores nodes by the weights of the preferred terms they match.
pub struct PreferredNodeAffinity;

impl ScorePlugin for PreferredNodeAffinity {
    fn name(&self) -> &'static str {
        PREFERRED
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let Some(preferred) = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_deref())
            .and_then(|a| a.node_affinity.as_ref())
            .map(|na| &na.preferred_during_scheduling_ignored_during_execution)
        else {
            return vec![0; nodes.len()];
        };
        let total: i64 = preferred.iter().map(|p| i64::from(p.weight.max(0))).sum();
        if total == 0 {
            return vec![0; nodes.len()];
        }
        per_node(nodes, |node| {
            let matched: i64 = preferred
                .iter()
                .filter(|p| {
                    p.preference
                        .as_ref()
                        .is_some_and(|t| term_matches(t, &node.node))
                })
                .map(|p| i64::from(p.weight.max(0)))
                .sum();
            matched * MAX_SCORE / total
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{info, node, pod};
    use skiff::pb::core::v1::{
        Affinity, NodeAffinity as Na, NodeSelector, PreferredSchedulingTerm,
    };
    use skiff::pb::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm};

    fn labeled(name: &str, pairs: &[(&str, &str)]) -> Node {
        let mut n = node(name, "1", "1Gi");
        n.metadata.as_mut().unwrap().labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n
    }

    fn term(key: &str, op: &str, values: &[&str]) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn node_selector_must_match_labels() {
        let mut p = pod("p", "", "");
        p.spec
            .as_mut()
            .unwrap()
            .node_selector
            .insert("disk".into(), "ssd".into());
        assert!(
            NodeAffinity
                .filter(&p, &info(labeled("a", &[("disk", "ssd")])))
                .is_ok()
        );
        let err = NodeAffinity
            .filter(&p, &info(labeled("b", &[("disk", "hdd")])))
            .unwrap_err();
        assert!(err.contains("node affinity/selector"));
    }

    #[test]
    fn required_terms_are_ored_and_expressions_anded() {
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().affinity = Some(Box::new(Affinity {
            node_affinity: Some(Na {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        term("zone", "In", &["a", "b"]),
                        term("gpu", "Exists", &[]),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(
            NodeAffinity
                .filter(&p, &info(labeled("n1", &[("zone", "b")])))
                .is_ok()
        );
        assert!(
            NodeAffinity
                .filter(&p, &info(labeled("n2", &[("gpu", "1")])))
                .is_ok()
        );
        assert!(
            NodeAffinity
                .filter(&p, &info(labeled("n3", &[("zone", "c")])))
                .is_err()
        );
    }

    #[test]
    fn preferred_terms_score_by_weight() {
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().affinity = Some(Box::new(Affinity {
            node_affinity: Some(Na {
                preferred_during_scheduling_ignored_during_execution: vec![
                    PreferredSchedulingTerm {
                        weight: 80,
                        preference: Some(term("zone", "In", &["a"])),
                    },
                    PreferredSchedulingTerm {
                        weight: 20,
                        preference: Some(term("fast", "Exists", &[])),
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        }));
        let a = info(labeled("a", &[("zone", "a")]));
        let fast = info(labeled("b", &[("fast", "1")]));
        let none = info(labeled("c", &[]));
        assert_eq!(
            PreferredNodeAffinity.score(&p, &[&a, &fast, &none]),
            vec![80, 20, 0]
        );
    }
}
