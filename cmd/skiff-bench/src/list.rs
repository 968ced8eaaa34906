//! `skiff-bench list`: lists of many pods over HTTP (JSON, Table) and gRPC
//! from the API server's own process, with its memory; and the pod
//! creation the list and schedule benches share.

// The shared helpers and imports of the bench binary.
use super::*;

/// Creates `count` pods in `namespace` from `concurrency` clients; returns
/// each pod's acknowledgement time and the elapsed time.
pub(crate) async fn create_pods(
    api: &skiff_client::Api<Pod>,
    namespace: &str,
    scheduler_name: &str,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(std::collections::HashMap<String, Instant>, Duration)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (api, next) = (api.clone(), Arc::clone(&next));
        let (namespace, scheduler_name) = (namespace.to_string(), scheduler_name.to_string());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(acked);
                }
                let name = format!("pod-{i}");
                let mut pod = bench_pod(name.clone());
                let meta = pod.metadata.get_or_insert_with(Default::default);
                meta.namespace.clone_from(&namespace);
                if let Some(spec) = pod.spec.as_mut() {
                    spec.scheduler_name.clone_from(&scheduler_name);
                    // Small requests: 10,000 pods fit on 1,000 nodes.
                    spec.containers[0].resources = Some(ResourceRequirements {
                        requests: [("cpu".to_string(), "100m".to_string())]
                            .into_iter()
                            .collect(),
                        ..Default::default()
                    });
                }
                api.create(pod).await.context("create")?;
                acked.push((name, Instant::now()));
            }
        }));
    }
    let mut all = std::collections::HashMap::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

pub(crate) async fn bench_list(pods: usize, rounds: usize) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let dir = tempfile::tempdir()?;
    let server = skiff_testkit::ServerProcess::start(&[
        "--data-dir".into(),
        dir.path().display().to_string(),
    ])?;
    let url = server.url();
    let channel = skiff_client::connect_lazy(&url)?;
    let api = skiff_client::Api::<Pod>::new(channel.clone());
    eprintln!("creating {pods} pods...");
    let started = Instant::now();
    let mut created = futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            async move { api.create(bench_pod(format!("list-{i}"))).await }
        })
        .buffer_unordered(32);
    let mut done = 0;
    while let Some(result) = created.next().await {
        result.context("create")?;
        done += 1;
        if done % 1000 == 0 {
            eprintln!("  {done}/{pods} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    }
    drop(created);
    let pid = server.process.pid();
    let mib = |bytes: Option<u64>| bytes.map_or(0.0, |b| b as f64 / (1024.0 * 1024.0));
    let idle = mib(skiff_testkit::rss_bytes(pid));
    // The peak from here on (Linux: 5 resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .context("resetting the server's peak RSS")?;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build::<_, http_body_util::Empty<bytes::Bytes>>(crate::api::http_connector());
    let list_url = format!("{url}/api/v1/namespaces/default/pods");
    let get = async |accept: &str| -> anyhow::Result<(Duration, usize)> {
        let request = http::Request::get(&list_url)
            .header(http::header::ACCEPT, accept)
            .body(http_body_util::Empty::new())?;
        let at = Instant::now();
        let response = client.request(request).await.context("HTTP list")?;
        anyhow::ensure!(
            response.status().is_success(),
            "HTTP list: {}",
            response.status()
        );
        let body = response.into_body().collect().await?.to_bytes();
        Ok((at.elapsed(), body.len()))
    };
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (mut json_times, mut table_times, mut grpc_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut json_bytes, mut table_bytes) = (0, 0);
    for _ in 0..rounds.max(1) {
        let (took, bytes) = get("application/json").await?;
        json_times.push(took);
        json_bytes = bytes;
        let (took, bytes) = get("application/json;as=Table;v=v1;g=meta.k8s.io").await?;
        table_times.push(took);
        table_bytes = bytes;
        let at = Instant::now();
        let list = api
            .list(skiff::pb::api::v1::ListRequest {
                namespace: "default".into(),
                ..Default::default()
            })
            .await?;
        grpc_times.push(at.elapsed());
        anyhow::ensure!(
            list.items.len() == pods,
            "gRPC listed {} pods",
            list.items.len()
        );
    }
    let peak = mib(skiff_testkit::peak_rss_bytes(pid));
    drop(server);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (json_ms, table_ms, grpc_ms) = (
        ms(median(json_times)),
        ms(median(table_times)),
        ms(median(grpc_times)),
    );
    println!("{:<48} {:>12}", "measure", "value");
    println!("{:<48} {:>12}", "pods", pods);
    println!("{:<48} {:>12.1}", "HTTP list, JSON: median ms", json_ms);
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, JSON: MiB",
        json_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, Table (kubectl get): median ms", table_ms
    );
    println!(
        "{:<48} {:>12.1}",
        "HTTP list, Table: MiB",
        table_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "{:<48} {:>12.1}",
        "gRPC list (protobuf): median ms", grpc_ms
    );
    println!(
        "{:<48} {:>12.1}",
        "API server RSS before listing (MiB)", idle
    );
    println!(
        "{:<48} {:>12.1}",
        "API server peak RSS while listing (MiB)", peak
    );
    println!(
        "{}",
        json!({
            "bench": "list",
            "pods": pods,
            "http_json_ms": json_ms,
            "http_table_ms": table_ms,
            "grpc_ms": grpc_ms,
            "http_json_bytes": json_bytes,
            "server_rss_mib": idle,
            "server_peak_rss_mib": peak,
        })
    );
    Ok(())
}
