//! NodeResourcesFit: a pod fits where its requests fit in what is left of
//! the node's allocatable CPU, memory and pod slots. Its scorers:
//! LeastAllocated (prefer emptier nodes) and BalancedAllocation (prefer
//! nodes whose CPU and memory use stay even).

use skiff::pb::core::v1::Pod;

use crate::framework::{
    FilterPlugin, MAX_SCORE, NodeInfo, Prepared, Reason, Resources, ScorePlugin, per_node,
};

/// The filter's name.
pub const NAME: &str = "NodeResourcesFit";
/// The least-allocated scorer's name.
pub const LEAST_ALLOCATED: &str = "LeastAllocated";
/// The balanced-allocation scorer's name.
pub const BALANCED_ALLOCATION: &str = "BalancedAllocation";

/// See the module doc.
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn filter(&self, pod: &Pod, node: &NodeInfo) -> Result<(), Reason> {
        fits(Resources::of_pod(pod), node)
    }

    /// The pod's requests, read once per pod rather than once per node.
    fn pre_filter(&self, pod: &Pod, _all: &[&NodeInfo]) -> Option<Prepared> {
        Some(Box::new(Resources::of_pod(pod)))
    }

    fn filter_prepared(
        &self,
        pod: &Pod,
        node: &NodeInfo,
        prepared: &Prepared,
    ) -> Result<(), Reason> {
        match prepared.downcast_ref::<Resources>() {
            Some(want) => fits(*want, node),
            None => self.filter(pod, node),
        }
    }
}

/// Whether requests `want` fit in what is left of the node.
fn fits(want: Resources, node: &NodeInfo) -> Result<(), Reason> {
    let used = node.requested;
    let free = node.allocatable;
    if used.pods + 1 > free.pods {
        return Err("Too many pods".into());
    }
    if want.milli_cpu > 0 && used.milli_cpu + want.milli_cpu > free.milli_cpu {
        return Err("Insufficient cpu".into());
    }
    if want.memory > 0 && used.memory + want.memory > free.memory {
        return Err("Insufficient memory".into());
    }
    Ok(())
}

/// Fractions of CPU and memory used once a pod requesting `want` is
/// placed.
fn fractions(want: Resources, node: &NodeInfo) -> (f64, f64) {
    let after = node.requested.plus(want);
    let frac = |used: i64, cap: i64| {
        if cap <= 0 {
            1.0
        } else {
            (used as f64 / cap as f64).min(1.0)
        }
    };
    (
        frac(after.milli_cpu, node.allocatable.milli_cpu),
        frac(after.memory, node.allocatable.memory),
    )
}

/// Prefers the node with the most room left.
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        LEAST_ALLOCATED
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let want = Resources::of_pod(pod);
        per_node(nodes, |node| {
            let (cpu, mem) = fractions(want, node);
            (((1.0 - cpu) + (1.0 - mem)) / 2.0 * MAX_SCORE as f64).round() as i64
        })
    }
}

/// Prefers the node where CPU and memory use end up closest.
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        BALANCED_ALLOCATION
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        let want = Resources::of_pod(pod);
        per_node(nodes, |node| {
            let (cpu, mem) = fractions(want, node);
            ((1.0 - (cpu - mem).abs()) * MAX_SCORE as f64).round() as i64
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{info, node, pod};

    #[test]
    fn requests_must_fit_what_is_left() {
        let mut n = info(node("a", "2", "4Gi"));
        assert!(
            NodeResourcesFit
                .filter(&pod("p", "1500m", "1Gi"), &n)
                .is_ok()
        );
        n.add_pod(Arc::new(pod("q", "1", "1Gi")));
        assert_eq!(
            NodeResourcesFit
                .filter(&pod("p", "1500m", "1Gi"), &n)
                .unwrap_err(),
            "Insufficient cpu"
        );
        assert_eq!(
            NodeResourcesFit
                .filter(&pod("p", "100m", "4Gi"), &n)
                .unwrap_err(),
            "Insufficient memory"
        );
    }

    #[test]
    fn a_full_node_has_no_pod_slot() {
        let mut raw = node("a", "64", "64Gi");
        raw.status
            .as_mut()
            .unwrap()
            .allocatable
            .insert("pods".into(), "1".into());
        let mut n = info(raw);
        n.add_pod(Arc::new(pod("q", "", "")));
        assert_eq!(
            NodeResourcesFit.filter(&pod("p", "", ""), &n).unwrap_err(),
            "Too many pods"
        );
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let empty = info(node("a", "4", "8Gi"));
        let mut busy = info(node("b", "4", "8Gi"));
        busy.add_pod(Arc::new(pod("q", "3", "6Gi")));
        let p = pod("p", "500m", "1Gi");
        let s = LeastAllocated.score(&p, &[&empty, &busy]);
        assert!(s[0] > s[1], "{s:?}");
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let mut cpu_heavy = info(node("a", "4", "8Gi"));
        cpu_heavy.add_pod(Arc::new(pod("q", "3", "1Gi")));
        let even = info(node("b", "4", "8Gi"));
        let p = pod("p", "1", "2Gi");
        let s = BalancedAllocation.score(&p, &[&even, &cpu_heavy]);
        assert!(s[0] > s[1], "{s:?}");
    }
}
