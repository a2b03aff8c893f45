//! The agent's install step against the real BIRD parser (no daemon): unchanged content is not
//! rewritten, a config BIRD rejects never replaces the installed one.

use std::collections::BTreeMap;

use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};
use tortie::cli::agent::{self, Applied, BirdError, Reload};

fn rendered() -> BTreeMap<String, Vec<u8>> {
    let mut snap = Snapshot::default();
    snap.add_manifests(
        "t",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  annotations:\n    projectcalico.org/IPv4Address: 10.0.0.1/24\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n  annotations:\n    projectcalico.org/IPv4Address: 10.0.0.2/24\n",
    )
    .unwrap();
    bgp::render(
        &snap,
        "n1",
        &RenderOptions::default(),
        &CalicoSelectors::default(),
    )
    .unwrap()
    .files
}

#[test]
fn installs_once_then_reports_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let files = rendered();
    assert_eq!(
        agent::apply(dir.path(), &files, &Reload::default(), false).unwrap(),
        Applied::Reloaded
    );
    for (n, b) in &files {
        assert_eq!(&std::fs::read(dir.path().join(n)).unwrap(), b);
    }
    assert_eq!(
        agent::apply(dir.path(), &files, &Reload::default(), false).unwrap(),
        Applied::Unchanged
    );
    // No staging leftovers.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

#[test]
fn rejected_config_keeps_the_installed_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = rendered();
    agent::apply(dir.path(), &good, &Reload::default(), false).unwrap();
    let mut bad = good.clone();
    bad.insert(
        "bird_ipam.cfg".into(),
        b"filter calico_kernel_programming { oops }\n".to_vec(),
    );
    let err = agent::apply(dir.path(), &bad, &Reload::default(), false).unwrap_err();
    match &err {
        BirdError::Rejected { program, message, .. } => {
            assert_eq!(program, "bird");
            assert!(message.contains("bird_ipam.cfg"), "{message}");
        }
        other => panic!("expected a parse rejection, got {other}"),
    }
    for (n, b) in &good {
        assert_eq!(&std::fs::read(dir.path().join(n)).unwrap(), b, "{n} was replaced");
    }
}

#[test]
fn reload_without_a_daemon_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let reload = Reload {
        bird_socket: Some(dir.path().join("no-such.ctl")),
        bird6_socket: None,
    };
    let err = agent::apply(dir.path(), &rendered(), &reload, false).unwrap_err();
    assert!(err.to_string().contains("no-such.ctl"), "{err}");
}

#[test]
fn a_failed_reload_is_retried_although_the_files_are_installed() {
    let dir = tempfile::tempdir().unwrap();
    let files = rendered();
    let reload = Reload {
        bird_socket: Some(dir.path().join("no-such.ctl")),
        bird6_socket: None,
    };
    let err = agent::apply(dir.path(), &files, &reload, false).unwrap_err();
    assert!(err.installed_not_reloaded(), "{err}");
    // The files went in before the reload failed: the retry must not call them current.
    for (n, b) in &files {
        assert_eq!(&std::fs::read(dir.path().join(n)).unwrap(), b);
    }
    let err = agent::apply(dir.path(), &files, &reload, true).unwrap_err();
    assert!(err.to_string().contains("no-such.ctl"), "{err}");
    assert_eq!(
        agent::apply(dir.path(), &files, &Reload::default(), true).unwrap(),
        Applied::Reloaded
    );
    assert_eq!(
        agent::apply(dir.path(), &files, &Reload::default(), false).unwrap(),
        Applied::Unchanged
    );
}
