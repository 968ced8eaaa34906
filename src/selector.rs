//! Kubernetes label selectors and field selectors.
//!
//! [`LabelSelector`] accepts the string syntax of kubectl and apimachinery's
//! `labels.Parse` (`app=web,tier!=db,env in (prod,staging),!canary`) and the
//! structured `matchLabels`/`matchExpressions` form, and matches with
//! Kubernetes' semantics: `!=` and `notin` match objects that lack the key,
//! `=` and `in` require it.
//!
//! [`FieldSelector`] accepts `field=value`, `field==value` and
//! `field!=value` terms, comma-separated, as in apimachinery's
//! `fields.ParseSelector`, where a missing field compares as the empty
//! string.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

use thiserror::Error;

use crate::validation;

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors produced when parsing or building a selector.
///
/// Label selector errors carry a `context` saying where the problem is: the
/// quoted selector string, or `matchLabels` / `matchExpressions[i]` for the
/// structured form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A label selector string is malformed.
    #[error("invalid label selector {selector:?}: {reason}")]
    Syntax {
        /// The selector as given.
        selector: String,
        /// What is wrong and where.
        reason: String,
    },
    /// A label key is not a valid qualified name.
    #[error("invalid label selector {context}: invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// Where the key appears.
        context: String,
        /// The rejected key.
        key: String,
        /// Why the key is invalid, in Kubernetes' wording.
        reason: String,
    },
    /// A label value is not a valid label value.
    #[error(
        "invalid label selector {context}: invalid value {value:?} for label key {key:?}: {reason}"
    )]
    InvalidValue {
        /// Where the value appears.
        context: String,
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
        /// Why the value is invalid, in Kubernetes' wording.
        reason: String,
    },
    /// A `matchExpressions` operator is not one of Kubernetes' operators.
    #[error(
        "invalid label selector {context}: unknown operator {operator:?} for key {key:?}; valid operators are In, NotIn, Exists and DoesNotExist"
    )]
    UnknownOperator {
        /// Where the operator appears.
        context: String,
        /// The key of the expression.
        key: String,
        /// The rejected operator.
        operator: String,
    },
    /// An `In` or `NotIn` expression has no values.
    #[error(
        "invalid label selector {context}: operator {operator} for key {key:?} needs at least one value"
    )]
    MissingValues {
        /// Where the expression appears.
        context: String,
        /// The key of the expression.
        key: String,
        /// The operator, as written.
        operator: String,
    },
    /// An `Exists` or `DoesNotExist` expression has values.
    #[error(
        "invalid label selector {context}: operator {operator} for key {key:?} takes no values, but {count} were given"
    )]
    UnexpectedValues {
        /// Where the expression appears.
        context: String,
        /// The key of the expression.
        key: String,
        /// The operator, as written.
        operator: String,
        /// How many values were given.
        count: usize,
    },
    /// A field selector string is malformed.
    #[error("invalid field selector {selector:?}: {reason}")]
    FieldSyntax {
        /// The selector as given.
        selector: String,
        /// What is wrong and where.
        reason: String,
    },
    /// A field selector names a field the resource does not support.
    #[error(
        "invalid field selector {selector:?}: field {field:?} is not supported; supported fields: {supported}"
    )]
    UnsupportedField {
        /// The selector as given.
        selector: String,
        /// The rejected field.
        field: String,
        /// The supported fields, comma-separated.
        supported: String,
    },
}

/// Read access to an object's labels, so selectors can match any map type.
pub trait Labels {
    /// Returns the value of label `key`, or `None` when the object lacks it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<T: Labels + ?Sized> Labels for &T {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

/// The operator of a label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value` or `key==value`: the label exists and equals the value.
    Equals,
    /// `key!=value`: the label is absent or differs from the value.
    NotEquals,
    /// `key in (a,b)`: the label exists and is one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or none of the values.
    NotIn,
    /// `key`: the label exists.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
}

/// One requirement of a label selector, e.g. `env in (prod,staging)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted and deduplicated, as Kubernetes keeps them in a set.
    values: Vec<String>,
}

