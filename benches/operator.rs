//! Operator benchmarks against a real control plane: the real `tortie run` and `tortie agent`
//! processes, real BIRD daemons in network namespaces. Figures are printed and merged into
//! `bench/results.json` (beside the sections of `benches/system.rs`). Run by `make bench`:
//!
//! ```sh
//! bash e2e/with-cluster.sh cargo bench --bench operator -- all [--quick]
//! bash e2e/with-cluster.sh cargo bench --bench operator -- gc | footprint | bgp-reload
//! ```
//!
//! - `gc`: 10,000 leaked pod addresses over 200 blocks (pods gone, nodes alive): time from the end
//!   of the grace period until the GC has reclaimed every one (block writes landed), until their
//!   IPAMHandles are gone, and the API writes it used (IPAMBlock writes per block apart).
//! - `footprint`: the operator's RSS and CPU at 10 Nodes; at 1,000 Nodes with 50,000 Pods; at
//!   5,000 Nodes, 100,000 IPAMHandles and 2,000 IPAMBlocks, all created in the apiserver.
//! - `bgp-reload`: a BGPPeer change until every node's BIRD runs it (operator renders, agents install
//!   and `birdc configure`), and an input change that leaves the output alone causes no reload.
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
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tortie::api::{
    Affinity, AllocationAttribute, Block, BlockAffinitySpec, CalicoKind, CrdMode, Handle, IPAMBlockSpec,
    IPAMHandleSpec,
};

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
        what = vec!["gc".into(), "bgp-reload".into(), "footprint".into()];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sections = earlier_sections(&out, &what);
    for w in &what {
        let s = match w.as_str() {
            "gc" => rt.block_on(gc_bench(quick)),
            "footprint" => rt.block_on(footprint_bench(quick)),
            "bgp-reload" => rt.block_on(bgp_reload_bench(quick)),
            other => panic!("unknown benchmark {other:?} (gc, footprint, bgp-reload, all)"),
        };
        println!("{}", serde_json::to_string_pretty(&s).unwrap());
        sections.push(s);
        write_results(&out, &mut sections);
    }
}

/// Writes (create, update, patch, delete) the apiserver has served on IPAMBlocks so far.
async fn block_writes(client: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(req).await.unwrap();
    support::apiserver_writes(&text, &["ipamblocks"])
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
        "targets": [{
            "what": "10,000 leaked addresses reclaimed within the grace period + 15 s",
            "met": met, "value": format!("{after_grace:.1} s after the grace period"),
            "anchor": "Calico: 15-22.5 min on a live node with default settings",
        }, {
            "what": "≤ 2 IPAMBlock writes per block (the leak stamp, the release)",
            "met": per_block <= 2.0, "value": format!("{per_block:.1}"),
            "anchor": "one write per released address before: 101 per block",
        }],
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
            {"what": "RSS ≤ 32 MiB at 10 nodes", "met": rss(&p1) <= 32.0,
             "value": format!("{:.1} MiB", rss(&p1)), "anchor": "Calico kube-controllers at ~10 nodes: 24-73 MiB"},
            {"what": "RSS ≤ 64 MiB at 1,000 nodes with 50k pods", "met": rss(&p2) <= 64.0,
             "value": format!("{:.1} MiB", rss(&p2)), "anchor": "tortie before: 105.8 MiB"},
            {"what": "RSS ≤ 128 MiB at 5,000 nodes with 100k handles", "met": rss(&p3) <= 128.0,
             "value": format!("{:.1} MiB", rss(&p3)), "anchor": "tortie before: 236.3 MiB"},
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

/// Timestamps of the log lines of `log` that contain `needle` (tracing's fmt lines start with
/// an RFC 3339 time, wrapped in ANSI colour codes when the writer thinks it is a terminal).
fn log_times(log: &std::path::Path, needle: &str) -> Vec<jiff::Timestamp> {
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
            plain.split_whitespace().next()?.parse().ok()
        })
        .collect()
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
        // Each agent logs the moment `birdc configure` answered "Reconfigured" (BIRD runs the
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
    let p50 = percentile(&latencies, 0.5);
    let s = json!({
        "id": "bgp-reload", "order": 60, "title": "BGP change → reloaded BIRD (real daemons in network namespaces)",
        "inputs": format!(
            "{nodes} nodes in a full mesh, each a network namespace running BIRD 1.6 and a `tortie agent` process; \
             `tortie run --controllers bgp` (at most one publish pass per {debounce_ms} ms; a change after a quiet spell \
             publishes at once: the shard holding the BGPPeer; each agent assembles and renders its own files). {rounds} rounds, 1 s apart: create a global BGPPeer \
             (192.0.2.x, AS 64999), time from the create call until each node's agent has reloaded BIRD onto it (the agent's log time \
             of `birdc configure` answering; every BIRD is then checked to run the peer), then delete it. All {nodes} \
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
        "targets": [
            {"what": "a BGP change reaches a reloaded BIRD in < 50 ms per node (p50 from the API call)",
             "met": p50 < 50.0, "value": format!("{p50:.0} ms"), "anchor": "tortie with operator-rendered files: 170 ms"},
            {"what": "unchanged output causes no reload", "met": unchanged_reloads == 0,
             "value": format!("{unchanged_reloads} reloads"), "anchor": "-"},
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
