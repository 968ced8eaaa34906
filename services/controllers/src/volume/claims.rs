//! The claim side of the PersistentVolume controller: binding, the local
//! provisioner, and a deleted claim's protection.

use super::*;

impl VolumeController {
    pub(super) async fn sync_claim(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        if is_deleting(pvc) {
            return self.release_claim(pvc).await;
        }
        if volumes::claim_volume(pvc).is_empty() {
            self.sync_unbound(pvc).await
        } else {
            self.sync_named(pvc).await
        }
    }

    /// A claim with no volume yet: bind the best match, or make one.
    pub(super) async fn sync_unbound(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        self.set_claim_phase(pvc, "Pending").await?;
        let class_name = volumes::claim_class(pvc);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get("", class_name))
            .flatten();
        let wait = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        let selected = pvc
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.get(SELECTED_NODE_ANNOTATION))
            .cloned();
        if wait && selected.is_none() {
            self.event(
                pvc,
                EventType::Normal,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
            return Ok(Action::AwaitChange);
        }
        let node = selected.as_ref().and_then(|n| self.nodes.get("", n));
        if let Some(name) = &selected
            && node.is_none()
        {
            self.event(
                pvc,
                EventType::Warning,
                "ProvisioningFailed",
                &format!("the selected node {name:?} does not exist"),
            )
            .await;
            return Ok(Action::Requeue(RETRY));
        }
        let all = self.volumes.1.list();
        // A volume made for (or reserved to) this claim is its volume,
        // wherever it is.
        if let Some(pv) = all
            .iter()
            .find(|v| !is_deleting(v.as_ref()) && volumes::reserved_for(v, pvc))
        {
            return self.bind(pv, pvc).await;
        }
        if let Some(pv) =
            volumes::best_match(pvc, all.iter().map(|v| v.as_ref()), node.as_deref(), wait)
        {
            return self.bind(pv, pvc).await;
        }
        let provisioning = match &class {
            _ if class_name.is_empty() => Provisioning::NoClass,
            None => Provisioning::MissingClass(class_name.to_string()),
            Some(c) if c.provisioner == LOCAL_PATH_PROVISIONER => Provisioning::Local,
            Some(c) => Provisioning::Other(c.provisioner.clone()),
        };
        match provisioning {
            Provisioning::Local => {
                let class = class.expect("a local class");
                self.provision(pvc, &class, node.as_deref()).await
            }
            Provisioning::NoClass => {
                self.event(
                    pvc,
                    EventType::Normal,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Provisioning::MissingClass(name) => {
                self.event(
                    pvc,
                    EventType::Warning,
                    "ProvisioningFailed",
                    &format!("storageclass.storage.k8s.io {name:?} not found"),
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Provisioning::Other(provisioner) => {
                let message = if provisioner == "kubernetes.io/no-provisioner" {
                    format!(
                        "no persistent volumes available for this claim of class {class_name:?}: its volumes are made by hand"
                    )
                } else {
                    format!(
                        "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
                    )
                };
                self.event(pvc, EventType::Normal, "ExternalProvisioning", &message)
                    .await;
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Makes a local-path volume for the claim (reserved for it: the next
    /// sync binds it). `node` is the selected one, if the class waits for
    /// the first consumer; else a node that can hold local volumes.
    pub(super) async fn provision(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        node: Option<&Node>,
    ) -> Result<Action, Error> {
        let root_of = |n: &Node| {
            n.metadata
                .as_ref()
                .and_then(|m| m.annotations.get(LOCAL_PATH_ROOT_ANNOTATION))
                .filter(|r| r.starts_with('/'))
                .cloned()
        };
        let target = match node {
            Some(n) => match root_of(n) {
                Some(root) => (n.name().to_string(), root),
                None => {
                    self.event(
                        pvc,
                        EventType::Warning,
                        "ProvisioningFailed",
                        &format!(
                            "node {:?} cannot hold local-path volumes: its agent publishes no {LOCAL_PATH_ROOT_ANNOTATION} annotation (a hollow node, or an agent that cannot make directories)",
                            n.name()
                        ),
                    )
                    .await;
                    return Ok(Action::Requeue(RETRY));
                }
            },
            None => {
                let mut able: Vec<(String, String)> = self
                    .nodes
                    .list()
                    .iter()
                    .filter(|n| skiff::nodes::is_ready(n))
                    .filter_map(|n| root_of(n).map(|r| (n.name().to_string(), r)))
                    .collect();
                able.sort();
                // Spread by the claim's uid, so claims do not all land on
                // the first node.
                let pick = pvc.uid().bytes().map(usize::from).sum::<usize>();
                match able.get(pick % able.len().max(1)) {
                    Some(t) => t.clone(),
                    None => {
                        self.event(
                            pvc,
                            EventType::Warning,
                            "ProvisioningFailed",
                            "no ready node can hold local-path volumes",
                        )
                        .await;
                        return Ok(Action::Requeue(RETRY));
                    }
                }
            }
        };
        let (node_name, root) = target;
        if !pvc
            .metadata
            .as_ref()
            .is_some_and(|m| m.annotations.contains_key(STORAGE_PROVISIONER_ANNOTATION))
        {
            let mut marked = pvc.clone();
            marked.metadata_mut().annotations.insert(
                STORAGE_PROVISIONER_ANNOTATION.into(),
                LOCAL_PATH_PROVISIONER.into(),
            );
            marked.status = None;
            match self.claims.0.update(marked).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            }
        }
        self.event(
            pvc,
            EventType::Normal,
            "Provisioning",
            &format!(
                "External provisioner is provisioning volume for claim \"{}/{}\"",
                pvc.namespace(),
                pvc.name()
            ),
        )
        .await;
        let pv = local_volume(pvc, class, &node_name, &root);
        let name = pv.name().to_string();
        match self.volumes.0.create(pv).await {
            Ok(_) => {
                self.event(
                    pvc,
                    EventType::Normal,
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {name} on node {node_name}"),
                )
                .await;
                Ok(Action::AwaitChange)
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(Action::AwaitChange),
            Err(s) => {
                self.event(
                    pvc,
                    EventType::Warning,
                    "ProvisioningFailed",
                    &format!("creating volume {name}: {}", s.message()),
                )
                .await;
                Err(s.into())
            }
        }
    }

    /// A claim that names its volume (bound, or pre-bound by its author).
    pub(super) async fn sync_named(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        let name = volumes::claim_volume(pvc);
        let Some(pv) = self.volumes.1.get("", name) else {
            if claim_phase(pvc) == "Bound" {
                self.set_claim_phase(pvc, "Lost").await?;
                self.event(
                    pvc,
                    EventType::Warning,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                )
                .await;
            } else {
                self.set_claim_phase(pvc, "Pending").await?;
                self.event(
                    pvc,
                    EventType::Normal,
                    "FailedBinding",
                    &format!("volume {name:?} not found"),
                )
                .await;
            }
            return Ok(Action::AwaitChange);
        };
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        match claim_ref {
            None => {
                if let Some(why) = unsuitable(&pv, pvc) {
                    self.set_claim_phase(pvc, "Pending").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "VolumeMismatch",
                        &format!("Cannot bind to requested volume {name:?}: {why}"),
                    )
                    .await;
                    return Ok(Action::AwaitChange);
                }
                self.bind(&pv, pvc).await
            }
            Some(_) if volumes::reserved_for(&pv, pvc) => self.bind(&pv, pvc).await,
            Some(_) => {
                if claim_phase(pvc) == "Bound" {
                    self.set_claim_phase(pvc, "Lost").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "ClaimMisbound",
                        "Two claims are bound to the same volume, this one is bound incorrectly",
                    )
                    .await;
                } else {
                    self.set_claim_phase(pvc, "Pending").await?;
                    self.event(
                        pvc,
                        EventType::Warning,
                        "FailedBinding",
                        &format!("volume {name:?} already bound to a different claim."),
                    )
                    .await;
                }
                Ok(Action::AwaitChange)
            }
        }
    }

    /// Binds `pv` and `pvc`, each step once: the volume's claimRef, its
    /// phase, the claim's volumeName, its phase.
    pub(super) async fn bind(
        &self,
        pv: &PersistentVolume,
        pvc: &PersistentVolumeClaim,
    ) -> Result<Action, Error> {
        let reference = claim_reference(pvc);
        let pv_ref_ok = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid == reference.uid && r.name == reference.name);
        let mut pv = pv.clone();
        if !pv_ref_ok {
            let by_us = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
            if let Some(spec) = pv.spec.as_mut() {
                spec.claim_ref = Some(reference);
            }
            if by_us {
                pv.metadata_mut()
                    .annotations
                    .insert(BOUND_BY_CONTROLLER_ANNOTATION.into(), "yes".into());
            }
            pv.status = None;
            pv = match self.volumes.0.update(pv).await {
                Ok(updated) => updated,
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            };
        }
        if volume_phase(&pv) != "Bound" {
            pv = self.set_volume_phase(&pv, "Bound", "", "").await?;
        }
        let volume_name = pv.name().to_string();
        let mut pvc = pvc.clone();
        let bound_by_us = volumes::claim_volume(&pvc).is_empty();
        let annotated = pvc
            .metadata
            .as_ref()
            .is_some_and(|m| m.annotations.contains_key(BIND_COMPLETED_ANNOTATION));
        if bound_by_us || !annotated {
            if let Some(spec) = pvc.spec.as_mut() {
                spec.volume_name = volume_name.clone();
            }
            let annotations = &mut pvc.metadata_mut().annotations;
            annotations.insert(BIND_COMPLETED_ANNOTATION.into(), "yes".into());
            if bound_by_us {
                annotations.insert(BOUND_BY_CONTROLLER_ANNOTATION.into(), "yes".into());
            }
            pvc.status = None;
            pvc = match self.claims.0.update(pvc).await {
                Ok(updated) => updated,
                Err(s) if s.code() == tonic::Code::Aborted => {
                    return Ok(Action::Requeue(Duration::from_millis(100)));
                }
                Err(s) => return Err(s.into()),
            };
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let status = PersistentVolumeClaimStatus {
            phase: "Bound".into(),
            access_modes: spec.access_modes,
            capacity: spec.capacity,
            ..pvc.status.clone().unwrap_or_default()
        };
        if pvc.status.as_ref() != Some(&status) {
            let mut updated = pvc.clone();
            updated.status = Some(status);
            self.claims.0.update_status(updated).await?;
            tracing::info!(claim = %pvc.object_ref(), volume = %volume_name, "bound");
        }
        Ok(Action::AwaitChange)
    }

    /// A deleted claim goes once no unfinished pod uses it.
    pub(super) async fn release_claim(&self, pvc: &PersistentVolumeClaim) -> Result<Action, Error> {
        if !has_finalizer(pvc, PVC_PROTECTION_FINALIZER) {
            return Ok(Action::AwaitChange);
        }
        let namespace = pvc.namespace();
        let cached = self
            .pods
            .1
            .list()
            .iter()
            .any(|p| p.namespace() == namespace && pod_uses(p, pvc.name()));
        if cached {
            return Ok(Action::AwaitChange);
        }
        // The cache may not have a pod created a moment ago yet.
        let live = self
            .pods
            .0
            .list(skiff::pb::api::v1::ListRequest {
                namespace: namespace.to_string(),
                ..Default::default()
            })
            .await?;
        if live.items.iter().any(|p| pod_uses(p, pvc.name())) {
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        let mut done = pvc.clone();
        done.metadata_mut()
            .finalizers
            .retain(|f| f != PVC_PROTECTION_FINALIZER);
        done.status = None;
        match self.claims.0.update(done).await {
            Ok(_) => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Action::AwaitChange),
            Err(s) if s.code() == tonic::Code::Aborted => {
                Ok(Action::Requeue(Duration::from_millis(100)))
            }
            Err(s) => Err(s.into()),
        }
    }

    pub(super) async fn set_claim_phase(
        &self,
        pvc: &PersistentVolumeClaim,
        phase: &str,
    ) -> Result<(), Error> {
        if claim_phase(pvc) == phase {
            return Ok(());
        }
        let mut updated = pvc.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status.phase = phase.into();
        if phase != "Bound" {
            status.access_modes.clear();
            status.capacity.clear();
        }
        match self.claims.0.update_status(updated).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s.into()),
        }
    }
}
