//! `skiff-bench podstart`: pod create→Running on a Docker node beside
//! plain `docker create+start`, the node's pods on its Docker network (the
//! default) or on a CNI network (`--pod-network cni`).

// The shared helpers and imports of the bench binary.
use super::*;

/// Plain Docker, `n` at once, each timed from its first create call to
/// its last start returning: one container of `image` per unit, or (with
/// `pod_shaped`) what a pod is made of, a pause sandbox plus a container
/// joining its network and IPC namespaces, the pause on Docker's default
/// bridge or on `network` (a user-defined network, as the agent's, costs
/// Docker more per container: its embedded DNS). Everything is removed
/// after.
async fn raw_docker_starts(
    image: &str,
    n: usize,
    pod_shaped: bool,
    network: Option<&str>,
) -> anyhow::Result<Vec<Duration>> {
    use skiff_runtime::bollard::models::{ContainerCreateBody, HostConfig};
    use skiff_runtime::bollard::query_parameters::{
        CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    };
    let docker = skiff_runtime::docker::engine().await?;
    let run = std::process::id();
    let pause = skiff_runtime::docker::pause_image();
    let labels: std::collections::HashMap<String, String> = [
        ("io.skiff.managed".to_string(), "true".to_string()),
        ("io.skiff.bench".to_string(), run.to_string()),
    ]
    .into();
    let starts = (0..n).map(|i| {
        let docker = docker.clone();
        let (image, pause, labels) = (image.to_string(), pause.clone(), labels.clone());
        let network = network.map(str::to_string);
        async move {
            let began = Instant::now();
            let mut ids = Vec::new();
            let mut host_config = None;
            if pod_shaped {
                let body = ContainerCreateBody {
                    image: Some(pause),
                    labels: Some(labels.clone()),
                    host_config: Some(HostConfig {
                        ipc_mode: Some("shareable".into()),
                        network_mode: network,
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let options = CreateContainerOptionsBuilder::default()
                    .name(&format!("skiff-bench-raw-{run}-{i}-pause"))
                    .build();
                let id = docker.create_container(Some(options), body).await?.id;
                docker.start_container(&id, None).await?;
                let joined = format!("container:{id}");
                host_config = Some(HostConfig {
                    network_mode: Some(joined.clone()),
                    ipc_mode: Some(joined),
                    ..Default::default()
                });
                ids.push(id);
            }
            let body = ContainerCreateBody {
                image: Some(image),
                cmd: Some(vec!["sleep".into(), "3600".into()]),
                labels: Some(labels),
                host_config,
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default()
                .name(&format!("skiff-bench-raw-{run}-{i}"))
                .build();
            let id = docker.create_container(Some(options), body).await?.id;
            docker.start_container(&id, None).await?;
            ids.push(id);
            anyhow::Ok((began.elapsed(), ids))
        }
    });
    let results = futures::future::join_all(starts).await;
    let mut latencies = Vec::new();
    let mut first_error = None;
    for result in results {
        match result {
            Ok((latency, ids)) => {
                latencies.push(latency);
                for id in ids.iter().rev() {
                    let options = RemoveContainerOptionsBuilder::default().force(true).build();
                    let _ = docker.remove_container(id, Some(options)).await;
                }
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(e.context("plain docker create+start")),
        None => {
            latencies.sort();
            Ok(latencies)
        }
    }
}

/// `skiff agent`'s default periods (the tests' agents shorten them).
const AGENT_DEFAULTS: [&str; 4] = [
    "--lease-renew-secs=10",
    "--status-every-secs=10",
    "--resync-secs=10",
    "--stats-interval-secs=10",
];

/// One run's figures, each list sorted.
struct Measured {
    /// One container, `docker create+start`.
    raw: Vec<Duration>,
    /// A pause plus a container, the pause on Docker's default bridge.
    pairs: Vec<Duration>,
    /// The same with the pause on the network the agent's sandboxes are
    /// made on (its Docker network, or none for CNI to plumb).
    networked: Vec<Duration>,
    /// What that network is, for the table, and the ratio to it.
    network: &'static str,
    network_ratio: &'static str,
    /// Skiff's pods, create → Running.
    skiff: Vec<Duration>,
    /// From the first create until every pod ran.
    total: Duration,
}

pub(crate) async fn bench_podstart(n: usize, pod_network: &str) -> anyhow::Result<()> {
    let image = skiff_testkit::test_image().await?;
    let m = match pod_network {
        "docker" => on_docker_network(image, n).await?,
        "cni" => on_cni(image, n).await?,
        other => anyhow::bail!("--pod-network is docker or cni, not {other:?}"),
    };
    let (s50, s99) = (percentile(&m.skiff, 0.5), percentile(&m.skiff, 0.99));
    let (r50, r99) = (percentile(&m.raw, 0.5), percentile(&m.raw, 0.99));
    let (q50, q99) = (percentile(&m.pairs, 0.5), percentile(&m.pairs, 0.99));
    let (w50, w99) = (
        percentile(&m.networked, 0.5),
        percentile(&m.networked, 0.99),
    );
    println!("{n} at once on one node ({pod_network} pod network), image {image}");
    println!("{:<44} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    let rows = [
        ("docker create+start (raw, same run)", r50, r99),
        ("docker pause + container (pod-shaped, raw)", q50, q99),
        (m.network, w50, w99),
        ("skiff pod create -> Running", s50, s99),
    ];
    for (label, p50, p99) in rows {
        println!("{label:<44} {p50:>10.0} {p99:>10.0}");
    }
    let ratios = [
        ("ratio skiff / raw (target <= 1.3)", s50 / r50, s99 / r99),
        ("ratio skiff / pod-shaped raw", s50 / q50, s99 / q99),
        (m.network_ratio, s50 / w50, s99 / w99),
    ];
    for (label, p50, p99) in ratios {
        println!("{label:<44} {p50:>10.2} {p99:>10.2}");
    }
    println!(
        "{:<44} {:>10.2}",
        "seconds until all Running",
        m.total.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "bench": "podstart",
            "pods": n,
            "pod_network": pod_network,
            "raw_p50_ms": r50, "raw_p99_ms": r99,
            "skiff_p50_ms": s50, "skiff_p99_ms": s99,
            "ratio_p50": s50 / r50, "ratio_p99": s99 / r99,
            "pod_shaped_p50_ms": q50, "pod_shaped_p99_ms": q99,
            "ratio_pod_shaped_p50": s50 / q50, "ratio_pod_shaped_p99": s99 / q99,
            "pod_shaped_network_p50_ms": w50, "pod_shaped_network_p99_ms": w99,
            "ratio_pod_shaped_network_p50": s50 / w50, "ratio_pod_shaped_network_p99": s99 / w99,
            "all_running_s": m.total.as_secs_f64(),
        })
    );
    Ok(())
}

/// The agent on this machine's network namespace with its Docker network
/// (the default pod network): the API server in this process, pods
/// created over gRPC, each timed from its create to the watch event that
/// shows it Running.
async fn on_docker_network(image: &'static str, n: usize) -> anyhow::Result<Measured> {
    use skiff::pb::api::v1::DeleteRequest;
    let dir = tempfile::tempdir()?;
    let server = start_server(StoreConfig::Embedded(dir.path().join("podstart"))).await?;
    let url = format!("http://{}", server.addr);
    // The agent as users run it: its own periods, not the tests' 1 s.
    let node =
        skiff_testkit::AgentNode::start_with(&url, "bench-podstart", "docker", &AGENT_DEFAULTS)?;
    let channel = skiff_testkit::channel(server.addr).await?;
    let pods = skiff_client::Api::<Pod>::new(channel.clone());
    let nodes = skiff_client::Api::<skiff::pb::core::v1::Node>::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get("", &node.name).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent did not register its node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The baselines first, so every side finds the images cached (the
    // agent has built the pause image by now).
    let raw = raw_docker_starts(image, n, false, None).await?;
    let pairs = raw_docker_starts(image, n, true, None).await?;
    let networked = raw_docker_starts(image, n, true, Some(&node.network)).await?;

    let list = pods.list(Default::default()).await?;
    let rv = list
        .metadata
        .map(|m| m.resource_version)
        .unwrap_or_default();
    let mut events = pods
        .watch(WatchRequest {
            namespace: "default".into(),
            resource_version: rv,
            ..Default::default()
        })
        .await?;
    let began = Instant::now();
    let mut created = std::collections::HashMap::new();
    let creates = (0..n).map(|i| {
        let pods = pods.clone();
        let node = node.name.clone();
        async move {
            let pod = Pod {
                metadata: Some(ObjectMeta {
                    name: format!("start-{i}"),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_name: node,
                    termination_grace_period_seconds: Some(0),
                    containers: vec![Container {
                        name: "main".into(),
                        image: image.into(),
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let at = Instant::now();
            pods.create(pod).await.map(|_| (format!("start-{i}"), at))
        }
    });
    for result in futures::future::join_all(creates).await {
        let (name, at) = result?;
        created.insert(name, at);
    }
    let mut running: std::collections::HashMap<String, Duration> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while running.len() < n {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("pods not Running within 120 s")?
            .context("the watch ended")??;
        let Some(pod) = event.object else { continue };
        let name = pod
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let phase = pod.status.as_ref().map_or("", |s| s.phase.as_str());
        if phase == "Running"
            && let Some(at) = created.get(&name)
        {
            running.entry(name).or_insert_with(|| at.elapsed());
        }
    }
    let total = began.elapsed();
    let mut skiff: Vec<Duration> = running.into_values().collect();
    skiff.sort();
    for i in 0..n {
        let _ = pods
            .delete(DeleteRequest {
                namespace: "default".into(),
                name: format!("start-{i}"),
                ..Default::default()
            })
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node.container_ids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(node);
    Ok(Measured {
        raw,
        pairs,
        networked,
        network: "  the same on the agent's Docker network",
        network_ratio: "ratio skiff / pod-shaped raw, same network",
        skiff,
        total,
    })
}

/// The agent of a `--pod-network cni` node: a host simulated by a network
/// namespace the bench makes (its bridge, routes and rules are the
/// bench's), the control plane on another, the agent with its default
/// periods and a first pod run to the end of its start-up (its block,
/// its bridge) before anything is timed. Pods are created by one `skiff
/// apply`, one after another, and followed by `skiff get pods -w -o json`;
/// each is timed from the watch event of its creation to the one that
/// shows it Running (the apply's own span is printed). Dropping the hosts
/// removes everything.
async fn on_cni(image: &'static str, n: usize) -> anyhow::Result<Measured> {
    use std::process::Stdio;
    use tokio::time::{Instant as Deadline, timeout_at};
    let mut hosts = skiff_testkit::hosts::Hosts::build("psb", skiff_testkit::hosts::Link::Lan, 1)?;
    hosts.start_control_plane(&[])?;
    hosts.start_agent_periods(1, "host-gw", true, &AGENT_DEFAULTS)?;
    let node = hosts.hosts[1].node.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !node_ready(&hosts, &node) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent's node was not Ready with a pod block within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut watch = hosts.skiff_command(&["get", "pods", "-w", "-o", "json"])?;
    let mut watch = watch
        .stdout(Stdio::piped())
        .spawn()
        .context("starting `skiff get pods -w`")?;
    let stdout = watch.stdout.take();
    let _watch = skiff_testkit::ChildGuard::new(watch);
    let stdout = stdout.context("the watch's output")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Ends when the watch's output does (the guard kills it).
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(stdout);
        for value in serde_json::Deserializer::from_reader(reader).into_iter::<serde_json::Value>()
        {
            let Ok(value) = value else { break };
            if tx.send((Instant::now(), value)).is_err() {
                break;
            }
        }
    });
    // The list comes first; the watch follows from its version.
    timeout_at(Deadline::now() + Duration::from_secs(30), rx.recv())
        .await
        .context("`skiff get pods -w` printed no list within 30 s")?
        .context("`skiff get pods -w` ended")?;
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: main, image: {image}, command: [sleep, \"3600\"]}}\n---\n"
        )
    };
    let apply = |yaml: String, file: &str| -> anyhow::Result<()> {
        let path = hosts.dir.path().join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        hosts.skiff(&["apply", "-f", &path.display().to_string()])?;
        Ok(())
    };
    // The node's first pod waits for nothing the timed ones would not.
    apply(pod("warm-up"), "warm-up.yaml")?;
    let deadline = Deadline::now() + Duration::from_secs(120);
    loop {
        let (_, event) = timeout_at(deadline, rx.recv())
            .await
            .context("the warm-up pod not Running within 120 s")?
            .context("`skiff get pods -w` ended")?;
        if event["metadata"]["name"] == "warm-up" && event["status"]["phase"] == "Running" {
            break;
        }
    }

    let raw = raw_docker_starts(image, n, false, None).await?;
    let pairs = raw_docker_starts(image, n, true, None).await?;
    let networked = raw_docker_starts(image, n, true, Some("none")).await?;

    let names: Vec<String> = (0..n).map(|i| format!("start-{i}")).collect();
    let began = Instant::now();
    apply(
        names.iter().map(|name| pod(name)).collect(),
        "podstart.yaml",
    )?;
    let applied = began.elapsed();
    let mut created: std::collections::HashMap<String, Instant> = Default::default();
    let mut running: std::collections::HashMap<String, Duration> = Default::default();
    let deadline = Deadline::now() + Duration::from_secs(120);
    while running.len() < n {
        let (at, event) = timeout_at(deadline, rx.recv())
            .await
            .context("pods not Running within 120 s")?
            .context("`skiff get pods -w` ended")?;
        let Some(name) = event["metadata"]["name"].as_str() else {
            continue;
        };
        if !names.iter().any(|n| n == name) {
            continue;
        }
        let since = *created.entry(name.to_string()).or_insert(at);
        if event["status"]["phase"] == "Running" {
            running.entry(name.to_string()).or_insert(at - since);
        }
    }
    let total = began.elapsed();
    println!(
        "(the apply created the {n} pods one after another in {} ms; each is timed from its creation)",
        applied.as_millis()
    );
    let mut skiff: Vec<Duration> = running.into_values().collect();
    skiff.sort();
    Ok(Measured {
        raw,
        pairs,
        networked,
        network: "  pause with no network (CNI's add left out)",
        network_ratio: "ratio skiff / pod-shaped raw, no network",
        skiff,
        total,
    })
}

/// Whether `skiff get nodes` on the hosts shows `node` Ready, with its
/// block of pod addresses.
fn node_ready(hosts: &skiff_testkit::hosts::Hosts, node: &str) -> bool {
    let Ok(out) = hosts.skiff(&["get", "nodes", "-o", "json"]) else {
        return false;
    };
    let Ok(list) = serde_json::from_str::<serde_json::Value>(&out) else {
        return false;
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["metadata"]["name"] == node && n["spec"]["podCIDR"].is_string())
        .flat_map(|n| n["status"]["conditions"].as_array().into_iter().flatten())
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
