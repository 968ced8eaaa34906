//! Stopping containers as the kubelet kills them (preStop, SIGTERM, the
//! grace period, SIGKILL) and tearing a deleted pod down.

use std::time::Duration;

use skiff::pb::api::v1::{DeleteRequest, Preconditions};
use skiff::pb::core::v1::{Container as PodContainer, Pod};
use skiff_client::events::EventType;
use skiff_runtime::{Container, Error as RuntimeError, labels};

use super::state::{Inputs, Shared, SyncError, grace_period, is_running, meta};
use crate::lifecycle;
use crate::volumes::{self};

/// Stops what runs of a pod as the kubelet kills a pod: its containers
/// together (each with its preStop hook and `grace`), then the sandbox,
/// so that hooks still have the pod's network.
pub(super) async fn stop_pod(
    shared: &Shared,
    pod: &Pod,
    containers: &[Container],
    grace: Duration,
) -> Result<(), RuntimeError> {
    let (sandboxes, apps): (Vec<&Container>, Vec<&Container>) = containers
        .iter()
        .filter(|c| is_running(c))
        .partition(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX);
    let stops = apps.iter().map(|c| stop_container(shared, pod, c, grace));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for sandbox in sandboxes {
        shared.runtime.stop(&sandbox.id, Duration::ZERO).await?;
    }
    Ok(())
}

/// The grace period of a kill for a failed liveness or startup probe:
/// the probe's own `terminationGracePeriodSeconds` when it has one, else
/// the pod's.
pub(super) fn probe_kill_grace(c: &PodContainer, pod: &Pod, started: bool) -> Duration {
    // The failed probe's own: the startup probe's until it passed.
    let failed = if started {
        &c.liveness_probe
    } else {
        &c.startup_probe
    };
    failed
        .as_ref()
        .and_then(|p| p.termination_grace_period_seconds)
        .map_or_else(
            || grace_period(pod),
            |s| Duration::from_secs(s.max(0) as u64),
        )
}

/// The pod's declared container a runtime container is an instance of.
pub(super) fn declared<'a>(pod: &'a Pod, c: &Container) -> Option<&'a PodContainer> {
    let spec = pod.spec.as_ref()?;
    let name = c.label(labels::CONTAINER_NAME);
    spec.init_containers
        .iter()
        .chain(&spec.containers)
        .find(|d| d.name == name)
}

/// Stops a running container as the kubelet kills one: its preStop hook
/// first (when it has one and there is time), within the grace period,
/// then SIGTERM with what is left (at least 2 s after a hook) and SIGKILL.
pub(super) async fn stop_container(
    shared: &Shared,
    pod: &Pod,
    c: &Container,
    grace: Duration,
) -> Result<(), RuntimeError> {
    let hook = declared(pod, c).and_then(|d| {
        let pre_stop = d.lifecycle.as_deref()?.pre_stop.as_ref()?;
        Some((d, pre_stop))
    });
    let Some((spec, pre_stop)) = hook.filter(|_| !grace.is_zero()) else {
        return shared.runtime.stop(&c.id, grace).await;
    };
    let started = std::time::Instant::now();
    let pod_ip = pod.status.as_ref().map_or("", |s| s.pod_ip.as_str());
    let target = lifecycle::Target {
        runtime: &shared.runtime,
        container_id: &c.id,
        spec,
        pod,
        pod_ip,
    };
    if let Err(message) = lifecycle::run(pre_stop, &target, grace).await {
        shared
            .recorder
            .record(pod, EventType::Warning, "FailedPreStopHook", &message)
            .await;
    }
    let left = lifecycle::grace_after_hook(grace, started.elapsed());
    shared.runtime.stop(&c.id, left).await
}

/// Stops every container of a deleted pod within its grace period, removes
/// them, the sandbox and the pod's directory, and finishes the deletion in
/// the API when the pod is still there (marked for deletion).
pub(super) async fn teardown(
    shared: &Shared,
    inputs: &Inputs,
    containers: &[Container],
) -> Result<(), SyncError> {
    let known = inputs
        .pod
        .as_deref()
        .or(Some(&*inputs.last).filter(|p| p.spec.is_some()));
    let grace = match known {
        Some(pod) => grace_period(pod),
        // Only the containers are left (the agent restarted after the pod
        // was deleted): they remember the grace period they were made with.
        None => containers
            .iter()
            .filter_map(|c| c.label(labels::GRACE_SECONDS).parse::<u64>().ok())
            .max()
            .map_or(Duration::from_secs(30), Duration::from_secs),
    };
    let (sandboxes, apps): (Vec<&Container>, Vec<&Container>) = containers
        .iter()
        .partition(|c| c.label(labels::CONTAINER_NAME) == labels::SANDBOX);
    let pod = &inputs.last;
    let running: Vec<&Container> = apps.iter().copied().filter(|c| is_running(c)).collect();
    if !running.is_empty() {
        let names: Vec<&str> = running
            .iter()
            .map(|c| c.label(labels::CONTAINER_NAME))
            .collect();
        let message = format!("Stopping container(s) {}", names.join(", "));
        shared
            .recorder
            .record(&**pod, EventType::Normal, "Killing", &message)
            .await;
    }
    let stops = running
        .iter()
        .map(|c| stop_container(shared, pod, c, grace));
    for result in futures::future::join_all(stops).await {
        result?;
    }
    for c in apps.iter().chain(&sandboxes) {
        shared.runtime.remove(&c.id).await?;
    }
    let uid = meta(pod).uid;
    volumes::remove_pod_dir(&shared.data_dir, &uid);
    shared.sources.tokens.forget(&uid);
    if let Some(p) = &inputs.pod {
        let m = meta(p);
        let request = DeleteRequest {
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: m.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match shared.pods.delete(request).await {
            Ok(_) => {}
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::Aborted) => {}
            Err(s) => return Err(SyncError::Status(s)),
        }
    }
    tracing::info!(pod = %format!("{}/{}", meta(pod).namespace, meta(pod).name), %uid, "pod torn down");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{PodSpec, Probe};

    #[test]
    fn a_probes_own_grace_period_wins_over_the_pods() {
        let pod = Pod {
            spec: Some(PodSpec {
                termination_grace_period_seconds: Some(30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = PodContainer {
            liveness_probe: Some(Box::new(Probe::default())),
            ..Default::default()
        };
        assert_eq!(probe_kill_grace(&c, &pod, true), Duration::from_secs(30));
        c.liveness_probe = Some(Box::new(Probe {
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        }));
        c.startup_probe = Some(Box::new(Probe {
            termination_grace_period_seconds: Some(7),
            ..Default::default()
        }));
        assert_eq!(probe_kill_grace(&c, &pod, true), Duration::from_secs(5));
        // Before it started, the startup probe failed: its own.
        assert_eq!(probe_kill_grace(&c, &pod, false), Duration::from_secs(7));
    }
}
