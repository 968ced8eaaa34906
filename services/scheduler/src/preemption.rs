//! Preemption (Kubernetes' DefaultPreemption PostFilter): when a pod fits
//! no node, find the node where removing pods of lower priority makes it
//! fit, removing as few and as unimportant ones as possible.
//!
//! Per node: every lower-priority pod is taken off; if the pod still does
//! not fit, the node is no candidate (what blocks it is not pods: node
//! affinity, taints, cordons). Otherwise the pods are put back, most
//! important first — those whose eviction would break a
//! PodDisruptionBudget before the others — and each one that still lets
//! the pod fit stays (is reprieved); the rest are the victims. Of the
//! candidates, the one with the fewest budget violations wins, then the
//! lowest highest victim priority, the lowest sum of victim priorities,
//! the fewest victims, and the latest-started most important victim.

use skiff::Resource as _;
use std::cmp::Reverse;
use std::sync::Arc;

use skiff::pb::core::v1::Pod;
use skiff::pb::policy::v1::PodDisruptionBudget;

use crate::framework::NodeInfo;
use crate::profile::Profile;

/// A node where the pod fits once its victims are gone.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The pods to remove, most important first.
    pub victims: Vec<Arc<Pod>>,
    /// How many of them a disruption budget protects.
    pub violations: usize,
}

/// A pod's priority (its class's, resolved when it was created; 0
/// without one): the queue takes higher ones first (kube-scheduler's
/// PrioritySort), and only lower ones are preempted.
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether `pod` may remove others at all: its policy is not `Never`.
pub fn may_preempt(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        != Some("Never")
}

fn start_seconds(pod: &Pod) -> i64 {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(i64::MAX, |t| t.seconds)
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata
        .as_ref()
        .is_some_and(|m| m.deletion_timestamp.is_some())
}

/// Nodes examined at most per preemption, once this many candidates are
/// found (kube-scheduler's minimum of candidates to find).
const MIN_CANDIDATES: usize = 100;

/// What decides whether a pod fits a node: the profile's filters, and
/// any check outside them (the pod's volumes).
pub struct Fit<'a> {
    /// The filters.
    pub profile: &'a Profile,
    /// Whether the node passes the checks outside the profile.
    pub extra: &'a dyn Fn(&NodeInfo) -> bool,
}

impl Fit<'_> {
    /// Whether `pod` fits `node` when `node` stands in for its original
    /// in the cluster `all` (cluster-wide plugins see the change).
    fn fits(&self, pod: &Pod, node: &NodeInfo, all: &[&NodeInfo]) -> bool {
        if !(self.extra)(node) {
            return false;
        }
        let cluster: Vec<&NodeInfo> = all
            .iter()
            .map(|n| if n.name() == node.name() { node } else { *n })
            .collect();
        let prepared = self.profile.prepare(pod, &cluster);
        self.profile.filter_with(pod, node, &prepared).is_ok()
    }
}

/// Whether a DaemonSet runs `pod`: its controller binds its pods to their
/// nodes itself, past any nomination, so removing one makes no room.
fn daemon(pod: &Pod) -> bool {
    pod.controlled_by().is_some_and(|o| o.kind == "DaemonSet")
}

/// `info` with only `pods` on it.
fn with_pods(info: &NodeInfo, pods: impl IntoIterator<Item = Arc<Pod>>) -> NodeInfo {
    let mut rebuilt = NodeInfo::new(Arc::clone(&info.node));
    for pod in pods {
        rebuilt.add_pod(pod);
    }
    rebuilt
}

