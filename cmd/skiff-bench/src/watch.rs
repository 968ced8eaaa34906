//! `skiff-bench watch`: delivery latency of a change to many watchers.

// The shared helpers and imports of the bench binary.
use super::*;

pub(crate) async fn bench_watch(
    watchers: usize,
    changes: usize,
    http: bool,
    object_bytes: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let pad = "x".repeat(object_bytes);
    let dir = tempfile::tempdir()?;
    let server = start_server(StoreConfig::Embedded(dir.path().join("watch"))).await?;
    let mut cm = ConfigMapsClient::new(skiff_testkit::channel(server.addr).await?);
    let created = cm
        .create(ConfigMap {
            metadata: Some(ObjectMeta {
                name: "watched".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let rv = created
        .metadata
        .as_ref()
        .map(|m| m.resource_version.clone())
        .unwrap_or_default();

    // Watchers spread over connections (HTTP/2 caps streams per connection).
    let per_conn = 100;
    let conns = watchers.div_ceil(per_conn);
    let chans = if http {
        Vec::new()
    } else {
        channels(server.addr, conns).await?
    };
    let http_clients: Vec<_> = (0..if http { conns } else { 0 })
        .map(|_| {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build::<_, http_body_util::Empty<bytes::Bytes>>(api::http_connector())
        })
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    for w in 0..watchers {
        let tx = tx.clone();
        let rv = rv.clone();
        let ready = ready_tx.clone();
        if http {
            let client = http_clients[w / per_conn].clone();
            let url = format!(
                "http://{}/api/v1/configmaps?watch=true&resourceVersion={rv}",
                server.addr
            );
            tasks.push(tokio::spawn(async move {
                http_watcher(client, url, changes, ready, tx).await
            }));
            continue;
        }
        let mut client = ConfigMapsClient::new(chans[w / per_conn].clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch(WatchRequest {
                    resource_version: rv,
                    ..Default::default()
                })
                .await?
                .into_inner();
            ready.send(()).await.ok();
            let mut seen = 0;
            while seen < changes {
                let Some(event) = stream.next().await else {
                    break;
                };
                let event = event?;
                if event.r#type == EventType::Modified as i32 {
                    let n: usize = event
                        .object
                        .as_ref()
                        .and_then(|o| o.data.get("n"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let _ = tx.send((n, Instant::now()));
                    seen += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    for _ in 0..watchers {
        ready_rx.recv().await.context("watcher failed to start")?;
    }
    eprintln!("{watchers} watchers ready; making {changes} changes...");
    let mut sent_at = Vec::new();
    let mut current = created;
    for n in 0..changes {
        current.data = [("n".to_string(), n.to_string())].into_iter().collect();
        if !pad.is_empty() {
            current.data.insert("pad".into(), pad.clone());
        }
        let t = Instant::now();
        current = cm.update(current.clone()).await?.into_inner();
        sent_at.push(t);
        tokio::time::sleep(interval).await;
    }
    let mut latencies = Vec::new();
    let mut to_all = vec![Duration::ZERO; changes];
    let collect = async {
        while let Some((n, at)) = rx.recv().await {
            if let Some(sent) = sent_at.get(n) {
                let d = at.saturating_duration_since(*sent);
                latencies.push(d);
                to_all[n] = to_all[n].max(d);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .context("watchers did not receive every change within 60 s")?;
    for t in tasks {
        t.await??;
    }
    server.stop().await?;
    let delivered = latencies.len();
    latencies.sort();
    to_all.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (all50, all99) = (percentile(&to_all, 0.5), percentile(&to_all, 0.99));
    println!(
        "{:<40} {:>10} {:>10}",
        if http {
            "watch delivery latency (HTTP, JSON)"
        } else {
            "watch delivery latency (gRPC)"
        },
        "p50 ms",
        "p99 ms"
    );
    println!(
        "{:<40} {:>10.2} {:>10.2}",
        "per watcher and change", p50, p99
    );
    println!(
        "{:<40} {:>10.2} {:>10.2}",
        "change reaching all watchers", all50, all99
    );
    println!(
        "{}",
        json!({
            "bench": "watch",
            "door": if http { "http" } else { "grpc" },
            "watchers": watchers,
            "changes": changes,
            "object_bytes": object_bytes,
            "interval_ms": interval.as_millis(),
            "deliveries": delivered,
            "p50_ms": p50,
            "p99_ms": p99,
            "to_all_p50_ms": all50,
            "to_all_p99_ms": all99,
        })
    );
    Ok(())
}

/// The part of a watch event the HTTP watchers read, decoded as a typed
/// client decodes it (what it does not know is skipped).
#[derive(serde::Deserialize)]
struct Event {
    r#type: String,
    object: EventObject,
}

#[derive(serde::Deserialize)]
struct EventObject {
    #[serde(default)]
    data: std::collections::HashMap<String, String>,
}

/// One watcher over the Kubernetes HTTP API: reads JSON lines and reports
/// each MODIFIED event's `data.n` with the time it arrived.
async fn http_watcher(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    url: String,
    changes: usize,
    ready: tokio::sync::mpsc::Sender<()>,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let response = client.get(url.parse()?).await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "watch answered {}",
        response.status()
    );
    ready.send(()).await.ok();
    let mut body = response.into_body();
    let mut buf = Vec::new();
    let mut seen = 0;
    while seen < changes {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let event: Event = serde_json::from_slice(&line)?;
            if event.r#type == "MODIFIED" {
                let n = event.object.data.get("n").and_then(|n| n.parse().ok());
                let _ = tx.send((n.unwrap_or(0), Instant::now()));
                seen += 1;
            }
        }
    }
    Ok(())
}
