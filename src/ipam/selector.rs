//! Calico's selector language, as used by IPPool `nodeSelector` and `namespaceSelector`.
//! Pure: no I/O. A hand-written recursive-descent parser; errors say what was expected and where.
//!
//! Grammar (precedence low to high):
//! ```text
//! selector := or EOF            (empty text = all())
//! or       := and ( "||" and )*
//! and      := unary ( "&&" unary )*
//! unary    := "!" unary | primary
//! primary  := "(" or ")" | "all()" | "global()" | "has(" label ")"
//!           | label ( "==" | "!=" | "contains" | "starts with" | "ends with" ) string
//!           | label [ "not" ] "in" "{" [ string ( "," string )* ] "}"
//! label    := [A-Za-z0-9_./-]+     string := '...' | "..."
//! ```
//! Lexing follows Calico's tokenizer (libcalico-go `selector/tokenizer`) exactly, because admission
//! (`crate::api::selector_rule`) and Calico must agree on what is a selector:
//! * only space and tab separate tokens; a newline, CR or Unicode space outside a string is an error;
//! * `has(`, `all(` and `global(` are one token: no space before their `(`;
//! * after a label the operator words are matched as prefixes (`a startswith 'x'`,
//!   `a notin {'x'}` are valid), and a set may end with a comma (`{'a',}`).
//!
//! Semantics follow Calico: a missing label makes `==`, `in`, `contains`, ... false and `!=`,
//! `not in` true.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    All,
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub expr: Expr,
}

/// A parse error: the selector text, the byte offset and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: at position {pos}: {message}")]
pub struct SelectorError {
    pub input: String,
    pub pos: usize,
    pub message: String,
}

impl Selector {
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { s: input, pos: 0 };
        p.skip_ws();
        if p.at_end() {
            return Ok(Selector { expr: Expr::All });
        }
        let expr = p.or()?;
        p.skip_ws();
        if !p.at_end() {
            return Err(p.err(format!("unexpected {}", p.describe_here())));
        }
        Ok(Selector { expr })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        eval(&self.expr, labels)
    }

    /// Whether the result can depend on labels at all (`all()`, `!all()` cannot), so callers can
    /// skip reading a Node's labels.
    pub fn uses_labels(&self) -> bool {
        fn uses(e: &Expr) -> bool {
            match e {
                Expr::All | Expr::Global => false,
                Expr::Not(a) => uses(a),
                Expr::And(a, b) | Expr::Or(a, b) => uses(a) || uses(b),
                _ => true,
            }
        }
        uses(&self.expr)
    }
}

