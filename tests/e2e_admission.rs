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

/// The corpus is written in v1 form; v3 mode differs only in group and the IPAM config kind.
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
}

/// Walks `tests/bad-inputs/admission/`: each file is one invalid object with an `# expect: TEXT`
/// line; the apiserver must reject it, in both modes, with a message containing TEXT (which names
/// the field).
#[test]
fn invalid_manifests_are_rejected_naming_the_field() {
    install_crds("crds/v3");
    let dir = repo_dir().join("tests/bad-inputs/admission");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 50,
        "the admission corpus shrank to {} cases",
        files.len()
    );
    let mut failures = vec![];
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", f.display()));
        for mode in ["v1", "v3"] {
            let m = in_mode(mode, &text);
            let out = kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &m);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let name = f.file_name().unwrap().to_string_lossy();
            if out.status.success() {
                failures.push(format!("[{mode}] {name}: accepted, but must be rejected"));
            } else if !stderr.contains(expect) {
                failures.push(format!(
                    "[{mode}] {name}: rejected without {expect:?}:\n{}",
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
