//! The Service controller (the cloud provider's part of Kubernetes, as
//! k3s's ServiceLB or MetalLB in layer-2 mode do it on bare metal): every
//! Service of type LoadBalancer gets an address from the configured pool
//! in `status.loadBalancer.ingress`; the agents' proxies serve it.
//!
//! Without a pool (`--lb-pool ""`) it is k3s's ServiceLB: a LoadBalancer
//! Service's addresses are the InternalIPs of the Ready nodes, kept as
//! nodes come, go and change readiness, and every agent's proxy answers
//! the Service's ports on its node's address; with
//! `externalTrafficPolicy: Local`, only the nodes that have one of its
//! ready endpoints (the only ones whose proxy takes its traffic in).
//!
//! The addresses in use are those in the Services' status, so nothing
//! else needs keeping: a restarted controller reads them back, and an
//! address is free again once its Service is deleted or changes type (the
//! controller clears the status of a Service that is no longer a
//! LoadBalancer). `spec.loadBalancerIP` asks for one address: honoured
//! when it is in the pool and free, else the Service gets no address and
//! a Warning event says why. Allocations are serialized (one at a time),
//! so two Services never get the same address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use skiff::pb::core::v1::{Endpoints, LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// A pool of addresses: a CIDR (`10.44.0.0/24`) or a range
/// (`127.0.100.1-127.0.100.50`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    first: u32,
    last: u32,
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ip = |part: &str| {
            part.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|_| format!("{part:?} is not an IPv4 address"))
        };
        let (first, last) = if let Some((from, to)) = s.split_once('-') {
            (ip(from)?, ip(to)?)
        } else if let Some((base, bits)) = s.split_once('/') {
            let bits: u32 = bits
                .parse()
                .ok()
                .filter(|b| *b <= 32)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?;
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            let network = ip(base)? & mask;
            let broadcast = network | !mask;
            // A subnet's network and broadcast addresses are not hosts.
            if bits <= 30 {
                (network + 1, broadcast - 1)
            } else {
                (network, broadcast)
            }
        } else {
            let one = ip(s)?;
            (one, one)
        };
        if first > last {
            return Err(format!("{s:?}: the range ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

/// Why a LoadBalancer Service gets no address.
#[derive(Debug, PartialEq, Eq)]
enum NoAddress {
    /// Its `loadBalancerIP` is outside the pool.
    NotInPool(Ipv4Addr),
    /// Its `loadBalancerIP` is another Service's.
    InUse(Ipv4Addr, ObjectRef),
    /// Every address of the pool is taken.
    Exhausted,
}

/// The address a LoadBalancer Service gets from `pool`, `used` being
/// every other Service's: the one its `loadBalancerIP` asks for, when in
/// the pool and free; without one, the address it has while that stays
/// in the pool and free, else the pool's first free one.
fn choose(
    pool: &Pool,
    requested: Option<Ipv4Addr>,
    current: Option<Ipv4Addr>,
    used: &BTreeMap<Ipv4Addr, ObjectRef>,
) -> Result<Ipv4Addr, NoAddress> {
    match requested {
        Some(ip) if !pool.contains(ip) => Err(NoAddress::NotInPool(ip)),
        Some(ip) => match used.get(&ip) {
            Some(owner) => Err(NoAddress::InUse(ip, owner.clone())),
            None => Ok(ip),
        },
        None => current
            .filter(|ip| pool.contains(*ip) && !used.contains_key(ip))
            .or_else(|| pool.first_free(used))
            .ok_or(NoAddress::Exhausted),
    }
}

impl Pool {
    /// Whether `ip` is in the pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    /// The lowest address of the pool not in `used`.
    pub fn first_free(&self, used: &BTreeMap<Ipv4Addr, ObjectRef>) -> Option<Ipv4Addr> {
        (self.first..=self.last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains_key(ip))
    }
}

/// See the module doc.
pub struct ServiceController {
    services: Api<Service>,
    store: Store<Service>,
    pool: Option<Pool>,
    /// The nodes, whose addresses serve LoadBalancers without a pool.
    nodes: Store<Node>,
    /// Which nodes have a Service's ready endpoints (for
    /// `externalTrafficPolicy: Local` without a pool).
    endpoints: Store<Endpoints>,
    recorder: std::sync::Arc<Recorder>,
    /// Held across choosing an address and writing it.
    allocating: tokio::sync::Mutex<()>,
}

impl ServiceController {
    /// A controller handing out addresses from `pool` (none: the Ready
    /// `nodes`' addresses).
    pub fn new(
        services: Api<Service>,
        store: Store<Service>,
        pool: Option<Pool>,
        nodes: Store<Node>,
        endpoints: Store<Endpoints>,
        recorder: std::sync::Arc<Recorder>,
    ) -> Self {
        Self {
            services,
            store,
            pool,
            nodes,
            endpoints,
            recorder,
            allocating: tokio::sync::Mutex::new(()),
        }
    }

    async fn write(&self, service: &Service, ips: Vec<Ipv4Addr>) -> Result<(), Error> {
        let mut updated = service.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.load_balancer = Some(LoadBalancerStatus {
            ingress: ips
                .into_iter()
                .map(|ip| LoadBalancerIngress {
                    ip: ip.to_string(),
                    ip_mode: Some("VIP".into()),
                    ..Default::default()
                })
                .collect(),
        });
        self.services.update_status(updated).await?;
        Ok(())
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(service) = self.store.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let spec = service.spec.clone().unwrap_or_default();
        let deleting = service
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        let current = skiff::pods::load_balancer_ips(&service);
        // A Service naming a load balancer class is another
        // implementation's (Kubernetes' built-in controller leaves it
        // alone too); the class never changes, so nothing of ours is held.
        if !ours(&spec) {
            return Ok(Action::AwaitChange);
        }
        if spec.r#type != "LoadBalancer" || deleting {
            if !current.is_empty() {
                self.write(&service, Vec::new()).await?;
                tracing::info!(service = %key, "released its load balancer address");
            }
            return Ok(Action::AwaitChange);
        }
        let Some(pool) = self.pool else {
            // Local: only the nodes with a ready endpoint take outside
            // traffic in, so only theirs are the load balancer's.
            let serving: Option<BTreeSet<String>> =
                (spec.external_traffic_policy == "Local").then(|| {
                    self.endpoints
                        .get(&key.namespace, &key.name)
                        .map(|e| {
                            e.subsets
                                .iter()
                                .flat_map(|s| &s.addresses)
                                .filter_map(|a| a.node_name.clone())
                                .collect()
                        })
                        .unwrap_or_default()
                });
            let nodes = node_addresses(&self.nodes.list(), serving.as_ref());
            let mut sorted = current.clone();
            sorted.sort();
            if sorted != nodes {
                self.write(&service, nodes.clone()).await?;
                tracing::info!(service = %key, addresses = ?nodes, "load balancer on the nodes' addresses");
            }
            return Ok(Action::AwaitChange);
        };
        let requested = spec.load_balancer_ip.parse::<Ipv4Addr>().ok();
        let _one_at_a_time = self.allocating.lock().await;
        // Every address held by another Service, from the cache (the
        // lock makes sure our own last write is in it before the next).
        let used: BTreeMap<Ipv4Addr, ObjectRef> = self
            .store
            .list()
            .iter()
            .filter(|s| s.object_ref() != key)
            .flat_map(|s| {
                skiff::pods::load_balancer_ips(s)
                    .into_iter()
                    .map(|ip| (ip, s.object_ref()))
            })
            .collect();
        let chosen = choose(&pool, requested, current.first().copied(), &used);
        if current.len() == 1 && chosen.as_ref().ok() == current.first() {
            return Ok(Action::AwaitChange);
        }
        let ip = match chosen {
            Ok(ip) => ip,
            Err(why) => {
                let (reason, message) = match why {
                    NoAddress::NotInPool(ip) => (
                        "LoadBalancerIPNotInPool",
                        format!("loadBalancerIP {ip} is not in the load balancer pool"),
                    ),
                    NoAddress::InUse(ip, owner) => (
                        "LoadBalancerIPInUse",
                        format!("loadBalancerIP {ip} is used by service {owner}"),
                    ),
                    NoAddress::Exhausted => (
                        "AllocationFailed",
                        "the load balancer pool is exhausted".to_string(),
                    ),
                };
                self.recorder
                    .record(&*service, EventType::Warning, reason, &message)
                    .await;
                if !current.is_empty() {
                    self.write(&service, Vec::new()).await?;
                }
                return Ok(Action::AwaitChange);
            }
        };
        self.write(&service, vec![ip]).await?;
        // Until the cache shows it, later allocations must not reuse it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline
            && !self
                .store
                .get(&key.namespace, &key.name)
                .is_some_and(|s| skiff::pods::load_balancer_ips(&s).contains(&ip))
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::info!(service = %key, %ip, "assigned a load balancer address");
        self.recorder
            .record(
                &*service,
                EventType::Normal,
                "IPAllocated",
                &format!("Assigned IP {ip}"),
            )
            .await;
        Ok(Action::AwaitChange)
    }
}

impl Reconciler for ServiceController {
    fn name(&self) -> &'static str {
        "service"
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        crate::runtime::traceparent_in(&self.store, key)
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the Service (load balancer) controller: woken by Services.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, keys_of};
    use futures::FutureExt as _;
    let controller = std::sync::Arc::new(ServiceController::new(
        Api::new(shared.channel.clone()),
        shared.services.store.clone(),
        shared.lb_pool,
        shared.nodes.store.clone(),
        shared.endpoints.store.clone(),
        std::sync::Arc::clone(&shared.recorder),
    ));
    let store = shared.services.store.clone();
    let mut running = Controller::new(controller).for_kind(&shared.services);
    if shared.lb_pool.is_none() {
        // Without a pool the nodes are the load balancer: a node that
        // comes, goes or changes readiness moves every LoadBalancer.
        let services = shared.services.store.clone();
        running = running.watches(&shared.nodes, move |_| {
            services
                .list()
                .iter()
                .filter(|s| s.spec.as_ref().is_some_and(|s| s.r#type == "LoadBalancer"))
                .map(|s| s.object_ref())
                .collect()
        });
        // And a Local one follows the nodes of its endpoints.
        running = running.watches(&shared.endpoints, |change| {
            vec![crate::runtime::changed(change).object_ref()]
        });
    }
    running.run(move || keys_of(&store), workers).boxed()
}

/// The IPv4 InternalIPs of the Ready nodes, sorted: where a LoadBalancer
/// Service answers without a pool.
fn node_addresses(
    nodes: &[std::sync::Arc<Node>],
    only: Option<&BTreeSet<String>>,
) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|n| only.is_none_or(|only| only.contains(n.name())))
        .filter_map(|n| n.status.as_ref())
        .filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        })
        .flat_map(|s| {
            s.addresses
                .iter()
                .filter(|a| a.r#type == "InternalIP")
                .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a Service's load balancer is this controller's: it names no
/// `loadBalancerClass` (one naming a class is another implementation's).
fn ours(spec: &skiff::pb::core::v1::ServiceSpec) -> bool {
    spec.load_balancer_class
        .as_deref()
        .is_none_or(str::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_pool_the_ready_nodes_internal_ips_are_the_addresses() {
        let node = |name: &str, ready: &str, ip: &str| {
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {
                    "conditions": [{"type": "Ready", "status": ready}],
                    "addresses": [{"type": "Hostname", "address": name},
                                  {"type": "InternalIP", "address": ip}],
                },
            }))
            .unwrap();
            std::sync::Arc::new(node)
        };
        let nodes = [
            node("c", "True", "10.0.0.3"),
            node("a", "True", "10.0.0.1"),
            node("b", "False", "10.0.0.2"),
            node("d", "True", "fd00::4"),
        ];
        assert_eq!(
            node_addresses(&nodes, None),
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3)]
        );
        // externalTrafficPolicy Local: only the nodes with its endpoints.
        let serving = BTreeSet::from(["c".to_string(), "b".to_string()]);
        assert_eq!(
            node_addresses(&nodes, Some(&serving)),
            [Ipv4Addr::new(10, 0, 0, 3)]
        );
    }

    #[test]
    fn a_service_of_another_load_balancer_class_is_left_alone() {
        let mut spec = skiff::pb::core::v1::ServiceSpec {
            r#type: "LoadBalancer".into(),
            ..Default::default()
        };
        assert!(ours(&spec));
        spec.load_balancer_class = Some("example.com/metal".into());
        assert!(!ours(&spec));
    }

    #[test]
    fn a_load_balancer_ip_is_granted_only_from_the_pool_and_only_once() {
        let pool: Pool = "192.0.2.10-192.0.2.12".parse().unwrap();
        let ip = |last: u8| Ipv4Addr::new(192, 0, 2, last);
        let other = ObjectRef::new("default", "other");
        let used = BTreeMap::from([(ip(10), other.clone())]);
        // Asked for: granted when free, refused when taken or outside.
        assert_eq!(choose(&pool, Some(ip(12)), None, &used), Ok(ip(12)));
        assert_eq!(
            choose(&pool, Some(ip(10)), None, &used),
            Err(NoAddress::InUse(ip(10), other))
        );
        assert_eq!(
            choose(&pool, Some(ip(99)), Some(ip(11)), &used),
            Err(NoAddress::NotInPool(ip(99)))
        );
        // A changed loadBalancerIP moves the Service to it.
        assert_eq!(choose(&pool, Some(ip(12)), Some(ip(11)), &used), Ok(ip(12)));
        // Not asked for: what it has, else the first free.
        assert_eq!(choose(&pool, None, Some(ip(12)), &used), Ok(ip(12)));
        assert_eq!(choose(&pool, None, None, &used), Ok(ip(11)));
        let full = BTreeMap::from([
            (ip(10), ObjectRef::new("a", "1")),
            (ip(11), ObjectRef::new("a", "2")),
            (ip(12), ObjectRef::new("a", "3")),
        ]);
        assert_eq!(choose(&pool, None, None, &full), Err(NoAddress::Exhausted));
    }

    #[test]
    fn pools_parse_as_cidr_range_or_one_address() {
        let pool: Pool = "10.44.0.0/24".parse().unwrap();
        assert!(!pool.contains("10.44.0.0".parse().unwrap()));
        assert!(pool.contains("10.44.0.1".parse().unwrap()));
        assert!(pool.contains("10.44.0.254".parse().unwrap()));
        assert!(!pool.contains("10.44.0.255".parse().unwrap()));
        let range: Pool = "127.0.100.1-127.0.100.3".parse().unwrap();
        let mut used = BTreeMap::new();
        assert_eq!(
            range.first_free(&used),
            Some("127.0.100.1".parse().unwrap())
        );
        used.insert("127.0.100.1".parse().unwrap(), ObjectRef::new("a", "b"));
        used.insert("127.0.100.2".parse().unwrap(), ObjectRef::new("a", "c"));
        assert_eq!(
            range.first_free(&used),
            Some("127.0.100.3".parse().unwrap())
        );
        used.insert("127.0.100.3".parse().unwrap(), ObjectRef::new("a", "d"));
        assert_eq!(range.first_free(&used), None);
        let one: Pool = "127.0.100.7/32".parse().unwrap();
        assert!(one.contains("127.0.100.7".parse().unwrap()));
        assert!(
            "10.0.0.5-10.0.0.1"
                .parse::<Pool>()
                .unwrap_err()
                .contains("ends before")
        );
        assert!(
            "10.0.0.0/33"
                .parse::<Pool>()
                .unwrap_err()
                .contains("prefix")
        );
        assert!("nope".parse::<Pool>().unwrap_err().contains("not an IPv4"));
    }
}
