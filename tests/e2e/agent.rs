//! The node agent end to end on real Docker: an in-process API server, a
//! real `skiff agent` process per test (its own node name and pod
//! network), and pods bound to that node directly (spec.nodeName), so no
//! scheduler is involved. Images are built from `FROM scratch` + busybox.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::core::v1::pod_logs_client::PodLogsClient;
use skiff::pb::core::v1::{ConfigMap, ContainerStatus, Pod, PodLogsRequest, Secret};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_testkit::{AgentNode, wait_until};

pub(crate) struct Env {
    server: skiff_apiserver::ApiServer,
    pub(crate) channel: tonic::transport::Channel,
    node: AgentNode,
    pub(crate) image: &'static str,
    _dir: tempfile::TempDir,
}

pub(crate) async fn env(prefix: &str) -> Env {
    env_on(prefix, "docker").await
}

async fn env_on(prefix: &str, runtime: &'static str) -> Env {
    let image = if runtime == "docker" {
        skiff_testkit::test_image()
            .await
            .expect("building the test image")
    } else {
        // The process runtime runs host commands; the image is a label.
        "host"
    };
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let node =
        AgentNode::start_with_runtime(&format!("http://{}", server.addr), prefix, runtime).unwrap();
    let nodes = Api::<skiff::pb::core::v1::Node>::new(channel.clone());
    let name = node.name.clone();
    wait_until(
        "the node registers Ready",
        Duration::from_secs(30),
        async || {
            nodes.get("", &name).await.is_ok_and(|n| {
                n.status.is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.r#type == "Ready" && c.status == "True")
                })
            })
        },
    )
    .await;
    Env {
        server,
        channel,
        node,
        image,
        _dir: dir,
    }
}

impl Env {
    /// The API server's address, for the `skiff` CLI's `--server`.
    pub(crate) fn server_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The node the env's agent runs.
    pub(crate) fn node_name(&self) -> &str {
        &self.node.name
    }

    pub(crate) fn pods(&self) -> Api<Pod> {
        Api::new(self.channel.clone())
    }

    /// Creates a pod bound to this env's node from a JSON manifest.
    pub(crate) async fn create(&self, mut manifest: serde_json::Value) -> Pod {
        manifest["spec"]["nodeName"] = json!(self.node.name);
        let pod: Pod = serde_json::from_value(manifest).expect("a valid pod manifest");
        self.pods().create(pod).await.expect("creating the pod")
    }

    /// Labels `default` for Pod Security's privileged level: the test's
    /// pods use hostPath or host ports, which the default (baseline)
    /// refuses.
    pub(crate) async fn allow_privileged(&self) {
        skiff_testkit::label_privileged(&self.channel, "default").await;
    }

    pub(crate) async fn get(&self, name: &str) -> Pod {
        self.pods()
            .get("default", name)
            .await
            .expect("reading the pod")
    }

    pub(crate) async fn wait_for(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let pods = self.pods();
        wait_until(what, within, async || {
            pods.get("default", name).await.is_ok_and(|p| check(&p))
        })
        .await;
        self.get(name).await
    }

