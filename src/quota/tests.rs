use super::*;
use crate::pb::core::v1::{
    ConfigMap, PersistentVolumeClaimSpec, ResourceRequirements, ServicePort, ServiceSpec,
    VolumeResourceRequirements,
};
use crate::pb::meta::v1::ObjectMeta;

fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
    let map = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    Container {
        name: name.into(),
        resources: Some(ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
        }),
        ..Default::default()
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
    Pod {
        spec: Some(PodSpec {
            containers,
            init_containers: init,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn strings(list: &ResourceList) -> Vec<String> {
    list.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[test]
fn a_pods_usage_adds_containers_and_takes_the_larger_init_peak() {
    let mut sidecar = container("proxy", &[("cpu", "100m")], &[]);
    sidecar.restart_policy = Some("Always".into());
    let p = pod(
        vec![
            container("a", &[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "1")]),
            container("b", &[("cpu", "250m")], &[]),
        ],
        vec![sidecar, container("migrate", &[("cpu", "900m")], &[])],
    );
    // Containers and the sidecar: 600m; the init container beside the
    // sidecar: 1000m, the larger.
    assert_eq!(
        strings(&pod_usage(&p)),
        [
            "count/pods=1",
            "cpu=1",
            "limits.cpu=1",
            "memory=64Mi",
            "pods=1",
            "requests.cpu=1",
            "requests.memory=64Mi",
        ]
    );
}

#[test]
fn finished_pods_and_pods_past_their_grace_stop_counting() {
    let mut p = pod(vec![container("a", &[], &[])], vec![]);
    assert!(pod_counts(&p, 100));
    p.status = Some(crate::pb::core::v1::PodStatus {
        phase: "Succeeded".into(),
        ..Default::default()
    });
    assert!(!pod_counts(&p, 100));
    p.status = None;
    p.metadata = Some(ObjectMeta {
        deletion_timestamp: Some(crate::wkt::Timestamp {
            seconds: 100,
            nanos: 0,
        }),
        deletion_grace_period_seconds: Some(30),
        ..Default::default()
    });
    assert!(pod_counts(&p, 130));
    assert!(!pod_counts(&p, 131));
}

#[test]
fn services_claims_and_other_kinds_count_by_their_names() {
    let svc = Service {
        spec: Some(ServiceSpec {
            r#type: "LoadBalancer".into(),
            ports: vec![ServicePort::default(), ServicePort::default()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        strings(&usage(&svc)),
        [
            "count/services=1",
            "services=1",
            "services.loadbalancers=1",
            "services.nodeports=2"
        ]
    );
    let claim = PersistentVolumeClaim {
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some("fast".into()),
            resources: Some(VolumeResourceRequirements {
                requests: [("storage".to_string(), "5Gi".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        strings(&usage(&claim)),
        [
            "count/persistentvolumeclaims=1",
            "fast.storageclass.storage.k8s.io/persistentvolumeclaims=1",
            "fast.storageclass.storage.k8s.io/requests.storage=5Gi",
            "persistentvolumeclaims=1",
            "requests.storage=5Gi"
        ]
    );
    assert_eq!(
        strings(&usage(&ConfigMap::default())),
        ["configmaps=1", "count/configmaps=1"]
    );
    assert_eq!(
        strings(&usage(&crate::pb::apps::v1::Deployment::default())),
        ["count/deployments.apps=1"]
    );
}

#[test]
fn scoped_quotas_count_only_the_pods_in_every_scope() {
    let quota =
        |scopes: &[&str], expressions: Vec<ScopedResourceSelectorRequirement>| ResourceQuota {
            spec: Some(ResourceQuotaSpec {
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                scope_selector: Some(crate::pb::core::v1::ScopeSelector {
                    match_expressions: expressions,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
    let best_effort = pod(vec![container("a", &[], &[])], vec![]);
    let mut burstable = pod(vec![container("a", &[("memory", "1Mi")], &[])], vec![]);
    assert!(quota_counts(
        &quota(&[SCOPE_BEST_EFFORT], vec![]),
        &best_effort
    ));
    assert!(!quota_counts(
        &quota(&[SCOPE_BEST_EFFORT], vec![]),
        &burstable
    ));
    assert!(quota_counts(
        &quota(&[SCOPE_NOT_BEST_EFFORT], vec![]),
        &burstable
    ));
    assert!(!quota_counts(
        &quota(&[SCOPE_TERMINATING], vec![]),
        &burstable
    ));
    burstable.spec.as_mut().unwrap().priority_class_name = "high".into();
    let class = |operator: &str, values: &[&str]| ScopedResourceSelectorRequirement {
        scope_name: SCOPE_PRIORITY_CLASS.into(),
        operator: operator.into(),
        values: values.iter().map(|s| s.to_string()).collect(),
    };
    assert!(quota_counts(
        &quota(&[], vec![class("In", &["high"])]),
        &burstable
    ));
    assert!(!quota_counts(
        &quota(&[], vec![class("In", &["high"])]),
        &best_effort
    ));
    assert!(quota_counts(
        &quota(&[], vec![class("NotIn", &["high"])]),
        &best_effort
    ));
    // A pod without a class has no PriorityClass label at all.
    assert!(quota_counts(
        &quota(&[], vec![class("DoesNotExist", &[])]),
        &best_effort
    ));
    assert!(!quota_counts(
        &quota(&[], vec![class("DoesNotExist", &[])]),
        &burstable
    ));
    assert!(!quota_counts(
        &quota(&[], vec![class("In", &[""])]),
        &best_effort
    ));
    // Scoped quotas count pods only.
    assert!(!quota_counts(
        &quota(&[SCOPE_NOT_TERMINATING], vec![]),
        &ConfigMap::default()
    ));
    assert!(quota_counts(&quota(&[], vec![]), &ConfigMap::default()));
}

#[test]
fn a_capped_cpu_needs_a_request_in_every_container() {
    let p = pod(
        vec![
            container("web", &[("cpu", "1")], &[]),
            container("log", &[], &[]),
        ],
        vec![container("init", &[], &[("memory", "1Mi")])],
    );
    let capped: BTreeSet<String> = ["requests.cpu", "limits.memory", "pods"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        missing_requirements(&p, &capped).as_deref(),
        Some("must specify limits.memory for: log,web; requests.cpu for: init,log")
    );
    let only_pods: BTreeSet<String> = ["pods".to_string()].into();
    assert_eq!(missing_requirements(&p, &only_pods), None);
}

#[test]
fn kinds_are_measured_in_their_own_resources_and_sums_saturate() {
    assert!(covers::<Pod>("limits.memory") && covers::<Pod>("count/pods"));
    assert!(!covers::<Pod>("requests.storage") && !covers::<Pod>("services"));
    assert!(covers::<Service>("services.nodeports"));
    assert!(covers::<PersistentVolumeClaim>(
        "gold.storageclass.storage.k8s.io/requests.storage"
    ));
    assert!(covers::<ConfigMap>("configmaps") && covers::<ConfigMap>("count/configmaps"));
    assert!(!covers::<ConfigMap>("secrets"));
    let mut used: ResourceList = [("limits.cpu".to_string(), Quantity::from_milli(1))].into();
    add(
        &mut used,
        &[("limits.cpu".to_string(), Quantity::from_milli(i64::MAX))].into(),
    );
    assert_eq!(used["limits.cpu"], Quantity::from_milli(i64::MAX));
}

#[test]
fn an_update_is_charged_for_what_it_adds() {
    let cluster_ip = service_usage(&Service::default());
    let balanced = service_usage(&Service {
        spec: Some(ServiceSpec {
            r#type: "LoadBalancer".into(),
            ports: vec![ServicePort::default()],
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        strings(&increase(&balanced, &cluster_ip)),
        ["services.loadbalancers=1", "services.nodeports=1"]
    );
    assert!(increase(&cluster_ip, &balanced).is_empty());
}

#[test]
fn used_is_the_sum_over_what_is_capped() {
    let hard: BTreeMap<String, String> = [("pods", "4"), ("requests.cpu", "2"), ("secrets", "1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let a = pod_usage(&pod(vec![container("a", &[("cpu", "500m")], &[])], vec![]));
    let b = pod_usage(&pod(vec![container("b", &[("cpu", "250m")], &[])], vec![]));
    assert_eq!(
        strings(&used_of(&hard, [&a, &b])),
        ["pods=2", "requests.cpu=750m", "secrets=0"]
    );
    let memory: BTreeMap<String, String> =
        [("limits.memory".to_string(), "1Gi".to_string())].into();
    let m = pod_usage(&pod(
        vec![container("m", &[], &[("memory", "256Mi")])],
        vec![],
    ));
    assert_eq!(
        strings(&used_of(&memory, [&m, &m])),
        ["limits.memory=512Mi"]
    );
}
