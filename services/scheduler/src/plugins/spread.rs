//! OwnerSpread: spreads the pods of one owner (ReplicaSet,
//! ReplicationController, ...) across nodes: a node with fewer of the
//! owner's pods scores higher.

use skiff::pb::core::v1::Pod;

use crate::framework::{MAX_SCORE, NodeInfo, ScorePlugin};

/// The plugin's name.
pub const NAME: &str = "OwnerSpread";

/// See the module doc.
pub struct OwnerSpread;

/// The uid of the pod's controlling owner.
fn owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .as_ref()?
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn siblings(owner_uid: &str, node: &NodeInfo) -> i64 {
    node.pods
        .iter()
        .filter(|p| self::owner(p) == Some(owner_uid))
        .count() as i64
}

impl ScorePlugin for OwnerSpread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let Some(uid) = owner(pod) else {
            return vec![MAX_SCORE; nodes.len()];
        };
        let counts: Vec<i64> = nodes.iter().map(|n| siblings(uid, n)).collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        if most == 0 {
            return vec![MAX_SCORE; nodes.len()];
        }
        counts
            .iter()
            .map(|c| (most - c) * MAX_SCORE / most)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{info, node, pod};
    use skiff::pb::meta::v1::OwnerReference;

    fn owned(name: &str) -> Pod {
        let mut p = pod(name, "", "");
        p.metadata
            .as_mut()
            .unwrap()
            .owner_references
            .push(OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "rs-1".into(),
                controller: Some(true),
                ..Default::default()
            });
        p
    }

    #[test]
    fn nodes_without_siblings_score_highest() {
        let mut crowded = info(node("a", "4", "8Gi"));
        crowded.add_pod(Arc::new(owned("w1")));
        crowded.add_pod(Arc::new(owned("w2")));
        let empty = info(node("b", "4", "8Gi"));
        let nodes = [&crowded, &empty];
        let p = owned("w3");
        assert_eq!(OwnerSpread.score(&p, &nodes), vec![0, MAX_SCORE]);
    }
}
