//! Service cluster IPs and node ports from configured ranges. Each
//! allocated address or port is a key of its own in the store
//! (`/registry/allocations/serviceips/<ip>`,
//! `/registry/allocations/nodeports/<port>`, holding the owner
//! `namespace/name`), claimed with a create-if-absent:
//! two API servers can never hand out the same address, allocations
//! survive restarts, and a Service's deletion releases its key. A claim
//! left by a crash between the claim and the Service's write is repaired
//! at startup (keys no Service holds are released).

use std::net::Ipv4Addr;
use std::sync::Arc;

use bytes::Bytes;
use skiff_store::{ListOptions, Store};

use crate::error::ApiError;

/// Where address claims live (no kind's objects are under it).
const PREFIX: &str = "/registry/allocations/serviceips/";
/// Where node port claims live.
const PORTS_PREFIX: &str = "/registry/allocations/nodeports/";

/// Kubernetes' default node port range.
pub const DEFAULT_NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// How many random tries before a sequential scan.
const RANDOM_TRIES: usize = 32;

/// An IPv4 range in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub base: Ipv4Addr,
    /// The prefix length.
    pub bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (like 10.43.0.0/16)"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let bits: u8 = bits.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: the prefix must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - bits);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(ip) & mask),
            bits,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.bits)
    }
}

impl Cidr {
    /// Addresses that may be handed out: all but the network and broadcast
    /// addresses.
    fn usable(&self) -> u32 {
        (1u32 << (32 - self.bits)) - 2
    }

    /// The first address: the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        self.nth(0)
    }

    fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1 + i)
    }

    /// Whether `ip` may be handed out.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.base));
        (1..=self.usable()).contains(&offset)
    }
}

/// Hands out cluster IPs and node ports.
pub struct Allocator {
    store: Arc<dyn Store>,
    /// The service range.
    pub range: Cidr,
    /// The node port range.
    pub ports: std::ops::RangeInclusive<u16>,
}

