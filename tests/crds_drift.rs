//! The committed CRDs must be exactly what the Rust types generate, in both places they are kept:
//! `crds/` (for `kubectl apply -f crds/<mode>/`) and `charts/tortie/files/crds/` (what the chart's
//! `templates/crds.yaml` renders, so `helm install tortie charts/tortie` from a checkout brings
//! them). `make crds` rewrites both.

use std::path::Path;

use tortie::api::{CrdMode, crd};

fn check(dir_in_repo: &str) {
    for mode in [CrdMode::V1, CrdMode::V3] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(dir_in_repo)
            .join(mode.to_string());
        let want = crd::crds(mode);
        let mut expected_files: Vec<String> = want.iter().map(crd::file_name).collect();
        expected_files.sort();
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        assert_eq!(
            present,
            expected_files,
            "{}: files differ from the types; run `make crds`",
            dir.display()
        );
        for c in &want {
            let path = dir.join(crd::file_name(c));
            let committed = std::fs::read_to_string(&path).unwrap();
            let generated = crd::to_yaml(std::slice::from_ref(c)).unwrap();
            assert!(
                committed == generated,
                "{} drifted from the Rust types; run `make crds` and commit the result",
                path.display()
            );
        }
    }
}

#[test]
fn committed_crds_match_the_types() {
    check("crds");
}

#[test]
fn the_charts_crds_match_the_types() {
    check("charts/tortie/files/crds");
}

/// Helm installs every manifest under a chart's `crds/` folder, subfolders included, with no way
/// to choose: both modes' CRDs (and the Installation CRD twice) would be created, and a cluster
/// would serve both Calico groups. The chart renders the chosen mode's CRDs from `files/crds/`
/// instead (and can upgrade them, which Helm never does for `crds/`).
#[test]
fn the_chart_has_no_helm_crds_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tortie/crds");
    assert!(
        !dir.exists(),
        "{}: Helm would install both CRD modes from it; the CRDs belong in charts/tortie/files/crds",
        dir.display()
    );
}
