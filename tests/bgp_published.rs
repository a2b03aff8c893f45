//! The published contract loses nothing the renderer reads: for random clusters and for every
//! golden case, rendering a node from the full snapshot and from the snapshot its agent assembles
//! out of the published objects ([`published::publish`] then [`published::assemble`]) gives the
//! same files byte for byte, the same password flag, mesh size and warnings, or the same error.
//! The objects also go through their Kubernetes form (ConfigMap/Secret data) on the way.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};
use tortie::node::published::{self, Published};

/// What a render gives, in comparable form (warnings as a set: their order follows input order).
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Ok {
        files: BTreeMap<String, Vec<u8>>,
        has_password: bool,
        mesh_size: Option<usize>,
        warnings: BTreeSet<String>,
    },
    Err(String),
}

fn out(r: Result<bgp::Rendered, bgp::RenderError>) -> Out {
    match r {
        Ok(r) => Out::Ok {
            files: r.files,
            has_password: r.has_password,
            mesh_size: r.mesh_size,
            warnings: r.warnings.into_iter().collect(),
        },
        Err(e) => Out::Err(e.to_string()),
    }
}

/// Publishes `snap`, turns the result into the Kubernetes objects the operator writes, and
/// renders `node` the way its agent does: own object + shards -> assemble -> render.
fn through_objects(snap: &Snapshot, opts: &RenderOptions, current: Option<u32>) -> BTreeMap<String, Out> {
    let sel = CalicoSelectors::default();
    let inputs = published::publish(snap, opts, &sel, current);
    let (shards, own) = published::objects("tortie-system", &inputs);
    for s in &shards {
        let body = &s.data.as_ref().unwrap()[published::KEY_SHARD];
        assert!(body.len() <= published::MAX_PUBLISHED_BYTES);
    }
    let mut res = BTreeMap::new();
    for o in own {
        let node = o.metadata().annotations.as_ref().unwrap()[published::ANN_NODE].clone();
        // Passwords travel in Secrets only.
        let published::Contents::Inputs(ni) = published::contents_of(&o).unwrap() else {
            panic!("inputs format expected")
        };
        assert_eq!(
            !ni.passwords.is_empty(),
            matches!(o, Published::Secret(_)),
            "{node}"
        );
        let slots: BTreeMap<u32, published::ShardSlot> = shards
            .iter()
            .map(|s| {
                (
                    published::shard_index(s.metadata.name.as_deref().unwrap()).unwrap(),
                    published::shard_slot(s),
                )
            })
            .collect();
        let list = published::layout(ni.shards, &slots)
            .expect("complete layout")
            .unwrap();
        let (asm, o) = published::assemble(&ni, list);
        res.insert(node.clone(), out(bgp::render(&asm, &node, &o, &sel)));
    }
    res
}

fn direct(snap: &Snapshot, opts: &RenderOptions) -> BTreeMap<String, Out> {
    let sel = CalicoSelectors::default();
    snap.nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            (name.clone(), out(bgp::render(snap, &name, opts, &sel)))
        })
        .collect()
}

#[derive(Clone, Debug)]
struct NodeGen {
    v6: bool,
    asn: Option<u32>,
    rr: Option<u8>,
    rack: Option<bool>,
    zone: Option<u8>,
    junk: bool,
    bad: bool,
    exclude_lb: bool,
    wg: bool,
}

#[derive(Clone, Debug)]
struct PeerGen {
    local: u8,
    remote: u8,
    target: u8,
    asn: u32,
    manual: bool,
    password: Option<u8>,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
struct ClusterGen {
    nodes: Vec<NodeGen>,
    mesh: bool,
    mesh_password: Option<u8>,
    asn: Option<u32>,
    listen_port: Option<u16>,
    node_config: Option<(usize, u16)>,
    peers: Vec<PeerGen>,
    pools: Vec<(u8, u8)>,
    blocks: Vec<(usize, u8, u8, u8)>,
    services: Vec<(u8, Vec<usize>)>,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        (
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(65000u32), Just(65001u32)]),
            proptest::option::weighted(0.2, 0u8..2),
            proptest::option::of(any::<bool>()),
            proptest::option::of(0u8..3),
        ),
        (
            any::<bool>(),
            proptest::bool::weighted(0.08),
            proptest::bool::weighted(0.15),
            proptest::bool::weighted(0.15),
        ),
    )
        .prop_map(
            |((v6, asn, rr, rack, zone), (junk, bad, exclude_lb, wg))| NodeGen {
                v6,
                asn,
                rr,
                rack,
                zone,
                junk,
                bad,
                exclude_lb,
                wg,
            },
        )
}

