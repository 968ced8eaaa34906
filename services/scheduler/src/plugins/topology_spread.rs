//! PodTopologySpread, as Kubernetes': a pod's `topologySpreadConstraints`
//! count the pods their selector matches (in the pod's namespace, not
//! being deleted) per domain — the values of `topologyKey` on the
//! eligible nodes — and `DoNotSchedule` refuses a node where placing the
//! pod would leave its domain more than `maxSkew` above the emptiest
//! (Filter); `ScheduleAnyway` prefers nodes in the emptiest domains
//! (Score).
//!
//! Eligible nodes carry every constraint's key and, with
//! `nodeAffinityPolicy: Honor` (the default), match the pod's node
//! selector and required node affinity; with `nodeTaintsPolicy: Honor`,
//! have no taint it does not tolerate. With fewer domains than
//! `minDomains`, the emptiest counts as 0. Skiff applies no cluster-wide
//! default constraints: pods without any are spread by OwnerSpread.

use skiff::Resource as _;
use std::collections::{BTreeMap, HashMap};

use skiff::pb::core::v1::{Pod, TopologySpreadConstraint};
use skiff::selector::LabelSelector;

use crate::framework::{FilterPlugin, MAX_SCORE, NodeInfo, Prepared, Reason, ScorePlugin};
use crate::plugins::inter_pod_affinity::selector_with_keys;

/// The plugin's name (Filter and Score).
pub const NAME: &str = "PodTopologySpread";
/// The score plugin's name in profiles.
pub const SCORE: &str = "PodTopologySpreadScore";

/// Kubernetes' reasons.
const SKEW: &str = "node(s) didn't match pod topology spread constraints";
const MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// See the module doc.
pub struct PodTopologySpread;

/// One constraint with its counts.
struct Counted {
    key: String,
    max_skew: i64,
    /// Pods matching, per domain value of the eligible nodes.
    counts: HashMap<String, i64>,
    /// The emptiest domain's count (0 with fewer than minDomains).
    min: i64,
    /// The incoming pod matches its own selector.
    self_match: i64,
}

fn constraints<'a>(
    pod: &'a Pod,
    hard: bool,
) -> impl Iterator<Item = &'a TopologySpreadConstraint> + 'a {
    pod.spec
        .as_ref()
        .map_or(&[][..], |s| s.topology_spread_constraints.as_slice())
        .iter()
        .filter(move |c| (c.when_unsatisfiable == "DoNotSchedule") == hard)
}

/// Whether `node` counts for constraint `c` of `pod` (see the module
/// doc): it carries every constraint's key, and passes `c`'s own node
/// affinity and taint policies.
fn eligible(
    pod: &Pod,
    node: &NodeInfo,
    c: &TopologySpreadConstraint,
    all: &[&TopologySpreadConstraint],
) -> bool {
    if all.iter().any(|c| node.label(&c.topology_key).is_none()) {
        return false;
    }
    let honor_affinity = c.node_affinity_policy.as_deref().unwrap_or("Honor") == "Honor";
    if honor_affinity && !skiff::nodes::affinity_allows(pod, &node.node) {
        return false;
    }
    let honor_taints = c.node_taints_policy.as_deref() == Some("Honor");
    !(honor_taints && skiff::nodes::untolerated_taint(pod, &node.node).is_some())
}

