use std::net::SocketAddrV4;

use serde_json::json;
use skiff::pb::core::v1::{Endpoints, Service};

use super::iptables::{self, Existing, Ranges};
use super::{DEFAULT_AFFINITY_SECONDS, ServicePort, service_ports};

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("service")
}

fn endpoints(value: serde_json::Value) -> Endpoints {
    serde_json::from_value(value).expect("endpoints")
}

fn web() -> (Service, Endpoints) {
    (
        service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.43.0.10", "type": "NodePort",
                     "externalIPs": ["10.45.0.7"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "10.44.0.1"}]}}
        })),
        endpoints(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "172.28.0.3"}, {"ip": "172.28.0.2"}],
                "notReadyAddresses": [{"ip": "172.28.0.9"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "dns", "port": 5353, "protocol": "UDP"}]
            }]
        })),
    )
}

#[test]
fn ports_keep_ready_endpoints_matched_by_name_and_protocol() {
    let (svc, eps) = web();
    let ports = service_ports(&[svc], &[eps], "n1");
    assert_eq!(ports.len(), 2);
    let http = ports.iter().find(|p| p.port_name == "http").expect("http");
    assert_eq!(http.protocol, "tcp");
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(
        http.external_ips,
        vec![
            "10.44.0.1".parse::<std::net::Ipv4Addr>().unwrap(),
            "10.45.0.7".parse().unwrap()
        ],
        "the load balancer's address and spec.externalIPs"
    );
    assert_eq!(
        http.endpoints,
        vec![
            "172.28.0.2:8080".parse::<SocketAddrV4>().unwrap(),
            "172.28.0.3:8080".parse().unwrap()
        ],
        "ready addresses only, sorted, with the target port"
    );
    let dns = ports.iter().find(|p| p.port_name == "dns").expect("dns");
    assert_eq!(dns.protocol, "udp");
    assert_eq!(dns.endpoints[0].port(), 5353);
}

#[test]
fn headless_external_name_and_missing_endpoints() {
    let headless = service(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}
    }));
    let external = service(json!({
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.org"}
    }));
    let lonely = service(json!({
        "metadata": {"name": "lonely", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.20", "ports": [{"port": 80}],
                 "sessionAffinity": "ClientIP"}
    }));
    let ports = service_ports(&[headless, external, lonely], &[] as &[Endpoints], "n1");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].name, "lonely");
    assert!(ports[0].endpoints.is_empty());
    assert_eq!(ports[0].affinity, Some(DEFAULT_AFFINITY_SECONDS));
}

fn render(ports: &[ServicePort], existing: &Existing) -> String {
    let ranges = Ranges {
        service_cidr: Some("10.43.0.0/16".into()),
        lb_pool: Some("10.44.0.0/24".into()),
    };
    iptables::render(&iptables::prefix("node-a"), ports, &ranges, existing)
}

#[test]
fn rules_balance_over_endpoints_and_reject_the_rest() {
    let (svc, eps) = web();
    let rules = render(&service_ports(&[svc], &[eps], "n1"), &Existing::default());
    let prefix = iptables::prefix("node-a");
    assert!(prefix.starts_with("SKF-") && prefix.len() == 10, "{prefix}");
    // Every chain name fits iptables' 28 characters.
    for line in rules.lines().filter(|l| l.starts_with(':')) {
        let name = line[1..].split_whitespace().next().unwrap();
        assert!(name.len() <= 28, "{name} too long");
    }
    assert!(
        rules.contains("-d 10.43.0.10/32 -p tcp -m tcp --dport 80"),
        "{rules}"
    );
    assert!(
        rules.contains("-d 10.44.0.1/32 -p tcp -m tcp --dport 80"),
        "{rules}"
    );
    assert!(
        rules.contains("-d 10.45.0.7/32 -p tcp -m tcp --dport 80"),
        "spec.externalIPs answer too: {rules}"
    );
    assert!(rules.contains("--dport 30080"), "{rules}");
    assert!(
        rules.contains("-j DNAT --to-destination 172.28.0.2:8080"),
        "{rules}"
    );
    assert!(
        rules.contains("-j DNAT --to-destination 172.28.0.3:8080"),
        "{rules}"
    );
    assert!(rules.contains("--probability 0.5000000000"), "{rules}");
    assert!(
        rules.contains("-p udp -m udp -j DNAT --to-destination 172.28.0.2:5353"),
        "{rules}"
    );
    assert!(
        !rules.contains("172.28.0.9"),
        "a not-ready address gets no traffic"
    );
    // ClusterIP traffic is masqueraded only from loopback; NodePort and
    // load balancer traffic always (kube-proxy's Cluster policy).
    let svc_masq: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains("-SVC-") && l.ends_with("-MARK-MASQ"))
        .collect();
    assert!(
        !svc_masq.is_empty() && svc_masq.iter().all(|l| l.contains("-s 127.0.0.0/8")),
        "{svc_masq:?}"
    );
    assert!(
        rules
            .lines()
            .any(|l| l.starts_with(&format!("-A {prefix}-EXT-"))
                && l.ends_with(&format!("-j {prefix}-MARK-MASQ"))),
        "{rules}"
    );
    // Other machines never reach loopback addresses (CVE-2020-8558).
    assert!(rules.contains("-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"loopback is for this host\" -j RETURN"), "{rules}");
    assert!(rules.contains("! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment \"loopback is for this host\" -j DROP"), "{rules}");
    // Unclaimed addresses of the ranges are refused, never routed away.
    assert!(
        rules.contains(
            "-d 10.43.0.0/16 -m comment --comment \"no service at this address\" -j REJECT"
        )
    );
    assert!(rules.contains("-d 10.44.0.0/24 -m comment"));
    let pool_range = iptables::render(
        &iptables::prefix("node-a"),
        &[],
        &Ranges {
            service_cidr: None,
            lb_pool: Some("10.44.0.1-10.44.0.9".into()),
        },
        &Existing::default(),
    );
    assert!(
        pool_range.contains("-m iprange --dst-range 10.44.0.1-10.44.0.9 -m comment"),
        "{pool_range}"
    );
    // Jumps from the built-in chains are inserted first in line.
    assert!(rules.contains(&format!(
        "-I PREROUTING 1 -m comment --comment \"skiff {prefix}\" -j {prefix}-SERVICES"
    )));
    assert_eq!(rules.matches("COMMIT").count(), 2);
}

