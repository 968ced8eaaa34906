//! The individual Pod Security checks: the view of the pod they judge,
//! the violations they report, the baseline and restricted check tables
//! (in Kubernetes' order), the levels' constant lists, and the checks
//! themselves (the restricted variants of procMount and seccompProfile
//! sit beside their baseline ones); the restricted-only checks are in
//! `checks/restricted.rs`.

use std::collections::BTreeSet;

use super::{containers_phrase, go_quote, join_quote, pluralize};
use crate::pb::core::v1::{
    Container, HttpGetAction, LifecycleHandler, PodSecurityContext, PodSpec, Probe,
    SecurityContext, TcpSocketAction,
};
use crate::pb::meta::v1::ObjectMeta;

mod restricted;

use restricted::{
    allow_privilege_escalation, capabilities_restricted, restricted_volumes, run_as_non_root,
    run_as_user,
};

/// The pod being judged.
pub(super) struct PodView<'a> {
    pub(super) metadata: Option<&'a ObjectMeta>,
    pub(super) spec: &'a PodSpec,
}

impl<'a> PodView<'a> {
    /// Every container, in Kubernetes' visiting order: init, then app.
    fn containers(&self) -> impl Iterator<Item = &'a Container> + use<'a> {
        self.spec
            .init_containers
            .iter()
            .chain(self.spec.containers.iter())
    }