impl Requirement {
    /// Returns the label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Returns the operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// Returns the values, sorted and without duplicates: one for
    /// [`Operator::Equals`] and [`Operator::NotEquals`], at least one for
    /// [`Operator::In`] and [`Operator::NotIn`], none otherwise.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Returns whether `labels` satisfy this requirement.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        let value = labels.label(&self.key);
        let listed = |v: &str| self.values.iter().any(|candidate| candidate == v);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(listed),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(listed),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn new(key: &str, operator: Operator, values: Vec<String>, context: &str) -> Result<Self> {
        validation::is_qualified_name(key).map_err(|reason| Error::InvalidKey {
            context: context.to_owned(),
            key: key.to_owned(),
            reason,
        })?;
        for value in &values {
            validation::is_label_value(value).map_err(|reason| Error::InvalidValue {
                context: context.to_owned(),
                key: key.to_owned(),
                value: value.clone(),
                reason,
            })?;
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Self {
            key: key.to_owned(),
            operator,
            values,
        })
    }
}

/// Displays the requirement in selector syntax, e.g. `env in (prod,staging)`.
impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values = self.values.join(",");
        match self.operator {
            Operator::Equals => write!(f, "{}={values}", self.key),
            Operator::NotEquals => write!(f, "{}!={values}", self.key),
            Operator::In => write!(f, "{} in ({values})", self.key),
            Operator::NotIn => write!(f, "{} notin ({values})", self.key),
            Operator::Exists => f.write_str(&self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A label selector: a conjunction of requirements. The empty selector
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    /// Sorted by key (stably), as Kubernetes sorts them.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Returns the selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses the string syntax of `kubectl -l`: comma-separated
    /// requirements of the forms `key=value`, `key==value`, `key!=value`,
    /// `key in (a,b)`, `key notin (a,b)`, `key` and `!key`. Whitespace
    /// between tokens is ignored; the empty string matches everything.
    ///
    /// As in Kubernetes, `key=` compares with the empty value and `()` or
    /// an empty list item stands for the empty value.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Syntax`] for malformed input, [`Error::InvalidKey`]
    /// for a key that is not a qualified name and [`Error::InvalidValue`]
    /// for a value that is not a label value.
    pub fn parse(selector: &str) -> Result<Self> {
        let requirements = Parser {
            selector,
            tokens: tokenize(selector),
            pos: 0,
        }
        .parse()?;
        Ok(Self::sorted(requirements))
    }

    /// Builds a selector from the structured `metav1.LabelSelector` form:
    /// `matchLabels` and `matchExpressions` given as `(key, operator,
    /// values)` with Kubernetes' operator names `In`, `NotIn`, `Exists` and
    /// `DoesNotExist`. A selector with neither matches everything, as in
    /// Kubernetes' `LabelSelectorAsSelector`.
    ///
    /// # Errors
    ///
    /// Returns [`Error::UnknownOperator`] for any other operator,
    /// [`Error::MissingValues`] when `In`/`NotIn` have no values,
    /// [`Error::UnexpectedValues`] when `Exists`/`DoesNotExist` have some,
    /// and [`Error::InvalidKey`] or [`Error::InvalidValue`] for keys and
    /// values that Kubernetes would reject.
    pub fn from_parts<'a>(
        match_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
        match_expressions: &[(String, String, Vec<String>)],
    ) -> Result<Self> {
        let mut labels: Vec<(&String, &String)> = match_labels.into_iter().collect();
        labels.sort();
        let mut requirements = Vec::with_capacity(labels.len() + match_expressions.len());
        for (key, value) in labels {
            requirements.push(Requirement::new(
                key,
                Operator::Equals,
                vec![value.clone()],
                "matchLabels",
            )?);
        }
        for (index, (key, operator, values)) in match_expressions.iter().enumerate() {
            let context = format!("matchExpressions[{index}]");
            let (op, needs_values) = match operator.as_str() {
                "In" => (Operator::In, true),
                "NotIn" => (Operator::NotIn, true),
                "Exists" => (Operator::Exists, false),
                "DoesNotExist" => (Operator::DoesNotExist, false),
                _ => {
                    return Err(Error::UnknownOperator {
                        context,
                        key: key.clone(),
                        operator: operator.clone(),
                    });
                }
            };
            if needs_values && values.is_empty() {
                return Err(Error::MissingValues {
                    context,
                    key: key.clone(),
                    operator: operator.clone(),
                });
            }
            if !needs_values && !values.is_empty() {
                return Err(Error::UnexpectedValues {
                    context,
                    key: key.clone(),
                    operator: operator.clone(),
                    count: values.len(),
                });
            }
            requirements.push(Requirement::new(key, op, values.clone(), &context)?);
        }
        Ok(Self::sorted(requirements))
    }

    /// Returns whether the selector has no requirements and so matches
    /// everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Returns the requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Returns whether `labels` satisfy every requirement.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    fn sorted(mut requirements: Vec<Requirement>) -> Self {
        // Sorting makes equal selectors compare and print equally, whatever
        // order the user wrote them in.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self { requirements }
    }
}

