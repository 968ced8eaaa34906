//! A cluster of several hosts on one machine: hosts are network
//! namespaces the test makes (one L2 segment for host-gw; a router
//! between subnets of their own for VXLAN), the control plane on one, an
//! agent on each of the others with a CNI pod network. Pods reach pods
//! of every host by IP, a Service balances over pods of every host from
//! every host, a NodePort on one host reaches a pod on another, a
//! LoadBalancer without a pool answers on every node's address, a
//! NetworkPolicy admits one pod of another host and refuses another; a
//! restarted agent keeps its pods' addresses, and deleting pods leaves no
//! CNI leftover (address files, veths).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::hosts::{Hosts, Link};

/// A pod named `name` on `node` serving its own name on port 8080.
fn pod(image: &str, name: &str, node: &str, app: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo {name} > /www/index.html; mkdir -p /www/cgi-bin; printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip; chmod +x /www/cgi-bin/ip; exec httpd -f -p 8080 -h /www"]
    volumeMounts: [{{name: www, mountPath: /www}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  volumes: [{{name: www, emptyDir: {{}}}}]
---
"#
    )
}

/// A Service `name` over the pods labelled `app: name`, port 80.
fn service(name: &str, kind: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {kind}
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
---
"#
    )
}

fn get(hosts: &Hosts, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&hosts.skiff(&all).expect("skiff get")).expect("JSON")
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

async fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Builds the hosts, starts the control plane and an agent on each of
/// `agents` hosts with `backend`; waits for every node to be Ready with
/// its podCIDR. Returns them and the nodes' blocks by node name.
async fn cluster(
    prefix: &str,
    link: Link,
    backend: &str,
    agents: usize,
) -> (Hosts, BTreeMap<String, String>) {
    skiff_testkit::test_image()
        .await
        .expect("building the test image");
    let mut hosts = Hosts::build(prefix, link, agents).expect("making the hosts");
    // No load balancer pool: LoadBalancer Services get the nodes'
    // addresses (k3s's ServiceLB).
    hosts
        .start_control_plane(&["--lb-pool="])
        .expect("the control plane");
    // The last host's agent finds its own address (its default route's).
    for i in 1..=agents {
        hosts
            .start_agent_with(i, backend, i != agents)
            .expect("an agent");
    }
    let mut blocks = BTreeMap::new();
    wait_for(
        "every node Ready with a podCIDR",
        Duration::from_secs(60),
        || {
            blocks = items(&get(&hosts, &["get", "nodes"]))
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .filter(|n| !text(n, "/spec/podCIDR").is_empty())
                .map(|n| {
                    (
                        text(n, "/metadata/name").to_string(),
                        text(n, "/spec/podCIDR").to_string(),
                    )
                })
                .collect();
            blocks.len() == agents
        },
    )
    .await;
    let last = &hosts.hosts[agents];
    let node = get(&hosts, &["get", "node", &last.node]);
    let internal = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(internal, last.ip.to_string(), "the agent found its address");
    (hosts, blocks)
}

fn apply(hosts: &Hosts, name: &str, yaml: &str) {
    let path = hosts.dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    hosts
        .skiff(&["apply", "-f", &path.display().to_string()])
        .expect("apply");
}

/// Ready pods: name → (IP, node).
fn ready_pods(hosts: &Hosts) -> BTreeMap<String, (String, String)> {
    ready_in(&get(hosts, &["get", "pods"]))
}

/// The Ready pods of a pod list: name → (IP, node).
fn ready_in(list: &Value) -> BTreeMap<String, (String, String)> {
    items(list)
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            (
                text(p, "/metadata/name").to_string(),
                (
                    text(p, "/status/podIP").to_string(),
                    text(p, "/spec/nodeName").to_string(),
                ),
            )
        })
        .collect()
}

async fn wait_ready(hosts: &Hosts, names: &[&str]) -> BTreeMap<String, (String, String)> {
    let mut pods = BTreeMap::new();
    wait_for(
        &format!("pods {names:?} Ready"),
        Duration::from_secs(60),
        || {
            pods = ready_pods(hosts);
            names.iter().all(|n| pods.contains_key(*n))
        },
    )
    .await;
    pods
}

