//! A pod's sandbox: the pause container that owns the pod's network and
//! IPC namespaces (its DNS, host ports, sysctls and /etc/hosts entries),
//! plumbed by the CNI plugins when there is no Docker network.

use bollard::models::{ContainerCreateBody, HostConfig};

use super::DockerRuntime;
use crate::{Error, Result, Runtime as _, SandboxSpec, labels};

/// Docker's port bindings for a sandbox's host ports.
fn port_bindings(mappings: &[crate::PortMapping]) -> bollard::models::PortMap {
    let mut map = bollard::models::PortMap::new();
    for m in mappings {
        map.entry(format!("{}/{}", m.container_port, m.protocol))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(bollard::models::PortBinding {
                host_ip: (!m.host_ip.is_empty()).then(|| m.host_ip.clone()),
                host_port: Some(m.host_port.to_string()),
            });
    }
    map
}

impl DockerRuntime {
    /// Makes and starts a pod's sandbox ([`Runtime::run_sandbox`](crate::Runtime::run_sandbox)).
    pub(super) async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        // A host-network pod has the host's addresses, resolver, name and
        // ports: Docker refuses its own for it, and there is nothing to
        // plumb.
        let own_network = !spec.host_network;
        let cni = self.cni().filter(|_| own_network);
        // Docker publishes host ports on its own network; under CNI,
        // portmap does.
        let docker_ports = cni.is_none() && own_network && !spec.port_mappings.is_empty();
        let listed = |v: &Vec<String>| (own_network && !v.is_empty()).then(|| v.clone());
        let host_config = HostConfig {
            network_mode: Some(if spec.host_network {
                "host".to_string()
            } else {
                self.docker_network()
                    .map_or_else(|| "none".to_string(), str::to_string)
            }),
            ipc_mode: Some(if spec.host_ipc { "host" } else { "shareable" }.into()),
            pid_mode: spec.host_pid.then(|| "host".into()),
            dns: listed(&spec.dns_servers),
            dns_search: listed(&spec.dns_search),
            dns_options: listed(&spec.dns_options),
            port_bindings: docker_ports.then(|| port_bindings(&spec.port_mappings)),
            sysctls: (!spec.sysctls.is_empty()).then(|| spec.sysctls.iter().cloned().collect()),
            // The pod's containers share the sandbox's /etc/hosts.
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| {
                spec.extra_hosts
                    .iter()
                    .map(|(name, ip)| format!("{name}:{ip}"))
                    .collect()
            }),
            // The pause process needs nothing.
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ..Default::default()
        };
        let mut labels = spec.labels.clone();
        if spec.host_network {
            labels.insert(labels::HOST_NETWORK.into(), "true".into());
        }
        let body = ContainerCreateBody {
            exposed_ports: docker_ports.then(|| {
                spec.port_mappings
                    .iter()
                    .map(|m| format!("{}/{}", m.container_port, m.protocol))
                    .collect()
            }),
            image: Some(self.pause_image.clone()),
            hostname: (own_network && !spec.hostname.is_empty()).then(|| spec.hostname.clone()),
            labels: Some(self.node_labels(labels)),
            host_config: Some(host_config),
            ..Default::default()
        };
        let id = self.create_named(&spec.name, body).await?;
        self.start(&id).await?;
        let Some(cni) = cni else { return Ok(id) };
        let plumbed = async {
            let netns = self.netns_of(&id).await?.ok_or_else(|| {
                Error::Runtime(format!("sandbox {} stopped as it started", spec.name))
            })?;
            let label = |k: &str| spec.labels.get(k).map_or("", String::as_str);
            let args = format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={}",
                label(labels::POD_NAMESPACE),
                label(labels::POD_NAME),
                label(labels::POD_UID),
            );
            cni.add(&id, &netns, &args, &spec.port_mappings).await
        }
        .await;
        match plumbed {
            Ok(ip) => {
                tracing::debug!(sandbox = %spec.name, %ip, "sandbox on the pod network");
                Ok(id)
            }
            Err(e) => {
                // No half-made sandbox stays: the next sync makes a new one.
                if let Err(rm) = self.remove(&id).await {
                    tracing::warn!(sandbox = %spec.name, error = %rm, "removing a sandbox whose network failed");
                }
                Err(e)
            }
        }
    }
}
