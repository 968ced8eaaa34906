//! The security regression suite (#21): each attack tried against Skiff
//! as someone who may create pods, holds a node's certificate, or only
//! reaches the port, kept as a named test so that none can come back
//! unnoticed. The refusals that held before (RBAC escalation, the node
//! restriction, token binding, unknown identities) are in `security`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff::pb::api::v1::ListRequest;
use skiff::pb::apps::v1::Deployment;
use skiff::pb::core::v1::{ConfigMap, Event, Namespace, Node, Pod};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use tonic::Code;

use crate::agent::{env, waiting_of};
use crate::security::Secure;

fn pod(manifest: serde_json::Value) -> Pod {
    serde_json::from_value(manifest).expect("a valid pod manifest")
}

/// An in-process API server (no agent): admission and validation only.
async fn api() -> (
    skiff_apiserver::ApiServer,
    tonic::transport::Channel,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    (server, channel, dir)
}

/// Polls `pod` until `container` waits on its subPath; that pod (the
/// waiting reason alternates with the crash backoff's: a later read may
/// show `CrashLoopBackOff`).
async fn refused_sub_path(env: &crate::agent::Env, pod: &str, container: &str) -> Pod {
    let mut seen = None;
    skiff_testkit::wait_until(
        "the container waits on its subPath",
        Duration::from_secs(90),
        async || {
            let p = env.get(pod).await;
            let refused = waits_on_sub_path(&p, container);
            seen = Some(p);
            refused
        },
    )
    .await;
    seen.expect("polled at least once")
}

fn waits_on_sub_path(p: &Pod, container: &str) -> bool {
    waiting_of(p, container)
        .is_some_and(|w| w.reason == "CreateContainerConfigError" && w.message.contains("subPath"))
}

