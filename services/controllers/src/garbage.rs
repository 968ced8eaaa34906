//! The garbage collector (background propagation): a dependent whose
//! every owner is gone is deleted. One collector runs per dependent kind
//! (pods, whose owners are ReplicaSets, ReplicationControllers,
//! DaemonSets, StatefulSets and Jobs; ReplicaSets, whose owners are
//! Deployments; Jobs, whose owners are CronJobs; ControllerRevisions,
//! whose owners are DaemonSets and StatefulSets; PersistentVolumeClaims,
//! whose owner is a StatefulSet that deletes them with itself).
//! Foreground and Orphan deletions are carried
//! out for every owner kind ([`Propagation`]).
//!
//! Owners are looked up by uid in the shared caches; before deleting, the
//! owner is confirmed gone with a live read (a cache may not have seen a
//! just-created owner yet).

use std::sync::Arc;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use skiff::pb::batch::v1::{CronJob, Job};
use skiff::pb::core::v1::ReplicationController;
use skiff::pb::meta::v1::OwnerReference;
use skiff::{ObjectRef, Resource};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// See the module doc. Keys are dependents of kind `K`.
pub struct GarbageCollector<K> {
    dependents: Api<K>,
    dependent_store: Store<K>,
    owners: Owners,
}

/// The kinds that own others, to look owners up in.
#[derive(Clone)]
pub struct Owners {
    /// ReplicaSets (own pods).
    pub replicasets: (Api<ReplicaSet>, Store<ReplicaSet>),
    /// ReplicationControllers (own pods).
    pub replicationcontrollers: (Api<ReplicationController>, Store<ReplicationController>),
    /// Deployments (own ReplicaSets).
    pub deployments: (Api<Deployment>, Store<Deployment>),
    /// DaemonSets (own pods).
    pub daemonsets: (Api<DaemonSet>, Store<DaemonSet>),
    /// StatefulSets (own pods, and claims when they delete them).
    pub statefulsets: (Api<StatefulSet>, Store<StatefulSet>),
    /// Jobs (own pods).
    pub jobs: (Api<Job>, Store<Job>),
    /// CronJobs (own Jobs).
    pub cronjobs: (Api<CronJob>, Store<CronJob>),
}

