//! Facts about pods (and the Services in front of them) every component
//! reads the same way.

use crate::pb::core::v1::Pod;

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// The IPv4 addresses in a Service's `status.loadBalancer.ingress` (what
/// the Service controller assigned and the proxies serve).
pub fn load_balancer_ips(service: &crate::pb::core::v1::Service) -> Vec<std::net::Ipv4Addr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .map(|lb| {
            lb.ingress
                .iter()
                .filter_map(|i| i.ip.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
