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

    /// Every rule `user` holds in `namespace` (cluster-wide ones only when
    /// it is empty).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        for binding in self.cluster_role_bindings.list(None) {
            if binding.subjects.iter().any(|s| names(s, user, "")) {
                rules.extend(self.rules_of(binding.role_ref.as_ref(), ""));
            }
        }
        if !namespace.is_empty() {
            for binding in self.role_bindings.list(Some(namespace)) {
                if binding.subjects.iter().any(|s| names(s, user, namespace)) {
                    rules.extend(self.rules_of(binding.role_ref.as_ref(), namespace));
                }
            }
        }
        rules
    }

    /// The rules of the role a binding in `namespace` refers to; None when
    /// there is no such role.
    pub fn referenced_rules(&self, role_ref: &RoleRef, namespace: &str) -> Option<Vec<PolicyRule>> {
        let exists = match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get("", &role_ref.name).is_some(),
            "Role" => self.roles.get(namespace, &role_ref.name).is_some(),
            _ => false,
        };
        exists.then(|| self.rules_of(Some(role_ref), namespace))
    }
}

/// The parts of `wanted` that `held` does not cover, as Kubernetes'
/// escalation check reads rules: each verb × group × resource × name of a
/// wanted rule must be allowed by one held rule (a `*` wanted must be held
/// as `*`).
pub fn uncovered(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<String> {
    let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
    let mut missing = Vec::new();
    for rule in wanted {
        for verb in &rule.verbs {
            for url in &rule.non_resource_urls {
                let ok = held.iter().any(|h| {
                    has(&h.verbs, verb)
                        && h.non_resource_urls.iter().any(|u| {
                            u == "*"
                                || u == url
                                || u.strip_suffix('*').is_some_and(|p| url.starts_with(p))
                        })
                });
                if !ok {
                    missing.push(format!("{verb} {url}"));
                }
            }
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    let names: Vec<&str> = if rule.resource_names.is_empty() {
                        vec![""]
                    } else {
                        rule.resource_names.iter().map(String::as_str).collect()
                    };
                    for name in names {
                        let ok = held.iter().any(|h| {
                            let resource_ok = has(&h.resources, resource)
                                || resource.split_once('/').is_some_and(|(_, sub)| {
                                    h.resources.iter().any(|r| *r == format!("*/{sub}"))
                                });
                            has(&h.verbs, verb)
                                && has(&h.api_groups, group)
                                && resource_ok
                                && (h.resource_names.is_empty()
                                    || (!name.is_empty()
                                        && h.resource_names.iter().any(|n| n == name)))
                        });
                        if !ok {
                            let name = if name.is_empty() {
                                String::new()
                            } else {
                                format!(" {name:?}")
                            };
                            missing.push(format!("{verb} {group:?}/{resource}{name}"));
                        }
                    }
                }
            }
        }
    }
    missing
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

