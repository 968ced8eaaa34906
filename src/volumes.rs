//! Persistent volumes and claims as the binder, the scheduler and the agent
//! all judge them: which volume suits a claim (Kubernetes'
//! `FindMatchingVolume`: class, access modes, the smallest sufficient
//! capacity, selector, a volume reserved for the claim first), which
//! nodes may use a volume, and where it is on its node.

use crate::Resource as _;
use crate::pb::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use crate::quantity::Quantity;
use crate::selector::LabelSelector;

/// The `storage` quantity of a capacity or request map.
fn storage(map: &std::collections::BTreeMap<String, String>) -> Option<Quantity> {
    map.get("storage").and_then(|q| q.parse().ok())
}

/// What a claim asks for (None: nothing readable; validation requires it).
pub fn requested(pvc: &PersistentVolumeClaim) -> Option<Quantity> {
    storage(&pvc.spec.as_ref()?.resources.as_ref()?.requests)
}

/// What a volume holds.
pub fn capacity(pv: &PersistentVolume) -> Option<Quantity> {
    storage(&pv.spec.as_ref()?.capacity)
}

/// The class a claim asks for ("" for none).
pub fn claim_class(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or("")
}

/// The class of a volume ("" for none).
pub fn volume_class(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .map_or("", |s| s.storage_class_name.as_str())
}

/// The volume a claim is bound to, or asks for ("" for none).
pub fn claim_volume(pvc: &PersistentVolumeClaim) -> &str {
    pvc.spec.as_ref().map_or("", |s| s.volume_name.as_str())
}

/// Whether the volume's claimRef names this claim (its uid too, once
/// the reference carries one).
pub fn reserved_for(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(claim) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    let meta = pvc.metadata.as_ref();
    claim.name == pvc.name()
        && claim.namespace == pvc.namespace()
        && (claim.uid.is_empty() || meta.is_some_and(|m| m.uid == claim.uid))
}

/// Whether every access mode the claim asks for is one the volume offers.
pub fn modes_cover(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let offered = pv.spec.as_ref().map(|s| &s.access_modes);
    pvc.spec
        .as_ref()
        .map_or(&[][..], |s| &s.access_modes[..])
        .iter()
        .all(|m| offered.is_some_and(|o| o.contains(m)))
}

/// Whether pods on `node` may use the volume (its node affinity; none:
/// every node).
pub fn node_allows(pv: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    required
        .node_selector_terms
        .iter()
        .any(|term| crate::nodes::term_matches(term, node))
}

/// The one node a volume's affinity names by hostname
/// (`kubernetes.io/hostname In [NODE]`), as the local provisioner writes
/// it; None for any other affinity.
pub fn pinned_node(pv: &PersistentVolume) -> Option<&str> {
    let required = pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    let [term] = &required.node_selector_terms[..] else {
        return None;
    };
    let [r] = &term.match_expressions[..] else {
        return None;
    };
    if !term.match_fields.is_empty() || r.key != crate::names::HOSTNAME_LABEL || r.operator != "In"
    {
        return None;
    }
    match &r.values[..] {
        [node] => Some(node.as_str()),
        _ => None,
    }
}

/// The directory on the node a volume is (hostPath or local).
pub fn path(pv: &PersistentVolume) -> Option<&str> {
    let spec = pv.spec.as_ref()?;
    spec.host_path
        .as_ref()
        .map(|h| h.path.as_str())
        .or_else(|| spec.local.as_ref().map(|l| l.path.as_str()))
}

