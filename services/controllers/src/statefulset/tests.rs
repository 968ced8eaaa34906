//! The StatefulSet planner and pod identities, unit-tested.

use super::*;
use skiff::pb::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use skiff::pb::core::v1::{PodCondition, PodSpec, PodStatus};
use skiff::pb::meta::v1::ObjectMeta;

fn set(replicas: i32, policy: &str, partition: i32) -> StatefulSet {
    StatefulSet {
        metadata: Some(ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            uid: "set-uid".into(),
            ..Default::default()
        }),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: "nginx".into(),
            pod_management_policy: policy.into(),
            template: Some(PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(PodSpec::default()),
            }),
            update_strategy: Some(StatefulSetUpdateStrategy {
                r#type: "RollingUpdate".into(),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(partition),
                    max_unavailable: None,
                }),
            }),
            volume_claim_templates: vec![PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: "data".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod(ordinal: i32, revision: &str, ready: bool) -> Arc<Pod> {
    let set = set(1, "", 0);
    let mut pod = pod_for(&set, ordinal, &PodTemplateSpec::default(), revision);
    pod.status = Some(PodStatus {
        phase: "Running".into(),
        conditions: vec![PodCondition {
            r#type: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    Arc::new(pod)
}

#[test]
fn a_pod_has_its_stable_name_hostname_and_claim() {
    let set = set(3, "", 0);
    let pod = pod_for(
        &set,
        2,
        set.spec.as_ref().unwrap().template.as_ref().unwrap(),
        "web-abc",
    );
    assert_eq!(pod.name(), "web-2");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        (spec.hostname.as_str(), spec.subdomain.as_str()),
        ("web-2", "nginx")
    );
    assert_eq!(
        spec.volumes[0]
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "data-web-2"
    );
    let labels = &pod.metadata.as_ref().unwrap().labels;
    assert_eq!(labels[POD_INDEX_LABEL], "2");
    assert_eq!(labels[REVISION_LABEL], "web-abc");
    assert_eq!(ordinal_of(&set, &pod), Some(2));
    assert_eq!(claims_for(&set, 2)[0].name(), "data-web-2");
}

#[test]
fn ordered_ready_makes_one_pod_at_a_time_and_waits_for_it() {
    let set = set(3, "OrderedReady", 0);
    let p = plan(&set, &[], "r1", "r1", &[]);
    assert_eq!(p.create, [0]);
    let p = plan(&set, &[pod(0, "r1", false)], "r1", "r1", &[]);
    assert!(p.create.is_empty(), "waits for web-0 to be Ready");
    let p = plan(&set, &[pod(0, "r1", true)], "r1", "r1", &[]);
    assert_eq!(p.create, [1]);
    let parallel = super::plan(&super::tests::set(3, "Parallel", 0), &[], "r1", "r1", &[]);
    assert_eq!(parallel.create, [0, 1, 2]);
}

#[test]
fn ordered_ready_waits_min_ready_seconds_before_the_next_ordinal() {
    let mut patient = set(3, "OrderedReady", 0);
    patient.spec.as_mut().unwrap().min_ready_seconds = 3600;
    let mut fresh = (*pod(0, "r1", true)).clone();
    fresh.status.as_mut().unwrap().conditions[0].last_transition_time =
        Some(skiff::time::now_seconds());
    let p = plan(&patient, &[Arc::new(fresh)], "r1", "r1", &[]);
    assert!(
        p.create.is_empty(),
        "web-0 is ready but not yet for an hour"
    );
    assert_eq!(p.status.available_replicas, 0);
    // Ready long ago: available, and web-1 follows.
    let p = plan(&patient, &[pod(0, "r1", true)], "r1", "r1", &[]);
    assert_eq!(p.create, [1]);
    assert_eq!(p.status.available_replicas, 1);
}

#[test]
fn scaling_down_removes_the_highest_ordinal_first() {
    let set = set(1, "OrderedReady", 0);
    let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
    let p = plan(&set, &pods, "r1", "r1", &[]);
    assert_eq!(p.delete, ["web-2"]);
    assert_eq!(p.status.replicas, 3);
}

#[test]
fn a_rolling_update_replaces_from_the_top_down_to_the_partition() {
    let set = set(3, "OrderedReady", 2);
    let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r1", true)];
    let p = plan(&set, &pods, "r1", "r2", &[]);
    assert_eq!(p.delete, ["web-2"]);
    let pods = [pod(0, "r1", true), pod(1, "r1", true), pod(2, "r2", true)];
    let p = plan(&set, &pods, "r1", "r2", &[]);
    assert!(p.delete.is_empty(), "ordinals below the partition stay");
    assert_eq!(p.status.updated_replicas, 1);
    assert_eq!(p.status.current_revision, "r1");
    let all = [pod(0, "r2", true), pod(1, "r2", true), pod(2, "r2", true)];
    let done = plan(
        &super::tests::set(3, "OrderedReady", 0),
        &all,
        "r1",
        "r2",
        &[],
    );
    assert_eq!(done.status.current_revision, "r2");
}

#[test]
fn claims_of_removed_ordinals_go_only_when_asked() {
    let mut set = set(1, "OrderedReady", 0);
    let p = plan(&set, &[pod(0, "r1", true)], "r1", "r1", &[1, 2]);
    assert!(p.release_claims.is_empty(), "Retain by default");
    set.spec
        .as_mut()
        .unwrap()
        .persistent_volume_claim_retention_policy = Some(
        skiff::pb::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: "Retain".into(),
            when_scaled: "Delete".into(),
        },
    );
    let p = plan(
        &set,
        &[pod(0, "r1", true), pod(2, "r1", true)],
        "r1",
        "r1",
        &[1, 2],
    );
    assert_eq!(p.release_claims, [1], "web-2 still runs");
}

#[test]
fn the_partition_counts_from_the_first_ordinal_and_an_unhealthy_pod_is_updated() {
    let mut s = set(3, "Parallel", 1);
    s.spec.as_mut().unwrap().ordinals = Some(skiff::pb::apps::v1::StatefulSetOrdinals { start: 5 });
    let pods = [pod(5, "r1", true), pod(6, "r1", false), pod(7, "r1", true)];
    let p = plan(&s, &pods, "r1", "r2", &[]);
    assert_eq!(
        p.delete,
        ["web-7"],
        "a crash-looping pod does not hold the update back"
    );
    let pods = [pod(5, "r1", true), pod(6, "r1", false), pod(7, "r2", true)];
    let p = plan(&s, &pods, "r1", "r2", &[]);
    assert_eq!(p.delete, ["web-6"]);
    let pods = [pod(5, "r1", true), pod(6, "r2", true), pod(7, "r2", true)];
    let p = plan(&s, &pods, "r1", "r2", &[]);
    assert!(p.delete.is_empty(), "ordinal 5 is below start + partition");
}
