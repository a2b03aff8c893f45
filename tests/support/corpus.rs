//! The bad-input corpus (`tests/bad-inputs/`, format in its README): case files with `# key:
//! value` header lines.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The case files of `tests/bad-inputs/<dir>` (with extension `ext`, if given), sorted; panics
/// when there are fewer than `min` (a corpus must not shrink unnoticed).
pub fn files(dir: &str, ext: Option<&str>, min: usize) -> Vec<PathBuf> {
    let dir = super::repo_dir().join("tests/bad-inputs").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| ext.is_none_or(|ext| p.extension().is_some_and(|e| e == ext)))
        .collect();
    files.sort();
    assert!(
        files.len() >= min,
        "the corpus {} shrank to {} cases (at least {min} expected)",
        dir.display(),
        files.len()
    );
    files
}

/// The header of a case: its `# key: value` lines (a repeated key keeps every value).
pub fn header(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut h: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        let Some(l) = l.strip_prefix("# ") else { continue };
        if let Some((k, v)) = l.split_once(": ") {
            h.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    h
}