impl Selector {
    /// The label keys the result can depend on: a node's other labels never change it.
    pub fn label_keys(&self) -> BTreeSet<String> {
        fn walk(e: &Expr, out: &mut BTreeSet<String>) {
            match e {
                Expr::All | Expr::Global => {}
                Expr::Has(k)
                | Expr::Eq(k, _)
                | Expr::Ne(k, _)
                | Expr::In(k, _)
                | Expr::NotIn(k, _)
                | Expr::Contains(k, _)
                | Expr::StartsWith(k, _)
                | Expr::EndsWith(k, _) => {
                    out.insert(k.clone());
                }
                Expr::Not(a) => walk(a, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.expr, &mut out);
        out
    }
}

fn eval(e: &Expr, l: &BTreeMap<String, String>) -> bool {
    match e {
        Expr::All | Expr::Global => true,
        Expr::Has(k) => l.contains_key(k),
        Expr::Eq(k, v) => l.get(k) == Some(v),
        Expr::Ne(k, v) => l.get(k) != Some(v),
        Expr::In(k, set) => l.get(k).is_some_and(|v| set.contains(v)),
        Expr::NotIn(k, set) => l.get(k).is_none_or(|v| !set.contains(v)),
        Expr::Contains(k, s) => l.get(k).is_some_and(|v| v.contains(s.as_str())),
        Expr::StartsWith(k, s) => l.get(k).is_some_and(|v| v.starts_with(s.as_str())),
        Expr::EndsWith(k, s) => l.get(k).is_some_and(|v| v.ends_with(s.as_str())),
        Expr::Not(a) => !eval(a, l),
        Expr::And(a, b) => eval(a, l) && eval(b, l),
        Expr::Or(a, b) => eval(a, l) || eval(b, l),
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Calico's tokenizer skips these two and nothing else between tokens.
pub fn is_selector_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start_matches(is_selector_space);
        self.pos = self.s.len() - trimmed.len();
    }
    fn err(&self, message: String) -> SelectorError {
        SelectorError {
            input: self.s.to_string(),
            pos: self.pos,
            message,
        }
    }
    fn describe_here(&self) -> String {
        match self.rest().chars().next() {
            None => "end of selector".into(),
            Some(_) => {
                let snippet: String = self.rest().chars().take(12).collect();
                format!("{snippet:?}")
            }
        }
    }
    /// Consumes `tok` (after whitespace) if present.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    /// Consumes `c` only when it comes next, with no space before it.
    fn eat_now(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, tok: &str, what: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(format!("expected {what}, found {}", self.describe_here())))
        }
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SelectorError> {
        self.skip_ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SelectorError> {
        self.skip_ws();
        if self.eat("(") {
            let e = self.or()?;
            self.expect(")", "')' closing the parenthesis")?;
            return Ok(e);
        }
        if self.at_end() {
            return Err(self.err(
                "expected an expression (a label, all(), has(...), '!' or '('), found end of selector".into(),
            ));
        }
        let start = self.pos;
        let label = self.label()?;
        match label.as_str() {
            // `has (x)` is the label `has` followed by a parenthesis in Calico: an error.
            "all" | "global" if self.eat_now('(') => {
                self.expect(")", &format!("')' after {label}("))?;
                return Ok(if label == "all" { Expr::All } else { Expr::Global });
            }
            "has" if self.eat_now('(') => {
                let k = self.label()?;
                self.expect(")", "')' closing has(")?;
                return Ok(Expr::Has(k));
            }
            _ => {}
        }
        if self.eat("==") {
            return Ok(Expr::Eq(label, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(label, self.string()?));
        }
        if self.eat("contains") {
            return Ok(Expr::Contains(label, self.string()?));
        }
        if self.eat("starts") {
            if !self.eat("with") {
                return Err(self.err("expected 'with' after 'starts'".into()));
            }
            return Ok(Expr::StartsWith(label, self.string()?));
        }
        if self.eat("ends") {
            if !self.eat("with") {
                return Err(self.err("expected 'with' after 'ends'".into()));
            }
            return Ok(Expr::EndsWith(label, self.string()?));
        }
        if self.eat("not") {
            if !self.eat("in") {
                return Err(self.err("expected 'in' after 'not'".into()));
            }
            return Ok(Expr::NotIn(label, self.set()?));
        }
        if self.eat("in") {
            return Ok(Expr::In(label, self.set()?));
        }
        self.skip_ws();
        let _ = start;
        Err(self.err(format!(
            "expected an operator (==, !=, in, not in, contains, starts with, ends with) after label {label:?}, found {}",
            self.describe_here()
        )))
    }

    fn label(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_label_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return Err(self.err(format!("expected a label name, found {}", self.describe_here())));
        }
        let l = self.rest()[..len].to_string();
        self.pos += len;
        Ok(l)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => {
                return Err(self.err(format!(
                    "expected a quoted string ('...' or \"...\"), found {}",
                    self.describe_here()
                )));
            }
        };
        let body = &self.rest()[1..];
        match body.find(quote) {
            Some(end) => {
                let v = body[..end].to_string();
                self.pos += end + 2;
                Ok(v)
            }
            None => Err(self.err(format!("unterminated string: missing closing {quote}"))),
        }
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect("{", "'{' starting a set of values")?;
        let mut set = BTreeSet::new();
        // Calico: values each followed by a comma, the last one's optional: `{}`, `{'a'}`, `{'a',}`.
        loop {
            if self.eat("}") {
                return Ok(set);
            }
            set.insert(self.string()?);
            if !self.eat(",") {
                self.expect("}", "',' or '}' in the set of values")?;
                return Ok(set);
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A value read from "..." may hold a ' (and one from '...' a "): quote with the other.
        let q = |v: &str| {
            if v.contains('\'') {
                format!("\"{v}\"")
            } else {
                format!("'{v}'")
            }
        };
        let set = |s: &BTreeSet<String>| s.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ");
        match self {
            Expr::All => write!(f, "all()"),
            Expr::Global => write!(f, "global()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::Eq(k, v) => write!(f, "{k} == {}", q(v)),
            Expr::Ne(k, v) => write!(f, "{k} != {}", q(v)),
            Expr::In(k, s) => write!(f, "{k} in {{{}}}", set(s)),
            Expr::NotIn(k, s) => write!(f, "{k} not in {{{}}}", set(s)),
            Expr::Contains(k, v) => write!(f, "{k} contains {}", q(v)),
            Expr::StartsWith(k, v) => write!(f, "{k} starts with {}", q(v)),
            Expr::EndsWith(k, v) => write!(f, "{k} ends with {}", q(v)),
            Expr::Not(a) => write!(f, "!({a})"),
            Expr::And(a, b) => write!(f, "({a} && {b})"),
            Expr::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_are_every_key_the_result_can_read() {
        let keys = |s: &str| {
            Selector::parse(s)
                .unwrap()
                .label_keys()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert!(keys("all()").is_empty());
        assert_eq!(
            keys("rack == 'a' && (has(rr) || !(zone in {'z1'})) && x.y/z starts with 'p'"),
            ["rack", "rr", "x.y/z", "zone"]
        );
    }
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, l: &[(&str, &str)]) -> bool {
        Selector::parse(sel)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(l))
    }

    #[test]
    fn basics() {
        assert!(m("all()", &[]));
        assert!(m("", &[]));
        assert!(!m("!all()", &[("a", "b")]));
        assert!(m("has(zone)", &[("zone", "a")]));
        assert!(!m("has(zone)", &[]));
        assert!(m("zone == 'a'", &[("zone", "a")]));
        assert!(m("zone == \"a\"", &[("zone", "a")]));
        assert!(!m("zone == 'a'", &[]));
        assert!(m("zone != 'a'", &[]));
        assert!(m("zone in {'a', 'b'}", &[("zone", "b")]));
        assert!(!m("zone in {}", &[("zone", "b")]));
        assert!(m("zone not in {'a'}", &[]));
        assert!(!m("zone not in {'a'}", &[("zone", "a")]));
        assert!(m(
            "kubernetes.io/hostname contains 'ode-'",
            &[("kubernetes.io/hostname", "node-a")]
        ));
        assert!(m("x starts with 'ab' && x ends with 'yz'", &[("x", "abcxyz")]));
    }

    #[test]
    fn precedence_and_parens() {
        // && binds tighter than ||.
        assert!(m("a == '1' || b == '1' && c == '1'", &[("a", "1")]));
        assert!(!m("(a == '1' || b == '1') && c == '1'", &[("a", "1")]));
        assert!(m("!has(a) && !(b == '2')", &[("b", "3")]));
        assert!(m("!!has(a)", &[("a", "")]));
        assert!(m("a!='x'", &[("a", "y")]));
    }

    #[test]
    fn label_dependence() {
        assert!(!Selector::parse("all()").unwrap().uses_labels());
        assert!(!Selector::parse("!all()").unwrap().uses_labels());
        assert!(Selector::parse("all() && zone == 'a'").unwrap().uses_labels());
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = Selector::parse("zone = 'a'").unwrap_err();
        assert_eq!(e.pos, 5);
        assert!(e.message.contains("expected an operator"), "{e}");
        let e = Selector::parse("zone == a").unwrap_err();
        assert_eq!(e.pos, 8);
        assert!(e.message.contains("quoted string"), "{e}");
        let e = Selector::parse("(has(a)").unwrap_err();
        assert!(e.message.contains("')'"), "{e}");
        assert_eq!(e.pos, 7);
        let e = Selector::parse("zone == 'a").unwrap_err();
        assert!(e.message.contains("unterminated"), "{e}");
        let e = Selector::parse("has(a) has(b)").unwrap_err();
        assert!(e.message.contains("unexpected"), "{e}");
        assert!(e.to_string().contains("position 7"), "{e}");
        let e = Selector::parse("zone in {'a' 'b'}").unwrap_err();
        assert!(e.message.contains("',' or '}'"), "{e}");
        assert!(
            Selector::parse("has(a) &&")
                .unwrap_err()
                .message
                .contains("end of selector")
        );
    }

    fn arb_expr() -> impl Strategy<Value = Expr> {
        let key = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("k8s.io/zone".to_string())
        ];
        let val = prop_oneof![Just("1".to_string()), Just("2".to_string())];
        let leaf = prop_oneof![
            Just(Expr::All),
            key.clone().prop_map(Expr::Has),
            (key.clone(), val.clone()).prop_map(|(k, v)| Expr::Eq(k, v)),
            (key.clone(), val.clone()).prop_map(|(k, v)| Expr::Ne(k, v)),
            (key.clone(), proptest::collection::btree_set(val.clone(), 0..3))
                .prop_map(|(k, s)| Expr::In(k, s)),
            (key, proptest::collection::btree_set(val, 0..3)).prop_map(|(k, s)| Expr::NotIn(k, s)),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| Expr::Not(Box::new(a))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    #[test]
    fn values_holding_a_quote_print_back_parseably() {
        // Regression (fuzz target `selector`): `a == "it's"` printed as `a == 'it's'`.
        for text in [
            r#"a == "it's""#,
            r#"a in {"x'y", 'z'}"#,
            r#"a contains 'say "hi"'"#,
        ] {
            let e = Selector::parse(text).unwrap().expr;
            let back = Selector::parse(&e.to_string()).unwrap().expr;
            assert_eq!(back, e, "{text}");
        }
    }

    proptest! {
        /// Printing and re-parsing gives the same expression (the parser accepts what it prints).
        #[test]
        fn display_parse_roundtrip(e in arb_expr()) {
            let text = e.to_string();
            let back = Selector::parse(&text).map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(back.expr, e);
        }

        #[test]
        fn not_negates(e in arb_expr(), a in 0u8..3, b in 0u8..3) {
            let mut l = BTreeMap::new();
            if a > 0 { l.insert("a".to_string(), a.to_string()); }
            if b > 0 { l.insert("b".to_string(), b.to_string()); }
            let s = Selector { expr: e.clone() };
            let n = Selector { expr: Expr::Not(Box::new(e)) };
            prop_assert_eq!(s.matches(&l), !n.matches(&l));
        }
    }
}