// === a pod reaching the node through its volumes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_in_an_empty_dir_does_not_give_a_sub_path_the_host() {
    let env = env("symlink").await;
    let image = env.image;
    // The attack of CVE-2017-1002101: an init container plants a symlink
    // to the host's `/`, the app mounts it as a subPath.
    env.create(json!({
        "metadata": {"name": "escape"},
        "spec": {
            "initContainers": [{"name": "plant", "image": image,
                "command": ["ln", "-s", "/", "/v/escape"],
                "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
            "containers": [
                {"name": "app", "image": image, "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "v", "mountPath": "/host", "subPath": "escape"}]},
                {"name": "inside", "image": image, "command": ["sleep", "3600"],
                 "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "fine/below"}]}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}]
        }
    }))
    .await;
    env.wait_for("escape", "inside running", Duration::from_secs(60), |p| {
        crate::agent::running(p, "inside")
    })
    .await;
    let pod = refused_sub_path(&env, "escape", "app").await;
    let waiting = waiting_of(&pod, "app").unwrap();
    assert!(
        waiting
            .message
            .contains(r#"subPath "escape" leads outside the volume"#),
        "{waiting:?}"
    );
    // It stays refused: the agent does not give in on a retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    refused_sub_path(&env, "escape", "app").await;
    assert!(!crate::agent::running(&env.get("escape").await, "app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_path_swapped_for_a_symlink_while_running_is_refused_at_the_restart() {
    let env = env("swap").await;
    let image = env.image;
    // Were the swap followed, the victim's restart would write this file
    // at the host's root.
    let marker = format!("skiff-escape-{}", std::process::id());
    let on_host = std::path::Path::new("/").join(&marker);
    env.create(json!({
        "metadata": {"name": "swap"},
        "spec": {
            "containers": [
                {"name": "swapper", "image": image,
                 "command": ["sh", "-c", "until [ -f /v/data/started ]; do sleep 0.2; done; rm -rf /v/data; ln -s / /v/data; sleep 3600"],
                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                {"name": "victim", "image": image,
                 "command": ["sh", "-c", format!("touch /data/{marker}; touch /data/started; sleep 1; exit 1")],
                 "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": "data"}]}
            ],
            "volumes": [{"name": "v", "emptyDir": {}}]
        }
    }))
    .await;
    let pod = refused_sub_path(&env, "swap", "victim").await;
    let waiting = waiting_of(&pod, "victim").unwrap();
    assert!(
        waiting.message.contains("leads outside the volume"),
        "{waiting:?}"
    );
    let escaped = on_host.exists();
    if escaped {
        let _ = std::fs::remove_file(&on_host);
    }
    assert!(
        !escaped,
        "the victim wrote {} on the host",
        on_host.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_paths_climbing_out_are_refused_by_the_api() {
    let (_server, channel, _dir) = api().await;
    let pods = Api::<Pod>::new(channel.clone());
    let climbing = pod(json!({
        "metadata": {"name": "climb", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "i",
                "volumeMounts": [{"name": "cm", "mountPath": "/x", "subPath": "a/../../etc"}]}],
            "volumes": [{"name": "cm", "configMap": {"name": "cm",
                "items": [{"key": "k", "path": "../../etc/cron.d/evil"}]}}]
        }
    }));
    let err = pods.create(climbing).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    for field in [
        "spec.volumes[0].configMap.items[0].path",
        "spec.containers[0].volumeMounts[0].subPath",
    ] {
        assert!(err.message().contains(field), "{field} not named: {err}");
    }
    assert!(err.message().contains("must not contain '..'"), "{err}");
    let projected = pod(json!({
        "metadata": {"name": "projected", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "i"}],
            "volumes": [{"name": "p", "projected": {"sources": [
                {"downwardAPI": {"items": [{"path": "/etc/passwd", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"serviceAccountToken": {"path": "..token"}}
            ]}}]
        }
    }));
    let err = pods.create(projected).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("must be a relative path"), "{err}");
    assert!(err.message().contains("must not start with '..'"), "{err}");
    // Keys become file names: `..data` is the projection's own.
    let mut cm = ConfigMap::default();
    skiff::Resource::metadata_mut(&mut cm).name = "dots".into();
    skiff::Resource::metadata_mut(&mut cm).namespace = "default".into();
    cm.data.insert("..data".into(), "x".into());
    let err = Api::<ConfigMap>::new(channel).create(cm).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        pods.get("default", "climb").await.is_err(),
        "nothing was stored"
    );
}

// === Pod Security admission ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_access_is_refused_by_default_in_kubernetes_words() {
    let (server, channel, _dir) = api().await;
    let pods = Api::<Pod>::new(channel.clone());
    let host_root = |ns: &str| {
        pod(json!({
            "metadata": {"name": "root", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "i",
                        "volumeMounts": [{"name": "root", "mountPath": "/host"}]}],
                     "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}
        }))
    };
    let docker_sock = |ns: &str| {
        pod(json!({
            "metadata": {"name": "docker", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "i"}],
                     "volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}]}
        }))
    };
    let privileged = |ns: &str| {
        pod(json!({
            "metadata": {"name": "privileged", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "i",
                        "securityContext": {"privileged": true}}]}
        }))
    };
    let host_network = |ns: &str| {
        pod(json!({
            "metadata": {"name": "hostnet", "namespace": ns},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "i"}]}
        }))
    };
    let refusals = [
        (
            host_root("default"),
            r#"pods "root" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "root")"#,
        ),
        (
            docker_sock("default"),
            r#"pods "docker" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "sock")"#,
        ),
        (
            privileged("default"),
            r#"pods "privileged" is forbidden: violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#,
        ),
        (
            host_network("default"),
            r#"pods "hostnet" is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#,
        ),
    ];
    for (pod, message) in refusals {
        let err = pods.create(pod).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert_eq!(err.message(), message);
    }
    assert!(
        pods.list(ListRequest::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing refused was stored"
    );

    // A namespace labelled privileged runs them, as does kube-system.
    let namespaces = Api::<Namespace>::new(channel.clone());
    let namespace = |name: &str, level: &str| {
        let mut ns = Namespace::default();
        let meta = skiff::Resource::metadata_mut(&mut ns);
        meta.name = name.into();
        meta.labels
            .insert(skiff::podsecurity::ENFORCE_LABEL.into(), level.into());
        ns
    };
    namespaces
        .create(namespace("trusted", "privileged"))
        .await
        .unwrap();
    for pod in [
        host_root("trusted"),
        docker_sock("trusted"),
        privileged("trusted"),
        host_network("trusted"),
        host_root("kube-system"),
    ] {
        pods.create(pod)
            .await
            .expect("allowed where the policy says so");
    }

    // Restricted refuses a pod that would run as root.
    namespaces
        .create(namespace("strict", "restricted"))
        .await
        .unwrap();
    let err = pods
        .create(pod(json!({
            "metadata": {"name": "rooted", "namespace": "strict"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        })))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains(r#"violates PodSecurity "restricted:latest""#),
        "{err}"
    );
    assert!(err.message().contains("runAsNonRoot != true"), "{err}");
    pods.create(pod(json!({
        "metadata": {"name": "hardened", "namespace": "strict"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }
    })))
    .await
    .expect("a hardened pod passes restricted");

    // A workload's template is stored (its pods are judged as created).
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "hosty", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "h"}},
                 "template": {"metadata": {"labels": {"app": "h"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}],
                                       "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}
    }))
    .unwrap();
    Api::<Deployment>::new(channel.clone())
        .create(deployment)
        .await
        .expect("templates are warned about, not refused");
    // Its ReplicaSet's pods are refused, which the ReplicaSet's Events say
    // in Kubernetes' words.
    let _controllers =
        skiff_testkit::controller_manager(&format!("http://{}", server.addr), &[]).unwrap();
    let events = Api::<Event>::new(channel.clone());
    skiff_testkit::wait_until(
        "a FailedCreate event naming the policy",
        Duration::from_secs(30),
        async || {
            events
                .list(ListRequest {
                    namespace: "default".into(),
                    ..Default::default()
                })
                .await
                .is_ok_and(|list| {
                    list.items.iter().any(|e| {
                        e.reason == "FailedCreate"
                            && e.r#type == "Warning"
                            && e.involved_object.as_ref().is_some_and(|o| o.kind == "ReplicaSet")
                            && e.message.starts_with("Error creating: pods \"hosty-")
                            && e.message.contains(
                                r#"violates PodSecurity "baseline:latest": hostPath volumes (volume "root")"#,
                            )
                    })
                })
        },
    )
    .await;

    // Labels that do not parse are refused on the namespace itself.
    let err = namespaces
        .create(namespace("lax", "lenient"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

// === the port: unauthenticated connections ===

/// Bytes of a TLS ClientHello that never completes.
const PARTIAL_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_tls_connections_do_not_stall_the_api() {
    skiff_testkit::raise_open_file_limit();
    let c = Secure::start(&[]);
    let addr = c.server.addr;
    // 3,000 connections from one client that never finish a handshake:
    // half say nothing, half send part of a ClientHello.
    let held: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..3000)
            .map(|i| {
                let mut s = TcpStream::connect(addr).expect("connecting");
                if i % 2 == 1 {
                    let _ = s.write_all(PARTIAL_HELLO);
                }
                s
            })
            .collect()
    })
    .await
    .unwrap();
    let opened = Instant::now();
    // The admin, over fresh connections (a new handshake each time), all
    // along.
    let mut slowest = Duration::ZERO;
    while opened.elapsed() < skiff_pki::tls::SERVER_HANDSHAKE_TIMEOUT + Duration::from_secs(2) {
        let started = Instant::now();
        let nodes = Api::<Node>::new(c.admin());
        let listed =
            tokio::time::timeout(Duration::from_secs(5), nodes.list(ListRequest::default()))
                .await
                .expect("the admin's call answered")
                .expect("the admin may list nodes");
        assert!(listed.items.is_empty());
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("slowest admin call among 3,000 idle connections: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "an admin call took {slowest:?} while unauthenticated connections idled"
    );
    // Every one of them was closed by the server by now.
    let open = tokio::task::spawn_blocking(move || {
        held.into_iter()
            .filter(|s| {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 64];
                // Closed: EOF, a reset, or the server's TLS alert and then EOF.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            return true;
                        }
                        Err(_) => return false,
                    }
                }
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(open, 0, "connections left open past the handshake deadline");
}