/// Whether `owner` (in `namespace`) still exists with its uid: first the
/// cache, then, to be sure before deleting, the API. Unknown kinds count as
/// present (never delete what we cannot check).
async fn exists<K: Resource>(
    api: &Api<K>,
    store: &Store<K>,
    namespace: &str,
    owner: &OwnerReference,
) -> Result<bool, Error> {
    let same = |o: &K| o.metadata().is_some_and(|m| m.uid == owner.uid);
    if store.get(namespace, &owner.name).is_some_and(|o| same(&o)) {
        return Ok(true);
    }
    match api.get(namespace, &owner.name).await {
        Ok(o) => Ok(same(&o)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

impl<K: Resource> GarbageCollector<K> {
    /// A collector of `K` over the shared caches.
    pub fn new(dependents: Api<K>, dependent_store: Store<K>, owners: Owners) -> Self {
        Self {
            dependents,
            dependent_store,
            owners,
        }
    }

    /// The dependents that name `uid` as an owner (to check when it goes).
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjectRef> {
        dependents_in(&self.dependent_store, uid)
    }

    async fn owner_exists(&self, namespace: &str, owner: &OwnerReference) -> Result<bool, Error> {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let (api, store) = &self.owners.replicasets;
                exists(api, store, namespace, owner).await
            }
            "ReplicationController" => {
                let (api, store) = &self.owners.replicationcontrollers;
                exists(api, store, namespace, owner).await
            }
            "Deployment" => {
                let (api, store) = &self.owners.deployments;
                exists(api, store, namespace, owner).await
            }
            "DaemonSet" => {
                let (api, store) = &self.owners.daemonsets;
                exists(api, store, namespace, owner).await
            }
            "StatefulSet" => {
                let (api, store) = &self.owners.statefulsets;
                exists(api, store, namespace, owner).await
            }
            "Job" => {
                let (api, store) = &self.owners.jobs;
                exists(api, store, namespace, owner).await
            }
            "CronJob" => {
                let (api, store) = &self.owners.cronjobs;
                exists(api, store, namespace, owner).await
            }
            _ => Ok(true),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(dependent): Option<Arc<K>> = self.dependent_store.get(&key.namespace, &key.name)
        else {
            return Ok(Action::AwaitChange);
        };
        let Some(meta) = dependent.metadata() else {
            return Ok(Action::AwaitChange);
        };
        if meta.owner_references.is_empty() || meta.deletion_timestamp.is_some() {
            return Ok(Action::AwaitChange);
        }
        for owner in &meta.owner_references {
            if self.owner_exists(&key.namespace, owner).await? {
                return Ok(Action::AwaitChange);
            }
        }
        match self
            .dependents
            .delete(DeleteRequest {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                // The version the decision was made on: a dependent released
                // meanwhile (an Orphan deletion) is not deleted.
                preconditions: Some(Preconditions {
                    uid: meta.uid.clone(),
                    resource_version: meta.resource_version.clone(),
                }),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                tracing::info!(kind = K::KIND, object = %key, "deleted: its owners are gone");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::Aborted => {
                Ok(Action::AwaitChange)
            }
            Err(s) => Err(s.into()),
        }
    }
}

impl<K: Resource> Reconciler for GarbageCollector<K> {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

pub use skiff::names::{FOREGROUND_FINALIZER as FOREGROUND, ORPHAN_FINALIZER as ORPHAN};

/// Foreground and Orphan deletions of owners of kind `O` with their
/// dependents (of one or more kinds). An owner deleted with the
/// `foregroundDeletion` finalizer has its dependents deleted first
/// (themselves in the foreground, so a Deployment waits for its
/// ReplicaSets' pods too) and goes once none is left; with `orphan`, its
/// dependents lose their ownerReference to it and stay. Then the
/// finalizer is removed, and the API server deletes the owner. One
/// propagation per owner kind handles all its dependent kinds, so the
/// finalizer goes only once every one of them is done.
pub struct Propagation<O> {
    owners: (Api<O>, Store<O>),
    dependents: Vec<Box<dyn DependentKind>>,
}

/// One dependent the propagation acts on.
struct Dependent {
    name: String,
    uid: String,
    /// It is being deleted already.
    deleting: bool,
    /// It names other owners too (it is released, never deleted).
    shared: bool,
    /// Its reference says `blockOwnerDeletion`: the owner waits for it
    /// to be gone (the others are deleted without being waited for).
    blocks: bool,
}

/// A kind of dependent, seen through its cache and written through the
/// API.
trait DependentKind: Send + Sync {
    /// The dependents in `namespace` that name `uid` as an owner.
    fn of(&self, namespace: &str, uid: &str) -> Vec<Dependent>;
    /// The same, read live (the cache may not show a dependent that came
    /// to name the owner a moment ago).
    fn of_live<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, Error>>;
    /// Removes its ownerReference to `uid`.
    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>>;
    /// Deletes it in the foreground (exactly it: `uid`).
    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>>;
}

/// Dependents of kind `D`.
struct Kind<D>(Api<D>, Store<D>);

impl<D: Resource> DependentKind for Kind<D> {
    fn of_live<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, Error>> {
        Box::pin(async move {
            let list = self
                .0
                .list(skiff::pb::api::v1::ListRequest {
                    namespace: namespace.to_string(),
                    ..Default::default()
                })
                .await?;
            let (_, items) = D::list_parts(list);
            Ok(items
                .into_iter()
                .filter(|d| {
                    d.metadata()
                        .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == uid))
                })
                .map(|d| d.name().to_string())
                .collect())
        })
    }

    fn of(&self, namespace: &str, uid: &str) -> Vec<Dependent> {
        self.1
            .list()
            .into_iter()
            .filter(|d| d.namespace() == namespace)
            .filter_map(|d| {
                let meta = d.metadata()?;
                meta.owner_references
                    .iter()
                    .any(|o| o.uid == uid)
                    .then(|| Dependent {
                        name: meta.name.clone(),
                        uid: meta.uid.clone(),
                        deleting: meta.deletion_timestamp.is_some(),
                        shared: meta.owner_references.iter().any(|o| o.uid != uid),
                        blocks: meta
                            .owner_references
                            .iter()
                            .any(|o| o.uid == uid && o.block_owner_deletion == Some(true)),
                    })
            })
            .collect()
    }

    fn release<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut fresh = match self.0.get(namespace, name).await {
                Ok(d) => d,
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
                Err(s) => return Err(s.into()),
            };
            fresh
                .metadata_mut()
                .owner_references
                .retain(|o| o.uid != uid);
            fresh.clear_status();
            match self.0.update(fresh).await {
                Ok(_) => Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                Err(s) => Err(s.into()),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let request = DeleteRequest {
                namespace: namespace.to_string(),
                name: name.to_string(),
                propagation_policy: "Foreground".into(),
                preconditions: Some(Preconditions {
                    uid: uid.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match self.0.delete(request).await {
                Ok(_) => Ok(()),
                Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {
                    Ok(())
                }
                Err(s) => Err(s.into()),
            }
        })
    }
}

impl<O: Resource> Propagation<O> {
    /// Propagation over the shared caches, with no dependent kind yet.
    pub fn new(owners: (Api<O>, Store<O>)) -> Self {
        Self {
            owners,
            dependents: Vec::new(),
        }
    }

    /// Adds a kind of dependent.
    pub fn with<D: Resource>(mut self, dependents: (Api<D>, Store<D>)) -> Self {
        self.dependents
            .push(Box::new(Kind(dependents.0, dependents.1)));
        self
    }

    /// The owners of kind `O` a dependent names (to look at when it goes).
    pub fn owners_of<D: Resource>(dependent: &D) -> Vec<ObjectRef> {
        let Some(meta) = dependent.metadata() else {
            return Vec::new();
        };
        meta.owner_references
            .iter()
            .filter(|o| o.kind == O::KIND)
            .map(|o| ObjectRef::new(meta.namespace.clone(), o.name.clone()))
            .collect()
    }

    /// Removes `finalizer` from the owner (which then goes, when it was
    /// the last).
    async fn finish(&self, key: &ObjectRef, uid: &str, finalizer: &str) -> Result<(), Error> {
        let mut owner = match self.owners.0.get(&key.namespace, &key.name).await {
            Ok(o) => o,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s.into()),
        };
        let meta = owner.metadata_mut();
        if meta.uid != uid {
            return Ok(());
        }
        meta.finalizers.retain(|f| f != finalizer);
        owner.clear_status();
        match self.owners.0.update(owner).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(owner) = self.owners.1.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let Some(meta) = owner.metadata().cloned() else {
            return Ok(Action::AwaitChange);
        };
        if meta.deletion_timestamp.is_none() {
            return Ok(Action::AwaitChange);
        }
        let ns = key.namespace.as_str();
        if meta.finalizers.iter().any(|f| f == ORPHAN) {
            // Read live: a dependent the caches do not show yet must not
            // be left naming an owner about to go (its collector would
            // delete it).
            let mut released = 0;
            for kind in &self.dependents {
                for name in kind.of_live(ns, &meta.uid).await? {
                    kind.release(ns, &name, &meta.uid).await?;
                    released += 1;
                }
            }
            tracing::info!(kind = O::KIND, owner = %key, released, "orphaned the dependents");
            self.finish(&key, &meta.uid, ORPHAN).await?;
            return Ok(Action::AwaitChange);
        }
        if meta.finalizers.iter().any(|f| f == FOREGROUND) {
            let mut left = 0;
            for kind in &self.dependents {
                for dependent in kind.of(ns, &meta.uid) {
                    // A dependent with other owners is only released from
                    // this one.
                    if dependent.shared {
                        kind.release(ns, &dependent.name, &meta.uid).await?;
                        continue;
                    }
                    if dependent.blocks {
                        left += 1;
                    }
                    if !dependent.deleting {
                        kind.delete(ns, &dependent.name, &dependent.uid).await?;
                    }
                }
            }
            if left > 0 {
                // Their deletions bring this owner back; the requeue is a
                // safety net.
                return Ok(Action::Requeue(std::time::Duration::from_secs(2)));
            }
            self.finish(&key, &meta.uid, FOREGROUND).await?;
        }
        Ok(Action::AwaitChange)
    }
}

impl<O: Resource> Reconciler for Propagation<O> {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

/// The objects in `store` whose owner references name `uid`.
fn dependents_in<K: skiff::Resource>(store: &Store<K>, uid: &str) -> Vec<ObjectRef> {
    store
        .list()
        .iter()
        .filter(|p| {
            p.metadata()
                .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == uid))
        })
        .map(|p| p.object_ref())
        .collect()
}

// === wiring ===

/// Starts the garbage collector: collectors of pods (owned by ReplicaSets,
/// ReplicationControllers, DaemonSets, StatefulSets and Jobs), of
/// ReplicaSets (owned by Deployments), of Jobs (owned by CronJobs), of
/// ControllerRevisions (owned by DaemonSets and StatefulSets) and of claims
/// (owned by StatefulSets), each woken by its dependents' changes and its
/// owners' deletions; and Foreground/Orphan propagation for every owner
/// kind over all its dependent kinds.
pub fn start(
    shared: Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use crate::runtime::keys_of;
    use futures::FutureExt as _;
    let s = &shared;
    fn api<K: skiff::Resource>(shared: &crate::Shared) -> Api<K> {
        Api::new(shared.channel.clone())
    }
    let owners = Owners {
        jobs: (api(s), s.jobs.store.clone()),
        daemonsets: (api(s), s.daemonsets.store.clone()),
        statefulsets: (api(s), s.statefulsets.store.clone()),
        replicasets: (api(s), s.replicasets.store.clone()),
        replicationcontrollers: (api(s), s.replicationcontrollers.store.clone()),
        deployments: (api(s), s.deployments.store.clone()),
        cronjobs: (api(s), s.cronjobs.store.clone()),
    };
    let pod_gc = GarbageCollector::new(api(s), s.pods.store.clone(), owners.clone());
    let pods = collect(pod_gc, &s.pods)
        .watches(&s.replicasets, deletions(&s.pods))
        .watches(&s.replicationcontrollers, deletions(&s.pods))
        .watches(&s.daemonsets, deletions(&s.pods))
        .watches(&s.statefulsets, deletions(&s.pods))
        .watches(&s.jobs, deletions(&s.pods))
        .reads(&s.deployments.store);
    let rs_gc = GarbageCollector::new(api(s), s.replicasets.store.clone(), owners.clone());
    let revision_gc =
        GarbageCollector::new(api(s), s.controllerrevisions.store.clone(), owners.clone());
    let revisions = collect(revision_gc, &s.controllerrevisions)
        .watches(&s.daemonsets, deletions(&s.controllerrevisions))
        .watches(&s.statefulsets, deletions(&s.controllerrevisions));
    // Claims a StatefulSet made under `whenDeleted: Delete` name it (and
    // users may give claims owners of any kind).
    let claim_gc = GarbageCollector::new(
        api(s),
        s.persistentvolumeclaims.store.clone(),
        owners.clone(),
    );
    let claims = collect(claim_gc, &s.persistentvolumeclaims)
        .watches(&s.statefulsets, deletions(&s.persistentvolumeclaims))
        .watches(&s.replicasets, deletions(&s.persistentvolumeclaims))
        .watches(
            &s.replicationcontrollers,
            deletions(&s.persistentvolumeclaims),
        )
        .watches(&s.deployments, deletions(&s.persistentvolumeclaims))
        .watches(&s.daemonsets, deletions(&s.persistentvolumeclaims))
        .watches(&s.jobs, deletions(&s.persistentvolumeclaims))
        .watches(&s.cronjobs, deletions(&s.persistentvolumeclaims));

    let job_gc = GarbageCollector::new(api(s), s.jobs.store.clone(), owners);
    let jobs = collect(job_gc, &s.jobs).watches(&s.cronjobs, deletions(&s.jobs));
    let replicasets =
        collect(rs_gc, &s.replicasets).watches(&s.deployments, deletions(&s.replicasets));
    let (pod_store, rs_store, job_store, revision_store, claim_store) = (
        s.pods.store.clone(),
        s.replicasets.store.clone(),
        s.jobs.store.clone(),
        s.controllerrevisions.store.clone(),
        s.persistentvolumeclaims.store.clone(),
    );
    futures::future::join_all([
        pods.run(move || keys_of(&pod_store), workers).boxed(),
        replicasets.run(move || keys_of(&rs_store), workers).boxed(),
        jobs.run(move || keys_of(&job_store), workers).boxed(),
        revisions
            .run(move || keys_of(&revision_store), workers)
            .boxed(),
        claims.run(move || keys_of(&claim_store), workers).boxed(),
        propagate(s, &s.replicasets, workers, |p| p.on(s, &s.pods)),
        propagate(s, &s.replicationcontrollers, workers, |p| p.on(s, &s.pods)),
        propagate(s, &s.deployments, workers, |p| p.on(s, &s.replicasets)),
        propagate(s, &s.daemonsets, workers, |p| {
            p.on(s, &s.pods).on(s, &s.controllerrevisions)
        }),
        propagate(s, &s.statefulsets, workers, |p| {
            p.on(s, &s.pods)
                .on(s, &s.controllerrevisions)
                .on(s, &s.persistentvolumeclaims)
        }),
        propagate(s, &s.jobs, workers, |p| p.on(s, &s.pods)),
        propagate(s, &s.cronjobs, workers, |p| p.on(s, &s.jobs)),
    ])
    .map(|_| ())
    .boxed()
}

/// A collector of `K`s woken by each dependent that changes (a deleted one
/// needs nothing).
fn collect<K: skiff::Resource>(
    gc: GarbageCollector<K>,
    dependents: &skiff_client::Informer<K>,
) -> crate::runtime::Controller<GarbageCollector<K>> {
    crate::runtime::Controller::new(Arc::new(gc)).watches(dependents, |change| match change {
        skiff_client::Change::Applied(o) => vec![o.object_ref()],
        skiff_client::Change::Deleted(_) => Vec::new(),
    })
}

/// Maps an owner's deletion to the dependents (in `dependents`' cache)
/// that named it.
fn deletions<O: skiff::Resource, K: skiff::Resource>(
    dependents: &skiff_client::Informer<K>,
) -> impl Fn(&skiff_client::Change<O>) -> Vec<ObjectRef> + Send + 'static {
    let store = dependents.store.clone();
    move |change| match change {
        skiff_client::Change::Deleted(owner) => {
            let uid = owner.metadata().map(|m| m.uid.clone()).unwrap_or_default();
            dependents_in(&store, &uid)
        }
        skiff_client::Change::Applied(_) => Vec::new(),
    }
}

