//! `crds/` must be exactly what the Rust types generate (`make crds` rewrites it).

use std::path::Path;

use tortie::api::{CrdMode, crd};

#[test]
fn committed_crds_match_the_types() {
    for mode in [CrdMode::V1, CrdMode::V3] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds")
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
