//! The service proxy and cluster DNS end to end on real Docker: a
//! Deployment of busybox httpd pods, each serving its own name, behind a
//! Service; requests from another pod by DNS name, from the host to the
//! NodePort and the LoadBalancer address; readiness, scaling, deletion and
//! an agent restart. Each test has its own service range, node port range
//! and load balancer pool, so tests sharing the host's iptables never
//! claim the same address; the agents' rules are removed on drop.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use skiff::pb::api::v1::DeleteRequest;
use skiff::pb::apps::v1::Deployment;
use skiff::pb::core::v1::{Endpoints, Pod, Service};
use skiff_apiserver::StoreConfig;
use skiff_client::Api;
use skiff_testkit::{AgentNode, wait_until};

mod ingress;
mod local;
mod master;
mod netpol;

/// One test's cluster: API server in process, scheduler, controller
/// manager and agent as processes.
struct Cluster {
    server: skiff_apiserver::ApiServer,
    channel: tonic::transport::Channel,
    node: AgentNode,
    image: &'static str,
    _processes: Vec<skiff_testkit::ChildGuard>,
    _dir: tempfile::TempDir,
}

/// Per-test address ranges.
struct Ranges {
    service_cidr: &'static str,
    node_ports: std::ops::RangeInclusive<u16>,
    lb_pool: &'static str,
}

async fn cluster(prefix: &str, runtime: &'static str, proxy: &str, ranges: &Ranges) -> Cluster {
    let image = skiff_testkit::test_image()
        .await
        .expect("building the test image");
    let dir = tempfile::tempdir().unwrap();
    let mut config = skiff_apiserver::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        StoreConfig::Embedded(dir.path().join("state.redb")),
    );
    config.actors = 2;
    config.service_cidr = ranges.service_cidr.parse().unwrap();
    config.node_ports = ranges.node_ports.clone();
    let server = skiff_apiserver::ApiServer::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_testkit::channel(server.addr).await.unwrap();
    let node = AgentNode::start_with(
        &url,
        prefix,
        runtime,
        &[
            &format!("--proxy-mode={proxy}"),
            &format!("--service-cidr={}", ranges.service_cidr),
            &format!("--lb-pool={}", ranges.lb_pool),
        ],
    )
    .unwrap();
    let processes = vec![
        skiff_testkit::SchedulerProcess::start(&url, "s1", 2)
            .unwrap()
            .process,
        skiff_testkit::controller_manager_with(
            &url,
            &[],
            &[&format!("--lb-pool={}", ranges.lb_pool)],
        )
        .unwrap(),
    ];
    Cluster {
        server,
        channel,
        node,
        image,
        _processes: processes,
        _dir: dir,
    }
}

impl Cluster {
    fn api<K: skiff::Resource>(&self) -> Api<K> {
        Api::new(self.channel.clone())
    }

