//! Pods: defaults (Kubernetes'), validation of the spec, its volumes
//! and containers, ServiceAccount admission and the binding.
//!
//! The [`Strategy`] of pods is here; the rules a pod shares with the
//! templates of workloads sit in files of their own beside this one:
//!
//! - `defaults`: Kubernetes' defaults of a pod spec and its containers.
//! - `spec`: validation of a pod spec as a whole.
//! - `containers`: validation of each container: its name, image, ports,
//!   environment, mounts and resources, lifecycle handlers and probes.
//! - `volumes`: the paths a volume's items and a mount's `subPath` name.
//! - `placement`: pod (anti-)affinity terms and topology spread
//!   constraints.

use skiff::pb::core::v1::{
    ConfigMapProjection, DownwardApiProjection, DownwardApiVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, PodCondition, PodSpec, PodStatus, ProjectedVolumeSource,
    ServiceAccount, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff::validation::FieldErrors;

use super::*;

mod containers;
mod defaults;
mod placement;
mod spec;
mod volumes;

pub(super) use containers::validate_protocol;
pub(super) use defaults::default_pod_spec;
use defaults::requests_from_limits;
pub(super) use spec::validate_pod_spec;

impl Strategy for Pod {
    fn pod_security(&self) -> Option<(Option<&ObjectMeta>, &PodSpec, bool)> {
        Some((self.metadata.as_ref(), self.spec.as_ref()?, true))
    }

    fn priority_request(&self) -> Option<super::PriorityRequest> {
        let spec = self.spec.as_ref()?;
        Some(super::PriorityRequest {
            class: spec.priority_class_name.clone(),
            priority: spec.priority,
            preemption_policy: spec.preemption_policy.clone(),
        })
    }

    fn keep_admitted(&mut self, current: &Self) {
        // A bound pod's nomination (how it got its room) outlives status
        // writes that do not know it, an agent's (kubelet's status patches
        // leave it too); a pending pod's is the scheduler's to clear.
        let bound = current
            .spec
            .as_ref()
            .is_some_and(|s| !s.node_name.is_empty());
        if let (true, Some(status), Some(old)) =
            (bound, self.status.as_mut(), current.status.as_ref())
            && status.nominated_node_name.is_empty()
        {
            status
                .nominated_node_name
                .clone_from(&old.nominated_node_name);
        }
        let (Some(spec), Some(old)) = (self.spec.as_mut(), current.spec.as_ref()) else {
            return;
        };
        if spec.priority.is_none() {
            spec.priority = old.priority;
        }
        if spec.preemption_policy.is_none() {
            spec.preemption_policy.clone_from(&old.preemption_policy);
        }
    }

    fn set_priority(&mut self, class: &str, value: i32, policy: &str) {
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        class.clone_into(&mut spec.priority_class_name);
        spec.priority = Some(value);
        spec.preemption_policy = Some(policy.to_string());
    }

    const FIELDS: &'static [&'static str] = &["spec.nodeName", "status.phase"];

    fn field(&self, path: &str) -> Option<String> {
        match path {
            "spec.nodeName" => Some(self.spec.as_ref().map_or("", |s| &s.node_name).to_string()),
            "status.phase" => Some(self.status.as_ref().map_or("", |s| &s.phase).to_string()),
            _ => None,
        }
    }

    fn default_fields(&mut self) {
        if let Some(spec) = &mut self.spec {
            default_pod_spec(spec);
            // Kubernetes' pod defaulting (templates keep theirs).
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                requests_from_limits(c);
            }
        }
    }

    fn prepare_create(&mut self) {
        self.status = Some(PodStatus {
            phase: "Pending".into(),
            ..Default::default()
        });
    }

    /// The pod runs as `spec.serviceAccountName` (default `default`) and,
    /// unless `automountServiceAccountToken: false` (on the pod, else on
    /// the account) or a container already mounts something there, gets Kubernetes' `kube-api-access-*`
    /// projected volume at `/var/run/secrets/kubernetes.io/serviceaccount`
    /// in every container: a token bound to the pod (`token`), the
    /// cluster CA (`ca.crt`) and the namespace (`namespace`).
    fn service_account(&self) -> Option<String> {
        let spec = self.spec.clone().unwrap_or_default();
        Some(if !spec.service_account_name.is_empty() {
            spec.service_account_name
        } else if !spec.service_account.is_empty() {
            spec.service_account
        } else {
            "default".into()
        })
    }

    /// Kubernetes' rule: a pod's spec is fixed once created, but for its
    /// containers' images, `activeDeadlineSeconds` and added tolerations
    /// (so the account it runs as, its node and its volumes cannot be
    /// swapped under it).
    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        let mutable_cleared = |pod: &Pod| {
            let mut spec = pod.spec.clone().unwrap_or_default();
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut())
            {
                c.image.clear();
                // Pods stored before requests were defaulted from limits
                // compare as if they had been.
                requests_from_limits(c);
            }
            spec.active_deadline_seconds = None;
            // Scheduling gates may be removed (checked below).
            spec.scheduling_gates.clear();
            spec
        };
        let gates = |p: &Pod| {
            p.spec
                .as_ref()
                .map(|s| s.scheduling_gates.clone())
                .unwrap_or_default()
        };
        let (before, now) = (gates(old), gates(self));
        if now.iter().any(|g| !before.contains(g)) {
            errors.forbidden(
                "spec.schedulingGates",
                "only deletion is allowed, but found new scheduling gate",
            );
        }
        // Kubernetes: a deadline may be set, or lowered, never raised or
        // removed.
        let deadline = |p: &Pod| p.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        match (deadline(old), deadline(self)) {
            (Some(_), None) => errors.invalid(
                "spec.activeDeadlineSeconds",
                "null",
                "must not update from a positive integer to nil value",
            ),
            (Some(before), Some(now)) if now > before => errors.invalid(
                "spec.activeDeadlineSeconds",
                now,
                "must be less than or equal to previous value",
            ),
            _ => {}
        }
        let (mut next, prev) = (mutable_cleared(self), mutable_cleared(old));
        let added_only = prev
            .tolerations
            .iter()
            .all(|t| next.tolerations.contains(t));
        if added_only {
            next.tolerations.clone_from(&prev.tolerations);
        }
        if next != prev {
            errors.push(
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)",
            );
        }
    }

    fn admit_service_account(&mut self, account: &ServiceAccount) {
        let name = self.service_account().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        spec.service_account_name = name;
        // The pod's own choice wins over its account's.
        let automount = spec
            .automount_service_account_token
            .or(account.automount_service_account_token)
            .unwrap_or(true);
        if !automount {
            return;
        }
        let mounted = spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .any(|c| {
                c.volume_mounts
                    .iter()
                    .any(|m| m.mount_path == SERVICE_ACCOUNT_DIR)
            });
        if mounted {
            return;
        }
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_string();
        let name = format!("kube-api-access-{suffix}");
        spec.volumes.push(Volume {
            name: name.clone(),
            projected: Some(ProjectedVolumeSource {
                sources: vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: String::new(),
                            expiration_seconds: Some(3607),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: None,
                            }],
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardApiProjection {
                            items: vec![DownwardApiVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    api_version: "v1".into(),
                                    field_path: "metadata.namespace".into(),
                                }),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    },
                ],
                default_mode: Some(0o644),
            }),
            ..Default::default()
        });
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut())
        {
            c.volume_mounts.push(VolumeMount {
                name: name.clone(),
                read_only: true,
                mount_path: SERVICE_ACCOUNT_DIR.into(),
                ..Default::default()
            });
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        match &self.spec {
            Some(spec) => {
                validate_pod_spec("spec", spec, errors);
                // A gated pod is neither created bound nor bound.
                if !spec.scheduling_gates.is_empty() && !spec.node_name.is_empty() {
                    errors.forbidden(
                        "spec.nodeName",
                        "cannot be set until all schedulingGates have been removed",
                    );
                }
            }
            None => errors.required("spec"),
        }
    }

    /// A pod bound to a node and not finished gets its grace period (the
    /// request's, else terminationGracePeriodSeconds): its agent stops the
    /// containers, then deletes it for good with a grace of 0. Pods no
    /// agent runs go at once.
    fn graceful_delete_seconds(&self, requested: Option<i64>) -> Option<i64> {
        let spec = self.spec.as_ref()?;
        let phase = self.status.as_ref().map_or("", |s| s.phase.as_str());
        if spec.node_name.is_empty() || phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let grace = requested
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30);
        (grace > 0).then_some(grace)
    }

    fn bind(&mut self, node: &str) -> Result<(), String> {
        let pod = self.object_ref();
        let spec = self.spec.get_or_insert_with(PodSpec::default);
        if !spec.node_name.is_empty() {
            return Err(format!(
                "pod {pod} is already assigned to node {:?}",
                spec.node_name
            ));
        }
        spec.node_name = node.to_string();
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.conditions.retain(|c| c.r#type != "PodScheduled");
        status.conditions.push(PodCondition {
            r#type: "PodScheduled".into(),
            status: "True".into(),
            last_transition_time: Some(crate::registry::now()),
            ..Default::default()
        });
        Ok(())
    }
}
