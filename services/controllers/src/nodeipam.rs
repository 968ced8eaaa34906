//! Node IPAM (kube-controller-manager's range allocator): every Node gets
//! a block of the cluster CIDR as its `spec.podCIDR` (and `podCIDRs`),
//! from which its agent gives its pods their addresses.
//!
//! Blocks in use are read from the Nodes themselves, so a restarted
//! manager (or a new leader) picks up where the last one was, and a
//! deleted Node's block is free again at once. A block is set once and
//! never changed (the API refuses that). Allocation is serialised: blocks
//! given out whose Node the cache does not show yet are remembered until
//! it does. When the range is exhausted the Node gets a `CIDRNotAvailable`
//! event and waits for a Node to go.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff::cidr::Ipv4Cidr;
use skiff::pb::core::v1::Node;
use skiff::validation::Invalid;
use skiff::{ObjectRef, Resource as _};
use skiff_client::events::{EventType, Recorder};
use skiff_client::{Api, Change, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

pub use skiff::names::DEFAULT_CLUSTER_CIDR;
/// The prefix length of each node's block.
pub const DEFAULT_NODE_MASK: u8 = 24;

/// What the allocator hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    /// The pod addresses of the whole cluster.
    pub cluster: Ipv4Cidr,
    /// The prefix length of each node's block.
    pub node_mask: u8,
    /// The service range, whose blocks are never given to nodes.
    pub service: Option<Ipv4Cidr>,
}

impl Ranges {
    /// Checks that the cluster CIDR holds at least one block.
    ///
    /// # Errors
    /// A mask shorter than the cluster CIDR's, or longer than /30.
    pub fn new(
        cluster: Ipv4Cidr,
        node_mask: u8,
        service: Option<Ipv4Cidr>,
    ) -> Result<Self, Invalid> {
        if node_mask < cluster.bits() || node_mask > 30 {
            return Err(Invalid(format!(
                "--node-cidr-mask-size {node_mask} must lie between the cluster CIDR's prefix (/{}) and /30",
                cluster.bits()
            )));
        }
        Ok(Self {
            cluster,
            node_mask,
            service,
        })
    }

    /// The first block not in `used` (nor in the service range).
    pub fn first_free(&self, used: &std::collections::BTreeSet<Ipv4Cidr>) -> Option<Ipv4Cidr> {
        (0..self.cluster.subnet_count(self.node_mask))
            .filter_map(|i| self.cluster.subnet(self.node_mask, i))
            .find(|block| {
                !used.iter().any(|u| u.overlaps(block))
                    && !self.service.is_some_and(|s| s.overlaps(block))
            })
    }
}

impl Default for Ranges {
    fn default() -> Self {
        Self {
            cluster: DEFAULT_CLUSTER_CIDR.parse().expect("a valid CIDR"),
            node_mask: DEFAULT_NODE_MASK,
            service: skiff::names::DEFAULT_SERVICE_CIDR.parse().ok(),
        }
    }
}

/// A node's block, when it has a valid one.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    node.spec.as_ref()?.pod_cidr.parse().ok()
}

/// See the module doc. Keys are node names.
pub struct NodeIpamController {
    nodes: Api<Node>,
    node_store: Store<Node>,
    recorder: Arc<Recorder>,
    ranges: Ranges,
    /// Blocks given out (or being given), by node, until the cache shows
    /// them; and the nodes told there is none left. Also the lock that
    /// serialises allocation.
    given: tokio::sync::Mutex<Given>,
}

/// See [`NodeIpamController::given`].
#[derive(Debug, Default)]
struct Given {
    blocks: BTreeMap<String, Ipv4Cidr>,
    /// Nodes that got a `CIDRNotAvailable` event (once each, until a
    /// node goes and blocks may be free).
    told: std::collections::BTreeSet<String>,
}

