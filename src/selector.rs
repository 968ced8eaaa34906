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
//! string. Field selectors are in `selector/field.rs`, re-exported here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;

use thiserror::Error;

use crate::validation;

mod field;

pub use field::{FieldOperator, FieldRequirement, FieldSelector};

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
        reason: validation::Invalid,
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
        reason: validation::Invalid,
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

#[cfg(test)]
mod tests;
