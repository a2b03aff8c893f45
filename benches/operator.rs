//! Operator benchmarks against a real control plane: the real `tortie run` and `tortie agent`
//! processes, real BIRD daemons in network namespaces. Figures are printed and merged into
//! `bench/results.json` (beside the sections of `benches/system.rs`). Run by `make bench`:
//!
//! ```sh
//! bash e2e/with-cluster.sh cargo bench --bench operator -- all [--quick]
//! bash e2e/with-cluster.sh cargo bench --bench operator -- gc | gc-node-deleted | gc-restart \
//!     | published-bytes | reflector | publish-writes | bgp-reload | node-events | footprint [--out FILE]
//! ```
//!
//! - `gc`: 10,000 leaked pod addresses over 200 blocks (pods gone, nodes alive): time from the end
//!   of the grace period until the GC has reclaimed every one (block writes landed), until their
//!   IPAMHandles are gone, and the API writes it used (IPAMBlock writes per block apart).
//! - `gc-node-deleted`: Nodes with a leaked address and an empty block each are deleted: time
//!   until their blocks, affinities and handles are gone (the default GC interval is minutes).
//! - `gc-restart`: the operator is killed inside the grace period of a leak and of empty blocks
//!   and another starts: the releases follow the first sighting, not the restart.
//! - `published-bytes`: bytes of what the operator publishes for a 1,000-node mesh and 5,000 nodes
//!   with route reflectors (pure, the inputs of `benches/bgp_render.rs`).
//! - `reflector`: a reflector with 5,000 clients: its config assembled from the published objects,
//!   `bird -p`, then a real BIRD started on it in a network namespace.
//! - `publish-writes`: `tortie run --controllers bgp` on 1,000 Nodes: API writes at start-up (each
//!   object once) and for Node changes no BIRD file reads (none).
//! - `footprint`: the operator's RSS and CPU at 10 Nodes; at 1,000 Nodes with 50,000 Pods; at
//!   5,000 Nodes, 100,000 IPAMHandles and 2,000 IPAMBlocks, all created in the apiserver.
//! - `node-events`: the operator's CPU per Node event at 5,000 Nodes: Node address and selected
//!   label changes (each changes a BGP input), and label changes no selector reads.
//! - `bgp-reload`: a BGPPeer change until every node's BIRD runs it (operator publishes, agents
//!   render, install and send `configure` on BIRD's control socket), with where the time went, and
//!   an input change that leaves the output alone causes no reload.
//!
//! Each section records its inputs so that another implementation can be run on the same.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tortie::api::{
    Affinity, AllocationAttribute, Block, BlockAffinitySpec, CalicoKind, CrdMode, Handle, IPAMBlockSpec,
    IPAMHandleSpec,
};
use tortie::bgp::{CalicoSelectors, RenderOptions};
use tortie::node::published;

use common::*;
use support::Operator;

/// Concurrent creates while loading the apiserver with objects.
const LOAD_CONCURRENCY: usize = 48;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("operator benchmarks: test mode (run them with `make bench`)");
        return;
    }
    let mut quick = false;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results.json");
    let mut what: Vec<String> = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(args.next().expect("--out needs a path")),
            s if s.starts_with('-') => {}
            s => what.push(s.to_string()),
        }
    }
    if what.is_empty() || what.iter().any(|w| w == "all") {
        // footprint last: it leaves 5,000 Nodes behind until its clean-up has run.
        what = vec![
            "gc".into(),
            "gc-node-deleted".into(),
            "gc-restart".into(),
            "published-bytes".into(),
            "reflector".into(),
            "publish-writes".into(),
            "bgp-reload".into(),
            "node-events".into(),
            "footprint".into(),
        ];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = run_sections(&out, &what, |w| match w {
        "gc" => rt.block_on(gc_bench(quick)),
        "gc-node-deleted" => rt.block_on(gc_node_deleted_bench(quick)),
        "gc-restart" => rt.block_on(gc_restart_bench(quick)),
        "published-bytes" => published_bytes_bench(),
        "reflector" => reflector_bench(),
        "publish-writes" => rt.block_on(publish_writes_bench(quick)),
        "footprint" => rt.block_on(footprint_bench(quick)),
        "bgp-reload" => rt.block_on(bgp_reload_bench(quick)),
        "node-events" => rt.block_on(node_events_bench(quick)),
        other => panic!(
            "unknown benchmark {other:?} (gc, gc-node-deleted, gc-restart, published-bytes, reflector, publish-writes, bgp-reload, node-events, footprint, all)"
        ),
    });
    if !ok {
        std::process::exit(1);
    }
}

/// Writes (create, update, patch, delete) the apiserver has served on IPAMBlocks so far.
async fn block_writes(client: &Client) -> f64 {
    resource_writes(client, "ipamblocks").await
}

/// Writes (create, update, patch, apply, delete) the apiserver has served on `resource` so far.
async fn resource_writes(client: &Client, resource: &str) -> f64 {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(req).await.unwrap();
    support::apiserver_writes(&text, &[resource])
}

fn writes(counts: &BTreeMap<String, f64>) -> f64 {
    ["post", "put", "patch", "apply", "delete", "deletecollection"]
        .iter()
        .filter_map(|v| counts.get(*v))
        .sum()
}