// === a node's certificate ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_events_but_cannot_read_any() {
    let c = Secure::start(&[]);
    let node = c.as_user("system:node:n1", &["system:nodes"]);
    let events = Api::<Event>::new(node);
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "n1.started", "namespace": "default"},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "reason": "Starting", "message": "agent started", "type": "Normal", "count": 1
    }))
    .unwrap();
    let written = events.create(event).await.expect("a node may write events");
    let mut bumped = written.clone();
    bumped.count = 2;
    events.update(bumped).await.expect("and count repeats");
    for namespace in ["default", "kube-system", ""] {
        let err = events
            .list(ListRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "list in {namespace:?}: {err}"
        );
    }
    let err = events.get("default", "n1.started").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

/// A node may read volumes, and get a claim only when a pod bound to it
/// uses it; it may update a volume only to finish removing a deleted
/// local-path volume of its own node — never another node's volume, a
/// volume still in use, or one made by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_touches_only_its_own_deleted_local_volumes_and_its_pods_claims() {
    use skiff::pb::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let c = Secure::start(&[]);
    let admin = c.admin();
    let local_volume = |name: &str, node: &str| -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "skiff.io/local-path"},
                         "finalizers": ["skiff.io/local-path"]},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "hostPath": {"path": format!("/var/lib/skiff/storage/{name}")},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
        }))
        .unwrap()
    };
    let volumes = Api::<PersistentVolume>::new(admin.clone());
    for (name, node) in [("mine", "n1"), ("theirs", "n2"), ("mine-live", "n1")] {
        volumes.create(local_volume(name, node)).await.unwrap();
    }
    for name in ["mine", "theirs"] {
        volumes
            .delete(skiff::pb::api::v1::DeleteRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let node = Api::<PersistentVolume>::new(c.as_user("system:node:n1", &["system:nodes"]));
    assert!(
        node.list(ListRequest::default()).await.is_ok(),
        "volumes are readable"
    );
    let release = async |name: &str, finalizer: &str| {
        let mut pv = node.get("", name).await.unwrap();
        pv.metadata
            .as_mut()
            .unwrap()
            .finalizers
            .retain(|f| f != finalizer);
        pv.status = None;
        node.update(pv).await
    };
    release("mine", "skiff.io/local-path")
        .await
        .expect("its own deleted local volume");
    for (name, finalizer) in [
        ("theirs", "skiff.io/local-path"),
        ("mine-live", "skiff.io/local-path"),
        // The claim's protection is the binder's to lift.
        ("mine", "kubernetes.io/pv-protection"),
    ] {
        let err = release(name, finalizer).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err}");
        assert!(
            err.message()
                .contains("deleted local-path volumes of its own node"),
            "{err}"
        );
    }
    // Claims: only those its pods use.
    let claims = Api::<PersistentVolumeClaim>::new(admin.clone());
    for name in ["used", "other"] {
        claims
            .create(serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            })).unwrap())
            .await
            .unwrap();
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}],
                 "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "used"}}]}
    }))
    .unwrap();
    // No controller manager here: the account pods run as is made by hand.
    let account: skiff::pb::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default", "namespace": "default"}}))
            .unwrap();
    let _ = Api::new(admin.clone()).create(account).await;
    Api::<Pod>::new(admin).create(pod).await.unwrap();
    let node_claims =
        Api::<PersistentVolumeClaim>::new(c.as_user("system:node:n1", &["system:nodes"]));
    node_claims
        .get("default", "used")
        .await
        .expect("its pod's claim");
    let err = node_claims.get("default", "other").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = node_claims.list(ListRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

// === what the API decodes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_messages_are_the_callers_error() {
    let (_server, channel, _dir) = api().await;
    // A Value nested 200 deep (prost stops at 100).
    let mut value = skiff::wkt::Value::from(1.0);
    for _ in 0..200 {
        value = skiff::wkt::Value::from(vec![value]);
    }
    let mut deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "deep", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {}}}
    }))
    .unwrap();
    deployment
        .spec
        .as_mut()
        .and_then(|s| s.strategy.as_mut())
        .and_then(|s| s.rolling_update.as_mut())
        .unwrap()
        .max_surge = Some(value);
    let deployments = Api::<Deployment>::new(channel.clone());
    let err = deployments.create(deployment).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("recursion"), "{err}");

    // A message over the server's limit is refused before it is read.
    let mut cm = ConfigMap::default();
    skiff::Resource::metadata_mut(&mut cm).name = "huge".into();
    skiff::Resource::metadata_mut(&mut cm).namespace = "default".into();
    cm.data.insert("blob".into(), "x".repeat(5 << 20));
    let configmaps = Api::<ConfigMap>::new(channel);
    let err = configmaps.create(cm).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err}"
    );
    assert!(
        configmaps.get("default", "huge").await.is_err(),
        "nothing was stored"
    );
    assert!(
        deployments.get("default", "deep").await.is_err(),
        "nothing was stored"
    );
}

