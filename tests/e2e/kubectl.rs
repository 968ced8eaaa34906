//! The Kubernetes HTTP API through clients no one here wrote: the real
//! kubectl (v1.35) and the Python `kubernetes` client, both installed by
//! `scripts/deps`, against the same port and registry as gRPC.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use skiff::pb::api::v1::{EventType, ListRequest};
use skiff::pb::core::v1::{ConfigMap, Namespace, ServiceAccount};
use skiff_client::Api;
use skiff_ctl::config::ClientConfig;
use skiff_testkit::wait_until;

/// kubectl with its own kubeconfig, home and discovery cache.
struct Kubectl {
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

/// What a command printed and how it ended.
struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
    code: Option<i32>,
}

impl Kubectl {
    fn new(kubeconfig: PathBuf) -> Self {
        Self {
            kubeconfig,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubeconfig for `config` (server, CA, credentials) in its home.
    fn for_config(config: &ClientConfig) -> Self {
        let home = tempfile::tempdir().unwrap();
        let kubeconfig = home.path().join("kubeconfig");
        skiff_ctl::config::save_kubeconfig(config, "user", &kubeconfig, "test").unwrap();
        Self { kubeconfig, home }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(skiff_testkit::kubectl_binary().unwrap());
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join("cache"));
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        Self::ran(self.command(args).output().unwrap())
    }

    /// Runs with `input` on its standard input.
    fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Self::ran(child.wait_with_output().unwrap())
    }

