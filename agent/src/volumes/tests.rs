//! Tests of volume preparation: projections, item selection, host paths,
//! ownership and read-only mounts.

use super::*;
use std::os::unix::fs::PermissionsExt as _;

/// Sources that are never asked (the volumes here need no API).
fn offline_sources() -> Sources {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    Sources {
        configmaps: skiff_client::Api::new(channel.clone()),
        secrets: skiff_client::Api::new(channel.clone()),
        services: skiff_client::Api::new(channel.clone()),
        tokens: crate::sources::Tokens::new(channel.clone()),
        claims: skiff_client::Api::new(channel.clone()),
        volumes: skiff_client::Api::new(channel),
    }
}

#[tokio::test]
async fn on_root_mismatch_leaves_a_volume_whose_top_already_has_the_group() {
    use std::os::unix::fs::MetadataExt as _;
    let data = tempfile::tempdir().unwrap();
    // A pod with fsGroup 4321 and an emptyDir, under a given policy.
    let pod = |uid: &str, policy: Option<&str>| -> Pod {
        skiff::json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": uid},
            "spec": {
                "securityContext": {"fsGroup": 4321, "fsGroupChangePolicy": policy},
                "containers": [{"name": "c", "image": "x"}],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        }))
        .unwrap()
    };
    // Its emptyDir as a restarted agent finds it: the top already of the
    // group, a file inside not.
    let existing = |uid: &str| {
        let path = pod_dir(data.path(), uid).join("volumes/scratch");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("inner"), b"x").unwrap();
        crate::security::set_group_ownership(&path, 4321, false).unwrap();
        std::os::unix::fs::chown(path.join("inner"), None, Some(0)).unwrap();
        path
    };
    let gid_of = |path: &Path| std::fs::metadata(path.join("inner")).unwrap().gid();
    let (sources, node) = (offline_sources(), Default::default());
    let skipped = existing("pod-a");
    prepare(
        data.path(),
        "n1",
        &pod("pod-a", Some("OnRootMismatch")),
        &sources,
        &node,
    )
    .await
    .unwrap();
    assert_eq!(gid_of(&skipped), 0, "OnRootMismatch looks only at the top");
    let walked = existing("pod-b");
    prepare(data.path(), "n1", &pod("pod-b", None), &sources, &node)
        .await
        .unwrap();
    assert_eq!(
        gid_of(&walked),
        4321,
        "Always (the default) walks the whole volume"
    );
    // A top that does not match is walked under OnRootMismatch too.
    let changed = existing("pod-c");
    std::os::unix::fs::chown(&changed, None, Some(0)).unwrap();
    prepare(
        data.path(),
        "n1",
        &pod("pod-c", Some("OnRootMismatch")),
        &sources,
        &node,
    )
    .await
    .unwrap();
    assert_eq!(gid_of(&changed), 4321);
}

#[test]
fn api_data_and_read_only_claims_are_mounted_read_only() {
    let claim = |read_only| Volume {
        name: "data".into(),
        persistent_volume_claim: Some(skiff::pb::core::v1::PersistentVolumeClaimVolumeSource {
            claim_name: "data".into(),
            read_only,
        }),
        ..Default::default()
    };
    assert!(forced_read_only(&claim(true)));
    assert!(!forced_read_only(&claim(false)));
    let config = Volume {
        config_map: Some(Default::default()),
        ..Default::default()
    };
    assert!(forced_read_only(&config));
    let scratch = Volume {
        empty_dir: Some(Default::default()),
        ..Default::default()
    };
    assert!(!forced_read_only(&scratch));
}

#[test]
fn projection_rewrites_changed_files_and_drops_removed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        ("a".to_string(), b"1".to_vec(), None),
        ("b".to_string(), b"2".to_vec(), Some(0o600)),
    ];
    project(dir.path(), &files, 0o644).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
    let mode = std::fs::metadata(dir.path().join("b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    project(dir.path(), &[("a".to_string(), b"3".to_vec(), None)], 0o644).unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"3");
    assert!(!dir.path().join("b").exists(), "a removed key's file goes");
}

#[test]
fn projection_refuses_paths_outside_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("vol");
    project(
        &inner,
        &[("../escape".to_string(), b"x".to_vec(), None)],
        0o644,
    )
    .unwrap();
    assert!(!dir.path().join("escape").exists());
}

#[test]
fn items_name_keys_that_must_exist_unless_optional() {
    let data = BTreeMap::from([("k".to_string(), b"v".to_vec())]);
    let items = vec![KeyToPath {
        key: "missing".into(),
        path: "p".into(),
        mode: None,
    }];
    assert!(matches!(
        select("v", &data, &items, false),
        Err(Error::Missing(_))
    ));
    assert!(select("v", &data, &items, true).unwrap().is_empty());
}

#[test]
fn host_path_types_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made");
    check_host_path("v", made.to_str().unwrap(), "DirectoryOrCreate").unwrap();
    assert!(made.is_dir());
    assert!(check_host_path("v", made.to_str().unwrap(), "File").is_err());
    assert!(check_host_path("v", "/nonexistent/x", "Directory").is_err());
}