/// Runs `n` futures made by `f(i)` with bounded concurrency, printing progress on long loads.
async fn load<F, Fut>(what: &str, n: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t0 = Instant::now();
    let mut s = stream::iter(0..n).map(&f).buffer_unordered(LOAD_CONCURRENCY);
    let mut done = 0usize;
    while s.next().await.is_some() {
        done += 1;
        if done.is_multiple_of(10_000) {
            eprintln!(
                "  {what}: {done}/{n} ({:.0}/s)",
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!("  {what}: {n} done in {:.1}s", t0.elapsed().as_secs_f64());
}

/// Creates, retrying transient apiserver refusals (429/5xx under load); AlreadyExists is success.
async fn create<K>(api: &Api<K>, obj: &K)
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for attempt in 0.. {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(e) if attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if attempt == 19 {
                    panic!("create failed: {e}");
                }
            }
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

struct Objects {
    client: Client,
    mode: CrdMode,
}

impl Objects {
    async fn nodes(&self, names: &[String], labels: &[(&str, &str)]) {
        let api: Api<Node> = Api::all(self.client.clone());
        load("Nodes", names.len(), |i| {
            let api = api.clone();
            let mut l: BTreeMap<String, String> =
                labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            l.insert("kubernetes.io/hostname".into(), names[i].clone());
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": names[i], "labels": l, "annotations": {
                    "projectcalico.org/IPv4Address": format!("10.{}.{}.{}/8", 200 + i / 65536, (i / 256) % 256, i % 256)}},
            }))
            .unwrap();
            async move { create(&api, &node).await }
        })
        .await;
    }

    async fn pods(&self, ns: &str, n: usize, node_of: impl Fn(usize) -> String) {
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        create(
            &ns_api,
            &serde_json::from_value::<Namespace>(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        load("Pods", n, |i| {
            let api = api.clone();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("pod-{i}")},
                "spec": {"nodeName": node_of(i), "containers": [{"name": "c", "image": "registry.invalid/none"}]}
            }))
            .unwrap();
            async move { create(&api, &pod).await }
        })
        .await;
    }

    /// `blocks` /26 blocks of `pool` (ordered), block b affine to `host(b)`, with `per_block`
    /// allocations each held by handle `handle(b, k)` for pod `pod(b, k)` of namespace `ns`;
    /// plus the handles and the affinities, as Calico's CNI plugin leaves them.
    #[allow(clippy::too_many_arguments)]
    async fn ipam(
        &self,
        pool: ipnet::Ipv4Net,
        first_block: usize,
        blocks: usize,
        per_block: usize,
        ns: &str,
        host: &(dyn Fn(usize) -> String + Sync),
        pod: &(dyn Fn(usize, usize) -> String + Sync),
    ) {
        let block_res = self.mode.resource(CalicoKind::IPAMBlock);
        let handle_res = self.mode.resource(CalicoKind::IPAMHandle);
        let aff_res = self.mode.resource(CalicoKind::BlockAffinity);
        let b_api: Api<Block> = Api::all_with(self.client.clone(), &block_res);
        let h_api: Api<Handle> = Api::all_with(self.client.clone(), &handle_res);
        let a_api: Api<Affinity> = Api::all_with(self.client.clone(), &aff_res);
        let subnets: Vec<ipnet::Ipv4Net> = pool.subnets(26).unwrap().collect();
        let mode = self.mode;
        let cidr_of = |b: usize| -> ipnet::IpNet { ipnet::IpNet::V4(subnets[first_block + b]) };
        let handle_of = |b: usize, k: usize| format!("k8s-pod-network.{}", pod(b, k).replace('/', "."));
        load("IPAMBlocks + BlockAffinities", blocks, |b| {
            let net = cidr_of(b);
            let h = host(b);
            let mut spec = IPAMBlockSpec {
                cidr: net.to_string(),
                affinity: Some(format!("host:{h}")),
                allocations: vec![None; 64],
                sequence_number: Some(1),
                sequence_number_for_allocation: Some(BTreeMap::new()),
                deleted: Some(false),
                ..Default::default()
            };
            for k in 0..per_block {
                let p = pod(b, k);
                let (pns, pname) = p.split_once('/').unwrap();
                spec.attributes.push(AllocationAttribute {
                    handle_id: Some(handle_of(b, k)),
                    secondary: Some(
                        [
                            ("namespace", pns.to_string()),
                            ("pod", pname.to_string()),
                            ("node", h.clone()),
                            ("timestamp", tortie::ipam::go_timestamp_now()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    ),
                    ..Default::default()
                });
                spec.allocations[k + 1] = Some(k);
            }
            spec.unallocated = (0..64).filter(|o| spec.allocations[*o].is_none()).collect();
            let block = Block::new(&tortie::ipam::names::block_name(&net), &block_res, spec);
            let aff = Affinity::new(
                &tortie::ipam::names::affinity_name(&h, &net),
                &aff_res,
                BlockAffinitySpec {
                    state: "confirmed".into(),
                    node: h.clone(),
                    type_: Some("host".into()),
                    cidr: net.to_string(),
                    deleted: mode.affinity_flag(false),
                    ..Default::default()
                },
            );
            let (b_api, a_api) = (b_api.clone(), a_api.clone());
            async move {
                create(&b_api, &block).await;
                create(&a_api, &aff).await;
            }
        })
        .await;
        load("IPAMHandles", blocks * per_block, |i| {
            let (b, k) = (i / per_block, i % per_block);
            let id = handle_of(b, k);
            let obj = Handle::new(
                &tortie::ipam::names::handle_name(&id),
                &handle_res,
                IPAMHandleSpec {
                    handle_id: id,
                    block: [(cidr_of(b).to_string(), 1)].into_iter().collect(),
                    deleted: Some(false),
                    ..Default::default()
                },
            );
            let h_api = h_api.clone();
            async move { create(&h_api, &obj).await }
        })
        .await;
        let _ = ns;
    }
}

async fn objects() -> Objects {
    let client = support::client().await;
    let mode = CrdMode::detect(&client).await.unwrap();
    Objects { client, mode }
}

async fn reclaimed(op: &Operator, pool: &str) -> f64 {
    let prefix = format!("ipam_allocations_gc_reclamations{{ippool=\"{pool}\"");
    op.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// GC: 10,000 leaked addresses over 200 blocks

async fn gc_bench(quick: bool) -> Value {
    let (blocks, per_block, grace_s) = if quick { (20, 50, 10) } else { (200, 50, 30) };
    let leaks = blocks * per_block;
    let o = objects().await;
    let run = format!("g{}", std::process::id());
    let pool = format!("bench-gc-{run}");
    let cidr: ipnet::Ipv4Net = format!("10.{}.0.0/16", 100 + std::process::id() % 40)
        .parse()
        .unwrap();
    support::apply_pool(&pool, &run, &cidr.to_string(), 26, "  nodeSelector: all()\n");
    let hosts: Vec<String> = (0..10).map(|i| format!("{run}-n{i}")).collect();
    o.nodes(&hosts, &[]).await;
    let ns = format!("bench-{run}");
    let nsc = ns.clone();
    let hosts2 = hosts.clone();
    o.ipam(
        cidr,
        0,
        blocks,
        per_block,
        &ns,
        &move |b| hosts2[b % 10].clone(),
        &move |b, k| format!("{nsc}/gone-{b}-{k}"),
    )
    .await;

    let before = request_counts(&o.client).await;
    let block_writes_before = block_writes(&o.client).await;
    let t0 = Instant::now();
    let op = Operator::start(
        &format!("bench-gc-{run}"),
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={run}"),
            "--gc-grace-period",
            &format!("{grace_s}s"),
            "--lease-name",
            &format!("bench-gc-{run}"),
        ],
    );
    op.wait_ready().await;
    let ready = t0.elapsed().as_secs_f64();
    let mut first = None;
    let mut curve: (Vec<f64>, Vec<f64>) = (vec![], vec![]);
    let deadline = Duration::from_secs(grace_s + 600);
    loop {
        let n = reclaimed(&op, &pool).await;
        curve.0.push(t0.elapsed().as_secs_f64());
        curve.1.push(n);
        if n > 0.0 && first.is_none() {
            first = Some(t0.elapsed().as_secs_f64());
        }
        if n >= leaks as f64 {
            break;
        }
        assert!(
            t0.elapsed() < deadline,
            "GC reclaimed only {n} of {leaks} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = t0.elapsed().as_secs_f64();
    // Block writes of the reclamation itself (the stamp and the release); a later pass stamps
    // the emptied blocks' empty-since clock, which belongs to empty-block release.
    let bw = block_writes(&o.client).await - block_writes_before;
    // The addresses are free; each freed handle's count is set (here: deleted) after its block.
    let h_api: Api<Handle> = Api::all_with(o.client.clone(), &o.mode.resource(CalicoKind::IPAMHandle));
    let handles_left = || async {
        h_api
            .list_metadata(&Default::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|h| h.metadata.name.as_deref().is_some_and(|n| n.contains(&ns)))
                    .count()
            })
            .unwrap_or(usize::MAX)
    };
    while handles_left().await > 0 {
        assert!(
            t0.elapsed() < deadline,
            "IPAMHandles of released addresses left after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let handles_done = t0.elapsed().as_secs_f64();
    let counts = diff(&request_counts(&o.client).await, &before);
    // Verify what the metric says: no allocation left in the pool's blocks.
    let b_api: Api<Block> = Api::all_with(o.client.clone(), &o.mode.resource(CalicoKind::IPAMBlock));
    let left: usize = b_api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|b| {
            b.spec
                .cidr
                .parse::<ipnet::IpNet>()
                .is_ok_and(|c| ipnet::IpNet::V4(cidr).contains(&c.addr()))
        })
        .map(|b| b.spec.allocations.iter().filter(|a| a.is_some()).count())
        .sum();
    assert_eq!(
        left, 0,
        "allocations left after the GC reported {leaks} reclamations"
    );
    let w = writes(&counts);
    let after_grace = done - grace_s as f64;
    let met = after_grace <= 15.0;
    let per_block = bw / blocks as f64;
    let s = json!({
        "id": "gc", "order": 40, "title": "IPAM GC: leaked addresses reclaimed by `tortie run`",
        "inputs": format!(
            "{leaks} leaked pod addresses (pods never existed) in {blocks} /26 IPAMBlocks of one IPPool, {per_block} per block, \
             blocks affine to 10 live Nodes, one IPAMHandle per address, written as Calico's CNI plugin leaves them. \
             `tortie run --controllers gc --gc-grace-period {grace_s}s` started after the objects exist; time counted from its start."
        ),
        "rows": [{
            "leaked addresses": leaks, "blocks": blocks, "grace period s": grace_s,
            "operator ready s": format!("{ready:.1}"),
            "first release s": first.map(|f| format!("{f:.1}")),
            "all reclaimed s": format!("{done:.1}"),
            "after grace s": format!("{after_grace:.1}"),
            "handles deleted s": format!("{handles_done:.1}"),
            "API writes": w, "IPAMBlock writes per block": format!("{per_block:.1}"),
            "API reads": counts.get("get").copied().unwrap_or(0.0) + counts.get("list").copied().unwrap_or(0.0),
        }],
        "targets": [
            target("gc-reclaim", &format!("{leaks} leaked addresses reclaimed within the grace period + 15 s"), met,
                   format!("{after_grace:.1} s after the grace period"), "56.0 s after the grace period",
                   "Calico: 15-22.5 min on a live node with default settings"),
            target("gc-block-writes", "≤ 2 IPAMBlock writes per block (the leak stamp, the release)", per_block <= 2.0,
                   format!("{per_block:.1}"), "101 (one write per released address)", "-"),
        ],
        "plot": {"file": "gc.png", "x": "seconds since the operator started", "y": "addresses reclaimed",
                 "series": [{"label": format!("{leaks} leaks, grace {grace_s} s"), "x": curve.0, "y": curve.1}]},
        "notes": [format!("API requests by verb during the run (operator + this bench's final check): {counts:?}")],
    });
    drop(op);
    // Later sections share this cluster: the BGP bench's mesh must not include these Nodes.
    let node_api: Api<Node> = Api::all(o.client.clone());
    for h in &hosts {
        let _ = node_api.delete(h, &Default::default()).await;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Footprint: RSS and CPU of `tortie run`

fn proc_status(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after ')'.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// Waits until the operator's CPU use settles (it has caught up with what it watches), then
/// measures RSS and CPU over `window`.
async fn settle_and_measure(op: &Operator, window: Duration) -> Value {
    let pid = op.pid();
    let t0 = Instant::now();
    loop {
        let c0 = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c1 = cpu_seconds(pid);
        if (c1 - c0) / 3.0 < 0.05 || t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let catch_up = t0.elapsed().as_secs_f64();
    let c0 = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    let c1 = cpu_seconds(pid);
    let (rss, peak) = proc_status(pid);
    json!({
        "rss_mib": rss, "peak_rss_mib": peak,
        "idle_cpu_percent": 100.0 * (c1 - c0) / window.as_secs_f64(),
        "cpu_seconds_total": c1, "settled_after_s": catch_up,
    })
}

async fn footprint_bench(quick: bool) -> Value {
    let scale = if quick { 10 } else { 1 };
    let o = objects().await;
    let run = format!("f{}", std::process::id());
    // Route-reflector layout (no full mesh at 5,000 nodes, as Calico advises beyond ~100).
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: crd.projectcalico.org/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false, asNumber: 64512}\n",
    );
    let pool = format!("bench-fp-{run}");
    let cidr: ipnet::Ipv4Net = "172.16.0.0/14".parse().unwrap();
    support::apply_pool(&pool, &run, &cidr.to_string(), 26, "  nodeSelector: all()\n");
    let node = |i: usize| format!("{run}-n{i:05}");
    let all_nodes: Vec<String> = (0..5000 / scale).map(node).collect();
    let window = Duration::from_secs(if quick { 5 } else { 20 });

    // Objects published by earlier sections' operators would be watched (and deleted as
    // orphans) by this one: the phases measure only what they list.
    clear_published(&o.client).await;
    // Phase 1: 10 nodes.
    o.nodes(&all_nodes[..10], &[]).await;
    let op = Operator::start(
        &format!("bench-fp-{run}"),
        &[
            "--lease-name",
            &format!("bench-fp-{run}"),
            "--pool-selector",
            &format!("tortie-test={run}"),
        ],
    );
    op.wait_ready().await;
    let p1 = settle_and_measure(&op, window).await;
    eprintln!("footprint at 10 nodes: {p1}");

    // Phase 2: 1,000 nodes, 50,000 pods (each with its address: 1,000 blocks of 50).
    let (n2, pods2, blocks2) = (1000 / scale, 50_000 / scale, 1000 / scale);
    o.nodes(&all_nodes[10..n2], &[]).await;
    let ns = format!("bench-{run}");
    let nodes2 = all_nodes.clone();
    o.pods(&ns, pods2, |i| nodes2[i % n2].clone()).await;
    let (nsc, nodes3) = (ns.clone(), all_nodes.clone());
    o.ipam(
        cidr,
        0,
        blocks2,
        50,
        &ns,
        &move |b| nodes3[b % n2].clone(),
        &move |b, k| format!("{nsc}/pod-{}", b * 50 + k),
    )
    .await;
    let p2 = settle_and_measure(&op, window).await;
    eprintln!("footprint at {n2} nodes / {pods2} pods: {p2}");

    // Phase 3: 5,000 nodes, 100,000 handles, 2,000 blocks (the second half: pods gone, handles
    // kept — leak candidates the GC tracks but, within its 15 min grace, does not release).
    let (n3, blocks3) = (5000 / scale, 2000 / scale);
    o.nodes(&all_nodes[n2..n3], &[]).await;
    let (nsc, nodes4) = (ns.clone(), all_nodes.clone());
    o.ipam(
        cidr,
        blocks2,
        blocks3 - blocks2,
        50,
        &ns,
        &move |b| nodes4[(n2 + b) % n3].clone(),
        &move |b, k| format!("{nsc}/gone-{}", b * 50 + k),
    )
    .await;
    let p3 = settle_and_measure(&op, window).await;
    eprintln!(
        "footprint at {n3} nodes / {} handles / {blocks3} blocks: {p3}",
        blocks3 * 50
    );
    let rss = |p: &Value| p["rss_mib"].as_f64().unwrap_or(f64::MAX);
    let labels = [
        "10 nodes".to_string(),
        format!("{n2} nodes, {pods2} pods, {blocks2} blocks"),
        format!("{n3} nodes, {} handles, {blocks3} blocks", blocks3 * 50),
    ];
    let phases = [&p1, &p2, &p3];
    let rows: Vec<Value> = labels
        .iter()
        .zip(phases)
        .map(|(l, p)| {
            json!({
                "watching": l,
                "RSS MiB": format!("{:.1}", p["rss_mib"].as_f64().unwrap_or(0.0)),
                "peak RSS MiB": format!("{:.1}", p["peak_rss_mib"].as_f64().unwrap_or(0.0)),
                "idle CPU %": format!("{:.2}", p["idle_cpu_percent"].as_f64().unwrap_or(0.0)),
                "CPU s so far": format!("{:.1}", p["cpu_seconds_total"].as_f64().unwrap_or(0.0)),
                "settled after s": format!("{:.0}", p["settled_after_s"].as_f64().unwrap_or(0.0)),
            })
        })
        .collect();
    let s = json!({
        "id": "footprint", "order": 50, "title": "Operator footprint (`tortie run`, all controllers)",
        "inputs": format!(
            "One `tortie run` (controllers installation, ippool, gc, bgp; default flags; info logs) while the apiserver \
             fills up in three phases: 10 Nodes; {n2} Nodes + {pods2} Pods + {blocks2} IPAMBlocks with {} allocations \
             and handles; {n3} Nodes + {blocks3} IPAMBlocks + {} IPAMHandles (the extra half leaked: pods gone, inside \
             the 15 min grace). BGPConfiguration nodeToNodeMeshEnabled: false (route-reflector layout, as Calico advises \
             past ~100 nodes), so every node's BGP inputs are still published. Each phase is measured after the \
             operator's CPU settles (< 5% over 3 s): VmRSS, VmHWM and CPU over {} s.",
            blocks2 * 50, blocks3 * 50, window.as_secs()
        ),
        "rows": rows,
        "targets": [
            target("footprint-10", "RSS ≤ 32 MiB at 10 nodes", rss(&p1) <= 32.0, format!("{:.1} MiB", rss(&p1)),
                   "20.2 MiB", "Calico kube-controllers at ~10 nodes: 24-73 MiB"),
            target("footprint-1000", "RSS ≤ 64 MiB at 1,000 nodes with 50k pods", rss(&p2) <= 64.0,
                   format!("{:.1} MiB", rss(&p2)), "105.8 MiB", "-"),
            target("footprint-5000", "RSS ≤ 128 MiB at 5,000 nodes with 100k handles", rss(&p3) <= 128.0,
                   format!("{:.1} MiB", rss(&p3)), "236.3 MiB", "-"),
        ],
        "plot": {"file": "footprint.png", "x": "objects watched (Nodes + Pods + IPAM objects)", "y": "MiB",
                 "series": [
                     {"label": "RSS", "x": [10, n2 + pods2 + blocks2 * 52, n3 + pods2 + blocks3 * 52],
                      "y": [rss(&p1), rss(&p2), rss(&p3)]},
                 ]},
    });
    drop(op);
    support::kubectl(&["delete", "bgpconfiguration", "default", "--ignore-not-found"]);
    // Whatever runs next in this cluster must not render BIRD configs for 5,000 nodes.
    let node_api: Api<Node> = Api::all(o.client.clone());
    load("Node deletions", all_nodes.len(), |i| {
        let (api, name) = (node_api.clone(), all_nodes[i].clone());
        async move {
            let _ = api.delete(&name, &Default::default()).await;
        }
    })
    .await;
    support::kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    s
}

// ---------------------------------------------------------------------------------------------
// Node events: operator CPU per Node event at 5,000 Nodes

/// Waits until the operator's CPU use settles (< 5% over 3 s).
async fn settle_cpu(pid: u32) {
    let t0 = Instant::now();
    loop {
        let c0 = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(3)).await;
        if (cpu_seconds(pid) - c0) / 3.0 < 0.05 || t0.elapsed() > Duration::from_secs(600) {
            return;
        }
    }
}

/// Operator CPU (ms) and published-object writes per event, over `events` Node patches spaced
/// `gap` apart (each `patch(j)` on its own pass of the BGP controller), counted until the
/// operator is quiet again.
async fn per_node_event(
    o: &Objects,
    pid: u32,
    events: usize,
    gap: Duration,
    patch: impl Fn(usize) -> (String, Value),
) -> (f64, f64) {
    let api: Api<Node> = Api::all(o.client.clone());
    let writes =
        async || resource_writes(&o.client, "configmaps").await + resource_writes(&o.client, "secrets").await;
    // Settled: CPU low and no published object written for 3 s (the start-up publish of every
    // node's object waits on the apiserver, not on the operator's CPU).
    loop {
        settle_cpu(pid).await;
        let w = writes().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        if writes().await == w {
            break;
        }
    }
    let (c0, w0) = (cpu_seconds(pid), writes().await);
    for j in 0..events {
        let (name, p) = patch(j);
        api.patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&p),
        )
        .await
        .unwrap();
        tokio::time::sleep(gap).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c1, w1) = (cpu_seconds(pid), writes().await);
    (1e3 * (c1 - c0) / events as f64, (w1 - w0) / events as f64)
}

async fn node_events_bench(quick: bool) -> Value {
    let (n, events) = if quick { (500, 40) } else { (5000, 200) };
    let o = objects().await;
    let run = format!("e{}", std::process::id());
    // Route-reflector layout: 3 reflectors (label rr, a cluster id), the rest their clients.
    support::kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: crd.projectcalico.org/v1\nkind: BGPConfiguration\nmetadata: {{name: default}}\nspec: {{nodeToNodeMeshEnabled: false, asNumber: 64512}}\n---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {{name: bench-{run}}}\nspec: {{nodeSelector: has(rr), peerSelector: '!has(rr)'}}\n"
        ),
    );
    let names: Vec<String> = (0..n).map(|i| format!("{run}-n{i:05}")).collect();
    o.nodes(&names, &[]).await;
    let api: Api<Node> = Api::all(o.client.clone());
    for r in &names[..3] {
        let p = json!({"metadata": {"labels": {"rr": "true"},
            "annotations": {"projectcalico.org/RouteReflectorClusterID": "224.0.0.1"}}});
        api.patch(
            r,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&p),
        )
        .await
        .unwrap();
    }
    let op = Operator::start(
        &format!("bench-ev-{run}"),
        &[
            "--lease-name",
            &format!("bench-ev-{run}"),
            "--pool-selector",
            &format!("tortie-test={run}"),
        ],
    );
    op.wait_ready().await;
    let pid = op.pid();
    // 400 ms apart: more than the BGP controller's 300 ms between passes, so no two events
    // share a pass.
    let gap = Duration::from_millis(400);
    // Even: a new IPv4 address; odd: the label the reflectors' BGPPeer selects on.
    let (bgp_ms, bgp_writes) = per_node_event(&o, pid, events, gap, |j| {
        let name = names[10 + j].clone();
        let p = if j % 2 == 0 {
            json!({"metadata": {"annotations": {
                "projectcalico.org/IPv4Address": format!("10.250.{}.{}/8", j / 250, j % 250)}}})
        } else {
            json!({"metadata": {"labels": {"rr": "true"}}})
        };
        (name, p)
    })
    .await;
    eprintln!("node events: {bgp_ms:.2} ms CPU and {bgp_writes:.2} writes per BGP-relevant Node event");
    let quiet = events / 4;
    let (other_ms, other_writes) = per_node_event(&o, pid, quiet, gap, |j| {
        let p = json!({"metadata": {"labels": {"bench-unread": format!("v{j}")}}});
        (names[10 + j].clone(), p)
    })
    .await;
    eprintln!("node events: {other_ms:.2} ms CPU and {other_writes:.2} writes per unread-label Node event");
    let s = json!({
        "id": "node-events", "order": 55, "title": "Operator CPU per Node event (`tortie run`, all controllers)",
        "inputs": format!(
            "{n} Nodes (each with a projectcalico.org/IPv4Address), BGPConfiguration nodeToNodeMeshEnabled: false, \
             3 route reflectors (label rr, RouteReflectorClusterID 224.0.0.1) and a BGPPeer nodeSelector has(rr), \
             peerSelector !has(rr). One `tortie run` (controllers installation, ippool, gc, bgp; default flags; info \
             logs). After it settles (CPU < 5% over 3 s and no ConfigMap or Secret written for 3 s): {events} Node patches, {} ms apart (more than the BGP \
             controller's 300 ms between passes), alternately a new IPv4Address and the label rr on a client (each \
             changes a BGP input); then {quiet} patches of a label no selector reads. Operator CPU: utime + stime of \
             /proc/<pid>/stat from before the first patch until 2 s after the last, divided by the patches; writes: \
             ConfigMap and Secret writes the apiserver served over the same span, divided likewise.",
            gap.as_millis()
        ),
        "rows": [
            {"Node event": "address or selected label (changes a BGP input)",
             "CPU ms per event": format!("{bgp_ms:.2}"), "writes per event": format!("{bgp_writes:.2}")},
            {"Node event": "label no selector reads",
             "CPU ms per event": format!("{other_ms:.2}"), "writes per event": format!("{other_writes:.2}")},
        ],
        "targets": [
            target("node-event-cpu", &format!("operator CPU per Node event at {n} nodes < 20 ms"), bgp_ms < 20.0,
                   format!("{bgp_ms:.2} ms"), "21.1 ms (publish step alone)", "-"),
            target("node-event-unread-label", "a label no selector reads costs 0 writes", other_writes == 0.0,
                   format!("{other_writes:.2} writes per event"), "-", "-"),
        ],
    });
    drop(op);
    support::kubectl(&["delete", "bgppeer", &format!("bench-{run}"), "--ignore-not-found"]);
    support::kubectl(&["delete", "bgpconfiguration", "default", "--ignore-not-found"]);
    // Its operator is gone: nothing else removes the 5,000 objects it published.
    clear_published(&o.client).await;
    load("Node deletions", names.len(), |i| {
        let (api, name) = (api.clone(), names[i].clone());
        async move {
            let _ = api.delete(&name, &Default::default()).await;
        }
    })
    .await;
    s
}

