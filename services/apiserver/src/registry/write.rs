//! Update and UpdateStatus: optimistic concurrency on resourceVersion,
//! merges of what a client may not change, generation, finalizers.

use skiff::keys;
use skiff::validation::FieldErrors;

use crate::cache::decode;
use crate::error::{ApiError, Result};
use crate::strategy::Strategy;

use super::claims::{keep_cluster_ip, node_ports_of};
use super::*;

impl Registry {
    /// Replaces an object's spec and metadata (not its status).
    ///
    /// # Errors
    /// NotFound, a stale resourceVersion (Conflict), invalid objects.
    pub async fn update<K: Strategy>(&self, obj: K) -> Result<K> {
        self.write(obj, false, false).await
    }

    /// Replaces an object's status only.
    ///
    /// # Errors
    /// As [`Registry::update`]; Unsupported for kinds without status.
    pub async fn update_status<K: Strategy>(&self, obj: K) -> Result<K> {
        self.update_with(obj, true, false).await
    }

    /// Update (`status_only`: of the status alone), or with `dry_run`
    /// everything but the write (the object as it would be): the three in
    /// one call, for a caller that serves them all (one copy of the write
    /// per kind in its code, not three).
    ///
    /// # Errors
    /// As [`Registry::update`] and [`Registry::update_status`].
    pub async fn update_with<K: Strategy>(
        &self,
        obj: K,
        status_only: bool,
        dry_run: bool,
    ) -> Result<K> {
        if status_only && !K::HAS_STATUS {
            return Err(ApiError::Unsupported(format!("{} has no status", K::KIND)));
        }
        self.write(obj, status_only, dry_run).await
    }

    async fn write<K: Strategy>(&self, mut obj: K, status_only: bool, dry_run: bool) -> Result<K> {
        check_type_meta(&obj)?;
        let namespace = effective_namespace::<K>(obj.namespace());
        obj.metadata_mut().namespace = namespace.clone();
        let name = obj.name().to_string();
        if name.is_empty() {
            return Err(ApiError::Invalid("metadata.name: Required value".into()));
        }
        let requested = parse_rv(obj.resource_version(), "metadata.resourceVersion")?;
        let key = keys::object::<K>(&namespace, &name);
        // What earlier tries charged to quotas.
        let mut charged = skiff::quota::ResourceList::new();
        for _ in 0..MAX_RETRIES {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(not_found::<K>(&namespace, &name));
            };
            let conflict = || ApiError::Conflict {
                kind: kind_name::<K>(),
                name: object_name(&namespace, &name),
                requested: obj.resource_version().to_string(),
                current: kv.mod_revision,
            };
            if requested.is_some_and(|rv| rv != kv.mod_revision) {
                return Err(conflict());
            }
            let current = decode::<K>(&kv.value, kv.mod_revision)
                .ok_or_else(|| ApiError::Internal(format!("undecodable {} at {key}", K::KIND)))?;
            let mut next = if status_only {
                let sent_uid = obj.metadata().map_or("", |m| m.uid.as_str());
                let cur_uid = current.metadata().map_or("", |m| m.uid.as_str());
                if !sent_uid.is_empty() && sent_uid != cur_uid {
                    return Err(ApiError::Precondition(format!(
                        "metadata.uid: Invalid value: {sent_uid:?}: the object's uid is {cur_uid:?} (it was deleted and re-created?)"
                    )));
                }
                let mut next = current.clone();
                next.copy_status_from(&obj);
                next.keep_admitted(&current);
                next
            } else {
                let mut next = self.merge_update(&current, &obj)?;
                self.admit_global_default(&next).await?;
                keep_cluster_ip(&current, &mut next)?;
                same_spec_same_generation(&current, &mut next);
                next
            };
            let cur_meta = current.metadata().cloned().unwrap_or_default();
            let next_meta = next.metadata().cloned().unwrap_or_default();
            // The last finalizer is gone from an object whose deletion is
            // not waiting out a grace period: it goes.
            let deleting = cur_meta.deletion_timestamp.is_some()
                && cur_meta.deletion_grace_period_seconds.unwrap_or(0) == 0
                && next_meta.finalizers.is_empty();
            // What an update adds is charged to the quotas (a Service made
            // a LoadBalancer), once however often the write is retried.
            if !status_only && !deleting {
                let added = skiff::quota::increase(
                    &skiff::quota::increase(
                        &skiff::quota::usage(&next),
                        &skiff::quota::usage(&current),
                    ),
                    &charged,
                );
                if !added.is_empty() && self.has_quotas(&namespace).await? {
                    admit(&mut next, Some(&current))?;
                    self.charge_quotas(&next, &added, dry_run).await?;
                    skiff::quota::add(&mut charged, &added);
                }
            }
            if dry_run {
                // Checked and admitted; nothing is written (not even a
                // finalizer's last removal). An unchanged object comes back
                // as it is; a changed one without a resourceVersion, since it
                // has none yet.
                if admit(&mut next, Some(&current))? == kv.value {
                    return Ok(current);
                }
                next.metadata_mut().resource_version.clear();
                next.set_type_meta();
                return Ok(next);
            }
            // An object about to go claims nothing new.
            let newly = if status_only || deleting {
                Vec::new()
            } else {
                if !next.node_port_requests().is_empty() {
                    admit(&mut next, Some(&current))?;
                }
                let newly = self.claim_node_ports(Some(&current), &mut next).await?;
                // The spec is judged as it will be stored: an update that
                // left out what the server keeps (node ports) changed
                // nothing, and is no new generation.
                same_spec_same_generation(&current, &mut next);
                // Field ownership, of the object as it will be stored.
                if let Err(e) = track_update(&current, &mut next) {
                    self.release_ports(&newly, &object_name(&namespace, &name))
                        .await;
                    return Err(e);
                }
                newly
            };
            let owner = object_name(&namespace, &name);
            let result = if deleting {
                // The last finalizer is gone: the object goes.
                admit(&mut next, Some(&current))?;
                let deleted = self
                    .store
                    .delete(&key, Some(kv.mod_revision))
                    .await
                    .map(|(rev, _)| rev);
                if let Ok(rev) = deleted {
                    self.release_claims(&current).await;
                    next.metadata_mut().resource_version = rev.to_string();
                    next.set_type_meta();
                    return Ok(next);
                }
                deleted
            } else {
                let bytes = match admit(&mut next, Some(&current)) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.release_ports(&newly, &owner).await;
                        return Err(e);
                    }
                };
                if bytes == kv.value || same_object(&current, &next) {
                    // Nothing changed: no write, no new resourceVersion.
                    return Ok(current);
                }