fn peer_gen() -> impl Strategy<Value = PeerGen> {
    (
        0u8..5,
        0u8..4,
        0u8..8,
        prop_oneof![Just(64512u32), Just(65000u32), Just(65100u32)],
        any::<bool>(),
        proptest::option::of(0u8..4),
        proptest::option::weighted(0.2, prop_oneof![Just(178u16), Just(1179u16)]),
    )
        .prop_map(|(local, remote, target, asn, manual, password, port)| PeerGen {
            local,
            remote,
            target,
            asn,
            manual,
            password,
            port,
        })
}

fn cluster_gen() -> impl Strategy<Value = ClusterGen> {
    (
        (
            proptest::collection::vec(node_gen(), 1..8),
            any::<bool>(),
            proptest::option::of(0u8..4),
            proptest::option::of(prop_oneof![Just(64512u32), Just(65000u32)]),
            proptest::option::weighted(0.3, prop_oneof![Just(178u16), Just(179u16)]),
        ),
        (
            proptest::option::weighted(0.3, (0usize..8, prop_oneof![Just(1790u16), Just(1791u16)])),
            proptest::collection::vec(peer_gen(), 0..6),
            proptest::collection::vec((0u8..4, 0u8..2), 0..3),
            proptest::collection::vec((0usize..8, 0u8..4, 0u8..4, 0u8..3), 0..8),
            proptest::collection::vec((0u8..4, proptest::collection::vec(0usize..8, 0..3)), 0..3),
        ),
    )
        .prop_map(
            |(
                (nodes, mesh, mesh_password, asn, listen_port),
                (node_config, peers, pools, blocks, services),
            )| {
                ClusterGen {
                    nodes,
                    mesh,
                    mesh_password,
                    asn,
                    listen_port,
                    node_config,
                    peers,
                    pools,
                    blocks,
                    services,
                }
            },
        )
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn selector(i: u8) -> &'static str {
    [
        "all()",
        "has(rack)",
        "rack == 'a'",
        "zone in {'z1', 'z2'} && !has(junk)",
    ][i as usize % 4]
}

fn password(k: u8) -> Value {
    let (name, key, optional) = [
        ("bgp", "pw", false),
        ("bgp", "missing", false),
        ("other", "pw", false),
        ("gone", "pw", true),
    ][k as usize % 4];
    json!({"secretKeyRef": {"name": name, "key": key, "optional": optional}})
}

/// Node `i` as `nd` describes it.
fn node_doc(i: usize, nd: &NodeGen) -> Value {
    let mut ann = serde_json::Map::new();
    ann.insert(
        "projectcalico.org/IPv4Address".into(),
        if nd.bad {
            "not-an-address".into()
        } else {
            format!("10.0.0.{}/24", i + 1).into()
        },
    );
    if nd.v6 {
        ann.insert(
            "projectcalico.org/IPv6Address".into(),
            format!("fd00::{}/64", i + 1).into(),
        );
    }
    if let Some(a) = nd.asn {
        ann.insert("projectcalico.org/ASNumber".into(), a.to_string().into());
    }
    if let Some(r) = nd.rr {
        ann.insert(
            "projectcalico.org/RouteReflectorClusterID".into(),
            format!("224.0.0.{r}").into(),
        );
    }
    if nd.wg {
        ann.insert(
            "projectcalico.org/IPv4WireguardInterfaceAddr".into(),
            format!("10.99.0.{}", i + 1).into(),
        );
    }
    // Annotations and labels no renderer reads, as real Nodes carry them.
    ann.insert("node.alpha.kubernetes.io/ttl".into(), "0".into());
    ann.insert("projectcalico.org/Unrelated".into(), format!("x{i}").into());
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), node_name(i).into());
    if let Some(r) = nd.rack {
        labels.insert("rack".into(), if r { "a" } else { "b" }.into());
    }
    if let Some(z) = nd.zone {
        labels.insert("zone".into(), format!("z{z}").into());
    }
    if nd.junk {
        labels.insert("junk".into(), "1".into());
    }
    if nd.exclude_lb {
        labels.insert(
            "node.kubernetes.io/exclude-from-external-load-balancers".into(),
            "true".into(),
        );
    }
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node_name(i), "uid": format!("uid-{i}"), "annotations": ann, "labels": labels}})
}

