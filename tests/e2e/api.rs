//! The API server end to end over gRPC: object semantics, bad input, and
//! watches — each check against both store backends.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use skiff::pb::api::v1::{
    DeleteRequest, EventType, GetRequest, ListRequest, Preconditions, WatchRequest,
};
use skiff::pb::core::v1::{
    ConfigMap, Container, Pod, PodSpec, PodStatus, config_maps_client::ConfigMapsClient,
    pods_client::PodsClient,
};
use skiff::pb::meta::v1::ObjectMeta;
use skiff_apiserver::StoreConfig;
use tonic::Code;
use tonic::transport::Channel;

/// A running server and what keeps its store alive.
struct Cluster {
    _server: skiff_apiserver::ApiServer,
    channel: Channel,
    _etcd: Option<skiff_testkit::Etcd>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn embedded() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreConfig::Embedded(dir.path().join("state.redb"));
        Self::start(store, None, dir).await
    }

    async fn etcd() -> Self {
        let etcd = skiff_testkit::Etcd::start().unwrap();
        let store = StoreConfig::Etcd(vec![etcd.endpoint.clone()]);
        Self::start(store, Some(etcd), tempfile::tempdir().unwrap()).await
    }

    async fn start(
        store: StoreConfig,
        etcd: Option<skiff_testkit::Etcd>,
        dir: tempfile::TempDir,
    ) -> Self {
        let server = skiff_testkit::api_server(store).await.unwrap();
        let channel = skiff_testkit::channel(server.addr).await.unwrap();
        Self {
            _server: server,
            channel,
            _etcd: etcd,
            _dir: dir,
        }
    }

    fn pods(&self) -> PodsClient<Channel> {
        PodsClient::new(self.channel.clone())
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, pairs: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            labels: labels(pairs),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: "busybox:1.36".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn get(name: &str) -> GetRequest {
    GetRequest {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn meta(p: &Pod) -> &ObjectMeta {
    p.metadata.as_ref().unwrap()
}

async fn pod_count(c: &Cluster) -> usize {
    c.pods()
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

async fn create_sets_server_fields_and_defaults(c: Cluster) {
    let created = c
        .pods()
        .create(pod("web", &[("app", "web")]))
        .await
        .unwrap()
        .into_inner();
    let m = meta(&created);
    assert!(!m.uid.is_empty());
    assert!(m.resource_version.parse::<i64>().unwrap() > 0);
    assert!(m.creation_timestamp.is_some());
    assert_eq!(m.generation, 1);
    assert_eq!(
        (created.api_version.as_str(), created.kind.as_str()),
        ("v1", "Pod")
    );
    assert_eq!(created.status.as_ref().unwrap().phase, "Pending");
    assert_eq!(created.spec.as_ref().unwrap().restart_policy, "Always");
    let read = c.pods().get(get("web")).await.unwrap().into_inner();
    assert_eq!(read, created);

    let mut generated = pod("", &[]);
    generated.metadata.as_mut().unwrap().generate_name = "web-".into();
    let g = c.pods().create(generated).await.unwrap().into_inner();
    assert!(
        meta(&g).name.starts_with("web-") && meta(&g).name.len() == 9,
        "{}",
        meta(&g).name
    );
}

async fn bad_input_is_refused_precisely_and_writes_nothing(c: Cluster) {
    let before = pod_count(&c).await;
    let expect = |r: Result<tonic::Response<Pod>, tonic::Status>, code: Code, needle: &str| {
        let status = r.expect_err("must be refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} should mention {needle:?}",
            status.message()
        );
    };
    expect(
        c.pods().create(pod("Bad_Name", &[])).await,
        Code::InvalidArgument,
        "metadata.name",
    );
    expect(
        c.pods().create(pod("ok", &[("bad key!", "v")])).await,
        Code::InvalidArgument,
        "metadata.labels",
    );
    let mut wrong_kind = pod("ok", &[]);
    wrong_kind.kind = "Deployment".into();
    expect(
        c.pods().create(wrong_kind).await,
        Code::InvalidArgument,
        "kind",
    );
    let mut no_ns = pod("ok", &[]);
    no_ns.metadata.as_mut().unwrap().namespace = "nowhere".into();
    expect(c.pods().create(no_ns).await, Code::NotFound, "nowhere");
    let mut huge = pod("ok", &[]);
    huge.metadata.as_mut().unwrap().annotations = labels(&[("big", &"x".repeat(200 * 1024))]);
    huge.spec.as_mut().unwrap().containers[0].args = vec!["y".repeat(1600 * 1024)];
    expect(c.pods().create(huge).await, Code::InvalidArgument, "limit");
    let mut no_containers = pod("ok", &[]);
    no_containers.spec.as_mut().unwrap().containers.clear();
    expect(
        c.pods().create(no_containers).await,
        Code::InvalidArgument,
        "spec.containers",
    );
    assert_eq!(pod_count(&c).await, before, "nothing was written");

    let selector = c
        .pods()
        .list(ListRequest {
            label_selector: "app in (web".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad selector");
    assert_eq!(selector.code(), Code::InvalidArgument);
    assert!(
        selector.message().contains("labelSelector"),
        "{}",
        selector.message()
    );
    let field = c
        .pods()
        .list(ListRequest {
            field_selector: "spec.image=x".into(),
            ..Default::default()
        })
        .await
        .expect_err("unsupported field");
    assert_eq!(field.code(), Code::InvalidArgument);
    assert!(
        field.message().contains("spec.image"),
        "{}",
        field.message()
    );

    // Stale resourceVersion: ABORTED naming the current version; no write.
    let created = c.pods().create(pod("web", &[])).await.unwrap().into_inner();
    let mut first = created.clone();
    first.metadata.as_mut().unwrap().labels = labels(&[("v", "1")]);
    let updated = c.pods().update(first).await.unwrap().into_inner();
    let mut stale = created.clone();
    stale.metadata.as_mut().unwrap().labels = labels(&[("v", "2")]);
    let status = c.pods().update(stale).await.expect_err("stale");
    assert_eq!(status.code(), Code::Aborted);
    assert!(
        status.message().contains(&meta(&updated).resource_version),
        "{}",
        status.message()
    );
    let now = c.pods().get(get("web")).await.unwrap().into_inner();
    assert_eq!(meta(&now).labels, labels(&[("v", "1")]));

    // Status through Update: refused, nothing written.
    let mut sneaky = now.clone();
    sneaky.status = Some(PodStatus {
        phase: "Running".into(),
        ..Default::default()
    });
    let status = c
        .pods()
        .update(sneaky)
        .await
        .expect_err("status via update");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("UpdateStatus"),
        "{}",
        status.message()
    );
    let after = c.pods().get(get("web")).await.unwrap().into_inner();
    assert_eq!(after, now);

    // Duplicate create.
    let dup = c
        .pods()
        .create(pod("web", &[]))
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code(), Code::AlreadyExists);
    // Missing object.
    let missing = c.pods().get(get("nope")).await.expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("default/nope"),
        "{}",
        missing.message()
    );
}

async fn generation_moves_with_spec_and_status_only_through_update_status(c: Cluster) {
    let created = c.pods().create(pod("web", &[])).await.unwrap().into_inner();
    let mut relabel = created.clone();
    relabel.metadata.as_mut().unwrap().labels = labels(&[("a", "b")]);
    let relabeled = c.pods().update(relabel).await.unwrap().into_inner();
    assert_eq!(
        meta(&relabeled).generation,
        1,
        "metadata change keeps generation"
    );
    assert_ne!(
        meta(&relabeled).resource_version,
        meta(&created).resource_version
    );

    let mut respec = relabeled.clone();
    respec.spec.as_mut().unwrap().containers[0].image = "busybox:1.37".into();
    let respecced = c.pods().update(respec).await.unwrap().into_inner();
    assert_eq!(
        meta(&respecced).generation,
        2,
        "spec change bumps generation"
    );

    let mut status = respecced.clone();
    status.status = Some(PodStatus {
        phase: "Running".into(),
        pod_ip: "10.0.0.7".into(),
        ..Default::default()
    });
    status.spec.as_mut().unwrap().containers[0].image = "ignored:1".into();
    let running = c.pods().update_status(status).await.unwrap().into_inner();
    assert_eq!(running.status.as_ref().unwrap().phase, "Running");
    assert_eq!(
        running.spec.as_ref().unwrap().containers[0].image,
        "busybox:1.37"
    );
    assert_eq!(meta(&running).generation, 2);

    // An unchanged update writes nothing.
    let same = c.pods().update(running.clone()).await.unwrap().into_inner();
    assert_eq!(
        meta(&same).resource_version,
        meta(&running).resource_version
    );
}

async fn finalizers_hold_deletion_until_removed(c: Cluster) {
    let mut p = pod("held", &[]);
    p.metadata.as_mut().unwrap().finalizers = vec!["example.com/hold".into()];
    c.pods().create(p).await.unwrap();
    let marked = c
        .pods()
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "held".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(meta(&marked).deletion_timestamp.is_some());
    let still = c.pods().get(get("held")).await.unwrap().into_inner();
    assert!(meta(&still).deletion_timestamp.is_some());
    let mut release = still.clone();
    release.metadata.as_mut().unwrap().finalizers.clear();
    c.pods().update(release).await.unwrap();
    let gone = c.pods().get(get("held")).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    // Preconditions.
    let p = c.pods().create(pod("pre", &[])).await.unwrap().into_inner();
    let wrong = c
        .pods()
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "pre".into(),
            preconditions: Some(Preconditions {
                uid: "not-the-uid".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("uid precondition");
    assert_eq!(wrong.code(), Code::Aborted);
    // A version the pod has moved past: refused, the pod stays.
    let mut touched = p.clone();
    touched
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .insert("touched".into(), "yes".into());
    let p = c.pods().update(touched).await.unwrap().into_inner();
    let stale = c
        .pods()
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "pre".into(),
            preconditions: Some(Preconditions {
                resource_version: "1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("resourceVersion precondition");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    c.pods().get(get("pre")).await.expect("still there");
    c.pods()
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "pre".into(),
            preconditions: Some(Preconditions {
                uid: meta(&p).uid.clone(),
                resource_version: meta(&p).resource_version.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn list_filters_and_pages_consistently(c: Cluster) {
    for i in 0..7 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        c.pods()
            .create(pod(&format!("p{i}"), &[("tier", tier)]))
            .await
            .unwrap();
    }
    let list = |sel: &str, fields: &str| {
        let mut client = c.pods();
        let req = ListRequest {
            label_selector: sel.into(),
            field_selector: fields.into(),
            ..Default::default()
        };
        async move { client.list(req).await.unwrap().into_inner().items.len() }
    };
    assert_eq!(list("tier=web", "").await, 4);
    assert_eq!(list("tier!=web", "").await, 3);
    assert_eq!(list("tier in (web,db)", "").await, 7);
    assert_eq!(list("!tier", "").await, 0);
    assert_eq!(list("", "metadata.name=p3").await, 1);
    assert_eq!(list("", "status.phase=Pending").await, 7);

    // A sparse selector with a small page size still pages correctly.
    let mut db = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .pods()
            .list(ListRequest {
                label_selector: "tier=db".into(),
                limit: 2,
                r#continue: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.items.len() <= 2);
        db.extend(page.items.iter().map(|p| meta(p).name.clone()));
        token = page.metadata.unwrap().r#continue;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(db, vec!["p1", "p3", "p5"]);

    let mut names = Vec::new();
    let mut token = String::new();
    let mut version = None;
    loop {
        let page = c
            .pods()
            .list(ListRequest {
                limit: 3,
                r#continue: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let lm = page.metadata.unwrap();
        version.get_or_insert(lm.resource_version.clone());
        assert_eq!(
            Some(&lm.resource_version),
            version.as_ref(),
            "one version for all pages"
        );
        names.extend(page.items.iter().map(|p| meta(p).name.clone()));
        if names.len() == 3 {
            // Created after the first page: not part of this list.
            c.pods().create(pod("p9-late", &[])).await.unwrap();
        }
        if lm.r#continue.is_empty() {
            break;
        }
        token = lm.r#continue;
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

async fn next_event(
    w: &mut tonic::Streaming<skiff::pb::core::v1::PodWatchEvent>,
) -> skiff::pb::core::v1::PodWatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch stalled")
        .expect("watch ended")
        .expect("watch error")
}

async fn watch_streams_changes_from_a_version(c: Cluster) {
    let created = c
        .pods()
        .create(pod("w1", &[("app", "a")]))
        .await
        .unwrap()
        .into_inner();
    let rv = meta(&created).resource_version.clone();
    let mut all = c
        .pods()
        .watch(WatchRequest {
            namespace: "default".into(),
            resource_version: rv.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut selected = c
        .pods()
        .watch(WatchRequest {
            label_selector: "app=a".into(),
            resource_version: rv.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // By field, in every namespace: only the pod of that name.
    let mut by_name = c
        .pods()
        .watch(WatchRequest {
            field_selector: "metadata.name=w1".into(),
            resource_version: rv,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut elsewhere = pod("w1-twin", &[("app", "z")]);
    elsewhere.metadata.as_mut().unwrap().namespace = "kube-system".into();
    c.pods().create(elsewhere).await.unwrap();
    let mut relabel = created.clone();
    relabel.metadata.as_mut().unwrap().labels = labels(&[("app", "b")]);
    c.pods().update(relabel).await.unwrap();
    c.pods()
        .delete(DeleteRequest {
            namespace: "default".into(),
            name: "w1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e1 = next_event(&mut all).await;
    let e2 = next_event(&mut all).await;
    assert_eq!(
        (e1.r#type, e2.r#type),
        (EventType::Modified as i32, EventType::Deleted as i32)
    );
    let f1 = next_event(&mut by_name).await;
    assert_eq!(
        (f1.r#type, meta(f1.object.as_ref().unwrap()).name.as_str()),
        (EventType::Modified as i32, "w1"),
        "the twin in kube-system is not w1"
    );
    c.pods()
        .delete(DeleteRequest {
            namespace: "kube-system".into(),
            name: "w1-twin".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // For the app=a watcher the relabel is the object leaving: DELETED.
    let s1 = next_event(&mut selected).await;
    assert_eq!(s1.r#type, EventType::Deleted as i32);
    assert_eq!(
        meta(s1.object.as_ref().unwrap()).labels,
        labels(&[("app", "b")])
    );

    // Without a version: the present state as ADDED, then changes.
    c.pods().create(pod("w2", &[])).await.unwrap();
    let mut fresh = c
        .pods()
        .watch(WatchRequest {
            allow_bookmarks: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let added = next_event(&mut fresh).await;
    assert_eq!(added.r#type, EventType::Added as i32);
    assert_eq!(meta(added.object.as_ref().unwrap()).name, "w2");
    let bookmark = next_event(&mut fresh).await;
    assert_eq!(bookmark.r#type, EventType::Bookmark as i32);
    assert!(
        !meta(bookmark.object.as_ref().unwrap())
            .resource_version
            .is_empty()
    );
}

async fn watch_from_a_compacted_version_is_out_of_range(c: Cluster) {
    let mut cm = ConfigMapsClient::new(c.channel.clone());
    let first = cm
        .create(ConfigMap {
            metadata: Some(ObjectMeta {
                name: "c0".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let old = first.metadata.unwrap().resource_version;
    // The test server compacts every 2 s, keeping one interval. The
    // kind's watch cache, started by its first watch (here from the
    // present), reads back half its window (4,096 changes) of history:
    // a version more revisions back than that is the store's alone to
    // serve.
    skiff_testkit::write_secrets(&c.channel, "default", "later", 2_100).await;
    drop(cm.watch(WatchRequest::default()).await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let result = cm
            .watch(WatchRequest {
                resource_version: old.clone(),
                ..Default::default()
            })
            .await;
        let status = match result {
            Err(status) => Some(status),
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                    Ok(Some(Err(status))) => Some(status),
                    _ => None,
                }
            }
        };
        if let Some(status) = status {
            assert_eq!(status.code(), Code::OutOfRange, "{}", status.message());
            assert!(
                status.message().contains("list again"),
                "{}",
                status.message()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

macro_rules! on_both_stores {
    ($($check:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Cluster::embedded().await).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Cluster::etcd().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    create_sets_server_fields_and_defaults,
    bad_input_is_refused_precisely_and_writes_nothing,
    generation_moves_with_spec_and_status_only_through_update_status,
    finalizers_hold_deletion_until_removed,
    list_filters_and_pages_consistently,
    watch_streams_changes_from_a_version,
    watch_from_a_compacted_version_is_out_of_range,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_namespaces_exist_and_cannot_be_deleted() {
    let c = Cluster::embedded().await;
    let mut ns = skiff::pb::core::v1::namespaces_client::NamespacesClient::new(c.channel.clone());
    let list = ns.list(ListRequest::default()).await.unwrap().into_inner();
    let names: Vec<String> = list
        .items
        .iter()
        .map(|n| n.metadata.as_ref().unwrap().name.clone())
        .collect();
    assert!(names.contains(&"default".to_string()), "{names:?}");
    let status = ns
        .delete(DeleteRequest {
            name: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("protected");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_unimplemented_and_names_the_service() {
    let c = Cluster::embedded().await;
    let mut grpc = tonic::client::Grpc::new(c.channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/skiff.core.v1.Widgets/Create");
    let codec = tonic_prost::ProstCodec::<Pod, Pod>::default();
    let status = grpc
        .unary(tonic::Request::new(pod("w", &[])), path, codec)
        .await
        .expect_err("no such kind");
    assert_eq!(status.code(), Code::Unimplemented, "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_future_version_is_refused() {
    let c = Cluster::embedded().await;
    let status = c
        .pods()
        .watch(WatchRequest {
            resource_version: "999999999".into(),
            ..Default::default()
        })
        .await
        .expect_err("future version");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().contains("newest version"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_releases_its_store_for_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let first = skiff_testkit::api_server(StoreConfig::Embedded(path.clone()))
        .await
        .unwrap();
    let mut client = PodsClient::new(skiff_testkit::channel(first.addr).await.unwrap());
    client.create(pod("kept", &[])).await.unwrap();
    let _watch = client.watch(WatchRequest::default()).await.unwrap();
    first.stop().await.unwrap();
    // Background tasks let go of the file shortly after the stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        match skiff_testkit::api_server(StoreConfig::Embedded(path.clone())).await {
            Ok(server) => break server,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "store still held: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut client = PodsClient::new(skiff_testkit::channel(second.addr).await.unwrap());
    client.get(get("kept")).await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_assigns_a_pod_to_a_node_once() {
    use skiff::pb::core::v1::{Binding, ObjectReference};
    let c = Cluster::embedded().await;
    c.pods().create(pod("web", &[])).await.unwrap();
    let binding = |node: &str| Binding {
        metadata: Some(ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        target: Some(ObjectReference {
            kind: "Node".into(),
            name: node.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bound = c.pods().bind(binding("n1")).await.unwrap().into_inner();
    assert_eq!(bound.spec.as_ref().unwrap().node_name, "n1");
    let scheduled = bound
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == "PodScheduled");
    assert_eq!(scheduled.map(|c| c.status.as_str()), Some("True"));
    let again = c
        .pods()
        .bind(binding("n2"))
        .await
        .expect_err("already bound");
    assert_eq!(again.code(), Code::Aborted);
    assert!(
        again.message().contains("already assigned to node \"n1\""),
        "{}",
        again.message()
    );
    let no_target = c.pods().bind(binding("")).await.expect_err("no node");
    assert_eq!(no_target.code(), Code::InvalidArgument);
    let read = c.pods().get(get("web")).await.unwrap().into_inner();
    assert_eq!(read.spec.unwrap().node_name, "n1");
}

/// A budget over the pods labelled app=web keeping `min_available`.
fn web_budget(min_available: f64) -> skiff::pb::policy::v1::PodDisruptionBudget {
    skiff::pb::policy::v1::PodDisruptionBudget {
        metadata: Some(ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(skiff::pb::policy::v1::PodDisruptionBudgetSpec {
            min_available: Some(skiff::wkt::Value {
                kind: Some(skiff::wkt::value::Kind::NumberValue(min_available)),
            }),
            selector: Some(skiff::pb::meta::v1::LabelSelector {
                match_labels: labels(&[("app", "web")]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates pod `name` labelled app=web and gives it `phase` and a Ready
/// condition (no agent runs here).
async fn web_pod_in(pods: &skiff_client::Api<Pod>, name: &str, phase: &str, ready: bool) {
    let mut p = pods.create(pod(name, &[("app", "web")])).await.unwrap();
    p.status = Some(PodStatus {
        phase: phase.into(),
        conditions: vec![skiff::pb::core::v1::PodCondition {
            r#type: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    pods.update_status(p).await.unwrap();
}

/// The eviction subresource's rules, with the pods' and the budget's
/// status written by hand (no controller runs here): a budget that
/// allows nothing refuses; a pod that is not ready may go while the
/// budget is met (IfHealthyBudget) or always (AlwaysAllow); pods that are
/// not running ignore budgets; a budget whose status is behind its spec
/// refuses; two budgets over one pod are an error; a dry run writes
/// nothing; preconditions hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_follow_the_budget_covering_the_pod() {
    use skiff::pb::policy::v1::{
        DeleteOptions, Eviction, PodDisruptionBudget, PodDisruptionBudgetStatus,
    };
    use skiff_client::Api;
    let c = Cluster::embedded().await;
    let pods = Api::<Pod>::new(c.channel.clone());
    let budgets = Api::<PodDisruptionBudget>::new(c.channel.clone());
    let make =
        async |name: &str, phase: &str, ready: bool| web_pod_in(&pods, name, phase, ready).await;
    let evict = async |name: &str, options: DeleteOptions| {
        pods.evict(Eviction {
            metadata: Some(ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            delete_options: Some(options),
            ..Default::default()
        })
        .await
    };
    let gone = async |name: &str| pods.get("default", name).await.is_err();
    make("ready", "Running", true).await;
    make("sick", "Running", false).await;
    make("sicker", "Running", false).await;
    make("waiting", "Pending", false).await;
    let created = budgets.create(web_budget(1.0)).await.unwrap();
    let generation = created.metadata.as_ref().unwrap().generation;
    let set_status = async |healthy: i32, allowed: i32, observed: i64| {
        let mut b = budgets.get("default", "web").await.unwrap();
        b.status = Some(PodDisruptionBudgetStatus {
            observed_generation: observed,
            current_healthy: healthy,
            desired_healthy: 1,
            expected_pods: 4,
            disruptions_allowed: allowed,
            ..Default::default()
        });
        budgets.update_status(b).await.unwrap()
    };

    // The status has not caught up with the spec: wait.
    let refused = evict("ready", DeleteOptions::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("The disruption budget web is still being processed by the server."),
        "{}",
        refused.message()
    );
    // Nothing allowed: refused, naming what the budget needs.
    set_status(1, 0, generation).await;
    let refused = evict("ready", DeleteOptions::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("needs 1 healthy pods and has 1 currently"),
        "{}",
        refused.message()
    );
    // A pod that is not running yet ignores budgets.
    evict("waiting", DeleteOptions::default()).await.unwrap();
    assert!(gone("waiting").await);
    // Not ready, budget met (IfHealthyBudget): may go; a dry run only
    // says so.
    evict(
        "sick",
        DeleteOptions {
            dry_run: vec!["All".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!gone("sick").await, "a dry run deletes nothing");
    // A precondition on another uid: refused, the pod stays.
    let wrong = evict(
        "sick",
        DeleteOptions {
            preconditions: Some(Preconditions {
                uid: "not-its-uid".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code(), Code::Aborted);
    // The delete's options are the eviction's: a propagation policy is
    // judged as a Delete's.
    let odd = evict(
        "sick",
        DeleteOptions {
            propagation_policy: "Sideways".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(odd.code(), Code::InvalidArgument);
    assert!(
        odd.message()
            .contains("propagationPolicy: Unsupported value: \"Sideways\"")
    );
    assert!(!gone("sick").await);
    evict("sick", DeleteOptions::default()).await.unwrap();
    assert!(gone("sick").await);
    // Not ready, budget unmet: refused under IfHealthyBudget ...
    set_status(0, 0, generation).await;
    let refused = evict("sicker", DeleteOptions::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // ... allowed under AlwaysAllow.
    let mut b = budgets.get("default", "web").await.unwrap();
    b.spec.as_mut().unwrap().unhealthy_pod_eviction_policy = Some("AlwaysAllow".into());
    b.status = None;
    let b = budgets.update(b).await.unwrap();
    set_status(0, 0, b.metadata.as_ref().unwrap().generation).await;
    evict("sicker", DeleteOptions::default()).await.unwrap();
    assert!(gone("sicker").await);
    // One disruption allowed: spent by the eviction, recorded in the
    // budget's status.
    set_status(1, 1, b.metadata.as_ref().unwrap().generation).await;
    evict("ready", DeleteOptions::default()).await.unwrap();
    assert!(gone("ready").await);
    let status = budgets.get("default", "web").await.unwrap().status.unwrap();
    assert_eq!(status.disruptions_allowed, 0);
    assert!(status.disrupted_pods.contains_key("ready"), "{status:?}");
    // Two budgets over one pod: Kubernetes refuses to choose.
    make("twice", "Running", true).await;
    let mut second = budgets.get("default", "web").await.unwrap();
    second.metadata = Some(ObjectMeta {
        name: "web-too".into(),
        namespace: "default".into(),
        ..Default::default()
    });
    second.status = None;
    budgets.create(second).await.unwrap();
    let error = evict("twice", DeleteOptions::default()).await.unwrap_err();
    assert_eq!(error.code(), Code::Internal);
    assert!(
        error
            .message()
            .contains("more than one PodDisruptionBudget"),
        "{}",
        error.message()
    );
    assert!(!gone("twice").await);
    // The delete's grace period is the eviction's: a pod on a node is
    // given the grace asked for.
    let mut bound = pod("bound", &[("app", "other")]);
    bound.spec.as_mut().unwrap().node_name = "somewhere".into();
    pods.create(bound).await.unwrap();
    evict(
        "bound",
        DeleteOptions {
            grace_period_seconds: Some(45),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let meta = pods
        .get("default", "bound")
        .await
        .unwrap()
        .metadata
        .unwrap();
    assert!(meta.deletion_timestamp.is_some(), "{meta:?}");
    assert_eq!(meta.deletion_grace_period_seconds, Some(45));
}

/// Evictions racing for a budget's last disruption: exactly one gets it,
/// the others are refused (the budget's status write is conditional); a
/// dry run before them spends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_evictions_spend_the_last_disruption_once() {
    use skiff::pb::policy::v1::{
        DeleteOptions, Eviction, PodDisruptionBudget, PodDisruptionBudgetStatus,
    };
    use skiff_client::Api;
    let c = Cluster::embedded().await;
    let pods = Api::<Pod>::new(c.channel.clone());
    let budgets = Api::<PodDisruptionBudget>::new(c.channel.clone());
    let names: Vec<String> = (0..6).map(|i| format!("web-{i}")).collect();
    for name in &names {
        web_pod_in(&pods, name, "Running", true).await;
    }
    let mut b = budgets.create(web_budget(5.0)).await.unwrap();
    b.status = Some(PodDisruptionBudgetStatus {
        observed_generation: b.metadata.as_ref().unwrap().generation,
        current_healthy: 6,
        desired_healthy: 5,
        expected_pods: 6,
        disruptions_allowed: 1,
        ..Default::default()
    });
    let before = budgets.update_status(b).await.unwrap();
    let eviction = |name: &str, dry_run: bool| Eviction {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        delete_options: Some(DeleteOptions {
            dry_run: if dry_run { vec!["All".into()] } else { vec![] },
            ..Default::default()
        }),
        ..Default::default()
    };
    pods.evict(eviction("web-0", true)).await.unwrap();
    let after = budgets.get("default", "web").await.unwrap();
    assert_eq!(
        after.metadata.as_ref().unwrap().resource_version,
        before.metadata.as_ref().unwrap().resource_version,
        "a dry run writes nothing"
    );
    let results =
        futures::future::join_all(names.iter().map(|n| pods.evict(eviction(n, false)))).await;
    let evicted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|s| s.code() == Code::ResourceExhausted)
        })
        .count();
    assert_eq!((evicted, refused), (1, 5), "{results:?}");
    let status = budgets.get("default", "web").await.unwrap().status.unwrap();
    assert_eq!(status.disruptions_allowed, 0);
    assert_eq!(status.disrupted_pods.len(), 1);
}

/// Priority admission: a pod gets its class's value and preemption
/// policy, the global default class's without one, 0 without either; an
/// unknown class, or a value that is not the class's, is forbidden; one
/// global default at most; the system classes exist and stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_take_their_priority_from_their_class() {
    use skiff::pb::scheduling::v1::PriorityClass;
    use skiff_client::Api;
    let c = Cluster::embedded().await;
    let pods = Api::<Pod>::new(c.channel.clone());
    let classes = Api::<PriorityClass>::new(c.channel.clone());
    let class = |name: &str, value: i32, default: bool, policy: Option<&str>| PriorityClass {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        value,
        global_default: default,
        preemption_policy: policy.map(str::to_string),
        ..Default::default()
    };
    let system = classes.get("", "system-node-critical").await.unwrap();
    assert_eq!(system.value, 2_000_001_000);
    assert_eq!(
        classes
            .get("", "system-cluster-critical")
            .await
            .unwrap()
            .value,
        2_000_000_000
    );
    let kept = classes
        .delete(DeleteRequest {
            name: "system-node-critical".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kept.code(), Code::FailedPrecondition, "{kept:?}");

    let plain = pods.create(pod("plain", &[])).await.unwrap().spec.unwrap();
    assert_eq!(
        (
            plain.priority,
            plain.preemption_policy.as_deref(),
            plain.priority_class_name.as_str()
        ),
        (Some(0), Some("PreemptLowerPriority"), "")
    );
    // A replace from the manifest (no priority in it) keeps what
    // admission gave.
    let mut replaced = pods.get("default", "plain").await.unwrap();
    let spec = replaced.spec.as_mut().unwrap();
    spec.priority = None;
    spec.preemption_policy = None;
    replaced.status = None;
    let replaced = pods.update(replaced).await.unwrap().spec.unwrap();
    assert_eq!(
        (replaced.priority, replaced.preemption_policy.as_deref()),
        (Some(0), Some("PreemptLowerPriority"))
    );
    classes
        .create(class("batch", 10, false, Some("Never")))
        .await
        .unwrap();
    let mut named = pod("named", &[]);
    named.spec.as_mut().unwrap().priority_class_name = "batch".into();
    let named = pods.create(named).await.unwrap().spec.unwrap();
    assert_eq!(
        (named.priority, named.preemption_policy.as_deref()),
        (Some(10), Some("Never"))
    );
    let mut unknown = pod("unknown", &[]);
    unknown.spec.as_mut().unwrap().priority_class_name = "vip".into();
    let refused = pods.create(unknown).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "pods \"unknown\" is forbidden: no PriorityClass with name vip was found"
    );
    let mut forged = pod("forged", &[]);
    let spec = forged.spec.as_mut().unwrap();
    spec.priority_class_name = "batch".into();
    spec.priority = Some(2_000_000_000);
    let refused = pods.create(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains(
            "the integer value of priority (2000000000) must not be provided in pod spec; priority admission controller computed 10 from the given PriorityClass name"
        ),
        "{}",
        refused.message()
    );
    // A pod may not give itself a priority without a class either.
    let mut sneaky = pod("sneaky", &[]);
    sneaky.spec.as_mut().unwrap().priority = Some(5);
    assert_eq!(
        pods.create(sneaky).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    classes
        .create(class("standard", 100, true, None))
        .await
        .unwrap();
    let second = classes
        .create(class("another", 200, true, None))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::PermissionDenied);
    assert!(
        second.message().contains(
            "PriorityClass standard is already marked as default. Only one default can exist"
        ),
        "{}",
        second.message()
    );
    let defaulted = pods.create(pod("defaulted", &[])).await;
    // The index that admission reads follows the store within moments.
    let defaulted = match defaulted {
        Ok(p) if p.spec.as_ref().unwrap().priority == Some(100) => p,
        _ => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pods.create(pod("defaulted-2", &[])).await.unwrap()
        }
    };
    let spec = defaulted.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.priority_class_name.as_str()),
        (Some(100), "standard")
    );
    let reserved = classes
        .create(class("system-mine", 1, false, None))
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument);
}
