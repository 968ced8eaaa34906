//! TaintToleration: a node's NoSchedule and NoExecute taints keep out pods
//! that do not tolerate them (filter); PreferNoSchedule taints count
//! against a node (score, as PreferNoSchedule).

use skiff::pb::core::v1::{Pod, Taint, Toleration};

use crate::framework::{FilterPlugin, MAX_SCORE, NodeInfo, Reason, ScorePlugin, per_node};

/// The filter's name.
pub const NAME: &str = "TaintToleration";
/// The scorer's name.
pub const PREFER_NO_SCHEDULE: &str = "PreferNoScheduleTaints";

/// See the module doc.
pub struct TaintToleration;

pub use skiff::nodes::tolerates;

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec.as_ref().map_or(&[], |s| s.tolerations.as_slice())
}

fn taints(node: &NodeInfo) -> &[Taint] {
    node.node.spec.as_ref().map_or(&[], |s| s.taints.as_slice())
}

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        match skiff::nodes::untolerated_taint(pod, &node.node) {
            Some(taint) => Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key, taint.value
            )),
            None => Ok(()),
        }
    }
}

/// Scores down nodes with PreferNoSchedule taints the pod does not
/// tolerate.
pub struct PreferNoSchedule;

impl ScorePlugin for PreferNoSchedule {
    fn name(&self) -> &'static str {
        PREFER_NO_SCHEDULE
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        per_node(nodes, |node| {
            let count = taints(node)
                .iter()
                .filter(|taint| {
                    taint.effect == "PreferNoSchedule"
                        && !tolerations(pod).iter().any(|t| tolerates(t, taint))
                })
                .count() as i64;
            (MAX_SCORE - count * 20).max(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{info, node, pod};

    fn tainted(effect: &str) -> NodeInfo {
        let mut n = node("a", "1", "1Gi");
        n.spec.as_mut().unwrap().taints.push(Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: effect.into(),
            ..Default::default()
        });
        info(n)
    }

    #[test]
    fn untolerated_no_schedule_taints_keep_pods_out() {
        let mut p = pod("p", "", "");
        let err = TaintToleration
            .filter(&p, &tainted("NoSchedule"))
            .unwrap_err();
        assert_eq!(err, "node(s) had untolerated taint {dedicated: db}");
        assert!(TaintToleration.filter(&p, &tainted("NoExecute")).is_err());
        assert!(
            TaintToleration
                .filter(&p, &tainted("PreferNoSchedule"))
                .is_ok()
        );
        p.spec.as_mut().unwrap().tolerations.push(Toleration {
            key: "dedicated".into(),
            operator: "Equal".into(),
            value: "db".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        assert!(TaintToleration.filter(&p, &tainted("NoSchedule")).is_ok());
        assert!(
            TaintToleration.filter(&p, &tainted("NoExecute")).is_err(),
            "effect must match"
        );
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score() {
        let p = pod("p", "", "");
        let clean = info(node("b", "1", "1Gi"));
        let tainted = tainted("PreferNoSchedule");
        let s = PreferNoSchedule.score(&p, &[&tainted, &clean]);
        assert!(s[0] < s[1], "{s:?}");
    }
}
