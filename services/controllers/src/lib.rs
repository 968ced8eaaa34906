//! Skiff's controller manager: each controller a supervised actor over
//! informers the whole manager shares (one watch per kind).
//!
//! # Layout
//!
//! - [`runtime`]: the controller pattern (queue → idempotent reconcile →
//!   requeue with backoff) and [`runtime::Controller`], with which each
//!   controller module's `start` declares what wakes it.
//! - [`replicaset`]: ReplicaSet and ReplicationController.
//! - [`deployment`]: Deployments: rolling update, Recreate, rollback,
//!   pause, revision history, progress conditions.
//! - [`serviceaccount`]: a `default` service account per namespace.
//! - [`autoscaler`]: replicas that follow the pods' resource use.
//! - [`daemonset`]: one pod of a template per matching node.
//! - [`statefulset`]: pods with stable names, DNS names and claims.
//! - [`history`]: the ControllerRevisions of DaemonSets and StatefulSets.
//! - [`job`]: pods run to completion, with parallelism, retries and
//!   deadlines.
//! - [`cronjob`]: Jobs on a schedule.
//! - [`rootca`]: the cluster CA's `kube-root-ca.crt` ConfigMap per
//!   namespace.
//! - [`garbage`]: the garbage collector (pods and ReplicaSets whose owners
//!   are gone).
//! - [`endpoints`]: Endpoints for every Service with a selector.
//! - [`disruption`]: PodDisruptionBudgets' status: how many pods may be
//!   evicted now.
//! - [`quota`]: ResourceQuotas' status: the caps in force and what the
//!   namespace uses of them.
//! - [`nodelifecycle`]: silent nodes go NotReady, then lose their pods.
//! - [`nodeipam`]: each node's block of the cluster CIDR (`podCIDR`).
//! - [`namespace`]: a deleted namespace is emptied, then goes.
//! - [`volume`]: PersistentVolumes and claims: binding, the local
//!   provisioner, reclaiming, and the protection finalizers.
//! - Each controller runs as a supervised
//!   [`Restarting`](skiff_client::system::Restarting) actor: a controller
//!   that panics or stops stops the actor, and its supervisor starts it
//!   again (with a growing pause), resuming from the shared caches.
//!
//! Controllers are registered by descriptor ([`descriptors`]): a name and
//! the module's `start`, receiving the shared informers.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use skiff::pb::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use skiff::pb::autoscaling::v2::HorizontalPodAutoscaler;
use skiff::pb::batch::v1::{CronJob, Job};
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    ReplicationController, ResourceQuota, Service, ServiceAccount,
};
use skiff::pb::policy::v1::PodDisruptionBudget;
use skiff::pb::storage::v1::StorageClass;
use skiff_client::leader::{self, LeaderConfig};
use skiff_client::system::Restarting;
use skiff_client::{Api, Informer};

