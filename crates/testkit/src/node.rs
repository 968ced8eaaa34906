//! A real agent on this machine's Docker engine (or the process runtime)
//! and the busybox image its pods run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::process::ChildGuard;
use crate::{skiff_agent_binary, skiff_binary};

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

/// The periods tests shorten to seconds (a flag of the caller's own wins).
const TEST_PERIODS: [&str; 6] = [
    "--crash-backoff-secs=1",
    "--crash-backoff-max-secs=4",
    "--lease-renew-secs=1",
    "--status-every-secs=1",
    "--resync-secs=1",
    "--stats-interval-secs=1",
];

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
    /// Run by the `skiff-agent` binary rather than `skiff agent`.
    lean: bool,
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
    /// turns the service proxy on; its rules are removed on drop; a period
    /// flag, as `--resync-secs=10`, replaces the tests' 1 s).
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_with(
        server_url: &str,
        prefix: &str,
        runtime: &'static str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_by(false, server_url, prefix, runtime, args)
    }

    /// As [`AgentNode::start_with`], run by the `skiff-agent` binary (the
    /// agent alone) instead of `skiff agent`.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_skiff_agent_with(
        server_url: &str,
        prefix: &str,
        runtime: &'static str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_by(true, server_url, prefix, runtime, args)
    }

    fn start_by(
        lean: bool,
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
            lean,
        };
        node.start_agent()?;
        Ok(node)
    }

    /// (Re)starts the agent process.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut command = if self.lean {
            Command::new(skiff_agent_binary()?)
        } else {
            let mut command = Command::new(skiff_binary()?);
            command.arg("agent");
            command
        };
        let child = command
            .args(["--server", &self.server_url, "--node-name", &self.name])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--listen", "127.0.0.1:0", "--network", &self.network])
            .args(["--runtime", self.runtime])
            // Tests shorten every period to seconds, unless their own
            // flags say otherwise (a bench runs the agent's defaults).
            .args(TEST_PERIODS.iter().filter(|period| {
                let flag = period.split('=').next().unwrap_or(period);
                !self.args.iter().any(|a| a.split('=').next() == Some(flag))
            }))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
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
