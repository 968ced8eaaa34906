//! Simulated hosts for multi-host tests: network namespaces the test
//! makes, joined either by one L2 segment (a bridge in a switch namespace:
//! host-gw works) or each on a subnet of its own behind a router namespace
//! (only VXLAN works). Host 0 runs the control plane (API server with TLS,
//! controller manager, scheduler); the others run an agent each, whose
//! Docker sandboxes are plumbed by CNI from inside that host's namespace.
//!
//! Everything is the test's own: the namespaces, their links, addresses
//! (which exist only inside them), the processes (killed by PID) and the
//! containers (removed by their node's label). Dropping it removes them
//! all; deleting a namespace takes its links, bridges, routes and rules.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{ChildGuard, skiff_binary};

/// How the hosts are linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// One L2 segment, 192.168.250.0/24 (host i at .10+i, the default
    /// route via host 0).
    Lan,
    /// A router; host i alone on 10.99.i.0/24 at .2.
    Routed,
}

/// The agents' periods in tests: 1 s, so a test sees changes quickly.
const TEST_PERIODS: [&str; 5] = [
    "--lease-renew-secs=1",
    "--status-every-secs=1",
    "--resync-secs=1",
    "--crash-backoff-secs=1",
    "--crash-backoff-max-secs=4",
];

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The node name of its agent.
    pub node: String,
    /// Its agent's data dir.
    pub data_dir: PathBuf,
}

