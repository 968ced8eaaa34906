//! Disruptions end to end, on hollow nodes: the disruption controller's
//! status, the eviction subresource refusing what would break a budget
//! (RESOURCE_EXHAUSTED over gRPC, 429 over HTTP), `skiff drain` moving a
//! budgeted Deployment without ever breaking it, and preemption sparing
//! budgeted pods.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use skiff::pb::apps::v1::Deployment;
use skiff::pb::core::v1::Pod;
use skiff::pb::meta::v1::{LabelSelector, ObjectMeta};
use skiff::pb::policy::v1::{
    DeleteOptions, Eviction, PodDisruptionBudget, PodDisruptionBudgetSpec,
};
use skiff::wkt::Value;
use skiff::wkt::value::Kind;
use skiff_client::Api;

use crate::controllers::{Env, deployment, edit_node, env, nodes_of, running, wait_running};

const NODES: [&str; 5] = [
    "hollow-node-0",
    "hollow-node-1",
    "hollow-node-2",
    "hollow-node-3",
    "hollow-node-4",
];

fn budget(name: &str, min_available: f64) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(Value {
                kind: Some(Kind::NumberValue(min_available)),
            }),
            selector: Some(LabelSelector {
                match_labels: [("app".to_string(), name.to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn eviction(pod: &Pod) -> Eviction {
    let meta = pod.metadata.clone().unwrap_or_default();
    Eviction {
        metadata: Some(ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            ..Default::default()
        }),
        delete_options: Some(DeleteOptions::default()),
        ..Default::default()
    }
}

/// Waits for `name`'s status to allow `allowed` disruptions with
/// `healthy` healthy pods.
async fn wait_budget(env: &Env, name: &str, healthy: i32, allowed: i32) {
    let budgets = Api::<PodDisruptionBudget>::new(env.channel.clone());
    skiff_testkit::wait_until(
        &format!("budget {name}: {healthy} healthy, {allowed} allowed"),
        Duration::from_secs(60),
        async || {
            let s = budgets
                .get("default", name)
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            s.current_healthy == healthy && s.disruptions_allowed == allowed
        },
    )
    .await;
}

/// Cordons (`on`) or uncordons a node.
async fn cordon(env: &Env, node: &str, on: bool) {
    edit_node(env, node, |n| {
        n.spec.get_or_insert_with(Default::default).unschedulable = on;
        n.status = None;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_a_budgeted_deployment_one_pod_at_a_time_and_never_breaks_its_budget() {
    let env = env(None).await;
    let nodes = Api::<skiff::pb::core::v1::Node>::new(env.channel.clone());
    skiff_testkit::wait_until("5 hollow nodes", Duration::from_secs(30), async || {
        nodes
            .list(Default::default())
            .await
            .is_ok_and(|l| l.items.len() == 5)
    })
    .await;
    // Every replica on hollow-node-0: the others are cordoned meanwhile.
    for node in &NODES[1..] {
        cordon(&env, node, true).await;
    }
    Api::<Deployment>::new(env.channel.clone())
        .create(deployment("web", 4))
        .await
        .unwrap();
    wait_running(&env, "web", 4).await;
    assert_eq!(nodes_of(&env, "web").await, vec![NODES[0]; 4]);
    for node in &NODES[1..] {
        cordon(&env, node, false).await;
    }
    let budgets = Api::<PodDisruptionBudget>::new(env.channel.clone());
    budgets.create(budget("web", 3.0)).await.unwrap();
    wait_budget(&env, "web", 4, 1).await;
    let status = budgets.get("default", "web").await.unwrap().status.unwrap();
    assert_eq!((status.expected_pods, status.desired_healthy), (4, 3));
    let allowed = status
        .conditions
        .iter()
        .find(|c| c.r#type == "DisruptionAllowed")
        .unwrap();
    assert_eq!(
        (allowed.status.as_str(), allowed.reason.as_str()),
        ("True", "SufficientPods")
    );

    // One eviction spends the only disruption; the next is refused in
    // Kubernetes' words until a replacement is ready.
    let pods = Api::<Pod>::new(env.channel.clone());
    let web = running(&env, "web").await;
    pods.evict(eviction(&web[0])).await.unwrap();
    let refused = pods.evict(eviction(&web[1])).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains(
            // "has 4" until the controller sees the evicted pod go, as in
            // Kubernetes: the eviction spends the disruption, not the pod.
            "Cannot evict pod as it would violate the pod's disruption budget. (The disruption budget web needs 3 healthy pods and has "
        ),
        "{}",
        refused.message()
    );
    assert!(
        pods.get("default", web[1].metadata.as_ref().unwrap().name.as_str())
            .await
            .is_ok_and(|p| p.metadata.unwrap().deletion_timestamp.is_none()),
        "the refused pod is untouched"
    );
    wait_budget(&env, "web", 4, 1).await;

    // A watcher counts the ready pods through the drain.
    let informer = skiff_client::Informer::<Pod>::start(
        Api::new(env.channel.clone()),
        skiff_client::watcher::Params {
            namespace: "default".into(),
            label_selector: "app=web".into(),
            ..Default::default()
        },
    );
    let mut changes = informer.subscribe();
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let (store, low) = (informer.store.clone(), Arc::clone(&lowest));
    let watcher = tokio::spawn(async move {
        while changes.recv().await.is_ok() {
            let ready = store
                .list()
                .iter()
                .filter(|p| {
                    p.metadata
                        .as_ref()
                        .is_some_and(|m| m.deletion_timestamp.is_none())
                        && skiff::pods::is_ready(p)
                })
                .count();
            low.fetch_min(ready, Ordering::SeqCst);
        }
    });
    skiff_testkit::wait_until(
        "the watcher sees 4 ready",
        Duration::from_secs(10),
        async || lowest.load(Ordering::SeqCst) != usize::MAX,
    )
    .await;

    let url = format!("http://{}", env.server.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(["drain", NODES[0], "--timeout", "120s", "--server", &url])
            .output()
            .expect("running skiff drain")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("node/{} cordoned", NODES[0])),
        "{text}"
    );
    assert!(
        text.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."),
        "the budget held evictions back: {text}"
    );
    assert_eq!(text.matches(" evicted\n").count(), 3, "{text}");
    assert!(
        text.contains(&format!("node/{} drained", NODES[0])),
        "{text}"
    );

    wait_running(&env, "web", 4).await;
    let placed = nodes_of(&env, "web").await;
    assert!(!placed.contains(&NODES[0].to_string()), "{placed:?}");
    let node = nodes.get("", NODES[0]).await.unwrap();
    assert!(node.spec.unwrap().unschedulable, "the node stays cordoned");
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let lowest = lowest.load(Ordering::SeqCst);
    assert!(
        lowest >= 3,
        "the budget was broken: {lowest} ready pods at one point"
    );
}

/// A Deployment whose pods ask for `cpu` and have priority class `class`.
fn prioritized(name: &str, replicas: i32, class: &str, cpu: &str) -> Deployment {
    let mut d = deployment(name, replicas);
    let spec = d
        .spec
        .as_mut()
        .and_then(|s| s.template.as_mut())
        .and_then(|t| t.spec.as_mut())
        .unwrap();
    spec.priority_class_name = class.into();
    spec.containers[0].resources = Some(skiff::pb::core::v1::ResourceRequirements {
        requests: [("cpu".to_string(), cpu.to_string())].into(),
        ..Default::default()
    });
    d
}

/// Preemption on a full cluster: a high-priority pod removes one
/// low-priority pod and runs, passing over the pods a budget protects
/// when another choice exists; the victim gets Kubernetes' event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_the_fewest_unprotected_low_priority_pods() {
    use skiff::pb::scheduling::v1::PriorityClass;
    let env = env(None).await;
    let classes = Api::<PriorityClass>::new(env.channel.clone());
    for (name, value) in [("low", 10), ("high", 1000)] {
        classes
            .create(PriorityClass {
                metadata: Some(ObjectMeta {
                    name: name.into(),
                    ..Default::default()
                }),
                value,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // 5 nodes of 4 CPUs, 10 pods of 2: full.
    let deployments = Api::<Deployment>::new(env.channel.clone());
    deployments
        .create(prioritized("db", 5, "low", "2"))
        .await
        .unwrap();
    deployments
        .create(prioritized("batch", 5, "low", "2"))
        .await
        .unwrap();
    wait_running(&env, "db", 5).await;
    wait_running(&env, "batch", 5).await;
    let budgets = Api::<PodDisruptionBudget>::new(env.channel.clone());
    budgets.create(budget("db", 5.0)).await.unwrap();
    wait_budget(&env, "db", 5, 0).await;
    let db_before: Vec<String> = running(&env, "db")
        .await
        .iter()
        .map(|p| p.metadata.as_ref().unwrap().uid.clone())
        .collect();

    let pods = Api::<Pod>::new(env.channel.clone());
    let mut urgent = Pod {
        metadata: Some(ObjectMeta {
            name: "urgent".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: prioritized("urgent", 1, "high", "2")
            .spec
            .and_then(|s| s.template)
            .and_then(|t| t.spec),
        ..Default::default()
    };
    urgent.spec.as_mut().unwrap().priority_class_name = "high".into();
    pods.create(urgent).await.unwrap();
    let mut node = String::new();
    skiff_testkit::wait_until("the urgent pod runs", Duration::from_secs(60), async || {
        let p = pods.get("default", "urgent").await.unwrap();
        node = p.spec.clone().unwrap_or_default().node_name;
        p.status.is_some_and(|s| s.phase == "Running")
    })
    .await;
    let p = pods.get("default", "urgent").await.unwrap();
    assert_eq!(p.status.unwrap().nominated_node_name, node);
    // Exactly one batch pod went; every db pod is the one it was.
    let db_after: Vec<String> = running(&env, "db")
        .await
        .iter()
        .map(|p| p.metadata.as_ref().unwrap().uid.clone())
        .collect();
    assert_eq!(db_after, db_before, "the budgeted pods stay");
    let events = Api::<skiff::pb::core::v1::Event>::new(env.channel.clone())
        .list(skiff::pb::api::v1::ListRequest {
            namespace: "default".into(),
            field_selector: "reason=Preempted".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:?}");
    let victim = events[0].involved_object.clone().unwrap_or_default().name;
    assert!(victim.starts_with("batch-"), "{victim}");
    assert!(
        events[0].message.contains(&format!("on node {node}")),
        "{}",
        events[0].message
    );
    // Its replacement waits: the cluster is full of pods as important.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running(&env, "batch").await.len(), 4);
}
