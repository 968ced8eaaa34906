//! The controller manager end to end, on hollow nodes: real `skiff
//! controller-manager`, `skiff scheduler` and `skiff hollow-nodes`
//! processes against an in-process API server.

use std::time::{Duration, Instant};

use skiff::Resource;
use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::apps::v1::{ReplicaSet, ReplicaSetSpec};
use skiff::pb::core::v1::{
    Container, Namespace, Pod, PodSpec, PodTemplateSpec, ReplicationController,
    ReplicationControllerSpec, ServiceAccount,
};
use skiff::pb::meta::v1::{LabelSelector, ObjectMeta};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;

pub(crate) struct Env {
    pub(crate) server: skiff_apiserver::ApiServer,
    pub(crate) channel: tonic::transport::Channel,
    _processes: Vec<skiff_testkit::ChildGuard>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn env(panic_hook: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let hook: Vec<(&str, &str)> = panic_hook
        .map(|c| vec![("SKIFF_TEST_PANIC_CONTROLLER", c)])
        .unwrap_or_default();
    let processes = vec![
        skiff_testkit::hollow_nodes(&url, 5).unwrap(),
        skiff_testkit::SchedulerProcess::start(&url, "s1", 2)
            .unwrap()
            .process,
        skiff_testkit::controller_manager(&url, &hook).unwrap(),
    ];
    Env {
        channel: skiff_client::connect_lazy(&url).unwrap(),
        server,
        _processes: processes,
        _dir: dir,
    }
}

fn template(app: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "web".into(),
                image: "busybox:1.36".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    ReplicaSet {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector: Some(LabelSelector {
                match_labels: [("app".to_string(), name.to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            template: Some(template(name)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Running (not terminating) pods labelled app=`app`.
pub(crate) async fn running(env: &Env, app: &str) -> Vec<Pod> {
    skiff_testkit::live_pods(&env.channel, "default", &format!("app={app}")).await
}

pub(crate) async fn wait_running(env: &Env, app: &str, n: usize) -> Vec<Pod> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = running(env, app).await;
        if pods.len() == n {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "{} Running pods of {app}, want {n}",
            pods.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scale(env: &Env, name: &str, replicas: i32) {
    let api = Api::<ReplicaSet>::new(env.channel.clone());
    for _ in 0..10 {
        let mut rs = api.get("default", name).await.unwrap();
        rs.spec.as_mut().unwrap().replicas = Some(replicas);
        // The status is the controller's: send none.
        rs.status = None;
        match api.update(rs).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => panic!("scaling: {s}"),
        }
    }
    panic!("could not scale {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicaset_keeps_its_pods_and_scales() {
    let env = env(None).await;
    let rs_api = Api::<ReplicaSet>::new(env.channel.clone());
    rs_api.create(replicaset("web", 3)).await.unwrap();
    let pods = wait_running(&env, "web", 3).await;
    for p in &pods {
        let owner = &p.metadata.as_ref().unwrap().owner_references[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ReplicaSet", "web", Some(true))
        );
    }
    // What the controller did shows as events on the ReplicaSet.
    let events = Api::<skiff::pb::core::v1::Event>::new(env.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let created = events
            .list(ListRequest {
                namespace: "default".into(),
                field_selector: "involvedObject.name=web,reason=SuccessfulCreate".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        if created.len() == 3 {
            assert!(
                created
                    .iter()
                    .all(|e| e.message.starts_with("Created pod: web-"))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} SuccessfulCreate events",
            created.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A deleted pod is replaced.
    let victim = pods[0].metadata.as_ref().unwrap().name.clone();
    Api::<Pod>::new(env.channel.clone())
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: victim.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pods = wait_running(&env, "web", 3).await;
    assert!(
        pods.iter()
            .all(|p| p.metadata.as_ref().unwrap().name != victim)
    );
    scale(&env, "web", 5).await;
    wait_running(&env, "web", 5).await;
    scale(&env, "web", 1).await;
    wait_running(&env, "web", 1).await;
    // The status follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs = rs_api.get("default", "web").await.unwrap();
        let s = rs.status.clone().unwrap_or_default();
        if s.replicas == 1
            && s.ready_replicas == 1
            && s.observed_generation == rs.metadata.unwrap().generation
        {
            break;
        }
        assert!(Instant::now() < deadline, "status {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Deleting the ReplicaSet deletes its pods (background propagation).
    rs_api
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pods = Api::<Pod>::new(env.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = pods
            .list(ListRequest {
                namespace: "default".into(),
                label_selector: "app=web".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} pods outlived their ReplicaSet"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_controller_adopts_orphans_and_fills_up() {
    let env = env(None).await;
    // An orphan that matches: adopted, not duplicated.
    let orphan = Pod {
        metadata: Some(ObjectMeta {
            name: "orphan".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "legacy".to_string())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        spec: template("legacy").spec,
        ..Default::default()
    };
    Api::<Pod>::new(env.channel.clone())
        .create(orphan)
        .await
        .unwrap();
    // Running: long enough for every informer to have seen it.
    wait_running(&env, "legacy", 1).await;
    let rc = ReplicationController {
        metadata: Some(ObjectMeta {
            name: "legacy".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ReplicationControllerSpec {
            replicas: Some(3),
            selector: [("app".to_string(), "legacy".to_string())]
                .into_iter()
                .collect(),
            template: Some(template("legacy")),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ReplicationController>::new(env.channel.clone())
        .create(rc)
        .await
        .unwrap();
    // The controller may act before it has seen the orphan (an informer
    // lags, in Kubernetes too): it then makes a fourth pod and removes the
    // surplus once it adopts. What must hold in the end: three pods, all
    // the controller's, the orphan among them.
    let owned_by_rc = |p: &Pod| {
        p.metadata.as_ref().is_some_and(|m| {
            m.owner_references
                .iter()
                .any(|o| o.kind == "ReplicationController" && o.controller == Some(true))
        })
    };
    let mut last = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        last = running(&env, "legacy").await;
        if last.len() == 3 && last.iter().all(owned_by_rc) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names: Vec<&str> = last.iter().map(|p| p.name()).collect();
    assert!(
        last.len() == 3 && last.iter().all(owned_by_rc),
        "want 3 running pods owned by the controller, have {names:?}"
    );
    assert!(names.contains(&"orphan"), "orphan not kept: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account() {
    let env = env(None).await;
    let mut ns = Namespace::default();
    ns.metadata.get_or_insert_with(Default::default).name = "team-a".into();
    Api::<Namespace>::new(env.channel.clone())
        .create(ns)
        .await
        .unwrap();
    let accounts = Api::<ServiceAccount>::new(env.channel.clone());
    skiff_testkit::wait_until(
        "no default service account in team-a",
        Duration::from_secs(20),
        async || accounts.get("team-a", "default").await.is_ok(),
    )
    .await;
    // Deleted: it comes back.
    accounts
        .delete(DeleteRequest {
            namespace: "team-a".into(),
            name: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    skiff_testkit::wait_until(
        "default service account not recreated",
        Duration::from_secs(20),
        async || accounts.get("team-a", "default").await.is_ok(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_controller_is_restarted_and_then_reconciles_correctly() {
    let env = env(Some("replicasets")).await;
    Api::<ReplicaSet>::new(env.channel.clone())
        .create(replicaset("api", 2))
        .await
        .unwrap();
    // The first reconcile panics; the supervisor restarts the controller
    // (after a 1 s pause) and the next reconcile creates the pods.
    wait_running(&env, "api", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_ready_pods_of_a_service() {
    use skiff::pb::core::v1::{
        ContainerPort, Endpoints, PodCondition, PodStatus, Service, ServicePort, ServiceSpec,
    };
    use skiff::wkt::{Value, value::Kind};
    let env = env(None).await;
    let services = Api::<Service>::new(env.channel.clone());
    services
        .create(Service {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                selector: [("app".to_string(), "web-ep".to_string())]
                    .into_iter()
                    .collect(),
                ports: vec![ServicePort {
                    port: 80,
                    target_port: Some(Value {
                        kind: Some(Kind::StringValue("http".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    // Pods with no scheduler or agent in the way: their status (IP,
    // readiness) is written here as an agent would. The names keep the
    // hollow nodes' hands off: they are not bound to a node.
    let pods = Api::<Pod>::new(env.channel.clone());
    for (name, ip, ready) in [("a", "10.244.0.2", true), ("b", "10.244.0.3", false)] {
        let mut spec = template("web-ep").spec.unwrap();
        spec.scheduler_name = "nobody".into();
        spec.containers[0].ports.push(ContainerPort {
            name: "http".into(),
            container_port: 8080,
            ..Default::default()
        });
        let mut pod = pods
            .create(Pod {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    namespace: "default".into(),
                    labels: [("app".to_string(), "web-ep".to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                spec: Some(spec),
                ..Default::default()
            })
            .await
            .unwrap();
        pod.status = Some(PodStatus {
            phase: "Running".into(),
            pod_ip: ip.into(),
            conditions: vec![PodCondition {
                r#type: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        pods.update_status(pod).await.unwrap();
    }
    let endpoints = Api::<Endpoints>::new(env.channel.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let ep = loop {
        if let Ok(ep) = endpoints.get("default", "web").await {
            let ready: usize = ep.subsets.iter().map(|s| s.addresses.len()).sum();
            let not_ready: usize = ep.subsets.iter().map(|s| s.not_ready_addresses.len()).sum();
            if ready == 1 && not_ready == 1 {
                break ep;
            }
        }
        assert!(
            Instant::now() < deadline,
            "endpoints never listed 1 ready + 1 not ready pod"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ep.subsets[0].addresses[0].ip, "10.244.0.2");
    assert_eq!(
        ep.subsets[0].ports[0].port, 8080,
        "named target port resolved"
    );
    // Deleting the service removes its endpoints.
    services
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    skiff_testkit::wait_until(
        "endpoints outlived their service",
        Duration::from_secs(20),
        async || endpoints.get("default", "web").await.is_err(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_silent_node_are_recreated_elsewhere() {
    use skiff::pb::core::v1::Node;
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_client::connect_lazy(&url).unwrap();
    let mut doomed = skiff_testkit::hollow_nodes_named(&url, 2, "doomed-").unwrap();
    let _scheduler = skiff_testkit::SchedulerProcess::start(&url, "s1", 2).unwrap();
    let _cm = skiff_testkit::controller_manager_with(
        &url,
        &[],
        &[
            "--node-monitor-grace-period-secs=3",
            "--pod-eviction-timeout-secs=2",
        ],
    )
    .unwrap();
    let env = Env {
        server,
        channel: channel.clone(),
        _processes: Vec::new(),
        _dir: dir,
    };
    Api::<ReplicaSet>::new(channel.clone())
        .create(replicaset("moving", 4))
        .await
        .unwrap();
    let pods = wait_running(&env, "moving", 4).await;
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.starts_with("doomed-"))
    );
    // Healthy nodes arrive, then the first ones fall silent.
    let _healthy = skiff_testkit::hollow_nodes_named(&url, 2, "healthy-").unwrap();
    doomed.kill9();
    let nodes = Api::<Node>::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = nodes.get("", "doomed-0").await.unwrap();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Ready"))
            .map(|c| c.status.clone());
        let tainted = node.spec.as_ref().is_some_and(|s| {
            s.taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
        });
        if ready.as_deref() == Some("Unknown") && tainted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "silent node still {ready:?}, tainted {tainted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = Api::<skiff::pb::core::v1::Event>::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let not_ready = events
            .list(ListRequest {
                namespace: "default".into(),
                field_selector: "involvedObject.name=doomed-0,reason=NodeNotReady".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        if let Some(event) = not_ready.first() {
            assert_eq!(event.r#type, "Warning");
            break;
        }
        assert!(Instant::now() < deadline, "no NodeNotReady event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = running(&env, "moving").await;
        if pods.len() == 4
            && pods
                .iter()
                .all(|p| p.spec.as_ref().unwrap().node_name.starts_with("healthy-"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods not moved: {:?}",
            pods.iter()
                .map(|p| p.spec.as_ref().unwrap().node_name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_everything_in_it() {
    use skiff::pb::core::v1::ConfigMap;
    let env = env(None).await;
    let namespaces = Api::<Namespace>::new(env.channel.clone());
    let mut ns = Namespace::default();
    ns.metadata.get_or_insert_with(Default::default).name = "doomed".into();
    let created = namespaces.create(ns).await.unwrap();
    assert_eq!(
        created.metadata.unwrap().finalizers,
        vec!["kubernetes".to_string()]
    );
    let mut rs = replicaset("in-ns", 2);
    rs.metadata.as_mut().unwrap().namespace = "doomed".into();
    Api::<ReplicaSet>::new(env.channel.clone())
        .create(rs)
        .await
        .unwrap();
    Api::<ConfigMap>::new(env.channel.clone())
        .create(ConfigMap {
            metadata: Some(ObjectMeta {
                name: "settings".into(),
                namespace: "doomed".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let pods = Api::<Pod>::new(env.channel.clone());
    let in_ns = || ListRequest {
        namespace: "doomed".into(),
        ..Default::default()
    };
    skiff_testkit::wait_until(
        "the ReplicaSet's pods never appeared",
        Duration::from_secs(30),
        async || pods.list(in_ns()).await.unwrap().items.len() >= 2,
    )
    .await;
    let marked = namespaces
        .delete(DeleteRequest {
            name: "doomed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(marked.status.unwrap().phase, "Terminating");
    let deadline = Instant::now() + Duration::from_secs(30);
    while namespaces.get("", "doomed").await.is_ok() {
        assert!(Instant::now() < deadline, "the namespace never went away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pods.list(in_ns()).await.unwrap().items.is_empty());
    let configmaps = Api::<ConfigMap>::new(env.channel.clone());
    assert!(configmaps.list(in_ns()).await.unwrap().items.is_empty());
    let sas = Api::<ServiceAccount>::new(env.channel.clone());
    assert!(
        sas.list(in_ns()).await.unwrap().items.is_empty(),
        "no default account comes back"
    );
}

async fn pods_of(env: &Env, app: &str) -> Vec<Pod> {
    skiff_testkit::list(&env.channel, "default", &format!("app={app}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deletion_releases_the_pods_and_foreground_waits_for_them() {
    let env = env(None).await;
    let sets = Api::<ReplicaSet>::new(env.channel.clone());
    sets.create(replicaset("kept", 2)).await.unwrap();
    sets.create(replicaset("awaited", 2)).await.unwrap();
    wait_running(&env, "kept", 2).await;
    wait_running(&env, "awaited", 2).await;

    // Orphan: the set goes, its pods stay, owned by nobody.
    sets.delete(DeleteRequest {
        namespace: "default".into(),
        name: "kept".into(),
        propagation_policy: "Orphan".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sets.get("default", "kept").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the orphaning set is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods = pods_of(&env, "kept").await;
    assert_eq!(pods.len(), 2, "the pods stay");
    assert!(
        pods.iter()
            .all(|p| p.metadata.as_ref().unwrap().owner_references.is_empty()),
        "and belong to nobody"
    );

    // Foreground: the set is marked, its pods go first, then it goes.
    let marked = sets
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "awaited".into(),
            propagation_policy: "Foreground".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let meta = marked.metadata.unwrap();
    assert!(meta.deletion_timestamp.is_some());
    assert_eq!(meta.finalizers, vec!["foregroundDeletion".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let set_there = sets.get("default", "awaited").await.is_ok();
        let pods_left = pods_of(&env, "awaited").await.len();
        assert!(
            set_there || pods_left == 0,
            "the set went before its {pods_left} pods"
        );
        if !set_there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the foreground deletion did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_deleted_in_the_foreground_goes_after_its_sets_and_pods() {
    use skiff::pb::apps::v1::{Deployment, DeploymentSpec};
    let env = env(None).await;
    let deployments = Api::<Deployment>::new(env.channel.clone());
    let sets = Api::<ReplicaSet>::new(env.channel.clone());
    deployments
        .create(Deployment {
            metadata: Some(ObjectMeta {
                name: "fg".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                selector: Some(LabelSelector {
                    match_labels: [("app".to_string(), "fg".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(template("fg")),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_running(&env, "fg", 3).await;
    deployments
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "fg".into(),
            propagation_policy: "Foreground".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deployment_there = deployments.get("default", "fg").await.is_ok();
        let sets_left = sets
            .list(ListRequest {
                namespace: "default".into(),
                label_selector: "app=fg".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len();
        let pods_left = pods_of(&env, "fg").await.len();
        assert!(
            deployment_there || sets_left + pods_left == 0,
            "the deployment went before its {sets_left} sets and {pods_left} pods"
        );
        if !deployment_there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the foreground deletion did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Foreground deletion waits for the dependents that block their owner's
/// deletion (`blockOwnerDeletion: true`), not for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_only_for_dependents_that_block_it() {
    let env = env(None).await;
    let sets = Api::<ReplicaSet>::new(env.channel.clone());
    let pods = Api::<Pod>::new(env.channel.clone());
    let holder = sets.create(replicaset("holder", 0)).await.unwrap();
    let uid = holder.metadata.unwrap().uid;
    // Two pods it owns (not as their controller), each held by a
    // finalizer of ours so that they linger once deleted.
    for (name, blocks) in [("blocker", true), ("bystander", false)] {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default",
                "labels": {"app": "loose"},
                "finalizers": ["example.com/hold"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "holder",
                    "uid": uid, "blockOwnerDeletion": blocks
                }]
            },
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
        }))
        .unwrap();
        pods.create(pod).await.unwrap();
    }
    sets.delete(DeleteRequest {
        namespace: "default".into(),
        name: "holder".into(),
        propagation_policy: "Foreground".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let deleting = async |name: &str| {
        pods.get("default", name)
            .await
            .is_ok_and(|p| p.metadata.is_some_and(|m| m.deletion_timestamp.is_some()))
    };
    skiff_testkit::wait_until(
        "the collector deletes both",
        Duration::from_secs(30),
        async || deleting("blocker").await && deleting("bystander").await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sets.get("default", "holder").await.is_ok(),
        "the owner went while a blocking dependent was left"
    );
    let release = async |name: &str| {
        skiff_testkit::modify(&pods, "default", name, |pod| {
            pod.metadata.as_mut().unwrap().finalizers.clear();
        })
        .await;
    };
    release("blocker").await;
    // It goes although the bystander, held by our finalizer, is still
    // there: only the blocking dependent was waited for.
    skiff_testkit::wait_until(
        "the owner goes once its blocking dependent has",
        Duration::from_secs(30),
        async || sets.get("default", "holder").await.is_err(),
    )
    .await;
    release("bystander").await;
}

pub(crate) fn deployment(name: &str, replicas: i32) -> skiff::pb::apps::v1::Deployment {
    use skiff::pb::apps::v1::{Deployment, DeploymentSpec};
    Deployment {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: Some(LabelSelector {
                match_labels: [("app".to_string(), name.to_string())].into(),
                ..Default::default()
            }),
            template: Some(template(name)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_pods_count_as_available_only_after_min_ready_seconds() {
    use skiff::pb::apps::v1::Deployment;
    let env = env(None).await;
    let deployments = Api::<Deployment>::new(env.channel.clone());
    let mut patient = deployment("patient", 2);
    patient.spec.as_mut().unwrap().min_ready_seconds = 4;
    deployments.create(patient).await.unwrap();
    // Watched from the start: the first moment both count as available.
    let mut available_at = None;
    skiff_testkit::wait_until("both pods available", Duration::from_secs(60), async || {
        let available = deployments
            .get("default", "patient")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.available_replicas == 2);
        if available {
            available_at = Some(skiff::time::now_seconds().seconds);
        }
        available
    })
    .await;
    let sets = sets_of(&env, "patient").await;
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].spec.as_ref().unwrap().min_ready_seconds, 4);
    // Not before 4 s after the last pod became Ready.
    let ready_at = running(&env, "patient")
        .await
        .iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.r#type == "Ready" && c.status == "True")?
                .last_transition_time
                .map(|t| t.seconds)
        })
        .max()
        .expect("the pods are Ready");
    let waited = available_at.unwrap() - ready_at;
    assert!(
        waited >= 4,
        "available {waited}s after the last pod was Ready"
    );
    // A changed minReadySeconds reaches the set without a new revision.
    skiff_testkit::modify(&deployments, "default", "patient", |d| {
        d.spec.as_mut().unwrap().min_ready_seconds = 0;
    })
    .await;
    skiff_testkit::wait_until(
        "the set follows minReadySeconds",
        Duration::from_secs(30),
        async || {
            let sets = sets_of(&env, "patient").await;
            sets.len() == 1 && sets[0].spec.as_ref().unwrap().min_ready_seconds == 0
        },
    )
    .await;
}

async fn sets_of(env: &Env, app: &str) -> Vec<ReplicaSet> {
    skiff_testkit::list(&env.channel, "default", &format!("app={app}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_deployments_wait_recreate_replaces_all_and_stuck_rollouts_time_out() {
    use skiff::pb::apps::v1::{Deployment, DeploymentStrategy};
    let env = env(None).await;
    let deployments = Api::<Deployment>::new(env.channel.clone());
    let update = async |name: &str, change: &dyn Fn(&mut Deployment)| {
        for _ in 0..10 {
            let mut d = deployments.get("default", name).await.unwrap();
            change(&mut d);
            d.status = None;
            match deployments.update(d).await {
                Ok(_) => return,
                Err(s) if s.code() == tonic::Code::Aborted => continue,
                Err(s) => panic!("updating {name}: {s}"),
            }
        }
    };
    let set_image = |image: &'static str| {
        move |d: &mut Deployment| {
            let spec = d.spec.as_mut().unwrap();
            spec.template
                .as_mut()
                .unwrap()
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .image = image.into();
        }
    };

    // Paused: a template change makes no new set until resumed.
    let mut paused = deployment("paused", 2);
    paused.spec.as_mut().unwrap().paused = true;
    deployments.create(paused).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        sets_of(&env, "paused").await.is_empty(),
        "a paused deployment rolls nothing out"
    );
    update("paused", &|d| d.spec.as_mut().unwrap().paused = false).await;
    wait_running(&env, "paused", 2).await;
    update("paused", &|d| d.spec.as_mut().unwrap().paused = true).await;
    update("paused", &set_image("busybox:2")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sets_of(&env, "paused").await.len(),
        1,
        "no rollout while paused"
    );
    update("paused", &|d| d.spec.as_mut().unwrap().paused = false).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sets_of(&env, "paused").await.len() != 2 {
        assert!(Instant::now() < deadline, "resuming did not roll out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Recreate: every old pod goes before a new one exists.
    let mut recreate = deployment("recreate", 3);
    recreate.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
        r#type: "Recreate".into(),
        rolling_update: None,
    });
    deployments.create(recreate).await.unwrap();
    wait_running(&env, "recreate", 3).await;
    update("recreate", &set_image("busybox:2")).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = pods_of(&env, "recreate").await;
        let image = |p: &Pod| p.spec.as_ref().unwrap().containers[0].image.clone();
        let old = pods.iter().filter(|p| image(p) != "busybox:2").count();
        let new = pods.iter().filter(|p| image(p) == "busybox:2").count();
        assert!(
            old == 0 || new == 0,
            "old and new pods at once: {old} old, {new} new"
        );
        if new == 3 && running(&env, "recreate").await.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recreate did not finish: {old} old, {new} new"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A rollout that cannot progress (its pods fit no node) times out.
    let mut stuck = deployment("stuck", 1);
    let spec = stuck.spec.as_mut().unwrap();
    spec.progress_deadline_seconds = Some(2);
    spec.template
        .as_mut()
        .unwrap()
        .spec
        .as_mut()
        .unwrap()
        .node_selector = [("disk".to_string(), "none-has-it".to_string())].into();
    deployments.create(stuck).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = deployments.get("default", "stuck").await.unwrap();
        let timed_out = d.status.unwrap_or_default().conditions.iter().any(|c| {
            c.r#type == "Progressing"
                && c.status == "False"
                && c.reason == "ProgressDeadlineExceeded"
        });
        if timed_out {
            break;
        }
        assert!(Instant::now() < deadline, "no ProgressDeadlineExceeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn daemonset(name: &str, node_selector: &[(&str, &str)]) -> skiff::pb::apps::v1::DaemonSet {
    let mut template = template(name);
    template.spec.as_mut().unwrap().node_selector = node_selector
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    skiff::pb::apps::v1::DaemonSet {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(skiff::pb::apps::v1::DaemonSetSpec {
            selector: Some(LabelSelector {
                match_labels: [("app".to_string(), name.to_string())].into(),
                ..Default::default()
            }),
            template: Some(template),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Read-modify-write of a Node, retried on stale versions.
pub(crate) async fn edit_node(
    env: &Env,
    name: &str,
    change: impl Fn(&mut skiff::pb::core::v1::Node),
) {
    let api = Api::<skiff::pb::core::v1::Node>::new(env.channel.clone());
    for _ in 0..10 {
        let mut node = api.get("", name).await.unwrap();
        change(&mut node);
        match api.update(node).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => panic!("updating node {name}: {s}"),
        }
    }
    panic!("node {name} kept changing");
}

/// The nodes the Running pods of `app` are on, sorted (one entry a pod).
pub(crate) async fn nodes_of(env: &Env, app: &str) -> Vec<String> {
    let mut nodes: Vec<String> = running(env, app)
        .await
        .into_iter()
        .map(|p| p.spec.unwrap_or_default().node_name)
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_runs_one_pod_per_matching_node_and_follows_nodes_and_its_template() {
    let env = env(None).await;
    let nodes = Api::<skiff::pb::core::v1::Node>::new(env.channel.clone());
    let mut all = Vec::new();
    skiff_testkit::wait_until("5 hollow nodes", Duration::from_secs(30), async || {
        all = nodes
            .list(ListRequest::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        all.len() == 5
    })
    .await;
    let mut names: Vec<String> = all
        .iter()
        .map(|n| n.metadata.clone().unwrap().name)
        .collect();
    names.sort();
    let sets = Api::<skiff::pb::apps::v1::DaemonSet>::new(env.channel.clone());
    sets.create(daemonset("agent", &[])).await.unwrap();
    let mut placed = Vec::new();
    skiff_testkit::wait_until("a pod on every node", Duration::from_secs(30), async || {
        placed = nodes_of(&env, "agent").await;
        placed == names
    })
    .await;
    let mut status = Default::default();
    skiff_testkit::wait_until("the status counts 5", Duration::from_secs(30), async || {
        status = sets
            .get("default", "agent")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        status.desired_number_scheduled == 5
            && status.current_number_scheduled == 5
            && status.number_ready == 5
            && status.updated_number_scheduled == 5
    })
    .await;

    // Only nodes labelled disk=ssd: two of them. The template changes
    // (a new revision) and the other three lose their pods.
    for n in &names[..2] {
        edit_node(&env, n, |node| {
            node.metadata
                .as_mut()
                .unwrap()
                .labels
                .insert("disk".into(), "ssd".into());
        })
        .await;
    }
    for _ in 0..10 {
        let mut ds = sets.get("default", "agent").await.unwrap();
        ds.spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .node_selector = [("disk".to_string(), "ssd".to_string())].into();
        ds.status = None;
        match sets.update(ds).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => panic!("{s}"),
        }
    }
    let ssd: Vec<String> = names[..2].to_vec();
    skiff_testkit::wait_until(
        "pods on the ssd nodes only, of the new template",
        Duration::from_secs(30),
        async || {
            let pods = running(&env, "agent").await;
            let revisions: std::collections::BTreeSet<String> = pods
                .iter()
                .map(|p| p.metadata.clone().unwrap().labels["controller-revision-hash"].clone())
                .collect();
            nodes_of(&env, "agent").await == ssd && revisions.len() == 1
        },
    )
    .await;

    // A taint the template does not tolerate takes the pod off that node;
    // a new ssd node gets one.
    edit_node(&env, &names[0], |node| {
        node.spec
            .get_or_insert_with(Default::default)
            .taints
            .push(skiff::pb::core::v1::Taint {
                key: "dedicated".into(),
                value: "db".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
    })
    .await;
    edit_node(&env, &names[4], |node| {
        node.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
    })
    .await;
    let want = vec![names[1].clone(), names[4].clone()];
    skiff_testkit::wait_until(
        "the taint and the new label are followed",
        Duration::from_secs(30),
        async || nodes_of(&env, "agent").await == want,
    )
    .await;

    // A deleted daemon pod comes back; deleting the set deletes its pods.
    let victim = running(&env, "agent").await[0].clone();
    let pods = Api::<Pod>::new(env.channel.clone());
    let victim_uid = victim.metadata.clone().unwrap().uid;
    pods.delete(DeleteRequest {
        namespace: "default".into(),
        name: victim.metadata.unwrap().name,
        grace_period_seconds: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    skiff_testkit::wait_until(
        "the deleted pod is replaced",
        Duration::from_secs(30),
        async || {
            let now = running(&env, "agent").await;
            now.len() == 2
                && now
                    .iter()
                    .all(|p| p.metadata.as_ref().unwrap().uid != victim_uid)
        },
    )
    .await;
    sets.delete(DeleteRequest {
        namespace: "default".into(),
        name: "agent".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    skiff_testkit::wait_until(
        "its pods are collected",
        Duration::from_secs(30),
        async || {
            skiff_testkit::list::<Pod>(&env.channel, "default", "app=agent")
                .await
                .is_empty()
        },
    )
    .await;
}

/// A Job of `command` (a host process: the process runtime).
fn job(name: &str, command: &str, spec: serde_json::Value) -> skiff::pb::batch::v1::Job {
    let mut value = serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", command]}]
            }}
        }
    });
    if let (Some(base), Some(more)) = (value["spec"].as_object_mut(), spec.as_object()) {
        base.extend(more.clone());
    }
    serde_json::from_value(value).unwrap()
}

async fn job_status(
    jobs: &Api<skiff::pb::batch::v1::Job>,
    name: &str,
) -> skiff::pb::batch::v1::JobStatus {
    jobs.get("default", name)
        .await
        .ok()
        .and_then(|j| j.status)
        .unwrap_or_default()
}

fn finished_with(status: &skiff::pb::batch::v1::JobStatus, kind: &str, reason: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.r#type == kind && c.status == "True" && c.reason == reason)
}

/// An in-process API server, an agent on the process runtime, the
/// scheduler and the controller manager: what batch workloads need.
pub(crate) struct ProcessCluster {
    /// A channel to the API server.
    pub(crate) channel: tonic::transport::Channel,
    _processes: [skiff_testkit::ChildGuard; 2],
    /// The node.
    pub(crate) node: skiff_testkit::AgentNode,
    /// The API server (stopped explicitly by tests that check a clean stop).
    server: skiff_apiserver::ApiServer,
    _dir: tempfile::TempDir,
}

impl ProcessCluster {
    pub(crate) async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, &[]).await
    }

    /// With these controller manager flags.
    async fn start_with(prefix: &str, controller_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server =
            skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
                .await
                .unwrap();
        let url = format!("http://{}", server.addr);
        let node = skiff_testkit::AgentNode::start_with_runtime(&url, prefix, "process").unwrap();
        let processes = [
            skiff_testkit::SchedulerProcess::start(&url, "s1", 2)
                .unwrap()
                .process,
            skiff_testkit::controller_manager_with(&url, &[], controller_args).unwrap(),
        ];
        Self {
            channel: skiff_client::connect_lazy(&url).unwrap(),
            _processes: processes,
            node,
            server,
            _dir: dir,
        }
    }
}

/// The Kubernetes docs' examples of Indexed jobs, per-index backoff,
/// pod failure policies and success policies (their commands in `sh`), as
/// Kubernetes 1.35 runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_jobs_and_failure_and_success_policies_run_as_kubernetes_runs_them() {
    let cluster = ProcessCluster::start("indexed").await;
    let channel = cluster.channel.clone();
    let jobs = Api::<skiff::pb::batch::v1::Job>::new(channel.clone());
    // Indexed: each index once, told its index.
    jobs.create(job(
        "indexed",
        "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        serde_json::json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
    ))
    .await
    .unwrap();
    // backoffLimitPerIndex: even indexes fail (once more each), odd succeed.
    jobs.create(job(
        "per-index",
        "if [ $((JOB_COMPLETION_INDEX % 2)) -eq 0 ]; then exit 1; fi",
        serde_json::json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
                           "backoffLimitPerIndex": 1, "maxFailedIndexes": 3}),
    ))
    .await
    .unwrap();
    // podFailurePolicy: exit code 42 fails the job at once.
    jobs.create(job(
        "pod-failure-policy",
        "exit 42",
        serde_json::json!({"completions": 4, "parallelism": 2, "backoffLimit": 6,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
            ]}}),
    ))
    .await
    .unwrap();
    // successPolicy: index 2 succeeding is enough.
    jobs.create(job(
        "success-policy",
        "if [ \"$JOB_COMPLETION_INDEX\" = 2 ]; then exit 0; fi; sleep 300",
        serde_json::json!({"completions": 4, "parallelism": 4, "completionMode": "Indexed",
            "successPolicy": {"rules": [{"succeededIndexes": "0,2-3", "succeededCount": 1}]}}),
    ))
    .await
    .unwrap();

    skiff_testkit::wait_until(
        "the indexed job completes",
        Duration::from_secs(60),
        async || finished_with(&job_status(&jobs, "indexed").await, "Complete", "Completed"),
    )
    .await;
    let status = job_status(&jobs, "indexed").await;
    assert_eq!(
        (status.completed_indexes.as_str(), status.succeeded),
        ("0-2", 3)
    );
    let owned =
        skiff_testkit::list::<Pod>(&channel, "default", "batch.kubernetes.io/job-name=indexed")
            .await;
    let mut seen: Vec<String> = owned
        .iter()
        .map(|p| {
            let meta = p.metadata.as_ref().unwrap();
            format!(
                "{} {}",
                meta.annotations["batch.kubernetes.io/job-completion-index"],
                p.spec.as_ref().unwrap().hostname
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0 indexed-0", "1 indexed-1", "2 indexed-2"]);

    skiff_testkit::wait_until(
        "the per-index job fails its even indexes",
        Duration::from_secs(90),
        async || {
            finished_with(
                &job_status(&jobs, "per-index").await,
                "Failed",
                "FailedIndexes",
            )
        },
    )
    .await;
    let status = job_status(&jobs, "per-index").await;
    assert_eq!(status.completed_indexes, "1,3");
    assert_eq!(status.failed_indexes.as_deref(), Some("0,2"));
    assert_eq!(status.failed, 4, "each even index ran twice");

    skiff_testkit::wait_until(
        "the pod failure policy fails its job",
        Duration::from_secs(60),
        async || {
            finished_with(
                &job_status(&jobs, "pod-failure-policy").await,
                "Failed",
                "PodFailurePolicy",
            )
        },
    )
    .await;
    let status = job_status(&jobs, "pod-failure-policy").await;
    let failed = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Failed")
        .unwrap();
    assert!(
        failed
            .message
            .contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{}",
        failed.message
    );

    skiff_testkit::wait_until(
        "the success policy completes its job",
        Duration::from_secs(60),
        async || {
            finished_with(
                &job_status(&jobs, "success-policy").await,
                "Complete",
                "SuccessPolicy",
            )
        },
    )
    .await;
    let status = job_status(&jobs, "success-policy").await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.r#type == "SuccessCriteriaMet")
    );
    // Its other indexes were stopped.
    skiff_testkit::wait_until(
        "the rest of its pods stop",
        Duration::from_secs(30),
        async || {
            job_status(&jobs, "success-policy").await.active == 0
                && skiff_testkit::list::<Pod>(
                    &channel,
                    "default",
                    "batch.kubernetes.io/job-name=success-policy",
                )
                .await
                .iter()
                .all(|p| p.status.as_ref().is_some_and(|s| s.phase != "Running"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_to_completion_fail_past_their_limits_and_expire() {
    let cluster = ProcessCluster::start("jobs").await;
    let channel = cluster.channel.clone();
    let jobs = Api::<skiff::pb::batch::v1::Job>::new(channel.clone());
    jobs.create(job(
        "three",
        "echo done",
        serde_json::json!({"completions": 3, "parallelism": 2}),
    ))
    .await
    .unwrap();
    jobs.create(job(
        "failing",
        "exit 3",
        serde_json::json!({"backoffLimit": 0}),
    ))
    .await
    .unwrap();
    jobs.create(job(
        "slow",
        "sleep 300",
        serde_json::json!({"activeDeadlineSeconds": 2}),
    ))
    .await
    .unwrap();
    jobs.create(job(
        "brief",
        "true",
        serde_json::json!({"ttlSecondsAfterFinished": 1}),
    ))
    .await
    .unwrap();

    let mut status = Default::default();
    skiff_testkit::wait_until("three completions", Duration::from_secs(60), async || {
        status = job_status(&jobs, "three").await;
        finished_with(&status, "Complete", "Completed")
    })
    .await;
    assert_eq!((status.succeeded, status.active), (3, 0));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    // The pods stay (their logs can be read), labelled with the job.
    let pods = skiff_testkit::list::<Pod>(&channel, "default", "job-name=three").await;
    assert_eq!(pods.len(), 3);
    assert!(
        pods.iter()
            .all(|p| p.status.as_ref().unwrap().phase == "Succeeded")
    );

    skiff_testkit::wait_until(
        "the failing job fails",
        Duration::from_secs(60),
        async || {
            finished_with(
                &job_status(&jobs, "failing").await,
                "Failed",
                "BackoffLimitExceeded",
            )
        },
    )
    .await;
    skiff_testkit::wait_until(
        "the slow job passes its deadline",
        Duration::from_secs(60),
        async || {
            finished_with(
                &job_status(&jobs, "slow").await,
                "Failed",
                "DeadlineExceeded",
            )
        },
    )
    .await;
    skiff_testkit::wait_until(
        "the slow job's pod is stopped",
        Duration::from_secs(30),
        async || {
            skiff_testkit::live_pods(&channel, "default", "job-name=slow")
                .await
                .is_empty()
        },
    )
    .await;
    skiff_testkit::wait_until(
        "the brief job is deleted after its ttl",
        Duration::from_secs(60),
        async || {
            jobs.get("default", "brief")
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound)
        },
    )
    .await;
    skiff_testkit::wait_until("and its pod with it", Duration::from_secs(30), async || {
        skiff_testkit::list::<Pod>(&channel, "default", "job-name=brief")
            .await
            .is_empty()
    })
    .await;
    cluster.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaler_follows_cpu_use_up_and_down() {
    let cluster =
        ProcessCluster::start_with("hpa", &["--horizontal-pod-autoscaler-sync-period-secs=1"])
            .await;
    let channel = cluster.channel.clone();
    let deployment = |command: &str| -> skiff::pb::apps::v1::Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "burn", "namespace": "default"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "burn"}},
                "template": {
                    "metadata": {"labels": {"app": "burn"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "main", "image": "host", "command": ["sh", "-c", command],
                        "resources": {"requests": {"cpu": "100m"}}
                    }]}
                }
            }
        }))
        .unwrap()
    };
    let deployments = Api::<skiff::pb::apps::v1::Deployment>::new(channel.clone());
    deployments
        .create(deployment("while :; do :; done"))
        .await
        .unwrap();
    let hpa: skiff::pb::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "burn", "namespace": "default"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                "minReplicas": 1,
                "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
            }
        }))
        .unwrap();
    let autoscalers =
        Api::<skiff::pb::autoscaling::v2::HorizontalPodAutoscaler>::new(channel.clone());
    autoscalers.create(hpa).await.unwrap();
    let replicas = async || {
        deployments
            .get("default", "burn")
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
            .unwrap_or(0)
    };
    // A busy loop uses a whole core: ~1000 % of its 100m request.
    skiff_testkit::wait_until(
        "scaled up to the maximum",
        Duration::from_secs(60),
        async || replicas().await == 3,
    )
    .await;
    // The status says why (a sync right after a scale may find no
    // metrics for the new pods yet: wait for one that measured).
    skiff_testkit::wait_until(
        "the status shows the use measured",
        Duration::from_secs(30),
        async || {
            let status = autoscalers
                .get("default", "burn")
                .await
                .ok()
                .and_then(|h| h.status)
                .unwrap_or_default();
            let measured = status
                .current_metrics
                .first()
                .and_then(|m| m.resource.clone())
                .and_then(|r| r.current)
                .and_then(|c| c.average_utilization)
                .unwrap_or(0);
            status.last_scale_time.is_some() && measured > 100
        },
    )
    .await;
    // Idle pods: back to the minimum.
    for _ in 0..10 {
        let mut d = deployments.get("default", "burn").await.unwrap();
        d.spec.as_mut().unwrap().template = deployment("exec sleep 300").spec.unwrap().template;
        d.status = None;
        match deployments.update(d).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => panic!("{s}"),
        }
    }
    skiff_testkit::wait_until(
        "scaled down to the minimum",
        Duration::from_secs(90),
        async || replicas().await == 1,
    )
    .await;
    cluster.server.stop().await.unwrap();
}

fn cronjob(name: &str, schedule: &str, spec: serde_json::Value) -> skiff::pb::batch::v1::CronJob {
    let mut value = serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", "true"]}]
            }}}}
        }
    });
    if let (Some(base), Some(more)) = (value["spec"].as_object_mut(), spec.as_object()) {
        base.extend(more.clone());
    }
    serde_json::from_value(value).unwrap()
}

/// The Jobs a CronJob owns.
async fn jobs_of(
    jobs: &Api<skiff::pb::batch::v1::Job>,
    cron: &str,
) -> Vec<skiff::pb::batch::v1::Job> {
    jobs.list(ListRequest {
        namespace: "default".into(),
        ..Default::default()
    })
    .await
    .map(|l| l.items)
    .unwrap_or_default()
    .into_iter()
    .filter(|j| {
        j.metadata.as_ref().is_some_and(|m| {
            m.owner_references
                .iter()
                .any(|o| o.kind == "CronJob" && o.name == cron)
        })
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjobs_run_jobs_on_their_schedule_unless_suspended_and_take_them_along() {
    let cluster = ProcessCluster::start("cron").await;
    let channel = cluster.channel.clone();
    let crons = Api::<skiff::pb::batch::v1::CronJob>::new(channel.clone());
    let jobs = Api::<skiff::pb::batch::v1::Job>::new(channel.clone());
    let err = crons
        .create(cronjob("bad", "61 * * * *", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("spec.schedule"), "{err}");
    // A template that could never make a Job is refused at once.
    let mut empty = cronjob("empty", "* * * * *", serde_json::json!({}));
    if let Some(pod) = empty
        .spec
        .as_mut()
        .and_then(|s| s.job_template.as_mut())
        .and_then(|t| t.spec.as_mut())
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut())
    {
        pod.containers.clear();
    }
    let err = crons.create(empty).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(
        err.message()
            .contains("spec.jobTemplate.spec.template.spec.containers"),
        "{err}"
    );
    let created = crons
        .create(cronjob(
            "every",
            "* * * * *",
            serde_json::json!({"concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1}),
        ))
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.failed_jobs_history_limit, Some(1), "defaulted");
    crons
        .create(cronjob(
            "paused",
            "* * * * *",
            serde_json::json!({"suspend": true}),
        ))
        .await
        .unwrap();

    // The next minute's run: a Job named after its scheduled minute, run
    // to completion, recorded on the CronJob.
    let mut made = Vec::new();
    skiff_testkit::wait_until(
        "a scheduled run completes",
        Duration::from_secs(100),
        async || {
            made = jobs_of(&jobs, "every").await;
            made.iter().any(|j| {
                j.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Complete" && c.status == "True")
                })
            })
        },
    )
    .await;
    let completed = |j: &&skiff::pb::batch::v1::Job| {
        j.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "Complete" && c.status == "True")
        })
    };
    let job = made.iter().find(completed).expect("a completed run");
    let meta = job.metadata.as_ref().unwrap();
    let minute: i64 = meta.name.trim_start_matches("every-").parse().unwrap();
    assert_eq!(
        meta.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"],
        skiff::time::rfc3339(minute * 60)
    );
    // Recorded on the CronJob (a later minute's run may have started
    // meanwhile on a slow machine).
    skiff_testkit::wait_until(
        "the CronJob records the run",
        Duration::from_secs(30),
        async || {
            crons
                .get("default", "every")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| {
                    s.last_schedule_time
                        .is_some_and(|t| t.seconds >= minute * 60)
                        && s.last_successful_time.is_some()
                })
        },
    )
    .await;
    // One Job per scheduled minute, never two.
    let mut names: Vec<String> = jobs_of(&jobs, "every")
        .await
        .iter()
        .map(|j| j.metadata.as_ref().unwrap().name.clone())
        .collect();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count);
    assert!(
        jobs_of(&jobs, "paused").await.is_empty(),
        "a suspended CronJob runs nothing"
    );

    // Deleting the CronJob takes its Jobs along (the garbage collector).
    crons
        .delete(skiff::pb::api::v1::DeleteRequest {
            namespace: "default".into(),
            name: "every".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    skiff_testkit::wait_until(
        "its Jobs are collected",
        Duration::from_secs(30),
        async || jobs_of(&jobs, "every").await.is_empty(),
    )
    .await;
}
