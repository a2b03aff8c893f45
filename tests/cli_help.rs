//! The command line without a cluster: every `tortie ipam` verb documents its flags in `--help`,
//! shell completion scripts, and `tortie-ipam --version`.

use std::process::{Command, Output, Stdio};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const TORTIE: &str = env!("CARGO_BIN_EXE_tortie");

#[test]
fn every_ipam_verb_documents_its_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &["--kubeconfig <FILE>", "--context <NAME>", "completion"],
        ),
        (
            &["ipam", "--help"],
            &["show", "check", "release", "configure", "split", "--kubeconfig"],
        ),
        (
            &["ipam", "show", "--help"],
            &[
                "--ip <ADDR>",
                "--show-blocks",
                "--show-borrowed",
                "--show-configuration",
                "table",
                "wide",
                "json",
                "yaml",
            ],
        ),
        (
            &["ipam", "check", "--help"],
            &[
                "--show-problem-ips",
                "-o, --output <FORMAT|FILE>",
                "release --from-report",
            ],
        ),
        (
            &["ipam", "release", "--help"],
            &["--ip <ADDR>", "--from-report <FILE>", "--force", "pod came back"],
        ),
        (
            &["ipam", "configure", "--help"],
            &[
                "--strictaffinity <true|false>",
                "--max-blocks-per-host <N>",
                "--kubevirt-ip-persistence",
            ],
        ),
        (
            &["ipam", "split", "--help"],
            &[
                "<NUMBER>",
                "--cidr <CIDR>",
                "--name <NAME>",
                "power of 2",
                "safe while pods run",
            ],
        ),
        (&["completion", "--help"], &["bash", "zsh", "fish"]),
    ];
    for (args, wants) in cases {
        let t = text(&run(TORTIE, args));
        for w in *wants {
            assert!(t.contains(w), "`tortie {}` lacks {w:?}:\n{t}", args.join(" "));
        }
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let bash = text(&run(TORTIE, &["completion", "bash"]));
    assert!(
        bash.contains("_tortie()") && bash.contains("complete -F _tortie"),
        "{bash}"
    );
    // The verbs and their flags complete.
    assert!(
        bash.contains("--show-borrowed") && bash.contains("--from-report"),
        "bash script lacks ipam flags"
    );
    let zsh = text(&run(TORTIE, &["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef tortie"), "{zsh}");
    let fish = text(&run(TORTIE, &["completion", "fish"]));
    assert!(fish.contains("complete -c tortie"), "{fish}");
    let bad = run(TORTIE, &["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn tortie_ipam_tells_its_version_but_a_runtime_call_is_never_an_argument() {
    let ipam = env!("CARGO_BIN_EXE_tortie-ipam");
    let v = text(&run(ipam, &["--version"]));
    assert!(
        v.starts_with(&format!("tortie-ipam {}\n", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("1.0.0"), "{v}");
    let h = text(&run(ipam, &["--help"]));
    assert!(h.contains("CNI_COMMAND"), "{h}");
    let bad = run(ipam, &["--frobnicate"]);
    assert_eq!(bad.status.code(), Some(2));
    // With CNI_COMMAND set, arguments are ignored: the plugin answers VERSION as always.
    let out = Command::new(ipam)
        .arg("--version")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("supportedVersions"),
        "{out:?}"
    );
    // And tortie's own.
    let t = text(&run(TORTIE, &["--version"]));
    assert_eq!(t, format!("tortie {}\n", env!("CARGO_PKG_VERSION")));
}
