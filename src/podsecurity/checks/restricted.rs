//! The restricted-only Pod Security checks: allowPrivilegeEscalation,
//! capabilities_restricted, restrictedVolumes, runAsNonRoot and
//! runAsUser.

use std::collections::BTreeSet;

use super::{PodView, Violation, context, violation};
use crate::podsecurity::{containers_phrase, join_quote, pluralize};

/// Volume types a restricted pod may use are Skiff's volume sources but
/// hostPath; this names the forbidden one.
fn restricted_volume_type(v: &crate::pb::core::v1::Volume) -> Option<&'static str> {
    let allowed = v.config_map.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some();
    if allowed {
        None
    } else if v.host_path.is_some() {
        Some("hostPath")
    } else {
        Some("unknown")
    }
}

pub(super) fn allow_privilege_escalation(pod: &PodView<'_>) -> Option<Violation> {
    if pod.is_windows() {
        return None;
    }
    let containers = pod.containers_where(|c| {
        context(c).is_none_or(|s| s.allow_privilege_escalation != Some(false))
    });
    if containers.is_empty() {
        return None;
    }
    violation(
        "allowPrivilegeEscalation != false",
        format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(containers.iter())
        ),
    )
}

pub(super) fn capabilities_restricted(pod: &PodView<'_>) -> Option<Violation> {
    if pod.is_windows() {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding = Vec::new();
    let mut forbidden = BTreeSet::new();
    for c in pod.containers() {
        let Some(caps) = context(c).and_then(|s| s.capabilities.as_ref()) else {
            missing_drop_all.push(c.name.as_str());
            continue;
        };
        if !caps.drop.iter().any(|d| d == "ALL") {
            missing_drop_all.push(c.name.as_str());
        }
        let mut bad = false;
        for cap in caps.add.iter().filter(|a| *a != "NET_BIND_SERVICE") {
            forbidden.insert(cap.as_str());
            bad = true;
        }
        if bad {
            adding.push(c.name.as_str());
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            r#"{} must set securityContext.capabilities.drop=["ALL"]"#,
            containers_phrase(missing_drop_all.iter())
        ));
    }
    if !adding.is_empty() {
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(adding.iter()),
            join_quote(&forbidden)
        ));
    }
    if details.is_empty() {
        return None;
    }
    violation("unrestricted capabilities", details.join("; "))
}

pub(super) fn restricted_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let mut volumes = Vec::new();
    let mut types = BTreeSet::new();
    for v in &pod.spec.volumes {
        if let Some(t) = restricted_volume_type(v) {
            volumes.push(v.name.as_str());
            types.insert(t);
        }
    }
    if volumes.is_empty() {
        return None;
    }
    violation(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", volumes.len()),
            join_quote(&volumes),
            pluralize("uses", "use", volumes.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    )
}

pub(super) fn run_as_non_root(pod: &PodView<'_>) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    let mut setters = Vec::new();
    let pod_value = pod.pod_context().and_then(|s| s.run_as_non_root);
    if pod_value == Some(false) {
        setters.push("pod".to_string());
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in pod.containers() {
        match context(c).and_then(|s| s.run_as_non_root) {
            Some(false) => explicit.push(c.name.as_str()),
            Some(true) => {}
            None if pod_value != Some(true) => implicit.push(c.name.as_str()),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(explicit.iter()));
    }
    if !setters.is_empty() {
        return violation(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        );
    }
    if implicit.is_empty() {
        return None;
    }
    violation(
        "runAsNonRoot != true",
        format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(implicit.iter())
        ),
    )
}

pub(super) fn run_as_user(pod: &PodView<'_>) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    let mut setters = Vec::new();
    if pod.pod_context().and_then(|s| s.run_as_user) == Some(0) {
        setters.push("pod".to_string());
    }
    let containers = pod.containers_where(|c| context(c).and_then(|s| s.run_as_user) == Some(0));
    if !containers.is_empty() {
        setters.push(containers_phrase(containers.iter()));
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        "runAsUser=0",
        format!("{} must not set runAsUser=0", setters.join(" and ")),
    )
}
