//! InterPodAffinity, as Kubernetes': a pod's required affinity needs a
//! matching pod in the node's topology domain (the node's value of the
//! term's `topologyKey`), its required anti-affinity needs none there, and
//! no existing pod's required anti-affinity may match it there (Filter);
//! preferred terms of the pod, and of the pods already placed, add or
//! take their weights per domain (Score).
//!
//! A term looks in `namespaces`, or with an empty `namespaceSelector` in
//! every namespace, else in its own pod's; `matchLabelKeys` and
//! `mismatchLabelKeys` add `In`/`NotIn` requirements with the pod's own
//! label values. A term without a `labelSelector` matches no pod.
//! Namespace selectors with labels are refused by the API.

use skiff::Resource as _;
use std::collections::{HashMap, HashSet};

use skiff::pb::core::v1::{Pod, PodAffinityTerm};
use skiff::selector::LabelSelector;

use crate::framework::{
    FilterPlugin, MAX_SCORE, NodeInfo, Prepared, Reason, ScorePlugin, has_pod_affinity,
};

/// The plugin's name (Filter and Score).
pub const NAME: &str = "InterPodAffinity";

/// Kubernetes' reasons.
const AFFINITY: &str = "node(s) didn't match pod affinity rules";
const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// The weight an existing pod's *required* affinity to the incoming pod
/// adds (Kubernetes' `hardPodAffinityWeight` default).
const HARD_AFFINITY_WEIGHT: i64 = 1;

/// See the module doc.
pub struct InterPodAffinity;

/// A term, resolved against the pod that carries it.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    /// Namespaces it looks in; `None`: all.
    namespaces: Option<HashSet<String>>,
    /// Pods it matches; `None`: none.
    selector: Option<LabelSelector>,
    /// The node label defining a domain.
    pub(crate) key: String,
}

impl Term {
    pub(crate) fn of(term: &PodAffinityTerm, owner: &Pod) -> Self {
        let namespaces = if term.namespace_selector.is_some() {
            // An empty namespace selector: every namespace, whatever
            // `namespaces` lists (the API refuses selectors with labels).
            None
        } else if !term.namespaces.is_empty() {
            Some(term.namespaces.iter().cloned().collect())
        } else {
            Some(HashSet::from([owner.namespace().to_string()]))
        };
        Self {
            namespaces,
            selector: selector_with_keys(
                term.label_selector.as_ref(),
                &term.match_label_keys,
                &term.mismatch_label_keys,
                owner,
            ),
            key: term.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods the term selects.
    pub(crate) fn matches(&self, pod: &Pod) -> bool {
        let in_namespace = self
            .namespaces
            .as_ref()
            .is_none_or(|ns| ns.contains(pod.namespace()));
        in_namespace
            && pod
                .metadata
                .as_ref()
                .is_some_and(|m| self.selector.as_ref().is_some_and(|s| s.matches(&m.labels)))
    }
}

/// A label selector with `matchLabelKeys` (`In` the owner's value) and
/// `mismatchLabelKeys` (`NotIn`) added; `None` (matches nothing) for no
/// selector, as Kubernetes reads a nil one.
pub(crate) fn selector_with_keys(
    selector: Option<&skiff::pb::meta::v1::LabelSelector>,
    match_keys: &[String],
    mismatch_keys: &[String],
    owner: &Pod,
) -> Option<LabelSelector> {
    let selector = selector?;
    let own = owner.labels().clone();
    let mut expressions: Vec<(String, String, Vec<String>)> = selector
        .match_expressions
        .iter()
        .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone()))
        .collect();
    for (keys, operator) in [(match_keys, "In"), (mismatch_keys, "NotIn")] {
        for key in keys {
            if let Some(value) = own.get(key) {
                expressions.push((key.clone(), operator.to_string(), vec![value.clone()]));
            }
        }
    }
    LabelSelector::from_parts(&selector.match_labels, &expressions).ok()
}

fn required(pod: &Pod) -> (Vec<Term>, Vec<Term>) {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_deref()) else {
        return (Vec::new(), Vec::new());
    };
    let terms = |list: &[PodAffinityTerm]| list.iter().map(|t| Term::of(t, pod)).collect();
    (
        affinity.pod_affinity.as_ref().map_or_else(Vec::new, |a| {
            terms(&a.required_during_scheduling_ignored_during_execution)
        }),
        affinity
            .pod_anti_affinity
            .as_ref()
            .map_or_else(Vec::new, |a| {
                terms(&a.required_during_scheduling_ignored_during_execution)
            }),
    )
}

