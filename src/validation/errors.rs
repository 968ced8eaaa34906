//! Field errors: where a value is wrong and what is wrong with it,
//! gathered over a whole object and worded as Kubernetes' field errors.

use std::fmt;

use super::echo_value;

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
