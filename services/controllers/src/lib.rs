//! Skiff's controller manager: each controller a supervised actor over
//! informers the whole manager shares (one watch per kind).
//!
//! # Layout
//!
//! - [`runtime`]: the controller pattern (queue → idempotent reconcile →
//!   requeue with backoff).
//! - [`replicaset`]: ReplicaSet and ReplicationController.
//! - [`deployment`]: Deployments: rolling update, Recreate, rollback,
//!   pause, revision history, progress conditions.
//! - [`serviceaccount`]: a `default` service account per namespace.
//! - [`autoscaler`]: replicas that follow the pods' resource use.
//! - [`daemonset`]: one pod of a template per matching node.
//! - [`job`]: pods run to completion, with parallelism, retries and
//!   deadlines.
//! - [`rootca`]: the cluster CA's `kube-root-ca.crt` ConfigMap per
//!   namespace.
//! - [`garbage`]: the garbage collector (pods and ReplicaSets whose owners
//!   are gone).
//! - [`endpoints`]: Endpoints for every Service with a selector.
//! - [`nodelifecycle`]: silent nodes go NotReady, then lose their pods.
//! - [`namespace`]: a deleted namespace is emptied, then goes.
//! - [`ControllerActor`]: runs one controller; a controller that panics or
//!   fails stops the actor, and its supervisor starts it again (with a
//!   growing pause), resuming from the shared caches.
//!
//! Controllers are registered by descriptor ([`descriptors`]): a name and
//! a constructor receiving the shared informers.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix::{
    Actor, ActorContext as _, ActorFutureExt as _, AsyncContext as _, Context, Supervised,
    WrapFuture as _,
};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use skiff::pb::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use skiff::pb::autoscaling::v2::HorizontalPodAutoscaler;
use skiff::pb::batch::v1::Job;
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, Pod, ReplicationController, Service, ServiceAccount,
};
use skiff::{ObjectRef, Resource as _};
use skiff_client::leader::{self, LeaderConfig};
use skiff_client::{Api, Change, Informer, WorkQueue};

pub mod autoscaler;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod garbage;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod rootca;
pub mod runtime;
pub mod service;
pub mod serviceaccount;

use replicaset::{ReplicaController, ReplicaOwner};
use runtime::{ReconcileFuture, Reconciler};

/// How the controllers are tuned (from the manager's config).
#[derive(Debug, Clone)]
pub struct Options {
    /// Node lifecycle timings.
    pub timing: nodelifecycle::Timing,
    /// The LoadBalancer address pool.
    pub lb_pool: Option<service::Pool>,
    /// The CA to publish in every namespace.
    pub root_ca: Option<String>,
    /// How often each autoscaler looks at its metrics.
    pub autoscaler_sync: Duration,
}

/// Informers shared by every controller of the manager.
pub struct Shared {
    /// The API channel.
    pub channel: tonic::transport::Channel,
    /// All pods.
    pub pods: Informer<Pod>,
    /// All ReplicaSets.
    pub replicasets: Informer<ReplicaSet>,
    /// All ReplicationControllers.
    pub replicationcontrollers: Informer<ReplicationController>,
    /// All Deployments.
    pub deployments: Informer<Deployment>,
    /// All DaemonSets.
    pub daemonsets: Informer<DaemonSet>,
    /// All Jobs.
    pub jobs: Informer<Job>,
    /// All HorizontalPodAutoscalers.
    pub autoscalers: Informer<HorizontalPodAutoscaler>,
    /// How often each autoscaler looks at its metrics.
    pub autoscaler_sync: Duration,
    /// All namespaces.
    pub namespaces: Informer<Namespace>,
    /// All service accounts.
    pub serviceaccounts: Informer<ServiceAccount>,
    /// All services.
    pub services: Informer<Service>,
    /// All endpoints.
    pub endpoints: Informer<Endpoints>,
    /// All nodes.
    pub nodes: Informer<Node>,
    /// Node leases (`kube-node-lease`).
    pub leases: Informer<Lease>,
    /// Node lifecycle timings.
    pub timing: nodelifecycle::Timing,
    /// The LoadBalancer address pool.
    pub lb_pool: Option<service::Pool>,
    /// Events of every controller (deduplicated with a count).
    pub recorder: Arc<skiff_client::events::Recorder>,
    /// The cluster CA's certificate to publish in every namespace (a TLS
    /// cluster).
    pub root_ca: Option<String>,
    /// The `kube-root-ca.crt` ConfigMaps, when there is a CA to publish.
    pub root_ca_configmaps: Option<Informer<ConfigMap>>,
}

