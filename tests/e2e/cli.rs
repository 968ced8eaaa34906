//! The `skiff` client commands against a real cluster: an in-process API
//! server, `skiff scheduler`, `skiff controller-manager` and a `skiff agent`
//! on Docker. Every command runs as the real binary, as a user would.

use std::process::Command;
use std::time::Duration;

use skiff_apiserver::StoreConfig;
use skiff_testkit::{AgentNode, wait_until};

pub(crate) struct Cluster {
    pub(crate) server: skiff_apiserver::ApiServer,
    pub(crate) node: AgentNode,
    _processes: Vec<skiff_testkit::ChildGuard>,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) image: &'static str,
}

/// What a command printed and how it ended.
struct Run {
    stdout: String,
    stderr: String,
    ok: bool,
    code: Option<i32>,
}

pub(crate) async fn cluster(prefix: &str) -> Cluster {
    cluster_with(prefix, None).await
}

/// Address ranges of a cluster whose agent runs the service proxy: the
/// service CIDR, node ports, and load balancer pool (each test its own).
struct Proxied {
    service_cidr: &'static str,
    node_ports: std::ops::RangeInclusive<u16>,
    lb_pool: &'static str,
}

async fn cluster_with(prefix: &str, proxied: Option<Proxied>) -> Cluster {
    let image = skiff_testkit::test_image().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(dir.path().join("state.redb")),
    );
    config.actors = 2;
    let mut agent_args = Vec::new();
    let mut manager_args = Vec::new();
    if let Some(p) = &proxied {
        config.service_cidr = p.service_cidr.parse().unwrap();
        config.node_ports = p.node_ports.clone();
        agent_args.push("--proxy-mode=iptables".to_string());
        agent_args.push(format!("--service-cidr={}", p.service_cidr));
        agent_args.push(format!("--lb-pool={}", p.lb_pool));
        manager_args.push(format!("--lb-pool={}", p.lb_pool));
    }
    let server = skiff_apiserver::ApiServer::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let node = AgentNode::start_with(&url, prefix, "docker", &agent_args).unwrap();
    let manager_args: Vec<&str> = manager_args.iter().map(String::as_str).collect();
    let processes = vec![
        skiff_testkit::SchedulerProcess::start(&url, "s1", 2)
            .unwrap()
            .process,
        skiff_testkit::controller_manager_with(&url, &[], &manager_args).unwrap(),
    ];
    Cluster {
        server,
        node,
        _processes: processes,
        dir,
        image,
    }
}

impl Cluster {
    /// Runs `skiff ARGS` against this cluster (its own client config, so
    /// the user's ~/.skiff is never touched).
    /// `skiff port-forward POD :REMOTE`, one HTTP GET through it, the
    /// response; then the command is stopped.
    fn port_forward_get(&self, pod: &str, remote: &str) -> String {
        use std::io::{BufRead as _, Read as _, Write as _};
        let mut child = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(["port-forward", pod, &format!(":{remote}")])
            .env("SKIFF_CONFIG", self.dir.path().join("config"))
            .env("SKIFF_SERVER", format!("http://{}", self.server.addr))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // (Kept open while the command runs: it prints per connection.)
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let local = line
            .strip_prefix("Forwarding from 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        let mut response = String::new();
        if let Some(local) = local {
            let mut socket = std::net::TcpStream::connect(format!("127.0.0.1:{local}")).unwrap();
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(30)))
                .unwrap();
            socket
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .unwrap();
            let _ = socket.read_to_string(&mut response);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(!line.is_empty(), "skiff port-forward printed nothing");
        response
    }

