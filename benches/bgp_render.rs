//! BGP renderer, no I/O: one node's six BIRD files for clusters of growing size, and the input
//! fingerprints a controller pass computes.
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = render
}
criterion_main!(benches);
