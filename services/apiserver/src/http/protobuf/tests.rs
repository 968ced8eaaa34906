//! Tests of reading Kubernetes' protobuf bodies into Skiff's JSON.

use super::*;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        ..Default::default()
    };
    let mut body = MAGIC.to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

#[test]
fn a_secret_in_protobuf_reads_as_skiffs_secret() {
    let secret = core::Secret {
        metadata: Some(meta::ObjectMeta {
            name: Some("sh.helm.release.v1.web.v1".into()),
            labels: [("owner".to_string(), "helm".to_string())].into(),
            ..Default::default()
        }),
        data: [("release".to_string(), b"\x1f\x8b gz".to_vec())].into(),
        r#type: Some("helm.sh/release.v1".into()),
        ..Default::default()
    };
    let value = to_json(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
    let ours: skiff::pb::core::v1::Secret = skiff::json::from_value(value).unwrap();
    assert_eq!(skiff::Resource::name(&ours), "sh.helm.release.v1.web.v1");
    assert_eq!(ours.r#type, "helm.sh/release.v1");
    assert_eq!(ours.data["release"], b"\x1f\x8b gz");
}

#[test]
fn a_deployment_in_protobuf_keeps_its_pod_template() {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    let deployment = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        str_val: Some("25%".into()),
                        ..Default::default()
                    }),
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(0),
                        ..Default::default()
                    }),
                }),
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("web".into()),
                        image: Some("busybox".into()),
                        ports: vec![core::ContainerPort {
                            container_port: Some(8080),
                            ..Default::default()
                        }],
                        resources: Some(core::ResourceRequirements {
                            limits: [(
                                "cpu".to_string(),
                                k8s_pb::apimachinery::pkg::api::resource::Quantity {
                                    string: Some("500m".into()),
                                },
                            )]
                            .into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = to_json(&envelope(
        "apps/v1",
        "Deployment",
        deployment.encode_to_vec(),
    ))
    .unwrap();
    let ours: skiff::pb::apps::v1::Deployment = skiff::json::from_value(value.clone()).unwrap();
    let spec = ours.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let container = &spec.template.unwrap().spec.unwrap().containers[0];
    assert_eq!(container.image, "busybox");
    assert_eq!(container.ports[0].container_port, 8080);
    let back = skiff::json::to_value(&skiff::pb::apps::v1::Deployment {
        spec: Some(skiff::pb::apps::v1::DeploymentSpec {
            strategy: skiff::json::from_value(value["spec"]["strategy"].clone()).unwrap(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(back["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        back["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
}

#[test]
fn bodies_that_are_not_the_envelope_are_refused() {
    assert!(to_json(b"{}").is_err());
    assert!(to_json(&envelope("v1", "Widget", vec![])).is_err());
}
