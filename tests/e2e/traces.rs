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
use skiff_e2e::{AgentNode, ChildGuard, wait_until};

/// One received span.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
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
                    spans.push(Received {
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
    let child = Command::new(skiff_e2e::skiff_binary().unwrap())
        .args(args)
        .arg(format!("--otlp-endpoint={endpoint}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildGuard::new(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apply_is_one_trace_through_api_server_controllers_scheduler_and_agent() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let port = skiff_e2e::free_port().unwrap();
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
    skiff_e2e::wait_for_port(addr.parse().unwrap(), Duration::from_secs(20)).unwrap();
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
    let applied = Command::new(skiff_e2e::skiff_binary().unwrap())
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

    let channel = skiff_e2e::channel(addr.parse().unwrap()).await.unwrap();
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
            deployed = skiff_e2e::list::<Pod>(&channel, "default", "app=traced").await;
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
