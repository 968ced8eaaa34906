//! Security end to end, against real `skiff server` processes with TLS
//! (the default): client certificates (grpcurl and the skiff client),
//! agents joining with bootstrap tokens and a CA pin, certificate
//! rotation, the node restriction, RBAC for service-account tokens, and
//! the agent's own server taking calls from the API server only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff::pb::api::v1::ListRequest;
use skiff::pb::authentication::v1::service_account_tokens_client::ServiceAccountTokensClient;
use skiff::pb::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use skiff::pb::core::v1::{Node, Pod, PodSpec, Secret, ServiceAccount};
use skiff::pb::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use skiff_client::Api;
use skiff_testkit::{AgentNode, ServerProcess, wait_until};
use tonic::Code;

/// A TLS `skiff server` and what tests need to act as anyone.
pub(crate) struct Secure {
    pub(crate) server: ServerProcess,
    dir: tempfile::TempDir,
}

impl Secure {
    pub(crate) fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_secure(&dir.path().join("server"), args).unwrap();
        Self { server, dir }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("server").join("pki")
    }

    /// The cluster CA, read from the server's data dir (to issue test
    /// identities).
    fn ca(&self) -> skiff_pki::Ca {
        skiff_pki::Ca::load_or_create(&self.pki()).unwrap()
    }

    pub(crate) fn admin(&self) -> tonic::transport::Channel {
        self.server.channel().unwrap()
    }

    /// A channel presenting a certificate for `user` in `groups`.
    pub(crate) fn as_user(&self, user: &str, groups: &[&str]) -> tonic::transport::Channel {
        let ca = self.ca();
        let identity = ca.issue_client(user, groups).unwrap();
        let tls = skiff_client::ClientTls::new(
            &ca.cert_pem,
            Some(&identity),
            skiff_pki::tls::ServerCheck::Name,
        )
        .unwrap();
        skiff_client::connect_lazy_with(&self.server.url(), Some(&tls)).unwrap()
    }

    /// A client of kind `K` sending `token` as its bearer token (no
    /// certificate).
    fn with_token<K: skiff::Resource>(&self, token: &str) -> Api<K> {
        Api::<K>::new(self.without_certificate()).with_bearer_token(token)
    }

    /// A channel that trusts the cluster's CA and presents no certificate.
    fn without_certificate(&self) -> tonic::transport::Channel {
        let ca = self.ca();
        let tls =
            skiff_client::ClientTls::new(&ca.cert_pem, None, skiff_pki::tls::ServerCheck::Name)
                .unwrap();
        skiff_client::connect_lazy_with(&self.server.url(), Some(&tls)).unwrap()
    }

    /// `skiff ARGS` as the admin: (success, stdout, stderr).
    pub(crate) fn skiff(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(args)
            .env("SKIFF_CONFIG", self.server.config("admin"))
            .env_remove("SKIFF_SERVER")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `skiff controller-manager` with its own identity.
    fn controllers(&self) -> skiff_testkit::ChildGuard {
        let config = self.server.config("controller-manager");
        skiff_testkit::controller_manager_with(
            &self.server.url(),
            &[],
            &["--config", config.to_str().unwrap(), "--leader-elect=false"],
        )
        .unwrap()
    }

    /// A fresh bootstrap token and the CA hash, from `skiff token create`.
    fn token(&self, ttl: &str) -> (String, String) {
        let (ok, out, err) = self.skiff(&["token", "create", "--ttl", ttl]);
        assert!(ok, "token create: {err}");
        skiff_testkit::printed_token(&out, &err)
    }
}