impl NodeIpamController {
    /// An allocator of `ranges` over the shared node cache.
    pub fn new(
        (nodes, node_store): (Api<Node>, Store<Node>),
        recorder: Arc<Recorder>,
        ranges: Ranges,
    ) -> Self {
        Self {
            nodes,
            node_store,
            recorder,
            ranges,
            given: tokio::sync::Mutex::new(Given::default()),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let mut given = self.given.lock().await;
        let Some(node) = self.node_store.get("", &key.name) else {
            given.blocks.remove(&key.name);
            // Its block (if any) is free: everyone may be told again.
            given.told.clear();
            return Ok(Action::AwaitChange);
        };
        let has_block = node
            .spec
            .as_ref()
            .is_some_and(|s| !s.pod_cidr.is_empty() || !s.pod_cidrs.is_empty());
        if has_block {
            given.blocks.remove(&key.name);
            given.told.remove(&key.name);
            return Ok(Action::AwaitChange);
        }
        if node
            .metadata()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        // Forget blocks of nodes the cache shows gone or with their block.
        given.blocks.retain(|name, _| {
            self.node_store
                .get("", name)
                .is_some_and(|n| pod_cidr(&n).is_none())
        });
        let block = match given.blocks.get(&key.name) {
            Some(block) => *block,
            None => {
                let used = self
                    .node_store
                    .list()
                    .iter()
                    .filter_map(|n| pod_cidr(n))
                    .chain(given.blocks.values().copied())
                    .collect();
                let Some(block) = self.ranges.first_free(&used) else {
                    if !given.told.insert(key.name.clone()) {
                        return Ok(Action::AwaitChange);
                    }
                    let message = format!(
                        "Node {} status is now: CIDRNotAvailable (no block of /{} left in {})",
                        key.name, self.ranges.node_mask, self.ranges.cluster
                    );
                    self.recorder
                        .record(&*node, EventType::Normal, "CIDRNotAvailable", &message)
                        .await;
                    tracing::warn!(node = %key.name, cluster_cidr = %self.ranges.cluster, "no pod CIDR left for the node");
                    // Woken again when a node goes (see `start`).
                    return Ok(Action::AwaitChange);
                };
                block
            }
        };
        let mut next = (*node).clone();
        let spec = next.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = block.to_string();
        spec.pod_cidrs = vec![block.to_string()];
        // Held before the write: an update whose answer is lost may still
        // have committed, and no other node may get the block meanwhile.
        given.blocks.insert(key.name.clone(), block);
        match self.nodes.update(next).await {
            Ok(_) => {
                tracing::info!(node = %key.name, pod_cidr = %block, "gave the node its pod CIDR");
                Ok(Action::AwaitChange)
            }
            // Surely not written: stale cache, the node went, or refused.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Aborted | tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                given.blocks.remove(&key.name);
                Ok(Action::AwaitChange)
            }
            // Perhaps written: the block stays held for this node (and is
            // offered to it again) until the cache tells.
            Err(s) => Err(s.into()),
        }
    }
}

impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        "nodeipam"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the allocator when the manager allocates node CIDRs: keys are
/// nodes, woken by their own changes, and all nodes still without a block
/// when one is deleted (its block is free).
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::{Controller, changed};
    use futures::FutureExt as _;
    let Some(ranges) = shared.node_cidrs else {
        return futures::future::pending().boxed();
    };
    let controller = Arc::new(NodeIpamController::new(
        (Api::new(shared.channel.clone()), shared.nodes.store.clone()),
        Arc::clone(&shared.recorder),
        ranges,
    ));
    let store = shared.nodes.store.clone();
    let waiting = store.clone();
    let without_block = move || {
        waiting
            .list()
            .iter()
            .filter(|n| pod_cidr(n).is_none())
            .map(|n| n.object_ref())
            .collect::<Vec<_>>()
    };
    let on_delete = without_block.clone();
    Controller::new(controller)
        .watches(&shared.nodes, move |change| match change {
            Change::Applied(_) => vec![changed(change).object_ref()],
            Change::Deleted(node) => {
                let mut keys = on_delete();
                keys.push(node.object_ref());
                keys
            }
        })
        .run(without_block, workers)
        .boxed()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn blocks_are_given_in_order_skipping_used_ones_and_the_service_range() {
        let ranges = Ranges::new(
            "10.0.0.0/22".parse().unwrap(),
            24,
            Some("10.0.1.0/24".parse().unwrap()),
        )
        .unwrap();
        let mut used = BTreeSet::new();
        let first = ranges.first_free(&used).unwrap();
        assert_eq!(first.to_string(), "10.0.0.0/24");
        used.insert(first);
        // 10.0.1.0/24 is the service range.
        assert_eq!(ranges.first_free(&used).unwrap().to_string(), "10.0.2.0/24");
        used.insert("10.0.2.0/24".parse().unwrap());
        used.insert("10.0.3.0/24".parse().unwrap());
        assert_eq!(ranges.first_free(&used), None);
        // A freed block is the next one given.
        used.remove(&first);
        assert_eq!(ranges.first_free(&used), Some(first));
    }

    #[test]
    fn a_mask_outside_the_cluster_cidr_is_refused() {
        let cluster = "10.42.0.0/16".parse().unwrap();
        assert!(Ranges::new(cluster, 8, None).unwrap_err().0.contains("/16"));
        assert!(Ranges::new(cluster, 31, None).is_err());
        assert_eq!(Ranges::default().cluster, cluster);
    }
}
