//! Properties of the renderer over random clusters: it never fails on a node with an address,
//! its output does not depend on input order, protocol names are unique, the mesh is symmetric
//! with exactly one passive end per pair, and real BIRD 1.6 accepts every file it writes.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use proptest::prelude::*;
use serde_json::{Value, json};
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

#[derive(Clone, Debug)]
struct NodeGen {
    v6: bool,
    asn: Option<u32>,
    rr: Option<u8>,
    rack: Option<bool>,
}

#[derive(Clone, Debug)]
enum Remote {
    External(u8, u32),
    NodeIp(usize),
    Selector(u8),
}

#[derive(Clone, Debug)]
struct PeerGen {
    local: u8,
    remote: Remote,
    manual: bool,
    ttl: u8,
    password: Option<bool>,
    keep: bool,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
struct ClusterGen {
    nodes: Vec<NodeGen>,
    mesh: bool,
    asn: Option<u32>,
    listen_port: Option<u16>,
    peers: Vec<PeerGen>,
    pools: Vec<(u8, u8)>,
    blocks: Vec<(usize, u8, u8)>,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(65000u32), Just(65001u32)]),
        proptest::option::weighted(0.2, 0u8..2),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(v6, asn, rr, rack)| NodeGen { v6, asn, rr, rack })
}

fn peer_gen() -> impl Strategy<Value = PeerGen> {
    (
        0u8..4,
        prop_oneof![
            (
                1u8..5,
                prop_oneof![Just(64512u32), Just(65000u32), Just(65100u32)]
            )
                .prop_map(|(a, b)| Remote::External(a, b)),
            (0usize..8).prop_map(Remote::NodeIp),
            (0u8..3).prop_map(Remote::Selector),
        ],
        any::<bool>(),
        0u8..3,
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::weighted(0.2, prop_oneof![Just(178u16), Just(1179u16)]),
    )
        .prop_map(|(local, remote, manual, ttl, password, keep, port)| PeerGen {
            local,
            remote,
            manual,
            ttl,
            password,
            keep,
            port,
        })
}

fn cluster_gen() -> impl Strategy<Value = ClusterGen> {
    (
        proptest::collection::vec(node_gen(), 1..7),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(64512u32), Just(65000u32)]),
        proptest::option::weighted(0.3, prop_oneof![Just(178u16), Just(179u16)]),
        proptest::collection::vec(peer_gen(), 0..4),
        proptest::collection::vec((0u8..4, 0u8..2), 0..3),
        proptest::collection::vec((0usize..8, 0u8..4, 0u8..3), 0..6),
    )
        .prop_map(
            |(nodes, mesh, asn, listen_port, peers, pools, blocks)| ClusterGen {
                nodes,
                mesh,
                asn,
                listen_port,
                peers,
                pools,
                blocks,
            },
        )
}

fn selector(i: u8) -> &'static str {
    ["all()", "has(rack)", "rack == 'a'"][i as usize % 3]
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn build(g: &ClusterGen) -> Snapshot {
    let mut docs: Vec<Value> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let mut ann = serde_json::Map::new();
        ann.insert(
            "projectcalico.org/IPv4Address".into(),
            format!("10.0.0.{}/24", i + 1).into(),
        );
        if n.v6 {
            ann.insert(
                "projectcalico.org/IPv6Address".into(),
                format!("fd00::{}/64", i + 1).into(),
            );
        }
        if let Some(a) = n.asn {
            ann.insert("projectcalico.org/ASNumber".into(), a.to_string().into());
        }
        if let Some(r) = n.rr {
            ann.insert(
                "projectcalico.org/RouteReflectorClusterID".into(),
                format!("224.0.0.{r}").into(),
            );
        }
        let mut labels = serde_json::Map::new();
        if let Some(r) = n.rack {
            labels.insert("rack".into(), if r { "a" } else { "b" }.into());
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name(i), "annotations": ann, "labels": labels}}));
    }
    let mut spec = serde_json::Map::new();
    spec.insert("nodeToNodeMeshEnabled".into(), g.mesh.into());
    if let Some(a) = g.asn {
        spec.insert("asNumber".into(), a.into());
    }
    if let Some(p) = g.listen_port {
        spec.insert("listenPort".into(), p.into());
    }
    spec.insert(
        "serviceClusterIPs".into(),
        json!([{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}]),
    );
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": spec}),
    );
    for (i, p) in g.peers.iter().enumerate() {
        let mut s = serde_json::Map::new();
        match p.local {
            0 => {}
            1 => {
                s.insert("nodeSelector".into(), "all()".into());
            }
            2 => {
                s.insert("nodeSelector".into(), "rack == 'a'".into());
            }
            _ => {
                s.insert("node".into(), node_name(0).into());
            }
        }
        match &p.remote {
            Remote::External(h, asn) => {
                let ip = format!("192.0.2.{h}");
                let ip = match p.port {
                    Some(port) => format!("{ip}:{port}"),
                    None => ip,
                };
                s.insert("peerIP".into(), ip.into());
                s.insert("asNumber".into(), (*asn).into());
            }
            Remote::NodeIp(n) => {
                s.insert("peerIP".into(), format!("10.0.0.{}", n + 1).into());
                s.insert("asNumber".into(), g.asn.unwrap_or(64512).into());
            }
            Remote::Selector(k) => {
                s.insert("peerSelector".into(), selector(*k).into());
            }
        }
        if p.manual {
            s.insert("reversePeering".into(), "Manual".into());
        }
        if p.ttl > 0 {
            s.insert("ttlSecurity".into(), p.ttl.into());
        }
        if p.keep {
            s.insert("keepOriginalNextHop".into(), true.into());
        }
        if let Some(present) = p.password {
            s.insert(
                "password".into(),
                json!({"secretKeyRef": {"name": "bgp", "key": if present {"pw"} else {"missing"}}}),
            );
        }
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
            "metadata": {"name": format!("p{i}")}, "spec": s}),
        );
    }
    let encaps = [
        ("Never", "Never"),
        ("Always", "Never"),
        ("CrossSubnet", "Never"),
        ("Never", "Always"),
    ];
    for (i, (e, dis)) in g.pools.iter().enumerate() {
        let (ipip, vxlan) = encaps[*e as usize % 4];
        docs.push(json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
            "metadata": {"name": format!("pool{i}")},
            "spec": {"cidr": format!("10.{}.0.0/16", 48 + i), "ipipMode": ipip, "vxlanMode": vxlan,
                     "disableBGPExport": *dis == 1}}));
    }
    let states = ["confirmed", "", "pending", "pendingDeletion"];
    for (i, (n, k, st)) in g.blocks.iter().enumerate() {
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
            "metadata": {"name": format!("a{i}")},
            "spec": {"cidr": format!("10.48.{k}.0/26"), "node": node_name(*n),
                     "state": states[*st as usize % 4], "deleted": "false"}}),
        );
    }
    docs.push(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bgp"},
        "stringData": {"pw": "secret"}}),
    );
    support::bgp_lab::snapshot_of(&docs)
}