/// Weighted preferred terms: affinity positive, anti-affinity negative.
fn preferred(pod: &Pod) -> Vec<(i64, Term)> {
    let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_deref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (sign, list) in [
        (
            1,
            affinity
                .pod_affinity
                .as_ref()
                .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
        ),
        (
            -1,
            affinity
                .pod_anti_affinity
                .as_ref()
                .map(|a| &a.preferred_during_scheduling_ignored_during_execution),
        ),
    ] {
        for w in list.into_iter().flatten() {
            if let Some(term) = &w.pod_affinity_term {
                out.push((sign * i64::from(w.weight), Term::of(term, pod)));
            }
        }
    }
    out
}

/// What the filter needs, from every node, for one pod.
struct State {
    /// Domains (key, value) where an existing pod's required
    /// anti-affinity matches the incoming pod.
    forbidden: HashSet<(String, String)>,
    /// The pod's required affinity terms.
    affinity: Vec<Term>,
    /// Domains (key, value) holding a pod that matches *all* of them
    /// (Kubernetes counts such pods only).
    affinity_domains: HashSet<(String, String)>,
    /// No existing pod matches them all, and the pod itself does: the
    /// first of its group may go wherever the topology keys exist.
    first_of_group: bool,
    /// The pod's required anti-affinity terms and the domain values
    /// holding a pod they match.
    anti_affinity: Vec<(Term, HashSet<String>)>,
}

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Everything is decided in [`Self::filter_prepared`].
    fn filter(&self, _pod: &Pod, _node: &NodeInfo) -> Result<(), Reason> {
        Ok(())
    }

    fn pre_filter(&self, pod: &Pod, all: &[&NodeInfo]) -> Option<Prepared> {
        let (affinity, anti_affinity) = required(pod);
        let own_terms = !affinity.is_empty() || !anti_affinity.is_empty();
        let others_have = all.iter().any(|n| n.with_required_anti > 0);
        if !own_terms && !others_have {
            return None;
        }
        let mut state = State {
            forbidden: HashSet::new(),
            affinity,
            affinity_domains: HashSet::new(),
            first_of_group: false,
            anti_affinity: anti_affinity
                .into_iter()
                .map(|t| (t, HashSet::new()))
                .collect(),
        };
        for node in all {
            // Without terms of its own, only the pods with required
            // anti-affinity matter.
            if !own_terms && node.with_required_anti == 0 {
                continue;
            }
            for existing in &node.pods {
                if node.with_required_anti > 0 {
                    for term in required(existing).1 {
                        if term.matches(pod)
                            && let Some(value) = node.label(&term.key)
                        {
                            state
                                .forbidden
                                .insert((term.key.clone(), value.to_string()));
                        }
                    }
                }
                if !state.affinity.is_empty() && state.affinity.iter().all(|t| t.matches(existing))
                {
                    for term in &state.affinity {
                        if let Some(value) = node.label(&term.key) {
                            state
                                .affinity_domains
                                .insert((term.key.clone(), value.to_string()));
                        }
                    }
                }
                for (term, domains) in &mut state.anti_affinity {
                    if term.matches(existing)
                        && let Some(value) = node.label(&term.key)
                    {
                        domains.insert(value.to_string());
                    }
                }
            }
        }
        state.first_of_group =
            state.affinity_domains.is_empty() && state.affinity.iter().all(|t| t.matches(pod));
        Some(Box::new(state))
    }

    fn filter_prepared(
        &self,
        _pod: &Pod,
        node: &NodeInfo,
        prepared: &Prepared,
    ) -> Result<(), Reason> {
        let Some(state) = prepared.downcast_ref::<State>() else {
            return Ok(());
        };
        let mut pods_exist = true;
        for term in &state.affinity {
            let Some(value) = node.label(&term.key) else {
                // Every topology key must exist on the node.
                return Err(AFFINITY.into());
            };
            pods_exist &= state
                .affinity_domains
                .contains(&(term.key.clone(), value.to_string()));
        }
        if !pods_exist && !state.first_of_group {
            return Err(AFFINITY.into());
        }
        for (term, domains) in &state.anti_affinity {
            if node.label(&term.key).is_some_and(|v| domains.contains(v)) {
                return Err(ANTI_AFFINITY.into());
            }
        }
        let forbidden = !state.forbidden.is_empty()
            && node.node.metadata.as_ref().is_some_and(|m| {
                m.labels
                    .iter()
                    .any(|(k, v)| state.forbidden.contains(&(k.clone(), v.clone())))
            });
        if forbidden {
            return Err(EXISTING_ANTI_AFFINITY.into());
        }
        Ok(())
    }
}

