//! The admission rule for Calico selector fields: RE2 patterns a CEL `matches()` can run, built to
//! accept exactly what Calico's selector parser (and [`crate::ipam::selector`]) accepts.
//!
//! A selector without parentheses is a regular language, so [`flat_pattern`] decides it exactly
//! at the token level (parentheses are allowed where a term may start or end). Parentheses need a
//! count, which a regular expression can only do to a fixed depth: [`balanced_pattern`] checks
//! them up to [`MAX_CHECKED_DEPTH`] levels. A selector with more `(` than that is let through
//! ([`deep_pattern`]) rather than wrongly rejected; the operator then reports it if Calico's
//! parser refuses it (IPPool: condition `Ready=False` reason `InvalidSelector` and an Event; BGP:
//! a `BgpInputIgnored` Event naming the field).
//!
//! The tests below and the `selector` fuzz target compile these same patterns with the `regex`
//! crate (the syntax used means the same in RE2 and in it) and check them against the parser, whose
//! lexing follows Calico's tokenizer; `tests/bad-inputs/admission/2*-selector-*` has the real
//! apiserver run the CEL rule.

/// Parentheses the admission rule checks exactly: a selector with more `(` characters (function
/// calls and string contents included) is left to the operator. A count, not a depth, because a
/// depth is not regular; a count above it is the only sign of a depth above it a regex can see.
pub const MAX_CHECKED_DEPTH: usize = 32;

/// Calico's tokenizer skips spaces and tabs only.
const W: &str = r"[ \t]*";
const W1: &str = r"[ \t]+";
const LABEL: &str = r"[A-Za-z0-9_./-]+";
const STRING: &str = r#"(?:'[^']*'|"[^"]*")"#;

/// One operation: `has(k)`, `all()`, `global()`, `k == 'v'`, `k contains 'v'`, `k in {...}`.
/// Operator words follow a label only after a space (a label takes every label character it can),
/// and are matched as prefixes, as Calico's tokenizer does (`startswith`, `notin` are valid).
fn atom() -> String {
    [
        format!(r"has\({W}{LABEL}{W}\)"),
        format!(r"all\({W}\)"),
        format!(r"global\({W}\)"),
        format!(r"{LABEL}{W}(?:==|!=){W}{STRING}"),
        format!(r"{LABEL}{W1}(?:contains|starts{W}with|ends{W}with){W}{STRING}"),
        format!(r"{LABEL}{W1}(?:in|not{W}in){W}\{{{W}(?:{STRING}{W},{W})*(?:{STRING}{W})?\}}"),
    ]
    .join("|")
}

/// The whole selector with parentheses treated as prefixes and suffixes of terms: blank, or terms
/// (`!`/`(` prefixes, an operation, `)` suffixes) joined by `&&` and `||`.
pub fn flat_pattern() -> String {
    let term = format!(r"(?:{W}(?:!|\())*{W}(?:{}){W}(?:\){W})*", atom());
    format!(r"^(?:{W}|{term}(?:(?:&&|\|\|){term})*)$")
}

/// Parentheses outside string literals balanced, nested at most [`MAX_CHECKED_DEPTH`] deep
/// (which any selector with at most that many `(` is).
pub fn balanced_pattern() -> String {
    let other = r#"[^()'"]|'[^']*'|"[^"]*""#;
    let mut level = format!("(?:{other})*");
    for _ in 0..MAX_CHECKED_DEPTH {
        level = format!(r"(?:{other}|\({level}\))*");
    }
    format!("^{level}$")
}

/// More `(` characters than the balance check counts: admission cannot decide, the operator does.
pub fn deep_pattern() -> String {
    format!(r"^(?:[^(]*\(){{{}}}", MAX_CHECKED_DEPTH + 1)
}

/// `s` as a CEL string literal.
fn cel_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\""))
}

/// The CEL expression: `self` is a selector Calico can parse (up to the depth limit).
pub fn cel_rule() -> String {
    format!(
        "self.matches({}) && (self.matches({}) || self.matches({}))",
        cel_string(&flat_pattern()),
        cel_string(&balanced_pattern()),
        cel_string(&deep_pattern())
    )
}

