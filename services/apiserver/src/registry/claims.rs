//! Service addresses and node ports: claimed before an object that needs
//! them is written, released when a write surely failed or the object goes.

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

/// A Service's cluster IP cannot change: an update without one keeps the
/// one it has.
///
/// # Errors
/// INVALID_ARGUMENT when the update changes or drops it.
pub(super) fn keep_cluster_ip<K: Strategy>(current: &K, next: &mut K) -> Result<()> {
    let held = current.cluster_ip();
    match next.cluster_ip_request() {
        Some(Some(ip)) if !held.is_empty() && ip != held => Err(ApiError::Invalid(format!(
            "spec.clusterIP: Invalid value: {ip:?}: field is immutable (it is {held:?})"
        ))),
        Some(None) if !held.is_empty() => {
            next.set_cluster_ip(&held);
            Ok(())
        }
        None if !held.is_empty() => Err(ApiError::Invalid(format!(
            "spec.clusterIP: Invalid value: \"None\": field is immutable (it is {held:?}); delete and re-create the service"
        ))),
        Some(_) if held.is_empty() && current.cluster_ip_request().is_none() => Err(ApiError::Invalid(
            "spec.type: a service without a cluster IP (headless or ExternalName) cannot get one by an update; delete and re-create it".into(),
        )),
        _ => Ok(()),
    }
}

/// As [`definite`], for the API's errors.
pub(super) fn definite_api(e: &ApiError) -> bool {
    // A timed-out store call may still have been committed.
    !matches!(
        e,
        ApiError::Unavailable(_) | ApiError::Internal(_) | ApiError::Timeout(_)
    )
}

/// The node ports an object holds.
pub(super) fn node_ports_of<K: Strategy>(obj: &K) -> Vec<u16> {
    obj.node_port_requests()
        .into_iter()
        .filter_map(|(_, np, _, _)| np)
        .collect()
}

impl Registry {
    /// Claims the cluster IP `obj` asks for (and records it in `obj`);
    /// returns what to release if the write then fails.
    pub(super) async fn claim_cluster_ip<K: Strategy>(
        &self,
        obj: &mut K,
    ) -> Result<Option<String>> {
        let Some(wanted) = obj.cluster_ip_request() else {
            return Ok(None);
        };
        let wanted = match wanted {
            Some(text) => Some(text.parse::<std::net::Ipv4Addr>().map_err(|_| {
                ApiError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {text:?}: must be a valid IPv4 address, \"None\", or empty"
                ))
            })?),
            None => None,
        };
        let owner = object_name(obj.namespace(), obj.name());
        let ip = self.allocator.claim(wanted, &owner).await?.to_string();
        obj.set_cluster_ip(&ip);
        Ok(Some(ip))
    }

    /// Gives `obj`'s ports their node ports: the ones asked for (claimed
    /// unless `current` holds them), the ones `current` gave the same port,
    /// or free ones. Returns the ports newly claimed (to release if the
    /// write fails).
    pub(super) async fn claim_node_ports<K: Strategy>(
        &self,
        current: Option<&K>,
        obj: &mut K,
    ) -> Result<Vec<u16>> {
        let requests = obj.node_port_requests();
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let held: Vec<(i32, String, u16)> = current
            .map(|c| {
                c.node_port_requests()
                    .into_iter()
                    .filter_map(|(_, np, port, proto)| np.map(|n| (port, proto, n)))
                    .collect()
            })
            .unwrap_or_default();
        let owner = object_name(obj.namespace(), obj.name());
        let (given, newly) = self.assign_node_ports(&owner, requests, &held).await?;
        for (i, np) in given {
            obj.set_node_port(i, np);
        }
        Ok(newly)
    }

    /// [`Self::claim_node_ports`] once for every kind: the node port of
    /// each of `owner`'s ports (by index), and those newly claimed.
    async fn assign_node_ports(
        &self,
        owner: &str,
        requests: Vec<(usize, Option<u16>, i32, String)>,
        held: &[(i32, String, u16)],
    ) -> Result<(Vec<(usize, u16)>, Vec<u16>)> {
        // The same node port asked for twice is refused before anything is
        // claimed.
        for (i, wanted, _, _) in &requests {
            if let Some(np) = wanted
                && requests[..*i].iter().any(|(_, w, _, _)| w == &Some(*np))
            {
                return Err(ApiError::Invalid(format!(
                    "spec.ports[{i}].nodePort: Duplicate value: {np}"
                )));
            }
        }
        let mut newly = Vec::new();
        let mut given = Vec::new();
        let mut used: Vec<u16> = Vec::new();
        for (i, wanted, port, proto) in requests {
            let field = format!("spec.ports[{i}].nodePort");
            if let Some(np) = wanted
                && used.contains(&np)
            {
                self.release_ports(&newly, owner).await;
                return Err(ApiError::Invalid(format!("{field}: Duplicate value: {np}")));
            }
            let wanted = wanted.or_else(|| {
                held.iter()
                    .find(|(p, pr, np)| *p == port && *pr == proto && !used.contains(np))
                    .map(|(_, _, np)| *np)
            });
            let assigned = match wanted {
                Some(np) if held.iter().any(|(_, _, h)| *h == np) => Ok(np),
                Some(np) => self
                    .allocator
                    .claim_port(Some(np), owner, &field)
                    .await
                    .inspect(|p| newly.push(*p)),
                None => match held.iter().find(|(p, pr, _)| *p == port && *pr == proto) {
                    Some((_, _, np)) => Ok(*np),
                    None => self
                        .allocator
                        .claim_port(None, owner, &field)
                        .await
                        .inspect(|p| newly.push(*p)),
                },
            };
            match assigned {
                Ok(np) => {
                    used.push(np);
                    given.push((i, np));
                }
                Err(e) => {
                    self.release_ports(&newly, owner).await;
                    return Err(e);
                }
            }
        }
        Ok((given, newly))
    }

    pub(super) async fn release_ports(&self, ports: &[u16], owner: &str) {
        for port in ports {
            self.allocator.release_port(*port, owner).await;
        }
    }

    /// Releases what a deleted object held (a Service's address and ports).
    pub(super) async fn release_claims<K: Strategy>(&self, gone: &K) {
        let (ip, ports) = (gone.cluster_ip(), node_ports_of(gone));
        if ip.is_empty() && ports.is_empty() {
            return;
        }
        let owner = object_name(gone.namespace(), gone.name());
        self.release_held(&owner, &ip, &ports).await;
    }

    /// [`Self::release_claims`] once for every kind.
    async fn release_held(&self, owner: &str, ip: &str, ports: &[u16]) {
        if !ip.is_empty() {
            self.allocator.release(ip, owner).await;
        }
        self.release_ports(ports, owner).await;
    }
}
