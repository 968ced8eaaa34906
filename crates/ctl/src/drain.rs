//! `cordon`, `uncordon` and `drain`, as kubectl does them: a cordoned
//! node takes no new pods; draining cordons it, then evicts its pods —
//! refusing, unless told, DaemonSet pods (their controller would put them
//! back), pods no controller would replace, and pods whose emptyDir data
//! would be lost — and waits for them to be gone. Evictions honour
//! PodDisruptionBudgets: one a budget refuses is tried again every 5 s
//! (kubectl's pace) until the budget allows it or the timeout passes, so
//! a budgeted set moves as fast as its replacements become ready.

use std::time::{Duration, Instant};

use skiff::Resource as _;
use skiff::pb::api::v1::{DeleteRequest, ListRequest, Preconditions};
use skiff::pb::core::v1::{Node, Pod};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::pb::policy::v1::{DeleteOptions, Eviction};
use skiff_client::Api;

use crate::{Ctl, CtlError, Result};

/// How `drain` treats the pods it would rather not remove.
#[derive(Debug, Clone, Default)]
pub struct DrainOptions {
    /// Leave DaemonSet pods where they are (kubectl's
    /// `--ignore-daemonsets`).
    pub ignore_daemonsets: bool,
    /// Remove pods with emptyDir volumes, losing their data.
    pub delete_emptydir_data: bool,
    /// Remove pods no controller replaces.
    pub force: bool,
    /// Each pod's grace period instead of its own (seconds).
    pub grace_period: Option<i64>,
    /// How long to wait for the pods to go (zero: as long as it takes).
    pub timeout: Duration,
    /// Delete instead of evicting: no budget is asked (kubectl's
    /// `--disable-eviction`).
    pub disable_eviction: bool,
}

/// How long to wait before asking a budget again (kubectl's).
const EVICTION_RETRY: Duration = Duration::from_secs(5);

/// Why a pod is not removed without a flag, in kubectl's words.
const DAEMONSET: &str = "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)";
const UNMANAGED: &str = "cannot delete Pods that declare no controller (use --force to override)";
const LOCAL_STORAGE: &str =
    "cannot delete Pods with local storage (use --delete-emptydir-data to override)";

fn controller_kind(pod: &Pod) -> Option<&str> {
    pod.metadata
        .as_ref()?
        .owner_references
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str())
}

fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase == "Succeeded" || s.phase == "Failed")
}

fn has_empty_dir(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.volumes.iter().any(|v| v.empty_dir.is_some()))
}

/// What drain does with each pod: removes it, leaves it (ignored
/// DaemonSet pods), or refuses (the reason).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Remove,
    Leave,
    Refuse(&'static str),
}

fn judge(pod: &Pod, options: &DrainOptions) -> Verdict {
    if finished(pod) {
        return Verdict::Remove;
    }
    // kubectl's order: DaemonSet pods, local storage, then pods no
    // controller replaces.
    match controller_kind(pod) {
        Some("DaemonSet") if options.ignore_daemonsets => return Verdict::Leave,
        Some("DaemonSet") => return Verdict::Refuse(DAEMONSET),
        _ => {}
    }
    if has_empty_dir(pod) && !options.delete_emptydir_data {
        return Verdict::Refuse(LOCAL_STORAGE);
    }
    if controller_kind(pod).is_none() && !options.force {
        return Verdict::Refuse(UNMANAGED);
    }
    Verdict::Remove
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace(), pod.name())
}

impl Ctl {
    /// `cordon NODE` (`on`) or `uncordon NODE`.
    ///
    /// # Errors
    /// The node is missing or the update is refused.
    pub async fn cordon(&self, node: &str, on: bool) -> Result<()> {
        let nodes = Api::<Node>::new(self.channel.clone());
        let word = if on { "cordoned" } else { "uncordoned" };
        for _ in 0..5 {
            let mut current = nodes
                .get("", node)
                .await
                .map_err(|s| self.server_error(s, "Node", node))?;
            let spec = current.spec.get_or_insert_with(Default::default);
            if spec.unschedulable == on {
                println!("node/{node} already {word}");
                return Ok(());
            }
            spec.unschedulable = on;
            current.status = None;
            match nodes.update(current).await {
                Ok(_) => {
                    println!("node/{node} {word}");
                    return Ok(());
                }
                Err(s) if s.code() == tonic::Code::Aborted => continue,
                Err(s) => return Err(self.server_error(s, "Node", node)),
            }
        }
        Err(CtlError(format!(
            "error: node {node:?} keeps changing; try again"
        )))
    }

