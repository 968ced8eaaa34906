use super::checks::APPARMOR_ANNOTATION_PREFIX;
use super::*;
use crate::pb::core::v1::{
    AppArmorProfile, Capabilities, Container, ContainerPort, HostPathVolumeSource, HttpGetAction,
    PodOs, PodSecurityContext, Probe, SeLinuxOptions, SeccompProfile, SecurityContext, Sysctl,
    Volume,
};

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        image: "nginx:1.25".into(),
        ..Default::default()
    }
}

fn spec(containers: &[&str]) -> PodSpec {
    PodSpec {
        containers: containers.iter().map(|n| container(n)).collect(),
        ..Default::default()
    }
}

fn with_context(mut c: Container, f: impl FnOnce(&mut SecurityContext)) -> Container {
    f(c.security_context.get_or_insert_with(Default::default));
    c
}

fn hardened(name: &str) -> Container {
    with_context(container(name), |s| {
        s.allow_privilege_escalation = Some(false);
        s.capabilities = Some(Capabilities {
            drop: vec!["ALL".into()],
            ..Default::default()
        });
    })
}

fn hardened_spec() -> PodSpec {
    PodSpec {
        containers: vec![hardened("app")],
        security_context: Some(Box::new(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                r#type: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn host_path(name: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: "/".into(),
            r#type: None,
        }),
        ..Default::default()
    }
}

fn baseline(spec: &PodSpec) -> Vec<String> {
    check_pod_spec(Level::Baseline, None, spec)
}

#[test]
fn a_plain_pod_passes_baseline() {
    assert_eq!(baseline(&spec(&["app"])), Vec::<String>::new());
}

