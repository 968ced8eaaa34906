//! Admission on create: the namespace must exist and not be terminating
//! (NamespaceLifecycle), Pod Security, the ServiceAccount a pod runs as,
//! the default StorageClass of a claim that names none
//! (DefaultStorageClass), a pod's priority from its PriorityClass and one
//! default class at most (Priority).

use std::collections::BTreeMap;
use std::time::Duration;

use skiff::keys;
use skiff::pb::core::v1::{Namespace, ServiceAccount};
use skiff::pb::networking::v1::IngressClass;
use skiff::pb::storage::v1::StorageClass;

use crate::error::{ApiError, Result};
use crate::strategy::{self, Strategy};

use super::*;

impl Registry {
    pub(super) async fn ensure_namespace(&self, namespace: &str) -> Result<()> {
        let terminating = |namespace: &str| {
            ApiError::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            ))
        };
        let terminating_now = self.namespaces.get("", namespace).map(|ns| {
            ns.metadata()
                .is_some_and(|m| m.deletion_timestamp.is_some())
        });
        match terminating_now {
            Some(false) => return Ok(()),
            Some(true) => return Err(terminating(namespace)),
            None => {}
        }
        let key = keys::object::<Namespace>("", namespace);
        match self.read::<Namespace>(&key).await? {
            None => Err(ApiError::NotFound {
                kind: "namespaces".into(),
                name: namespace.to_string(),
            }),
            Some((ns, _))
                if ns
                    .metadata()
                    .is_some_and(|m| m.deletion_timestamp.is_some()) =>
            {
                Err(terminating(namespace))
            }
            Some(_) => Ok(()),
        }
    }

    /// Pod Security admission (see [`crate::podsecurity`]) by the
    /// namespace's labels as the index has them; a refusal is judged again
    /// against the stored namespace, which a label just written may be
    /// ahead of the index with.
    ///
    /// # Errors
    /// PERMISSION_DENIED with Kubernetes' words.
    pub(super) async fn admit_pod_security<K: Strategy>(&self, obj: &K) -> Result<()> {
        let Some(judged) = obj.pod_security() else {
            return Ok(());
        };
        let namespace = obj.namespace();
        let name = obj.name();
        let labels_of = |ns: &Namespace| {
            ns.metadata
                .as_ref()
                .map(|m| m.labels.clone())
                .unwrap_or_default()
        };
        let cached = self.namespaces.get("", namespace).map(|ns| labels_of(&ns));
        let judge = |labels: &BTreeMap<String, String>| {
            self.pod_security
                .admit(namespace, labels, (K::PLURAL, name), judged)
        };
        match judge(&cached.clone().unwrap_or_default()) {
            Ok(()) => Ok(()),
            Err(refused) => {
                let key = keys::object::<Namespace>("", namespace);
                match self.read::<Namespace>(&key).await? {
                    Some((ns, _)) if Some(labels_of(&ns)) != cached => judge(&labels_of(&ns)),
                    _ => Err(refused),
                }
            }
        }
    }

    /// The service account `namespace/name` an object will run as.
    /// `default` may be moments from existing in a new namespace (its
    /// controller makes it): it is waited for, up to two seconds, as
    /// Kubernetes' admission does.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when it does not exist.
    pub(super) async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount> {
        let namespace = if namespace.is_empty() {
            "default"
        } else {
            namespace
        };
        let key = keys::object::<ServiceAccount>(namespace, name);
        let tries = if name == "default" { 20 } else { 1 };
        for i in 0..tries {
            if let Some((account, _)) = self.read::<ServiceAccount>(&key).await? {
                return Ok(account);
            }
            if i + 1 < tries {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(ApiError::Forbidden(format!(
            "error looking up service account {namespace}/{name}: serviceaccount {name:?} not found"
        )))
    }

    /// The cluster's default StorageClass: of the classes annotated as
    /// default, the newest (as Kubernetes picks since 1.26); None when no
    /// class is.
    ///
    /// # Errors
    /// The store could not be read.
    pub(super) async fn default_storage_class(&self) -> Result<Option<String>> {
        let classes = self.list::<StorageClass>(ListRequest::default()).await?;
        Ok(newest_default(
            classes.items.iter().filter_map(|c| c.metadata.as_ref()),
            &skiff::names::DEFAULT_CLASS_ANNOTATIONS,
        ))
    }

    /// The cluster's default IngressClass: of the classes annotated
    /// `ingressclass.kubernetes.io/is-default-class: "true"`, the newest
    /// (Kubernetes' DefaultIngressClass admission since 1.30); None when
    /// no class is.
    ///
    /// # Errors
    /// The store could not be read.
    pub(super) async fn default_ingress_class(&self) -> Result<Option<String>> {
        let classes = self.list::<IngressClass>(ListRequest::default()).await?;
        Ok(newest_default(
            classes.items.iter().filter_map(|c| c.metadata.as_ref()),
            &[strategy::DEFAULT_INGRESS_CLASS_ANNOTATION],
        ))
    }
}

impl Registry {
    /// A PriorityClass by name: from the index, else (just created) from
    /// the store.
    async fn priority_class(&self, name: &str) -> Result<Option<PriorityClass>> {
        if let Some(class) = self.priority_classes.get("", name) {
            return Ok(Some((*class).clone()));
        }
        let key = skiff::keys::object::<PriorityClass>("", name);
        Ok(self.read::<PriorityClass>(&key).await?.map(|(c, _)| c))
    }

    /// Kubernetes' Priority admission, on create: a pod gets the priority
    /// and preemption policy of the class it names, or of the cluster's
    /// global default class, or 0; a value it set itself must be that.
    ///
    /// # Errors
    /// PERMISSION_DENIED (Kubernetes' 403) for an unknown class or a
    /// priority or policy that is not the class's.
    pub(super) async fn admit_priority<K: Strategy>(&self, obj: &mut K) -> Result<()> {
        let Some(request) = obj.priority_request() else {
            return Ok(());
        };
        let refused = |why: String| {
            ApiError::Denied(format!(
                "{} {:?} is forbidden: {why}",
                kind_name::<K>(),
                obj.name()
            ))
        };
        let (class, value, policy) = if request.class.is_empty() {
            // The index until it has listed (just started), the store.
            let classes = self.indexed(&self.priority_classes, "").await?;
            let default = classes
                .into_iter()
                .filter(|c| c.global_default)
                // The highest, should two have slipped in (Kubernetes).
                .max_by_key(|c| c.value);
            match default {
                Some(c) => (
                    c.name().to_string(),
                    c.value,
                    c.preemption_policy.clone().unwrap_or_default(),
                ),
                None => (String::new(), 0, strategy::PREEMPT_LOWER_PRIORITY.into()),
            }
        } else {
            let Some(c) = self.priority_class(&request.class).await? else {
                return Err(refused(format!(
                    "no PriorityClass with name {} was found",
                    request.class
                )));
            };
            (
                request.class.clone(),
                c.value,
                c.preemption_policy.clone().unwrap_or_default(),
            )
        };
        if let Some(given) = request.priority
            && given != value
        {
            return Err(refused(format!(
                "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
            )));
        }
        if let Some(given) = request.preemption_policy.as_deref()
            && given != policy
        {
            return Err(refused(format!(
                "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
            )));
        }
        obj.set_priority(&class, value, &policy);
        Ok(())
    }

    /// Only one PriorityClass may be the global default (Kubernetes'
    /// Priority admission of classes). Two writes at once may both pass
    /// (Kubernetes reads a cache, the same race); pods then get the
    /// higher class.
    ///
    /// # Errors
    /// PERMISSION_DENIED when another class is the default already.
    pub(super) async fn admit_global_default<K: Strategy>(&self, obj: &K) -> Result<()> {
        let Some(name) = obj.global_default_class() else {
            return Ok(());
        };
        let classes = self.list::<PriorityClass>(ListRequest::default()).await?;
        if let Some(other) = classes
            .items
            .iter()
            .find(|c| c.global_default && c.name() != name)
        {
            return Err(ApiError::Denied(format!(
                "priorityclasses.scheduling.k8s.io {name:?} is forbidden: PriorityClass {} is already marked as default. Only one default can exist",
                other.name()
            )));
        }
        Ok(())
    }
}

/// The name of the newest of `classes` annotated `"true"` under one of
/// `annotations` (ties: the greater name).
fn newest_default<'a>(
    classes: impl Iterator<Item = &'a skiff::pb::meta::v1::ObjectMeta>,
    annotations: &[&str],
) -> Option<String> {
    classes
        .filter(|meta| {
            annotations
                .iter()
                .any(|key| meta.annotations.get(*key).is_some_and(|v| v == "true"))
        })
        .max_by_key(|meta| {
            (
                meta.creation_timestamp.as_ref().map_or(0, |t| t.seconds),
                meta.name.clone(),
            )
        })
        .map(|meta| meta.name.clone())
}
