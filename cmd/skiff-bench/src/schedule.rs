//! `skiff-bench schedule`: pods bound per second on hollow nodes, beside
//! the API's raw create rate in the same run.

// The shared helpers and imports of the bench binary.
use super::*;

/// How the cluster around the scheduler is loaded.
pub(crate) struct Harness {
    /// Each hollow node's lease renewal interval.
    pub(crate) lease_renew_secs: u64,
    /// Whether the raw phase's pods stay while scheduling.
    pub(crate) keep_raw_pods: bool,
}

pub(crate) async fn bench_schedule(
    nodes: usize,
    pods: usize,
    concurrency: usize,
    harness: Harness,
) -> anyhow::Result<()> {
    use skiff::pb::core::v1::{Namespace, Node};
    // Each part as its own process, as deployed, so that each one's
    // memory can be read.
    let dir = tempfile::tempdir()?;
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".into(),
        dir.path().display().to_string(),
    ])?;
    let url = server.url();
    let channel = skiff_client::connect_lazy(&url)?;
    let pod_api = skiff_client::Api::<Pod>::new(channel.clone());
    let ns_api = skiff_client::Api::<Namespace>::new(channel.clone());
    for ns in ["bench-raw", "bench"] {
        let mut n = Namespace::default();
        n.metadata.get_or_insert_with(Default::default).name = ns.into();
        ns_api.create(n).await?;
    }

    eprintln!("registering {nodes} hollow nodes...");
    let started = Instant::now();
    let hollow = skiff_testkit::hollow_nodes_renewing(
        &url,
        nodes,
        "hollow-node-",
        harness.lease_renew_secs,
    )?;
    let node_api = skiff_client::Api::<Node>::new(channel.clone());
    loop {
        let list = node_api.list(Default::default()).await?;
        if list.items.len() >= nodes {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "hollow nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registration = started.elapsed();

    eprintln!("raw API creates ({pods} pods no scheduler takes)...");
    let (_, raw_elapsed) =
        crate::list::create_pods(&pod_api, "bench-raw", "bench-none", pods, concurrency).await?;
    let raw_rate = pods as f64 / raw_elapsed.as_secs_f64();
    // Unless kept, gone before the scheduler starts: the cluster it is
    // measured on holds the nodes and the pods it schedules, no others.
    let raw_to_delete = if harness.keep_raw_pods { 0 } else { pods };
    if raw_to_delete > 0 {
        eprintln!("deleting the raw pods...");
    }
    futures::stream::iter(0..raw_to_delete)
        .map(|i| {
            let api = pod_api.clone();
            async move {
                api.delete(skiff::pb::api::v1::DeleteRequest {
                    namespace: "bench-raw".into(),
                    name: format!("pod-{i}"),
                    ..Default::default()
                })
                .await
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("deleting the raw pods")?;

    let scheduler = skiff_testkit::SchedulerProcess::start_with(&url, "bench", 15, false)?;
    // Bound pods of the measured namespace, as they are seen.
    let mut bound_watch = pod_api
        .watch(WatchRequest {
            namespace: "bench".into(),
            field_selector: "spec.nodeName!=".into(),
            resource_version: "0".into(),
            ..Default::default()
        })
        .await?;
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let collector = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        while let Some(Ok(event)) = bound_watch.next().await {
            if let Some(pod) = event.object {
                let name = pod.metadata.map(|m| m.name).unwrap_or_default();
                if seen.insert(name.clone()) {
                    let _ = bound_tx.send((name, Instant::now()));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("scheduling {pods} pods on {nodes} nodes...");
    let first_create = Instant::now();
    let (acked, create_elapsed) =
        crate::list::create_pods(&pod_api, "bench", "", pods, concurrency).await?;
    let mut bound = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while bound.len() < pods {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, bound_rx.recv()).await {
            Ok(Some((name, at))) => {
                bound.insert(name, at);
            }
            _ => anyhow::bail!("only {} of {pods} pods bound within 300 s", bound.len()),
        }
    }
    let last_bound = bound.values().max().copied().unwrap_or(first_create);
    let bind_rate = pods as f64 / last_bound.duration_since(first_create).as_secs_f64();
    let mut latencies: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, at)| acked.get(name).map(|c| at.saturating_duration_since(*c)))
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    collector.abort();
    let mib =
        |pid: u32| skiff_testkit::rss_bytes(pid).map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
    let (server_rss, scheduler_rss, hollow_rss) = (
        mib(server.process.pid()),
        mib(scheduler.process.pid()),
        mib(hollow.pid()),
    );
    drop((scheduler, hollow, server));

    println!("{:<44} {:>12}", "measure", "value");
    println!(
        "{:<44} {:>12.1}",
        "hollow node registration (s)",
        registration.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "raw API pod creates/s (no scheduling)", raw_rate
    );
    println!(
        "{:<44} {:>12.0}",
        "pod creates/s while scheduling",
        pods as f64 / create_elapsed.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.0}",
        "pods bound/s (first create to last bind)", bind_rate
    );
    println!(
        "{:<44} {:>12.2}",
        "bound/s vs raw creates/s",
        bind_rate / raw_rate
    );
    println!("{:<44} {:>12.1}", "create→bound p50 (ms)", p50);
    println!("{:<44} {:>12.1}", "create→bound p99 (ms)", p99);
    println!("{:<44} {:>12.1}", "API server RSS (MiB)", server_rss);
    println!("{:<44} {:>12.1}", "scheduler RSS (MiB)", scheduler_rss);
    println!(
        "{:<44} {:>12.1}",
        "hollow nodes process RSS (MiB)", hollow_rss
    );
    println!(
        "{}",
        json!({
            "bench": "schedule",
            "nodes": nodes,
            "pods": pods,
            "concurrency": concurrency,
            "lease_renew_secs": harness.lease_renew_secs,
            "raw_pods_kept": harness.keep_raw_pods,
            "registration_secs": registration.as_secs_f64(),
            "raw_creates_per_sec": raw_rate,
            "pods_bound_per_sec": bind_rate,
            "ratio_bound_vs_raw_creates": bind_rate / raw_rate,
            "create_to_bound_p50_ms": p50,
            "create_to_bound_p99_ms": p99,
            "apiserver_rss_mib": server_rss,
            "scheduler_rss_mib": scheduler_rss,
            "hollow_nodes_rss_mib": hollow_rss,
        })
    );
    Ok(())
}
