//! Hostile values in every BGP field that reaches BIRD, mixed with valid ones (as stored when a
//! CRD lacked tortie's rules): with `validate::sanitize` first, as the controller and `tortie
//! render` do, and also without it (the renderer's own guards), real BIRD 1.6 accepts every file
//! of every node that renders; sanitizing twice finds nothing more.

mod support;

use std::process::Command;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot, validate};

#[derive(Clone, Debug)]
struct PeerGen {
    ip: &'static str,
    asn: i64,
    local_asn: Option<i64>,
    keepalive: Option<&'static str>,
    restart: Option<&'static str>,
    ttl: i64,
    allow_local: i64,
    reachable_by: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct ConfigGen {
    asn: Option<i64>,
    listen_port: Option<i64>,
    mesh_restart: Option<&'static str>,
    ignored: Vec<&'static str>,
    adverts: Vec<(&'static str, Vec<&'static str>)>,
    service: Vec<&'static str>,
    priority: Option<i64>,
    pool: &'static str,
    rr: Option<&'static str>,
    peers: Vec<PeerGen>,
}

const DURATIONS: [Option<&str>; 9] = [
    None,
    Some("30s"),
    Some("0"),
    Some("-1s"),
    Some("5000000h"),
    Some("1.5h"),
    Some("30"),
    Some("+5s"),
    Some("1s\"; }"),
];

fn peer_gen() -> impl Strategy<Value = PeerGen> {
    (
        select(vec![
            "192.0.2.1",
            "192.0.2.1:179",
            "192.0.2.1:0",
            "192.0.2.1:70000",
            "[fd00::9]:179",
            "[fd00::9]:0",
            "fd00::9",
            "[fd00::9]",
            "x\"; }",
            "10.0.0.2",
        ]),
        select(vec![65000i64, 0, 4294967295, 4294967296, -1]),
        select(vec![None, Some(65001i64), Some(4294967296)]),
        select(DURATIONS.to_vec()),
        select(DURATIONS.to_vec()),
        select(vec![0i64, 1, 255, 256, -1]),
        select(vec![0i64, 3, 300]),
        select(vec![None, Some("192.0.2.254"), Some("fd00::fe"), Some("gw")]),
    )
        .prop_map(
            |(ip, asn, local_asn, keepalive, restart, ttl, allow_local, reachable_by)| PeerGen {
                ip,
                asn,
                local_asn,
                keepalive,
                restart,
                ttl,
                allow_local,
                reachable_by,
            },
        )
}

fn config_gen() -> impl Strategy<Value = ConfigGen> {
    let advert = (
        select(vec![
            "10.48.0.0/16",
            "10.48.0.1/16",
            "fd00:48::1/64",
            "fd00:48::/64",
            "nope",
        ]),
        proptest::collection::vec(
            select(vec![
                "65000:1",
                "65536:1",
                "1:2:3",
                "1:2:4294967296",
                "c",
                "d",
                "undefined",
            ]),
            1..3,
        ),
    );
    (
        (
            select(vec![None, Some(64512i64), Some(5000000000), Some(-3)]),
            select(vec![None, Some(179i64), Some(0), Some(70000)]),
            select(DURATIONS.to_vec()),
            proptest::collection::vec(select(vec!["docker*", "eth\"0", "*", "a\nb", "veth.1"]), 0..3),
            proptest::collection::vec(advert, 0..3),
        ),
        (
            proptest::collection::vec(
                select(vec!["10.96.0.0/12", "10.96.0.1/12", "x", "fd00:96::/112"]),
                0..3,
            ),
            select(vec![None, Some(1024i64), Some(0), Some(-5), Some(2147483647)]),
            select(vec!["10.50.0.0/16", "10.50.0.1/16"]),
            select(vec![None, Some("224.0.0.1"), Some("bad\"")]),
            proptest::collection::vec(peer_gen(), 0..4),
        ),
    )
        .prop_map(
            |((asn, listen_port, mesh_restart, ignored, adverts), (service, priority, pool, rr, peers))| {
                ConfigGen {
                    asn,
                    listen_port,
                    mesh_restart,
                    ignored,
                    adverts,
                    service,
                    priority,
                    pool,
                    rr,
                    peers,
                }
            },
        )
}

fn build(g: &ConfigGen) -> Snapshot {
    let mut docs: Vec<Value> = Vec::new();
    for i in 1..=2 {
        let mut ann = serde_json::Map::new();
        ann.insert(
            "projectcalico.org/IPv4Address".into(),
            format!("10.0.0.{i}/24").into(),
        );
        ann.insert(
            "projectcalico.org/IPv6Address".into(),
            format!("fd00::{i}/64").into(),
        );
        if i == 2
            && let Some(rr) = g.rr
        {
            ann.insert("projectcalico.org/RouteReflectorClusterID".into(), rr.into());
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("n{i}"), "annotations": ann}}));
    }
    let mut spec = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        spec.insert(k.into(), v);
    };
    if let Some(a) = g.asn {
        put("asNumber", a.into());
    }
    if let Some(p) = g.listen_port {
        put("listenPort", p.into());
    }
    if let Some(d) = g.mesh_restart {
        put("nodeMeshMaxRestartTime", d.into());
    }
    if let Some(p) = g.priority {
        put("ipv4NormalRoutePriority", p.into());
        put("ipv6NormalRoutePriority", p.into());
    }
    put("ignoredInterfaces", json!(g.ignored));
    put(
        "communities",
        json!([{"name": "c", "value": "65000:100"}, {"name": "d", "value": "70000:1"}]),
    );
    put(
        "prefixAdvertisements",
        Value::Array(
            g.adverts
                .iter()
                .map(|(cidr, comms)| json!({"cidr": cidr, "communities": comms}))
                .collect(),
        ),
    );
    let blocks: Vec<Value> = g.service.iter().map(|c| json!({"cidr": c})).collect();
    put("serviceClusterIPs", Value::Array(blocks.clone()));
    put("serviceLoadBalancerIPs", Value::Array(blocks));
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": spec}),
    );
    docs.push(json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": "pool"}, "spec": {"cidr": g.pool}}));
    for (i, p) in g.peers.iter().enumerate() {
        let mut s = serde_json::Map::new();
        s.insert("peerIP".into(), p.ip.into());
        s.insert("asNumber".into(), p.asn.into());
        s.insert("ttlSecurity".into(), p.ttl.into());
        s.insert("numAllowedLocalASNumbers".into(), p.allow_local.into());
        if let Some(l) = p.local_asn {
            s.insert("localASNumber".into(), l.into());
        }
        if let Some(k) = p.keepalive {
            s.insert("keepaliveTime".into(), k.into());
        }
        if let Some(r) = p.restart {
            s.insert("maxRestartTime".into(), r.into());
        }
        if let Some(r) = p.reachable_by {
            s.insert("reachableBy".into(), r.into());
        }
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
            "metadata": {"name": format!("p{i}")}, "spec": s}),
        );
    }
    support::bgp_lab::snapshot_of(&docs)
}

