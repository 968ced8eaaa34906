//! Role-based access control with Kubernetes' rules: ClusterRoleBindings
//! grant ClusterRoles everywhere; RoleBindings grant a Role or a
//! ClusterRole within their namespace. The roles and bindings are read
//! from in-memory indexes kept current by store watches, and the default
//! policy (the components' roles, `cluster-admin`, `view`, `edit`) is
//! created at startup.

use std::sync::Arc;
use std::time::Duration;

use skiff::pb::authentication::v1::UserInfo;
use skiff::pb::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff_store::Store;

use super::attributes::Attributes;
use crate::index::Index;
use crate::strategy::RBAC_GROUP;

/// How long a call waits for the indexes' first list after a start.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// The RBAC objects, in memory.
pub struct Rbac {
    roles: Arc<Index<Role>>,
    cluster_roles: Arc<Index<ClusterRole>>,
    role_bindings: Arc<Index<RoleBinding>>,
    cluster_role_bindings: Arc<Index<ClusterRoleBinding>>,
    /// The indexes' watch loops, stopped on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Rbac {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether a rule's list holds `value` (or `*`).
fn holds(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

/// Whether `rule` allows `attrs`.
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    if !holds(&rule.verbs, &attrs.verb) {
        return false;
    }
    if attrs.resource.is_empty() {
        return rule.non_resource_urls.iter().any(|url| {
            url == "*"
                || url == &attrs.path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| attrs.path.starts_with(prefix))
        });
    }
    let resource = attrs.full_resource();
    let resource_ok = rule.resources.iter().any(|r| {
        r == "*"
            || *r == resource
            || (!attrs.subresource.is_empty() && *r == format!("*/{}", attrs.subresource))
    });
    resource_ok
        && holds(&rule.api_groups, &attrs.group)
        && (rule.resource_names.is_empty()
            || (!attrs.name.is_empty() && rule.resource_names.contains(&attrs.name)))
}

/// Whether `subject` (of a binding in `binding_namespace`) is `user`.
fn names(subject: &Subject, user: &UserInfo, binding_namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.username,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = if subject.namespace.is_empty() {
                binding_namespace
            } else {
                &subject.namespace
            };
            user.username == format!("system:serviceaccount:{namespace}:{}", subject.name)
        }
        _ => false,
    }
}

fn subject_text(user: &UserInfo) -> String {
    if user.username.starts_with("system:serviceaccount:") {
        format!("ServiceAccount {:?}", user.username)
    } else {
        format!("User {:?}", user.username)
    }
}

// === impl Rbac ===

impl Rbac {
    /// Starts following the RBAC kinds in `store`.
    pub fn start(store: &Arc<dyn Store>) -> Self {
        let (roles, a) = Index::start(Arc::clone(store));
        let (cluster_roles, b) = Index::start(Arc::clone(store));
        let (role_bindings, c) = Index::start(Arc::clone(store));
        let (cluster_role_bindings, d) = Index::start(Arc::clone(store));
        Self {
            roles,
            cluster_roles,
            role_bindings,
            cluster_role_bindings,
            tasks: vec![a, b, c, d],
        }
    }

    /// Whether every index has listed (waiting a little after a start).
    async fn synced(&self) -> bool {
        self.roles.wait_synced(SYNC_WAIT).await
            && self.cluster_roles.wait_synced(SYNC_WAIT).await
            && self.role_bindings.wait_synced(SYNC_WAIT).await
            && self.cluster_role_bindings.wait_synced(SYNC_WAIT).await
    }

