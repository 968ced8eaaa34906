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
pub fn is_dns1123_label(value: &str) -> Result<(), String> {
    join(&dns1123_label_problems(value))
}

/// Checks an RFC 1123 subdomain: at most 253 characters, dot-separated RFC
/// 1123 labels.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_dns1123_subdomain(value: &str) -> Result<(), String> {
    join(&dns1123_subdomain_problems(value))
}

/// Checks a name that must only be usable as one path segment (RBAC
/// names, like Kubernetes' `IsValidPathSegmentName`): not empty, not `.`
/// or `..`, without `/` or `%`.
///
/// # Errors
/// What is wrong with it.
pub fn is_path_segment_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value == "." || value == ".." {
        return Err(format!("may not be '{value}'"));
    }
    for bad in ['/', '%'] {
        if value.contains(bad) {
            return Err(format!("may not contain '{bad}'"));
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
pub fn is_dns1035_label(value: &str) -> Result<(), String> {
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
pub fn is_qualified_name(value: &str) -> Result<(), String> {
    join(&qualified_name_problems(value))
}

/// Checks a label value: empty, or at most 63 alphanumerics, `-`, `_` or
/// `.`, starting and ending with an alphanumeric.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_label_value(value: &str) -> Result<(), String> {
    join(&label_value_problems(value))
}

/// Checks a C identifier: a letter or `_`, then letters, digits or `_`.
///
/// # Errors
///
/// Returns the problem, worded as Kubernetes does.
pub fn is_c_identifier(value: &str) -> Result<(), String> {
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
        Err(regex_error(
            C_IDENTIFIER_ERR,
            C_IDENTIFIER_FMT,
            &["my_name", "MY_NAME", "MyName"],
        ))
    }
}

/// Checks an environment variable name: letters, digits, `_`, `-` or `.`,
/// not starting with a digit, and not `.`, `..` or starting with `..`.
///
/// # Errors
///
/// Returns every problem found, joined with `"; "`, worded as Kubernetes
/// does.
pub fn is_env_var_name(value: &str) -> Result<(), String> {
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
pub fn is_port_name(value: &str) -> Result<(), String> {
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
pub fn is_valid_port_num(port: i32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err("must be between 1 and 65535, inclusive".to_owned())
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

/// One invalid field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `metadata.name` or `spec.containers[0].image`.
    pub path: String,
    /// What is wrong, starting with the Kubernetes error type, e.g.
    /// `Required value` or `Invalid value: "Foo": ...`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Accumulates field errors while validating an object, so the user learns
/// about every problem at once.
///
/// Displays like Kubernetes' field errors, joined with `"; "`:
/// `metadata.name: Invalid value: "Foo": a lowercase RFC 1123 subdomain ...;
/// spec.containers: Required value`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors {
    errors: Vec<FieldError>,
}

impl FieldErrors {
    /// Keeps only the errors `before` does not have: an update is not
    /// refused for what the stored object already had (Kubernetes'
    /// ratcheting), so an object stored before a rule existed can still
    /// change its status, lose its finalizers and be deleted.
    pub fn retain_new(&mut self, before: &FieldErrors) {
        self.errors.retain(|e| !before.errors.contains(e));
    }

    /// Creates an empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an error with a free-form message.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Adds a `Required value` error: the field is missing or empty.
    pub fn required(&mut self, path: impl Into<String>) {
        self.push(path, "Required value");
    }

    /// Adds an `Invalid value` error.
    ///
    /// `value` is shown with `Debug`, so strings are quoted and numbers are
    /// not, as in Kubernetes; very long values are cut.
    pub fn invalid(
        &mut self,
        path: impl Into<String>,
        value: impl fmt::Debug,
        reason: impl fmt::Display,
    ) {
        self.push(
            path,
            format!("Invalid value: {}: {reason}", echo_value(&value)),
        );
    }

    /// Adds a `Forbidden` error: the field may not be set here.
    pub fn forbidden(&mut self, path: impl Into<String>, reason: impl fmt::Display) {
        self.push(path, format!("Forbidden: {reason}"));
    }

    /// Adds an `Unsupported value` error listing the supported values.
    pub fn not_supported(
        &mut self,
        path: impl Into<String>,
        value: impl fmt::Debug,
        supported: &[&str],
    ) {
        let supported = supported
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.push(
            path,
            format!(
                "Unsupported value: {}: supported values: {supported}",
                echo_value(&value)
            ),
        );
    }

    /// Adds a `Too many` error for a list limited to `max` items.
    pub fn too_many(&mut self, path: impl Into<String>, have: usize, max: usize) {
        self.push(
            path,
            format!("Too many: {have}: must have at most {max} items"),
        );
    }

    /// Adds a `Duplicate value` error.
    pub fn duplicate(&mut self, path: impl Into<String>, value: impl fmt::Debug) {
        self.push(path, format!("Duplicate value: {}", echo_value(&value)));
    }

    /// Adds a `Too long` error for a field limited to `max_bytes`.
    pub fn too_long(&mut self, path: impl Into<String>, max_bytes: usize) {
        let unit = if max_bytes == 1 { "byte" } else { "bytes" };
        self.push(
            path,
            format!("Too long: may not be more than {max_bytes} {unit}"),
        );
    }

    /// Returns whether no error was added.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Returns the number of errors.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Returns the errors in the order they were added.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Iterates over the errors in the order they were added.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.errors.iter()
    }

    /// Turns the accumulator into a result: `Ok` when it is empty.
    ///
    /// # Errors
    ///
    /// Returns `self` when any error was added.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

impl Extend<FieldError> for FieldErrors {
    fn extend<T: IntoIterator<Item = FieldError>>(&mut self, iter: T) {
        self.errors.extend(iter);
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
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

fn join(problems: &[String]) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
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
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    const SUBDOMAIN_MESSAGE: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

    #[test]
    fn dns1123_label_accepts_lowercase_alphanumerics_and_inner_hyphens() {
        for ok in ["a", "0", "abc", "a-b", "a--b", "123-abc", &"a".repeat(63)] {
            assert_eq!(is_dns1123_label(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn dns1123_label_rejects_bad_shapes() {
        for bad in ["", "A", "-a", "a-", "a_b", "a b", "é", &"a".repeat(64)] {
            assert!(is_dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns1123_label_with_dots_says_dots_are_the_problem() {
        assert_eq!(
            is_dns1123_label("a.b"),
            Err("must not contain dots".to_owned())
        );
    }

    #[test]
    fn dns1123_label_reports_length_and_charset_together() {
        let err = is_dns1123_label(&"A".repeat(64)).unwrap_err();
        assert!(err.starts_with("must be no more than 63 characters; a lowercase RFC 1123 label"));
    }

    #[test]
    fn dns1123_subdomain_accepts_dotted_labels() {
        for ok in ["a", "example.com", "a-b.c-d.e", "1.2.3.4", &"a".repeat(253)] {
            assert_eq!(is_dns1123_subdomain(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn dns1123_subdomain_rejects_empty_labels_uppercase_and_length() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "Foo",
            "a_b.c",
            "a.-b",
            &"a".repeat(254),
        ] {
            assert!(is_dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns1123_subdomain_message_matches_kubernetes() {
        assert_eq!(
            is_dns1123_subdomain("Foo"),
            Err(SUBDOMAIN_MESSAGE.to_owned())
        );
    }

    #[test]
    fn dns1035_label_requires_a_leading_letter() {
        assert_eq!(is_dns1035_label("my-service"), Ok(()));
        assert!(
            is_dns1035_label("1abc")
                .unwrap_err()
                .contains("start with an alphabetic character")
        );
        assert!(is_dns1035_label("").is_err());
    }

    #[test]
    fn qualified_name_accepts_names_and_prefixed_names() {
        for ok in [
            "a",
            "MyName",
            "my.name",
            "123-abc",
            "a_b",
            "example.com/MyName",
            "k8s.io/app",
            &"a".repeat(63),
        ] {
            assert_eq!(is_qualified_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn qualified_name_rejects_bad_names() {
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "a/b/c",
            "/a",
            "a/",
            "Example.com/a",
            &"a".repeat(64),
        ] {
            assert!(is_qualified_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qualified_name_messages_name_the_part_at_fault() {
        assert_eq!(
            is_qualified_name("/a"),
            Err("prefix part must be non-empty".to_owned())
        );
        let err = is_qualified_name("Bad_Prefix/a").unwrap_err();
        assert!(
            err.starts_with("prefix part a lowercase RFC 1123 subdomain"),
            "{err}"
        );
        let err = is_qualified_name("a/").unwrap_err();
        assert!(
            err.starts_with("name part must be non-empty; name part must consist of"),
            "{err}"
        );
        let err = is_qualified_name("a b").unwrap_err();
        assert_eq!(
            err,
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        let err = is_qualified_name("a/b/c").unwrap_err();
        assert!(err.starts_with("a qualified name must consist of"), "{err}");
        assert!(
            err.ends_with(
                "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ),
            "{err}"
        );
    }

    #[test]
    fn label_value_allows_empty_and_rejects_bad_edges() {
        for ok in [
            "",
            "a",
            "MyValue",
            "my_value",
            "12345",
            "a.b-c_d",
            &"a".repeat(63),
        ] {
            assert_eq!(is_label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-a", "a-", "_a", "a b", "a/b", "a=b", &"a".repeat(64)] {
            assert!(is_label_value(bad).is_err(), "{bad}");
        }
        assert_eq!(
            is_label_value(&"a".repeat(64)),
            Err("must be no more than 63 characters".to_owned())
        );
    }

    #[test]
    fn c_identifier_rejects_leading_digit_and_punctuation() {
        assert_eq!(is_c_identifier("_my_NAME1"), Ok(()));
        for bad in ["", "1a", "a-b", "a.b"] {
            assert!(is_c_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_name_allows_dots_and_dashes_but_not_leading_digits() {
        for ok in ["MY_ENV.NAME", "my.env-name", "MyEnvName1", "-a", ".a", "_"] {
            assert_eq!(is_env_var_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1A", "A=B", "A B", "é"] {
            assert!(is_env_var_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_name_rejects_relative_path_lookalikes() {
        assert_eq!(is_env_var_name("."), Err("must not be '.'".to_owned()));
        assert_eq!(is_env_var_name(".."), Err("must not be '..'".to_owned()));
        assert_eq!(
            is_env_var_name("..a"),
            Err("must not start with '..'".to_owned())
        );
    }

    #[test]
    fn port_name_follows_iana_service_name_rules() {
        for ok in ["http", "h2c", "web-8080", "a", &"a".repeat(15)] {
            assert_eq!(is_port_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "http_2",
            &"a".repeat(16),
        ] {
            assert!(is_port_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            is_port_name("a--"),
            Err(
                "must not contain consecutive hyphens; must not begin or end with a hyphen"
                    .to_owned()
            )
        );
    }

    #[test]
    fn port_number_must_be_between_1_and_65535() {
        assert_eq!(is_valid_port_num(1), Ok(()));
        assert_eq!(is_valid_port_num(65535), Ok(()));
        for bad in [0, -1, 65536, i32::MIN, i32::MAX] {
            assert_eq!(
                is_valid_port_num(bad),
                Err("must be between 1 and 65535, inclusive".to_owned())
            );
        }
    }

    #[test]
    fn field_errors_display_like_kubernetes() {
        let mut errors = FieldErrors::new();
        errors.invalid(
            "metadata.name",
            "Foo",
            is_dns1123_subdomain("Foo").unwrap_err(),
        );
        errors.required("spec.containers");
        assert_eq!(
            errors.to_string(),
            format!(
                "metadata.name: Invalid value: \"Foo\": {SUBDOMAIN_MESSAGE}; spec.containers: Required value"
            )
        );
    }

    #[test]
    fn field_errors_show_numbers_unquoted() {
        let mut errors = FieldErrors::new();
        errors.invalid("spec.ports[0].port", 0, is_valid_port_num(0).unwrap_err());
        assert_eq!(
            errors.to_string(),
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
    }

    #[test]
    fn field_errors_helpers_use_kubernetes_error_types() {
        let mut errors = FieldErrors::new();
        errors.forbidden("spec.nodeName", "may not be set on create");
        errors.not_supported(
            "spec.restartPolicy",
            "Sometimes",
            &["Always", "OnFailure", "Never"],
        );
        errors.duplicate("spec.containers[1].name", "app");
        errors.too_long("metadata.name", 253);
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "spec.nodeName: Forbidden: may not be set on create",
                "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
                "spec.containers[1].name: Duplicate value: \"app\"",
                "metadata.name: Too long: may not be more than 253 bytes",
            ]
        );
    }

    #[test]
    fn field_errors_into_result_is_ok_only_when_empty() {
        assert_eq!(FieldErrors::new().into_result(), Ok(()));
        let mut errors = FieldErrors::new();
        errors.push("a", "b");
        assert_eq!(errors.len(), 1);
        let err = errors.clone().into_result().unwrap_err();
        assert_eq!(err, errors);
        let module_error: Error = err.into();
        assert_eq!(module_error.to_string(), "a: b");
    }

    #[test]
    fn invalid_value_echo_is_truncated_on_a_char_boundary() {
        let mut errors = FieldErrors::new();
        let huge = "é".repeat(100_000);
        errors.invalid("x", &huge, "too odd");
        let message = &errors.errors()[0].message;
        assert!(
            message.len() < 2 * MAX_ECHOED_VALUE_BYTES,
            "{}",
            message.len()
        );
        assert!(message.contains("truncated"));
        assert!(message.ends_with(": too odd"));
    }

    #[test]
    fn validate_labels_reports_bad_keys_and_values_in_key_order() {
        let labels: HashMap<String, String> = [("z", "-bad"), ("app", "web"), ("bad key", "ok")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut errors = FieldErrors::new();
        validate_labels("metadata.labels", &labels, &mut errors);
        assert_eq!(errors.len(), 2);
        assert!(
            errors.errors()[0]
                .message
                .starts_with("Invalid value: \"bad key\": name part must consist of")
        );
        assert!(
            errors.errors()[1]
                .message
                .starts_with("Invalid value: \"-bad\": a valid label must be an empty string")
        );
        assert!(errors.iter().all(|e| e.path == "metadata.labels"));
    }

    #[test]
    fn validate_labels_accepts_btreemaps_of_valid_labels() {
        let labels = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "web".to_owned()),
            ("tier".to_owned(), String::new()),
        ]);
        let mut errors = FieldErrors::new();
        validate_labels("metadata.labels", &labels, &mut errors);
        assert!(errors.is_empty(), "{errors}");
    }

    #[test]
    fn validate_annotations_ignores_key_case() {
        let annotations = HashMap::from([(
            "Example.com/Some-Key".to_owned(),
            "any value at all, even {json}".to_owned(),
        )]);
        let mut errors = FieldErrors::new();
        validate_annotations("metadata.annotations", &annotations, &mut errors);
        assert!(errors.is_empty(), "{errors}");
    }

    #[test]
    fn validate_annotations_rejects_bad_keys() {
        let annotations = HashMap::from([("a/b/c".to_owned(), String::new())]);
        let mut errors = FieldErrors::new();
        validate_annotations("metadata.annotations", &annotations, &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(
            errors
                .to_string()
                .starts_with("metadata.annotations: Invalid value: \"a/b/c\": a qualified name")
        );
    }

    #[test]
    fn validate_annotations_limits_total_size_to_256_kib() {
        let at_limit =
            HashMap::from([("k".to_owned(), "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT - 1))]);
        let mut errors = FieldErrors::new();
        validate_annotations("metadata.annotations", &at_limit, &mut errors);
        assert!(errors.is_empty());

        let over = HashMap::from([("k".to_owned(), "v".repeat(TOTAL_ANNOTATION_SIZE_LIMIT))]);
        validate_annotations("metadata.annotations", &over, &mut errors);
        assert_eq!(
            errors.to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes (annotations total 262145 bytes)"
        );
    }
}
