//! The StatefulSet controller's decisions, pure: its pods' and claims'
//! identities, and what a reconcile creates, deletes and reports.

use std::sync::Arc;

use skiff::Resource;
use skiff::pb::apps::v1::{StatefulSet, StatefulSetStatus};
use skiff::pb::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use skiff::pb::meta::v1::ObjectMeta;

use crate::history::REVISION_LABEL;
use crate::replicaset::is_available;

/// The label naming a pod's stable name.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The name of ordinal `ordinal`'s pod.
pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name())
}

/// The ordinal of a pod of `set`, from its name.
pub fn ordinal_of(set: &StatefulSet, pod: &Pod) -> Option<i32> {
    pod.name()
        .strip_prefix(set.name())?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|o: &i32| *o >= 0)
}

/// The claim of template `template` for ordinal `ordinal`.
pub fn claim_name(template: &str, set: &StatefulSet, ordinal: i32) -> String {
    format!("{template}-{}-{ordinal}", set.name())
}

pub(super) fn start_of(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .map_or(0, |o| o.start)
}

pub(super) fn partition_of(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
}

pub(super) fn replicas_of(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The name of the revision of template `hash` (the pods' label).
pub fn revision_name(set: &StatefulSet, hash: &str) -> String {
    format!(
        "{}-{hash}",
        set.name().chars().take(223).collect::<String>()
    )
}

/// The pod of ordinal `ordinal`, from `template` at revision `revision`.
pub fn pod_for(set: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, revision: &str) -> Pod {
    let meta = set.metadata.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let name = pod_name(set, ordinal);
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels;
    labels.insert(REVISION_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = name.clone();
    pod_spec.subdomain = spec.service_name.clone();
    for claim in &spec.volume_claim_templates {
        let volume = Volume {
            name: claim.name().to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(claim.name(), set, ordinal),
                read_only: false,
            }),
            ..Default::default()
        };
        match pod_spec.volumes.iter_mut().find(|v| v.name == volume.name) {
            Some(v) => *v = volume,
            None => pod_spec.volumes.push(volume),
        }
    }
    Pod {
        metadata: Some(ObjectMeta {
            name,
            namespace: meta.namespace,
            labels,
            annotations: tmeta.annotations,
            owner_references: vec![set.controller_reference()],
            ..Default::default()
        }),
        spec: Some(pod_spec),
        ..Default::default()
    }
}

/// The label a claim a set uses carries: the set's uid (only such claims
/// are deleted when the set scales down under `whenScaled: Delete`; a
/// claim kept from an earlier set of the same name becomes the new set's
/// once it uses it, as on Kubernetes).
pub const SET_UID_LABEL: &str = "statefulset.skiff.io/uid";

/// Whether the set's claims go with it (`whenDeleted: Delete`): they name
/// it as an owner, and the garbage collector deletes them after it.
pub(super) fn claims_go_with(set: &StatefulSet) -> bool {
    set.spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref())
        .is_some_and(|p| p.when_deleted == "Delete")
}

/// The owner reference a claim of a `whenDeleted: Delete` set carries (not
/// a controller: the claim is not the set's to run).
pub(super) fn claim_owner(set: &StatefulSet) -> skiff::pb::meta::v1::OwnerReference {
    skiff::pb::meta::v1::OwnerReference {
        controller: None,
        ..set.controller_reference()
    }
}

/// The claims ordinal `ordinal` needs, from the claim templates: labelled
/// with the set's selector and uid, owned by the set when its claims go
/// with it.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let uid = set
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let selector_labels = spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .map(|template| {
            let tmeta = template.metadata.clone().unwrap_or_default();
            let mut labels = tmeta.labels;
            labels.extend(selector_labels.clone());
            labels.insert(SET_UID_LABEL.into(), uid.clone());
            PersistentVolumeClaim {
                metadata: Some(ObjectMeta {
                    name: claim_name(&tmeta.name, set, ordinal),
                    namespace: set.namespace().to_string(),
                    labels,
                    annotations: tmeta.annotations,
                    owner_references: if claims_go_with(set) {
                        vec![claim_owner(set)]
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                }),
                spec: template.spec.clone(),
                ..Default::default()
            }
        })
        .collect()
}

/// What one reconcile does and reports.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Ordinals to make a pod for (their claims first).
    pub create: Vec<i32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Ordinals removed whose claims go (`whenScaled: Delete`).
    pub release_claims: Vec<i32>,
    /// The status to report.
    pub status: StatefulSetStatus,
}

pub(super) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata
        .as_ref()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

