//! BGP renderer, no I/O: one node's six BIRD files for clusters of growing size, the input
//! fingerprints, and the published contract (`tortie::node::published`): the operator's publish
//! step per event (what one Node event costs the operator: every record serialized, shards cut,
//! each node's own object built) and an agent's assemble + render. The published bytes and the
//! 5,000-client reflector checked by BIRD are the `publish` section of `benches/operator.rs`
//! (recorded in `bench/results.json`, with targets).
//!
//! Inputs (so another implementation can run the same): nodes `n<i>` at 10.<i/250>.<i%250>.1/16
//! with one confirmed /26 block each, default BGPConfiguration (AS 64512) plus
//! serviceClusterIPs 10.96.0.0/12, one no-encap pool 10.48.0.0/12, one global BGPPeer
//! 192.0.2.1 AS 65100. "mesh": nodeToNodeMeshEnabled true. "rr": mesh off, 3 route reflectors
//! (label rr=true, cluster id 224.0.0.1) and a BGPPeer `nodeSelector: has(rr)`,
//! `peerSelector: !has(rr)`; rendered for a reflector (N-3 client sessions) and for a client.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tortie::bgp::{self, CalicoSelectors, RenderOptions};
use tortie::node::published;

mod common;
use common::bgp_inputs::cluster;

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

fn publish(c: &mut Criterion) {
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