#[test]
fn a_port_without_endpoints_is_refused_not_natted() {
    let lonely = service(json!({
        "metadata": {"name": "lonely", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.20", "type": "NodePort",
                 "ports": [{"port": 80, "nodePort": 30001}]}
    }));
    let rules = render(
        &service_ports(&[lonely], &[] as &[Endpoints], "n1"),
        &Existing::default(),
    );
    assert!(!rules.contains("-j DNAT"), "{rules}");
    assert!(rules.contains("-d 10.43.0.20/32 -p tcp -m tcp --dport 80 -m comment --comment \"default/lonely:/tcp\" -j REJECT"), "{rules}");
    assert!(
        rules.contains("--dst-type LOCAL -p tcp -m tcp --dport 30001"),
        "{rules}"
    );
}

#[test]
fn stale_chains_are_deleted_and_present_jumps_not_repeated() {
    let prefix = iptables::prefix("node-a");
    let save = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:{prefix}-SERVICES - [0:0]\n:{prefix}-SVC-0123456789AB - [0:0]\n\
         -A PREROUTING -m comment --comment \"skiff {prefix}\" -j {prefix}-SERVICES\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         :SKF-ffffff-SERVICES - [0:0]\nCOMMIT\n*filter\n:{prefix}-FORWARD - [0:0]\nCOMMIT\n"
    );
    let existing = iptables::parse_existing(&prefix, &save);
    assert!(existing.nat.contains(&format!("{prefix}-SVC-0123456789AB")));
    assert!(
        !existing.nat.contains("SKF-ffffff-SERVICES"),
        "another agent's chains are not ours"
    );
    assert_eq!(existing.jumps.len(), 1);
    let rules = render(&[], &existing);
    assert!(
        rules.contains(&format!("-X {prefix}-SVC-0123456789AB")),
        "{rules}"
    );
    assert!(!rules.contains("-I PREROUTING"), "{rules}");
    assert!(rules.contains("-I OUTPUT 1"), "{rules}");
    let cleanup = iptables::render_cleanup(&existing);
    assert!(cleanup.contains(&format!(
        "-D PREROUTING -m comment --comment \"skiff {prefix}\" -j {prefix}-SERVICES"
    )));
    assert!(cleanup.contains(&format!("-X {prefix}-FORWARD")));
    assert!(!cleanup.contains("SKF-ffffff"));
}

#[test]
fn affinity_sends_a_client_back_to_its_endpoint() {
    let (mut svc, eps) = web();
    svc.spec.as_mut().unwrap().session_affinity = "ClientIP".into();
    let rules = render(&service_ports(&[svc], &[eps], "n1"), &Existing::default());
    assert!(
        rules.contains(&format!(
            "--rcheck --seconds {DEFAULT_AFFINITY_SECONDS} --reap"
        )),
        "{rules}"
    );
    assert!(rules.contains("--rsource --set -m tcp -j DNAT"), "{rules}");
}

#[test]
fn a_session_affinity_timeout_sets_how_long_a_client_sticks() {
    let (mut svc, eps) = web();
    let spec = svc.spec.as_mut().unwrap();
    spec.session_affinity = "ClientIP".into();
    spec.session_affinity_config = Some(skiff::pb::core::v1::SessionAffinityConfig {
        client_ip: Some(skiff::pb::core::v1::ClientIpConfig {
            timeout_seconds: Some(60),
        }),
    });
    let rules = render(&service_ports(&[svc], &[eps], "n1"), &Existing::default());
    assert!(rules.contains("--rcheck --seconds 60 --reap"), "{rules}");
    assert!(
        !rules.contains(&format!("--seconds {DEFAULT_AFFINITY_SECONDS} ")),
        "{rules}"
    );
}

