//! Pods' security contexts and host namespaces: Kubernetes' validation
//! of them, and Skiff's refusals of what its nodes cannot do (user
//! namespaces, unmasked /proc, sysctls outside Kubernetes' safe set),
//! each naming the field and saying so, so that nothing is accepted and
//! then silently not done. SELinux options are accepted and, as on a
//! Kubernetes node without SELinux, change nothing: Skiff's nodes run no
//! SELinux policy. Unsafe sysctls are refused here, where the kubelet
//! would accept the object and fail its pods (SysctlForbidden): no Skiff
//! node allows any.

use skiff::pb::core::v1::{
    AppArmorProfile, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};
use skiff::podsecurity::SAFE_SYSCTLS;
use skiff::validation::FieldErrors;

/// The largest uid or gid Kubernetes accepts.
const MAX_ID: i64 = i32::MAX as i64;

/// Skiff's refusal of a field its nodes do not implement: `what` says
/// what "is not supported by Skiff", `why` why not.
fn unsupported(errors: &mut FieldErrors, path: String, what: &str, why: &str) {
    errors.forbidden(path, format!("{what} not supported by Skiff ({why})"));
}

fn validate_id(errors: &mut FieldErrors, path: String, id: Option<i64>) {
    if let Some(id) = id
        && !(0..=MAX_ID).contains(&id)
    {
        errors.invalid(path, id, "must be between 0 and 2147483647, inclusive");
    }
}

/// A Localhost profile's name: Kubernetes' local descending path.
fn validate_local_path(errors: &mut FieldErrors, path: String, value: &str) {
    let p = std::path::Path::new(value);
    if p.is_absolute() {
        errors.invalid(path, value, "must be a relative path");
    } else if p
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        errors.invalid(path, value, "must not contain '..'");
    }
}

fn validate_seccomp(errors: &mut FieldErrors, path: &str, profile: Option<&SeccompProfile>) {
    let Some(profile) = profile else { return };
    validate_profile(
        errors,
        path,
        &profile.r#type,
        profile.localhost_profile.as_deref(),
        "seccomp",
    );
}

fn validate_apparmor(errors: &mut FieldErrors, path: &str, profile: Option<&AppArmorProfile>) {
    let Some(profile) = profile else { return };
    validate_profile(
        errors,
        path,
        &profile.r#type,
        profile.localhost_profile.as_deref(),
        "AppArmor",
    );
}

fn validate_profile(
    errors: &mut FieldErrors,
    path: &str,
    kind: &str,
    localhost: Option<&str>,
    what: &str,
) {
    match kind {
        "RuntimeDefault" | "Unconfined" | "Localhost" => {}
        "" => errors.required(format!("{path}.type")),
        other => errors.not_supported(
            format!("{path}.type"),
            other,
            &["Localhost", "RuntimeDefault", "Unconfined"],
        ),
    }
    let lpath = format!("{path}.localhostProfile");
    match (kind, localhost) {
        ("Localhost", None | Some("")) => {
            errors.push(
                lpath,
                format!("Required value: must be set when {what} type is Localhost"),
            );
        }
        // A seccomp profile is a file below the node's seccomp directory;
        // an AppArmor one a loaded profile's name (often a path).
        ("Localhost", Some(name)) if what == "seccomp" => validate_local_path(errors, lpath, name),
        ("Localhost", Some(_)) => {}
        (_, Some(name)) => errors.invalid(
            lpath,
            name,
            format!("can only be set when {what} type is Localhost"),
        ),
        (_, None) => {}
    }
}

/// `spec.securityContext` and the pod's host namespaces.
pub(super) fn validate_pod(path: &str, spec: &PodSpec, errors: &mut FieldErrors) {
    if spec.host_users == Some(false) {
        unsupported(
            errors,
            format!("{path}.hostUsers"),
            "user namespaces per pod are",
            "Docker maps user namespaces for the whole engine only",
        );
    }
    if spec.host_pid && spec.share_process_namespace == Some(true) {
        errors.invalid(
            format!("{path}.securityContext.shareProcessNamespace"),
            true,
            "ShareProcessNamespace and HostPID cannot both be enabled",
        );
    }
    if spec.host_network {
        for (list, containers) in [
            ("initContainers", &spec.init_containers),
            ("containers", &spec.containers),
        ] {
            for (i, c) in containers.iter().enumerate() {
                for (j, p) in c.ports.iter().enumerate() {
                    if p.host_port != 0 && p.host_port != p.container_port {
                        errors.invalid(
                            format!("{path}.{list}[{i}].ports[{j}].containerPort"),
                            p.container_port,
                            "must match `hostPort` when `hostNetwork` is true",
                        );
                    }
                }
            }
        }
    }
    let Some(sc) = &spec.security_context else {
        return;
    };
    let scpath = format!("{path}.securityContext");
    validate_pod_context(&scpath, sc, spec, errors);
}

