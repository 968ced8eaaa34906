//! `skiff-bench netperf`: request/response rate and latency between pods
//! on one host, across hosts (host-gw, VXLAN), and between the hosts
//! themselves over the same links, in one run — on hosts simulated with
//! network namespaces (`skiff_testkit::hosts`), agents on a CNI pod
//! network.
//!
//! The load runs in the bench process itself: a thread enters the
//! client's network namespace (a pod's, through its sandbox's pid, or a
//! host's) and one enters the server's, so what is measured is exactly
//! the path between them (veth, bridge, routes or tunnel), with the same
//! small server and client at both ends of every path — netperf's TCP_RR:
//! persistent connections, each sending 64 bytes and waiting for 64 back.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use skiff_testkit::hosts::{Hosts, Link};

use crate::{Figures, figures};

/// The path of namespaces plumbed by hand with a pod's hops on two
/// hosts (`Hosts::raw_pods`): what the host-gw pod path costs here without
/// Skiff.
const RAW_HOST_GW: &str = "same hops by hand, host-gw";
/// ... and with a VXLAN device between hosts that share no link.
const RAW_VXLAN: &str = "same hops by hand, vxlan";
/// The port the bench's server listens on in every namespace.
const PORT: u16 = 9000;
/// Bytes each way per request.
const MESSAGE: usize = 64;

/// Moves this thread into the network namespace at `path`.
fn enter(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(std::io::Error::from)
}

/// An echo server of `MESSAGE`-byte requests in the namespace at `netns`,
/// until `stop`.
fn serve(netns: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = enter(&netns).and_then(|()| {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        });
        let listener = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_nodelay(true);
                    let stop = Arc::clone(&stop);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; MESSAGE];
                        while !stop.load(Ordering::Relaxed) {
                            if conn.read_exact(&mut buf).is_err() || conn.write_all(&buf).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the server did not start"))??;
    Ok(())
}

/// `connections` clients in the namespace at `netns`, each doing
/// request/response against `target` for `seconds`.
fn load(
    netns: &Path,
    target: SocketAddr,
    connections: usize,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let run = Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let netns = netns.to_path_buf();
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                enter(&netns)?;
                let mut conn =
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut buf = [7u8; MESSAGE];
                let mut latencies = Vec::new();
                let started = Instant::now();
                while started.elapsed() < run {
                    let t = Instant::now();
                    conn.write_all(&buf)?;
                    conn.read_exact(&mut buf)?;
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    Ok(figures(all, started.elapsed()))
}

/// The network namespace of the sandbox of pod `pod` on `node`.
fn pod_netns(pod: &str, node: &str) -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=io.skiff.pod.name={pod}"))
        .args(["--filter", &format!("label=io.skiff.node={node}")])
        .args(["--filter", "label=io.skiff.container.name=POD"])
        .output()?;
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no sandbox of pod {pod}"))?;
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", &id])
        .output()?;
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(format!("/proc/{pid}/ns/net")))
}

/// Two agent hosts with `backend`, a pod `NAME` per entry of `pods`
/// (name, host) sleeping; their IPs.
async fn cluster(
    base: &str,
    link: Link,
    backend: &str,
    pods: &[(&str, usize)],
) -> anyhow::Result<(Hosts, std::collections::BTreeMap<String, Ipv4Addr>)> {
    let image = skiff_testkit::test_image().await?;
    let mut hosts = Hosts::build(base, link, 2)?;
    hosts.start_control_plane(&[])?;
    for i in 1..=2 {
        hosts.start_agent(i, backend)?;
    }
    let mut yaml = String::new();
    for (name, host) in pods {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: main, image: {image}, imagePullPolicy: Never, command: [sleep, \"3600\"]}}\n---\n",
            hosts.hosts[*host].node
        ));
    }
    let path = hosts.dir.path().join("pods.yaml");
    std::fs::write(&path, yaml)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while hosts
        .skiff(&["apply", "-f", &path.display().to_string()])
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster did not take the pods"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&hosts.skiff(&["get", "pods", "-o", "json"])?)?;
        let ips: std::collections::BTreeMap<String, Ipv4Addr> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_string(),
                    p["status"]["podIP"].as_str()?.parse().ok()?,
                ))
            })
            .collect();
        if ips.len() == pods.len() {
            return Ok((hosts, ips));
        }
        anyhow::ensure!(Instant::now() < deadline, "the pods did not run");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One measured path.
struct NetPath {
    name: &'static str,
    client: PathBuf,
    server: PathBuf,
    target: Ipv4Addr,
}

fn host_netns(hosts: &Hosts, i: usize) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", hosts.hosts[i].netns))
}

/// Measures `paths` twice each, interleaved; the better run of each.
fn measure(paths: &[NetPath], connections: usize, seconds: f64) -> anyhow::Result<Vec<Figures>> {
    /// Stops the servers however the measurement ends.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    for path in paths {
        serve(path.server.clone(), Arc::clone(&stop.0))?;
    }
    let mut best = vec![Figures::default(); paths.len()];
    for _ in 0..2 {
        for (i, path) in paths.iter().enumerate() {
            let f = load(
                &path.client,
                SocketAddr::from((path.target, PORT)),
                connections,
                seconds,
            )?;
            if f.per_sec > best[i].per_sec {
                best[i] = f;
            }
        }
    }
    drop(stop);
    Ok(best)
}

