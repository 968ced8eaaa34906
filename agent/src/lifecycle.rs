//! Lifecycle hooks, as the kubelet runs them: `postStart` right after a
//! container starts (the pod's next container waits for it; a failure
//! kills the container, which then restarts by the pod's policy), and
//! `preStop` before a running container is stopped (its time counts
//! against the grace period; the container then gets what is left, at
//! least 2 s).
//!
//! Handlers: `exec` in the container, `httpGet` to the pod (or `host`;
//! HTTPS without checking the pod's certificate, as the kubelet),
//! `sleep`. `tcpSocket` is refused by the API, as the kubelet never runs
//! it. A postStart hook may run for at most [`POST_START_LIMIT`] (the
//! kubelet has no bound; a hook that never ends would hold the pod's
//! worker).

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::core::v1::{Container as PodContainer, LifecycleHandler, Pod};
use skiff_runtime::Runtime;

/// The longest a postStart hook may run.
pub const POST_START_LIMIT: Duration = Duration::from_secs(120);

/// The least time a container gets between SIGTERM and SIGKILL after its
/// preStop hook (the kubelet's minimum grace period).
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// Where a hook runs.
pub struct Target<'a> {
    /// The runtime, for exec handlers.
    pub runtime: &'a Arc<dyn Runtime>,
    /// The container's runtime id.
    pub container_id: &'a str,
    /// The container as the pod declares it (its named ports).
    pub spec: &'a PodContainer,
    /// The pod, for messages.
    pub pod: &'a Pod,
    /// The pod's IP, for httpGet handlers.
    pub pod_ip: &'a str,
}

/// The kubelet's name of a pod in messages: `name_namespace(uid)`.
fn pod_name(pod: &Pod) -> String {
    let meta = pod.metadata.clone().unwrap_or_default();
    format!("{}_{}({})", meta.name, meta.namespace, meta.uid)
}

/// Runs one handler within `limit`; the error is the kubelet's message
/// for the hook's Warning event.
///
/// # Errors
/// The handler failed, timed out or names nothing to run.
pub async fn run(
    handler: &LifecycleHandler,
    target: &Target<'_>,
    limit: Duration,
) -> Result<(), String> {
    let who = format!(
        "for Container {:?} in Pod {:?}",
        target.spec.name,
        pod_name(target.pod)
    );
    if let Some(exec) = &handler.exec {
        let out = target
            .runtime
            .exec(target.container_id, &exec.command, limit)
            .await
            .map_err(|e| {
                format!(
                    "Exec lifecycle hook ({:?}) {who} failed - error: {e}",
                    exec.command
                )
            })?;
        if out.exit_code != 0 {
            return Err(format!(
                "Exec lifecycle hook ({:?}) {who} failed - error: command '{}' exited with {}: {}, message: {:?}",
                exec.command,
                exec.command.join(" "),
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim(),
            ));
        }
        return Ok(());
    }
    if let Some(http) = &handler.http_get {
        let host = if http.host.is_empty() {
            target.pod_ip.to_string()
        } else {
            http.host.clone()
        };
        let path = if http.path.is_empty() {
            "/".to_string()
        } else {
            http.path.clone()
        };
        let failed = |e: &str| format!("HTTP lifecycle hook ({path}) {who} failed - error: {e}");
        let Some(port) = crate::prober::port(target.spec, http.port.as_ref()) else {
            return Err(failed("the port names none of the container's ports"));
        };
        let tls = match http.scheme.as_str() {
            "" | "HTTP" => false,
            "HTTPS" => true,
            other => return Err(failed(&format!("scheme {other:?} is not supported"))),
        };
        let headers: String = http
            .http_headers
            .iter()
            .map(|h| format!("{}: {}\r\n", h.name, h.value))
            .collect();
        let ok = tokio::time::timeout(
            limit,
            crate::prober::http_get(host, port, path.clone(), headers, tls),
        )
        .await
        .unwrap_or(false);
        return if ok {
            Ok(())
        } else {
            Err(failed("the request failed or did not answer 2xx/3xx"))
        };
    }
    if let Some(sleep) = &handler.sleep {
        let asked = Duration::from_secs(sleep.seconds.max(0) as u64);
        tokio::time::sleep(asked.min(limit)).await;
        return Ok(());
    }
    Err(format!("lifecycle hook {who} names no handler Skiff runs"))
}

/// What is left of a grace period after a preStop hook took `spent`.
pub fn grace_after_hook(grace: Duration, spent: Duration) -> Duration {
    grace.saturating_sub(spent).max(MIN_GRACE_AFTER_HOOK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{ExecAction, HttpGetAction, SleepAction};
    use skiff::pb::meta::v1::ObjectMeta;
    use skiff_runtime::FakeRuntime;

    fn pod() -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: "web".into(),
                namespace: "shop".into(),
                uid: "u1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn handlers_report_failures_in_the_kubelets_words() {
        let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime::default());
        let spec = PodContainer {
            name: "app".into(),
            ..Default::default()
        };
        let pod = pod();
        let target = Target {
            runtime: &runtime,
            container_id: "missing",
            spec: &spec,
            pod: &pod,
            pod_ip: "127.0.0.1",
        };
        let exec = LifecycleHandler {
            exec: Some(ExecAction {
                command: vec!["true".into()],
            }),
            ..Default::default()
        };
        let error = run(&exec, &target, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            error.starts_with(
                "Exec lifecycle hook ([\"true\"]) for Container \"app\" in Pod \"web_shop(u1)\" failed - error:"
            ),
            "{error}"
        );
        // Nothing listens on port 1 of loopback.
        let http = LifecycleHandler {
            http_get: Some(HttpGetAction {
                path: "/quit".into(),
                port: Some(skiff::wkt::Value {
                    kind: Some(skiff::wkt::value::Kind::NumberValue(1.0)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = run(&http, &target, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            error.starts_with("HTTP lifecycle hook (/quit) for Container \"app\""),
            "{error}"
        );
        // A sleep is cut at the limit.
        let sleep = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 3600 }),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        run(&sleep, &target, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_hook_leaves_at_least_two_seconds_of_grace() {
        let s = Duration::from_secs;
        assert_eq!(grace_after_hook(s(30), s(10)), s(20));
        assert_eq!(grace_after_hook(s(30), s(40)), s(2));
        assert_eq!(grace_after_hook(s(0), s(0)), s(2));
    }
}