fn key(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

impl Allocator {
    /// An allocator over `range` and `ports`, keeping its claims in
    /// `store`.
    ///
    /// # Panics
    /// An empty port range (the CLI refuses one).
    pub fn new(store: Arc<dyn Store>, range: Cidr, ports: std::ops::RangeInclusive<u16>) -> Self {
        assert!(!ports.is_empty(), "an empty node port range");
        Self {
            store,
            range,
            ports,
        }
    }

    /// Claims node port `wanted`, or a free one when None, for `owner`
    /// (`field` names the port in messages: `spec.ports[0].nodePort`).
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the port when it is outside the range or
    /// taken; UNAVAILABLE when the range is full.
    pub async fn claim_port(
        &self,
        wanted: Option<u16>,
        owner: &str,
        field: &str,
    ) -> Result<u16, ApiError> {
        let value = Bytes::from(owner.to_string());
        let (lo, hi) = (*self.ports.start(), *self.ports.end());
        if let Some(port) = wanted {
            if !self.ports.contains(&port) {
                return Err(ApiError::Invalid(format!(
                    "{field}: Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
                )));
            }
            return match self
                .store
                .create(&format!("{PORTS_PREFIX}{port}"), value)
                .await
            {
                Ok(_) => Ok(port),
                Err(skiff_store::Error::AlreadyExists { .. }) => Err(ApiError::Invalid(format!(
                    "{field}: Invalid value: {port}: provided port is already allocated"
                ))),
                Err(e) => Err(e.into()),
            };
        }
        let size = u32::from(hi - lo) + 1;
        let start = uuid::Uuid::new_v4().as_u128() as u32 % size;
        let candidates = (0..RANDOM_TRIES as u32)
            .map(|_| uuid::Uuid::new_v4().as_u128() as u32 % size)
            .chain((0..size).map(|i| (start + i) % size));
        for i in candidates {
            let port = lo + i as u16;
            match self
                .store
                .create(&format!("{PORTS_PREFIX}{port}"), value.clone())
                .await
            {
                Ok(_) => return Ok(port),
                Err(skiff_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Unavailable(format!(
            "no node port is free in {lo}-{hi}: delete NodePort services or widen the range"
        )))
    }

    /// Releases a node port `owner` holds (a missing claim, or one that
    /// is someone else's, is left alone).
    pub async fn release_port(&self, port: u16, owner: &str) {
        self.release_key(&format!("{PORTS_PREFIX}{port}"), owner)
            .await;
    }

    /// Deletes a claim if `owner` holds it, at the version read (so a claim
    /// taken by someone else meanwhile stays).
    async fn release_key(&self, key: &str, owner: &str) {
        let held = match self.store.get(key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%key, error = %e, "reading a claim to release it");
                return;
            }
        };
        if held.value.as_ref() != owner.as_bytes() {
            return;
        }
        match self.store.delete(key, Some(held.mod_revision)).await {
            Ok(_)
            | Err(skiff_store::Error::NotFound { .. } | skiff_store::Error::Conflict { .. }) => {}
            Err(e) => tracing::warn!(%key, error = %e, "releasing a claim"),
        }
    }

    /// Claims `wanted`, or a free address when None, for `owner`.
    ///
    /// # Errors
    /// INVALID_ARGUMENT naming the address when it is outside the range or
    /// taken; UNAVAILABLE when the range is full.
    pub async fn claim(&self, wanted: Option<Ipv4Addr>, owner: &str) -> Result<Ipv4Addr, ApiError> {
        let value = Bytes::from(owner.to_string());
        if let Some(ip) = wanted {
            if !self.range.contains(ip) {
                return Err(ApiError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: provided IP is not in the valid range. The range of valid IPs is {}",
                    self.range
                )));
            }
            return match self.store.create(&key(ip), value).await {
                Ok(_) => Ok(ip),
                Err(skiff_store::Error::AlreadyExists { .. }) => Err(ApiError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: provided IP is already allocated"
                ))),
                Err(e) => Err(e.into()),
            };
        }
        // The range's first address is the `kubernetes` Service's (which
        // asks for it): never handed out at random, as in Kubernetes.
        let size = self.range.usable();
        let reserved = u32::from(size > 1);
        let free = size - reserved;
        let start = uuid::Uuid::new_v4().as_u128() as u32 % free;
        let candidates = (0..RANDOM_TRIES as u32)
            .map(|_| uuid::Uuid::new_v4().as_u128() as u32 % free + reserved)
            .chain((0..free).map(|i| (start + i) % free + reserved));
        for i in candidates {
            let ip = self.range.nth(i);
            match self.store.create(&key(ip), value.clone()).await {
                Ok(_) => return Ok(ip),
                Err(skiff_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Unavailable(format!(
            "no cluster IP is free in {}: delete services or widen --service-cidr",
            self.range
        )))
    }

    /// Releases an address `owner` holds (a missing claim, or one that is
    /// someone else's, is left alone).
    pub async fn release(&self, ip: &str, owner: &str) {
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            return;
        };
        self.release_key(&key(ip), owner).await;
    }

    /// Releases every claim no Service holds (left by a crash between a
    /// claim and the Service's write). `held` are the addresses and node
    /// ports (as text) the Services have.
    ///
    /// # Errors
    /// The store could not be listed.
    pub async fn repair(
        &self,
        held: &std::collections::HashSet<String>,
        as_of: i64,
    ) -> Result<usize, ApiError> {
        let mut released = 0;
        for prefix in [PREFIX, PORTS_PREFIX] {
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list(ListOptions {
                        prefix: prefix.to_string(),
                        start_after: after.clone(),
                        limit: 500,
                        revision: 0,
                    })
                    .await?;
                for kv in &page.kvs {
                    // Claims newer than the Services read may belong to a
                    // create in flight (on another API server): left alone.
                    if kv.create_revision <= as_of
                        && !held.contains(kv.key.trim_start_matches(prefix))
                    {
                        match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                            Ok(_) => released += 1,
                            Err(
                                skiff_store::Error::NotFound { .. }
                                | skiff_store::Error::Conflict { .. },
                            ) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                if !page.more {
                    break;
                }
                after = page.kvs.last().map(|kv| kv.key.clone());
            }
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_bound_their_addresses() {
        let c: Cidr = "10.43.7.9/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.43.0.0/16");
        assert!(c.contains("10.43.0.1".parse().unwrap()));
        assert!(
            !c.contains("10.43.0.0".parse().unwrap()),
            "the network address"
        );
        assert!(
            !c.contains("10.43.255.255".parse().unwrap()),
            "the broadcast address"
        );
        assert!(!c.contains("10.44.0.1".parse().unwrap()));
        assert_eq!(c.nth(0), "10.43.0.1".parse::<Ipv4Addr>().unwrap());
        assert!("10.0.0.0/31".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }
}
