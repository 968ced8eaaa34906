//! NodeReady: only nodes whose Ready condition is True take pods.

use skiff::pb::core::v1::Pod;

use crate::framework::{FilterPlugin, NodeInfo, Reason};

/// The plugin's name.
pub const NAME: &str = "NodeReady";

/// See the module doc.
pub struct NodeReady;

impl FilterPlugin for NodeReady {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, _pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        if node.ready {
            Ok(())
        } else {
            Err("node(s) were not ready".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{info, node, pod};

    #[test]
    fn only_ready_nodes_fit() {
        let p = pod("p", "", "");
        assert!(NodeReady.filter(&p, &info(node("a", "1", "1Gi"))).is_ok());
        let mut n = node("b", "1", "1Gi");
        n.status.as_mut().unwrap().conditions[0].status = "Unknown".into();
        assert_eq!(
            NodeReady.filter(&p, &info(n)).unwrap_err(),
            "node(s) were not ready"
        );
    }
}