    pub(crate) async fn logs(
        &self,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<String, tonic::Status> {
        let mut client = PodLogsClient::new(self.channel.clone());
        let mut stream = client
            .logs(PodLogsRequest {
                namespace: "default".into(),
                name: pod.into(),
                container: container.into(),
                previous,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub(crate) async fn delete(&self, name: &str) {
        self.pods()
            .delete(DeleteRequest {
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect("deleting the pod");
    }
}

pub(crate) fn phase(p: &Pod) -> &str {
    p.status.as_ref().map_or("", |s| s.phase.as_str())
}

pub(crate) fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .iter()
        .find(|c| c.name == name)
}

pub(crate) fn waiting_of(
    p: &Pod,
    name: &str,
) -> Option<skiff::pb::core::v1::ContainerStateWaiting> {
    container(p, name)?.state.clone()?.waiting
}

pub(crate) fn running(p: &Pod, name: &str) -> bool {
    container(p, name).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

fn ready(p: &Pod) -> bool {
    skiff::pods::is_ready(p)
}

fn docker_id(p: &Pod, name: &str) -> String {
    container(p, name)
        .map(|c| c.container_id.trim_start_matches("docker://").to_string())
        .unwrap_or_default()
}

fn process_id(p: &Pod, name: &str) -> String {
    container(p, name)
        .map(|c| c.container_id.trim_start_matches("process://").to_string())
        .unwrap_or_default()
}

fn docker(args: &[&str]) {
    let status = Command::new("docker")
        .args(args)
        .status()
        .expect("running docker");
    assert!(status.success(), "docker {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_localhost_an_empty_dir_and_run_after_their_init_containers() {
    let env = env("share").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "duo"},
        "spec": {
            "initContainers": [{
                "name": "prepare", "image": image,
                "command": ["sh", "-c", "echo prepared-by-init > /shared/init"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
            }],
            "containers": [
                {
                    "name": "server", "image": image,
                    "command": ["sh", "-c", "mkdir -p /www && echo hello-from-server > /www/index.html && httpd -p 8080 -h /www && cat /shared/init && while [ ! -f /shared/fetched ]; do sleep 0.2; done; echo server-read: $(cat /shared/fetched); exec sleep 3600"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
                },
                {
                    "name": "client", "image": image,
                    "command": ["sh", "-c", "until wget -q -O /shared/fetched http://127.0.0.1:8080/; do sleep 0.2; done; echo fetched; exec sleep 3600"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]
                }
            ],
            "volumes": [{"name": "shared", "emptyDir": {}}]
        }
    }))
    .await;
    let pod = env
        .wait_for("duo", "both containers run", Duration::from_secs(60), |p| {
            running(p, "server") && running(p, "client") && ready(p)
        })
        .await;
    let status = pod.status.clone().unwrap();
    assert_eq!(status.phase, "Running");
    assert!(!status.pod_ip.is_empty(), "the pod has an IP");
    assert_eq!(status.host_ip, "127.0.0.1");
    let init = &status.init_container_statuses[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.r#type == kind && c.status == "True"),
            "{kind} is True: {:?}",
            status.conditions
        );
    }
    // The server read, from the emptyDir, what the client fetched from it
    // over localhost; and the init container ran first.
    let mut log = String::new();
    for _ in 0..100 {
        log = env.logs("duo", "server", false).await.unwrap();
        if log.contains("server-read") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains("prepared-by-init"), "server log: {log:?}");
    assert!(
        log.contains("server-read: hello-from-server"),
        "server log: {log:?}"
    );
    // Several containers: the logs call must name one.
    let err = env.logs("duo", "", false).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("server client"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_restarts_unless_the_policy_is_never() {
    let env = env("restart").await;
    let image = env.image;
    for (name, policy) in [("always", "Always"), ("never", "Never")] {
        env.create(json!({
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": policy,
                "containers": [{"name": "main", "image": image, "command": ["sh", "-c", "echo started-once; exec sleep 3600"]}]
            }
        }))
        .await;
    }
    for name in ["always", "never"] {
        let pod = env
            .wait_for(name, "the container runs", Duration::from_secs(60), |p| {
                running(p, "main")
            })
            .await;
        docker(&["kill", &docker_id(&pod, "main")]);
    }
    let pod = env
        .wait_for("always", "restarted once", Duration::from_secs(30), |p| {
            running(p, "main") && container(p, "main").is_some_and(|c| c.restart_count == 1)
        })
        .await;
    let main = container(&pod, "main").unwrap();
    let last = main
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 137, "SIGKILL: 128 + 9");
    assert_eq!(phase(&pod), "Running");
    // The dead instance's log is the previous log.
    let previous = env.logs("always", "main", true).await.unwrap();
    assert!(
        previous.contains("started-once"),
        "previous log: {previous:?}"
    );

    let pod = env
        .wait_for(
            "never",
            "the pod ends Failed",
            Duration::from_secs(30),
            |p| phase(p) == "Failed",
        )
        .await;
    let main = container(&pod, "main").unwrap();
    assert_eq!(main.restart_count, 0);
    assert_eq!(
        main.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        137
    );
    // Not restarted later either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = env.get("never").await;
    assert_eq!(container(&pod, "main").unwrap().restart_count, 0);
    assert_eq!(phase(&pod), "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failures_restart_and_readiness_drives_ready() {
    let env = env("probes").await;
    env.allow_privileged().await;
    let image = env.image;
    // The test controls both probes through files in a hostPath dir.
    let ctl = tempfile::tempdir().unwrap();
    let ctl_path = ctl.path().to_str().unwrap().to_string();
    std::fs::write(ctl.path().join("alive"), "1").unwrap();
    std::fs::write(ctl.path().join("ready"), "1").unwrap();
    let probe = |p: serde_json::Value| {
        let mut p = p;
        p["periodSeconds"] = json!(1);
        p["failureThreshold"] = json!(1);
        p
    };
    env.create(json!({
        "metadata": {"name": "probed"},
        "spec": {
            // httpd as PID 1 ignores SIGTERM: the liveness restart waits
            // out the grace period.
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "web", "image": image,
                "command": ["httpd", "-f", "-p", "8080", "-h", "/ctl"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "livenessProbe": probe(json!({"exec": {"command": ["test", "-f", "/ctl/alive"]}})),
                "readinessProbe": probe(json!({"httpGet": {"path": "/ready", "port": "http"}})),
                "volumeMounts": [{"name": "ctl", "mountPath": "/ctl"}]
            }],
            "volumes": [{"name": "ctl", "hostPath": {"path": ctl_path}}]
        }
    }))
    .await;
    env.wait_for("probed", "Ready", Duration::from_secs(60), ready)
        .await;

    toggle_probes(&env, "probed", "web", ctl.path()).await;
}

/// Flips a pod's probes through files in `ctl` (a hostPath its probes
/// read): readiness off and on (no restart), then liveness off (a
/// restart) and on (Ready again).
async fn toggle_probes(env: &Env, pod: &str, container_name: &str, ctl: &std::path::Path) {
    std::fs::remove_file(ctl.join("ready")).unwrap();
    let seen = env
        .wait_for(
            pod,
            "not Ready once readiness fails",
            Duration::from_secs(20),
            |p| !ready(p),
        )
        .await;
    assert!(running(&seen, container_name), "readiness never restarts");
    assert_eq!(container(&seen, container_name).unwrap().restart_count, 0);
    std::fs::write(ctl.join("ready"), "1").unwrap();
    env.wait_for(pod, "Ready again", Duration::from_secs(20), ready)
        .await;
    std::fs::remove_file(ctl.join("alive")).unwrap();
    env.wait_for(pod, "restarted by liveness", Duration::from_secs(40), |p| {
        container(p, container_name).is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    std::fs::write(ctl.join("alive"), "1").unwrap();
    env.wait_for(
        pod,
        "running and Ready after the restart",
        Duration::from_secs(40),
        |p| running(p, container_name) && ready(p),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pod_stops_it_within_its_grace_period_and_removes_everything() {
    let env = env("delete").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "doomed"},
        "spec": {
            // `sleep` as PID 1 ignores SIGTERM: only SIGKILL after the
            // grace period stops it.
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }
    }))
    .await;
    let pod = env
        .wait_for("doomed", "running", Duration::from_secs(60), |p| {
            running(p, "main")
        })
        .await;
    let uid = pod.metadata.as_ref().unwrap().uid.clone();
    let pod_dir = env.node.data_dir.path().join("pods").join(&uid);
    assert!(
        pod_dir.join("volumes/scratch").is_dir(),
        "the emptyDir exists"
    );
    assert_eq!(
        env.node.container_ids().len(),
        2,
        "a sandbox and the container"
    );
    let started = std::time::Instant::now();
    env.delete("doomed").await;
    wait_until(
        "every container is removed",
        Duration::from_secs(20),
        async || env.node.container_ids().is_empty(),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the grace period was honoured ({took:?})"
    );
    // Removed right after the last container (the sandbox): a loaded
    // machine can show the containers gone a moment before it.
    wait_until(
        "the pod's directory is removed",
        Duration::from_secs(10),
        async || !pod_dir.exists(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_containers_and_cleans_up_deleted_pods() {
    let mut env = env("adopt").await;
    let image = env.image;
    for name in ["kept", "gone"] {
        env.create(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}
        }))
        .await;
    }
    let pod = env
        .wait_for("kept", "running", Duration::from_secs(60), |p| {
            running(p, "main")
        })
        .await;
    env.wait_for("gone", "running", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    docker(&["kill", &docker_id(&pod, "main")]);
    let pod = env
        .wait_for("kept", "restarted once", Duration::from_secs(30), |p| {
            running(p, "main") && container(p, "main").is_some_and(|c| c.restart_count == 1)
        })
        .await;
    let gone_uid = env.get("gone").await.metadata.unwrap().uid;
    let before: Vec<String> = env.node.container_ids();

    env.node.kill9();
    env.delete("gone").await;
    env.node.start_agent().unwrap();

    // The deleted pod's containers go; the kept pod's stay as they were.
    let node = &env.node;
    wait_until(
        "the deleted pod's containers are removed",
        Duration::from_secs(30),
        async || {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=io.skiff.pod.uid={gone_uid}"),
                ])
                .output()
                .unwrap();
            out.stdout.is_empty()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = node.container_ids();
    let kept: Vec<&String> = before.iter().filter(|id| after.contains(id)).collect();
    assert_eq!(
        after.len(),
        kept.len(),
        "nothing new was created: before {before:?}, after {after:?}"
    );
    let again = env.get("kept").await;
    assert_eq!(
        docker_id(&again, "main"),
        docker_id(&pod, "main"),
        "the same container"
    );
    assert_eq!(
        container(&again, "main").unwrap().restart_count,
        1,
        "the same restart count"
    );
    assert!(running(&again, "main"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_image_is_a_pull_error_and_other_pods_run_on() {
    let env = env("pull").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "ghost"},
        "spec": {"containers": [{"name": "main", "image": "skiff-test/absent:1"}]}
    }))
    .await;
    env.create(json!({
        "metadata": {"name": "fine"},
        "spec": {"containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}
    }))
    .await;
    let pod = env
        .wait_for("ghost", "a pull error", Duration::from_secs(60), |p| {
            container(p, "main")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref())
                .is_some_and(|w| w.reason == "ErrImagePull" || w.reason == "ImagePullBackOff")
        })
        .await;
    let waiting = waiting_of(&pod, "main").unwrap();
    assert!(
        waiting.message.contains("skiff-test/absent:1"),
        "{waiting:?}"
    );
    assert_eq!(phase(&pod), "Pending");
    env.wait_for("fine", "the other pod runs", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    // imagePullPolicy Never: not pulled, a reason saying so.
    env.create(json!({
        "metadata": {"name": "unpulled"},
        "spec": {"containers": [{"name": "main", "image": "skiff-test/absent:2", "imagePullPolicy": "Never"}]}
    }))
    .await;
    let pod = env
        .wait_for(
            "unpulled",
            "ErrImageNeverPull",
            Duration::from_secs(60),
            |p| {
                container(p, "main")
                    .and_then(|c| c.state.as_ref()?.waiting.as_ref())
                    .is_some_and(|w| w.reason == "ErrImageNeverPull")
            },
        )
        .await;
    let waiting = waiting_of(&pod, "main").unwrap();
    assert!(
        waiting.message.contains("skiff-test/absent:2"),
        "{waiting:?}"
    );
    // No pull to back off from: still ErrImageNeverPull past the backoff
    // (1 s here), never ImagePullBackOff.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pod = env.get("unpulled").await;
    assert_eq!(
        waiting_of(&pod, "main")
            .map(|w| w.reason.clone())
            .as_deref(),
        Some("ErrImageNeverPull")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmaps_and_secrets_reach_env_and_files_and_files_follow_updates() {
    let env = env("config").await;
    let image = env.image;
    let configmaps = Api::<ConfigMap>::new(env.channel.clone());
    let secrets = Api::<Secret>::new(env.channel.clone());
    configmaps
        .create(serde_json::from_value(json!({"metadata": {"name": "settings", "namespace": "default"}, "data": {"greeting": "hello", "file.txt": "v1"}})).unwrap())
        .await
        .unwrap();
    secrets
        .create(serde_json::from_value(json!({"metadata": {"name": "creds", "namespace": "default"}, "stringData": {"password": "s3cret"}})).unwrap())
        .await
        .unwrap();
    env.create(json!({
        "metadata": {"name": "configured", "labels": {"app": "cfg"}},
        "spec": {
            "containers": [{
                "name": "main", "image": image,
                "command": ["sh", "-c", "echo env: $GREETING $PASSWORD $POD_NAME $POD_NAMESPACE $NODE $APP $(echo $POD_IP | cut -d. -f1-2 | grep -c .); while true; do echo file: $(cat /config/file.txt) $(cat /secret/password); sleep 0.5; done"],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "value": "app-$(GREETING)"}
                ],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/config"},
                    {"name": "secret", "mountPath": "/secret"}
                ]
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "settings"}},
                {"name": "secret", "secret": {"secretName": "creds"}}
            ]
        }
    }))
    .await;
    env.wait_for("configured", "running", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    let expected_env = format!(
        "env: hello s3cret configured default {} app-hello 1",
        env.node.name
    );
    let mut log = String::new();
    for _ in 0..50 {
        log = env.logs("configured", "main", false).await.unwrap();
        if log.contains("file:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.contains(&expected_env), "log: {log:?}");
    assert!(log.contains("file: v1 s3cret"), "log: {log:?}");

    let mut cm = configmaps.get("default", "settings").await.unwrap();
    cm.data.insert("file.txt".into(), "v2".into());
    configmaps.update(cm).await.unwrap();
    let pods_log = async || {
        env.logs("configured", "main", false)
            .await
            .unwrap_or_default()
    };
    wait_until(
        "the projected file follows the configmap",
        Duration::from_secs(30),
        async || pods_log().await.contains("file: v2 s3cret"),
    )
    .await;
    let _ = &env.server;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_sources_file_modes_working_dirs_and_read_only_mounts_reach_the_container() {
    let env = env("details").await;
    let image = env.image;
    Api::<ConfigMap>::new(env.channel.clone())
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "settings", "namespace": "default"},
                "data": {"greeting": "hello"},
                // 00 01 02 ff
                "binaryData": {"blob": "AAEC/w=="}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<Secret>::new(env.channel.clone())
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "creds", "namespace": "default"},
                "stringData": {"password": "s3cret"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let script = [
        "echo pwd=$(pwd)",
        "echo cm=$CM_greeting blob=${CM_blob-unset} secret=$S_password",
        "echo nokey=${NO_KEY-unset} nosecret=${NO_SECRET-unset} sidemem=$SIDE_MEM",
        "echo modes=$(stat -Lc %a /config/greeting /config/blob.bin /secret/password /info/tier /info/side-mem /bundle/g)",
        "echo blob=$(wc -c < /config/blob.bin)$(od -An -tx1 /config/blob.bin)",
        "echo tier=$(cat /info/tier) side=$(cat /info/side-mem)",
        "if touch /scratch/x 2>/dev/null; then echo scratch=written; else echo scratch=refused; fi",
        "echo done",
        "sleep 3600",
    ]
    .join("; ");
    env.create(json!({
        "metadata": {"name": "details", "labels": {"tier": "back"}},
        "spec": {
            "containers": [{
                "name": "main", "image": image, "workingDir": "/tmp",
                "command": ["sh", "-c", script],
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                    {"secretRef": {"name": "creds"}, "prefix": "S_"},
                    {"configMapRef": {"name": "absent", "optional": true}},
                    {"secretRef": {"name": "absent", "optional": true}}
                ],
                "env": [
                    {"name": "NO_KEY", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope", "optional": true}}},
                    {"name": "NO_SECRET", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                    {"name": "SIDE_MEM", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}
                ],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/config"},
                    {"name": "secret", "mountPath": "/secret"},
                    {"name": "info", "mountPath": "/info"},
                    {"name": "bundle", "mountPath": "/bundle"},
                    {"name": "scratch", "mountPath": "/scratch", "readOnly": true}
                ]
            }, {
                "name": "side", "image": image, "command": ["sleep", "3600"],
                "resources": {"limits": {"memory": "32Mi", "cpu": "250m"}},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "settings", "defaultMode": 0o400,
                    "items": [{"key": "greeting", "path": "greeting", "mode": 0o600}, {"key": "blob", "path": "blob.bin"}]}},
                {"name": "secret", "secret": {"secretName": "creds", "defaultMode": 0o440}},
                {"name": "info", "downwardAPI": {"defaultMode": 0o444, "items": [
                    {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
                    {"path": "side-mem", "mode": 0o640, "resourceFieldRef": {"containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}
                ]}},
                {"name": "bundle", "projected": {"defaultMode": 0o404, "sources": [
                    {"configMap": {"name": "settings", "items": [{"key": "greeting", "path": "g"}]}}
                ]}},
                {"name": "scratch", "emptyDir": {}}
            ]
        }
    }))
    .await;
    env.wait_for("details", "running", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    let mut log = String::new();
    wait_until("the script ran", Duration::from_secs(30), async || {
        log = env.logs("details", "main", false).await.unwrap_or_default();
        log.contains("done")
    })
    .await;
    for line in [
        "pwd=/tmp",
        // binaryData is for files: as in Kubernetes, not for variables.
        "cm=hello blob=unset secret=s3cret",
        "nokey=unset nosecret=unset sidemem=32",
        // An item's own mode wins over its volume's defaultMode.
        "modes=600 400 440 444 640 404",
        "blob=4 00 01 02 ff",
        "tier=back side=32",
        "scratch=refused",
    ] {
        assert!(
            log.lines().any(|l| l.trim() == line),
            "{line:?} not in {log:?}"
        );
    }
    // The limits are the container's cgroup's (v2, else v1).
    let limits = skiff::pb::core::v1::pod_exec_client::PodExecClient::new(env.channel.clone())
        .exec(skiff::pb::core::v1::PodExecRequest {
            namespace: "default".into(),
            name: "details".into(),
            container: "side".into(),
            command: ["sh", "-c", "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let limits: Vec<String> = String::from_utf8_lossy(&limits.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(limits[0], (32 * 1024 * 1024).to_string(), "{limits:?}");
    let (quota, period): (f64, f64) = (limits[1].parse().unwrap(), limits[2].parse().unwrap());
    assert!((quota / period - 0.25).abs() < 0.01, "{limits:?}");
}

/// Sends `inputs` on an attach stream (kept open until the output ends)
/// and gathers its stdout and exit code.
async fn attach(
    env: &Env,
    container: bool,
    inputs: Vec<skiff::pb::core::v1::pod_exec_input::Input>,
) -> (String, Option<i32>) {
    use skiff::pb::core::v1::PodExecInput;
    use skiff::pb::core::v1::pod_exec_client::PodExecClient;
    use skiff::pb::core::v1::pod_exec_output::Output;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for input in inputs {
        tx.send(PodExecInput { input: Some(input) }).await.unwrap();
    }
    let mut client = PodExecClient::new(env.channel.clone());
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut output = if container {
        client.attach_container(requests).await
    } else {
        client.attach(requests).await
    }
    .unwrap()
    .into_inner();
    let (mut stdout, mut code) = (String::new(), None);
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = output.next().await {
            match message.unwrap().output {
                Some(Output::Stdout(bytes)) => stdout.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Output::ExitCode(c)) => code = Some(c),
                _ => {}
            }
        }
    });
    // A container attach lasts as long as its process: two seconds are
    // enough to have sent the input.
    if container {
        let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    } else {
        read.await.expect("the command ended");
    }
    drop(tx);
    (stdout, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_terminal_sizes_the_end_of_stdin_and_half_closes() {
    use skiff::pb::core::v1::pod_exec_input::Input;
    use skiff::pb::core::v1::{PodExecRequest, TerminalSize};
    let env = env("term").await;
    let image = env.image;
    let reads_stdin = "cat > /dev/null; echo stdin-ended; sleep 3600";
    env.create(json!({
        "metadata": {"name": "term"},
        "spec": {"shareProcessNamespace": true, "containers": [
            {"name": "shell", "image": image, "tty": true,
             "command": ["sh", "-c", "if [ -t 1 ]; then echo has-tty; fi; sleep 3600"]},
            {"name": "once", "image": image, "stdin": true, "stdinOnce": true,
             "command": ["sh", "-c", reads_stdin]},
            {"name": "kept", "image": image, "stdin": true,
             "command": ["sh", "-c", reads_stdin]},
            {"name": "counter", "image": image,
             "command": ["nc", "-ll", "-p", "9000", "-e", "wc", "-c"]}
        ]}
    }))
    .await;
    env.wait_for("term", "running", Duration::from_secs(60), |p| {
        ["shell", "once", "kept", "counter"]
            .iter()
            .all(|c| running(p, c))
    })
    .await;
    // tty: the container's output is a terminal.
    wait_until(
        "the shell saw a terminal",
        Duration::from_secs(20),
        async || {
            env.logs("term", "shell", false)
                .await
                .is_ok_and(|l| l.contains("has-tty"))
        },
    )
    .await;

    // An exec with a terminal, resized by the client: stty sees the size.
    let start = |container: &str, command: &[&str], tty: bool| {
        Input::Start(PodExecRequest {
            namespace: "default".into(),
            name: "term".into(),
            container: container.into(),
            command: command.iter().map(|c| c.to_string()).collect(),
            tty,
            stdin: !command.is_empty(),
            ..Default::default()
        })
    };
    let (out, code) = attach(
        &env,
        false,
        vec![
            start("shell", &["sh", "-c", "sleep 1; stty size"], true),
            Input::Resize(TerminalSize {
                width: 100,
                height: 40,
            }),
        ],
    )
    .await;
    assert_eq!((out.trim(), code), ("40 100", Some(0)), "{out:?}");

    // stdinOnce: the first attach's end of input is the container's.
    for container in ["once", "kept"] {
        let mut start = start(container, &[], false);
        if let Input::Start(request) = &mut start {
            request.stdin = true;
        }
        attach(
            &env,
            true,
            vec![
                start,
                Input::Stdin(b"hello\n".to_vec()),
                Input::CloseStdin(true),
            ],
        )
        .await;
    }
    wait_until(
        "stdin ended for once",
        Duration::from_secs(20),
        async || {
            env.logs("term", "once", false)
                .await
                .is_ok_and(|l| l.contains("stdin-ended"))
        },
    )
    .await;
    // Its stdin would have ended by now, had the attach closed it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = env.logs("term", "kept", false).await.unwrap();
    assert!(
        !kept.contains("stdin-ended"),
        "without stdinOnce the container's stdin stays open: {kept:?}"
    );

    // A forwarded connection's half-close reaches the pod: wc counts
    // what came before it and answers on the same connection.
    {
        use skiff::pb::core::v1::pod_port_forward_client::PodPortForwardClient;
        use skiff::pb::core::v1::port_forward_input::Input as Forward;
        use skiff::pb::core::v1::{PortForwardInput, PortForwardStart};
        let inputs = [
            Forward::Start(PortForwardStart {
                namespace: "default".into(),
                name: "term".into(),
                port: 9000,
            }),
            Forward::Data(b"hello".to_vec()),
            Forward::CloseWrite(true),
        ];
        let mut answer = String::new();
        wait_until("wc answers", Duration::from_secs(30), async || {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for input in inputs.clone() {
                tx.send(PortForwardInput { input: Some(input) })
                    .await
                    .unwrap();
            }
            let Ok(response) = PodPortForwardClient::new(env.channel.clone())
                .port_forward(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return false;
            };
            let mut output = response.into_inner();
            answer.clear();
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(chunk)) = output.next().await {
                    answer.push_str(&String::from_utf8_lossy(&chunk.data));
                }
            })
            .await;
            drop(tx);
            read.is_ok() && answer.trim() == "5"
        })
        .await;
    }

    // shareProcessNamespace: one container sees another's processes.
    let ps = skiff::pb::core::v1::pod_exec_client::PodExecClient::new(env.channel.clone())
        .exec(PodExecRequest {
            namespace: "default".into(),
            name: "term".into(),
            container: "shell".into(),
            command: vec!["ps".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("nc -ll -p 9000"), "{ps}");

    // timeoutSeconds: an exec that runs longer is cut off.
    let started = std::time::Instant::now();
    let err = skiff::pb::core::v1::pod_exec_client::PodExecClient::new(env.channel.clone())
        .exec(PodExecRequest {
            namespace: "default".into(),
            name: "term".into(),
            container: "shell".into(),
            command: vec!["sleep".into(), "30".into()],
            timeout_seconds: Some(1),
            ..Default::default()
        })
        .await
        .expect_err("cut off");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(25), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_configmap_is_a_config_error_shown_on_the_pod() {
    let env = env("cfgerr").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "unconfigured"},
        "spec": {"containers": [{
            "name": "main", "image": image, "command": ["sleep", "3600"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nowhere", "key": "k"}}}]
        }]}
    }))
    .await;
    let pod = env
        .wait_for(
            "unconfigured",
            "CreateContainerConfigError",
            Duration::from_secs(60),
            |p| {
                container(p, "main")
                    .and_then(|c| c.state.as_ref()?.waiting.as_ref())
                    .is_some_and(|w| w.reason == "CreateContainerConfigError")
            },
        )
        .await;
    let waiting = waiting_of(&pod, "main").unwrap();
    assert!(
        waiting.message.contains("configmap \"nowhere\" not found"),
        "{waiting:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_that_cannot_start_wait_with_a_reason_while_the_others_run() {
    let env = env("nostart").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "mixed"},
        "spec": {
            "containers": [
                {"name": "good", "image": image, "command": ["sleep", "3600"]},
                {"name": "missing", "image": image, "command": ["/no/such/program"]},
                {"name": "escape", "image": image, "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "scratch", "mountPath": "/x", "subPath": "escape"}]}
            ],
            // A subPath through a symlink out of the volume (a `..` one
            // is refused by the API itself).
            "initContainers": [
                {"name": "plant", "image": image, "command": ["ln", "-s", "/", "/x/escape"],
                 "volumeMounts": [{"name": "scratch", "mountPath": "/x"}]}
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }
    }))
    .await;
    let waiting = |p: &Pod, name: &str, reason: &str| {
        container(p, name)
            .and_then(|c| c.state.as_ref()?.waiting.as_ref())
            .is_some_and(|w| w.reason == reason)
    };
    let pod = env
        .wait_for(
            "mixed",
            "each container in its state",
            Duration::from_secs(60),
            |p| {
                running(p, "good")
                    && waiting(p, "missing", "RunContainerError")
                    && waiting(p, "escape", "CreateContainerConfigError")
            },
        )
        .await;
    let escape = waiting_of(&pod, "escape").unwrap();
    assert!(escape.message.contains("subPath"), "{escape:?}");
    assert!(!ready(&pod));
    // The failing ones do not disturb the running one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = env.get("mixed").await;
    assert!(running(&pod, "good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rides_out_an_api_server_restart() {
    let image = skiff_testkit::test_image().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    let mut server = skiff_testkit::ServerProcess::start(&args).unwrap();
    let addr = server.addr;
    let node = AgentNode::start(&server.url(), "apirestart").unwrap();
    let channel = skiff_client::connect_lazy(&server.url()).unwrap();
    let pods = Api::<Pod>::new(channel);
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]}
        }))
        .unwrap()
    };
    let is_running = async |name: &str| {
        pods.get("default", name)
            .await
            .is_ok_and(|p| running(&p, "main"))
    };
    pods.create(pod("before")).await.unwrap();
    wait_until("the first pod runs", Duration::from_secs(60), async || {
        is_running("before").await
    })
    .await;
    let first_id = docker_id(&pods.get("default", "before").await.unwrap(), "main");

    server.process.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _restarted = skiff_testkit::ServerProcess::start_at(addr, &args).unwrap();
    pods.create(pod("after")).await.unwrap();
    wait_until(
        "a pod created after the restart runs",
        Duration::from_secs(60),
        async || is_running("after").await,
    )
    .await;
    let before = pods.get("default", "before").await.unwrap();
    assert_eq!(
        docker_id(&before, "main"),
        first_id,
        "the first pod was left alone"
    );
    assert_eq!(container(&before, "main").unwrap().restart_count, 0);
}

/// One HTTP/1.0 GET from the host; the body, or None.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_reach_the_pod_and_logs_tail_and_follow() {
    let env = env("ports").await;
    env.allow_privileged().await;
    let image = env.image;
    let port = skiff_testkit::free_port().unwrap();
    env.create(json!({
        "metadata": {"name": "served"},
        "spec": {"containers": [
            {"name": "web", "image": image,
             "command": ["sh", "-c", "mkdir -p /www && echo via-host-port > /www/index.html && exec httpd -f -p 8080 -h /www"],
             "ports": [{"containerPort": 8080, "hostPort": port, "hostIP": "127.0.0.1"}]},
            {"name": "ticker", "image": image,
             "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; done; while true; do sleep 0.3; echo tick; done"]}
        ]}
    }))
    .await;
    env.wait_for("served", "running", Duration::from_secs(60), |p| {
        running(p, "web") && running(p, "ticker")
    })
    .await;
    let addr = format!("127.0.0.1:{port}");
    let mut body = None;
    for _ in 0..50 {
        let a = addr.clone();
        body = tokio::task::spawn_blocking(move || http_get(&a, "/"))
            .await
            .unwrap();
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body.as_deref().map(str::trim), Some("via-host-port"));

    // tailLines: only the last lines.
    let mut client = PodLogsClient::new(env.channel.clone());
    let request = |tail: Option<i64>, follow: bool| PodLogsRequest {
        namespace: "default".into(),
        name: "served".into(),
        container: "ticker".into(),
        tail_lines: tail,
        follow,
        ..Default::default()
    };
    let mut stream = client
        .logs(request(Some(2), false))
        .await
        .unwrap()
        .into_inner();
    let mut tail = Vec::new();
    while let Some(chunk) = stream.next().await {
        tail.extend_from_slice(&chunk.unwrap().data);
    }
    let tail = String::from_utf8_lossy(&tail).into_owned();
    assert_eq!(tail.lines().count(), 2, "{tail:?}");

    // follow: new lines arrive on the open stream.
    let mut stream = client
        .logs(request(Some(0), true))
        .await
        .unwrap()
        .into_inner();
    let mut seen = String::new();
    let followed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().data));
            if seen.matches("tick").count() >= 3 {
                return;
            }
        }
    })
    .await;
    assert!(followed.is_ok(), "followed only {seen:?}");

    // sinceSeconds: the first lines, written more than 2 s ago, are left
    // out; timestamps: each line after the time it was written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stream = client
        .logs(PodLogsRequest {
            since_seconds: Some(2),
            timestamps: true,
            ..request(None, false)
        })
        .await
        .unwrap()
        .into_inner();
    let mut recent = Vec::new();
    while let Some(chunk) = stream.next().await {
        recent.extend_from_slice(&chunk.unwrap().data);
    }
    let recent = String::from_utf8_lossy(&recent).into_owned();
    assert!(!recent.contains("line-"), "{recent:?}");
    let cutoff = skiff::time::now_seconds().seconds - 4;
    assert!(recent.lines().count() >= 2, "{recent:?}");
    for line in recent.lines() {
        let (time, text) = line.split_once(' ').expect("a time before each line");
        assert_eq!(text, "tick", "{recent:?}");
        let at = skiff::time::parse_rfc3339(time).expect("an RFC 3339 time");
        assert!(at >= cutoff, "{line:?} is older than asked for");
    }
}