    fn ran(out: std::process::Output) -> Run {
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ok: out.status.success(),
            code: out.status.code(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            run.ok,
            "kubectl {args:?} failed: {}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    /// Runs a command that must fail; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(!run.ok, "kubectl {args:?} succeeded: {}", run.stdout);
        run.stderr
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

/// The columns of a table's header line.
/// Runs `kubectl port-forward pod/NAME :REMOTE` (with `env`), makes
/// `gets` HTTP requests through it, one connection each, and returns the
/// last response (empty when the connection carried nothing back) and
/// what kubectl printed on stderr; then stops kubectl.
fn port_forward_get(
    k: &Kubectl,
    pod: &str,
    remote: &str,
    env: &[(&str, &str)],
    gets: usize,
) -> (String, String) {
    use std::io::{BufRead as _, Read as _, Write as _};
    let mut command = k.command(&["port-forward", &format!("pod/{pod}"), &format!(":{remote}")]);
    command.envs(env.iter().copied());
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("kubectl port-forward starts");
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("piped");
    let mut child = Stop(child);
    // "Forwarding from 127.0.0.1:PORT -> REMOTE"
    let mut lines = std::io::BufReader::new(stdout).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_else(|| {
        let mut err = String::new();
        if let Some(e) = child.0.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        panic!("kubectl port-forward printed nothing: {err}")
    });
    let local = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    let mut last = String::new();
    for _ in 0..gets {
        let mut socket =
            std::net::TcpStream::connect(format!("127.0.0.1:{local}")).expect("connects");
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        socket
            .write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        last.clear();
        let _ = socket.read_to_string(&mut last);
    }
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut err = String::new();
    if let Some(e) = child.0.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    (last, err)
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_manages_a_deployment_on_skiff_as_on_kubernetes() {
    let c = crate::cli::cluster("kubectl").await;
    let k = Kubectl::for_config(&ClientConfig {
        server: format!("http://{}", c.server.addr),
        ..Default::default()
    });
    // Nodes, with kubectl's columns from the server's Table.
    wait_until(
        "the node shows Ready in kubectl",
        Duration::from_secs(60),
        async || {
            let run = k.run(&["get", "nodes"]);
            run.ok && run.stdout.contains(&c.node.name) && run.stdout.contains(" Ready ")
        },
    )
    .await;
    let nodes = k.ok(&["get", "nodes"]);
    assert_eq!(
        header(&nodes),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    );
    let wide = k.ok(&["get", "nodes", "-o", "wide"]);
    assert!(header(&wide).contains(&"INTERNAL-IP".to_string()), "{wide}");
    assert_eq!(k.ok(&["get", "--raw", "/readyz"]), "ok");
    let resources = k.ok(&["api-resources"]);
    assert!(
        resources
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["deployments", "deploy", "apps/v1", "true", "Deployment"]),
        "{resources}"
    );
    assert!(
        k.ok(&["api-versions"])
            .contains("rbac.authorization.k8s.io/v1")
    );

    // apply: created, unchanged, configured.
    let manifest = crate::cli::app(c.image, "hello");
    let file = k.write("app.yaml", &manifest);
    let created = k.ok(&["apply", "-f", &file]);
    for line in [
        "configmap/web-content created",
        "secret/web-secret created",
        "deployment.apps/web created",
    ] {
        assert!(created.contains(line), "{created}");
    }
    let again = k.ok(&["apply", "-f", &file]);
    // (A Secret written with stringData is "configured" every time, on
    // Kubernetes too: the server keeps only data.)
    assert!(again.contains("configmap/web-content unchanged"), "{again}");
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    let edited = k.write("app2.yaml", &manifest.replace("replicas: 2", "replicas: 3"));
    let configured = k.ok(&["apply", "-f", &edited]);
    assert!(
        configured.contains("deployment.apps/web configured"),
        "{configured}"
    );
    assert!(
        configured.contains("configmap/web-content unchanged"),
        "{configured}"
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    k.ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ]);

    // Server-side apply: field owners, conflicts, --force-conflicts.
    let ssa = k.write(
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: one\n  gone: soon\n",
    );
    assert!(
        k.ok(&["apply", "--server-side", "-f", &ssa])
            .contains("configmap/ssa serverside-applied")
    );
    let ssa = k.write(
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: one\n",
    );
    k.ok(&["apply", "--server-side", "-f", &ssa]);
    // A field its only manager stopped applying is gone.
    assert_eq!(
        k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data}"]),
        r#"{"k":"one"}"#
    );
    let other = k.write(
        "other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: two\n",
    );
    let err = k.fails(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ]);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.k"),
        "{err}"
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "--force-conflicts",
        "-f",
        &other,
    ]);
    assert_eq!(
        k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.k}"]),
        "two"
    );
    let owners = k.ok(&[
        "get",
        "cm",
        "ssa",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    // kubectl's only field went to "other": kubectl owns nothing now.
    assert_eq!(owners, "other");
    // A write other than apply takes the field it changes: the applier
    // that sets it otherwise now conflicts with it, as on Kubernetes.
    k.ok(&[
        "patch",
        "cm",
        "ssa",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"three"}}"#,
    ]);
    let err = k.fails(&[
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        &other,
    ]);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\": .data.k"),
        "{err}"
    );

    // get, in kubectl's forms.
    let pods = k.ok(&["get", "pods", "-l", "app=web"]);
    assert_eq!(
        header(&pods),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(pods.matches(" Running ").count(), 3, "{pods}");
    let wide = k.ok(&["get", "pods", "-o", "wide"]);
    assert!(wide.contains(&c.node.name), "{wide}");
    let phases = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(phases, "Running Running Running");
    let generation = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert!(generation.parse::<i64>().unwrap() >= 2, "{generation}");
    let json: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Deployment");
    assert_eq!(json["spec"]["replicas"], 3);
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&k.ok(&["get", "cm", "web-content", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["apiVersion"], "v1");
    let columns = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName",
    ]);
    assert_eq!(columns.lines().count(), 4, "{columns}");
    let labelled = k.ok(&["get", "deploy", "--show-labels", "-A"]);
    assert!(labelled.contains("app=web"), "{labelled}");
    assert!(labelled.starts_with("NAMESPACE"), "{labelled}");

    // label, annotate, and patches of each type kubectl sends.
    k.ok(&["label", "deployment", "web", "tier=front"]);
    k.ok(&["annotate", "deployment", "web", "note=hi"]);
    k.ok(&["patch", "deployment", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"EXTRA","value":"1"}]}]}}}}"#]);
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ]);
    k.ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/json","value":"yes"}]"#,
    ]);
    let deployment: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    let labels = &deployment["metadata"]["labels"];
    assert_eq!(
        (
            labels["tier"].as_str(),
            labels["merged"].as_str(),
            labels["json"].as_str()
        ),
        (Some("front"), Some("yes"), Some("yes"))
    );
    assert_eq!(deployment["metadata"]["annotations"]["note"], "hi");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    // The strategic merge kept GREETING and added EXTRA (env merges by name).
    let names: Vec<&str> = env
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["GREETING", "EXTRA"], "{env}");
    let failed = k.fails(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":42}]"#,
    ]);
    assert!(failed.contains("value did not match"), "{failed}");

    // scale (the scale subresource), rollout history, restart, undo.
    assert!(
        k.ok(&["scale", "deployment", "web", "--replicas=2"])
            .contains("deployment.apps/web scaled")
    );
    let replicas = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("REVISION"), "{history}");
    assert!(
        k.ok(&["rollout", "restart", "deployment/web"])
            .contains("restarted")
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(
        k.ok(&["rollout", "undo", "deployment/web"])
            .contains("rolled back")
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let described = k.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    // kubectl events (core/v1 Events, as kubectl 1.35 reads them).
    let events = k.ok(&["events", "--for", "deployment/web"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");
    // explain: the OpenAPI v3 schemas, with the protos' comments.
    let explained = k.ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explained.contains("FIELD: strategy <DeploymentStrategy>")
            && explained.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{explained}"
    );
    let missing = k.fails(&["explain", "deployment.spec.nope"]);
    assert!(
        missing.contains("field \"nope\" does not exist"),
        "{missing}"
    );
    // A kind in two versions, stored once: an autoscaling/v1 manifest
    // reads back in v2 and in v1, reapplies unchanged (kubectl patches
    // it in v1), and events read as events.k8s.io/v1 too.
    let hpa = k.write(
        "hpa.yaml",
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: v1-hpa\nspec:\n  scaleTargetRef:\n    apiVersion: apps/v1\n    kind: Deployment\n    name: absent\n  minReplicas: 1\n  maxReplicas: 3\n  targetCPUUtilizationPercentage: 50\n",
    );
    assert!(k.ok(&["apply", "-f", &hpa]).contains("created"));
    assert_eq!(
        k.ok(&[
            "get",
            "horizontalpodautoscalers.v2.autoscaling",
            "v1-hpa",
            "-o",
            "jsonpath={.spec.metrics[0].resource.target.averageUtilization}"
        ]),
        "50"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "v1-hpa",
            "-o",
            "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}"
        ]),
        "autoscaling/v1 50"
    );
    assert!(
        k.ok(&["apply", "-f", &hpa]).contains("unchanged"),
        "reapplied"
    );
    // A status sent through v1 (a conversion of the stored one) is not
    // the writer's to change: a replace carrying another one is taken,
    // its status left as the server has it.
    let mut read: serde_json::Value = serde_json::from_str(&k.ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "v1-hpa",
        "-o",
        "json",
    ]))
    .unwrap();
    read["spec"]["maxReplicas"] = serde_json::json!(4);
    read["status"]["currentCPUUtilizationPercentage"] = serde_json::json!(99);
    let replaced = k.write("hpa-replace.json", &read.to_string());
    k.ok(&["replace", "-f", &replaced]);
    assert_eq!(
        k.ok(&[
            "get",
            "horizontalpodautoscalers.v1.autoscaling",
            "v1-hpa",
            "-o",
            "jsonpath={.spec.maxReplicas} {.status.currentCPUUtilizationPercentage}"
        ]),
        "4 "
    );
    let raised = k.write(
        "hpa2.yaml",
        &std::fs::read_to_string(&hpa)
            .unwrap()
            .replace(": 50", ": 70"),
    );
    assert!(k.ok(&["apply", "-f", &raised]).contains("configured"));
    assert_eq!(
        k.ok(&[
            "get",
            "hpa",
            "v1-hpa",
            "-o",
            "jsonpath={.spec.metrics[0].resource.target.averageUtilization}"
        ]),
        "70"
    );
    k.ok(&["delete", "hpa", "v1-hpa"]);
    let new_events = k.ok(&[
        "get",
        "events.v1.events.k8s.io",
        "--field-selector=regarding.name=web",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(new_events.contains("ScalingReplicaSet"), "{new_events}");

    // edit, with EDITOR a script changing the replicas (the first
    // `replicas:` of the YAML is the spec's).
    let editor = k.write(
        "editor.sh",
        "#!/bin/sh\nsed -i '0,/^  replicas: .*/s//  replicas: 3/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let edited = k
        .command(&["edit", "deployment", "web"])
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&edited.stdout).contains("deployment.apps/web edited"),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    k.ok(&["scale", "deployment", "web", "--replicas=2"]);

    // logs, exec (exit codes, piped stdin) and cp, over the agents, once
    // the old pods are gone.
    wait_until(
        "only the rolled-back pods are left",
        Duration::from_secs(60),
        async || {
            let pods = k.ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
            pods.lines().count() == 2 && !pods.contains("Terminating")
        },
    )
    .await;
    let pod = k.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let log = k.ok(&["logs", &pod, "-c", "web"]);
    assert!(log.contains("hello"), "{log}");
    assert_eq!(k.ok(&["logs", &pod, "--tail=1"]).lines().count(), 1);
    assert_eq!(
        k.ok(&["exec", &pod, "--", "cat", "/www/index.html"]),
        "hello from skiff\n"
    );
    let failed = k.run(&[
        "exec",
        &pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(failed.code, Some(3), "{}", failed.stderr);
    assert_eq!(failed.stdout, "out\n");
    assert!(failed.stderr.contains("err\n"), "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains("command terminated with exit code 3"),
        "{}",
        failed.stderr
    );
    let counted = k.run_with_stdin(&["exec", "-i", &pod, "--", "wc", "-c"], b"piped data\n");
    assert!(counted.ok, "{}", counted.stderr);
    assert_eq!(counted.stdout.trim(), "11");
    let copy = k.home.path().join("index.html");
    k.ok(&[
        "cp",
        &format!("default/{pod}:/www/index.html"),
        copy.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&copy).unwrap(),
        "hello from skiff\n"
    );
    // cp into the pod (tar through exec -i), and back.
    let upload = k.write("upload.txt", "uploaded by kubectl\n");
    k.ok(&["cp", &upload, &format!("default/{pod}:/upload.txt")]);
    assert_eq!(
        k.ok(&["exec", &pod, "--", "cat", "/upload.txt"]),
        "uploaded by kubectl\n"
    );

    // port-forward: over the WebSocket tunnel kubectl tries first, and
    // over plain SPDY (its fallback); to the pod's port, and to a server
    // listening only on the pod's own localhost (the pod's network
    // namespace is entered, as the kubelet does).
    let (served, _) = port_forward_get(&k, &pod, "8080", &[], 2);
    assert!(served.contains("hello from skiff"), "{served}");
    let (spdy, _) = port_forward_get(
        &k,
        &pod,
        "8080",
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
        1,
    );
    assert!(spdy.contains("hello from skiff"), "{spdy}");
    k.ok(&[
        "exec",
        &pod,
        "--",
        "httpd",
        "-p",
        "127.0.0.1:9090",
        "-h",
        "/www",
    ]);
    let (local, _) = port_forward_get(&k, &pod, "9090", &[], 1);
    assert!(local.contains("hello from skiff"), "{local}");
    // The Python client's port forwarding (WebSocket channels,
    // `?ports=`).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/python/port_forward.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&k.kubeconfig)
        .args(["default", &pod, "8080"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("hello from skiff") && !printed.contains("ERROR"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // attach: `kubectl run -i --rm` creates a pod keeping its stdin
    // open, joins its process (stdin in, output out) and deletes it.
    let image = format!("--image={}", c.image);
    let ran = k.run_with_stdin(
        &[
            "run",
            "reader",
            "-i",
            "--rm",
            "--restart=Never",
            &image,
            "--image-pull-policy=Never",
            "--",
            "sh",
            "-c",
            "read line; echo got $line",
        ],
        b"abc\n",
    );
    assert!(ran.ok, "{}", ran.stderr);
    assert!(ran.stdout.contains("got abc"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("pod \"reader\" deleted"),
        "{}",
        ran.stdout
    );
    // Nothing listening: kubectl says why, as for Kubernetes.
    let (refused, why) = port_forward_get(&k, &pod, "9191", &[], 1);
    assert!(refused.is_empty(), "{refused}");
    assert!(
        why.contains("an error occurred forwarding") && why.contains("9191"),
        "{why}"
    );

    // kubectl top reads metrics.k8s.io (the agents' samples, once two are in).
    wait_until(
        "kubectl top shows the node",
        Duration::from_secs(60),
        async || {
            let run = k.run(&["top", "nodes"]);
            run.ok && run.stdout.contains(&c.node.name)
        },
    )
    .await;
    // (A pod's usage needs two samples of it.)
    let mut top = String::new();
    wait_until(
        "kubectl top shows the pod",
        Duration::from_secs(60),
        async || {
            let run = k.run(&["top", "pods", "-l", "app=web"]);
            top = run.stdout;
            run.ok && top.contains(&pod)
        },
    )
    .await;
    assert!(
        header(&top).starts_with(&["NAME".to_string(), "CPU(cores)".to_string()]),
        "{top}"
    );

    // Errors read as kubectl prints them for Kubernetes.
    assert_eq!(
        k.fails(&["get", "pod", "nope"]).trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    let typo = k.write(
        "typo.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n  - name: c\n    imag: x\n",
    );
    let err = k.fails(&["apply", "-f", &typo]);
    assert!(
        err.contains("strict decoding error: unknown field \"spec.containers[0].imag\""),
        "{err}"
    );
    let empty = k.write(
        "empty.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: empty\nspec:\n  containers:\n  - name: c\n    image: \"\"\n",
    );
    let err = k.fails(&["apply", "-f", &empty]);
    assert!(
        err.contains("The Pod \"empty\" is invalid: spec.containers[0].image: Required value"),
        "{err}"
    );

    // A watch (one-row Tables) sees what happens after it starts.
    let mut watcher = Command::new(skiff_testkit::kubectl_binary().unwrap())
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("HOME", k.home.path())
        .env("KUBECACHEDIR", k.home.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let listed = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(listed.starts_with("EVENT"), "{listed:?}");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        assert!(!line.contains("watched"), "{line}");
    }
    let cm = k.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n",
    );
    k.ok(&["create", "-f", &cm]);
    let seen = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("watched") {
            break line;
        }
    };
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(seen.starts_with("ADDED"), "{seen:?}");

    // kubectl's generators send protobuf (client-go's typed clients).
    assert!(
        k.ok(&["create", "configmap", "gen", "--from-literal=a=b"])
            .contains("configmap/gen created")
    );
    assert_eq!(k.ok(&["get", "cm", "gen", "-o", "jsonpath={.data.a}"]), "b");
    k.ok(&["create", "secret", "generic", "gen", "--from-literal=pw=x"]);
    assert_eq!(
        k.ok(&["get", "secret", "gen", "-o", "jsonpath={.data.pw}"]),
        "eA=="
    );
    k.ok(&[
        "create",
        "deployment",
        "gen",
        &format!("--image={}", c.image),
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert!(
        k.ok(&[
            "expose",
            "deployment",
            "gen",
            "--port=80",
            "--target-port=8080"
        ])
        .contains("service/gen exposed")
    );
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "gen",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ]),
        "8080"
    );
    k.ok(&["rollout", "status", "deployment/gen", "--timeout=120s"]);
    k.ok(&["create", "namespace", "gen"]);
    // A quota (protobuf, from `create quota`), once its controller has
    // counted it, refuses what would pass it with Kubernetes' 403.
    k.ok(&[
        "create",
        "quota",
        "gen",
        "-n",
        "gen",
        "--hard=pods=1,services.nodeports=0",
    ]);
    let used_pods = || {
        k.ok(&[
            "get",
            "quota",
            "gen",
            "-n",
            "gen",
            "-o",
            "jsonpath={.status.used.pods}",
        ])
    };
    wait_until(
        "gen's quota is counted",
        Duration::from_secs(30),
        async || used_pods() == "0",
    )
    .await;
    let run_pod = |name: &str| {
        k.run(&[
            "run",
            name,
            "-n",
            "gen",
            &format!("--image={}", c.image),
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            "sleep",
            "3600",
        ])
    };
    assert!(run_pod("one").ok);
    let refused = run_pod("two");
    assert!(
        refused.stderr.contains("Error from server (Forbidden): pods \"two\" is forbidden: exceeded quota: gen, requested: pods=1, used: pods=1, limited: pods=1"),
        "{}",
        refused.stderr
    );
    let refused = k.fails(&[
        "create", "service", "nodeport", "np", "-n", "gen", "--tcp=80",
    ]);
    assert!(
        refused.contains("exceeded quota: gen, requested: services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"),
        "{refused}"
    );
    let table = k.ok(&["get", "quota", "-n", "gen"]);
    assert_eq!(
        header(&table),
        ["NAME", "AGE", "REQUEST", "LIMIT"],
        "{table}"
    );
    assert!(
        table.contains("pods: 1/1, services.nodeports: 0/0"),
        "{table}"
    );
    let described = k.ok(&["describe", "quota", "gen", "-n", "gen"]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "1", "1"]),
        "{described}"
    );
    // A LimitRange gives pods that set nothing its defaults.
    let limits = k.write(
        "limits.yaml",
        "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: gen\n  namespace: gen\nspec:\n  limits:\n  - type: Container\n    default: {memory: 128Mi}\n    defaultRequest: {memory: 64Mi}\n",
    );
    k.ok(&["apply", "-f", &limits]);
    assert_eq!(
        header(&k.ok(&["get", "limits", "-n", "gen"])),
        ["NAME", "CREATED", "AT"]
    );
    k.ok(&[
        "delete",
        "pod",
        "one",
        "-n",
        "gen",
        "--grace-period=0",
        "--force",
    ]);
    wait_until(
        "one's share is given back",
        Duration::from_secs(30),
        async || used_pods() == "0",
    )
    .await;
    let dry = k.ok(&[
        "run",
        "three",
        "-n",
        "gen",
        &format!("--image={}", c.image),
        "--restart=Never",
        "--dry-run=server",
        "-o",
        "jsonpath={.spec.containers[0].resources}",
    ]);
    assert_eq!(
        dry,
        r#"{"limits":{"memory":"128Mi"},"requests":{"memory":"64Mi"}}"#
    );
    k.ok(&["create", "serviceaccount", "gen"]);
    k.ok(&["create", "role", "gen", "--verb=get", "--resource=pods"]);
    let node = &c.node.name;
    // A disruption budget (protobuf, from `create pdb`) that lets no pod
    // of gen go: drain's evictions of it are refused (429) and retried
    // every 5 s until drain's timeout.
    k.ok(&[
        "create",
        "pdb",
        "gen",
        "--selector=app=gen",
        "--min-available=1",
    ]);
    wait_until(
        "gen's budget counts its pod",
        Duration::from_secs(30),
        async || k.ok(&["get", "pdb", "gen", "-o", "jsonpath={.status.expectedPods}"]) == "1",
    )
    .await;
    let table = k.ok(&["get", "pdb", "gen"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["gen", "1", "N/A", "0"], "{table}");
    let held = k.run(&["drain", node, "--pod-selector=app=gen", "--timeout=12s"]);
    assert!(!held.ok, "{}{}", held.stdout, held.stderr);
    assert!(
        held.stderr.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "{}",
        held.stderr
    );
    assert!(
        held.stderr.contains("global timeout reached"),
        "{}",
        held.stderr
    );
    k.ok(&["delete", "pdb", "gen"]);
    // cordon, taint (patches) and drain (protobuf DeleteOptions).
    k.ok(&["cordon", node]);
    k.ok(&["taint", "node", node, "gen=x:NoSchedule"]);
    assert_eq!(
        k.ok(&["get", "node", node, "-o", "jsonpath={.spec.unschedulable}"]),
        "true"
    );
    let drained = k.ok(&[
        "drain",
        node,
        "--ignore-daemonsets",
        "--force",
        "--timeout=120s",
    ]);
    assert!(drained.contains("drained"), "{drained}");
    // Through the eviction subresource, not plain deletes.
    assert!(drained.contains("evicting pod"), "{drained}");
    k.ok(&["taint", "node", node, "gen=x:NoSchedule-"]);
    k.ok(&["uncordon", node]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    k.ok(&["delete", "deployment", "gen"]);

    // A DaemonSet's history (ControllerRevisions): rollout history lists
    // a revision per template, undo puts the previous one back and
    // renumbers it.
    let daemon = |greeting: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agentd\nspec:\n  selector:\n    matchLabels:\n      app: agentd\n  template:\n    metadata:\n      labels:\n        app: agentd\n    spec:\n      containers:\n      - name: agentd\n        image: {}\n        imagePullPolicy: Never\n        command: [\"sh\", \"-c\", \"echo {greeting}; exec sleep 3600\"]\n",
            c.image
        )
    };
    k.ok(&["apply", "-f", &k.write("ds.yaml", &daemon("one"))]);
    k.ok(&["rollout", "status", "daemonset/agentd", "--timeout=120s"]);
    k.ok(&["apply", "-f", &k.write("ds.yaml", &daemon("two"))]);
    k.ok(&["rollout", "status", "daemonset/agentd", "--timeout=120s"]);
    let history = k.ok(&["rollout", "history", "daemonset/agentd"]);
    let revisions = |history: &str| -> Vec<String> {
        history
            .lines()
            .skip_while(|l| !l.starts_with("REVISION"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    assert_eq!(revisions(&history), ["1", "2"], "{history}");
    let listed = k.ok(&["get", "controllerrevisions", "-l", "app=agentd"]);
    assert_eq!(header(&listed), ["NAME", "CONTROLLER", "REVISION", "AGE"]);
    assert!(listed.contains("daemonset.apps/agentd"), "{listed}");
    assert!(
        k.ok(&["rollout", "undo", "daemonset/agentd"])
            .contains("rolled back")
    );
    k.ok(&["rollout", "status", "daemonset/agentd", "--timeout=120s"]);
    let command = k.ok(&[
        "get",
        "daemonset",
        "agentd",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].command[2]}",
    ]);
    assert!(command.contains("echo one"), "{command}");
    let history = k.ok(&["rollout", "history", "daemonset/agentd"]);
    assert_eq!(revisions(&history), ["2", "3"], "{history}");
    k.ok(&["delete", "daemonset", "agentd"]);
    wait_until(
        "the daemon set's revisions are collected",
        Duration::from_secs(60),
        async || {
            k.ok(&[
                "get",
                "controllerrevisions",
                "-l",
                "app=agentd",
                "-o",
                "name",
            ])
            .trim()
            .is_empty()
        },
    )
    .await;

    // delete, foreground: the ReplicaSets go before the Deployment.
    assert!(
        k.ok(&["delete", "deployment", "web", "--cascade=foreground"])
            .contains("deleted")
    );
    wait_until(
        "the replica sets are gone",
        Duration::from_secs(60),
        async || k.ok(&["get", "rs", "-o", "name"]).trim().is_empty(),
    )
    .await;
    k.ok(&["delete", "configmap", "web-content", "watched"]);
}

/// The same kubeconfig's credentials over HTTP as over gRPC: none is
/// 401, a service-account token without rights is 403, the admin's
/// certificate may do anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_is_authenticated_and_authorized_like_a_grpc_client() {
    let c = crate::security::Secure::start(&[]);
    let dir = c.server.secure_dir.clone().unwrap();
    let admin = Kubectl::new(dir.join("admin.kubeconfig"));
    let namespaces = admin.ok(&["get", "namespaces"]);
    assert!(namespaces.contains("kube-system"), "{namespaces}");
    let admin_config = skiff_ctl::config::load_from(&c.server.config("admin")).unwrap();
    // Credentials that do not check out (with none at all, kubectl asks
    // for a user name instead of calling).
    let forged_dir = tempfile::tempdir().unwrap();
    let anonymous = Kubectl::new(write_token_kubeconfig(
        &admin_config,
        "not-a-token",
        forged_dir.path(),
    ));
    let err = anonymous.fails(&["get", "pods"]);
    assert!(
        err.contains("error: You must be logged in to the server ("),
        "{err}"
    );
    // A service account's token, with no binding.
    let channel = c.admin();
    let mut robot = ServiceAccount::default();
    let meta = skiff::Resource::metadata_mut(&mut robot);
    meta.name = "robot".into();
    meta.namespace = "default".into();
    Api::<ServiceAccount>::new(channel.clone())
        .create(robot)
        .await
        .unwrap();
    // `kubectl create token` (a TokenRequest over HTTP, in protobuf).
    let token = admin.ok(&["create", "token", "robot", "--duration=10m"]);
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let robot_dir = tempfile::tempdir().unwrap();
    let robot = Kubectl::new(write_token_kubeconfig(
        &admin_config,
        &token,
        robot_dir.path(),
    ));
    let err = robot.fails(&["get", "pods"]);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // kubectl auth: who am I, and may I.
    let whoami = robot.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("system:serviceaccount:default:robot"),
        "{whoami}"
    );
    assert!(admin.ok(&["auth", "whoami"]).contains("admin"));
    let no = robot.run(&["auth", "can-i", "list", "pods"]);
    assert_eq!((no.ok, no.stdout.trim()), (false, "no"), "{}", no.stderr);
    assert_eq!(
        admin.ok(&["auth", "can-i", "delete", "nodes"]).trim(),
        "yes"
    );
    // Granted, it may (RBAC is the same over both doors).
    admin.ok(&["create", "-f", &admin.write("rbac.yaml", RBAC)]);
    wait_until(
        "the role binding takes effect over HTTP",
        Duration::from_secs(20),
        async || robot.run(&["get", "pods"]).ok,
    )
    .await;
    let err = robot.fails(&["get", "secrets"]);
    assert!(err.contains("(Forbidden)"), "{err}");
    assert_eq!(robot.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    // can-i --list (a SelfSubjectRulesReview): the rules of its
    // bindings and what every caller may do, in kubectl's table.
    let listed = robot.ok(&["auth", "can-i", "--list"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "Resources",
            "Non-Resource",
            "URLs",
            "Resource",
            "Names",
            "Verbs"
        ]
    );
    assert!(
        rows.contains(&vec!["pods", "[]", "[]", "[get", "list", "watch]"]),
        "{listed}"
    );
    assert!(
        rows.contains(&vec!["[/version]", "[]", "[get]"]),
        "{listed}"
    );
    assert!(!listed.contains("secrets"), "{listed}");
    let everything = admin.ok(&["auth", "can-i", "--list"]);
    assert!(
        everything
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*.*", "[]", "[]", "[*]"]),
        "{everything}"
    );
    // The same review over gRPC (`skiff auth can-i --list`).
    let out = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["auth", "can-i", "--list"])
        .args(["--config", c.server.config("admin").to_str().unwrap()])
        .output()
        .unwrap();
    let grpc_listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        grpc_listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*.*", "[]", "[]", "[*]"]),
        "{grpc_listed}"
    );
    // `skiff kubeconfig`: the client config as a kubeconfig, and one for
    // a new user signed by the cluster CA.
    let skiff_kubeconfig = |extra: &[&str]| {
        let out = Command::new(skiff_testkit::skiff_binary().unwrap())
            .arg("kubeconfig")
            .args(["--config", c.server.config("admin").to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("kubeconfig");
        std::fs::write(&path, &out.stdout).unwrap();
        (Kubectl::new(path), home)
    };
    let (mine, _home) = skiff_kubeconfig(&[]);
    assert!(mine.ok(&["auth", "whoami"]).contains("admin"));
    let (alice, _alice_home) = skiff_kubeconfig(&[
        "--user",
        "alice",
        "--group",
        "devs",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let whoami = alice.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("alice") && whoami.contains("devs"),
        "{whoami}"
    );
    assert!(alice.fails(&["get", "pods"]).contains("(Forbidden)"));
    // A node's certificate may do over HTTP what it may over gRPC: read
    // nodes, not list secrets, not change another node.
    {
        use skiff::pb::core::v1::{Node, Secret};
        let mut other = Node::default();
        skiff::Resource::metadata_mut(&mut other).name = "other".into();
        Api::<Node>::new(channel.clone())
            .create(other)
            .await
            .unwrap();
        let (node, _node_home) = skiff_kubeconfig(&[
            "--user",
            "system:node:n1",
            "--group",
            "system:nodes",
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        let as_node = c.as_user("system:node:n1", &["system:nodes"]);
        assert!(node.ok(&["get", "nodes"]).contains("other"));
        let nodes = Api::<Node>::new(as_node.clone())
            .list(ListRequest::default())
            .await
            .unwrap();
        assert!(
            nodes
                .items
                .iter()
                .any(|n| skiff::Resource::name(n) == "other")
        );
        let err = node.fails(&["get", "secrets", "-A"]);
        assert!(err.contains("(Forbidden)"), "{err}");
        let denied = Api::<Secret>::new(as_node.clone())
            .list(ListRequest::default())
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let err = node.fails(&["label", "node", "other", "taken=yes"]);
        assert!(err.contains("(Forbidden)"), "{err}");
        let nodes_api = Api::<Node>::new(as_node);
        let mut theirs = nodes_api.get("", "other").await.unwrap();
        skiff::Resource::metadata_mut(&mut theirs)
            .labels
            .insert("taken".into(), "yes".into());
        let denied = nodes_api.update(theirs).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    }
    // gRPC issues them the same way.
    let grpc_token = token_for(&channel, "robot").await;
    assert_eq!(grpc_token.split('.').count(), 3);
}

const RBAC: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: default
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: robot-reads-pods
  namespace: default
subjects:
- kind: ServiceAccount
  name: robot
  namespace: default
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pod-reader
"#;

async fn token_for(channel: &tonic::transport::Channel, account: &str) -> String {
    use skiff::pb::authentication::v1::TokenRequest;
    use skiff::pb::authentication::v1::service_account_tokens_client::ServiceAccountTokensClient;
    let mut request = TokenRequest::default();
    let meta = request.metadata.get_or_insert_with(Default::default);
    meta.name = account.into();
    meta.namespace = "default".into();
    ServiceAccountTokensClient::new(channel.clone())
        .create(request)
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .token
}

/// A kubeconfig that trusts the cluster CA and sends `token`.
fn write_token_kubeconfig(config: &ClientConfig, token: &str, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let base = skiff_ctl::config::kubeconfig(
        &ClientConfig {
            client_certificate: String::new(),
            client_key: String::new(),
            ..config.clone()
        },
        "robot",
    );
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&base).unwrap();
    doc["users"][0]["user"] = serde_yaml::from_str(&format!("token: {token}")).unwrap();
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

/// The Python client: a watch resumed from a resourceVersion across a
/// dropped connection misses nothing and repeats nothing, and sees what a
/// gRPC watch from the same version sees, with the same versions; a
/// compacted version is 410 and the client lists again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_resumes_watches_and_relists_after_410() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        skiff_apiserver::StoreConfig::Embedded(dir.path().join("state.redb")),
    );
    config.compaction_interval = Duration::from_secs(1);
    let server = skiff_apiserver::ApiServer::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_client::connect_lazy(&url).unwrap();
    let mut ns = Namespace::default();
    skiff::Resource::metadata_mut(&mut ns).name = "py".into();
    // A version more than half a window of changes before the ConfigMap
    // watch cache started (it reads back that much history when the
    // kind's first watch starts it): once the store compacts it, only the
    // store could serve it, and cannot.
    let created: i64 = Api::<Namespace>::new(channel.clone())
        .create(ns)
        .await
        .unwrap()
        .metadata
        .unwrap()
        .resource_version
        .parse()
        .unwrap();
    let old = (created - 1).to_string();
    skiff_testkit::write_secrets(&channel, "py", "later", 2_100).await;
    let maps = Api::<ConfigMap>::new(channel.clone());
    let start = maps
        .list(ListRequest {
            namespace: "py".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .metadata
        .unwrap()
        .resource_version;
    // The gRPC door watches from the same version.
    let grpc = tokio::spawn({
        let maps = maps.clone();
        let start = start.clone();
        async move {
            let mut stream = maps
                .watch(skiff::pb::api::v1::WatchRequest {
                    namespace: "py".into(),
                    resource_version: start,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut seen = Vec::new();
            while seen.len() < 4 {
                let event = stream.next().await.unwrap().unwrap();
                let (kind, obj) = <ConfigMap as skiff::Resource>::event_parts(event);
                let obj = obj.unwrap();
                let kind = match kind {
                    EventType::Added => "ADDED",
                    EventType::Modified => "MODIFIED",
                    _ => "OTHER",
                };
                seen.push(format!(
                    "{kind} {} {}",
                    skiff::Resource::name(&obj),
                    skiff::Resource::resource_version(&obj)
                ));
            }
            seen
        }
    });
    let kubeconfig = dir.path().join("kubeconfig");
    skiff_ctl::config::save_kubeconfig(
        &ClientConfig {
            server: url.clone(),
            ..Default::default()
        },
        "admin",
        &kubeconfig,
        "test",
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/python/watch_resume.py");
    let python = |args: &[&str]| {
        let out = Command::new("python3")
            .arg(&script)
            .arg(&kubeconfig)
            .arg("py")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let resumed = python(&["resume"]);
    assert!(resumed.contains("RESUMED"), "{resumed}");
    let http: Vec<String> = resumed
        .lines()
        .filter_map(|l| l.strip_prefix("EVENT "))
        .map(str::to_string)
        .collect();
    let grpc = tokio::time::timeout(Duration::from_secs(20), grpc)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(http, grpc, "the two doors saw different changes");
    // Once the store has compacted past it, the old version is gone.
    wait_until(
        "the start version is compacted away",
        Duration::from_secs(30),
        async || {
            let mut touch = ConfigMap::default();
            let meta = skiff::Resource::metadata_mut(&mut touch);
            meta.generate_name = "touch-".into();
            meta.namespace = "py".into();
            maps.create(touch).await.unwrap();
            let expired = python(&["expired", &old]);
            expired.contains("EXPIRED 410") && expired.contains("RELISTED")
        },
    )
    .await;
    server.stop().await.unwrap();
}

/// helm v4 (server-side apply by default, release Secrets in protobuf,
/// `--wait` on its status watchers): install, list, upgrade, rollback,
/// uninstall of a small chart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_rolls_back_and_uninstalls_a_chart() {
    let c = crate::cli::cluster("helm").await;
    let k = Kubectl::for_config(&ClientConfig {
        server: format!("http://{}", c.server.addr),
        ..Default::default()
    });
    let chart = k.home.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: hello\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("values.yaml"),
        format!("replicas: 1\nimage: {}\n", c.image),
    )
    .unwrap();
    std::fs::write(chart.join("templates/all.yaml"), CHART).unwrap();
    let helm = |args: &[&str]| {
        let out = Command::new(skiff_testkit::helm_binary().unwrap())
            .args(args)
            .env("KUBECONFIG", &k.kubeconfig)
            .env("HOME", k.home.path())
            .env("HELM_CACHE_HOME", k.home.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", k.home.path().join("helm-config"))
            .env("HELM_DATA_HOME", k.home.path().join("helm-data"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "helm {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let chart = chart.to_str().unwrap();
    let installed = helm(&["install", "h1", chart, "--wait", "--timeout", "120s"]);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    assert!(helm(&["list"]).contains("deployed"));
    // The release is stored as Kubernetes stores it: one Secret a revision.
    let secrets = k.ok(&[
        "get",
        "secrets",
        "-l",
        "owner=helm,name=h1",
        "-o",
        "jsonpath={.items[*].type}",
    ]);
    assert_eq!(secrets, "helm.sh/release.v1");
    assert_eq!(
        k.ok(&["get", "cm", "h1-content", "-o", "jsonpath={.data.greeting}"]),
        "hi"
    );
    let upgraded = helm(&[
        "upgrade",
        "h1",
        chart,
        "--set",
        "replicas=2",
        "--set",
        "greeting=hello",
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(upgraded.contains("REVISION: 2"), "{upgraded}");
    assert_eq!(
        k.ok(&["get", "deploy", "h1", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );
    assert_eq!(
        k.ok(&["get", "cm", "h1-content", "-o", "jsonpath={.data.greeting}"]),
        "hello"
    );
    helm(&["rollback", "h1", "1", "--wait", "--timeout", "120s"]);
    assert_eq!(
        k.ok(&["get", "deploy", "h1", "-o", "jsonpath={.spec.replicas}"]),
        "1"
    );
    let history = helm(&["history", "h1"]);
    assert!(history.contains("Rollback to 1"), "{history}");
    helm(&["uninstall", "h1", "--wait", "--timeout", "120s"]);
    let left = k.ok(&["get", "deploy,cm,secret,svc", "-o", "name"]);
    assert!(!left.contains("h1"), "{left}");
}

const CHART: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-content
data:
  greeting: {{ .Values.greeting | default "hi" | quote }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ .Release.Name }}-secret
stringData:
  token: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {{ .Values.image }}
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
        volumeMounts:
        - {name: content, mountPath: /www}
      volumes:
      - name: content
        configMap: {name: {{ .Release.Name }}-content}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports:
  - port: 80
    targetPort: 8080
"#;

/// The Kubernetes docs' nginx-app.yaml (a LoadBalancer Service and a
/// Deployment) applied again reads `unchanged`, with `skiff apply` and
/// with kubectl: what the server keeps (node ports, cluster IP, defaults)
/// is no change (#14; `skiff apply` used to say `configured`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_an_unchanged_manifest_is_unchanged_with_skiff_and_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(skiff_apiserver::StoreConfig::Embedded(
        dir.path().join("state.redb"),
    ))
    .await
    .unwrap();
    let url = format!("http://{}", server.addr);
    let manifest = dir.path().join("nginx-app.yaml");
    std::fs::write(&manifest, NGINX_APP).unwrap();
    let skiff = |args: &[&str]| {
        let out = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(args)
            .env("SKIFF_CONFIG", dir.path().join("config"))
            .env("SKIFF_SERVER", &url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let file = manifest.to_str().unwrap();
    assert!(skiff(&["apply", "-f", file]).contains("service/my-nginx-svc created"));
    let again = skiff(&["apply", "-f", file]);
    assert_eq!(
        again,
        "service/my-nginx-svc unchanged\ndeployment.apps/my-nginx unchanged\n"
    );
    let k = Kubectl::for_config(&ClientConfig {
        server: url.clone(),
        ..Default::default()
    });
    // kubectl records its own last-applied form first, then is unchanged.
    k.ok(&["apply", "-f", file]);
    let again = k.ok(&["apply", "-f", file]);
    assert_eq!(again.matches("unchanged").count(), 2, "{again}");
    // Objects whose fields are owned (made by kubectl create): the same.
    k.ok(&["delete", "-f", file]);
    k.ok(&["create", "-f", file]);
    skiff(&["apply", "-f", file]);
    let again = skiff(&["apply", "-f", file]);
    assert_eq!(
        again,
        "service/my-nginx-svc unchanged\ndeployment.apps/my-nginx unchanged\n"
    );
    server.stop().await.unwrap();
}

const NGINX_APP: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: my-nginx-svc
  labels:
    app: nginx
spec:
  type: LoadBalancer
  ports:
  - port: 80
  selector:
    app: nginx
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-nginx
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx:1.14.2
        ports:
        - containerPort: 80
"#;

/// One registry, two doors: a change made through either is seen alike by
/// a watch over HTTP and one over gRPC (the same events, the same
/// resourceVersions), and an object written through one door reads back
/// unchanged through the other (kubectl and grpcurl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doors_see_the_same_changes_and_objects() {
    use skiff::pb::api::v1::WatchRequest;
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(skiff_apiserver::StoreConfig::Embedded(
        dir.path().join("state.redb"),
    ))
    .await
    .unwrap();
    let addr = server.addr.to_string();
    let k = Kubectl::for_config(&ClientConfig {
        server: format!("http://{addr}"),
        ..Default::default()
    });
    let cms = Api::<ConfigMap>::new(skiff_testkit::channel(server.addr).await.unwrap());

    // Both watches from the same resourceVersion: the list's, read raw
    // (`get -o jsonpath` prints nothing for a list with no items yet, and
    // a watch from no version starts with the current state).
    let list: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!from.is_empty(), "{list}");
    let mut grpc_watch = cms
        .watch(WatchRequest {
            namespace: "default".into(),
            resource_version: from.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let http_watch = k
        .command(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={from}&timeoutSeconds=8"
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Changes through each door: kubectl creates, gRPC updates, kubectl
    // deletes.
    k.ok(&["create", "configmap", "both", "--from-literal=k=v"]);
    let mut both = cms.get("default", "both").await.unwrap();
    both.data.insert("k".into(), "w".into());
    cms.update(both).await.unwrap();
    k.ok(&["delete", "configmap", "both"]);

    let mut grpc_events = Vec::new();
    while grpc_events.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), grpc_watch.message())
            .await
            .expect("a gRPC watch event within 10s")
            .unwrap()
            .expect("the gRPC watch goes on");
        let kind = match EventType::try_from(event.r#type) {
            Ok(EventType::Added) => "ADDED",
            Ok(EventType::Modified) => "MODIFIED",
            Ok(EventType::Deleted) => "DELETED",
            _ => continue,
        };
        let meta = event.object.and_then(|o| o.metadata).unwrap_or_default();
        grpc_events.push(format!("{kind} {} {}", meta.name, meta.resource_version));
    }
    let out = tokio::task::spawn_blocking(move || http_watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let http_events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["type"] != "BOOKMARK")
        .map(|e| {
            format!(
                "{} {} {}",
                e["type"].as_str().unwrap_or(""),
                e["object"]["metadata"]["name"].as_str().unwrap_or(""),
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
            )
        })
        .collect();
    assert_eq!(http_events, grpc_events);
    assert!(grpc_events[0].starts_with("ADDED both "), "{grpc_events:?}");

    // Written by kubectl, read by grpcurl; written by grpcurl, read by
    // kubectl: the same object.
    let same = |http: &serde_json::Value, grpc: &serde_json::Value| {
        for field in [
            "/kind",
            "/apiVersion",
            "/data",
            "/metadata/name",
            "/metadata/labels",
            "/metadata/uid",
            "/metadata/resourceVersion",
            "/metadata/creationTimestamp",
        ] {
            assert_eq!(http.pointer(field), grpc.pointer(field), "{field}");
        }
    };
    k.ok(&[
        "apply",
        "-f",
        &k.write(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-kubectl\n  labels:\n    door: http\ndata:\n  a: \"1\"\n  b: two\n",
        ),
    ]);
    let via_http: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "from-kubectl", "-o", "json"])).unwrap();
    let grpc_addr = addr.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        crate::grpcurl::grpcurl(
            &grpc_addr,
            &[
                "-d",
                r#"{"namespace":"default","name":"from-kubectl"}"#,
                "skiff.core.v1.ConfigMaps/Get",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let via_grpc: serde_json::Value = serde_json::from_str(&out).unwrap();
    same(&via_http, &via_grpc);
    assert_eq!(via_grpc["data"]["b"], "two");

    let grpc_addr = addr.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        crate::grpcurl::grpcurl(
            &grpc_addr,
            &[
                "-d",
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-grpcurl","namespace":"default","labels":{"door":"grpc"}},"data":{"x":"y"}}"#,
                "skiff.core.v1.ConfigMaps/Create",
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let via_grpc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let via_http: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "cm", "from-grpcurl", "-o", "json"])).unwrap();
    same(&via_http, &via_grpc);
    assert_eq!(via_http["metadata"]["labels"]["door"], "grpc");
    server.stop().await.unwrap();
}

/// A StatefulSet as its users run one (the issue's acceptance): stable
/// names, each pod's own volume surviving its pod and a scale down, DNS
/// names through the headless Service, a partitioned rolling update,
/// history and undo — through the real kubectl, on Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_runs_a_statefulset_with_stable_names_volumes_and_dns() {
    let c = crate::cli::cluster("sts").await;
    let k = Kubectl::for_config(&ClientConfig {
        server: format!("http://{}", c.server.addr),
        ..Default::default()
    });
    let manifest = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 3
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        imagePullPolicy: Never
        command: [sh, -c, 'if [ ! -f /data/first ]; then hostname > /data/first; fi; echo started >> /data/log; exec sleep 3600']
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 16Mi}}}}
"#,
        image = c.image
    );
    let file = k.write("sts.yaml", &manifest);
    k.ok(&["apply", "-f", &file]);
    let status = k.ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    assert!(status.contains("3 new pods have been updated"), "{status}");
    let sets = k.ok(&["get", "sts"]);
    assert_eq!(header(&sets), ["NAME", "READY", "AGE"]);
    assert!(sets.contains("3/3"), "{sets}");
    let claims = k.ok(&["get", "pvc", "-o", "name"]);
    for n in 0..3 {
        assert!(
            claims.contains(&format!("persistentvolumeclaim/data-db-{n}")),
            "{claims}"
        );
    }
    let read = |pod: &str| {
        k.ok(&[
            "exec",
            pod,
            "--",
            "sh",
            "-c",
            "cat /data/first; wc -l < /data/log",
        ])
    };
    assert_eq!(
        read("db-1").split_whitespace().collect::<Vec<_>>(),
        ["db-1", "1"]
    );

    // A deleted pod comes back under its name, to its own data.
    let uid = |pod: &str| k.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
    let before = uid("db-1");
    k.ok(&["delete", "pod", "db-1"]);
    wait_until(
        "db-1 is back and ready",
        Duration::from_secs(60),
        async || {
            let run = k.run(&[
                "get",
                "pod",
                "db-1",
                "-o",
                "jsonpath={.metadata.uid} {.status.containerStatuses[0].ready}",
            ]);
            run.ok && !run.stdout.contains(&before) && run.stdout.ends_with("true")
        },
    )
    .await;
    assert_eq!(
        read("db-1").split_whitespace().collect::<Vec<_>>(),
        ["db-1", "2"]
    );

    // Scaled down and up: the claims stayed, the data with them.
    k.ok(&["scale", "sts", "db", "--replicas=1"]);
    wait_until(
        "db-1 and db-2 are gone",
        Duration::from_secs(60),
        async || k.ok(&["get", "pods", "-l", "app=db", "-o", "name"]).trim() == "pod/db-0",
    )
    .await;
    assert!(k.ok(&["get", "pvc", "data-db-2"]).contains("Bound"));
    k.ok(&["scale", "sts", "db", "--replicas=3"]);
    k.ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    assert_eq!(
        read("db-2").split_whitespace().collect::<Vec<_>>(),
        ["db-2", "2"]
    );

    // Each pod is NAME-N.SERVICE in the cluster DNS.
    let ip = k.ok(&["get", "pod", "db-2", "-o", "jsonpath={.status.podIP}"]);
    let ping = k.ok(&["exec", "db-0", "--", "ping", "-c1", "-W2", "db-2.db"]);
    assert!(ping.contains(&format!("({ip})")), "{ping}");
    let fqdn = k.ok(&[
        "exec",
        "db-0",
        "--",
        "nslookup",
        "db-1.db.default.svc.cluster.local",
    ]);
    let ip1 = k.ok(&["get", "pod", "db-1", "-o", "jsonpath={.status.podIP}"]);
    assert!(fqdn.contains(&ip1), "{fqdn}");

    // A rolling update with partition 2 changes ordinal 2 only.
    let uids: Vec<String> = (0..3).map(|n| uid(&format!("db-{n}"))).collect();
    k.ok(&[
        "patch", "sts", "db", "--type=merge", "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}},"template":{"metadata":{"annotations":{"v":"2"}}}}}"#,
    ]);
    let update = || {
        k.ok(&[
            "get",
            "sts",
            "db",
            "-o",
            "jsonpath={.status.updateRevision}",
        ])
    };
    wait_until(
        "db-2 runs the new revision",
        Duration::from_secs(60),
        async || {
            let revision = k.run(&[
                "get",
                "pod",
                "db-2",
                "-o",
                "jsonpath={.metadata.labels.controller-revision-hash}",
            ]);
            revision.ok
                && revision.stdout == update()
                && k.ok(&["get", "sts", "db", "-o", "jsonpath={.status.readyReplicas}"]) == "3"
        },
    )
    .await;
    assert_eq!(uid("db-0"), uids[0]);
    assert_eq!(uid("db-1"), uids[1]);
    assert_ne!(uid("db-2"), uids[2]);
    let history = k.ok(&["rollout", "history", "sts/db"]);
    assert!(
        history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    // The partition lifted, all of them; then undone.
    k.ok(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    k.ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    assert_ne!(uid("db-0"), uids[0]);
    k.ok(&["rollout", "undo", "sts/db"]);
    k.ok(&["rollout", "status", "sts/db", "--timeout=120s"]);
    let history = k.ok(&["rollout", "history", "sts/db"]);
    assert!(
        history.contains("\n2 ") && history.contains("\n3 "),
        "{history}"
    );

    // Deleted: its pods go, its claims stay (whenDeleted: Retain).
    k.ok(&["delete", "sts", "db"]);
    wait_until("the pods are gone", Duration::from_secs(60), async || {
        k.ok(&["get", "pods", "-l", "app=db", "-o", "name"])
            .trim()
            .is_empty()
    })
    .await;
    assert_eq!(k.ok(&["get", "pvc", "-o", "name"]).lines().count(), 3);
}