fn build(g: &ClusterGen) -> Snapshot {
    let mut docs: Vec<Value> = Vec::new();
    let n = g.nodes.len();
    for (i, nd) in g.nodes.iter().enumerate() {
        docs.push(node_doc(i, nd));
    }
    let mut spec = serde_json::Map::new();
    spec.insert("nodeToNodeMeshEnabled".into(), g.mesh.into());
    if let Some(a) = g.asn {
        spec.insert("asNumber".into(), a.into());
    }
    if let Some(p) = g.listen_port {
        spec.insert("listenPort".into(), p.into());
    }
    if let Some(k) = g.mesh_password {
        spec.insert("nodeMeshPassword".into(), password(k));
    }
    spec.insert(
        "serviceClusterIPs".into(),
        json!([{"cidr": "10.96.0.0/12"}, {"cidr": "fd00:96::/112"}]),
    );
    spec.insert("serviceLoadBalancerIPs".into(), json!([{"cidr": "80.15.0.0/24"}]));
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": spec}),
    );
    if let Some((i, port)) = g.node_config {
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
            "metadata": {"name": format!("node.{}", node_name(i % n))},
            "spec": {"listenPort": port, "logSeverityScreen": "Debug"}}),
        );
    }
    for (i, p) in g.peers.iter().enumerate() {
        let mut s = serde_json::Map::new();
        match p.local {
            0 => {}
            1 => {
                s.insert("nodeSelector".into(), "all()".into());
            }
            2 => {
                s.insert("nodeSelector".into(), selector(2).into());
            }
            3 => {
                s.insert("nodeSelector".into(), selector(3).into());
            }
            _ => {
                s.insert("node".into(), node_name(p.target as usize % n).into());
            }
        }
        match p.remote {
            0 => {
                let ip = format!("192.0.2.{}", p.target + 1);
                let ip = match p.port {
                    Some(port) => format!("{ip}:{port}"),
                    None => ip,
                };
                s.insert("peerIP".into(), ip.into());
                s.insert("asNumber".into(), p.asn.into());
            }
            1 => {
                s.insert(
                    "peerIP".into(),
                    format!("10.0.0.{}", p.target as usize % n + 1).into(),
                );
                s.insert("asNumber".into(), g.asn.unwrap_or(64512).into());
            }
            2 => {
                s.insert("peerSelector".into(), selector(p.target).into());
            }
            _ => {
                s.insert("peerSelector".into(), "has(".into());
            }
        }
        if p.manual {
            s.insert("reversePeering".into(), "Manual".into());
        }
        if let Some(k) = p.password {
            s.insert("password".into(), password(k));
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
                     "disableBGPExport": *dis == 1, "nodeSelector": "all()", "blockSize": 26}}));
    }
    let states = ["confirmed", "", "pending", "pendingDeletion"];
    for (i, (nd, k, st, kind)) in g.blocks.iter().enumerate() {
        let (ty, deleted, cidr) = match kind {
            0 => ("host", "false", format!("10.48.{k}.0/26")),
            1 => ("virtual", "false", format!("10.48.{k}.64/26")),
            2 => ("host", "true", format!("10.48.{k}.128/26")),
            _ => ("host", "false", "10.48.300.0/26".to_string()),
        };
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
            "metadata": {"name": format!("a{i}")},
            "spec": {"cidr": cidr, "node": node_name(*nd % (n + 1)), "type": ty,
                     "state": states[*st as usize % 4], "deleted": deleted}}),
        );
    }
    for (i, (kind, eps)) in g.services.iter().enumerate() {
        let (ty, etp) = [
            ("ClusterIP", "Cluster"),
            ("LoadBalancer", "Local"),
            ("LoadBalancer", "Cluster"),
            ("NodePort", "Local"),
        ][*kind as usize % 4];
        docs.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "shop"},
            "spec": {"type": ty, "externalTrafficPolicy": etp, "clusterIP": format!("10.96.0.{}", i + 10)},
            "status": {"loadBalancer": {"ingress": [{"ip": format!("80.15.0.{}", i + 1)}]}}}));
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|e| json!({"addresses": [format!("192.168.{e}.1")], "nodeName": node_name(*e % n)}))
            .collect();
        docs.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-a"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4", "endpoints": endpoints}),
        );
    }
    docs.push(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bgp"},
        "stringData": {"pw": "secret", "unused": "never-published"}}),
    );
    docs.push(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other"},
        "stringData": {"pw": "other-secret"}}),
    );
    support::bgp_lab::snapshot_of(&docs)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn published_then_assembled_renders_the_same_bytes(g in cluster_gen(), count in proptest::option::of(prop_oneof![Just(1u32), Just(2), Just(4)]), hash_id in any::<bool>()) {
        let snap = build(&g);
        let opts = RenderOptions { router_id: hash_id.then(|| "hash".to_string()), bird_fork: false };
        let want = direct(&snap, &opts);
        let got = through_objects(&snap, &opts, count);
        prop_assert_eq!(want.len(), got.len());
        for (node, w) in &want {
            prop_assert_eq!(Some(w), got.get(node), "node {}", node);
        }
    }

    /// Sanitized, as the controller publishes it, the same holds.
    #[test]
    fn sanitized_snapshots_too(g in cluster_gen()) {
        let mut snap = build(&g);
        let _ = bgp::validate::sanitize(&mut snap);
        let opts = RenderOptions::default();
        prop_assert_eq!(direct(&snap, &opts), through_objects(&snap, &opts, None));
    }
}

