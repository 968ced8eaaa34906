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

#[test]
fn a_node_update_refreshes_what_it_offers_and_whether_it_is_ready() {
    let mut cache = Cache::default();
    cache.set_node(Arc::new(node("a", "2", "4Gi")));
    cache.place(Arc::new(pod("p", "1", "1Gi")), "a");
    assert!(cache.nodes["a"].ready);
    let mut changed = node("a", "4", "8Gi");
    changed.status.as_mut().unwrap().conditions[0].status = "False".into();
    cache.set_node(Arc::new(changed));
    let info = &cache.nodes["a"];
    assert_eq!(info.allocatable.milli_cpu, 4000);
    assert!(!info.ready);
    assert_eq!((info.pods.len(), info.requested.milli_cpu), (1, 1000));
}

#[test]
fn every_cycle_sees_the_nodes_in_name_order_with_nominated_pods_counted() {
    let mut cache = Cache::default();
    for name in ["c", "a", "b"] {
        cache.set_node(Arc::new(node(name, "2", "4Gi")));
    }
    let none = HashMap::new();
    let plain: Vec<&str> = cache.ordered(&none).iter().map(|n| n.name()).collect();
    assert_eq!(plain, ["a", "b", "c"]);
    let mut ahead = HashMap::new();
    let mut b = cache.nodes["b"].clone();
    b.add_pod(Arc::new(pod("nominated", "1", "1Gi")));
    ahead.insert("b", b);
    let ordered = cache.ordered(&ahead);
    assert_eq!(ordered[1].name(), "b");
    assert_eq!(ordered[1].requested.milli_cpu, 1000);
    assert_eq!(ordered[0].requested.milli_cpu, 0);
}
