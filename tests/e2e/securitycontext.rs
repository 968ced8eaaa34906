//! Security contexts and host namespaces on real Docker: what a pod asks
//! of its user, groups, capabilities, root filesystem, privilege
//! escalation, seccomp, sysctls, fsGroup and host namespaces is what its
//! processes get, seen from inside them.

use std::time::Duration;

use serde_json::json;
use skiff::pb::core::v1::Namespace;
use skiff_client::Api;

use crate::agent::{Env, env, phase, running, waiting_of};

/// The lines a container printed, once it printed `marker`.
async fn output(env: &Env, pod: &str, container: &str, marker: &str) -> String {
    let mut last = String::new();
    skiff_testkit::wait_until(
        &format!("{pod}/{container} prints {marker:?}"),
        Duration::from_secs(60),
        async || {
            last = env.logs(pod, container, false).await.unwrap_or_default();
            last.contains(marker)
        },
    )
    .await;
    last
}

/// The value of `Key:` in a `/proc/self/status` dump.
fn status_field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map_or("", str::trim)
}

async fn enforce(env: &Env, level: &str) {
    let namespaces = Api::<Namespace>::new(env.channel.clone());
    skiff_testkit::modify(&namespaces, "", "default", |ns| {
        skiff::Resource::metadata_mut(ns).labels.insert(
            skiff::podsecurity::ENFORCE_LABEL.to_string(),
            level.to_string(),
        );
    })
    .await;
}

const STATUS: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_pod_runs_as_its_user_and_groups_without_capabilities_and_a_privileged_one_is_refused()
 {
    let env = env("secctx").await;
    enforce(&env, "restricted").await;
    let image = env.image;
    let locked = json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}
    });
    env.create(json!({
        "metadata": {"name": "locked"},
        "spec": {
            "securityContext": {
                "runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [4000],
                "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"},
                "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "20000 30000"}]
            },
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "Never",
                "securityContext": locked,
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "command": ["sh", "-c", format!(
                    "echo uid=$(id -u) gid=$(id -g) groups=$(id -G | tr ' ' ,); \
                     echo data-group=$(stat -c %g /data); \
                     touch /data/mine && echo file-group=$(stat -c %g /data/mine); \
                     echo root=$(awk '$2 == \"/\" {{split($4, o, \",\"); print o[1]}}' /proc/mounts); \
                     echo ports=$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\\t' ' '); \
                     {STATUS}; echo done; exec sleep 3600")]
            }]
        }
    }))
    .await;
    let out = output(&env, "locked", "app", "done").await;
    assert!(out.contains("uid=1000 gid=3000"), "{out}");
    let groups = out
        .lines()
        .find_map(|l| l.split("groups=").nth(1))
        .unwrap_or_default();
    for g in ["3000", "2000", "4000"] {
        assert!(groups.split(',').any(|x| x == g), "group {g} in {out}");
    }
    assert!(
        out.contains("data-group=2000"),
        "fsGroup owns the emptyDir: {out}"
    );
    assert!(
        out.contains("file-group=2000"),
        "new files inherit it: {out}"
    );
    assert!(
        out.contains("root=ro"),
        "the root filesystem is mounted read-only: {out}"
    );
    assert!(out.contains("ports=20000 30000"), "{out}");
    // Not even in the bounding set (a non-root uid has no effective
    // capabilities anyway).
    assert_eq!(status_field(&out, "CapBnd"), "0000000000000000", "{out}");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
    assert_eq!(
        status_field(&out, "Seccomp"),
        "2",
        "RuntimeDefault filters: {out}"
    );

    // The restricted profile refuses a privileged pod, in Kubernetes' words.
    let refused = env
        .pods()
        .create(
            serde_json::from_value(json!({
                "metadata": {"name": "root", "namespace": "default"},
                "spec": {"containers": [{"name": "app", "image": image,
                    "securityContext": {"privileged": true}}]}
            }))
            .unwrap(),
        )
        .await
        .expect_err("a privileged pod in a restricted namespace");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(
            "violates PodSecurity \"restricted:latest\": privileged (container \"app\" must not set securityContext.privileged=true)"
        ),
        "{}",
        refused.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_net_raw_makes_ping_fail_and_run_as_non_root_refuses_a_root_image() {
    let env = env("netraw").await;
    let image = env.image;
    let ping = "ping -c 1 -W 2 127.0.0.1 >/dev/null 2>&1 && echo ping-ok || echo ping-failed; exec sleep 3600";
    env.create(json!({
        "metadata": {"name": "ping"},
        "spec": {
            // No unprivileged ICMP sockets: ping needs a raw socket.
            "securityContext": {"sysctls": [{"name": "net.ipv4.ping_group_range", "value": "1 0"}]},
            "containers": [
                {"name": "raw", "image": image, "imagePullPolicy": "Never",
                 "command": ["sh", "-c", ping]},
                {"name": "noraw", "image": image, "imagePullPolicy": "Never",
                 "securityContext": {"capabilities": {"drop": ["NET_RAW"]}},
                 "command": ["sh", "-c", ping]}
            ]
        }
    }))
    .await;
    assert!(
        output(&env, "ping", "raw", "ping-")
            .await
            .contains("ping-ok")
    );
    assert!(
        output(&env, "ping", "noraw", "ping-")
            .await
            .contains("ping-failed")
    );

    let pod = env
        .create(json!({
            "metadata": {"name": "nonroot"},
            "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                "securityContext": {"runAsNonRoot": true},
                "command": ["sleep", "3600"]}]}
        }))
        .await;
    let uid = pod.metadata.unwrap().uid;
    let pod = env
        .wait_for(
            "nonroot",
            "a config error for the root image",
            Duration::from_secs(60),
            |p| waiting_of(p, "app").is_some_and(|w| w.reason == "CreateContainerConfigError"),
        )
        .await;
    assert_eq!(
        waiting_of(&pod, "app").unwrap().message,
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_default({uid})\", container: app)"
        )
    );
    assert!(!running(&pod, "app"));
    assert_eq!(phase(&pod), "Pending");
}