// ---------------------------------------------------------------------------------------------
// BGP: change → reloaded BIRD

fn agent(node: &str, ns: &str, lab: &support::bgp_lab::Lab, log: &std::path::Path) -> Child {
    let c = support::cluster();
    Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["agent", "--node", node, "--namespace", ns, "--retry-secs", "1"])
        .arg("--config-dir")
        .arg(lab.config_dir(node))
        .arg("--bird-socket")
        .arg(lab.socket(node))
        .env("KUBECONFIG", &c.kubeconfig)
        .env("TORTIE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn tortie agent")
}

/// The agent processes, killed however the bench ends (a failed assertion included).
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// The log lines of `log` that contain `needle`: their time and their text without colour codes
/// (tracing's fmt lines start with an RFC 3339 time, wrapped in ANSI colour codes when the writer
/// thinks it is a terminal).
fn log_lines(log: &std::path::Path, needle: &str) -> Vec<(jiff::Timestamp, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let mut plain = String::new();
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    chars.by_ref().find(|c| *c == 'm');
                } else {
                    plain.push(c);
                }
            }
            let t = plain.split_whitespace().next()?.parse().ok()?;
            Some((t, plain))
        })
        .collect()
}

/// Timestamps of the log lines of `log` that contain `needle`.
fn log_times(log: &std::path::Path, needle: &str) -> Vec<jiff::Timestamp> {
    log_lines(log, needle).into_iter().map(|(t, _)| t).collect()
}

