//! The reverse proxy: HTTP/1.1 and HTTP/2 (h2c on the plain port, ALPN on
//! the TLS one) in, HTTP/1.1 to the endpoints over pooled keep-alive
//! connections; `X-Forwarded-*` headers; WebSocket and other upgrades
//! passed through; streamed bodies both ways. Answers of its own: 404 when
//! nothing routes, 503 when the Service has no ready endpoint, 502 when
//! the endpoint does not answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::State;
use crate::routes::Backend;

/// A response body: the endpoint's, streamed, or one of our own.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one connection, never forwarded (RFC 9110
/// 7.6.1), except `Connection`/`Upgrade` on an upgrade.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The pooled client to the endpoints.
pub type Upstream = Client<HttpConnector, Body>;

/// How many endpoints a request without a body tries when one refuses
/// the connection (one going away during a rollout, before its Endpoints
/// say so; as NGINX's `proxy_next_upstream error`).
const TRIES: usize = 3;

/// A client with keep-alive pools to the endpoints.
pub fn upstream() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build(connector)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves one request from `client` that came in over `scheme`.
pub async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    scheme: &'static str,
    port: u16,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // An answer of the controller's own, logged and counted.
    let own = |backend: Option<&Backend>, status: StatusCode, body: String| {
        state.record(
            backend,
            method.as_str(),
            &path,
            &host,
            status,
            started,
            client,
        );
        text(status, body)
    };
    if let Some(why) = unsafe_path(&path) {
        return Ok(own(
            None,
            StatusCode::BAD_REQUEST,
            format!("400 bad request: {why}\n"),
        ));
    }
    let routes = state.routes();
    let Some(backend) = routes.route(&host, &path).cloned() else {
        return Ok(own(
            None,
            StatusCode::NOT_FOUND,
            "404 page not found: no Ingress rule matches\n".into(),
        ));
    };
    drop(routes);
    let endpoints = state.endpoints(&backend);
    if endpoints.is_empty() {
        let why = format!(
            "503 service unavailable: service {}/{} has no ready endpoint\n",
            backend.namespace, backend.service
        );
        return Ok(own(Some(&backend), StatusCode::SERVICE_UNAVAILABLE, why));
    }
    let upgrade = req.headers().get(header::UPGRADE).cloned().filter(|u| {
        req.version() == http::Version::HTTP_11
            && u.to_str()
                .is_ok_and(|u| u.eq_ignore_ascii_case("websocket"))
    });
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let bodiless = hyper::body::Body::is_end_stream(req.body()) && upgrade.is_none();
    let (parts, body) = req.into_parts();
    let mut body = Some(body.boxed());
    let mut target = endpoints[backend.pick(endpoints.len())];
    let mut answer = None;
    for attempt in 0..TRIES {
        let again = bodiless && attempt + 1 < TRIES.min(endpoints.len());
        let this_body = body.take().unwrap_or_else(empty);
        let forwarded = match forward_request(
            Request::from_parts(parts.clone(), this_body),
            target,
            &host,
            client,
            scheme,
            port,
            upgrade.as_ref(),
        ) {
            Ok(forwarded) => forwarded,
            Err(why) => {
                return Ok(own(
                    Some(&backend),
                    StatusCode::BAD_REQUEST,
                    format!("400 bad request: {why}\n"),
                ));
            }
        };
        match state.upstream.request(forwarded).await {
            Err(e) if again && e.is_connect() => {
                tracing::debug!(%target, error = %e, "endpoint refused; trying the next");
                target = endpoints[backend.pick(endpoints.len())];
            }
            result => {
                answer = Some(result);
                break;
            }
        }
    }
    let Some(answer) = answer else {
        unreachable!("the last try always answers");
    };
    let uri = &parts.uri;
    let response = match answer {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                let server_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(a), Ok(b)) = (client_upgrade.await, server_upgrade.await) {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            } else {
                strip_hop_by_hop(response.headers_mut(), false);
            }
            response.map(BodyExt::boxed)
        }
        Err(e) => {
            tracing::debug!(%method, %uri, error = %e, "endpoint did not answer");
            text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "502 bad gateway: endpoint {target} of service {}/{}: {e}\n",
                    backend.namespace, backend.service
                ),
            )
        }
    };
    state.record(
        Some(&backend),
        method.as_str(),
        &path,
        &host,
        response.status(),
        started,
        client,
    );
    Ok(response)
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// `req` readdressed to `target`, with the proxy headers.
fn forward_request(
    req: Request<Body>,
    target: SocketAddr,
    host: &str,
    client: SocketAddr,
    scheme: &str,
    port: u16,
    upgrade: Option<&HeaderValue>,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{target}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade.is_some());
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    // The backend sees the host the request was routed by, whatever
    // else the client sent.
    match HeaderValue::from_str(host) {
        Ok(value) => {
            headers.insert(header::HOST, value);
        }
        Err(e) => return Err(format!("host {host:?}: {e}")),
    }
    headers.remove("forwarded");
    let ip = client.ip().to_string();
    // The controller is the edge: what clients claim is not kept.
    let forwarded_for = ip.clone();
    let set = |headers: &mut http::HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(headers, "x-forwarded-for", &forwarded_for);
    set(headers, "x-real-ip", &ip);
    set(headers, "x-forwarded-host", host);
    set(headers, "x-forwarded-proto", scheme);
    set(headers, "x-forwarded-port", &port.to_string());
    Ok(Request::from_parts(parts, body))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrading: bool) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if upgrading && (*name == "connection" || *name == "upgrade") {
            continue;
        }
        headers.remove(*name);
    }
}

/// The state's view of a backend's endpoints.
pub(crate) type Endpoints = Vec<SocketAddr>;

impl State {
    /// The ready endpoints of `backend`'s Service port.
    pub(crate) fn endpoints(&self, backend: &Backend) -> Endpoints {
        crate::resolve::endpoints(&self.services, &self.endpoints, backend)
    }
}

/// Why a request path is refused before routing: dot segments, empty
/// segments and encoded dots or slashes could match one rule here and
/// mean another path to the backend.
fn unsafe_path(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") {
        return Some("encoded dots, slashes and backslashes are not accepted in paths");
    }
    if path.contains("//") || path.contains('\\') {
        return Some("empty path segments are not accepted");
    }
    if path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Some("dot segments are not accepted in paths");
    }
    None
}
