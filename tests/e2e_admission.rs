//! Admission-time validation against the real kube-apiserver: every example manifest is accepted by
//! `kubectl apply --dry-run=server`, and every invalid manifest of the bad-input corpus
//! (`tests/bad-inputs/admission/`) is rejected by the CRDs' schema and CEL rules with a message that
//! names the offending field. Both CRD modes are checked: the v3
//! CRDs are installed beside the v1 ones (different groups, so they do not interfere).

mod support;

use support::*;

/// A minimal manifest of `kind` in `mode` (for the boundary cases below).
fn manifest(mode: &str, kind: &str, name: &str, spec: &str) -> String {
    let head = format!(
        "apiVersion: crd.projectcalico.org/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n  {spec}\n"
    );
    in_mode(mode, &head)
}

/// The corpus is written in v1 form; v3 mode differs only in group, the IPAM config kind and
/// BlockAffinity `deleted` (a string in v1, written `deleted: "false"`; a boolean in v3).
fn in_mode(mode: &str, manifest: &str) -> String {
    if mode == "v1" {
        return manifest.to_string();
    }
    manifest
        .replace(
            "apiVersion: crd.projectcalico.org/v1",
            "apiVersion: projectcalico.org/v3",
        )
        .replace("kind: IPAMConfig\n", "kind: IPAMConfiguration\n")
        .replace("  deleted: \"false\"\n", "  deleted: false\n")
}

/// The YAML documents of a case (split on `---` lines; comment-only documents dropped).
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for l in text.lines() {
        if l.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let d = docs.last_mut().unwrap();
            d.push_str(l);
            d.push('\n');
        }
    }
    docs.retain(|d| d.lines().any(|l| !l.trim().is_empty() && !l.starts_with('#')));
    docs
}

