//! The `kubernetes` Service of the `default` namespace: how pods find the
//! API server (client libraries' in-cluster config reads
//! `KUBERNETES_SERVICE_HOST`/`PORT`, which the agent sets from it). Its
//! cluster IP is the first of the service range (the address the serving
//! certificate names), port 443 (`https`). Its Endpoints are the API
//! servers alive, as kube-apiserver's lease endpoint reconciler keeps them:
//! each server renews a lease of its own (`/skiff/apiservers/IP:PORT`,
//! the time it was renewed) every [`RENEW`], and writes the Endpoints as
//! the servers whose lease is younger than [`EXPIRY`]; a stopping server
//! takes its own out. A deleted Service comes back at the next round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff::Resource as _;
use skiff::pb::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use skiff::wkt::{Value, value::Kind as ValueKind};
use skiff_store::ListOptions;

use super::Registry;
use crate::error::{ApiError, Result};

/// The Service's namespace and name.
pub const NAMESPACE: &str = "default";
/// See [`NAMESPACE`].
pub const NAME: &str = "kubernetes";
/// The port pods reach it on.
pub const PORT: i32 = 443;
/// How often a server renews its lease and rewrites the Endpoints.
pub const RENEW: Duration = Duration::from_secs(10);
/// A lease older than this is a server gone (Kubernetes: 15 s).
const EXPIRY: Duration = Duration::from_secs(30);
/// Where the leases are (outside `/registry/`: no object's key).
const LEASES: &str = "/skiff/apiservers/";

impl Registry {
    /// One round for the server at `advertise` (its address as pods reach
    /// it): renews its lease, creates the Service if it is missing, and
    /// writes the Endpoints as the servers alive.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub async fn reconcile_master(&self, advertise: SocketAddr) -> Result<()> {
        let now = unix_now();
        let key = format!("{LEASES}{advertise}");
        let value = Bytes::from(now.to_string());
        match self.store.update(&key, value.clone(), None).await {
            Ok(_) => {}
            Err(skiff_store::Error::NotFound { .. }) => {
                match self.store.create(&key, value).await {
                    Ok(_) | Err(skiff_store::Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.ensure_master_service(advertise.port()).await?;
        let alive = self.servers_alive(now).await?;
        self.write_master_endpoints(&alive).await
    }

    /// Takes the server at `advertise` out of the Endpoints (it is
    /// stopping): its lease goes, and the Endpoints are written without it.
    ///
    /// # Errors
    /// The store cannot be read or written.
    pub async fn release_master(&self, advertise: SocketAddr) -> Result<()> {
        match self
            .store
            .delete(&format!("{LEASES}{advertise}"), None)
            .await
        {
            Ok(_) | Err(skiff_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let alive = self.servers_alive(unix_now()).await?;
        self.write_master_endpoints(&alive).await
    }

    /// Creates the `kubernetes` Service when it is missing (at the range's
    /// first address when it is free).
    async fn ensure_master_service(&self, target: u16) -> Result<()> {
        let key = skiff::keys::object::<Service>(NAMESPACE, NAME);
        if self.read::<Service>(&key).await?.is_some() {
            return Ok(());
        }
        let first = self.allocator.range.first().to_string();
        match self.create(master_service(target, &first)).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            // A cluster older than this Service gave its address to
            // another: any free one, which the serving certificate lacks.
            Err(ApiError::Invalid(why)) if why.contains("already allocated") => {
                tracing::error!(
                    %why,
                    "the kubernetes Service cannot have {first}: it gets another address, which in-cluster clients reach only if the serving certificate names it (--tls-san)"
                );
                match self.create(master_service(target, "")).await {
                    Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The servers whose lease is fresh, by port; stale leases are
    /// deleted on the way.
    async fn servers_alive(&self, now: i64) -> Result<BTreeMap<u16, Vec<String>>> {
        let leases = self
            .store
            .list(ListOptions {
                prefix: LEASES.into(),
                ..Default::default()
            })
            .await?;
        let mut alive: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for kv in leases.kvs {
            let renewed: i64 = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let server = kv.key.trim_start_matches(LEASES);
            match server.parse::<SocketAddr>() {
                Ok(addr) if now - renewed <= EXPIRY.as_secs() as i64 => {
                    alive
                        .entry(addr.port())
                        .or_default()
                        .push(addr.ip().to_string());
                }
                _ => {
                    // Gone (or not a lease): out, unless renewed meanwhile.
                    let _ = self.store.delete(&kv.key, Some(kv.mod_revision)).await;
                }
            }
        }
        Ok(alive)
    }

    /// Writes the Endpoints as `alive` (one subset per port) when they
    /// differ (a write that lost a race is left to the next round).
    async fn write_master_endpoints(&self, alive: &BTreeMap<u16, Vec<String>>) -> Result<()> {
        let key = skiff::keys::object::<Endpoints>(NAMESPACE, NAME);
        let mut next = master_endpoints(alive);
        let written = match self.read::<Endpoints>(&key).await? {
            None if alive.is_empty() => return Ok(()),
            None => self.create(next).await,
            Some((current, _)) if current.subsets == next.subsets => return Ok(()),
            Some((current, _)) => {
                *next.metadata_mut() = current.metadata.clone().unwrap_or_default();
                self.update(next).await
            }
        };
        match written {
            Ok(_) | Err(ApiError::AlreadyExists { .. } | ApiError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Renews the lease of the server at `advertise` and keeps the Service and
/// its Endpoints every [`RENEW`] until aborted; errors are logged and the
/// next round tries again.
pub fn spawn_reconciler(
    registry: Arc<Registry>,
    advertise: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = registry.reconcile_master(advertise).await {
                tracing::warn!(error = %e, "keeping the kubernetes Service's endpoints");
            }
        }
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The Service as a new cluster gets it, at `cluster_ip` (empty: any).
fn master_service(target: u16, cluster_ip: &str) -> Service {
    let mut service = Service {
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ip.into(),
            ports: vec![ServicePort {
                name: "https".into(),
                protocol: "TCP".into(),
                port: PORT,
                target_port: Some(Value {
                    kind: Some(ValueKind::NumberValue(f64::from(target))),
                }),
                ..Default::default()
            }],
            r#type: "ClusterIP".into(),
            session_affinity: "None".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let meta = service.metadata_mut();
    meta.namespace = NAMESPACE.into();
    meta.name = NAME.into();
    meta.labels.insert("component".into(), "apiserver".into());
    meta.labels.insert("provider".into(), "kubernetes".into());
    service
}

fn master_endpoints(alive: &BTreeMap<u16, Vec<String>>) -> Endpoints {
    let subsets = alive
        .iter()
        .map(|(port, ips)| {
            let mut ips = ips.clone();
            ips.sort();
            EndpointSubset {
                addresses: ips
                    .into_iter()
                    .map(|ip| EndpointAddress {
                        ip,
                        ..Default::default()
                    })
                    .collect(),
                ports: vec![EndpointPort {
                    name: "https".into(),
                    port: i32::from(*port),
                    protocol: "TCP".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    let mut endpoints = Endpoints {
        subsets,
        ..Default::default()
    };
    let meta = endpoints.metadata_mut();
    meta.namespace = NAMESPACE.into();
    meta.name = NAME.into();
    endpoints
}

#[cfg(test)]
mod tests;
