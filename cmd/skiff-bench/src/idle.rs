//! `skiff-bench idle`: the footprint at rest. A real `skiff up` (API
//! server, controller manager, scheduler and a Docker agent in one
//! process, TLS on) and two more agents joined to it with a bootstrap
//! token (the process runtime), one run as `skiff agent`, the other by
//! the `skiff-agent` binary (the agent alone), all left idle; their
//! resident memory (VmRSS) sampled every second, median and peak printed
//! per process, with the medians of its anonymous and file-backed parts.
//!
//! It uses the `skiff` Docker network, as `skiff up` does, so it refuses
//! to run while that network exists (another `skiff up`). Everything it
//! starts is stopped and removed when it ends, the network too. Figures
//! are for the binary it runs: build `--release` for the ones to quote.

use std::path::Path;
use std::process::{Command, Stdio};

use skiff_testkit::ChildGuard;

// The shared helpers and imports of the bench binary.
use super::*;

/// The node `skiff up` registers.
const UP_NODE: &str = "idle-up";

/// One sample of a process's resident memory, in bytes: total (`VmRSS`),
/// anonymous and file-backed (see `skiff_testkit::rss_split_bytes`).
#[derive(Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl Rss {
    /// None once the process is gone.
    fn of(pid: u32) -> Option<Rss> {
        let (total, anon, file) = skiff_testkit::rss_split_bytes(pid)?;
        Some(Rss { total, anon, file })
    }
}

/// `skiff ARGS` as the cluster's admin (its HOME holds the admin config):
/// (success, stdout, stderr).
fn skiff(home: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(skiff_testkit::skiff_binary()?)
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits until `skiff get nodes` lists `node` Ready.
async fn wait_ready(home: &Path, node: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let (ok, out, _) = skiff(home, &["get", "nodes"])?;
        let ready = ok
            && out.lines().any(|l| {
                let mut cells = l.split_whitespace();
                cells.next() == Some(node) && cells.next() == Some("Ready")
            });
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "node {node} was not Ready within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Median and peak of `samples` (bytes) in MiB.
fn summary(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    (
        mib(samples[samples.len() / 2]),
        mib(*samples.last().unwrap_or(&0)),
    )
}

/// The printed row and JSON of one process's samples.
fn report(label: &str, samples: &[Rss]) -> serde_json::Value {
    let (median, peak) = summary(samples.iter().map(|s| s.total).collect());
    let (anon, _) = summary(samples.iter().map(|s| s.anon).collect());
    let (file, _) = summary(samples.iter().map(|s| s.file).collect());
    println!("{label:<50} {median:>8.1} MiB {peak:>6.1} MiB {anon:>6.1} MiB {file:>6.1} MiB");
    json!({"median": median, "peak": peak, "anon_median": anon, "file_median": file})
}

/// Whether Docker has a network of that name.
fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) async fn bench_idle(settle: u64, samples: usize) -> anyhow::Result<()> {
    let samples = samples.max(1);
    anyhow::ensure!(
        !network_exists("skiff"),
        "the Docker network `skiff` exists: another `skiff up` may be running; stop it first"
    );
    let dir = tempfile::tempdir()?;
    let home = dir.path();
    let port = skiff_testkit::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let data = home.join("data");
    let log = std::fs::File::create(home.join("up.log"))?;
    let mut up = ChildGuard::new(
        Command::new(skiff_testkit::skiff_binary()?)
            .args(["up", "--listen", &listen, "--proxy-mode", "none"])
            .args(["--node-name", UP_NODE])
            .arg("--data-dir")
            .arg(&data)
            .env("HOME", home)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let result = measure(home, port, &mut up, settle, samples).await;
    // Stopped as a user stops it; then what it leaves for its next start
    // (mounts under its data dir, its network) is removed.
    let _ = up.terminate(Duration::from_secs(30));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(home))
        .collect();
    // Innermost first.
    ours.reverse();
    for mount in ours {
        let _ = Command::new("umount").args(["-l", mount]).status();
    }
    let _ = Command::new("docker")
        .args(["network", "rm", "skiff"])
        .stdout(Stdio::null())
        .status();
    result
}

async fn measure(
    home: &Path,
    port: u16,
    up: &mut ChildGuard,
    settle: u64,
    samples: usize,
) -> anyhow::Result<()> {
    println!("waiting for `skiff up` (node {UP_NODE}) ...");
    wait_ready(home, UP_NODE).await?;
    let (ok, out, err) = skiff(home, &["token", "create", "--ttl", "1h"])?;
    anyhow::ensure!(ok, "skiff token create: {err}");
    let (token, hash) = skiff_testkit::printed_token(&out, &err);
    // The same agent from each binary: `skiff agent` and `skiff-agent`.
    let mut agents = Vec::new();
    for (name, binary, subcommand) in [
        ("idle-agent", skiff_testkit::skiff_binary()?, Some("agent")),
        (
            "idle-skiff-agent",
            skiff_testkit::skiff_agent_binary()?,
            None,
        ),
    ] {
        let mut command = Command::new(binary);
        command.args(subcommand);
        let agent = ChildGuard::new(
            command
                .args(["--server", &format!("https://127.0.0.1:{port}")])
                .args(["--token", &token, "--ca-hash", &hash])
                .args(["--node-name", name, "--runtime", "process"])
                .args(["--listen", "127.0.0.1:0", "--proxy-mode", "none"])
                .arg("--data-dir")
                .arg(home.join(name))
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_ready(home, name).await?;
        agents.push(agent);
    }
    println!("all up; idle for {settle} s, then {samples} samples a second apart ...");
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let (mut cluster, mut joined, mut lean) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        cluster.push(Rss::of(up.pid()).context("skiff up exited")?);
        joined.push(Rss::of(agents[0].pid()).context("the agent exited")?);
        lean.push(Rss::of(agents[1].pid()).context("skiff-agent exited")?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!();
    println!(
        "{:<50} {:>12} {:>10} {:>10} {:>10}",
        "PROCESS (idle)", "RSS MEDIAN", "RSS PEAK", "ANON", "FILE"
    );
    let up_json = report("skiff up (server, controllers, scheduler, agent)", &cluster);
    let agent_json = report("skiff agent (joined, process runtime)", &joined);
    let lean_json = report("skiff-agent (joined, process runtime)", &lean);
    println!(
        "(ANON: the process's own memory; FILE: code paged in, the binary's and libc's, \
         shared and reclaimable; medians)"
    );
    println!(
        "{}",
        json!({
            "bench": "idle",
            "settle_s": settle,
            "samples": samples,
            "skiff_up_rss_mib": up_json,
            "joined_agent_rss_mib": agent_json,
            "joined_skiff_agent_rss_mib": lean_json,
        })
    );
    Ok(())
}
