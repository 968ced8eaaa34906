//! A pod's life on real Docker: postStart runs before the pod's next
//! container starts and a failing one restarts its container, preStop
//! runs before the container gets SIGTERM, a pod past its
//! activeDeadlineSeconds fails, hostAliases reach /etc/hosts.

use std::time::Duration;

use serde_json::json;
use skiff::pb::core::v1::Event;

use crate::agent::{container, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_runs_before_the_next_container_and_pre_stop_before_sigterm() {
    let env = env("hooks").await;
    // The test reads what the hooks wrote through a hostPath.
    env.allow_privileged().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "hooks"},
        "spec": {
            "terminationGracePeriodSeconds": 20,
            "volumes": [{"name": "data", "hostPath": {"path": data, "type": "Directory"}}],
            "containers": [
                {"name": "first", "image": image, "imagePullPolicy": "Never",
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                 "lifecycle": {
                     "postStart": {"exec": {"command": ["sh", "-c", "sleep 1; echo hook > /data/poststart"]}},
                     "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /data/prestop"]}}
                 },
                 "command": ["sh", "-c",
                    "trap 'if [ -f /data/prestop ]; then echo after-prestop; else echo before-prestop; fi > /data/term; exit 0' TERM; \
                     while true; do sleep 0.1; done"]},
                {"name": "second", "image": image, "imagePullPolicy": "Never",
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                 "command": ["sh", "-c",
                    "if [ -f /data/poststart ]; then echo second-after-hook; else echo second-before-hook; fi; exec sleep 3600"]}
            ]
        }
    }))
    .await;
    let mut said = String::new();
    skiff_testkit::wait_until(
        "the second container says",
        Duration::from_secs(60),
        async || {
            said = env.logs("hooks", "second", false).await.unwrap_or_default();
            said.contains("second-")
        },
    )
    .await;
    assert!(
        said.contains("second-after-hook"),
        "postStart ran first: {said}"
    );

    env.delete("hooks").await;
    let term = dir.path().join("term");
    skiff_testkit::wait_until(
        "the first container handles SIGTERM",
        Duration::from_secs(30),
        async || term.exists(),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&term).unwrap().trim(),
        "after-prestop",
        "preStop ran before SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_post_start_hook_is_an_event_and_restarts_its_container() {
    let env = env("badhook").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "badhook"},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo no >&2; exit 3"]}}},
            "command": ["sleep", "3600"]}]}
    }))
    .await;
    env.wait_for(
        "badhook",
        "a restart after the failed hook",
        Duration::from_secs(60),
        |p| container(p, "app").is_some_and(|c| c.restart_count >= 1),
    )
    .await;
    let mut found = None;
    skiff_testkit::wait_until(
        "the FailedPostStartHook event",
        Duration::from_secs(30),
        async || {
            found = skiff_testkit::list::<Event>(&env.channel, "default", "")
                .await
                .into_iter()
                .find(|e| e.reason == "FailedPostStartHook");
            found.is_some()
        },
    )
    .await;
    let message = found.unwrap().message;
    assert!(
        message.starts_with("Exec lifecycle hook ([\"sh\", \"-c\", \"echo no >&2; exit 3\"]) for Container \"app\" in Pod \"badhook_default(")
            && message.contains("exited with 3"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_aliases_reach_every_containers_etc_hosts() {
    let env = env("aliases").await;
    let image = env.image;
    let show = "grep -E 'db.internal|cache' /etc/hosts; echo done; exec sleep 3600";
    env.create(json!({
        "metadata": {"name": "aliases"},
        "spec": {
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["db.internal", "cache"]}],
            "containers": [
                {"name": "a", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", show]},
                {"name": "b", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", show]}
            ]
        }
    }))
    .await;
    for name in ["a", "b"] {
        let mut out = String::new();
        skiff_testkit::wait_until(
            &format!("{name} prints its hosts"),
            Duration::from_secs(60),
            async || {
                out = env.logs("aliases", name, false).await.unwrap_or_default();
                out.contains("done")
            },
        )
        .await;
        for host in ["db.internal", "cache"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("10.1.2.3") && l.split_whitespace().any(|w| w == host)),
                "{name}: {host} in {out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_past_its_active_deadline_fails_and_stops() {
    let env = env("deadline").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "deadline"},
        "spec": {"activeDeadlineSeconds": 2, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]}]}
    }))
    .await;
    let pod = env
        .wait_for(
            "deadline",
            "the pod fails past its deadline",
            Duration::from_secs(60),
            |p| p.status.as_ref().is_some_and(|s| s.phase == "Failed"),
        )
        .await;
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.reason, "DeadlineExceeded");
    assert_eq!(
        status.message,
        "Pod was active on the node longer than the specified deadline"
    );
    env.wait_for(
        "deadline",
        "its container stopped",
        Duration::from_secs(30),
        |p| {
            container(p, "app")
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_empty_dir_is_one_tmpfs_of_its_size_shared_by_the_pods_containers() {
    let env = env("shm").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "shm"},
        "spec": {
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
            "containers": [
                {"name": "writer", "image": image, "imagePullPolicy": "Never",
                 "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                 "command": ["sh", "-c", "echo from-writer > /dev/shm/note; exec sleep 3600"]},
                {"name": "reader", "image": image, "imagePullPolicy": "Never",
                 "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                 "command": ["sh", "-c",
                    "until [ -f /dev/shm/note ]; do sleep 0.1; done; cat /dev/shm/note; \
                     grep ' /dev/shm ' /proc/mounts; df -k /dev/shm | tail -1; echo done; exec sleep 3600"]}
            ]
        }
    }))
    .await;
    let mut out = String::new();
    skiff_testkit::wait_until("the reader reports", Duration::from_secs(60), async || {
        out = env.logs("shm", "reader", false).await.unwrap_or_default();
        out.contains("done")
    })
    .await;
    assert!(out.contains("from-writer"), "shared: {out}");
    assert!(
        out.lines().any(|l| l.starts_with("tmpfs /dev/shm tmpfs")),
        "a tmpfs: {out}"
    );
    // 64 MiB = 65536 KiB.
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("65536")),
        "of its size: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_messages_come_from_the_file_or_the_log_on_error() {
    let env = env("termmsg").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "termmsg"},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "file", "image": image, "imagePullPolicy": "Never",
             "command": ["sh", "-c", "echo 'all done: 42 rows' > /dev/termination-log; exit 0"]},
            {"name": "custom", "image": image, "imagePullPolicy": "Never",
             "terminationMessagePath": "/tmp/why",
             "command": ["sh", "-c", "mkdir -p /tmp; echo 'custom path' > /tmp/why; exit 1"]},
            {"name": "logs", "image": image, "imagePullPolicy": "Never",
             "terminationMessagePolicy": "FallbackToLogsOnError",
             "command": ["sh", "-c", "echo 'panic: out of cheese'; exit 2"]}
        ]}
    }))
    .await;
    let pod = env
        .wait_for(
            "termmsg",
            "every container ends",
            Duration::from_secs(60),
            |p| {
                ["file", "custom", "logs"].iter().all(|c| {
                    container(p, c)
                        .is_some_and(|s| s.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                })
            },
        )
        .await;
    let message = |name: &str| {
        container(&pod, name)
            .and_then(|c| c.state.clone())
            .and_then(|s| s.terminated)
            .map(|t| t.message)
            .unwrap_or_default()
    };
    assert_eq!(message("file").trim(), "all done: 42 rows");
    assert_eq!(message("custom").trim(), "custom path");
    assert_eq!(message("logs").trim(), "panic: out of cheese");
}

