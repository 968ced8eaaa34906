//! A backend's ready endpoints: the Service port the Ingress names (by
//! name or number), then the addresses of the Endpoints subsets carrying
//! that port (Endpoints name their ports after the Service's).

use std::net::{IpAddr, SocketAddr};

use skiff::pb::core::v1::{Endpoints, Service};
use skiff_client::Store;

use crate::routes::{Backend, ServicePort};

/// The ready `ip:port`s behind `backend`; empty when the Service, its
/// port or its ready endpoints are missing.
pub fn endpoints(
    services: &Store<Service>,
    endpoints: &Store<Endpoints>,
    backend: &Backend,
) -> Vec<SocketAddr> {
    let Some(service) = services.get(&backend.namespace, &backend.service) else {
        return Vec::new();
    };
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let Some(port) = spec.ports.iter().find(|p| match &backend.port {
        ServicePort::Name(name) => &p.name == name,
        ServicePort::Number(number) => p.port == *number,
    }) else {
        return Vec::new();
    };
    if port.protocol != "TCP" && !port.protocol.is_empty() {
        return Vec::new();
    }
    let Some(found) = endpoints.get(&backend.namespace, &backend.service) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for subset in &found.subsets {
        let Some(target) = subset.ports.iter().find(|p| p.name == port.name) else {
            continue;
        };
        let Ok(target) = u16::try_from(target.port) else {
            continue;
        };
        for address in &subset.addresses {
            if let Ok(ip) = address.ip.parse::<IpAddr>() {
                out.push(SocketAddr::new(ip, target));
            }
        }
    }
    out
}
