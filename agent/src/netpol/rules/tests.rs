//! Tests of the policy rules: the Kubernetes docs' examples, as chains.

use serde_json::json;

use super::*;

fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip},
        }))
        .unwrap(),
    )
}

fn namespace(name: &str, labels: serde_json::Value) -> Arc<Namespace> {
    Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap())
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
    let mut policy: NetworkPolicy =
        skiff::json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .unwrap();
    // What the API's defaults give it.
    let spec = policy.spec.as_mut().unwrap();
    if spec.policy_types.is_empty() {
        spec.policy_types.push("Ingress".into());
        if !spec.egress.is_empty() {
            spec.policy_types.push("Egress".into());
        }
    }
    Arc::new(policy)
}

fn world(policies: &[Arc<NetworkPolicy>]) -> Cluster {
    let pods = [
        pod("shop", "web", "n1", "10.42.0.2", json!({"app": "web"})),
        pod(
            "shop",
            "front",
            "n1",
            "10.42.0.3",
            json!({"role": "frontend"}),
        ),
        pod("shop", "other", "n2", "10.42.1.2", json!({})),
        pod(
            "guest",
            "client",
            "n2",
            "10.42.1.3",
            json!({"role": "frontend"}),
        ),
    ];
    let namespaces = [
        namespace("shop", json!({})),
        namespace("guest", json!({"team": "guest"})),
    ];
    Cluster::new(&pods, &namespaces, policies)
}

/// The chain of the pod at `ip` in `direction` ("I" or "O").
fn chain_of(chains: &BTreeMap<String, Vec<String>>, direction: &str, ip: &str) -> Vec<String> {
    let ip: Ipv4Addr = ip.parse().unwrap();
    let name = format!("{}-{direction}-{:08X}", prefix("n1"), u32::from(ip));
    chains
        .get(&name)
        .cloned()
        .unwrap_or_else(|| panic!("no {direction} chain for {ip}: {chains:#?}"))
}

#[test]
fn without_policies_nothing_is_isolated() {
    let chains = chains(&world(&[]), "n1");
    assert_eq!(chains.len(), 1, "{chains:#?}");
    assert_eq!(
        chains[&format!("{}-FWD", prefix("n1"))],
        [" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    );
}

#[test]
fn default_deny_ingress_isolates_every_local_pod_of_the_namespace() {
    let deny = policy(
        "shop",
        "default-deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let chains = chains(&world(&[deny]), "n1");
    for pod in ["10.42.0.2", "10.42.0.3"] {
        assert_eq!(
            chain_of(&chains, "I", pod),
            [
                " -p tcp -j REJECT --reject-with tcp-reset",
                " -j REJECT --reject-with icmp-port-unreachable"
            ]
        );
    }
    let forward = &chains[&format!("{}-FWD", prefix("n1"))];
    assert!(forward.contains(&format!(" -d 10.42.0.2/32 -j {}-I-0A2A0002", prefix("n1"))));
    // Pods of other nodes are their nodes' business.
    assert_eq!(chains.len(), 3, "{chains:#?}");
}

#[test]
fn allow_from_a_namespace_and_from_labelled_pods_on_a_port() {
    let from_guests = policy(
        "shop",
        "from-guests",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "guest"}}}]}]}),
    );
    let frontends = policy(
        "shop",
        "frontends-on-http",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                            "ports": [{"protocol": "TCP", "port": "http"}, {"port": 9000, "endPort": 9010}]}]}),
    );
    let web = chain_of(
        &chains(&world(&[from_guests, frontends]), "n1"),
        "I",
        "10.42.0.2",
    );
    assert_eq!(
        web,
        [
            " -s 10.42.1.3/32 -j RETURN",
            " -s 10.42.0.3/32 -p tcp --dport 8080 -j RETURN",
            " -s 10.42.0.3/32 -p tcp --dport 9000:9010 -j RETURN",
            " -p tcp -j REJECT --reject-with tcp-reset",
            " -j REJECT --reject-with icmp-port-unreachable",
        ],
        "guest's frontend by its namespace; shop's frontend by its label, only on http (the web pod's 8080) and 9000-9010"
    );
    // Both selectors in one peer: the labelled pods of those namespaces.
    let both = policy(
        "shop",
        "guest-frontends",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "guest"}},
                                      "podSelector": {"matchLabels": {"role": "frontend"}}}]}]}),
    );
    let web = chain_of(&chains(&world(&[both]), "n1"), "I", "10.42.0.2");
    assert_eq!(web[0], " -s 10.42.1.3/32 -j RETURN", "{web:#?}");
    assert_eq!(web.len(), 3);
}