fn render_all(snap: &Snapshot) -> BTreeMap<String, bgp::Rendered> {
    let sel = CalicoSelectors::default();
    snap.nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap();
            let r = bgp::render(snap, &name, &RenderOptions::default(), &sel)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, r)
        })
        .collect()
}

/// `protocol bgp NAME ... }` blocks of a file.
fn blocks(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cur: Option<(String, String)> = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("protocol bgp ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            cur = Some((name, String::new()));
        } else if l == "}" {
            if let Some((n, b)) = cur.take() {
                assert!(out.insert(n.clone(), b).is_none(), "duplicate protocol {n}");
            }
        } else if let Some((_, b)) = cur.as_mut() {
            b.push_str(l);
            b.push('\n');
        }
    }
    out
}

fn text(r: &bgp::Rendered, f: &str) -> String {
    String::from_utf8(r.files[f].clone()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(g in cluster_gen()) {
        let snap = build(&g);
        let all = render_all(&snap);
        // Input order does not matter.
        let mut rev = snap.clone();
        rev.nodes.reverse();
        rev.peers.reverse();
        rev.pools.reverse();
        rev.affinities.reverse();
        let again = render_all(&rev);
        for (n, r) in &all {
            prop_assert_eq!(&r.files, &again[n].files);
        }
        for (i, gi) in g.nodes.iter().enumerate() {
            let a = node_name(i);
            for file in ["bird.cfg", "bird6.cfg"] {
                let ba = blocks(&text(&all[&a], file));
                // Never a session to itself.
                let own = if file == "bird.cfg" { format!("neighbor 10.0.0.{} ", i + 1) } else { format!("neighbor fd00::{} ", i + 1) };
                prop_assert!(ba.values().all(|b| !b.contains(&own)));
                if !g.mesh || gi.rr.is_some() {
                    prop_assert!(ba.keys().all(|k| !k.starts_with("Mesh_")));
                    continue;
                }
                for (j, gj) in g.nodes.iter().enumerate() {
                    if i == j || gj.rr.is_some() || (file == "bird6.cfg" && !(gi.v6 && gj.v6)) {
                        continue;
                    }
                    let ip = |k: usize| if file == "bird.cfg" { format!("10_0_0_{}", k + 1) } else { format!("fd00__{}", k + 1) };
                    let ab = ba.get(&format!("Mesh_{}", ip(j)));
                    let bb = blocks(&text(&all[&node_name(j)], file));
                    let bab = bb.get(&format!("Mesh_{}", ip(i)));
                    prop_assert!(ab.is_some() && bab.is_some(), "mesh {a}<->n{j} in {file}");
                    let pa = ab.unwrap().contains("passive on;");
                    let pb = bab.unwrap().contains("passive on;");
                    prop_assert!(pa != pb, "exactly one passive end for {a}<->n{j}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Real BIRD parses whatever the renderer writes for random clusters.
    #[test]
    fn bird_accepts_random_clusters(g in cluster_gen()) {
        let snap = build(&g);
        for (name, r) in render_all(&snap) {
            let dir = tempfile::tempdir().unwrap();
            for (f, b) in &r.files {
                std::fs::write(dir.path().join(f), b).unwrap();
            }
            for (prog, main) in [("bird", "bird.cfg"), ("bird6", "bird6.cfg")] {
                let out = Command::new(prog).arg("-p").arg("-c").arg(dir.path().join(main)).output()
                    .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); apt-get install -y bird"));
                prop_assert!(out.status.success(), "{prog} rejects {name}'s {main}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&r.files[main]));
            }
        }
    }
}
