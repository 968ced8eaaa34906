//! Tests of the Ingress and IngressClass rules, against what Kubernetes'
//! validation answers for the same manifests.

use serde_json::json;

use super::*;

fn ingress(spec: serde_json::Value) -> Ingress {
    skiff::json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }))
    .expect("an Ingress")
}

fn errors_of<K: Strategy>(obj: &K) -> String {
    let mut errors = FieldErrors::default();
    obj.validate(&mut errors);
    obj.validate_create(&mut errors);
    errors.to_string()
}

fn service(name: &str, port: serde_json::Value) -> serde_json::Value {
    json!({"service": {"name": name, "port": port}})
}

#[test]
fn the_docs_ingress_with_hosts_paths_and_tls_is_valid() {
    let web = ingress(json!({
        "ingressClassName": "skiff",
        "tls": [{"hosts": ["a.example", "*.b.example"], "secretName": "a-tls"}],
        "rules": [
            {"host": "a.example", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": service("web", json!({"number": 80}))},
                {"path": "/api", "pathType": "Exact", "backend": service("api", json!({"name": "http"}))},
            ]}},
            {"host": "*.b.example", "http": {"paths": [
                {"pathType": "ImplementationSpecific", "backend": service("web", json!({"number": 80}))},
            ]}},
        ],
    }));
    assert_eq!(errors_of(&web), "");
    let default_only = ingress(json!({"defaultBackend": service("web", json!({"number": 8080}))}));
    assert_eq!(errors_of(&default_only), "");
}

#[test]
fn an_ingress_without_rules_or_default_backend_is_refused() {
    let errors = errors_of(&ingress(json!({})));
    assert!(
        errors.contains(
            "spec: Invalid value: \"\": either `defaultBackend` or `rules` must be specified"
        ),
        "{errors}"
    );
}

#[test]
fn bad_paths_hosts_and_backends_are_refused_with_kubernetes_messages() {
    let bad = ingress(json!({
        "rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "api", "pathType": "Prefix", "backend": service("web", json!({"number": 80}))},
            ]}},
            {"host": "a.*.example", "http": {"paths": [
                {"path": "/a//b", "backend": service("web", json!({"number": 80}))},
                {"path": "/a/..", "pathType": "Exact", "backend": service("Web", json!({"number": 70000}))},
                {"path": "/", "pathType": "Regex", "backend": service("web", json!({"name": "http", "number": 80}))},
                {"path": "/x", "pathType": "Prefix", "backend": service("web", json!({}))},
                {"path": "/y", "pathType": "Prefix", "backend": {}},
                {"path": "/z", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}},
            ]}},
            {"host": "c.example", "http": {"paths": []}},
        ],
    }));
    let errors = errors_of(&bad);
    for expected in [
        "spec.rules[0].host: Invalid value: \"10.0.0.1\": must be a DNS name, not an IP address",
        "spec.rules[0].http.paths[0].path: Invalid value: \"api\": must be an absolute path",
        "spec.rules[1].host: Invalid value: \"a.*.example\": a wildcard DNS-1123 subdomain must start with '*.'",
        "spec.rules[1].http.paths[0].pathType: Required value: pathType must be specified",
        "spec.rules[1].http.paths[1].path: Invalid value: \"/a/..\": cannot end with '/..'",
        "spec.rules[1].http.paths[1].backend.service.name: Invalid value: \"Web\": a DNS-1035 label",
        "spec.rules[1].http.paths[1].backend.service.port.number: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.rules[1].http.paths[2].pathType: Unsupported value: \"Regex\": supported values: \"Exact\", \"Prefix\", \"ImplementationSpecific\"",
        "spec.rules[1].http.paths[2].backend.service.port: Invalid value: \"\": cannot set both port name & port number",
        "spec.rules[1].http.paths[3].backend.service.port: Required value: port name or number is required",
        "spec.rules[1].http.paths[4].backend: Invalid value: \"\": resource or service backend is required",
        "spec.rules[1].http.paths[5].backend.resource: Forbidden: backends other than Services",
        "spec.rules[2].http.paths: Required value",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in {errors}"
        );
    }
    let double = ingress(json!({"rules": [{"http": {"paths": [
        {"path": "/a/./b%2F", "pathType": "Prefix", "backend": service("web", json!({"number": 80}))},
    ]}}]}));
    let errors = errors_of(&double);
    assert!(errors.contains("must not contain '/./'"), "{errors}");
    assert!(errors.contains("must not contain '%2F'"), "{errors}");
}

#[test]
fn the_class_annotation_and_field_together_are_refused_on_create_only() {
    let mut both = ingress(json!({
        "ingressClassName": "skiff",
        "defaultBackend": service("web", json!({"number": 80})),
    }));
    both.metadata_mut()
        .annotations
        .insert(LEGACY_CLASS_ANNOTATION.into(), "nginx".into());
    let errors = errors_of(&both);
    assert!(
        errors.contains("metadata.annotations[kubernetes.io/ingress.class]: Invalid value: \"nginx\": can not be set when the class field is also set"),
        "{errors}"
    );
    let mut update = FieldErrors::default();
    both.validate(&mut update);
    assert!(update.is_empty(), "{update}");
    // Neither the field nor the annotation: the default class is wanted.
    let mut plain = ingress(json!({"defaultBackend": service("web", json!({"number": 80}))}));
    assert!(plain.wants_default_ingress_class());
    plain.set_ingress_class("skiff");
    assert_eq!(
        plain.spec.as_ref().unwrap().ingress_class_name.as_deref(),
        Some("skiff")
    );
    assert!(!plain.wants_default_ingress_class());
    plain.spec.as_mut().unwrap().ingress_class_name = None;
    plain
        .metadata_mut()
        .annotations
        .insert(LEGACY_CLASS_ANNOTATION.into(), "nginx".into());
    assert!(!plain.wants_default_ingress_class());
}