#[test]
fn egress_to_an_address_block_and_to_named_ports_of_pods() {
    let egress = policy(
        "shop",
        "front-egress",
        json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.1.0/24"]}}], "ports": [{"port": 8080}]},
            {"ports": [{"protocol": "UDP", "port": "dns"}]},
        ]}),
    );
    let chains = chains(&world(&[egress]), "n1");
    let front = chain_of(&chains, "O", "10.42.0.3");
    assert!(
        front.contains(&" -d 10.42.0.0/24 -p tcp --dport 8080 -j RETURN".to_string()),
        "{front:#?}"
    );
    assert!(
        front.contains(&" -d 10.42.128.0/17 -p tcp --dport 8080 -j RETURN".to_string()),
        "{front:#?}"
    );
    assert!(
        !front.iter().any(|r| r.contains("10.42.1.0/24")),
        "{front:#?}"
    );
    // A named port with any destination: every pod that has it.
    assert!(
        front.contains(&" -d 10.42.1.3/32 -p udp --dport 53 -j RETURN".to_string()),
        "{front:#?}"
    );
    // Not isolated for ingress: no IN chain.
    assert!(!chains.contains_key(&format!("{}-I-0A2A0003", prefix("n1"))));
    let forward = &chains[&format!("{}-FWD", prefix("n1"))];
    assert_eq!(
        forward[1],
        format!(" -s 10.42.0.3/32 -j {}-O-0A2A0003", prefix("n1"))
    );
}

#[test]
fn egress_anywhere_on_a_numbered_and_a_named_port() {
    let egress = policy(
        "shop",
        "front-egress",
        json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"port": "http"}]}]}),
    );
    let front = chain_of(&chains(&world(&[egress]), "n1"), "O", "10.42.0.3");
    // DNS to anywhere (not only to pods); http to the pods that name it.
    assert_eq!(front[0], " -p udp --dport 53 -j RETURN", "{front:#?}");
    assert!(front.contains(&" -d 10.42.0.2/32 -p tcp --dport 8080 -j RETURN".to_string()));
}

#[test]
fn the_restore_input_replaces_our_chains_and_keeps_the_jump_first() {
    let deny = policy("shop", "deny", json!({"podSelector": {}}));
    let chains = chains(&world(&[deny]), "n1");
    let p = prefix("n1");
    assert!(
        p.starts_with("SKP-"),
        "not the CNI network's SKN- chains: {p}"
    );
    let stale = format!("{p}-I-0A2A0063");
    let existing = BTreeSet::from([format!("{p}-FWD"), stale.clone()]);
    let text = render(&p, &chains, &existing, Jump::Missing);
    assert!(text.starts_with("*filter\n"));
    assert!(text.contains(&format!(":{p}-FWD - [0:0]\n")));
    assert!(text.contains(&format!("-F {stale}\n-X {stale}\n")));
    assert!(text.contains(&format!(
        "-I FORWARD 1 -m comment --comment \"skiff {p}\" -j {p}-FWD\n"
    )));
    assert!(!text.contains("-D FORWARD"));
    assert!(text.ends_with("COMMIT\n"));
    // First, or behind only other nodes' policy jumps: left alone.
    let other = jump("SKP-aaaaaa");
    let save = format!(
        "*filter\n:FORWARD ACCEPT [0:0]\n:{p}-FWD - [0:0]\n:SKN-123456-FORWARD - [0:0]\n{other}\n{}\n-A FORWARD -j DOCKER-USER\nCOMMIT\n",
        jump(&p)
    );
    let (found, state) = super::existing(&p, &save);
    assert_eq!(found, BTreeSet::from([format!("{p}-FWD")]));
    assert_eq!(state, Jump::First);
    assert!(!render(&p, &chains, &found, state).contains("FORWARD"));
    // Behind Docker's or the proxy's rules: moved back to the front.
    let save = format!(
        "*filter\n-A FORWARD -m comment --comment \"skiff SKF-x\" -j SKF-x-FORWARD\n{}\nCOMMIT\n",
        jump(&p)
    );
    let (_, state) = super::existing(&p, &save);
    assert_eq!(state, Jump::Behind);
    let text = render(&p, &chains, &found, state);
    let delete = text
        .find(&format!("-D FORWARD -m comment --comment \"skiff {p}\""))
        .unwrap();
    let insert = text.find("-I FORWARD 1").unwrap();
    assert!(delete < insert, "{text}");
}