impl Shared {
    /// Starts the informers.
    pub fn start(channel: tonic::transport::Channel, options: Options) -> Self {
        let Options {
            timing,
            lb_pool,
            root_ca,
            autoscaler_sync,
        } = options;
        Self {
            autoscaler_sync,
            lb_pool,
            root_ca_configmaps: root_ca.as_ref().map(|_| {
                Informer::start(
                    Api::new(channel.clone()),
                    skiff_client::watcher::Params {
                        field_selector: format!("metadata.name={}", rootca::NAME),
                        ..Default::default()
                    },
                )
            }),
            root_ca,
            nodes: Informer::start(Api::new(channel.clone()), Default::default()),
            leases: Informer::start(
                Api::new(channel.clone()),
                skiff_client::watcher::Params {
                    namespace: nodelifecycle::LEASE_NAMESPACE.into(),
                    ..Default::default()
                },
            ),
            timing,
            recorder: Arc::new(skiff_client::events::Recorder::new(
                channel.clone(),
                "controller-manager",
            )),
            pods: Informer::start(Api::new(channel.clone()), Default::default()),
            replicasets: Informer::start(Api::new(channel.clone()), Default::default()),
            replicationcontrollers: Informer::start(Api::new(channel.clone()), Default::default()),
            deployments: Informer::start(Api::new(channel.clone()), Default::default()),
            daemonsets: Informer::start(Api::new(channel.clone()), Default::default()),
            jobs: Informer::start(Api::new(channel.clone()), Default::default()),
            autoscalers: Informer::start(Api::new(channel.clone()), Default::default()),

            namespaces: Informer::start(Api::new(channel.clone()), Default::default()),
            serviceaccounts: Informer::start(Api::new(channel.clone()), Default::default()),
            services: Informer::start(Api::new(channel.clone()), Default::default()),
            endpoints: Informer::start(Api::new(channel.clone()), Default::default()),
            channel,
        }
    }
}

/// Builds a controller's run future from the shared informers.
pub type Constructor = fn(Arc<Shared>, usize) -> BoxFuture<'static, ()>;

/// A controller as registered: its name and how to start it.
#[derive(Clone, Copy)]
pub struct Descriptor {
    /// Name (`replicasets`), as in `--controllers`.
    pub name: &'static str,
    /// Starts it.
    pub start: Constructor,
}

/// Every controller the manager runs.
pub fn descriptors() -> Vec<Descriptor> {
    vec![
        Descriptor {
            name: "replicasets",
            start: |shared, workers| {
                let s = Arc::clone(&shared);
                replica_controller(
                    shared,
                    workers,
                    s.replicasets.store.clone(),
                    s.replicasets.subscribe(),
                )
            },
        },
        Descriptor {
            name: "replicationcontrollers",
            start: |shared, workers| {
                let s = Arc::clone(&shared);
                replica_controller(
                    shared,
                    workers,
                    s.replicationcontrollers.store.clone(),
                    s.replicationcontrollers.subscribe(),
                )
            },
        },
        Descriptor {
            name: "deployment",
            start: deployment_controller,
        },
        Descriptor {
            name: "daemonset",
            start: daemonset_controller,
        },
        Descriptor {
            name: "job",
            start: job_controller,
        },
        Descriptor {
            name: "horizontalpodautoscaling",
            start: autoscaler_controller,
        },
        Descriptor {
            name: "serviceaccounts",
            start: serviceaccount_controller,
        },
        Descriptor {
            name: "root-ca-cert-publisher",
            start: root_ca_publisher,
        },
        Descriptor {
            name: "garbagecollector",
            start: garbage_collector,
        },
        Descriptor {
            name: "endpoints",
            start: endpoints_controller,
        },
        Descriptor {
            name: "service",
            start: service_controller,
        },
        Descriptor {
            name: "nodelifecycle",
            start: node_lifecycle_controller,
        },
        Descriptor {
            name: "namespace",
            start: namespace_controller,
        },
    ]
}

/// Test hook: `SKIFF_TEST_PANIC_CONTROLLER=<name>` makes that controller's
/// first reconcile panic, to exercise the supervisor.
struct PanicOnce {
    inner: Arc<dyn Reconciler>,
}

static PANICKED: AtomicUsize = AtomicUsize::new(0);

