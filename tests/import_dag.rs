//! The module dependency graph is a DAG: no two top-level modules (`crate::x`) and no two files of
//! one directory module (`super::x`, `crate::dir::x`) import each other, directly or around a
//! circle. Read from the source (outside `#[cfg(test)]` modules and comments), so a circle is
//! caught without building anything. A parent's `mod.rs` is not a sibling: its children may use
//! its items (`super::Ctx`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use regex::Regex;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a file without its test module and comments.
fn code(path: &Path) -> String {
    let src = fs::read_to_string(path).unwrap();
    let cut = Regex::new(r"#\[cfg\(test\)\]\s*mod \w+ \{").unwrap();
    let src = match cut.find(&src) {
        Some(m) => &src[..m.start()],
        None => &src[..],
    };
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The names following `prefix::`: one path segment, or every name inside a `{...}` group
/// (nested groups included).
fn names_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let one = Regex::new(&format!(r"{prefix}::([a-z_0-9]+)")).unwrap();
    let word = Regex::new(r"\b([a-z_0-9]+)\b").unwrap();
    let mut out: BTreeSet<String> = one.captures_iter(code).map(|c| c[1].to_string()).collect();
    let open = format!("{prefix}::{{");
    for (at, _) in code.match_indices(&open) {
        let body = &code[at + open.len()..];
        let mut depth = 1;
        let end = body
            .char_indices()
            .find(|&(_, ch)| {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(body.len(), |(i, _)| i);
        out.extend(word.captures_iter(&body[..end]).map(|c| c[1].to_string()));
    }
    out
}

fn rs_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    v.sort();
    v
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// Every edge `a -> b` where `a` is reachable again from `b`.
fn circles(g: &Graph) -> Vec<(String, String)> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(x) = todo.pop() {
            for y in g.get(&x).into_iter().flatten() {
                if seen.insert(y.clone()) {
                    todo.push(y.clone());
                }
            }
        }
        seen
    };
    g.iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a.clone(), b.clone())))
        .filter(|(a, b)| reach(b).contains(a))
        .collect()
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level module of each file under src/, and what it names with `crate::`.
fn top_level() -> Graph {
    let mut tops: Vec<(String, Vec<std::path::PathBuf>)> = Vec::new();
    for e in fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        let name = stem(&p);
        if name == "lib" || name == "bin" || name == "main" {
            continue;
        }
        let files = if p.is_dir() {
            let mut all = Vec::new();
            let mut todo = vec![p.clone()];
            while let Some(d) = todo.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let q = e.unwrap().path();
                    if q.is_dir() {
                        todo.push(q);
                    } else if q.extension().is_some_and(|e| e == "rs") {
                        all.push(q);
                    }
                }
            }
            all
        } else {
            vec![p]
        };
        tops.push((name, files));
    }
    let names: BTreeSet<String> = tops.iter().map(|t| t.0.clone()).collect();
    tops.into_iter()
        .map(|(name, files)| {
            let deps = files
                .iter()
                .flat_map(|f| names_after(&code(f), "crate"))
                .filter(|d| names.contains(d) && *d != name)
                .collect();
            (name, deps)
        })
        .collect()
}

/// The files of directory module `dir` and the siblings each one imports.
fn siblings(dir: &str) -> Graph {
    let files: Vec<_> = rs_files(&src().join(dir))
        .into_iter()
        .filter(|f| stem(f) != "mod")
        .collect();
    let names: BTreeSet<String> = files.iter().map(|f| stem(f)).collect();
    files
        .iter()
        .map(|f| {
            let c = code(f);
            let mut deps = names_after(&c, "super");
            deps.extend(names_after(&c, &format!("crate::{dir}")));
            let me = stem(f);
            let deps = deps
                .into_iter()
                .filter(|d| names.contains(d) && *d != me)
                .collect();
            (me, deps)
        })
        .collect()
}

#[test]
fn top_level_modules_form_a_dag() {
    let g = top_level();
    assert!(
        g.contains_key("controllers") && g.contains_key("metrics"),
        "{g:?}"
    );
    assert_eq!(
        circles(&g),
        vec![],
        "import circle between top-level modules: {g:#?}"
    );
    // The metrics are read by the controllers, never the other way round.
    assert!(!g["metrics"].contains("controllers"), "{g:#?}");
}

#[test]
fn files_of_each_directory_module_form_a_dag() {
    let mut dirs = 0;
    for e in fs::read_dir(src()).unwrap() {
        let p = e.unwrap().path();
        if !p.is_dir() || stem(&p) == "bin" {
            continue;
        }
        dirs += 1;
        let dir = stem(&p);
        let g = siblings(&dir);
        assert_eq!(circles(&g), vec![], "import circle in src/{dir}: {g:#?}");
    }
    assert!(dirs >= 5, "read only {dirs} directory modules");
}

#[test]
fn the_checker_sees_a_circle() {
    let g: Graph = [
        ("a".to_string(), ["b".to_string()].into()),
        ("b".to_string(), ["c".to_string()].into()),
        ("c".to_string(), ["a".to_string()].into()),
        ("d".to_string(), ["a".to_string()].into()),
    ]
    .into();
    assert_eq!(circles(&g).len(), 3);
    let c = "use super::{conditions::{self, Cond}, pools};\nlet x = super::gc::f(); // super::store\n";
    let n = names_after(&code_of(c), "super");
    assert_eq!(n, ["conditions", "gc", "pools", "self"].map(String::from).into());
    // The controllers' known edges are seen (reader not blind).
    let g = siblings("controllers");
    assert!(
        g["installation"].contains("pools") && g["gc"].contains("gc_plan"),
        "{g:#?}"
    );
}

fn code_of(s: &str) -> String {
    s.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}
