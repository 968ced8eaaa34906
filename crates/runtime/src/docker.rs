//! The Docker Engine runtime (bollard).
//!
//! A pod sandbox is a container of Skiff's own `pause` image (built here
//! from `FROM scratch` plus a freestanding static binary, since no
//! registry is assumed); it owns the pod's IP and its IPC namespace
//! (`shareable`). Its network is either Skiff's Docker bridge network
//! (one machine) or none, plumbed afterwards by the CNI plugins
//! ([`crate::cni`]; pods get addresses from the node's podCIDR and reach
//! other nodes' pods). App containers join it
//! with `network_mode`/`ipc_mode` `container:<sandbox>`, so they share one
//! IP, localhost and System V IPC.
//!
//! `list` is the agent's relist: one `GET /containers/json` filtered by
//! labels, plus an inspect only for containers whose state changed since
//! the last call (containers move created → running → exited once; a
//! restart is a new container), so polling every second stays cheap.
//!
//! # Layout
//!
//! The runtime's state, the engine's errors, the sandbox image and the
//! [`Runtime`] implementation are here; the rest sits in files of its own
//! under `docker/`:
//!
//! - `images`: finding and pulling images.
//! - `sandbox`: the pause container of a pod, and its CNI plumbing.
//! - `create`: a container's creation: mounts, namespaces, resources,
//!   user and security options.
//! - `inspect`: listing and inspecting containers (the relist).
//! - `exec`: commands in containers, and attaching to them.
//! - `network`: the pod network: the Docker network, CNI attachments and
//!   their clean-up, and connecting inside a sandbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::{
    Container, ContainerSpec, Error, ExecOutput, LogOptions, LogStream, PullPolicy, Result,
    Runtime, RuntimeInfo, SandboxSpec, labels,
};

/// The sandbox program, compiled by build.rs.
const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

mod create;
mod exec;
mod images;
mod inspect;
mod network;
mod sandbox;

/// Which network pod sandboxes are on.
#[derive(Debug, Clone)]
pub enum PodNetwork {
    /// A Docker bridge network of this name (made if missing).
    Docker(String),
    /// No Docker network: the CNI plugins plumb each sandbox.
    Cni(Arc<crate::cni::Cni>),
}

/// A Docker Engine, as one node's runtime.
pub struct DockerRuntime {
    /// The engine's API, at the version negotiated with it.
    docker: Docker,
    /// The node whose containers these are ([`labels::NODE`]).
    node: String,
    /// Its cluster ([`labels::CLUSTER`]; empty: not said).
    cluster: String,
    /// The network sandboxes are on.
    network: PodNetwork,
    /// The sandbox image's tag (content-addressed: one per pause build).
    pause_image: String,
    /// Inspected containers by id, with the summary state they were
    /// inspected in: re-inspected only when that changes.
    inspected: Mutex<HashMap<String, (String, Container)>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("node", &self.node)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

fn docker_error(e: DockerError) -> Error {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::NotFound(message),
        other => Error::Runtime(other.to_string()),
    }
}

fn is_status(e: &DockerError, code: u16) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// A tar archive of `files` (path, mode, content), for a build context.
fn tar_of(files: &[(&str, u32, &[u8])]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *content)
            .map_err(|e| Error::Runtime(format!("building an image context: {e}")))?;
    }
    builder
        .into_inner()
        .map_err(|e| Error::Runtime(format!("building an image context: {e}")))
}

/// The sandbox image's tag: content-addressed, one per build of the pause
/// program. The runtime builds it on first use.
pub fn pause_image() -> String {
    let digest = PAUSE.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("skiff/pause:{digest:016x}")
}

/// Connects to the local engine (`DOCKER_HOST` or the default socket) at
/// the API version it speaks: bollard asks for a newer version than older
/// engines (20.10 speaks 1.41) accept, so it is negotiated.
///
/// # Errors
/// The engine does not answer.
pub async fn engine() -> Result<Docker> {
    Docker::connect_with_local_defaults()
        .map_err(docker_error)?
        .negotiate_version()
        .await
        .map_err(docker_error)
}