/// A gRPC call dressed as something else: a caller without rights sends
/// a well-formed gRPC Create of a ClusterRoleBinding (itself as
/// cluster-admin) with a content-type that is not gRPC's, hoping the
/// Kubernetes HTTP API's checks (authentication only, authorization done
/// by the HTTP handlers) are applied instead of the gRPC method's. Which
/// checks apply follows the path, never a header the caller chooses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_with_a_foreign_content_type_is_still_authorized_as_grpc() {
    use prost::Message as _;
    use skiff::pb::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    use tower::ServiceExt as _;
    let c = Secure::start(&[]);
    let mallory = c.as_user("mallory", &[]);
    let mut binding = ClusterRoleBinding {
        role_ref: Some(RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        }),
        subjects: vec![Subject {
            kind: "User".into(),
            name: "mallory".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    skiff::Resource::metadata_mut(&mut binding).name = "mallory-admin".into();
    let message = binding.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    for content_type in ["application/octet-stream", "application/json", ""] {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "{}/skiff.rbac.v1.ClusterRoleBindings/Create",
                c.server.url()
            ))
            .header("te", "trailers");
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let request = request
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(frame.clone()),
            )))
            .unwrap();
        let response = mallory.clone().oneshot(request).await.unwrap();
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            status.as_deref(),
            Some("7"),
            "{content_type:?}: not refused as PERMISSION_DENIED: {response:?}"
        );
    }
    let err = Api::<ClusterRoleBinding>::new(c.admin())
        .get("", "mallory-admin")
        .await
        .expect_err("no binding was made");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// A tenant who may create Ingresses in its own namespace tries to take
