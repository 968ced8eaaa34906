//! RBAC roles and bindings.

use skiff::pb::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use skiff::validation::FieldErrors;

use super::*;

/// The API group of RBAC's own kinds (users, groups and role refs name it).
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn validate_rules(rules: &[PolicyRule], cluster: bool, errors: &mut FieldErrors) {
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errors.required(format!("{path}.verbs"));
        }
        if !rule.non_resource_urls.is_empty() {
            if !cluster {
                errors.push(
                    format!("{path}.nonResourceURLs"),
                    "Invalid value: namespaced rules cannot apply to non-resource URLs",
                );
            }
            if !rule.resources.is_empty() || !rule.api_groups.is_empty() {
                errors.push(
                    format!("{path}.nonResourceURLs"),
                    "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if rule.api_groups.is_empty() {
            errors.required(format!("{path}.apiGroups"));
        }
        if rule.resources.is_empty() {
            errors.required(format!("{path}.resources"));
        }
    }
}

fn validate_binding(
    subjects: &[Subject],
    role_ref: Option<&RoleRef>,
    cluster: bool,
    errors: &mut FieldErrors,
) {
    match role_ref {
        None => errors.required("roleRef"),
        Some(r) => {
            if r.api_group != RBAC_GROUP {
                errors.invalid(
                    "roleRef.apiGroup",
                    &r.api_group,
                    format!("supported values: {RBAC_GROUP:?}"),
                );
            }
            let kinds: &[&str] = if cluster {
                &["ClusterRole"]
            } else {
                &["Role", "ClusterRole"]
            };
            if !kinds.contains(&r.kind.as_str()) {
                errors.invalid(
                    "roleRef.kind",
                    &r.kind,
                    format!("supported values: {kinds:?}"),
                );
            }
            if r.name.is_empty() {
                errors.required("roleRef.name");
            }
        }
    }
    for (i, subject) in subjects.iter().enumerate() {
        let path = format!("subjects[{i}]");
        if subject.name.is_empty() {
            errors.required(format!("{path}.name"));
        }
        match subject.kind.as_str() {
            "User" | "Group" => {
                if subject.api_group != RBAC_GROUP {
                    errors.invalid(
                        format!("{path}.apiGroup"),
                        &subject.api_group,
                        format!("supported values: {RBAC_GROUP:?}"),
                    );
                }
            }
            "ServiceAccount" => {
                if !subject.api_group.is_empty() {
                    errors.invalid(
                        format!("{path}.apiGroup"),
                        &subject.api_group,
                        "supported values: \"\"",
                    );
                }
                if cluster && subject.namespace.is_empty() {
                    errors.required(format!("{path}.namespace"));
                }
            }
            other => errors.invalid(
                format!("{path}.kind"),
                other,
                "supported values: \"User\", \"Group\", \"ServiceAccount\"",
            ),
        }
    }
}

/// Subjects written without an apiGroup get RBAC's, as Kubernetes' v1
/// defaulting does for users and groups.
fn default_subjects(subjects: &mut [Subject]) {
    for subject in subjects {
        if subject.api_group.is_empty() && matches!(subject.kind.as_str(), "User" | "Group") {
            subject.api_group = RBAC_GROUP.into();
        }
    }
}

impl Strategy for Role {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, errors: &mut FieldErrors) {
        validate_rules(&self.rules, false, errors);
    }
}

impl Strategy for ClusterRole {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, errors: &mut FieldErrors) {
        validate_rules(&self.rules, true, errors);
    }
}

impl Strategy for RoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn default_fields(&mut self) {
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_binding(&self.subjects, self.role_ref.as_ref(), false, errors);
    }
}

impl Strategy for ClusterRoleBinding {
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn default_fields(&mut self) {
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, errors: &mut FieldErrors) {
        validate_binding(&self.subjects, self.role_ref.as_ref(), true, errors);
    }
}
