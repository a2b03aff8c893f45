//! One BGP object BIRD would refuse never freezes the others: against the real apiserver, with the
//! BGP controller running, objects written while CRDs without tortie's rules were installed (as
//! after an upgrade from an older CRD, or a tool that skips validation) are left out of the
//! rendered BIRD config, each with a Warning Event naming the field and the Installation's
//! `BGPConfigValid` condition; every node's config still renders, passes `bird -p` and keeps
//! following later changes.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;
use tortie::api::{CrdMode, Installation};
use tortie::controllers::bgp as ctrl;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Removes every CEL rule, range, pattern and required list from a CRD (as an older or foreign
/// CRD might lack them).
fn strip_rules(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("x-kubernetes-validations");
            for (k, x) in m.iter_mut() {
                if k != "properties"
                    && (k == "maximum" || k == "minimum" || k == "pattern" || k == "required")
                {
                    *x = Value::Null;
                }
                strip_rules(x);
            }
            m.retain(|_, x| !x.is_null());
        }
        Value::Array(a) => a.iter_mut().for_each(strip_rules),
        _ => {}
    }
}

/// Installs the v1 BGPPeer, BGPConfiguration and BGPFilter CRDs without their rules.
fn install_lax_crds() {
    for crd in tortie::api::crd::crds(CrdMode::V1) {
        let name = crd.metadata.name.clone().unwrap_or_default();
        if name != "bgppeers.crd.projectcalico.org"
            && name != "bgpconfigurations.crd.projectcalico.org"
            && name != "bgpfilters.crd.projectcalico.org"
        {
            continue;
        }
        let mut v = serde_json::to_value(&crd).unwrap();
        strip_rules(&mut v);
        v["apiVersion"] = "apiextensions.k8s.io/v1".into();
        v["kind"] = "CustomResourceDefinition".into();
        support::kubectl_stdin_ok(
            // The harness's field manager: fields it owned and this omits are removed.
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=tortie-e2e",
                "-f",
                "-",
            ],
            &v.to_string(),
        );
    }
}

/// Applies `manifest`, retrying while the apiserver still validates with the old schema.
async fn apply_eventually(manifest: &str) {
    support::wait_until("the lax CRDs to take effect", TIMEOUT, || async {
        let out = support::kubectl_stdin(&["apply", "-f", "-"], manifest);
        out.status.success().then_some(())
    })
    .await;
}

