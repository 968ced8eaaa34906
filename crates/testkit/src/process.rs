//! The processes tests start and stop by PID: etcd, the `skiff` server,
//! scheduler, controller manager and hollow nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{client_tls, etcd, free_port, skiff_binary, wait_for_port};

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
    // Renew often: tests shorten the node grace period to seconds.
    hollow_nodes_renewing(server_url, count, prefix, 1)
}

/// The kubelet's lease renewal interval (a quarter of its 40 s lease):
/// benchmarks' hollow nodes renew as real nodes do, so that thousands of
/// them load the API server as a real cluster's would.
pub const KUBELET_LEASE_RENEW_SECS: u64 = 10;

/// `skiff hollow-nodes` renewing each node's lease every `renew_secs`.
///
/// # Errors
/// When the binary is missing.
pub fn hollow_nodes_renewing(
    server_url: &str,
    count: usize,
    prefix: &str,
    renew_secs: u64,
) -> anyhow::Result<ChildGuard> {
    let child = Command::new(skiff_binary()?)
        .arg("hollow-nodes")
        .args(["--server", server_url, "--prefix", prefix])
        .arg(format!("--count={count}"))
        .arg(format!("--lease-renew-secs={renew_secs}"))
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
