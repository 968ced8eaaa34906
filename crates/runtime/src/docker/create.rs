//! A container's creation: its mounts, the sandbox's namespaces it
//! joins, its resources, user and groups, capabilities and security
//! options.

use bollard::models::{ContainerCreateBody, HostConfig};

use super::DockerRuntime;
use crate::{ContainerSpec, Result, Runtime as _};

/// Docker's `--security-opt` values for a container's confinement.
pub(super) fn security_options(security: &crate::Security) -> Vec<String> {
    use crate::Profile;
    let mut options = Vec::new();
    if security.no_new_privileges {
        options.push("no-new-privileges".to_string());
    }
    match &security.seccomp {
        Profile::RuntimeDefault => {}
        Profile::Unconfined => options.push("seccomp=unconfined".into()),
        Profile::Localhost(json) => options.push(format!("seccomp={json}")),
    }
    match &security.apparmor {
        Profile::RuntimeDefault => {}
        Profile::Unconfined => options.push("apparmor=unconfined".into()),
        Profile::Localhost(name) => options.push(format!("apparmor={name}")),
    }
    options
}

impl DockerRuntime {
    /// Creates a pod's container ([`Runtime::create`](crate::Runtime::create)).
    pub(super) async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let sandbox = format!("container:{}", spec.sandbox_id);
        let binds = spec
            .mounts
            .iter()
            .map(|m| {
                let mode = if m.read_only { ":ro" } else { "" };
                format!("{}:{}{mode}", m.host_path.display(), m.container_path)
            })
            .collect();
        let security = &spec.security;
        let pid_mode = if spec.host_pid {
            Some("host".to_string())
        } else {
            spec.share_pid.then(|| sandbox.clone())
        };
        let host_config = HostConfig {
            network_mode: Some(sandbox.clone()),
            ipc_mode: Some(if spec.host_ipc {
                "host".to_string()
            } else {
                sandbox
            }),
            pid_mode,
            binds: Some(binds),
            memory: spec.memory_limit,
            nano_cpus: spec.nano_cpus,
            cpu_shares: spec.cpu_shares,
            group_add: (!security.supplemental_groups.is_empty()).then(|| {
                security
                    .supplemental_groups
                    .iter()
                    .map(i64::to_string)
                    .collect()
            }),
            cap_add: (!security.cap_add.is_empty()).then(|| security.cap_add.clone()),
            cap_drop: (!security.cap_drop.is_empty()).then(|| security.cap_drop.clone()),
            privileged: security.privileged.then_some(true),
            readonly_rootfs: security.read_only_root_filesystem.then_some(true),
            security_opt: Some(security_options(security)),
            ..Default::default()
        };
        let user = match (security.user, security.group) {
            (None, None) => None,
            (Some(uid), None) => Some(uid.to_string()),
            (uid, Some(gid)) => {
                // A group alone keeps the image's user.
                let uid = match uid {
                    Some(uid) => uid.to_string(),
                    None => {
                        let user = self.image_user(&spec.image).await?;
                        match user.split_once(':').map_or(user.as_str(), |(u, _)| u) {
                            "" => "0".to_string(),
                            u => u.to_string(),
                        }
                    }
                };
                Some(format!("{uid}:{gid}"))
            }
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user,
            entrypoint: spec.command.clone(),
            cmd: spec.args.clone(),
            env: Some(spec.env.clone()),
            working_dir: spec.working_dir.clone(),
            labels: Some(self.node_labels(spec.labels.clone())),
            host_config: Some(host_config),
            open_stdin: Some(spec.stdin),
            attach_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin_once),
            tty: Some(spec.tty),
            ..Default::default()
        };
        self.create_named(&spec.name, body).await
    }
}
