//! OpenTelemetry traces end to end: an OTLP receiver (the collector's
//! trace service, from the opentelemetry-proto definitions) gets the
//! spans of `skiff server`, `skiff scheduler`, `skiff controller-manager`,
//! `skiff agent` and one `skiff apply` of a Pod and a Deployment, and the
//! apply's trace runs through all of them: the client's call, the API
//! server's requests and store writes, the Deployment and ReplicaSet
//! reconciles creating the pod, the scheduling cycle and the agent's pod
//! start.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use skiff::pb::core::v1::Pod;
use skiff_client::Api;
use skiff_testkit::{AgentNode, ChildGuard, wait_until};

/// One received span.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
    /// Everything it said (attributes, events), dumped.
    dump: String,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let dump = format!("{span:?}");
                    spans.push(Received {
                        dump,
                        service: service.clone(),
                        name: span.name,
                        trace: span.trace_id,
                        span: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// `skiff ARGS` as a child exporting to `endpoint`, batches sent every
/// 200 ms.
fn component(args: &[&str], endpoint: &str) -> ChildGuard {
    logged_component(args, endpoint, None)
}

/// As [`component`], logging at debug into `log` when given.
fn logged_component(args: &[&str], endpoint: &str, log: Option<&std::path::Path>) -> ChildGuard {
    let mut command = Command::new(skiff_testkit::skiff_binary().unwrap());
    command
        .args(args)
        .arg(format!("--otlp-endpoint={endpoint}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match log {
        Some(path) => command
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(path).unwrap()),
        None => command.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
    };
    ChildGuard::new(command.spawn().unwrap())
}

/// An OTLP receiver on a loopback port: it and its endpoint URL.
async fn collector() -> (Receiver, String, tokio::task::JoinHandle<()>) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let task = tokio::spawn(async move {
        let _ = server.await;
    });
    (receiver, endpoint, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apply_is_one_trace_through_api_server_controllers_scheduler_and_agent() {
    let (receiver, endpoint, collector) = collector().await;

    let dir = tempfile::tempdir().unwrap();
    let port = skiff_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    let data_dir = dir.path().join("server").display().to_string();
    let _server = component(
        &[
            "server",
            "--insecure",
            "--listen",
            &addr,
            "--data-dir",
            &data_dir,
        ],
        &endpoint,
    );
    skiff_testkit::wait_for_port(addr.parse().unwrap(), Duration::from_secs(20)).unwrap();
    let _scheduler = component(
        &["scheduler", "--server", &url, "--leader-elect=false"],
        &endpoint,
    );
    let _controllers = component(
        &[
            "controller-manager",
            "--server",
            &url,
            "--leader-elect=false",
        ],
        &endpoint,
    );
    let otlp = format!("--otlp-endpoint={endpoint}");
    let node = AgentNode::start_with(&url, "traces", "process", &[&otlp]).unwrap();

    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: traced\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: host\n    command: [\"sleep\", \"300\"]\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: traced-app\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: traced\n  template:\n    metadata:\n      labels:\n        app: traced\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: host\n        command: [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    let applied = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["apply", "-f", manifest.to_str().unwrap(), &otlp])
        .env("SKIFF_CONFIG", dir.path().join("config"))
        .env("SKIFF_SERVER", &url)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let channel = skiff_testkit::channel(addr.parse().unwrap()).await.unwrap();
    let pods = Api::<Pod>::new(channel.clone());
    wait_until("the pod runs", Duration::from_secs(60), async || {
        pods.get("default", "traced")
            .await
            .ok()
            .and_then(|p| p.status)
            .is_some_and(|s| s.phase == "Running")
    })
    .await;
    let pod = pods.get("default", "traced").await.unwrap();
    let annotation = pod.metadata.unwrap().annotations[skiff_telemetry::TRACE_ANNOTATION].clone();

    // The client exported its span before it exited; the rest follow
    // within their batch delay.
    let client = receiver
        .spans()
        .into_iter()
        .find(|s| s.service == "skiff" && s.name == "skiff apply")
        .expect("the client's span was exported before apply exited");
    assert!(client.parent.is_empty(), "the apply is its trace's root");
    let trace_hex: String = client.trace.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        annotation.starts_with(&format!("00-{trace_hex}-")),
        "the pod records the apply's trace: {annotation}"
    );
    // The Deployment's pod, created by the ReplicaSet controller, carries
    // the same trace.
    let mut deployed = Vec::new();
    wait_until(
        "the deployment's pod",
        Duration::from_secs(60),
        async || {
            deployed = skiff_testkit::list::<Pod>(&channel, "default", "app=traced").await;
            !deployed.is_empty()
        },
    )
    .await;
    let annotations = deployed[0].metadata.clone().unwrap().annotations;
    assert!(
        annotations[skiff_telemetry::TRACE_ANNOTATION].starts_with(&format!("00-{trace_hex}-")),
        "{annotations:?}"
    );
    let wanted = [
        ("skiff-controller-manager", "reconcile deployment"),
        ("skiff-controller-manager", "reconcile replicasets"),
        ("skiff-apiserver", "skiff.apps.v1.ReplicaSets/Create"),
        ("skiff-apiserver", "skiff.core.v1.Pods/Create"),
        ("skiff-apiserver", "store create"),
        ("skiff-scheduler", "schedule"),
        ("skiff-apiserver", "skiff.core.v1.Pods/Bind"),
        ("skiff-agent", "pod start"),
    ];
    let mut seen = BTreeSet::new();
    wait_until(
        "spans of every component in the apply's trace",
        Duration::from_secs(30),
        async || {
            seen = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace == client.trace)
                .map(|s| (s.service, s.name))
                .collect();
            wanted
                .iter()
                .all(|(service, name)| seen.contains(&(service.to_string(), name.to_string())))
        },
    )
    .await;
    let mut spans = receiver.spans();
    let create = spans
        .iter()
        .find(|s| s.trace == client.trace && s.name == "skiff.core.v1.Pods/Create")
        .unwrap();
    assert_eq!(
        create.parent, client.span,
        "the server's span is the client's child"
    );
    // Every span of the trace hangs off a span of the trace (parents
    // end, and are exported, after their children: wait for them).
    let orphans = |spans: &[Received]| -> Vec<Received> {
        let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace == client.trace).collect();
        in_trace
            .iter()
            .filter(|s| s.span != client.span && !in_trace.iter().any(|p| p.span == s.parent))
            .map(|s| (*s).clone())
            .collect()
    };
    wait_until("every span's parent", Duration::from_secs(15), async || {
        spans = receiver.spans();
        orphans(&spans).is_empty()
    })
    .await;
    drop(node);
    collector.abort();
}

/// `skiff ARGS` with the client config `config`, logging at debug:
/// whether it succeeded, its stdout and stderr.
fn try_skiff(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(args)
        .env("SKIFF_CONFIG", config)
        .env_remove("SKIFF_SERVER")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`try_skiff`], which must succeed: its stdout and stderr.
fn skiff_with(config: &std::path::Path, args: &[&str]) -> (String, String) {
    let (ok, out, err) = try_skiff(config, args);
    assert!(ok, "skiff {args:?}: {err}");
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_data_never_appears_in_logs_traces_or_events() {
    // A TLS cluster whose every component logs at debug into a file and
    // exports its spans; a Secret reaches a pod as env, envFrom and a
    // volume, and one reference to a missing key fails (an error path).
    const VALUE: &str = "s3cr3t-Value-that-must-never-leak";
    const TOKEN_FILE_VALUE: &str = "another-Hidden-Value";
    let (receiver, endpoint, collector) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let port = skiff_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://{addr}");
    let data = dir.path().join("server");
    let data_dir = data.display().to_string();
    let _server = logged_component(
        &["server", "--listen", &addr, "--data-dir", &data_dir],
        &endpoint,
        Some(&logs.join("server.log")),
    );
    skiff_testkit::wait_for_port(addr.parse().unwrap(), Duration::from_secs(20)).unwrap();
    let admin = data.join("admin.config");
    wait_until("the admin config", Duration::from_secs(20), async || {
        std::fs::read_to_string(&admin).is_ok_and(|t| t.contains(&addr))
    })
    .await;
    let scheduler_config = data.join("scheduler.config").display().to_string();
    let _scheduler = logged_component(
        &[
            "scheduler",
            "--config",
            &scheduler_config,
            "--leader-elect=false",
        ],
        &endpoint,
        Some(&logs.join("scheduler.log")),
    );
    let controllers_config = data.join("controller-manager.config").display().to_string();
    let _controllers = logged_component(
        &[
            "controller-manager",
            "--config",
            &controllers_config,
            "--leader-elect=false",
        ],
        &endpoint,
        Some(&logs.join("controllers.log")),
    );
    let (out, err) = skiff_with(&admin, &["token", "create"]);
    let (token, hash) = skiff_testkit::printed_token(&out, &err);
    let agent_dir = tempfile::tempdir().unwrap();
    let node = format!("secretive-{}", std::process::id());
    let agent_data = agent_dir.path().display().to_string();
    let _agent = logged_component(
        &[
            "agent",
            "--server",
            &url,
            "--node-name",
            &node,
            "--data-dir",
            &agent_data,
            "--runtime",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--proxy-mode=none",
            "--cluster-dns=false",
            "--resync-secs=1",
            "--token",
            &token,
            "--ca-hash",
            &hash,
        ],
        &endpoint,
        Some(&logs.join("agent.log")),
    );

    let manifest = dir.path().join("app.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: {VALUE}, other: {TOKEN_FILE_VALUE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: consumer}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: host
    command: ["sh", "-c", "test \"$PASSWORD\" = {VALUE} && cat $SKIFF_VOLUME_CREDS/other >/dev/null && echo the secret arrived; exec sleep 300"]
    env:
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    envFrom:
    - secretRef: {{name: creds}}
    volumeMounts: [{{name: creds, mountPath: /creds}}]
  volumes:
  - name: creds
    secret: {{secretName: creds}}
---
apiVersion: v1
kind: Pod
metadata: {{name: broken}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: host
    command: ["sleep", "300"]
    env:
    - name: MISSING
      valueFrom: {{secretKeyRef: {{name: creds, key: nope}}}}
"#
        ),
    )
    .unwrap();
    let otlp = format!("--otlp-endpoint={endpoint}");
    let (_, apply_log) = skiff_with(&admin, &["apply", "-f", manifest.to_str().unwrap(), &otlp]);
    let mut log = String::new();
    wait_until(
        "the secret reaches the pod",
        Duration::from_secs(60),
        async || {
            let (_, out, err) = try_skiff(&admin, &["logs", "consumer"]);
            log = format!("{out}{err}");
            out.contains("the secret arrived")
        },
    )
    .await;
    let mut events = String::new();
    wait_until(
        "the broken pod's event",
        Duration::from_secs(60),
        async || {
            events = try_skiff(&admin, &["get", "events", "-o", "yaml"]).1;
            events.contains("nope")
        },
    )
    .await;
    // Spans and logs flush within their batch delay; a moment more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans: Vec<String> = receiver.spans().into_iter().map(|s| s.dump).collect();
    assert!(spans.len() > 10, "spans arrived: {}", spans.len());
    let mut texts = vec![
        ("the apply's log".to_string(), apply_log),
        ("skiff logs, at debug".to_string(), log),
        ("the events".to_string(), events),
        (
            "the pod's describe".to_string(),
            skiff_with(&admin, &["describe", "pod", "broken"]).0,
        ),
        ("the spans".to_string(), spans.join("\n")),
    ];
    for entry in std::fs::read_dir(&logs).unwrap() {
        let path = entry.unwrap().path();
        texts.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    // The bootstrap token's secret half is a secret too.
    let token_secret = token.split('.').nth(1).unwrap().to_string();
    for (what, text) in &texts {
        assert!(
            !text.is_empty() || what.contains("apply"),
            "{what} is empty"
        );
        for secret in [VALUE, TOKEN_FILE_VALUE, token_secret.as_str()] {
            assert!(
                !text.contains(secret),
                "{what} shows a secret ({secret}):\n{text}"
            );
        }
    }
    // The logs were written at debug (so the check means something).
    let server_log = std::fs::read_to_string(logs.join("server.log")).unwrap();
    assert!(server_log.contains("DEBUG"), "{server_log}");
    // The process runtime's shims outlive their agent (a restarted agent
    // adopts them): the pod goes before the agent does.
    try_skiff(&admin, &["delete", "pod", "consumer"]);
    wait_until(
        "the consumer pod is gone",
        Duration::from_secs(30),
        async || !try_skiff(&admin, &["get", "pod", "consumer"]).0,
    )
    .await;
    collector.abort();
}
