//! Skiff's container runtime seam: what the node agent asks of whatever
//! runs its containers. It knows nothing of the cluster (no pods, no API):
//! sandboxes, containers, images, exec and logs, found again by labels.
//!
//! # Layout
//!
//! - [`Runtime`]: the trait, and its value types ([`ContainerSpec`],
//!   [`Container`], [`State`], ...).
//! - [`docker`]: the Docker Engine implementation (bollard). A pod's
//!   sandbox is a `pause` container that owns the network and IPC
//!   namespaces; the pod's containers join it. Its parts are in `docker/`
//!   (`images`, `sandbox`, `create`, `inspect`, `exec`, `network`).
//! - [`cni`]: the pod network through CNI plugins (Docker sandboxes made
//!   without a network, plumbed by bridge + host-local + portmap).
//! - [`process`]: host processes, for machines with no Docker engine (a
//!   shim per container keeps its pid, log and exit code on disk).
//! - [`fake`]: in memory, recording calls; for unit tests and simulated
//!   nodes.
//! - [`labels`]: the labels every object the agent creates carries, which
//!   is how a restarted agent finds its containers again.

pub mod cni;
pub mod docker;
pub mod fake;
pub mod labels;
pub mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;

pub use bollard;
pub use docker::DockerRuntime;
pub use fake::FakeRuntime;
pub use process::ProcessRuntime;

/// What can go wrong talking to a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container (or image) by that id or name.
    #[error("{0} not found")]
    NotFound(String),
    /// The image is not on the node and could not be pulled.
    #[error("pulling image {image:?}: {message}")]
    ImagePull {
        /// The image as the pod named it.
        image: String,
        /// Why the pull failed.
        message: String,
    },
    /// The image is not on the node and the pull policy is Never.
    #[error("image {0:?} is not present and the pull policy is Never")]
    ImageNeverPull(String),
    /// The runtime refused or failed the call.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// An exec did not finish in time.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// The runtime cannot do what the spec asks (a security setting the
    /// process runtime has no means for).
    #[error("{0}")]
    Unsupported(String),
    /// The pod network (CNI) could not be set up or torn down.
    #[error("pod network: {0}")]
    Network(String),
}

/// Results of runtime calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// When to pull an image (a container's `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time; a failed pull falls back to a local copy.
    Always,
    /// Pull only when the node has no copy.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// Kubernetes' rule: the policy named, else `Always` for `:latest` or
    /// untagged images and `IfNotPresent` otherwise.
    pub fn for_image(policy: &str, image: &str) -> Self {
        match policy {
            "Always" => Self::Always,
            "Never" => Self::Never,
            "IfNotPresent" => Self::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                if image.contains('@') || last.contains(':') && !last.ends_with(":latest") {
                    Self::IfNotPresent
                } else {
                    Self::Always
                }
            }
        }
    }
}

/// A directory (or file) of the host mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is on the host.
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// A pod sandbox: the holder of the pod's network and IPC namespaces.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// The runtime's name for it (unique on the node).
    pub name: String,
    /// The pod's hostname.
    pub hostname: String,
    /// Labels, including [`labels::MANAGED`].
    pub labels: BTreeMap<String, String>,
    /// Nameservers for the pod's resolv.conf (empty: the runtime's).
    pub dns_servers: Vec<String>,
    /// Search domains for the pod's resolv.conf.
    pub dns_search: Vec<String>,
    /// Resolver options (`ndots:5`).
    pub dns_options: Vec<String>,
    /// Host ports forwarded to the pod (containers' `hostPort`s).
    pub port_mappings: Vec<PortMapping>,
    /// Use the host's network namespace (`hostNetwork`): no address, DNS,
    /// hostname or ports of its own.
    pub host_network: bool,
    /// Use the host's PID namespace (`hostPID`).
    pub host_pid: bool,
    /// Use the host's IPC namespace (`hostIPC`).
    pub host_ipc: bool,
    /// Namespaced kernel parameters set in the pod's namespaces
    /// (`securityContext.sysctls`), name and value.
    pub sysctls: Vec<(String, String)>,
    /// Extra `/etc/hosts` entries (`hostAliases`): hostname and address.
    pub extra_hosts: Vec<(String, String)>,
}

/// A seccomp or AppArmor profile, as Kubernetes names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Profile {
    /// The runtime's default profile (Docker's `default` seccomp filter,
    /// `docker-default` AppArmor).
    #[default]
    RuntimeDefault,
    /// No profile.
    Unconfined,
    /// A profile of the node: for seccomp its JSON text (read by the
    /// agent from its seccomp directory), for AppArmor its loaded name.
    Localhost(String),
}