/// See the module doc.
pub async fn bench_netperf(seconds: f64, connections: usize) -> anyhow::Result<()> {
    println!(
        "netperf: {connections} connections, {MESSAGE}-byte request/response, {seconds} s per path (best of two)"
    );
    let mut rows = Vec::new();
    {
        let (mut hosts, ips) = cluster(
            "sknp",
            Link::Lan,
            "host-gw",
            &[("client", 1), ("near", 1), ("far", 2)],
        )
        .await?;
        // The floor of the pod path on these simulated hosts: the same
        // veths, bridges and routed hops, plumbed by hand.
        let raw = hosts.raw_pods(&[1, 2])?;
        let [(raw_client, _), (raw_server, raw_ip)] = &raw[..] else {
            unreachable!("two hosts")
        };
        let paths = [
            NetPath {
                name: "host to host (one L2 link)",
                client: host_netns(&hosts, 1),
                server: host_netns(&hosts, 2),
                target: hosts.hosts[2].ip,
            },
            NetPath {
                name: "pod to pod, one host",
                client: pod_netns("client", &hosts.hosts[1].node)?,
                server: pod_netns("near", &hosts.hosts[1].node)?,
                target: ips["near"],
            },
            NetPath {
                name: "pod to pod, host-gw",
                client: pod_netns("client", &hosts.hosts[1].node)?,
                server: pod_netns("far", &hosts.hosts[2].node)?,
                target: ips["far"],
            },
            NetPath {
                name: RAW_HOST_GW,
                client: raw_client.clone(),
                server: raw_server.clone(),
                target: *raw_ip,
            },
        ];
        let figures = measure(&paths, connections, seconds)?;
        for (path, f) in paths.iter().zip(figures) {
            rows.push((path.name, f, "host to host (one L2 link)"));
        }
    }
    {
        let (mut hosts, ips) =
            cluster("sknv", Link::Routed, "vxlan", &[("client", 1), ("far", 2)]).await?;
        let raw = hosts.raw_pods(&[1, 2])?;
        let [(raw_client, _), (raw_server, raw_ip)] = &raw[..] else {
            unreachable!("two hosts")
        };
        let paths = [
            NetPath {
                name: "host to host (routed)",
                client: host_netns(&hosts, 1),
                server: host_netns(&hosts, 2),
                target: hosts.hosts[2].ip,
            },
            NetPath {
                name: "pod to pod, vxlan",
                client: pod_netns("client", &hosts.hosts[1].node)?,
                server: pod_netns("far", &hosts.hosts[2].node)?,
                target: ips["far"],
            },
            NetPath {
                name: RAW_VXLAN,
                client: raw_client.clone(),
                server: raw_server.clone(),
                target: *raw_ip,
            },
        ];
        let figures = measure(&paths, connections, seconds)?;
        for (path, f) in paths.iter().zip(figures) {
            rows.push((path.name, f, "host to host (routed)"));
        }
    }
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>22}",
        "PATH", "REQ/S", "P50 MS", "P99 MS", "VS HOST TO HOST"
    );
    let mut json = serde_json::Map::new();
    json.insert("bench".into(), "netperf".into());
    json.insert("connections".into(), connections.into());
    for (name, f, baseline) in &rows {
        let base = rows
            .iter()
            .find(|(n, _, _)| n == baseline)
            .map_or(0.0, |(_, b, _)| b.per_sec);
        let ratio = if base > 0.0 { f.per_sec / base } else { 0.0 };
        println!(
            "{name:<30} {:>10.0} {:>9.3} {:>9.3} {:>21.2}x",
            f.per_sec, f.p50_ms, f.p99_ms, ratio
        );
        let key: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        json.insert(
            key,
            serde_json::json!({"per_sec": f.per_sec, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms, "ratio": ratio}),
        );
    }
    let per_sec = |name: &str| {
        rows.iter()
            .find(|(n, _, _)| *n == name)
            .map_or(0.0, |(_, f, _)| f.per_sec)
    };
    for (pods, by_hand, key) in [
        (
            "pod to pod, host-gw",
            RAW_HOST_GW,
            "host_gw_vs_same_hops_by_hand",
        ),
        ("pod to pod, vxlan", RAW_VXLAN, "vxlan_vs_same_hops_by_hand"),
    ] {
        let floor = per_sec(by_hand);
        let ratio = if floor > 0.0 {
            per_sec(pods) / floor
        } else {
            0.0
        };
        println!("{pods} vs the same hops by hand: {ratio:.2}x");
        json.insert(key.into(), ratio.into());
    }
    println!("targets: host-gw >= 0.9x, vxlan >= 0.7x of host to host");
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}
