//! The PersistentVolume controller's pure parts, unit-tested.

use super::*;
use skiff::pb::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};

fn claim() -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: Some(ObjectMeta {
            name: "data".into(),
            namespace: "shop".into(),
            uid: "1234".into(),
            ..Default::default()
        }),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(VolumeResourceRequirements {
                requests: [("storage".to_string(), "1Gi".to_string())].into(),
                ..Default::default()
            }),
            storage_class_name: Some("local-path".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_provisioned_volume_is_reserved_for_its_claim_and_pinned_to_its_node() {
    let class = StorageClass {
        provisioner: LOCAL_PATH_PROVISIONER.into(),
        reclaim_policy: Some("Retain".into()),
        ..Default::default()
    };
    let pvc = claim();
    let pv = local_volume(&pvc, &class, "node-a", "/var/lib/skiff/storage/");
    assert_eq!(pv.name(), "pvc-1234");
    assert_eq!(volumes::path(&pv), Some("/var/lib/skiff/storage/pvc-1234"));
    assert_eq!(volumes::pinned_node(&pv), Some("node-a"));
    assert!(volumes::reserved_for(&pv, &pvc));
    assert_eq!(unsuitable(&pv, &pvc), None);
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(spec.persistent_volume_reclaim_policy, "Retain");
    assert_eq!(spec.capacity["storage"], "1Gi");
    assert!(has_finalizer(&pv, LOCAL_PATH_FINALIZER));
}

#[test]
fn a_named_volume_must_suit_its_claim() {
    let class = StorageClass::default();
    let pvc = claim();
    let mut small = local_volume(&pvc, &class, "a", "/r");
    small
        .spec
        .as_mut()
        .unwrap()
        .capacity
        .insert("storage".into(), "10Mi".into());
    assert_eq!(unsuitable(&small, &pvc), Some("requested PV is too small"));
}

#[test]
fn only_unfinished_pods_hold_a_claim() {
    let mut pod = Pod {
        spec: Some(skiff::pb::core::v1::PodSpec {
            volumes: vec![skiff::pb::core::v1::Volume {
                name: "v".into(),
                persistent_volume_claim: Some(
                    skiff::pb::core::v1::PersistentVolumeClaimVolumeSource {
                        claim_name: "data".into(),
                        read_only: false,
                    },
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(pod_uses(&pod, "data"));
    assert!(!pod_uses(&pod, "other"));
    pod.status = Some(skiff::pb::core::v1::PodStatus {
        phase: "Succeeded".into(),
        ..Default::default()
    });
    assert!(!pod_uses(&pod, "data"));
}