/// The Linux security settings of one container: Kubernetes'
/// `securityContext`, the container's fields over the pod's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// The process's uid (`runAsUser`); none: the image's user.
    pub user: Option<i64>,
    /// The process's gid (`runAsGroup`); none: the image's (or the
    /// user's) group.
    pub group: Option<i64>,
    /// Extra groups (`supplementalGroups` and `fsGroup`).
    pub supplemental_groups: Vec<i64>,
    /// Capabilities added to the runtime's default set.
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it (`ALL` for every one).
    pub cap_drop: Vec<String>,
    /// Every capability and device of the host (`privileged`).
    pub privileged: bool,
    /// The image's filesystem mounted read-only.
    pub read_only_root_filesystem: bool,
    /// `no_new_privs` (`allowPrivilegeEscalation: false`).
    pub no_new_privileges: bool,
    /// The seccomp profile.
    pub seccomp: Profile,
    /// The AppArmor profile.
    pub apparmor: Profile,
}

impl Security {
    /// Whether nothing is asked beyond the runtime's defaults.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A host port forwarded to a pod port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The host address to bind ("" for all).
    pub host_ip: String,
    /// The host port.
    pub host_port: u16,
    /// The pod's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// One container to create inside a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// The runtime's name for it (unique on the node).
    pub name: String,
    /// The image reference.
    pub image: String,
    /// Replaces the image's entrypoint (Kubernetes `command`).
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd (Kubernetes `args`).
    pub args: Option<Vec<String>>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// The process's working directory.
    pub working_dir: Option<String>,
    /// Host paths mounted in.
    pub mounts: Vec<Mount>,
    /// Labels, including [`labels::MANAGED`].
    pub labels: BTreeMap<String, String>,
    /// The sandbox whose namespaces it joins.
    pub sandbox_id: String,
    /// Share the sandbox's PID namespace too (`shareProcessNamespace`).
    pub share_pid: bool,
    /// Use the host's PID namespace (`hostPID`).
    pub host_pid: bool,
    /// Use the host's IPC namespace (`hostIPC`) instead of the sandbox's.
    pub host_ipc: bool,
    /// Its user, groups, capabilities and confinement.
    pub security: Security,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// Relative CPU weight (from the CPU request).
    pub cpu_shares: Option<i64>,
    /// Keep its standard input open for `attach` (Kubernetes `stdin`).
    pub stdin: bool,
    /// Close its standard input after the first attach ends
    /// (`stdinOnce`).
    pub stdin_once: bool,
    /// Give its process a terminal (`tty`).
    pub tty: bool,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Created, never started.
    Created,
    /// Running since `started_at`.
    Running {
        /// When its process started.
        started_at: Option<SystemTime>,
    },
    /// Its process ended.
    Exited {
        /// The exit code (128 + signal for a signal).
        exit_code: i64,
        /// When its process started.
        started_at: Option<SystemTime>,
        /// When it ended.
        finished_at: Option<SystemTime>,
        /// Killed for exceeding its memory limit.
        oom_killed: bool,
    },
    /// The runtime reports something else (paused, dead, removing).
    Unknown(String),
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime's id.
    pub id: String,
    /// The runtime's name.
    pub name: String,
    /// The image as it was asked for.
    pub image: String,
    /// The image's id (digest).
    pub image_id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its state.
    pub state: State,
    /// Its IP address on the pod network (sandboxes only).
    pub ip: Option<String>,
    /// When it was created (seconds since the epoch).
    pub created: i64,
}

impl Container {
    /// The value of one of its labels, or "".
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// A container's resource usage counters at one moment (a rate is the
/// difference of two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used since it started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory working set in bytes: what it uses less the file cache the
    /// kernel can drop (what the kubelet and metrics-server report).
    pub memory_bytes: u64,
}

/// What an exec printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code.
    pub exit_code: i64,
    /// What it wrote to stdout.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Which part of a container's log to read.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep the stream open for new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Only lines written at or after this time (seconds since the epoch).
    pub since: Option<i64>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
}

/// A container's log, stdout and stderr interleaved, in chunks.
pub type LogStream = BoxStream<'static, Result<Bytes>>;

/// What the runtime says about itself and its host, for the Node object.
#[derive(Debug, Clone, Default)]
pub struct RuntimeInfo {
    /// `docker://20.10.24`, `fake://0`.
    pub version: String,
    /// Host kernel version.
    pub kernel_version: String,
    /// Host operating system, as the runtime names it.
    pub os_image: String,
    /// Host CPUs.
    pub cpus: i64,
    /// Host memory in bytes.
    pub memory_bytes: i64,
}

