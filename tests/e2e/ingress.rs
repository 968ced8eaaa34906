//! The ingress controller's proxy edges without Docker: a backend in this
//! test process (a Service without selector whose Endpoints name it), and
//! the controller in front of it — WebSocket pass-through, a streamed
//! response arriving piece by piece, the headers the backend sees, HTTP/2
//! in, and the requests refused before routing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full, StreamBody};
use serde_json::json;
use skiff::pb::core::v1::{Endpoints, Service};
use skiff::pb::networking::v1::Ingress;
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_testkit::wait_until;
use tokio_tungstenite::tungstenite::Message;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The backend `name`: `/stream` answers three chunks 300 ms apart, `/ws`
/// a WebSocket echo, anything else its name, the path and the request's
/// headers.
async fn backend(
    name: &'static str,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, Infallible> {
    match req.uri().path() {
        "/stream" => {
            let chunks = futures::stream::unfold(0, |n| async move {
                if n == 3 {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Some((
                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(format!(
                        "chunk{n}\n"
                    )))),
                    n + 1,
                ))
            });
            Ok(hyper::Response::new(http_body_util::BodyExt::boxed(
                StreamBody::new(chunks),
            )))
        }
        "/ws" => {
            let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    io,
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
            Ok(hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key),
                )
                .body(Full::new(Bytes::new()).boxed())
                .unwrap())
        }
        _ => {
            let mut lines: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            lines.sort();
            lines.insert(0, format!("path: {}", req.uri()));
            lines.insert(0, format!("backend: {name}"));
            Ok(hyper::Response::new(
                Full::new(Bytes::from(lines.join("\n"))).boxed(),
            ))
        }
    }
}

async fn serve_backend(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper::service::service_fn(move |req| backend(name, req)),
                    )
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 exchange (what curl would not send: a forged Host).
pub(crate) async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// An API server and an ingress controller (plain HTTP) in this process,
/// with backends that are servers of this process too.
pub(crate) struct Local {
    server: skiff_apiserver::ApiServer,
    pub(crate) channel: tonic::transport::Channel,
    controller: skiff_ingress::IngressController,
    /// Where the controller serves HTTP.
    pub(crate) http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Local {
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = skiff_apiserver::Config::new(
            "127.0.0.1:0".parse().unwrap(),
            StoreConfig::Embedded(dir.path().join("state.redb")),
        );
        let server = skiff_apiserver::ApiServer::start(config).await.unwrap();
        let channel = skiff_testkit::channel(server.addr).await.unwrap();
        let mut config = skiff_ingress::Config::new(&format!("http://{}", server.addr));
        config.http = Some("127.0.0.1:0".parse().unwrap());
        config.https = None;
        let controller = skiff_ingress::start(config).await.unwrap();
        let http = controller.http.unwrap();
        Self {
            server,
            channel,
            controller,
            http,
            _dir: dir,
        }
    }

    /// A backend server answering `name`, behind Service `name` (port 80,
    /// `http`) of `namespace`, whose Endpoints name it.
    pub(crate) async fn backend(&self, namespace: &str, name: &'static str) {
        let target = serve_backend(name).await;
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }))
        .unwrap();
        Api::<Service>::new(self.channel.clone())
            .create(service)
            .await
            .unwrap();
        let endpoints: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "http", "port": target.port()}]}],
        }))
        .unwrap();
        Api::<Endpoints>::new(self.channel.clone())
            .create(endpoints)
            .await
            .unwrap();
    }

    /// Ingress `name` of `namespace` with `spec`.
    pub(crate) async fn ingress(&self, namespace: &str, name: &str, spec: serde_json::Value) {
        let ingress: Ingress = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }))
        .unwrap();
        Api::<Ingress>::new(self.channel.clone())
            .create(ingress)
            .await
            .unwrap();
    }

    /// `GET path` for `host`, on a connection of its own.
    pub(crate) async fn get(&self, host: &str, path: &str) -> String {
        raw(
            self.http,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await
    }

    pub(crate) async fn stop(self) {
        self.controller.stop();
        self.server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_passes_websockets_and_streams_and_sets_the_forwarded_headers() {
    let local = Local::start().await;
    local.backend("default", "local").await;
    local
        .ingress(
            "default",
            "local",
            json!({"ingressClassName": "skiff", "rules": [{"host": "local.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "local", "port": {"name": "http"}}}},
            ]}}]}),
        )
        .await;
    let http = local.http;
    wait_until("the route is served", Duration::from_secs(20), async || {
        raw(
            http,
            "GET /headers HTTP/1.1\r\nHost: local.example\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;

    // The headers: the routed host, the client's address from the edge
    // (a forged X-Forwarded-For is not kept), the scheme and port.
    let seen = raw(
        http,
        "GET /headers?q=1 HTTP/1.1\r\nHost: local.example\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    for expected in [
        "path: /headers?q=1",
        "host: local.example",
        "x-forwarded-for: 127.0.0.1",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-host: local.example",
        "x-forwarded-proto: http",
        &format!("x-forwarded-port: {}", http.port()),
    ] {
        assert!(seen.contains(expected), "{expected:?} not in\n{seen}");
    }
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    // An absolute-form request is routed, and forwarded, by its authority:
    // the backend never sees another Host than the one routed.
    let forged = raw(
        http,
        "GET http://local.example/headers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(forged.contains("host: local.example"), "{forged}");
    assert!(!forged.contains("evil.example"), "{forged}");

    // A streamed response arrives piece by piece, not at its end.
    let started = Instant::now();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::get(format!("http://{http}/stream"))
        .header("host", "local.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = client.request(request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "chunk0\n");
    let first_after = started.elapsed();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "chunk1\nchunk2\n");
    assert!(
        first_after < Duration::from_millis(500) && started.elapsed() >= Duration::from_millis(600),
        "first chunk after {first_after:?}, all after {:?}",
        started.elapsed()
    );

    // HTTP/2 in (prior knowledge; curl sends the Host as :authority),
    // HTTP/1.1 out.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
        ])
        .args([
            "-H",
            "Host: local.example",
            &format!("http://{http}/headers"),
        ])
        .output()
        .expect("curl (scripts/deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("path: /headers") && text.contains("host: local.example"),
        "{text}"
    );
    assert!(text.ends_with("\n2"), "not HTTP/2: {text}");

    // A WebSocket through the controller: messages both ways.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{http}/ws"
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("host", "local.example".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();

    // Refused before routing: paths that could mean another path to the
    // backend, and a host no rule names.
    for path in [
        "/a/../headers",
        "/a/%2e%2e/headers",
        "/a//headers",
        "/a%2fheaders",
    ] {
        let answer = raw(
            http,
            &format!("GET {path} HTTP/1.1\r\nHost: local.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    let answer = raw(
        http,
        "GET /headers HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    local.stop().await;
}