/// An UPDATE case: `before` is created for real, `after` is applied over it (server dry run, so
/// the CRDs' transition rules see the stored object as `oldSelf`), then `before` is deleted.
/// With `expect` texts, the update must be rejected with all of them; without, it must be accepted AND
/// change the object (kubectl reports `configured`, not `unchanged`: an update that sends nothing
/// would prove nothing). Returns the failure, if any.
fn check_update(before: &str, after: &str, expect: &[&str]) -> Option<String> {
    let out = kubectl_stdin(&["apply", "-f", "-"], before);
    if !out.status.success() {
        return Some(format!(
            "the object before the update was rejected:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], after);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing = expect.iter().find(|e| !stderr.contains(**e));
    let failure = match (expect.is_empty(), out.status.success()) {
        (false, true) => Some("update accepted, but must be rejected".to_string()),
        (false, false) if missing.is_some() => Some(format!(
            "update rejected without {:?}:\n{}",
            missing.unwrap(),
            stderr.trim()
        )),
        (false, false) => None,
        (true, false) => Some(format!(
            "update rejected, but must be accepted:\n{}",
            stderr.trim()
        )),
        (true, true) if !stdout.contains("configured") => Some(format!(
            "update accepted but changed nothing ({}): the case checks no transition",
            stdout.trim()
        )),
        (true, true) => None,
    };
    kubectl_stdin_ok(&["delete", "--ignore-not-found", "-f", "-"], before);
    failure
}

/// Walks `tests/bad-inputs/admission/`: each file is one invalid object with `# expect: TEXT`
/// lines; the apiserver must reject it, in both modes, with a message containing every TEXT (the
/// first names the field). A file with two documents is an update of the first by the second
/// ([`check_update`]): rejected with TEXT, or accepted when the file says `# update: accepted`.
#[test]
fn invalid_manifests_are_rejected_naming_the_field() {
    install_crds("crds/v3");
    let files = corpus::files("admission", None, 50);
    let mut failures = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy();
        let expect: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: ").map(str::trim_end))
            .collect();
        let update_ok = text.lines().any(|l| l.trim_end() == "# update: accepted");
        let docs = documents(&text).len();
        assert!(
            docs == 1 || docs == 2,
            "{name}: {docs} documents (one for a create, two for an update)"
        );
        assert!(
            expect.is_empty() == update_ok && (!update_ok || docs == 2),
            "{name}: needs an `# expect:` line, or (an update) `# update: accepted`"
        );
        for mode in ["v1", "v3"] {
            let m = in_mode(mode, &text);
            if docs == 2 {
                let d = documents(&m);
                if let Some(e) = check_update(&d[0], &d[1], &expect) {
                    failures.push(format!("[{mode}] {name}: {e}"));
                }
                continue;
            }
            let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                failures.push(format!("[{mode}] {name}: accepted, but must be rejected"));
            } else if let Some(e) = expect.iter().find(|e| !stderr.contains(**e)) {
                failures.push(format!(
                    "[{mode}] {name}: rejected without {e:?}:\n{}",
                    stderr.trim()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n\n{}",
        failures.len(),
        2 * files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn valid_objects_pass_admission() {
    install_crds("crds/v3");
    // Boundary values that must stay accepted.
    let ok = [
        ("IPPool", "p", "cidr: 10.48.0.0/20\n  blockSize: 20"),
        ("IPPool", "p", "cidr: 10.48.0.0/32\n  blockSize: 32"),
        (
            "IPPool",
            "p",
            "cidr: fd00:10:48::/64\n  blockSize: 116\n  vxlanMode: Always",
        ),
        (
            "IPPool",
            "p",
            "cidr: 10.48.0.0/16\n  ipipMode: CrossSubnet\n  vxlanMode: Never",
        ),
        ("IPPool", "p", "cidr: 10.48.0.0/30\n  disabled: true"),
        (
            "BGPPeer",
            "peer",
            "peerIP: 192.168.1.10:178\n  asNumber: 4294967295",
        ),
        ("BGPPeer", "peer", "peerIP: '[fd00::1]:178'\n  asNumber: 65000"),
        (
            "BGPPeer",
            "peer",
            "nodeSelector: route-reflector == 'true'\n  peerSelector: all()",
        ),
        (
            "BGPConfiguration",
            "node.node-1",
            "listenPort: 1790\n  logSeverityScreen: Debug",
        ),
        // Calico accepts addresses, CIDRs and CIDRs with host bits (their network is reserved).
        (
            "IPReservation",
            "r",
            "reservedCIDRs: [10.0.0.0/24, 10.0.1.1, 'fd00::/120', 'fd00::1', 10.0.2.5/24]",
        ),
        (
            "BGPFilter",
            "f",
            "exportV4: [{action: Accept, cidr: 10.0.0.0/8, matchOperator: In, prefixLength: {min: 8, max: 32}}]\n  importV6: [{action: Reject, cidr: 'fd00::/8', matchOperator: NotIn, prefixLength: {max: 128}}, {action: Accept, interface: '*'}]",
        ),
        // Calico's CalicoNodeStatus bounds: 0 (report once) to one day, any set of classes.
        (
            "CalicoNodeStatus",
            "status",
            "node: node-1.example.com\n  classes: [Agent, BGP, Routes]\n  updatePeriodSeconds: 0",
        ),
        (
            "CalicoNodeStatus",
            "status",
            "node: n1\n  classes: []\n  updatePeriodSeconds: 86400",
        ),
    ];
    for mode in ["v1", "v3"] {
        for (kind, name, spec) in ok {
            let m = manifest(mode, kind, name, spec);
            let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
            assert!(
                out.status.success(),
                "[{mode}] rejected a valid object:\n{m}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The BGPFilters and BGPPeers of the golden cases that reproduce Calico's confd goldens (every
/// BGPFilter feature) pass admission in both modes.
#[test]
fn calicos_bgpfilter_examples_pass_admission() {
    install_crds("crds/v3");
    let root = repo_dir().join("tests/golden/bgp");
    let mut checked = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let dir = e.unwrap().path();
        if !dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("calico-bgpfilter")
        {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("input/manifests.yaml")).unwrap();
        for doc in documents(&text) {
            if !doc.contains("kind: BGPFilter") && !doc.contains("kind: BGPPeer") {
                continue;
            }
            let v1 = doc.replace(
                "apiVersion: projectcalico.org/v3",
                "apiVersion: crd.projectcalico.org/v1",
            );
            for mode in ["v1", "v3"] {
                let m = in_mode(mode, &v1);
                let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
                assert!(
                    out.status.success(),
                    "[{mode}] {}: rejected a valid object:\n{m}\n{}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "only {checked} objects checked");
}

/// Values Calico accepts for the BGP fields that reach BIRD must stay accepted (the rules that
/// keep BIRD-breaking values out must not reach further).
#[test]
fn calico_valid_bgp_values_pass_admission() {
    install_crds("crds/v3");
    let ok = [
        ("BGPPeer", "peer", "peerIP: 10.0.0.1\n  asNumber: 65000"),
        ("BGPPeer", "peer", "peerIP: 10.0.0.1:179\n  asNumber: 65000"),
        ("BGPPeer", "peer", "peerIP: 10.0.0.1:65535\n  asNumber: 65000"),
        ("BGPPeer", "peer", "peerIP: 10.0.0.1:1\n  asNumber: 65000"),
        ("BGPPeer", "peer", "peerIP: 'fd00::1'\n  asNumber: 65000"),
        (
            "BGPPeer",
            "peer",
            "peerIP: '[fd00::1]:179'\n  asNumber: 65000\n  reachableBy: 'fd00::fe'",
        ),
        (
            "BGPPeer",
            "peer",
            "peerIP: 10.0.0.1:179\n  asNumber: 65000\n  reachableBy: 10.0.0.254",
        ),
        (
            "BGPPeer",
            "peer",
            "peerIP: 10.0.0.1\n  asNumber: 65000\n  localASNumber: 4294967295\n  keepaliveTime: 30s\n  maxRestartTime: 1m30s",
        ),
        (
            "BGPPeer",
            "peer",
            "peerIP: 10.0.0.1\n  asNumber: 65000\n  keepaliveTime: '0'\n  maxRestartTime: 1.5h",
        ),
        (
            "BGPPeer",
            "peer",
            "peerIP: 10.0.0.1\n  asNumber: 65000\n  keepaliveTime: 500ms\n  maxRestartTime: +120s",
        ),
        (
            "BGPConfiguration",
            "default",
            "communities:\n  - {name: std, value: '65000:100'}\n  - {name: large, value: '65000:1:2'}\n  - {name: edge, value: '4294967295:4294967295:4294967295'}\n  prefixAdvertisements:\n  - {cidr: 10.48.0.0/16, communities: [std, large, edge, '65535:65535', '0:0']}\n  - {cidr: 'fd00:48::/64', communities: ['65000:1:2']}\n  - {cidr: 192.0.2.7/32, communities: [std]}",
        ),
        (
            "BGPConfiguration",
            "default",
            "serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: 'fd00:96::/112'}]\n  serviceExternalIPs: [{cidr: 192.0.2.7/32}]\n  serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]",
        ),
        (
            "BGPConfiguration",
            "default",
            "nodeMeshMaxRestartTime: 120s\n  ignoredInterfaces: ['docker*', 'veth.1-x_y', 'eth0']\n  localWorkloadPeeringIPV4: 169.254.0.179\n  localWorkloadPeeringIPV6: 'fe80::179'",
        ),
    ];
    for mode in ["v1", "v3"] {
        for (kind, name, spec) in ok {
            let m = manifest(mode, kind, name, spec);
            let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
            assert!(
                out.status.success(),
                "[{mode}] rejected a Calico-valid object:\n{m}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn every_example_is_accepted_by_the_server() {
    install_crds("crds/v3");
    for mode in ["v1", "v3"] {
        let dir = repo_dir().join("examples").join(mode);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            // The yaobank Deployments need their Namespace to exist for a server dry run of the
            // namespaced objects; dry-run the namespace for real first, then the file.
            let path = f.to_string_lossy().into_owned();
            if path.ends_with("03-yaobank.yaml") {
                kubectl_stdin_ok(
                    &["apply", "-f", "-"],
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: yaobank\n",
                );
            }
            let out = kubectl(&["apply", "--dry-run=server", "-f", &path]);
            assert!(
                out.status.success(),
                "{path} rejected by the server: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let nodes = repo_dir().join("examples/lab-nodes.yaml");
    kubectl_ok(&["apply", "--dry-run=server", "-f", &nodes.to_string_lossy()]);
}

/// Calico selectors of every form, with the spacing Calico's parser allows, pass the selector rule
/// on every selector field in both modes (the rejected forms are in the corpus, `2*-selector-*`).
#[test]
fn valid_selectors_pass_admission() {
    install_crds("crds/v3");
    // The longest selector the schema allows, and one nested past the rule's count of '(' (left
    // to the operator, so admitted): the CEL rule stays within the apiserver's cost budget.
    let long = format!("{}has(z)", "has(a.b/c) && ".repeat(72));
    assert!(long.len() <= 1024 && long.len() > 1000, "{}", long.len());
    let deep = format!("{}has(a){}", "(".repeat(40), ")".repeat(40));
    let selectors = [
        long.as_str(),
        deep.as_str(),
        "",
        "all()",
        " all( ) ",
        "has(x)",
        "!has(x)",
        "! !has(x)",
        "a == 'b' && c in {'d','e'}",
        "a=='b'\t||\tc != \"d\"",
        "x contains 'y'",
        "x starts with 'a' && x ends with 'z'",
        "x startswith 'a' && x endswith 'z'",
        "x in {}",
        "x in {'a',}",
        "x not in {'a', 'b'}",
        "x notin {'a'}",
        "!(!has(a) || has(b)) && (k in {'(', ')'})",
        "((kubernetes.io/hostname == 'node-1'))",
        "a == 'line\nbreak and \u{a0} inside a string'",
    ];
    for mode in ["v1", "v3"] {
        // One server dry run per mode for all of them; a rejection names the object.
        let mut docs = vec![];
        for (i, s) in selectors.iter().enumerate() {
            let q = serde_json::to_string(s).unwrap();
            for (j, (kind, spec)) in [
                (
                    "IPPool",
                    format!("cidr: 10.48.0.0/16\n  nodeSelector: {q}\n  namespaceSelector: {q}"),
                ),
                ("BGPPeer", format!("nodeSelector: {q}\n  peerSelector: {q}")),
                (
                    "BGPPeer",
                    format!("asNumber: 65000\n  localWorkloadSelector: {q}"),
                ),
            ]
            .into_iter()
            .enumerate()
            {
                docs.push(manifest(mode, kind, &format!("sel-{i}-{j}"), &spec));
            }
        }
        let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &docs.join("---\n"));
        let legend: Vec<String> = selectors
            .iter()
            .enumerate()
            .map(|(i, s)| format!("sel-{i}-*: {s:?}"))
            .collect();
        assert!(
            out.status.success(),
            "[{mode}] rejected valid selectors:\n{}\n\n{}",
            String::from_utf8_lossy(&out.stderr),
            legend.join("\n")
        );
        let applied = String::from_utf8_lossy(&out.stdout)
            .matches("(server dry run)")
            .count();
        assert_eq!(applied, docs.len(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// `secretKeyRef.optional`, as in Kubernetes' SecretKeySelector and Calico's schema, on both
/// password fields and in both modes.
#[test]
fn optional_secret_refs_pass_admission() {
    install_crds("crds/v3");
    for mode in ["v1", "v3"] {
        for (kind, name, spec) in [
            (
                "BGPPeer",
                "peer",
                "peerIP: 192.168.1.10\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: s, key: k, optional: true}",
            ),
            (
                "BGPPeer",
                "peer",
                "peerIP: 192.168.1.10\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: s, key: k, optional: false}",
            ),
            (
                "BGPConfiguration",
                "default",
                "nodeMeshPassword:\n    secretKeyRef: {name: s, key: k, optional: true}",
            ),
        ] {
            let m = manifest(mode, kind, name, spec);
            let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
            assert!(
                out.status.success(),
                "[{mode}] rejected a valid object:\n{m}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
