//! The install-cni part of the bad-input corpus (`tests/bad-inputs/install-cni/`): network configs
//! `tortie install-cni` may be given (the chart's ConfigMap key `config`, or `--config`) that are
//! not a CNI conflist. Each file is the config after its `#` header lines; the installer must
//! refuse it with an error naming the source and containing every `# expect:` text, so nothing
//! that the runtime would reject (or silently skip) lands in the host's network config directory.

mod support;

use tortie::cni::install;

#[test]
fn bad_network_configs_are_refused_naming_source_and_field() {
    let files = support::corpus::files("install-cni", None, 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect:").map(str::trim))
            .collect();
        assert!(!expect.is_empty(), "{}: no `# expect:` line", f.display());
        let config: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let source = f.display().to_string();
        let err = match install::conflist(&config, &source, "/etc/cni/net.d/tortie-kubeconfig") {
            Ok(out) => panic!("{source}: accepted, would install:\n{out}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with(&format!("network config {source}: ")),
            "{source}: the error does not name the source: {err}"
        );
        for want in expect {
            assert!(err.contains(want), "{source}: {err:?} lacks {want:?}");
        }
    }
}
