//! The scheduler end to end: real `skiff scheduler` processes against an
//! in-process API server; nodes are registered through the API as an
//! agent would.

use std::time::{Duration, Instant};

use skiff::pb::api::v1::ListRequest;
use skiff::pb::coordination::v1::Lease;
use skiff::pb::core::v1::{
    Container, Event, Node, NodeCondition, NodeStatus, Pod, PodSpec, ResourceRequirements,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_apiserver::StoreConfig;
use skiff_client::Api;

struct Env {
    server: skiff_apiserver::ApiServer,
    url: String,
    nodes: Api<Node>,
    pods: Api<Pod>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let url = format!("http://{}", server.addr);
    let channel = skiff_client::connect_lazy(&url).unwrap();
    Env {
        server,
        url,
        nodes: Api::new(channel.clone()),
        pods: Api::new(channel),
        _dir: dir,
    }
}

/// Registers a Ready node with `cpu` and `memory` allocatable.
async fn add_node(env: &Env, name: &str, cpu: &str, labels: &[(&str, &str)]) {
    let node = env
        .nodes
        .create(Node {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut node = node;
    node.status = Some(NodeStatus {
        allocatable: [("cpu", cpu), ("memory", "8Gi"), ("pods", "110")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        conditions: vec![NodeCondition {
            r#type: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    env.nodes.update_status(node).await.unwrap();
}

fn pod(name: &str, cpu: &str) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "busybox:1.36".into(),
                resources: Some(ResourceRequirements {
                    requests: [("cpu".to_string(), cpu.to_string())].into_iter().collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn node_of(env: &Env, name: &str) -> String {
    let p = env.pods.get("default", name).await.unwrap();
    p.spec.map(|s| s.node_name).unwrap_or_default()
}

async fn wait_bound(env: &Env, name: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let node = node_of(env, name).await;
        if !node.is_empty() {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} was not bound within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failed_scheduling(env: &Env, pod: &str) -> Option<Event> {
    let events = Api::<Event>::new(skiff_client::connect_lazy(&env.url).unwrap());
    let list = events
        .list(ListRequest {
            namespace: "default".into(),
            field_selector: format!("involvedObject.name={pod},reason=FailedScheduling"),
            ..Default::default()
        })
        .await
        .unwrap();
    list.items.into_iter().next()
}

async fn wait_failed_scheduling(env: &Env, pod: &str) -> Event {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = failed_scheduling(env, pod).await {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no FailedScheduling event for {pod}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_land_only_on_nodes_where_they_fit() {
    let env = env().await;
    add_node(&env, "big", "4", &[]).await;
    add_node(&env, "small", "1", &[]).await;
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();
    env.pods.create(pod("p3", "3")).await.unwrap();
    assert_eq!(wait_bound(&env, "p3", Duration::from_secs(20)).await, "big");
    env.pods.create(pod("p1", "1")).await.unwrap();
    wait_bound(&env, "p1", Duration::from_secs(20)).await;
    // 3 + 1 + 1 of 5 CPUs are gone: 2 more fit nowhere.
    env.pods.create(pod("p2", "2")).await.unwrap();
    let event = wait_failed_scheduling(&env, "p2").await;
    assert!(
        event.message.starts_with("0/2 nodes are available"),
        "{}",
        event.message
    );
    assert!(
        event.message.contains("Insufficient cpu"),
        "{}",
        event.message
    );
    assert_eq!(event.r#type, "Warning");
    let pending = env.pods.get("default", "p2").await.unwrap();
    assert_eq!(node_of(&env, "p2").await, "");
    let cond = pending
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "PodScheduled")
        .expect("PodScheduled condition");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "Unschedulable")
    );
    // A new node with room: the pod binds promptly.
    add_node(&env, "extra", "2", &[]).await;
    assert_eq!(
        wait_bound(&env, "p2", Duration::from_secs(20)).await,
        "extra"
    );
    drop(env.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_selector_waits_for_a_matching_node() {
    let env = env().await;
    add_node(&env, "hdd-1", "4", &[("disk", "hdd")]).await;
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();
    let mut p = pod("db", "100m");
    p.spec
        .as_mut()
        .unwrap()
        .node_selector
        .insert("disk".into(), "ssd".into());
    env.pods.create(p).await.unwrap();
    let event = wait_failed_scheduling(&env, "db").await;
    assert!(
        event
            .message
            .contains("1 node(s) didn't match Pod's node affinity/selector"),
        "{}",
        event.message
    );
    add_node(&env, "ssd-1", "4", &[("disk", "ssd")]).await;
    assert_eq!(
        wait_bound(&env, "db", Duration::from_secs(20)).await,
        "ssd-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_schedulers_one_leads_and_the_other_takes_over() {
    let env = env().await;
    add_node(&env, "n1", "8", &[]).await;
    let mut a = skiff_testkit::SchedulerProcess::start(&env.url, "sched-a", 2).unwrap();
    let mut b = skiff_testkit::SchedulerProcess::start(&env.url, "sched-b", 2).unwrap();
    // A pod for another scheduler is left to it.
    let mut foreign = pod("foreign", "100m");
    foreign.spec.as_mut().unwrap().scheduler_name = "someone-else".into();
    env.pods.create(foreign).await.unwrap();
    env.pods.create(pod("first", "100m")).await.unwrap();
    wait_bound(&env, "first", Duration::from_secs(20)).await;
    let leases = Api::<Lease>::new(skiff_client::connect_lazy(&env.url).unwrap());
    let lease = leases
        .get("kube-system", "default-scheduler")
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap_or_default();
    assert!(
        holder == "sched-a" || holder == "sched-b",
        "holder {holder:?}"
    );
    let (leader, follower) = if holder == a.identity {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    leader.process.kill9();
    env.pods.create(pod("second", "100m")).await.unwrap();
    // The lease (2 s) must expire before the other takes over.
    wait_bound(&env, "second", Duration::from_secs(20)).await;
    let foreign = env.pods.get("default", "foreign").await.unwrap();
    assert_eq!(
        foreign.spec.unwrap().node_name,
        "",
        "bound by a scheduler it did not name"
    );
    let lease = leases
        .get("kube-system", "default-scheduler")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(follower.identity.as_str())
    );
}

/// Waits until the candidate's channel says `leading`.
async fn until_leading(rx: &mut tokio::sync::watch::Receiver<bool>, leading: bool) {
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l == leading))
        .await
        .expect("the election settles within 30 s")
        .expect("the candidate runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_taken_over_only_after_its_duration_and_records_each_holder() {
    use skiff::pb::coordination::v1::LeaseSpec;
    use skiff_client::leader::{LeaderConfig, elect};
    let env = env().await;
    let leases = Api::<Lease>::new(skiff_client::connect_lazy(&env.url).unwrap());
    // A holder gone quiet, whose lease lasts 5 s, taken over 4 times.
    let then = skiff::time::now();
    leases
        .create(Lease {
            metadata: Some(ObjectMeta {
                name: "quiet".into(),
                namespace: "kube-system".into(),
                ..Default::default()
            }),
            spec: Some(LeaseSpec {
                holder_identity: Some("ghost".into()),
                lease_duration_seconds: Some(5),
                acquire_time: Some(then),
                renew_time: Some(then),
                lease_transitions: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let candidate = |identity: &str| LeaderConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        ..LeaderConfig::new("kube-system", "quiet", identity)
    };
    let lease = async || {
        leases
            .get("kube-system", "quiet")
            .await
            .unwrap()
            .spec
            .unwrap()
    };

    // The ghost's own duration (5 s, not the candidate's 3 s) must pass
    // on the candidate's clock before it takes over.
    let started = Instant::now();
    let mut a = elect(leases.clone(), candidate("a"));
    until_leading(&mut a, true).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "took over after {waited:?}"
    );
    let held = lease().await;
    assert_eq!(held.holder_identity.as_deref(), Some("a"));
    assert_eq!(
        held.lease_transitions,
        Some(5),
        "a new holder is a transition"
    );
    assert_eq!(
        held.lease_duration_seconds,
        Some(3),
        "the holder's own duration"
    );
    let acquired = held.acquire_time.unwrap();
    assert!(acquired.seconds >= then.seconds && acquired != then);
    // The holder renews: renewTime moves, acquireTime and the count stay.
    let first_renewal = held.renew_time.unwrap();
    skiff_testkit::wait_until("the holder renews", Duration::from_secs(10), async || {
        let now = lease().await;
        now.renew_time.is_some_and(|t| t != first_renewal)
            && now.acquire_time == Some(acquired)
            && now.lease_transitions == Some(5)
    })
    .await;
    // A second candidate waits while the holder renews...
    let mut b = elect(leases.clone(), candidate("b"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!*b.borrow(), "b took a lease that was being renewed");
    // ...and takes over once the holder stops and its 3 s have passed
    // (counted from its last renewal, at most one retry period, 0.5 s,
    // before it was stopped).
    drop(a);
    let stopped = Instant::now();
    until_leading(&mut b, true).await;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(2400),
        "took over after {waited:?}"
    );
    let held = lease().await;
    assert_eq!(held.holder_identity.as_deref(), Some("b"));
    assert_eq!(held.lease_transitions, Some(6));
    assert!(held.acquire_time.unwrap() != acquired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_register_renew_and_run_their_pods() {
    let env = env().await;
    let _hollow = skiff_testkit::hollow_nodes(&env.url, 20).unwrap();
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();
    for i in 0..50 {
        env.pods
            .create(pod(&format!("w{i}"), "100m"))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let list = env.pods.list(ListRequest::default()).await.unwrap();
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.phase == "Running"))
            .collect();
        if running.len() == 50 {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 50 pods Running",
            running.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let used: std::collections::HashSet<String> = running
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone())
        .collect();
    assert!(
        used.len() >= 10,
        "50 pods spread over only {} of 20 nodes",
        used.len()
    );
    assert!(used.iter().all(|n| n.starts_with("hollow-node-")));
    let nodes = env.nodes.list(ListRequest::default()).await.unwrap();
    assert_eq!(nodes.items.len(), 20);
    let leases = Api::<Lease>::new(skiff_client::connect_lazy(&env.url).unwrap());
    let list = leases
        .list(ListRequest {
            namespace: "kube-node-lease".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.items.len(), 20, "one lease per node");
}

/// A pod labelled `app=<app>`, with its placement rules from JSON.
fn placed(name: &str, app: &str, rules: serde_json::Value) -> Pod {
    let mut p = pod(name, "100m");
    p.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("app".into(), app.into());
    let mut spec = serde_json::to_value(p.spec.take().unwrap()).unwrap();
    for (k, v) in rules.as_object().unwrap() {
        spec[k] = v.clone();
    }
    p.spec = Some(serde_json::from_value(spec).unwrap());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_and_gather_by_affinity_and_topology_on_zoned_nodes() {
    let env = env().await;
    // Six nodes in three zones, four of them in z1 (and pool "a"): left to
    // the other plugins, pods would crowd into z1.
    for (i, zone) in ["z1", "z1", "z1", "z1", "z2", "z3"].iter().enumerate() {
        let name = format!("n{}", i + 1);
        let pool = if i < 4 { "a" } else { "b" };
        let labels = [
            ("kubernetes.io/hostname", name.as_str()),
            ("topology.kubernetes.io/zone", zone),
            ("pool", pool),
        ];
        add_node(&env, &name, "8", &labels).await;
    }
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();

    // Required anti-affinity on the hostname over the four pool-a nodes:
    // four run, one per node, and the other two wait with Kubernetes'
    // reason.
    let anti = serde_json::json!({
        "nodeSelector": {"pool": "a"},
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "anti"}},
            "topologyKey": "kubernetes.io/hostname"}]}}
    });
    // All at once: the scheduler sees the replicas it has just placed.
    for i in 1..=4 {
        let name = format!("anti-{i}");
        env.pods
            .create(placed(&name, "anti", anti.clone()))
            .await
            .unwrap();
    }
    let mut hosts = std::collections::BTreeSet::new();
    for i in 1..=4 {
        hosts.insert(wait_bound(&env, &format!("anti-{i}"), Duration::from_secs(20)).await);
    }
    assert_eq!(hosts.len(), 4, "one per node: {hosts:?}");
    for i in 5..=6 {
        let name = format!("anti-{i}");
        env.pods
            .create(placed(&name, "anti", anti.clone()))
            .await
            .unwrap();
        let event = wait_failed_scheduling(&env, &name).await;
        assert!(
            event
                .message
                .contains("4 node(s) didn't match pod anti-affinity rules"),
            "{}",
            event.message
        );
        assert_eq!(node_of(&env, &name).await, "");
    }

    // maxSkew 1 over the zones: six pods go two to a zone.
    let spread = serde_json::json!({
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]
    });
    let zone_of = |node: &str| match node {
        "n5" => "z2",
        "n6" => "z3",
        _ => "z1",
    };
    let mut per_zone = std::collections::BTreeMap::<&str, usize>::new();
    for i in 1..=6 {
        let name = format!("spread-{i}");
        env.pods
            .create(placed(&name, "spread", spread.clone()))
            .await
            .unwrap();
        let node = wait_bound(&env, &name, Duration::from_secs(20)).await;
        *per_zone.entry(zone_of(&node)).or_default() += 1;
    }
    assert_eq!(
        per_zone.into_iter().collect::<Vec<_>>(),
        [("z1", 2), ("z2", 2), ("z3", 2)]
    );

    // Preferred affinity: beside its target, which fits.
    let mut target = placed("cache", "cache", serde_json::json!({}));
    target.spec.as_mut().unwrap().node_name = "n6".into();
    env.pods.create(target).await.unwrap();
    let near = serde_json::json!({
        "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}},
                "topologyKey": "kubernetes.io/hostname"}}]}}
    });
    env.pods.create(placed("web", "web", near)).await.unwrap();
    assert_eq!(wait_bound(&env, "web", Duration::from_secs(20)).await, "n6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_pod_waits_until_its_last_gate_is_removed() {
    let env = env().await;
    add_node(&env, "n1", "4", &[]).await;
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();
    let mut p = pod("gated", "100m");
    p.spec.as_mut().unwrap().scheduling_gates = vec![
        skiff::pb::core::v1::PodSchedulingGate {
            name: "example.com/quota".into(),
        },
        skiff::pb::core::v1::PodSchedulingGate {
            name: "example.com/approval".into(),
        },
    ];
    env.pods.create(p).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = env.pods.get("default", "gated").await.unwrap();
        let gated = pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "PodScheduled" && c.reason == "SchedulingGated")
        });
        if gated {
            break;
        }
        assert!(Instant::now() < deadline, "no SchedulingGated condition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A gate may not be added back, only removed.
    let pods = env.pods.clone();
    let ungate = async |keep: usize| {
        let mut pod = pods.get("default", "gated").await.unwrap();
        pod.spec.as_mut().unwrap().scheduling_gates.truncate(keep);
        pods.update(pod).await
    };
    ungate(1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node_of(&env, "gated").await, "", "one gate is left");
    let mut pod = env.pods.get("default", "gated").await.unwrap();
    pod.spec
        .as_mut()
        .unwrap()
        .scheduling_gates
        .push(skiff::pb::core::v1::PodSchedulingGate {
            name: "example.com/new".into(),
        });
    let refused = env.pods.update(pod).await.unwrap_err();
    assert!(
        refused
            .message()
            .contains("only deletion is allowed, but found new scheduling gate"),
        "{}",
        refused.message()
    );
    ungate(0).await.unwrap();
    assert_eq!(
        wait_bound(&env, "gated", Duration::from_secs(20)).await,
        "n1"
    );
}

/// Pods get their priority from their PriorityClass when created, and
/// the scheduler takes the higher first: of two pods waiting for the
/// same room, the high-priority one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_higher_priority_pod_takes_the_room_first() {
    use skiff::pb::scheduling::v1::PriorityClass;
    let env = env().await;
    let classes = Api::<PriorityClass>::new(skiff_client::connect_lazy(&env.url).unwrap());
    let mut high = PriorityClass {
        value: 1000,
        ..Default::default()
    };
    high.metadata = Some(ObjectMeta {
        name: "high".into(),
        ..Default::default()
    });
    classes.create(high).await.unwrap();
    // The low ones are older; four of them, so that a queue without
    // priorities would pick the urgent one by chance once in five.
    for name in ["low", "low-2", "low-3", "low-4"] {
        env.pods.create(pod(name, "1")).await.unwrap();
    }
    let mut urgent = pod("urgent", "1");
    urgent.spec.as_mut().unwrap().priority_class_name = "high".into();
    let urgent = env.pods.create(urgent).await.unwrap();
    let spec = urgent.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.preemption_policy.as_deref()),
        (Some(1000), Some("PreemptLowerPriority"))
    );
    assert_eq!(
        env.pods
            .get("default", "low")
            .await
            .unwrap()
            .spec
            .unwrap()
            .priority,
        Some(0)
    );
    let _scheduler = skiff_testkit::SchedulerProcess::start(&env.url, "s1", 3).unwrap();
    // No node yet: both wait, then both try again when room appears.
    for name in ["low", "low-2", "low-3", "low-4", "urgent"] {
        wait_failed_scheduling(&env, name).await;
    }
    add_node(&env, "solo", "1", &[]).await;
    assert_eq!(
        wait_bound(&env, "urgent", Duration::from_secs(20)).await,
        "solo"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["low", "low-2", "low-3", "low-4"] {
        assert_eq!(
            node_of(&env, name).await,
            "",
            "the room was the urgent pod's"
        );
    }
    drop(env.server);
}