impl Reconciler for PanicOnce {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        if PANICKED.fetch_add(1, Ordering::SeqCst) == 0 {
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

/// Runs a controller's workers until one panics (then re-raises it for
/// the supervisor), stopping its feeder and queue on the way out.
async fn work<R: Reconciler>(
    reconciler: Arc<R>,
    queue: WorkQueue<ObjectRef>,
    workers: usize,
    feeder: tokio::task::JoinHandle<()>,
) {
    let reconciler = with_test_hook(reconciler as Arc<dyn Reconciler>);
    let result = AssertUnwindSafe(runtime::run_workers(reconciler, queue.clone(), workers))
        .catch_unwind()
        .await;
    feeder.abort();
    queue.shut_down();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn replica_controller<K: ReplicaOwner>(
    shared: Arc<Shared>,
    workers: usize,
    owner_store: skiff_client::Store<K>,
    mut owner_changes: tokio::sync::broadcast::Receiver<Change<K>>,
) -> BoxFuture<'static, ()> {
    async move {
        let mut pod_changes = shared.pods.subscribe();
        shared.pods.store.wait_synced().await;
        owner_store.wait_synced().await;
        let controller = Arc::new(ReplicaController::new(
            Arc::clone(&shared.recorder),
            Api::<K>::new(shared.channel.clone()),
            owner_store.clone(),
            Api::new(shared.channel.clone()),
            shared.pods.store.clone(),
        ));
        let queue = WorkQueue::new();
        // Resume: every owner the cache holds is reconciled once.
        for owner in owner_store.list() {
            queue.add(owner.object_ref());
        }
        let feeder = {
            let (queue, controller) = (queue.clone(), Arc::clone(&controller));
            let owner_store = owner_store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        change = owner_changes.recv() => match change {
                            Ok(Change::Applied(o) | Change::Deleted(o)) => queue.add(o.object_ref()),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                owner_store.list().iter().for_each(|o| queue.add(o.object_ref()));
                            }
                            Err(_) => return,
                        },
                        change = pod_changes.recv() => match change {
                            Ok(Change::Applied(p)) => {
                                controller.owners_of(&p).into_iter().for_each(|k| queue.add(k));
                            }
                            Ok(Change::Deleted(p)) => {
                                controller.observe_deleted(&p);
                                controller.owners_of(&p).into_iter().for_each(|k| queue.add(k));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                owner_store.list().iter().for_each(|o| queue.add(o.object_ref()));
                            }
                            Err(_) => return,
                        },
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn daemonset_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut ds_changes = shared.daemonsets.subscribe();
        let mut pod_changes = shared.pods.subscribe();
        let mut node_changes = shared.nodes.subscribe();
        shared.daemonsets.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        shared.nodes.store.wait_synced().await;
        let controller = Arc::new(daemonset::DaemonSetController::new(
            Arc::clone(&shared.recorder),
            (
                Api::new(shared.channel.clone()),
                shared.daemonsets.store.clone(),
            ),
            (Api::new(shared.channel.clone()), shared.pods.store.clone()),
            shared.nodes.store.clone(),
        ));
        let queue = WorkQueue::new();
        controller.all().into_iter().for_each(|k| queue.add(k));
        let feeder = {
            let (queue, controller) = (queue.clone(), Arc::clone(&controller));
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                let everything = |queue: &WorkQueue<ObjectRef>| {
                    controller.all().into_iter().for_each(|k| queue.add(k));
                };
                loop {
                    tokio::select! {
                        change = ds_changes.recv() => match change {
                            Ok(Change::Applied(d) | Change::Deleted(d)) => queue.add(d.object_ref()),
                            Err(RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                        change = pod_changes.recv() => match change {
                            Ok(Change::Applied(p) | Change::Deleted(p)) => {
                                if let Some(k) = daemonset::DaemonSetController::owner_of(&p) {
                                    queue.add(k);
                                }
                            }
                            Err(RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                        // A node that comes, goes or changes labels or
                        // taints concerns every daemon set.
                        change = node_changes.recv() => match change {
                            Ok(_) | Err(RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn autoscaler_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut changes = shared.autoscalers.subscribe();
        shared.autoscalers.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        let controller = Arc::new(autoscaler::Autoscaler::new(
            Arc::clone(&shared.recorder),
            shared.channel.clone(),
            shared.autoscalers.store.clone(),
            shared.pods.store.clone(),
            shared.autoscaler_sync,
        ));
        let queue = WorkQueue::new();
        let store = shared.autoscalers.store.clone();
        let everything = move |queue: &WorkQueue<ObjectRef>| {
            store.list().iter().for_each(|h| queue.add(h.object_ref()));
        };
        everything(&queue);
        // Each autoscaler requeues itself every sync period; changes to
        // one are looked at at once.
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.recv().await {
                        Ok(Change::Applied(h) | Change::Deleted(h)) => queue.add(h.object_ref()),
                        Err(RecvError::Lagged(_)) => everything(&queue),
                        Err(_) => return,
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn job_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut job_changes = shared.jobs.subscribe();
        let mut pod_changes = shared.pods.subscribe();
        shared.jobs.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        let controller = Arc::new(job::JobController::new(
            Arc::clone(&shared.recorder),
            (Api::new(shared.channel.clone()), shared.jobs.store.clone()),
            (Api::new(shared.channel.clone()), shared.pods.store.clone()),
        ));
        let queue = WorkQueue::new();
        let jobs = shared.jobs.store.clone();
        let everything = move |queue: &WorkQueue<ObjectRef>| {
            jobs.list().iter().for_each(|j| queue.add(j.object_ref()));
        };
        everything(&queue);
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    tokio::select! {
                        change = job_changes.recv() => match change {
                            Ok(Change::Applied(j) | Change::Deleted(j)) => queue.add(j.object_ref()),
                            Err(RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                        change = pod_changes.recv() => match change {
                            Ok(Change::Applied(p) | Change::Deleted(p)) => {
                                if let Some(k) = job::JobController::owner_of(&p) {
                                    queue.add(k);
                                }
                            }
                            Err(RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn serviceaccount_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    let controller = Arc::new(serviceaccount::ServiceAccountController::new(
        Api::new(shared.channel.clone()),
        shared.serviceaccounts.store.clone(),
        shared.namespaces.store.clone(),
    ));
    let children = (
        shared.serviceaccounts.store.clone(),
        shared.serviceaccounts.subscribe(),
    );
    per_namespace(shared, workers, controller, children)
}

fn root_ca_publisher(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    let (Some(ca), Some(published)) = (shared.root_ca.clone(), shared.root_ca_configmaps.as_ref())
    else {
        // A plaintext cluster has no CA to publish.
        return futures::future::pending().boxed();
    };
    let controller = Arc::new(rootca::RootCaPublisher::new(
        Api::new(shared.channel.clone()),
        published.store.clone(),
        shared.namespaces.store.clone(),
        ca,
    ));
    let children = (published.store.clone(), published.subscribe());
    per_namespace(shared, workers, controller, children)
}

/// Runs a controller keeping one object per namespace (keys are
/// namespaces): woken by namespace changes and by changes of the objects
/// it keeps (`children`).
fn per_namespace<R: Reconciler + 'static, K: skiff::Resource>(
    shared: Arc<Shared>,
    workers: usize,
    controller: Arc<R>,
    children: (
        skiff_client::Store<K>,
        tokio::sync::broadcast::Receiver<Change<K>>,
    ),
) -> BoxFuture<'static, ()> {
    async move {
        let (child_store, mut child_changes) = children;
        let mut ns_changes = shared.namespaces.subscribe();
        shared.namespaces.store.wait_synced().await;
        child_store.wait_synced().await;
        let queue = WorkQueue::new();
        for ns in shared.namespaces.store.list() {
            queue.add(ObjectRef::new("", ns.name()));
        }
        let feeder = {
            let queue = queue.clone();
            let namespaces = shared.namespaces.store.clone();
            tokio::spawn(async move {
                let everything = |queue: &WorkQueue<ObjectRef>| {
                    namespaces
                        .list()
                        .iter()
                        .for_each(|n| queue.add(ObjectRef::new("", n.name())));
                };
                loop {
                    tokio::select! {
                        change = ns_changes.recv() => match change {
                            Ok(Change::Applied(n) | Change::Deleted(n)) => queue.add(ObjectRef::new("", n.name())),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                        change = child_changes.recv() => match change {
                            Ok(Change::Applied(c) | Change::Deleted(c)) => {
                                queue.add(ObjectRef::new("", c.namespace()));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => everything(&queue),
                            Err(_) => return,
                        },
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn garbage_collector(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        // Owner deletions of every kind, as uids (None: a lagged
        // subscription, so every dependent is checked again).
        let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        let (rs_gone_tx, rs_gone_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        let forwarders = [
            forward_deletions(shared.replicasets.subscribe(), gone_tx.clone()),
            forward_deletions(shared.replicationcontrollers.subscribe(), gone_tx.clone()),
            forward_deletions(shared.daemonsets.subscribe(), gone_tx.clone()),
            forward_deletions(shared.jobs.subscribe(), gone_tx),
            forward_deletions(shared.deployments.subscribe(), rs_gone_tx),
        ];
        let pod_changes = shared.pods.subscribe();
        let rs_changes = shared.replicasets.subscribe();
        shared.pods.store.wait_synced().await;
        shared.replicasets.store.wait_synced().await;
        shared.replicationcontrollers.store.wait_synced().await;
        shared.deployments.store.wait_synced().await;
        shared.daemonsets.store.wait_synced().await;
        shared.jobs.store.wait_synced().await;
        let owners = garbage::Owners {
            jobs: (Api::new(shared.channel.clone()), shared.jobs.store.clone()),
            daemonsets: (
                Api::new(shared.channel.clone()),
                shared.daemonsets.store.clone(),
            ),
            replicasets: (
                Api::new(shared.channel.clone()),
                shared.replicasets.store.clone(),
            ),
            replicationcontrollers: (
                Api::new(shared.channel.clone()),
                shared.replicationcontrollers.store.clone(),
            ),
            deployments: (
                Api::new(shared.channel.clone()),
                shared.deployments.store.clone(),
            ),
        };
        let pods = collect(
            Arc::new(garbage::GarbageCollector::new(
                Api::<Pod>::new(shared.channel.clone()),
                shared.pods.store.clone(),
                owners.clone(),
            )),
            shared.pods.store.clone(),
            pod_changes,
            gone_rx,
            workers,
        );
        let replicasets = collect(
            Arc::new(garbage::GarbageCollector::new(
                Api::<ReplicaSet>::new(shared.channel.clone()),
                shared.replicasets.store.clone(),
                owners,
            )),
            shared.replicasets.store.clone(),
            rs_changes,
            rs_gone_rx,
            workers,
        );
        let rs_pods = propagate(
            garbage::Propagation::new(
                (
                    Api::<ReplicaSet>::new(shared.channel.clone()),
                    shared.replicasets.store.clone(),
                ),
                (
                    Api::<Pod>::new(shared.channel.clone()),
                    shared.pods.store.clone(),
                ),
            ),
            shared.replicasets.store.clone(),
            shared.replicasets.subscribe(),
            shared.pods.subscribe(),
            workers,
        );
        let rc_pods = propagate(
            garbage::Propagation::new(
                (
                    Api::<ReplicationController>::new(shared.channel.clone()),
                    shared.replicationcontrollers.store.clone(),
                ),
                (
                    Api::<Pod>::new(shared.channel.clone()),
                    shared.pods.store.clone(),
                ),
            ),
            shared.replicationcontrollers.store.clone(),
            shared.replicationcontrollers.subscribe(),
            shared.pods.subscribe(),
            workers,
        );
        let deployment_sets = propagate(
            garbage::Propagation::new(
                (
                    Api::<Deployment>::new(shared.channel.clone()),
                    shared.deployments.store.clone(),
                ),
                (
                    Api::<ReplicaSet>::new(shared.channel.clone()),
                    shared.replicasets.store.clone(),
                ),
            ),
            shared.deployments.store.clone(),
            shared.deployments.subscribe(),
            shared.replicasets.subscribe(),
            workers,
        );
        let ds_pods = propagate(
            garbage::Propagation::new(
                (
                    Api::<DaemonSet>::new(shared.channel.clone()),
                    shared.daemonsets.store.clone(),
                ),
                (
                    Api::<Pod>::new(shared.channel.clone()),
                    shared.pods.store.clone(),
                ),
            ),
            shared.daemonsets.store.clone(),
            shared.daemonsets.subscribe(),
            shared.pods.subscribe(),
            workers,
        );
        futures::join!(
            pods,
            replicasets,
            rs_pods,
            rc_pods,
            deployment_sets,
            ds_pods
        );
        forwarders.iter().for_each(|f| f.abort());
    }
    .boxed()
}

/// Forwards the uids of deleted objects (None when the subscription
/// lagged and deletions may have been missed).
fn forward_deletions<O: skiff::Resource>(
    mut changes: tokio::sync::broadcast::Receiver<Change<O>>,
    gone: tokio::sync::mpsc::UnboundedSender<Option<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let uid = match changes.recv().await {
                Ok(Change::Deleted(o)) => {
                    Some(o.metadata().map(|m| m.uid.clone()).unwrap_or_default())
                }
                Ok(Change::Applied(_)) => continue,
                Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            };
            if gone.send(uid).is_err() {
                return;
            }
        }
    })
}

/// Runs one collector: every dependent that changes, and the dependents
/// of every owner deleted, are checked.
async fn collect<K: skiff::Resource>(
    gc: Arc<garbage::GarbageCollector<K>>,
    store: skiff_client::Store<K>,
    mut changes: tokio::sync::broadcast::Receiver<Change<K>>,
    mut gone: tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
    workers: usize,
) {
    let queue = WorkQueue::new();
    let everything = {
        let (queue, store) = (queue.clone(), store.clone());
        move || store.list().iter().for_each(|o| queue.add(o.object_ref()))
    };
    everything();
    let feeder = {
        let (queue, gc) = (queue.clone(), Arc::clone(&gc));
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let dependents = tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Applied(o)) => vec![o.object_ref()],
                        Ok(Change::Deleted(_)) => continue,
                        Err(RecvError::Lagged(_)) => { everything(); continue }
                        Err(RecvError::Closed) => return,
                    },
                    uid = gone.recv() => match uid {
                        Some(Some(uid)) => gc.dependents_of(&uid),
                        Some(None) => { everything(); continue }
                        None => return,
                    },
                };
                dependents.into_iter().for_each(|k| queue.add(k));
            }
        })
    };
    work(gc, queue, workers, feeder).await;
}

/// Runs Foreground/Orphan propagation for owners of kind `O`: an owner
/// that changes, and the owners of every dependent that changes, are
/// looked at.
async fn propagate<O: skiff::Resource, D: skiff::Resource>(
    propagation: garbage::Propagation<O, D>,
    owners: skiff_client::Store<O>,
    mut owner_changes: tokio::sync::broadcast::Receiver<Change<O>>,
    mut dependent_changes: tokio::sync::broadcast::Receiver<Change<D>>,
    workers: usize,
) {
    let queue = WorkQueue::new();
    let deleting = {
        let (queue, owners) = (queue.clone(), owners.clone());
        move || {
            owners
                .list()
                .iter()
                .filter(|o| o.metadata().is_some_and(|m| m.deletion_timestamp.is_some()))
                .for_each(|o| queue.add(o.object_ref()))
        }
    };
    deleting();
    let feeder = {
        let queue = queue.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    change = owner_changes.recv() => match change {
                        Ok(Change::Applied(o)) => queue.add(o.object_ref()),
                        Ok(Change::Deleted(_)) => {}
                        Err(RecvError::Lagged(_)) => deleting(),
                        Err(RecvError::Closed) => return,
                    },
                    change = dependent_changes.recv() => match change {
                        Ok(Change::Applied(d) | Change::Deleted(d)) => {
                            garbage::Propagation::<O, D>::owners_of(&d).into_iter().for_each(|k| queue.add(k));
                        }
                        Err(RecvError::Lagged(_)) => deleting(),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        })
    };
    work(Arc::new(propagation), queue, workers, feeder).await;
}

fn deployment_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut d_changes = shared.deployments.subscribe();
        let mut rs_changes = shared.replicasets.subscribe();
        shared.deployments.store.wait_synced().await;
        shared.replicasets.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        let controller = Arc::new(deployment::DeploymentController::new(
            Arc::clone(&shared.recorder),
            (Api::new(shared.channel.clone()), shared.deployments.store.clone()),
            (Api::new(shared.channel.clone()), shared.replicasets.store.clone()),
            shared.pods.store.clone(),
        ));
        let queue = WorkQueue::new();
        let deployments = shared.deployments.store.clone();
        deployments.list().iter().for_each(|d| queue.add(d.object_ref()));
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    tokio::select! {
                        change = d_changes.recv() => match change {
                            Ok(Change::Applied(d) | Change::Deleted(d)) => queue.add(d.object_ref()),
                            Err(RecvError::Lagged(_)) => deployments.list().iter().for_each(|d| queue.add(d.object_ref())),
                            Err(RecvError::Closed) => return,
                        },
                        change = rs_changes.recv() => match change {
                            Ok(Change::Applied(rs) | Change::Deleted(rs)) => {
                                if let Some(key) = deployment::DeploymentController::owner_of(&rs) {
                                    queue.add(key);
                                } else {
                                    // An orphan: a deployment may adopt it.
                                    let ns = rs.namespace().to_string();
                                    deployments.list().iter().filter(|d| d.namespace() == ns).for_each(|d| queue.add(d.object_ref()));
                                }
                            }
                            Err(RecvError::Lagged(_)) => deployments.list().iter().for_each(|d| queue.add(d.object_ref())),
                            Err(RecvError::Closed) => return,
                        },
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn endpoints_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut svc_changes = shared.services.subscribe();
        let mut ep_changes = shared.endpoints.subscribe();
        let mut pod_changes = shared.pods.subscribe();
        shared.services.store.wait_synced().await;
        shared.endpoints.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        let controller = Arc::new(endpoints::EndpointsController::new(
            Api::new(shared.channel.clone()),
            shared.endpoints.store.clone(),
            shared.services.store.clone(),
            shared.pods.store.clone(),
        ));
        let queue = WorkQueue::new();
        let everything = {
            let (queue, services, eps) = (
                queue.clone(),
                shared.services.store.clone(),
                shared.endpoints.store.clone(),
            );
            // Orphaned endpoints too: their service may be gone.
            move || {
                services.list().iter().for_each(|s| queue.add(s.object_ref()));
                eps.list().iter().for_each(|e| queue.add(e.object_ref()));
            }
        };
        everything();
        let feeder = {
            let (queue, controller) = (queue.clone(), Arc::clone(&controller));
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let keys = tokio::select! {
                        change = svc_changes.recv() => match change {
                            Ok(Change::Applied(s) | Change::Deleted(s)) => vec![s.object_ref()],
                            Err(RecvError::Lagged(_)) => { everything(); continue }
                            Err(RecvError::Closed) => return,
                        },
                        change = ep_changes.recv() => match change {
                            Ok(Change::Applied(e) | Change::Deleted(e)) => vec![e.object_ref()],
                            Err(RecvError::Lagged(_)) => { everything(); continue }
                            Err(RecvError::Closed) => return,
                        },
                        change = pod_changes.recv() => match change {
                            Ok(Change::Applied(p) | Change::Deleted(p)) => controller.services_in(p.namespace()),
                            Err(RecvError::Lagged(_)) => { everything(); continue }
                            Err(RecvError::Closed) => return,
                        },
                    };
                    keys.into_iter().for_each(|k| queue.add(k));
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn service_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut changes = shared.services.subscribe();
        shared.services.store.wait_synced().await;
        let controller = Arc::new(service::ServiceController::new(
            Api::new(shared.channel.clone()),
            shared.services.store.clone(),
            shared.lb_pool,
            Arc::clone(&shared.recorder),
        ));
        let queue = WorkQueue::new();
        let everything = {
            let (queue, services) = (queue.clone(), shared.services.store.clone());
            move || {
                services
                    .list()
                    .iter()
                    .for_each(|s| queue.add(s.object_ref()))
            }
        };
        everything();
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.recv().await {
                        Ok(Change::Applied(s) | Change::Deleted(s)) => queue.add(s.object_ref()),
                        Err(RecvError::Lagged(_)) => everything(),
                        Err(RecvError::Closed) => return,
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn node_lifecycle_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut node_changes = shared.nodes.subscribe();
        shared.nodes.store.wait_synced().await;
        shared.leases.store.wait_synced().await;
        shared.pods.store.wait_synced().await;
        let controller = Arc::new(nodelifecycle::NodeLifecycleController::new(
            Arc::clone(&shared.recorder),
            (Api::new(shared.channel.clone()), shared.nodes.store.clone()),
            shared.leases.store.clone(),
            (Api::new(shared.channel.clone()), shared.pods.store.clone()),
            shared.timing,
        ));
        let queue = WorkQueue::new();
        for node in shared.nodes.store.list() {
            queue.add(node.object_ref());
        }
        // Each reconcile requeues itself every period; new nodes come in
        // through their changes.
        let feeder = {
            let (queue, nodes) = (queue.clone(), shared.nodes.store.clone());
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match node_changes.recv().await {
                        Ok(Change::Applied(n) | Change::Deleted(n)) => queue.add(n.object_ref()),
                        Err(RecvError::Lagged(_)) => {
                            nodes.list().iter().for_each(|n| queue.add(n.object_ref()));
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

fn namespace_controller(shared: Arc<Shared>, workers: usize) -> BoxFuture<'static, ()> {
    async move {
        let mut ns_changes = shared.namespaces.subscribe();
        shared.namespaces.store.wait_synced().await;
        let controller = Arc::new(namespace::NamespaceController::new(
            shared.channel.clone(),
            shared.namespaces.store.clone(),
        ));
        let queue = WorkQueue::new();
        let everything = {
            let (queue, namespaces) = (queue.clone(), shared.namespaces.store.clone());
            move || {
                namespaces
                    .list()
                    .iter()
                    .for_each(|n| queue.add(n.object_ref()))
            }
        };
        everything();
        let feeder = {
            let queue = queue.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match ns_changes.recv().await {
                        Ok(Change::Applied(n) | Change::Deleted(n)) => queue.add(n.object_ref()),
                        Err(RecvError::Lagged(_)) => everything(),
                        Err(RecvError::Closed) => return,
                    }
                }
            })
        };
        work(controller, queue, workers, feeder).await;
    }
    .boxed()
}

/// One controller as a supervised actor.
pub struct ControllerActor {
    descriptor: Descriptor,
    shared: Arc<Shared>,
    workers: usize,
    /// Restarts of this controller so far (shared with the manager).
    restarts: Arc<AtomicU64>,
}

impl Actor for ControllerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let run = (self.descriptor.start)(Arc::clone(&self.shared), self.workers);
        let restarts = self.restarts.load(Ordering::Relaxed);
        // Backoff between restarts: 0, 1, 2, 4 ... 30 s.
        let pause = if restarts == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs((1u64 << (restarts - 1).min(5)).min(30))
        };
        let name = self.descriptor.name;
        ctx.spawn(
            async move {
                tokio::time::sleep(pause).await;
                AssertUnwindSafe(run).catch_unwind().await
            }
            .into_actor(self)
            .map(move |result, _actor, ctx| {
                match result {
                    Ok(()) => tracing::warn!(controller = name, "controller stopped"),
                    Err(panic) => {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(controller = name, panic = %what, "controller panicked");
                    }
                }
                ctx.stop();
            }),
        );
    }
}

impl Supervised for ControllerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        let n = self.restarts.fetch_add(1, Ordering::Relaxed) + 1;
        skiff_metrics::counter_vec(
            "skiff_controller_restarts_total",
            "times a controller's supervisor restarted it after a panic",
            &["controller"],
        )
        .with_label_values(&[self.descriptor.name])
        .inc();
        tracing::warn!(
            controller = self.descriptor.name,
            restarts = n,
            "restarting controller"
        );
    }
}

/// The LoadBalancer pool of a cluster started with the defaults: on
/// loopback, so load balancer addresses answer on this machine only.
pub const DEFAULT_LB_POOL: &str = "127.0.100.1-127.0.100.254";

/// How to run the controller manager.
#[derive(Debug, Clone)]
pub struct Config {
    /// The API server, `https://127.0.0.1:6443` (`http://` when it runs
    /// `--insecure`).
    pub server: String,
    /// The CA to trust and the certificate to present (None: plaintext).
    pub tls: Option<skiff_client::ClientTls>,
    /// Reconcile workers per controller.
    pub workers: usize,
    /// Campaign for `kube-system/kube-controller-manager` and run the
    /// controllers only while leading.
    pub leader_elect: bool,
    /// This process's identity in the election.
    pub identity: String,
    /// How long the lease lasts unrenewed.
    pub lease_duration: Duration,
    /// Node lifecycle: grace before NotReady, and before eviction.
    pub node_timing: nodelifecycle::Timing,
    /// Where LoadBalancer Services' addresses come from (none: they stay
    /// pending).
    pub lb_pool: Option<service::Pool>,
    /// The cluster CA's certificate, published in every namespace as
    /// `kube-root-ca.crt` (None: a plaintext cluster publishes none).
    pub root_ca: Option<String>,
    /// How often each HorizontalPodAutoscaler looks at its metrics
    /// (Kubernetes: 15 s).
    pub autoscaler_sync: Duration,
}

impl Config {
    /// Defaults: 4 workers per controller, leader election, 15 s lease.
    pub fn new(server: &str) -> Self {
        Self {
            server: server.to_string(),
            tls: None,
            workers: 4,
            leader_elect: true,
            identity: format!("controller-manager_{}", uuid::Uuid::new_v4().simple()),
            lease_duration: Duration::from_secs(15),
            node_timing: nodelifecycle::Timing::default(),
            lb_pool: DEFAULT_LB_POOL.parse().ok(),
            root_ca: None,
            autoscaler_sync: Duration::from_secs(15),
        }
    }
}

/// Why the manager cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address is malformed.
    #[error(transparent)]
    Address(#[from] skiff_client::AddressError),
    /// The actor system's thread could not start.
    #[error("starting the controller actors: {0}")]
    Thread(String),
}

/// Runs the controller manager until `shutdown` resolves: an actor system
/// with one supervised actor per controller (while leading, with leader
/// election).
///
/// # Errors
/// A bad server address, or the actor system not starting.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let channel = skiff_client::connect_lazy_with(&config.server, config.tls.as_ref())?;
    tokio::pin!(shutdown);
    let mut leading = if config.leader_elect {
        let mut lease =
            LeaderConfig::new("kube-system", "kube-controller-manager", &config.identity);
        lease.lease_duration = config.lease_duration;
        lease.renew_deadline = config.lease_duration * 2 / 3;
        lease.retry_period = config.lease_duration / 5;
        leader::elect(Api::new(channel.clone()), lease)
    } else {
        tokio::sync::watch::channel(true).1
    };
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            changed = leading.wait_for(|l| *l) => if changed.is_err() && config.leader_elect { return Ok(()) },
        }
        tracing::info!(identity = %config.identity, "leading: starting controllers");
        let options = Options {
            timing: config.node_timing,
            lb_pool: config.lb_pool,
            root_ca: config.root_ca.clone(),
            autoscaler_sync: config.autoscaler_sync,
        };
        let (system, addrs) = start_system(channel.clone(), config.workers, options)?;
        let mut lost = leading.clone();
        let stop = tokio::select! {
            _ = lost.wait_for(|l| !*l), if config.leader_elect => false,
            () = &mut shutdown => true,
        };
        drop(addrs);
        system.stop();
        if stop {
            return Ok(());
        }
        tracing::warn!("lost leadership: controllers stopped");
    }
}

/// The running controllers: their actor system and their addresses.
type Running = (actix::System, Vec<actix::Addr<ControllerActor>>);

/// Starts an actor system running every controller.
fn start_system(
    channel: tonic::transport::Channel,
    workers: usize,
    options: Options,
) -> Result<Running, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("skiff-controllers".into())
        .spawn(move || {
            let system = actix::System::with_tokio_rt(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("building the controller runtime")
            });
            system.block_on(async move {
                let shared = Arc::new(Shared::start(channel, options));
                let mut addrs = Vec::new();
                for descriptor in descriptors() {
                    let shared = Arc::clone(&shared);
                    let restarts = Arc::new(AtomicU64::new(0));
                    addrs.push(actix::Supervisor::start(move |_| ControllerActor {
                        descriptor,
                        shared,
                        workers,
                        restarts,
                    }));
                }
                // A supervisor restarts its actor only while someone holds
                // its address: the manager holds them until it stops.
                let _ = tx.send((actix::System::current(), addrs));
            });
            let _ = system.run();
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
    rx.recv()
        .map_err(|_| Error::Thread("the actor system did not start".into()))
}