/// Writes `items` separated by commas (a selector's canonical form).
fn write_joined<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// The selector of an object's `matchLabels`/`matchExpressions`.
impl TryFrom<&crate::pb::meta::v1::LabelSelector> for LabelSelector {
    type Error = Error;

    fn try_from(selector: &crate::pb::meta::v1::LabelSelector) -> Result<Self> {
        let expressions: Vec<(String, String, Vec<String>)> = selector
            .match_expressions
            .iter()
            .map(|e| (e.key.clone(), e.operator.clone(), e.values.clone()))
            .collect();
        Self::from_parts(&selector.match_labels, &expressions)
    }
}

impl FromStr for LabelSelector {
    type Err = Error;

    fn from_str(selector: &str) -> Result<Self> {
        Self::parse(selector)
    }
}

/// Displays the canonical string form, which parses back to an equal
/// selector: requirements sorted by key, joined with `,`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_joined(f, &self.requirements)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// A run of characters other than whitespace and `=!(),<>`; `in` and
    /// `notin` are keywords only where an operator is expected, so they stay
    /// usable as keys and values.
    Word(&'a str),
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    OpenParen,
    CloseParen,
    Comma,
    Greater,
    Less,
    End,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(word) => write!(f, "{word:?}"),
            Token::Equals => f.write_str("'='"),
            Token::DoubleEquals => f.write_str("'=='"),
            Token::NotEquals => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::OpenParen => f.write_str("'('"),
            Token::CloseParen => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
            Token::Greater => f.write_str("'>'"),
            Token::Less => f.write_str("'<'"),
            Token::End => f.write_str("end of selector"),
        }
    }
}

/// Kubernetes' lexer separates tokens with exactly these characters.
fn is_selector_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn tokenize(input: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = input;
    loop {
        rest = rest.trim_start_matches(is_selector_whitespace);
        let Some(c) = rest.chars().next() else {
            tokens.push(Token::End);
            return tokens;
        };
        let (token, len) = match c {
            '=' if rest.starts_with("==") => (Token::DoubleEquals, 2),
            '!' if rest.starts_with("!=") => (Token::NotEquals, 2),
            '=' => (Token::Equals, 1),
            '!' => (Token::Bang, 1),
            '(' => (Token::OpenParen, 1),
            ')' => (Token::CloseParen, 1),
            ',' => (Token::Comma, 1),
            '<' => (Token::Less, 1),
            '>' => (Token::Greater, 1),
            _ => {
                let len = rest
                    .find(|c: char| is_selector_whitespace(c) || is_special(c))
                    .unwrap_or(rest.len());
                (Token::Word(&rest[..len]), len)
            }
        };
        tokens.push(token);
        rest = &rest[len..];
    }
}