/// The number logged as `key=<n>` in a log line.
fn field_ms(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()?.parse().ok()
}

const RELOADED: &str = "installed and reloaded BIRD config";

/// BIRD reloads the node's agent has made so far (it logs each one).
fn reloads(log: &std::path::Path) -> usize {
    log_times(log, RELOADED).len()
}

fn has_protocol(d: &support::bgp_lab::Daemon, name: &str) -> bool {
    d.birdc(&["show", "protocols"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

async fn bgp_reload_bench(quick: bool) -> Value {
    let (nodes, rounds) = if quick { (3, 3) } else { (8, 10) };
    let client = support::client().await;
    let run = format!("r{}", std::process::id());
    let ns = format!("bench-{run}");
    support::create_namespace(&client, &ns, &[]).await;
    let net = format!("100.67.{}", std::process::id() % 250);
    let names: Vec<String> = (1..=nodes).map(|i| format!("{run}-n{i}")).collect();
    let mut lab = support::bgp_lab::Lab::new("r");
    for (i, n) in names.iter().enumerate() {
        let addr = format!("{net}.{}/24", i + 1);
        lab.add_host(n, &[&addr]);
        support::create_node(
            &client,
            n,
            &[],
            None,
            &[],
            &[("projectcalico.org/IPv4Address", &addr)],
        )
        .await;
    }
    let op = Operator::start(
        &format!("bench-bgp-{run}"),
        &[
            "--controllers",
            "bgp",
            "--lease-name",
            &format!("bench-bgp-{run}"),
        ],
    );
    // The operator publishes into its --namespace (`default` for support's operators).
    let publish_ns = "default";
    let _ = ns;
    op.wait_ready().await;
    let logs = tempfile::tempdir().unwrap();
    let agents = Agents(
        names
            .iter()
            .map(|n| agent(n, publish_ns, &lab, &logs.path().join(format!("{n}.log"))))
            .collect(),
    );
    for n in &names {
        let main = lab.config_dir(n).join("bird.cfg");
        support::wait_until(&format!("{n}'s bird.cfg"), Duration::from_secs(60), || {
            let ok = main.exists();
            async move { ok.then_some(()) }
        })
        .await;
        lab.start_bird(n);
    }
    tokio::task::block_in_place(|| lab.wait_all_established(Duration::from_secs(60)));

    let peers_api: Api<tortie::api::BgpPeer> = Api::all_with(
        client.clone(),
        &CrdMode::detect(&client)
            .await
            .unwrap()
            .resource(CalicoKind::BGPPeer),
    );
    let mut latencies: Vec<f64> = vec![];
    let mut last_node: Vec<f64> = vec![];
    let mut round_max: Vec<f64> = vec![];
    let mut first_publish: Vec<f64> = vec![];
    // Stage -> ms since the create call (or, "(ms taken)", the step's own duration), per round or
    // per node and round.
    let mut stages: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in 0..rounds {
        let peer_ip = format!("192.0.2.{}", 10 + r);
        let proto = format!("Global_{}", peer_ip.replace('.', "_"));
        let name = format!("{run}-peer-{r}");
        let peer: tortie::api::BgpPeer = serde_json::from_value(json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
            "metadata": {"name": name},
            "spec": {"peerIP": peer_ip, "asNumber": 64999}
        }))
        .unwrap();
        // An isolated change, as an admin makes one: the previous round's pass is over and the
        // controller's pass interval has run out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let log_of = |n: &String| logs.path().join(format!("{n}.log"));
        let done_before: Vec<usize> = names.iter().map(|n| reloads(&log_of(n))).collect();
        let published_before = log_times(&op.log, "published BGP inputs").len();
        let t0 = jiff::Timestamp::now();
        peers_api.create(&PostParams::default(), &peer).await.unwrap();
        // Each agent logs the moment BIRD answered `configure` with "Reconfigured" (BIRD runs the
        // new config from then on). Reading those times, rather than polling birdc, keeps the
        // measurement from taking CPU from the agents and BIRDs it measures (8 nodes share 2 cores).
        let ms_since = |t: jiff::Timestamp| t.duration_since(t0).as_secs_f64() * 1000.0;
        let seen: BTreeMap<String, f64> = support::wait_until(
            &format!("BGPPeer {name} installed on every node"),
            Duration::from_secs(30),
            || {
                let got: Option<BTreeMap<String, f64>> = names
                    .iter()
                    .zip(&done_before)
                    .map(|(n, before)| {
                        let t = *log_times(&log_of(n), RELOADED).get(*before)?;
                        Some((n.clone(), ms_since(t)))
                    })
                    .collect();
                async move { got }
            },
        )
        .await;
        // What the agents reloaded is what was asked for: every BIRD runs the new peer.
        tokio::task::block_in_place(|| {
            lab.wait_for("the new peer in every BIRD", Duration::from_secs(10), |lab| {
                names
                    .iter()
                    .all(|n| has_protocol(lab.daemon(n), &proto))
                    .then_some(())
            })
        });
        if let Some(t) = log_times(&op.log, "published BGP inputs").get(published_before) {
            first_publish.push(ms_since(*t));
            stages
                .entry("3 operator objects written")
                .or_default()
                .push(ms_since(*t));
        }
        // Where the time went: the operator's pass (started, computed, written) and each agent's
        // arrival of the change and its steps (the reload line's fields).
        let first_after = |needle: &str| {
            log_times(&op.log, needle)
                .into_iter()
                .find(|t| *t >= t0)
                .map(ms_since)
        };
        if let Some(v) = first_after("BGP pass started") {
            stages.entry("1 operator pass starts").or_default().push(v);
        }
        if let Some(v) = first_after("BGP pass computed") {
            stages.entry("2 operator pass computed").or_default().push(v);
        }
        for (n, before) in names.iter().zip(&done_before) {
            let Some((t, line)) = log_lines(&log_of(n), RELOADED).into_iter().nth(*before) else {
                continue;
            };
            let done = ms_since(t);
            if let Some(e) = field_ms(&line, "since_event_ms") {
                stages.entry("4 agent has the change").or_default().push(done - e);
            }
            for (k, label) in [
                ("render_ms", "5 agent assemble + render (ms taken)"),
                ("write_ms", "6 agent compare + write files (ms taken)"),
                ("check_ms", "7 bird -p (ms taken)"),
                ("swap_ms", "8 rename into place (ms taken)"),
                ("reload_ms", "9 configure on the socket (ms taken)"),
            ] {
                if let Some(v) = field_ms(&line, k) {
                    stages.entry(label).or_default().push(v);
                }
            }
        }
        latencies.extend(seen.values());
        last_node.push(seen.values().cloned().fold(0.0, f64::max));
        round_max.push(seen.values().cloned().fold(0.0, f64::max));
        peers_api.delete(&name, &Default::default()).await.unwrap();
        // Let the removal settle before the next round.
        tokio::task::block_in_place(|| {
            lab.wait_for("peer removed everywhere", Duration::from_secs(30), |lab| {
                names
                    .iter()
                    .all(|n| !has_protocol(lab.daemon(n), &proto))
                    .then_some(())
            })
        });
    }
    // An input change that leaves every node's output alone: a Node label nobody selects on.
    // The baseline is taken once the last round's removal has settled everywhere.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log_of = |n: &String| logs.path().join(format!("{n}.log"));
    let before: Vec<(usize, _)> = names
        .iter()
        .map(|n| (reloads(&log_of(n)), lab.config_identity(n)))
        .collect();
    support::kubectl_ok(&["label", "node", &names[0], "bench-unrelated=yes", "--overwrite"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<(usize, _)> = names
        .iter()
        .map(|n| (reloads(&log_of(n)), lab.config_identity(n)))
        .collect();
    let unchanged_reloads = before.iter().zip(&after).filter(|(a, b)| a != b).count();

    latencies.sort_by(f64::total_cmp);
    last_node.sort_by(f64::total_cmp);
    let debounce_ms = tortie::controllers::bgp::Config::default().debounce.as_millis() as f64;
    let breakdown: serde_json::Map<String, Value> = stages
        .iter_mut()
        .map(|(k, v)| {
            v.sort_by(f64::total_cmp);
            let label = if k.ends_with("(ms taken)") {
                k.to_string()
            } else {
                format!("{k} (ms after the create call)")
            };
            (
                label,
                json!({"p50": format!("{:.1}", percentile(v, 0.5)), "p95": format!("{:.1}", percentile(v, 0.95))}),
            )
        })
        .collect();
    println!("bgp-reload breakdown (p50 / p95 ms):");
    for (k, v) in &breakdown {
        println!(
            "  {k:<60} {:>8} {:>8}",
            v["p50"].as_str().unwrap(),
            v["p95"].as_str().unwrap()
        );
    }
    let p50 = percentile(&latencies, 0.5);
    let s = json!({
        "id": "bgp-reload", "order": 60, "title": "BGP change → reloaded BIRD (real daemons in network namespaces)",
        "inputs": format!(
            "{nodes} nodes in a full mesh, each a network namespace running BIRD 1.6 and a `tortie agent` process; \
             `tortie run --controllers bgp` (at most one publish pass per {debounce_ms} ms; a change after a quiet spell \
             publishes at once: the shard holding the BGPPeer; each agent assembles and renders its own files). {rounds} rounds, 1 s apart: create a global BGPPeer \
             (192.0.2.x, AS 64999), time from the create call until each node's agent has reloaded BIRD onto it (the agent's log time \
             of BIRD answering `configure` on its control socket; every BIRD is then checked to run the peer), then delete it. All {nodes} \
             BIRDs, agents, the operator and the apiserver share this machine's 2 cores. 'objects published': \
             from the create call until the operator logged its pass's objects written. Then label a Node with a label no selector uses and count, 3 s later, \
             the nodes whose agent reloaded BIRD or rewrote a file of its config directory."
        ),
        "rows": [{
            "nodes": nodes, "rounds": rounds,
            "per node p50 ms": format!("{p50:.0}"),
            "per node p95 ms": format!("{:.0}", percentile(&latencies, 0.95)),
            "all nodes p50 ms": format!("{:.0}", percentile(&last_node, 0.5)),
            "all nodes max ms": format!("{:.0}", last_node.last().copied().unwrap_or(0.0)),
            "objects published ms (p50)": format!("{:.0}", {
                first_publish.sort_by(f64::total_cmp);
                percentile(&first_publish, 0.5)
            }),
            "min pass interval ms": debounce_ms,
            "reloads on unchanged output": unchanged_reloads,
        }],
        "breakdown": breakdown,
        "targets": [
            target("reload-p50", "a BGP change reaches a reloaded BIRD in < 50 ms per node (p50 from the API call)", p50 < 50.0,
                   format!("{p50:.0} ms"), "170 ms (operator-rendered files)", "-"),
            target("reload-unchanged", "unchanged output causes 0 reloads and 0 config file writes", unchanged_reloads == 0,
                   format!("{unchanged_reloads} nodes reloaded or rewrote a file"), "0 reloads", "-"),
        ],
        "plot": {"file": "bgp-reload.png", "x": "round", "y": "ms until the last node's BIRD runs the change",
                 "series": [{"label": format!("{nodes} nodes"), "x": (1..=rounds).collect::<Vec<_>>(), "y": round_max}]},
    });
    drop(agents);
    drop(op);
    drop(lab);
    for n in &names {
        support::kubectl(&["delete", "node", n, "--ignore-not-found", "--wait=false"]);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// GC: a deleted Node's blocks and affinities; the grace clock across an operator restart

fn pool_blocks(blocks: &[Block], cidr: ipnet::Ipv4Net) -> Vec<&Block> {
    blocks
        .iter()
        .filter(|b| {
            b.spec
                .cidr
                .parse::<ipnet::IpNet>()
                .is_ok_and(|c| ipnet::IpNet::V4(cidr).contains(&c.addr()))
        })
        .collect()
}

async fn gc_node_deleted_bench(quick: bool) -> Value {
    let n = if quick { 5 } else { 20 };
    let o = objects().await;
    let run = format!("d{}", std::process::id());
    let pool = format!("bench-gcd-{run}");
    let cidr: ipnet::Ipv4Net = format!("10.{}.0.0/16", 64 + std::process::id() % 30)
        .parse()
        .unwrap();
    support::apply_pool(&pool, &run, &cidr.to_string(), 26, "  nodeSelector: all()\n");
    let hosts: Vec<String> = (0..n).map(|i| format!("{run}-n{i}")).collect();
    o.nodes(&hosts, &[]).await;
    let ns = format!("bench-{run}");
    // Per node: one block holding the address of a pod that is gone (a leak, inside the 15 min
    // grace while the node lives) and one empty block, each with its affinity.
    let (h1, h2, nsc) = (hosts.clone(), hosts.clone(), ns.clone());
    o.ipam(cidr, 0, n, 1, &ns, &move |b| h1[b % n].clone(), &move |b, _| {
        format!("{nsc}/gone-{b}")
    })
    .await;
    o.ipam(cidr, n, n, 0, &ns, &move |b| h2[b % n].clone(), &|_, _| {
        String::new()
    })
    .await;
    let op = Operator::start(
        &format!("bench-gcd-{run}"),
        &[
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={run}"),
            "--lease-name",
            &format!("bench-gcd-{run}"),
        ],
    );
    op.wait_ready().await;
    support::wait_until("operator leads", Duration::from_secs(60), || async {
        op.is_leader().await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_api: Api<Block> = Api::all_with(o.client.clone(), &o.mode.resource(CalicoKind::IPAMBlock));
    let a_api: Api<Affinity> = Api::all_with(o.client.clone(), &o.mode.resource(CalicoKind::BlockAffinity));
    let h_api: Api<Handle> = Api::all_with(o.client.clone(), &o.mode.resource(CalicoKind::IPAMHandle));
    let count = || async {
        let blocks = b_api.list(&Default::default()).await.unwrap().items;
        let blocks = pool_blocks(&blocks, cidr).len();
        let affs = a_api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|a| hosts.contains(&a.spec.node))
            .count();
        let handles = h_api
            .list_metadata(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|h| h.metadata.name.as_deref().is_some_and(|x| x.contains(&ns)))
            .count();
        (blocks, affs, handles)
    };
    let alive = count().await;
    assert_eq!(
        alive,
        (2 * n, 2 * n, n),
        "blocks, affinities and handles released while their nodes live (grace 15 min)"
    );
    let node_api: Api<Node> = Api::all(o.client.clone());
    let t0 = Instant::now();
    load("Node deletions", n, |i| {
        let (api, name) = (node_api.clone(), hosts[i].clone());
        async move {
            api.delete(&name, &Default::default()).await.unwrap();
        }
    })
    .await;
    let (mut blocks_s, mut affs_s, mut handles_s) = (None, None, None);
    loop {
        let (b, a, h) = count().await;
        let t = t0.elapsed().as_secs_f64();
        for (left, at) in [(b, &mut blocks_s), (a, &mut affs_s), (h, &mut handles_s)] {
            if left == 0 && at.is_none() {
                *at = Some(t);
            }
        }
        if blocks_s.is_some() && affs_s.is_some() && handles_s.is_some() {
            break;
        }
        assert!(
            t < 300.0,
            "{b} blocks, {a} affinities, {h} handles of deleted nodes left after {t:.0} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(op);
    let (b, a, h) = (blocks_s.unwrap(), affs_s.unwrap(), handles_s.unwrap());
    let worst = b.max(a);
    json!({
        "id": "gc-node-deleted", "order": 42,
        "title": "IPAM GC: a deleted Node's blocks and affinities",
        "inputs": format!(
            "{n} live Nodes, each with two /26 IPAMBlocks of one IPPool and their BlockAffinities: one block holding one \
             address of a pod that never existed (with its IPAMHandle), one empty. `tortie run --controllers gc` with its \
             defaults (grace period 15 min, GC interval minutes): nothing may go while the nodes live (checked). Then every \
             Node is deleted at once; time from the first deletion until none of their blocks, affinities and handles is left."
        ),
        "rows": [{
            "nodes deleted": n, "blocks": 2 * n, "leaked addresses": n,
            "blocks gone s": format!("{b:.1}"), "affinities gone s": format!("{a:.1}"),
            "handles gone s": format!("{h:.1}"),
        }],
        "targets": [
            target("gc-node-deleted", "a deleted Node's blocks (empty or leaked) and affinities go within 10 s, without waiting for a GC tick",
                   worst <= 10.0, format!("{worst:.1} s for {n} nodes ({} blocks)", 2 * n), "not measured", "-"),
        ],
    })
}

/// The time the GC first saw a leak, as it stamped it in the allocation's attributes.
fn leak_stamp(b: &Block, ordinal: usize) -> Option<jiff::Timestamp> {
    let ai = b.spec.allocations.get(ordinal).copied().flatten()?;
    b.spec.attributes[ai]
        .secondary
        .as_ref()?
        .get(tortie::ipam::block::LEAK_SEEN_KEY)?
        .parse()
        .ok()
}

async fn gc_restart_bench(quick: bool) -> Value {
    let grace_s: i64 = if quick { 12 } else { 20 };
    let grace = jiff::SignedDuration::from_secs(grace_s);
    let client = support::client().await;
    let run = format!("k{}", std::process::id());
    let x = 94 + std::process::id() % 5;
    let node = format!("{run}-n");
    support::create_node(&client, &node, &[], None, &[], &[]).await;
    let ns = format!("bench-{run}");
    support::apply_pool(
        &format!("bench-gck-{run}"),
        &run,
        &format!("10.{x}.0.0/24"),
        26,
        "",
    );
    let leak = support::write_block(
        &client,
        &format!("10.{x}.0.0/26"),
        Some(&node),
        &[support::Alloc::pod(7, &ns, "gone", &node)],
    )
    .await
    .metadata
    .name
    .unwrap();
    // Two empty blocks of the same live node (it keeps the leak's block): released once their
    // own grace period has run, their clock stamped on them as well.
    let mut empties = vec![];
    for c in [format!("10.{x}.0.64/26"), format!("10.{x}.0.128/26")] {
        let b = support::write_block(&client, &c, Some(&node), &[]).await;
        empties.push(b.metadata.name.unwrap());
    }
    let args = |lease: String| -> Vec<String> {
        [
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={run}"),
            "--lease-name",
            &lease,
            "--gc-grace-period",
            &format!("{grace_s}s"),
            "--gc-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let start = |id: String| {
        let a = args(id.clone());
        Operator::start(&id, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut first = start(format!("bench-gck-{run}-a"));
    let blocks: Api<Block> = Api::all_with(
        client.clone(),
        &support::mode(&client).await.resource(CalicoKind::IPAMBlock),
    );
    let stamp = support::wait_until("leak stamped", Duration::from_secs(60), || async {
        leak_stamp(&blocks.get(&leak).await.ok()?, 7)
    })
    .await;
    let mut empty_stamps = vec![];
    for name in &empties {
        let t = support::wait_until("empty block stamped", Duration::from_secs(60), || async {
            let b = blocks.get(name).await.ok()?;
            let v = b
                .metadata
                .annotations
                .as_ref()?
                .get(tortie::controllers::gc_plan::EMPTY_SINCE_ANNOTATION)?
                .clone();
            tortie::controllers::gc_plan::empty_since(&v, &b.spec)
        })
        .await;
        empty_stamps.push(t);
    }
    // Well inside the grace period: the first operator dies (SIGKILL), another takes over
    // (another process and Lease: a restart or a leader change).
    tokio::time::sleep(Duration::from_secs((grace_s / 2) as u64)).await;
    first.kill();
    let restarted = jiff::Timestamp::now();
    let second = start(format!("bench-gck-{run}-b"));
    let released = support::wait_until("leak released", Duration::from_secs(120), || async {
        let b = blocks.get(&leak).await.ok()?;
        b.spec
            .allocations
            .iter()
            .all(|a| a.is_none())
            .then(jiff::Timestamp::now)
    })
    .await;
    let mut empty_gone = vec![];
    for name in &empties {
        let t = support::wait_until("empty block released", Duration::from_secs(120), || async {
            blocks
                .get_opt(name)
                .await
                .ok()?
                .is_none()
                .then(jiff::Timestamp::now)
        })
        .await;
        empty_gone.push(t);
    }
    drop(second);
    let _ = Api::<Node>::all(client.clone())
        .delete(&node, &Default::default())
        .await;
    let secs = |d: jiff::SignedDuration| d.as_secs_f64();
    // Released once the grace has run from the first sighting (not before), and well before a
    // clock restarted by the new operator would have let it (restart + grace).
    let restart_due = restarted + grace;
    let margin = jiff::SignedDuration::from_secs(grace_s / 5);
    let leak_ok = released >= stamp + grace && released < restart_due - margin;
    let empties_ok = empty_stamps
        .iter()
        .zip(&empty_gone)
        .all(|(t, g)| *g >= *t + grace && *g < restart_due - margin);
    let after_stamp = secs(released.duration_since(stamp));
    let after_restart = secs(released.duration_since(restarted));
    let empties_after: Vec<String> = empty_stamps
        .iter()
        .zip(&empty_gone)
        .map(|(t, g)| format!("{:.1}", secs(g.duration_since(*t))))
        .collect();
    json!({
        "id": "gc-restart", "order": 44,
        "title": "IPAM GC: the grace clock across an operator restart",
        "inputs": format!(
            "One live Node with three /26 IPAMBlocks: one holding the address of a pod that never existed, two empty. \
             `tortie run --controllers gc --gc-grace-period {grace_s}s --gc-interval 1s` stamps the leak's and the empty \
             blocks' first sighting in the blocks; {} s later it is killed (SIGKILL) and another operator (own process and \
             Lease) starts. The clock must run from the first sighting: released no earlier than sighting + grace and before \
             restart + grace - {} s.", grace_s / 2, grace_s / 5
        ),
        "rows": [{
            "grace s": grace_s,
            "sighting to restart s": format!("{:.1}", secs(restarted.duration_since(stamp))),
            "leak released after sighting s": format!("{after_stamp:.1}"),
            "leak released after restart s": format!("{after_restart:.1}"),
            "empty blocks released after their sighting s": empties_after.join(", "),
        }],
        "targets": [
            target("gc-restart", "the grace clock survives an operator restart (release at first sighting + grace, not restart + grace)",
                   leak_ok && empties_ok,
                   format!("leak released {after_stamp:.1} s after its first sighting, {after_restart:.1} s after the restart (grace {grace_s} s); empty blocks {} s after theirs", empties_after.join(", ")),
                   "not measured", "-"),
        ],
    })
}

// ---------------------------------------------------------------------------------------------
// Published BGP inputs: bytes, a 5,000-client reflector under BIRD, writes at start-up and for
// changes that leave the output alone

fn json_len(p: &published::Published) -> usize {
    match p {
        published::Published::ConfigMap(c) => serde_json::to_vec(c).unwrap().len(),
        published::Published::Secret(x) => serde_json::to_vec(x).unwrap().len(),
    }
}

fn published_bytes_bench() -> Value {
    let (sel, opts) = (CalicoSelectors::default(), RenderOptions::default());
    let mut rows = vec![];
    let mut total = BTreeMap::new();
    for (layout, n) in [("mesh", 1000usize), ("rr", 5000)] {
        let snap = bgp_inputs::cluster(n, layout == "mesh");
        let t = Instant::now();
        let inputs = published::publish(&snap, &opts, &sel, None);
        let (shards, own) = published::objects("tortie-system", &inputs);
        let took = t.elapsed().as_secs_f64();
        let shard_bytes: Vec<usize> = shards
            .iter()
            .map(|o| serde_json::to_vec(o).unwrap().len())
            .collect();
        let own_bytes: Vec<usize> = own.iter().map(json_len).collect();
        let sum = shard_bytes.iter().sum::<usize>() + own_bytes.iter().sum::<usize>();
        let largest = shard_bytes.iter().chain(&own_bytes).max().copied().unwrap_or(0);
        eprintln!(
            "published bytes: {layout} {n} nodes: {:.2} MB in {} shards + {} own objects (largest {:.0} KiB)",
            sum as f64 / 1e6,
            shards.len(),
            own.len(),
            largest as f64 / 1024.0
        );
        total.insert(layout, sum as f64 / 1e6);
        rows.push(json!({
            "layout": layout, "nodes": n, "shards": shards.len(), "own objects": own.len(),
            "shards MB": format!("{:.2}", shard_bytes.iter().sum::<usize>() as f64 / 1e6),
            "own objects MB": format!("{:.2}", own_bytes.iter().sum::<usize>() as f64 / 1e6),
            "total MB": format!("{:.2}", sum as f64 / 1e6),
            "largest object KiB": format!("{:.0}", largest as f64 / 1024.0),
            "publish step s": format!("{took:.2}"),
        }));
    }
    json!({
        "id": "published-bytes", "order": 55,
        "title": "Published BGP inputs: bytes in the apiserver",
        "inputs": format!(
            "What the operator publishes for the inputs of `benches/bgp_render.rs` (`mesh`: 1,000 nodes in a full mesh; \
             `rr`: 5,000 nodes, 3 route reflectors): the shards every node reads and one object per node, as JSON the \
             apiserver stores (tortie::node::published, the operator's own code; no cluster needed). {}",
            "Nodes, blocks and peers as described there."
        ),
        "rows": rows,
        "targets": [
            target("published-mesh-1000", "published bytes for a 1,000-node full mesh ≤ 2 MB in total", total["mesh"] <= 2.0,
                   format!("{:.2} MB", total["mesh"]), "714 MB (every node's rendered files)", "-"),
            target("published-rr-5000", "published bytes for 5,000 nodes with route reflectors ≤ 10 MB in total", total["rr"] <= 10.0,
                   format!("{:.2} MB", total["rr"]), "57.3 MB (every node's rendered files)", "-"),
        ],
    })
}

/// A reflector with 5,000 clients: its config assembled from the published objects as its agent
/// assembles it, parsed by `bird -p`, then loaded by a real BIRD in a network namespace.
fn reflector_bench() -> Value {
    let clients = 5000;
    let (sel, opts) = (CalicoSelectors::default(), RenderOptions::default());
    let snap = bgp_inputs::cluster(clients + 3, false);
    let inputs = published::publish(&snap, &opts, &sel, None);
    let (shards, own) = published::objects("tortie-system", &inputs);
    let largest = shards
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap().len())
        .chain(own.iter().map(json_len))
        .max()
        .unwrap_or(0);
    let n0 = own
        .iter()
        .find(|p| p.metadata().name.as_deref() == Some(published::object_name("n0").as_str()))
        .expect("the reflector's own object");
    let t = Instant::now();
    let r = published::render_published(n0, &shards, &sel)
        .expect("assemble the reflector's inputs")
        .expect("the reflector's files");
    let assembled_ms = t.elapsed().as_secs_f64() * 1e3;
    let cfg = String::from_utf8_lossy(&r.files["bird.cfg"]).to_string();
    let sessions = cfg.matches("protocol bgp ").count();
    let cfg_bytes: usize = r.files.values().map(Vec::len).sum();
    let mut lab = support::bgp_lab::Lab::new("p");
    lab.add_host("rr", &["10.0.0.1/16"]);
    let dir = lab.config_dir("rr");
    support::bgp_lab::write_files(&dir, &r.files);
    let t = Instant::now();
    let parse = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(dir.join("bird.cfg"))
        .output()
        .expect("bird runs (make deps installs it)");
    let parse_ms = t.elapsed().as_secs_f64() * 1e3;
    let parsed = parse.status.success();
    let parse_err = String::from_utf8_lossy(&parse.stderr).trim().to_string();
    let (mut loaded, mut load_s, mut up) = (0, 0.0, false);
    if parsed {
        let t = Instant::now();
        lab.start_bird("rr");
        // BIRD reads the whole config before it reports itself up; `show status` is cheap where
        // `show protocols` lists 5,000 lines (polling that would take CPU from the BIRD measured).
        up = lab.wait_for("BIRD up and running", Duration::from_secs(300), |lab| {
            lab.daemon("rr")
                .birdc(&["show", "status"])
                .contains("Daemon is up and running")
                .then_some(true)
        });
        load_s = t.elapsed().as_secs_f64();
        loaded = lab.daemon("rr").bgp_sessions().len();
    }
    let t = Instant::now();
    // A BIRD busy with 5,000 starting sessions answers `birdc down` only after a minute or more:
    // stop it by pid (the processes of its network namespace, all started here).
    if let Ok(o) = Command::new("ip").args(["netns", "pids", &lab.ns("rr")]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    drop(lab);
    eprintln!(
        "reflector: BIRD stopped and lab removed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "reflector: {sessions} BGP sessions, files {cfg_bytes} bytes, assembled in {assembled_ms:.0} ms; bird -p {}; \
         BIRD up: {up} with {loaded} BGP protocols after {load_s:.1} s",
        if parsed { "ok" } else { &parse_err }
    );
    let fits = largest <= published::MAX_PUBLISHED_BYTES;
    let met = fits && parsed && up && loaded == sessions && sessions > clients;
    json!({
        "id": "reflector", "order": 56,
        "title": "A route reflector with 5,000 clients under BIRD",
        "inputs": format!(
            "The inputs of `benches/bgp_render.rs` with {} nodes, mesh off: reflectors n0..n2, {clients} clients. The \
             operator's published objects for them (largest must stay under the {} KiB object limit); reflector n0's \
             bird.cfg assembled and rendered from its own object and the shards as its agent does it; `bird -p` parses \
             it; a real BIRD 1.6 started on it in a network namespace (address 10.0.0.1/16) must run every BGP \
             session of it ('loaded': BGP protocols in `birdc show protocols`, BIRD reporting 'up and running').",
            clients + 3, published::MAX_PUBLISHED_BYTES / 1024
        ),
        "rows": [{
            "clients": clients, "BGP sessions in bird.cfg": sessions,
            "config KiB": format!("{:.0}", cfg_bytes as f64 / 1024.0),
            "largest published object KiB": format!("{:.0}", largest as f64 / 1024.0),
            "assemble + render ms": format!("{assembled_ms:.0}"),
            "bird -p": if parsed { format!("ok ({parse_ms:.0} ms)") } else { format!("refused: {parse_err}") },
            "BIRD loaded s": format!("{load_s:.1}"), "BGP protocols running": loaded,
        }],
        "targets": [
            target("reflector-5000", "a reflector with 5,000 clients gets its config, `bird -p` parses it and BIRD loads it", met,
                   format!("{sessions} sessions; bird -p {}; BIRD up with {loaded} BGP protocols in {load_s:.1} s; largest object {:.0} KiB",
                           if parsed { "ok" } else { "refused" }, largest as f64 / 1024.0),
                   "config object over the 1 MiB limit from ~1,400 sessions", "-"),
        ],
    })
}

/// Counts the writes (ADDED, MODIFIED, DELETED events) of the objects labelled `labels` in
/// `ns` from `rv` on, until `stop`.
fn count_writes<K>(
    api: Api<K>,
    labels: &str,
    rv: String,
    n: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use kube::api::{WatchEvent, WatchParams};
    let wp = WatchParams::default().labels(labels).timeout(290);
    let mut stop = stop;
    tokio::spawn(async move {
        let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_))) => {
                        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Some(Ok(WatchEvent::Error(e))) => panic!("watch of published objects: {e:?}"),
                    Some(_) => {}
                    None => panic!("watch of published objects ended"),
                },
                _ = stop.changed() => return,
            }
        }
    })
}

/// The label of what operators publish for the agents (BGP inputs).
const PUBLISHED: &str = "app.kubernetes.io/managed-by=tortie";

/// Deletes every object operators of earlier sections published into `default` (support's
/// operators publish there), and waits until they are gone. One DeleteCollection per kind: the
/// apiserver removes thousands of them in seconds, where kubectl would send one DELETE each.
async fn clear_published(client: &Client) {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let lp = ListParams::default().labels(PUBLISHED);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    cms.delete_collection(&Default::default(), &lp)
        .await
        .expect("delete published ConfigMaps");
    secrets
        .delete_collection(&Default::default(), &lp)
        .await
        .expect("delete published Secrets");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = cms.list_metadata(&lp).await.unwrap().items.len()
            + secrets.list_metadata(&lp).await.unwrap().items.len();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} published objects still there after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publish_writes_bench(quick: bool) -> Value {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = if quick { 100 } else { 1000 };
    let o = objects().await;
    let run = format!("w{}", std::process::id());
    let ns = "default"; // support's operators publish into `default`
    let label = PUBLISHED;
    // Objects of earlier operators go first: the count is of this operator's writes.
    clear_published(&o.client).await;
    let names: Vec<String> = (0..n).map(|i| format!("{run}-n{i:04}")).collect();
    o.nodes(&names, &[]).await;
    let cms: Api<ConfigMap> = Api::namespaced(o.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(o.client.clone(), ns);
    let lp = ListParams::default().labels(label);
    let rv = cms
        .list_metadata(&lp)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let rv2 = secrets
        .list_metadata(&lp)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let w1 = count_writes(cms.clone(), label, rv, writes.clone(), stop.clone());
    let w2 = count_writes(secrets.clone(), label, rv2, writes.clone(), stop);
    let t0 = Instant::now();
    let op = Operator::start(
        &format!("bench-pub-{run}"),
        &[
            "--controllers",
            "bgp",
            "--lease-name",
            &format!("bench-pub-{run}"),
        ],
    );
    op.wait_ready().await;
    let objects_now = || async {
        let c = cms.list_metadata(&lp).await.unwrap().items;
        let s = secrets.list_metadata(&lp).await.unwrap().items;
        c.into_iter()
            .filter_map(|m| m.metadata.name)
            .chain(s.into_iter().filter_map(|m| m.metadata.name))
            .collect::<std::collections::BTreeSet<String>>()
    };
    support::wait_until(
        "every node's published object",
        Duration::from_secs(300),
        || async {
            let have = objects_now().await;
            names
                .iter()
                .all(|x| have.contains(&published::object_name(x)))
                .then_some(())
        },
    )
    .await;
    let published_s = t0.elapsed().as_secs_f64();
    // Settled: no write for 3 s.
    let settled = || async {
        let mut last = writes.load(Ordering::SeqCst);
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = writes.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let startup = settled().await;
    let objs = objects_now().await;
    let shards = objs
        .iter()
        .filter(|k| published::shard_index(k).is_some())
        .count();
    // Changes no BIRD file reads: a Node label no selector uses, an annotation the renderer ignores.
    support::kubectl_ok(&["label", "node", &names[0], "bench-unrelated=yes"]);
    support::kubectl_ok(&["annotate", "node", &names[1], "example.com/note=hello"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let unchanged = settled().await - startup;
    let _ = stop_tx.send(true);
    // A watch that ended early would undercount: its task panicked, and so does this section.
    w1.await.unwrap();
    w2.await.unwrap();
    drop(op);
    let node_api: Api<Node> = Api::all(o.client.clone());
    load("Node deletions", names.len(), |i| {
        let (api, name) = (node_api.clone(), names[i].clone());
        async move {
            let _ = api.delete(&name, &Default::default()).await;
        }
    })
    .await;
    // The next operator in this cluster must not start by deleting {n} stale objects.
    support::kubectl(&[
        "delete",
        "configmaps,secrets",
        "-n",
        ns,
        "-l",
        label,
        "--wait=false",
    ]);
    eprintln!(
        "publish writes: start-up {startup} writes for {} objects ({shards} shards), unchanged-output changes {unchanged} writes",
        objs.len()
    );
    json!({
        "id": "publish-writes", "order": 57,
        "title": "Published BGP inputs: API writes at start-up and for changes that leave the output alone",
        "inputs": format!(
            "{n} Nodes (each with projectcalico.org/IPv4Address), no BGPConfiguration (full mesh by default); \
             `tortie run --controllers bgp` started with no published object in its namespace. Writes counted by a watch \
             on its ConfigMaps and Secrets (every create, update and delete is an event) from just before its start until \
             no write came for 3 s. Then one Node gets a label no selector uses and another an annotation the renderer \
             ignores; writes counted again until 3 s pass without one."
        ),
        "rows": [{
            "nodes": n, "objects published": objs.len(), "shards": shards,
            "start-up writes": startup, "all published after s": format!("{published_s:.1}"),
            "writes for unchanged output": unchanged,
        }],
        "targets": [
            target("publish-startup-once", "start-up publishes each object once", startup == objs.len(),
                   format!("{startup} writes for {} objects ({shards} shards, {} own)", objs.len(), objs.len() - shards),
                   "not measured", "-"),
            target("publish-unchanged", "0 API writes when an input change leaves every node's output alone", unchanged == 0,
                   format!("{unchanged} writes"), "not measured", "-"),
        ],
    })
}
