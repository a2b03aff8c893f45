//! The one place the BGP renderer evaluates Calico selectors (`nodeSelector`, `peerSelector`).
//!
//! The language itself lives in `ipam::selector`; the trait keeps the renderer independent of it
//! so tests can stub or count evaluations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::ipam::selector::Selector;

/// Evaluates a Calico selector expression against a node's labels.
pub trait SelectorEngine: Send + Sync {
    /// `Ok(true)` when `labels` match `expr`; `Err` carries the parse error for `expr`.
    fn matches(&self, expr: &str, labels: &BTreeMap<String, String>) -> Result<bool, String>;
}

/// The project's selector language (`crate::ipam::selector`), parsing each expression once.
#[derive(Debug, Default)]
pub struct CalicoSelectors {
    cache: Mutex<HashMap<String, Result<Selector, String>>>,
}

impl SelectorEngine for CalicoSelectors {
    fn matches(&self, expr: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let parsed = cache
            .entry(expr.to_string())
            .or_insert_with(|| Selector::parse(expr).map_err(|e| e.to_string()));
        match parsed {
            Ok(sel) => Ok(sel.matches(labels)),
            Err(e) => Err(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegates_to_the_calico_language() {
        let s = CalicoSelectors::default();
        let labels: BTreeMap<String, String> = [("rack".to_string(), "a".to_string())].into_iter().collect();
        assert_eq!(s.matches("all()", &labels), Ok(true));
        assert_eq!(s.matches("rack == 'a'", &labels), Ok(true));
        assert_eq!(s.matches("!has(rack)", &labels), Ok(false));
        assert!(s.matches("rack ==", &labels).is_err());
    }
}