/// `net=net:[4026531992] pid=... ipc=...`: the host's namespaces as the
/// Docker engine sees them (a container of the host's), whatever
/// namespaces the test itself runs in.
fn host_namespaces(image: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "run", "--rm", "--label", "io.skiff.managed=probe", "--network", "host", "--pid",
            "host", "--ipc", "host", image, "sh", "-c",
            "echo net=$(readlink /proc/self/ns/net) pid=$(readlink /proc/self/ns/pid) ipc=$(readlink /proc/self/ns/ipc)",
        ])
        .output()
        .expect("running docker");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether this machine's Docker engine can run a privileged container
/// at all (one whose own capability bounding set lacks some capability
/// cannot: runc fails to "apply caps").
fn engine_runs_privileged(image: &str) -> bool {
    std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--privileged",
            "--label",
            "io.skiff.managed=probe",
            image,
            "true",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_and_host_namespace_pods_get_the_hosts() {
    let env = env("hostns").await;
    env.allow_privileged().await;
    let image = env.image;
    let show = format!(
        "echo net=$(readlink /proc/self/ns/net) pid=$(readlink /proc/self/ns/pid) ipc=$(readlink /proc/self/ns/ipc); {STATUS}; echo done; exec sleep 3600"
    );
    env.create(json!({
        "metadata": {"name": "host"},
        "spec": {
            "hostNetwork": true, "hostPID": true, "hostIPC": true,
            "containers": [
                {"name": "app", "image": image, "imagePullPolicy": "Never",
                 "securityContext": {"seccompProfile": {"type": "Unconfined"}},
                 "command": ["sh", "-c", show.clone()]}
            ]
        }
    }))
    .await;
    let host = output(&env, "host", "app", "done").await;
    let hosts = host_namespaces(image);
    for kind in hosts.split(' ') {
        assert!(host.contains(kind), "{kind} is the host's: {host}");
    }
    assert_eq!(status_field(&host, "Seccomp"), "0", "{host}");
    // A host-network pod's address is its node's.
    let status = env.get("host").await.status.unwrap();
    assert!(!status.pod_ip.is_empty());
    assert_eq!(status.pod_ip, status.host_ip);

    // A pod without them has its own.
    env.create(json!({
        "metadata": {"name": "own"},
        "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
            "command": ["sh", "-c", show.clone()]}]}
    }))
    .await;
    let own = output(&env, "own", "app", "done").await;
    for kind in hosts.split(' ') {
        assert!(!own.contains(kind), "{kind} is the pod's own: {own}");
    }
    assert_eq!(status_field(&own, "Seccomp"), "2", "{own}");

    env.create(json!({
        "metadata": {"name": "priv"},
        "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
            "securityContext": {"privileged": true}, "command": ["sh", "-c", show]}]}
    }))
    .await;
    if engine_runs_privileged(image) {
        let privileged = output(&env, "priv", "app", "done").await;
        let full = u64::from_str_radix(status_field(&privileged, "CapEff"), 16).unwrap();
        let default = u64::from_str_radix(status_field(&own, "CapEff"), 16).unwrap();
        assert!(
            full > default && full & default == default,
            "privileged has every capability: {privileged} vs {own}"
        );
        assert_eq!(status_field(&privileged, "Seccomp"), "0", "{privileged}");
    } else {
        // Said on the pod, not hidden.
        eprintln!("this Docker engine cannot run privileged containers; checking the pod says so");
        env.wait_for(
            "priv",
            "the engine's refusal on the pod",
            Duration::from_secs(60),
            |p| {
                waiting_of(p, "app")
                    .is_some_and(|w| w.reason == "RunContainerError" && w.message.contains("caps"))
            },
        )
        .await;
    }
}
