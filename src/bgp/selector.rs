//! The one place the BGP renderer evaluates Calico selectors (`nodeSelector`, `peerSelector`).
//!
//! The selector language itself belongs to `ipam::selector`; this boundary keeps the renderer
//! independent of how it is implemented, and lets tests count or stub evaluations.

use std::collections::BTreeMap;

/// Evaluates a Calico selector expression against a node's labels.
pub trait SelectorEngine: Send + Sync {
    /// `Ok(true)` when `labels` match `expr`; `Err` carries the parse error for `expr`.
    fn matches(&self, expr: &str, labels: &BTreeMap<String, String>) -> Result<bool, String>;
}

/// The project's selector language (`crate::ipam::selector`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CalicoSelectors;

impl SelectorEngine for CalicoSelectors {
    fn matches(&self, expr: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
        evaluate(expr, labels)
    }
}

fn evaluate(expr: &str, _labels: &BTreeMap<String, String>) -> Result<bool, String> {
    // Until ipam::selector lands, only the two spellings of "every node" are understood.
    match expr.trim() {
        "" | "all()" => Ok(true),
        other => Err(format!(
            "selector {other:?}: only all() is supported until the selector engine is available"
        )),
    }
}
