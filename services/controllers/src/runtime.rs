//! The controller pattern: informers → a work queue of keys → an
//! idempotent `reconcile(key)`; errors requeue with backoff, successes
//! reset it, and a reconcile may ask to run again later.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use skiff::ObjectRef;
use skiff_client::WorkQueue;
use tracing::Instrument as _;

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    AwaitChange,
    /// Run again after this long (e.g. waiting for caches to catch up).
    Requeue(Duration),
}

/// Why a reconcile failed (requeued with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API refused or failed a call.
    #[error("{0}")]
    Api(#[from] tonic::Status),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// A boxed reconcile future.
pub type ReconcileFuture<'a> = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send + 'a>>;

/// One controller's logic.
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name (logs, metrics, leases).
    fn name(&self) -> &'static str;
    /// Makes the world match the desired state of `key`. Must be
    /// idempotent: it is never told why it runs.
    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_>;
    /// The trace recorded on the object behind `key` (its W3C
    /// traceparent annotation), which the reconcile joins; None for
    /// controllers whose reconciles start traces of their own.
    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        let _ = key;
        None
    }
}

/// The trace recorded on the object behind `key` in `store`.
pub fn traceparent_in<K: skiff::Resource>(
    store: &skiff_client::Store<K>,
    key: &ObjectRef,
) -> Option<String> {
    let obj = store.get(&key.namespace, &key.name)?;
    obj.metadata()?
        .annotations
        .get(skiff_telemetry::TRACE_ANNOTATION)
        .cloned()
}

/// Runs `workers` reconcile loops over `queue` until it shuts down. Each
/// key is processed by one worker at a time (the queue guarantees it).
pub async fn run_workers(
    reconciler: Arc<dyn Reconciler>,
    queue: WorkQueue<ObjectRef>,
    workers: usize,
) {
    let name = reconciler.name();
    let latency = skiff_metrics::seconds_vec(
        "skiff_controller_reconcile_duration_seconds",
        "time of one reconcile, by controller",
        &["controller"],
    )
    .with_label_values(&[name]);
    let errors = skiff_metrics::counter_vec(
        "skiff_controller_reconcile_errors_total",
        "reconciles that failed and were requeued with backoff, by controller",
        &["controller"],
    )
    .with_label_values(&[name]);
    let depth = skiff_metrics::gauge_vec(
        "skiff_controller_queue_depth",
        "keys waiting in the controller's work queue",
        &["controller"],
    )
    .with_label_values(&[name]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (reconciler, queue) = (Arc::clone(&reconciler), queue.clone());
        let (latency, errors, depth) = (latency.clone(), errors.clone(), depth.clone());
        tasks.spawn(async move {
            while let Some(key) = queue.next().await {
                depth.set(i64::try_from(queue.len()).unwrap_or(i64::MAX));
                let timer = latency.start_timer();
                let span = tracing::info_span!(
                    "reconcile",
                    otel.name = %format_args!("reconcile {}", reconciler.name()),
                    key = %key,
                );
                skiff_telemetry::set_parent_from(&span, reconciler.traceparent(&key).as_deref());
                let result = reconciler.reconcile(key.clone()).instrument(span).await;
                timer.observe_duration();
                if result.is_err() {
                    errors.inc();
                }
                match result {
                    Ok(Action::AwaitChange) => queue.forget(&key),
                    Ok(Action::Requeue(after)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), after);
                    }
                    Err(e) => {
                        tracing::debug!(controller = reconciler.name(), key = %key, error = %e, "reconcile failed; requeued");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    // A panicking reconcile takes the controller down (the other workers
    // are aborted with the set): its supervisor restarts it.
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
