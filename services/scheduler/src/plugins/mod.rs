//! The scheduler's plugins, one module each, with `NAME` as registered,
//! and their [`registry`] by name.

pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_ready;
pub mod node_unschedulable;
pub mod resources_fit;
pub mod spread;
pub mod taint_toleration;
pub mod topology_spread;
pub mod volume_binding;

use std::collections::BTreeMap;

use crate::framework::{Factory, Plugin};

/// Every plugin Skiff knows, by name.
pub fn registry() -> BTreeMap<&'static str, Factory> {
    let mut r: BTreeMap<&'static str, Factory> = BTreeMap::new();
    r.insert(node_name::NAME, || {
        Plugin::Filter(Box::new(node_name::NodeName))
    });
    r.insert(node_unschedulable::NAME, || {
        Plugin::Filter(Box::new(node_unschedulable::NodeUnschedulable))
    });
    r.insert(node_ready::NAME, || {
        Plugin::Filter(Box::new(node_ready::NodeReady))
    });
    r.insert(resources_fit::NAME, || {
        Plugin::Filter(Box::new(resources_fit::NodeResourcesFit))
    });
    r.insert(node_affinity::NAME, || {
        Plugin::Filter(Box::new(node_affinity::NodeAffinity))
    });
    r.insert(taint_toleration::NAME, || {
        Plugin::Filter(Box::new(taint_toleration::TaintToleration))
    });
    r.insert(node_ports::NAME, || {
        Plugin::Filter(Box::new(node_ports::NodePorts))
    });
    r.insert(inter_pod_affinity::NAME, || {
        Plugin::Filter(Box::new(inter_pod_affinity::InterPodAffinity))
    });
    r.insert(topology_spread::NAME, || {
        Plugin::Filter(Box::new(topology_spread::PodTopologySpread))
    });
    r.insert(inter_pod_affinity::PREFERRED, || {
        Plugin::Score(Box::new(inter_pod_affinity::PreferredInterPodAffinity))
    });
    r.insert(topology_spread::SCORE, || {
        Plugin::Score(Box::new(topology_spread::PodTopologySpreadScore))
    });
    r.insert(resources_fit::LEAST_ALLOCATED, || {
        Plugin::Score(Box::new(resources_fit::LeastAllocated))
    });
    r.insert(resources_fit::BALANCED_ALLOCATION, || {
        Plugin::Score(Box::new(resources_fit::BalancedAllocation))
    });
    r.insert(spread::NAME, || {
        Plugin::Score(Box::new(spread::OwnerSpread))
    });
    r.insert(node_affinity::PREFERRED, || {
        Plugin::Score(Box::new(node_affinity::PreferredNodeAffinity))
    });
    r.insert(taint_toleration::PREFER_NO_SCHEDULE, || {
        Plugin::Score(Box::new(taint_toleration::PreferNoSchedule))
    });
    r
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for plugin tests.
    use std::sync::Arc;

    use skiff::pb::core::v1::{
        Container, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use skiff::pb::meta::v1::ObjectMeta;

    use crate::framework::NodeInfo;

    pub fn node(name: &str, cpu: &str, memory: &str) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: [("cpu", cpu), ("memory", memory), ("pods", "110")]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                conditions: vec![NodeCondition {
                    r#type: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn info(node: Node) -> NodeInfo {
        NodeInfo::new(Arc::new(node))
    }

    pub fn pod(name: &str, cpu: &str, memory: &str) -> Pod {
        let requests = [("cpu", cpu), ("memory", memory)]
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: "x".into(),
                    resources: Some(ResourceRequirements {
                        requests,
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
