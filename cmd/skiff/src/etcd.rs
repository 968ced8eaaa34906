//! `skiff up --etcd-managed[=N]`: the etcd the cluster's state goes to,
//! started and supervised by `skiff up` itself — Debian's `etcd` binary,
//! one member (or N on this machine, to try a highly available store),
//! its data under `DATA_DIR/etcd`, its client and peer ports on loopback,
//! chosen on the first start and kept (`DATA_DIR/etcd/members.json`), so a
//! restarted `skiff up` finds the same members. A member that exits is
//! started again after a second; all stop with `skiff up` (and members a
//! `skiff up` killed with -9 left behind, found by the pid files beside
//! their logs, are stopped when it starts again).

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

/// The supervised members; dropping it stops them.
pub(crate) struct ManagedEtcd {
    /// Their client URLs.
    pub(crate) endpoints: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the supervisors to stop their members.
    stop: tokio::sync::watch::Sender<bool>,
}

impl ManagedEtcd {
    /// Stops every member and waits until they are gone (killed and
    /// reaped).
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for ManagedEtcd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
    let members = (0..count)
        .map(|i| {
            Ok(Member {
                name: format!("skiff-{i}"),
                client: free_port()?,
                peer: free_port()?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
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

/// Starts `count` members under `dir` and waits until every client port
/// answers.
///
/// # Errors
/// No etcd binary, or a member that does not come up in 30 s.
pub(crate) async fn start(dir: &Path, count: usize) -> anyhow::Result<ManagedEtcd> {
    let binary = etcd_binary()?;
    let members = members(dir, count.max(1))?;
    let cluster = members
        .iter()
        .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let mut tasks = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    for member in &members {
        let data = dir.join(&member.name);
        let state = if data.exists() { "existing" } else { "new" };
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
        tasks.push(tokio::spawn(supervise(
            binary.clone(),
            args,
            (log, member.name.clone(), data),
            stopped.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for member in &members {
        while tokio::net::TcpStream::connect(("127.0.0.1", member.client))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "etcd member {} did not start (see {})",
                member.name,
                dir.join(format!("{}.log", member.name)).display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(ManagedEtcd {
        endpoints: members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect(),
        tasks,
        stop,
    })
}

/// Kills the member a `skiff up` killed with -9 left running (its
/// children outlive it): the process in `pid_file`, if it is still an
/// etcd of this data dir.
fn stop_orphan(pid_file: &Path, data: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()));
    if ours && let Some(pid) = rustix::process::Pid::from_raw(pid) {
        tracing::warn!(
            pid = pid.as_raw_nonzero().get(),
            "stopping an etcd member an earlier skiff up left running"
        );
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// Runs one member, starting it again a second after it exits.
async fn supervise(
    binary: PathBuf,
    args: Vec<String>,
    (log, name, data): (PathBuf, String, PathBuf),
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let pid_file = log.with_extension("pid");
    stop_orphan(&pid_file, &data);
    loop {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(&args)
            .kill_on_drop(true)
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
                        let _ = child.kill().await;
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