    /// A Deployment of `replicas` httpd pods serving their own name at
    /// `/` and ready while `/www/ready` exists.
    async fn deploy_who(&self, replicas: i32) {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "who", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "who"}},
                "template": {
                    "metadata": {"labels": {"app": "who"}},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                        "name": "httpd", "image": self.image,
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && touch /www/ready && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                           "periodSeconds": 1, "failureThreshold": 1}
                    }]}
                }
            }
        }))
        .unwrap();
        self.api::<Deployment>().create(deployment).await.unwrap();
    }

    async fn create_service(&self, spec: serde_json::Value) -> Service {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "who", "namespace": "default"},
            "spec": spec,
        }))
        .unwrap();
        self.api::<Service>().create(service).await.unwrap()
    }

    /// The ready endpoint addresses of Service `who`.
    async fn ready(&self) -> Vec<String> {
        let Ok(endpoints) = self.api::<Endpoints>().get("default", "who").await else {
            return Vec::new();
        };
        let mut ips: Vec<String> = endpoints
            .subsets
            .iter()
            .flat_map(|s| &s.addresses)
            .map(|a| a.ip.clone())
            .collect();
        ips.sort();
        ips
    }

    /// The first load balancer address Service `who` gets.
    async fn load_balancer_address(&self) -> String {
        let mut lb = String::new();
        wait_until(
            "a load balancer address",
            Duration::from_secs(30),
            async || {
                let s = self.api::<Service>().get("default", "who").await.unwrap();
                lb = s
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|l| l.ingress.first().map(|i| i.ip.clone()))
                    .unwrap_or_default();
                !lb.is_empty()
            },
        )
        .await;
        lb
    }

    async fn delete_service(&self, name: &str) {
        self.api::<Service>()
            .delete(DeleteRequest {
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// This cluster's agent's rules mentioning `text` (tests running at
    /// the same time have Services of the same names).
    fn rules(&self, text: &str) -> Vec<String> {
        let chains = format!("{}-", skiff_agent::proxy::iptables::prefix(&self.node.name));
        rules_mentioning(text)
            .into_iter()
            .filter(|rule| rule.contains(&chains))
            .collect()
    }

    /// How many ready addresses Service `who` has (one per pod, even
    /// pods sharing an IP on different ports).
    async fn endpoint_count(&self) -> usize {
        self.api::<Endpoints>()
            .get("default", "who")
            .await
            .map(|e| e.subsets.iter().map(|s| s.addresses.len()).sum())
            .unwrap_or(0)
    }

    async fn wait_ready(&self, n: usize) {
        wait_until(
            &format!("{n} ready endpoints"),
            Duration::from_secs(60),
            async || self.ready().await.len() == n,
        )
        .await;
    }

    /// The Docker container of `container` in pod `pod`.
    fn container(&self, pod: &str, container: &str) -> String {
        let out = Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=io.skiff.node={}", self.node.name))
            .arg("--filter")
            .arg(format!("label=io.skiff.pod.name={pod}"))
            .arg("--filter")
            .arg(format!("label=io.skiff.container.name={container}"))
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !id.is_empty(),
            "no running container {container} of pod {pod}"
        );
        id
    }

    /// Runs `script` in the client pod; its output.
    fn in_client(&self, script: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.container("client", "c"), "sh", "-c", script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `n` requests to `url` from the client pod: who answered, how often.
    /// (Busybox's `wget -T` crashes; `timeout` bounds each request instead.)
    fn requests_from_client(&self, url: &str, n: usize) -> BTreeMap<String, usize> {
        let out = self.in_client(&format!(
            "i=0; while [ $i -lt {n} ]; do timeout 5 wget -q -O- {url} || echo FAILED; i=$((i+1)); done"
        ));
        let mut seen = BTreeMap::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            *seen.entry(line.to_string()).or_insert(0) += 1;
        }
        seen
    }

    async fn pod_names(&self) -> Vec<String> {
        let mut names: Vec<String> = skiff_testkit::live_pods(&self.channel, "default", "app=who")
            .await
            .iter()
            .map(|p| p.metadata.as_ref().unwrap().name.clone())
            .collect();
        names.sort();
        names
    }

    async fn start_client(&self) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "client", "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": self.image, "command": ["sleep", "3600"]}]}
        }))
        .unwrap();
        self.api::<Pod>().create(pod).await.unwrap();
        wait_until("the client pod runs", Duration::from_secs(60), async || {
            self.api::<Pod>()
                .get("default", "client")
                .await
                .is_ok_and(|p| p.status.is_some_and(|s| s.phase == "Running"))
        })
        .await;
    }
}

/// `GET /` over HTTP/1.0 to `addr`: the body.
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default())
}

