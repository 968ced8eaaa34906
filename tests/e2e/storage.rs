//! Storage end to end: PersistentVolumes, claims and StorageClasses through
//! the binder, the local provisioner, the scheduler and the agent (process
//! runtime: the pods' volumes are real directories on this machine).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use skiff::pb::storage::v1::StorageClass;
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_testkit::wait_until;

use crate::controllers::ProcessCluster;

fn claim(name: &str, size: &str, class: Option<&str>) -> PersistentVolumeClaim {
    let mut manifest = json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    });
    if let Some(class) = class {
        manifest["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(manifest).unwrap()
}

/// A process-runtime pod that runs `script` with the claim at `/data`
/// (`$SKIFF_VOLUME_DATA`).
fn pod_with_claim(name: &str, claim: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": "host",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        }
    }))
    .unwrap()
}

fn static_volume(name: &str, size: &str, class: &str, path: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "hostPath": {"path": path}
        }
    }))
    .unwrap()
}

fn phase_of_claim(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().map_or("", |s| s.phase.as_str())
}

fn phase_of_volume(v: &PersistentVolume) -> &str {
    v.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// The `reason: message` of the Events about the object named `name`.
async fn events_of(channel: &tonic::transport::Channel, name: &str) -> Vec<String> {
    Api::<Event>::new(channel.clone())
        .list(ListRequest {
            namespace: String::new(),
            field_selector: format!("involvedObject.name={name}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .iter()
        .map(|e| format!("{}: {}", e.reason, e.message))
        .collect()
}

async fn wait_for_claim(
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    phase: &str,
) -> PersistentVolumeClaim {
    let mut found = None;
    wait_until(
        &format!("claim {name} {phase}"),
        Duration::from_secs(60),
        async || {
            found = claims
                .get("default", name)
                .await
                .ok()
                .filter(|c| phase_of_claim(c) == phase);
            found.is_some()
        },
    )
    .await;
    found.unwrap()
}

async fn wait_gone<K: skiff::Resource>(api: &Api<K>, namespace: &str, name: &str) {
    wait_until(
        &format!("{} {name} is gone", K::KIND),
        Duration::from_secs(60),
        async || {
            api.get(namespace, name)
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound)
        },
    )
    .await;
}

async fn delete<K: skiff::Resource>(api: &Api<K>, namespace: &str, name: &str) {
    api.delete(DeleteRequest {
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_class_claim_is_made_on_its_pods_node_and_removed_with_it() {
    let cluster = ProcessCluster::start("pvc").await;
    let channel = cluster.channel.clone();
    let claims = Api::<PersistentVolumeClaim>::new(channel.clone());
    let volumes = Api::<PersistentVolume>::new(channel.clone());
    let pods = Api::<Pod>::new(channel.clone());
    let node = cluster.node.name.clone();

    // The default class is given, and the claim waits for its pod.
    let created = claims.create(claim("data", "64Mi", None)).await.unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
    let finalizers = &created.metadata.as_ref().unwrap().finalizers;
    assert_eq!(finalizers, &["kubernetes.io/pvc-protection"]);
    wait_until(
        "the claim says it waits",
        Duration::from_secs(30),
        async || {
            events_of(&channel, "data")
                .await
                .iter()
                .any(|e| e.starts_with("WaitForFirstConsumer: waiting for first consumer"))
        },
    )
    .await;
    assert_eq!(
        phase_of_claim(&claims.get("default", "data").await.unwrap()),
        "Pending"
    );

    // Its first pod takes it to its node, where the volume is made.
    let mut writer = pod_with_claim(
        "writer",
        "data",
        "echo hello > \"$SKIFF_VOLUME_DATA/greeting\"; echo deep > \"$SKIFF_VOLUME_SUB/file\"; sleep 300",
    );
    // The claim again, at a subPath of it.
    writer.spec.as_mut().unwrap().containers[0]
        .volume_mounts
        .push(
            serde_json::from_value(
                json!({"name": "data", "mountPath": "/sub", "subPath": "inner"}),
            )
            .unwrap(),
        );
    pods.create(writer).await.unwrap();
    let bound = wait_for_claim(&claims, "data", "Bound").await;
    let volume_name = bound.spec.as_ref().unwrap().volume_name.clone();
    let uid = bound.metadata.as_ref().unwrap().uid.clone();
    assert_eq!(volume_name, format!("pvc-{uid}"));
    let annotations = &bound.metadata.as_ref().unwrap().annotations;
    assert_eq!(annotations["volume.kubernetes.io/selected-node"], node);
    let status = bound.status.as_ref().unwrap();
    assert_eq!(status.capacity["storage"], "64Mi");
    assert_eq!(status.access_modes, ["ReadWriteOnce"]);
    let pv = volumes.get("", &volume_name).await.unwrap();
    assert_eq!(phase_of_volume(&pv), "Bound");
    assert_eq!(skiff::volumes::pinned_node(&pv), Some(node.as_str()));
    assert_eq!(
        pv.spec.as_ref().unwrap().persistent_volume_reclaim_policy,
        "Delete"
    );
    let dir = PathBuf::from(skiff::volumes::path(&pv).unwrap());
    let root = cluster.node.data_dir.path().join("storage");
    assert_eq!(dir.parent(), Some(root.as_path()), "{}", dir.display());
    wait_until(
        "the pod writes to its volume",
        Duration::from_secs(30),
        async || {
            std::fs::read_to_string(dir.join("greeting")).is_ok_and(|s| s == "hello\n")
                && std::fs::read_to_string(dir.join("inner/file")).is_ok_and(|s| s == "deep\n")
        },
    )
    .await;
    let placed = pods.get("default", "writer").await.unwrap();
    assert_eq!(placed.spec.as_ref().unwrap().node_name, node);

    // A claim in use outlives its deletion until its pod is gone.
    delete(&claims, "default", "data").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = claims.get("default", "data").await.unwrap();
    assert!(held.metadata.as_ref().unwrap().deletion_timestamp.is_some());
    assert_eq!(phase_of_claim(&held), "Bound");
    assert!(dir.exists());
    delete(&pods, "default", "writer").await;
    wait_gone(&claims, "default", "data").await;
    // Delete: the volume and its directory go with the claim.
    wait_gone(&volumes, "", &volume_name).await;
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_volumes_stay_released_and_static_volumes_bind_by_size_and_class() {
    let cluster = ProcessCluster::start("pv").await;
    let channel = cluster.channel.clone();
    let claims = Api::<PersistentVolumeClaim>::new(channel.clone());
    let volumes = Api::<PersistentVolume>::new(channel.clone());
    let classes = Api::<StorageClass>::new(channel.clone());
    let pods = Api::<Pod>::new(channel.clone());

    // Immediate binding, Retain: made before any pod, kept after.
    classes
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "keep"},
                "provisioner": "skiff.io/local-path",
                "reclaimPolicy": "Retain"
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    claims
        .create(claim("kept", "16Mi", Some("keep")))
        .await
        .unwrap();
    let bound = wait_for_claim(&claims, "kept", "Bound").await;
    let volume_name = bound.spec.unwrap().volume_name;
    let pv = volumes.get("", &volume_name).await.unwrap();
    assert_eq!(
        skiff::volumes::pinned_node(&pv),
        Some(cluster.node.name.as_str())
    );
    let dir = PathBuf::from(skiff::volumes::path(&pv).unwrap());
    pods.create(pod_with_claim(
        "keeper",
        "kept",
        "echo precious > \"$SKIFF_VOLUME_DATA/file\"; sleep 300",
    ))
    .await
    .unwrap();
    wait_until("the pod writes", Duration::from_secs(30), async || {
        std::fs::read_to_string(dir.join("file")).is_ok()
    })
    .await;
    delete(&pods, "default", "keeper").await;
    delete(&claims, "default", "kept").await;
    wait_gone(&claims, "default", "kept").await;
    wait_until(
        "the volume is Released",
        Duration::from_secs(30),
        async || {
            volumes
                .get("", &volume_name)
                .await
                .is_ok_and(|v| phase_of_volume(&v) == "Released")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(volumes.get("", &volume_name).await.is_ok());
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap(),
        "precious\n"
    );
    // A new claim of the same name is another claim (another uid): the
    // released volume keeps the old one's reference and is not reused.
    let old_uid = volumes
        .get("", &volume_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .claim_ref
        .unwrap()
        .uid;
    claims
        .create(claim("kept", "16Mi", Some("keep")))
        .await
        .unwrap();
    let again = wait_for_claim(&claims, "kept", "Bound").await;
    assert_ne!(again.metadata.as_ref().unwrap().uid, old_uid);
    assert_ne!(again.spec.unwrap().volume_name, volume_name);
    let released = volumes.get("", &volume_name).await.unwrap();
    assert_eq!(phase_of_volume(&released), "Released");
    let claim_ref = released.spec.unwrap().claim_ref.unwrap();
    assert_eq!(
        (claim_ref.name.as_str(), claim_ref.uid.as_str()),
        ("kept", old_uid.as_str())
    );

    // Static volumes: the smallest that fits, of the claim's class.
    let scratch = tempfile::tempdir().unwrap();
    for (name, size, class) in [
        ("big", "10Gi", "manual"),
        ("small", "1Gi", "manual"),
        ("tiny", "100Mi", "manual"),
        ("other", "1Gi", "elsewhere"),
    ] {
        let path = scratch.path().join(name);
        volumes
            .create(static_volume(name, size, class, path.to_str().unwrap()))
            .await
            .unwrap();
    }
    wait_until(
        "static volumes are Available",
        Duration::from_secs(30),
        async || {
            volumes
                .get("", "small")
                .await
                .is_ok_and(|v| phase_of_volume(&v) == "Available")
        },
    )
    .await;
    claims
        .create(claim("want", "500Mi", Some("manual")))
        .await
        .unwrap();
    let bound = wait_for_claim(&claims, "want", "Bound").await;
    assert_eq!(bound.spec.unwrap().volume_name, "small");
    let small = volumes.get("", "small").await.unwrap();
    assert_eq!(phase_of_volume(&small), "Bound");
    assert_eq!(small.spec.unwrap().claim_ref.unwrap().name, "want");

    // Claims nothing can satisfy wait, and say why.
    claims
        .create(claim("huge", "100Gi", Some("manual")))
        .await
        .unwrap();
    claims
        .create(claim("classless", "1Gi", Some("")))
        .await
        .unwrap();
    wait_until("the claims say why they wait", Duration::from_secs(30), async || {
        let huge = events_of(&channel, "huge").await;
        let classless = events_of(&channel, "classless").await;
        huge.iter()
            .any(|e| e == "ProvisioningFailed: storageclass.storage.k8s.io \"manual\" not found")
            && classless.iter().any(|e| {
                e == "FailedBinding: no persistent volumes available for this claim and no storage class is set"
            })
    })
    .await;
    assert_eq!(
        phase_of_claim(&claims.get("default", "huge").await.unwrap()),
        "Pending"
    );
    // A volume bound to a claim is kept while the claim holds it.
    delete(&volumes, "", "small").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kept = volumes.get("", "small").await.unwrap();
    assert!(kept.metadata.unwrap().deletion_timestamp.is_some());
    delete(&claims, "default", "want").await;
    wait_gone(&volumes, "", "small").await;
}

/// Registers a Ready node named `name` with the hostname label.
async fn add_node(nodes: &Api<Node>, name: &str) {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}
    }))
    .unwrap();
    let mut node = nodes.create(node).await.unwrap();
    node.status = serde_json::from_value(json!({
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]
    }))
    .unwrap();
    nodes.update_status(node).await.unwrap();
}

fn local_volume(name: &str, node: &str, class: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "local": {"path": "/mnt/disks/vol1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}}
        }
    }))
    .unwrap()
}