/// No password reaches a node whose sessions do not use it, and no unused Secret key at all.
#[test]
fn passwords_go_only_where_sessions_use_them() {
    let mut snap = Snapshot::default();
    snap.add_manifests(
        "t",
        r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {rack: a}, annotations: {projectcalico.org/IPv4Address: 10.0.0.1/24}}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {rack: b}, annotations: {projectcalico.org/IPv4Address: 10.0.0.2/24}}
---
apiVersion: crd.projectcalico.org/v1
kind: BGPPeer
metadata: {name: tor-a}
spec:
  nodeSelector: rack == 'a'
  peerIP: 192.0.2.1
  asNumber: 65000
  password: {secretKeyRef: {name: bgp, key: tor}}
---
apiVersion: v1
kind: Secret
metadata: {name: bgp}
stringData: {tor: s3cret, unrelated: other}
"#,
    )
    .unwrap();
    let inputs = published::publish(
        &snap,
        &RenderOptions::default(),
        &CalicoSelectors::default(),
        None,
    );
    assert_eq!(inputs.nodes["n1"].passwords["bgp"].len(), 1);
    assert_eq!(inputs.nodes["n1"].passwords["bgp"]["tor"], "s3cret");
    assert!(inputs.nodes["n2"].passwords.is_empty());
    for s in &inputs.shards {
        assert!(!s.contains("s3cret") && !s.contains("unrelated"), "{s}");
    }
    // Labels no selector reads are not published.
    assert!(inputs.shards.iter().any(|s| s.contains("\"rack\"")));
}

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/bgp")
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Case {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    router_id: Option<String>,
    #[serde(default)]
    bird_fork: bool,
}

