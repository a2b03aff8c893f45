//! Custom BIRD templates (`tortie render --template-dir`, the agent's `--bird-template-dir`):
//! the built-in templates pass their own vetting; a custom template that `bird -p` accepts changes
//! the output; the bad-template corpus (`tests/bad-inputs/templates/`) is refused with an error
//! naming the template file and the line; and the agent's [`Custom`] keeps the last accepted
//! templates (or the built-in ones) when a template is refused, on the samples or on the node's
//! own inputs. Every check runs the real `bird -p`/`bird6 -p` (`make deps` installs BIRD).
//! That the built-in templates give the golden files byte for byte is `tests/bgp_golden.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot, Templates};
use tortie::node::template::{Custom, vet};

fn require_bird() {
    for b in ["bird", "bird6"] {
        assert!(
            std::process::Command::new(b).arg("--version").output().is_ok(),
            "{b} is not installed (make deps installs it)"
        );
    }
}

fn golden(case: &str) -> Snapshot {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/bgp")
        .join(case)
        .join("input");
    let mut snap = Snapshot::default();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        snap.add_manifests(&p.display().to_string(), &std::fs::read_to_string(&p).unwrap())
            .unwrap();
    }
    snap
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn the_built_in_templates_pass_their_own_vetting() {
    require_bird();
    vet(&Templates::builtin()).unwrap();
}

#[test]
fn a_custom_template_that_bird_accepts_changes_the_output() {
    require_bird();
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        &[(
            "bird.cfg.j2",
            "# Site: {{ node }} (rack 7)\n{% include \"builtin/bird.cfg.j2\" %}",
        )],
    );
    let t = Templates::from_dir(tmp.path()).unwrap();
    vet(&t).unwrap();
    let snap = golden("dual-stack-mesh");
    let sel = CalicoSelectors::default();
    let builtin = bgp::render(&snap, "n1", &RenderOptions::default(), &sel).unwrap();
    let custom = bgp::render_with(&snap, "n1", &RenderOptions::default(), &sel, &t).unwrap();
    for (name, body) in &builtin.files {
        let got = String::from_utf8(custom.files[name].clone()).unwrap();
        let want = String::from_utf8(body.clone()).unwrap();
        if name == "bird.cfg" || name == "bird6.cfg" {
            // One template serves both families.
            assert_eq!(got, format!("# Site: n1 (rack 7)\n{want}"), "{name}");
        } else {
            assert_eq!(got, want, "{name} has no custom template");
        }
    }
    assert_ne!(custom.content_hash(), builtin.content_hash());
    assert_eq!(
        t.source_of("bird.cfg").unwrap(),
        tmp.path().join("bird.cfg.j2").display().to_string()
    );
    assert_eq!(t.source_of("bird_ipam.cfg").unwrap(), "builtin/bird_ipam.cfg.j2");

    // A bird6-only template applies to the IPv6 files alone.
    write(
        tmp.path(),
        &[("bird6.cfg.j2", "# v6 only\n{% include \"builtin/bird.cfg.j2\" %}")],
    );
    let t = Templates::from_dir(tmp.path()).unwrap();
    vet(&t).unwrap();
    let custom = bgp::render_with(&snap, "n1", &RenderOptions::default(), &sel, &t).unwrap();
    assert_eq!(custom.files["bird.cfg"], builtin.files["bird.cfg"]);
    assert!(custom.files["bird6.cfg"].starts_with(b"# v6 only\n"));
}

struct BadCase {
    name: String,
    as_file: String,
    expect: Vec<String>,
    text: String,
}

fn bad_cases() -> Vec<BadCase> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-inputs/templates");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "j2"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let get = |key: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(&format!("# {key}: ")).map(str::to_string))
                    .collect()
            };
            BadCase {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                as_file: get("as").pop().expect("a case names its template file: # as:"),
                expect: get("expect"),
                text,
            }
        })
        .collect()
}

