//! `skiff-bench api`: Pod creates through the API server on each store
//! backend (gRPC, and the Kubernetes HTTP API) beside raw etcd puts and
//! create-if-absent transactions at the same concurrency.

// The shared helpers and imports of the bench binary.
use super::*;

async fn api_creates(
    store: StoreConfig,
    label: &str,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let server = start_server(store).await?;
    let chans = channels(server.addr, connections(concurrency)).await?;
    let clients: Vec<PodsClient<Channel>> = chans.into_iter().map(PodsClient::new).collect();
    let clients = Arc::new(clients);
    let label = label.to_string();
    let result = drive(concurrency, seconds, move |w, i| {
        let mut client = clients[w % clients.len()].clone();
        let pod = bench_pod(format!("{label}-c{concurrency}-w{w}-{i}"));
        async move {
            client.create(pod).await.context("create")?;
            Ok(())
        }
    })
    .await;
    server.stop().await?;
    result
}

/// A plaintext HTTP connector with TCP_NODELAY, as Go's clients (kubectl,
/// client-go) and tonic's channels have it: without it, small writes wait
/// for the peer's delayed ACK (40 ms on Linux).
pub(crate) fn http_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Creates over the Kubernetes HTTP API: the same Pod as JSON, POSTed
/// over HTTP/2 (a few multiplexed connections, as for gRPC).
async fn api_http_creates(
    store: StoreConfig,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let server = start_server(store).await?;
    let url = format!("http://{}/api/v1/namespaces/default/pods", server.addr);
    let clients: Vec<_> = (0..connections(concurrency))
        .map(|_| {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build::<_, http_body_util::Full<bytes::Bytes>>(http_connector())
        })
        .collect();
    let clients = Arc::new(clients);
    let result = drive(concurrency, seconds, move |w, i| {
        let client = clients[w % clients.len()].clone();
        let pod = bench_pod(format!("http-c{concurrency}-w{w}-{i}"));
        let url = url.clone();
        async move {
            let body = serde_json::to_vec(&pod)?;
            let request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
            let response = client.request(request).await.context("HTTP create")?;
            let status = response.status();
            use http_body_util::BodyExt as _;
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::ensure!(
                status == http::StatusCode::CREATED,
                "HTTP create: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok(())
        }
    })
    .await;
    server.stop().await?;
    result
}

/// What a raw etcd baseline writes per op.
#[derive(Clone, Copy)]
pub(crate) enum RawOp {
    /// A plain put.
    Put,
    /// A create-if-absent transaction (compare create_revision = 0, then
    /// put): the write the API server itself makes for a create.
    Txn,
}

pub(crate) async fn raw_etcd(
    endpoint: &str,
    op: RawOp,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let mut clients = Vec::new();
    for _ in 0..connections(concurrency) {
        clients.push(etcd_client::Client::connect([endpoint], None).await?);
    }
    // The same bytes the API server stores for a bench Pod.
    let value = bench_pod("raw".into()).encode_to_vec();
    let clients = Arc::new(clients);
    let tag = match op {
        RawOp::Put => "put",
        RawOp::Txn => "txn",
    };
    drive(concurrency, seconds, move |w, i| {
        let mut kv = clients[w % clients.len()].kv_client();
        let key = format!("/raw/{tag}/c{concurrency}/w{w}/{i}");
        let value = value.clone();
        async move {
            match op {
                RawOp::Put => {
                    kv.put(key, value, None).await.context("etcd put")?;
                }
                RawOp::Txn => {
                    let txn = etcd_client::Txn::new()
                        .when([etcd_client::Compare::create_revision(
                            key.clone(),
                            etcd_client::CompareOp::Equal,
                            0,
                        )])
                        .and_then([etcd_client::TxnOp::put(key, value, None)]);
                    kv.txn(txn).await.context("etcd txn")?;
                }
            }
            Ok(())
        }
    })
    .await
}

/// The table's header: one row per target and concurrency.
pub(crate) fn print_header() {
    println!(
        "{:<12} {:>15} {:>8} {:>10} {:>9} {:>9} {:>8}",
        "concurrency", "target", "ops", "ops/s", "p50 ms", "p99 ms", "vs raw"
    );
}

/// The rows of concurrency `c`, each beside `raw`; targets not measured
/// (no ops) are left out.
pub(crate) fn print_rows(c: usize, raw: &Figures, targets: &[(&str, Figures)]) {
    for (name, f) in targets {
        if f.ops == 0 {
            continue;
        }
        println!(
            "{:<12} {:>15} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>7.2}x",
            c,
            name,
            f.ops,
            f.per_sec,
            f.p50_ms,
            f.p99_ms,
            f.per_sec / raw.per_sec
        );
    }
}

/// A new, empty redb store file at `path` (the embedded store as it was
/// kept before the journal): a server given its path opens it as one.
fn redb_file(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    drop(skiff_store::EmbeddedStore::open_redb(path)?);
    // Its writer thread lets the file go once it sees the handle gone.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(path.to_path_buf())
}

pub(crate) async fn bench_api(
    seconds: f64,
    levels: Vec<usize>,
    with_etcd_api: bool,
    with_http: bool,
    with_redb: bool,
) -> anyhow::Result<()> {
    let etcd = skiff_testkit::Etcd::start()?;
    let dir = tempfile::tempdir()?;
    print_header();
    let mut rows = Vec::new();
    for &c in &levels {
        eprintln!("measuring concurrency {c} ({seconds}s each)...");
        let raw = raw_etcd(&etcd.endpoint, RawOp::Put, c, seconds).await?;
        let raw_txn = raw_etcd(&etcd.endpoint, RawOp::Txn, c, seconds).await?;
        let on_etcd = if with_etcd_api {
            api_creates(
                StoreConfig::Etcd(vec![etcd.endpoint.clone()]),
                "etcd",
                c,
                seconds,
            )
            .await?
        } else {
            Figures::default()
        };
        let embedded = api_creates(
            StoreConfig::Embedded(dir.path().join(format!("bench-{c}"))),
            "emb",
            c,
            seconds,
        )
        .await?;
        let redb = if with_redb {
            api_creates(
                StoreConfig::Embedded(redb_file(&dir.path().join(format!("bench-{c}.redb")))?),
                "redb",
                c,
                seconds,
            )
            .await?
        } else {
            Figures::default()
        };
        let http = if with_http {
            api_http_creates(
                StoreConfig::Embedded(dir.path().join(format!("bench-http-{c}"))),
                c,
                seconds,
            )
            .await?
        } else {
            Figures::default()
        };
        print_rows(
            c,
            &raw,
            &[
                ("raw etcd put", raw),
                ("raw etcd txn", raw_txn),
                ("api (etcd)", on_etcd),
                ("api (embedded)", embedded),
                ("api (redb)", redb),
                ("http (embedded)", http),
            ],
        );
        rows.push(json!({
            "concurrency": c,
            "raw_etcd_puts_per_sec": raw.per_sec,
            "raw_etcd_p50_ms": raw.p50_ms,
            "raw_etcd_p99_ms": raw.p99_ms,
            "raw_etcd_txns_per_sec": raw_txn.per_sec,
            "raw_etcd_txn_p50_ms": raw_txn.p50_ms,
            "raw_etcd_txn_p99_ms": raw_txn.p99_ms,
            "ratio_api_etcd_vs_raw_txn": on_etcd.per_sec / raw_txn.per_sec,
            "api_etcd_creates_per_sec": on_etcd.per_sec,
            "api_etcd_p50_ms": on_etcd.p50_ms,
            "api_etcd_p99_ms": on_etcd.p99_ms,
            "api_embedded_creates_per_sec": embedded.per_sec,
            "api_embedded_p50_ms": embedded.p50_ms,
            "api_embedded_p99_ms": embedded.p99_ms,
            "ratio_api_etcd_vs_raw": on_etcd.per_sec / raw.per_sec,
            "ratio_api_embedded_vs_raw": embedded.per_sec / raw.per_sec,
            "api_redb_creates_per_sec": redb.per_sec,
            "api_redb_p50_ms": redb.p50_ms,
            "api_redb_p99_ms": redb.p99_ms,
            "ratio_api_redb_vs_raw": redb.per_sec / raw.per_sec,
            "http_embedded_creates_per_sec": http.per_sec,
            "http_embedded_p50_ms": http.p50_ms,
            "http_embedded_p99_ms": http.p99_ms,
            "ratio_http_vs_grpc_embedded": http.per_sec / embedded.per_sec,
        }));
    }
    println!(
        "{}",
        json!({"bench": "api", "seconds": seconds, "results": rows})
    );
    Ok(())
}