/// Every golden case renders its expected files when its node's agent assembles them.
#[test]
fn golden_cases_through_publish_and_assemble() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input").is_dir())
        .collect();
    dirs.sort();
    let mut checked = 0;
    let mut skipped_workloads = 0;
    for dir in dirs {
        let case: Case = std::fs::read_to_string(dir.join("case.yaml"))
            .ok()
            .map(|t| serde_saphyr::from_str(&t).unwrap())
            .unwrap_or_default();
        let mut snap = Snapshot::default();
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir.join("input"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        let mut loaded = true;
        for p in &inputs {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            loaded &= snap
                .add_manifests(&name, &std::fs::read_to_string(p).unwrap())
                .is_ok();
        }
        if !loaded {
            continue;
        }
        // Sessions with local workloads (BGPPeer localWorkloadSelector) need the node's Pods,
        // which are not published: in a cluster such a peer is reported as unsupported instead
        // (tests/e2e_bgp_invalid.rs); only `tortie render` renders them from manifests.
        if !snap.workloads.is_empty() {
            skipped_workloads += 1;
            continue;
        }
        let opts = RenderOptions {
            router_id: case.router_id.clone(),
            bird_fork: case.bird_fork,
        };
        let node = case.node.clone().unwrap_or_else(|| "n1".into());
        let got = through_objects(&snap, &opts, None);
        let Some(got) = got.get(&node) else {
            // No such node: there is no object for it (the direct render fails too).
            assert!(matches!(
                out(bgp::render(&snap, &node, &opts, &CalicoSelectors::default())),
                Out::Err(_)
            ));
            continue;
        };
        let want = out(bgp::render(&snap, &node, &opts, &CalicoSelectors::default()));
        assert_eq!(&want, got, "{}", dir.display());
        // And against the golden files themselves.
        if let Out::Ok { files, .. } = got {
            for (f, body) in files {
                let exp = std::fs::read(dir.join("expected").join(f)).unwrap();
                assert_eq!(&exp, body, "{}/{f}", dir.display());
            }
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} golden cases checked");
    assert!(
        skipped_workloads <= 1,
        "{skipped_workloads} golden cases need workloads"
    );
}

/// A route reflector with 5,000 clients: its inputs fit (no shard near 1 MiB, where its rendered
/// files alone were past the limit), its agent assembles them, and `bird -p` accepts the result.
#[test]
fn a_reflector_with_5000_clients_is_served_and_parses() {
    let n = 5001;
    let mut docs = Vec::new();
    for i in 0..n {
        let mut ann = serde_json::Map::new();
        ann.insert(
            "projectcalico.org/IPv4Address".into(),
            format!("10.{}.{}.1/8", i / 250, i % 250 + 1).into(),
        );
        let mut labels = serde_json::Map::new();
        if i == 0 {
            labels.insert("rr".into(), "true".into());
            ann.insert(
                "projectcalico.org/RouteReflectorClusterID".into(),
                "224.0.0.1".into(),
            );
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("n{i}"), "labels": labels, "annotations": ann}}));
    }
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": false}}),
    );
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
        "metadata": {"name": "rr"}, "spec": {"nodeSelector": "all()", "peerSelector": "has(rr)"}}),
    );
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
        "metadata": {"name": "rr-clients"}, "spec": {"nodeSelector": "has(rr)", "peerSelector": "!has(rr)"}}),
    );
    let text = docs
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut snap = Snapshot::default();
    snap.add_manifests("rr", &text).unwrap();
    let sel = CalicoSelectors::default();
    let inputs = published::publish(&snap, &RenderOptions::default(), &sel, None);
    let (shards, own) = published::objects("tortie-system", &inputs);
    for s in &shards {
        let bytes = serde_json::to_vec(s).unwrap().len();
        assert!(
            bytes < published::MAX_PUBLISHED_BYTES / 2,
            "shard of {bytes} bytes"
        );
    }
    let rr = own
        .iter()
        .find(|p| p.metadata().name.as_deref() == Some("tortie-bird-n0"))
        .unwrap();
    let r = published::render_published(rr, &shards, &sel).unwrap().unwrap();
    let main = String::from_utf8(r.files["bird.cfg"].clone()).unwrap();
    assert_eq!(main.matches("protocol bgp ").count(), n - 1);
    assert!(main.len() > 1024 * 1024, "the rendered file alone is past 1 MiB");
    let dir = tempfile::tempdir().unwrap();
    for (f, b) in &r.files {
        std::fs::write(dir.path().join(f), b).unwrap();
    }
    let out = std::process::Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(dir.path().join("bird.cfg"))
        .output()
        .expect("bird installed (apt-get install -y bird)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---- Incremental publishing: the same objects as a full publish, after any events ----

/// A change the BGP controller hears of.
#[derive(Clone, Debug)]
enum Ev {
    /// Node `i` is now as described; `big`: it carries a 100 kB BGP annotation (so the total
    /// crosses a shard-count boundary and the layout changes).
    Node(usize, NodeGen, bool),
    NodeGone(usize),
    /// BlockAffinity `j` is now (node, third octet, state, kind) as in [`build`].
    Affinity(usize, (usize, u8, u8, u8)),
    AffinityGone(usize),
    /// The BGPPeers replaced (every node may read them: a full rebuild unless nothing shared changed).
    Peers(Vec<PeerGen>),
    /// A label no selector reads.
    Unread(usize, u8),
}

fn ev_gen() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (0usize..10, node_gen(), proptest::bool::weighted(0.15)).prop_map(|(i, g, b)| Ev::Node(i, g, b)),
        1 => (0usize..10).prop_map(Ev::NodeGone),
        2 => (0usize..8, (0usize..10, 0u8..4, 0u8..4, 0u8..4)).prop_map(|(j, a)| Ev::Affinity(j, a)),
        1 => (0usize..8).prop_map(Ev::AffinityGone),
        1 => proptest::collection::vec(peer_gen(), 0..4).prop_map(Ev::Peers),
        1 => (0usize..10, 0u8..3).prop_map(|(i, v)| Ev::Unread(i, v)),
    ]
}

