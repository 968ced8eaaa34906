//! `skiff up --etcd-managed[=N]`: the etcd the cluster's state goes to,
//! started and supervised by `skiff up` itself — Debian's `etcd` binary,
//! one member (or N on this machine, to try a highly available store),
//! its data under `DATA_DIR/etcd`, its client and peer ports on loopback,
//! chosen on the first start below the kernel's ephemeral range and kept
//! (`DATA_DIR/etcd/members.json`), so a restarted `skiff up` finds the same
//! members. A member that exits is started again after a second. Members
//! run in a process group of their own (a terminal's Ctrl-C reaches
//! `skiff up`, which then stops them: SIGTERM, SIGKILL after 10 s, reaped
//! before it exits); members a `skiff up` killed with -9 left behind are
//! found by the pid files beside their logs and stopped at the next start.
//!
//! The store listens on loopback without authentication: for trying Skiff
//! on a machine of one's own (as `skiff up` is), not for shared hosts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// One member's ports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
}

/// How long a member may take to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The supervised members.
pub(crate) struct ManagedEtcd {
    /// Their client URLs.
    pub(crate) endpoints: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the supervisors to stop their members.
    stop: tokio::sync::watch::Sender<bool>,
}

impl ManagedEtcd {
    /// Stops every member and waits until they are gone (reaped).
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

/// Ports for `count` members, below the kernel's ephemeral range (so no
/// outgoing connection takes them later), each free now; all held until
/// every one is chosen, so none is chosen twice.
fn choose_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20000u16.min(ephemeral_low.saturating_sub(2000));
    let span = u32::from(ephemeral_low.saturating_sub(low)).max(1);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for i in 0..span {
        if ports.len() == count {
            break;
        }
        let port = low + ((seed.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        if ports.contains(&port) {
            continue;
        }
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            ports.push(port);
        }
    }
    anyhow::ensure!(ports.len() == count, "no free loopback ports for etcd");
    Ok(ports)
}

/// The members of `dir` (made on the first start).
fn members(dir: &Path, count: usize) -> anyhow::Result<Vec<Member>> {
    let file = dir.join("members.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let members: Vec<Member> =
            serde_json::from_str(&text).with_context(|| format!("reading {}", file.display()))?;
        anyhow::ensure!(
            members.len() == count,
            "{} holds a store of {} members, not {count}: start with --etcd-managed={} (or another --data-dir)",
            dir.display(),
            members.len(),
            members.len()
        );
        return Ok(members);
    }
    let ports = choose_ports(count * 2)?;
    let members: Vec<Member> = (0..count)
        .map(|i| Member {
            name: format!("skiff-{i}"),
            client: ports[2 * i],
            peer: ports[2 * i + 1],
        })
        .collect();
    std::fs::create_dir_all(dir)?;
    std::fs::write(&file, serde_json::to_vec_pretty(&members)?)?;
    Ok(members)
}

fn etcd_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .context(
            "--etcd-managed needs etcd: install Debian's etcd-server (apt-get install etcd-server)",
        )
}

/// Whether a member's data dir holds a store (its write-ahead log).
fn bootstrapped(data: &Path) -> bool {
    data.join("member").join("wal").is_dir()
}

/// Starts `count` members under `dir` and waits until every one says it
/// is healthy.
///
/// # Errors
/// No etcd binary; a store some of whose members lost their data; or a
/// member that is not healthy in 30 s (the members started are stopped).
pub(crate) async fn start(dir: &Path, count: usize) -> anyhow::Result<ManagedEtcd> {
    let binary = etcd_binary()?;
    let members = members(dir, count.max(1))?;
    // The store as a whole is new or existing: a member of an existing
    // store that lost its data cannot just start afresh.
    let existing: Vec<bool> = members
        .iter()
        .map(|m| bootstrapped(&dir.join(&m.name)))
        .collect();
    if existing.iter().any(|e| *e) && !existing.iter().all(|e| *e) {
        let lost: Vec<&str> = members
            .iter()
            .zip(&existing)
            .filter(|(_, e)| !**e)
            .map(|(m, _)| m.name.as_str())
            .collect();
        anyhow::bail!(
            "etcd members {lost:?} under {} have lost their data while the others kept theirs: restore them, or remove {} to start a new (empty) cluster",
            dir.display(),
            dir.display()
        );
    }
    let state = if existing.iter().all(|e| *e) {
        "existing"
    } else {
        "new"
    };
    let cluster = members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut managed = ManagedEtcd {
        endpoints: members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect(),
        tasks: Vec::new(),
        stop,
    };
    for member in &members {
        let data = dir.join(&member.name);
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let args = vec![
            format!("--name={}", member.name),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=skiff".to_string(),
            "--log-level=warn".to_string(),
        ];
        let log = dir.join(format!("{}.log", member.name));
        managed.tasks.push(tokio::spawn(supervise(
            binary.clone(),
            args,
            (log, member.name.clone(), data),
            stopped.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for member in &members {
        while !healthy(member.client).await {
            if tokio::time::Instant::now() >= deadline {
                let log = dir.join(format!("{}.log", member.name));
                managed.stop().await;
                anyhow::bail!(
                    "etcd member {} is not healthy after 30 s (see {})",
                    member.name,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(managed)
}

/// Whether the etcd at `port` says it is healthy (`GET /health`: it is
/// etcd, and it has a leader).
async fn healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        Some(String::from_utf8_lossy(&reply).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether process `pid` is an etcd with `--data-dir=<data>` (and so a
/// member of ours, not a process that took the number since).
fn is_member(pid: i32, data: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let program = args.next().unwrap_or_default();
    let wanted = format!("--data-dir={}", data.display());
    Path::new(&*program)
        .file_name()
        .is_some_and(|n| n == "etcd")
        && args.any(|a| a == wanted)
}

/// Stops the member a `skiff up` killed with -9 left running: the process
/// in `pid_file`, if it is still that member.
async fn stop_orphan(pid_file: &Path, data: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    if !is_member(pid, data) {
        return;
    }
    let Some(raw) = rustix::process::Pid::from_raw(pid) else {
        return;
    };
    tracing::warn!(
        pid,
        "stopping an etcd member an earlier skiff up left running"
    );
    let _ = rustix::process::kill_process(raw, rustix::process::Signal::KILL);
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() || !is_member(pid, data) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Stops a member: SIGTERM, SIGKILL after [`STOP_GRACE`]; reaped.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Runs one member, starting it again a second after it exits, until told
/// to stop.
async fn supervise(
    binary: PathBuf,
    args: Vec<String>,
    (log, name, data): (PathBuf, String, PathBuf),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let pid_file = log.with_extension("pid");
    stop_orphan(&pid_file, &data).await;
    loop {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(&args)
            .envs(skiff_store::ETCD_PROGRESS_ENV)
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C is for skiff up.
            .process_group(0)
            .stdin(std::process::Stdio::null());
        if let Ok(out) = out
            && let Ok(err) = out.try_clone()
        {
            command.stdout(out).stderr(err);
        }
        match command.spawn() {
            Ok(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(&pid_file, pid.to_string());
                }
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(member = %name, ?status, log = %log.display(), "etcd member exited; starting it again");
                    }
                    () = until_stopped(&mut stop) => {
                        terminate(&mut child).await;
                        let _ = std::fs::remove_file(&pid_file);
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(member = %name, error = %e, "starting etcd"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = until_stopped(&mut stop) => return,
        }
    }
}
