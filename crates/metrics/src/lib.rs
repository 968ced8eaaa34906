//! Prometheus metrics for Skiff's components.
//!
//! # Layout
//!
//! - [`registry`]: the process's registry (every component of `skiff up`
//!   runs in one process and shares it; names carry the component);
//!   [`counter_vec`], [`gauge_vec`], [`seconds_vec`] make (once) the
//!   families components record into.
//! - [`serve`]: `GET /metrics` in Prometheus' text format, on the
//!   component's `--metrics-addr`.
//! - [`GrpcMetricsLayer`]: a tower layer for a tonic server that counts
//!   calls and times them by kind (the gRPC service), method and code, and
//!   tracks calls in flight and open watches. Handlers are not touched:
//!   the code comes from the response's `grpc-status`, in its headers
//!   (errors) or in the trailers that end its body (successes and streams).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The process's registry.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::new)
}

/// Registers `collector` in the process's registry.
///
/// # Panics
/// On a name registered twice (callers go through [`shared`]).
fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    if let Err(e) = registry().register(Box::new(collector.clone())) {
        panic!("registering a metric: {e}");
    }
    collector
}

/// The collector named `name`, made by `make` and registered the first
/// time, the same one afterwards (components started again in one
/// process, as in tests, keep counting in it).
///
/// # Panics
/// When `name` was first made as another type of collector (a
/// programming error).
pub fn shared<C>(name: &str, make: impl FnOnce() -> prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + Send + Sync + 'static,
{
    type Known = std::collections::HashMap<String, Box<dyn std::any::Any + Send + Sync>>;
    static KNOWN: OnceLock<std::sync::Mutex<Known>> = OnceLock::new();
    let mut known = KNOWN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(existing) = known.get(name) {
        return existing
            .downcast_ref::<C>()
            .unwrap_or_else(|| panic!("metric {name} registered as another type"))
            .clone();
    }
    let collector = register(make().unwrap_or_else(|e| panic!("metric {name}: {e}")));
    known.insert(name.to_string(), Box::new(collector.clone()));
    collector
}

/// A counter family, shared by name (see [`shared`]).
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    shared(name, || IntCounterVec::new(Opts::new(name, help), labels))
}

/// A gauge family, shared by name (see [`shared`]).
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    shared(name, || IntGaugeVec::new(Opts::new(name, help), labels))
}

/// A histogram family of durations in seconds (0.5 ms to 16 s), shared by
/// name (see [`shared`]).
pub fn seconds_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    shared(name, || {
        HistogramVec::new(
            HistogramOpts::new(name, help)
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            labels,
        )
    })
}

/// The registry's metrics in Prometheus' text format.
pub fn render() -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry().gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `GET /metrics` (anything else: 404) on `addr` until the task is
/// dropped; returns the bound address (port 0 picks one) and the task.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(answer(stream));
        }
    });
    tracing::info!(address = %bound, "serving metrics at /metrics");
    Ok((bound, task))
}