fn affinity_of(j: usize, (nd, k, st, kind): (usize, u8, u8, u8)) -> tortie::api::Affinity {
    let states = ["confirmed", "", "pending", "pendingDeletion"];
    let (ty, deleted, cidr) = match kind {
        0 => ("host", "false", format!("10.48.{k}.0/26")),
        1 => ("virtual", "false", format!("10.48.{k}.64/26")),
        2 => ("host", "true", format!("10.48.{k}.128/26")),
        _ => ("host", "false", "10.48.300.0/26".to_string()),
    };
    serde_json::from_value(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
        "metadata": {"name": format!("ev-a{j}")},
        "spec": {"cidr": cidr, "node": node_name(nd), "type": ty,
                 "state": states[st as usize % 4], "deleted": deleted}}),
    )
    .unwrap()
}

/// The cluster's BGP objects (sanitized, as the controller publishes them), Nodes and
/// BlockAffinities apart.
type Parts = (
    Snapshot,
    BTreeMap<String, k8s_openapi::api::core::v1::Node>,
    BTreeMap<String, tortie::api::Affinity>,
);

fn parts(g: &ClusterGen) -> Parts {
    let mut snap = build(g);
    let _ = bgp::validate::sanitize(&mut snap);
    let nodes = std::mem::take(&mut snap.nodes)
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap(), n))
        .collect();
    let affs = std::mem::take(&mut snap.affinities)
        .into_iter()
        .map(|a| (a.metadata.name.clone().unwrap(), a))
        .collect();
    (snap, nodes, affs)
}

fn full(p: &Parts, current: Option<u32>) -> published::Inputs {
    let nodes: Vec<_> = p.1.values().collect();
    let affs: Vec<_> = p.2.values().collect();
    published::publish_from(
        &p.0,
        &nodes,
        &affs,
        &RenderOptions::default(),
        &CalicoSelectors::default(),
        current,
    )
}

fn publisher(p: &Parts, current: Option<u32>) -> published::Publisher {
    let nodes: Vec<_> = p.1.values().collect();
    let affs: Vec<_> = p.2.values().collect();
    published::Publisher::new(
        &p.0,
        &nodes,
        &affs,
        &RenderOptions::default(),
        &CalicoSelectors::default(),
        current,
    )
}