fn validate_pod_context(
    scpath: &str,
    sc: &PodSecurityContext,
    spec: &PodSpec,
    errors: &mut FieldErrors,
) {
    validate_id(errors, format!("{scpath}.runAsUser"), sc.run_as_user);
    validate_id(errors, format!("{scpath}.runAsGroup"), sc.run_as_group);
    validate_id(errors, format!("{scpath}.fsGroup"), sc.fs_group);
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        validate_id(
            errors,
            format!("{scpath}.supplementalGroups[{i}]"),
            Some(*g),
        );
    }
    match sc.supplemental_groups_policy.as_deref() {
        None | Some("Merge") => {}
        Some("Strict") => unsupported(
            errors,
            format!("{scpath}.supplementalGroupsPolicy"),
            "\"Strict\" is",
            "Docker always adds the groups the image's /etc/group gives the user",
        ),
        Some(other) => errors.not_supported(
            format!("{scpath}.supplementalGroupsPolicy"),
            other,
            &["Merge", "Strict"],
        ),
    }
    if let Some(policy) = sc.fs_group_change_policy.as_deref()
        && !matches!(policy, "OnRootMismatch" | "Always")
    {
        errors.not_supported(
            format!("{scpath}.fsGroupChangePolicy"),
            policy,
            &["Always", "OnRootMismatch"],
        );
    }
    if let Some(policy) = sc.se_linux_change_policy.as_deref()
        && !matches!(policy, "MountOption" | "Recursive")
    {
        errors.not_supported(
            format!("{scpath}.seLinuxChangePolicy"),
            policy,
            &["MountOption", "Recursive"],
        );
    }
    validate_seccomp(
        errors,
        &format!("{scpath}.seccompProfile"),
        sc.seccomp_profile.as_ref(),
    );
    validate_apparmor(
        errors,
        &format!("{scpath}.appArmorProfile"),
        sc.app_armor_profile.as_ref(),
    );
    let mut seen = std::collections::HashSet::new();
    for (i, sysctl) in sc.sysctls.iter().enumerate() {
        let npath = format!("{scpath}.sysctls[{i}].name");
        // Kubernetes accepts `/` as the separator too.
        let name = sysctl.name.replace('/', ".");
        if name.is_empty() {
            errors.required(npath);
            continue;
        }
        if !seen.insert(name.clone()) {
            errors.duplicate(npath, &sysctl.name);
            continue;
        }
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            unsupported(
                errors,
                npath,
                &format!(
                    "sysctl {:?} is outside Kubernetes' safe set; unsafe sysctls are",
                    sysctl.name
                ),
                "the kubelet's --allowed-unsafe-sysctls has no equivalent",
            );
        } else if spec.host_network && name.starts_with("net.") {
            errors.invalid(
                npath,
                &sysctl.name,
                "may not be specified when 'hostNetwork' is true",
            );
        } else if spec.host_ipc && name.starts_with("kernel.shm") {
            errors.invalid(
                npath,
                &sysctl.name,
                "may not be specified when 'hostIPC' is true",
            );
        }
    }
}

/// One container's `securityContext`.
pub(super) fn validate_container(path: &str, c: &Container, errors: &mut FieldErrors) {
    let Some(sc) = &c.security_context else {
        return;
    };
    let scpath = format!("{path}.securityContext");
    validate_container_context(&scpath, sc, errors);
}

fn validate_container_context(scpath: &str, sc: &SecurityContext, errors: &mut FieldErrors) {
    validate_id(errors, format!("{scpath}.runAsUser"), sc.run_as_user);
    validate_id(errors, format!("{scpath}.runAsGroup"), sc.run_as_group);
    validate_seccomp(
        errors,
        &format!("{scpath}.seccompProfile"),
        sc.seccomp_profile.as_ref(),
    );
    validate_apparmor(
        errors,
        &format!("{scpath}.appArmorProfile"),
        sc.app_armor_profile.as_ref(),
    );
    match sc.proc_mount.as_deref() {
        None | Some("Default") => {}
        Some("Unmasked") => unsupported(
            errors,
            format!("{scpath}.procMount"),
            "\"Unmasked\" is",
            "it needs hostUsers: false",
        ),
        Some(other) => errors.not_supported(
            format!("{scpath}.procMount"),
            other,
            &["Default", "Unmasked"],
        ),
    }
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            errors.invalid(
                scpath,
                sc_echo(sc),
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            );
        }
        let adds_sys_admin = sc
            .capabilities
            .as_ref()
            .is_some_and(|c| c.add.iter().any(|cap| cap == "CAP_SYS_ADMIN"));
        if adds_sys_admin {
            errors.invalid(
                scpath,
                sc_echo(sc),
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            );
        }
    }
}