fn plain_pod(name: &str, claim: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{"name": "main", "image": "x"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_goes_where_its_local_volume_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_client::connect_lazy(&url).unwrap();
    let _scheduler = skiff_testkit::SchedulerProcess::start(&url, "s1", 2).unwrap();
    let _controllers = skiff_testkit::controller_manager(&url, &[]).unwrap();
    let nodes = Api::<Node>::new(channel.clone());
    let (claims, volumes, pods) = (
        Api::<PersistentVolumeClaim>::new(channel.clone()),
        Api::<PersistentVolume>::new(channel.clone()),
        Api::<Pod>::new(channel.clone()),
    );
    for name in ["node-a", "node-b", "node-c"] {
        add_node(&nodes, name).await;
    }
    // A class whose volumes are made by hand and bound where the pod goes.
    Api::<StorageClass>::new(channel.clone())
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "local-disks"},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "WaitForFirstConsumer"
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    volumes
        .create(local_volume("disk-b", "node-b", "local-disks"))
        .await
        .unwrap();
    claims
        .create(claim("disk", "500Mi", Some("local-disks")))
        .await
        .unwrap();
    pods.create(plain_pod("db", "disk")).await.unwrap();
    wait_until(
        "the pod is placed on node-b",
        Duration::from_secs(30),
        async || {
            pods.get("default", "db")
                .await
                .is_ok_and(|p| p.spec.is_some_and(|s| s.node_name == "node-b"))
        },
    )
    .await;
    let bound = wait_for_claim(&claims, "disk", "Bound").await;
    assert_eq!(bound.spec.unwrap().volume_name, "disk-b");

    // Its next pod follows the bound volume, whatever else is free.
    for i in 0..3 {
        pods.create(plain_pod(&format!("reader-{i}"), "disk"))
            .await
            .unwrap();
    }
    wait_until(
        "the readers are placed",
        Duration::from_secs(30),
        async || {
            let mut placed = 0;
            for i in 0..3 {
                if pods
                    .get("default", &format!("reader-{i}"))
                    .await
                    .is_ok_and(|p| p.spec.is_some_and(|s| s.node_name == "node-b"))
                {
                    placed += 1;
                }
            }
            placed == 3
        },
    )
    .await;

    // A second claim finds no free volume on any node: unschedulable,
    // with Kubernetes' reason counted per node.
    claims
        .create(claim("disk2", "500Mi", Some("local-disks")))
        .await
        .unwrap();
    pods.create(plain_pod("db2", "disk2")).await.unwrap();
    wait_until("the pod says why it waits", Duration::from_secs(30), async || {
        events_of(&channel, "db2").await.iter().any(|e| {
            e == "FailedScheduling: 0/3 nodes are available: 3 node(s) didn't find available persistent volumes to bind."
        })
    })
    .await;
    // An unknown claim: no node is even looked at.
    pods.create(plain_pod("orphan", "missing")).await.unwrap();
    wait_until("the pod names the missing claim", Duration::from_secs(30), async || {
        events_of(&channel, "orphan").await.iter().any(|e| {
            e == "FailedScheduling: 0/3 nodes are available: persistentvolumeclaim \"missing\" not found."
        })
    })
    .await;
    drop(server);
}