struct Parser<'a> {
    selector: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        self.tokens.get(self.pos).copied().unwrap_or(Token::End)
    }

    fn next(&mut self) -> Token<'a> {
        let token = self.peek();
        self.pos += 1;
        token
    }

    fn syntax(&self, reason: impl Into<String>) -> Error {
        Error::Syntax {
            selector: self.selector.to_owned(),
            reason: reason.into(),
        }
    }

    fn parse(mut self) -> Result<Vec<Requirement>> {
        let mut requirements = Vec::new();
        if self.peek() == Token::End {
            return Ok(requirements);
        }
        loop {
            let requirement = self.parse_requirement()?;
            match self.next() {
                Token::End => {
                    requirements.push(requirement);
                    return Ok(requirements);
                }
                Token::Comma if self.peek() == Token::End => {
                    return Err(self.syntax("trailing ','; expected a requirement after it"));
                }
                Token::Comma => requirements.push(requirement),
                found => {
                    return Err(self.syntax(format!(
                        "expected ',' or end of selector after requirement \"{requirement}\", found {found}"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement> {
        let context = format!("{:?}", self.selector);
        let key = match self.next() {
            Token::Bang => match self.next() {
                Token::Word(key) => {
                    return Requirement::new(key, Operator::DoesNotExist, Vec::new(), &context);
                }
                found => {
                    return Err(
                        self.syntax(format!("expected a label key after '!', found {found}"))
                    );
                }
            },
            Token::Word(key) => key,
            Token::Comma => {
                return Err(
                    self.syntax("empty requirement; expected a label key or '!' before ','")
                );
            }
            found => {
                return Err(self.syntax(format!("expected a label key or '!', found {found}")));
            }
        };
        let operator = match self.peek() {
            Token::End | Token::Comma => {
                return Requirement::new(key, Operator::Exists, Vec::new(), &context);
            }
            Token::Equals | Token::DoubleEquals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::Word("in") => Operator::In,
            Token::Word("notin") => Operator::NotIn,
            found @ (Token::Greater | Token::Less) => {
                return Err(self.syntax(format!(
                    "operator {found} after key {key:?} is not supported; use '=', '==', '!=', 'in' or 'notin'"
                )));
            }
            found => {
                return Err(self.syntax(format!(
                    "expected '=', '==', '!=', 'in' or 'notin' after key {key:?}, found {found}"
                )));
            }
        };
        let operator_token = self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_value_list(key, operator_token)?,
            _ => match self.peek() {
                // Kubernetes reads `key=` as comparing with the empty value.
                Token::End | Token::Comma => vec![String::new()],
                Token::Word(value) => {
                    self.pos += 1;
                    vec![value.to_owned()]
                }
                found => {
                    return Err(self.syntax(format!(
                        "expected a value after {operator_token} for key {key:?}, found {found}"
                    )));
                }
            },
        };
        Requirement::new(key, operator, values, &context)
    }

    /// Parses `(a,b,...)`; like Kubernetes, an empty item (as in `()` or
    /// `(a,)`) stands for the empty value.
    fn parse_value_list(&mut self, key: &str, operator: Token<'a>) -> Result<Vec<String>> {
        match self.next() {
            Token::OpenParen => {}
            found => {
                return Err(self.syntax(format!(
                    "expected '(' after {operator} for key {key:?}, found {found}"
                )));
            }
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Token::Word(value) => {
                    values.push(value.to_owned());
                    match self.next() {
                        Token::Comma => {}
                        Token::CloseParen => return Ok(values),
                        Token::End => return Err(self.syntax("missing closing ')'")),
                        found => {
                            return Err(self.syntax(format!(
                                "expected ',' or ')' after value {value:?}, found {found}"
                            )));
                        }
                    }
                }
                Token::Comma => values.push(String::new()),
                Token::CloseParen => {
                    values.push(String::new());
                    return Ok(values);
                }
                Token::End => return Err(self.syntax("missing closing ')'")),
                found => {
                    return Err(self.syntax(format!(
                        "expected a value, ',' or ')' in the values of key {key:?}, found {found}"
                    )));
                }
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn parse_error(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(parsed) => panic!("{s:?} parsed as {parsed}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        for empty in ["", "   ", "\t\n"] {
            let selector = sel(empty);
            assert!(selector.is_empty());
            assert!(selector.matches(&labels(&[])));
            assert!(selector.matches(&labels(&[("a", "b")])));
            assert_eq!(selector.to_string(), "");
        }
    }

    #[test]
    fn equality_requires_the_key() {
        let selector = sel("app=web");
        assert!(selector.matches(&labels(&[("app", "web")])));
        assert!(!selector.matches(&labels(&[("app", "db")])));
        assert!(!selector.matches(&labels(&[])));
        assert_eq!(sel("app==web"), selector);
    }

    #[test]
    fn not_equals_matches_missing_key() {
        let selector = sel("app!=web");
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("app", "db")])));
        assert!(!selector.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn set_based_in_requires_the_key() {
        let selector = sel("env in (prod, staging)");
        assert!(selector.matches(&labels(&[("env", "prod")])));
        assert!(selector.matches(&labels(&[("env", "staging")])));
        assert!(!selector.matches(&labels(&[("env", "dev")])));
        assert!(!selector.matches(&labels(&[])));
    }

    #[test]
    fn set_based_notin_matches_missing_key() {
        let selector = sel("env notin (prod,staging)");
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("env", "dev")])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn exists_and_does_not_exist_check_presence_only() {
        let exists = sel("canary");
        assert!(exists.matches(&labels(&[("canary", "")])));
        assert!(!exists.matches(&labels(&[])));
        let absent = sel("!canary");
        assert!(absent.matches(&labels(&[])));
        assert!(!absent.matches(&labels(&[("canary", "true")])));
    }

    #[test]
    fn all_requirements_must_match() {
        let selector = sel("app=web,tier!=db,env in (prod),!canary,owner");
        let base = [("app", "web"), ("env", "prod"), ("owner", "me")];
        assert!(selector.matches(&labels(&base)));
        let mut with_canary = base.to_vec();
        with_canary.push(("canary", "yes"));
        assert!(!selector.matches(&labels(&with_canary)));
        let mut db = base.to_vec();
        db.push(("tier", "db"));
        assert!(!selector.matches(&labels(&db)));
    }

    #[test]
    fn matching_works_on_btreemaps_and_references() {
        let map = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(sel("app=web").matches(&map));
        assert!(sel("app=web").matches(&&map));
    }

    #[test]
    fn whitespace_between_tokens_is_ignored() {
        let spaced = sel("  app =  web ,\tenv in(prod ,staging ) , ! canary , tier notin ( a )  ");
        assert_eq!(
            spaced,
            sel("app=web,env in (prod,staging),!canary,tier notin (a)")
        );
    }

    #[test]
    fn empty_values_follow_kubernetes() {
        assert_eq!(sel("a=").requirements()[0].values(), [""]);
        assert_eq!(sel("a=,b=c").requirements()[0].values(), [""]);
        assert_eq!(sel("a in ()").requirements()[0].values(), [""]);
        assert_eq!(sel("a in (x,)").requirements()[0].values(), ["", "x"]);
        assert_eq!(sel("a in (,x)").requirements()[0].values(), ["", "x"]);
        assert_eq!(
            sel("a in (x,,y)").requirements()[0].values(),
            ["", "x", "y"]
        );
        assert!(sel("a=").matches(&labels(&[("a", "")])));
        assert!(!sel("a=").matches(&labels(&[])));
    }

    #[test]
    fn keywords_are_usable_as_keys_and_values() {
        let selector = sel("in=notin,notin in (in)");
        assert!(selector.matches(&labels(&[("in", "notin"), ("notin", "in")])));
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        let selector = sel("z in (b,a,b), a==1, !m , k, y notin (q), x!=2");
        let canonical = "a=1,k,!m,x!=2,y notin (q),z in (a,b)";
        assert_eq!(selector.to_string(), canonical);
        assert_eq!(sel(canonical), selector);
        for tricky in ["a=", "a in ()", "a in (,x)", "example.com/key=Value_1.2-3"] {
            let once = sel(tricky);
            assert_eq!(sel(&once.to_string()), once, "{tricky}");
        }
    }

    #[test]
    fn requirements_expose_key_operator_and_sorted_values() {
        let selector = sel("b notin (y,x),a");
        let [a, b] = selector.requirements() else {
            panic!("expected two requirements");
        };
        assert_eq!(
            (a.key(), a.operator(), a.values()),
            ("a", Operator::Exists, &[][..])
        );
        assert_eq!(b.key(), "b");
        assert_eq!(b.operator(), Operator::NotIn);
        assert_eq!(b.values(), ["x", "y"]);
        assert_eq!(b.to_string(), "b notin (x,y)");
    }

    #[test]
    fn unclosed_value_list_reports_missing_paren() {
        assert_eq!(
            parse_error("app in (a"),
            "invalid label selector \"app in (a\": missing closing ')'"
        );
        assert_eq!(
            parse_error("app in ("),
            "invalid label selector \"app in (\": missing closing ')'"
        );
    }

    #[test]
    fn syntax_errors_name_what_was_found() {
        let cases = [
            ("a,", "trailing ','; expected a requirement after it"),
            (
                ",a",
                "empty requirement; expected a label key or '!' before ','",
            ),
            (
                "a,,b",
                "empty requirement; expected a label key or '!' before ','",
            ),
            (
                "a b",
                "expected '=', '==', '!=', 'in' or 'notin' after key \"a\", found \"b\"",
            ),
            (
                "a in b",
                "expected '(' after \"in\" for key \"a\", found \"b\"",
            ),
            (
                "a notin",
                "expected '(' after \"notin\" for key \"a\", found end of selector",
            ),
            (
                "a=(b)",
                "expected a value after '=' for key \"a\", found '('",
            ),
            (
                "a=b c",
                "expected ',' or end of selector after requirement \"a=b\", found \"c\"",
            ),
            (
                "a=b=c",
                "expected ',' or end of selector after requirement \"a=b\", found '='",
            ),
            (
                "!a=b",
                "expected ',' or end of selector after requirement \"!a\", found '='",
            ),
            ("!", "expected a label key after '!', found end of selector"),
            ("!!a", "expected a label key after '!', found '!'"),
            ("=a", "expected a label key or '!', found '='"),
            ("(a)", "expected a label key or '!', found '('"),
            (
                "a in (b c)",
                "expected ',' or ')' after value \"b\", found \"c\"",
            ),
            (
                "a in (b=c)",
                "expected ',' or ')' after value \"b\", found '='",
            ),
            (
                "a in ((b))",
                "expected a value, ',' or ')' in the values of key \"a\", found '('",
            ),
            (
                "a>1",
                "operator '>' after key \"a\" is not supported; use '=', '==', '!=', 'in' or 'notin'",
            ),
        ];
        for (input, reason) in cases {
            assert_eq!(
                parse_error(input),
                format!("invalid label selector {input:?}: {reason}"),
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_keys_and_values_are_rejected_with_kubernetes_reasons() {
        let err = parse_error("Bad_Prefix/app=web");
        assert!(
            err.starts_with("invalid label selector \"Bad_Prefix/app=web\": invalid label key \"Bad_Prefix/app\": prefix part a lowercase RFC 1123 subdomain"),
            "{err}"
        );
        let err = parse_error("app=-web");
        assert!(
            err.starts_with("invalid label selector \"app=-web\": invalid value \"-web\" for label key \"app\": a valid label must be an empty string"),
            "{err}"
        );
        assert!(parse_error("app in (ok,bad!)").contains("invalid"));
        assert!(
            parse_error(&format!("app={}", "v".repeat(64)))
                .contains("must be no more than 63 characters")
        );
        assert!(parse_error("!a/b/c").contains("invalid label key \"a/b/c\""));
        assert!(parse_error("ключ=x").contains("invalid label key \"ключ\""));
    }

    #[test]
    fn from_parts_combines_match_labels_and_expressions() {
        let match_labels = labels(&[("app", "web"), ("tier", "front")]);
        let expressions = vec![
            (
                "env".to_owned(),
                "In".to_owned(),
                vec!["prod".to_owned(), "staging".to_owned()],
            ),
            ("canary".to_owned(), "DoesNotExist".to_owned(), vec![]),
            ("zone".to_owned(), "NotIn".to_owned(), vec!["b".to_owned()]),
            ("owner".to_owned(), "Exists".to_owned(), vec![]),
        ];
        let selector = LabelSelector::from_parts(&match_labels, &expressions).unwrap();
        assert_eq!(
            selector.to_string(),
            "app=web,!canary,env in (prod,staging),owner,tier=front,zone notin (b)"
        );
        assert_eq!(sel(&selector.to_string()), selector);
    }

    #[test]
    fn from_parts_without_requirements_matches_everything() {
        let selector = LabelSelector::from_parts(&HashMap::new(), &[]).unwrap();
        assert!(selector.is_empty());
        assert!(selector.matches(&labels(&[("any", "thing")])));
        assert_eq!(selector, LabelSelector::everything());
    }

    #[test]
    fn from_parts_rejects_unknown_operators_by_name() {
        let expressions = vec![
            ("a".to_owned(), "Exists".to_owned(), vec![]),
            ("app".to_owned(), "Equals".to_owned(), vec!["x".to_owned()]),
        ];
        let err = LabelSelector::from_parts(&HashMap::new(), &expressions).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid label selector matchExpressions[1]: unknown operator \"Equals\" for key \"app\"; valid operators are In, NotIn, Exists and DoesNotExist"
        );
    }

    #[test]
    fn from_parts_checks_value_counts() {
        let no_values = vec![("app".to_owned(), "In".to_owned(), vec![])];
        assert_eq!(
            LabelSelector::from_parts(&HashMap::new(), &no_values)
                .unwrap_err()
                .to_string(),
            "invalid label selector matchExpressions[0]: operator In for key \"app\" needs at least one value"
        );
        let values = vec![(
            "app".to_owned(),
            "Exists".to_owned(),
            vec!["a".to_owned(), "b".to_owned()],
        )];
        assert_eq!(
            LabelSelector::from_parts(&HashMap::new(), &values)
                .unwrap_err()
                .to_string(),
            "invalid label selector matchExpressions[0]: operator Exists for key \"app\" takes no values, but 2 were given"
        );
    }

    #[test]
    fn from_parts_validates_keys_and_values() {
        let err = LabelSelector::from_parts(&labels(&[("app", "bad value")]), &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid label selector matchLabels: invalid value \"bad value\" for label key \"app\": a valid label"),
            "{err}"
        );
        let expressions = vec![("bad key".to_owned(), "Exists".to_owned(), vec![])];
        let err = LabelSelector::from_parts(&HashMap::new(), &expressions).unwrap_err();
        assert!(
            matches!(err, Error::InvalidKey { ref context, .. } if context == "matchExpressions[0]"),
            "{err}"
        );
    }

    #[test]
    fn field_selector_matches_equality_and_inequality() {
        let selector = FieldSelector::parse("spec.nodeName=node-1,status.phase!=Failed").unwrap();
        let pod = |node: &'static str, phase: &'static str| {
            move |field: &str| match field {
                "spec.nodeName" => Some(node),
                "status.phase" => Some(phase),
                _ => None,
            }
        };
        assert!(selector.matches(pod("node-1", "Running")));
        assert!(!selector.matches(pod("node-2", "Running")));
        assert!(!selector.matches(pod("node-1", "Failed")));
    }

    #[test]
    fn field_selector_treats_missing_fields_as_empty() {
        let missing = |_: &str| None::<String>;
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(missing)
        );
        assert!(
            !FieldSelector::parse("spec.nodeName=a")
                .unwrap()
                .matches(missing)
        );
        assert!(
            FieldSelector::parse("spec.nodeName!=a")
                .unwrap()
                .matches(missing)
        );
    }

    #[test]
    fn field_selector_accepts_double_equals_and_whitespace() {
        let selector: FieldSelector = " metadata.name == web , spec.nodeName = n1 ,"
            .parse()
            .unwrap();
        assert_eq!(selector.to_string(), "metadata.name=web,spec.nodeName=n1");
        assert!(FieldSelector::parse("").unwrap().is_empty());
        assert!(
            FieldSelector::parse("")
                .unwrap()
                .matches(|_: &str| None::<String>)
        );
    }

    #[test]
    fn field_selector_value_for_narrows_on_equality_only() {
        let selector = FieldSelector::parse("spec.nodeName=node-1,metadata.name!=x").unwrap();
        assert_eq!(selector.value_for("spec.nodeName"), Some("node-1"));
        assert_eq!(selector.value_for("metadata.name"), None);
        assert_eq!(selector.value_for("status.phase"), None);
        assert_eq!(
            FieldSelector::parse("spec.nodeName==")
                .unwrap()
                .value_for("spec.nodeName"),
            Some("")
        );
    }

    #[test]
    fn field_selector_unescapes_and_reescapes_values() {
        let selector = FieldSelector::parse(r"metadata.name=a\,b\=c\\d,x=y").unwrap();
        assert_eq!(selector.requirements()[0].value(), r"a,b=c\d");
        assert_eq!(selector.requirements()[0].operator(), FieldOperator::Equals);
        assert_eq!(selector.requirements()[0].field(), "metadata.name");
        assert_eq!(selector.to_string(), r"metadata.name=a\,b\=c\\d,x=y");
        assert_eq!(
            FieldSelector::parse(&selector.to_string()).unwrap(),
            selector
        );
    }

    #[test]
    fn field_selector_rejects_malformed_terms_precisely() {
        let message = |s: &str| FieldSelector::parse(s).unwrap_err().to_string();
        assert_eq!(
            message("spec.nodeName"),
            "invalid field selector \"spec.nodeName\": term \"spec.nodeName\" has no operator; expected 'field=value', 'field==value' or 'field!=value'"
        );
        assert_eq!(
            message("=x"),
            "invalid field selector \"=x\": term \"=x\" has no field name before the operator"
        );
        assert_eq!(
            message("a=b=c"),
            "invalid field selector \"a=b=c\": in the value of field \"a\": unescaped '='; write '\\=' for a literal '='"
        );
        assert_eq!(
            message(r"a=b\x"),
            "invalid field selector \"a=b\\\\x\": in the value of field \"a\": invalid escape sequence \"\\x\"; only '\\\\', '\\,' and '\\=' are allowed"
        );
        assert!(message(r"a=b\").contains("trailing '\\'"));
        assert!(message("!=x").contains("has no field name"));
    }

    #[test]
    fn field_names_are_paths_regression_fuzz_selectors() {
        // Found by the selectors fuzz target: "!   =" parsed as the field
        // "!" and printed as "!=", which means something else.
        let err = FieldSelector::parse("!          =   ").unwrap_err();
        assert!(err.to_string().contains("field name \"!\""), "{err}");
        assert!(FieldSelector::parse("a b=c").is_err());
        assert!(FieldSelector::parse("involvedObject.kind=Pod,spec.node-name_x/y=1").is_ok());
    }

    #[test]
    fn field_selector_parse_with_lists_supported_fields() {
        let allowed = ["metadata.name", "metadata.namespace", "spec.nodeName"];
        assert!(FieldSelector::parse_with("spec.nodeName=n1", &allowed).is_ok());
        assert_eq!(
            FieldSelector::parse_with("spec.nodeName=n1,spec.host=x", &allowed)
                .unwrap_err()
                .to_string(),
            "invalid field selector \"spec.nodeName=n1,spec.host=x\": field \"spec.host\" is not supported; supported fields: metadata.name, metadata.namespace, spec.nodeName"
        );
        assert!(
            FieldSelector::parse_with("a=b", &[])
                .unwrap_err()
                .to_string()
                .ends_with("supported fields: none")
        );
        assert!(FieldSelector::parse_with("", &[]).unwrap().is_empty());
    }

    #[test]
    fn parsers_never_panic_on_odd_input() {
        let inputs = [
            "\\",
            "é=é",
            "a=é",
            "(",
            ")",
            "!=",
            "==",
            "a in (é)",
            ",",
            "=",
            "\u{0}",
            "a\u{0}=b",
            "!(",
            "a notin ()",
            "a=\\,",
            "🦀 in (🦀)",
        ];
        for input in inputs {
            let _ = LabelSelector::parse(input);
            let _ = FieldSelector::parse(input);
            let _ = FieldSelector::parse_with(input, &["a"]);
        }
    }
}
