//! Skiff's tracing, shared by every process.
//!
//! - [`init`]: logs on stderr (text or JSON, level from `RUST_LOG`) and,
//!   when an OTLP endpoint is given (`--otlp-endpoint` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`), every `info` span of Skiff's crates
//!   exported over OTLP/gRPC in batches.
//! - The W3C trace context (`traceparent`) travels in gRPC metadata:
//!   [`inject`] on the client side (the shared API client does it for every
//!   call), [`GrpcTraceLayer`] on the server side (a tower layer: one span
//!   per call, child of the caller's).
//! - Objects carry the context of the request that created them (or last
//!   changed their spec) in the [`TRACE_ANNOTATION`] annotation, so the
//!   scheduler, the controllers and the agents join the trace of the
//!   `skiff apply` that started the work ([`set_parent_from`]).

use std::collections::{BTreeMap, HashMap};
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The annotation holding the W3C `traceparent` of the request that
/// created an object or last changed its spec.
pub const TRACE_ANNOTATION: &str = "trace.skiff.io/traceparent";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter could not be built (a malformed endpoint).
    #[error("OTLP exporter for {endpoint:?}: {source}")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Keeps the exporter; [`Telemetry::shutdown`] (or dropping it) sends
/// the spans not yet sent.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is buffered and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans: {e}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the process's tracing: logs as `log_format` (`text` or
/// `json`) on stderr, and spans exported to `otlp_endpoint` (as
/// `http://host:4317`) under `service` (OpenTelemetry's service.name).
/// Must run inside a tokio runtime that lives as long as the process.
///
/// # Errors
/// A malformed endpoint.
pub fn init(
    service: &str,
    log_format: &str,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if log_format == "json" {
        logs.json()
            .with_current_span(true)
            .with_filter(filter)
            .boxed()
    } else {
        logs.with_target(false).with_filter(filter).boxed()
    };
    let endpoint = otlp_endpoint.filter(|e| !e.is_empty());
    let Some(endpoint) = endpoint else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| Error::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("skiff");
    // Skiff's own spans, info and above: not every dependency's.
    let spans =
        tracing_subscriber::filter::Targets::new().with_target("skiff", tracing::Level::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(spans);
    tracing_subscriber::registry().with(logs).with(otel).init();
    tracing::info!(%endpoint, %service, "exporting traces by OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

// === the W3C trace context ===

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The OpenTelemetry context of the current span, if it is traced.
fn current() -> Option<opentelemetry::Context> {
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Adds the current span's `traceparent` to outgoing gRPC metadata
/// (nothing when the span is not traced).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(cx) = current() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
    }
}

/// The current span's W3C `traceparent`, if it is traced.
pub fn current_traceparent() -> Option<String> {
    let cx = current()?;
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (a
/// malformed or absent value leaves it a root).
pub fn set_parent_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the trace recorded on an object (its
/// [`TRACE_ANNOTATION`]).
pub fn join_object(span: &tracing::Span, annotations: &BTreeMap<String, String>) {
    set_parent_from(span, annotations.get(TRACE_ANNOTATION).map(String::as_str));
}

/// Records the current span's context on an object's annotations (when
/// the current span is traced).
pub fn annotate(annotations: &mut BTreeMap<String, String>) {
    if let Some(traceparent) = current_traceparent() {
        annotations.insert(TRACE_ANNOTATION.to_string(), traceparent);
    }
}

// === the server layer ===

/// A tower layer giving every gRPC call a span (`grpc.server`, named by
/// the method, child of the caller's span when the call carries a
/// `traceparent`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> tower::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// See [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        future.instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_injected_or_annotated_outside_a_traced_span() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject(&mut metadata);
        assert!(metadata.is_empty());
        let mut annotations = BTreeMap::new();
        annotate(&mut annotations);
        assert!(annotations.is_empty());
        assert_eq!(current_traceparent(), None);
    }

    #[test]
    fn a_span_joins_the_trace_an_object_names_and_passes_it_on() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let annotations = BTreeMap::from([(
                TRACE_ANNOTATION.to_string(),
                format!("00-{trace}-00f067aa0ba902b7-01"),
            )]);
            let span = tracing::info_span!("reconcile");
            join_object(&span, &annotations);
            let _entered = span.enter();
            let traceparent = current_traceparent().expect("a traced span");
            assert!(
                traceparent.starts_with(&format!("00-{trace}-")),
                "{traceparent}"
            );
            assert!(!traceparent.contains("00f067aa0ba902b7"), "its own span id");
            let mut metadata = tonic::metadata::MetadataMap::new();
            inject(&mut metadata);
            assert_eq!(
                metadata.get("traceparent").unwrap().to_str().unwrap(),
                traceparent
            );
            let mut created = BTreeMap::new();
            annotate(&mut created);
            assert_eq!(created[TRACE_ANNOTATION], traceparent);
        });
        // A malformed value leaves the span a root of its own trace.
        let span = tracing::info_span!("root");
        set_parent_from(&span, Some("not-a-traceparent"));
    }
}
