//! The control plane's availability: API servers in front of an etcd
//! cluster, and what clients see when a store member dies or hangs.

use std::time::{Duration, Instant};

use skiff::pb::core::v1::ConfigMap;
use skiff::pb::meta::v1::ObjectMeta;
use skiff_client::Api;
use skiff_testkit::ServerProcess;
use skiff_testkit::etcd::EtcdCluster;
use tonic::Code;

/// What the watcher saw: (applied|deleted, name, resourceVersion), and how
/// many times it (re)listed.
type Seen = (Vec<(String, String, i64)>, usize);
/// Acknowledged writes: creations with their resourceVersion, deletions.
type Acked = (
    std::collections::BTreeMap<String, i64>,
    std::collections::BTreeSet<String>,
);

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// etcd stopped (SIGSTOP: connections open, nothing answers) turns
/// requests into an error within seconds that says the store is the
/// trouble, over gRPC and on the CLI; thawed, the same requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_is_an_error_within_seconds_not_a_request_that_never_returns() {
    let etcd = EtcdCluster::start(1).unwrap();
    let server = ServerProcess::start(&["--etcd".into(), etcd.endpoints().join(",")]).unwrap();
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let configmaps = Api::<ConfigMap>::new(channel);
    configmaps.create(configmap("before")).await.unwrap();

    etcd.freeze(0);
    let started = Instant::now();
    let err = configmaps
        .create(configmap("during"))
        .await
        .expect_err("etcd answers nothing");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "the error took {took:?}");
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{err:?}"
    );
    assert!(
        err.message().contains("could not reach its store"),
        "{err:?}"
    );
    // The CLI says it is the server's store, not the server, that is out.
    // (A write: reads may be served from the API server's watch cache.)
    let out = std::process::Command::new(skiff_testkit::skiff_binary().unwrap())
        .args(["delete", "configmap", "before", "--server"])
        .arg(server.url())
        .env("SKIFF_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("Error from server"), "{stderr}");
    assert!(stderr.contains("could not reach its store"), "{stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");

    etcd.thaw(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match configmaps.create(configmap("after")).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists => break,
            Err(e) => assert!(Instant::now() < deadline, "after thawing: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    configmaps.get("default", "after").await.unwrap();
}

/// A highly available control plane: three API servers on a three-member
/// etcd, two controller managers and two schedulers leading by Lease, an
/// agent and a client given all three servers. Under a steady write load
/// (ConfigMaps created and deleted, a Deployment scaled), one after the
/// other: the API server the agent is connected to, the leading controller
/// manager, the leading scheduler and an etcd member are killed (-9); an
/// etcd member hangs (SIGSTOP) for 30 s; the etcd leader is killed, and
/// the next one hangs for 15 s. The
/// cluster keeps serving: every acknowledged write is there at the end,
/// the watcher saw each change exactly once in resourceVersion order and
/// never had to relist, and the Deployment has its replicas. The time
/// each failure took to recover from is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_rides_out_the_loss_of_any_one_server_component_or_store_member() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    use skiff::pb::apps::v1::Deployment;
    use skiff::pb::coordination::v1::Lease;
    use skiff::pb::core::v1::{Node, Pod};
    use skiff_client::watcher;
    use skiff_testkit::{AgentNode, ChildGuard, skiff_binary};

    let image = skiff_testkit::test_image().await.unwrap();
    let mut etcd = EtcdCluster::start(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| skiff_testkit::free_port().unwrap())
        .collect();
    let list = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let data = |i: usize| dir.path().join(format!("server{i}"));
    let start_server = |i: usize| -> ChildGuard {
        let child = Command::new(skiff_binary().unwrap())
            .args(["server", "--listen", &format!("127.0.0.1:{}", ports[i])])
            .arg("--data-dir")
            .arg(data(i))
            .args(["--etcd", &etcd.endpoints().join(",")])
            .args(["--pod-security-default", "privileged"])
            .env("SKIFF_CLUSTER_TOKEN", "ha-test-cluster-token-1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let guard = ChildGuard::new(child);
        skiff_testkit::wait_for_port(
            format!("127.0.0.1:{}", ports[i]).parse().unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
        guard
    };
    // The first server makes the cluster CA and token key and publishes
    // them in etcd, sealed with the cluster token; the others take them
    // from there, each with its own serving certificate.
    let mut servers = vec![Some(start_server(0))];
    let admin = data(0).join("admin.config");
    for _ in 0..100 {
        if admin.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 1..3 {
        servers.push(Some(start_server(i)));
    }
    let ca = |i: usize| std::fs::read_to_string(data(i).join("pki").join("ca.crt")).unwrap();
    assert!(ca(1) == ca(0) && ca(2) == ca(0), "one CA for the cluster");
    // A server given another token cannot open them, and says so.
    let out = Command::new(skiff_binary().unwrap())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &etcd.endpoints().join(","),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("intruder"))
        .env("SKIFF_CLUSTER_TOKEN", "a-guess-that-is-long-enough")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--cluster-token"), "{stderr}");
    assert!(
        !dir.path()
            .join("intruder")
            .join("pki")
            .join("ca.key")
            .exists()
    );
    let tls = skiff_testkit::client_tls(&admin).unwrap();
    let channel = skiff_client::connect_lazy_with(&list, Some(&tls)).unwrap();
    // Each server, alone, answers with a certificate the CA signed for it.
    for port in &ports {
        let one = skiff_client::connect_lazy_with(&format!("https://127.0.0.1:{port}"), Some(&tls))
            .unwrap();
        Api::<Node>::new(one)
            .list(Default::default())
            .await
            .unwrap();
    }

    let component = |role: &str, identity: &str| -> ChildGuard {
        let config = data(0).join(format!("{role}.config"));
        let child = Command::new(skiff_binary().unwrap())
            .arg(role)
            .args(["--server", &list, "--identity", identity])
            .arg("--config")
            .arg(&config)
            .arg("--lease-duration-secs=3")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        ChildGuard::new(child)
    };
    let mut components: BTreeMap<String, ChildGuard> = BTreeMap::new();
    for (role, identity) in [
        ("controller-manager", "cm-a"),
        ("controller-manager", "cm-b"),
        ("scheduler", "sched-a"),
        ("scheduler", "sched-b"),
    ] {
        components.insert(identity.to_string(), component(role, identity));
    }
    let token = Command::new(skiff_binary().unwrap())
        .args(["token", "create", "--server", &list])
        .env("SKIFF_CONFIG", &admin)
        .output()
        .unwrap();
    let (token, hash) = skiff_testkit::printed_token(
        &String::from_utf8_lossy(&token.stdout),
        &String::from_utf8_lossy(&token.stderr),
    );
    let agent = AgentNode::start_with(
        &list,
        "ha",
        "docker",
        &["--token", &token, "--ca-hash", &hash],
    )
    .unwrap();

    let deployments = Api::<Deployment>::new(channel.clone());
    let pods = Api::<Pod>::new(channel.clone());
    let leases = Api::<Lease>::new(channel.clone());
    let configmaps = Api::<ConfigMap>::new(channel.clone());
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "steady", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "steady"}},
                 "template": {"metadata": {"labels": {"app": "steady"}},
                   "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": image,
                     "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}}}
    }))
    .unwrap();
    deployments.create(deployment).await.unwrap();
    let node_name = agent.name.clone();
    let ready_pods = async |want: usize| {
        let ready = pods
            .list(Default::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.r#type == "Ready" && c.status == "True")
                        }) && p
                            .metadata
                            .as_ref()
                            .is_some_and(|m| m.deletion_timestamp.is_none())
                    })
                    .count()
            })
            .unwrap_or(0);
        ready == want
    };
    skiff_testkit::wait_until(
        "the first replica Ready",
        Duration::from_secs(90),
        async || ready_pods(1).await,
    )
    .await;

    // The watcher, from the start.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut events = watcher::watch(
        Api::<ConfigMap>::new(channel.clone()),
        watcher::Params {
            namespace: "default".into(),
            ..Default::default()
        },
    );
    let recorder = Arc::clone(&seen);
    let watching = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut seen = recorder.lock().unwrap();
            let (kind, cm) = match event {
                watcher::Event::Restarted(_) => {
                    seen.1 += 1;
                    continue;
                }
                watcher::Event::Applied(cm) => ("applied", cm),
                watcher::Event::Deleted(cm) => ("deleted", cm),
            };
            let meta = cm.metadata.unwrap_or_default();
            let rv = meta.resource_version.parse().unwrap_or(0);
            seen.0.push((kind.to_string(), meta.name, rv));
        }
    });
    // The load starts once the watcher has listed: every write after is
    // one of its events.
    skiff_testkit::wait_until("the watcher listed", Duration::from_secs(30), async || {
        seen.lock().unwrap().1 >= 1
    })
    .await;

    // The load: ConfigMaps created, every third one deleted again; an
    // operation whose answer is lost is retried (AlreadyExists/NotFound
    // then say it landed).
    let acked: Arc<Mutex<Acked>> = Arc::default();
    // Creates that failed before one was acknowledged: the failed try may
    // still land later (a request queued at an etcd member frozen by
    // SIGSTOP is forwarded when it thaws), even after the delete.
    let retried: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let configmaps = configmaps.clone();
        let acked = Arc::clone(&acked);
        let retried = Arc::clone(&retried);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5000 {
                let name = format!("load-{n}");
                loop {
                    match configmaps.create(configmap(&name)).await {
                        Ok(cm) => {
                            let rv = cm.metadata.unwrap().resource_version.parse().unwrap();
                            acked.lock().unwrap().0.insert(name.clone(), rv);
                            break;
                        }
                        Err(e) if e.code() == Code::AlreadyExists => break,
                        Err(_) => {
                            retried.lock().unwrap().insert(name.clone());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if n % 3 == 2 {
                    let gone = format!("load-{}", n - 1);
                    let mut tried = false;
                    loop {
                        let request = skiff::pb::api::v1::DeleteRequest {
                            namespace: "default".into(),
                            name: gone.clone(),
                            ..Default::default()
                        };
                        match configmaps.delete(request).await {
                            Ok(_) => {
                                acked.lock().unwrap().1.insert(gone.clone());
                                break;
                            }
                            // An earlier try whose answer was lost did it.
                            Err(e) if e.code() == Code::NotFound && tried => {
                                acked.lock().unwrap().1.insert(gone.clone());
                                break;
                            }
                            Err(e) if e.code() == Code::NotFound => break,
                            Err(_) => {
                                tried = true;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let probe = async |label: &str, started: Instant| {
        let name = format!("probe-{label}");
        loop {
            match configmaps.create(configmap(&name)).await {
                Ok(_) => break,
                Err(e) if e.code() == Code::AlreadyExists => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{label}: no write in 60 s"
            );
        }
        started.elapsed()
    };
    let mut replicas = 1;
    let scale = async |replicas: i32, label: &str, started: Instant| {
        loop {
            if let Ok(mut d) = deployments.get("default", "steady").await {
                d.spec.as_mut().unwrap().replicas = Some(replicas);
                if deployments.update(d).await.is_ok() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        skiff_testkit::wait_until(label, Duration::from_secs(90), async || {
            ready_pods(replicas as usize).await
        })
        .await;
        started.elapsed()
    };
    let leader = async |lease: &str| -> String {
        for _ in 0..100 {
            let holder = leases
                .get("kube-system", lease)
                .await
                .ok()
                .and_then(|l| l.spec?.holder_identity)
                .unwrap_or_default();
            if !holder.is_empty() {
                return holder;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no holder of the Lease {lease}")
    };
    let etcd_leader = async |etcd: &EtcdCluster| -> usize {
        for _ in 0..200 {
            if let Some(lead) = etcd.leader() {
                return lead;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the etcd cluster has no leader")
    };
    // The API server process `pid` is connected to (as `ss` shows it).
    let server_of = |pid: u32| -> Option<usize> {
        let ss = Command::new("ss").args(["-Htnp"]).output().ok()?;
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        ports.iter().position(|p| {
            ss.lines().any(|l| {
                l.contains(&format!("pid={pid},"))
                    && l.split_whitespace()
                        .nth(4)
                        .is_some_and(|peer| peer.ends_with(&format!(":{p}")))
            })
        })
    };
    let renewed = async || -> i64 {
        leases
            .get("kube-node-lease", &node_name)
            .await
            .ok()
            .and_then(|l| l.spec?.renew_time)
            .map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
    };
    let mut report = Vec::new();

    // 1. The API server the agent talks to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = server_of(agent.pid().unwrap()).expect("the agent is connected to a server");
    let started = Instant::now();
    servers[victim].take().unwrap().kill9();
    report.push(("API server (the agent's)", probe("server", started).await));
    replicas += 1;
    report.push((
        "  a replica added meanwhile",
        scale(replicas, "scaled after the server loss", Instant::now()).await,
    ));
    // The agent renews its lease through another server.
    let before = renewed().await;
    skiff_testkit::wait_until(
        "the agent renews its lease",
        Duration::from_secs(30),
        async || renewed().await > before,
    )
    .await;
    servers[victim] = Some(start_server(victim));

    // 1b. The API server this test's client (load, watcher) talks to: the
    // watch resumes on another, from its last resourceVersion.
    let mine = server_of(std::process::id()).expect("the test is connected to a server");
    let started = Instant::now();
    servers[mine].take().unwrap().kill9();
    report.push((
        "API server (the client's)",
        probe("client-server", started).await,
    ));
    servers[mine] = Some(start_server(mine));

    // 2. The leading controller manager, then 3. the leading scheduler:
    // recovered when a scale-up is done by the survivors.
    for (lease, what) in [
        ("kube-controller-manager", "controller manager (leader)"),
        (skiff::names::DEFAULT_SCHEDULER, "scheduler (leader)"),
    ] {
        let holder = leader(lease).await;
        let mut process = components
            .remove(&holder)
            .unwrap_or_else(|| panic!("no leader of {lease}: {holder:?}"));
        let started = Instant::now();
        process.kill9();
        replicas += 1;
        report.push((what, scale(replicas, what, started).await));
        assert_ne!(leader(lease).await, holder, "another {lease} leads");
    }

    // 4. An etcd member (not the leader), 5. a hung member for 30 s,
    // 6. the etcd leader.
    let lead = etcd_leader(&etcd).await;
    let follower = (lead + 1) % 3;
    let started = Instant::now();
    etcd.kill(follower);
    report.push(("etcd member", probe("member", started).await));
    etcd.start_member(follower).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hung = (etcd_leader(&etcd).await + 1) % 3;
    let started = Instant::now();
    etcd.freeze(hung);
    report.push(("etcd member hung (SIGSTOP)", probe("hung", started).await));
    tokio::time::sleep(Duration::from_secs(30)).await;
    etcd.thaw(hung);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lead = etcd_leader(&etcd).await;
    let started = Instant::now();
    etcd.kill(lead);
    report.push(("etcd leader", probe("leader", started).await));
    etcd.start_member(lead).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 7. The (new) leader hangs: the others elect another.
    let lead = etcd_leader(&etcd).await;
    let started = Instant::now();
    etcd.freeze(lead);
    report.push((
        "etcd leader hung (SIGSTOP)",
        probe("hung-leader", started).await,
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;
    etcd.thaw(lead);
    replicas += 1;
    report.push((
        "  a replica added after all that",
        scale(replicas, "the last scale-up", Instant::now()).await,
    ));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    for (what, took) in &report {
        eprintln!("recovery: {what}: {took:?}");
    }

    // Every acknowledged write is there; the watcher saw each exactly once.
    let (created, deleted) = acked.lock().unwrap().clone();
    assert!(created.len() > 50, "the load ran: {} writes", created.len());
    let stored: BTreeSet<String> = configmaps
        .list(skiff::pb::api::v1::ListRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.unwrap().name)
        .collect();
    let retried = retried.lock().unwrap().clone();
    for name in created.keys() {
        // An unacknowledged try of a create landing after the delete is
        // not a lost acknowledged write; anything else is.
        if stored.contains(name) && deleted.contains(name) && retried.contains(name) {
            eprintln!("{name}: an unacknowledged create landed after its delete");
            continue;
        }
        assert_eq!(stored.contains(name), !deleted.contains(name), "{name}");
    }
    skiff_testkit::wait_until(
        "the watcher caught up",
        Duration::from_secs(30),
        async || {
            let seen = seen.lock().unwrap();
            let max = created.values().max().copied().unwrap_or(0);
            seen.0.iter().any(|(_, _, rv)| *rv >= max)
        },
    )
    .await;
    watching.abort();
    let (events, restarts) = seen.lock().unwrap().clone();
    assert_eq!(restarts, 1, "the watch resumed every time, never relisted");
    let rvs: Vec<i64> = events.iter().map(|(_, _, rv)| *rv).collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "in order, none repeated"
    );
    for (name, rv) in &created {
        let hits = events
            .iter()
            .filter(|(k, n, r)| k == "applied" && n == name && r == rv)
            .count();
        assert_eq!(hits, 1, "the creation of {name} seen once");
    }
    for name in &deleted {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(k, _, _)| k.as_str())
            .collect();
        let deletions = kinds.iter().filter(|k| **k == "deleted").count();
        // A create try that failed may still land after the delete (see
        // `retried`), and a delete retried after a lost answer then finds
        // and removes that incarnation too: a second deletion, of a second
        // creation. Otherwise: one creation, one deletion.
        let expected = if retried.contains(name) {
            deletions.max(1)
        } else {
            1
        };
        assert_eq!(
            deletions, expected,
            "the deletion of {name} seen once: {kinds:?}"
        );
        assert!(
            kinds
                .chunks(2)
                .all(|pair| pair[0] == "applied" && pair.get(1).is_none_or(|k| *k == "deleted")),
            "{name}: each deletion follows its own creation: {kinds:?}"
        );
    }
    drop(agent);
}
