//! The root CA publisher: every namespace has a ConfigMap
//! `kube-root-ca.crt` holding the cluster CA's certificate (`ca.crt`), as
//! Kubernetes' root-ca-cert-publisher makes it; pods' service-account
//! volumes project it, so a pod can check the API server it calls. Runs
//! only when the manager knows the CA (a TLS cluster).

use skiff::pb::core::v1::{ConfigMap, Namespace};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::{ObjectRef, Resource as _};
use skiff_client::{Api, Store};

use crate::runtime::{Action, Error, ReconcileFuture, Reconciler};

pub use skiff::names::ROOT_CA_CONFIGMAP as NAME;
/// Its key.
pub const KEY: &str = "ca.crt";

/// See the module doc. Keys are namespaces (`ObjectRef { namespace: "",
/// name }`).
pub struct RootCaPublisher {
    configmaps: Api<ConfigMap>,
    /// The `kube-root-ca.crt` ConfigMaps (a field-selected informer).
    published: Store<ConfigMap>,
    namespaces: Store<Namespace>,
    /// The CA certificate, PEM.
    ca_pem: String,
}

impl RootCaPublisher {
    /// A publisher of `ca_pem` over the shared caches.
    pub fn new(
        configmaps: Api<ConfigMap>,
        published: Store<ConfigMap>,
        namespaces: Store<Namespace>,
        ca_pem: String,
    ) -> Self {
        Self {
            configmaps,
            published,
            namespaces,
            ca_pem,
        }
    }

    async fn sync(&self, key: ObjectRef) -> Result<Action, Error> {
        let Some(ns) = self.namespaces.get("", &key.name) else {
            return Ok(Action::AwaitChange);
        };
        if ns
            .metadata
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some())
        {
            return Ok(Action::AwaitChange);
        }
        let wanted = std::collections::BTreeMap::from([(KEY.to_string(), self.ca_pem.clone())]);
        let result = match self.published.get(&key.name, NAME) {
            Some(cm) if cm.data == wanted => return Ok(Action::AwaitChange),
            Some(cm) => {
                let mut cm = (*cm).clone();
                cm.data = wanted;
                cm.binary_data.clear();
                self.configmaps.update(cm).await.map(|_| "updated")
            }
            None => self
                .configmaps
                .create(ConfigMap {
                    metadata: Some(ObjectMeta {
                        name: NAME.into(),
                        namespace: key.name.clone(),
                        ..Default::default()
                    }),
                    data: wanted,
                    ..Default::default()
                })
                .await
                .map(|_| "created"),
        };
        match result {
            Ok(what) => {
                tracing::info!(namespace = %key.name, "{what} {NAME}");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Action::AwaitChange),
            Err(s) => Err(s.into()),
        }
    }

    /// The namespace a ConfigMap change concerns.
    pub fn key_of(cm: &ConfigMap) -> ObjectRef {
        ObjectRef::new("", cm.namespace())
    }
}

impl Reconciler for RootCaPublisher {
    fn name(&self) -> &'static str {
        "root-ca-cert-publisher"
    }

    fn reconcile(&self, key: ObjectRef) -> ReconcileFuture<'_> {
        Box::pin(self.sync(key))
    }
}

// === wiring ===

/// Starts the root CA publisher: keys are namespaces, woken by namespaces
/// and by the published ConfigMaps. A plaintext cluster has no CA to
/// publish: it waits forever.
pub fn start(
    shared: std::sync::Arc<crate::Shared>,
    workers: usize,
) -> futures::future::BoxFuture<'static, ()> {
    use futures::FutureExt as _;
    let (Some(ca), Some(published)) = (shared.root_ca.clone(), shared.root_ca_configmaps.as_ref())
    else {
        return futures::future::pending().boxed();
    };
    let controller = std::sync::Arc::new(RootCaPublisher::new(
        Api::new(shared.channel.clone()),
        published.store.clone(),
        shared.namespaces.store.clone(),
        ca,
    ));
    crate::runtime::per_namespace(&shared, workers, controller, published)
}