/// The user Skiff's ingress controller authenticates as (its bootstrap
/// ClusterRole and binding have this name too).
pub const INGRESS_USER: &str = "system:skiff-ingress";
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
        "configmaps",
        "serviceaccounts",
        "events",
        "persistentvolumeclaims",
    ];
    // What a namespace's users may read but only the cluster's
    // administrators write: its quotas and limit ranges (else a tenant
    // would raise its own), the status the controllers keep, and
    // Endpoints (written by hand they steer a Service's traffic anywhere,
    // CVE-2021-25740; Kubernetes took them from admin and edit in 1.22).
    let namespace_policy = [
        "endpoints",
        "resourcequotas",
        "resourcequotas/status",
        "limitranges",
        "namespaces",
        "namespaces/status",
        "pods/status",
        "replicationcontrollers/status",
        "services/status",
        "persistentvolumeclaims/status",
    ];
    let roles = vec![
        role("cluster-admin", vec![rule(&["*"], &["*"], &["*"])]),
        role(
            "admin",
            vec![
                rule(
                    &["*"],
                    &["apps", "batch", "autoscaling", "coordination.k8s.io"],
                    &["*"],
                ),
                rule(
                    &["*"],
                    &[""],
                    &[
                        &workloads_and_config[..],
                        &[
                            "secrets",
                            "pods/exec",
                            "pods/attach",
                            "pods/portforward",
                            "pods/eviction",
                            "pods/proxy",
                            "services/proxy",
                            "serviceaccounts/token",
                            "replicationcontrollers/scale",
                        ],
                    ]
                    .concat(),
                ),
                rule(READ, &[""], &namespace_policy),
                // Budgets, not their status: the eviction ledger is the
                // disruption controller's and the API server's.
                rule(
                    &[READ, WRITE].concat(),
                    &["policy"],
                    &["poddisruptionbudgets"],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                // Not `*`: that would include `escalate` and `bind`, and
                // so the right to grant what it does not hold.
                rule(
                    &[READ, WRITE].concat(),
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
                    &[
                        &workloads_and_config[..],
                        &[
                            "secrets",
                            "pods/exec",
                            "pods/attach",
                            "pods/portforward",
                            "pods/eviction",
                        ],
                    ]
                    .concat(),
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["apps"],
                    &[
                        "deployments",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "daemonsets",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(READ, &[""], &namespace_policy),
                // What kubectl rollout history|undo reads.
                rule(READ, &["apps"], &["controllerrevisions"]),
                rule(&[READ, WRITE].concat(), &["batch"], &["jobs", "cronjobs"]),
                rule(
                    &[READ, WRITE].concat(),
                    &["autoscaling"],
                    &["horizontalpodautoscalers"],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["policy"],
                    &["poddisruptionbudgets"],
                ),
                rule(
                    &[READ, WRITE].concat(),
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
            ],
        ),
        role(
            "view",
            vec![
                rule(READ, &[""], &workloads_and_config),
                rule(READ, &[""], &namespace_policy),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "deployments",
                        "replicasets",
                        "daemonsets",
                        "statefulsets",
                        "controllerrevisions",
                    ],
                ),
                rule(READ, &["batch"], &["jobs", "cronjobs"]),
                rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
                rule(READ, &["metrics.k8s.io"], &["pods"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "pods",
                        "nodes",
                        "persistentvolumes",
                        "persistentvolumeclaims",
                    ],
                ),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
                // Preemption passes over budget-protected pods.
                rule(READ, &["policy"], &["poddisruptionbudgets"]),
                // The node a WaitForFirstConsumer claim's volume goes to.
                rule(&["update", "patch"], &[""], &["persistentvolumeclaims"]),
                rule(&["create"], &[""], &["pods/binding"]),
                // Preemption's victims.
                rule(&["delete"], &[""], &["pods"]),
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
                rule(
                    &["*"],
                    &[
                        "",
                        "apps",
                        "batch",
                        "autoscaling",
                        "coordination.k8s.io",
                        "policy",
                    ],
                    &["*"],
                ),
                rule(&["list"], &["metrics.k8s.io"], &["pods"]),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
                rule(
                    &["get", "list", "watch", "delete", "deletecollection"],
                    &["rbac.authorization.k8s.io"],
                    &["*"],
                ),
            ],
        ),
        // Skiff's ingress controller: reads what it routes (and the TLS
        // Secrets its Ingresses name), writes only where its Ingresses are
        // served, and makes its own class.
        role(
            INGRESS_USER,
            vec![
                rule(READ, &[""], &["services", "endpoints", "secrets"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                ),
                rule(
                    &["update", "patch"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
                rule(&["create"], &["networking.k8s.io"], &["ingressclasses"]),
                rule(&["create", "update", "patch"], &[""], &["events"]),
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
        binding(INGRESS_USER, "User", INGRESS_USER),
    ];
    (roles, bindings)
}

#[cfg(test)]
mod tests;
