//! Name, label and annotation validation following Kubernetes' rules.
//!
//! The checkers mirror `k8s.io/apimachinery/pkg/util/validation` and the
//! messages copy Kubernetes' wording (down to its quirks, such as the double
//! space in the example lists), because users paste them into search engines
//! and compare them with what `kubectl` prints. The regular expressions are
//! quoted in messages for the same reason, but matching is hand-rolled.
//!
//! Each `is_*` checker returns `Ok(())` or every problem found, joined with
//! `"; "` as Kubernetes does when it folds them into one message.
//! [`FieldErrors`] collects problems per field path for whole-object
//! validation.

use std::fmt;

use thiserror::Error;

mod errors;

pub use errors::{FieldError, FieldErrors};

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors produced by object validation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// One or more fields of an object are invalid; the list names each one.
    #[error(transparent)]
    Invalid(#[from] FieldErrors),
}

/// Maximum length of an RFC 1123 label (namespace names, many object names).
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Maximum length of an RFC 1123 subdomain (most object names).
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Maximum length of an RFC 1035 label (service names).
pub const DNS1035_LABEL_MAX_LENGTH: usize = 63;
/// Maximum length of the name part of a qualified name (label and annotation
/// keys).
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;
/// Maximum length of a label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;
/// Maximum length of an IANA service name (port names).
pub const PORT_NAME_MAX_LENGTH: usize = 15;
/// Maximum total size in bytes of all annotation keys and values of an
/// object.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const C_IDENTIFIER_FMT: &str = "[A-Za-z_][A-Za-z0-9_]*";
const C_IDENTIFIER_ERR: &str = "a valid C identifier must start with alphabetic character or '_', followed by a string of alphanumeric characters or '_'";
const ENV_VAR_NAME_FMT: &str = "[-._a-zA-Z][-._a-zA-Z0-9]*";
const ENV_VAR_NAME_ERR: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit";
const EMPTY_ERROR: &str = "must be non-empty";

/// Why a value is not valid, worded as Kubernetes words it: the detail of
/// a field error (`metadata.name: Invalid value: "A": <this>`), and what
/// the API answers with INVALID_ARGUMENT / 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<Invalid> for String {
    fn from(e: Invalid) -> Self {
        e.0
    }
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Invalid {
    fn from(message: &str) -> Self {
        Self(message.to_string())
    }
}

/// Values longer than this are cut in messages: errors travel in gRPC status
/// messages, whose headers have size limits, and a 256 KiB echo helps nobody.
const MAX_ECHOED_VALUE_BYTES: usize = 1024;

/// Checks an RFC 1123 label: at most 63 characters of lower case
/// alphanumerics or `-`, starting and ending with an alphanumeric.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_dns1123_label(value: &str) -> Result<(), Invalid> {
    join(&dns1123_label_problems(value))
}

/// Checks an RFC 1123 subdomain: at most 253 characters, dot-separated RFC
/// 1123 labels.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_dns1123_subdomain(value: &str) -> Result<(), Invalid> {
    join(&dns1123_subdomain_problems(value))
}

/// Checks a name that must only be usable as one path segment (RBAC
/// names, like Kubernetes' `IsValidPathSegmentName`): not empty, not `.`
/// or `..`, without `/` or `%`.
///
/// # Errors
/// What is wrong with it.
pub fn is_path_segment_name(value: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value == "." || value == ".." {
        return Err(format!("may not be '{value}'").into());
    }
    for bad in ['/', '%'] {
        if value.contains(bad) {
            return Err(format!("may not contain '{bad}'").into());
        }
    }
    if value.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    Ok(())
}

/// Checks an RFC 1035 label (service names): at most 63 characters of lower
/// case alphanumerics or `-`, starting with a letter and ending with an
/// alphanumeric.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_dns1035_label(value: &str) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if value.len() > DNS1035_LABEL_MAX_LENGTH {
        problems.push(max_len_error(DNS1035_LABEL_MAX_LENGTH));
    }
    if !matches_dns1035_label(value.as_bytes()) {
        problems.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    join(&problems)
}

