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
//!
//! The checks themselves, and the view of the pod they judge, are in
//! `podsecurity/checks.rs` (the restricted-only ones in
//! `podsecurity/checks/restricted.rs`).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::pb::core::v1::PodSpec;
use crate::pb::meta::v1::ObjectMeta;

mod checks;

pub use checks::SAFE_SYSCTLS;
use checks::{BASELINE, Check, PodView, RESTRICTED};

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
mod tests;