/// Applies `ev` to the cluster and to the publisher; what the publisher says changed.
fn apply_ev(g: &ClusterGen, c: &mut Parts, p: &mut published::Publisher, ev: Ev) -> published::Changed {
    let sel = CalicoSelectors::default();
    match ev {
        Ev::Node(i, nd, big) => {
            let mut v = node_doc(i, &nd);
            if big {
                v["metadata"]["annotations"]["projectcalico.org/IPv6WireguardInterfaceAddr"] =
                    "x".repeat(100_000).into();
            }
            let n: k8s_openapi::api::core::v1::Node = serde_json::from_value(v).unwrap();
            c.1.insert(node_name(i), n.clone());
            p.set_node(&c.0, &node_name(i), Some(&n), &sel)
        }
        Ev::NodeGone(i) => {
            c.1.remove(&node_name(i));
            p.set_node(&c.0, &node_name(i), None, &sel)
        }
        Ev::Unread(i, v) => {
            let Some(n) = c.1.get_mut(&node_name(i)) else {
                return p.set_node(&c.0, &node_name(i), None, &sel);
            };
            n.metadata
                .labels
                .get_or_insert_default()
                .insert("unread".into(), v.to_string());
            let n = n.clone();
            p.set_node(&c.0, &node_name(i), Some(&n), &sel)
        }
        Ev::Affinity(j, a) => {
            let a = affinity_of(j, a);
            c.2.insert(format!("ev-a{j}"), a.clone());
            p.set_affinity(&c.0, &format!("ev-a{j}"), Some(&a), &sel)
        }
        Ev::AffinityGone(j) => {
            c.2.remove(&format!("ev-a{j}"));
            p.set_affinity(&c.0, &format!("ev-a{j}"), None, &sel)
        }
        Ev::Peers(peers) => {
            let g2 = ClusterGen { peers, ..g.clone() };
            c.0 = parts(&g2).0;
            if p.same_shared(&c.0) {
                return published::Changed::default();
            }
            *p = publisher(c, Some(p.count()));
            published::Changed {
                relayout: true,
                ..Default::default()
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// After any sequence of Node, BlockAffinity and BGPPeer events, the incrementally kept
    /// state publishes exactly what a full publish of the same cluster does, every object that
    /// differs from before is among the ones it says changed, and its hashes are the objects'.
    #[test]
    fn incremental_publish_equals_full(g in cluster_gen(), evs in proptest::collection::vec(ev_gen(), 1..24)) {
        let mut c = parts(&g);
        let mut p = publisher(&c, None);
        prop_assert_eq!(p.inputs(), full(&c, None));
        for ev in evs {
            let before = p.inputs();
            let count = p.count();
            let unread = matches!(ev, Ev::Unread(..));
            let ch = apply_ev(&g, &mut c, &mut p, ev.clone());
            let after = p.inputs();
            prop_assert_eq!(&after, &full(&c, Some(count)), "after {:?}", ev);
            if unread {
                prop_assert!(ch.is_empty(), "a label no selector reads changed {:?}", ch);
            }
            if !ch.relayout {
                prop_assert_eq!(before.shards.len(), after.shards.len());
                for (i, (b, a)) in before.shards.iter().zip(&after.shards).enumerate() {
                    prop_assert!(b == a || ch.shards.contains(&(i as u32)), "shard {} changed unsaid after {:?}", i, ev);
                }
                let names: BTreeSet<&String> = before.nodes.keys().chain(after.nodes.keys()).collect();
                for n in names {
                    prop_assert!(before.nodes.get(n) == after.nodes.get(n) || ch.nodes.contains(n), "{} changed unsaid after {:?}", n, ev);
                }
                prop_assert_eq!(ch.membership, before.nodes.keys().ne(after.nodes.keys()));
            }
            for (i, body) in after.shards.iter().enumerate() {
                prop_assert_eq!(p.shard_hash(i as u32), published::text_hash(body));
            }
            for (n, ni) in &after.nodes {
                prop_assert_eq!(&p.node(n).unwrap().hash, &published::text_hash(&ni.to_json()));
            }
        }
    }
}

/// What a Node event costs: a label no selector reads nothing, a new node its own object and
/// the one shard its record joins, a node gone its shard.
#[test]
fn a_node_event_changes_only_its_own_objects() {
    let nd = NodeGen {
        v6: false,
        asn: None,
        rr: None,
        rack: Some(true),
        zone: None,
        junk: false,
        bad: false,
        exclude_lb: false,
        wg: false,
    };
    let g = ClusterGen {
        nodes: vec![nd.clone(); 40],
        mesh: false,
        mesh_password: None,
        asn: None,
        listen_port: None,
        node_config: None,
        peers: vec![PeerGen {
            local: 2,
            remote: 2,
            target: 1,
            asn: 64512,
            manual: false,
            password: None,
            port: None,
        }],
        pools: vec![],
        blocks: vec![],
        services: vec![],
    };
    let mut c = parts(&g);
    let mut p = publisher(&c, None);
    let ch = apply_ev(&g, &mut c, &mut p, Ev::Unread(3, 1));
    assert!(ch.is_empty(), "{ch:?}");
    let ch = apply_ev(&g, &mut c, &mut p, Ev::Node(41, nd.clone(), false));
    assert_eq!(ch.shards.len(), 1, "{ch:?}");
    assert_eq!(ch.nodes, [node_name(41)].into());
    assert!(ch.membership && !ch.relayout);
    // A selected label: the node's record (its shard) only.
    let ch = apply_ev(
        &g,
        &mut c,
        &mut p,
        Ev::Node(
            5,
            NodeGen {
                rack: Some(false),
                ..nd.clone()
            },
            false,
        ),
    );
    assert_eq!(
        (ch.shards.len(), ch.nodes.len(), ch.membership),
        (1, 0, false),
        "{ch:?}"
    );
    let ch = apply_ev(&g, &mut c, &mut p, Ev::NodeGone(41));
    assert_eq!(ch.shards.len(), 1, "{ch:?}");
    assert!(ch.membership);
    assert_eq!(p.inputs(), full(&c, Some(1)));
}
