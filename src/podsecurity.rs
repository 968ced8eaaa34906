//! Kubernetes' Pod Security Standards, as the Pod Security admission
//! plugin (`k8s.io/pod-security-admission`) checks them.
//!
//! A namespace opts into a level (`privileged`, `baseline` or
//! `restricted`) per mode with the `pod-security.kubernetes.io/*` labels
//! ([`ENFORCE_LABEL`] and friends); the API server's admission then runs
//! [`check_pod_spec`] on every pod (and pod template) created in it, and
//! refuses ([`forbidden_message`]) or warns ([`warning_message`]) with the
//! violations found. The messages copy Kubernetes' words exactly — check
//! by check, in the order Kubernetes runs them (baseline checks, then
//! restricted ones, each group sorted by Kubernetes' check id) — because
//! users compare them with what `kubectl` prints and search for them.
//!
//! Differences from Kubernetes, by design:
//!
//! - Every policy version is judged with the `latest` rules (those of
//!   Kubernetes 1.37: its safe sysctls, the probe/lifecycle `host` check,
//!   the user-namespace relaxations of 1.35). [`Policy`] still parses and
//!   keeps a `v1.N` version so labels round-trip and messages name it.
//! - Checks on fields Skiff's API does not have are absent: Windows
//!   `hostProcess` (no `windowsOptions`), ephemeral containers (none in
//!   [`PodSpec`]). Volume sources other than Skiff's seven can't be set, so
//!   the restricted volume check only ever names `hostPath` (or `unknown`
//!   for a volume with no source: Kubernetes would have defaulted it to
//!   `emptyDir` before admission, Skiff doesn't).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::pb::core::v1::{
    Container, HttpGetAction, LifecycleHandler, PodSecurityContext, PodSpec, Probe,
    SecurityContext, TcpSocketAction,
};
use crate::pb::meta::v1::ObjectMeta;

/// Namespace label: the level pods violating it are refused at.
pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Namespace label: the policy version [`ENFORCE_LABEL`] is judged at.
pub const ENFORCE_VERSION_LABEL: &str = "pod-security.kubernetes.io/enforce-version";
/// Namespace label: the level violations of which are recorded in the audit
/// log.
pub const AUDIT_LABEL: &str = "pod-security.kubernetes.io/audit";
/// Namespace label: the policy version [`AUDIT_LABEL`] is judged at.
pub const AUDIT_VERSION_LABEL: &str = "pod-security.kubernetes.io/audit-version";
/// Namespace label: the level violations of which are returned to the
/// client as warnings.
pub const WARN_LABEL: &str = "pod-security.kubernetes.io/warn";
/// Namespace label: the policy version [`WARN_LABEL`] is judged at.
pub const WARN_VERSION_LABEL: &str = "pod-security.kubernetes.io/warn-version";

/// The version that always means the newest rules.
pub const LATEST: &str = "latest";

/// A Pod Security Standards level, from least to most strict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Unrestricted (Kubernetes' default when a namespace sets no label).
    #[default]
    Privileged,
    /// Prevents known privilege escalations; allows the default pod.
    Baseline,
    /// Hardening best practices; the default pod does not pass.
    Restricted,
}

impl Level {
    /// The level's name, as written in labels: `baseline`...
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(ParseError::Level(s.to_string())),
        }
    }
}

/// A level or version label value that Kubernetes would refuse. Displays
/// as Kubernetes' detail (`must be one of privileged, baseline,
/// restricted`), to go after the label and the refused value in a field
/// error; the variant keeps the refused value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not `privileged`, `baseline` or `restricted`.
    #[error("must be one of privileged, baseline, restricted")]
    Level(String),
    /// Not `latest` or `v1.N`.
    #[error(r#"must be "latest" or "v1.x""#)]
    Version(String),
}

/// Checks a policy version: `latest` or `v1.N` (N without leading zeros).
///
/// # Errors
/// [`ParseError::Version`] for anything else.
pub fn validate_version(version: &str) -> Result<(), ParseError> {
    if version == LATEST {
        return Ok(());
    }
    let ok = version.strip_prefix("v1.").is_some_and(|minor| {
        !minor.is_empty()
            && minor.bytes().all(|b| b.is_ascii_digit())
            && (minor == "0" || !minor.starts_with('0'))
            && minor.parse::<i64>().is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ParseError::Version(version.to_string()))
    }
}

/// A level at a version, e.g. `baseline:latest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    /// How strict.
    pub level: Level,
    /// `latest` or `v1.N` (see [`validate_version`]); every version is
    /// judged with the latest rules (see the module documentation).
    pub version: String,
}

impl Policy {
    /// The level at the `latest` version.
    pub fn latest(level: Level) -> Self {
        Policy {
            level,
            version: LATEST.to_string(),
        }
    }