pub mod autoscaler;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod garbage;
pub mod history;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod quota;
pub mod replicaset;
pub mod rootca;
pub mod runtime;
pub mod service;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;

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
    /// The blocks nodes get their pod addresses from (None: no
    /// allocation).
    pub node_cidrs: Option<nodeipam::Ranges>,
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
    /// All StatefulSets.
    pub statefulsets: Informer<StatefulSet>,
    /// All ControllerRevisions (DaemonSets' and StatefulSets' history).
    pub controllerrevisions: Informer<ControllerRevision>,
    /// All Jobs.
    pub jobs: Informer<Job>,
    /// All CronJobs.
    pub cronjobs: Informer<CronJob>,
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
    /// All PersistentVolumes.
    pub persistentvolumes: Informer<PersistentVolume>,
    /// All PersistentVolumeClaims.
    pub persistentvolumeclaims: Informer<PersistentVolumeClaim>,
    /// All StorageClasses.
    pub storageclasses: Informer<StorageClass>,
    /// All PodDisruptionBudgets.
    pub poddisruptionbudgets: Informer<PodDisruptionBudget>,
    /// All ResourceQuotas.
    pub resourcequotas: Informer<ResourceQuota>,
    /// All nodes.
    pub nodes: Informer<Node>,
    /// Node leases (`kube-node-lease`).
    pub leases: Informer<Lease>,
    /// Node lifecycle timings.
    pub timing: nodelifecycle::Timing,
    /// The LoadBalancer address pool.
    pub lb_pool: Option<service::Pool>,
    /// The blocks nodes get their pod addresses from (None: no
    /// allocation).
    pub node_cidrs: Option<nodeipam::Ranges>,
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
            node_cidrs,
        } = options;
        Self {
            node_cidrs,
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
            statefulsets: Informer::start(Api::new(channel.clone()), Default::default()),
            controllerrevisions: Informer::start(Api::new(channel.clone()), Default::default()),
            jobs: Informer::start(Api::new(channel.clone()), Default::default()),
            cronjobs: Informer::start(Api::new(channel.clone()), Default::default()),
            autoscalers: Informer::start(Api::new(channel.clone()), Default::default()),

            namespaces: Informer::start(Api::new(channel.clone()), Default::default()),
            serviceaccounts: Informer::start(Api::new(channel.clone()), Default::default()),
            services: Informer::start(Api::new(channel.clone()), Default::default()),
            endpoints: Informer::start(Api::new(channel.clone()), Default::default()),
            persistentvolumes: Informer::start(Api::new(channel.clone()), Default::default()),
            persistentvolumeclaims: Informer::start(Api::new(channel.clone()), Default::default()),
            storageclasses: Informer::start(Api::new(channel.clone()), Default::default()),
            poddisruptionbudgets: Informer::start(Api::new(channel.clone()), Default::default()),
            resourcequotas: Informer::start(Api::new(channel.clone()), Default::default()),
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

/// Every controller the manager runs; each module's `start` declares its
/// triggers (see [`runtime::Controller`]).
pub fn descriptors() -> Vec<Descriptor> {
    vec![
        Descriptor {
            name: "replicasets",
            start: |shared, workers| {
                replicaset::start(Arc::clone(&shared), workers, &shared.replicasets)
            },
        },
        Descriptor {
            name: "replicationcontrollers",
            start: |shared, workers| {
                replicaset::start(Arc::clone(&shared), workers, &shared.replicationcontrollers)
            },
        },
        Descriptor {
            name: "deployment",
            start: deployment::start,
        },
        Descriptor {
            name: "daemonset",
            start: daemonset::start,
        },
        Descriptor {
            name: "statefulset",
            start: statefulset::start,
        },
        Descriptor {
            name: "job",
            start: job::start,
        },
        Descriptor {
            name: "cronjob",
            start: cronjob::start,
        },
        Descriptor {
            name: "horizontalpodautoscaling",
            start: autoscaler::start,
        },
        Descriptor {
            name: "serviceaccounts",
            start: serviceaccount::start,
        },
        Descriptor {
            name: "root-ca-cert-publisher",
            start: rootca::start,
        },
        Descriptor {
            name: "garbagecollector",
            start: garbage::start,
        },
        Descriptor {
            name: "endpoints",
            start: endpoints::start,
        },
        Descriptor {
            name: "service",
            start: service::start,
        },
        Descriptor {
            name: "nodelifecycle",
            start: nodelifecycle::start,
        },
        Descriptor {
            name: "nodeipam",
            start: nodeipam::start,
        },
        Descriptor {
            name: "namespace",
            start: namespace::start,
        },
        Descriptor {
            name: "persistentvolume-binder",
            start: volume::start,
        },
        Descriptor {
            name: "disruption",
            start: disruption::start,
        },
        Descriptor {
            name: "resourcequota",
            start: quota::start,
        },
    ]
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
    /// Give each node a block of the cluster CIDR (None: nodes get none,
    /// `--allocate-node-cidrs=false`).
    pub node_cidrs: Option<nodeipam::Ranges>,
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
            node_cidrs: Some(nodeipam::Ranges::default()),
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
            node_cidrs: config.node_cidrs,
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
type Running = (actix::System, Vec<actix::Addr<Restarting>>);

/// Starts an actor system running every controller.
fn start_system(
    channel: tonic::transport::Channel,
    workers: usize,
    options: Options,
) -> Result<Running, Error> {
    let spawned = skiff_client::system::spawn("skiff-controllers", None, move || {
        let shared = Arc::new(Shared::start(channel, options));
        // A supervisor restarts its actor only while someone holds its
        // address: the manager holds them until it stops.
        descriptors()
            .into_iter()
            .map(|descriptor| {
                let shared = Arc::clone(&shared);
                let start = descriptor.start;
                let run: skiff_client::system::Run =
                    Arc::new(move || -> futures::future::LocalBoxFuture<'static, ()> {
                        start(Arc::clone(&shared), workers)
                    });
                let name = descriptor.name;
                actix::Supervisor::start(move |_| {
                    Restarting::new(name, run).on_restart(move |_| {
                        skiff_metrics::counter_vec(
                            "skiff_controller_restarts_total",
                            "times a controller's supervisor restarted it after a panic",
                            &["controller"],
                        )
                        .with_label_values(&[name])
                        .inc();
                    })
                })
            })
            .collect::<Vec<_>>()
    })
    .map_err(|e| Error::Thread(e.to_string()))?;
    Ok((spawned.system, spawned.started))
}
