//! The process runtime: runs a container's command as a host process, for
//! machines without a Docker engine.
//!
//! Each container is a directory under the runtime's root holding its
//! record (`record.json`: name, image, labels, argv, env, cwd), its log
//! (`log`), and, once started, the `pid` of its process and, once ended,
//! its `exit` (code and time). A small shim (`skiff shim DIR -- ARGV`, or
//! `skiff-agent shim …`)
//! starts the process in its own process group, writes `pid`, waits for
//! it and writes `exit`; shims outlive the agent, so a restarted agent
//! finds every container's state on disk and adopts it.
//!
//! What the host does not allow without isolation: the image is not used
//! (the command must be given), every pod shares the host network (pod IP
//! = the node's IP, so containers of a pod reach each other on localhost,
//! and so do different pods), volumes are not mounted (their host paths
//! are given to the process as `SKIFF_VOLUME_<PATH>` variables instead),
//! and resource limits are not applied.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::{
    Container, ContainerSpec, Error, ExecOutput, LogOptions, LogStream, PullPolicy, Result,
    Runtime, RuntimeInfo, SandboxSpec, State, labels,
};

/// What a container directory's `record.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    image: String,
    labels: BTreeMap<String, String>,
    argv: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    created: i64,
    /// A sandbox has no process: it is "running" until removed.
    sandbox: bool,
}

/// What the shim writes when the process ends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Exit {
    code: i64,
    started_at: u64,
    finished_at: u64,
}

/// Containers as host processes.
#[derive(Debug)]
pub struct ProcessRuntime {
    /// One directory per container.
    root: PathBuf,
    /// The node whose containers these are.
    node: String,
    /// The program run as `PROGRAM shim DIR -- ARGV`.
    shim: PathBuf,
    /// The pods' IP (the host's).
    ip: String,
    /// Makes ids unique within this process's lifetime.
    counter: AtomicU64,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::Runtime(format!("{what}: {e}"))
}

/// Writes `content` to `path` atomically (temp file, then rename).
fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// The fields of /proc/PID/stat after the parenthesised command name
/// (the first is the state, field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When a process started (clock ticks since boot, field 22): with the pid
/// it names one process, even after the pid is reused.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// A process's CPU time (utime + stime, fields 14 and 15, in clock ticks)
/// in nanoseconds, and its resident memory in bytes (`statm`).
fn usage(pid: u32) -> Option<crate::ContainerStats> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(crate::ContainerStats {
        cpu_nanos: ticks.saturating_mul(1_000_000_000) / per_second,
        memory_bytes: resident_pages * rustix::param::page_size() as u64,
    })
}

/// Whether the process is alive (not a zombie) and, when its start time
/// was recorded, is still the same process.
fn alive(pid: u32, started: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let running = fields.first().is_some_and(|s| s != "Z" && s != "X");
    running && started.is_none_or(|t| fields.get(19).and_then(|f| f.parse().ok()) == Some(t))
}

