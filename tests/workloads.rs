//! Controllers end to end on real Docker: an in-process API server, and
//! `skiff scheduler`, `skiff controller-manager` and `skiff agent` as real
//! processes; the pods are busybox containers built from `FROM scratch`.

use std::time::Duration;

use serde_json::json;
use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::core::v1::{Namespace, Pod, ReplicationController};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_e2e::{AgentNode, wait_until};

struct Env {
    _server: skiff_apiserver::ApiServer,
    channel: tonic::transport::Channel,
    node: AgentNode,
    image: &'static str,
    _processes: Vec<skiff_e2e::ChildGuard>,
    _dir: tempfile::TempDir,
}

async fn env(prefix: &str) -> Env {
    let image = skiff_e2e::test_image()
        .await
        .expect("building the test image");
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_e2e::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_e2e::channel(server.addr).await.unwrap();
    let node = AgentNode::start(&url, prefix).unwrap();
    let processes = vec![
        skiff_e2e::SchedulerProcess::start(&url, "s1", 2)
            .unwrap()
            .process,
        skiff_e2e::controller_manager(&url, &[]).unwrap(),
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
        let pods = Api::<Pod>::new(self.channel.clone());
        pods.list(ListRequest {
            namespace: namespace.into(),
            label_selector: format!("app={app}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
        .filter(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_none())
        })
        .collect()
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
        let mut rc = rcs.get("default", "web").await.unwrap();
        rc.spec.as_mut().unwrap().replicas = Some(replicas);
        rc.status = None;
        rcs.update(rc).await.unwrap();
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
