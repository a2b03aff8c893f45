//! BGP renderer, no I/O: one node's six BIRD files for clusters of growing size, the input
//! fingerprints, and the published contract (`tortie::node::published`): a full publish (every
//! record serialized, shards cut, each node's own object built: what the operator does on start
//! and on a BGPPeer/BGPConfiguration change), the incremental step for one Node event (a new
//! address on `n5`: its record, its shard, its own object), an agent's assemble + render, and the
//! published bytes (printed:
//! `published bytes: ...`), with a 5,000-client route reflector's assembled config checked by
//! `bird -p` when BIRD is installed.
//!
//! Inputs (so another implementation can run the same): nodes `n<i>` at 10.<i/250>.<i%250>.1/16
//! with one confirmed /26 block each, default BGPConfiguration (AS 64512) plus
//! serviceClusterIPs 10.96.0.0/12, one no-encap pool 10.48.0.0/12, one global BGPPeer
//! 192.0.2.1 AS 65100. "mesh": nodeToNodeMeshEnabled true. "rr": mesh off, 3 route reflectors
//! (label rr=true, cluster id 224.0.0.1) and a BGPPeer `nodeSelector: has(rr)`,
//! `peerSelector: !has(rr)`; rendered for a reflector (N-3 client sessions) and for a client.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};
use tortie::node::published;

fn cluster(n: usize, mesh: bool) -> Snapshot {
    let mut docs = Vec::new();
    for i in 0..n {
        let mut labels = serde_json::Map::new();
        let mut ann = serde_json::Map::new();
        ann.insert(
            "projectcalico.org/IPv4Address".into(),
            format!("10.{}.{}.1/16", i / 250, i % 250).into(),
        );
        if !mesh && i < 3 {
            labels.insert("rr".into(), "true".into());
            ann.insert(
                "projectcalico.org/RouteReflectorClusterID".into(),
                "224.0.0.1".into(),
            );
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("n{i}"), "labels": labels, "annotations": ann}}));
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
            "metadata": {"name": format!("a{i}")},
            "spec": {"cidr": format!("10.{}.{}.{}/26", 48 + i / 1024, (i / 4) % 256, (i % 4) * 64),
                     "node": format!("n{i}"),
                     "state": "confirmed", "deleted": "false"}}),
        );
    }
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": mesh, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}}),
    );
    docs.push(json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": "pool"}, "spec": {"cidr": "10.48.0.0/12"}}));
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
        "metadata": {"name": "tor"}, "spec": {"peerIP": "192.0.2.1", "asNumber": 65100}}),
    );
    if !mesh {
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
            "metadata": {"name": "rr"},
            "spec": {"nodeSelector": "has(rr)", "peerSelector": "!has(rr)"}}),
        );
    }
    let text = docs
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut s = Snapshot::default();
    s.add_manifests("bench", &text).unwrap();
    s
}