/// Splits `pods` (most important first) into those whose eviction would
/// break a budget and the others, spending each budget's allowed
/// disruptions in that order.
fn split_by_budgets(
    pods: Vec<Arc<Pod>>,
    budgets: &[Arc<PodDisruptionBudget>],
) -> (Vec<Arc<Pod>>, Vec<Arc<Pod>>) {
    let mut allowed: Vec<i32> = budgets
        .iter()
        .map(|b| b.status.as_ref().map_or(0, |s| s.disruptions_allowed))
        .collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for pod in pods {
        let mut violates = false;
        for (budget, left) in budgets.iter().zip(allowed.iter_mut()) {
            // An eviction already counted against the budget is not
            // counted twice.
            let counted = budget
                .status
                .as_ref()
                .is_some_and(|s| s.disrupted_pods.contains_key(pod.name()));
            if skiff::disruption::covers(budget, &pod) && !counted {
                *left -= 1;
                if *left < 0 {
                    violates = true;
                }
            }
        }
        if violates {
            violating.push(pod);
        } else {
            fine.push(pod);
        }
    }
    (violating, fine)
}

/// The victims on `info` that make room for `pod`, if removing pods can.
fn victims_on(
    fit: &Fit<'_>,
    pod: &Pod,
    info: &NodeInfo,
    all: &[&NodeInfo],
    budgets: &[Arc<PodDisruptionBudget>],
) -> Option<Candidate> {
    let wanted = priority(pod);
    let (mut lower, higher): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = info
        .pods
        .iter()
        .cloned()
        .partition(|p| priority(p) < wanted && !terminating(p) && !daemon(p));
    if lower.is_empty() {
        return None;
    }
    if !fit.fits(pod, &with_pods(info, higher.clone()), all) {
        return None;
    }
    // Most important first: higher priority, then started earlier.
    lower.sort_by_key(|p| (Reverse(priority(p)), start_seconds(p)));
    let (violating, fine) = split_by_budgets(lower, budgets);
    let mut kept = higher;
    let mut victims = Vec::new();
    let mut violations = 0;
    for (protected, candidate) in violating
        .into_iter()
        .map(|p| (true, p))
        .chain(fine.into_iter().map(|p| (false, p)))
    {
        kept.push(Arc::clone(&candidate));
        if !fit.fits(pod, &with_pods(info, kept.clone()), all) {
            kept.pop();
            violations += usize::from(protected);
            victims.push(candidate);
        }
    }
    if victims.is_empty() {
        // It fits as things are: nothing to preempt here.
        return None;
    }
    victims.sort_by_key(|p| (Reverse(priority(p)), start_seconds(p)));
    Some(Candidate {
        node: info.name().to_string(),
        victims,
        violations,
    })
}