/// One HTTP/1.x exchange: the request head, then the response, closed.
async fn answer(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|b| *b == b'?').next().unwrap_or(p));
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            TextEncoder::new().format_type().to_string(),
            render(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8".to_string(),
            "only /metrics is served here\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The gRPC server metrics of one component (`prefix`: `skiff_apiserver`).
#[derive(Clone)]
pub struct GrpcMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGaugeVec,
    watchers: IntGauge,
    paths: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl GrpcMetrics {
    /// The metrics named `{prefix}_…`, registered on first use (a
    /// component started again in the same process, as in tests, keeps
    /// counting in the same ones).
    pub fn new(prefix: &str) -> Self {
        let labels = ["kind", "method", "code"];
        Self {
            requests: counter_vec(
                &format!("{prefix}_requests_total"),
                "gRPC calls handled, by kind (service), method and code",
                &labels,
            ),
            latency: seconds_vec(
                &format!("{prefix}_request_duration_seconds"),
                "gRPC call duration until the last byte of the answer (a watch: its whole life)",
                &labels,
            ),
            in_flight: gauge_vec(
                &format!("{prefix}_requests_in_flight"),
                "gRPC calls being handled or streaming, by kind and method",
                &["kind", "method"],
            ),
            watchers: shared(&format!("{prefix}_watchers"), || {
                IntGauge::new(format!("{prefix}_watchers"), "open Watch streams")
            }),
            paths: Arc::default(),
        }
    }
}

/// A tower layer recording [`GrpcMetrics`] for every call.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: GrpcMetrics) -> Self {
        Self {
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// Distinct (kind, method) label pairs kept per layer; calls to further
/// paths (only a client making paths up gets there) are labelled
/// `other`, so no client can grow the registry without bound.
const MAX_PATHS: usize = 512;

/// `/pkg.Service/Method` → (`Service`, `Method`).
fn kind_and_method(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let kind = service.rsplit('.').next().unwrap_or(service);
    (kind.to_string(), method.to_string())
}

/// The labels of `path`, or `other` once [`MAX_PATHS`] pairs are known.
fn labels_of(
    seen: &std::sync::Mutex<std::collections::HashSet<String>>,
    path: &str,
) -> (String, String) {
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.contains(path) || seen.len() < MAX_PATHS {
        seen.insert(path.to_string());
        kind_and_method(path)
    } else {
        ("other".to_string(), "other".to_string())
    }
}

/// The name of a gRPC status code (`"NotFound"`), from its number.
fn code_name(code: &http::HeaderValue) -> String {
    let number = code
        .to_str()
        .ok()
        .and_then(|c| c.parse::<i32>().ok())
        .unwrap_or(2);
    format!("{:?}", tonic::Code::from_i32(number))
}

/// What one call records when its answer ends.
struct Call {
    metrics: Arc<GrpcMetrics>,
    kind: String,
    method: String,
    started: Instant,
    /// A code seen in the response headers (trailers-only errors).
    code: Option<String>,
    done: bool,
}

impl Call {
    fn start(metrics: Arc<GrpcMetrics>, path: &str) -> Self {
        let (kind, method) = labels_of(&metrics.paths, path);
        metrics.in_flight.with_label_values(&[&kind, &method]).inc();
        if method == "Watch" {
            metrics.watchers.inc();
        }
        Self {
            metrics,
            kind,
            method,
            started: Instant::now(),
            code: None,
            done: false,
        }
    }

    /// Records the call once, with `code` (else the headers' code, else
    /// OK when the body simply ended).
    fn finish(&mut self, code: Option<String>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = code
            .or_else(|| self.code.take())
            .unwrap_or_else(|| "Ok".to_string());
        let labels = [self.kind.as_str(), self.method.as_str(), code.as_str()];
        self.metrics.requests.with_label_values(&labels).inc();
        self.metrics
            .latency
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .in_flight
            .with_label_values(&[&self.kind, &self.method])
            .dec();
        if self.method == "Watch" {
            self.metrics.watchers.dec();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // An answer that was all headers (an error: its body is never
        // polled), or a client that went away before the end (a watch
        // closed, a deadline).
        let code = self.code.take().unwrap_or_else(|| "Cancelled".to_string());
        self.finish(Some(code));
    }
}

/// A response body that records its call when it ends.
pub struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    call: Call,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    let code = code_name(code);
                    self.call.finish(Some(code));
                }
            }
            Poll::Ready(Some(Err(_))) => self.call.finish(Some("Unknown".to_string())),
            Poll::Ready(None) => self.call.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The future of a [`GrpcMetricsService`] call.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn std::future::Future<Output = Result<http::Response<TrackedBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Kubernetes HTTP API calls share the port: counted by HTTP method
        // (their paths hold object names, unbounded as labels).
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = if grpc {
            request.uri().path().to_string()
        } else {
            format!("/http/{}", request.method())
        };
        let mut call = Call::start(Arc::clone(&self.metrics), &path);
        Box::pin(async move {
            let response = inner.call(request).await;
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    call.finish(Some("Unavailable".to_string()));
                    return Err(e);
                }
            };
            call.code = if grpc {
                response.headers().get("grpc-status").map(code_name)
            } else {
                Some(response.status().as_u16().to_string())
            };
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                call,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_give_kind_and_method() {
        assert_eq!(
            kind_and_method("/skiff.core.v1.Pods/Create"),
            ("Pods".to_string(), "Create".to_string())
        );
        assert_eq!(
            code_name(&http::HeaderValue::from_static("5")),
            "NotFound".to_string()
        );
    }

    #[tokio::test]
    async fn calls_are_counted_with_the_code_of_their_trailers_or_headers() {
        use http_body::Body as _;
        use tower::{Layer as _, Service as _, ServiceExt as _};
        let metrics = GrpcMetrics::new("skiff_test");
        let layer = GrpcMetricsLayer::new(metrics);
        // A service answering OK in trailers, or NotFound in the headers.
        let inner = tower::service_fn(|request: http::Request<String>| async move {
            let body = if request.uri().path().ends_with("/Get") {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                http_body_util_like::Full::with_trailers("payload", trailers)
            } else {
                http_body_util_like::Full::with_trailers("", http::HeaderMap::new())
            };
            let mut response = http::Response::new(body);
            if request.uri().path().ends_with("/Delete") {
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("5"));
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut service = layer.layer(inner);
        // Two gRPC calls, then a Kubernetes HTTP API call on the same port:
        // by HTTP method and status (its path holds object names).
        let calls = [
            ("/skiff.core.v1.Pods/Get", Some("application/grpc")),
            ("/skiff.core.v1.Pods/Delete", Some("application/grpc")),
            ("/api/v1/namespaces/default/pods/web-1", None),
        ];
        for (path, content_type) in calls {
            let mut request = http::Request::builder().uri(path);
            if let Some(content_type) = content_type {
                request = request.header(http::header::CONTENT_TYPE, content_type);
            }
            let request = request.body(String::new()).unwrap();
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            let mut body = response.into_body();
            while std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_some()
            {}
        }
        let scrape = render();
        let lines: Vec<std::io::Result<String>> =
            scrape.lines().map(|l| Ok(l.to_string())).collect();
        let parsed = prometheus_parse::Scrape::parse(lines.into_iter()).expect("prometheus text");
        let count = |method: &str, code: &str| {
            parsed
                .samples
                .iter()
                .filter(|s| s.metric == "skiff_test_requests_total")
                .filter(|s| {
                    s.labels.get("method") == Some(method) && s.labels.get("code") == Some(code)
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum::<f64>()
        };
        assert_eq!(count("Get", "Ok"), 1.0, "{scrape}");
        assert_eq!(count("Delete", "NotFound"), 1.0, "{scrape}");
        assert_eq!(count("GET", "200"), 1.0, "{scrape}");
        assert!(!scrape.contains("web-1"), "{scrape}");
        assert!(
            scrape.contains("skiff_test_requests_in_flight{kind=\"Pods\",method=\"Get\"} 0"),
            "{scrape}"
        );
    }

    /// A body of one data frame and one trailers frame.
    mod http_body_util_like {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Full {
            data: Option<&'static str>,
            trailers: Option<http::HeaderMap>,
        }

        impl Full {
            pub fn with_trailers(data: &'static str, trailers: http::HeaderMap) -> Self {
                Self {
                    data: (!data.is_empty()).then_some(data),
                    trailers: (!trailers.is_empty()).then_some(trailers),
                }
            }
        }

        impl http_body::Body for Full {
            type Data = std::io::Cursor<&'static [u8]>;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
                if let Some(data) = self.data.take() {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(std::io::Cursor::new(
                        data.as_bytes(),
                    )))));
                }
                Poll::Ready(
                    self.trailers
                        .take()
                        .map(|t| Ok(http_body::Frame::trailers(t))),
                )
            }
        }
    }
}
