//! grpcurl, as a new user would use it, with no .proto files: reflection
//! lists the services, a Pod manifest in JSON creates a Pod, a Watch shows
//! the changes, and the health service says SERVING.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_apiserver::StoreConfig;

pub(crate) fn grpcurl(addr: &str, args: &[&str]) -> (bool, String, String) {
    let bin = skiff_testkit::grpcurl_binary().unwrap();
    let out = Command::new(bin)
        .arg("-plaintext")
        .args(args.iter().take(args.len().saturating_sub(1)))
        .arg(addr)
        .args(args.last())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POD_MANIFEST: &str = r#"{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "hello"}},
  "spec": {
    "containers": [{
      "name": "hello",
      "image": "busybox:1.36",
      "command": ["httpd", "-f", "-p", "8080"],
      "ports": [{"containerPort": 8080, "name": "http"}],
      "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}
    }]
  }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_creates_watches_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = skiff_testkit::api_server(StoreConfig::Embedded(dir.path().join("state.redb")))
        .await
        .unwrap();
    let addr = server.addr.to_string();
    tokio::task::spawn_blocking(move || scenario(&addr))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

fn scenario(addr: &str) {
    let (ok, out, err) = grpcurl(addr, &["list"]);
    assert!(ok, "grpcurl list failed: {err}");
    for service in [
        "skiff.core.v1.Pods",
        "skiff.apps.v1.Deployments",
        "grpc.health.v1.Health",
    ] {
        assert!(
            out.lines().any(|l| l == service),
            "{service} missing from:\n{out}"
        );
    }

    // A watch running in the background while we change things.
    let mut watcher = Command::new(skiff_testkit::grpcurl_binary().unwrap())
        .args([
            "-plaintext",
            "-d",
            r#"{"namespace":"default","resourceVersion":"1"}"#,
            addr,
        ])
        .arg("skiff.core.v1.Pods/Watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watch_out = Arc::new(Mutex::new(String::new()));
    let stdout = watcher.stdout.take().unwrap();
    let sink = Arc::clone(&watch_out);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });
    let mut watcher = skiff_testkit::ChildGuard::new(watcher);

    let (ok, out, err) = grpcurl(addr, &["-d", POD_MANIFEST, "skiff.core.v1.Pods/Create"]);
    assert!(ok, "create failed: {err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let meta = &created["metadata"];
    assert!(meta["uid"].as_str().is_some_and(|s| !s.is_empty()), "{out}");
    assert!(
        meta["resourceVersion"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{out}"
    );
    assert!(
        meta["creationTimestamp"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{out}"
    );
    assert_eq!(created["kind"], "Pod");
    assert_eq!(
        created["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "500m"
    );

    let mut changed = created.clone();
    changed["spec"]["containers"][0]["image"] = "busybox:1.37".into();
    let (ok, _, err) = grpcurl(
        addr,
        &["-d", &changed.to_string(), "skiff.core.v1.Pods/Update"],
    );
    assert!(ok, "update failed: {err}");
    let (ok, _, err) = grpcurl(
        addr,
        &[
            "-d",
            r#"{"namespace":"default","name":"hello"}"#,
            "skiff.core.v1.Pods/Delete",
        ],
    );
    assert!(ok, "delete failed: {err}");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = watch_out.lock().unwrap().clone();
        if ["\"ADDED\"", "\"MODIFIED\"", "\"DELETED\""]
            .iter()
            .all(|t| seen.contains(t))
        {
            let added = seen.find("\"ADDED\"").unwrap();
            let modified = seen.find("\"MODIFIED\"").unwrap();
            let deleted = seen.find("\"DELETED\"").unwrap();
            assert!(added < modified && modified < deleted, "order:\n{seen}");
            break;
        }
        assert!(Instant::now() < deadline, "watch printed only:\n{seen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    watcher.kill9();

    // Bad input comes back as a precise status.
    let (ok, _, err) = grpcurl(
        addr,
        &[
            "-d",
            r#"{"metadata":{"name":"UPPER"},"spec":{"containers":[{"name":"a","image":"b"}]}}"#,
            "skiff.core.v1.Pods/Create",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("metadata.name"),
        "{err}"
    );

    let (ok, out, err) = grpcurl(addr, &["grpc.health.v1.Health/Check"]);
    assert!(ok, "health failed: {err}");
    assert!(out.contains("SERVING"), "{out}");
}