/// A propagation being declared: its dependent kinds, and what wakes it.
struct Declared<'a, O: Resource> {
    propagation: Propagation<O>,
    /// Each dependent kind's changes, declared as the controller's
    /// triggers once it exists.
    wakes: Vec<Wake<'a, O>>,
}

/// The controller running a propagation.
type PropagationController<O> = crate::runtime::Controller<Propagation<O>>;

/// Adds one dependent kind's changes to a propagation's triggers.
type Wake<'a, O> = Box<dyn FnOnce(PropagationController<O>) -> PropagationController<O> + 'a>;

impl<'a, O: Resource> Declared<'a, O> {
    /// Adds dependents of `informer`'s kind: acted on, and their changes
    /// wake their owners.
    fn on<D: Resource>(
        mut self,
        shared: &crate::Shared,
        informer: &'a skiff_client::Informer<D>,
    ) -> Self {
        self.propagation = self
            .propagation
            .with((Api::new(shared.channel.clone()), informer.store.clone()));
        self.wakes.push(Box::new(move |controller| {
            controller.watches(informer, |change| {
                Propagation::<O>::owners_of(crate::runtime::changed(change).as_ref())
            })
        }));
        self
    }
}

/// Foreground/Orphan propagation for owners of kind `O` and the dependent
/// kinds `declare` adds: an owner that changes, and the owners of every
/// dependent that changes, are looked at; at the start (and after a lag),
/// every owner being deleted.
fn propagate<'a, O: skiff::Resource>(
    shared: &crate::Shared,
    owners: &skiff_client::Informer<O>,
    workers: usize,
    declare: impl FnOnce(Declared<'a, O>) -> Declared<'a, O>,
) -> futures::future::BoxFuture<'static, ()> {
    use futures::FutureExt as _;
    let declared = declare(Declared {
        propagation: Propagation::new((Api::new(shared.channel.clone()), owners.store.clone())),
        wakes: Vec::new(),
    });
    let store = owners.store.clone();
    let mut controller =
        crate::runtime::Controller::new(Arc::new(declared.propagation)).watches(owners, |change| {
            match change {
                skiff_client::Change::Applied(o) => vec![o.object_ref()],
                skiff_client::Change::Deleted(_) => Vec::new(),
            }
        });
    for wake in declared.wakes {
        controller = wake(controller);
    }
    controller
        .run(
            move || {
                store
                    .list()
                    .iter()
                    .filter(|o| o.metadata().is_some_and(|m| m.deletion_timestamp.is_some()))
                    .map(|o| o.object_ref())
                    .collect()
            },
            workers,
        )
        .boxed()
}