/// Signals the container's process group (the process leads it, so its
/// children get the signal too).
fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        && rustix::process::kill_process_group(pid, signal).is_err()
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl ProcessRuntime {
    /// A runtime keeping its containers under `root`, started through
    /// `shim` (the agent's own binary), giving pods the address `ip`.
    ///
    /// # Errors
    /// The root cannot be created.
    pub fn new(root: PathBuf, node: &str, shim: PathBuf, ip: &str) -> Result<Self> {
        std::fs::create_dir_all(&root).map_err(|e| io_error("creating the runtime dir", e))?;
        Ok(Self {
            root,
            node: node.to_string(),
            shim,
            ip: ip.to_string(),
            counter: AtomicU64::new(0),
        })
    }

    fn dir(&self, id: &str) -> Result<PathBuf> {
        // Ids are ours: refuse anything that could leave the root.
        if id.is_empty() || id.contains('/') || id.contains("..") {
            return Err(Error::NotFound(format!("container {id:?}")));
        }
        let dir = self.root.join(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(Error::NotFound(format!("container {id}")))
        }
    }

    fn new_id(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        // Unique across restarts (time) and within one (counter), and
        // readable in `ls`.
        let short: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(24)
            .collect();
        format!("{}{:09}{n:04}-{short}", now.as_secs(), now.subsec_nanos())
    }

    fn add(&self, record: &Record) -> Result<String> {
        let id = self.new_id(&record.name);
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating a container dir", e))?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Runtime(e.to_string()))?;
        write_atomic(&dir.join("record.json"), &json)
            .map_err(|e| io_error("writing a container record", e))?;
        Ok(id)
    }

    fn record(dir: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(dir.join("record.json")).ok()?).ok()
    }

    /// The container process's pid and start time (`pid` holds both).
    fn pid(dir: &Path) -> Option<(u32, Option<u64>)> {
        let text = std::fs::read_to_string(dir.join("pid")).ok()?;
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        Some((pid, parts.next().and_then(|t| t.parse().ok())))
    }

    /// The container's process, if it is alive.
    fn running(dir: &Path) -> Option<u32> {
        let (pid, started) = Self::pid(dir)?;
        alive(pid, started).then_some(pid)
    }

    fn exit(dir: &Path) -> Option<Exit> {
        serde_json::from_slice(&std::fs::read(dir.join("exit")).ok()?).ok()
    }

    fn state(dir: &Path, record: &Record) -> State {
        if record.sandbox {
            return State::Running { started_at: None };
        }
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        if let Some(exit) = Self::exit(dir) {
            return State::Exited {
                exit_code: exit.code,
                started_at: at(exit.started_at),
                finished_at: at(exit.finished_at),
                oom_killed: false,
            };
        }
        let started = std::fs::metadata(dir.join("pid"))
            .and_then(|m| m.modified())
            .ok();
        match Self::pid(dir) {
            Some(_) if Self::running(dir).is_some() => State::Running {
                started_at: started,
            },
            // The shim died with its process (both killed): the exit code
            // is lost; report a kill.
            Some(_) => State::Exited {
                exit_code: 137,
                started_at: started,
                finished_at: None,
                oom_killed: false,
            },
            None => State::Created,
        }
    }

    fn container(&self, id: &str, dir: &Path) -> Option<Container> {
        let record = Self::record(dir)?;
        let state = Self::state(dir, &record);
        Some(Container {
            id: id.to_string(),
            name: record.name.clone(),
            image: record.image.clone(),
            image_id: format!("process://{}", record.image),
            state,
            ip: record.sandbox.then(|| self.ip.clone()),
            created: record.created,
            labels: record.labels,
        })
    }

    fn with_labels(&self, mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels.insert(labels::MANAGED.into(), "true".into());
        labels.insert(labels::NODE.into(), self.node.clone());
        labels
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn scheme(&self) -> &'static str {
        "process"
    }

    async fn info(&self) -> Result<RuntimeInfo> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let memory_kib: i64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        Ok(RuntimeInfo {
            version: concat!("process://", env!("CARGO_PKG_VERSION")).into(),
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os_image,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
            memory_bytes: memory_kib * 1024,
        })
    }

    async fn ensure_image(&self, image: &str, _policy: PullPolicy) -> Result<String> {
        // Nothing to pull: the command runs from the host.
        Ok(format!("process://{image}"))
    }

    async fn image_user(&self, _image: &str) -> Result<String> {
        // Processes run as the agent does.
        let status = std::fs::read_to_string("/proc/self/status")
            .map_err(|e| Error::Runtime(format!("reading /proc/self/status: {e}")))?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("0");
        Ok(if uid == "0" {
            String::new()
        } else {
            uid.into()
        })
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<String> {
        if !spec.extra_hosts.is_empty() {
            // They would go into the host's own /etc/hosts.
            return Err(Error::Unsupported(format!(
                "pod sandbox {}: hostAliases need a pod /etc/hosts; the process runtime runs pods on the host's",
                spec.name
            )));
        }
        if !spec.sysctls.is_empty() {
            // They would be set on the host itself.
            return Err(Error::Unsupported(format!(
                "pod sandbox {}: sysctls need a pod network namespace; the process runtime runs pods in the host's",
                spec.name
            )));
        }
        self.add(&Record {
            name: spec.name.clone(),
            image: String::new(),
            labels: self.with_labels(spec.labels.clone()),
            argv: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            created: secs(SystemTime::now()) as i64,
            sandbox: true,
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.dir(&spec.sandbox_id)?;
        if !spec.security.is_default() {
            return Err(Error::Unsupported(format!(
                "container {}: the process runtime runs containers as host processes of the agent's user and cannot apply a securityContext (user, groups, capabilities, privileged, read-only root, no_new_privs, seccomp, AppArmor); use the Docker runtime",
                spec.name
            )));
        }
        let mut argv: Vec<String> = spec.command.clone().unwrap_or_default();
        argv.extend(spec.args.clone().unwrap_or_default());
        if argv.is_empty() {
            return Err(Error::Runtime(format!(
                "container {}: the process runtime runs the container's command, and it has none (images are not used)",
                spec.name
            )));
        }
        let mut env = spec.env.clone();
        for m in &spec.mounts {
            let key: String = m
                .container_path
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push(format!("SKIFF_VOLUME{key}={}", m.host_path.display()));
        }
        self.add(&Record {
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: self.with_labels(spec.labels.clone()),
            argv,
            env,
            working_dir: spec.working_dir.clone(),
            created: secs(SystemTime::now()) as i64,
            sandbox: false,
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        let dir = self.dir(id)?;
        let record =
            Self::record(&dir).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        if record.sandbox || Self::pid(&dir).is_some() {
            return Ok(());
        }
        let cwd = record
            .working_dir
            .clone()
            .map_or_else(|| dir.clone(), PathBuf::from);
        let mut command = tokio::process::Command::new(&self.shim);
        command
            .arg("shim")
            .arg(&dir)
            .arg("--")
            .args(&record.argv)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .envs(record.env.iter().filter_map(|kv| kv.split_once('=')))
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: a signal to the agent does not reach
            // the pods, and the shim outlives the agent.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| io_error(&format!("starting {}", self.shim.display()), e))?;
        // Reap the shim when it ends (it is the agent's child).
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        // The shim writes `pid` once the process runs.
        for _ in 0..200 {
            if Self::pid(&dir).is_some() || Self::exit(&dir).is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Runtime(format!(
            "container {id}: the shim did not start the process"
        )))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let dir = match self.dir(id) {
            Ok(dir) => dir,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if Self::exit(&dir).is_some() {
            return Ok(());
        }
        let Some(pid) = Self::running(&dir) else {
            return Ok(());
        };
        signal(pid, rustix::process::Signal::TERM);
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline && Self::running(&dir).is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if Self::running(&dir).is_some() {
            signal(pid, rustix::process::Signal::KILL);
        }
        // Let the shim record the exit.
        for _ in 0..100 {
            if Self::exit(&dir).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let dir = match self.dir(id) {
            Ok(dir) => dir,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(id, Duration::ZERO).await?;
        std::fs::remove_dir_all(&dir).map_err(|e| io_error("removing a container dir", e))
    }

    async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<Container>> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| io_error("listing containers", e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Some(c) = self.container(&id, &entry.path()) else {
                continue;
            };
            if c.label(labels::NODE) == self.node
                && pod_uid.is_none_or(|uid| c.label(labels::POD_UID) == uid)
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        let dir = self.dir(id)?;
        let record =
            Self::record(&dir).ok_or_else(|| Error::NotFound(format!("container {id}")))?;
        let Some((program, args)) = command.split_first() else {
            return Err(Error::Runtime("exec of an empty command".into()));
        };
        let cwd = record
            .working_dir
            .clone()
            .map_or_else(|| dir.clone(), PathBuf::from);
        let run = tokio::process::Command::new(program)
            .args(args)
            .envs(record.env.iter().filter_map(|kv| kv.split_once('=')))
            .current_dir(cwd)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|e| io_error(&format!("running {program}"), e))?;
        Ok(ExecOutput {
            exit_code: i64::from(out.status.code().unwrap_or(-1)),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn stats(&self, id: &str) -> Result<crate::ContainerStats> {
        let dir = self.dir(id)?;
        let pid = Self::running(&dir)
            .ok_or_else(|| Error::Runtime(format!("container {id} is not running")))?;
        usage(pid).ok_or_else(|| Error::Runtime(format!("reading /proc/{pid} of container {id}")))
    }

    async fn logs(&self, id: &str, options: &LogOptions) -> Result<LogStream> {
        let dir = self.dir(id)?;
        let path = dir.join("log");
        let mut file = std::fs::File::open(&path).map_err(|e| io_error("opening the log", e))?;
        let mut start = 0u64;
        if let Some(tail) = options.tail {
            let mut all = Vec::new();
            file.read_to_end(&mut all)
                .map_err(|e| io_error("reading the log", e))?;
            start = tail_offset(&all, tail) as u64;
        }
        file.seek(std::io::SeekFrom::Start(start))
            .map_err(|e| io_error("reading the log", e))?;
        let follow = options.follow;
        let reader = logs::LogReader::new(options);
        let stream = futures::stream::unfold(
            (file, dir, reader, false),
            move |(mut file, dir, mut reader, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let mut buf = vec![0u8; 64 * 1024];
                    match file.read(&mut buf) {
                        Ok(0) => {
                            let ended = !follow || Self::exit(&dir).is_some() || !dir.exists();
                            if ended {
                                // One more read: output written before the exit.
                                let mut rest = Vec::new();
                                let _ = file.read_to_end(&mut rest);
                                let mut out = reader.feed(&rest);
                                out.extend(reader.finish());
                                return (!out.is_empty()).then(|| {
                                    (Ok(bytes::Bytes::from(out)), (file, dir, reader, true))
                                });
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Ok(n) => {
                            let out = reader.feed(&buf[..n]);
                            if !out.is_empty() {
                                let state = (file, dir, reader, false);
                                return Some((Ok(bytes::Bytes::from(out)), state));
                            }
                        }
                        Err(e) => {
                            let state = (file, dir, reader, true);
                            return Some((Err(io_error("reading the log", e)), state));
                        }
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

/// Where the last `lines` lines of `log` start.
fn tail_offset(log: &[u8], lines: u64) -> usize {
    if lines == 0 {
        return log.len();
    }
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

mod logs;
mod shim;

pub use shim::shim;

#[cfg(test)]
mod tests;