/// Counts the pods each constraint selects, per domain.
fn count(pod: &Pod, hard: bool, all: &[&NodeInfo]) -> Vec<Counted> {
    let chosen: Vec<&TopologySpreadConstraint> = constraints(pod, hard).collect();
    if chosen.is_empty() {
        return Vec::new();
    }
    let namespace = pod.namespace();
    let own_labels: BTreeMap<String, String> = pod
        .metadata
        .as_ref()
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    chosen
        .iter()
        .map(|c| {
            // An empty selector counts nothing (Kubernetes' rule for
            // spreading), as does none.
            let selector: Option<LabelSelector> =
                selector_with_keys(c.label_selector.as_ref(), &c.match_label_keys, &[], pod)
                    .filter(|s| !s.is_empty());
            let mut counts: HashMap<String, i64> = HashMap::new();
            for node in all.iter().filter(|n| eligible(pod, n, c, &chosen)) {
                let Some(value) = node.label(&c.topology_key) else {
                    continue;
                };
                let matching = node
                    .pods
                    .iter()
                    .filter(|p| {
                        p.metadata.as_ref().is_some_and(|m| {
                            m.namespace == namespace
                                && m.deletion_timestamp.is_none()
                                && selector.as_ref().is_some_and(|s| s.matches(&m.labels))
                        })
                    })
                    .count() as i64;
                *counts.entry(value.to_string()).or_default() += matching;
            }
            let mut min = counts.values().copied().min().unwrap_or(0);
            if c.min_domains
                .is_some_and(|m| (counts.len() as i64) < i64::from(m))
            {
                min = 0;
            }
            Counted {
                key: c.topology_key.clone(),
                max_skew: i64::from(c.max_skew.max(1)),
                counts,
                min,
                self_match: i64::from(selector.is_some_and(|s| s.matches(&own_labels))),
            }
        })
        .collect()
}

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Everything is decided in [`Self::filter_prepared`].
    fn filter(&self, _pod: &Pod, _node: &NodeInfo) -> Result<(), Reason> {
        Ok(())
    }

    fn pre_filter(&self, pod: &Pod, all: &[&NodeInfo]) -> Option<Prepared> {
        let counted = count(pod, true, all);
        (!counted.is_empty()).then(|| Box::new(counted) as Prepared)
    }

    fn filter_prepared(
        &self,
        _pod: &Pod,
        node: &NodeInfo,
        prepared: &Prepared,
    ) -> Result<(), Reason> {
        let Some(counted) = prepared.downcast_ref::<Vec<Counted>>() else {
            return Ok(());
        };
        for c in counted {
            let Some(value) = node.label(&c.key) else {
                return Err(MISSING_LABEL.into());
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min > c.max_skew {
                return Err(SKEW.into());
            }
        }
        Ok(())
    }
}

/// Score: see the module doc.
pub struct PodTopologySpreadScore;