/// The same pod semantics on the process runtime, where the host allows
/// them: pods share the host network, so "localhost" is the host's.
mod process_runtime {
    use super::*;

    fn kill9(env: &Env, pod: &Pod, name: &str) {
        let pid = skiff_testkit::process_pid(&env.node, &process_id(pod, name))
            .expect("the container's pid");
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_processes_restart_unless_the_policy_is_never() {
        let env = env_on("proc-restart", "process").await;
        for (name, policy) in [("always", "Always"), ("never", "Never")] {
            env.create(json!({
                "metadata": {"name": name},
                "spec": {"restartPolicy": policy,
                         "containers": [{"name": "main", "image": "host", "command": ["sh", "-c", "echo started-once; exec sleep 3600"]}]}
            }))
            .await;
        }
        for name in ["always", "never"] {
            let pod = env
                .wait_for(name, "running", Duration::from_secs(30), |p| {
                    running(p, "main")
                })
                .await;
            assert!(
                container(&pod, "main")
                    .unwrap()
                    .container_id
                    .starts_with("process://")
            );
            kill9(&env, &pod, "main");
        }
        let pod = env
            .wait_for("always", "restarted once", Duration::from_secs(30), |p| {
                running(p, "main") && container(p, "main").is_some_and(|c| c.restart_count == 1)
            })
            .await;
        let last = container(&pod, "main")
            .unwrap()
            .last_state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(last.exit_code, 137);
        let previous = env.logs("always", "main", true).await.unwrap();
        assert!(previous.contains("started-once"), "{previous:?}");
        env.wait_for("never", "Failed", Duration::from_secs(30), |p| {
            phase(p) == "Failed"
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn localhost_probes_and_deletion_work_with_host_processes() {
        let env = env_on("proc-probes", "process").await;
        let port = skiff_testkit::free_port().unwrap();
        let ctl = tempfile::tempdir().unwrap();
        let ctl_path = ctl.path().to_str().unwrap().to_string();
        std::fs::write(ctl.path().join("alive"), "1").unwrap();
        std::fs::write(ctl.path().join("ready"), "1").unwrap();
        std::fs::write(ctl.path().join("hello"), "hello-over-localhost").unwrap();
        let alive = format!("{ctl_path}/alive");
        env.create(json!({
            "metadata": {"name": "web"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "server", "image": "host",
                        "command": ["busybox", "httpd", "-f", "-p", format!("127.0.0.1:{port}"), "-h", ctl_path],
                        "livenessProbe": {"exec": {"command": ["test", "-f", alive]}, "periodSeconds": 1, "failureThreshold": 1},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 1, "failureThreshold": 1}
                    },
                    {
                        "name": "client", "image": "host",
                        "command": ["sh", "-c", format!("until busybox wget -q -O - http://127.0.0.1:{port}/hello; do sleep 0.2; done; echo; exec sleep 3600")]
                    }
                ]
            }
        }))
        .await;
        env.wait_for("web", "Ready", Duration::from_secs(30), ready)
            .await;
        let mut log = String::new();
        for _ in 0..50 {
            log = env.logs("web", "client", false).await.unwrap();
            if log.contains("hello-over-localhost") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(log.contains("hello-over-localhost"), "{log:?}");

        toggle_probes(&env, "web", "server", ctl.path()).await;

        // httpd and sleep end on SIGTERM: well within the grace period.
        let started = std::time::Instant::now();
        env.delete("web").await;
        wait_until(
            "every process is gone",
            Duration::from_secs(20),
            async || env.node.container_ids().is_empty(),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopped by SIGTERM, not by the deadline"
        );
        let pods = env.pods();
        wait_until("the pod is deleted", Duration::from_secs(10), async || {
            pods.get("default", "web")
                .await
                .is_err_and(|s| s.code() == tonic::Code::NotFound)
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_agent_adopts_its_processes() {
        let mut env = env_on("proc-adopt", "process").await;
        env.create(json!({
            "metadata": {"name": "kept"},
            "spec": {"containers": [{"name": "main", "image": "host", "command": ["sleep", "3600"]}]}
        }))
        .await;
        let pod = env
            .wait_for("kept", "running", Duration::from_secs(30), |p| {
                running(p, "main")
            })
            .await;
        kill9(&env, &pod, "main");
        let pod = env
            .wait_for("kept", "restarted once", Duration::from_secs(30), |p| {
                running(p, "main") && container(p, "main").is_some_and(|c| c.restart_count == 1)
            })
            .await;
        let before = env.node.container_ids();
        let pid = skiff_testkit::process_pid(&env.node, &process_id(&pod, "main")).unwrap();
        env.node.kill9();
        env.node.start_agent().unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            env.node.container_ids(),
            before,
            "nothing created, nothing removed"
        );
        let again = env.get("kept").await;
        assert_eq!(process_id(&again, "main"), process_id(&pod, "main"));
        assert_eq!(container(&again, "main").unwrap().restart_count, 1);
        assert_eq!(
            skiff_testkit::process_pid(&env.node, &process_id(&again, "main")),
            Some(pid),
            "the same process"
        );
        assert!(running(&again, "main"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_see_the_services_that_exist_when_they_start() {
    let env = env("svcenv").await;
    let image = env.image;
    let services = Api::<skiff::pb::core::v1::Service>::new(env.channel.clone());
    let svc = services
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "db-main", "namespace": "default"},
                "spec": {"selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let ip = svc.spec.unwrap().cluster_ip;
    env.create(json!({
        "metadata": {"name": "client"},
        "spec": {"containers": [{"name": "main", "image": image,
            "command": ["sh", "-c", "echo $DB_MAIN_SERVICE_HOST $DB_MAIN_SERVICE_PORT $DB_MAIN_SERVICE_PORT_PG $DB_MAIN_PORT; exec sleep 3600"]}]}
    }))
    .await;
    env.wait_for("client", "running", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    // A pod with enableServiceLinks: false gets none of them.
    env.create(json!({
        "metadata": {"name": "unlinked"},
        "spec": {"enableServiceLinks": false,
            "containers": [{"name": "main", "image": image,
            "command": ["sh", "-c", "echo \"[$DB_MAIN_SERVICE_HOST$DB_MAIN_PORT]\"; exec sleep 3600"]}]}
    }))
    .await;
    env.wait_for("unlinked", "running", Duration::from_secs(60), |p| {
        running(p, "main")
    })
    .await;
    let first_line = async |pod: &str| {
        let mut log = String::new();
        for _ in 0..50 {
            log = env.logs(pod, "main", false).await.unwrap();
            if !log.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log.trim().to_string()
    };
    assert_eq!(
        first_line("client").await,
        format!("{ip} 5432 5432 tcp://{ip}:5432")
    );
    assert_eq!(first_line("unlinked").await, "[]");
}

/// Two clusters on one machine (two `skiff up`s, say) whose agents take
/// the same node name share one Docker engine: the second agent refuses
/// to start, saying why, instead of removing the first one's pods as
/// belonging to pods its own cluster does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_name_taken_by_another_clusters_agent_on_this_engine_is_refused() {
    let env = env("twin").await;
    env.create(json!({
        "metadata": {"name": "first"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": env.image, "command": ["sleep", "3600"]}]}
    }))
    .await;
    let pod = env
        .wait_for("first", "running", Duration::from_secs(60), |p| {
            running(p, "main")
        })
        .await;
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        skiff_testkit::api_server(StoreConfig::Embedded(other_dir.path().join("state.redb")))
            .await
            .unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let out = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["agent", "--server", &format!("http://{}", other.addr)])
        .args([
            "--node-name",
            &env.node.name,
            "--network",
            &env.node.network,
        ])
        .arg("--data-dir")
        .arg(agent_dir.path())
        .args(["--listen", "127.0.0.1:0", "--proxy-mode", "none"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for part in [
        "another cluster",
        &format!("plaintext http://{}", env.server.addr),
        "--node-name",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    // The first cluster's pod was left alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = env.get("first").await;
    assert_eq!(docker_id(&again, "main"), docker_id(&pod, "main"));
    assert!(running(&again, "main"));
}