/// The rule's message for the field at `path` (e.g. `spec.nodeSelector`).
pub fn message(path: &str) -> String {
    format!(
        "{path} is not a valid Calico selector: expected operations such as all(), has(k), k == 'v', k != 'v', k in {{'a', 'b'}}, k not in {{...}}, k contains|starts with|ends with 'v', combined with !, &&, || and balanced parentheses, separated only by spaces or tabs"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::selector::Selector;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    struct Mirror {
        flat: regex::Regex,
        balanced: regex::Regex,
        deep: regex::Regex,
    }

    static MIRROR: LazyLock<Mirror> = LazyLock::new(|| Mirror {
        flat: regex::Regex::new(&flat_pattern()).unwrap(),
        balanced: regex::Regex::new(&balanced_pattern()).unwrap(),
        deep: regex::Regex::new(&deep_pattern()).unwrap(),
    });

    /// What the CEL rule answers, and whether it deferred to the operator (too many parentheses).
    fn admits(s: &str) -> (bool, bool) {
        let m = &*MIRROR;
        let deep = m.deep.is_match(s);
        (m.flat.is_match(s) && (m.balanced.is_match(s) || deep), deep)
    }

    /// The parser and the rule agree; past the depth limit the rule may only be more lenient.
    fn agree(s: &str) -> Result<(), String> {
        let parsed = Selector::parse(s);
        let (admitted, deferred) = admits(s);
        if parsed.is_ok() && !admitted {
            return Err(format!("{s:?} parses but admission rejects it"));
        }
        if let Err(e) = parsed
            && admitted
            && !deferred
        {
            return Err(format!("{s:?} is admitted but does not parse: {e}"));
        }
        Ok(())
    }

    /// Valid for Calico's parser (its own test tables and tokenizer behaviour).
    const VALID: &[&str] = &[
        "",
        " ",
        "\t \t",
        "all()",
        " all( ) ",
        "global()",
        "has(x)",
        "has( x\t)",
        "!has(x)",
        "! !!has(a)",
        "a == 'b'",
        "a=='b'",
        "a!='\"'",
        "a == \"'\"",
        "a == 'b' && c in {'d','e'}",
        "a == 'b'\t&&\tc in {'d', 'e'}",
        "x contains 'y'",
        "x contains'y'",
        "x starts with 'a'",
        "x startswith 'a'",
        "x starts \t with 'a'",
        "x ends with 'z'",
        "x endswith \"z\"",
        "x in {}",
        "x in {'a',}",
        "x in{'a' ,'b' , }",
        "x not in {'a'}",
        "x notin {'a'}",
        "x not \t in {'a'}",
        "!a in {'a'}",
        "!(!has(a) || has(b))",
        " (all() )",
        "((a == 'b'))",
        "!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
        "kubernetes.io/hostname == 'node-1'",
        "a == 'new\nline' && b == 'tab\there'",
        "a == '(' && b == ')'",
        "has(a)||has(b)&&has(c)",
        "has == 'x'",
        "all == 'x'",
        "in in {'in'}",
        "contains contains 'contains'",
        "a == 'ünïcödé'",
    ];

    /// Rejected by Calico's parser.
    const INVALID: &[&str] = &[
        "b == b",
        "b contains b",
        "'b1' == b",
        "b",
        "a b",
        "!",
        "foo == 'bar' &",
        "foo == 'bar' |",
        "foo != ||",
        "foo in {'', ||",
        "foo in ''",
        "\"FOO",
        "'FOO",
        "(",
        "(a == 'foo'",
        ")",
        "()",
        "%",
        "a == 'b' && %",
        "a ",
        "has(foo) &&",
        // Whitespace Calico's tokenizer does not skip.
        "\nall()",
        "all()\n",
        "has(a)\r\n",
        "a ==\n'b'",
        "has(a)\u{a0}&& has(b)",
        "has(a) &&\u{2003}has(b)",
        "\u{feff}all()",
        "\u{b}all()",
        "\u{c}all()",
        // Function tokens take their parenthesis at once.
        "has (a)",
        "all ()",
        "global ()",
        "has()",
        "acontains 'x'",
        "a containsx 'y'",
        "a inx {'y'}",
        "a in {,}",
        "a in {'a',,}",
        "a in {'a' 'b'}",
        "a == 'b')",
        "(a == 'b'))(",
        "a == 'b') && (c == 'd'",
        "a == 'b' && ()",
        "!=",
        "a ! = 'b'",
        "a = 'b'",
        "a & & b",
        "ä == 'b'",
        "a == 'b' c == 'd'",
        "has(a) == 'b'",
    ];

    #[test]
    fn calico_valid_selectors_parse_and_are_admitted() {
        for s in VALID {
            Selector::parse(s).unwrap_or_else(|e| panic!("{e}"));
            assert!(admits(s).0, "admission rejects valid {s:?}");
        }
    }

    #[test]
    fn calico_invalid_selectors_fail_both() {
        for s in INVALID {
            assert!(Selector::parse(s).is_err(), "parser accepts invalid {s:?}");
            assert!(!admits(s).0, "admission accepts invalid {s:?}");
        }
    }

    #[test]
    fn nesting_is_exact_to_the_limit_then_deferred() {
        // `has(a)` is one `(` of the count too.
        let nest = |d: usize| format!("{}has(a){}", "(".repeat(d), ")".repeat(d));
        let d = MAX_CHECKED_DEPTH - 1;
        assert_eq!(admits(&nest(d)), (true, false));
        // Unbalanced within the limit: rejected.
        let open = format!("{}has(a){}", "(".repeat(d), ")".repeat(d - 1));
        assert_eq!(admits(&open), (false, false));
        let close = format!("{}has(a){}", "(".repeat(d - 1), ")".repeat(d));
        assert_eq!(admits(&close), (false, false));
        // More `(` than the check counts: admitted (the operator reports it if Calico's parser
        // refuses it), valid or not.
        assert_eq!(admits(&nest(d + 1)), (true, true));
        assert_eq!(admits(&nest(3 * d)), (true, true));
        let too_deep_open = format!("{}has(a){}", "(".repeat(d + 1), ")".repeat(d));
        assert!(Selector::parse(&too_deep_open).is_err());
        assert_eq!(admits(&too_deep_open), (true, true));
        // Still refused past the count: what is wrong without parentheses.
        assert_eq!(admits(&format!("{} ==", nest(d + 1))), (false, true));
        // Parentheses inside strings are not grouping.
        assert!(admits("a in {'(((', ')'}").0);
        assert!(!admits("a in {'(((', ')'} && (has(b)").0);
    }

    /// Pieces that make selectors interesting: tokens, near-tokens and the whitespace classes.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "a",
                "k8s.io/zone",
                "has(",
                "all(",
                "global(",
                "has",
                "all",
                "(",
                ")",
                "!",
                "==",
                "!=",
                "=",
                "&&",
                "||",
                "&",
                "|",
                "'x'",
                "\"y\"",
                "'",
                "\"",
                "{",
                "}",
                ",",
                "contains",
                "starts",
                "ends",
                "with",
                "not",
                "in",
                "startswith",
                "notin",
                " ",
                " ",
                " ",
                "\t",
                "\n",
                "\r",
                "\u{a0}",
                "\u{2003}",
                "%",
                "'(('",
                "')'",
            ])
            .prop_map(str::to_string),
            "[ -~]{1,3}",
        ]
    }

    fn valid_expr() -> impl Strategy<Value = String> {
        let label = prop::sample::select(vec!["a", "b.c/d", "has", "in"]);
        let string = prop::sample::select(vec!["'v'", "\"w\"", "''", "'x y'", "\"'(\""]);
        let ws = prop::sample::select(vec!["", " ", "\t", "  "]);
        let leaf = prop_oneof![
            (ws.clone(), label.clone()).prop_map(|(w, l)| format!("has({w}{l}{w})")),
            ws.clone().prop_map(|w| format!("all({w})")),
            (label.clone(), ws.clone(), string.clone()).prop_map(|(l, w, s)| format!("{l}{w}=={w}{s}")),
            (label.clone(), string.clone()).prop_map(|(l, s)| format!("{l} != {s}")),
            (
                label.clone(),
                prop::sample::select(vec!["contains", "starts with", "endswith"]),
                string.clone()
            )
                .prop_map(|(l, o, s)| format!("{l} {o} {s}")),
            (
                label,
                prop::sample::select(vec!["in", "not in", "notin"]),
                prop::collection::vec(string, 0..3),
                any::<bool>()
            )
                .prop_map(|(l, o, v, trailing)| {
                    let comma = if trailing && !v.is_empty() { "," } else { "" };
                    format!("{l} {o} {{{}{comma}}}", v.join(","))
                }),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("!{a}")),
                inner.clone().prop_map(|a| format!("( {a} )")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("{a}||{b}")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn rule_agrees_with_parser_on_token_soup(pieces in prop::collection::vec(piece(), 0..14)) {
            agree(&pieces.concat()).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn rule_agrees_with_parser_on_any_text(s in "\\PC{0,40}") {
            agree(&s).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn generated_selectors_are_admitted(s in valid_expr()) {
            Selector::parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(admits(&s).0, "admission rejects {:?}", s);
        }

        #[test]
        fn one_byte_edits_keep_agreement(s in valid_expr(), at in any::<prop::sample::Index>(), c in piece()) {
            let mut t = s.clone();
            let mut i = at.index(t.len() + 1);
            while !t.is_char_boundary(i) { i -= 1; }
            t.insert_str(i, &c);
            agree(&t).map_err(TestCaseError::fail)?;
        }
    }

    /// The selectors of the bad-input corpus: admission refuses those in `admission/`, and those
    /// in `operator/` (which must pass admission) are past the rule's count; the parser refuses all.
    #[test]
    fn corpus_selectors_are_refused_where_the_corpus_says() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-inputs");
        let mut seen = 0;
        for (dir, deferred) in [("admission", false), ("operator", true)] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = e.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.contains("is not a valid Calico selector")
                    && !text.contains("reason: InvalidSelector")
                {
                    continue;
                }
                for doc in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap() {
                    if doc["kind"] == "Installation" {
                        continue;
                    }
                    for field in [
                        "nodeSelector",
                        "namespaceSelector",
                        "peerSelector",
                        "localWorkloadSelector",
                    ] {
                        let Some(sel) = doc["spec"][field].as_str() else {
                            continue;
                        };
                        seen += 1;
                        assert!(
                            Selector::parse(sel).is_err(),
                            "{}: {sel:?} parses",
                            path.display()
                        );
                        let (admitted, was_deferred) = admits(sel);
                        assert_eq!(
                            (admitted, was_deferred),
                            (deferred, deferred),
                            "{}: {sel:?}",
                            path.display()
                        );
                    }
                }
            }
        }
        assert!(seen >= 25, "only {seen} corpus selectors");
    }

    #[test]
    fn cel_literal_escapes_quotes_and_backslashes() {
        assert_eq!(cel_string(r#"a"b\c'"#), r#""a\"b\\c'""#);
        assert!(cel_rule().starts_with("self.matches(\"^"));
    }
}