/// See the module doc.
pub struct Hosts {
    /// Host 0 is the control plane's; 1.. run agents.
    pub hosts: Vec<Host>,
    /// Every namespace made (the switch or router first).
    namespaces: Vec<String>,
    /// Processes by host, killed on drop (and by [`Hosts::kill`]).
    processes: Vec<(usize, &'static str, ChildGuard)>,
    /// The control plane's data dir (its admin config is there).
    pub dir: tempfile::TempDir,
    /// The bootstrap token and CA hash agents join with.
    join: Option<(String, String)>,
    /// How the hosts are linked.
    link: Link,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    iproute2("ip", args)
}

/// Runs `program` (`ip`, `bridge`) with `args`; its error output on failure.
fn iproute2(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Hosts {
    /// Makes `agents` + 1 hosts named `BASE<pid>-hN` linked by `link`,
    /// after removing what an earlier run of `BASE` killed before it could
    /// clean up left (namespaces and containers of a process that no
    /// longer exists).
    ///
    /// # Errors
    /// `ip` refused (not root, no iproute2).
    pub fn build(base: &str, link: Link, agents: usize) -> anyhow::Result<Self> {
        sweep(base);
        let prefix = &format!("{base}{}", std::process::id());
        let dir = tempfile::tempdir()?;
        let mut me = Self {
            hosts: Vec::new(),
            namespaces: Vec::new(),
            processes: Vec::new(),
            dir,
            join: None,
            link,
        };
        let hub = format!("{prefix}-hub");
        ip(&["netns", "add", &hub])?;
        me.namespaces.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        match link {
            Link::Lan => {
                ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
                ip(&["-n", &hub, "link", "set", "br0", "up"])?;
            }
            Link::Routed => {
                ip(&[
                    "netns",
                    "exec",
                    &hub,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ])?;
            }
        }
        for i in 0..=agents {
            let netns = format!("{prefix}-h{i}");
            ip(&["netns", "add", &netns])?;
            me.namespaces.push(netns.clone());
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &netns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            let (address, gateway) = match link {
                Link::Lan => {
                    ip(&["-n", &hub, "link", "set", &port, "master", "br0"])?;
                    // As on a real LAN, a default route (via host 0):
                    // a Service's address is only rewritten once the
                    // kernel has a route for it.
                    let gateway = (i > 0).then(|| "192.168.250.10".to_string());
                    (Ipv4Addr::new(192, 168, 250, 10 + i as u8), gateway)
                }
                Link::Routed => {
                    let router = format!("10.99.{i}.1/24");
                    ip(&["-n", &hub, "addr", "add", &router, "dev", &port])?;
                    (
                        Ipv4Addr::new(10, 99, i as u8, 2),
                        Some(format!("10.99.{i}.1")),
                    )
                }
            };
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
            eth0_up(&netns, address)?;
            if let Some(gateway) = gateway {
                ip(&["-n", &netns, "route", "add", "default", "via", &gateway])?;
            }
            let data_dir = me.dir.path().join(format!("h{i}"));
            std::fs::create_dir_all(&data_dir)?;
            me.hosts.push(Host {
                netns,
                ip: address,
                node: format!("{prefix}-h{i}"),
                data_dir,
            });
        }
        Ok(me)
    }

    /// A network namespace on each of hosts `on`, plumbed by hand the way
    /// the CNI bridge plugin plumbs a pod (a veth pair to a bridge of the
    /// host's, the bridge its gateway) in `10.250.<i>.0/24`, and routes
    /// between them the way the agent's backend for this link does: on a
    /// LAN a route per host via its address (host-gw); routed, a kernel
    /// VXLAN device per host (VNI 99, port 4799, its own address
    /// `10.251.<i>.0`) with an on-link route, a neighbour and a forwarding
    /// entry per peer (flannel's VXLAN scheme, as the agent's). The same
    /// hops as a pod's path, matched by none of Skiff's rules (they still
    /// pass its chains in the host's namespace): a benchmark's floor. Each namespace's path (for `setns`) and address, in the
    /// order of `on`; removed with the hosts. Once per host.
    ///
    /// # Errors
    /// When `ip` or `bridge` fails.
    pub fn raw_pods(&mut self, on: &[usize]) -> anyhow::Result<Vec<(PathBuf, Ipv4Addr)>> {
        let octet = |i: usize| u8::try_from(i).context("host index");
        let vtep_mac = |i: u8| format!("02:00:00:fa:00:{i:02x}");
        let mtu = match self.link {
            Link::Lan => "1500",
            Link::Routed => "1450",
        };
        let mut made = Vec::new();
        for &i in on {
            let host = self.hosts[i].netns.clone();
            let netns = format!("{host}-raw");
            ip(&["netns", "add", &netns])?;
            self.namespaces.push(netns.clone());
            let n = octet(i)?;
            let gateway = Ipv4Addr::new(10, 250, n, 1);
            let address = Ipv4Addr::new(10, 250, n, 2);
            ip(&["-n", &host, "link", "add", "rawbr", "type", "bridge"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                "rawbr",
            ])?;
            ip(&["-n", &host, "link", "set", "rawbr", "up"])?;
            ip(&[
                "-n", &host, "link", "add", "rawv", "mtu", mtu, "type", "veth", "peer", "name",
                "eth0", "mtu", mtu, "netns", &netns,
            ])?;
            ip(&["-n", &host, "link", "set", "rawv", "master", "rawbr"])?;
            ip(&["-n", &host, "link", "set", "rawv", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            eth0_up(&netns, address)?;
            ip(&[
                "-n",
                &netns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])?;
            ip(&[
                "netns",
                "exec",
                &host,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            if self.link == Link::Routed {
                let local = self.hosts[i].ip.to_string();
                ip(&[
                    "-n",
                    &host,
                    "link",
                    "add",
                    "rawvx",
                    "address",
                    &vtep_mac(n),
                    "mtu",
                    mtu,
                    "type",
                    "vxlan",
                    "id",
                    "99",
                    "local",
                    &local,
                    "dev",
                    "eth0",
                    "dstport",
                    "4799",
                    "nolearning",
                ])?;
                ip(&[
                    "-n",
                    &host,
                    "addr",
                    "add",
                    &format!("10.251.{n}.0/32"),
                    "dev",
                    "rawvx",
                ])?;
                ip(&["-n", &host, "link", "set", "rawvx", "up"])?;
            }
            made.push((PathBuf::from(format!("/run/netns/{netns}")), address));
        }
        for &i in on {
            let n = octet(i)?;
            let subnet = format!("10.250.{n}.0/24");
            let via = self.hosts[i].ip.to_string();
            for &j in on.iter().filter(|j| **j != i) {
                let peer = &self.hosts[j].netns;
                match self.link {
                    Link::Lan => ip(&["-n", peer, "route", "add", &subnet, "via", &via])?,
                    Link::Routed => {
                        let vtep = format!("10.251.{n}.0");
                        let mac = vtep_mac(n);
                        ip(&[
                            "-n",
                            peer,
                            "neigh",
                            "add",
                            &vtep,
                            "lladdr",
                            &mac,
                            "dev",
                            "rawvx",
                            "nud",
                            "permanent",
                        ])?;
                        iproute2(
                            "bridge",
                            &[
                                "-n", peer, "fdb", "append", &mac, "dev", "rawvx", "dst", &via,
                            ],
                        )?;
                        ip(&[
                            "-n", peer, "route", "add", &subnet, "via", &vtep, "dev", "rawvx",
                            "onlink",
                        ])?;
                    }
                }
            }
        }
        Ok(made)
    }

    /// `program args` inside host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].netns])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, i: usize, role: &'static str, args: &[String]) -> anyhow::Result<()> {
        let child = self
            .command(i, skiff_binary()?)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {role} on host {i}"))?;
        self.processes.push((i, role, ChildGuard::new(child)));
        Ok(())
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://{}:6443", self.hosts[0].ip)
    }

    fn config(&self, who: &str) -> String {
        self.dir
            .path()
            .join("server")
            .join(format!("{who}.config"))
            .display()
            .to_string()
    }

    /// Starts the control plane on host 0 (TLS; `cm_args` more flags for
    /// the controller manager) and makes a token for the agents.
    ///
    /// # Errors
    /// A process that does not start, or no token.
    pub fn start_control_plane(&mut self, cm_args: &[&str]) -> anyhow::Result<()> {
        let addr = format!("{}:6443", self.hosts[0].ip);
        let data = self.dir.path().join("server");
        let args = [
            "server",
            "--listen",
            &addr,
            "--data-dir",
            &data.display().to_string(),
            "--pod-security-default",
            "privileged",
        ]
        .map(String::from);
        self.spawn(0, "server", &args)?;
        let admin = data.join("admin.config");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !admin.exists() {
            if Instant::now() > deadline {
                bail!("the API server wrote no {}", admin.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let url = self.server_url();
        let mut cm: Vec<String> = [
            "controller-manager",
            "--server",
            &url,
            "--config",
            &self.config("controller-manager"),
            "--lease-duration-secs=2",
        ]
        .map(String::from)
        .to_vec();
        cm.extend(cm_args.iter().map(|a| (*a).to_string()));
        self.spawn(0, "controller-manager", &cm)?;
        let scheduler = [
            "scheduler",
            "--server",
            &url,
            "--config",
            &self.config("scheduler"),
        ]
        .map(String::from);
        self.spawn(0, "scheduler", &scheduler)?;
        let out = self.skiff_output(&["token", "create"])?;
        if !out.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.join = Some(crate::printed_token(
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ));
        Ok(())
    }

    /// Starts (or restarts) the agent of host `i` with a CNI pod network
    /// routed by `backend`, and the iptables service proxy.
    ///
    /// # Errors
    /// The binary is missing, or no control plane yet.
    pub fn start_agent(&mut self, i: usize, backend: &str) -> anyhow::Result<()> {
        self.start_agent_with(i, backend, true)
    }

    /// As [`Hosts::start_agent`]; without `node_ip` the agent is told
    /// neither its address nor where to listen (it listens on all and
    /// finds its address from its default route).
    ///
    /// # Errors
    /// The binary is missing, or no control plane yet.
    pub fn start_agent_with(
        &mut self,
        i: usize,
        backend: &str,
        node_ip: bool,
    ) -> anyhow::Result<()> {
        self.start_agent_periods(i, backend, node_ip, &TEST_PERIODS)
    }

    /// As [`Hosts::start_agent_with`], with `periods` in place of the
    /// tests' 1 s lease, status, resync and back-off flags: appended to
    /// the agent's own flags, so any it takes that are not given already
    /// (an empty list runs it with its default periods).
    ///
    /// # Errors
    /// The binary is missing, or no control plane yet.
    pub fn start_agent_periods(
        &mut self,
        i: usize,
        backend: &str,
        node_ip: bool,
        periods: &[&str],
    ) -> anyhow::Result<()> {
        let (token, hash) = self.join.clone().context("start the control plane first")?;
        let host = self.hosts[i].clone();
        let mut args = [
            "agent",
            "--server",
            &self.server_url(),
            "--token",
            &token,
            "--ca-hash",
            &hash,
            "--node-name",
            &host.node,
            "--node-ip",
            &host.ip.to_string(),
            "--listen",
            &format!("{}:10250", host.ip),
            "--data-dir",
            &host.data_dir.display().to_string(),
            "--pod-network",
            "cni",
            "--flannel-backend",
            backend,
            "--proxy-mode",
            "iptables",
        ]
        .map(String::from)
        .to_vec();
        args.extend(periods.iter().map(|p| (*p).to_string()));
        if !node_ip {
            let at = args
                .iter()
                .position(|a| a == "--node-ip")
                .expect("the agent's arguments name its address");
            args.drain(at..at + 4);
        }
        self.spawn(i, "agent", &args)
    }

    /// Kills host `i`'s `role` process with SIGKILL.
    pub fn kill(&mut self, i: usize, role: &str) {
        self.processes.retain_mut(|(host, r, child)| {
            if *host == i && *r == role {
                child.kill9();
                false
            } else {
                true
            }
        });
    }

    /// `skiff ARGS` as the admin on host 0, to be run (a long-lived
    /// command such as `get -w`). The caller owns the process: the hosts
    /// neither track nor kill it (guard it with a [`ChildGuard`]).
    ///
    /// # Errors
    /// No `skiff` binary.
    pub fn skiff_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = self.command(0, skiff_binary()?);
        cmd.args(args).env("SKIFF_CONFIG", self.config("admin"));
        Ok(cmd)
    }

    fn skiff_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.skiff_command(args)?.output().context("running skiff")
    }

    /// `skiff ARGS` as the admin on host 0: its stdout, or its stderr as
    /// the error.
    ///
    /// # Errors
    /// It failed.
    pub fn skiff(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.skiff_output(args)?;
        if !out.status.success() {
            bail!(
                "skiff {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ARGS` run in host `i` (`ip`, `wget` ...): its stdout.
    ///
    /// # Errors
    /// It failed.
    pub fn run(&self, i: usize, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(i, program).args(args).output()?;
        if !out.status.success() {
            bail!(
                "{program} {} on host {i}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Removes the namespaces and containers of runs of `base` whose process
/// is gone.
/// Gives `eth0` of namespace `netns` its `address` (a /24) and brings
/// it up.
fn eth0_up(netns: &str, address: Ipv4Addr) -> anyhow::Result<()> {
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])
}

fn sweep(base: &str) {
    let listed = Command::new("ip").args(["netns", "list"]).output();
    let names: Vec<String> = listed
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for name in names {
        let Some((run, _)) = name.split_once('-') else {
            continue;
        };
        let Some(pid) = run.strip_prefix(base).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove_containers(&name);
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes the containers of node `node` (by its label).
fn remove_containers(node: &str) {
    let ids = crate::docker_containers_of(node);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Agents first (they would recreate what is removed), then the
        // control plane.
        self.processes
            .sort_by_key(|(host, _, _)| std::cmp::Reverse(*host));
        for (_, _, child) in &mut self.processes {
            child.kill9();
        }
        for host in &self.hosts {
            remove_containers(&host.node);
        }
        for netns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", netns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
