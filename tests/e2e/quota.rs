//! ResourceQuotas and LimitRanges end to end, on hollow nodes: the
//! quota controller (a real `skiff controller-manager`) counts, the API
//! server's admission charges and refuses, LimitRanger defaults and
//! bounds.

use std::collections::BTreeMap;
use std::time::Duration;

use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::apps::v1::{Deployment, DeploymentSpec};
use skiff::pb::core::v1::{
    Container, LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, Pod, PodSpec, ResourceQuota, ResourceQuotaSpec,
    ResourceRequirements, Service, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use skiff::pb::meta::v1::{LabelSelector, ObjectMeta};
use skiff_client::Api;
use tonic::Code;

use crate::controllers::env;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn meta(namespace: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    })
}

async fn namespace(channel: &tonic::transport::Channel, name: &str) {
    let mut ns = Namespace::default();
    ns.metadata.get_or_insert_with(Default::default).name = name.into();
    Api::<Namespace>::new(channel.clone())
        .create(ns)
        .await
        .unwrap();
}

/// A pod of one container asking for `cpu` (none: no resources).
fn pod(namespace: &str, name: &str, cpu: Option<&str>) -> Pod {
    Pod {
        metadata: meta(namespace, name),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: "busybox:1.36".into(),
                resources: cpu.map(|cpu| ResourceRequirements {
                    requests: map(&[("cpu", cpu)]),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates a quota and waits until its controller has counted it (until
/// then it caps nothing, as in Kubernetes).
async fn quota(
    channel: &tonic::transport::Channel,
    namespace: &str,
    hard: &[(&str, &str)],
) -> Api<ResourceQuota> {
    let quotas = Api::<ResourceQuota>::new(channel.clone());
    quotas
        .create(ResourceQuota {
            metadata: meta(namespace, "compute"),
            spec: Some(ResourceQuotaSpec {
                hard: map(hard),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let want = map(hard);
    skiff_testkit::wait_until(
        "the quota controller never counted the quota",
        Duration::from_secs(20),
        async || {
            quotas
                .get(namespace, "compute")
                .await
                .ok()
                .and_then(|q| q.status)
                .is_some_and(|s| s.hard == want && s.used.len() == want.len())
        },
    )
    .await;
    quotas
}

fn used(q: &ResourceQuota, resource: &str) -> String {
    q.status
        .as_ref()
        .and_then(|s| s.used.get(resource).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refuses_what_would_pass_its_caps_and_frees_what_pods_give_back() {
    let env = env(None).await;
    namespace(&env.channel, "team").await;
    let quotas = quota(
        &env.channel,
        "team",
        &[
            ("pods", "2"),
            ("requests.cpu", "1"),
            ("count/deployments.apps", "1"),
            ("services.loadbalancers", "0"),
        ],
    )
    .await;
    let pods = Api::<Pod>::new(env.channel.clone());

    // A pod without a CPU request cannot be counted against requests.cpu.
    let err = pods.create(pod("team", "bare", None)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "pods \"bare\" is forbidden: failed quota: compute: must specify requests.cpu for: app"
    );

    pods.create(pod("team", "a", Some("500m"))).await.unwrap();
    // A request so large the sum overflows is still past the cap.
    let err = pods
        .create(pod("team", "huge", Some("9223372036854775807m")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("exceeded quota: compute"), "{err:?}");
    // Charged at admission: the next create sees it at once.
    let err = pods
        .create(pod("team", "b", Some("600m")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "pods \"b\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=500m, limited: requests.cpu=1"
    );
    pods.create(pod("team", "b", Some("500m"))).await.unwrap();
    let err = pods.create(pod("team", "c", Some("0"))).await.unwrap_err();
    assert!(
        err.message()
            .ends_with("exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2"),
        "{err:?}"
    );
    let q = quotas.get("team", "compute").await.unwrap();
    assert_eq!(
        (used(&q, "pods"), used(&q, "requests.cpu")),
        ("2".into(), "1".into())
    );

    // Other kinds count by `count/<plural>.<group>`.
    let deployment = |name: &str| Deployment {
        metadata: meta("team", name),
        spec: Some(DeploymentSpec {
            replicas: Some(0),
            selector: Some(LabelSelector {
                match_labels: map(&[("app", name)]),
                ..Default::default()
            }),
            template: Some(skiff::pb::core::v1::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: map(&[("app", name)]),
                    ..Default::default()
                }),
                spec: pod("team", "x", Some("100m")).spec,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let deployments = Api::<Deployment>::new(env.channel.clone());
    deployments.create(deployment("one")).await.unwrap();
    let err = deployments.create(deployment("two")).await.unwrap_err();
    assert!(
        err.message().ends_with(
            "exceeded quota: compute, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
        ),
        "{err:?}"
    );

    // An update is charged for what it adds: a Service made a
    // LoadBalancer.
    let services = Api::<Service>::new(env.channel.clone());
    let mut svc = services
        .create(Service {
            metadata: meta("team", "web"),
            spec: Some(ServiceSpec {
                ports: vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    svc.spec.as_mut().unwrap().r#type = "LoadBalancer".into();
    let err = services.update(svc).await.unwrap_err();
    assert!(
        err.message().ends_with(
            "exceeded quota: compute, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"
        ),
        "{err:?}"
    );

    // A pod that goes gives its share back: the controller recounts.
    pods.delete(DeleteRequest {
        namespace: "team".into(),
        name: "a".into(),
        grace_period_seconds: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    skiff_testkit::wait_until(
        "the deleted pod was never given back",
        Duration::from_secs(20),
        async || {
            quotas
                .get("team", "compute")
                .await
                .is_ok_and(|q| used(&q, "pods") == "1" && used(&q, "requests.cpu") == "500m")
        },
    )
    .await;
    pods.create(pod("team", "c", Some("500m"))).await.unwrap();
    // Other namespaces are not this quota's.
    pods.create(pod("default", "free", None)).await.unwrap();

    // A quota of CPU alone still counts every pod: one without a request
    // is refused, though it uses nothing the quota caps.
    namespace(&env.channel, "cpu").await;
    quota(&env.channel, "cpu", &[("requests.cpu", "1")]).await;
    let err = pods.create(pod("cpu", "bare", None)).await.unwrap_err();
    assert_eq!(
        err.message(),
        "pods \"bare\" is forbidden: failed quota: compute: must specify requests.cpu for: app"
    );
    pods.create(pod("cpu", "fine", Some("1"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_never_pass_a_quota() {
    let env = env(None).await;
    namespace(&env.channel, "race").await;
    let quotas = quota(&env.channel, "race", &[("pods", "3")]).await;
    let pods = Api::<Pod>::new(env.channel.clone());
    let results =
        futures::future::join_all((0..8).map(|i| pods.create(pod("race", &format!("p{i}"), None))))
            .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|s| s.code() == Code::PermissionDenied)
        })
        .count();
    assert_eq!((created, refused), (3, 5), "{results:?}");
    let listed = skiff_testkit::list::<Pod>(&env.channel, "race", "").await;
    assert_eq!(listed.len(), 3);
    assert_eq!(
        used(&quotas.get("race", "compute").await.unwrap(), "pods"),
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranges_default_containers_and_refuse_what_is_out_of_bounds() {
    let env = env(None).await;
    namespace(&env.channel, "limited").await;
    let ranges = Api::<LimitRange>::new(env.channel.clone());
    let range = ranges
        .create(LimitRange {
            metadata: meta("limited", "defaults"),
            spec: Some(LimitRangeSpec {
                limits: vec![
                    LimitRangeItem {
                        r#type: "Container".into(),
                        max: map(&[("cpu", "1")]),
                        min: map(&[("memory", "16Mi")]),
                        default: map(&[("memory", "256Mi")]),
                        default_request: map(&[("cpu", "100m"), ("memory", "64Mi")]),
                        ..Default::default()
                    },
                    LimitRangeItem {
                        r#type: "PersistentVolumeClaim".into(),
                        max: map(&[("storage", "1Gi")]),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Kubernetes' defaulting of the range itself: max is the default limit.
    assert_eq!(
        range.spec.as_ref().unwrap().limits[0].default,
        map(&[("cpu", "1"), ("memory", "256Mi")])
    );
    let pods = Api::<Pod>::new(env.channel.clone());
    let created = pods.create(pod("limited", "web", None)).await.unwrap();
    let r = created.spec.as_ref().unwrap().containers[0]
        .resources
        .clone()
        .unwrap();
    assert_eq!(r.requests, map(&[("cpu", "100m"), ("memory", "64Mi")]));
    assert_eq!(r.limits, map(&[("cpu", "1"), ("memory", "256Mi")]));
    assert_eq!(
        created.metadata.as_ref().unwrap().annotations["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app"
    );

    let mut greedy = pod("limited", "greedy", Some("500m"));
    greedy.spec.as_mut().unwrap().containers[0]
        .resources
        .as_mut()
        .unwrap()
        .limits = map(&[("cpu", "2"), ("memory", "8Mi")]);
    let err = pods.create(greedy).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "pods \"greedy\" is forbidden: [minimum memory usage per Container is 16Mi, but request is 8Mi, maximum cpu usage per Container is 1, but limit is 2]"
    );

    let claim = |size: &str| PersistentVolumeClaim {
        metadata: meta("limited", "data"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: vec!["ReadWriteOnce".into()],
            resources: Some(VolumeResourceRequirements {
                requests: map(&[("storage", size)]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let claims = Api::<PersistentVolumeClaim>::new(env.channel.clone());
    let err = claims.create(claim("5Gi")).await.unwrap_err();
    assert_eq!(
        err.message(),
        "persistentvolumeclaims \"data\" is forbidden: maximum storage usage per PersistentVolumeClaim is 1Gi, but request is 5Gi"
    );
    claims.create(claim("512Mi")).await.unwrap();
    // Nothing of a refused pod was written.
    assert!(pods.get("limited", "greedy").await.is_err());
}

/// Store lists the in-process API server has made so far.
fn store_lists() -> f64 {
    skiff_metrics::registry()
        .gather()
        .iter()
        .filter(|family| family.name() == "skiff_store_operation_duration_seconds")
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "operation" && l.value() == "list")
        })
        .map(|m| m.get_histogram().get_sample_count() as f64)
        .sum()
}

/// LimitRanger trusts a lookup that found no range for a while, as
/// Kubernetes' does: pod creates in a namespace without ranges do not list
/// the store each; a range created there is still applied at once (the
/// index, read first, has it within moments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_ranger_does_not_list_the_store_per_pod_and_sees_a_new_range_at_once() {
    let env = env(None).await;
    namespace(&env.channel, "open").await;
    let pods = Api::<Pod>::new(env.channel.clone());
    pods.create(pod("open", "first", None)).await.unwrap();
    // Other clients (the controller manager's informers starting up) list
    // too: the fewest lists of a few rounds counts. Without the trusted
    // lookup, every round would list at least once per create.
    let mut fewest = f64::MAX;
    for round in 0..5 {
        let before = store_lists();
        for i in 0..20 {
            let name = format!("p{round}-{i}");
            pods.create(pod("open", &name, None)).await.unwrap();
        }
        fewest = fewest.min(store_lists() - before);
        if fewest < 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(fewest < 5.0, "{fewest} store lists for 20 creates");
    Api::<LimitRange>::new(env.channel.clone())
        .create(LimitRange {
            metadata: meta("open", "defaults"),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    r#type: "Container".into(),
                    default_request: map(&[("cpu", "100m")]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut n = 0;
    skiff_testkit::wait_until(
        "a pod gets the new range's default",
        Duration::from_secs(5),
        async || {
            n += 1;
            let created = pods
                .create(pod("open", &format!("late-{n}"), None))
                .await
                .unwrap();
            created.spec.unwrap().containers[0]
                .resources
                .as_ref()
                .is_some_and(|r| r.requests.get("cpu").map(String::as_str) == Some("100m"))
        },
    )
    .await;
}