/// Checks a qualified name, the syntax of label and annotation keys: an
/// optional RFC 1123 subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` or `.`, starting and ending with an alphanumeric.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_qualified_name(value: &str) -> Result<(), Invalid> {
    join(&qualified_name_problems(value))
}

/// Checks a label value: empty, or at most 63 alphanumerics, `-`, `_` or
/// `.`, starting and ending with an alphanumeric.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_label_value(value: &str) -> Result<(), Invalid> {
    join(&label_value_problems(value))
}

/// Checks a C identifier: a letter or `_`, then letters, digits or `_`.
///
/// # Errors
///
/// Returns the problem, worded as Kubernetes does.
pub fn is_c_identifier(value: &str) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    let valid = bytes
        .first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || b == b'_')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Invalid(regex_error(
            C_IDENTIFIER_ERR,
            C_IDENTIFIER_FMT,
            &["my_name", "MY_NAME", "MyName"],
        )))
    }
}

/// Checks an environment variable name: letters, digits, `_`, `-` or `.`,
/// not starting with a digit, and not `.`, `..` or starting with `..`.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_env_var_name(value: &str) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    let is_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    let bytes = value.as_bytes();
    let valid =
        bytes.first().is_some_and(|b| !b.is_ascii_digit()) && bytes.iter().all(|&b| is_char(b));
    if !valid {
        problems.push(regex_error(
            ENV_VAR_NAME_ERR,
            ENV_VAR_NAME_FMT,
            &["my.env-name", "MY_ENV.NAME", "MyEnvName1"],
        ));
    }
    // Kubernetes runs its check for names that may become file names here
    // too; mirror it so both accept exactly the same names.
    if value == "." {
        problems.push("must not be '.'".to_owned());
    } else if value == ".." {
        problems.push("must not be '..'".to_owned());
    } else if value.starts_with("..") {
        problems.push("must not start with '..'".to_owned());
    }
    join(&problems)
}

/// Checks an IANA service name, the syntax of port names: at most 15
/// characters of lower case alphanumerics or `-`, with at least one letter,
/// no leading or trailing `-` and no `--`.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_port_name(value: &str) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    let bytes = value.as_bytes();
    if value.len() > PORT_NAME_MAX_LENGTH {
        problems.push(max_len_error(PORT_NAME_MAX_LENGTH));
    }
    if bytes.is_empty() || !bytes.iter().all(|&b| is_lower_alnum(b) || b == b'-') {
        problems.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    }
    if !bytes.iter().any(u8::is_ascii_lowercase) {
        problems.push("must contain at least one letter (a-z)".to_owned());
    }
    if value.contains("--") {
        problems.push("must not contain consecutive hyphens".to_owned());
    }
    if value.starts_with('-') || value.ends_with('-') {
        problems.push("must not begin or end with a hyphen".to_owned());
    }
    join(&problems)
}

/// Checks a port number: 1 to 65535 inclusive.
///
/// # Errors
///
/// Returns the problem, worded as Kubernetes does.
pub fn is_valid_port_num(port: i32) -> Result<(), Invalid> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err("must be between 1 and 65535, inclusive".into())
    }
}

/// Validates the labels of an object: keys must be qualified names and
/// values label values.
///
/// Problems are added to `errors` under `path` (e.g. `metadata.labels`), one
/// per problem as Kubernetes reports them, in key order so the message is
/// stable.
pub fn validate_labels<I, K, V>(path: &str, labels: I, errors: &mut FieldErrors)
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    for (key, value) in sorted(labels) {
        for problem in qualified_name_problems(key.as_ref()) {
            errors.invalid(path, key.as_ref(), problem);
        }
        for problem in label_value_problems(value.as_ref()) {
            errors.invalid(path, value.as_ref(), problem);
        }
    }
}

