//! The pod network: the Docker bridge network sandboxes are on, or the
//! CNI plugins' attachments (freed when a sandbox stops, and reconciled
//! now and then), and connections made inside a sandbox's network
//! namespace (port forwarding).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::NetworkCreateRequest;

use super::{DockerRuntime, PodNetwork, docker_error, is_status};
use crate::{Container, Error, Result, Runtime as _, State, labels};

impl DockerRuntime {
    /// The Docker network's name, when sandboxes are on one.
    pub(super) fn docker_network(&self) -> Option<&str> {
        match &self.network {
            PodNetwork::Docker(name) => Some(name),
            PodNetwork::Cni(_) => None,
        }
    }

    /// The CNI runtime, when sandboxes are plumbed by it.
    pub fn cni(&self) -> Option<&Arc<crate::cni::Cni>> {
        match &self.network {
            PodNetwork::Cni(cni) => Some(cni),
            PodNetwork::Docker(_) => None,
        }
    }

    /// The network namespace of a running container, `/proc/PID/ns/net`
    /// (not the engine's bind mount of it, which an agent in a mount
    /// namespace of its own, as `ip netns exec` makes, does not see).
    pub(super) async fn netns_of(&self, id: &str) -> Result<Option<String>> {
        let found = match self.docker.inspect_container(id, None).await {
            Ok(found) => found,
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(docker_error(e)),
        };
        let running = found
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            return Ok(None);
        }
        let pid = found.state.and_then(|s| s.pid).filter(|p| *p > 0);
        Ok(pid.map(|p| format!("/proc/{p}/ns/net")))
    }

    /// Takes a sandbox off the CNI network (before it stops: the plugins
    /// still find its side of the veth). Not a CNI sandbox: nothing.
    pub(super) async fn detach(&self, id: &str) -> Result<()> {
        let Some(cni) = self.cni() else { return Ok(()) };
        if cni.attachment(id).is_none() {
            return Ok(());
        }
        let netns = self.netns_of(id).await?;
        match cni.del(id, netns.as_deref()).await {
            Err(e) if netns.is_some() => {
                // The namespace is unusable: free what the host holds.
                tracing::warn!(sandbox = %id, error = %e, "CNI DEL inside the sandbox failed; deleting its host side only");
                cni.del(id, None).await
            }
            other => other,
        }
    }

    /// Frees the addresses of sandboxes that are not running (gone,
    /// stopped, or never plumbed: the agent died between starting one
    /// and recording its address), on start and then now and then:
    /// nothing a crash or a container removed behind the agent's back
    /// left holds an address for long. A sandbox some pod worker is
    /// plumbing or unplumbing right now is left to it. A DEL that fails is
    /// said in the log and tried again next time. Returns how many were
    /// freed.
    ///
    /// # Errors
    /// The engine did not answer.
    pub async fn reconcile_network(&self) -> Result<usize> {
        let Some(cni) = self.cni() else {
            return Ok(0);
        };
        let running: std::collections::HashSet<String> = self
            .list(None)
            .await?
            .into_iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| c.id)
            .collect();
        let mut freed = 0;
        for attachment in cni.attachments() {
            let id = &attachment.container_id;
            if running.contains(id) {
                continue;
            }
            let netns = self.netns_of(id).await.ok().flatten();
            let result = match cni.del_if_idle(id, netns.as_deref()).await {
                Err(e) if netns.is_some() => {
                    tracing::warn!(sandbox = %id, error = %e, "CNI DEL inside the sandbox failed; deleting its host side only");
                    cni.del_if_idle(id, None).await
                }
                other => other,
            };
            match result {
                Ok(true) => freed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "freeing a pod address; tried again later")
                }
            }
        }
        Ok(freed)
    }

    /// Under CNI, a running sandbox whose address is not recorded (its
    /// plumbing failed, or the agent died in the middle) has no network:
    /// it is shown as not running, so its pod gets a new one.
    pub(super) fn without_network_is_dead(&self, mut container: Container) -> Container {
        let Some(cni) = self.cni() else {
            return container;
        };
        let sandbox = container
            .labels
            .get(labels::CONTAINER_NAME)
            .map(String::as_str)
            == Some(labels::SANDBOX);
        let plumbed = cni
            .attachment(&container.id)
            .is_some_and(|a| a.result.is_some());
        let host_network = container
            .labels
            .get(labels::HOST_NETWORK)
            .map(String::as_str)
            == Some("true");
        if sandbox && !host_network && !plumbed && matches!(container.state, State::Running { .. })
        {
            container.state = State::Unknown("running without a pod network".into());
        }
        container
    }

    pub(super) async fn ensure_network(&self) -> Result<()> {
        let Some(network) = self.docker_network() else {
            return Ok(());
        };
        match self.docker.inspect_network(network, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(docker_error(e)),
        }
        let request = NetworkCreateRequest {
            name: network.to_string(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                labels::MANAGED.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Another agent on this engine created it meanwhile.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(docker_error(e)),
        }
    }

    /// Connects to `port` inside `sandbox` ([`Runtime::dial`](crate::Runtime::dial)).
    pub(super) async fn dial_in_sandbox(
        &self,
        sandbox: &Container,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        let found = self
            .docker
            .inspect_container(&sandbox.id, None)
            .await
            .map_err(docker_error)?;
        // The engine's handle on the sandbox's network namespace (a path
        // it bind-mounted), not /proc/PID: a PID means another process
        // once the sandbox is gone, or in another PID namespace.
        let namespace = found
            .network_settings
            .and_then(|n| n.sandbox_key)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                Error::Runtime(format!(
                    "sandbox {} has no network namespace: it is not running",
                    sandbox.name
                ))
            })?;
        match connect_in_namespace(&namespace, port).await {
            Ok(stream) => Ok(stream),
            // An agent that may not enter namespaces (not root) reaches
            // the pod's address on the pod network instead: servers on
            // the pod's loopback only are out of its reach.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && sandbox.ip.is_some() => {
                tracing::debug!(error = %e, "port-forward: cannot enter the pod's network namespace");
                crate::default_dial(sandbox, port).await
            }
            Err(e) => Err(Error::Runtime(format!(
                "failed to connect to localhost:{port} inside the pod's network namespace: {e}"
            ))),
        }
    }
}

/// Connects to `port` on the loopback of the network namespace at
/// `namespace` (a sandbox's), like the kubelet does for port forwarding:
/// from a thread of its own that enters the namespace and ends after the
/// connect, so that nothing else ever runs in the pod's namespace. The
/// socket stays in the namespace it was made in.
async fn connect_in_namespace(
    namespace: &str,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let namespace = std::fs::File::open(namespace)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("skiff-port-forward".into())
        .spawn(move || {
            let connected = rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&namespace),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(std::io::Error::from)
            .and_then(|()| {
                let to = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            });
            let _ = tx.send(connected);
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}
