//! The shim, `skiff shim DIR -- ARGV`: the parent of one container's
//! process, which records its pid, its output and its exit.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{Exit, io_error, logs, secs, start_time, write_atomic};
use crate::{Error, Result};

/// The shim: `skiff shim DIR -- ARGV`. Runs ARGV with its stdout and
/// stderr written to DIR/log as records (see [`logs`]), writes DIR/pid,
/// waits, writes DIR/exit. Returns the process's exit code.
///
/// # Errors
/// The log cannot be opened or the program not started (written to the
/// log as well, and recorded as exit code 127, as a shell does).
pub fn shim(dir: &Path, argv: &[String]) -> Result<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    let started_at = secs(SystemTime::now());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .map_err(|e| io_error("opening the log", e))?;
    let log = std::sync::Arc::new(std::sync::Mutex::new(log));
    let record_exit = |code: i64| {
        let exit = Exit {
            code,
            started_at,
            finished_at: secs(SystemTime::now()),
        };
        let json = serde_json::to_vec(&exit).unwrap_or_default();
        write_atomic(&dir.join("exit"), &json).map_err(|e| io_error("writing the exit", e))
    };
    let Some((program, args)) = argv.split_first() else {
        record_exit(127)?;
        return Err(Error::Runtime("shim: no command".into()));
    };
    use std::os::unix::process::CommandExt as _;
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group: stopping the container signals the group,
        // so whatever it started stops too.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            if let Ok(mut log) = log.lock() {
                let line = format!("skiff shim: starting {program:?}: {e}");
                let _ = logs::write_record(
                    &mut *log,
                    SystemTime::now(),
                    "stderr",
                    true,
                    line.as_bytes(),
                );
            }
            record_exit(127)?;
            return Ok(127);
        }
    };
    // Each stream copied by its own thread; each says when its stream
    // has ended.
    let (ended, pumps_done) = std::sync::mpsc::channel();
    let mut pumps = 0;
    let streams: [(Option<Box<dyn std::io::Read + Send>>, &'static str); 2] = [
        (
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
            "stderr",
        ),
    ];
    for (from, name) in streams {
        let Some(from) = from else { continue };
        let (log, ended) = (std::sync::Arc::clone(&log), ended.clone());
        pumps += 1;
        std::thread::spawn(move || {
            logs::pump(from, name, &log);
            let _ = ended.send(());
        });
    }
    let pid = child.id();
    let record = match start_time(pid) {
        Some(t) => format!("{pid} {t}"),
        None => pid.to_string(),
    };
    write_atomic(&dir.join("pid"), record.as_bytes())
        .map_err(|e| io_error("writing the pid", e))?;
    let status = child
        .wait()
        .map_err(|e| io_error("waiting for the process", e))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(sig)) => 128 + i64::from(sig),
        _ => 255,
    };
    // Its output is in the log before its exit is recorded, unless
    // something it started holds the streams open: that is not waited
    // for past a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if pumps_done.recv_timeout(left).is_err() {
            break;
        }
    }
    record_exit(code)?;
    Ok(code as i32)
}