pub(super) fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// Running, Ready, and (with `minReadySeconds`) available.
pub(super) fn healthy(pod: &Pod, min_ready: i32) -> bool {
    !is_terminating(pod) && phase(pod) == "Running" && is_available(pod, min_ready)
}

/// Plans a reconcile of `set` over the pods it owns, for the template
/// revision `update` (the revision of the current template) and
/// `current` (the revision the pods ran before; `update` when none).
/// `gone_ordinals` are ordinals above the range whose claims still exist.
pub fn plan(
    set: &StatefulSet,
    owned: &[Arc<Pod>],
    current: &str,
    update: &str,
    gone_ordinals: &[i32],
) -> Plan {
    let spec = set.spec.clone().unwrap_or_default();
    let (start, replicas) = (start_of(set), replicas_of(set));
    let end = start + replicas;
    let parallel = spec.pod_management_policy == "Parallel";
    let min_ready = spec.min_ready_seconds;
    let revision = |p: &Pod| {
        p.metadata
            .as_ref()
            .and_then(|m| m.labels.get(REVISION_LABEL).cloned())
            .unwrap_or_default()
    };
    let mut plan = Plan::default();
    let mut status = StatefulSetStatus {
        observed_generation: set.generation(),
        current_revision: current.to_string(),
        update_revision: update.to_string(),
        ..Default::default()
    };
    let mut in_range: Vec<(i32, &Arc<Pod>)> = Vec::new();
    let mut condemned: Vec<(i32, &Arc<Pod>)> = Vec::new();
    for pod in owned {
        let Some(ordinal) = ordinal_of(set, pod) else {
            continue;
        };
        if !is_terminating(pod) {
            status.replicas += 1;
            if skiff::pods::is_ready(pod) {
                status.ready_replicas += 1;
            }
            if is_available(pod, min_ready) {
                status.available_replicas += 1;
            }
            let rev = revision(pod);
            if rev == current {
                status.current_replicas += 1;
            }
            if rev == update {
                status.updated_replicas += 1;
            }
        }
        if (start..end).contains(&ordinal) {
            in_range.push((ordinal, pod));
        } else {
            condemned.push((ordinal, pod));
        }
    }
    in_range.sort_by_key(|(o, _)| *o);
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

    // Scale up and replace: ordinals in order.
    let mut waiting = false;
    for ordinal in start..end {
        let pod = in_range.iter().find(|(o, _)| *o == ordinal).map(|(_, p)| p);
        match pod {
            None => {
                plan.create.push(ordinal);
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) if !is_terminating(pod) && matches!(phase(pod), "Failed" | "Succeeded") => {
                plan.delete.push(pod.name().to_string());
                if !parallel {
                    waiting = true;
                    break;
                }
            }
            Some(pod) if !healthy(pod, min_ready) && !parallel => {
                waiting = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Scale down: the highest surplus ordinal first.
    if !waiting || parallel {
        for (_, pod) in &condemned {
            if is_terminating(pod) {
                if parallel {
                    continue;
                }
                waiting = true;
                break;
            }
            plan.delete.push(pod.name().to_string());
            if !parallel {
                waiting = true;
                break;
            }
        }
    }
    // Claims of ordinals that are gone.
    let shrink_deletes = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .is_some_and(|p| p.when_scaled == "Delete");
    if shrink_deletes {
        plan.release_claims = gone_ordinals
            .iter()
            .copied()
            .filter(|o| !(start..end).contains(o))
            .filter(|o| !condemned.iter().any(|(c, _)| c == o))
            .collect();
    }
    // Rolling update: the highest old ordinal at or above the partition.
    let rolling = spec
        .update_strategy
        .as_ref()
        .is_none_or(|s| s.r#type != "OnDelete");
    if rolling && !waiting && plan.create.is_empty() && plan.delete.is_empty() {
        // Kubernetes' walk: from the top down to the partition (counted
        // from the first ordinal), the first old pod goes; a pod passed on
        // the way that is not available holds the update back.
        let floor = start + partition_of(set);
        for (ordinal, pod) in in_range.iter().rev() {
            if *ordinal < floor {
                break;
            }
            if revision(pod) != update && !is_terminating(pod) {
                plan.delete.push(pod.name().to_string());
                break;
            }
            if !healthy(pod, min_ready) {
                break;
            }
        }
    }
    // The update is complete once every ordinal runs it and is Ready.
    if status.updated_replicas == replicas
        && status.ready_replicas == replicas
        && in_range.len() == usize::try_from(replicas).unwrap_or(0)
        && condemned.is_empty()
    {
        status.current_revision = update.to_string();
        status.current_replicas = status.updated_replicas;
    }
    plan.status = status;
    plan
}
