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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::{StreamExt as _, TryStreamExt as _};

use crate::{
    Container, ContainerSpec, Error, ExecOutput, LogOptions, LogStream, PullPolicy, Result,
    Runtime, RuntimeInfo, SandboxSpec, State, labels,
};

/// The sandbox program, compiled by build.rs.
const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// How long one image pull may take before the pod is told it failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The Docker time format (RFC 3339 with nanoseconds); the zero time
/// (`0001-01-01T00:00:00Z`, "never") is `None`.
fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let s = s?;
    if s.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

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

/// Docker's `--security-opt` values for a container's confinement.
fn security_options(security: &crate::Security) -> Vec<String> {
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

    /// Every container of this node (of one pod, with `pod_uid`), running
    /// or not, as the engine lists them.
    async fn summaries(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>> {
        let mut wanted = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={}", labels::NODE, self.node),
        ];
        if let Some(uid) = pod_uid {
            wanted.push(format!("{}={uid}", labels::POD_UID));
        }
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error)
    }

    /// The engine's client, for what the trait does not cover.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The Docker network's name, when sandboxes are on one.
    fn docker_network(&self) -> Option<&str> {
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
    async fn netns_of(&self, id: &str) -> Result<Option<String>> {
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
    async fn detach(&self, id: &str) -> Result<()> {
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
    fn without_network_is_dead(&self, mut container: Container) -> Container {
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

    async fn ensure_network(&self) -> Result<()> {
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

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(Some(found.id.unwrap_or_default())),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(docker_error(e)),
        }
    }

    async fn pull(&self, image: &str) -> Result<()> {
        // A digest names the image whole; else repository and tag.
        let options = if image.contains('@') {
            CreateImageOptionsBuilder::default()
                .from_image(image)
                .build()
        } else {
            let (repo, tag) = match image.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag),
                _ => (image, "latest"),
            };
            CreateImageOptionsBuilder::default()
                .from_image(repo)
                .tag(tag)
                .build()
        };
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(step) = stream.next().await {
                let step = step.map_err(|e| e.to_string())?;
                if let Some(detail) = step.error_detail {
                    return Err(detail.message.unwrap_or_default());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::ImagePull {
                image: image.to_string(),
                message,
            }),
            Err(_) => Err(Error::ImagePull {
                image: image.to_string(),
                message: format!("no answer from the registry in {PULL_TIMEOUT:?}"),
            }),
        }
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

    async fn inspect(&self, id: &str, ip: Option<String>) -> Result<Container> {
        let found = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker_error)?;
        let config = found.config.unwrap_or_default();
        let state = found.state.unwrap_or_default();
        let started_at = parse_time(state.started_at.as_deref());
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        let state = match status.as_str() {
            "created" => State::Created,
            "running" => State::Running { started_at },
            "exited" => State::Exited {
                exit_code: state.exit_code.unwrap_or_default(),
                started_at,
                finished_at: parse_time(state.finished_at.as_deref()),
                oom_killed: state.oom_killed.unwrap_or_default(),
            },
            other => State::Unknown(other.to_string()),
        };
        Ok(Container {
            id: found.id.unwrap_or_default(),
            name: found
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            image_id: found.image.unwrap_or_default(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            state,
            ip,
            created: found
                .created
                .and_then(|c| parse_time(Some(&c.to_string())))
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64),
        })
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

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
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
        let summaries = self.summaries(pod_uid).await?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut seen = HashMap::new();
        for summary in summaries {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            let theirs = summary
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::CLUSTER))
                .is_some_and(|c| !c.is_empty() && !self.cluster.is_empty() && *c != self.cluster);
            if theirs {
                continue;
            }
            let state = summary
                .state
                .unwrap_or(ContainerSummaryStateEnum::EMPTY)
                .to_string();
            let ip = match &self.network {
                PodNetwork::Docker(name) => summary
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(name))
                    .and_then(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty()),
                PodNetwork::Cni(cni) => (state == "running")
                    .then(|| cni.attachment(&id).and_then(|a| a.ip()))
                    .flatten()
                    .map(|ip| ip.to_string()),
            };
            let cached = self
                .inspected
                .lock()
                .ok()
                .and_then(|c| c.get(&id).cloned())
                .filter(|(s, c)| *s == state && c.ip == ip);
            let container = match cached {
                Some((_, c)) => c,
                None => match self.inspect(&id, ip).await {
                    Ok(c) => c,
                    // Removed between the list and the inspect.
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                },
            };
            seen.insert(id, (state, container.clone()));
            out.push(self.without_network_is_dead(container));
        }
        if let Ok(mut cache) = self.inspected.lock() {
            if pod_uid.is_none() {
                // A full list: forget containers that are gone.
                *cache = seen;
            } else {
                cache.extend(seen);
            }
        }
        Ok(out)
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        let run = async {
            let created = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(docker_error)?;
            let mut out = ExecOutput::default();
            let started = self
                .docker
                .start_exec(&created.id, Some(StartExecOptions::default()))
                .await
                .map_err(docker_error)?;
            if let StartExecResults::Attached { mut output, .. } = started {
                while let Some(chunk) = output.next().await {
                    match chunk.map_err(docker_error)? {
                        bollard::container::LogOutput::StdErr { message } => {
                            out.stderr.extend_from_slice(&message)
                        }
                        other => out.stdout.extend_from_slice(&other.into_bytes()),
                    }
                }
            }
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(docker_error)?;
            out.exit_code = inspected.exit_code.unwrap_or(-1);
            Ok(out)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn exec_attach(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<crate::Attached> {
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_error)?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    tty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(docker_error)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(Error::Runtime(
                "the engine did not attach the command".into(),
            ));
        };
        let output = output
            .map_ok(|chunk| match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            })
            .map_err(docker_error);
        Ok(crate::Attached {
            exec: created.id,
            input,
            output: Box::pin(output),
        })
    }

    async fn attach(&self, id: &str, stdin: bool) -> Result<crate::Attached> {
        let options = bollard::query_parameters::AttachContainerOptionsBuilder::new()
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(docker_error)?;
        let output = attached
            .output
            .map_ok(|chunk| match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            })
            .map_err(docker_error);
        Ok(crate::Attached {
            exec: id.to_string(),
            input: attached.input,
            output: Box::pin(output),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement_becomes_security_options() {
        use crate::{Profile, Security};
        assert!(security_options(&Security::default()).is_empty());
        let asked = Security {
            no_new_privileges: true,
            seccomp: Profile::Localhost(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#.into()),
            apparmor: Profile::Unconfined,
            ..Default::default()
        };
        assert_eq!(
            security_options(&asked),
            [
                "no-new-privileges",
                r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#,
                "apparmor=unconfined"
            ]
        );
    }

    #[test]
    fn docker_times_parse_and_the_zero_time_is_none() {
        let t = parse_time(Some("2026-11-26T14:12:00.123456789Z")).expect("parses");
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_795_702_320);
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_time(None), None);
    }

    #[test]
    fn build_contexts_are_tar_archives_with_modes() {
        let bytes = tar_of(&[
            ("Dockerfile", 0o644, b"FROM scratch\n"),
            ("pause", 0o755, PAUSE),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [("Dockerfile".into(), 0o644), ("pause".into(), 0o755)]
        );
    }

    #[test]
    fn the_pause_program_is_a_static_executable() {
        assert_eq!(&PAUSE[..4], b"\x7fELF");
    }
}
