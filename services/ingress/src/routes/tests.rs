//! Tests of the routing table: host and path precedence, path elements,
//! classes, default backends and certificates by SNI name.

use serde_json::json;

use super::*;

fn ingress(name: &str, created: i64, spec: serde_json::Value) -> Arc<Ingress> {
    let mut ingress: Ingress = skiff::json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }))
    .unwrap();
    ingress.metadata_mut().creation_timestamp = Some(skiff::wkt::Timestamp {
        seconds: created,
        nanos: 0,
    });
    Arc::new(ingress)
}

fn path(path: &str, kind: &str, service: &str) -> serde_json::Value {
    json!({"path": path, "pathType": kind,
           "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

fn routed(routes: &Routes, host: &str, path: &str) -> String {
    routes
        .route(host, path)
        .map_or_else(|| "-".to_string(), |b| b.service.clone())
}

#[test]
fn hosts_and_paths_route_as_the_ingress_specification_says() {
    let web = ingress(
        "web",
        1,
        json!({"rules": [
            {"host": "a.example", "http": {"paths": [
                path("/", "Prefix", "front"),
                path("/api", "Prefix", "api"),
                path("/api/v1/health", "Exact", "health"),
            ]}},
            {"host": "*.b.example", "http": {"paths": [path("/", "Prefix", "wild")]}},
            {"host": "x.b.example", "http": {"paths": [path("/x", "Exact", "x-exact")]}},
            {"http": {"paths": [path("/any/", "Prefix", "anyhost"), path("/thing", "ImplementationSpecific", "impl")]}},
        ]}),
    );
    let routes = Routes::build(&[web], |_, _| None);
    assert_eq!(routed(&routes, "a.example", "/"), "front");
    assert_eq!(routed(&routes, "a.example:8080", "/api"), "api");
    assert_eq!(routed(&routes, "A.Example", "/api/v1"), "api");
    assert_eq!(
        routed(&routes, "a.example", "/apis"),
        "front",
        "a prefix matches whole elements"
    );
    assert_eq!(routed(&routes, "a.example", "/api/v1/health"), "health");
    assert_eq!(
        routed(&routes, "a.example", "/api/v1/health/"),
        "api",
        "exact is exact"
    );
    assert_eq!(routed(&routes, "y.b.example", "/z"), "wild");
    assert_eq!(
        routed(&routes, "b.example", "/z"),
        "-",
        "a wildcard needs one more label"
    );
    assert_eq!(routed(&routes, "z.y.b.example", "/z"), "-", "and only one");
    assert_eq!(
        routed(&routes, "x.b.example", "/x"),
        "x-exact",
        "an exact host beats its wildcard"
    );
    assert_eq!(
        routed(&routes, "x.b.example", "/any"),
        "-",
        "a host with rules is served by them alone"
    );
    assert_eq!(
        routed(&routes, "a.example.", "/api"),
        "api",
        "a trailing dot is the same host"
    );
    assert_eq!(
        routed(&routes, "other", "/any/thing"),
        "anyhost",
        "a trailing slash of a prefix is not needed"
    );
    assert_eq!(
        routed(&routes, "other", "/thing/1"),
        "impl",
        "ImplementationSpecific is a prefix"
    );
    assert_eq!(routed(&routes, "other", "/nothing"), "-");
    assert_eq!(routed(&routes, "[::1]:80", "/any"), "anyhost");
}

#[test]
fn the_oldest_ingress_wins_a_path_and_the_default_backend() {
    let older = ingress(
        "older",
        1,
        json!({"defaultBackend": {"service": {"name": "fallback-old", "port": {"name": "http"}}},
               "rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "old")]}}]}),
    );
    let newer = ingress(
        "newer",
        2,
        json!({"defaultBackend": {"service": {"name": "fallback-new", "port": {"number": 80}}},
               "rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "new"), path("/new", "Prefix", "new")]}}]}),
    );
    let routes = Routes::build(&[newer, older], |_, _| None);
    assert_eq!(routed(&routes, "a.example", "/"), "old");
    assert_eq!(
        routed(&routes, "a.example", "/new/1"),
        "new",
        "the longer path is the newer's"
    );
    assert_eq!(routed(&routes, "elsewhere", "/"), "fallback-old");
    assert_eq!(
        routed(&routes, "a.example", "/"),
        "old",
        "a host with rules never reaches the default backend"
    );
    let fallback = routes.route("elsewhere", "/").unwrap();
    assert_eq!(fallback.port, ServicePort::Name("http".into()));
    assert_eq!(fallback.ingress, "shop/older");
    assert_eq!(routes.served, ["shop/older", "shop/newer"]);
}

fn class(name: &str, controller: &str, default: bool, created: i64) -> Arc<IngressClass> {
    let mut class: IngressClass = skiff::json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"controller": controller},
    }))
    .unwrap();
    let meta = class.metadata_mut();
    meta.creation_timestamp = Some(skiff::wkt::Timestamp {
        seconds: created,
        nanos: 0,
    });
    if default {
        meta.annotations
            .insert(DEFAULT_CLASS_ANNOTATION.into(), "true".into());
    }
    Arc::new(class)
}

#[test]
fn only_the_ingresses_of_our_classes_are_ours() {
    let classes = [
        class("skiff", "skiff.io/ingress", true, 1),
        class("edge", "skiff.io/ingress", false, 2),
        class("nginx", "k8s.io/ingress-nginx", false, 3),
    ];
    let (ours, default) = our_classes(&classes, "skiff.io/ingress");
    assert_eq!(
        ours,
        HashSet::from(["skiff".to_string(), "edge".to_string()])
    );
    assert_eq!(default.as_deref(), Some("skiff"));
    let named = |class: &str| ingress("i", 1, json!({"ingressClassName": class}));
    assert!(is_ours(&named("edge"), &ours, default.as_deref()));
    assert!(!is_ours(&named("nginx"), &ours, default.as_deref()));
    let mut annotated = (*ingress("i", 1, json!({}))).clone();
    annotated
        .metadata_mut()
        .annotations
        .insert(LEGACY_CLASS_ANNOTATION.into(), "nginx".into());
    assert!(!is_ours(&annotated, &ours, default.as_deref()));
    let classless = ingress("i", 1, json!({}));
    assert!(
        is_ours(&classless, &ours, default.as_deref()),
        "ours while our class is the default"
    );
    // A newer default of another controller takes the classless ones.
    let classes = [
        class("skiff", "skiff.io/ingress", true, 1),
        class("nginx", "k8s.io/ingress-nginx", true, 3),
    ];
    let (ours, default) = our_classes(&classes, "skiff.io/ingress");
    assert_eq!(default, None);
    assert!(!is_ours(&classless, &ours, default.as_deref()));
}

#[test]
fn certificates_are_found_by_sni_name_and_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let ca = skiff_pki::Ca::load_or_create(dir.path()).unwrap();
    let id = ca.issue_server(&["a.example".into()]).unwrap();
    let mut secret = Secret::default();
    secret
        .data
        .insert("tls.crt".into(), id.cert_pem.into_bytes());
    secret
        .data
        .insert("tls.key".into(), id.key_pem.into_bytes());
    let secret = Arc::new(secret);
    let web = ingress(
        "web",
        1,
        json!({"tls": [{"hosts": ["a.example", "*.w.example"], "secretName": "a-tls"},
                       {"hosts": ["gone.example"], "secretName": "missing"}],
               "rules": [{"host": "a.example", "http": {"paths": [path("/", "Prefix", "front")]}}]}),
    );
    let routes = Routes::build(&[web], |ns, name| {
        (ns == "shop" && name == "a-tls").then(|| Arc::clone(&secret))
    });
    assert!(routes.cert("a.example").is_some());
    assert!(routes.cert("A.EXAMPLE").is_some());
    assert!(routes.cert("x.w.example").is_some());
    assert!(routes.cert("w.example").is_none());
    assert!(routes.cert("gone.example").is_none());
    assert_eq!(
        routes.problems.get("shop/web").map(String::as_str),
        Some("secret missing not found")
    );
}
