//! Tests of the verbs' decoding (`fieldValidation`) and of Scale objects.

use super::common::{Validation, decode};
use super::subresources::to_scale;
use serde_json::json;
use skiff::pb::core::v1::Pod;

#[test]
fn unknown_fields_are_refused_warned_or_dropped_by_path() {
    let pod = json!({
        "metadata": {"name": "x", "colour": "red"},
        "spec": {"containers": [{"name": "c", "image": "i", "imag": "typo"}]}
    });
    let mut warnings = Vec::new();
    let err = decode::<Pod>(pod.clone(), Validation::Strict, &mut warnings).unwrap_err();
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("strict decoding error: unknown field"),
        "{}",
        err.message
    );
    let obj: Pod = decode(pod.clone(), Validation::Warn, &mut warnings).unwrap();
    assert_eq!(skiff::Resource::name(&obj), "x");
    assert_eq!(
        warnings,
        [
            "unknown field \"metadata.colour\"",
            "unknown field \"spec.containers[0].imag\""
        ]
    );
    let mut quiet = Vec::new();
    decode::<Pod>(pod, Validation::Ignore, &mut quiet).unwrap();
    assert!(quiet.is_empty());
    // A wrong type is refused whatever the validation.
    let bad = json!({"metadata": {"name": 5}});
    let err = decode::<Pod>(bad, Validation::Ignore, &mut quiet).unwrap_err();
    assert!(err.message.contains("metadata.name"), "{}", err.message);
}

#[test]
fn scales_carry_replicas_and_the_selector_as_a_string() {
    let deployment = json!({
        "metadata": {"name": "web", "namespace": "prod", "resourceVersion": "7"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
        "status": {"replicas": 2}
    });
    let scale = to_scale(&deployment);
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web,tier in (a,b)");
    assert_eq!(scale["metadata"]["resourceVersion"], "7");
    let rc = json!({"spec": {"selector": {"app": "web"}}});
    assert_eq!(to_scale(&rc)["status"]["selector"], "app=web");
}
