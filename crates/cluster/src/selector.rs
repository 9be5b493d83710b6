//! Which pods to tap: Kubernetes label selectors in kubectl's string syntax, and the
//! [`PodSelection`] that combines namespaces, namespace and pod selectors and explicit pods.
//!
//! The syntax and matching rules are those of `k8s.io/apimachinery/pkg/labels`:
//!
//! | requirement            | matches a pod whose labels                      |
//! |------------------------|-------------------------------------------------|
//! | `app=web`, `app==web`  | have `app` equal to `web`                       |
//! | `app!=web`             | have no `app`, or `app` not equal to `web`      |
//! | `tier in (a, b)`       | have `tier` equal to `a` or `b`                 |
//! | `tier notin (a, b)`    | have no `tier`, or `tier` neither `a` nor `b`   |
//! | `tier`                 | have a `tier` label                             |
//! | `!tier`                | have no `tier` label                            |
//!
//! Requirements are separated by commas and all must hold; an empty selector selects
//! everything. Keys are qualified names with an optional DNS subdomain prefix
//! (`example.com/tier`), values are at most 63 characters of `[A-Za-z0-9]`, `-`, `_`, `.`,
//! beginning and ending with a letter or digit, or empty. The set-based `>`/`<` operators of
//! the API library are not supported.
//!
//! Parsing reports every problem it finds, each with the column where it is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::inventory::{Inventory, Pod, PodRef};

/// The label Kubernetes puts on every namespace, holding the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Longest label value, and longest name part of a label key.
const MAX_NAME_LEN: usize = 63;
/// Longest DNS subdomain (the prefix of a label key).
const MAX_PREFIX_LEN: usize = 253;

/// Errors from parsing selectors or selecting pods.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector string is not valid; every problem found is listed.
    #[error("invalid label selector {selector:?}: {}", list(problems))]
    Invalid {
        /// The selector as given.
        selector: String,
        /// What is wrong with it, in order of position.
        problems: Vec<SelectorProblem>,
    },
    /// Explicitly selected pods that are not in the inventory.
    #[error("unknown pod(s) {}: not in the inventory", list(pods))]
    UnknownPods {
        /// Every explicitly selected pod the inventory does not have.
        pods: Vec<PodRef>,
    },
}

/// One problem in a selector string. `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorProblem {
    /// A token where the grammar does not allow it.
    #[error("column {column}: found {found}, expected {expected}")]
    Unexpected {
        /// Where the token starts.
        column: usize,
        /// The token, quoted, or `end of selector`.
        found: String,
        /// What would have been valid there.
        expected: &'static str,
    },
    /// A label key that is not a valid qualified name.
    #[error("column {column}: invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// Where the key starts.
        column: usize,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A label value that is not valid.
    #[error("column {column}: invalid label value {value:?}: {reason}")]
    InvalidValue {
        /// Where the value starts.
        column: usize,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An operator the Kubernetes API knows but podtap does not support (`>`, `<`).
    #[error("column {column}: operator '{operator}' is not supported")]
    UnsupportedOperator {
        /// Where the operator is.
        column: usize,
        /// The operator.
        operator: char,
    },
}

/// `a, b, c` from anything displayable.
fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a requirement compares a label with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `key=value` or `key==value`: the label is present and equals the value.
    Equals,
    /// `key!=value`: the label is absent or differs from the value.
    NotEquals,
    /// `key in (a,b)`: the label is present and one of the values.
    In,
    /// `key notin (a,b)`: the label is absent or none of the values.
    NotIn,
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
}

/// One requirement of a selector: a key, an operator and (for all but [`Operator::Exists`]
/// and [`Operator::DoesNotExist`]) values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted, without duplicates; one for `=`/`!=`, none for exists/does-not-exist.
    values: Vec<String>,
}

