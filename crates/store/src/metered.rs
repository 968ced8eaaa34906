//! A [`Store`] that traces (a span each) and times every operation of the
//! store it wraps, for Prometheus (`skiff_store_operation_duration_seconds{backend, operation,
//! result}`; a watch is timed until it is open).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::{KeyValue, ListOptions, ListResult, Result, Store, WatchStream};

/// See the module doc.
pub struct Metered {
    inner: Arc<dyn Store>,
    backend: &'static str,
    /// Found once: the registry's lookup takes a process-wide lock.
    seconds: prometheus::HistogramVec,
}

impl Metered {
    /// Times the operations of `inner`, labelled `backend` (`embedded`,
    /// `etcd`).
    pub fn new(inner: Arc<dyn Store>, backend: &'static str) -> Self {
        let seconds = skiff_metrics::seconds_vec(
            "skiff_store_operation_duration_seconds",
            "store operations as the API server sees them, by backend, operation and result",
            &["backend", "operation", "result"],
        );
        Self {
            inner,
            backend,
            seconds,
        }
    }

    async fn timed<T>(&self, operation: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        use tracing::Instrument as _;
        let started = std::time::Instant::now();
        // A span per operation, in the trace of the request it serves.
        let span = tracing::info_span!(
            "store",
            otel.name = %format_args!("store {operation}"),
            db.system = self.backend,
        );
        let result = work.instrument(span).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.seconds
            .with_label_values(&[self.backend, operation, outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait::async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn list(&self, options: ListOptions) -> Result<ListResult> {
        self.timed("list", self.inner.list(options)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<i64> {
        self.timed("create", self.inner.create(key, value)).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: Option<i64>) -> Result<i64> {
        self.timed("update", self.inner.update(key, value, expected))
            .await
    }

    async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(i64, KeyValue)> {
        self.timed("delete", self.inner.delete(key, expected)).await
    }

    async fn oldest_kept(&self, from: i64) -> Result<i64> {
        self.timed("oldest_kept", self.inner.oldest_kept(from))
            .await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        self.timed("watch", self.inner.watch(prefix, start_revision))
            .await
    }

    async fn current_revision(&self) -> Result<i64> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.timed("compact", self.inner.compact(revision)).await
    }
}