/// grpcurl against `addr` over TLS trusting `ca`, with `identity` (cert,
/// key files) as its client certificate when given; `call` is the method
/// (or `list`) last, flags before it.
fn grpcurl(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    call: &[&str],
) -> (bool, String) {
    let mut command = Command::new(skiff_testkit::grpcurl_binary().unwrap());
    command.arg("-cacert").arg(ca);
    if let Some((cert, key)) = identity {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let (method, flags) = call.split_last().unwrap();
    let out = command.args(flags).arg(addr).arg(method).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certificates_of_the_cluster_ca_get_in() {
    let c = Secure::start(&[]);
    let addr = c.server.addr.to_string();
    let pki = c.pki();
    let (ca, cert, key) = (
        pki.join("ca.crt"),
        pki.join("admin.crt"),
        pki.join("admin.key"),
    );
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = skiff_pki::Ca::load_or_create(other_dir.path())
        .unwrap()
        .issue_client("admin", &["system:masters"])
        .unwrap();
    let s_cert = write(other_dir.path(), "s.crt", &stranger.cert_pem);
    let s_key = write(other_dir.path(), "s.key", &stranger.key_pem);

    let grpc_addr = addr.clone();
    let results = tokio::task::spawn_blocking(move || {
        let list = ["list"];
        (
            grpcurl(&grpc_addr, &ca, Some((&cert, &key)), &list),
            grpcurl(&grpc_addr, &ca, None, &list),
            // grpcurl redials a refused handshake until its timeout.
            grpcurl(
                &grpc_addr,
                &ca,
                Some((&s_cert, &s_key)),
                &["-connect-timeout", "2", "list"],
            ),
            grpcurl(
                &grpc_addr,
                &ca,
                None,
                &["-d", "{}", "skiff.core.v1.Pods/List"],
            ),
        )
    })
    .await
    .unwrap();
    let (admin, anonymous, other_ca, anonymous_call) = results;
    assert!(admin.0, "grpcurl with the admin certificate: {}", admin.1);
    assert!(admin.1.contains("skiff.core.v1.Pods"), "{}", admin.1);
    assert!(!anonymous.0, "no certificate: {}", anonymous.1);
    assert!(anonymous.1.contains("Unauthenticated"), "{}", anonymous.1);
    assert!(
        !anonymous_call.0 && anonymous_call.1.contains("Unauthenticated"),
        "{}",
        anonymous_call.1
    );
    assert!(!other_ca.0, "another CA's certificate: {}", other_ca.1);
    assert!(
        other_ca.1.contains("Failed to dial")
            || other_ca.1.contains("handshake")
            || other_ca.1.contains("certificate"),
        "refused in the handshake: {}",
        other_ca.1
    );
    // Health checks need no identity (like Kubernetes' /healthz).
    let anonymous_tls =
        skiff_client::ClientTls::new(&c.ca().cert_pem, None, skiff_pki::tls::ServerCheck::Name)
            .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(
        skiff_client::connect_lazy_with(&c.server.url(), Some(&anonymous_tls)).unwrap(),
    )
    .check(tonic_health::pb::HealthCheckRequest::default())
    .await
    .expect("health is public")
    .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The skiff client with the admin config; plaintext is refused.
    let (ok, out, err) = c.skiff(&["get", "namespaces"]);
    assert!(ok && out.contains("kube-system"), "{out}{err}");
    let (ok, out, _) = c.skiff(&["auth", "whoami"]);
    assert!(
        ok && out.contains("admin") && out.contains("system:masters"),
        "{out}"
    );
    let plaintext = Api::<Pod>::new(skiff_client::connect_lazy(&format!("http://{addr}")).unwrap())
        .list(Default::default())
        .await
        .expect_err("plaintext to a TLS server");
    assert_ne!(plaintext.code(), Code::Ok);
    // The stranger's certificate through the skiff client: a transport
    // error, never an answer.
    let tls = skiff_client::ClientTls::new(
        &c.ca().cert_pem,
        Some(&stranger),
        skiff_pki::tls::ServerCheck::Name,
    )
    .unwrap();
    let refused =
        Api::<Pod>::new(skiff_client::connect_lazy_with(&c.server.url(), Some(&tls)).unwrap())
            .list(Default::default())
            .await
            .expect_err("another CA's certificate");
    assert!(
        matches!(
            refused.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled | Code::Internal
        ),
        "{refused:?}"
    );
}

/// `skiff agent` with the given join flags, expected to fail: its stderr.
fn failed_join(c: &Secure, name: &str, token: &str, hash: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["agent", "--server", &c.server.url(), "--node-name", name])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--runtime", "fake", "--listen", "127.0.0.1:0"])
        .args(["--proxy-mode=none", "--cluster-dns=false"])
        .args(["--token", token, "--ca-hash", hash])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the join of {name} must fail");
    assert!(
        !dir.path().join("pki").join("node.crt").exists(),
        "nothing is stored"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn node_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// Joins a node to `c` with a fresh token (as `skiff agent`, or by the
/// `skiff-agent` binary when `lean`) on the process runtime, waits for it
/// to be Ready, and runs pod `pod` on it until its log, read through the
/// API server, shows `line`. The node, the token and the CA hash.
///
/// The pod sets the variables `skiff` reads its log format and trace
/// collector from: they are the container's, and its shim (the agent's own
/// binary, started in the container's environment) must not follow them.
/// A bad log format once kept the container from starting (the check
/// here); the collector only steered the shim's own tracing.
async fn join_and_run(
    c: &Secure,
    lean: bool,
    pod: &str,
    line: &str,
) -> (AgentNode, String, String) {
    let (token, hash) = c.token("1h");
    let join = ["--token", &token, "--ca-hash", &hash];
    let node = if lean {
        AgentNode::start_skiff_agent_with(&c.server.url(), "lean", "process", &join)
    } else {
        AgentNode::start_with(&c.server.url(), "joined", "process", &join)
    }
    .unwrap();
    let nodes = Api::<Node>::new(c.admin());
    let name = node.name.clone();
    wait_until(
        "the joined node is Ready",
        Duration::from_secs(30),
        async || nodes.get("", &name).await.is_ok_and(|n| node_ready(&n)),
    )
    .await;
    let pods = Api::<Pod>::new(c.admin());
    let spec: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": pod},
        "spec": {"nodeName": name, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "host",
                                 "env": [{"name": "SKIFF_LOG_FORMAT", "value": "bogus"},
                                         {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://127.0.0.1:9"}],
                                 "command": ["sh", "-c", format!("echo {line} $SKIFF_LOG_FORMAT; exec sleep 300")]}]}
    }))
    .unwrap();
    pods.create(spec).await.unwrap();
    wait_until(
        "the pod's log through the API server",
        Duration::from_secs(30),
        async || {
            let (ok, out, _) = c.skiff(&["logs", pod]);
            ok && out.contains(&format!("{line} bogus"))
        },
    )
    .await;
    (node, token, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_with_a_token_and_a_bad_token_or_pin_is_refused() {
    let c = Secure::start(&[]);
    // Pods run as their namespace's `default` service account, made by
    // the controller manager (with the CA ConfigMap their tokens need).
    let _controllers = c.controllers();
    // The API server reaches the agent over TLS (logs of a pod on it).
    let (node, token, hash) = join_and_run(&c, false, "hello", "hello from the node").await;
    let nodes = Api::<Node>::new(c.admin());
    let name = node.name.clone();
    let cert = std::fs::read_to_string(node.data_dir.path().join("pki").join("node.crt")).unwrap();
    let parsed = skiff_pki::Parsed::from_pem(&cert).unwrap();
    assert_eq!(parsed.common_name, format!("system:node:{name}"));
    assert_eq!(parsed.organizations, ["system:nodes"]);

    // Only the API server may call the agent: another node's certificate
    // gets PERMISSION_DENIED from it, in the API server's stead.
    let node_obj = nodes.get("", &name).await.unwrap();
    let port = node_obj
        .status
        .unwrap()
        .daemon_endpoints
        .unwrap()
        .kubelet_endpoint
        .unwrap()
        .port;
    let ca = c.ca();
    let intruder = ca
        .issue_client("system:node:other", &["system:nodes"])
        .unwrap();
    let tls = skiff_client::ClientTls::new(
        &ca.cert_pem,
        Some(&intruder),
        skiff_pki::tls::ServerCheck::Identity(format!("system:node:{name}")),
    )
    .unwrap();
    let agent =
        skiff_client::connect_lazy_with(&format!("https://127.0.0.1:{port}"), Some(&tls)).unwrap();
    let denied = skiff::pb::agent::v1::agent_client::AgentClient::new(agent)
        .stats(skiff::pb::agent::v1::StatsRequest {})
        .await
        .expect_err("another node calling the agent");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("system:node:other"), "{denied:?}");

    // A wrong pin: the token is never sent.
    let err = failed_join(
        &c,
        "wrong-pin",
        &token,
        &format!("sha256:{}", "ab".repeat(32)),
    );
    assert!(
        err.contains("no CA certificate the server presented"),
        "{err}"
    );
    // An expired token.
    let (short, _) = c.token("1s");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = failed_join(&c, "late", &short, &hash);
    assert!(
        err.contains("Unauthenticated") && err.contains("expired"),
        "{err}"
    );
    // A deleted token.
    let (gone, _) = c.token("1h");
    let (ok, out, err) = c.skiff(&["token", "delete", &gone]);
    assert!(ok, "{out}{err}");
    let err = failed_join(&c, "deleted", &gone, &hash);
    assert!(
        err.contains("Unauthenticated") && err.contains("not known"),
        "{err}"
    );
    // A token cannot take over the name of a live node.
    let err = failed_join(&c, &name, &token, &hash);
    assert!(err.contains("is alive"), "{err}");
    // A made-up one.
    let err = failed_join(&c, "madeup", "abcdef.0123456789abcdef", &hash);
    assert!(err.contains("Unauthenticated"), "{err}");
    // `token list` shows the live ones, never their secrets.
    let (ok, out, _) = c.skiff(&["token", "list"]);
    assert!(
        ok && out.contains("TOKEN-ID") && out.contains(token.split('.').next().unwrap()),
        "{out}"
    );
    assert!(!out.contains(token.split('.').nth(1).unwrap()), "{out}");
}

/// `skiff-agent` (the agent alone, in its own binary) joins as `skiff
/// agent` does and runs pods, their shims included (the process runtime
/// starts each container through the agent's own binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skiff_agent_binary_joins_with_a_token_and_runs_pods() {
    let c = Secure::start(&[]);
    let _controllers = c.controllers();
    let (node, _, _) = join_and_run(&c, true, "lean", "hello from skiff-agent").await;
    // The container's parent is its shim: skiff-agent's own binary.
    let pid = node
        .container_ids()
        .iter()
        .find_map(|id| skiff_testkit::process_pid(&node, id))
        .expect("the pod's container runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let parent = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .to_string();
    let shim = std::fs::read_link(format!("/proc/{parent}/exe")).unwrap();
    assert!(
        shim.to_string_lossy().contains("skiff-agent"),
        "the shim is {shim:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_are_rotated_before_they_expire() {
    let c = Secure::start(&["--node-cert-validity-secs", "20"]);
    let (token, hash) = c.token("1h");
    let mut node = AgentNode::start_with(
        &c.server.url(),
        "rotating",
        "process",
        &["--token", &token, "--ca-hash", &hash],
    )
    .unwrap();
    let cert_file = node.data_dir.path().join("pki").join("node.crt");
    let nodes = Api::<Node>::new(c.admin());
    let name = node.name.clone();
    wait_until("the node is Ready", Duration::from_secs(30), async || {
        nodes.get("", &name).await.is_ok_and(|n| node_ready(&n))
    })
    .await;
    let first = std::fs::read_to_string(&cert_file).unwrap();
    let first_end = skiff_pki::Parsed::from_pem(&first).unwrap().not_after;
    wait_until(
        "the certificate is renewed (at 80 % of 20 s)",
        Duration::from_secs(40),
        async || std::fs::read_to_string(&cert_file).is_ok_and(|now| now != first),
    )
    .await;
    let second =
        skiff_pki::Parsed::from_pem(&std::fs::read_to_string(&cert_file).unwrap()).unwrap();
    assert!(second.not_after > first_end);
    assert_eq!(second.common_name, format!("system:node:{name}"));
    // Past the first certificate's end, a restarted agent (no token this
    // time) gets in with the renewed one.
    let wait = first_end - time::OffsetDateTime::now_utc();
    if let Ok(wait) = Duration::try_from(wait) {
        tokio::time::sleep(wait + Duration::from_secs(1)).await;
    }
    // Its connections made with the first certificate ended with it; it
    // reconnected with the renewed one and goes on.
    let renewed_at = leases_renewed(&c, &name).await;
    wait_until(
        "the agent renews its lease past its first certificate",
        Duration::from_secs(20),
        async || leases_renewed(&c, &name).await > renewed_at,
    )
    .await;
    node.kill9();
    node.set_args(&[]);
    node.start_agent().unwrap();
    let lease_before = leases_renewed(&c, &name).await;
    wait_until(
        "the restarted agent renews its lease",
        Duration::from_secs(20),
        async || leases_renewed(&c, &name).await > lease_before,
    )
    .await;
}

/// The node's lease renew time, in seconds.
async fn leases_renewed(c: &Secure, node: &str) -> i64 {
    Api::<skiff::pb::coordination::v1::Lease>::new(c.admin())
        .get("kube-node-lease", node)
        .await
        .ok()
        .and_then(|l| l.spec?.renew_time)
        .map_or(0, |t| t.seconds)
}

/// A plain delete of `default/name`.
fn delete(name: &str) -> skiff::pb::api::v1::DeleteRequest {
    skiff::pb::api::v1::DeleteRequest {
        namespace: "default".into(),
        name: name.into(),
        ..Default::default()
    }
}

fn pod_on(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]}
    }))
    .unwrap()
}