/// Validates the annotations of an object: keys must be qualified names
/// (case-insensitively, as in Kubernetes) and keys plus values may total at
/// most [`TOTAL_ANNOTATION_SIZE_LIMIT`] bytes.
///
/// Problems are added to `errors` under `path` (e.g.
/// `metadata.annotations`), in key order so the message is stable.
pub fn validate_annotations<I, K, V>(path: &str, annotations: I, errors: &mut FieldErrors)
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut total: usize = 0;
    for (key, value) in sorted(annotations) {
        let key = key.as_ref();
        total = total
            .saturating_add(key.len())
            .saturating_add(value.as_ref().len());
        for problem in qualified_name_problems(&key.to_ascii_lowercase()) {
            errors.invalid(path, key, problem);
        }
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errors.push(
            path,
            format!(
                "Too long: may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes (annotations total {total} bytes)"
            ),
        );
    }
}

fn dns1123_label_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        problems.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !matches_dns1123_label(value.as_bytes()) {
        if matches_dns1123_subdomain(value) {
            // Length was reported above, so dots are the only thing wrong.
            problems.push("must not contain dots".to_owned());
        } else {
            problems.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    problems
}

fn dns1123_subdomain_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        problems.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !matches_dns1123_subdomain(value) {
        problems.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    problems
}

fn qualified_name_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                problems.push(format!("prefix part {EMPTY_ERROR}"));
            } else {
                problems.extend(
                    dns1123_subdomain_problems(prefix)
                        .into_iter()
                        .map(|p| format!("prefix part {p}")),
                );
            }
            *name
        }
        _ => {
            problems.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"],
                )
            ));
            return problems;
        }
    };
    if name.is_empty() {
        problems.push(format!("name part {EMPTY_ERROR}"));
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        problems.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !matches_qualified_name_part(name.as_bytes()) {
        problems.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"],
            )
        ));
    }
    problems
}

fn label_value_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        problems.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !matches_qualified_name_part(value.as_bytes()) {
        problems.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    problems
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &[u8]) -> bool {
    match (s.first(), s.last()) {
        (Some(&first), Some(&last)) => {
            is_lower_alnum(first)
                && is_lower_alnum(last)
                && s.iter().all(|&b| is_lower_alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1035_label(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_lowercase) && matches_dns1123_label(s)
}

/// Dot-separated RFC 1123 labels; like Kubernetes' regex, it does not limit
/// the length of each label.
fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.')
        .all(|label| matches_dns1123_label(label.as_bytes()))
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_qualified_name_part(s: &[u8]) -> bool {
    match (s.first(), s.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && s.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn max_len_error(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// Kubernetes' `RegexError`, including the double space between examples.
fn regex_error(message: &str, regex: &str, examples: &[&str]) -> String {
    let mut out = message.to_owned();
    if examples.is_empty() {
        out.push_str(" (regex used for validation is '");
    } else {
        out.push_str(" (e.g. ");
        for (i, example) in examples.iter().enumerate() {
            if i > 0 {
                out.push_str(" or ");
            }
            out.push('\'');
            out.push_str(example);
            out.push_str("', ");
        }
        out.push_str("regex used for validation is '");
    }
    out.push_str(regex);
    out.push_str("')");
    out
}

fn join(problems: &[String]) -> Result<(), Invalid> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems.join("; ")))
    }
}

fn sorted<I, K, V>(entries: I) -> Vec<(K, V)>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
{
    let mut entries: Vec<(K, V)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    entries
}

fn echo_value(value: &impl fmt::Debug) -> String {
    let mut shown = format!("{value:?}");
    if shown.len() > MAX_ECHOED_VALUE_BYTES {
        let total = shown.len();
        let mut cut = MAX_ECHOED_VALUE_BYTES;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        format!("{shown}... ({total} bytes, truncated)")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests;
