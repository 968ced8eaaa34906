//! NodePorts: a pod asking for a host port fits only where no other pod
//! holds that port (same protocol and host IP, or a wildcard IP).

use skiff::pb::core::v1::{ContainerPort, Pod};

use crate::framework::{FilterPlugin, NodeInfo, Reason};

/// The plugin's name.
pub const NAME: &str = "NodePorts";

/// See the module doc.
pub struct NodePorts;

fn host_ports(pod: &Pod) -> impl Iterator<Item = &ContainerPort> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter()))
        .flat_map(|c| c.ports.iter())
        .filter(|p| p.host_port > 0)
}

fn conflict(a: &ContainerPort, b: &ContainerPort) -> bool {
    let proto = |p: &ContainerPort| {
        if p.protocol.is_empty() {
            "TCP".to_string()
        } else {
            p.protocol.clone()
        }
    };
    let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
    a.host_port == b.host_port
        && proto(a) == proto(b)
        && (wildcard(&a.host_ip) || wildcard(&b.host_ip) || a.host_ip == b.host_ip)
}

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        let wanted: Vec<&ContainerPort> = host_ports(pod).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        for other in &node.pods {
            for used in host_ports(other) {
                if wanted.iter().any(|w| conflict(w, used)) {
                    return Err("node(s) didn't have free ports for the requested pod ports".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{info, node, pod};

    fn with_host_port(name: &str, port: i32) -> Pod {
        let mut p = pod(name, "", "");
        p.spec.as_mut().unwrap().containers[0]
            .ports
            .push(ContainerPort {
                container_port: 80,
                host_port: port,
                protocol: "TCP".into(),
                ..Default::default()
            });
        p
    }

    #[test]
    fn a_taken_host_port_does_not_fit() {
        let mut n = info(node("a", "1", "1Gi"));
        n.add_pod(Arc::new(with_host_port("q", 8080)));
        assert!(NodePorts.filter(&with_host_port("p", 8081), &n).is_ok());
        assert!(
            NodePorts
                .filter(&with_host_port("p", 8080), &n)
                .unwrap_err()
                .contains("free ports")
        );
    }
}