#[test]
fn external_traffic_policy_local_goes_to_this_nodes_endpoints_unmasqueraded() {
    let svc = service(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.10", "type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.44.0.1"}]}}
    }));
    let eps = endpoints(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "subsets": [{
            "addresses": [{"ip": "172.28.0.2", "nodeName": "n1"}, {"ip": "172.28.0.3", "nodeName": "n2"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }]
    }));
    let ports = service_ports(std::slice::from_ref(&svc), std::slice::from_ref(&eps), "n1");
    assert_eq!(
        ports[0].endpoints.len(),
        2,
        "the ClusterIP still balances over all"
    );
    assert_eq!(
        ports[0].local,
        Some(vec!["172.28.0.2:8080".parse().unwrap()]),
        "outside traffic: this node's only"
    );
    let rules = render(&ports, &Existing::default());
    let chain_lines = |rules: &str, kind: &str| -> Vec<String> {
        rules
            .lines()
            .filter(|l| {
                l.starts_with("-A ")
                    && l.split_whitespace()
                        .nth(1)
                        .is_some_and(|c| c.contains(kind))
            })
            .map(str::to_string)
            .collect()
    };
    let ext = chain_lines(&rules, "-EXT-");
    assert!(
        ext.iter()
            .any(|l| l.contains(&format!("--set-xmark {}", iptables::LOCAL_MARK))),
        "{ext:#?}"
    );
    // Only the node's own connections (localhost, the loopback pool) are
    // masqueraded, and they may go to any endpoint.
    for l in ext
        .iter()
        .filter(|l| l.contains("MARK-MASQ") || l.contains("-SVC-"))
    {
        assert!(l.contains("--src-type LOCAL"), "{l}");
    }
    assert_eq!(
        ext.iter()
            .filter(|l| l.contains("--src-type LOCAL"))
            .count(),
        2,
        "{ext:#?}"
    );
    let lcl = chain_lines(&rules, "-LCL-");
    assert_eq!(lcl.len(), 1, "one local endpoint: {lcl:#?}");
    assert!(rules.contains(&format!(
        "-m mark --mark {} -j ACCEPT",
        iptables::LOCAL_MARK
    )));
    // A node without an endpoint of it refuses outside traffic, keeps its
    // own connections going to the other nodes' endpoints, and the
    // ClusterIP answers as ever.
    let elsewhere = render(&service_ports(&[svc], &[eps], "n3"), &Existing::default());
    assert!(chain_lines(&elsewhere, "-LCL-").is_empty(), "{elsewhere}");
    let ext = chain_lines(&elsewhere, "-EXT-");
    assert!(
        ext.iter().all(|l| l.contains("--src-type LOCAL")),
        "{ext:#?}"
    );
    let external = chain_lines(&elsewhere, "-EXTERNAL");
    assert!(
        external.iter().any(|l| l.contains("--dst-type LOCAL")
            && l.contains("--dport 30080")
            && l.ends_with("-j REJECT")),
        "{external:#?}"
    );
    assert!(
        external
            .iter()
            .any(|l| l.contains("-d 10.44.0.1/32") && l.ends_with("-j REJECT")),
        "{external:#?}"
    );
    assert!(
        elsewhere.contains("-d 10.43.0.10/32"),
        "the ClusterIP still answers"
    );
}

#[test]
fn the_hosts_own_clients_keep_their_ports_when_masqueraded_and_others_get_random_ones() {
    let (svc, eps) = web();
    let rules = render(&service_ports(&[svc], &[eps], "n1"), &Existing::default());
    let masquerades: Vec<&str> = rules
        .lines()
        .filter(|l| l.ends_with("-j MASQUERADE") || l.contains("-j MASQUERADE "))
        .collect();
    // With a random port per connection of the host's own,
    // localhost:NODEPORT fell to a fifth of its rate
    // (`skiff-bench proxy --seconds 15`).
    assert_eq!(masquerades.len(), 2, "{rules}");
    let prefix = iptables::prefix("node-a");
    let chain: Vec<&str> = rules
        .lines()
        .filter(|l| l.starts_with(&format!("-A {prefix}-POSTROUTING ")))
        .collect();
    // Only marked connections reach the masquerades, and their mark is
    // cleared first (a packet seen again, e.g. VXLAN's outer one, is not
    // masqueraded for its inner packet's sake).
    let bit = iptables::MASQ_MARK.split('/').next().unwrap();
    assert_eq!(
        chain[..2],
        [
            format!(
                "-A {prefix}-POSTROUTING -m mark ! --mark {} -j RETURN",
                iptables::MASQ_MARK
            ),
            format!("-A {prefix}-POSTROUTING -j MARK --xor-mark {bit}"),
        ],
        "{rules}"
    );
    assert_eq!(chain[2..], masquerades, "{rules}");
    assert!(
        masquerades[0].contains("--src-type LOCAL") && masquerades[0].ends_with("-j MASQUERADE"),
        "{rules}"
    );
    assert!(
        !masquerades[1].contains("--src-type")
            && masquerades[1].ends_with("-j MASQUERADE --random-fully"),
        "{rules}"
    );
}