impl Requirement {
    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted, without duplicates.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let has_value = |v: &String| {
            self.values
                .binary_search_by(|x| x.as_str().cmp(v.as_str()))
                .is_ok()
        };
        match self.operator {
            Operator::Exists => labels.contains_key(&self.key),
            Operator::DoesNotExist => !labels.contains_key(&self.key),
            Operator::Equals | Operator::In => labels.get(&self.key).is_some_and(has_value),
            Operator::NotEquals | Operator::NotIn => {
                labels.get(&self.key).is_none_or(|v| !has_value(v))
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map_or("", String::as_str);
        match self.operator {
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={first}", self.key),
            Operator::NotEquals => write!(f, "{}!={first}", self.key),
            Operator::In | Operator::NotIn => {
                let op = if self.operator == Operator::In {
                    "in"
                } else {
                    "notin"
                };
                write!(f, "{} {op} (", self.key)?;
                for (i, v) in self.values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(v)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A Kubernetes label selector: requirements that must all hold.
///
/// [`Display`](fmt::Display) gives the canonical form: requirements sorted by key, `=` for
/// equality, set values sorted; parsing it gives the same selector back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    /// Sorted by key (stable: requirements on the same key keep their order).
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses kubectl's selector syntax (see the [module documentation](self)). Reports every
    /// problem found, not just the first.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser {
            tokens: lex(s),
            next: 0,
            problems: Vec::new(),
        };
        let mut requirements = parser.selector();
        if !parser.problems.is_empty() {
            return Err(SelectorError::Invalid {
                selector: s.to_string(),
                problems: parser.problems,
            });
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from the API's structured form (`matchLabels`, and
    /// `matchExpressions` of key, operator `In`/`NotIn`/`Exists`/`DoesNotExist`, values), with
    /// the same key and value rules as [`LabelSelector::parse`]. Returns every problem, each
    /// naming the field it is in (`matchLabels[KEY]`, `matchExpressions[I]`).
    pub fn from_api<'a>(
        match_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        match_expressions: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut requirements = Vec::new();
        for (key, value) in match_labels {
            let at = format!("matchLabels[{key}]");
            if let Err(why) = validate_key(key) {
                problems.push(format!("{at}: invalid label key {key:?}: {why}"));
            }
            if let Err(why) = validate_value(value) {
                problems.push(format!("{at}: invalid label value {value:?}: {why}"));
            }
            requirements.push(Requirement {
                key: key.to_string(),
                operator: Operator::Equals,
                values: vec![value.to_string()],
            });
        }
        for (i, (key, operator, values)) in match_expressions.into_iter().enumerate() {
            let at = format!("matchExpressions[{i}]");
            if let Err(why) = validate_key(key) {
                problems.push(format!("{at}: invalid label key {key:?}: {why}"));
            }
            let operator = match operator {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    problems.push(format!(
                        "{at}: operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    ));
                    continue;
                }
            };
            let wants_values = matches!(operator, Operator::In | Operator::NotIn);
            if wants_values && values.is_empty() {
                problems.push(format!("{at}: {operator:?} needs at least one value"));
            }
            if !wants_values && !values.is_empty() {
                problems.push(format!("{at}: {operator:?} takes no values"));
            }
            for v in values {
                if let Err(why) = validate_value(v) {
                    problems.push(format!("{at}: invalid label value {v:?}: {why}"));
                }
            }
            // As the parser keeps them: sorted, once each.
            let mut values = values.to_vec();
            values.sort();
            values.dedup();
            requirements.push(Requirement {
                key: key.to_string(),
                operator,
                values,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// The selector that selects everything (the empty selector).
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether this selector has no requirements, so selects everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for LabelSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LabelSelector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        LabelSelector::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which pods to tap: all conditions ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSelection {
    /// Namespaces whose pods are tapped; empty means any namespace.
    pub namespaces: Vec<String>,
    /// Labels the pod's namespace must have (with the implicit
    /// `kubernetes.io/metadata.name=<namespace>`).
    pub namespace_selector: LabelSelector,
    /// Labels the pod must have.
    pub pod_selector: LabelSelector,
    /// Explicit pods; empty means not restricted to a list.
    pub pods: Vec<PodRef>,
}

impl PodSelection {
    /// Pods of `inventory` (optionally only those on `node`) that the selection picks, in
    /// inventory order. Explicit pods that are not in the inventory are an error
    /// ([`SelectorError::UnknownPods`] listing every unknown pod); an explicit pod on another
    /// node is simply not picked. Namespaces need not be known to the inventory: a namespace
    /// without pods selects nothing.
    pub fn select<'a>(
        &self,
        inventory: &'a Inventory,
        node: Option<&str>,
    ) -> Result<Vec<&'a Pod>, SelectorError> {
        let mut unknown: Vec<PodRef> = Vec::new();
        for pod in &self.pods {
            if inventory.pod(pod).is_none() && !unknown.contains(pod) {
                unknown.push(pod.clone());
            }
        }
        if !unknown.is_empty() {
            return Err(SelectorError::UnknownPods { pods: unknown });
        }

        // The namespace selector's verdict, once per namespace.
        let mut namespace_verdicts: BTreeMap<&str, bool> = BTreeMap::new();
        let mut namespace_matches = |namespace: &'a str| {
            if self.namespace_selector.is_everything() {
                return true;
            }
            *namespace_verdicts.entry(namespace).or_insert_with(|| {
                let mut labels = inventory.namespace_labels(namespace);
                labels.insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
                self.namespace_selector.matches(&labels)
            })
        };

        Ok(inventory
            .pods
            .iter()
            .filter(|pod| {
                node.is_none_or(|n| pod.node == n)
                    && (self.namespaces.is_empty() || self.namespaces.contains(&pod.namespace))
                    && (self.pods.is_empty()
                        || self
                            .pods
                            .iter()
                            .any(|r| r.namespace == pod.namespace && r.name == pod.name))
                    && self.pod_selector.matches(&pod.labels)
                    && namespace_matches(&pod.namespace)
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer and parser, after k8s.io/apimachinery/pkg/labels/selector.go.

/// A token of the selector syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A run of anything but whitespace and the symbols below: keys, values, `in`, `notin`.
    Word(&'a str),
    /// `!`
    Not,
    /// `=`
    Equals,
    /// `==`
    DoubleEquals,
    /// `!=`
    NotEquals,
    /// `,`
    Comma,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `>` or `<` (unsupported).
    Compare(char),
    /// End of the selector.
    End,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Not => f.write_str("'!'"),
            Tok::Equals => f.write_str("'='"),
            Tok::DoubleEquals => f.write_str("'=='"),
            Tok::NotEquals => f.write_str("'!='"),
            Tok::Comma => f.write_str("','"),
            Tok::Open => f.write_str("'('"),
            Tok::Close => f.write_str("')'"),
            Tok::Compare(c) => write!(f, "'{c}'"),
            Tok::End => f.write_str("end of selector"),
        }
    }
}

/// A token and the column (in characters, from 1) where it starts.
#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok<'a>,
    column: usize,
}

fn is_symbol(c: char) -> bool {
    matches!(c, '!' | '=' | ',' | '(' | ')' | '>' | '<')
}

/// Splits a selector into tokens; always ends with [`Tok::End`].
fn lex(s: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut chars = s.char_indices().peekable();
    let mut column = 0;
    while let Some((start, c)) = chars.next() {
        column += 1;
        let at = column;
        let tok = match c {
            c if c.is_whitespace() => continue,
            '!' | '=' if chars.peek().is_some_and(|&(_, n)| n == '=') => {
                chars.next();
                column += 1;
                if c == '!' {
                    Tok::NotEquals
                } else {
                    Tok::DoubleEquals
                }
            }
            '!' => Tok::Not,
            '=' => Tok::Equals,
            ',' => Tok::Comma,
            '(' => Tok::Open,
            ')' => Tok::Close,
            '>' | '<' => Tok::Compare(c),
            _ => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, n)) = chars.peek() {
                    if n.is_whitespace() || is_symbol(n) {
                        break;
                    }
                    chars.next();
                    column += 1;
                    end = i + n.len_utf8();
                }
                Tok::Word(&s[start..end])
            }
        };
        tokens.push(Token { tok, column: at });
    }
    tokens.push(Token {
        tok: Tok::End,
        column: column + 1,
    });
    tokens
}

/// Recursive-descent parser that records problems and carries on after them.
struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
    problems: Vec<SelectorProblem>,
}

/// A problem that ends the current requirement; the parser skips to the next one.
struct Abandon {
    /// Whether the parser is inside a value list's parentheses.
    in_parens: bool,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        // `lex` always ends with End, and `bump` never moves past it.
        self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token<'a> {
        let t = self.peek();
        if t.tok != Tok::End {
            self.next += 1;
        }
        t
    }

    /// Records that `t` was found where `expected` was, and gives up on the requirement.
    fn unexpected(&mut self, t: Token<'a>, expected: &'static str, in_parens: bool) -> Abandon {
        self.problems.push(SelectorProblem::Unexpected {
            column: t.column,
            found: t.tok.to_string(),
            expected,
        });
        Abandon { in_parens }
    }

    /// `selector := <empty> | requirement (',' requirement)*`
    fn selector(&mut self) -> Vec<Requirement> {
        let mut requirements = Vec::new();
        if self.peek().tok == Tok::End {
            return requirements;
        }
        loop {
            match self.requirement() {
                Ok(r) => requirements.push(r),
                Err(abandon) => self.skip_requirement(abandon),
            }
            // `requirement` and `skip_requirement` stop at a comma or the end.
            if self.bump().tok == Tok::End {
                return requirements;
            }
        }
    }

    /// Skips to the comma that ends the abandoned requirement, or to the end.
    fn skip_requirement(&mut self, abandon: Abandon) {
        let mut depth = usize::from(abandon.in_parens);
        loop {
            match self.peek().tok {
                Tok::End => return,
                Tok::Comma if depth == 0 => return,
                Tok::Open => depth += 1,
                Tok::Close => depth = depth.saturating_sub(1),
                _ => {}
            }
            self.bump();
        }
    }

    /// `requirement := '!' key | key | key ('=' | '==' | '!=') value? | key ('in' | 'notin') values`
    fn requirement(&mut self) -> Result<Requirement, Abandon> {
        // Tokens are consumed once accepted, so that a stray ',' still separates requirements
        // when recovering.
        let first = self.peek();
        let (key, operator, values) = match first.tok {
            Tok::Not => {
                self.bump();
                let t = self.peek();
                let Tok::Word(key) = t.tok else {
                    return Err(self.unexpected(t, "a label key after '!'", false));
                };
                self.bump();
                self.check_key(key, t.column);
                (key, Operator::DoesNotExist, Vec::new())
            }
            Tok::Word(key) => {
                self.bump();
                self.check_key(key, first.column);
                let op = self.peek();
                match op.tok {
                    Tok::Comma | Tok::End => (key, Operator::Exists, Vec::new()),
                    Tok::Equals | Tok::DoubleEquals | Tok::NotEquals => {
                        self.bump();
                        let operator = if op.tok == Tok::NotEquals {
                            Operator::NotEquals
                        } else {
                            Operator::Equals
                        };
                        let t = self.peek();
                        let value = match t.tok {
                            Tok::Word(v) => {
                                self.bump();
                                self.check_value(v, t.column);
                                v
                            }
                            Tok::Comma | Tok::End => "",
                            _ => {
                                return Err(self.unexpected(
                                    t,
                                    "a label value, ',' or end of selector",
                                    false,
                                ));
                            }
                        };
                        (key, operator, vec![value.to_string()])
                    }
                    Tok::Word("in") => {
                        self.bump();
                        (key, Operator::In, self.values()?)
                    }
                    Tok::Word("notin") => {
                        self.bump();
                        (key, Operator::NotIn, self.values()?)
                    }
                    Tok::Compare(operator) => {
                        self.problems.push(SelectorProblem::UnsupportedOperator {
                            column: op.column,
                            operator,
                        });
                        return Err(Abandon { in_parens: false });
                    }
                    _ => {
                        return Err(self.unexpected(
                            op,
                            "an operator ('=', '==', '!=', 'in', 'notin'), ',' or end of selector",
                            false,
                        ));
                    }
                }
            }
            _ => return Err(self.unexpected(first, "a label key or '!'", false)),
        };
        let t = self.peek();
        if !matches!(t.tok, Tok::Comma | Tok::End) {
            return Err(self.unexpected(t, "',' or end of selector", false));
        }
        let mut values = values;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    /// `values := '(' value? (',' value?)* ')'`; an omitted value is the empty value, as in
    /// Kubernetes (`()` is the set holding only "").
    fn values(&mut self) -> Result<Vec<String>, Abandon> {
        let t = self.peek();
        if t.tok != Tok::Open {
            return Err(self.unexpected(t, "'('", false));
        }
        self.bump();
        let mut values = Vec::new();
        loop {
            let t = self.peek();
            match t.tok {
                Tok::Word(v) => {
                    self.bump();
                    self.check_value(v, t.column);
                    values.push(v.to_string());
                }
                Tok::Comma | Tok::Close => values.push(String::new()),
                _ => return Err(self.unexpected(t, "a label value, ',' or ')'", true)),
            }
            let t = self.peek();
            match t.tok {
                Tok::Comma => {
                    self.bump();
                }
                Tok::Close => {
                    self.bump();
                    return Ok(values);
                }
                _ => return Err(self.unexpected(t, "',' or ')'", true)),
            }
        }
    }

    fn check_key(&mut self, key: &str, column: usize) {
        if let Err(reason) = validate_key(key) {
            self.problems.push(SelectorProblem::InvalidKey {
                column,
                key: key.to_string(),
                reason,
            });
        }
    }

    fn check_value(&mut self, value: &str, column: usize) {
        if let Err(reason) = validate_value(value) {
            self.problems.push(SelectorProblem::InvalidValue {
                column,
                value: value.to_string(),
                reason,
            });
        }
    }
}

/// Checks a label key like Kubernetes' `IsQualifiedName`: `[prefix/]name`, the prefix a DNS
/// subdomain, the name a label-style name.
fn validate_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            if name.contains('/') {
                return Err("a key holds at most one '/' (prefix/name)");
            }
            validate_dns_subdomain(prefix)?;
            name
        }
    };
    if name.is_empty() {
        return Err("the name part must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("the name part must be 63 characters or fewer");
    }
    if !is_label_name(name) {
        return Err(
            "the name part must consist of letters, digits, '-', '_' or '.', and begin and end with a letter or digit",
        );
    }
    Ok(())
}

/// Checks a label value like Kubernetes' `IsValidLabelValue`.
fn validate_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_NAME_LEN {
        return Err("must be 63 characters or fewer");
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(
            "must be empty or consist of letters, digits, '-', '_' or '.', and begin and end with a letter or digit",
        );
    }
    Ok(())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Kubernetes' `IsDNS1123Subdomain`, for key prefixes.
fn validate_dns_subdomain(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("the prefix before '/' must not be empty");
    }
    if prefix.len() > MAX_PREFIX_LEN {
        return Err("the prefix must be 253 characters or fewer");
    }
    // Each dot-separated label: [a-z0-9]([-a-z0-9]*[a-z0-9])?
    let ok = prefix.split('.').all(|label| {
        let b = label.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
                alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
            }
            _ => false,
        }
    });
    if !ok {
        return Err(
            "the prefix must be a DNS subdomain: lowercase letters, digits, '-' and '.', each part beginning and ending with a letter or digit",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Cni, Namespace, Node};
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn problems(s: &str) -> Vec<SelectorProblem> {
        match LabelSelector::parse(s) {
            Err(SelectorError::Invalid { selector, problems }) => {
                assert_eq!(selector, s);
                problems
            }
            other => panic!("{s:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_form_to_its_canonical_text() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("app=web", "app=web"),
            ("app==web", "app=web"),
            (" app = web ", "app=web"),
            ("app!=web", "app!=web"),
            ("app=", "app="),
            ("tier in (b,a)", "tier in (a,b)"),
            ("tier in(a, b, a)", "tier in (a,b)"),
            ("tier notin ( a , b )", "tier notin (a,b)"),
            ("tier in ()", "tier in ()"),
            ("tier in (a,)", "tier in (,a)"),
            ("tier", "tier"),
            ("!tier", "!tier"),
            ("! tier", "!tier"),
            ("z=1,a=2,!m", "a=2,!m,z=1"),
            (
                "example.com/tier=db,app.kubernetes.io/name in (x)",
                "app.kubernetes.io/name in (x),example.com/tier=db",
            ),
            (
                "in in (in),notin notin (notin)",
                "in in (in),notin notin (notin)",
            ),
            ("k=A-b_c.9", "k=A-b_c.9"),
        ];
        for (input, canonical) in cases {
            let s = sel(input);
            assert_eq!(s.to_string(), canonical, "{input:?}");
            assert_eq!(sel(canonical), s, "{canonical:?} re-parsed");
            assert_eq!(s.is_everything(), canonical.is_empty());
        }
    }

    #[test]
    fn matches_like_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        // (selector, web, db, none): the verdicts kubectl gives for these label sets.
        let cases = [
            ("", true, true, true),
            ("app=web", true, false, false),
            ("app==web", true, false, false),
            ("app!=web", false, true, true),
            ("tier in (front,back)", true, false, false),
            ("tier notin (front,back)", false, true, true),
            ("tier", true, false, false),
            ("!tier", false, true, true),
            ("app,!tier", false, true, false),
            ("app in (web,db),tier!=back", true, true, false),
            ("app=", false, false, false),
            ("app!=", true, true, true),
            ("tier in ()", false, false, false),
        ];
        for (s, w, d, n) in cases {
            let s = sel(s);
            assert_eq!(
                (s.matches(&web), s.matches(&db), s.matches(&none)),
                (w, d, n),
                "{s}"
            );
        }
        assert!(sel("v=").matches(&labels(&[("v", "")])));
    }

    #[test]
    fn reports_every_problem_with_its_column() {
        assert_eq!(
            problems("app=web,,tier in (a b),-bad=x,ok=Not_Ok!,x>1"),
            vec![
                SelectorProblem::Unexpected {
                    column: 9,
                    found: "','".into(),
                    expected: "a label key or '!'",
                },
                SelectorProblem::Unexpected {
                    column: 21,
                    found: "'b'".into(),
                    expected: "',' or ')'",
                },
                SelectorProblem::InvalidKey {
                    column: 24,
                    key: "-bad".into(),
                    reason: "the name part must consist of letters, digits, '-', '_' or '.', and begin and end with a letter or digit",
                },
                SelectorProblem::Unexpected {
                    column: 40,
                    found: "'!'".into(),
                    expected: "',' or end of selector",
                },
                SelectorProblem::UnsupportedOperator {
                    column: 43,
                    operator: '>',
                },
            ]
        );
        // A stray token does not swallow the requirement after it.
        let columns = |s| {
            problems(s)
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            columns("!,b=-"),
            [
                "column 2: found ',', expected a label key after '!'",
                "column 5: invalid label value \"-\": must be empty or consist of letters, digits, '-', '_' or '.', and begin and end with a letter or digit",
            ]
        );
        assert_eq!(
            columns("a in ,b c"),
            [
                "column 6: found ',', expected '('",
                "column 9: found 'c', expected an operator ('=', '==', '!=', 'in', 'notin'), ',' or end of selector",
            ]
        );
        assert_eq!(
            columns("a in (x"),
            ["column 8: found end of selector, expected ',' or ')'"]
        );
        let err = LabelSelector::parse("a=b,").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid label selector \"a=b,\": column 5: found end of selector, expected a label key or '!'"
        );
    }

    #[test]
    fn validates_keys_and_values_like_kubernetes() {
        let long = "a".repeat(64);
        let ok63 = "a".repeat(63);
        let long_prefix = format!("{}.com/x", "a".repeat(250));
        for good in [
            "a",
            "A",
            "a.b-c_d",
            "example.com/a",
            "a.b.c/D",
            "1-2/3",
            ok63.as_str(),
        ] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
        for bad in [
            "-a",
            "a-",
            "a/b/c",
            "/a",
            "a/",
            "Example.com/a",
            "ex_ample.com/a",
            ".com/a",
            "a..b/c",
            "é",
            long.as_str(),
            long_prefix.as_str(),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        for good in ["", "a", "a_b.c-D", ok63.as_str()] {
            assert!(validate_value(good).is_ok(), "{good:?}");
        }
        for bad in ["_a", "a.", "a b", "a/b", long.as_str()] {
            assert!(validate_value(bad).is_err(), "{bad:?}");
        }
        // Validation problems go through parsing too, all of them.
        let p = problems(&format!("{long}=x,k in (ok,{long})"));
        assert!(
            matches!(
                &p[..],
                [
                    SelectorProblem::InvalidKey { column: 1, .. },
                    SelectorProblem::InvalidValue { column: 77, .. }
                ]
            ),
            "{p:?}"
        );
    }

    #[test]
    fn the_api_form_selects_like_the_string_form_and_lists_every_problem() {
        let values = ["web".to_string(), "api".to_string()];
        let none: [String; 0] = [];
        let api = LabelSelector::from_api(
            [("team", "shop")],
            [
                ("tier", "In", &values[..]),
                ("canary", "DoesNotExist", &none[..]),
            ],
        )
        .unwrap();
        assert_eq!(api, sel("team=shop,tier in (web,api),!canary"));
        assert!(LabelSelector::from_api([], []).unwrap().is_everything());

        let bad = ["-x".to_string()];
        let problems = LabelSelector::from_api(
            [("bad key!", "ok"), ("app", "not ok!")],
            [
                ("tier", "Gt", &bad[..]),
                ("tier", "In", &none[..]),
                ("tier", "Exists", &bad[..]),
            ],
        )
        .unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert!(problems[0].starts_with("matchLabels[bad key!]: invalid label key"));
        assert!(problems[1].starts_with("matchLabels[app]: invalid label value"));
        assert!(problems[2].contains("matchExpressions[0]: operator \"Gt\""));
        assert!(problems[3].contains("matchExpressions[1]: In needs at least one value"));
        assert!(problems[4].contains("matchExpressions[2]: Exists takes no values"));
        assert!(problems[5].contains("matchExpressions[2]: invalid label value \"-x\""));
    }

    #[test]
    fn serde_uses_the_string_form() {
        let s = sel("b in (y,x),a");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"a,b in (x,y)\"");
        assert_eq!(serde_json::from_str::<LabelSelector>(&json).unwrap(), s);
        let err = serde_json::from_str::<LabelSelector>("\"a in b\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("column 6: found 'b', expected '('"),
            "{err}"
        );
    }

    fn inventory() -> Inventory {
        let pod = |ns: &str, name: &str, node: &str, app: &str| Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(&[("app", app)]),
            node: node.into(),
            ip: "10.0.0.1".into(),
            host_veth: format!("veth-{name}"),
            host_network: false,
            netns: None,
            tap_id: None,
        };
        let node = |name: &str| Node {
            name: name.into(),
            netns: None,
            cni: Cni::Flannel,
            pod_cidr: "10.244.0.0/24".into(),
            underlay_ip: "198.18.0.1".into(),
        };
        Inventory {
            cluster: "lab".into(),
            nodes: vec![node("n1"), node("n2")],
            namespaces: vec![
                Namespace {
                    name: "shop".into(),
                    labels: labels(&[("team", "retail"), ("env", "prod")]),
                },
                Namespace {
                    name: "dev".into(),
                    labels: labels(&[("env", "dev")]),
                },
            ],
            pods: vec![
                pod("shop", "cart-1", "n1", "cart"),
                pod("shop", "web-1", "n2", "web"),
                pod("dev", "web-2", "n1", "web"),
                pod("other", "web-3", "n1", "web"),
            ],
        }
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter().map(|p| p.key().to_string()).collect()
    }

    #[test]
    fn selection_combines_all_conditions() {
        let inv = inventory();
        let pick = |s: &PodSelection, node| names(&s.select(&inv, node).unwrap());

        let all = PodSelection::default();
        assert_eq!(
            pick(&all, None),
            ["shop/cart-1", "shop/web-1", "dev/web-2", "other/web-3"]
        );
        assert_eq!(
            pick(&all, Some("n1")),
            ["shop/cart-1", "dev/web-2", "other/web-3"]
        );

        let web = PodSelection {
            pod_selector: sel("app=web"),
            ..Default::default()
        };
        assert_eq!(pick(&web, None), ["shop/web-1", "dev/web-2", "other/web-3"]);

        let in_namespaces = PodSelection {
            namespaces: vec!["dev".into(), "other".into()],
            ..web.clone()
        };
        assert_eq!(
            pick(&in_namespaces, Some("n1")),
            ["dev/web-2", "other/web-3"]
        );

        // Namespace labels, and the implicit name label (also on namespaces the inventory
        // does not list).
        let prod = PodSelection {
            namespace_selector: sel("env=prod"),
            ..Default::default()
        };
        assert_eq!(pick(&prod, None), ["shop/cart-1", "shop/web-1"]);
        let not_prod = PodSelection {
            namespace_selector: sel("env!=prod"),
            ..Default::default()
        };
        assert_eq!(pick(&not_prod, None), ["dev/web-2", "other/web-3"]);
        let by_name = PodSelection {
            namespace_selector: sel("kubernetes.io/metadata.name in (other,dev)"),
            ..web.clone()
        };
        assert_eq!(pick(&by_name, None), ["dev/web-2", "other/web-3"]);

        let explicit = PodSelection {
            pods: vec![
                PodRef::parse("other/web-3").unwrap(),
                PodRef::parse("shop/web-1").unwrap(),
            ],
            ..Default::default()
        };
        // Inventory order, and only those on the node asked for.
        assert_eq!(pick(&explicit, None), ["shop/web-1", "other/web-3"]);
        assert_eq!(pick(&explicit, Some("n1")), ["other/web-3"]);
    }

    #[test]
    fn unknown_explicit_pods_are_all_reported() {
        let inv = inventory();
        let s = PodSelection {
            pods: vec![
                PodRef::parse("shop/nope").unwrap(),
                PodRef::parse("shop/web-1").unwrap(),
                PodRef::parse("x/y").unwrap(),
                PodRef::parse("shop/nope").unwrap(),
            ],
            ..Default::default()
        };
        let err = s.select(&inv, None).unwrap_err();
        assert_eq!(
            err,
            SelectorError::UnknownPods {
                pods: vec![
                    PodRef::parse("shop/nope").unwrap(),
                    PodRef::parse("x/y").unwrap()
                ]
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown pod(s) shop/nope; x/y: not in the inventory"
        );
    }

    /// A requirement as the property tests generate it, with its own reference semantics.
    #[derive(Debug, Clone)]
    struct Spec {
        key: String,
        operator: Operator,
        values: Vec<String>,
        double_equals: bool,
    }

    impl Spec {
        fn text(&self) -> String {
            let set = |op| format!("{} {op} ( {} )", self.key, self.values.join(" , "));
            match self.operator {
                Operator::Exists => self.key.clone(),
                Operator::DoesNotExist => format!("! {}", self.key),
                Operator::Equals if self.double_equals => {
                    format!("{} == {}", self.key, self.values[0])
                }
                Operator::Equals => format!("{}={}", self.key, self.values[0]),
                Operator::NotEquals => format!("{} !={}", self.key, self.values[0]),
                Operator::In => set("in"),
                Operator::NotIn => set("notin"),
            }
        }

        /// The Kubernetes rule, written out independently of `Requirement::matches`.
        fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
            let value = labels.get(&self.key);
            let listed = value.is_some_and(|v| self.values.contains(v));
            match self.operator {
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
                Operator::Equals | Operator::In => listed,
                Operator::NotEquals | Operator::NotIn => !listed,
            }
        }
    }

    fn key() -> impl Strategy<Value = String> {
        let name = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?";
        prop_oneof![
            // Few distinct keys, so that generated labels hit them.
            prop::sample::select(vec!["app", "tier", "example.com/team", "in", "notin"])
                .prop_map(str::to_string),
            name,
            (
                "[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?){0,2}",
                name
            )
                .prop_map(|(p, n)| format!("{p}/{n}")),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec!["", "a", "b", "web"]).prop_map(str::to_string),
            "([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?",
        ]
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            key(),
            prop::sample::select(vec![
                Operator::Equals,
                Operator::NotEquals,
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ]),
            prop::collection::vec(value(), 1..4),
            any::<bool>(),
        )
            .prop_map(|(key, operator, mut values, double_equals)| {
                match operator {
                    Operator::Exists | Operator::DoesNotExist => values.clear(),
                    Operator::Equals | Operator::NotEquals => values.truncate(1),
                    Operator::In | Operator::NotIn => {}
                }
                Spec {
                    key,
                    operator,
                    values,
                    double_equals,
                }
            })
    }

    fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(key(), value(), 0..5)
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(specs in prop::collection::vec(spec(), 0..5)) {
            let text = specs.iter().map(Spec::text).collect::<Vec<_>>().join(" , ");
            let parsed = LabelSelector::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.requirements().len(), specs.len());
            let canonical = parsed.to_string();
            let reparsed = LabelSelector::parse(&canonical).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&reparsed, &parsed);
            prop_assert_eq!(reparsed.to_string(), canonical);
        }

        #[test]
        fn matching_agrees_with_the_reference_rule(
            specs in prop::collection::vec(spec(), 0..4),
            labels in label_set(),
        ) {
            let text = specs.iter().map(Spec::text).collect::<Vec<_>>().join(",");
            let parsed = sel(&text);
            prop_assert_eq!(parsed.matches(&labels), specs.iter().all(|s| s.holds(&labels)));
        }

        #[test]
        fn parsing_any_string_never_panics(s in "[ a-z=!,()<>/._-]{0,40}|\\PC{0,20}") {
            match LabelSelector::parse(&s) {
                Ok(parsed) => prop_assert_eq!(sel(&parsed.to_string()), parsed),
                Err(SelectorError::Invalid { problems, .. }) => prop_assert!(!problems.is_empty()),
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