    fn rules_of(&self, role_ref: Option<&RoleRef>, namespace: &str) -> Vec<PolicyRule> {
        let Some(role_ref) = role_ref.filter(|r| r.api_group == RBAC_GROUP) else {
            return Vec::new();
        };
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get("", &role_ref.name)
                .map(|r| r.rules.clone())
                .unwrap_or_default(),
            "Role" if !namespace.is_empty() => self
                .roles
                .get(namespace, &role_ref.name)
                .map(|r| r.rules.clone())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether some binding grants `user` a rule allowing `attrs`:
    /// `Ok(reason)` naming the binding, or `Err(reason)` when none does.
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<String, String> {
        if !self.synced().await {
            return Err("the authorizer has not read the RBAC policy yet; retry".into());
        }
        for binding in self.cluster_role_bindings.list(None) {
            if binding.subjects.iter().any(|s| names(s, user, "")) {
                let rules = self.rules_of(binding.role_ref.as_ref(), "");
                if rules.iter().any(|r| rule_allows(r, attrs)) {
                    return Ok(format!(
                        "RBAC: allowed by ClusterRoleBinding {:?} of ClusterRole {:?} to {}",
                        skiff::Resource::name(binding.as_ref()),
                        binding.role_ref.as_ref().map_or("", |r| r.name.as_str()),
                        subject_text(user)
                    ));
                }
            }
        }
        if !attrs.namespace.is_empty() {
            for binding in self.role_bindings.list(Some(&attrs.namespace)) {
                if binding
                    .subjects
                    .iter()
                    .any(|s| names(s, user, &attrs.namespace))
                {
                    let rules = self.rules_of(binding.role_ref.as_ref(), &attrs.namespace);
                    if rules.iter().any(|r| rule_allows(r, attrs)) {
                        return Ok(format!(
                            "RBAC: allowed by RoleBinding \"{}/{}\" of {} {:?} to {}",
                            attrs.namespace,
                            skiff::Resource::name(binding.as_ref()),
                            binding.role_ref.as_ref().map_or("", |r| r.kind.as_str()),
                            binding.role_ref.as_ref().map_or("", |r| r.name.as_str()),
                            subject_text(user)
                        ));
                    }
                }
            }
        }
        Err(String::new())
    }
}

// === the default policy ===

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_string()).collect();
    PolicyRule {
        verbs: strings(verbs),
        api_groups: strings(groups),
        resources: strings(resources),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// The ClusterRoles and ClusterRoleBindings every cluster has (the
/// counterparts of Kubernetes' bootstrap policy), created at startup when
/// missing and left alone when present (an administrator may edit them).
pub fn default_policy() -> (Vec<ClusterRole>, Vec<ClusterRoleBinding>) {
    let role = |name: &str, rules: Vec<PolicyRule>| {
        let mut role = ClusterRole {
            rules,
            ..Default::default()
        };
        let meta = skiff::Resource::metadata_mut(&mut role);
        meta.name = name.to_string();
        meta.labels
            .insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
        role
    };
    let workloads_and_config = [
        "pods",
        "pods/log",
        "replicationcontrollers",
        "services",
        "endpoints",
        "configmaps",
        "serviceaccounts",
        "events",
    ];
    let roles = vec![
        role("cluster-admin", vec![rule(&["*"], &["*"], &["*"])]),
        role(
            "admin",
            vec![
                rule(&["*"], &["", "apps", "coordination.k8s.io"], &["*"]),
                rule(
                    &["*"],
                    &["rbac.authorization.k8s.io"],
                    &["roles", "rolebindings"],
                ),
            ],
        ),
        role(
            "edit",
            vec![
                rule(
                    &[READ, WRITE].concat(),
                    &[""],
                    &[&workloads_and_config[..], &["secrets", "pods/exec"]].concat(),
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["apps"],
                    &["deployments", "replicasets"],
                ),
            ],
        ),
        role(
            "view",
            vec![
                rule(READ, &[""], &workloads_and_config),
                rule(READ, &["apps"], &["deployments", "replicasets"]),
                rule(READ, &["metrics.k8s.io"], &["pods"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                rule(READ, &[""], &["pods", "nodes"]),
                rule(&["create"], &[""], &["pods/binding"]),
                rule(&["update"], &[""], &["pods/status"]),
                rule(&["create", "update", "get", "list"], &[""], &["events"]),
                rule(
                    &["get", "list", "watch", "create", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
            ],
        ),
        // The controller manager acts for every controller (Kubernetes
        // can split it into one service account per controller). RBAC
        // objects it may only read and delete (emptying a namespace), never
        // write: it cannot grant itself more.
        role(
            "system:kube-controller-manager",
            vec![
                rule(&["*"], &["", "apps", "coordination.k8s.io"], &["*"]),
                rule(
                    &["get", "list", "watch", "delete", "deletecollection"],
                    &["rbac.authorization.k8s.io"],
                    &["*"],
                ),
            ],
        ),
        role(
            "system:node-bootstrapper",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        role(
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
    ];
    let binding = |name: &str, kind: &str, subject: &str| {
        let mut binding = ClusterRoleBinding {
            subjects: vec![Subject {
                kind: kind.into(),
                api_group: RBAC_GROUP.into(),
                name: subject.into(),
                namespace: String::new(),
            }],
            role_ref: Some(RoleRef {
                api_group: RBAC_GROUP.into(),
                kind: "ClusterRole".into(),
                name: name.into(),
            }),
            ..Default::default()
        };
        let meta = skiff::Resource::metadata_mut(&mut binding);
        meta.name = name.to_string();
        meta.labels
            .insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
        binding
    };
    let bindings = vec![
        binding("cluster-admin", "Group", "system:masters"),
        binding("system:kube-scheduler", "User", "system:kube-scheduler"),
        binding(
            "system:kube-controller-manager",
            "User",
            "system:kube-controller-manager",
        ),
        binding("system:node-bootstrapper", "Group", "system:bootstrappers"),
    ];
    (roles, bindings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
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
}
