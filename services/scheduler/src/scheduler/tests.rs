//! Tests of the scheduler's cache of bound and assumed pods.

use super::*;
use crate::plugins::testing::{node, pod};

#[test]
fn assumed_pods_count_until_unplaced() {
    let mut cache = Cache::default();
    cache.set_node(Arc::new(node("a", "2", "4Gi")));
    let p = Arc::new(pod("p", "1", "1Gi"));
    cache.place(Arc::clone(&p), "a");
    cache.assumed.insert(p.object_ref());
    assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
    // The node changes (a status update): its pods stay counted.
    cache.set_node(Arc::new(node("a", "4", "8Gi")));
    assert_eq!(cache.nodes["a"].requested.milli_cpu, 1000);
    cache.unplace(&p.object_ref());
    assert_eq!(cache.nodes["a"].requested.milli_cpu, 0);
    assert!(cache.assumed.is_empty());
}

#[test]
fn a_pod_bound_before_its_node_arrives_counts_once_it_does() {
    let mut cache = Cache::default();
    let p = Arc::new(pod("p", "1", "1Gi"));
    cache.place(Arc::clone(&p), "late");
    cache.set_node(Arc::new(node("late", "2", "4Gi")));
    assert_eq!(cache.nodes["late"].requested.milli_cpu, 1000);
    // The bound copy replaces it without counting it twice.
    cache.place(Arc::clone(&p), "late");
    assert_eq!(cache.nodes["late"].requested.milli_cpu, 1000);
    assert_eq!(cache.nodes["late"].pods.len(), 1);
}