/// Renders every node (a node whose own annotation is bad is refused, naming it) and asks BIRD.
fn bird_accepts_all(snap: &Snapshot) -> Result<(), String> {
    for node in ["n1", "n2"] {
        let r = match bgp::render(snap, node, &RenderOptions::default(), &CalicoSelectors::default()) {
            Ok(r) => r,
            Err(e) if e.to_string().contains("RouteReflectorClusterID") => continue,
            Err(e) => return Err(format!("{node}: {e}")),
        };
        let dir = tempfile::tempdir().unwrap();
        for (f, b) in &r.files {
            std::fs::write(dir.path().join(f), b).unwrap();
        }
        for (prog, main) in [("bird", "bird.cfg"), ("bird6", "bird6.cfg")] {
            let out = Command::new(prog)
                .arg("-p")
                .arg("-c")
                .arg(dir.path().join(main))
                .output()
                .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); apt-get install -y bird"));
            if !out.status.success() {
                return Err(format!(
                    "{prog} rejects {node}'s {main}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&r.files[main])
                ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn bird_accepts_what_is_rendered_from_hostile_inputs(g in config_gen()) {
        let raw = build(&g);
        // The renderer's own guards, without the validator.
        if let Err(e) = bird_accepts_all(&raw) {
            prop_assert!(false, "unsanitized: {e}");
        }
        let mut snap = raw.clone();
        let errs = validate::sanitize(&mut snap);
        for e in &errs {
            let p = e.place();
            prop_assert!(e.to_string().starts_with(&p.to_string()), "{e} does not lead with {p}");
        }
        if let Err(e) = bird_accepts_all(&snap) {
            prop_assert!(false, "sanitized: {e}");
        }
        prop_assert!(validate::sanitize(&mut snap).is_empty(), "sanitize left something bad");
    }
}
