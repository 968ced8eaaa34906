//! Tests of volume preparation: projections, item selection, host paths,
//! ownership and read-only mounts.

use super::*;
use std::os::unix::fs::PermissionsExt as _;

#[test]
fn on_root_mismatch_leaves_a_volume_whose_top_already_has_the_group() {
    use std::os::unix::fs::MetadataExt as _;
    let data = tempfile::tempdir().unwrap();
    let scratch = Volume {
        name: "scratch".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    };
    let claims = ClaimDirs::new();
    // The same files in two pods' emptyDirs: the top already owned by
    // the group, a file inside not.
    let prepare = |uid: &str| {
        let path = volume_path(data.path(), uid, &scratch, &claims);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("inner"), b"x").unwrap();
        crate::security::set_group_ownership(&path, 4321, false).unwrap();
        std::os::unix::fs::chown(path.join("inner"), None, Some(0)).unwrap();
        path
    };
    let gid_of = |path: &Path| std::fs::metadata(path.join("inner")).unwrap().gid();
    let skipped = prepare("pod-a");
    own_volume(
        data.path(),
        "pod-a",
        &scratch,
        &claims,
        4321,
        "OnRootMismatch",
    )
    .unwrap();
    assert_eq!(gid_of(&skipped), 0, "OnRootMismatch looks only at the top");
    let walked = prepare("pod-b");
    own_volume(data.path(), "pod-b", &scratch, &claims, 4321, "Always").unwrap();
    assert_eq!(gid_of(&walked), 4321, "Always walks the whole volume");
    // A top that does not match is walked under OnRootMismatch too.
    std::os::unix::fs::chown(&skipped, None, Some(0)).unwrap();
    own_volume(
        data.path(),
        "pod-a",
        &scratch,
        &claims,
        4321,
        "OnRootMismatch",
    )
    .unwrap();
    assert_eq!(gid_of(&skipped), 4321);
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