/// another tenant's traffic through the ingress controller: a catch-all
/// rule without a host, a default backend, a rule for the victim's host
/// under a path the victim does not route, a Host header that names one
/// host while the request line names another, and paths that climb out of
/// the victim's rule. None of it reaches the attacker's backend, and the
/// victim's backend only ever sees the victim's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_take_another_tenants_host_through_the_ingress() {
    let local = crate::ingress::Local::start().await;
    for ns in ["victim", "attacker"] {
        let mut namespace = Namespace::default();
        skiff::Resource::metadata_mut(&mut namespace).name = ns.into();
        Api::<Namespace>::new(local.channel.clone())
            .create(namespace)
            .await
            .unwrap();
    }
    local.backend("victim", "shop").await;
    local.backend("attacker", "trap").await;
    let route = |host: Option<&str>, path: &str, service: &str| {
        let mut rule = json!({"http": {"paths": [{"path": path, "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": 80}}}}]}});
        if let Some(host) = host {
            rule["host"] = json!(host);
        }
        rule
    };
    local
        .ingress(
            "victim",
            "shop",
            json!({"rules": [route(Some("shop.example"), "/app", "shop")]}),
        )
        .await;
    skiff_testkit::wait_until("the victim's route", Duration::from_secs(20), async || {
        local
            .get("shop.example", "/app")
            .await
            .contains("backend: shop")
    })
    .await;
    // The attacker's catch-all, default backend and a path under the
    // victim's host.
    local
        .ingress(
            "attacker",
            "catch-all",
            json!({
                "defaultBackend": {"service": {"name": "trap", "port": {"number": 80}}},
                "rules": [route(None, "/", "trap"), route(Some("other.example"), "/", "trap")],
            }),
        )
        .await;
    skiff_testkit::wait_until(
        "the attacker's route",
        Duration::from_secs(20),
        async || {
            local
                .get("other.example", "/")
                .await
                .contains("backend: trap")
        },
    )
    .await;
    for (host, path) in [
        ("shop.example", "/elsewhere"),
        ("shop.example.", "/elsewhere"),
        ("SHOP.example:80", "/"),
    ] {
        let answer = local.get(host, path).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{host}{path}: {answer}");
        assert!(!answer.contains("backend: trap"), "{host}{path}: {answer}");
    }
    // Paths that would climb out of /app at the backend are refused.
    for path in [
        "/app/../admin",
        "/app/%2e%2e/admin",
        "/app/..%2fadmin",
        "/app//../admin",
    ] {
        let answer = local.get("shop.example", path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    // A request line naming the victim with a Host of the attacker's
    // (or the other way round) reaches the backend with the routed host.
    let forged = crate::ingress::raw(
        local.http,
        "GET http://shop.example/app HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(forged.contains("backend: shop"), "{forged}");
    assert!(forged.contains("host: shop.example"), "{forged}");
    assert!(!forged.contains("other.example"), "{forged}");
    local.stop().await;
}
