//! Kubernetes' defaults of a pod spec (restart and DNS policy, scheduler,
//! grace period, host ports of host-network pods) and of its containers
//! (pull policy, termination message, port protocols, requests from
//! limits).

use skiff::pb::core::v1::{Container, PodSpec};

pub(in crate::strategy) fn default_pod_spec(spec: &mut PodSpec) {
    if spec.restart_policy.is_empty() {
        spec.restart_policy = "Always".into();
    }
    if spec.dns_policy.is_empty() {
        spec.dns_policy = "ClusterFirst".into();
    }
    if spec.scheduler_name.is_empty() {
        spec.scheduler_name = "default-scheduler".into();
    }
    spec.termination_grace_period_seconds.get_or_insert(30);
    if spec.host_network {
        // Kubernetes: a host-network pod's ports are the host's.
        for c in spec
            .init_containers
            .iter_mut()
            .chain(spec.containers.iter_mut())
        {
            for p in &mut c.ports {
                if p.host_port == 0 {
                    p.host_port = p.container_port;
                }
            }
        }
    }
    for c in spec
        .init_containers
        .iter_mut()
        .chain(spec.containers.iter_mut())
    {
        default_container(c);
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_empty() {
        // Kubernetes: an untagged or :latest image is re-pulled every time.
        let tag = c
            .image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        c.image_pull_policy = match tag {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
        .into();
    }
    if c.termination_message_path.is_empty() {
        c.termination_message_path = "/dev/termination-log".into();
    }
    if c.termination_message_policy.is_empty() {
        c.termination_message_policy = "File".into();
    }
    for p in &mut c.ports {
        if p.protocol.is_empty() {
            p.protocol = "TCP".into();
        }
    }
}

/// A container with a limit and no request for a resource requests its
/// limit.
pub(super) fn requests_from_limits(c: &mut Container) {
    if let Some(r) = &mut c.resources {
        for (name, limit) in &r.limits {
            // No copy of the name for one already there (most).
            if !r.requests.contains_key(name) {
                r.requests.insert(name.clone(), limit.clone());
            }
        }
    }
}