fn bird_check(files: &std::collections::BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in files {
        std::fs::write(dir.path().join(k), v).unwrap();
    }
    for (prog, main) in [("bird", "bird.cfg"), ("bird6", "bird6.cfg")] {
        let out = std::process::Command::new(prog)
            .arg("-p")
            .arg("-c")
            .arg(dir.path().join(main))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); install BIRD 1.6: apt-get install -y bird"));
        assert!(
            out.status.success(),
            "{prog} -p refused {main}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            files[main]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_object_is_left_out_and_reported_while_the_rest_keeps_updating() {
    let client = support::client().await;
    let mode = CrdMode::detect(&client).await.expect("CRD mode");
    assert_eq!(mode, CrdMode::V1, "this test strips the v1 CRDs");
    let ns = support::unique_name("bgp-invalid");
    support::create_namespace(&client, &ns, &[]).await;
    let tag = support::unique_name("bi");
    let net = format!("100.67.{}", std::process::id() % 250);
    let nodes: Vec<String> = (1..=2).map(|i| format!("{tag}-n{i}")).collect();
    for (i, n) in nodes.iter().enumerate() {
        let cidr = format!("{net}.{}/24", i + 1);
        support::create_node(
            &client,
            n,
            &[],
            None,
            &[],
            &[("projectcalico.org/IPv4Address", &cidr)],
        )
        .await;
    }
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: operator.tigera.io/v1\nkind: Installation\nmetadata:\n  name: default\nspec: {}\n",
    );

    // Written while CRDs without the rules were installed; the real CRDs come back afterwards.
    install_lax_crds();
    let peer = |name: &str, ip: &str| {
        format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata:\n  name: {tag}-{name}\nspec:\n  peerIP: '{ip}'\n  asNumber: 65000\n"
        )
    };
    apply_eventually(&peer("bad", "192.0.2.1:0")).await;
    // Fits no type of tortie's (a Secret reference without a name): must not stop the watch.
    apply_eventually(&format!(
        "{}  password:\n    secretKeyRef: {{key: pw}}\n",
        peer("odd", "192.0.2.5")
    ))
    .await;
    apply_eventually(
        "apiVersion: crd.projectcalico.org/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  prefixAdvertisements:\n  - {cidr: 10.48.0.1/16, communities: ['65000:100']}\n  - {cidr: 10.49.0.0/16, communities: ['65000:200']}\n  ignoredInterfaces: ['eth\"0', 'docker*']\n",
    )
    .await;
    // A BGPFilter BIRD would refuse (host bits), and a peer naming it beside a good filter.
    let filter = |name: &str, rule: &str| {
        format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPFilter\nmetadata:\n  name: {tag}-{name}\nspec:\n  {rule}\n"
        )
    };
    apply_eventually(&filter(
        "badf",
        "exportV4: [{action: Reject, cidr: 77.0.0.1/16, matchOperator: In}]",
    ))
    .await;
    apply_eventually(&format!(
        "{}  filters: [{tag}-goodf, {tag}-badf]\n",
        peer("filtered", "192.0.2.6")
    ))
    .await;
    support::install_crds("crds/v1");
    support::kubectl_stdin_ok(&["apply", "-f", "-"], &peer("good", "192.0.2.2"));
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &filter(
            "goodf",
            "importV4: [{action: Reject, cidr: 44.0.0.0/16, matchOperator: In}]",
        ),
    );
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!("{}  filters: [{tag}-goodf]\n", peer("goodfiltered", "192.0.2.7")),
    );
    // Valid, but a field tortie does not render yet: reported, never silently dropped.
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata:\n  name: {tag}-lw\nspec:\n  localWorkloadSelector: app == 'bird'\n  asNumber: 65001\n"
        ),
    );

    let controller = support::bgp_lab::spawn_bgp_controller(&client, mode, &ns);
    let published = |want: &'static [&'static str]| {
        let (client, ns) = (client.clone(), ns.clone());
        let nodes = nodes.clone();
        async move {
            let mut out = Vec::new();
            for n in &nodes {
                let (files, _) = support::published_files(&client, &ns, n).await?;
                let main = files.get("bird.cfg")?;
                if !want.iter().all(|w| main.contains(w)) {
                    return None;
                }
                out.push(files);
            }
            Some(out)
        }
    };
    support::wait_until("both nodes' configs with the good peer", TIMEOUT, || {
        published(&["Global_192_0_2_2", "net ~ 10.49.0.0/16", "-\"docker*\""])
    })
    .await;
    let call: &'static str = Box::leak(format!("'bgp_{tag}-goodf_importFilterV4'();").into_boxed_str());
    let want: &'static [&'static str] = Box::leak(vec!["Global_192_0_2_7", call].into_boxed_slice());
    let first = support::wait_until("both nodes' configs with the filtered peer", TIMEOUT, || {
        published(want)
    })
    .await;
    for files in &first {
        let main = &files["bird.cfg"];
        assert!(
            !main.contains("192_0_2_6") && !main.contains("77.0.0.1"),
            "the peer of the bad filter, or the filter, was rendered:\n{main}"
        );
        assert!(
            !main.contains("192_0_2_1") && !main.contains("192.0.2.1"),
            "the bad peer was rendered:\n{main}"
        );
        assert!(
            !main.contains("192_0_2_5"),
            "the undecodable peer was rendered:\n{main}"
        );
        assert!(
            !main.contains("10.48.0.1"),
            "the host-bit prefix was rendered:\n{main}"
        );
        assert!(
            !main.contains("eth\""),
            "the bad interface pattern was rendered:\n{main}"
        );
        bird_check(files);
    }

    // A Warning Event on each bad object, naming the field.
    let events: Api<Event> = Api::all(client.clone());
    let bad_peer = format!("{tag}-bad");
    let odd_peer = format!("{tag}-odd");
    let (bad_filter, filtered, lw) = (
        format!("{tag}-badf"),
        format!("{tag}-filtered"),
        format!("{tag}-lw"),
    );
    for (kind, name, field) in [
        ("BGPPeer", bad_peer.as_str(), "spec.peerIP"),
        ("BGPPeer", odd_peer.as_str(), "spec: cannot be read"),
        ("BGPFilter", bad_filter.as_str(), "spec.exportV4[0].cidr"),
        ("BGPPeer", filtered.as_str(), "spec.filters[1] names BGPFilter"),
        (
            "BGPPeer",
            lw.as_str(),
            "spec.localWorkloadSelector is not supported",
        ),
        ("BGPConfiguration", "default", "spec.prefixAdvertisements[0].cidr"),
        ("BGPConfiguration", "default", "spec.ignoredInterfaces[0]"),
    ] {
        support::wait_until(
            &format!("an Event on {kind} {name} naming {field}"),
            TIMEOUT,
            || {
                let events = events.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    list.items
                        .iter()
                        .any(|e| {
                            e.involved_object.kind.as_deref() == Some(kind)
                                && e.involved_object.name.as_deref() == Some(name)
                                && e.type_.as_deref() == Some("Warning")
                                && e.reason.as_deref() == Some(ctrl::REASON_INVALID)
                                && e.message.as_deref().is_some_and(|m| m.contains(field))
                        })
                        .then_some(())
                }
            },
        )
        .await;
    }

    // The Installation's condition lists them all.
    let insts: Api<Installation> = Api::all(client.clone());
    let cond = |valid: bool| {
        let insts = insts.clone();
        async move {
            let i = insts.get("default").await.ok()?;
            let c = i
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == ctrl::CONDITION_VALID)?;
            (c.status == if valid { "True" } else { "False" }).then_some(c)
        }
    };
    let c = support::wait_until("BGPConfigValid=False on the Installation", TIMEOUT, || {
        cond(false)
    })
    .await;
    assert_eq!(c.reason, ctrl::REASON_INVALID);
    for want in [
        format!("BGPPeer {bad_peer:?}: spec.peerIP"),
        format!("BGPPeer {odd_peer:?}: spec: cannot be read"),
        format!("BGPFilter {bad_filter:?}: spec.exportV4[0].cidr"),
        format!("BGPPeer {lw:?}: spec.localWorkloadSelector"),
        "BGPConfiguration \"default\": spec.prefixAdvertisements[0].cidr".to_string(),
        "BGPConfiguration \"default\": spec.ignoredInterfaces[0]".to_string(),
    ] {
        assert!(c.message.contains(&want), "{want:?} not in {:?}", c.message);
    }

    // Later changes still reach every node.
    support::kubectl_stdin_ok(&["apply", "-f", "-"], &peer("later", "192.0.2.3"));
    let later = support::wait_until("both nodes' configs with the later peer", TIMEOUT, || {
        published(&["Global_192_0_2_2", "Global_192_0_2_3"])
    })
    .await;
    for files in &later {
        bird_check(files);
    }

    // Fixing the inputs clears the condition.
    support::kubectl_ok(&["delete", "bgppeer", &bad_peer, &odd_peer, &filtered, &lw]);
    support::kubectl_ok(&["delete", "bgpfilter.crd.projectcalico.org", &bad_filter]);
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: crd.projectcalico.org/v1\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  prefixAdvertisements:\n  - {cidr: 10.48.0.0/16, communities: ['65000:100']}\n  - {cidr: 10.49.0.0/16, communities: ['65000:200']}\n  ignoredInterfaces: ['docker*']\n",
    );
    support::wait_until("BGPConfigValid=True on the Installation", TIMEOUT, || cond(true)).await;
    support::wait_until("the fixed prefix on both nodes", TIMEOUT, || {
        published(&["net ~ 10.48.0.0/16"])
    })
    .await;

    controller.abort();
    for n in &nodes {
        support::delete_node(&client, n).await;
    }
    for p in ["good", "later", "goodfiltered"] {
        let _ = support::kubectl(&["delete", "bgppeer", &format!("{tag}-{p}")]);
    }
    let _ = support::kubectl(&[
        "delete",
        "bgpfilter.crd.projectcalico.org",
        &format!("{tag}-goodf"),
    ]);
    let _ = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    support::delete_namespace(&client, &ns, Duration::from_secs(30)).await;
}
