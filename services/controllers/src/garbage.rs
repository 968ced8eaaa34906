//! The garbage collector (background propagation): a pod whose every
//! owner is gone is deleted.
//!
//! Owners are looked up by uid in the shared caches; before deleting, the
//! owner is confirmed gone with a live read (a cache may not have seen a
//! just-created owner yet).

use std::sync::Arc;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::apps::v1::ReplicaSet;
use skiff::pb::core::v1::{Pod, ReplicationController};
use skiff::pb::meta::v1::OwnerReference;
use skiff::{ObjectRef, Resource};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// See the module doc. Keys are pods.
pub struct GarbageCollector {
    pods: Api<Pod>,
    pod_store: Store<Pod>,
    replicasets: (Api<ReplicaSet>, Store<ReplicaSet>),
    replicationcontrollers: (Api<ReplicationController>, Store<ReplicationController>),
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

impl GarbageCollector {
    /// A collector over the shared caches.
    pub fn new(
        pods: Api<Pod>,
        pod_store: Store<Pod>,
        replicasets: (Api<ReplicaSet>, Store<ReplicaSet>),
        replicationcontrollers: (Api<ReplicationController>, Store<ReplicationController>),
    ) -> Self {
        Self {
            pods,
            pod_store,
            replicasets,
            replicationcontrollers,
        }
    }

    /// The pods that name `uid` as an owner (to check when it goes).
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjectRef> {
        self.pod_store
            .list()
            .iter()
            .filter(|p| {
                p.metadata
                    .as_ref()
                    .is_some_and(|m| m.owner_references.iter().any(|o| o.uid == uid))
            })
            .map(|p| p.object_ref())
            .collect()
    }

    async fn owner_exists(&self, namespace: &str, owner: &OwnerReference) -> Result<bool, Error> {
        match owner.kind.as_str() {
            "ReplicaSet" => {
                exists(&self.replicasets.0, &self.replicasets.1, namespace, owner).await
            }
            "ReplicationController" => {
                let (api, store) = &self.replicationcontrollers;
                exists(api, store, namespace, owner).await
            }
            _ => Ok(true),
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(pod): Option<Arc<Pod>> = self.pod_store.get(&key.namespace, &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let Some(meta) = pod.metadata.as_ref() else {
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
            .pods
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
                tracing::info!(pod = %key, "deleted: its owners are gone");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::NotFound || s.code() == tonic::Code::Aborted => {
                Ok(Action::AwaitChange)
            }
            Err(s) => Err(s.into()),
        }
    }
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}
