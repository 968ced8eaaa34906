//! NodeUnschedulable: a cordoned node (spec.unschedulable) takes no new
//! pods, unless the pod tolerates the unschedulable taint.

use skiff::pb::core::v1::Pod;

use crate::framework::{FilterPlugin, NodeInfo, Reason};

/// The plugin's name.
pub const NAME: &str = "NodeUnschedulable";

/// The taint key a cordoned node is treated as having.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// See the module doc.
pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        let cordoned = node.node.spec.as_ref().is_some_and(|s| s.unschedulable);
        let tolerated = pod.spec.as_ref().is_some_and(|s| {
            s.tolerations.iter().any(|t| {
                (t.key == UNSCHEDULABLE_TAINT || (t.key.is_empty() && t.operator == "Exists"))
                    && (t.effect.is_empty() || t.effect == "NoSchedule")
            })
        });
        if cordoned && !tolerated {
            Err("node(s) were unschedulable".into())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{info, node, pod};
    use skiff::pb::core::v1::Toleration;

    #[test]
    fn a_cordoned_node_fits_only_tolerating_pods() {
        let mut n = node("a", "1", "1Gi");
        n.spec.as_mut().unwrap().unschedulable = true;
        let mut p = pod("p", "", "");
        assert_eq!(
            NodeUnschedulable.filter(&p, &info(n.clone())).unwrap_err(),
            "node(s) were unschedulable"
        );
        p.spec.as_mut().unwrap().tolerations.push(Toleration {
            key: UNSCHEDULABLE_TAINT.into(),
            operator: "Exists".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
        assert!(NodeUnschedulable.filter(&p, &info(n)).is_ok());
    }
}
