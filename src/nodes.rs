//! Which nodes a pod may run on, as the scheduler and the DaemonSet
//! controller both judge it: `spec.nodeSelector` and required node
//! affinity against the node's labels (and `metadata.name` through
//! `matchFields`), and the node's NoSchedule/NoExecute taints against the
//! pod's tolerations.

use crate::Resource as _;
use crate::pb::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};

/// Whether one requirement holds for the node (`match_fields` may only
/// name `metadata.name`).
fn requirement_matches(r: &NodeSelectorRequirement, node: &Node, field: bool) -> bool {
    let value = if field {
        (r.key == "metadata.name")
            .then(|| node.metadata.as_ref().map(|m| m.name.clone()))
            .flatten()
    } else {
        node.metadata
            .as_ref()
            .and_then(|m| m.labels.get(&r.key).cloned())
    };
    let as_int = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| r.values.contains(&v)),
        "NotIn" => value.is_none_or(|v| !r.values.contains(&v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.as_deref().and_then(as_int),
                r.values.first().and_then(|b| as_int(b)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// Whether a node selector term matches the node: all its requirements
/// hold (an empty term matches nothing, as in Kubernetes).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    if term.match_expressions.is_empty() && term.match_fields.is_empty() {
        return false;
    }
    term.match_expressions
        .iter()
        .all(|r| requirement_matches(r, node, false))
        && term
            .match_fields
            .iter()
            .all(|r| requirement_matches(r, node, true))
}

/// Whether the pod's `nodeSelector` and required node affinity (its terms
/// ORed) accept the node.
pub fn affinity_allows(pod: &Pod, node: &Node) -> bool {
    let Some(spec) = &pod.spec else { return true };
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|sel| {
            sel.node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    selector_ok && required_ok
}

/// Whether `t` tolerates `taint`, with Kubernetes' rules: an empty key
/// with Exists tolerates everything; an empty effect matches all effects.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if !t.effect.is_empty() && t.effect != taint.effect {
        return false;
    }
    match t.operator.as_str() {
        "Exists" => t.key.is_empty() || t.key == taint.key,
        "" | "Equal" => t.key == taint.key && t.value == taint.value,
        _ => false,
    }
}

/// The node's first NoSchedule or NoExecute taint the pod does not
/// tolerate, if any.
pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .map_or(&[][..], |s| s.tolerations.as_slice());
    node.spec.as_ref().and_then(|s| {
        s.taints.iter().find(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !tolerations.iter().any(|t| tolerates(t, taint))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::meta::v1::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn match_fields_name_the_node_and_and_with_expressions() {
        let by_name = NodeSelectorTerm {
            match_fields: vec![requirement("metadata.name", "In", &["n1"])],
            ..Default::default()
        };
        assert!(term_matches(&by_name, &node("n1", &[])));
        assert!(!term_matches(&by_name, &node("n2", &[])));
        // Only metadata.name is a field: a label key there matches nothing.
        let label_as_field = NodeSelectorTerm {
            match_fields: vec![requirement("zone", "In", &["a"])],
            ..Default::default()
        };
        assert!(!term_matches(
            &label_as_field,
            &node("n1", &[("zone", "a")])
        ));
        let both = NodeSelectorTerm {
            match_expressions: vec![requirement("zone", "In", &["a"])],
            match_fields: vec![requirement("metadata.name", "NotIn", &["n2"])],
        };
        assert!(term_matches(&both, &node("n1", &[("zone", "a")])));
        assert!(!term_matches(&both, &node("n2", &[("zone", "a")])));
        assert!(!term_matches(&both, &node("n1", &[("zone", "b")])));
        assert!(!term_matches(
            &NodeSelectorTerm::default(),
            &node("n1", &[])
        ));
    }
}