fn stateful_set(name: &str, replicas: i32, when_deleted: &str) -> skiff::pb::apps::v1::StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "main", "image": "host", "command": ["sleep", "300"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }]}
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
            }]
        }
    }))
    .unwrap()
}

/// `whenDeleted: Delete`: a StatefulSet's claims go with it — but not when
/// it is deleted with `--cascade=orphan`, which leaves its pods, claims
/// and revisions, released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulsets_claims_go_with_it_unless_it_is_orphaned() {
    use skiff::pb::apps::v1::{ControllerRevision, StatefulSet};
    let cluster = ProcessCluster::start("sts-claims").await;
    let channel = cluster.channel.clone();
    let sets = Api::<StatefulSet>::new(channel.clone());
    let claims = Api::<PersistentVolumeClaim>::new(channel.clone());
    let pods = Api::<Pod>::new(channel.clone());
    let revisions = Api::<ControllerRevision>::new(channel.clone());
    sets.create(stateful_set("kept", 2, "Delete"))
        .await
        .unwrap();
    sets.create(stateful_set("gone", 1, "Delete"))
        .await
        .unwrap();
    for claim in ["data-kept-0", "data-kept-1", "data-gone-0"] {
        wait_for_claim(&claims, claim, "Bound").await;
    }
    let owned = claims.get("default", "data-gone-0").await.unwrap();
    assert_eq!(owned.metadata.unwrap().owner_references[0].name, "gone");

    // Orphaned: everything stays, owned by nothing.
    sets.delete(DeleteRequest {
        namespace: "default".into(),
        name: "kept".into(),
        propagation_policy: "Orphan".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_gone(&sets, "default", "kept").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for claim in ["data-kept-0", "data-kept-1"] {
        let c = claims.get("default", claim).await.unwrap();
        let meta = c.metadata.unwrap();
        assert!(meta.owner_references.is_empty(), "{claim}: {meta:?}");
        assert!(meta.deletion_timestamp.is_none(), "{claim}");
    }
    let pod = pods.get("default", "kept-0").await.unwrap();
    assert!(pod.metadata.unwrap().owner_references.is_empty());
    let left = revisions
        .list(ListRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        left.items.iter().any(|r| r
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.starts_with("kept-"))),
        "its revisions stay too"
    );

    // Made again: it takes its pods, claims and revision back.
    let again = sets
        .create(stateful_set("kept", 2, "Delete"))
        .await
        .unwrap();
    let uid = again.metadata.unwrap().uid;
    let owned_by_it =
        |refs: &[skiff::pb::meta::v1::OwnerReference]| refs.iter().any(|o| o.uid == uid);
    wait_until(
        "the new set adopts what the old one left",
        Duration::from_secs(60),
        async || {
            let pod = pods.get("default", "kept-0").await;
            let claim = claims.get("default", "data-kept-1").await;
            let revisions = revisions
                .list(ListRequest {
                    namespace: "default".into(),
                    ..Default::default()
                })
                .await;
            pod.is_ok_and(|p| owned_by_it(&p.metadata.unwrap().owner_references))
                && claim.is_ok_and(|c| owned_by_it(&c.metadata.unwrap().owner_references))
                && revisions.is_ok_and(|l| {
                    l.items.iter().any(|r| {
                        r.metadata.as_ref().is_some_and(|m| {
                            m.name.starts_with("kept-") && owned_by_it(&m.owner_references)
                        })
                    })
                })
        },
    )
    .await;

    // Deleted: its claim goes after it.
    delete(&sets, "default", "gone").await;
    wait_gone(&claims, "default", "data-gone-0").await;
}
