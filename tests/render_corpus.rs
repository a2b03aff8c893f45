//! The render part of the bad-input corpus (`tests/bad-inputs/render/`): inputs that reach the
//! BIRD renderer past admission (written while a CRD lacked a rule, by a tool with validation
//! off, or a Node annotation). Each case is loaded over `_base.yaml` and rendered for one node as
//! `tortie render` and the BGP controller do: every `# expect:` text must be in the warnings,
//! every `# keep:` text still in the rendered files (one bad object costs only itself), and the
//! files must pass `bird -p` when BIRD is installed. `# error:` cases must fail to render with
//! that text instead.

use std::path::Path;

use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

struct Case {
    name: String,
    node: String,
    expect: Vec<String>,
    keep: Vec<String>,
    error: Option<String>,
    text: String,
}

fn header<'a>(text: &'a str, key: &str) -> impl Iterator<Item = String> + 'a {
    let prefix = format!("# {key}:");
    text.lines()
        .filter_map(move |l| l.strip_prefix(prefix.as_str()).map(|v| v.trim().to_string()))
}

fn cases(dir: &Path) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().as_bytes()[0].is_ascii_digit())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let node = header(&text, "node").next().unwrap_or_else(|| "node-1".into());
            let error = header(&text, "error").next();
            Case {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                node,
                expect: header(&text, "expect").collect(),
                keep: header(&text, "keep").collect(),
                error,
                text,
            }
        })
        .collect()
}

fn bird_installed() -> bool {
    std::process::Command::new("bird")
        .arg("--version")
        .output()
        .is_ok()
}

#[test]
fn every_render_case_is_left_out_and_reported_and_the_rest_renders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-inputs/render");
    let base = std::fs::read_to_string(dir.join("_base.yaml")).unwrap();
    let cases = cases(&dir);
    assert!(cases.len() >= 35, "only {} render cases", cases.len());
    let check_bird = bird_installed();
    let mut failures = vec![];
    for c in &cases {
        assert!(
            !c.expect.is_empty() || c.error.is_some() || !c.keep.is_empty(),
            "{}: a case needs # expect:, # keep: or # error:",
            c.name
        );
        assert!(
            c.error.is_some() || !c.keep.is_empty(),
            "{}: a case needs # keep:",
            c.name
        );
        let mut snap = Snapshot::default();
        snap.add_manifests("_base.yaml", &base).unwrap();
        if let Err(e) = snap.add_manifests(&c.name, &c.text) {
            failures.push(format!("{}: the manifests do not load: {e}", c.name));
            continue;
        }
        let mut warnings: Vec<String> = bgp::validate::sanitize(&mut snap)
            .iter()
            .map(|e| e.to_string())
            .collect();
        let out = bgp::render(
            &snap,
            &c.node,
            &RenderOptions::default(),
            &CalicoSelectors::default(),
        );
        match (&c.error, out) {
            (Some(want), Err(e)) => {
                if !e.to_string().contains(want.as_str()) {
                    failures.push(format!("{}: error {e:?} lacks {want:?}", c.name));
                }
            }
            (Some(want), Ok(_)) => {
                failures.push(format!("{}: rendered, but should fail with {want:?}", c.name))
            }
            (None, Err(e)) => failures.push(format!("{}: one bad input stopped the render: {e}", c.name)),
            (None, Ok(out)) => {
                warnings.extend(out.warnings.iter().cloned());
                let all = warnings.join("\n");
                for want in &c.expect {
                    if !all.contains(want.as_str()) {
                        failures.push(format!(
                            "{}: no warning contains {want:?}; warnings:\n{all}",
                            c.name
                        ));
                    }
                }
                let text: String = out
                    .files
                    .values()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect();
                for want in &c.keep {
                    if !text.contains(want.as_str()) {
                        failures.push(format!("{}: the rendered files lost {want:?}", c.name));
                    }
                }
                if check_bird {
                    let tmp = tempfile::tempdir().unwrap();
                    for (name, body) in &out.files {
                        std::fs::write(tmp.path().join(name), body).unwrap();
                    }
                    for v6 in [false, true] {
                        if let Err(e) = tortie::cli::agent::bird_check(tmp.path(), v6) {
                            failures.push(format!("{}: BIRD refuses the rendered files: {e}", c.name));
                        }
                    }
                }
            }
        }
    }
    if !check_bird {
        eprintln!("bird is not installed: rendered files not checked with bird -p");
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