impl ScorePlugin for PodTopologySpreadScore {
    fn name(&self) -> &'static str {
        SCORE
    }

    fn score(&self, pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
        self.score_among(pod, nodes, nodes)
    }

    fn score_among(&self, pod: &Pod, nodes: &[&NodeInfo], all: &[&NodeInfo]) -> Vec<i64> {
        let counted = count(pod, false, all);
        if counted.is_empty() {
            return vec![MAX_SCORE; nodes.len()];
        }
        // Matching pods in the node's domains, each constraint weighted by
        // how many domains it has (Kubernetes' log(domains + 2)); a node
        // without a key scores lowest.
        let raw: Vec<Option<f64>> = nodes
            .iter()
            .map(|n| {
                counted.iter().try_fold(0.0, |sum, c| {
                    let value = n.label(&c.key)?;
                    let weight = ((c.counts.len() + 2) as f64).ln();
                    Some(sum + c.counts.get(value).copied().unwrap_or(0) as f64 * weight)
                })
            })
            .collect();
        let present: Vec<f64> = raw.iter().flatten().copied().collect();
        let (Some(min), Some(max)) = (
            present.iter().copied().reduce(f64::min),
            present.iter().copied().reduce(f64::max),
        ) else {
            return vec![0; nodes.len()];
        };
        raw.iter()
            .map(|r| match r {
                None => 0,
                Some(_) if max == min => MAX_SCORE,
                Some(s) => (((max - s) / (max - min)) * MAX_SCORE as f64).round() as i64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::testing::{info, node, pod};

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn zoned(name: &str, zone: &str) -> NodeInfo {
        let mut n = node(name, "4", "8Gi");
        let labels = &mut n.metadata.as_mut().unwrap().labels;
        labels.insert(skiff::names::HOSTNAME_LABEL.into(), name.into());
        if !zone.is_empty() {
            labels.insert(ZONE.into(), zone.into());
        }
        info(n)
    }

    fn web(name: &str) -> Pod {
        let mut p = pod(name, "", "");
        p.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("app".into(), "web".into());
        p
    }

    fn spread(mut p: Pod, when: &str, min_domains: Option<i32>) -> Pod {
        p.spec.as_mut().unwrap().topology_spread_constraints = vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: ZONE.into(),
            when_unsatisfiable: when.into(),
            label_selector: Some(skiff::pb::meta::v1::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            min_domains,
            ..Default::default()
        }];
        p
    }

    fn filter(p: &Pod, nodes: &[NodeInfo]) -> Vec<Result<(), Reason>> {
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        let state = PodTopologySpread.pre_filter(p, &all).expect("constraints");
        nodes
            .iter()
            .map(|n| PodTopologySpread.filter_prepared(p, n, &state))
            .collect()
    }

    #[test]
    fn max_skew_keeps_zones_within_one_pod_of_each_other() {
        let mut nodes = vec![
            zoned("a", "z1"),
            zoned("b", "z2"),
            zoned("c", "z3"),
            zoned("d", ""),
        ];
        nodes[0].add_pod(Arc::new(web("w1")));
        nodes[1].add_pod(Arc::new(web("w2")));
        let results = filter(&spread(web("w3"), "DoNotSchedule", None), &nodes);
        assert_eq!(results[0], Err(SKEW.to_string()));
        assert_eq!(results[1], Err(SKEW.to_string()));
        assert_eq!(results[2], Ok(()));
        assert_eq!(results[3], Err(MISSING_LABEL.to_string()));
        // With more domains asked for than exist, the emptiest counts as 0.
        nodes[2].add_pod(Arc::new(web("w3")));
        let results = filter(&spread(web("w4"), "DoNotSchedule", Some(4)), &nodes);
        assert!(results[..3].iter().all(|r| r == &Err(SKEW.to_string())));
        let results = filter(&spread(web("w4"), "DoNotSchedule", None), &nodes);
        assert!(results[..3].iter().all(Result::is_ok));
    }

    #[test]
    fn eligible_nodes_follow_the_policies_and_match_label_keys() {
        let mut tainted = zoned("a", "z1");
        let mut n = (*tainted.node).clone();
        n.spec.as_mut().unwrap().taints = vec![skiff::pb::core::v1::Taint {
            key: "dedicated".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }];
        tainted = info(n);
        let mut ssd = zoned("b", "z2");
        let mut n = (*ssd.node).clone();
        n.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("disk".into(), "ssd".into());
        ssd = info(n);
        let plain = zoned("c", "z3");
        let nodes = [tainted, ssd, plain];
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        let domains = |p: &Pod| {
            let mut d: Vec<String> = count(p, true, &all)[0].counts.keys().cloned().collect();
            d.sort();
            d
        };
        // Defaults: affinity honoured (none here), taints ignored.
        let p = spread(web("w"), "DoNotSchedule", None);
        assert_eq!(domains(&p), ["z1", "z2", "z3"]);
        let mut honour_taints = p.clone();
        honour_taints
            .spec
            .as_mut()
            .unwrap()
            .topology_spread_constraints[0]
            .node_taints_policy = Some("Honor".into());
        assert_eq!(domains(&honour_taints), ["z2", "z3"]);
        let mut ssd_only = p.clone();
        ssd_only
            .spec
            .as_mut()
            .unwrap()
            .node_selector
            .insert("disk".into(), "ssd".into());
        assert_eq!(domains(&ssd_only), ["z2"]);
        ssd_only.spec.as_mut().unwrap().topology_spread_constraints[0].node_affinity_policy =
            Some("Ignore".into());
        assert_eq!(domains(&ssd_only), ["z1", "z2", "z3"]);

        // matchLabelKeys: only pods of the same revision count.
        let mut nodes = nodes;
        let revision = |name: &str, rev: &str| {
            let mut p = web(name);
            p.metadata
                .as_mut()
                .unwrap()
                .labels
                .insert("rev".into(), rev.into());
            p
        };
        nodes[2].add_pod(Arc::new(revision("old", "1")));
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        let mut new = spread(revision("new", "2"), "DoNotSchedule", None);
        assert_eq!(count(&new, true, &all)[0].counts["z3"], 1);
        new.spec.as_mut().unwrap().topology_spread_constraints[0].match_label_keys =
            vec!["rev".into()];
        assert_eq!(count(&new, true, &all)[0].counts["z3"], 0);
    }

    #[test]
    fn schedule_anyway_prefers_the_emptiest_zone() {
        let mut nodes = [zoned("a", "z1"), zoned("b", "z2"), zoned("c", "z3")];
        nodes[0].add_pod(Arc::new(web("w1")));
        nodes[0].add_pod(Arc::new(web("w2")));
        nodes[1].add_pod(Arc::new(web("w3")));
        let all: Vec<&NodeInfo> = nodes.iter().collect();
        let scores = PodTopologySpreadScore.score_among(
            &spread(web("w4"), "ScheduleAnyway", None),
            &all,
            &all,
        );
        assert_eq!(scores, vec![0, 50, MAX_SCORE]);
        // No constraint: no preference.
        assert_eq!(
            PodTopologySpreadScore.score_among(&web("w4"), &all, &all),
            vec![MAX_SCORE; 3]
        );
    }
}