#[test]
fn bad_templates_are_refused_naming_the_template_and_line() {
    require_bird();
    let cases = bad_cases();
    assert!(cases.len() >= 10, "only {} template cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        assert!(!c.expect.is_empty(), "{}: a case needs # expect:", c.name);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(&c.as_file), &c.text).unwrap();
        let err = match Templates::from_dir(tmp.path()) {
            Err(e) => e.to_string(),
            Ok(t) => match vet(&t) {
                Err(e) => e.to_string(),
                Ok(()) => {
                    failures.push(format!("{}: accepted", c.name));
                    continue;
                }
            },
        };
        // The error names the folder (so the file) the template came from.
        if !err.contains(&tmp.path().display().to_string()) {
            failures.push(format!("{}: {err:?} does not name the template folder", c.name));
        }
        for want in &c.expect {
            if !err.contains(want.as_str()) {
                failures.push(format!("{}: {err:?} lacks {want:?}", c.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn node_files(custom: &mut Custom, snap: &Snapshot, node: &str) -> BTreeMap<String, Vec<u8>> {
    tortie::node::template::render(
        Some(custom),
        snap,
        node,
        &RenderOptions::default(),
        &CalicoSelectors::default(),
    )
    .unwrap()
    .files
}

#[test]
fn the_agent_keeps_the_last_accepted_templates_and_reports_refusals() {
    require_bird();
    let tmp = tempfile::tempdir().unwrap();
    let snap = golden("mesh-three-nodes");
    let builtin = bgp::render(
        &snap,
        "n1",
        &RenderOptions::default(),
        &CalicoSelectors::default(),
    )
    .unwrap()
    .files;
    let mut custom = Custom::new(tmp.path().to_path_buf());

    // Empty folder (the ConfigMap is absent): built-in templates, not a refusal.
    custom.refresh();
    let v = custom.to_report().unwrap();
    assert!(!v.rejected, "{v:?}");
    assert!(custom.templates().is_none());
    assert_eq!(node_files(&mut custom, &snap, "n1"), builtin);
    custom.reported(v);
    assert!(custom.to_report().is_none(), "reported once");

    // A good template: accepted and used.
    let good = "# custom\n{% include \"builtin/bird_aggr.cfg.j2\" %}";
    write(tmp.path(), &[("bird_aggr.cfg.j2", good)]);
    assert!(custom.changed());
    custom.refresh();
    let v = custom.to_report().unwrap();
    assert!(!v.rejected && v.message.contains("accepted"), "{v:?}");
    custom.reported(v);
    let files = node_files(&mut custom, &snap, "n1");
    assert_eq!(
        files["bird_aggr.cfg"],
        [b"# custom\n".as_slice(), &builtin["bird_aggr.cfg"]].concat()
    );

    // A bad one: refused, naming the file and BIRD's line; the last accepted one stays.
    write(
        tmp.path(),
        &[(
            "bird_aggr.cfg.j2",
            "not bird at all;\n{% include \"builtin/bird_aggr.cfg.j2\" %}",
        )],
    );
    custom.refresh();
    let v = custom.to_report().unwrap();
    assert!(v.rejected, "{v:?}");
    let file = tmp.path().join("bird_aggr.cfg.j2").display().to_string();
    assert!(v.message.contains(&file), "{}", v.message);
    assert!(v.message.contains("line 1 column"), "{}", v.message);
    assert!(
        v.message.contains("the last accepted templates stay in use"),
        "{}",
        v.message
    );
    custom.reported(v);
    assert_eq!(node_files(&mut custom, &snap, "n1"), files);

    // A template that only fails on this node's own inputs: the built-in output is installed.
    let only_n2 = "{% include \"builtin/bird.cfg.j2\" %}{% if node == \"n2\" %}garbage here;\n{% endif %}";
    write(tmp.path(), &[("bird.cfg.j2", only_n2)]);
    custom.refresh();
    let v = custom.to_report().unwrap();
    assert!(!v.rejected, "passes on the samples: {v:?}");
    custom.reported(v);
    assert_eq!(
        node_files(&mut custom, &snap, "n1")["bird.cfg"],
        builtin["bird.cfg"]
    );
    assert!(custom.to_report().is_none(), "n1 renders fine");
    let n2_builtin = bgp::render(
        &snap,
        "n2",
        &RenderOptions::default(),
        &CalicoSelectors::default(),
    )
    .unwrap()
    .files;
    assert_eq!(node_files(&mut custom, &snap, "n2"), n2_builtin);
    let v = custom.to_report().unwrap();
    assert!(v.rejected, "{v:?}");
    assert!(
        v.message.contains("node n2's inputs")
            && v.message
                .contains(&tmp.path().join("bird.cfg.j2").display().to_string()),
        "{}",
        v.message
    );
    assert!(
        v.message
            .contains("the built-in templates render this node's config"),
        "{}",
        v.message
    );
}

#[test]
fn tortie_render_uses_a_template_dir() {
    require_bird();
    let tmp = tempfile::tempdir().unwrap();
    let tdir = tmp.path().join("templates");
    std::fs::create_dir(&tdir).unwrap();
    std::fs::write(
        tdir.join("bird.cfg.j2"),
        "# rendered for {{ node }}\n{% include \"builtin/bird.cfg.j2\" %}",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bgp/dual-stack-mesh/input");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["render", "--node", "n1", "--check", "-f"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--template-dir")
        .arg(&tdir)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let cfg = std::fs::read_to_string(out.join("bird.cfg")).unwrap();
    assert!(cfg.starts_with("# rendered for n1\n"), "{cfg}");
    // A syntax error: the command fails naming the file and line.
    std::fs::write(tdir.join("bird.cfg.j2"), "line one\n{% if %}\n").unwrap();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["render", "--node", "n1", "-f"])
        .arg(&input)
        .arg("--template-dir")
        .arg(&tdir)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains(&format!("{} line 2", tdir.join("bird.cfg.j2").display())),
        "{err}"
    );
}