fn deleting<K: crate::Resource>(obj: &K) -> bool {
    obj.metadata()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

/// The volume that suits the claim best, of `volumes`: one reserved for it
/// (its claimRef names the claim) if that fits; else, of the free volumes
/// of its class whose labels match its selector and that offer its
/// access modes, the smallest that is large enough. `node`, when the
/// claim waits for its first pod, is where that pod goes: only volumes
/// usable there count, and a volume is bound only then.
pub fn best_match<'a>(
    pvc: &PersistentVolumeClaim,
    volumes: impl IntoIterator<Item = &'a PersistentVolume>,
    node: Option<&Node>,
    wait_for_consumer: bool,
) -> Option<&'a PersistentVolume> {
    let wanted = requested(pvc)?;
    let selector = match pvc.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(s) => Some(LabelSelector::try_from(s).ok()?),
        None => None,
    };
    let class = claim_class(pvc);
    let mut best: Option<(&PersistentVolume, Quantity)> = None;
    for pv in volumes {
        let Some(size) = capacity(pv) else { continue };
        if deleting(pv) || size < wanted {
            continue;
        }
        let mode = |m: Option<&String>| m.map_or("Filesystem", |m| m.as_str()).to_string();
        let pv_mode = mode(pv.spec.as_ref().and_then(|s| s.volume_mode.as_ref()));
        let pvc_mode = mode(pvc.spec.as_ref().and_then(|s| s.volume_mode.as_ref()));
        if pv_mode != pvc_mode {
            continue;
        }
        let usable_here = node.is_none_or(|n| node_allows(pv, n));
        if reserved_for(pv, pvc) {
            return usable_here.then_some(pv);
        }
        if node.is_none() && wait_for_consumer {
            continue;
        }
        let free = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
        let selected = selector.as_ref().is_none_or(|s| s.matches(pv.labels()));
        if !free || !selected || volume_class(pv) != class || !usable_here || !modes_cover(pv, pvc)
        {
            continue;
        }
        if best.as_ref().is_none_or(|(_, smallest)| size < *smallest) {
            best = Some((pv, size));
        }
    }
    best.map(|(pv, _)| pv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::core::v1::{
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
        PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeNodeAffinity,
        VolumeResourceRequirements,
    };
    use crate::pb::meta::v1::ObjectMeta;

    fn pv(name: &str, size: &str, class: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeSpec {
                capacity: [("storage".to_string(), size.to_string())].into(),
                access_modes: vec!["ReadWriteOnce".into()],
                storage_class_name: class.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pvc(size: &str, class: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: Some(ObjectMeta {
                name: "data".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                ..Default::default()
            }),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: vec!["ReadWriteOnce".into()],
                resources: Some(VolumeResourceRequirements {
                    requests: [("storage".to_string(), size.to_string())].into(),
                    ..Default::default()
                }),
                storage_class_name: class.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(name: &str) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: [(crate::names::HOSTNAME_LABEL.to_string(), name.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pinned(mut pv: PersistentVolume, node: &str) -> PersistentVolume {
        pv.spec.as_mut().unwrap().node_affinity = Some(VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: vec![NodeSelectorRequirement {
                        key: crate::names::HOSTNAME_LABEL.into(),
                        operator: "In".into(),
                        values: vec![node.into()],
                    }],
                    ..Default::default()
                }],
            }),
        });
        pv
    }

    fn name(pv: Option<&PersistentVolume>) -> Option<&str> {
        pv.map(|p| p.name())
    }

    #[test]
    fn the_smallest_sufficient_volume_of_the_class_wins() {
        let volumes = [
            pv("big", "10Gi", "slow"),
            pv("small", "1Gi", "slow"),
            pv("fits", "2Gi", "slow"),
            pv("other-class", "2Gi", "fast"),
        ];
        let claim = pvc("1500Mi", Some("slow"));
        assert_eq!(
            name(best_match(&claim, &volumes, None, false)),
            Some("fits")
        );
        // No class asked: only volumes without one.
        assert_eq!(
            name(best_match(&pvc("1Gi", Some("")), &volumes, None, false)),
            None
        );
        // Too big for all.
        assert_eq!(
            name(best_match(
                &pvc("20Gi", Some("slow")),
                &volumes,
                None,
                false
            )),
            None
        );
    }

    #[test]
    fn a_volume_reserved_for_the_claim_comes_first_and_others_are_not_taken() {
        let mut reserved = pv("reserved", "5Gi", "slow");
        reserved.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: "data".into(),
            namespace: "default".into(),
            ..Default::default()
        });
        let mut taken = pv("taken", "1Gi", "slow");
        taken.spec.as_mut().unwrap().claim_ref = Some(ObjectReference {
            name: "other".into(),
            namespace: "default".into(),
            ..Default::default()
        });
        let volumes = [pv("free", "2Gi", "slow"), taken, reserved];
        let claim = pvc("1Gi", Some("slow"));
        assert_eq!(
            name(best_match(&claim, &volumes, None, false)),
            Some("reserved")
        );
        assert_eq!(
            name(best_match(&claim, &volumes[..2], None, false)),
            Some("free")
        );
    }

    #[test]
    fn selectors_and_access_modes_narrow_the_choice() {
        let mut labelled = pv("labelled", "5Gi", "");
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("tier".into(), "db".into());
        let mut many = pv("many", "1Gi", "");
        many.spec.as_mut().unwrap().access_modes = vec!["ReadWriteMany".into()];
        let volumes = [pv("plain", "1Gi", ""), labelled, many];
        let mut claim = pvc("1Gi", Some(""));
        claim.spec.as_mut().unwrap().selector = Some(crate::pb::meta::v1::LabelSelector {
            match_labels: [("tier".to_string(), "db".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(
            name(best_match(&claim, &volumes, None, false)),
            Some("labelled")
        );
        let mut shared = pvc("1Gi", Some(""));
        shared.spec.as_mut().unwrap().access_modes = vec!["ReadWriteMany".into()];
        assert_eq!(
            name(best_match(&shared, &volumes, None, false)),
            Some("many")
        );
    }

    #[test]
    fn a_waiting_claim_binds_only_where_its_pod_goes() {
        let volumes = [pinned(pv("on-a", "1Gi", "local"), "a")];
        let claim = pvc("1Gi", Some("local"));
        assert_eq!(name(best_match(&claim, &volumes, None, true)), None);
        assert_eq!(
            name(best_match(&claim, &volumes, Some(&node("b")), true)),
            None
        );
        assert_eq!(
            name(best_match(&claim, &volumes, Some(&node("a")), true)),
            Some("on-a")
        );
        assert_eq!(pinned_node(&volumes[0]), Some("a"));
        assert!(node_allows(&volumes[0], &node("a")));
        assert!(!node_allows(&volumes[0], &node("b")));
    }
}