fn render(c: &mut Criterion) {
    let opts = RenderOptions::default();
    let mut g = c.benchmark_group("bgp/render_one_node");
    for n in [10usize, 100, 1000] {
        let snap = cluster(n, true);
        g.bench_with_input(BenchmarkId::new("mesh", n), &snap, |b, s| {
            b.iter(|| black_box(bgp::render(s, "n5", &opts, &CalicoSelectors::default()).unwrap()))
        });
    }
    for n in [1000usize, 5000] {
        let snap = cluster(n, false);
        g.bench_with_input(BenchmarkId::new("rr_reflector", n), &snap, |b, s| {
            b.iter(|| black_box(bgp::render(s, "n0", &opts, &CalicoSelectors::default()).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("rr_client", n), &snap, |b, s| {
            b.iter(|| black_box(bgp::render(s, "n5", &opts, &CalicoSelectors::default()).unwrap()))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("bgp/fingerprints");
    for n in [1000usize, 5000] {
        let snap = cluster(n, false);
        g.bench_with_input(BenchmarkId::new("all_nodes", n), &snap, |b, s| {
            b.iter(|| black_box(bgp::snapshot::input_fingerprints(s)))
        });
    }
    g.finish();
}

/// Bytes of every object the operator writes for `snap`, as the apiserver stores them (JSON).
fn published_bytes(snap: &Snapshot) -> (usize, usize, usize) {
    let inputs = published::publish(snap, &RenderOptions::default(), &CalicoSelectors::default(), None);
    let (shards, own) = published::objects("tortie-system", &inputs);
    let s: usize = shards.iter().map(|o| serde_json::to_vec(o).unwrap().len()).sum();
    let o: usize = own
        .iter()
        .map(|p| match p {
            published::Published::ConfigMap(c) => serde_json::to_vec(c).unwrap().len(),
            published::Published::Secret(x) => serde_json::to_vec(x).unwrap().len(),
        })
        .sum();
    let largest = shards
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap().len())
        .max()
        .unwrap_or(0);
    (s + o, shards.len(), largest)
}

/// A reflector's config assembled from the published objects, checked by `bird -p`.
fn reflector_check(snap: &Snapshot) {
    let sel = CalicoSelectors::default();
    let inputs = published::publish(snap, &RenderOptions::default(), &sel, None);
    let (shards, own) = published::objects("tortie-system", &inputs);
    let n0 = own
        .iter()
        .find(|p| p.metadata().name.as_deref() == Some("tortie-bird-n0"))
        .unwrap();
    let t = std::time::Instant::now();
    let r = published::render_published(n0, &shards, &sel).unwrap().unwrap();
    let took = t.elapsed();
    let main = String::from_utf8_lossy(&r.files["bird.cfg"]).to_string();
    let sessions = main.matches("protocol bgp ").count();
    let dir = tempfile::tempdir().unwrap();
    for (f, b) in &r.files {
        std::fs::write(dir.path().join(f), b).unwrap();
    }
    let parsed = match std::process::Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(dir.path().join("bird.cfg"))
        .output()
    {
        Ok(o) if o.status.success() => "bird -p: ok".to_string(),
        Ok(o) => format!("bird -p: REFUSED: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("bird -p: not run ({e})"),
    };
    eprintln!(
        "published: reflector n0 of {} nodes: {sessions} BGP sessions, bird.cfg {} bytes, assembled + rendered in {:.1} ms; {parsed}",
        snap.nodes.len(),
        main.len(),
        took.as_secs_f64() * 1e3
    );
}

fn publish(c: &mut Criterion) {
    for (layout, n) in [("mesh", 1000usize), ("rr", 5000)] {
        let snap = cluster(n, layout == "mesh");
        let (bytes, count, largest) = published_bytes(&snap);
        eprintln!(
            "published bytes: {layout} {n} nodes: {:.2} MB in {count} shards (largest {:.0} KiB) + {n} own objects",
            bytes as f64 / 1e6,
            largest as f64 / 1024.0
        );
    }
    reflector_check(&cluster(5000, false));
    let mut g = c.benchmark_group("bgp/publish");
    for (layout, n) in [("mesh", 1000usize), ("rr", 5000)] {
        let snap = cluster(n, layout == "mesh");
        let sel = CalicoSelectors::default();
        g.bench_with_input(
            BenchmarkId::new(format!("{layout}_per_event"), n),
            &snap,
            |b, s| b.iter(|| black_box(published::publish(s, &RenderOptions::default(), &sel, Some(1)))),
        );
    }
    // The controller's incremental step for one Node event (a new address): the node's record,
    // its shard's body and hash, its own object.
    for (layout, n) in [("mesh", 1000usize), ("rr", 5000)] {
        let snap = cluster(n, layout == "mesh");
        let sel = CalicoSelectors::default();
        let nodes: Vec<_> = snap.nodes.iter().collect();
        let affs: Vec<_> = snap.affinities.iter().collect();
        let mut p = published::Publisher::new(&snap, &nodes, &affs, &RenderOptions::default(), &sel, None);
        let a = snap.nodes[5].clone();
        let mut b = a.clone();
        b.metadata
            .annotations
            .get_or_insert_default()
            .insert("projectcalico.org/IPv4Address".into(), "10.250.0.1/16".into());
        let mut flip = false;
        g.bench_function(format!("{layout}_node_event_incremental/{n}"), |bch| {
            bch.iter(|| {
                flip = !flip;
                let node = if flip { &b } else { &a };
                black_box(p.set_node(&snap, "n5", Some(node), &sel))
            })
        });
    }
    let snap = cluster(5000, false);
    let sel = CalicoSelectors::default();
    let inputs = published::publish(&snap, &RenderOptions::default(), &sel, None);
    let (shards, own) = published::objects("tortie-system", &inputs);
    let client = own
        .iter()
        .find(|p| p.metadata().name.as_deref() == Some("tortie-bird-n5"))
        .unwrap()
        .clone();
    g.bench_function("rr_client_assemble_render/5000", |b| {
        b.iter(|| black_box(published::render_published(&client, &shards, &sel).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = render, publish
}
criterion_main!(benches);
