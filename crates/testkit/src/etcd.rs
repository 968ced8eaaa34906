//! An etcd cluster of several members on loopback (Debian's etcd), for
//! tests of the control plane's availability: members can be killed,
//! started again, frozen (SIGSTOP, a hung peer) and thawed, and the
//! leader found. Each member's process is the test's own (by PID), its
//! data in a temp dir.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{ChildGuard, find_program, free_port};

/// One member.
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its client URL.
    pub client_url: String,
    peer_url: String,
    process: Option<ChildGuard>,
}

/// See the module doc.
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    ///
    /// # Errors
    /// etcd is not installed or does not come up.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            dir,
            initial_cluster,
        };
        for i in 0..n {
            cluster.start_member(i)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.leader().is_none() {
            if Instant::now() > deadline {
                bail!("the etcd cluster elected no leader");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(cluster)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Starts member `i` (again: its data dir is kept).
    ///
    /// # Errors
    /// etcd is missing.
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let bin = find_program("etcd", &["/usr/bin/etcd"])
            .context("etcd is not installed: run scripts/deps (Debian's etcd-server)")?;
        let member = &self.members[i];
        let data = self.dir.path().join(&member.name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))?;
        let child = Command::new(bin)
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", member.client_url))
            .arg(format!("--advertise-client-urls={}", member.client_url))
            .arg(format!("--listen-peer-urls={}", member.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", member.peer_url))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=skiff-test")
            // Elections in well under a second, as on a quiet LAN.
            .args(["--heartbeat-interval=100", "--election-timeout=1000"])
            .arg("--log-level=error")
            // Watches report progress often (the store's conformance
            // suite waits for reports; Skiff's own etcd: every 30 s), in
            // both spellings of the setting (see skiff-store's
            // `ETCD_PROGRESS_ENV`).
            .env("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "200ms")
            .env("ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL", "200ms")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.members[i].process = Some(ChildGuard::new(child));
        Ok(())
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill9();
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(p) = &self.members[i].process {
            let _ = Command::new("kill")
                .args([signal, &p.pid().to_string()])
                .status();
        }
    }

    /// Freezes member `i` (SIGSTOP): its connections stay open and it
    /// answers nothing, as a hung peer.
    pub fn freeze(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Thaws a frozen member (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// The member that leads now, as the members that answer say.
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .filter(|m| m.process.is_some())
            .find_map(|m| {
                let status = status(&m.client_url)?;
                let leader = status.get("leader")?.as_str()?.to_string();
                let me = status.get("header")?.get("member_id")?.as_str()?;
                (leader == me).then(|| m.name.clone())
            })
            .and_then(|name| self.members.iter().position(|m| m.name == name))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A frozen process dies of SIGKILL too.
            self.kill(i);
        }
    }
}

/// A member's status (`/v3/maintenance/status` of etcd's JSON gateway),
/// with a short timeout: a frozen member answers nothing.
fn status(client_url: &str) -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let addr: std::net::SocketAddr = client_url.strip_prefix("http://")?.parse().ok()?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let body = "{}";
    write!(
        stream,
        "POST /v3/maintenance/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let json = reply.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(json.trim()).ok()
}
