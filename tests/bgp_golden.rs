//! Golden files for the BIRD renderer: every case under `tests/golden/bgp/<case>/` holds its
//! manifests in `input/`, optional settings in `case.yaml`, and the expected output in
//! `expected/` (the six files, `warnings.txt`, or `error.txt` when rendering must fail).
//! Each expected set is also given to the real BIRD 1.6 parser (`bird -p -c`, `bird6 -p -c`).
//! `UPDATE_GOLDEN=1 cargo test --test bgp_golden` rewrites the expected files.
//! Cases with `calico: <dir>` hold the inputs of one of Calico's own confd goldens; with a Calico
//! checkout, `CALICO_SRC=/path/to/calico cargo test --test bgp_golden -- --ignored` checks that
//! tortie's expected files are Calico's (blank lines and the header comment aside).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    /// What the case checks (documentation only).
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    router_id: Option<String>,
    #[serde(default)]
    bird_fork: bool,
    /// The Calico confd golden (`confd/tests/compiled_templates/<this>`) the case reproduces.
    #[serde(default)]
    calico: Option<String>,
}

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bgp")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .expect("tests/golden/bgp exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    v.sort();
    v
}

/// Renders a case: the files plus `warnings.txt`, or `error.txt` alone.
fn render_case(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let case: Case = match std::fs::read_to_string(dir.join("case.yaml")) {
        Ok(t) => serde_saphyr::from_str(&t).expect("case.yaml parses"),
        Err(_) => Case::default(),
    };
    let mut snap = Snapshot::default();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir.join("input"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    let mut out = BTreeMap::new();
    for p in inputs {
        let text = std::fs::read_to_string(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if let Err(e) = snap.add_manifests(&name, &text) {
            out.insert("error.txt".into(), format!("{e}\n").into_bytes());
            return out;
        }
    }
    let opts = RenderOptions {
        router_id: case.router_id.clone(),
        bird_fork: case.bird_fork,
    };
    let node = case.node.as_deref().unwrap_or("n1");
    match bgp::render(&snap, node, &opts, &CalicoSelectors::default()) {
        Ok(r) => {
            out.extend(r.files.clone());
            let mut w = String::new();
            for line in &r.warnings {
                w.push_str(line);
                w.push('\n');
            }
            if r.has_password {
                w.push_str("(has password: publish as a Secret)\n");
            }
            if let Some(n) = r.mesh_size {
                w.push_str(&format!("(mesh size: {n})\n"));
            }
            out.insert("warnings.txt".into(), w.into_bytes());
        }
        Err(e) => {
            out.insert("error.txt".into(), format!("{e}\n").into_bytes());
        }
    }
    out
}

fn read_expected(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("expected")) {
        for e in rd {
            let p = e.unwrap().path();
            m.insert(
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    m
}

/// Runs `prog -p -c main` over a copy of the files; returns BIRD's complaint on failure.
fn bird_parse(files: &BTreeMap<String, Vec<u8>>, v6: bool) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    for (n, b) in files {
        std::fs::write(tmp.path().join(n), b).unwrap();
    }
    let (prog, main) = if v6 {
        ("bird6", "bird6.cfg")
    } else {
        ("bird", "bird.cfg")
    };
    let out = Command::new(prog)
        .arg("-p")
        .arg("-c")
        .arg(tmp.path().join(main))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); install BIRD 1.6: apt-get install -y bird"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

#[test]
fn golden_cases_render_exactly_and_parse_in_bird() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "expected at least 30 golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for dir in &cases {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let got = render_case(dir);
        if update {
            let exp = dir.join("expected");
            let _ = std::fs::remove_dir_all(&exp);
            std::fs::create_dir_all(&exp).unwrap();
            for (n, b) in &got {
                std::fs::write(exp.join(n), b).unwrap();
            }
        }
        let want = read_expected(dir);
        if want.is_empty() {
            failures.push(format!("{name}: no expected/ files (run with UPDATE_GOLDEN=1)"));
            continue;
        }
        if got != want {
            let names: std::collections::BTreeSet<_> = got.keys().chain(want.keys()).collect();
            for n in names {
                let g = got.get(n).map(|b| String::from_utf8_lossy(b).to_string());
                let w = want.get(n).map(|b| String::from_utf8_lossy(b).to_string());
                if g != w {
                    let g = g.unwrap_or_else(|| "<missing>".into());
                    let w = w.unwrap_or_else(|| "<missing>".into());
                    failures.push(format!(
                        "{name}/{n} differs:\n{}",
                        pretty_assertions::StrComparison::new(&w, &g)
                    ));
                }
            }
            continue;
        }
        if want.contains_key("error.txt") {
            continue;
        }
        let case: Case = std::fs::read_to_string(dir.join("case.yaml"))
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap())
            .unwrap_or_default();
        for v6 in [false, true] {
            let res = bird_parse(&want, v6);
            let fork_only = case.bird_fork
                && !v6
                && String::from_utf8_lossy(&want["bird_ipam.cfg"]).contains("krt_tunnel");
            match (res, fork_only) {
                (Ok(()), false) => {}
                (Err(e), false) => failures.push(format!(
                    "{name}: {} rejects the golden: {e}",
                    if v6 { "bird6" } else { "bird" }
                )),
                // Stock BIRD must reject exactly the fork's one addition, nothing else.
                (Err(e), true) if e.contains("You may set only variables") => {}
                (Err(e), true) => {
                    failures.push(format!("{name}: stock bird rejects more than krt_tunnel: {e}"))
                }
                (Ok(()), true) => {
                    failures.push(format!("{name}: stock bird unexpectedly accepts krt_tunnel"))
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Same input, same bytes: rendering twice, and with the objects in another order.
#[test]
fn rendering_is_deterministic_under_input_order() {
    for dir in cases() {
        let a = render_case(&dir);
        let b = render_case(&dir);
        assert_eq!(a, b, "{}", dir.display());
        // Reverse every list of the snapshot.
        let mut snap = Snapshot::default();
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir.join("input"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        for p in &inputs {
            if snap
                .add_manifests("x", &std::fs::read_to_string(p).unwrap())
                .is_err()
            {
                continue;
            }
        }
        let case: Case = std::fs::read_to_string(dir.join("case.yaml"))
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap())
            .unwrap_or_default();
        let opts = RenderOptions {
            router_id: case.router_id.clone(),
            bird_fork: case.bird_fork,
        };
        let node = case.node.as_deref().unwrap_or("n1");
        let sel = CalicoSelectors::default();
        let fwd = bgp::render(&snap, node, &opts, &sel);
        snap.nodes.reverse();
        snap.peers.reverse();
        snap.filters.reverse();
        snap.pools.reverse();
        snap.affinities.reverse();
        snap.bgp_configs.reverse();
        let rev = bgp::render(&snap, node, &opts, &sel);
        match (fwd, rev) {
            (Ok(f), Ok(r)) => assert_eq!(f.files, r.files, "{}", dir.display()),
            (Err(_), Err(_)) => {}
            _ => panic!("{}: order changed success", dir.display()),
        }
    }
}

/// tortie's expected files of the `calico:` cases against Calico's confd goldens, compared as
/// Calico's harness compares (blank lines dropped); only the header comment names the generator.
#[test]
#[ignore = "needs a Calico checkout: CALICO_SRC=/path/to/calico"]
fn calico_cases_match_calicos_confd_goldens() {
    let src = std::env::var("CALICO_SRC").expect("set CALICO_SRC to a checkout of projectcalico/calico");
    let norm = |s: &str| -> String {
        s.replace("# Generated by tortie", "# Generated by confd")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in cases() {
        let case: Case = std::fs::read_to_string(dir.join("case.yaml"))
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap())
            .unwrap_or_default();
        let Some(golden) = case.calico else { continue };
        let theirs = Path::new(&src)
            .join("confd/tests/compiled_templates")
            .join(&golden);
        for f in [
            "bird.cfg",
            "bird6.cfg",
            "bird_ipam.cfg",
            "bird6_ipam.cfg",
            "bird_aggr.cfg",
            "bird6_aggr.cfg",
        ] {
            let want = std::fs::read_to_string(theirs.join(f))
                .unwrap_or_else(|e| panic!("{}: {e}", theirs.join(f).display()));
            let got = std::fs::read_to_string(dir.join("expected").join(f)).unwrap();
            if norm(&got) != norm(&want) {
                failures.push(format!(
                    "{} vs Calico's {golden}/{f}:\n{}",
                    dir.display(),
                    pretty_assertions::StrComparison::new(&norm(&want), &norm(&got))
                ));
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no case names a Calico golden");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
