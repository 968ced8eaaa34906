//! Delete: preconditions, graceful deletion, finalizers and propagation
//! policies.

use skiff::keys;
use skiff::pb::api::v1::DeleteRequest;

use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::*;

impl Registry {
    /// Deletes an object, or marks it deleted while finalizers remain.
    ///
    /// # Errors
    /// NotFound, failed preconditions, protected namespaces.
    pub async fn delete<K: Strategy>(&self, req: DeleteRequest) -> Result<K> {
        let namespace = effective_namespace::<K>(&req.namespace);
        let name = req.name.clone();
        // Foreground and Orphan are finalizers the garbage collector acts
        // on (deleting, or releasing, the dependents first). Only kinds
        // that own others take them; for the rest they mean Background.
        let propagation = match req.propagation_policy.as_str() {
            "" | "Background" => None,
            "Foreground" | "Orphan" if !OWNER_KINDS.contains(&K::KIND) => None,
            "Foreground" => Some(FOREGROUND_FINALIZER),
            "Orphan" => Some(ORPHAN_FINALIZER),
            other => {
                return Err(ApiError::Invalid(format!(
                    "propagationPolicy: Unsupported value: {other:?}: supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        };
        if K::KIND == "Namespace" && SYSTEM_NAMESPACES.contains(&name.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "namespace {name:?} may not be deleted: it is a system namespace"
            )));
        }
        if K::KIND == "PriorityClass"
            && crate::strategy::SYSTEM_CLASSES
                .iter()
                .any(|(n, _)| *n == name)
        {
            return Err(ApiError::Forbidden(format!(
                "priorityclasses.scheduling.k8s.io {name:?} is forbidden: this is a system priority class and cannot be deleted"
            )));
        }
        let expected_rv = match &req.preconditions {
            Some(p) => parse_rv(&p.resource_version, "preconditions.resourceVersion")?,
            None => None,
        };
        let key = keys::object::<K>(&namespace, &name);
        for _ in 0..MAX_RETRIES {
            let Some((current, mod_rev)) = self.read::<K>(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let meta = current.metadata().cloned().unwrap_or_default();
            if let Some(p) = &req.preconditions
                && !p.uid.is_empty()
                && p.uid != meta.uid
            {
                return Err(ApiError::Precondition(format!(
                    "precondition failed: uid in precondition is {:?}, the object's uid is {:?}",
                    p.uid, meta.uid
                )));
            }
            if let Some(rv) = expected_rv
                && rv != mod_rev
            {
                return Err(ApiError::Conflict {
                    kind: kind_name::<K>(),
                    name: object_name(&namespace, &name),
                    requested: rv.to_string(),
                    current: mod_rev,
                });
            }
            if let Some(grace) = current.graceful_delete_seconds(req.grace_period_seconds) {
                // Already terminating with as short a grace: nothing to do.
                if meta.deletion_timestamp.is_some()
                    && meta
                        .deletion_grace_period_seconds
                        .is_some_and(|g| g <= grace)
                {
                    return Ok(current);
                }
                match self.mark_deleted(&current, &key, mod_rev, grace).await {
                    Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                    result => {
                        return result.map_err(|e| self.write_error::<K>(e, &namespace, &name))?;
                    }
                }
            }
            let mut current = current;
            let mut meta = meta;
            if let Some(finalizer) = propagation
                && meta.deletion_timestamp.is_none()
                && !meta.finalizers.iter().any(|f| f == finalizer)
            {
                meta.finalizers.push(finalizer.to_string());
                current.metadata_mut().finalizers = meta.finalizers.clone();
            }
            if !meta.finalizers.is_empty() {
                if meta.deletion_timestamp.is_some()
                    && meta.deletion_grace_period_seconds.unwrap_or(0) == 0
                {
                    return Ok(current);
                }
                // Kinds without graceful deletion have no grace period: the
                // object goes as soon as its finalizers do.
                let grace = 0;
                match self.mark_deleted(&current, &key, mod_rev, grace).await {
                    Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                    result => {
                        return result.map_err(|e| self.write_error::<K>(e, &namespace, &name))?;
                    }
                }
            }
            match self.store.delete(&key, Some(mod_rev)).await {
                Ok((rev, _)) => {
                    let mut gone = current;
                    gone.metadata_mut().resource_version = rev.to_string();
                    self.release_claims(&gone).await;
                    return Ok(gone);
                }
                Err(skiff_store::Error::Conflict { .. }) if expected_rv.is_none() => continue,
                Err(e) => return Err(self.write_error::<K>(e, &namespace, &name)),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to delete; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }

    /// Marks an object deleted (deletionTimestamp `grace` seconds ahead,
    /// deletionGracePeriodSeconds) at `mod_rev`; it stays until its
    /// finalizers are gone or its agent finishes it.
    async fn mark_deleted<K: Strategy>(
        &self,
        current: &K,
        key: &str,
        mod_rev: i64,
        grace: i64,
    ) -> Result<Result<K>, skiff_store::Error> {
        let mut marked = current.clone();
        let m = marked.metadata_mut();
        let mut at = now();
        at.seconds += grace;
        m.deletion_timestamp = Some(at);
        m.deletion_grace_period_seconds = Some(grace);
        marked.mark_deleting();
        let bytes = match admit(&mut marked, Some(current)) {
            Ok(bytes) => bytes,
            Err(e) => return Ok(Err(e)),
        };
        let rev = self.store.update(key, bytes, Some(mod_rev)).await?;
        marked.metadata_mut().resource_version = rev.to_string();
        Ok(Ok(marked))
    }
}