/// The preferred-term score plugin's name in profiles.
pub const PREFERRED: &str = "InterPodAffinityPreferred";

/// Score: see the module doc.
pub struct PreferredInterPodAffinity;

impl ScorePlugin for PreferredInterPodAffinity {
    fn name(&self) -> &'static str {
        PREFERRED
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        self.score_among(pod, nodes, nodes)
    }

    fn score_among(&self, pod: &Pod, nodes: &[&NodeInfo], all: &[&NodeInfo]) -> Vec<i64> {
        let own = preferred(pod);
        let others_have = all.iter().any(|n| n.with_affinity > 0);
        if own.is_empty() && !others_have {
            return vec![0; nodes.len()];
        }
        // Weight per domain (key, value).
        let mut domains: HashMap<(String, String), i64> = HashMap::new();
        let mut add = |node: &NodeInfo, key: &str, weight: i64| {
            if let Some(value) = node.label(key) {
                *domains
                    .entry((key.to_string(), value.to_string()))
                    .or_default() += weight;
            }
        };
        for node in all {
            if own.is_empty() && node.with_affinity == 0 {
                continue;
            }
            for existing in &node.pods {
                for (weight, term) in &own {
                    if term.matches(existing) {
                        add(node, &term.key, *weight);
                    }
                }
                if node.with_affinity == 0 || !has_pod_affinity(existing) {
                    continue;
                }
                // The placed pods' own wishes about the incoming one.
                for (weight, term) in preferred(existing) {
                    if term.matches(pod) {
                        add(node, &term.key, weight);
                    }
                }
                for term in required(existing).0 {
                    if term.matches(pod) {
                        add(node, &term.key, HARD_AFFINITY_WEIGHT);
                    }
                }
            }
        }
        let raw: Vec<i64> = nodes
            .iter()
            .map(|n| {
                n.node.metadata.as_ref().map_or(0, |m| {
                    m.labels
                        .iter()
                        .filter_map(|(k, v)| domains.get(&(k.clone(), v.clone())))
                        .sum()
                })
            })
            .collect();
        let (min, max) = (
            raw.iter().copied().min().unwrap_or(0),
            raw.iter().copied().max().unwrap_or(0),
        );
        if max == min {
            return vec![0; nodes.len()];
        }
        raw.iter()
            .map(|s| (s - min) * MAX_SCORE / (max - min))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{info, node, pod};
    use skiff::pb::core::v1::{Affinity, PodAntiAffinity, WeightedPodAffinityTerm};

    fn labelled(mut p: Pod, key: &str, value: &str) -> Pod {
        p.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert(key.into(), value.into());
        p
    }

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        let mut n = node(name, "4", "8Gi");
        let labels = &mut n.metadata.as_mut().unwrap().labels;
        labels.insert(skiff::names::HOSTNAME_LABEL.into(), name.into());
        labels.insert("topology.kubernetes.io/zone".into(), zone.into());
        info(n)
    }

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(skiff::pb::meta::v1::LabelSelector {
                match_labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            }),
            topology_key: key.into(),
            ..Default::default()
        }
    }

    fn with_affinity(mut p: Pod, affinity: Affinity) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Box::new(affinity));
        p
    }

    fn filter(p: &Pod, nodes: &[NodeInfo]) -> Vec<Result<(), Reason>> {
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        let state = InterPodAffinity.pre_filter(p, &all);
        nodes
            .iter()
            .map(|n| match &state {
                Some(s) => InterPodAffinity.filter_prepared(p, n, s),
                None => Ok(()),
            })
            .collect()
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart_and_affinity_together() {
        let anti = |name: &str| {
            with_affinity(
                labelled(pod(name, "", ""), "app", "web"),
                Affinity {
                    pod_anti_affinity: Some(PodAntiAffinity {
                        required_during_scheduling_ignored_during_execution: vec![term(
                            "web",
                            skiff::names::HOSTNAME_LABEL,
                        )],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        let mut nodes = vec![zoned("a", "z1"), zoned("b", "z1"), zoned("c", "z2")];
        nodes[0].add_pod(Arc::new(anti("web-1")));
        let results = filter(&anti("web-2"), &nodes);
        assert_eq!(results[0], Err(ANTI_AFFINITY.to_string()));
        assert!(results[1].is_ok() && results[2].is_ok());

        // A pod without terms is kept off a node whose pod's anti-affinity
        // matches it.
        let plain = labelled(pod("web-3", "", ""), "app", "web");
        assert_eq!(
            filter(&plain, &nodes)[0],
            Err(EXISTING_ANTI_AFFINITY.to_string())
        );

        // Affinity to the zone of a cache pod; the first of a group that
        // matches its own term goes anywhere.
        let near_cache = with_affinity(
            labelled(pod("api", "", ""), "app", "api"),
            Affinity {
                pod_affinity: Some(skiff::pb::core::v1::PodAffinity {
                    required_during_scheduling_ignored_during_execution: vec![term(
                        "cache",
                        "topology.kubernetes.io/zone",
                    )],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let results = filter(&near_cache, &nodes);
        assert!(results.iter().all(|r| r == &Err(AFFINITY.to_string())));
        nodes[2].add_pod(Arc::new(labelled(pod("cache-1", "", ""), "app", "cache")));
        let results = filter(&near_cache, &nodes);
        assert_eq!(
            results,
            vec![Err(AFFINITY.into()), Err(AFFINITY.into()), Ok(())]
        );
        let self_group = with_affinity(
            labelled(pod("cache-0", "", ""), "app", "solo"),
            Affinity {
                pod_affinity: Some(skiff::pb::core::v1::PodAffinity {
                    required_during_scheduling_ignored_during_execution: vec![term(
                        "solo",
                        "topology.kubernetes.io/zone",
                    )],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert!(filter(&self_group, &nodes).iter().all(Result::is_ok));
    }

    #[test]
    fn match_label_keys_and_namespaces_narrow_a_term() {
        let owner = labelled(labelled(pod("p", "", ""), "app", "web"), "rev", "2");
        let mut t = term("web", "zone");
        t.match_label_keys = vec!["rev".into()];
        let resolved = Term::of(&t, &owner);
        let old = labelled(labelled(pod("o", "", ""), "app", "web"), "rev", "1");
        let same = labelled(labelled(pod("s", "", ""), "app", "web"), "rev", "2");
        assert!(!resolved.matches(&old));
        assert!(resolved.matches(&same));
        let mut elsewhere = same.clone();
        elsewhere.metadata.as_mut().unwrap().namespace = "other".into();
        assert!(!resolved.matches(&elsewhere), "its own namespace only");
        let no_selector = PodAffinityTerm {
            topology_key: "zone".into(),
            ..Default::default()
        };
        assert!(!Term::of(&no_selector, &owner).matches(&same));
    }

    #[test]
    fn preferred_terms_pull_toward_and_push_from_domains() {
        let mut nodes = [zoned("a", "z1"), zoned("b", "z2")];
        nodes[1].add_pod(Arc::new(labelled(pod("db", "", ""), "app", "db")));
        let near = with_affinity(
            pod("app", "", ""),
            Affinity {
                pod_affinity: Some(skiff::pb::core::v1::PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: vec![
                        WeightedPodAffinityTerm {
                            weight: 50,
                            pod_affinity_term: Some(term("db", "topology.kubernetes.io/zone")),
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        assert_eq!(
            PreferredInterPodAffinity.score_among(&near, &all, &all),
            vec![0, MAX_SCORE]
        );
        let away = with_affinity(
            pod("app", "", ""),
            Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: vec![
                        WeightedPodAffinityTerm {
                            weight: 50,
                            pod_affinity_term: Some(term("db", "topology.kubernetes.io/zone")),
                        },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        assert_eq!(
            PreferredInterPodAffinity.score_among(&away, &all, &all),
            vec![MAX_SCORE, 0]
        );
    }
}