fn class(spec: serde_json::Value) -> IngressClass {
    let mut class: IngressClass =
        skiff::json::from_value(json!({"metadata": {"name": "skiff"}, "spec": spec}))
            .expect("an IngressClass");
    class.default_fields();
    class
}

#[test]
fn ingress_classes_name_a_controller_that_never_changes() {
    let good = class(json!({
        "controller": "skiff.io/ingress",
        "parameters": {"apiGroup": "k8s.example.com", "kind": "IngressParameters", "name": "external-lb"},
    }));
    assert_eq!(errors_of(&good), "");
    assert_eq!(
        good.spec
            .as_ref()
            .unwrap()
            .parameters
            .as_ref()
            .unwrap()
            .scope
            .as_deref(),
        Some("Cluster"),
        "scope defaults to Cluster"
    );
    for (controller, expected) in [
        ("", "spec.controller: Required value"),
        (
            "ingress",
            "must be a domain-prefixed path (such as \"acme.io/foo\")",
        ),
        (
            "Skiff.io/ingress",
            "spec.controller: Invalid value: \"Skiff.io/ingress\"",
        ),
        ("skiff.io/in gress", "Invalid path"),
    ] {
        let errors = errors_of(&class(json!({"controller": controller})));
        assert!(errors.contains(expected), "{controller:?}: {errors}");
    }
    let scoped = class(json!({
        "controller": "skiff.io/ingress",
        "parameters": {"kind": "P", "name": "p", "scope": "Namespace"},
    }));
    assert!(errors_of(&scoped).contains(
        "spec.parameters.namespace: Required value: `parameters.scope` is set to 'Namespace'"
    ));
    let cluster = class(json!({
        "controller": "skiff.io/ingress",
        "parameters": {"kind": "P", "name": "p", "namespace": "x"},
    }));
    assert!(errors_of(&cluster).contains("spec.parameters.namespace: Forbidden"));
    let mut changed = good.clone();
    changed.spec.as_mut().unwrap().controller = "other.io/ingress".into();
    let mut errors = FieldErrors::default();
    changed.validate_update(&good, &mut errors);
    assert!(
        errors
            .to_string()
            .contains("spec.controller: Invalid value: \"other.io/ingress\": field is immutable"),
        "{errors}"
    );
}

fn network_policy(spec: serde_json::Value) -> NetworkPolicy {
    let mut policy: NetworkPolicy = skiff::json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    }))
    .expect("a NetworkPolicy");
    policy.default_fields();
    policy
}

#[test]
fn the_docs_network_policy_is_valid_and_gets_its_policy_types() {
    let policy = network_policy(json!({
        "podSelector": {"matchLabels": {"role": "db"}},
        "ingress": [{"from": [
            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
            {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
            {"podSelector": {"matchLabels": {"role": "frontend"}}},
        ], "ports": [{"protocol": "TCP", "port": 6379}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 32000, "endPort": 32768}]}],
    }));
    assert_eq!(errors_of(&policy), "");
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types, ["Ingress", "Egress"]);
    assert_eq!(spec.egress[0].ports[0].protocol.as_deref(), Some("TCP"));
    let ingress_only = network_policy(json!({"podSelector": {}}));
    assert_eq!(ingress_only.spec.unwrap().policy_types, ["Ingress"]);
}

#[test]
fn bad_peers_ports_and_types_are_refused_with_kubernetes_messages() {
    let policy = network_policy(json!({
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress", "Sideways"],
        "ingress": [{"from": [
            {},
            {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16", "10.0.0.0/8"]}},
            {"ipBlock": {"cidr": "fd00::/8"}},
            {"ipBlock": {"cidr": "ten"}},
        ], "ports": [
            {"protocol": "ICMP", "port": 80},
            {"port": 70000},
            {"port": "http", "endPort": 90},
            {"endPort": 90},
            {"port": 100, "endPort": 90},
            {"port": 80, "endPort": 70000},
        ]}],
    }));
    let errors = errors_of(&policy);
    for expected in [
        "spec.policyTypes: Invalid value: \"Ingress,Egress,Sideways\": may not specify more than two policyTypes",
        "spec.policyTypes[2]: Unsupported value: \"Sideways\"",
        "spec.ingress[0].from[0]: Required value: must specify a peer",
        "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer",
        "spec.ingress[0].from[2].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`",
        "spec.ingress[0].from[2].ipBlock.except[1]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
        "spec.ingress[0].from[3].ipBlock.cidr: Forbidden: IPv6 blocks",
        "spec.ingress[0].from[4].ipBlock.cidr: Invalid value: \"ten\"",
        "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        "spec.ingress[0].ports[1].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.ingress[0].ports[2].endPort: Forbidden: may not be specified when `port` is non-numeric",
        "spec.ingress[0].ports[3].port: Required value: must be specified when `endPort` is specified",
        "spec.ingress[0].ports[4].endPort: Invalid value: 90: must be greater than or equal to `port`",
        "spec.ingress[0].ports[5].endPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in {errors}"
        );
    }
}