/// Builds an image tagged `tag` from a context of `files` (path, mode,
/// content; it must include a `Dockerfile`), labelled
/// [`labels::MANAGED`]. Tests build their `FROM scratch` images with it.
///
/// # Errors
/// The build failed; the message is the engine's.
pub async fn build_image(docker: &Docker, tag: &str, files: &[(&str, u32, &[u8])]) -> Result<()> {
    let context = tar_of(files)?;
    let options = BuildImageOptionsBuilder::default()
        .t(tag)
        .rm(true)
        .labels(&HashMap::from([(labels::MANAGED, "true")]))
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(step) = stream.next().await {
        let step = step.map_err(docker_error)?;
        if let Some(detail) = step.error_detail {
            return Err(Error::Runtime(format!(
                "building image {tag}: {}",
                detail.message.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Whether the engine has an image by that reference.
///
/// # Errors
/// The engine does not answer.
pub async fn image_exists(docker: &Docker, image: &str) -> Result<bool> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_status(&e, 404) => Ok(false),
        Err(e) => Err(docker_error(e)),
    }
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket),
    /// negotiates the API version (older engines refuse newer clients),
    /// and makes sure the pod network and the sandbox image exist.
    ///
    /// # Errors
    /// The engine does not answer, or refuses to create either.
    pub async fn connect(node: &str, network: PodNetwork) -> Result<Self> {
        let docker = engine().await?;
        let runtime = Self {
            docker,
            node: node.to_string(),
            cluster: String::new(),
            network,
            pause_image: pause_image(),
            inspected: Mutex::default(),
        };
        runtime.ensure_network().await?;
        let pause = runtime.pause_image.clone();
        if runtime.image_id(&pause).await?.is_none() {
            let dockerfile = b"FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n";
            let files: [(&str, u32, &[u8]); 2] =
                [("Dockerfile", 0o644, dockerfile), ("pause", 0o755, PAUSE)];
            build_image(&runtime.docker, &pause, &files).await?;
        }
        Ok(runtime)
    }

    /// Makes this the runtime of node `node` of cluster `cluster`: its
    /// containers are labelled with it, and containers of another cluster's
    /// node of the same name (another agent on this engine) are never
    /// taken for its own. Containers with no cluster label (made before
    /// it was recorded) are adopted.
    ///
    /// # Errors
    /// Another cluster's node of this name has containers on this engine:
    /// two agents would each remove the other's pods.
    pub async fn join_cluster(&mut self, cluster: &str) -> Result<()> {
        self.cluster = cluster.to_string();
        let summaries = self.summaries(None).await?;
        let other = summaries.iter().find_map(|c| {
            c.labels
                .as_ref()?
                .get(labels::CLUSTER)
                .filter(|other| !other.is_empty() && *other != cluster)
                .cloned()
        });
        match other {
            Some(other) => Err(Error::Runtime(format!(
                "this Docker engine runs containers of a node named {:?} of another cluster ({other}): two agents of one node name would remove each other's pods. Give this node another name (--node-name), or stop that cluster's agent and remove its containers (docker rm -f $(docker ps -aq --filter label={}={}))",
                self.node,
                labels::NODE,
                self.node
            ))),
            None => Ok(()),
        }
    }

    /// The engine's client, for what the trait does not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn node_labels(&self, mut labels: BTreeMap<String, String>) -> HashMap<String, String> {
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::NODE.into(), self.node.clone());
        if !self.cluster.is_empty() {
            labels.insert(labels::CLUSTER.into(), self.cluster.clone());
        }
        labels.into_iter().collect()
    }

    /// Creates a container named `name`; returns its id.
    async fn create_named(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_error)?;
        Ok(created.id)
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn scheme(&self) -> &'static str {
        "docker"
    }

    async fn info(&self) -> Result<RuntimeInfo> {
        let version = self.docker.version().await.map_err(docker_error)?;
        let info = self.docker.info().await.map_err(docker_error)?;
        Ok(RuntimeInfo {
            version: format!("docker://{}", version.version.unwrap_or_default()),
            kernel_version: info.kernel_version.unwrap_or_default(),
            os_image: info.operating_system.unwrap_or_default(),
            cpus: info.ncpu.unwrap_or_default(),
            memory_bytes: info.mem_total.unwrap_or_default(),
        })
    }

    async fn pod_gateway(&self) -> Result<Option<std::net::IpAddr>> {
        let name = match &self.network {
            PodNetwork::Docker(name) => name,
            PodNetwork::Cni(cni) => {
                return Ok(cni.network().map(|n| n.gateway().into()));
            }
        };
        let network = self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(docker_error)?;
        Ok(network
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.gateway?.parse().ok())
            .find(std::net::IpAddr::is_ipv4))
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<String> {
        let local = self.image_id(image).await?;
        match (policy, local) {
            (PullPolicy::IfNotPresent, Some(id)) => Ok(id),
            (PullPolicy::Never, Some(id)) => Ok(id),
            (PullPolicy::Never, None) => Err(Error::ImageNeverPull(image.to_string())),
            (PullPolicy::Always, local) => match (self.pull(image).await, local) {
                (Ok(()), _) => self
                    .image_id(image)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("image {image:?} after pulling it"))),
                // No registry reachable, but a copy is here: run it, as a
                // node that cannot reach its registry should.
                (Err(e), Some(id)) => {
                    tracing::warn!(%image, error = %e, "pull failed; using the local copy");
                    Ok(id)
                }
                (Err(e), None) => Err(e),
            },
            (PullPolicy::IfNotPresent, None) => {
                self.pull(image).await?;
                self.image_id(image)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("image {image:?} after pulling it")))
            }
        }
    }

    async fn image_user(&self, image: &str) -> Result<String> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(found.config.and_then(|c| c.user).unwrap_or_default()),
            Err(e) if is_status(&e, 404) => Err(Error::NotFound(format!("image {image:?}"))),
            Err(e) => Err(docker_error(e)),
        }
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        self.create_sandbox(spec).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.create_container(spec).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(docker_error)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        // A stopped sandbox gives its address back (as the kubelet's
        // StopPodSandbox tears down its network); a DEL that fails is
        // retried by `reconcile_network`, and the sandbox stops anyway.
        if let Err(e) = self.detach(id).await {
            tracing::warn!(sandbox = %id, error = %e, "freeing a pod address; tried again later");
        }
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        // The engine answers once the container is gone: allow the whole
        // grace period (bollard's default request timeout is 2 minutes).
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + Duration::from_secs(30));
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(docker_error(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        if let Err(e) = self.detach(id).await {
            tracing::warn!(sandbox = %id, error = %e, "freeing a pod address; tried again later");
        }
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) => {}
            // 409: removal already in progress.
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(docker_error(e)),
        }
        if let Ok(mut cache) = self.inspected.lock() {
            cache.remove(id);
        }
        Ok(())
    }

    async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<Container>> {
        self.list_containers(pod_uid).await
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        self.exec_output(id, command, timeout).await
    }

    async fn exec_attach(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<crate::Attached> {
        self.exec_attached(id, command, tty, stdin).await
    }

    async fn attach(&self, id: &str, stdin: bool) -> Result<crate::Attached> {
        self.attach_container(id, stdin).await
    }

    async fn resize(&self, id: &str, width: u16, height: u16) -> Result<()> {
        let options = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::new()
            .w(i32::from(width))
            .h(i32::from(height))
            .build();
        self.docker
            .resize_container_tty(id, options)
            .await
            .map_err(docker_error)
    }

    async fn exec_resize(&self, exec: &str, width: u16, height: u16) -> Result<()> {
        let options = bollard::query_parameters::ResizeExecOptionsBuilder::new()
            .w(i32::from(width))
            .h(i32::from(height))
            .build();
        self.docker
            .resize_exec(exec, options)
            .await
            .map_err(docker_error)
    }

    async fn exec_exit_code(&self, exec: &str) -> Result<i64> {
        // The output may end a moment before the engine records the exit.
        for _ in 0..50 {
            let inspected = self.docker.inspect_exec(exec).await.map_err(docker_error)?;
            if inspected.running != Some(true) {
                return Ok(inspected.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::Runtime(format!(
            "exec {exec} still runs after its output ended"
        )))
    }

    async fn stats(&self, id: &str) -> Result<crate::ContainerStats> {
        let options = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let sample = self
            .docker
            .stats(id, Some(options))
            .next()
            .await
            .ok_or_else(|| Error::Runtime(format!("Docker sent no stats for {id}")))?
            .map_err(docker_error)?;
        let cpu_nanos = sample
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = sample.memory_stats.unwrap_or_default();
        // The working set, as the kubelet computes it: usage less inactive
        // file pages (cgroup v2 `inactive_file`, v1 `total_inactive_file`).
        let inactive = memory.stats.as_ref().and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
                .copied()
        });
        let usage = memory.usage.unwrap_or(0);
        Ok(crate::ContainerStats {
            cpu_nanos,
            memory_bytes: usage.saturating_sub(inactive.unwrap_or(0)),
        })
    }

    async fn dial(&self, sandbox: &Container, port: u16) -> Result<tokio::net::TcpStream> {
        self.dial_in_sandbox(sandbox, port).await
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream> {
        // Fail now (NotFound) rather than as the stream's first item.
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(docker_error)?;
        let mut builder = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(options.follow)
            .timestamps(options.timestamps);
        if let Some(tail) = options.tail {
            builder = builder.tail(&tail.to_string());
        }
        if let Some(since) = options.since {
            builder = builder.since(since.clamp(0, i64::from(i32::MAX)) as i32);
        }
        let stream = self
            .docker
            .logs(id, Some(builder.build()))
            .map_ok(|chunk| chunk.into_bytes())
            .map_err(docker_error);
        Ok(stream.boxed())
    }
}

#[cfg(test)]
mod tests;
