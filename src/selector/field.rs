//! Field selectors: [`FieldSelector`] and its terms ([`FieldRequirement`],
//! [`FieldOperator`]), parsed from `field=value`, `field==value` and
//! `field!=value` terms as apimachinery's `fields.ParseSelector` does.

use std::fmt;
use std::str::FromStr;

use super::{Error, Result, write_joined};

/// The operator of a field requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    /// `field=value` or `field==value`.
    Equals,
    /// `field!=value`.
    NotEquals,
}

/// One term of a field selector, e.g. `spec.nodeName=node-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    field: String,
    operator: FieldOperator,
    value: String,
}

impl FieldRequirement {
    /// Returns the field path, e.g. `metadata.name`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Returns the operator.
    pub fn operator(&self) -> FieldOperator {
        self.operator
    }

    /// Returns the value, unescaped.
    pub fn value(&self) -> &str {
        &self.value
    }

    fn matches(&self, actual: &str) -> bool {
        match self.operator {
            FieldOperator::Equals => actual == self.value,
            FieldOperator::NotEquals => actual != self.value,
        }
    }
}

/// Displays the term with its value escaped, e.g. `metadata.name=a\,b`.
impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operator = match self.operator {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        };
        write!(f, "{}{operator}", self.field)?;
        for c in self.value.chars() {
            if matches!(c, '\\' | ',' | '=') {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// A field selector: a conjunction of `field=value` and `field!=value`
/// terms. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    /// Sorted by field (stably).
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Returns the selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses comma-separated `field=value`, `field==value` and
    /// `field!=value` terms without restricting the field names.
    ///
    /// Values may contain `\,`, `\=` and `\\` escapes, as in Kubernetes.
    /// Whitespace around fields and values is ignored, and so are empty
    /// terms; the empty string matches everything.
    ///
    /// # Errors
    ///
    /// Returns [`Error::FieldSyntax`] for a term without operator, without
    /// field name, or with a bad escape or an unescaped `=` in its value.
    pub fn parse(selector: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        for term in split_terms(selector) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_field_term(selector, term)?);
        }
        requirements.sort_by(|a, b| a.field.cmp(&b.field));
        Ok(Self { requirements })
    }

    /// Parses like [`FieldSelector::parse`] and also requires every field to
    /// be one of `allowed`, since each resource supports only a few.
    ///
    /// # Errors
    ///
    /// As [`FieldSelector::parse`], plus [`Error::UnsupportedField`] naming
    /// the supported fields when a term uses another one.
    pub fn parse_with(selector: &str, allowed: &[&str]) -> Result<Self> {
        let parsed = Self::parse(selector)?;
        if let Some(bad) = parsed
            .requirements
            .iter()
            .find(|r| !allowed.contains(&r.field.as_str()))
        {
            let supported = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(Error::UnsupportedField {
                selector: selector.to_owned(),
                field: bad.field.clone(),
                supported,
            });
        }
        Ok(parsed)
    }

    /// Returns whether the selector has no terms and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Returns the terms, sorted by field.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Returns whether an object satisfies every term, where `get` returns
    /// the value of a field of the object. A missing field compares as the
    /// empty string, as in Kubernetes.
    pub fn matches<F, S>(&self, get: F) -> bool
    where
        F: Fn(&str) -> Option<S>,
        S: AsRef<str>,
    {
        self.requirements.iter().all(|r| {
            let actual = get(&r.field);
            r.matches(actual.as_ref().map_or("", AsRef::as_ref))
        })
    }

    /// Returns the value that `field` must equal, if a `=` term requires
    /// one; storage can use it to narrow a read (e.g. pods by
    /// `spec.nodeName`) before matching the whole selector.
    pub fn value_for(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.operator == FieldOperator::Equals && r.field == field)
            .map(|r| r.value.as_str())
    }
}

impl FromStr for FieldSelector {
    type Err = Error;

    fn from_str(selector: &str) -> Result<Self> {
        Self::parse(selector)
    }
}

/// Displays the canonical string form, which parses back to an equal
/// selector.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.requirements)
    }
}

/// Splits on commas that are not escaped with a backslash.
fn split_terms(selector: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in selector.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

fn parse_field_term(selector: &str, term: &str) -> Result<FieldRequirement> {
    let syntax = |reason: String| Error::FieldSyntax {
        selector: selector.to_owned(),
        reason,
    };
    let Some(eq) = term.find('=') else {
        return Err(syntax(format!(
            "term {term:?} has no operator; expected 'field=value', 'field==value' or 'field!=value'"
        )));
    };
    // The first operator wins, as in Kubernetes: `!=` when the first '='
    // follows a '!', else `==` or `=`.
    let (field, operator, raw_value) = if term[..eq].ends_with('!') {
        (&term[..eq - 1], FieldOperator::NotEquals, &term[eq + 1..])
    } else if term[eq + 1..].starts_with('=') {
        (&term[..eq], FieldOperator::Equals, &term[eq + 2..])
    } else {
        (&term[..eq], FieldOperator::Equals, &term[eq + 1..])
    };
    let field = field.trim();
    if field.is_empty() {
        return Err(syntax(format!(
            "term {term:?} has no field name before the operator"
        )));
    }
    // Field names are paths like `metadata.name`: anything else (a stray
    // `!`, a space) would print as another selector than it parsed as.
    if let Some(bad) = field
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(syntax(format!(
            "field name {field:?} contains {bad:?}; a field is a path like metadata.name"
        )));
    }
    let value = unescape_field_value(raw_value.trim())
        .map_err(|problem| syntax(format!("in the value of field {field:?}: {problem}")))?;
    Ok(FieldRequirement {
        field: field.to_owned(),
        operator,
        value,
    })
}

fn unescape_field_value(raw: &str) -> std::result::Result<String, String> {
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => value.push(escaped),
                Some(other) => {
                    return Err(format!(
                        "invalid escape sequence \"\\{other}\"; only '\\\\', '\\,' and '\\=' are allowed"
                    ));
                }
                None => {
                    return Err("trailing '\\'; write '\\\\' for a literal backslash".to_owned());
                }
            },
            '=' => {
                return Err("unescaped '='; write '\\=' for a literal '='".to_owned());
            }
            _ => value.push(c),
        }
    }
    Ok(value)
}