/// The host's nat and filter rules mentioning `text` (every agent's).
fn rules_mentioning(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["nat", "filter"] {
        let save = Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .unwrap();
        out.extend(
            String::from_utf8_lossy(&save.stdout)
                .lines()
                .filter(|l| l.contains(text))
                .map(str::to_string),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_balances_over_ready_pods_and_follows_readiness_and_scale() {
    let ranges = Ranges {
        service_cidr: "10.201.0.0/24",
        node_ports: 31201..=31210,
        lb_pool: "127.0.201.1-127.0.201.9",
    };
    let c = cluster("proxy-dns", "docker", "iptables", &ranges).await;
    c.create_service(json!({"selector": {"app": "who"},
                           "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}))
        .await;
    c.deploy_who(3).await;
    c.start_client().await;
    c.wait_ready(3).await;
    let pods = c.pod_names().await;
    assert_eq!(pods.len(), 3);

    // The pod's resolver is the cluster DNS, with Kubernetes' search path.
    let resolv = c.in_client("cat /etc/resolv.conf");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("ndots:5"), "{resolv}");
    let lookup = c.in_client("nslookup who.default.svc.cluster.local");
    let service = c.api::<Service>().get("default", "who").await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip;
    assert!(lookup.contains(&cluster_ip), "{lookup}");

    // 60 requests by the short name reach all three pods.
    let seen = c.requests_from_client("http://who/", 60);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pods, "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 60);
    // The full name and the namespace-qualified one resolve too.
    for url in [
        "http://who.default/",
        "http://who.default.svc.cluster.local/",
    ] {
        let seen = c.requests_from_client(url, 3);
        assert!(seen.keys().all(|k| pods.contains(k)), "{url}: {seen:?}");
    }

    // A headless Service's name resolves to the ready pods themselves.
    let headless: Service = serde_json::from_value(json!({
        "metadata": {"name": "who-pods", "namespace": "default"},
        "spec": {"clusterIP": "None", "selector": {"app": "who"}, "ports": [{"port": 8080}]}
    }))
    .unwrap();
    c.api::<Service>().create(headless).await.unwrap();
    let pod_ips: Vec<String> = skiff_testkit::live_pods(&c.channel, "default", "app=who")
        .await
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone())
        .collect();
    let mut lookup = String::new();
    wait_until(
        "the headless name lists the pods",
        Duration::from_secs(30),
        async || {
            lookup = c.in_client("nslookup who-pods.default.svc.cluster.local");
            pod_ips.iter().all(|ip| lookup.contains(ip.as_str()))
        },
    )
    .await;
    assert!(!lookup.contains(&cluster_ip), "{lookup}");

    // A Service with no ready endpoint refuses at once.
    let empty: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty", "namespace": "default"},
        "spec": {"selector": {"app": "nobody"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    let empty = c.api::<Service>().create(empty).await.unwrap();
    let empty_addr: SocketAddr = format!("{}:80", empty.spec.unwrap().cluster_ip)
        .parse()
        .unwrap();
    wait_until(
        "the empty service is refused",
        Duration::from_secs(20),
        async || !c.rules("default/empty:").is_empty(),
    )
    .await;
    let started = std::time::Instant::now();
    let refused = TcpStream::connect_timeout(&empty_addr, Duration::from_secs(3));
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A pod whose readiness fails gets no traffic.
    let unready = pods[0].clone();
    let httpd = c.container(&unready, "httpd");
    let out = Command::new("docker")
        .args(["exec", &httpd, "rm", "/www/ready"])
        .status()
        .unwrap();
    assert!(out.success());
    c.wait_ready(2).await;
    let seen = c.requests_from_client("http://who/", 60);
    assert!(
        !seen.contains_key(&unready),
        "{unready} is not ready but answered: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Scaled to one: only that one answers.
    skiff_testkit::modify(&c.api::<Deployment>(), "default", "who", |d| {
        d.spec.as_mut().unwrap().replicas = Some(1);
    })
    .await;
    wait_until("one pod left", Duration::from_secs(60), async || {
        c.pod_names().await.len() == 1
    })
    .await;
    let left = c.pod_names().await;
    // The one left may be the unready one: make it ready again.
    let httpd = c.container(&left[0], "httpd");
    Command::new("docker")
        .args(["exec", &httpd, "touch", "/www/ready"])
        .status()
        .unwrap();
    c.wait_ready(1).await;
    let seen = c.requests_from_client("http://who/", 20);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), left, "{seen:?}");

    // A name that is no Service does not resolve; a Service address no
    // rule claims is refused at once, not sent away.
    // (A cluster name: names outside the domain go on to the host's
    // nameservers, which tests must not reach.)
    let out = c
        .in_client("timeout 5 wget -q -O- http://nope.default.svc.cluster.local/ 2>&1; echo rc=$?");
    assert!(!out.contains("rc=0"), "{out}");
    let started = std::time::Instant::now();
    let refused = http_get("10.201.0.250:80".parse().unwrap());
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_and_load_balancer_addresses_answer_until_deleted_and_survive_an_agent_restart()
{
    let ranges = Ranges {
        service_cidr: "10.202.0.0/24",
        node_ports: 31211..=31220,
        lb_pool: "127.0.202.1-127.0.202.9",
    };
    let mut c = cluster("proxy-lb", "docker", "iptables", &ranges).await;
    c.deploy_who(2).await;
    let created = c
        .create_service(json!({"type": "LoadBalancer", "selector": {"app": "who"},
                               "sessionAffinity": "ClientIP",
                               "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}))
        .await;
    let node_port = u16::try_from(created.spec.as_ref().unwrap().ports[0].node_port).unwrap();
    assert!(ranges.node_ports.contains(&node_port), "{node_port}");
    c.wait_ready(2).await;
    let lb = c.load_balancer_address().await;
    assert_eq!(lb, "127.0.202.1", "the first address of the pool");
    assert!(
        !c.rules("--dst-range 127.0.202.1-127.0.202.9 -m comment --comment \"no service at this address\" -j REJECT").is_empty(),
        "unclaimed pool addresses are refused"
    );
    let pods = c.pod_names().await;

    let node_port_addr: SocketAddr = format!("127.0.0.1:{node_port}").parse().unwrap();
    let lb_addr: SocketAddr = format!("{lb}:80").parse().unwrap();
    let cluster_addr: SocketAddr = format!("{}:80", created.spec.as_ref().unwrap().cluster_ip)
        .parse()
        .unwrap();
    wait_until(
        "the node port answers",
        Duration::from_secs(20),
        async || http_get(node_port_addr).is_ok_and(|b| pods.contains(&b)),
    )
    .await;
    // ClientIP affinity: the host always reaches the same pod.
    for addr in [node_port_addr, lb_addr, cluster_addr] {
        let answers: std::collections::BTreeSet<String> =
            (0..10).map(|_| http_get(addr).unwrap()).collect();
        assert_eq!(answers.len(), 1, "{addr}: {answers:?}");
        assert!(pods.contains(answers.first().unwrap()), "{answers:?}");
    }

    // An open connection through the Service, then the agent is killed
    // and, while it is down, a second Service is deleted.
    let other: Service = serde_json::from_value(json!({
        "metadata": {"name": "other", "namespace": "default"},
        "spec": {"type": "NodePort", "selector": {"app": "who"},
                 "ports": [{"name": "web", "port": 81, "targetPort": "http"}]}
    }))
    .unwrap();
    let other_service = c.api::<Service>().create(other).await.unwrap();
    let other_port = other_service.spec.as_ref().unwrap().ports[0].node_port;
    wait_until(
        "the second service's rules",
        Duration::from_secs(20),
        async || !c.rules("default/other:web/tcp").is_empty(),
    )
    .await;
    let mut open = TcpStream::connect_timeout(&cluster_addr, Duration::from_secs(3)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.node.kill9();
    c.delete_service("other").await;
    // Rules outlive the agent: the open connection and new ones work.
    assert!(pods.contains(&http_get(lb_addr).unwrap()));
    open.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    open.read_to_string(&mut response).unwrap();
    assert!(response.contains(" 200 OK"), "{response}");
    // Drift while the agent is down: someone flushes its services chain;
    // the ClusterIP stops answering.
    let chain = c
        .rules("default/who:web/tcp")
        .iter()
        .find_map(|rule| {
            let rule = rule.strip_prefix("-A ")?;
            let chain = rule.split_whitespace().next()?;
            chain.ends_with("-SERVICES").then(|| chain.to_string())
        })
        .expect("the services chain of the agent");
    let flushed = Command::new("iptables")
        .args(["-w", "-t", "nat", "-F", &chain])
        .status()
        .unwrap();
    assert!(flushed.success());
    assert!(http_get(cluster_addr).is_err(), "no rule, no answer");
    c.node.start_agent().unwrap();
    wait_until(
        "the restarted agent repairs the flushed chain",
        Duration::from_secs(30),
        async || http_get(cluster_addr).is_ok_and(|b| pods.contains(&b)),
    )
    .await;
    wait_until(
        "the restarted agent removes the deleted service's rules",
        Duration::from_secs(30),
        async || c.rules("default/other:web/tcp").is_empty(),
    )
    .await;
    assert!(
        http_get(format!("127.0.0.1:{other_port}").parse().unwrap()).is_err(),
        "the deleted service's node port is closed"
    );
    assert!(pods.contains(&http_get(node_port_addr).unwrap()));

    // Deleting the Service closes its node port and address and leaves no
    // rule naming it.
    c.delete_service("who").await;
    wait_until(
        "no rule names the service",
        Duration::from_secs(30),
        async || c.rules("default/who:").is_empty(),
    )
    .await;
    for addr in [node_port_addr, lb_addr, cluster_addr] {
        let started = std::time::Instant::now();
        assert!(http_get(addr).is_err(), "{addr} still answers");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{addr}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_userspace_proxy_relays_node_ports_and_load_balancer_addresses_to_ready_pods() {
    let ranges = Ranges {
        service_cidr: "10.203.0.0/24",
        node_ports: 31221..=31230,
        lb_pool: "127.0.203.1-127.0.203.9",
    };
    // Host processes: pods share the host's network, each on its own port
    // (the Service's named targetPort finds each pod's number).
    let c = cluster("proxy-user", "process", "userspace", &ranges).await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for (name, dir) in ["a", "b"].iter().zip(&dirs) {
        std::fs::write(dir.path().join("index.html"), name).unwrap();
        std::fs::write(dir.path().join("ready"), "1").unwrap();
        let port = skiff_testkit::free_port().unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "who"}},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
                "name": "httpd", "image": "host",
                "command": ["busybox", "httpd", "-f", "-p", format!("127.0.0.1:{port}"), "-h", dir.path()],
                "ports": [{"name": "http", "containerPort": port}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                                   "periodSeconds": 1, "failureThreshold": 1}
            }]}
        }))
        .unwrap();
        c.api::<Pod>().create(pod).await.unwrap();
    }
    let created = c
        .create_service(json!({"type": "LoadBalancer", "selector": {"app": "who"},
                               "ports": [{"name": "web", "port": 18080, "targetPort": "http"}]}))
        .await;
    let node_port = created.spec.as_ref().unwrap().ports[0].node_port;
    wait_until(
        "both pods are endpoints",
        Duration::from_secs(30),
        async || c.endpoint_count().await == 2,
    )
    .await;
    let node_port_addr: SocketAddr = format!("127.0.0.1:{node_port}").parse().unwrap();
    let lb_addr: SocketAddr = "127.0.203.1:18080".parse().unwrap();
    wait_until("the relays answer", Duration::from_secs(30), async || {
        http_get(node_port_addr).is_ok() && http_get(lb_addr).is_ok()
    })
    .await;
    // The relay's endpoints follow the Endpoints within moments of the
    // count above: both pods answer, taking turns, once it has them.
    for addr in [node_port_addr, lb_addr] {
        let mut answers = std::collections::BTreeSet::new();
        wait_until(
            &format!("both pods answer on {addr}"),
            Duration::from_secs(10),
            async || {
                answers = (0..6).map(|_| http_get(addr).unwrap()).collect();
                answers.len() == 2
            },
        )
        .await;
        assert_eq!(
            answers.into_iter().collect::<Vec<_>>(),
            ["a", "b"],
            "{addr}"
        );
    }

    // b stops being ready: only a answers.
    std::fs::remove_file(dirs[1].path().join("ready")).unwrap();
    wait_until(
        "b leaves the endpoints",
        Duration::from_secs(30),
        async || c.endpoint_count().await == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..6 {
        assert_eq!(http_get(node_port_addr).unwrap(), "a");
    }

    // Deleted: the relays close.
    c.delete_service("who").await;
    wait_until("the relays close", Duration::from_secs(30), async || {
        http_get(node_port_addr).is_err() && http_get(lb_addr).is_err()
    })
    .await;
}
