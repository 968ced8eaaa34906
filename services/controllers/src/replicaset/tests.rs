use super::*;
use skiff::pb::core::v1::{PodCondition, PodSpec, PodStatus};
use skiff::wkt::Timestamp;

fn pod(node: &str, phase: &str, ready: bool, created: i64) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            creation_timestamp: Some(Timestamp {
                seconds: created,
                nanos: 0,
            }),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            node_name: node.into(),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: phase.into(),
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

#[test]
fn a_pod_is_available_once_ready_for_min_ready_seconds() {
    let mut fresh = pod("n1", "Running", true, 1);
    fresh.status.as_mut().unwrap().conditions[0].last_transition_time =
        Some(skiff::time::now_seconds());
    let long_ago = pod("n1", "Running", true, 1);
    assert!(
        is_available(&fresh, 0),
        "no minReadySeconds: ready is available"
    );
    assert!(!is_available(&fresh, 3600), "ready a moment, not an hour");
    assert!(is_available(&long_ago, 3600));
    assert!(!is_available(&pod("n1", "Running", false, 1), 0));
    // Both kinds of set read the field.
    let rs = ReplicaSet {
        spec: Some(skiff::pb::apps::v1::ReplicaSetSpec {
            min_ready_seconds: 30,
            ..Default::default()
        }),
        ..Default::default()
    };
    let rc = ReplicationController {
        spec: Some(skiff::pb::core::v1::ReplicationControllerSpec {
            min_ready_seconds: 40,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!((rs.min_ready_seconds(), rc.min_ready_seconds()), (30, 40));
}

#[test]
fn deletion_prefers_unscheduled_then_pending_then_unready_then_newest() {
    let mut pods = [
        pod("n", "Running", true, 1),
        pod("n", "Running", true, 5),
        pod("n", "Running", false, 1),
        pod("n", "Pending", false, 1),
        pod("", "Pending", false, 1),
    ];
    pods.sort_by_key(deletion_rank);
    let order: Vec<(String, String, bool, i64)> = pods
        .iter()
        .map(|p| {
            (
                p.spec.as_ref().unwrap().node_name.clone(),
                p.status.as_ref().unwrap().phase.clone(),
                skiff::pods::is_ready(p),
                p.metadata
                    .as_ref()
                    .unwrap()
                    .creation_timestamp
                    .unwrap()
                    .seconds,
            )
        })
        .collect();
    assert_eq!(order[0].0, "", "unscheduled first");
    assert_eq!(order[1].1, "Pending");
    assert!(!order[2].2, "not ready before ready");
    assert_eq!(order[3].3, 5, "newest of the ready ones first");
}
