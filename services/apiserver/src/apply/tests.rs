//! Tests of server-side apply: managed fields, conflicts, forcing, removal
//! and list merges.

use super::*;

fn deployment(replicas: i64, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "c", "image": image}
        ]}}}
    })
}

fn managers(obj: &Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["manager"].as_str().unwrap(),
                e["operation"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn the_first_apply_records_its_fields_as_kubernetes_writes_them() {
    let obj = apply(
        None,
        &deployment(2, "a"),
        "kubectl",
        "apps/v1",
        false,
        "now",
    )
    .unwrap();
    assert_eq!(obj["spec"]["replicas"], 2);
    assert_eq!(managers(&obj), ["kubectl/Apply"]);
    let trie = &obj["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(trie["f:spec"]["f:replicas"], json!({}));
    assert_eq!(trie["f:metadata"]["f:labels"]["f:app"], json!({}));
    let container = &trie["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
    assert_eq!(container["."], json!({}));
    assert_eq!(container["f:image"], json!({}));
    assert!(trie["f:metadata"].get("f:name").is_none());
}

#[test]
fn another_manager_conflicts_until_it_forces() {
    let first = apply(None, &deployment(2, "a"), "kubectl", "apps/v1", false, "t1").unwrap();
    // The same values: shared, no conflict.
    let shared = apply(
        Some(&first),
        &deployment(2, "a"),
        "ci",
        "apps/v1",
        false,
        "t2",
    )
    .unwrap();
    assert_eq!(managers(&shared), ["kubectl/Apply", "ci/Apply"]);
    let err = apply(
        Some(&first),
        &deployment(5, "b"),
        "ci",
        "apps/v1",
        false,
        "t2",
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"c\"].image"
    );
    let forced = apply(
        Some(&first),
        &deployment(5, "b"),
        "ci",
        "apps/v1",
        true,
        "t2",
    )
    .unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    let kubectl = &forced["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(kubectl["f:spec"].get("f:replicas").is_none(), "{kubectl}");
}

#[test]
fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
    let mut with_env = deployment(2, "a");
    with_env["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "X", "value": "1"}]);
    with_env["metadata"]["annotations"] = json!({"note": "hi"});
    let first = apply(None, &with_env, "kubectl", "apps/v1", false, "t1").unwrap();
    let second = apply(
        Some(&first),
        &deployment(2, "a"),
        "kubectl",
        "apps/v1",
        false,
        "t2",
    )
    .unwrap();
    assert!(
        second["metadata"]
            .get("annotations")
            .and_then(|a| a.get("note"))
            .is_none(),
        "{second}"
    );
    assert!(
        second["spec"]["template"]["spec"]["containers"][0]
            .get("env")
            .is_none_or(|e| e.as_array().unwrap().is_empty()),
        "{second}"
    );
    // Owned by another applier too: kept.
    let helm = apply(
        Some(&first),
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"note": "hi"}}}),
        "helm",
        "apps/v1",
        false,
        "t2",
    )
    .unwrap();
    let third = apply(
        Some(&helm),
        &deployment(2, "a"),
        "kubectl",
        "apps/v1",
        false,
        "t3",
    )
    .unwrap();
    assert_eq!(third["metadata"]["annotations"]["note"], "hi");
}

#[test]
fn a_write_other_than_apply_takes_the_fields_it_changes() {
    let applied = apply(None, &deployment(2, "a"), "helm", "apps/v1", false, "t1").unwrap();
    // kubectl scale: replicas become kubectl's.
    let mut scaled = applied.clone();
    scaled["spec"]["replicas"] = json!(5);
    let entries = record_update(&applied, &scaled, "kubectl", "apps/v1", "t2");
    scaled["metadata"]["managedFields"] = Value::Array(entries);
    assert_eq!(managers(&scaled), ["helm/Apply", "kubectl/Update"]);
    assert_eq!(
        scaled["metadata"]["managedFields"][1]["fieldsV1"],
        json!({"f:spec": {"f:replicas": {}}})
    );
    // helm applying replicas 2 again now conflicts, as on Kubernetes.
    let err = apply(
        Some(&scaled),
        &deployment(2, "a"),
        "helm",
        "apps/v1",
        false,
        "t3",
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"
    );
    // An unchanged write changes nobody's fields.
    assert_eq!(
        record_update(&scaled, &scaled, "other", "apps/v1", "t4").len(),
        2
    );
    let created = record_update(
        &json!({}),
        &deployment(1, "x"),
        "kubectl-create",
        "apps/v1",
        "t0",
    );
    assert_eq!(created[0]["operation"], "Update");
    assert_eq!(created[0]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
}

#[test]
fn lists_merge_by_key_and_the_live_rest_is_kept() {
    let mut live = deployment(2, "a");
    live["status"] = json!({"replicas": 2});
    live["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "sidecar", "image": "s"}));
    let applied = apply(
        Some(&live),
        &deployment(2, "b"),
        "kubectl",
        "apps/v1",
        false,
        "t",
    )
    .unwrap();
    let containers = applied["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0]["image"], "b");
    assert_eq!(applied["status"]["replicas"], 2);
}