/// Runs the `skiff` CLI against the env's server: (success, stdout + stderr).
fn skiff_cli(env: &crate::agent::Env, args: &[&str]) -> (bool, String) {
    let url = env.server_url();
    let out = std::process::Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(args)
        .args(["--server", url.as_str()])
        .output()
        .expect("running skiff");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cordons_refuses_unmanaged_pods_and_with_force_removes_them() {
    let env = env("drain").await;
    let image = env.image;
    env.create(json!({
        "metadata": {"name": "solo"},
        "spec": {"terminationGracePeriodSeconds": 60,
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]}]}
    }))
    .await;
    env.wait_for("solo", "the pod runs", Duration::from_secs(60), |p| {
        crate::agent::running(p, "app")
    })
    .await;
    let node = env.node_name().to_string();
    let (ok, out) = skiff_cli(&env, &["drain", &node]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("node/{node} cordoned")), "{out}");
    assert!(
        out.contains(
            "cannot delete Pods that declare no controller (use --force to override): default/solo"
        ),
        "{out}"
    );
    let nodes = skiff_client::Api::<skiff::pb::core::v1::Node>::new(env.channel.clone());
    let cordoned = |n: &skiff::pb::core::v1::Node| n.spec.as_ref().is_some_and(|s| s.unschedulable);
    assert!(cordoned(&nodes.get("", &node).await.unwrap()));
    assert!(
        crate::agent::running(&env.get("solo").await, "app"),
        "nothing was removed"
    );

    // Its own grace (60 s: sleep ignores SIGTERM) would outlast the
    // timeout; the eviction's grace period does not.
    let (ok, out) = skiff_cli(
        &env,
        &[
            "drain",
            &node,
            "--force",
            "--grace-period",
            "1",
            "--timeout",
            "30s",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("node/{node} already cordoned")),
        "{out}"
    );
    assert!(
        out.contains("evicting pod default/solo")
            && out.contains("pod/solo evicted")
            && out.contains(&format!("node/{node} drained")),
        "{out}"
    );
    assert!(
        env.pods().get("default", "solo").await.is_err(),
        "the pod is gone"
    );

    let (ok, out) = skiff_cli(&env, &["uncordon", &node]);
    assert!(
        ok && out.contains(&format!("node/{node} uncordoned")),
        "{out}"
    );
    assert!(!cordoned(&nodes.get("", &node).await.unwrap()));
}
