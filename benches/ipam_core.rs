//! Allocator core, no I/O: addresses per second in one block and across 1,000 blocks, the
//! claim-order walk, selector parsing/evaluation, and `tortie ipam check`'s decisions over
//! 100,000 allocations and handles (the check, its report, a release plan from the report).
//!
//! Inputs (so another implementation can run the same): /26 IPv4 blocks of 10.0.0.0/8, one
//! attribute set per allocation (pod handle + node/namespace/pod/timestamp, as the CNI writes), FIFO
//! allocation order; selector `zone == 'a' && has(gpu) && rack in {'r1','r2','r3'} && !has(drain)`
//! against a node with 8 labels. The check: 1,563 full /26 blocks of 10.0.0.0/8 (100,032
//! allocations), one handle per allocation, 90% of the pods alive and showing their address, the
//! other 10% gone (leaked), plus 1,000 handles that hold nothing.

use std::collections::BTreeMap;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipnet::IpNet;
use std::hint::black_box;
use tortie::ipam::{block, selector::Selector};

fn attrs(i: usize) -> tortie::api::StrMap {
    [
        ("node", "node-a".to_string()),
        ("namespace", "default".to_string()),
        ("pod", format!("web-{i}")),
        ("timestamp", "2026-11-22 10:00:00.000000000 +0000 UTC".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn one_block(c: &mut Criterion) {
    let cidr: IpNet = "10.48.0.0/26".parse().unwrap();
    let handles: Vec<String> = (0..64).map(|i| format!("k8s-pod-network.{i:064x}")).collect();
    let secondaries: Vec<_> = (0..64).map(attrs).collect();
    let mut g = c.benchmark_group("ipam/one_block");
    g.throughput(Throughput::Elements(64));
    g.bench_function("fill_64_then_release", |b| {
        b.iter(|| {
            let mut blk = block::new_block(&cidr, Some("host:node-a".into()), 1, None);
            let mut taken = Vec::with_capacity(64);
            for i in 0..64 {
                taken.extend(block::allocate(
                    &mut blk,
                    1,
                    Some(&handles[i]),
                    &secondaries[i],
                    |_| false,
                ));
            }
            block::release(&mut blk, &taken);
            black_box(blk)
        })
    });
    g.finish();
}

fn thousand_blocks(c: &mut Criterion) {
    // 1,000 /26 blocks, each half full: the allocator finds the first block with room and takes one
    // address, until every block is full (32,000 allocations per iteration).
    let base: Vec<_> = (0..1000u32)
        .map(|i| {
            let net: IpNet = format!("10.{}.{}.0/26", i / 4 / 256, (i / 4) % 256)
                .parse::<IpNet>()
                .unwrap();
            let net = IpNet::new(
                match net.network() {
                    std::net::IpAddr::V4(a) => {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) + (i % 4) * 64))
                    }
                    other => other,
                },
                26,
            )
            .unwrap();
            let mut blk = block::new_block(&net, Some("host:node-a".into()), 1, None);
            block::allocate(&mut blk, 32, Some("k8s-pod-network.seed"), &attrs(0), |_| false);
            blk
        })
        .collect();
    let secondary = attrs(1);
    let mut g = c.benchmark_group("ipam/1000_blocks");
    g.throughput(Throughput::Elements(32_000));
    g.sample_size(10);
    g.bench_function("allocate_until_full", |b| {
        b.iter_batched(
            || base.clone(),
            |mut blocks| {
                let mut cursor = 0;
                let mut n = 0u32;
                while cursor < blocks.len() {
                    if block::free_count(&blocks[cursor]) == 0 {
                        cursor += 1;
                        continue;
                    }
                    let h = format!("k8s-pod-network.{n}");
                    block::allocate(&mut blocks[cursor], 1, Some(&h), &secondary, |_| false);
                    n += 1;
                }
                black_box(n)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn selectors(c: &mut Criterion) {
    let text = "zone == 'a' && has(gpu) && rack in {'r1','r2','r3'} && !has(drain)";
    let labels: BTreeMap<String, String> = [
        ("zone", "a"),
        ("gpu", "true"),
        ("rack", "r2"),
        ("kubernetes.io/hostname", "node-a"),
        ("kubernetes.io/os", "linux"),
        ("topology.kubernetes.io/region", "eu-west-1"),
        ("node-role.kubernetes.io/worker", ""),
        ("team", "net"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sel = Selector::parse(text).unwrap();
    let mut g = c.benchmark_group("selector");
    g.bench_function("parse", |b| b.iter(|| Selector::parse(black_box(text)).unwrap()));
    g.bench_function("evaluate", |b| {
        b.iter(|| black_box(sel.matches(black_box(&labels))))
    });
    for n in [1usize, 100, 10_000] {
        let nodes: Vec<BTreeMap<String, String>> = (0..n)
            .map(|i| {
                let mut l = labels.clone();
                l.insert("rack".into(), format!("r{}", i % 5));
                l
            })
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("evaluate_nodes", n), &nodes, |b, nodes| {
            b.iter(|| nodes.iter().filter(|l| sel.matches(l)).count())
        });
    }
    g.finish();
}

fn check_100k(c: &mut Criterion) {
    use tortie::api::{Block, CalicoKind, CrdMode, Handle, IPAMHandleSpec};
    use tortie::ipam::{leaks, report};
    let mut blocks = Vec::new();
    let mut handles = Vec::new();
    let mut pods = std::collections::BTreeSet::new();
    let mut in_use = Vec::new();
    let mut n = 0usize;
    for i in 0..1563u32 {
        let net = tortie::ipam::cidr::nth_block(&"10.0.0.0/8".parse().unwrap(), 26, i as u128);
        let mut spec = block::new_block(&net, Some("host:node-a".into()), 1, None);
        for o in 0..64 {
            let h = format!("k8s-pod-network.{n:064x}");
            block::allocate(&mut spec, 1, Some(&h), &attrs(n), |_| false);
            handles.push(Handle::new(
                &h,
                &CrdMode::V1.resource(CalicoKind::IPAMHandle),
                IPAMHandleSpec {
                    handle_id: h.clone(),
                    block: [(net.to_string(), 1)].into(),
                    ..Default::default()
                },
            ));
            if !n.is_multiple_of(10) {
                pods.insert(("default".to_string(), format!("web-{n}")));
                in_use.push(report::InUse {
                    ip: tortie::ipam::cidr::address_of(&net, o),
                    namespace: "default".into(),
                    pod: format!("web-{n}"),
                });
            }
            n += 1;
        }
        blocks.push(Block::new(
            &tortie::ipam::names::block_name(&net),
            &CrdMode::V1.resource(CalicoKind::IPAMBlock),
            spec,
        ));
    }
    for i in 0..1000 {
        let h = format!("orphan-{i}");
        handles.push(Handle::new(
            &h,
            &CrdMode::V1.resource(CalicoKind::IPAMHandle),
            IPAMHandleSpec {
                handle_id: h.clone(),
                ..Default::default()
            },
        ));
    }
    let input = report::CheckInput {
        blocks,
        handles,
        affinities: vec![],
        pods: Some(pods),
        in_use: Some(in_use),
        pools: None,
        scope: None,
    };
    let problems = report::check(&input);
    let rep = leaks::build_report(&input, &problems, Default::default());
    let (leaked, orphans) = leaks::merge(std::slice::from_ref(&rep));
    assert_eq!((leaked.len(), orphans.len()), (10_004, 1000));
    let mut g = c.benchmark_group("ipam/check_100k");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("check", |b| {
        b.iter(|| black_box(report::check(black_box(&input))))
    });
    g.bench_function("report", |b| {
        b.iter(|| black_box(leaks::build_report(&input, &problems, Default::default())))
    });
    g.bench_function("release_plan", |b| {
        b.iter(|| black_box(leaks::plan(&leaked, &orphans, &input, &problems)))
    });
    g.finish();
}

criterion_group!(benches, one_block, thousand_blocks, selectors, check_100k);
criterion_main!(benches);
