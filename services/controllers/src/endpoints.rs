//! The Endpoints controller: for every Service with a selector, an
//! Endpoints object of the same name listing the matching pods' IPs —
//! ready ones under `addresses`, others under `notReadyAddresses` — and
//! the target ports, named ports resolved per pod.

use std::collections::BTreeMap;

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::wkt::value::Kind as ValueKind;
use skiff::{ObjectRef, Resource as _};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// See the module doc. Keys are services.
pub struct EndpointsController {
    endpoints: Api<Endpoints>,
    endpoint_store: Store<Endpoints>,
    service_store: Store<Service>,
    pod_store: Store<Pod>,
}

/// The port a service port targets on `pod`: a number, or the container
/// port of that name (None if the pod has no such port).
fn target_port(port: &skiff::pb::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match port.target_port.as_ref().and_then(|v| v.kind.as_ref()) {
        None => Some(port.port),
        Some(ValueKind::NumberValue(n)) => Some(*n as i32),
        Some(ValueKind::StringValue(s)) => match s.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .iter()
                .flat_map(|spec| spec.containers.iter())
                .flat_map(|c| c.ports.iter())
                .find(|p| &p.name == s)
                .map(|p| p.container_port),
        },
        Some(_) => None,
    }
}

/// The Endpoints subsets for `service` over `pods`: pods with the same
/// resolved ports share a subset.
pub fn subsets(service: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let publish_all = spec.publish_not_ready_addresses;
    let mut by_ports: BTreeMap<Vec<(String, i32, String)>, EndpointSubset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .map(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let ports: Option<Vec<(String, i32, String)>> = spec
            .ports
            .iter()
            .map(|p| target_port(p, pod).map(|t| (p.name.clone(), t, p.protocol.clone())))
            .collect();
        let Some(ports) = ports else { continue };
        let meta = pod.metadata.clone().unwrap_or_default();
        // A pod named in the Service's domain (`hostname` + `subdomain`,
        // as a StatefulSet's pods are) answers as HOST.SERVICE.NS.svc.
        let hostname = pod
            .spec
            .as_ref()
            .filter(|s| !s.hostname.is_empty() && s.subdomain == service.name())
            .map(|s| s.hostname.clone())
            .unwrap_or_default();
        let address = EndpointAddress {
            ip,
            hostname,
            node_name: pod
                .spec
                .as_ref()
                .map(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(ObjectReference {
                kind: "Pod".into(),
                namespace: meta.namespace,
                name: meta.name,
                uid: meta.uid,
                ..Default::default()
            }),
        };
        let subset = by_ports
            .entry(ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports: ports
                    .iter()
                    .map(|(name, port, protocol)| EndpointPort {
                        name: name.clone(),
                        port: *port,
                        protocol: protocol.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        if publish_all || skiff::pods::is_ready(pod) {
            subset.addresses.push(address);
        } else {
            subset.not_ready_addresses.push(address);
        }
    }
    let mut out: Vec<EndpointSubset> = by_ports.into_values().collect();
    for s in &mut out {
        s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
        s.not_ready_addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
    }
    out
}

impl EndpointsController {
    /// A controller over the shared caches.
    pub fn new(
        endpoints: Api<Endpoints>,
        endpoint_store: Store<Endpoints>,
        service_store: Store<Service>,
        pod_store: Store<Pod>,
    ) -> Self {
        Self {
            endpoints,
            endpoint_store,
            service_store,
            pod_store,
        }
    }

    /// The services in a pod's namespace (a pod change may concern any
    /// of them, including one it just stopped matching).
    pub fn services_in(&self, namespace: &str) -> Vec<ObjectRef> {
        self.service_store
            .list()
            .iter()
            .filter(|s| s.namespace() == namespace)
            .map(|s| s.object_ref())
            .collect()
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let existing = self.endpoint_store.get(&key.namespace, &key.name);
        let Some(service) = self.service_store.get(&key.namespace, &key.name) else {
            // The service is gone: so are its endpoints.
            if existing.is_some() {
                match self
                    .endpoints
                    .delete(DeleteRequest {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s.into()),
                }
            }
            return Ok(Action::AwaitChange);
        };
        let selector = service
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            // No selector: endpoints are the user's to manage.
            return Ok(Action::AwaitChange);
        }
        let pods = self.pod_store.list();
        let matching: Vec<&Pod> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| p.namespace() == key.namespace)
            .filter(|p| {
                p.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none())
            })
            .filter(|p| {
                let labels = p.labels();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        let subsets = subsets(&service, &matching);
        match existing {
            Some(current) if current.subsets == subsets => Ok(Action::AwaitChange),
            Some(current) => {
                let mut updated = (*current).clone();
                updated.subsets = subsets;
                match self.endpoints.update(updated).await {
                    Ok(_) => Ok(Action::AwaitChange),
                    Err(s) if s.code() == tonic::Code::Aborted => {
                        Ok(Action::Requeue(std::time::Duration::from_millis(100)))
                    }
                    Err(s) => Err(s.into()),
                }
            }
            None => {
                let endpoints = Endpoints {
                    metadata: Some(ObjectMeta {
                        name: key.name.clone(),
                        namespace: key.namespace.clone(),
                        labels: service
                            .metadata
                            .as_ref()
                            .map(|m| m.labels.clone())
                            .unwrap_or_default(),
                        ..Default::default()
                    }),
                    subsets,
                    ..Default::default()
                };
                match self.endpoints.create(endpoints).await {
                    Ok(_) => Ok(Action::AwaitChange),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {
                        Ok(Action::Requeue(std::time::Duration::from_millis(100)))
                    }
                    Err(s) => Err(s.into()),
                }
            }
        }
    }
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.service_store, key)
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the Endpoints controller: woken by Services, Endpoints (an
/// orphan's service may be gone) and the pods of their namespace.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed, keys_of};
    use futures::FutureExt as _;
    let controller = std::sync::Arc::new(EndpointsController::new(
        Api::new(shared.channel.clone()),
        shared.endpoints.store.clone(),
        shared.services.store.clone(),
        shared.pods.store.clone(),
    ));
    let by_pod = std::sync::Arc::clone(&controller);
    let (services, endpoints) = (
        shared.services.store.clone(),
        shared.endpoints.store.clone(),
    );
    Controller::new(controller)
        .for_kind(&shared.services)
        .for_kind(&shared.endpoints)
        .watches(&shared.pods, move |change| {
            by_pod.services_in(changed(change).namespace())
        })
        .run(
            move || {
                let mut keys = keys_of(&services);
                keys.extend(keys_of(&endpoints));
                keys
            },
            workers,
        )
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use skiff::wkt::Value;

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: vec![ContainerPort {
                        name: port_name.into(),
                        container_port: port,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.into(),
                conditions: vec![PodCondition {
                    r#type: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service(target: ValueKind) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: vec![ServicePort {
                    name: "web".into(),
                    port: 80,
                    protocol: "TCP".into(),
                    target_port: Some(Value { kind: Some(target) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn named_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let svc = service(ValueKind::StringValue("http".into()));
        let a = pod("a", "10.1.0.2", true, "http", 8080);
        let b = pod("b", "10.1.0.3", false, "http", 8080);
        let c = pod("c", "10.1.0.4", true, "http", 9090);
        let d = pod("d", "", true, "http", 8080);
        let e = pod("e", "10.1.0.5", true, "other", 8080);
        let subsets = subsets(&svc, &[&a, &b, &c, &d, &e]);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let s8080 = subsets.iter().find(|s| s.ports[0].port == 8080).unwrap();
        assert_eq!(s8080.addresses.len(), 1);
        assert_eq!(s8080.addresses[0].ip, "10.1.0.2");
        assert_eq!(s8080.not_ready_addresses[0].ip, "10.1.0.3");
        let s9090 = subsets.iter().find(|s| s.ports[0].port == 9090).unwrap();
        assert_eq!(s9090.addresses[0].ip, "10.1.0.4");
    }

    #[test]
    fn numeric_target_ports_apply_to_every_pod() {
        let svc = service(ValueKind::NumberValue(8443.0));
        let a = pod("a", "10.1.0.2", true, "", 1);
        let subsets = subsets(&svc, &[&a]);
        assert_eq!(subsets[0].ports[0].port, 8443);
        assert_eq!(subsets[0].ports[0].name, "web");
    }
}
