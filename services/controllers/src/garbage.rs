//! The garbage collector (background propagation): a dependent whose
//! every owner is gone is deleted. One collector runs per dependent kind
//! (pods, whose owners are ReplicaSets and ReplicationControllers;
//! ReplicaSets, whose owners are Deployments).
//!
//! Owners are looked up by uid in the shared caches; before deleting, the
//! owner is confirmed gone with a live read (a cache may not have seen a
//! just-created owner yet).

use std::sync::Arc;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::apps::v1::{Deployment, ReplicaSet};
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
        self.dependent_store
            .list()
            .iter()
            .filter(|p| {
                p.metadata()
                    .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == uid))
            })
            .map(|p| p.object_ref())
            .collect()
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
                preconditions: Some(Preconditions {
                    uid: meta.uid.clone(),
                    ..Default::default()
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
