//! The volume side of the PersistentVolume controller: phases, the reclaim
//! policy of a released volume, and a deleted volume's protection.

use super::*;

impl VolumeController {
    pub(super) async fn sync_volume(&self, pv: &PersistentVolume) -> Result<Action, Error> {
        let deleting = is_deleting(pv);
        let claim_ref = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.clone())
            .filter(|r| !r.uid.is_empty());
        let Some(claim_ref) = claim_ref else {
            // Free, or reserved for a claim by its author (waiting for it).
            if deleting {
                return self.release_volume(pv, false).await;
            }
            self.set_volume_phase(pv, "Available", "", "").await?;
            return Ok(Action::AwaitChange);
        };
        let cached = self
            .claims
            .1
            .get(&claim_ref.namespace, &claim_ref.name)
            .filter(|c| c.uid() == claim_ref.uid);
        if let Some(claim) = cached {
            let elsewhere = volumes::claim_volume(&claim);
            let by_us = pv
                .metadata
                .as_ref()
                .is_some_and(|m| m.annotations.contains_key(BOUND_BY_CONTROLLER_ANNOTATION));
            if !elsewhere.is_empty() && elsewhere != pv.name() && by_us && !deleting {
                // A binding that went to another volume: this one is free
                // again (Kubernetes' binder does the same).
                let mut freed = pv.clone();
                if let Some(spec) = freed.spec.as_mut() {
                    spec.claim_ref = None;
                }
                freed
                    .metadata_mut()
                    .annotations
                    .remove(BOUND_BY_CONTROLLER_ANNOTATION);
                freed.status = None;
                return match self.volumes.0.update(freed).await {
                    Ok(_) => Ok(Action::AwaitChange),
                    Err(s) if s.code() == tonic::Code::Aborted => {
                        Ok(Action::Requeue(Duration::from_millis(100)))
                    }
                    Err(s) => Err(s.into()),
                };
            }
            // The claim's own sync finishes a binding in progress. A
            // deleted volume is held only by a claim bound to it (or still
            // binding).
            let held = elsewhere.is_empty() || elsewhere == pv.name();
            return if deleting {
                self.release_volume(pv, held).await
            } else {
                Ok(Action::AwaitChange)
            };
        }
        // Gone from the cache: confirmed before anything is released.
        match self
            .claims
            .0
            .get(&claim_ref.namespace, &claim_ref.name)
            .await
        {
            Ok(live) if live.uid() == claim_ref.uid => {
                let elsewhere = volumes::claim_volume(&live);
                let held = elsewhere.is_empty() || elsewhere == pv.name();
                return if deleting {
                    self.release_volume(pv, held).await
                } else {
                    Ok(Action::Requeue(Duration::from_millis(500)))
                };
            }
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
        let released = if volume_phase(pv) == "Released" {
            pv.clone()
        } else {
            self.set_volume_phase(pv, "Released", "", "").await?
        };
        if deleting {
            return self.release_volume(&released, false).await;
        }
        self.reclaim(&released).await
    }

    /// Carries out a released volume's reclaim policy.
    pub(super) async fn reclaim(&self, pv: &PersistentVolume) -> Result<Action, Error> {
        let policy = pv
            .spec
            .as_ref()
            .map_or("", |s| s.persistent_volume_reclaim_policy.as_str());
        if policy != "Delete" {
            return Ok(Action::AwaitChange);
        }
        let ours = pv
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(PROVISIONED_BY_ANNOTATION))
            .is_some_and(|p| p == LOCAL_PATH_PROVISIONER);
        if !ours {
            if volume_phase(pv) != "Failed" {
                let message = "Skiff deletes only the volumes its local-path provisioner made: remove this volume's data and the volume by hand";
                self.set_volume_phase(pv, "Failed", "VolumeFailedDelete", message)
                    .await?;
                self.event(pv, EventType::Warning, "VolumeFailedDelete", message)
                    .await;
            }
            return Ok(Action::AwaitChange);
        }
        // Exactly the volume judged released: a change since (a new
        // claim, another policy) stops the delete.
        let mut request = crate::replicaset::delete_exactly(pv);
        if let Some(preconditions) = request.preconditions.as_mut() {
            preconditions.resource_version = pv
                .metadata
                .as_ref()
                .map(|m| m.resource_version.clone())
                .unwrap_or_default();
        }
        match self.volumes.0.delete(request).await {
            Ok(_) => {
                tracing::info!(volume = %pv.name(), "released local-path volume deleted");
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => {
                self.event(pv, EventType::Warning, "VolumeFailedDelete", s.message())
                    .await;
                Err(s.into())
            }
        }
    }

    /// A deleted volume goes once no claim holds it (`held`: the claim its
    /// claimRef names still exists, as the cache or a live read shows).
    pub(super) async fn release_volume(
        &self,
        pv: &PersistentVolume,
        held: bool,
    ) -> Result<Action, Error> {
        if held || !has_finalizer(pv, PV_PROTECTION_FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let mut done = pv.clone();
        done.metadata_mut()
            .finalizers
            .retain(|f| f != PV_PROTECTION_FINALIZER);
        done.status = None;
        match self.volumes.0.update(done).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => Err(s.into()),
        }
    }

    pub(super) async fn set_volume_phase(
        &self,
        pv: &PersistentVolume,
        phase: &str,
        reason: &str,
        message: &str,
    ) -> Result<PersistentVolume, Error> {
        let current = pv.status.clone().unwrap_or_default();
        if current.phase == phase && current.reason == reason && current.message == message {
            return Ok(pv.clone());
        }
        let mut updated = pv.clone();
        updated.status = Some(PersistentVolumeStatus {
            phase: phase.into(),
            reason: reason.into(),
            message: message.into(),
            last_phase_transition_time: Some(skiff::time::now_seconds()),
        });
        match self.volumes.0.update_status(updated).await {
            Ok(stored) => Ok(stored),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(pv.clone()),
            Err(s) => Err(s.into()),
        }
    }
}