                self.store.update(&key, bytes, Some(kv.mod_revision)).await
            };
            // Release only when the write surely did not happen (a timeout
            // may have committed it; the startup repair settles that case).
            if let Err(e) = &result
                && definite(e)
            {
                self.release_ports(&newly, &owner).await;
            }
            match result {
                Ok(rev) => {
                    // Ports the update no longer uses go back to the range.
                    let kept: Vec<u16> = node_ports_of(&next);
                    let stale: Vec<u16> = node_ports_of(&current)
                        .into_iter()
                        .filter(|p| !kept.contains(p))
                        .collect();
                    self.release_ports(&stale, &owner).await;
                    next.metadata_mut().resource_version = rev.to_string();
                    next.set_type_meta();
                    return Ok(next);
                }
                Err(skiff_store::Error::Conflict { .. }) if requested.is_none() => continue,
                Err(skiff_store::Error::Conflict { current, .. }) => {
                    return Err(ApiError::Conflict {
                        kind: kind_name::<K>(),
                        name: object_name(&namespace, &name),
                        requested: obj.resource_version().to_string(),
                        current,
                    });
                }
                Err(skiff_store::Error::NotFound { .. }) => {
                    return Err(not_found::<K>(&namespace, &name));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Unavailable(format!(
            "{} {:?} is changing too fast to update; try again",
            K::KIND,
            object_name(&namespace, &name)
        )))
    }

    /// The object an Update produces: the client's spec and metadata, with
    /// the fields only the server sets kept from `current`.
    fn merge_update<K: Strategy>(&self, current: &K, obj: &K) -> Result<K> {
        let cur = current.metadata().cloned().unwrap_or_default();
        if obj.status_set() && !obj.same_status(current) {
            return Err(ApiError::Invalid(format!(
                "status: Forbidden: the status of {} {:?} can only be changed through UpdateStatus; send the status you read, or none",
                K::KIND,
                obj.name()
            )));
        }
        let mut next = obj.clone();
        next.copy_status_from(current);
        next.default_fields();
        next.keep_admitted(current);
        let mut errors = FieldErrors::default();
        next.validate_update(current, &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::Invalid(format!(
                "{} {:?} is invalid: {errors}",
                K::KIND,
                obj.name()
            )));
        }
        let meta = next.metadata_mut();
        if !meta.uid.is_empty() && meta.uid != cur.uid {
            return Err(ApiError::Precondition(format!(
                "metadata.uid: Invalid value: {:?}: the object's uid is {:?} (it was deleted and re-created?)",
                meta.uid, cur.uid
            )));
        }
        meta.uid = cur.uid.clone();
        meta.creation_timestamp = cur.creation_timestamp;
        meta.deletion_timestamp = cur.deletion_timestamp;
        meta.deletion_grace_period_seconds = cur.deletion_grace_period_seconds;
        meta.generate_name = if meta.generate_name.is_empty() {
            cur.generate_name.clone()
        } else {
            meta.generate_name.clone()
        };
        meta.generation = cur.generation;
        // Kept when a writer leaves them out (server-side apply's record).
        if meta.managed_fields.is_empty() {
            meta.managed_fields = cur.managed_fields.clone();
        }
        if cur.deletion_timestamp.is_some() {
            let added: Vec<&String> = meta
                .finalizers
                .iter()
                .filter(|f| !cur.finalizers.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                )));
            }
        }
        if next.spec_fingerprint() != current.spec_fingerprint() {
            let meta = next.metadata_mut();
            meta.generation = cur.generation + 1;
            // A new spec is new work: its trace is this request's.
            skiff_telemetry::annotate(&mut meta.annotations);
        }
        // Kept when a writer leaves it out (it is the server's to set).
        let trace = skiff_telemetry::TRACE_ANNOTATION;
        if let Some(value) = cur.annotations.get(trace) {
            next.metadata_mut()
                .annotations
                .entry(trace.to_string())
                .or_insert_with(|| value.clone());
        }
        Ok(next)
    }

    pub(super) fn write_error<K: Strategy>(
        &self,
        e: skiff_store::Error,
        namespace: &str,
        name: &str,
    ) -> ApiError {
        match e {
            skiff_store::Error::NotFound { .. } => not_found::<K>(namespace, name),
            skiff_store::Error::Conflict {
                expected, current, ..
            } => ApiError::Conflict {
                kind: kind_name::<K>(),
                name: object_name(namespace, name),
                requested: expected.to_string(),
                current,
            },
            other => other.into(),
        }
    }
}