/// What `url` answers from inside pod `pod`. Routes to a new node are
/// programmed as its Node appears: a few tries are allowed.
fn from_pod(hosts: &Hosts, pod: &str, url: &str) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        // (busybox's own `wget -T` crashes: `timeout` bounds it instead.)
        match hosts.skiff(&["exec", pod, "--", "timeout", "3", "wget", "-qO-", url]) {
            Ok(out) => return out.trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let routes: Vec<String> = (0..hosts.hosts.len())
        .map(|i| hosts.run(i, "ip", &["route"]).unwrap_or_default())
        .collect();
    panic!("{url} from pod {pod}: {last}\nroutes: {routes:#?}")
}

/// Whether pod `pod` gets an answer from `url` (one try).
fn reaches(hosts: &Hosts, pod: &str, url: &str) -> bool {
    hosts
        .skiff(&["exec", pod, "--", "timeout", "3", "wget", "-qO-", url])
        .is_ok_and(|out| !out.trim().is_empty())
}

/// What `url` answers from host `i` itself (busybox's wget, run there),
/// with a few tries as [`from_pod`] (a proxy may not have the endpoints
/// of pods that just became ready yet).
fn from_host(hosts: &Hosts, i: usize, url: &str) -> String {
    let mut last = String::new();
    for _ in 0..10 {
        let args = ["timeout", "3", "busybox", "wget", "-qO-", url];
        match hosts.run(i, "busybox", &args) {
            Ok(out) => return out.trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{url} from host {i}: {last}")
}

/// The names a Service's address answers with from host `i`, over up to
/// 60 requests (stopping once `all` answered).
fn balanced_from_host(
    hosts: &Hosts,
    i: usize,
    url: &str,
    all: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.insert(from_host(hosts, i, url));
        if &seen == all {
            break;
        }
    }
    seen
}

/// Address files host-local holds on host `i` (one per pod address).
fn address_files(hosts: &Hosts, i: usize) -> Vec<String> {
    std::fs::read_dir(hosts.hosts[i].data_dir.join("cni/ipam/skiff"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
        .collect()
}

/// Pod veths left on host `i`'s bridge.
fn bridge_ports(hosts: &Hosts, i: usize) -> String {
    hosts
        .run(i, "ip", &["-o", "link", "show", "master", "skiff0"])
        .unwrap_or_default()
}

fn in_block(ip: &str, block: &str) -> bool {
    let block: skiff::cidr::Ipv4Cidr = block.parse().unwrap();
    ip.parse().is_ok_and(|ip| block.contains(ip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_pods_services_and_node_ports_span_hosts_and_addresses_survive_agent_restarts() {
    let (mut hosts, blocks) = cluster("skg", Link::Lan, "host-gw", 3).await;
    let distinct: BTreeSet<&String> = blocks.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each node has a block of its own: {blocks:?}"
    );
    for block in blocks.values() {
        assert!(
            in_block(block.trim_end_matches("/24"), "10.42.0.0/16"),
            "{block}"
        );
    }
    let image = skiff_testkit::TEST_IMAGE;
    let nodes: Vec<String> = hosts.hosts.iter().map(|h| h.node.clone()).collect();
    let node = |i: usize| nodes[i].clone();
    let mut yaml = String::new();
    for i in 1..=3 {
        yaml += &pod(image, &format!("web-{i}"), &node(i), "web");
    }
    yaml += &pod(image, "solo", &node(3), "solo");
    yaml += &service("web", "ClusterIP");
    yaml += &service("solo", "LoadBalancer");
    apply(&hosts, "pods.yaml", &yaml);
    let pods = wait_ready(&hosts, &["web-1", "web-2", "web-3", "solo"]).await;
    for (name, (ip, node)) in &pods {
        assert!(
            in_block(ip, &blocks[node]),
            "{name} at {ip} is in its node's block {}",
            blocks[node]
        );
    }
    let ip_of = |name: &str| pods[name].0.clone();

    // Pod to pod by IP, across hosts, both ways.
    for (from, to) in [
        ("web-1", "web-2"),
        ("web-1", "web-3"),
        ("web-3", "web-1"),
        ("web-2", "solo"),
    ] {
        assert_eq!(
            from_pod(&hosts, from, &format!("http://{}:8080/", ip_of(to))),
            to,
            "{from} → {to}"
        );
    }
    // The Service by name from a pod (cluster DNS of its node), and its
    // ClusterIP from every host reaching the pods of every host.
    let all: BTreeSet<String> = (1..=3).map(|i| format!("web-{i}")).collect();
    assert!(all.contains(&from_pod(
        &hosts,
        "web-2",
        "http://web.default.svc.cluster.local/"
    )));
    let cluster_ip = text(&get(&hosts, &["get", "service", "web"]), "/spec/clusterIP").to_string();
    for i in 1..=3 {
        let seen = balanced_from_host(&hosts, i, &format!("http://{cluster_ip}/"), &all);
        assert_eq!(
            seen, all,
            "the ClusterIP from host {i} reaches the pods of all three hosts"
        );
    }
    // A NodePort of host 1 reaches the pod that runs only on host 3, from
    // the control plane's host.
    let node_port = get(&hosts, &["get", "service", "solo"])["spec"]["ports"][0]["nodePort"]
        .as_i64()
        .unwrap();
    let host1 = hosts.hosts[1].ip;
    assert_eq!(
        from_host(&hosts, 0, &format!("http://{host1}:{node_port}/")),
        "solo"
    );
    // Without a pool, the LoadBalancer's addresses are the nodes' own, and
    // every host answers its port there, also those without its pod.
    let node_ips: BTreeSet<String> = (1..=3).map(|i| hosts.hosts[i].ip.to_string()).collect();
    let mut lb_ips = BTreeSet::new();
    wait_for(
        "the LoadBalancer on the nodes' addresses",
        Duration::from_secs(30),
        || {
            lb_ips = get(&hosts, &["get", "service", "solo"])["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["ip"].as_str().map(str::to_string))
                .collect();
            lb_ips == node_ips
        },
    )
    .await;
    for ip in &lb_ips {
        assert_eq!(
            from_host(&hosts, 0, &format!("http://{ip}/")),
            "solo",
            "the LoadBalancer at {ip}"
        );
    }

    // externalTrafficPolicy Local: only host 3 (solo's) is the load
    // balancer, solo sees the client's own address there, and the other
    // hosts do not take its traffic in; Cluster masquerades.
    apply(
        &hosts,
        "local.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: solo-local}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {app: solo}\n  ports: [{port: 81, targetPort: 8080}]\n",
    );
    let host3 = hosts.hosts[3].ip.to_string();
    wait_for("solo-local on host 3 only", Duration::from_secs(30), || {
        let ips: Vec<String> =
            get(&hosts, &["get", "service", "solo-local"])["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["ip"].as_str().map(str::to_string))
                .collect();
        ips == [host3.clone()]
    })
    .await;
    let client = hosts.hosts[0].ip.to_string();
    // (busybox httpd writes IPv4 clients as [::ffff:a.b.c.d].)
    let remote = |text: String| {
        text.trim_start_matches("[::ffff:")
            .trim_end_matches(']')
            .to_string()
    };
    assert_eq!(
        remote(from_host(
            &hosts,
            0,
            &format!("http://{host3}:81/cgi-bin/ip")
        )),
        client,
        "Local keeps the client's address"
    );
    let masqueraded = remote(from_host(&hosts, 0, &format!("http://{host3}/cgi-bin/ip")));
    assert_ne!(masqueraded, client, "Cluster masquerades");
    let local_node_port =
        get(&hosts, &["get", "service", "solo-local"])["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .unwrap();
    let args = [
        "timeout",
        "3",
        "busybox",
        "wget",
        "-qO-",
        &format!("http://{host1}:{local_node_port}/"),
    ];
    assert!(
        hosts.run(0, "busybox", &args).is_err(),
        "host 1 has no solo pod: it does not take Local traffic in"
    );

    // A NetworkPolicy holds across hosts: solo (host 3) admits web-1
    // (host 1) by its address and refuses web-2 (host 2); removed, both
    // reach it again.
    let policy = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: solo-from-web-1}}\nspec:\n  podSelector: {{matchLabels: {{app: solo}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {}/32}}}}]\n    ports: [{{port: 8080}}]\n",
        ip_of("web-1")
    );
    apply(&hosts, "policy.yaml", &policy);
    let solo_url = format!("http://{}:8080/", ip_of("solo"));
    wait_for(
        "web-2 refused by solo's policy",
        Duration::from_secs(30),
        || !reaches(&hosts, "web-2", &solo_url),
    )
    .await;
    assert_eq!(
        from_pod(&hosts, "web-1", &solo_url),
        "solo",
        "web-1 is allowed"
    );
    hosts
        .skiff(&["delete", "networkpolicy", "solo-from-web-1"])
        .unwrap();
    wait_for("web-2 reaches solo again", Duration::from_secs(30), || {
        reaches(&hosts, "web-2", &solo_url)
    })
    .await;

    // An agent killed and started again: its pod keeps its address and
    // stays reachable; a new pod gets another address.
    let before = address_files(&hosts, 1);
    assert_eq!(before, vec![ip_of("web-1")]);
    hosts.kill(1, "agent");
    hosts.start_agent(1, "host-gw").unwrap();
    apply(&hosts, "late.yaml", &pod(image, "late", &node(1), "late"));
    let after = wait_ready(&hosts, &["web-1", "late"]).await;
    assert_eq!(after["web-1"].0, ip_of("web-1"), "web-1 kept its address");
    assert_ne!(after["late"].0, ip_of("web-1"), "no address given twice");
    assert_eq!(
        from_pod(&hosts, "web-2", &format!("http://{}:8080/", ip_of("web-1"))),
        "web-1"
    );
    assert_eq!(
        from_pod(&hosts, "late", &format!("http://{}:8080/", ip_of("web-3"))),
        "web-3"
    );

    // A deleted pod's address is freed; with every pod gone, no address
    // file and no veth is left on any host.
    hosts.skiff(&["delete", "pod", "web-1"]).unwrap();
    wait_for("web-1's address freed", Duration::from_secs(30), || {
        !address_files(&hosts, 1).contains(&ip_of("web-1"))
    })
    .await;
    hosts
        .skiff(&["delete", "pod", "web-2", "web-3", "solo", "late"])
        .unwrap();
    wait_for("no pod left", Duration::from_secs(60), || {
        items(&get(&hosts, &["get", "pods"])).is_empty()
    })
    .await;
    for i in 1..=3 {
        wait_for(&format!("host {i} clean"), Duration::from_secs(30), || {
            address_files(&hosts, i).is_empty() && bridge_ports(&hosts, i).trim().is_empty()
        })
        .await;
        let attachments = std::fs::read_dir(hosts.hosts[i].data_dir.join("cni/attachments"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(attachments, 0, "host {i} keeps no attachment record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_carries_pod_traffic_between_hosts_on_different_subnets() {
    let (mut hosts, _blocks) = cluster("skv", Link::Routed, "vxlan", 3).await;
    let image = skiff_testkit::TEST_IMAGE;
    let mut yaml = String::new();
    for i in 1..=3 {
        yaml += &pod(image, &format!("web-{i}"), &hosts.hosts[i].node, "web");
    }
    yaml += &service("web", "ClusterIP");
    apply(&hosts, "pods.yaml", &yaml);
    let pods = wait_ready(&hosts, &["web-1", "web-2", "web-3"]).await;
    for (from, to) in [
        ("web-1", "web-2"),
        ("web-1", "web-3"),
        ("web-2", "web-3"),
        ("web-3", "web-1"),
    ] {
        assert_eq!(
            from_pod(&hosts, from, &format!("http://{}:8080/", pods[to].0)),
            to,
            "{from} → {to}"
        );
    }
    // The tunnel's overhead comes off the pods' MTU.
    let device = hosts
        .run(1, "ip", &["-d", "link", "show", "skiff.1"])
        .unwrap();
    assert!(
        device.contains("vxlan id 1") && device.contains("mtu 1450"),
        "{device}"
    );
    let mtu = hosts
        .skiff(&["exec", "web-1", "--", "cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    assert_eq!(mtu.trim(), "1450");
    let all: BTreeSet<String> = (1..=3).map(|i| format!("web-{i}")).collect();
    let cluster_ip = text(&get(&hosts, &["get", "service", "web"]), "/spec/clusterIP").to_string();
    for i in [1, 3] {
        let seen = balanced_from_host(&hosts, i, &format!("http://{cluster_ip}/"), &all);
        assert_eq!(
            seen, all,
            "the ClusterIP from host {i} reaches the pods of all three hosts"
        );
    }
    // A restarted agent keeps its tunnel device (and so the MAC the other
    // nodes send to): traffic keeps flowing both ways.
    let mac = |hosts: &Hosts| {
        let shown = hosts
            .run(2, "ip", &["-o", "link", "show", "skiff.1"])
            .unwrap();
        let after = shown.split("link/ether ").nth(1).unwrap_or_default();
        after.split(' ').next().unwrap_or_default().to_string()
    };
    let before = mac(&hosts);
    assert!(!before.is_empty());
    hosts.kill(2, "agent");
    hosts.start_agent(2, "vxlan").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mac(&hosts),
        before,
        "the VXLAN device survives an agent restart"
    );
    for (from, to) in [("web-1", "web-2"), ("web-2", "web-3")] {
        let url = format!("http://{}:8080/", pods[to].0);
        assert_eq!(
            from_pod(&hosts, from, &url),
            to,
            "{from} → {to} after a restart"
        );
    }
}

/// `skiff up --pod-network cni --etcd-managed`, the one-machine cluster
/// with the multi-host pieces: inside a network namespace of the test's
/// (so its bridge and rules are the test's), pods get addresses from the
/// node's block, reach a Service by name, and the state is in the etcd
/// `skiff up` started, which stops with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_up_with_a_cni_network_and_its_own_etcd() {
    use std::process::{Command, Stdio};

    let image = skiff_testkit::test_image().await.unwrap();
    let netns = format!("skup{}", std::process::id());
    let node = format!("skup-{}", std::process::id());
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap()
            .success()
    );
    let mut up = Up {
        child: None,
        etcd: data.join("etcd"),
        netns: netns.clone(),
        node: node.clone(),
    };
    Command::new("ip")
        .args(["-n", &netns, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    let skiff = skiff_testkit::skiff_binary().unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(&skiff)
        .args(["up", "--listen", "127.0.0.1:6443", "--pod-network", "cni"])
        .args([
            "--etcd-managed",
            "--node-name",
            &node,
            "--proxy-mode",
            "iptables",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("HOME", home.path())
        .env_remove("SKIFF_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    up.child = Some(child);
    let said = skiff_testkit::stdout_until(
        up.child.as_mut().unwrap(),
        "Press Ctrl-C",
        Duration::from_secs(60),
    );
    assert!(
        said.contains("pods on CNI from the node's block of 10.42.0.0/16"),
        "{said}"
    );
    assert!(said.contains("(started by skiff up, data in"), "{said}");
    let cli = |args: &[&str]| -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(&skiff)
            .args(args)
            .env("HOME", home.path())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let manifests = home.path().join("web.yaml");
    std::fs::write(
        &manifests,
        pod(image, "web", &node, "web")
            + &service("web", "ClusterIP")
            + &pod(image, "client", &node, "client"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = cli(&["apply", "-f", &manifests.display().to_string()]) {
        assert!(Instant::now() < deadline, "apply: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut ips = BTreeMap::new();
    wait_for("both pods Ready", Duration::from_secs(60), || {
        let Ok(out) = cli(&["get", "pods", "-o", "json"]) else {
            return false;
        };
        ips = ready_in(&serde_json::from_str(&out).unwrap());
        ips.len() == 2
    })
    .await;
    let nodes: Value =
        serde_json::from_str(&cli(&["get", "nodes", "-o", "json"]).unwrap()).unwrap();
    let block = text(&items(&nodes)[0], "/spec/podCIDR").to_string();
    for (ip, _) in ips.values() {
        assert!(in_block(ip, &block), "{ip} in {block}");
    }
    let mut answer = String::new();
    for _ in 0..20 {
        if let Ok(out) = cli(&[
            "exec",
            "client",
            "--",
            "timeout",
            "3",
            "wget",
            "-qO-",
            "http://web.default.svc.cluster.local/",
        ]) {
            answer = out;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(answer.trim(), "web");
    assert!(
        data.join("etcd").join("skiff-0").is_dir(),
        "the state is in the managed etcd"
    );

    // Stopped, it takes its etcd with it.
    let status = up.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "skiff up exits cleanly: {status:?}"
    );
    assert!(
        up.members().is_empty(),
        "the managed etcd stopped with skiff up"
    );
}

/// A `skiff up` of a test, in network namespace `netns`: on drop it is
/// stopped (SIGTERM, SIGKILL after 20 s), then whatever it left — etcd
/// members by the pid files beside their logs, the node's containers by
/// its label — and the namespace are removed.
struct Up {
    child: Option<std::process::Child>,
    etcd: std::path::PathBuf,
    netns: String,
    node: String,
}

impl Up {
    /// Stops `skiff up`; its exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The pids of etcd members of this `skiff up` still running.
    fn members(&self) -> Vec<u32> {
        std::fs::read_dir(&self.etcd)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .filter(|pid: &u32| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.etcd.to_string_lossy())
                })
            })
            .collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
        for pid in self.members() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let ids = skiff_testkit::docker_containers_of(&self.node);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The Kubernetes docs' NetworkPolicy examples between hosts: a server on
/// host 2 with two ports, clients on host 1 in two namespaces; each
/// policy's ingress rules are applied on host 2, its egress rules on
/// host 1, and every client probes every port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policies_hold_between_hosts() {
    let (hosts, _blocks) = cluster("snp", Link::Lan, "host-gw", 2).await;
    let image = skiff_testkit::TEST_IMAGE;
    let (client_node, server_node) = (hosts.hosts[1].node.clone(), hosts.hosts[2].node.clone());
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: guest, labels: {team: guest}}\n---\n",
    );
    let pod = |ns: &str, name: &str, node: &str, labels: &str, command: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"{command}\"]\n    ports: [{{name: http, containerPort: 8080}}, {{name: alt, containerPort: 9090}}]\n---\n"
        )
    };
    yaml += &pod(
        "shop",
        "web",
        &server_node,
        "{app: web}",
        "mkdir -p /www && echo web > /www/index.html && httpd -p 9090 -h /www && exec httpd -f -p 8080 -h /www",
    );
    for (ns, name, labels) in [
        ("shop", "front", "{role: frontend}"),
        ("shop", "other", "{}"),
        ("guest", "visitor", "{role: frontend}"),
    ] {
        yaml += &pod(ns, name, &client_node, labels, "exec sleep 3600");
    }
    apply(&hosts, "world.yaml", &yaml);
    let mut web = String::new();
    wait_for("every pod Ready", Duration::from_secs(60), || {
        let pods = ready_in(&get(&hosts, &["get", "pods", "-A"]));
        web = pods
            .get("web")
            .map(|(ip, _)| ip.clone())
            .unwrap_or_default();
        ["web", "front", "other", "visitor"]
            .iter()
            .all(|n| pods.contains_key(*n))
    })
    .await;
    let clients = [("shop", "front"), ("shop", "other"), ("guest", "visitor")];
    let matrix = |hosts: &Hosts| -> BTreeSet<String> {
        let mut allowed = BTreeSet::new();
        for (ns, client) in clients {
            for port in [8080, 9090] {
                let url = format!("http://{web}:{port}/");
                let out = hosts.skiff(&[
                    "exec", "-n", ns, client, "--", "timeout", "3", "wget", "-qO-", &url,
                ]);
                if out.is_ok_and(|o| o.contains("web")) {
                    allowed.insert(format!("{client}:{port}"));
                }
            }
        }
        allowed
    };
    let expect = async |what: &str, allowed: &[&str]| {
        let want: BTreeSet<String> = allowed.iter().map(|s| (*s).to_string()).collect();
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            seen = matrix(&hosts);
            if seen == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{what}: allowed {seen:?}, expected {want:?}");
    };
    let all = [
        "front:8080",
        "front:9090",
        "other:8080",
        "other:9090",
        "visitor:8080",
        "visitor:9090",
    ];
    expect("no policy", &all).await;
    let policy = |name: &str, spec: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
        )
    };
    let delete = |name: &str| {
        hosts
            .skiff(&["delete", "networkpolicy", name, "-n", "shop"])
            .expect("deleting a policy");
    };
    apply(
        &hosts,
        "deny.yaml",
        &policy(
            "default-deny-ingress",
            "{podSelector: {}, policyTypes: [Ingress]}",
        ),
    );
    expect("default deny", &[]).await;
    delete("default-deny-ingress");
    expect("deny removed", &all).await;
    apply(
        &hosts,
        "guests.yaml",
        &policy(
            "from-guests",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: guest}}}]}]}",
        ),
    );
    expect(
        "from the guest namespace",
        &["visitor:8080", "visitor:9090"],
    )
    .await;
    apply(
        &hosts,
        "frontends.yaml",
        &policy(
            "frontends-on-http",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}], ports: [{port: http}]}]}",
        ),
    );
    expect(
        "plus shop's frontends on http",
        &["front:8080", "visitor:8080", "visitor:9090"],
    )
    .await;
    delete("from-guests");
    delete("frontends-on-http");
    expect("both removed", &all).await;
    apply(
        &hosts,
        "egress.yaml",
        &policy(
            "front-egress",
            &format!(
                "{{podSelector: {{matchLabels: {{role: frontend}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {web}/32}}}}], ports: [{{port: 8080}}]}}]}}"
            ),
        ),
    );
    expect(
        "the frontends' egress to web on 8080 only (the visitor is another namespace's)",
        &[
            "front:8080",
            "other:8080",
            "other:9090",
            "visitor:8080",
            "visitor:9090",
        ],
    )
    .await;
    delete("front-egress");
    expect("all removed", &all).await;
}
