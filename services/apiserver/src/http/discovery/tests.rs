//! Tests of discovery (legacy and aggregated) and the OpenAPI documents.

use super::*;

fn accept(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::ACCEPT, HeaderValue::from_static(value));
    headers
}

#[test]
fn aggregated_discovery_is_served_only_to_who_asks_for_it() {
    assert!(wants_aggregated(&accept(
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    )));
    assert!(wants_aggregated(&accept(
        "application/json;as=APIGroupDiscoveryList;v=v2;g=apidiscovery.k8s.io"
    )));
    assert!(!wants_aggregated(&accept("application/json")));
    let reply = serve(&Route::Groups, &accept(AGGREGATED)).unwrap();
    assert_eq!(reply.headers()[http::header::CONTENT_TYPE], AGGREGATED);
}

#[test]
fn every_kind_is_discovered_with_its_subresources() {
    let pods: Vec<Value> = legacy_resources(super::super::kind_at("", "v1", "pods").unwrap());
    let names: Vec<&str> = pods.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "pods",
            "pods/status",
            "pods/binding",
            "pods/eviction",
            "pods/log",
            "pods/exec",
            "pods/attach",
            "pods/portforward"
        ]
    );
    // A kind in two versions: the stored one preferred.
    assert_eq!(groups()["autoscaling"], ["v2", "v1"]);
    assert_eq!(groups()["events.k8s.io"], ["v1"]);
    assert!(super::super::kind_at("autoscaling", "v1", "horizontalpodautoscalers").is_some());
    assert_eq!(pods[0]["shortNames"], json!(["po"]));
    assert_eq!(pods[0]["categories"], json!(["all"]));
    let deployments = legacy_resources(super::super::kind_at("apps", "v1", "deployments").unwrap());
    let scale = deployments
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(scale["group"], "autoscaling");
    assert_eq!(scale["kind"], "Scale");
    assert!(groups().contains_key("rbac.authorization.k8s.io"));
}

#[test]
fn openapi_v2_is_one_swagger_document_in_json_only() {
    let reply = serve(&Route::OpenApiV2, &accept("application/json")).unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let doc = openapi_v2();
    assert_eq!(doc["swagger"], "2.0");
    let deployment = &doc["definitions"]["skiff.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    let strategy = &doc["definitions"]["skiff.apps.v1.DeploymentSpec"]["properties"]["strategy"];
    assert_eq!(
        strategy["allOf"][0]["$ref"],
        "#/definitions/skiff.apps.v1.DeploymentStrategy"
    );
    assert!(
        doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
            .is_object()
    );
    let protobuf_only = serve(
        &Route::OpenApiV2,
        &accept("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
    );
    assert_eq!(protobuf_only.unwrap_err().code, 406);
}

#[test]
fn openapi_documents_offer_field_validation_on_patch() {
    let index = openapi_index();
    assert!(
        index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1")
    );
    let doc = openapi_document("apps", "v1", &kinds_of("apps", "v1"));
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"]["kind"],
        "Deployment"
    );
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
}