/// A node holding its certificate could take the traffic of another
/// node's pods by claiming that node's pod range: the range is the
/// controller manager's to give, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_a_node_claims_another_nodes_pod_range() {
    let c = Secure::start(&[]);
    let _controllers = c.controllers();
    let nodes_a = Api::<Node>::new(c.as_user("system:node:node-a", &["system:nodes"]));
    let admin = Api::<Node>::new(c.admin());
    let named = |name: &str| {
        let mut node = Node::default();
        skiff::Resource::metadata_mut(&mut node).name = name.into();
        node
    };
    admin.create(named("node-b")).await.unwrap();
    let mut block_b = String::new();
    wait_until(
        "node-b gets its podCIDR",
        Duration::from_secs(20),
        async || {
            block_b = admin
                .get("", "node-b")
                .await
                .ok()
                .and_then(|n| n.spec)
                .map(|s| s.pod_cidr)
                .unwrap_or_default();
            !block_b.is_empty()
        },
    )
    .await;
    // Registering with B's range: refused, nothing written.
    let mut claiming = named("node-a");
    claiming.spec.get_or_insert_with(Default::default).pod_cidr = block_b.clone();
    let err = nodes_a
        .create(claiming)
        .await
        .expect_err("choosing a range");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("podCIDR"), "{err:?}");
    assert_eq!(
        admin.get("", "node-a").await.unwrap_err().code(),
        Code::NotFound
    );
    // Registered plainly, it gets a range of its own...
    nodes_a.create(named("node-a")).await.expect("its own Node");
    let mut own = Node::default();
    wait_until(
        "node-a gets its podCIDR",
        Duration::from_secs(20),
        async || {
            own = admin.get("", "node-a").await.unwrap();
            own.spec.as_ref().is_some_and(|s| !s.pod_cidr.is_empty())
        },
    )
    .await;
    let block_a = own.spec.as_ref().unwrap().pod_cidr.clone();
    assert_ne!(block_a, block_b);
    // ...which it may not change to B's.
    let mut moved = own.clone();
    let spec = moved.spec.get_or_insert_with(Default::default);
    spec.pod_cidr = block_b.clone();
    spec.pod_cidrs = vec![block_b.clone()];
    let err = nodes_a
        .update(moved.clone())
        .await
        .expect_err("moving its range");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Nor may anyone once it is set (its pods hold addresses from it).
    let err = admin
        .update(moved)
        .await
        .expect_err("the range is set once");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("spec.podCIDRs"), "{err:?}");
    // Registering again (an agent restarting) is an AlreadyExists, not a
    // refusal: the Node it finds carries a range it did not send.
    let err = nodes_a.create(named("node-a")).await.expect_err("exists");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    // And a range is a CIDR.
    let mut bad = named("node-c");
    bad.spec.get_or_insert_with(Default::default).pod_cidr = "10.42.7.1/24".into();
    let err = admin.create(bad).await.expect_err("host bits set");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("host bits set"), "{err:?}");
    let stored = admin.get("", "node-a").await.unwrap();
    assert_eq!(stored.spec.unwrap().pod_cidr, block_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_only_write_what_is_its_own() {
    let c = Secure::start(&[]);
    let _controllers = c.controllers();
    let admin = Api::<Pod>::new(c.admin());
    admin.create(pod_on("on-b", "node-b")).await.unwrap();
    let node_a = c.as_user("system:node:node-a", &["system:nodes"]);
    let node_b = c.as_user("system:node:node-b", &["system:nodes"]);
    let as_a = Api::<Pod>::new(node_a.clone());
    let as_b = Api::<Pod>::new(node_b.clone());

    // Node A updating the status of a pod bound to node B.
    let mut pod = as_a.get("default", "on-b").await.expect("nodes read pods");
    pod.status.get_or_insert_with(Default::default).phase = "Running".into();
    let denied = as_a
        .update_status(pod.clone())
        .await
        .expect_err("node A on B's pod");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    for part in [
        "system:node:node-a",
        "update",
        "pods/status",
        "bound to \"node-b\"",
    ] {
        assert!(
            denied.message().contains(part),
            "{part}: {}",
            denied.message()
        );
    }
    let err = as_a
        .delete(delete("on-b"))
        .await
        .expect_err("node A deleting B's pod");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Nothing was written.
    let stored = admin.get("default", "on-b").await.unwrap();
    assert_ne!(stored.status.unwrap_or_default().phase, "Running");
    // Node B may.
    let updated = as_b
        .update_status(pod)
        .await
        .expect("node B on its own pod");
    assert_eq!(updated.status.unwrap().phase, "Running");

    // Its own Node, yes; another's, no; and no pods of its own making.
    let nodes_a = Api::<Node>::new(node_a.clone());
    let mut own = Node::default();
    skiff::Resource::metadata_mut(&mut own).name = "node-a".into();
    let mut privileged = own.clone();
    skiff::Resource::metadata_mut(&mut privileged)
        .labels
        .insert("node-restriction.kubernetes.io/pci".into(), "true".into());
    let err = nodes_a
        .create(privileged)
        .await
        .expect_err("a restricted label");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    nodes_a.create(own).await.expect("its own Node");
    // Changing its taints is refused. (The node IPAM controller may give
    // the Node its podCIDR meanwhile: a change from the Node as it was
    // read before that is refused for the podCIDR, so it is read again.)
    let mut refusal = None;
    for _ in 0..5 {
        let mut own = nodes_a.get("", "node-a").await.unwrap();
        own.spec
            .get_or_insert_with(Default::default)
            .taints
            .push(skiff::pb::core::v1::Taint {
                key: "mine".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        let err = nodes_a.update(own).await.expect_err("changing its taints");
        let raced = err.message().contains("podCIDR");
        refusal = Some(err);
        if !raced {
            break;
        }
    }
    let err = refusal.unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("taints"), "{err:?}");
    let mut other = Node::default();
    skiff::Resource::metadata_mut(&mut other).name = "node-c".into();
    let err = nodes_a.create(other).await.expect_err("another Node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = as_a
        .create(pod_on("mine", "node-a"))
        .await
        .expect_err("creating pods");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // And no writing of Secrets; reading only those its pods use.
    let secrets_as_a = Api::<Secret>::new(node_a);
    let err = secrets_as_a
        .create(Secret::default())
        .await
        .expect_err("creating secrets");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let secrets = Api::<Secret>::new(c.admin());
    for name in ["used", "unused"] {
        let mut secret = Secret::default();
        let meta = skiff::Resource::metadata_mut(&mut secret);
        meta.name = name.into();
        meta.namespace = "default".into();
        secrets.create(secret).await.unwrap();
    }
    let user: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "user"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "x",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "used", "key": "k"}}}]}]}
    }))
    .unwrap();
    admin.create(user).await.unwrap();
    secrets_as_a
        .get("default", "used")
        .await
        .expect("a secret a pod of node A uses");
    let err = secrets_as_a
        .get("default", "unused")
        .await
        .expect_err("a secret no pod of node A uses");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("no pod bound to node"), "{err:?}");
    let err = Api::<Secret>::new(node_b)
        .get("default", "used")
        .await
        .expect_err("node B's pods do not use it");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_writers_cannot_grant_more_than_they_hold() {
    let c = Secure::start(&[]);
    let jane = namespace_admin(&c, "team", "jane").await;
    let roles = Api::<Role>::new(jane.clone());
    let role = |name: &str, rule: PolicyRule| {
        let mut role = Role {
            rules: vec![rule],
            ..Default::default()
        };
        let meta = skiff::Resource::metadata_mut(&mut role);
        meta.name = name.into();
        meta.namespace = "team".into();
        role
    };
    let pods_rule = PolicyRule {
        verbs: vec!["get".into()],
        api_groups: vec![String::new()],
        resources: vec!["pods".into()],
        ..Default::default()
    };
    let mut made = Err(tonic::Status::unknown("not yet"));
    wait_until(
        "jane's binding takes effect",
        Duration::from_secs(10),
        async || {
            made = roles.create(role("reader", pods_rule.clone())).await;
            made.is_ok()
        },
    )
    .await;
    // A rule she does not hold (RBAC objects themselves are hers only
    // for roles and bindings; nodes are cluster-scoped).
    let err = roles
        .create(role(
            "too-much",
            PolicyRule {
                verbs: vec!["*".into()],
                api_groups: vec!["*".into()],
                resources: vec!["*".into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("a role granting everything");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not currently held"), "{err:?}");
    // Binding cluster-admin in her namespace: refused; binding her own
    // reader role: fine.
    let bind = |name: &str, kind: &str, role: &str| {
        let mut b = RoleBinding {
            subjects: vec![subject_sa("robot", "team")],
            role_ref: Some(RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: kind.into(),
                name: role.into(),
            }),
            ..Default::default()
        };
        let meta = skiff::Resource::metadata_mut(&mut b);
        meta.name = name.into();
        meta.namespace = "team".into();
        b
    };
    let bindings = Api::<RoleBinding>::new(jane);
    let err = bindings
        .create(bind("escalate", "ClusterRole", "cluster-admin"))
        .await
        .expect_err("binding cluster-admin");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    bindings
        .create(bind("read", "Role", "reader"))
        .await
        .expect("binding what she holds");
}

/// A channel as `user`, whom the default `admin` role binds in a new
/// namespace `namespace`.
async fn namespace_admin(c: &Secure, namespace: &str, user: &str) -> tonic::transport::Channel {
    let admin = c.admin();
    let mut ns = skiff::pb::core::v1::Namespace::default();
    skiff::Resource::metadata_mut(&mut ns).name = namespace.into();
    Api::<skiff::pb::core::v1::Namespace>::new(admin.clone())
        .create(ns)
        .await
        .unwrap();
    let mut binding = RoleBinding {
        subjects: vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: "rbac.authorization.k8s.io".into(),
            namespace: String::new(),
        }],
        role_ref: Some(RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "admin".into(),
        }),
        ..Default::default()
    };
    let meta = skiff::Resource::metadata_mut(&mut binding);
    meta.name = format!("{user}-admin");
    meta.namespace = namespace.into();
    Api::<RoleBinding>::new(admin)
        .create(binding)
        .await
        .unwrap();
    c.as_user(user, &[])
}