#[test]
fn baseline_refuses_a_host_path_volume_with_kubernetes_words() {
    let mut s = spec(&["app"]);
    s.volumes = vec![host_path("root")];
    assert_eq!(baseline(&s), [r#"hostPath volumes (volume "root")"#]);
    s.volumes.push(host_path("etc"));
    assert_eq!(
        baseline(&s),
        [r#"hostPath volumes (volumes "root", "etc")"#]
    );
}

#[test]
fn baseline_refuses_host_namespaces_naming_each() {
    let mut s = spec(&["app"]);
    s.host_network = true;
    assert_eq!(baseline(&s), ["host namespaces (hostNetwork=true)"]);
    s.host_pid = true;
    s.host_ipc = true;
    assert_eq!(
        baseline(&s),
        ["host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"]
    );
}

#[test]
fn baseline_refuses_privileged_containers_in_one_violation() {
    let privileged = |n| with_context(container(n), |s| s.privileged = Some(true));
    let mut s = spec(&[]);
    s.init_containers = vec![privileged("init")];
    s.containers = vec![privileged("a"), container("b"), privileged("c")];
    assert_eq!(
        baseline(&s),
        [
            r#"privileged (containers "init", "a", "c" must not set securityContext.privileged=true)"#
        ]
    );
    s.init_containers.clear();
    s.containers.truncate(1);
    assert_eq!(
        baseline(&s),
        [r#"privileged (container "a" must not set securityContext.privileged=true)"#]
    );
}

#[test]
fn baseline_refuses_host_ports_sorted_as_kubernetes_sorts_them() {
    let mut a = container("a");
    a.ports = vec![ContainerPort {
        container_port: 80,
        host_port: 8080,
        ..Default::default()
    }];
    let mut s = spec(&[]);
    s.containers = vec![a.clone()];
    assert_eq!(
        baseline(&s),
        [r#"hostPort (container "a" uses hostPort 8080)"#]
    );
    let mut b = container("b");
    b.ports = vec![
        ContainerPort {
            host_port: 9,
            ..Default::default()
        },
        ContainerPort {
            container_port: 443,
            ..Default::default()
        },
    ];
    s.containers.push(b);
    assert_eq!(
        baseline(&s),
        [r#"hostPort (containers "a", "b" use hostPorts 8080, 9)"#]
    );
}

#[test]
fn baseline_refuses_an_added_sys_admin_capability_but_not_a_default_one() {
    let add = |caps: &[&str]| {
        with_context(container("app"), |s| {
            s.capabilities = Some(Capabilities {
                add: caps.iter().map(|c| c.to_string()).collect(),
                drop: vec![],
            })
        })
    };
    let mut s = spec(&[]);
    s.containers = vec![add(&["NET_BIND_SERVICE", "CHOWN"])];
    assert!(baseline(&s).is_empty());
    s.containers = vec![add(&["SYS_ADMIN", "NET_ADMIN", "CHOWN"])];
    assert_eq!(
        baseline(&s),
        [
            r#"non-default capabilities (container "app" must not include "NET_ADMIN", "SYS_ADMIN" in securityContext.capabilities.add)"#
        ]
    );
}

#[test]
fn a_pod_with_several_violations_lists_them_in_kubernetes_order() {
    let mut s = spec(&[]);
    s.host_network = true;
    s.volumes = vec![host_path("root")];
    s.containers = vec![with_context(container("app"), |c| {
        c.privileged = Some(true);
        c.capabilities = Some(Capabilities {
            add: vec!["SYS_ADMIN".into()],
            drop: vec![],
        });
        c.seccomp_profile = Some(SeccompProfile {
            r#type: "Unconfined".into(),
            localhost_profile: None,
        });
        c.app_armor_profile = Some(AppArmorProfile {
            r#type: "Unconfined".into(),
            localhost_profile: None,
        });
        c.proc_mount = Some("Unmasked".into());
        c.se_linux_options = Some(SeLinuxOptions {
            user: "root".into(),
            r#type: "spc_t".into(),
            ..Default::default()
        });
    })];
    s.security_context = Some(Box::new(PodSecurityContext {
        sysctls: vec![
            Sysctl {
                name: "kernel.msgmax".into(),
                value: "1".into(),
            },
            Sysctl {
                name: "net.ipv4.tcp_syncookies".into(),
                value: "1".into(),
            },
        ],
        ..Default::default()
    }));
    assert_eq!(
        baseline(&s),
        [
            r#"forbidden AppArmor profile (container "app" must not set AppArmor profile type to "Unconfined")"#,
            r#"non-default capabilities (container "app" must not include "SYS_ADMIN" in securityContext.capabilities.add)"#,
            "host namespaces (hostNetwork=true)",
            r#"hostPath volumes (volume "root")"#,
            r#"privileged (container "app" must not set securityContext.privileged=true)"#,
            r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#,
            r#"seLinuxOptions (container "app" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)"#,
            r#"seccompProfile (container "app" must not set securityContext.seccompProfile.type to "Unconfined")"#,
            "forbidden sysctls (kernel.msgmax)",
        ]
    );
}

#[test]
fn baseline_refuses_unconfined_apparmor_annotations() {
    // Kubernetes' own "multiple containers" case.
    let meta = |pairs: &[(&str, &str)]| ObjectMeta {
        annotations: pairs
            .iter()
            .map(|(k, v)| (format!("{APPARMOR_ANNOTATION_PREFIX}{k}"), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let all = meta(&[
        ("", "bogus"),
        ("a", ""),
        ("b", "runtime/default"),
        ("c", "localhost/"),
        ("d", "localhost/foo"),
        ("e", "unconfined"),
        ("f", "unknown"),
    ]);
    let s = spec(&["a", "b"]);
    assert_eq!(
        check_pod_spec(Level::Baseline, Some(&all), &s),
        [concat!(
            r#"forbidden AppArmor profiles (annotations must not set AppArmor profile type to "#,
            r#""container.apparmor.security.beta.kubernetes.io/="bogus"", "#,
            r#""container.apparmor.security.beta.kubernetes.io/e="unconfined"", "#,
            r#""container.apparmor.security.beta.kubernetes.io/f="unknown"")"#
        )]
    );
    assert_eq!(
        check_pod_spec(Level::Baseline, Some(&meta(&[("b", "unconfined")])), &s),
        [
            r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/b="unconfined"")"#
        ]
    );
}

#[test]
fn baseline_refuses_probe_hosts_but_a_user_namespace_may_unmask_proc() {
    let mut c = container("app");
    c.liveness_probe = Some(Box::new(Probe {
        http_get: Some(HttpGetAction {
            host: "169.254.169.254".into(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let mut s = spec(&[]);
    s.containers = vec![with_context(c, |s| s.proc_mount = Some("Unmasked".into()))];
    s.host_users = Some(false);
    assert_eq!(
        baseline(&s),
        [
            r#"probe or lifecycle host (container "app" uses probe or lifecycle host "169.254.169.254")"#
        ]
    );
    // Restricted keeps refusing the unmasked /proc.
    assert!(
        check_pod_spec(Level::Restricted, None, &s).contains(
            &r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#
                .to_string()
        )
    );
}

#[test]
fn restricted_refuses_a_default_pod_with_the_four_restricted_messages() {
    assert_eq!(
        check_pod_spec(Level::Restricted, None, &spec(&["nginx"])),
        [
            r#"allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false)"#,
            r#"unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"])"#,
            r#"runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)"#,
            r#"seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
        ]
    );
}

#[test]
fn restricted_accepts_a_fully_hardened_pod() {
    assert_eq!(
        check_pod_spec(Level::Restricted, None, &hardened_spec()),
        Vec::<String>::new()
    );
}

#[test]
fn restricted_judges_volumes_users_and_added_capabilities() {
    let mut s = hardened_spec();
    s.volumes = vec![
        host_path("root"),
        Volume {
            name: "scratch".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ];
    if let Some(ctx) = s.security_context.as_mut() {
        ctx.run_as_user = Some(0);
    }
    s.containers.push(with_context(hardened("side"), |c| {
        c.run_as_non_root = Some(false);
        if let Some(caps) = c.capabilities.as_mut() {
            caps.add = vec!["NET_BIND_SERVICE".into(), "NET_RAW".into()];
        }
    }));
    assert_eq!(
        check_pod_spec(Level::Restricted, None, &s),
        [
            r#"unrestricted capabilities (container "side" must not include "NET_RAW" in securityContext.capabilities.add)"#,
            r#"restricted volume types (volume "root" uses restricted volume type "hostPath")"#,
            r#"runAsNonRoot != true (container "side" must not set securityContext.runAsNonRoot=false)"#,
            r#"runAsUser=0 (pod must not set runAsUser=0)"#,
        ]
    );
}

#[test]
fn restricted_spares_windows_pods_the_linux_only_checks() {
    let mut s = spec(&["app"]);
    s.os = Some(PodOs {
        name: "windows".into(),
    });
    assert_eq!(
        check_pod_spec(Level::Restricted, None, &s),
        [
            r#"runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true)"#
        ]
    );
}

#[test]
fn privileged_allows_everything() {
    let mut s = spec(&[]);
    s.host_network = true;
    s.host_pid = true;
    s.volumes = vec![host_path("root")];
    s.containers = vec![with_context(container("app"), |c| {
        c.privileged = Some(true)
    })];
    assert!(check_pod_spec(Level::Privileged, None, &s).is_empty());
}

#[test]
fn levels_parse_and_print_as_in_labels() {
    for level in [Level::Privileged, Level::Baseline, Level::Restricted] {
        assert_eq!(level.as_str().parse::<Level>(), Ok(level));
        assert_eq!(level.to_string(), level.as_str());
    }
    let err = "Baseline".parse::<Level>().unwrap_err();
    assert_eq!(err, ParseError::Level("Baseline".into()));
    assert_eq!(
        err.to_string(),
        "must be one of privileged, baseline, restricted"
    );
}

#[test]
fn versions_are_latest_or_v1_minor() {
    for ok in ["latest", "v1.0", "v1.9", "v1.29", "v1.100"] {
        assert_eq!(validate_version(ok), Ok(()), "{ok}");
    }
    for bad in [
        "", "v1", "v1.", "v1.01", "v2.0", "1.29", "v1.29.0", "Latest", "v1.x", "v1.-1",
    ] {
        assert_eq!(
            validate_version(bad),
            Err(ParseError::Version(bad.into())),
            "{bad}"
        );
    }
    assert_eq!(
        ParseError::Version("x".into()).to_string(),
        r#"must be "latest" or "v1.x""#
    );
}

#[test]
fn policies_parse_and_print_like_kubernetes() {
    let p = Policy::parse("baseline", "").unwrap();
    assert_eq!(p, Policy::latest(Level::Baseline));
    assert_eq!(p.to_string(), "baseline:latest");
    assert_eq!(
        Policy::parse("restricted", "v1.30").unwrap().to_string(),
        "restricted:v1.30"
    );
    assert!(matches!(
        Policy::parse("strict", "latest"),
        Err(ParseError::Level(_))
    ));
    assert!(matches!(
        Policy::parse("baseline", "v1.x"),
        Err(ParseError::Version(_))
    ));
    assert_eq!(Policy::default().to_string(), "privileged:latest");
}

#[test]
fn forbidden_message_reads_as_kubernetes_refusal() {
    let mut s = spec(&["app"]);
    s.host_network = true;
    s.volumes = vec![host_path("root")];
    let policy = Policy::latest(Level::Baseline);
    let violations = check_pod_spec(policy.level, None, &s);
    assert_eq!(
        forbidden_message("pods", "web", &policy, &violations),
        r#"pods "web" is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), hostPath volumes (volume "root")"#
    );
    assert_eq!(
        forbidden_message("pods", "", &policy, &violations[..1]),
        r#"pods is forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#
    );
}

#[test]
fn warning_message_reads_as_kubernetes_warning() {
    let policy = Policy::latest(Level::Restricted);
    let mut s = hardened_spec();
    s.containers[0].security_context = None;
    let violations = check_pod_spec(policy.level, None, &s);
    assert_eq!(
        warning_message(&policy, &violations),
        r#"would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"])"#
    );
}

#[test]
fn go_quote_escapes_as_go_does() {
    assert_eq!(go_quote(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(go_quote("x\ny\u{1}"), r#""x\ny\x01""#);
    assert_eq!(go_quote("ünï"), "\"ünï\"");
}
