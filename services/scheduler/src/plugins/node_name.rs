//! NodeName: a pod that names its node (spec.nodeName) fits only there.

use skiff::pb::core::v1::Pod;

use crate::framework::{FilterPlugin, NodeInfo, Reason};

/// The plugin's name.
pub const NAME: &str = "NodeName";

/// See the module doc.
pub struct NodeName;

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        let wanted = pod.spec.as_ref().map_or("", |s| s.node_name.as_str());
        if wanted.is_empty() || wanted == node.name() {
            Ok(())
        } else {
            Err("node(s) didn't match the requested node name".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::{info, node, pod};

    #[test]
    fn a_named_node_is_the_only_fit() {
        let mut p = pod("p", "", "");
        assert!(NodeName.filter(&p, &info(node("a", "1", "1Gi"))).is_ok());
        p.spec.as_mut().unwrap().node_name = "b".into();
        assert!(NodeName.filter(&p, &info(node("b", "1", "1Gi"))).is_ok());
        let err = NodeName
            .filter(&p, &info(node("a", "1", "1Gi")))
            .unwrap_err();
        assert!(err.contains("requested node name"));
    }
}