/// A namespace's admin may read its quota and limit ranges but not
/// raise, remove or re-count them (Kubernetes' `admin` role): else a
/// tenant would lift its own caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_admin_cannot_raise_its_own_quota() {
    use skiff::pb::core::v1::{LimitRange, ResourceQuota, ResourceQuotaSpec};
    let c = Secure::start(&[]);
    let jane = namespace_admin(&c, "team", "jane").await;
    let caps = |pods: &str| ResourceQuota {
        metadata: Some(skiff::pb::meta::v1::ObjectMeta {
            name: "caps".into(),
            namespace: "team".into(),
            ..Default::default()
        }),
        spec: Some(ResourceQuotaSpec {
            hard: [("pods".to_string(), pods.to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ResourceQuota>::new(c.admin())
        .create(caps("2"))
        .await
        .unwrap();
    let quotas = Api::<ResourceQuota>::new(jane.clone());
    let mut mine = None;
    wait_until(
        "jane's binding takes effect",
        Duration::from_secs(10),
        async || {
            mine = quotas.get("team", "caps").await.ok();
            mine.is_some()
        },
    )
    .await;
    let mut raised = mine.unwrap();
    raised
        .spec
        .as_mut()
        .unwrap()
        .hard
        .insert("pods".into(), "1000".into());
    let denied = |r: Result<_, tonic::Status>, what: &str| {
        let err = r.map(|_: ResourceQuota| ()).expect_err(what);
        assert_eq!(err.code(), Code::PermissionDenied, "{what}: {err:?}");
    };
    denied(quotas.update(raised.clone()).await, "raising the quota");
    denied(quotas.update_status(raised).await, "rewriting its usage");
    let mut more = caps("1000");
    more.metadata.as_mut().unwrap().name = "more".into();
    denied(quotas.create(more).await, "a second quota");
    let err = quotas
        .delete(skiff::pb::api::v1::DeleteRequest {
            namespace: "team".into(),
            name: "caps".into(),
            ..Default::default()
        })
        .await
        .expect_err("deleting the quota");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = Api::<LimitRange>::new(jane.clone())
        .create(LimitRange {
            metadata: Some(skiff::pb::meta::v1::ObjectMeta {
                name: "loose".into(),
                namespace: "team".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a limit range");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Nor hand-written Endpoints, which would send a Service's traffic
    // anywhere (CVE-2021-25740).
    let mut endpoints = skiff::pb::core::v1::Endpoints::default();
    let meta = skiff::Resource::metadata_mut(&mut endpoints);
    meta.name = "web".into();
    meta.namespace = "team".into();
    let err = Api::<skiff::pb::core::v1::Endpoints>::new(jane.clone())
        .create(endpoints)
        .await
        .expect_err("hand-written endpoints");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // What the role is for still works.
    let mut config = skiff::pb::core::v1::ConfigMap::default();
    let meta = skiff::Resource::metadata_mut(&mut config);
    meta.name = "settings".into();
    meta.namespace = "team".into();
    Api::<skiff::pb::core::v1::ConfigMap>::new(jane)
        .create(config)
        .await
        .expect("a ConfigMap in her namespace");
}

/// Who a binding grants to and what: a ClusterRoleBinding's role
/// everywhere, a RoleBinding's only in its namespace, to the users and
/// groups its subjects name (an apiGroup left out is RBAC's); a roleRef
/// or subject of another API group is refused; deleting the binding takes
/// the right away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_grant_their_role_to_their_subjects_where_they_reach() {
    use skiff::pb::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let c = Secure::start(&[]);
    let admin = c.admin();
    let named = |name: &str, namespace: &str| skiff::pb::meta::v1::ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    };
    let reader = |name: &str, resource: &str| ClusterRole {
        metadata: Some(named(name, "")),
        rules: vec![PolicyRule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: vec![String::new()],
            resources: vec![resource.into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let roles = Api::<ClusterRole>::new(admin.clone());
    roles.create(reader("pod-reader", "pods")).await.unwrap();
    let mut config_reader = reader("config-reader", "configmaps");
    // And one Secret, by name.
    config_reader.rules.push(PolicyRule {
        verbs: vec!["get".into()],
        api_groups: vec![String::new()],
        resources: vec!["secrets".into()],
        resource_names: vec!["app-token".into()],
        ..Default::default()
    });
    roles.create(config_reader).await.unwrap();
    let role_ref = |group: &str, kind: &str, name: &str| {
        Some(RoleRef {
            api_group: group.into(),
            kind: kind.into(),
            name: name.into(),
        })
    };
    let rbac = "rbac.authorization.k8s.io";
    let cluster_bindings = Api::<ClusterRoleBinding>::new(admin.clone());
    let stored = cluster_bindings
        .create(ClusterRoleBinding {
            metadata: Some(named("alice-reads-pods", "")),
            role_ref: role_ref(rbac, "ClusterRole", "pod-reader"),
            subjects: vec![Subject {
                kind: "User".into(),
                name: "alice".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.subjects[0].api_group, rbac, "defaulted");
    Api::<RoleBinding>::new(admin.clone())
        .create(RoleBinding {
            metadata: Some(named("team-reads-config", "default")),
            role_ref: role_ref(rbac, "ClusterRole", "config-reader"),
            subjects: vec![Subject {
                kind: "Group".into(),
                name: "team".into(),
                api_group: rbac.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    // Another API group's role or subject is refused.
    let err = cluster_bindings
        .create(ClusterRoleBinding {
            metadata: Some(named("elsewhere", "")),
            role_ref: role_ref("example.com", "ClusterRole", "pod-reader"),
            subjects: vec![],
            ..Default::default()
        })
        .await
        .expect_err("a roleRef of another group");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("roleRef.apiGroup"), "{err:?}");
    let err = cluster_bindings
        .create(ClusterRoleBinding {
            metadata: Some(named("robots", "")),
            role_ref: role_ref(rbac, "ClusterRole", "pod-reader"),
            subjects: vec![Subject {
                kind: "ServiceAccount".into(),
                name: "robot".into(),
                namespace: "default".into(),
                api_group: rbac.into(),
            }],
            ..Default::default()
        })
        .await
        .expect_err("a service account subject in RBAC's group");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("subjects[0].apiGroup"), "{err:?}");

    let list = |ns: &str| ListRequest {
        namespace: ns.into(),
        ..Default::default()
    };
    let alice = c.as_user("alice", &[]);
    let bob = c.as_user("bob", &["team"]);
    // The authorizer follows the bindings through a watch.
    wait_until(
        "the bindings take effect",
        Duration::from_secs(10),
        async || {
            Api::<Pod>::new(alice.clone())
                .list(list("default"))
                .await
                .is_ok()
                && Api::<skiff::pb::core::v1::ConfigMap>::new(bob.clone())
                    .list(list("default"))
                    .await
                    .is_ok()
        },
    )
    .await;
    for ns in ["default", "kube-system"] {
        Api::<Pod>::new(alice.clone())
            .list(list(ns))
            .await
            .unwrap_or_else(|e| panic!("alice lists pods in {ns}: {e:?}"));
    }
    fn denied<T>(r: Result<T, tonic::Status>) -> bool {
        r.is_err_and(|e| e.code() == Code::PermissionDenied)
    }
    let configmaps =
        |who: &tonic::transport::Channel| Api::<skiff::pb::core::v1::ConfigMap>::new(who.clone());
    assert!(denied(configmaps(&alice).list(list("default")).await));
    configmaps(&bob)
        .list(list("default"))
        .await
        .expect("bob's group reads configmaps in default");
    assert!(denied(configmaps(&bob).list(list("kube-system")).await));
    assert!(denied(
        Api::<Pod>::new(bob.clone()).list(list("default")).await
    ));

    // The reviews say the same: can-i with the binding that allows it,
    // and the rules each holds.
    use skiff::pb::authentication::v1::identity_client::IdentityClient;
    use skiff::pb::authentication::v1::{AccessReview, RulesReviewRequest};
    let review = |verb: &str, resource: &str, ns: &str, name: &str| AccessReview {
        verb: verb.into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    };
    let answer = IdentityClient::new(alice.clone())
        .can_i(review("list", "pods", "kube-system", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed, "{answer:?}");
    assert!(
        answer
            .reason
            .contains("ClusterRoleBinding \"alice-reads-pods\""),
        "{answer:?}"
    );
    let mut as_bob = IdentityClient::new(bob.clone());
    let named = as_bob
        .can_i(review("get", "secrets", "default", "app-token"))
        .await
        .unwrap()
        .into_inner();
    assert!(named.allowed, "{named:?}");
    let other = as_bob
        .can_i(review("get", "secrets", "default", "db-password"))
        .await
        .unwrap()
        .into_inner();
    assert!(!other.allowed, "{other:?}");
    let rules = as_bob
        .rules_review(RulesReviewRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !rules.incomplete && rules.evaluation_error.is_empty(),
        "{rules:?}"
    );
    assert!(
        rules
            .resource_rules
            .iter()
            .any(|r| r.resources == ["secrets"] && r.resource_names == ["app-token"]),
        "{rules:?}"
    );
    assert!(
        rules
            .resource_rules
            .iter()
            .any(|r| r.resources == ["configmaps"] && r.verbs == ["get", "list"]),
        "{rules:?}"
    );
    assert!(
        rules
            .non_resource_rules
            .iter()
            .any(|r| r.non_resource_urls.iter().any(|u| u == "/healthz")),
        "{rules:?}"
    );
    // In another namespace the RoleBinding gives nothing.
    let elsewhere = as_bob
        .rules_review(RulesReviewRequest {
            namespace: "kube-system".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !elsewhere
            .resource_rules
            .iter()
            .any(|r| r.resources == ["configmaps"]),
        "{elsewhere:?}"
    );

    cluster_bindings
        .delete(skiff::pb::api::v1::DeleteRequest {
            name: "alice-reads-pods".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(
        "alice's right is gone",
        Duration::from_secs(10),
        async || denied(Api::<Pod>::new(alice.clone()).list(list("default")).await),
    )
    .await;
}

fn robot_meta() -> skiff::pb::meta::v1::ObjectMeta {
    skiff::pb::meta::v1::ObjectMeta {
        name: "robot".into(),
        namespace: "default".into(),
        ..Default::default()
    }
}

fn subject_sa(name: &str, namespace: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: namespace.into(),
        api_group: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_has_exactly_its_rbac_rights() {
    let c = Secure::start(&[]);
    let _controllers = c.controllers();
    let admin = c.admin();
    let mut account = ServiceAccount::default();
    let meta = skiff::Resource::metadata_mut(&mut account);
    meta.name = "robot".into();
    meta.namespace = "default".into();
    Api::<ServiceAccount>::new(admin.clone())
        .create(account)
        .await
        .unwrap();
    let pods = Api::<Pod>::new(admin.clone());
    pods.create(pod_on("p1", "somewhere")).await.unwrap();
    // A pod runs as an account that exists, and may opt out of its token.
    let mut ghost = pod_on("ghost", "somewhere");
    ghost
        .spec
        .get_or_insert_with(PodSpec::default)
        .service_account_name = "ghost".into();
    let err = pods
        .create(ghost)
        .await
        .expect_err("no such service account");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("service account default/ghost"),
        "{err:?}"
    );
    let mut quiet = pod_on("quiet", "somewhere");
    quiet
        .spec
        .get_or_insert_with(PodSpec::default)
        .automount_service_account_token = Some(false);
    let quiet = pods.create(quiet).await.unwrap();
    let spec = quiet.spec.unwrap();
    assert_eq!(spec.service_account_name, "default");
    assert!(spec.volumes.is_empty(), "{:?}", spec.volumes);
    // An account may opt its pods out; a pod's own choice wins over it.
    let mut shy = ServiceAccount {
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let meta = skiff::Resource::metadata_mut(&mut shy);
    meta.name = "shy".into();
    meta.namespace = "default".into();
    Api::<ServiceAccount>::new(admin.clone())
        .create(shy)
        .await
        .unwrap();
    let as_shy = |name: &str, automount: Option<bool>| {
        let mut pod = pod_on(name, "somewhere");
        let spec = pod.spec.get_or_insert_with(PodSpec::default);
        spec.service_account_name = "shy".into();
        spec.automount_service_account_token = automount;
        pod
    };
    let spec = pods
        .create(as_shy("shy-1", None))
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(spec.volumes.is_empty(), "{:?}", spec.volumes);
    let spec = pods
        .create(as_shy("shy-2", Some(true)))
        .await
        .unwrap()
        .spec
        .unwrap();
    assert!(
        spec.volumes
            .iter()
            .any(|v| v.name.starts_with("kube-api-access-")),
        "{:?}",
        spec.volumes
    );
    // Once created, a pod cannot be pointed at another account (its spec
    // is fixed but for images and the like).
    let mut swapped = pods.get("default", "p1").await.unwrap();
    swapped.spec.as_mut().unwrap().service_account_name = "robot".into();
    let err = pods
        .update(swapped)
        .await
        .expect_err("a changed service account");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("pod updates may not change"),
        "{err:?}"
    );
    let mut reimaged = pods.get("default", "p1").await.unwrap();
    reimaged.spec.as_mut().unwrap().containers[0].image = "y".into();
    pods.update(reimaged).await.expect("an image may change");
    let request = TokenRequest {
        metadata: Some(robot_meta()),
        ..Default::default()
    };
    let token = ServiceAccountTokensClient::new(admin.clone())
        .create(request)
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .token;
    let as_robot = c.with_token::<Pod>(&token);
    // The token's user: the account, with its uid.
    let account_uid = Api::<ServiceAccount>::new(admin.clone())
        .get("default", "robot")
        .await
        .unwrap()
        .metadata
        .unwrap()
        .uid;
    let mut who = tonic::Request::new(skiff::pb::authentication::v1::WhoAmIRequest::default());
    who.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let me = skiff::pb::authentication::v1::identity_client::IdentityClient::new(
        c.without_certificate(),
    )
    .who_am_i(who)
    .await
    .unwrap()
    .into_inner();
    assert_eq!(me.username, "system:serviceaccount:default:robot");
    assert_eq!(me.uid, account_uid);
    // A token bound to a pod names the pod's uid: another is refused.
    let p1_uid = pods
        .get("default", "p1")
        .await
        .unwrap()
        .metadata
        .unwrap()
        .uid;
    let bound_to = |uid: &str| TokenRequest {
        metadata: Some(skiff::pb::meta::v1::ObjectMeta {
            name: "default".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(TokenRequestSpec {
            bound_object_ref: Some(BoundObjectReference {
                kind: "Pod".into(),
                name: "p1".into(),
                uid: uid.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = ServiceAccountTokensClient::new(admin.clone())
        .create(bound_to("not-its-uid"))
        .await
        .expect_err("another pod's uid");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    ServiceAccountTokensClient::new(admin.clone())
        .create(bound_to(&p1_uid))
        .await
        .expect("a token bound to p1 as it is");

    // A token for another audience is not the API server's to accept; its
    // lifetime is what was asked, within Kubernetes' bounds.
    let for_vault = |seconds: i64| TokenRequest {
        metadata: Some(robot_meta()),
        spec: Some(TokenRequestSpec {
            audiences: vec!["vault".into()],
            expiration_seconds: Some(seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = ServiceAccountTokensClient::new(admin.clone())
        .create(for_vault(7200))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = issued.expiration_timestamp.unwrap().seconds;
    assert!(
        (expires - now - 7200).abs() < 60,
        "expires at {expires}, now {now}"
    );
    let refused = c
        .with_token::<Pod>(&issued.token)
        .list(ListRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token for vault");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let err = ServiceAccountTokensClient::new(admin.clone())
        .create(for_vault(60))
        .await
        .expect_err("a one-minute token");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("spec.expirationSeconds"), "{err:?}");

    // Before any binding: denied, naming the account and the action.
    let denied = as_robot
        .list(ListRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("no binding yet");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied
            .message()
            .contains("User \"system:serviceaccount:default:robot\" cannot list resource \"pods\""),
        "{}",
        denied.message()
    );

    // A Role allowing get/list of pods in default, bound to the account.
    let mut role = Role {
        rules: vec![PolicyRule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: vec![String::new()],
            resources: vec!["pods".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let meta = skiff::Resource::metadata_mut(&mut role);
    meta.name = "pod-reader".into();
    meta.namespace = "default".into();
    Api::<Role>::new(admin.clone()).create(role).await.unwrap();
    let mut binding = RoleBinding {
        subjects: vec![subject_sa("robot", "default")],
        role_ref: Some(RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "pod-reader".into(),
        }),
        ..Default::default()
    };
    let meta = skiff::Resource::metadata_mut(&mut binding);
    meta.name = "robot-reads-pods".into();
    meta.namespace = "default".into();
    Api::<RoleBinding>::new(admin.clone())
        .create(binding)
        .await
        .unwrap();
    let mut listed = Vec::new();
    wait_until(
        "the binding takes effect",
        Duration::from_secs(10),
        async || match as_robot
            .list(ListRequest {
                namespace: "default".into(),
                ..Default::default()
            })
            .await
        {
            Ok(list) => {
                listed = list.items;
                true
            }
            Err(_) => false,
        },
    )
    .await;
    assert_eq!(listed.len(), 4, "p1, quiet and the two of shy");
    // Still nothing else: other verbs, namespaces, kinds.
    let err = as_robot
        .delete(delete("p1"))
        .await
        .expect_err("delete is not granted");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_robot
        .list(ListRequest {
            namespace: "kube-system".into(),
            ..Default::default()
        })
        .await
        .expect_err("another namespace");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_robot
        .list(ListRequest::default())
        .await
        .expect_err("every namespace");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .with_token::<Secret>(&token)
        .list(ListRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("secrets are not granted");
    assert_eq!(err.code(), Code::PermissionDenied);
    let (ok, out, _) = c.skiff(&["auth", "can-i", "list", "pods"]);
    assert!(ok && out.trim() == "yes", "{out}");

    // A token bound to a pod stops working when the pod goes; a tampered
    // or foreign token never works.
    let bound = TokenRequest {
        metadata: Some(robot_meta()),
        spec: Some(TokenRequestSpec {
            bound_object_ref: Some(BoundObjectReference {
                kind: "Pod".into(),
                name: "p2".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut p2 = pod_on("p2", "somewhere");
    p2.spec
        .get_or_insert_with(PodSpec::default)
        .service_account_name = "robot".into();
    pods.create(p2).await.unwrap();
    let bound_token = ServiceAccountTokensClient::new(admin.clone())
        .create(bound)
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .token;
    let as_pod = c.with_token::<Pod>(&bound_token);
    as_pod
        .get("default", "p1")
        .await
        .expect("the bound token works while its pod lives");
    pods.delete(skiff::pb::api::v1::DeleteRequest {
        namespace: "default".into(),
        name: "p2".into(),
        grace_period_seconds: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = as_pod
        .get("default", "p1")
        .await
        .expect_err("its pod is gone");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let err = c
        .with_token::<Pod>(&tampered)
        .get("default", "p1")
        .await
        .expect_err("a tampered token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Deleting the account ends its tokens.
    Api::<ServiceAccount>::new(admin)
        .delete(delete("robot"))
        .await
        .unwrap();
    let err = as_robot
        .get("default", "p1")
        .await
        .expect_err("the account is gone");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

/// Waits until pod `name`'s log (through `skiff logs`) contains `wanted`;
/// returns the log.
async fn log_shows(c: &Secure, name: &str, wanted: &str) -> String {
    let mut log = String::new();
    wait_until(
        &format!("pod {name}'s log shows {wanted:?}"),
        Duration::from_secs(60),
        async || {
            let (ok, out, err) = c.skiff(&["logs", name]);
            log = format!("{out}{err}");
            ok && out.contains(wanted)
        },
    )
    .await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_calls_the_api_with_its_service_account_token() {
    let image = skiff_testkit::test_image().await.unwrap();
    let c = Secure::start(&[]);
    let _controllers = c.controllers();
    let (token, hash) = c.token("1h");
    let join = ["--token", token.as_str(), "--ca-hash", hash.as_str()];
    let host = AgentNode::start_with(&c.server.url(), "sa-host", "process", &join).unwrap();
    let docker = AgentNode::start_with(&c.server.url(), "sa-docker", "docker", &join).unwrap();
    let grpcurl = skiff_testkit::grpcurl_binary().unwrap();
    // A host process (the process runtime gives volume paths as
    // SKIFF_VOLUME_<PATH>) that lists its namespace's pods with grpcurl
    // and its token until it may.
    let script = format!(
        r#"D=$SKIFF_VOLUME_VAR_RUN_SECRETS_KUBERNETES_IO_SERVICEACCOUNT
until {g} -cacert $D/ca.crt -H "authorization: Bearer $(cat $D/token)" -d "{{\"namespace\": \"$(cat $D/namespace)\"}}" {addr} skiff.core.v1.Pods/List > $D/../out 2>&1; do cat $D/../out; sleep 1; done
echo LISTED; cat $D/../out; exec sleep 300"#,
        g = grpcurl.display(),
        addr = c.server.addr,
    );
    let manifest = c.dir.path().join("pods.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: caller}}
spec:
  nodeName: {host}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: host
    command: ["sh", "-c", {script:?}]
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  nodeName: {docker}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "cd /var/run/secrets/kubernetes.io/serviceaccount && ls && cat namespace && echo && head -c 7 token && echo && exec sleep 300"]
---
apiVersion: v1
kind: Pod
metadata: {{name: vaulted}}
spec:
  nodeName: {docker}
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo VAULT=$(cat /vault/vault-token) && exec sleep 300"]
    volumeMounts: [{{name: vault, mountPath: /vault}}]
  volumes:
  - name: vault
    projected:
      sources:
      - serviceAccountToken: {{audience: vault, expirationSeconds: 3600, path: vault-token}}
"#,
            host = host.name,
            docker = docker.name,
        ),
    )
    .unwrap();
    let (ok, out, err) = c.skiff(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    // The pods run as `default`, with Kubernetes' projected volume.
    let (_, yaml, _) = c.skiff(&["get", "pod", "caller", "-o", "yaml"]);
    assert!(yaml.contains("serviceAccountName: default"), "{yaml}");
    assert!(yaml.contains("kube-api-access-"), "{yaml}");
    assert!(
        yaml.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{yaml}"
    );

    // In the container: the token, the CA and the namespace.
    let log = log_shows(&c, "reader", "eyJhbGc").await;
    for part in ["ca.crt", "namespace", "token", "default"] {
        assert!(log.contains(part), "{part}: {log}");
    }
    // Without a binding the token authenticates but may not list.
    let log = log_shows(&c, "caller", "PermissionDenied").await;
    assert!(
        log.contains("system:serviceaccount:default:default"),
        "the call was made as the pod's service account: {log}"
    );
    // Bound to `view` in its namespace, it may.
    let binding = c.dir.path().join("binding.yaml");
    std::fs::write(
        &binding,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: default-view, namespace: default}\nsubjects:\n- {kind: ServiceAccount, name: default, namespace: default}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n",
    )
    .unwrap();
    let (ok, out, err) = c.skiff(&["apply", "-f", binding.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let log = log_shows(&c, "caller", "LISTED").await;
    let listed = log.rsplit("LISTED").next().unwrap();
    assert!(listed.contains("\"name\": \"reader\""), "{log}");

    // A projected token for another audience, for as long as asked: its
    // claims say so, and the API server does not take it.
    let log = log_shows(&c, "vaulted", "VAULT=eyJ").await;
    let token = log
        .lines()
        .find_map(|l| l.strip_prefix("VAULT="))
        .unwrap()
        .trim();
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["vault"]), "{claims}");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 3600, "{claims}");
    let err = c
        .with_token::<Pod>(token)
        .list(ListRequest::default())
        .await
        .expect_err("a token for vault");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