    /// The names of the containers for which `bad` holds, in order.
    fn containers_where(&self, mut bad: impl FnMut(&'a Container) -> bool) -> Vec<&'a str> {
        self.containers()
            .filter(|c| bad(c))
            .map(|c| c.name.as_str())
            .collect()
    }

    fn pod_context(&self) -> Option<&'a PodSecurityContext> {
        self.spec.security_context.as_deref()
    }

    /// `spec.os.name` is `windows`: Kubernetes skips the Linux-only
    /// restricted checks for such pods.
    fn is_windows(&self) -> bool {
        self.spec.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// `hostUsers: false`: the pod runs in a user namespace, which relaxes
    /// procMount (baseline), runAsNonRoot and runAsUser.
    fn in_user_namespace(&self) -> bool {
        self.spec.host_users == Some(false)
    }
}

fn context(c: &Container) -> Option<&SecurityContext> {
    c.security_context.as_deref()
}

/// A failed check: Kubernetes' `ForbiddenReason` and `ForbiddenDetail`.
pub(super) struct Violation {
    pub(super) reason: String,
    pub(super) detail: String,
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

pub(super) type Check = fn(&PodView<'_>) -> Option<Violation>;

/// The baseline checks, in Kubernetes' order (sorted by check id:
/// appArmorProfile, capabilities_baseline, hostNamespaces, hostPathVolumes,
/// hostPorts, hostProbesAndHostLifecycle, privileged, procMount,
/// seLinuxOptions, seccompProfile_baseline, sysctls).
pub(super) const BASELINE: &[Check] = &[
    app_armor_profile,
    capabilities_baseline,
    host_namespaces,
    host_path_volumes,
    host_ports,
    host_probes_and_lifecycle,
    privileged,
    proc_mount_baseline,
    se_linux_options,
    seccomp_profile_baseline,
    sysctls,
];

/// The restricted checks: the baseline ones the restricted ones don't
/// override (capabilities, hostPath volumes, procMount and seccomp are
/// judged more strictly below), then the restricted ones, each group in
/// Kubernetes' order.
pub(super) const RESTRICTED: &[Check] = &[
    app_armor_profile,
    host_namespaces,
    host_ports,
    host_probes_and_lifecycle,
    privileged,
    se_linux_options,
    sysctls,
    allow_privilege_escalation,
    capabilities_restricted,
    proc_mount_restricted,
    restricted_volumes,
    run_as_non_root,
    run_as_user,
    seccomp_profile_restricted,
];

/// Capabilities a baseline container may add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls a baseline pod may set (Kubernetes' safe set, latest version).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

/// SELinux types a baseline pod may use.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// The deprecated per-container AppArmor annotation.
pub(super) const APPARMOR_ANNOTATION_PREFIX: &str =
    "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_profile(pod: &PodView<'_>) -> Option<Violation> {
    let allowed = |t: &str| matches!(t, "RuntimeDefault" | "Localhost");
    let mut setters = Vec::new();
    let mut bad_values = BTreeSet::new();
    if let Some(p) = pod.pod_context().and_then(|s| s.app_armor_profile.as_ref())
        && !allowed(&p.r#type)
    {
        setters.push("pod".to_string());
        bad_values.insert(p.r#type.as_str());
    }
    let containers =
        pod.containers_where(
            |c| match context(c).and_then(|s| s.app_armor_profile.as_ref()) {
                Some(p) if !allowed(&p.r#type) => {
                    bad_values.insert(p.r#type.as_str());
                    true
                }
                _ => false,
            },
        );
    if !containers.is_empty() {
        setters.push(containers_phrase(containers.iter()));
    }
    let mut annotations: Vec<String> = pod
        .metadata
        .into_iter()
        .flat_map(|m| &m.annotations)
        .filter(|(k, v)| {
            k.starts_with(APPARMOR_ANNOTATION_PREFIX)
                && !(v.is_empty() || *v == "runtime/default" || v.starts_with("localhost/"))
        })
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    let mut values: Vec<String> = bad_values.into_iter().map(String::from).collect();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        values.extend(annotations);
    }
    if setters.is_empty() {
        return None;
    }
    violation(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    )
}

fn capabilities_baseline(pod: &PodView<'_>) -> Option<Violation> {
    let mut forbidden = BTreeSet::new();
    let containers = pod.containers_where(|c| {
        let Some(caps) = context(c).and_then(|s| s.capabilities.as_ref()) else {
            return false;
        };
        let mut bad = false;
        for cap in &caps.add {
            if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                forbidden.insert(cap.as_str());
                bad = true;
            }
        }
        bad
    });
    if containers.is_empty() {
        return None;
    }
    violation(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(containers.iter()),
            join_quote(&forbidden)
        ),
    )
}

fn host_namespaces(pod: &PodView<'_>) -> Option<Violation> {
    let spec = pod.spec;
    let set: Vec<&str> = [
        (spec.host_network, "hostNetwork=true"),
        (spec.host_pid, "hostPID=true"),
        (spec.host_ipc, "hostIPC=true"),
    ]
    .into_iter()
    .filter_map(|(on, word)| on.then_some(word))
    .collect();
    if set.is_empty() {
        return None;
    }
    violation("host namespaces", set.join(", "))
}

fn host_path_volumes(pod: &PodView<'_>) -> Option<Violation> {
    let volumes: Vec<&str> = pod
        .spec
        .volumes
        .iter()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    if volumes.is_empty() {
        return None;
    }
    violation(
        "hostPath volumes",
        format!(
            "{} {}",
            pluralize("volume", "volumes", volumes.len()),
            join_quote(&volumes)
        ),
    )
}

fn host_ports(pod: &PodView<'_>) -> Option<Violation> {
    // Kubernetes sorts the ports as strings ("10" before "9").
    let mut ports = BTreeSet::new();
    let containers = pod.containers_where(|c| {
        let mut bad = false;
        for p in c.ports.iter().filter(|p| p.host_port != 0) {
            ports.insert(p.host_port.to_string());
            bad = true;
        }
        bad
    });
    if containers.is_empty() {
        return None;
    }
    violation(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(containers.iter()),
            pluralize("uses", "use", containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

fn host_probes_and_lifecycle(pod: &PodView<'_>) -> Option<Violation> {
    /// The hosts an HTTP GET or TCP socket action names.
    fn hosts<'c>(
        http_get: Option<&'c HttpGetAction>,
        tcp_socket: Option<&'c TcpSocketAction>,
    ) -> impl Iterator<Item = &'c str> {
        let http = http_get.map(|h| h.host.as_str());
        let tcp = tcp_socket.map(|t| t.host.as_str());
        http.into_iter().chain(tcp).filter(|h| !h.is_empty())
    }
    type Actions<'c> = (Option<&'c HttpGetAction>, Option<&'c TcpSocketAction>);
    fn probe(p: Option<&Probe>) -> Option<Actions<'_>> {
        p.map(|p| (p.http_get.as_ref(), p.tcp_socket.as_ref()))
    }
    fn handler(h: Option<&LifecycleHandler>) -> Option<Actions<'_>> {
        h.map(|h| (h.http_get.as_ref(), h.tcp_socket.as_ref()))
    }
    // Both are sets in Kubernetes: sorted, each name once.
    let mut containers = BTreeSet::new();
    let mut bad_hosts = BTreeSet::new();
    for c in pod.containers() {
        let lifecycle = c.lifecycle.as_deref();
        let actions = [
            probe(c.liveness_probe.as_deref()),
            probe(c.readiness_probe.as_deref()),
            probe(c.startup_probe.as_deref()),
            handler(lifecycle.and_then(|l| l.post_start.as_ref())),
            handler(lifecycle.and_then(|l| l.pre_stop.as_ref())),
        ];
        for (http_get, tcp_socket) in actions.into_iter().flatten() {
            for host in hosts(http_get, tcp_socket) {
                containers.insert(c.name.as_str());
                bad_hosts.insert(host);
            }
        }
    }
    if containers.is_empty() {
        return None;
    }
    violation(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(containers.iter()),
            pluralize("uses", "use", containers.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                bad_hosts.len()
            ),
            join_quote(&bad_hosts)
        ),
    )
}

fn privileged(pod: &PodView<'_>) -> Option<Violation> {
    let containers =
        pod.containers_where(|c| context(c).is_some_and(|s| s.privileged == Some(true)));
    if containers.is_empty() {
        return None;
    }
    violation(
        "privileged",
        format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(containers.iter())
        ),
    )
}