    /// `drain NODE`: cordons it, removes its pods (see the module doc)
    /// and waits for them to be gone.
    ///
    /// # Errors
    /// Pods drain may not remove without a flag (nothing is removed
    /// then), a refused deletion, or pods still there at the timeout.
    pub async fn drain(&self, node: &str, options: &DrainOptions) -> Result<()> {
        self.cordon(node, true).await?;
        let pods = Api::<Pod>::new(self.channel.clone());
        let on_node = pods
            .list(ListRequest {
                field_selector: format!("spec.nodeName={node}"),
                ..Default::default()
            })
            .await
            .map_err(|s| self.server_error(s, "Pod", ""))?
            .items;
        // Refusals grouped by reason, as kubectl prints them.
        let mut refusals: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let mut left = Vec::new();
        let mut remove = Vec::new();
        for pod in &on_node {
            match judge(pod, options) {
                Verdict::Remove => remove.push(pod),
                Verdict::Leave => left.push(pod_name(pod)),
                Verdict::Refuse(why) => refusals.entry(why).or_default().push(pod_name(pod)),
            }
        }
        if !refusals.is_empty() {
            let reasons: Vec<String> = refusals
                .iter()
                .map(|(why, pods)| format!("{why}: {}", pods.join(", ")))
                .collect();
            return Err(CtlError(format!(
                "error: unable to drain node {node:?} due to error: {}",
                reasons.join("; ")
            )));
        }
        let mut warnings = Vec::new();
        if !left.is_empty() {
            warnings.push(format!(
                "ignoring DaemonSet-managed Pods: {}",
                left.join(", ")
            ));
        }
        let unmanaged: Vec<String> = remove
            .iter()
            .filter(|p| !finished(p) && controller_kind(p).is_none())
            .map(|p| pod_name(p))
            .collect();
        if !unmanaged.is_empty() {
            warnings.push(format!(
                "deleting Pods that declare no controller: {}",
                unmanaged.join(", ")
            ));
        }
        if !warnings.is_empty() {
            eprintln!("Warning: {}", warnings.join("; "));
        }
        // Zero (or too far to say): no deadline.
        let deadline = Some(options.timeout)
            .filter(|t| !t.is_zero())
            .and_then(|t| Instant::now().checked_add(t));
        // Every pod at once, as kubectl: each waits for its own budget,
        // and every failure is told.
        let failures: Vec<String> = futures::future::join_all(
            remove
                .iter()
                .map(|pod| self.remove_pod(&pods, pod, options, deadline)),
        )
        .await
        .into_iter()
        .filter_map(|result| result.err().map(|e| e.0))
        .collect();
        if !failures.is_empty() {
            return Err(CtlError(failures.join("\n")));
        }
        println!("node/{node} drained");
        Ok(())
    }

    /// Evicts (or deletes) one pod, asking again while its budget
    /// refuses, then waits for it to be gone.
    async fn remove_pod(
        &self,
        pods: &Api<Pod>,
        pod: &Pod,
        options: &DrainOptions,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let (namespace, name) = (pod.namespace().to_string(), pod.name().to_string());
        let too_late = |why: &str| {
            CtlError(format!(
                "error: drain did not complete within {:?}: pod {} {why}",
                options.timeout,
                pod_name(pod)
            ))
        };
        // Only this pod: a new one of the same name is not evicted.
        let preconditions = Some(Preconditions {
            uid: pod.uid().to_string(),
            ..Default::default()
        });
        let verb = if options.disable_eviction {
            "deleting"
        } else {
            "evicting"
        };
        println!("{verb} pod {}", pod_name(pod));
        loop {
            let result = if options.disable_eviction {
                pods.delete(DeleteRequest {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    grace_period_seconds: options.grace_period,
                    preconditions: preconditions.clone(),
                    ..Default::default()
                })
                .await
            } else {
                pods.evict(Eviction {
                    metadata: Some(ObjectMeta {
                        name: name.clone(),
                        namespace: namespace.clone(),
                        ..Default::default()
                    }),
                    delete_options: Some(DeleteOptions {
                        grace_period_seconds: options.grace_period,
                        preconditions: preconditions.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
            };
            match result {
                Ok(_) => break,
                // Gone already, or replaced by another of its name.
                Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {
                    break;
                }
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    eprintln!(
                        "error when evicting pods/{name:?} -n {namespace:?} (will retry after 5s): {}",
                        s.message()
                    );
                    // Asked once more at the deadline, then given up.
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(too_late(
                            "could not be evicted: its disruption budget allows no disruption",
                        ));
                    }
                    tokio::time::sleep(left.map_or(EVICTION_RETRY, |l| l.min(EVICTION_RETRY)))
                        .await;
                }
                Err(s) => return Err(self.server_error(s, "Pod", &name)),
            }
        }
        loop {
            match pods.get(&namespace, &name).await {
                Err(s) if s.code() == tonic::Code::NotFound => break,
                // A new pod of the same name is not this one.
                Ok(now) if now.uid() != pod.uid() => break,
                _ if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(too_late("is still there"));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let done = if options.disable_eviction {
            "deleted"
        } else {
            "evicted"
        };
        println!("pod/{name} {done}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use skiff::pb::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(owner: Option<&str>, empty_dir: bool, phase: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: "p".into(),
                namespace: "default".into(),
                owner_references: owner
                    .map(|kind| OwnerReference {
                        kind: kind.into(),
                        controller: Some(true),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                volumes: if empty_dir {
                    vec![Volume {
                        name: "scratch".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: phase.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn drain_refuses_what_kubectl_refuses_unless_told() {
        let none = DrainOptions::default();
        assert_eq!(
            judge(&pod(Some("ReplicaSet"), false, "Running"), &none),
            Verdict::Remove
        );
        assert_eq!(
            judge(&pod(Some("DaemonSet"), false, "Running"), &none),
            Verdict::Refuse(DAEMONSET)
        );
        assert_eq!(
            judge(&pod(None, false, "Running"), &none),
            Verdict::Refuse(UNMANAGED)
        );
        assert_eq!(
            judge(&pod(Some("ReplicaSet"), true, "Running"), &none),
            Verdict::Refuse(LOCAL_STORAGE)
        );
        // A finished pod goes whatever it is.
        assert_eq!(judge(&pod(None, true, "Succeeded"), &none), Verdict::Remove);
        let all = DrainOptions {
            ignore_daemonsets: true,
            delete_emptydir_data: true,
            force: true,
            ..Default::default()
        };
        assert_eq!(
            judge(&pod(Some("DaemonSet"), false, "Running"), &all),
            Verdict::Leave
        );
        assert_eq!(judge(&pod(None, true, "Running"), &all), Verdict::Remove);
    }
}
