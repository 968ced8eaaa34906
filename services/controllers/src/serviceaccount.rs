//! The ServiceAccount controller: every namespace has a `default`
//! service account (recreated if deleted).

use skiff::pb::core::v1::{Namespace, ServiceAccount};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource as _};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

/// The account every namespace gets.
pub const DEFAULT: &str = "default";

/// See the module doc. Keys are namespaces (`ObjectRef { namespace: "",
/// name }`).
pub struct ServiceAccountController {
    accounts: Api<ServiceAccount>,
    account_store: Store<ServiceAccount>,
    namespace_store: Store<Namespace>,
}

impl ServiceAccountController {
    /// A controller over the shared caches.
    pub fn new(
        accounts: Api<ServiceAccount>,
        account_store: Store<ServiceAccount>,
        namespace_store: Store<Namespace>,
    ) -> Self {
        Self {
            accounts,
            account_store,
            namespace_store,
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(ns) = self.namespace_store.get("", &key.name) else {
            return Ok(Action::AwaitChange);
        };
        let terminating = ns
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        if terminating || self.account_store.get(&key.name, DEFAULT).is_some() {
            return Ok(Action::AwaitChange);
        }
        let account = ServiceAccount {
            metadata: Some(ObjectMeta {
                name: DEFAULT.into(),
                namespace: key.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.accounts.create(account).await {
            Ok(_) => {
                tracing::info!(namespace = %key.name, "created the default service account");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Action::AwaitChange),
            Err(s) => Err(s.into()),
        }
    }

    /// The namespace a service account change concerns.
    pub fn key_of(account: &ServiceAccount) -> ObjectRef {
        ObjectRef::new("", account.namespace())
    }
}

impl Reconciler for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccounts"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the ServiceAccount controller: keys are namespaces, woken by
/// namespaces and by the service accounts in them.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    let controller = std::sync::Arc::new(ServiceAccountController::new(
        Api::new(shared.channel.clone()),
        shared.serviceaccounts.store.clone(),
        shared.namespaces.store.clone(),
    ));
    crate::runtime::per_namespace(&shared, workers, controller, &shared.serviceaccounts)
}
