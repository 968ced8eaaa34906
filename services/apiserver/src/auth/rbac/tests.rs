//! Tests of RBAC rule and subject matching, escalation checks and the default
//! policy.

use super::*;

fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
    Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: ns.into(),
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn rules_match_verbs_groups_resources_subresources_and_names() {
    let r = rule(&["get", "list"], &[""], &["pods", "pods/log"]);
    assert!(rule_allows(&r, &attrs("get", "", "pods", "", "d", "x")));
    assert!(rule_allows(&r, &attrs("get", "", "pods", "log", "d", "x")));
    assert!(!rule_allows(&r, &attrs("delete", "", "pods", "", "d", "x")));
    assert!(!rule_allows(
        &r,
        &attrs("get", "apps", "pods", "", "d", "x")
    ));
    assert!(!rule_allows(
        &r,
        &attrs("get", "", "pods", "exec", "d", "x")
    ));
    assert!(!rule_allows(&r, &attrs("get", "", "secrets", "", "d", "x")));
    let wild = rule(&["*"], &["*"], &["*/status"]);
    assert!(rule_allows(
        &wild,
        &attrs("update", "apps", "deployments", "status", "d", "x")
    ));
    assert!(!rule_allows(
        &wild,
        &attrs("update", "apps", "deployments", "", "d", "x")
    ));
    let named = PolicyRule {
        resource_names: vec!["cfg".into()],
        ..rule(&["get"], &[""], &["configmaps"])
    };
    assert!(rule_allows(
        &named,
        &attrs("get", "", "configmaps", "", "d", "cfg")
    ));
    assert!(!rule_allows(
        &named,
        &attrs("get", "", "configmaps", "", "d", "other")
    ));
    // A list names no object: a named rule does not allow it.
    assert!(!rule_allows(
        &named,
        &attrs("get", "", "configmaps", "", "d", "")
    ));
}

#[test]
fn non_resource_urls_match_their_path_or_a_prefix_ending_in_a_star() {
    let r = PolicyRule {
        verbs: vec!["get".into()],
        non_resource_urls: vec!["/healthz".into(), "/metrics/*".into()],
        ..Default::default()
    };
    let path = |verb: &str, path: &str| Attributes {
        verb: verb.into(),
        path: path.into(),
        ..Default::default()
    };
    assert!(rule_allows(&r, &path("get", "/healthz")));
    assert!(rule_allows(&r, &path("get", "/metrics/cadvisor")));
    assert!(
        !rule_allows(&r, &path("get", "/healthz/etcd")),
        "not a prefix"
    );
    assert!(!rule_allows(&r, &path("get", "/version")));
    assert!(
        !rule_allows(&r, &path("post", "/healthz")),
        "its verbs only"
    );
    // A rule for resources allows no path.
    let pods = rule(&["get"], &[""], &["pods"]);
    assert!(!rule_allows(&pods, &path("get", "/healthz")));
}

#[test]
fn subjects_name_users_groups_and_service_accounts() {
    let user = UserInfo {
        username: "system:serviceaccount:shop:robot".into(),
        groups: vec!["system:serviceaccounts".into()],
        uid: String::new(),
    };
    let sa = |ns: &str| Subject {
        kind: "ServiceAccount".into(),
        name: "robot".into(),
        namespace: ns.into(),
        ..Default::default()
    };
    assert!(names(&sa(""), &user, "shop"));
    assert!(names(&sa("shop"), &user, "other"));
    assert!(!names(&sa(""), &user, "other"));
    let group = Subject {
        kind: "Group".into(),
        name: "system:serviceaccounts".into(),
        ..Default::default()
    };
    assert!(names(&group, &user, ""));
}

#[test]
fn a_grant_must_be_covered_by_what_the_writer_holds() {
    let held = vec![
        rule(&["get", "list"], &[""], &["pods", "pods/log"]),
        rule(&["*"], &["apps"], &["deployments"]),
    ];
    assert!(uncovered(&held, &[rule(&["get"], &[""], &["pods"])]).is_empty());
    assert!(
        uncovered(
            &held,
            &[rule(&["delete", "update"], &["apps"], &["deployments"])]
        )
        .is_empty()
    );
    assert_eq!(
        uncovered(
            &held,
            &[rule(&["get", "delete"], &[""], &["pods", "secrets"])]
        ),
        [
            "get \"\"/secrets",
            "delete \"\"/pods",
            "delete \"\"/secrets"
        ]
    );
    // A wildcard wanted must be held as a wildcard.
    assert!(!uncovered(&held, &[rule(&["*"], &[""], &["pods"])]).is_empty());
    assert!(!uncovered(&held, &[rule(&["get"], &["*"], &["*"])]).is_empty());
    // Named grants are covered by unnamed holdings, not the reverse.
    let named = PolicyRule {
        resource_names: vec!["web".into()],
        ..rule(&["get"], &[""], &["pods"])
    };
    assert!(uncovered(&held, std::slice::from_ref(&named)).is_empty());
    assert!(!uncovered(&[named], &[rule(&["get"], &[""], &["pods"])]).is_empty());
}

#[test]
fn the_default_policy_validates() {
    use crate::strategy::Strategy as _;
    let (roles, bindings) = default_policy();
    for role in &roles {
        let mut errors = skiff::validation::FieldErrors::default();
        role.validate(&mut errors);
        assert!(
            errors.is_empty(),
            "{}: {errors:?}",
            skiff::Resource::name(role)
        );
    }
    for binding in &bindings {
        let mut errors = skiff::validation::FieldErrors::default();
        binding.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }
}
