//! Create: defaults, admission, claims, and a create-if-absent write
//! (generated names drawn again on a clash).

use skiff::keys;

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::claims::definite_api;
use super::*;

impl Registry {
    /// Creates an object.
    ///
    /// # Errors
    /// Invalid objects, a missing namespace, an existing name.
    pub async fn create<K: Strategy>(&self, obj: K) -> Result<K> {
        self.create_with(obj, false).await
    }

    /// Create, or with `dry_run` everything create does (defaults,
    /// validation, admission, the name check) but the write: the object is
    /// returned as it would be stored, without a resourceVersion.
    ///
    /// # Errors
    /// As [`Registry::create`].
    pub async fn create_with<K: Strategy>(&self, mut obj: K, dry_run: bool) -> Result<K> {
        check_type_meta(&obj)?;
        let meta = obj.metadata_mut();
        if !meta.resource_version.is_empty() {
            return Err(ApiError::Invalid(
                "metadata.resourceVersion: Invalid value: must be empty when creating an object"
                    .into(),
            ));
        }
        meta.namespace = effective_namespace::<K>(&meta.namespace);
        let generated = meta.name.is_empty() && !meta.generate_name.is_empty();
        if generated {
            meta.name = format!("{}{}", meta.generate_name, random_suffix());
        }
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.creation_timestamp = Some(now());
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.generation = 1;
        // Whoever acts on the object joins the trace that created it.
        skiff_telemetry::annotate(&mut meta.annotations);
        obj.default_fields();
        obj.prepare_create();
        // A writer that names itself owns what it created (managed fields,
        // for server-side apply's conflicts).
        if let Some(writer) = crate::apply::writer().filter(|w| w.explicit) {
            let value = skiff::json::to_value(&obj)
                .map_err(|e| ApiError::Internal(format!("{} as JSON: {e}", K::KIND)))?;
            // Everything is the creator's, whatever entries the client sent.
            let entries = crate::apply::record_update(
                &serde_json::json!({}),
                &value,
                &writer.manager,
                K::API_VERSION,
                &skiff::time::rfc3339(now().seconds),
            );
            obj.metadata_mut().managed_fields =
                skiff::json::from_value(serde_json::Value::Array(entries))
                    .map_err(|e| ApiError::Internal(format!("managed fields: {e}")))?;
        }
        if self.service_account_tokens
            && let Some(account) = obj.service_account()
        {
            let found = self.service_account(obj.namespace(), &account).await?;
            obj.admit_service_account(&found);
        }
        self.admit_priority(&mut obj).await?;
        self.admit_global_default(&obj).await?;
        if obj.wants_default_storage_class()
            && let Some(class) = self.default_storage_class().await?
        {
            obj.set_storage_class(&class);
        }
        if obj.wants_default_ingress_class()
            && let Some(class) = self.default_ingress_class().await?
        {
            obj.set_ingress_class(&class);
        }
        if K::NAMESPACED {
            self.ensure_namespace(obj.namespace()).await?;
            self.admit_limit_ranges(&mut obj).await?;
            self.admit_pod_security(&obj).await?;
        }
        let owner = object_name(obj.namespace(), obj.name());
        // Quotas last, on a valid object (Kubernetes' order): what is
        // charged is what will be written.
        if K::NAMESPACED && self.has_quotas(obj.namespace()).await? {
            admit(&mut obj, None)?;
            self.charge_quotas(&obj, &skiff::quota::usage(&obj), dry_run)
                .await?;
        }
        // An object that claims addresses or ports is checked first: nothing
        // is claimed for one that will be refused.
        if obj.cluster_ip_request().is_some() || !obj.node_port_requests().is_empty() {
            admit(&mut obj, None)?;
        }
        let claimed = if dry_run {
            None
        } else {
            self.claim_cluster_ip(&mut obj).await?
        };
        let ports = if dry_run {
            Ok(Vec::new())
        } else {
            self.claim_node_ports(None, &mut obj).await
        };
        let result = match ports {
            Ok(ports) => {
                let result = self.create_claimed(obj, generated, dry_run).await;
                if matches!(&result, Err(e) if definite_api(e)) {
                    self.release_ports(&ports, &owner).await;
                }
                result
            }
            Err(e) => Err(e),
        };
        if matches!(&result, Err(e) if definite_api(e))
            && let Some(ip) = claimed
        {
            self.allocator.release(&ip, &owner).await;
        }
        result
    }

    async fn create_claimed<K: Strategy>(
        &self,
        mut obj: K,
        generated: bool,
        dry_run: bool,
    ) -> Result<K> {
        for attempt in 0..MAX_RETRIES {
            // The first name was drawn before admission (which names it).
            if generated && attempt > 0 {
                let meta = obj.metadata_mut();
                meta.name = format!("{}{}", meta.generate_name, random_suffix());
            }
            let bytes = admit(&mut obj, None)?;
            let key = keys::object::<K>(obj.namespace(), obj.name());
            if dry_run {
                if !generated && self.read::<K>(&key).await?.is_some() {
                    return Err(ApiError::AlreadyExists {
                        kind: kind_name::<K>(),
                        name: object_name(obj.namespace(), obj.name()),
                    });
                }
                obj.set_type_meta();
                return Ok(obj);
            }
            match self.store.create(&key, bytes).await {
                Ok(rev) => {
                    obj.metadata_mut().resource_version = rev.to_string();
                    obj.set_type_meta();
                    return Ok(obj);
                }
                Err(skiff_store::Error::AlreadyExists { .. }) if generated => continue,
                Err(skiff_store::Error::AlreadyExists { .. }) => {
                    return Err(ApiError::AlreadyExists {
                        kind: kind_name::<K>(),
                        name: object_name(obj.namespace(), obj.name()),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::AlreadyExists {
            kind: kind_name::<K>(),
            name: format!(
                "generated names for {:?}",
                obj.metadata().map(|m| &m.generate_name)
            ),
        })
    }
}