/// Baseline: only the Default /proc mount, unless the pod runs in a user
/// namespace.
fn proc_mount_baseline(pod: &PodView<'_>) -> Option<Violation> {
    if pod.in_user_namespace() {
        return None;
    }
    proc_mount_restricted(pod)
}

/// Restricted: only the Default /proc mount.
fn proc_mount_restricted(pod: &PodView<'_>) -> Option<Violation> {
    let mut types = BTreeSet::new();
    let containers =
        pod.containers_where(|c| match context(c).and_then(|s| s.proc_mount.as_deref()) {
            Some(t) if t != "Default" => {
                types.insert(t);
                true
            }
            _ => false,
        });
    if containers.is_empty() {
        return None;
    }
    violation(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(containers.iter()),
            join_quote(&types)
        ),
    )
}

fn se_linux_options(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_types = BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut valid = |o: &crate::pb::core::v1::SeLinuxOptions| {
        let mut ok = true;
        if !SELINUX_TYPES.contains(&o.r#type.as_str()) {
            bad_types.insert(o.r#type.clone());
            ok = false;
        }
        if !o.user.is_empty() {
            user = true;
            ok = false;
        }
        if !o.role.is_empty() {
            role = true;
            ok = false;
        }
        ok
    };
    let mut setters = Vec::new();
    if let Some(o) = pod.pod_context().and_then(|s| s.se_linux_options.as_ref())
        && !valid(o)
    {
        setters.push("pod".to_string());
    }
    let containers = pod.containers_where(|c| {
        context(c)
            .and_then(|s| s.se_linux_options.as_ref())
            .is_some_and(|o| !valid(o))
    });
    if !containers.is_empty() {
        setters.push(containers_phrase(containers.iter()));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        data.push(format!(
            "{} {}",
            pluralize("type", "types", bad_types.len()),
            join_quote(&bad_types)
        ));
    }
    if user {
        data.push("user may not be set".to_string());
    }
    if role {
        data.push("role may not be set".to_string());
    }
    violation(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    )
}

fn valid_seccomp(t: &str) -> bool {
    matches!(t, "RuntimeDefault" | "Localhost")
}

/// The seccomp profiles set to something else than RuntimeDefault or
/// Localhost: who set them (`pod`, `containers "a", "b"`) and the values;
/// plus the containers that set none and aren't covered by a valid
/// pod-level profile.
struct SeccompFindings {
    setters: Vec<String>,
    values: BTreeSet<String>,
    unset: Vec<String>,
}

fn seccomp_findings(pod: &PodView<'_>) -> SeccompFindings {
    let mut setters = Vec::new();
    let mut values = BTreeSet::new();
    let mut pod_set = false;
    if let Some(p) = pod.pod_context().and_then(|s| s.seccomp_profile.as_ref()) {
        if valid_seccomp(&p.r#type) {
            pod_set = true;
        } else {
            setters.push("pod".to_string());
            values.insert(p.r#type.clone());
        }
    }
    let mut explicit = Vec::new();
    let mut unset = Vec::new();
    for c in pod.containers() {
        match context(c).and_then(|s| s.seccomp_profile.as_ref()) {
            Some(p) if !valid_seccomp(&p.r#type) => {
                explicit.push(c.name.as_str());
                values.insert(p.r#type.clone());
            }
            Some(_) => {}
            None if !pod_set => unset.push(c.name.clone()),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(explicit.iter()));
    }
    SeccompFindings {
        setters,
        values,
        unset,
    }
}

fn seccomp_explicit(f: &SeccompFindings) -> Option<Violation> {
    if f.setters.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            f.setters.join(" and "),
            join_quote(&f.values)
        ),
    )
}

/// Baseline: no explicit Unconfined (or other unknown) profile.
fn seccomp_profile_baseline(pod: &PodView<'_>) -> Option<Violation> {
    seccomp_explicit(&seccomp_findings(pod))
}

/// Restricted: RuntimeDefault or Localhost, set at pod level or on every
/// container.
fn seccomp_profile_restricted(pod: &PodView<'_>) -> Option<Violation> {
    if pod.is_windows() {
        return None;
    }
    let findings = seccomp_findings(pod);
    if let Some(v) = seccomp_explicit(&findings) {
        return Some(v);
    }
    if findings.unset.is_empty() {
        return None;
    }
    violation(
        "seccompProfile",
        format!(
            r#"pod or {} must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost""#,
            containers_phrase(findings.unset.iter())
        ),
    )
}

fn sysctls(pod: &PodView<'_>) -> Option<Violation> {
    let forbidden: Vec<&str> = pod
        .pod_context()
        .into_iter()
        .flat_map(|s| &s.sysctls)
        .map(|s| s.name.as_str())
        .filter(|name| !SAFE_SYSCTLS.contains(name))
        .collect();
    if forbidden.is_empty() {
        return None;
    }
    violation("forbidden sysctls", forbidden.join(", "))
}