/// Kubernetes echoes the whole security context in these errors.
fn sc_echo(sc: &SecurityContext) -> String {
    serde_json::to_string(sc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff::pb::core::v1::{Capabilities, ContainerPort, SeLinuxOptions, Sysctl};

    fn errors_of(spec: &PodSpec) -> String {
        let mut errors = FieldErrors::new();
        validate_pod("spec", spec, &mut errors);
        for (i, c) in spec.containers.iter().enumerate() {
            validate_container(&format!("spec.containers[{i}]"), c, &mut errors);
        }
        errors.to_string()
    }

    fn with_context(sc: SecurityContext) -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                security_context: Some(Box::new(sc)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn what_skiff_cannot_do_is_refused_by_field() {
        let spec = PodSpec {
            host_users: Some(false),
            security_context: Some(Box::new(PodSecurityContext {
                se_linux_options: Some(SeLinuxOptions {
                    level: "s0".into(),
                    r#type: "spc_t".into(),
                    ..Default::default()
                }),
                sysctls: vec![Sysctl {
                    name: "kernel.msgmax".into(),
                    value: "65536".into(),
                }],
                supplemental_groups_policy: Some("Strict".into()),
                ..Default::default()
            })),
            ..with_context(SecurityContext {
                proc_mount: Some("Unmasked".into()),
                ..Default::default()
            })
        };
        let errors = errors_of(&spec);
        for field in [
            "spec.hostUsers",
            "spec.securityContext.sysctls[0].name",
            "spec.securityContext.supplementalGroupsPolicy",
            "spec.containers[0].securityContext.procMount",
        ] {
            assert!(
                errors.contains(&format!("{field}: Forbidden:")),
                "{field} in {errors}"
            );
        }
        assert_eq!(errors.matches("not supported by Skiff").count(), 4);
        assert!(!errors.contains("seLinuxOptions"), "{errors}");
    }

    #[test]
    fn kubernetes_rules_on_security_contexts_hold() {
        let sc = SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            run_as_user: Some(-1),
            capabilities: Some(Capabilities {
                add: vec!["CAP_SYS_ADMIN".into()],
                drop: vec![],
            }),
            seccomp_profile: Some(SeccompProfile {
                r#type: "Localhost".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        };
        let errors = errors_of(&with_context(sc));
        assert!(
            errors.contains(
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("`capabilities.Add` CAP_SYS_ADMIN"),
            "{errors}"
        );
        assert!(errors.contains("spec.containers[0].securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive"), "{errors}");
        assert!(errors.contains("spec.containers[0].securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"), "{errors}");
        let escaping = with_context(SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                r#type: "Localhost".into(),
                localhost_profile: Some("../../etc/shadow".into()),
            }),
            ..Default::default()
        });
        assert!(errors_of(&escaping).contains("must not contain '..'"));

        let mut host = with_context(SecurityContext::default());
        host.host_network = true;
        host.host_pid = true;
        host.share_process_namespace = Some(true);
        host.containers[0].ports = vec![ContainerPort {
            container_port: 80,
            host_port: 8080,
            ..Default::default()
        }];
        host.security_context = Some(Box::new(PodSecurityContext {
            sysctls: vec![Sysctl {
                name: "net.ipv4.ip_local_port_range".into(),
                value: "1024 65000".into(),
            }],
            ..Default::default()
        }));
        let errors = errors_of(&host);
        assert!(
            errors.contains("ShareProcessNamespace and HostPID cannot both be enabled"),
            "{errors}"
        );
        assert!(
            errors.contains("spec.containers[0].ports[0].containerPort: Invalid value: 80: must match `hostPort` when `hostNetwork` is true"),
            "{errors}"
        );
        assert!(
            errors.contains("may not be specified when 'hostNetwork' is true"),
            "{errors}"
        );

        // A compliant restricted pod passes.
        let fine = PodSpec {
            security_context: Some(Box::new(PodSecurityContext {
                run_as_user: Some(1000),
                fs_group: Some(2000),
                sysctls: vec![Sysctl {
                    name: "net/ipv4/ping_group_range".into(),
                    value: "0 2147483647".into(),
                }],
                seccomp_profile: Some(SeccompProfile {
                    r#type: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            })),
            ..with_context(SecurityContext {
                allow_privilege_escalation: Some(false),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    add: vec![],
                    drop: vec!["ALL".into()],
                }),
                ..Default::default()
            })
        };
        assert_eq!(errors_of(&fine), "");
    }
}