/// The operations the node agent needs from a container runtime. Every
/// object it creates carries the labels given; `list` finds them again.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The scheme of container ids in pod status: `docker`, `process`,
    /// `fake` (as in `docker://<id>`).
    fn scheme(&self) -> &'static str;

    /// The runtime's version and its host's resources.
    async fn info(&self) -> Result<RuntimeInfo>;

    /// The host's address on the pods' network (the bridge gateway),
    /// where node services such as the cluster DNS listen for pods; none
    /// when pods share the host's network.
    async fn pod_gateway(&self) -> Result<Option<std::net::IpAddr>> {
        Ok(None)
    }

    /// Makes `image` present according to `policy`; returns its id.
    ///
    /// # Errors
    /// [`Error::ImagePull`] or [`Error::ImageNeverPull`] when it is absent
    /// and cannot be had.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<String>;

    /// The user an image runs as when no uid is given (its `USER`:
    /// `"1000"`, `"nobody"`, `"1000:100"`; empty for root); for a
    /// runtime without images, the user its processes run as.
    async fn image_user(&self, image: &str) -> Result<String>;

    /// Creates and starts a pod sandbox; returns its id.
    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String>;

    /// Creates a container in a sandbox (not started); returns its id.
    async fn create(&self, spec: &ContainerSpec) -> Result<String>;

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<()>;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`. Stopping a
    /// stopped container is not an error.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;

    /// Removes a container (stopped or not). Removing a missing container
    /// is not an error.
    async fn remove(&self, id: &str) -> Result<()>;

    /// Every container (sandboxes included) this node's agent created,
    /// running or not; only those of one pod when `pod_uid` is given.
    async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<Container>>;

    /// Runs a command in a running container and waits for it, at most
    /// `timeout`.
    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput>;

    /// A container's log.
    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream>;

    /// Starts a command in a running container with its output and error
    /// attached, its standard input too when `stdin` (else it reads
    /// nothing), and a terminal when `tty`, for interactive use.
    ///
    /// # Errors
    /// The container is not running, or the runtime cannot attach.
    async fn exec_attach(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<Attached> {
        let _ = (id, command, tty, stdin);
        Err(Error::Runtime(format!(
            "the {} runtime cannot attach to commands (exec -i/-t); run them without",
            self.scheme()
        )))
    }

    /// Attaches to a running container's own process (`kubectl attach`):
    /// its output as it comes, and its standard input when `stdin` (the
    /// container must keep it open, Kubernetes' `stdin: true`).
    ///
    /// # Errors
    /// The container is not running, or the runtime cannot attach.
    async fn attach(&self, id: &str, stdin: bool) -> Result<Attached> {
        let _ = (id, stdin);
        Err(Error::Runtime(format!(
            "the {} runtime cannot attach to containers; read their logs",
            self.scheme()
        )))
    }

    /// Resizes the terminal of a container (see [`Runtime::attach`]).
    ///
    /// # Errors
    /// The container is gone.
    async fn resize(&self, id: &str, width: u16, height: u16) -> Result<()> {
        let _ = (id, width, height);
        Ok(())
    }

    /// Resizes the terminal of an attached command.
    ///
    /// # Errors
    /// The command is gone.
    async fn exec_resize(&self, exec: &str, width: u16, height: u16) -> Result<()> {
        let _ = (exec, width, height);
        Ok(())
    }

    /// A running container's resource usage counters.
    ///
    /// # Errors
    /// NotFound; the runtime could not read them.
    async fn stats(&self, id: &str) -> Result<ContainerStats>;

    /// A TCP connection to `port` of a pod, from within its network (what
    /// `kubectl port-forward` reaches). This default connects to the
    /// sandbox's IP, or to the host's loopback when pods share the host's
    /// network.
    ///
    /// # Errors
    /// [`Error::Runtime`] naming the address when nothing accepts.
    async fn dial(&self, sandbox: &Container, port: u16) -> Result<tokio::net::TcpStream> {
        default_dial(sandbox, port).await
    }

    /// The exit code of an attached command that ended.
    ///
    /// # Errors
    /// The runtime does not know it.
    async fn exec_exit_code(&self, exec: &str) -> Result<i64> {
        let _ = exec;
        Err(Error::Runtime("no attached command".into()))
    }
}

/// [`Runtime::dial`]'s default: the sandbox's IP, or the host's loopback
/// when it has none (the host-process runtime: its pods are on the host's
/// network).
///
/// # Errors
/// [`Error::Runtime`] naming the address when nothing accepts.
pub async fn default_dial(sandbox: &Container, port: u16) -> Result<tokio::net::TcpStream> {
    let ip = match sandbox.ip.as_deref() {
        Some(ip) if !ip.is_empty() => ip.parse().map_err(|_| {
            Error::Runtime(format!("sandbox {} has no valid IP: {ip:?}", sandbox.name))
        })?,
        _ => std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
    };
    let connecting = tokio::net::TcpStream::connect((ip, port));
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(connected) => {
            connected.map_err(|e| Error::Runtime(format!("failed to connect to {ip}:{port}: {e}")))
        }
        Err(_) => Err(Error::Runtime(format!(
            "failed to connect to {ip}:{port}: no answer within 5s"
        ))),
    }
}

/// Output of an attached command: `(true, bytes)` for stderr.
pub type AttachedOutput =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<(bool, bytes::Bytes)>> + Send>>;

/// An attached command (see [`Runtime::exec_attach`]).
pub struct Attached {
    /// The runtime's id of the command (for resize and its exit code).
    pub exec: String,
    /// Its standard input.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// Its output, stderr and stdout as they come (one stream with a
    /// terminal).
    pub output: AttachedOutput,
}
