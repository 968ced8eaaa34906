//! The controller pattern: informers → a work queue of keys → an
//! idempotent `reconcile(key)`; errors requeue with backoff, successes
//! reset it, and a reconcile may ask to run again later.
//!
//! [`Controller`] declares what wakes a controller, as kube-runtime's
//! `Controller::new(api).owns(..).watches(..)`: each informer it
//! [`watches`](Controller::watches) with a mapper from a change to the keys
//! to reconcile. Subscribing at declaration (nothing is missed), waiting
//! for every cache to sync, reconciling every key once at the start (a
//! restarted controller resumes from its caches), and falling back to
//! every key when a subscription lags are written here once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use skiff::ObjectRef;
use skiff_client::{Change, Informer, WorkQueue};
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

// === impl Controller ===

/// What woke a controller.
enum Wake {
    /// These keys changed (or depend on what changed).
    Keys(Vec<ObjectRef>),
    /// A subscription lagged: changes may have been missed.
    Everything,
}

/// A controller's triggers and caches, declared before it runs.
pub struct Controller<R: Reconciler> {
    /// The logic.
    reconciler: Arc<R>,
    /// The changes that wake it, as keys.
    wakes: Vec<BoxStream<'static, Wake>>,
    /// The caches it reads, which must have listed before it runs.
    synced: Vec<BoxFuture<'static, ()>>,
}

impl<R: Reconciler> Controller<R> {
    /// A controller running `reconciler`, woken by nothing yet.
    pub fn new(reconciler: Arc<R>) -> Self {
        Self {
            reconciler,
            wakes: Vec::new(),
            synced: Vec::new(),
        }
    }

    /// Wakes it for the changes of `informer`'s kind, mapped to the keys
    /// they concern (none: ignored); waits for that cache to sync.
    pub fn watches<K: skiff::Resource>(
        mut self,
        informer: &Informer<K>,
        keys: impl Fn(&Change<K>) -> Vec<ObjectRef> + Send + 'static,
    ) -> Self {
        let changes = informer.subscribe();
        self.synced.push(wait_synced(informer.store.clone()));
        let wakes = futures::stream::unfold(changes, |mut changes| async move {
            use tokio::sync::broadcast::error::RecvError;
            match changes.recv().await {
                Ok(change) => Some((Ok(change), changes)),
                Err(RecvError::Lagged(_)) => Some((Err(()), changes)),
                Err(RecvError::Closed) => None,
            }
        })
        .map(move |change| match change {
            Ok(change) => Wake::Keys(keys(&change)),
            Err(()) => Wake::Everything,
        });
        self.wakes.push(wakes.boxed());
        self
    }

    /// Wakes it for every change of its own kind (`informer`), by the
    /// object's key.
    pub fn for_kind<K: skiff::Resource>(self, informer: &Informer<K>) -> Self {
        self.watches(informer, |change| vec![changed(change).object_ref()])
    }

    /// Waits for `store` to sync before running, without being woken by
    /// its changes (a cache the reconcile only reads).
    pub fn reads<K: skiff::Resource>(mut self, store: &skiff_client::Store<K>) -> Self {
        self.synced.push(wait_synced(store.clone()));
        self
    }

    /// Runs the controller: once its caches have synced, every key
    /// `everything` names is reconciled, then each key its triggers name
    /// (all of `everything` again when one lagged), by `workers` workers,
    /// until a reconcile panics (re-raised for the supervisor).
    pub async fn run(
        self,
        everything: impl Fn() -> Vec<ObjectRef> + Send + 'static,
        workers: usize,
    ) {
        futures::future::join_all(self.synced).await;
        let queue = WorkQueue::new();
        everything().into_iter().for_each(|k| queue.add(k));
        let mut wakes = futures::stream::select_all(self.wakes);
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                while let Some(wake) = wakes.next().await {
                    let keys = match wake {
                        Wake::Keys(keys) => keys,
                        Wake::Everything => everything(),
                    };
                    keys.into_iter().for_each(|k| queue.add(k));
                }
            })
        };
        // The feeder and queue stop however this future ends: the workers
        // return, a reconcile panics (re-raised through here for the
        // supervisor), or the future is dropped (a sibling controller joined
        // with it panicked).
        let _stop = Stop(feeder.abort_handle(), queue.clone());
        let reconciler = with_test_hook(self.reconciler as Arc<dyn Reconciler>);
        run_workers(reconciler, queue, workers).await;
    }
}

/// Stops a controller's feeder and queue when dropped.
struct Stop(tokio::task::AbortHandle, WorkQueue<ObjectRef>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.abort();
        self.1.shut_down();
    }
}

fn wait_synced<K: skiff::Resource>(store: skiff_client::Store<K>) -> BoxFuture<'static, ()> {
    async move { store.wait_synced().await }.boxed()
}

/// The object a change is about.
pub fn changed<K>(change: &Change<K>) -> &Arc<K> {
    match change {
        Change::Applied(o) | Change::Deleted(o) => o,
    }
}

/// The keys of every object `store` holds.
pub fn keys_of<K: skiff::Resource>(store: &skiff_client::Store<K>) -> Vec<ObjectRef> {
    store.list().iter().map(|o| o.object_ref()).collect()
}

/// Runs a controller keeping one object per namespace (its keys are
/// namespaces, `ObjectRef::new("", NAME)`): woken by namespace changes and
/// by changes of the objects it keeps (`children`).
pub fn per_namespace<R: Reconciler, K: skiff::Resource>(
    shared: &crate::Shared,
    workers: usize,
    controller: Arc<R>,
    children: &Informer<K>,
) -> BoxFuture<'static, ()> {
    use skiff::Resource as _;
    let namespaces = shared.namespaces.store.clone();
    Controller::new(controller)
        .watches(&shared.namespaces, |change| {
            vec![ObjectRef::new("", changed(change).name())]
        })
        .watches(children, |change| {
            vec![ObjectRef::new("", changed(change).namespace())]
        })
        .run(
            move || {
                namespaces
                    .list()
                    .iter()
                    .map(|n| ObjectRef::new("", n.name()))
                    .collect()
            },
            workers,
        )
        .boxed()
}

/// Test hook: `SKIFF_TEST_PANIC_CONTROLLER=<name>` makes that controller's
/// first reconcile panic, to exercise the supervisor.
struct PanicOnce {
    inner: Arc<dyn Reconciler>,
}

static PANICKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Reconciler for PanicOnce {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        if PANICKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            panic!("test hook: {} panics once", self.inner.name());
        }
        self.inner.reconcile(key)
    }

    fn traceparent(&self, key: &ObjectRef) -> Option<String> {
        self.inner.traceparent(key)
    }
}

fn with_test_hook(reconciler: Arc<dyn Reconciler>) -> Arc<dyn Reconciler> {
    match std::env::var("SKIFF_TEST_PANIC_CONTROLLER") {
        Ok(name) if name == reconciler.name() => Arc::new(PanicOnce { inner: reconciler }),
        _ => reconciler,
    }
}
