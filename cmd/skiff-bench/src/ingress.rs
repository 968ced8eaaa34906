//! `skiff-bench ingress`: HTTP requests through the ingress controller vs
//! straight to the backend, same run. The backend is a keep-alive HTTP
//! server in this process behind a Service whose Endpoints name it (a
//! pod's busybox httpd closes every connection, which would measure TCP
//! set-up instead of the proxy); the clients keep their connections, as
//! load generators (wrk, hey) and browsers do.

// The shared helpers and imports of the bench binary.
use super::*;

/// The backend: `hello` to everything, over keep-alive HTTP/1.1.
async fn serve_backend() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello\n")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// One `GET /` for host `host` at `addr` on a pooled connection.
async fn get(client: &Client, addr: std::net::SocketAddr, host: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let request = http::Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::new())?;
    let response = client.request(request).await?;
    anyhow::ensure!(response.status() == 200, "{addr}: {}", response.status());
    response.into_body().collect().await?;
    Ok(())
}

pub(crate) async fn bench_ingress(seconds: f64, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse()?,
        StoreConfig::Embedded(dir.path().join("ingress")),
    );
    let server = skiff_apiserver::ApiServer::start(config).await?;
    let channel = skiff_testkit::channel(server.addr).await?;
    let backend = serve_backend().await?;
    let service: skiff::pb::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }))?;
    skiff_client::Api::new(channel.clone())
        .create(service)
        .await?;
    let endpoints: skiff::pb::core::v1::Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": backend.port()}]}],
    }))?;
    skiff_client::Api::new(channel.clone())
        .create(endpoints)
        .await?;
    let ingress: skiff::pb::networking::v1::Ingress = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ingressClassName": "skiff", "rules": [{"host": "web.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
        ]}}]},
    }))?;
    skiff_client::Api::new(channel.clone())
        .create(ingress)
        .await?;
    let mut config = skiff_ingress::Config::new(&format!("http://{}", server.addr));
    config.http = Some("127.0.0.1:0".parse()?);
    config.https = None;
    let controller = skiff_ingress::start(config).await?;
    let through = controller.http.context("the ingress listens")?;
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build_http();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&client, through, "web.example").await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ingress did not route within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let measure = |addr: std::net::SocketAddr| {
        let client = client.clone();
        drive(concurrency, seconds, move |_, _| {
            let client = client.clone();
            async move { get(&client, addr, "web.example").await }
        })
    };
    // Interleaved, twice each, so a noisy moment hurts both sides alike.
    let mut runs: [Vec<Figures>; 2] = Default::default();
    for _ in 0..2 {
        for (i, addr) in [backend, through].into_iter().enumerate() {
            runs[i].push(measure(addr).await?);
        }
    }
    let [d, i] = [Figures::mean(&runs[0]), Figures::mean(&runs[1])];
    println!(
        "HTTP/1.1 GET on kept connections, {concurrency} clients, {seconds} s x 2 per path; the backend, the ingress and the clients share this machine's cores"
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "", "req/s", "p50 ms", "p99 ms"
    );
    for (label, f) in [
        ("backend directly (raw, same run)", d),
        ("through skiff ingress", i),
    ] {
        println!(
            "{label:<40} {:>10.0} {:>10.2} {:>10.2}",
            f.per_sec, f.p50_ms, f.p99_ms
        );
    }
    println!(
        "{:<40} {:>10.2} {:>10.2} {:>10.2}",
        "ratio ingress / direct (target >= 0.7)",
        i.per_sec / d.per_sec,
        i.p50_ms / d.p50_ms,
        i.p99_ms / d.p99_ms
    );
    println!(
        "{}",
        json!({
            "bench": "ingress", "concurrency": concurrency,
            "direct_per_sec": d.per_sec, "direct_p99_ms": d.p99_ms,
            "ingress_per_sec": i.per_sec, "ingress_p99_ms": i.p99_ms,
            "ratio_per_sec": i.per_sec / d.per_sec, "ratio_p99": i.p99_ms / d.p99_ms,
        })
    );
    controller.stop();
    server.stop().await?;
    Ok(())
}
