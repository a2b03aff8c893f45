//! Calico selector parser (`ipam::selector`, also behind `bgp::selector`): no panic on any text;
//! what parses prints back to text that parses to the same expression; evaluation is total and
//! agrees with the BGP engine's cached evaluation; and the admission rule (the CEL rule's RE2
//! patterns, `api::selector_rule`) accepts exactly what parses, except past its depth limit, where
//! it may only be more lenient.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tortie::bgp::selector::{CalicoSelectors, SelectorEngine};
use tortie::api::selector_rule;
use tortie::ipam::selector::Selector;

static RULE: LazyLock<[regex::Regex; 3]> = LazyLock::new(|| {
    [
        selector_rule::flat_pattern(),
        selector_rule::balanced_pattern(),
        selector_rule::deep_pattern(),
    ]
    .map(|p| regex::Regex::new(&p).expect("the admission patterns compile"))
});

fuzz_target!(|data: &[u8]| {
    // Selector text first, then `k=v` label lines after a NUL.
    let (text, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let labels: BTreeMap<String, String> = String::from_utf8_lossy(rest)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let parsed = Selector::parse(text);
    let [flat, balanced, deep] = &*RULE;
    let deferred = deep.is_match(text);
    let admitted = flat.is_match(text) && (balanced.is_match(text) || deferred);
    if parsed.is_ok() {
        assert!(admitted, "{text:?} parses but admission rejects it");
    } else if !deferred {
        assert!(!admitted, "{text:?} is admitted but does not parse");
    }
    let engine = CalicoSelectors::default();
    match &parsed {
        Ok(sel) => {
            let printed = sel.expr.to_string();
            let again = Selector::parse(&printed)
                .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
            assert_eq!(again.expr, sel.expr, "{text:?} -> {printed:?} changed meaning");
            let m = sel.matches(&labels);
            assert_eq!(again.matches(&labels), m);
            assert_eq!(engine.matches(text, &labels), Ok(m));
            if !sel.uses_labels() {
                assert_eq!(
                    sel.matches(&BTreeMap::new()),
                    m,
                    "{text:?} claims not to use labels"
                );
            }
        }
        Err(e) => {
            assert!(
                e.pos <= text.len(),
                "error position {} past the end of {text:?}",
                e.pos
            );
            assert!(text.is_char_boundary(e.pos));
            assert!(engine.matches(text, &labels).is_err());
        }
    }
});