    fn skiff(&self, args: &[&str]) -> Run {
        let out = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(args)
            .env("SKIFF_CONFIG", self.dir.path().join("config"))
            .env("SKIFF_SERVER", format!("http://{}", self.server.addr))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ok: out.status.success(),
            code: out.status.code(),
        }
    }

    /// Runs `skiff ARGS` with `input` on its stdin.
    fn skiff_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write as _;
        let mut child = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(args)
            .env("SKIFF_CONFIG", self.dir.path().join("config"))
            .env("SKIFF_SERVER", format!("http://{}", self.server.addr))
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ok: out.status.success(),
            code: out.status.code(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let run = self.skiff(args);
        assert!(
            run.ok,
            "skiff {args:?} failed: {}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

/// An app as the Kubernetes documentation writes one.
pub(crate) fn app(image: &str, greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: web-content
data:
  index.html: |
    hello from skiff
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
type: Opaque
stringData:
  token: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        command: ["sh", "-c", "echo $GREETING; exec httpd -f -p 8080 -h /www"]
        env:
        - name: GREETING
          value: "{greeting}"
        ports:
        - name: http
          containerPort: 8080
        resources:
          requests:
            cpu: 100m
            memory: 16Mi
          limits:
            cpu: 500m
            memory: 64Mi
        readinessProbe:
          httpGet:
            path: /
            port: http
          periodSeconds: 1
        volumeMounts:
        - name: content
          mountPath: /www
      volumes:
      - name: content
        configMap:
          name: web-content
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_rollout_scale_label_logs_and_delete_read_like_kubectl() {
    let c = cluster("cli").await;
    let dir = c.dir.path().join("app");
    let manifest = c.write("app/app.yaml", &app(c.image, "hello-one"));
    let applied = c.ok(&["apply", "-f", dir.to_str().unwrap()]);
    assert_eq!(
        applied,
        "configmap/web-content created\nsecret/web-secret created\ndeployment.apps/web created\n"
    );
    let again = c.ok(&["apply", "-f", &manifest]);
    assert_eq!(
        again,
        "configmap/web-content unchanged\nsecret/web-secret unchanged\ndeployment.apps/web unchanged\n"
    );
    let dry = c.ok(&["apply", "--dry-run=server", "-f", &manifest]);
    assert!(
        dry.contains("deployment.apps/web unchanged (server dry run)"),
        "{dry}"
    );
    let changed = c.write("app/changed.yaml.txt", &app(c.image, "hello-dry"));
    let dry = c.ok(&["apply", "--dry-run=server", "-f", &changed]);
    assert!(
        dry.contains("deployment.apps/web configured (server dry run)"),
        "{dry}"
    );
    let status = c.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );

    let pods = c.ok(&["get", "pods"]);
    let mut lines = pods.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{pods}");
    assert!(
        rows.iter()
            .all(|r| r[1] == "1/1" && r[2] == "Running" && r[3] == "0"),
        "{pods}"
    );
    let wide = c.ok(&["get", "po", "-o", "wide", "-l", "app=web"]);
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .ends_with("IP              NODE")
            || wide.contains("NODE"),
        "{wide}"
    );
    let names = c.ok(&["get", "pods", "-o", "name"]);
    assert!(names.lines().all(|l| l.starts_with("pod/web-")), "{names}");
    let json: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Deployment");
    assert_eq!(json["status"]["readyReplicas"], 2);
    let deployments = c.ok(&["get", "deployments"]);
    assert!(
        deployments.contains("web    2/2     2            2"),
        "{deployments}"
    );

    let live = c.ok(&["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        !live.contains("hello-dry"),
        "a server dry run changed nothing"
    );

    // Logs of one of the pods.
    let pod = names.lines().next().unwrap().to_string();
    let logs = c.ok(&["logs", &pod]);
    assert!(logs.contains("hello-one"), "{logs:?}");

    // exec: output and exit code come back.
    let exec = c.skiff(&[
        "exec",
        &pod,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(
        (exec.stdout.as_str(), exec.stderr.as_str()),
        ("out\n", "err\n")
    );
    assert!(!exec.ok, "exit code 3 comes back");
    assert_eq!(
        c.ok(&["exec", &pod, "--", "cat", "/www/index.html"]),
        "hello from skiff\n"
    );
    // exec -i: stdin streams to the command until EOF, output streams
    // back, and the exit code comes last.
    let piped = c.skiff_with_stdin(
        &[
            "exec",
            "-i",
            &pod,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done >&2; exit 4",
        ],
        "piped through\nthe pod\n",
    );
    assert_eq!(piped.stdout, "PIPED THROUGH\nTHE POD\n");
    assert_eq!(piped.stderr, "done\n");
    assert_eq!(piped.code, Some(4));
    // -it with stdin that is not a terminal: a warning, then as -i (as
    // kubectl does).
    let shell = c.skiff_with_stdin(
        &["exec", "-it", &pod, "--", "sh"],
        "echo $((6*7)); exit 5\n",
    );
    assert_eq!(shell.stdout, "42\n");
    assert!(
        shell.stderr.contains("Unable to use a TTY"),
        "{}",
        shell.stderr
    );
    assert_eq!(shell.code, Some(5));

    // port-forward over the gRPC door: a local port leads to the pod's.
    let forwarded = c.port_forward_get(&pod, "8080");
    assert!(forwarded.contains("hello from skiff"), "{forwarded}");

    // attach -i: a pod keeping its stdin open reads it from the client.
    let reader = c.write(
        "reader/reader.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: reader\nspec:\n  restartPolicy: Never\n  containers:\n  - name: reader\n    image: {}\n    imagePullPolicy: Never\n    stdin: true\n    stdinOnce: true\n    command: [\"sh\", \"-c\", \"read line; echo got $line\"]\n",
            c.image
        ),
    );
    c.ok(&["apply", "-f", &reader]);
    wait_until("the reader pod runs", Duration::from_secs(60), async || {
        let pod: serde_json::Value =
            serde_json::from_str(&c.ok(&["get", "pod", "reader", "-o", "json"])).unwrap();
        pod["status"]["phase"] == "Running"
    })
    .await;
    let attached = c.skiff_with_stdin(&["attach", "-i", "reader"], "abc\n");
    assert!(attached.ok, "{}", attached.stderr);
    assert_eq!(attached.stdout, "got abc\n");
    c.ok(&["delete", "pod", "reader"]);

    // A changed template rolls out; history and undo.
    std::fs::write(&manifest, app(c.image, "hello-two")).unwrap();
    let configured = c.ok(&["apply", "-f", &manifest]);
    assert!(
        configured.contains("deployment.apps/web configured"),
        "{configured}"
    );
    c.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("REVISION") && history.contains("\n1 ") && history.contains("\n2 "),
        "{history}"
    );
    c.ok(&["rollout", "undo", "deployment/web"]);
    c.ok(&["rollout", "status", "deployment/web", "--timeout", "90"]);
    let back: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "deployment", "web", "-o", "json"])).unwrap();
    let env = &back["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"];
    assert_eq!(env, "hello-one", "undo restored the first template");

    // Scale, watching the pods go (get -w prints each change as a row).
    let mut watcher = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["get", "pods", "-w"])
        .env("SKIFF_CONFIG", c.dir.path().join("config"))
        .env("SKIFF_SERVER", format!("http://{}", c.server.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    assert_eq!(
        c.ok(&["scale", "deployment/web", "--replicas", "1"]),
        "deployment.apps/web scaled\n"
    );
    let mut watched = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !watched.iter().any(|l: &String| l.contains("Terminating")) {
        assert!(
            std::time::Instant::now() < deadline,
            "get -w showed no Terminating pod: {watched:?}"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            watched.push(line);
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        watched[0].starts_with("NAME"),
        "the list comes first: {watched:?}"
    );
    wait_until("one pod left", Duration::from_secs(60), async || {
        c.ok(&["get", "deploy", "web"]).contains("1/1")
    })
    .await;
    assert_eq!(
        c.ok(&["label", "deployment", "web", "tier=front"]),
        "deployment.apps/web labeled\n"
    );
    let clash = c.skiff(&["label", "deployment", "web", "tier=back"]);
    assert!(
        !clash.ok && clash.stderr.contains("--overwrite"),
        "{}",
        clash.stderr
    );
    c.ok(&["label", "deployment", "web", "tier=back", "--overwrite"]);
    assert!(
        c.ok(&["get", "deploy", "-l", "tier=back", "-o", "name"])
            .contains("deployment.apps/web")
    );
    c.ok(&["annotate", "deployment/web", "team=blue"]);
    let described = c.ok(&["describe", "deployment", "web"]);
    assert!(
        described.contains("Annotations:") && described.contains("team=blue"),
        "{described}"
    );
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    assert!(
        described.contains("Conditions:") && described.contains("Available"),
        "{described}"
    );

    // Delete by manifest; nothing left.
    let deleted = c.ok(&["delete", "-f", &manifest]);
    assert!(deleted.contains("deployment \"web\" deleted"), "{deleted}");
    let empty = c.skiff(&["get", "configmaps", "web-content"]);
    assert!(
        !empty.ok && empty.stderr.contains("NotFound"),
        "{}",
        empty.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_name_the_file_document_and_field_and_apply_nothing_of_them() {
    let c = cluster("badyaml").await;
    let file = c.write(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\ndata: {a: b}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n---\n\
         apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: many}\n",
    );
    let broken = c.write("broken.yaml", "apiVersion: v1\nkind: [ConfigMap\n");
    let run = c.skiff(&["apply", "-f", &file, "-f", &broken]);
    assert!(!run.ok, "a bad manifest fails the command");
    assert_eq!(
        run.stdout, "configmap/good created\n",
        "only the good document is applied"
    );
    let err = &run.stderr;
    assert!(
        err.contains(&format!("{file} (document 2)")) && err.contains("datta"),
        "{err}"
    );
    assert!(
        err.contains("(document 3)") && err.contains("Widget"),
        "{err}"
    );
    assert!(
        err.contains("(document 4)") && err.contains("metadata.name: Required value"),
        "{err}"
    );
    assert!(
        err.contains("(document 5)") && err.contains("spec.replicas"),
        "{err}"
    );
    assert!(
        err.contains(&broken) && err.contains("invalid YAML"),
        "{err}"
    );
    let typo = c.skiff(&["get", "cm", "typo"]);
    assert!(!typo.ok, "nothing of a bad document is applied");

    // Server-side dry run: the server checks, nothing is written.
    let dry = c.write(
        "dry.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\ndata: {a: b}\n",
    );
    assert_eq!(
        c.ok(&["apply", "--dry-run=server", "-f", &dry]),
        "configmap/dry created (server dry run)\n"
    );
    assert!(
        !c.skiff(&["get", "cm", "dry"]).ok,
        "a dry run writes nothing"
    );
    let invalid = c.write(
        "invalid.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}\n",
    );
    let refused = c.skiff(&["apply", "--dry-run=server", "-f", &invalid]);
    assert!(
        !refused.ok && refused.stderr.contains("Invalid") && refused.stderr.contains("Bad_Name"),
        "{}",
        refused.stderr
    );
    let client_only = c.skiff(&["apply", "--dry-run=client", "-f", &invalid]);
    assert!(
        client_only.ok,
        "a client dry run checks only the schema: {}",
        client_only.stderr
    );

    // Errors as kubectl words them, with a non-zero exit.
    let unknown = c.skiff(&["get", "widgets"]);
    assert!(
        !unknown.ok
            && unknown
                .stderr
                .contains("doesn't have a resource type \"widgets\""),
        "{}",
        unknown.stderr
    );
    let missing = c.skiff(&["get", "pod", "nope"]);
    assert!(!missing.ok);
    assert_eq!(
        missing.stderr.trim(),
        "Error from server (NotFound): pods \"nope\" not found"
    );
    let exists = c.skiff(&["create", "-f", &file]);
    assert!(
        !exists.ok && exists.stderr.contains("AlreadyExists"),
        "{}",
        exists.stderr
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line_to_stderr() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let port = skiff_testkit::free_port().unwrap();
    let mut child = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["--log-format", "json", "server", "--insecure", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = skiff_testkit::ChildGuard::new(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Every line is a JSON object (the first is --insecure's warning);
    // an INFO one follows.
    let record = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a log line");
        let record: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(record["level"].is_string(), "{record}");
        if record["level"] == "INFO" {
            break record;
        }
    };
    assert!(record["timestamp"].is_string(), "{record}");
    assert!(record["fields"]["message"].is_string(), "{record}");
}

#[test]
fn an_unreachable_server_is_named_with_what_to_check() {
    let port = skiff_testkit::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["get", "pods", "--server", &format!("127.0.0.1:{port}")])
        .env("SKIFF_CONFIG", dir.path().join("config"))
        .env_remove("SKIFF_SERVER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("skiff up"),
        "{err}"
    );
}

/// Writes `skiff get KIND NAME -o yaml` to a file and runs
/// kubernetes-validate (strict) on it.
fn validates(c: &Cluster, kind: &str, name: &str, namespace: &str) -> Result<(), String> {
    let yaml = c.ok(&["get", kind, name, "-n", namespace, "-o", "yaml"]);
    let file = c.dir.path().join(format!("{kind}-{name}.yaml"));
    std::fs::write(&file, &yaml).unwrap();
    let validator = skiff_testkit::find_program("kubernetes-validate", &[])
        .expect("kubernetes-validate (scripts/deps installs it)");
    let out = Command::new(validator)
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{kind}/{name}: {}{}\n{yaml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_o_yaml_of_every_kind_is_a_valid_kubernetes_manifest() {
    let c = cluster("validate").await;
    let every_kind = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg, namespace: shop}}
data: {{a: b}}
---
apiVersion: v1
kind: Secret
metadata: {{name: sec, namespace: shop}}
stringData: {{token: t}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: robot, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: solo, namespace: shop, labels: {{app: solo}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: main, image: {image}, command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: ReplicationController
metadata: {{name: rc, namespace: shop}}
spec:
  replicas: 1
  selector: {{app: rc}}
  template:
    metadata: {{labels: {{app: rc}}}}
    spec: {{terminationGracePeriodSeconds: 1, containers: [{{name: main, image: {image}, command: [sleep, "3600"]}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: dep, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: dep}}}}
  template:
    metadata: {{labels: {{app: dep}}}}
    spec: {{terminationGracePeriodSeconds: 1, containers: [{{name: main, image: {image}, command: [sleep, "3600"]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: shop}}
spec:
  selector: {{app: dep}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {{name: lock, namespace: shop}}
spec: {{holderIdentity: me, leaseDurationSeconds: 15}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: logs, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: logs}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: logs}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: [{{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}}]
      containers: [{{name: main, image: {image}, command: [sleep, "3600"]}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once, namespace: shop}}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers: [{{name: main, image: {image}, command: ["true"]}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly, namespace: shop}}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{{name: main, image: {image}, command: ["true"]}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: dep, namespace: shop}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: dep}}
  minReplicas: 1
  maxReplicas: 2
  metrics:
  - type: Resource
    resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader, namespace: shop}}
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "watch", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: read-pods, namespace: shop}}
subjects:
- kind: User
  name: jane
  apiGroup: rbac.authorization.k8s.io
- kind: ServiceAccount
  name: robot
  namespace: shop
roleRef:
  kind: Role
  name: pod-reader
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: secret-reader}}
rules:
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: ["sec"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: read-secrets-global}}
subjects:
- kind: Group
  name: manager
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: secret-reader
  apiGroup: rbac.authorization.k8s.io
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: cache, namespace: shop}}
spec:
  serviceName: cache
  replicas: 1
  selector: {{matchLabels: {{app: cache}}}}
  template:
    metadata: {{labels: {{app: cache}}}}
    spec: {{terminationGracePeriodSeconds: 1, containers: [{{name: main, image: {image}, command: [sleep, "3600"], volumeMounts: [{{name: data, mountPath: /data}}]}}]}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Mi}}}}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: manual-{suffix}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  hostPath: {{path: /tmp/skiff-validate-{suffix}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: store, namespace: shop}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  resources: {{requests: {{storage: 500Mi}}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: dep, namespace: shop}}
spec:
  maxUnavailable: 1
  selector: {{matchLabels: {{app: dep}}}}
---
apiVersion: v1
kind: ResourceQuota
metadata: {{name: caps, namespace: shop}}
spec:
  hard: {{pods: "50", count/deployments.apps: "5", requests.storage: 10Gi}}
---
apiVersion: v1
kind: LimitRange
metadata: {{name: bounds, namespace: shop}}
spec:
  limits:
  - type: PersistentVolumeClaim
    max: {{storage: 5Gi}}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: external-lb-{suffix}
spec:
  controller: example.com/ingress-controller
  parameters:
    apiGroup: k8s.example.com
    kind: IngressParameters
    name: external-lb
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: minimal-ingress
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  ingressClassName: nginx-example
  rules:
  - http:
      paths:
      - path: /testpath
        pathType: Prefix
        backend:
          service:
            name: test
            port:
              number: 80
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: shop
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
"#,
        image = c.image,
        suffix = std::process::id()
    );
    let file = c.write("every.yaml", &every_kind);
    c.ok(&["apply", "-f", &file]);
    c.ok(&[
        "rollout",
        "status",
        "deployment/dep",
        "-n",
        "shop",
        "--timeout",
        "90",
    ]);
    let pods = c.ok(&["get", "pods", "-n", "shop", "-o", "name"]);
    wait_until("the solo pod runs", Duration::from_secs(60), async || {
        c.ok(&["get", "pod", "solo", "-n", "shop"])
            .contains("Running")
    })
    .await;
    let first = |kind: &str| -> String {
        c.ok(&["get", kind, "-n", "shop", "-o", "name"])
            .lines()
            .next()
            .and_then(|l| l.split_once('/'))
            .map(|(_, n)| n.to_string())
            .unwrap_or_default()
    };
    let node = c
        .ok(&["get", "nodes", "-o", "name"])
        .lines()
        .next()
        .unwrap()
        .split_once('/')
        .unwrap()
        .1
        .to_string();
    let mut checks: Vec<(String, String, String)> = vec![
        ("namespace".into(), "shop".into(), "".into()),
        ("node".into(), node, "".into()),
        ("configmap".into(), "cfg".into(), "shop".into()),
        ("secret".into(), "sec".into(), "shop".into()),
        ("serviceaccount".into(), "robot".into(), "shop".into()),
        ("pod".into(), "solo".into(), "shop".into()),
        ("replicationcontroller".into(), "rc".into(), "shop".into()),
        ("deployment".into(), "dep".into(), "shop".into()),
        ("replicaset".into(), first("replicasets"), "shop".into()),
        ("service".into(), "svc".into(), "shop".into()),
        ("lease".into(), "lock".into(), "shop".into()),
        ("event".into(), first("events"), "shop".into()),
        ("daemonset".into(), "logs".into(), "shop".into()),
        ("job".into(), "once".into(), "shop".into()),
        ("cronjob".into(), "nightly".into(), "shop".into()),
        ("hpa".into(), "dep".into(), "shop".into()),
        ("role".into(), "pod-reader".into(), "shop".into()),
        ("rolebinding".into(), "read-pods".into(), "shop".into()),
        ("clusterrole".into(), "secret-reader".into(), "".into()),
        (
            "clusterrolebinding".into(),
            "read-secrets-global".into(),
            "".into(),
        ),
        (
            "ingressclass".into(),
            format!("external-lb-{}", std::process::id()),
            "".into(),
        ),
        ("ing".into(), "minimal-ingress".into(), "shop".into()),
        ("netpol".into(), "test-network-policy".into(), "shop".into()),
    ];
    // Endpoints come from the controller once the service exists.
    wait_until(
        "the service's endpoints exist",
        Duration::from_secs(30),
        async || c.skiff(&["get", "ep", "svc", "-n", "shop"]).ok,
    )
    .await;
    checks.push(("endpoints".into(), "svc".into(), "shop".into()));
    // The claim binds to the volume made for it.
    wait_until("the claim is bound", Duration::from_secs(30), async || {
        c.ok(&["get", "pvc", "store", "-n", "shop"])
            .contains("Bound")
    })
    .await;
    let volume = format!("manual-{}", std::process::id());
    checks.extend([
        ("pvc".into(), "store".into(), "shop".into()),
        ("pv".into(), volume, "".into()),
        ("storageclass".into(), "local-path".into(), "".into()),
        ("pdb".into(), "dep".into(), "shop".into()),
        ("resourcequota".into(), "caps".into(), "shop".into()),
        ("limitrange".into(), "bounds".into(), "shop".into()),
        (
            "priorityclass".into(),
            "system-node-critical".into(),
            "".into(),
        ),
        ("statefulset".into(), "cache".into(), "shop".into()),
        (
            "controllerrevision".into(),
            first("controllerrevisions"),
            "shop".into(),
        ),
    ]);
    assert!(pods.contains("pod/solo"));
    // A Job of the CronJob's template, now (kubectl's create job --from).
    let made = c.ok(&[
        "create",
        "job",
        "by-hand",
        "--from=cronjob/nightly",
        "-n",
        "shop",
    ]);
    assert_eq!(made.trim(), "job.batch/by-hand created");
    let job = c.ok(&["get", "job", "by-hand", "-n", "shop", "-o", "json"]);
    let job: serde_json::Value = serde_json::from_str(&job).unwrap();
    assert_eq!(
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "nightly");
    let refused = c.skiff(&["create", "job", "x", "--from=deployment/dep", "-n", "shop"]);
    assert!(!refused.ok && refused.stderr.contains("from must be an existing cronjob"));
    checks.push(("job".into(), "by-hand".into(), "shop".into()));
    let failures: Vec<String> = checks
        .iter()
        .filter_map(|(kind, name, ns)| {
            validates(&c, kind, name, if ns.is_empty() { "default" } else { ns }).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// `GET /` at `address` once it answers (the proxy's rules follow the
/// Endpoints within moments).
async fn wait_for_page(address: String) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| {
                let addr: std::net::SocketAddr = address.parse().unwrap();
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET / HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                std::io::Result::Ok(out)
            })();
            match attempt {
                Ok(page) => return page,
                Err(e) if std::time::Instant::now() > deadline => return format!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_applies_and_serves_its_page() {
    let c = cluster_with(
        "example",
        Some(Proxied {
            service_cidr: "10.204.0.0/24",
            node_ports: 31241..=31250,
            lb_pool: "127.0.204.1-127.0.204.9",
        }),
    )
    .await;
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/web");
    let applied = c.ok(&["apply", "-f", examples]);
    assert!(
        applied.contains("deployment.apps/web created") && applied.contains("service/web created"),
        "{applied}"
    );
    c.ok(&["rollout", "status", "deployment/web", "--timeout", "120"]);
    wait_until(
        "the service's endpoints list the 3 pods",
        Duration::from_secs(30),
        async || {
            let ep = c.ok(&["get", "endpoints", "web", "-o", "json"]);
            let ep: serde_json::Value = serde_json::from_str(&ep).unwrap();
            ep["subsets"][0]["addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
        },
    )
    .await;
    // As the example's README says: a pod's address, the Service's
    // cluster IP, its node port on localhost and its load balancer address.
    let pods: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "pods", "-l", "app=web", "-o", "json"])).unwrap();
    let pod_ip = pods["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    let mut addresses = vec![format!("{pod_ip}:8080")];
    wait_until(
        "a load balancer address",
        Duration::from_secs(30),
        async || {
            let svc: serde_json::Value =
                serde_json::from_str(&c.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
            let Some(lb) = svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str() else {
                return false;
            };
            addresses.truncate(1);
            addresses.push(format!("{}:80", svc["spec"]["clusterIP"].as_str().unwrap()));
            addresses.push(format!("127.0.0.1:{}", svc["spec"]["ports"][0]["nodePort"]));
            addresses.push(format!("{lb}:80"));
            true
        },
    )
    .await;
    let table = c.ok(&["get", "svc", "web"]);
    assert!(
        table.contains("LoadBalancer") && table.contains("127.0.204.1"),
        "{table}"
    );
    for address in addresses {
        let fetched = address.clone();
        let page = wait_for_page(fetched).await;
        assert!(page.contains("Hello from Skiff"), "{address}: {page}");
    }
    c.ok(&["delete", "-f", examples]);
}

/// The CPU cell of a `top` row in millicores (`998m`).
fn millicores(cell: &str) -> i64 {
    cell.strip_suffix('m')
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("a CPU cell in millicores: {cell:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_cpu_a_busy_pod_burns_and_the_nodes_usage() {
    let c = cluster("top").await;
    let manifest = c.write(
        "top.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: burn
  labels:
    app: burn
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: spin
    image: {image}
    command: ["sh", "-c", "while :; do :; done"]
  - name: idle
    image: {image}
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: quiet
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: idle
    image: {image}
    command: ["sleep", "3600"]
"#,
            image = c.image
        ),
    );
    c.ok(&["apply", "-f", &manifest]);
    // Usage needs two samples (1 s apart in tests) of a running container.
    let mut table = String::new();
    wait_until(
        "top pods shows both pods",
        Duration::from_secs(60),
        async || {
            let run = c.skiff(&["top", "pods"]);
            table = run.stdout;
            run.ok && table.contains("burn") && table.contains("quiet")
        },
    )
    .await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CPU(cores)", "MEMORY(bytes)"], "{table}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let burn = rows.iter().find(|r| r[0] == "burn").unwrap();
    // A shell spinning on one core of two: far above an idle pod.
    assert!(millicores(burn[1]) >= 200, "{table}");
    assert!(burn[2].ends_with("Mi"), "{table}");

    let sorted = c.ok(&["top", "pods", "--sort-by", "cpu"]);
    assert!(
        sorted.lines().nth(1).unwrap().starts_with("burn "),
        "{sorted}"
    );
    // Each container shows from its own second sample.
    let mut per_container = String::new();
    wait_until(
        "both containers of burn",
        Duration::from_secs(30),
        async || {
            per_container = c.ok(&["top", "pods", "burn", "--containers"]);
            per_container.lines().count() == 3
        },
    )
    .await;
    let rows: Vec<Vec<&str>> = per_container
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{per_container}");
    let spin = rows.iter().find(|r| r[1] == "spin").unwrap();
    let idle = rows.iter().find(|r| r[1] == "idle").unwrap();
    assert!(millicores(spin[2]) > millicores(idle[2]), "{per_container}");
    let selected = c.ok(&["top", "pods", "-l", "app=burn", "-A"]);
    assert!(selected.starts_with("NAMESPACE "), "{selected}");
    assert!(
        selected.contains("burn") && !selected.contains("quiet"),
        "{selected}"
    );

    let nodes = c.ok(&["top", "nodes"]);
    let mut lines = nodes.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"],
        "{nodes}"
    );
    let node: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(node[0], c.node.name, "{nodes}");
    // The host runs the spinning pod, at least.
    assert!(millicores(node[1]) >= 200, "{nodes}");
    assert!(node[2].ends_with('%') && node[4].ends_with('%'), "{nodes}");

    let missing = c.skiff(&["top", "pods", "nothere"]);
    assert!(!missing.ok, "{}", missing.stdout);
    assert!(
        missing.stderr.contains("NotFound") && missing.stderr.contains("nothere"),
        "{}",
        missing.stderr
    );
    let bad = c.skiff(&["top", "pods", "--sort-by", "disk"]);
    assert!(
        !bad.ok && bad.stderr.contains("cpu or memory"),
        "{}",
        bad.stderr
    );
    c.ok(&["delete", "pod", "burn", "quiet"]);
}
