//! Tests of the container specs the agent builds.

use super::*;

#[test]
fn services_become_kubernetes_environment_variables() {
    let svc: skiff::pb::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-main"},
        "spec": {"clusterIP": "10.43.0.9", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}
    }))
    .unwrap();
    let headless: skiff::pb::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "peers"},
        "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
    }))
    .unwrap();
    let env: std::collections::BTreeMap<String, String> =
        service_env(&[svc, headless]).into_iter().collect();
    assert_eq!(env["DB_MAIN_SERVICE_HOST"], "10.43.0.9");
    assert_eq!(env["DB_MAIN_SERVICE_PORT"], "5432");
    assert_eq!(env["DB_MAIN_SERVICE_PORT_PG"], "5432");
    assert_eq!(env["DB_MAIN_PORT"], "tcp://10.43.0.9:5432");
    assert_eq!(env["DB_MAIN_PORT_5432_TCP_ADDR"], "10.43.0.9");
    assert!(
        !env.keys().any(|k| k.starts_with("PEERS_")),
        "headless services have no address"
    );
}

#[test]
fn expansion_replaces_known_references_only() {
    let env = vec![("A".to_string(), "1".to_string())];
    assert_eq!(expand("x$(A)y", &env), "x1y");
    assert_eq!(expand("$(B)", &env), "$(B)");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("cost $5", &env), "cost $5");
}

#[test]
fn only_the_end_of_a_termination_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("termination-log");
    let mut big = vec![b'x'; 1 << 20];
    big.extend_from_slice(b"the end");
    std::fs::write(&file, &big).unwrap();
    let tail = read_tail(&file, MAX_MESSAGE).unwrap();
    assert_eq!(tail.len(), MAX_MESSAGE);
    assert!(tail.ends_with(b"the end"));
    std::fs::write(&file, b"short").unwrap();
    assert_eq!(read_tail(&file, MAX_MESSAGE).unwrap(), b"short");
}

#[test]
fn an_fqdn_hostname_is_the_pods_name_in_its_subdomain_if_it_fits() {
    use skiff::pb::core::v1::PodSpec;
    use skiff::pb::meta::v1::ObjectMeta;
    let pod = |name: &str, fqdn: bool| Pod {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "shop".into(),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            subdomain: "db".into(),
            set_hostname_as_fqdn: Some(fqdn),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(pod_hostname(&pod("pg-0", false)), "pg-0");
    assert_eq!(
        pod_hostname(&pod("pg-0", true)),
        "pg-0.db.shop.svc.cluster.local"
    );
    assert_eq!(hostname_problem(&pod("pg-0", true)), None);
    let long = "x".repeat(40);
    assert!(
        hostname_problem(&pod(&long, true))
            .unwrap()
            .contains("is too long (64 characters is the max, 66 characters requested)")
    );
}