/// Field ownership of an update (server-side apply's record): the fields
/// the writer changed become its own, on objects that have managed fields
/// (others are never applied to, and pay nothing).
fn track_update<K: Strategy>(current: &K, next: &mut K) -> Result<()> {
    let Some(writer) = crate::apply::writer() else {
        return Ok(());
    };
    if current
        .metadata()
        .is_none_or(|m| m.managed_fields.is_empty())
    {
        return Ok(());
    }
    let json = |obj: &K| {
        skiff::json::to_value(obj)
            .map_err(|e| ApiError::Internal(format!("{} as JSON: {e}", K::KIND)))
    };
    let entries = crate::apply::record_update(
        &json(current)?,
        &json(next)?,
        &writer.manager,
        K::API_VERSION,
        &skiff::time::rfc3339(super::now().seconds),
    );
    next.metadata_mut().managed_fields = skiff::json::from_value(serde_json::Value::Array(entries))
        .map_err(|e| ApiError::Internal(format!("managed fields: {e}")))?;
    Ok(())
}

/// Undoes the generation bump (and its new trace) of an update whose spec,
/// once the server kept what it keeps, is the current one.
fn same_spec_same_generation<K: Strategy>(current: &K, next: &mut K) {
    if next.spec_fingerprint() != current.spec_fingerprint() {
        return;
    }
    let cur = current.metadata().cloned().unwrap_or_default();
    let meta = next.metadata_mut();
    if meta.generation == cur.generation {
        return;
    }
    meta.generation = cur.generation;
    let trace = skiff_telemetry::TRACE_ANNOTATION;
    match cur.annotations.get(trace) {
        Some(value) => {
            meta.annotations.insert(trace.to_string(), value.clone());
        }
        None => {
            meta.annotations.remove(trace);
        }
    }
}

/// Whether two versions of an object are the same though their encodings
/// differ: managed fields' FieldsV1 tries are protobuf Structs, whose maps
/// encode in no fixed order.
fn same_object<K: Strategy>(current: &K, next: &K) -> bool {
    if current
        .metadata()
        .is_none_or(|m| m.managed_fields.is_empty())
    {
        return false;
    }
    let normal = |obj: &K| {
        let mut obj = obj.clone();
        obj.clear_type_meta();
        obj.metadata_mut().resource_version.clear();
        obj
    };
    normal(current) == normal(next)
}
