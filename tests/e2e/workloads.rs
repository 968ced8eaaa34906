//! Controllers end to end on real Docker: an in-process API server, and
//! `skiff scheduler`, `skiff controller-manager` and `skiff agent` as real
//! processes; the pods are busybox containers built from `FROM scratch`.

use std::time::Duration;

use serde_json::json;
use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::core::v1::{Namespace, Pod, ReplicationController};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_testkit::{AgentNode, wait_until};

struct Env {
    _server: skiff_apiserver::ApiServer,
    channel: tonic::transport::Channel,
    node: AgentNode,
    image: &'static str,
    _processes: Vec<skiff_testkit::ChildGuard>,
    _dir: tempfile::TempDir,
}

async fn env(prefix: &str) -> Env {
    let image = skiff_testkit::test_image()
        .await
        .expect("building the test image");
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let node = AgentNode::start(&url, prefix).unwrap();
    let processes = vec![
        skiff_testkit::SchedulerProcess::start(&url, "s1", 2)
            .unwrap()
            .process,
        skiff_testkit::controller_manager(&url, &[]).unwrap(),
    ];
    Env {
        _server: server,
        channel,
        node,
        image,
        _processes: processes,
        _dir: dir,
    }
}

impl Env {
    fn rc(&self, namespace: &str, name: &str, replicas: i32) -> ReplicationController {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"app": name},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": self.image, "command": ["sleep", "3600"]}]
                    }
                }
            }
        }))
        .unwrap()
    }

    /// Pods of `app` in `namespace` that run (not terminating), on Docker.
    async fn running(&self, namespace: &str, app: &str) -> Vec<Pod> {
        skiff_testkit::live_pods(&self.channel, namespace, &format!("app={app}")).await
    }

    async fn wait_running(&self, namespace: &str, app: &str, n: usize) -> Vec<Pod> {
        wait_until(
            &format!("{n} running pods of {app}"),
            Duration::from_secs(90),
            async || self.running(namespace, app).await.len() == n,
        )
        .await;
        self.running(namespace, app).await
    }

    /// Running containers of this node that are not sandboxes.
    fn app_containers(&self) -> usize {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=io.skiff.node={}", self.node.name))
            .args(["--filter", "label=io.skiff.container.role=app"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_controller_keeps_its_pods_running_on_docker_and_scales() {
    let env = env("rc").await;
    let rcs = Api::<ReplicationController>::new(env.channel.clone());
    rcs.create(env.rc("default", "web", 3)).await.unwrap();
    let pods = env.wait_running("default", "web", 3).await;
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name == env.node.name)
    );
    wait_until("3 containers run", Duration::from_secs(30), async || {
        env.app_containers() == 3
    })
    .await;

    // A deleted pod is replaced.
    let victim = pods[0].metadata.clone().unwrap();
    Api::<Pod>::new(env.channel.clone())
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: victim.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(
        "the deleted pod is replaced",
        Duration::from_secs(60),
        async || {
            let now = env.running("default", "web").await;
            now.len() == 3
                && now
                    .iter()
                    .all(|p| p.metadata.as_ref().unwrap().uid != victim.uid)
        },
    )
    .await;

    for replicas in [5, 1] {
        skiff_testkit::modify(&rcs, "default", "web", |rc| {
            rc.spec.as_mut().unwrap().replicas = Some(replicas);
        })
        .await;
        env.wait_running("default", "web", replicas as usize).await;
        wait_until(
            &format!("{replicas} containers run"),
            Duration::from_secs(60),
            async || env.app_containers() == replicas as usize,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_stops_and_removes_its_pods_on_docker() {
    let env = env("ns").await;
    let namespaces = Api::<Namespace>::new(env.channel.clone());
    namespaces
        .create(serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap())
        .await
        .unwrap();
    Api::<ReplicationController>::new(env.channel.clone())
        .create(env.rc("doomed", "app", 2))
        .await
        .unwrap();
    env.wait_running("doomed", "app", 2).await;
    namespaces
        .delete(DeleteRequest {
            name: "doomed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(
        "the namespace is gone",
        Duration::from_secs(60),
        async || {
            namespaces
                .get("", "doomed")
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound)
        },
    )
    .await;
    wait_until(
        "its containers are gone",
        Duration::from_secs(30),
        async || env.node.container_ids().is_empty(),
    )
    .await;
}

/// What the sampler saw during a rollout: the most pods at once and the
/// fewest ready ones (terminating pods count for neither, as in
/// Kubernetes).
#[derive(Debug, Default, Clone, Copy)]
struct Extremes {
    most_pods: usize,
    fewest_ready: usize,
    samples: usize,
}

async fn sample_until_rolled_out(env: &Env, name: &str, template_env: &str) -> Extremes {
    use skiff::pb::apps::v1::Deployment;
    let deployments = Api::<Deployment>::new(env.channel.clone());
    let pods = Api::<Pod>::new(env.channel.clone());
    let mut seen = Extremes {
        fewest_ready: usize::MAX,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let live: Vec<Pod> = pods
            .list(ListRequest {
                namespace: "default".into(),
                label_selector: format!("app={name}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| {
                p.metadata
                    .as_ref()
                    .is_some_and(|m| m.deletion_timestamp.is_none())
            })
            .collect();
        let ready = live.iter().filter(|p| skiff::pods::is_ready(p)).count();
        seen.most_pods = seen.most_pods.max(live.len());
        seen.fewest_ready = seen.fewest_ready.min(ready);
        seen.samples += 1;
        let d = deployments.get("default", name).await.unwrap();
        let status = d.status.clone().unwrap_or_default();
        let generation = d.metadata.as_ref().unwrap().generation;
        let all_new = live.len() == 3
            && live.iter().all(|p| {
                p.spec.as_ref().unwrap().containers[0]
                    .env
                    .iter()
                    .any(|e| e.name == "VERSION" && e.value == template_env)
            });
        if status.observed_generation == generation
            && status.updated_replicas == 3
            && status.available_replicas == 3
            && status.replicas == 3
            && ready == 3
            && all_new
        {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout to {template_env} not done: {status:?}, {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_within_its_bounds_rolls_back_and_is_deleted_with_its_sets() {
    use skiff::pb::apps::v1::{Deployment, ReplicaSet};
    let env = env("deploy").await;
    let deployments = Api::<Deployment>::new(env.channel.clone());
    let manifest = |version: &str| -> Deployment {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "main", "image": env.image, "command": ["sleep", "3600"],
                                        "env": [{"name": "VERSION", "value": version}]}]
                    }
                }
            }
        }))
        .unwrap()
    };
    deployments.create(manifest("one")).await.unwrap();
    sample_until_rolled_out(&env, "web", "one").await;
    let d = deployments.get("default", "web").await.unwrap();
    let annotations = &d.metadata.as_ref().unwrap().annotations;
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let conditions = d.status.unwrap().conditions;
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "Available" && c.status == "True"),
        "{conditions:?}"
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.r#type == "Progressing" && c.reason == "NewReplicaSetAvailable"),
        "{conditions:?}"
    );

    // Roll to a new template, sampling all along.
    skiff_testkit::modify(&deployments, "default", "web", |d| {
        d.spec.as_mut().unwrap().template = manifest("two").spec.unwrap().template;
    })
    .await;
    let seen = sample_until_rolled_out(&env, "web", "two").await;
    assert!(seen.samples > 3, "the rollout was sampled: {seen:?}");
    assert!(
        seen.most_pods <= 4,
        "never more than replicas + maxSurge pods: {seen:?}"
    );
    assert!(
        seen.fewest_ready >= 2,
        "never fewer than replicas - maxUnavailable ready: {seen:?}"
    );
    let all_sets = skiff_testkit::list::<ReplicaSet>(&env.channel, "default", "").await;
    assert_eq!(all_sets.len(), 2, "one set per template");
    let events = Api::<skiff::pb::core::v1::Event>::new(env.channel.clone())
        .list(ListRequest {
            namespace: "default".into(),
            field_selector: "involvedObject.name=web,reason=ScalingReplicaSet".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert!(
        events
            .iter()
            .any(|e| e.message.starts_with("Scaled down replica set web-")),
        "{events:?}"
    );

    // Roll back to revision 1: the first template, in its old set.
    skiff_testkit::modify(&deployments, "default", "web", |d| {
        d.metadata
            .as_mut()
            .unwrap()
            .annotations
            .insert("skiff.dev/rollback-to-revision".into(), "1".into());
    })
    .await;
    sample_until_rolled_out(&env, "web", "one").await;
    let d = deployments.get("default", "web").await.unwrap();
    let annotations = &d.metadata.as_ref().unwrap().annotations;
    assert_eq!(
        annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    assert!(!annotations.contains_key("skiff.dev/rollback-to-revision"));
    let count = skiff_testkit::list::<ReplicaSet>(&env.channel, "default", "")
        .await
        .len();
    assert_eq!(count, 2, "the first template's set is used again");

    // Deleting the Deployment takes its sets, their pods and containers.
    deployments
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(
        "its sets and pods are gone",
        Duration::from_secs(60),
        async || {
            let sets_left = skiff_testkit::list::<ReplicaSet>(&env.channel, "default", "")
                .await
                .len();
            let pods_left = skiff_testkit::list::<Pod>(&env.channel, "default", "")
                .await
                .len();
            sets_left == 0 && pods_left == 0
        },
    )
    .await;
    wait_until(
        "its containers are gone",
        Duration::from_secs(30),
        async || env.node.container_ids().is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_stopped_agent_are_recreated_on_the_other_node() {
    let image = skiff_testkit::test_image().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let mut doomed = AgentNode::start(&url, "doomed").unwrap();
    let survivor = AgentNode::start(&url, "survivor").unwrap();
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
    let nodes = Api::<skiff::pb::core::v1::Node>::new(channel.clone());
    wait_until(
        "both nodes are Ready",
        Duration::from_secs(30),
        async || {
            let mut ready = 0;
            for name in [&doomed.name, &survivor.name] {
                if nodes.get("", name).await.is_ok_and(|n| {
                    n.status.is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.r#type == "Ready" && c.status == "True")
                    })
                }) {
                    ready += 1;
                }
            }
            ready == 2
        },
    )
    .await;
    let rc: ReplicationController = serde_json::from_value(json!({
        "metadata": {"name": "spread", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"app": "spread"},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}
            }
        }
    }))
    .unwrap();
    Api::<ReplicationController>::new(channel.clone())
        .create(rc)
        .await
        .unwrap();
    let pods = Api::<Pod>::new(channel.clone());
    let live_on = async |node: &str| -> usize {
        pods.list(ListRequest {
            namespace: "default".into(),
            label_selector: "app=spread".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name == node)
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
        .filter(|p| p.metadata.as_ref().unwrap().deletion_timestamp.is_none())
        .count()
    };
    wait_until(
        "one pod runs on each node",
        Duration::from_secs(60),
        async || live_on(&doomed.name).await == 1 && live_on(&survivor.name).await == 1,
    )
    .await;

    doomed.kill9();
    wait_until(
        "the stopped node goes NotReady",
        Duration::from_secs(30),
        async || {
            nodes.get("", &doomed.name).await.is_ok_and(|n| {
                n.status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "Unknown")
                })
            })
        },
    )
    .await;
    wait_until(
        "both pods run on the survivor",
        Duration::from_secs(60),
        async || live_on(&survivor.name).await == 2,
    )
    .await;
    assert_eq!(live_on(&doomed.name).await, 0);
}