/// The best node to preempt on for `pod`, among `all` (the cluster), or
/// None when no removal of lower-priority pods makes room.
pub fn select(
    fit: &Fit<'_>,
    pod: &Pod,
    all: &[&NodeInfo],
    budgets: &[Arc<PodDisruptionBudget>],
) -> Option<Candidate> {
    if !may_preempt(pod) {
        return None;
    }
    let enough = MIN_CANDIDATES.max(all.len() / 10);
    all.iter()
        .filter_map(|info| victims_on(fit, pod, info, all, budgets))
        .take(enough)
        .min_by_key(|c| {
            let highest = c.victims.first().map_or(i32::MIN, |p| priority(p));
            // Offset so that negative priorities add up as less
            // important, not as smaller sums (Kubernetes').
            let sum: i64 = c
                .victims
                .iter()
                .map(|p| i64::from(priority(p)) + i64::from(i32::MAX) + 1)
                .sum();
            let latest_start = c.victims.first().map_or(0, |p| start_seconds(p));
            (
                c.violations,
                highest,
                sum,
                c.victims.len(),
                Reverse(latest_start),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::PodStatus;
    use skiff::pb::meta::v1::{LabelSelector, ObjectMeta};

    use crate::plugins::testing;
    use skiff::pb::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};

    fn node(name: &str, cpu: &str) -> NodeInfo {
        testing::info(testing::node(name, cpu, "8Gi"))
    }

    fn pod(name: &str, app: &str, cpu: &str, priority: i32, started: i64) -> Arc<Pod> {
        let mut pod = testing::pod(name, cpu, "");
        let meta = pod.metadata.get_or_insert_with(Default::default);
        meta.labels = [("app".to_string(), app.to_string())].into();
        pod.spec.get_or_insert_with(Default::default).priority = Some(priority);
        pod.status = Some(PodStatus {
            start_time: Some(skiff::wkt::Timestamp {
                seconds: started,
                nanos: 0,
            }),
            ..Default::default()
        });
        Arc::new(pod)
    }

    fn names(c: &Candidate) -> Vec<&str> {
        c.victims
            .iter()
            .map(|p| p.metadata.as_ref().unwrap().name.as_str())
            .collect()
    }

    fn select(
        pod: &Pod,
        all: &[&NodeInfo],
        budgets: &[Arc<PodDisruptionBudget>],
    ) -> Option<Candidate> {
        let profile = Profile::build(&Default::default()).unwrap();
        let fit = Fit {
            profile: &profile,
            extra: &|_| true,
        };
        super::select(&fit, pod, all, budgets)
    }

    #[test]
    fn the_fewest_and_least_important_pods_make_room() {
        // n1: two small low pods; n2: one big low pod; n3: a big
        // higher-priority pod. The urgent pod needs 2 CPUs.
        let mut n1 = node("n1", "2");
        n1.add_pod(pod("a", "x", "1", 10, 1));
        n1.add_pod(pod("b", "x", "1", 10, 2));
        let mut n2 = node("n2", "2");
        n2.add_pod(pod("c", "x", "2", 10, 3));
        let mut n3 = node("n3", "2");
        n3.add_pod(pod("d", "x", "2", 500, 4));
        let all = [&n1, &n2, &n3];
        let urgent = pod("urgent", "u", "2", 1000, 0);
        let chosen = select(&urgent, &all, &[]).unwrap();
        assert_eq!((chosen.node.as_str(), names(&chosen)), ("n2", vec!["c"]));
        // Only 1 CPU needed: one of n1's pods is reprieved, the more
        // important (earlier started) one stays.
        let small = pod("small", "u", "1", 1000, 0);
        let chosen = select(&small, &all, &[]).unwrap();
        assert_eq!(chosen.victims.len(), 1);
        // A pod of priority 10 preempts nobody of priority 10; Never
        // preempts nobody at all.
        let peer = pod("peer", "u", "2", 10, 0);
        assert!(select(&peer, &all, &[]).is_none());
        let mut polite = (*urgent).clone();
        polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(select(&polite, &all, &[]).is_none());
        // A DaemonSet's pod is no victim: its controller puts it back on
        // its node at once.
        let mut n4 = node("n4", "2");
        let mut daemon_pod = (*pod("agent", "d", "2", 0, 1)).clone();
        daemon_pod.metadata.as_mut().unwrap().owner_references.push(
            skiff::pb::meta::v1::OwnerReference {
                kind: "DaemonSet".into(),
                name: "agent".into(),
                controller: Some(true),
                ..Default::default()
            },
        );
        n4.add_pod(Arc::new(daemon_pod));
        assert!(select(&urgent, &[&n4], &[]).is_none());
    }

    #[test]
    fn a_budget_protected_set_is_passed_over_when_another_choice_exists() {
        // n1 holds a budgeted pod, n2 an unbudgeted one of the same
        // priority: n2 is chosen though it is listed second.
        let mut n1 = node("n1", "1");
        n1.add_pod(pod("guarded", "db", "1", 10, 1));
        let mut n2 = node("n2", "1");
        n2.add_pod(pod("free", "web", "1", 10, 1));
        let budget = Arc::new(PodDisruptionBudget {
            metadata: Some(ObjectMeta {
                name: "db".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: [("app".to_string(), "db".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: 0,
                ..Default::default()
            }),
            ..Default::default()
        });
        let urgent = pod("urgent", "u", "1", 1000, 0);
        let budgets = [Arc::clone(&budget)];
        let chosen = select(&urgent, &[&n1, &n2], &budgets).unwrap();
        assert_eq!((chosen.node.as_str(), chosen.violations), ("n2", 0));
        // With no other choice, the budget gives way (Kubernetes:
        // respected where it can be).
        let chosen = select(&urgent, &[&n1], &budgets).unwrap();
        assert_eq!((names(&chosen), chosen.violations), (vec!["guarded"], 1));
    }
}