    /// Parses a level and a version label value; an empty version means
    /// `latest`, as when the version label is absent.
    ///
    /// # Errors
    /// The first of the two values that is not valid.
    pub fn parse(level: &str, version: &str) -> Result<Self, ParseError> {
        let level = level.parse()?;
        let version = if version.is_empty() { LATEST } else { version };
        validate_version(version)?;
        Ok(Policy {
            level,
            version: version.to_string(),
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = if self.version.is_empty() {
            LATEST
        } else {
            &self.version
        };
        write!(f, "{}:{}", self.level, version)
    }
}

/// The violations of `level` by a pod (or pod template) spec, one
/// `"reason (detail)"` string per failed check, in Kubernetes' order and
/// words, e.g. `privileged (containers "a", "b" must not set
/// securityContext.privileged=true)`. Empty means allowed;
/// [`Level::Privileged`] allows everything. `metadata` is the pod's (its
/// annotations are checked for AppArmor profiles).
pub fn check_pod_spec(level: Level, metadata: Option<&ObjectMeta>, spec: &PodSpec) -> Vec<String> {
    let checks: &[Check] = match level {
        Level::Privileged => &[],
        Level::Baseline => BASELINE,
        Level::Restricted => RESTRICTED,
    };
    let pod = PodView { metadata, spec };
    checks
        .iter()
        .filter_map(|check| check(&pod))
        .map(|v| {
            if v.detail.is_empty() {
                v.reason
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect()
}

/// Kubernetes' refusal of an object violating the enforced policy:
/// `pods "web" is forbidden: violates PodSecurity "baseline:latest":
/// host namespaces (hostNetwork=true), hostPath volumes (volume "root")`.
/// `resource` is the plural resource, group-qualified outside the core
/// group (`pods`, `deployments.apps`); an empty `name` (a generated name
/// not yet assigned) is left out as Kubernetes does.
pub fn forbidden_message(
    resource: &str,
    name: &str,
    policy: &Policy,
    violations: &[String],
) -> String {
    let what = if name.is_empty() {
        resource.to_string()
    } else {
        format!("{resource} {}", go_quote(name))
    };
    format!(
        "{what} is forbidden: violates PodSecurity {}: {}",
        go_quote(&policy.to_string()),
        violations.join(", ")
    )
}

/// Kubernetes' warning (and audit annotation) for violations of the warn
/// (audit) policy: `would violate PodSecurity "restricted:latest":
/// allowPrivilegeEscalation != false (...), ...`.
pub fn warning_message(policy: &Policy, violations: &[String]) -> String {
    format!(
        "would violate PodSecurity {}: {}",
        go_quote(&policy.to_string()),
        violations.join(", ")
    )
}

// === the checks ===

/// The pod being judged.
struct PodView<'a> {
    metadata: Option<&'a ObjectMeta>,
    spec: &'a PodSpec,
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
        self.spec.security_context.as_ref()
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
    c.security_context.as_ref()
}

/// A failed check: Kubernetes' `ForbiddenReason` and `ForbiddenDetail`.
struct Violation {
    reason: String,
    detail: String,
}

fn violation(reason: impl Into<String>, detail: impl Into<String>) -> Option<Violation> {
    Some(Violation {
        reason: reason.into(),
        detail: detail.into(),
    })
}

type Check = fn(&PodView<'_>) -> Option<Violation>;

/// The baseline checks, in Kubernetes' order (sorted by check id:
/// appArmorProfile, capabilities_baseline, hostNamespaces, hostPathVolumes,
/// hostPorts, hostProbesAndHostLifecycle, privileged, procMount,
/// seLinuxOptions, seccompProfile_baseline, sysctls).
const BASELINE: &[Check] = &[
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
const RESTRICTED: &[Check] = &[
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
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

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
        let lifecycle = c.lifecycle.as_ref();
        let actions = [
            probe(c.liveness_probe.as_ref()),
            probe(c.readiness_probe.as_ref()),
            probe(c.startup_probe.as_ref()),
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

fn allow_privilege_escalation(pod: &PodView<'_>) -> Option<Violation> {
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

fn capabilities_restricted(pod: &PodView<'_>) -> Option<Violation> {
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

fn restricted_volumes(pod: &PodView<'_>) -> Option<Violation> {
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

fn run_as_non_root(pod: &PodView<'_>) -> Option<Violation> {
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

fn run_as_user(pod: &PodView<'_>) -> Option<Violation> {
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

// === Kubernetes' wording helpers ===

fn pluralize<'a>(singular: &'a str, plural: &'a str, count: usize) -> &'a str {
    if count == 1 { singular } else { plural }
}

/// `"a", "b"` (no escaping, as Kubernetes' `joinQuote`).
fn join_quote<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    items
        .into_iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers_phrase<S: AsRef<str>>(names: impl ExactSizeIterator<Item = S>) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

/// A string quoted like Go's `%q` (`strconv.Quote`) for the characters
/// that occur in names and annotation values.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let n = u32::from(c);
                if n < 0x80 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::core::v1::{
        AppArmorProfile, Capabilities, ContainerPort, HostPathVolumeSource, PodOs, SeLinuxOptions,
        SeccompProfile, Sysctl, Volume,
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
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    r#type: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
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
        s.security_context = Some(PodSecurityContext {
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
        });
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
        c.liveness_probe = Some(Probe {
            http_get: Some(HttpGetAction {
                host: "169.254.169.254".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
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
            check_pod_spec(Level::Restricted, None, &s)
                .contains(&r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#.to_string())
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
}
