//! System benchmarks: real processes against a real control plane, printed as figures and written to
//! `bench/results.json` for `bench/report.py`. Run by `make bench` (through `e2e/with-cluster.sh`,
//! which exports `TORTIE_E2E_KUBECONFIG`):
//!
//! ```sh
//! cargo bench --bench system -- all [--quick] [--out bench/results.json]
//! cargo bench --bench system -- render        # pure, needs no cluster
//! cargo bench --bench system -- burst one-node --warm-only   # skip the in-process (cold) rows
//! ```
//!
//! Each section records its inputs so that another implementation can be run on the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use tortie::bgp::{self, CalicoSelectors, RenderOptions, Snapshot};

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::*;

struct Opts {
    quick: bool,
    /// Also run `tortie-ipam` in-process (no agent) for the burst sections' second row.
    cold: bool,
    out: PathBuf,
    what: Vec<String>,
}

fn parse_args() -> Opts {
    let mut quick = false;
    let mut cold = true;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results.json");
    let mut what = vec![];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--warm-only" => cold = false,
            "--out" => out = PathBuf::from(args.next().expect("--out needs a path")),
            "--bench" => {} // passed by `cargo bench`
            s if s.starts_with('-') => {}
            s => what.push(s.to_string()),
        }
    }
    if what.is_empty() || what.iter().any(|w| w == "all") {
        what = vec!["render".into(), "burst".into(), "one-node".into()];
    }
    Opts {
        quick,
        cold,
        out,
        what,
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: then only check that
    // the pure rendering path works on a small input, and touch no cluster.
    if !std::env::args().any(|a| a == "--bench") {
        let s = render_sizes(&[10]);
        assert_eq!(s["rows"].as_array().map(Vec::len), Some(2));
        println!("system benchmarks: test mode (run them with `make bench`)");
        return;
    }
    let opts = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = run_sections(&opts.out, &opts.what, |w| match w {
        "render" => render_bench(opts.quick),
        "burst" => rt.block_on(burst_section(opts.quick, false, opts.cold)),
        "one-node" => rt.block_on(burst_section(opts.quick, true, opts.cold)),
        other => panic!("unknown benchmark {other:?} (render, burst, one-node, all)"),
    });
    if !ok {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn node(i: usize, rr: bool) -> Node {
    let mut n: Node = serde_json::from_value(json!({
        "metadata": {
            "name": format!("node-{i:05}"),
            "labels": {"kubernetes.io/hostname": format!("node-{i:05}")},
            "annotations": {
                "projectcalico.org/IPv4Address": format!("10.{}.{}.{}/16", 100 + i / 65536, (i / 256) % 256, i % 256),
            }
        }
    }))
    .unwrap();
    if rr {
        n.labels_mut().insert("route-reflector".into(), "true".into());
        n.annotations_mut().insert(
            "projectcalico.org/RouteReflectorClusterID".into(),
            "224.0.0.1".into(),
        );
    }
    n
}

fn snapshot(n: usize, layout: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let rr_count = if layout == "rr" { 3 } else { 0 };
    snap.nodes = (0..n).map(|i| node(i, i < rr_count)).collect();
    let manifests = format!(
        r#"apiVersion: crd.projectcalico.org/v1
kind: BGPConfiguration
metadata: {{name: default}}
spec: {{asNumber: 64512, nodeToNodeMeshEnabled: {mesh}, serviceClusterIPs: [{{cidr: 10.96.0.0/12}}]}}
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {{name: default-ipv4-ippool}}
spec: {{cidr: 10.48.0.0/16, blockSize: 26, natOutgoing: true}}
{rr}"#,
        mesh = layout == "mesh",
        rr = if layout == "rr" {
            "---\napiVersion: crd.projectcalico.org/v1\nkind: BGPPeer\nmetadata: {name: rr}\nspec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}\n"
        } else {
            ""
        }
    );
    snap.add_manifests("bench", &manifests).unwrap();
    for i in 0..n.min(1000) {
        let cidr = format!("10.48.{}.{}/26", (i * 64) / 256 % 256, (i * 64) % 256);
        let aff: tortie::api::Affinity = serde_json::from_value(json!({
            "metadata": {"name": format!("node-{i:05}-b")},
            "spec": {"state": "confirmed", "node": format!("node-{i:05}"), "cidr": cidr, "deleted": "false"}
        }))
        .unwrap();
        snap.affinities.push(aff);
    }
    snap
}

fn render_bench(quick: bool) -> Value {
    render_sizes(if quick { &[100, 1000] } else { &[100, 1000, 5000] })
}

fn render_sizes(sizes: &[usize]) -> Value {
    let sel = CalicoSelectors::default();
    let opts = RenderOptions::default();
    let mut rows = vec![];
    let mut series: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for layout in ["mesh", "rr"] {
        for &n in sizes {
            let snap = snapshot(n, layout);
            // Every node's files (the controller's full resync), then one node joining: the new
            // node's files plus every existing node's (a mesh change touches them all).
            // A full mesh of 5,000 nodes is 25 million peer blocks (tens of GB of text), and every
            // node of the reflector layout takes a minute: past 1,000 nodes render an evenly
            // spread sample of 250 nodes and extrapolate, and say so.
            let sample: Vec<&Node> = if n > 1000 {
                snap.nodes.iter().step_by(n / 250).collect()
            } else {
                snap.nodes.iter().collect()
            };
            let t = Instant::now();
            let mut bytes = 0usize;
            for node in &sample {
                let r = bgp::render(&snap, &node.name_any(), &opts, &sel).unwrap();
                bytes += r.total_size();
            }
            let scale = n as f64 / sample.len() as f64;
            let all = t.elapsed().mul_f64(scale);
            let bytes = (bytes as f64 * scale) as usize;
            let sampled = sample.len() < n;
            // One node's render (a node joining re-renders itself; in a mesh every other node too):
            // the median of five.
            let mut ones: Vec<f64> = (0..5)
                .map(|k| {
                    let t = Instant::now();
                    bgp::render(&snap, &snap.nodes[(n / 2 + k) % n].name_any(), &opts, &sel).unwrap();
                    t.elapsed().as_secs_f64()
                })
                .collect();
            ones.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let one = std::time::Duration::from_secs_f64(ones[2]);
            let per_node_ms = all.as_secs_f64() * 1e3 / n as f64;
            eprintln!(
                "render {layout} {n} nodes: all {:.2} s ({per_node_ms:.3} ms/node, {:.1} MB), one node {:.3} ms",
                all.as_secs_f64(),
                bytes as f64 / 1e6,
                one.as_secs_f64() * 1e3
            );
            rows.push(json!({
                "layout": layout, "nodes": n,
                "all nodes (s)": format!("{:.3}", all.as_secs_f64()),
                "per node (ms)": format!("{per_node_ms:.3}"),
                "one node (ms)": format!("{:.3}", one.as_secs_f64() * 1e3),
                "output (MB)": format!("{:.1}", bytes as f64 / 1e6),
                "sampled": if sampled { format!("{} of {n} nodes, extrapolated", sample.len()) } else { "no".to_string() },
            }));
            let e = series.entry(layout).or_default();
            e.0.push(n as f64);
            e.1.push(per_node_ms);
        }
    }
    json!({
        "id": "render", "order": 4,
        "title": "BGP rendering: every node's BIRD files",
        "inputs": "N nodes with an IPv4 address each, BGPConfiguration default (AS 64512, serviceClusterIPs 10.96.0.0/12), one pool 10.48.0.0/16; `mesh`: full node-to-node mesh; `rr`: mesh off, 3 route reflectors (label route-reflector=true, cluster id 224.0.0.1) and a BGPPeer nodeSelector all() / peerSelector route-reflector == 'true'. Up to 1,000 nodes own one /26 block each. Pure rendering (src/bgp), single thread, release build.",
        "rows": rows,
        "plot": {
            "file": "render.png", "x": "nodes", "y": "ms per node", "logx": true, "logy": true,
            "series": series.into_iter().map(|(k, (x, y))| json!({"label": k, "x": x, "y": y})).collect::<Vec<_>>(),
        },
        "notes": ["In a full mesh each node's bird.cfg has one protocol per other node, so total output grows with N²; route reflectors keep it linear."],
    })
}

// ---------------------------------------------------------------------------------------------
// Pod-address burst through the real CNI plugin

/// One burst section: the production path (one `tortie agent --no-bgp` per node, `tortie-ipam`
/// handing each request to it) in the first row, whose figures the targets judge; with `cold`,
/// the same burst with every `tortie-ipam` working alone (in-process) in a second row.
async fn burst_section(quick: bool, one_node: bool, cold: bool) -> Value {
    let mut s = burst_bench(quick, one_node, true).await;
    if cold {
        let c = burst_bench(quick, one_node, false).await;
        let row = c["rows"][0].clone();
        s["rows"].as_array_mut().unwrap().push(row);
        let notes = s["notes"].as_array_mut().unwrap();
        notes.insert(0, json!("Row \"agent\": tortie-ipam sends each request to its node's agent (warm engine, pods and namespaces watched); row \"in-process\": every tortie-ipam starts its own client and engine (the fallback when no agent runs). Targets judge the agent row."));
        notes.extend(c["notes"].as_array().cloned().unwrap_or_default());
        // Without an agent, racing processes of one node must still share its blocks.
        let blocks_target = c["targets"]
            .as_array()
            .and_then(|t| {
                t.iter()
                    .find(|t| t["what"].as_str().is_some_and(|w| w.contains("blocks claimed")))
            })
            .cloned();
        if let Some(mut t) = blocks_target {
            t["id"] = json!(format!("{}-in-process", t["id"].as_str().unwrap_or_default()));
            t["what"] = json!(format!(
                "{} (in-process, no agent)",
                t["what"].as_str().unwrap_or_default()
            ));
            s["targets"].as_array_mut().unwrap().push(t);
        }
    }
    s
}

/// Agent processes of one burst, killed on drop.
struct Agents(Vec<std::process::Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `tortie agent --no-bgp` for each node as the chart's DaemonSet does (the node name from
/// the environment, started once its Node exists, before any pod is bound there) and waits until
/// every socket answers (the agent answers once its watches have listed).
fn start_agents(nodes: &[String], dir: &Path, agents: &mut Agents) {
    for n in nodes {
        let child = Command::new(env!("CARGO_BIN_EXE_tortie"))
            .args(["agent", "--no-bgp", "--ipam-socket"])
            .arg(dir.join(format!("{n}.sock")))
            .env("NODE_NAME", n)
            .env("KUBECONFIG", &support::cluster().kubeconfig)
            // TORTIE_BENCH_AGENT_LOG (e.g. `tortie::ipam=debug`) shows where an agent's time goes.
            .env(
                "TORTIE_LOG",
                std::env::var("TORTIE_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tortie agent");
        agents.0.push(child);
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    for n in nodes {
        let sock = dir.join(format!("{n}.sock"));
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "agent for {n} did not come up");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// What one round measured.
struct Round {
    row: Value,
    seconds: f64,
    ok: usize,
    p99: f64,
    rate: f64,
    steady_writes: f64,
    steady_reads: f64,
    writes: f64,
    reads: f64,
    claim_writes: f64,
    claim_reads: f64,
    blocks: usize,
    failures: Vec<String>,
}

async fn burst_bench(quick: bool, one_node: bool, agents: bool) -> Value {
    let (pods, nodes, per_node_conc) = match (one_node, quick) {
        (true, _) => (100usize, 1usize, 8usize),
        (false, true) => (200, 5, 4),
        (false, false) => (1000, 20, 4),
    };
    // One node: consecutive rounds on one cluster, each on a fresh node with fresh pods.
    let rounds = if one_node && agents { 5 } else { 1 };
    // The harness installs the CRDs with the cluster.
    let client = support::client().await;
    let run = format!(
        "b{}{}{}",
        std::process::id(),
        if one_node { "o" } else { "m" },
        if agents { "a" } else { "c" }
    );
    let ns = format!("bench-{run}");
    let pool_cidr = format!(
        "10.{}.0.0/16",
        150 + (std::process::id() % 12) * 4 + u32::from(one_node) * 2 + u32::from(agents)
    );
    let pools: Api<tortie::api::Pool> = Api::all_with(
        client.clone(),
        &tortie::api::CrdMode::V1.resource(tortie::api::CalicoKind::IPPool),
    );
    let pool_name = format!("bench-{run}");
    let pool: tortie::api::Pool = serde_json::from_value(json!({
        "apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": pool_name},
        "spec": {"cidr": pool_cidr, "blockSize": 26, "natOutgoing": true, "nodeSelector": "all()"}
    }))
    .unwrap();
    pools.create(&PostParams::default(), &pool).await.unwrap();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let node_api: Api<Node> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sockets = tempfile::tempdir().unwrap();
    // Agents of earlier rounds keep running, as a DaemonSet's pods on earlier nodes do.
    let mut running = Agents(vec![]);
    let mut all_nodes = vec![];
    let mut results: Vec<Round> = vec![];
    for round in 0..rounds {
        let node_names: Vec<String> = (0..nodes).map(|i| format!("bench-{run}-r{round}-n{i}")).collect();
        for (i, n) in node_names.iter().enumerate() {
            let k = round * nodes + i;
            let node: Node = serde_json::from_value(json!({
                "metadata": {"name": n, "annotations": {"projectcalico.org/IPv4Address": format!("10.254.{}.{}/16", k / 256, k % 256)}}
            }))
            .unwrap();
            node_api.create(&PostParams::default(), &node).await.unwrap();
        }
        all_nodes.extend(node_names.iter().cloned());
        if agents {
            start_agents(&node_names, sockets.path(), &mut running);
        }
        let mut work: Vec<Vec<(String, String)>> = vec![vec![]; nodes];
        for i in 0..pods {
            let node = &node_names[i % nodes];
            let name = format!("pod-r{round}-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": {"cni.projectcalico.org/ipv4pools": format!("[\"{pool_name}\"]")}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/none"}]}
            }))
            .unwrap();
            pod_api.create(&PostParams::default(), &pod).await.unwrap();
            work[i % nodes].push((
                name,
                format!(
                    "{:064x}",
                    (std::process::id() as u128) << 64
                        | u128::from(agents) << 40
                        | (round as u128) << 32
                        | i as u128
                ),
            ));
        }
        let agent_pids: Vec<u32> = running.0.iter().map(std::process::Child::id).collect();
        let r = burst_round(
            &client,
            &agent_pids,
            &work,
            &node_names,
            per_node_conc,
            &ns,
            agents.then(|| sockets.path().to_path_buf()),
            &pool_cidr,
        )
        .await;
        let mut r = r;
        if rounds > 1 {
            r.row["round"] = json!(round + 1);
        }
        results.push(r);
    }
    drop(running);
    // No kubelet confirms a pod's deletion here: pods go at once (grace 0), or the namespace
    // would wait for them for good.
    let _ = pod_api
        .delete_collection(&DeleteParams::default().grace_period(0), &ListParams::default())
        .await;
    let _ = ns_api.delete(&ns, &DeleteParams::default()).await;
    for n in &all_nodes {
        let _ = node_api.delete(n, &DeleteParams::default()).await;
    }
    // The namespace controller's clean-up (LISTs of the namespace's pods, a GET and the final
    // DELETE of the namespace) must not land in the next section's request counts.
    let t_gone = Instant::now();
    while ns_api.get_opt(&ns).await.ok().flatten().is_some() {
        assert!(
            t_gone.elapsed() < std::time::Duration::from_secs(180),
            "namespace {ns} still there 180 s after its deletion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = pools.delete(&pool_name, &DeleteParams::default()).await;

    let id = if one_node { "one-node" } else { "burst" };
    let every = |f: &dyn Fn(&Round) -> bool| results.iter().all(f);
    let list = |f: &dyn Fn(&Round) -> String| results.iter().map(f).collect::<Vec<_>>().join(", ");
    // The targets speak of the steady state (the block has room); the block claims of each
    // node's first address are shown beside them, not hidden.
    // `previous`: the figures of the previous run (before batching and the agent's warm path).
    let k = if one_node { "one-node" } else { "burst" };
    // 1.2 at 8 concurrent ADDs (the floor is a handle per pod plus one block write per batch:
    // 1 + 1/8); at 4 concurrent ADDs the floor is 1.25, so the same margin over it.
    let max_writes = 1.075 + 1.0 / per_node_conc as f64;
    let mut targets = vec![
        target(
            &format!("{k}-writes"),
            &format!(
                "at most {max_writes:.2} API writes per allocation in the steady state at {per_node_conc} concurrent ADDs per node (a handle per pod, block writes shared: floor 1 + 1/{per_node_conc})"
            ),
            every(&|r| r.steady_writes <= max_writes + 1e-9),
            list(&|r| {
                format!(
                    "{:.2} ({:.2} counting {} block-claim writes)",
                    r.steady_writes, r.writes, r.claim_writes
                )
            }),
            "2.00 (2.06 counting the block claims)",
            "Calico: about 10 calls, 2 of them writes",
        ),
        target(
            &format!("{k}-reads"),
            "no API reads per allocation in the steady state",
            every(&|r| r.steady_reads == 0.0),
            list(&|r| {
                format!(
                    "{:.2} ({:.2} counting {} block-claim reads)",
                    r.steady_reads, r.reads, r.claim_reads
                )
            }),
            "0.00 (0.04 counting the block claims)",
            "Calico: about 8 reads",
        ),
    ];
    if one_node {
        targets.push(target(
            "one-node-seconds",
            "100 pods on one node in under 1 s, every round",
            every(&|r| r.seconds < 1.0 && r.ok == 100),
            list(&|r| format!("{:.2} s", r.seconds)),
            "1.10-1.37 s per round",
            "Calico: 2-3 min for 100 pods on one node (calico#5612)",
        ));
        targets.push(target(
            "one-node-p99",
            "p99 ADD under 100 ms, every round",
            every(&|r| r.p99 < 0.1),
            list(&|r| format!("{:.0} ms", r.p99 * 1e3)),
            "159-229 ms",
            "Calico IPAM timeout 90 s",
        ));
    } else {
        targets.push(target(
            "burst-rate",
            &format!("at least 200 allocations/s cluster-wide ({pods} pods on {nodes} nodes)"),
            every(&|r| r.rate >= 200.0),
            list(&|r| format!("{:.1}/s", r.rate)),
            "70.8/s",
            "Calico 1,000 pods on 10 nodes: 322 s (3.1/s)",
        ));
        targets.push(target(
            "burst-p99",
            "p99 ADD under 500 ms",
            every(&|r| r.p99 < 0.5),
            list(&|r| format!("{:.0} ms", r.p99 * 1e3)),
            "1648 ms",
            "-",
        ));
    }
    // /26 blocks: 64 addresses each. burst_section adds this target of the in-process run too
    // (its processes share no engine: each node's first ADDs race for a block).
    let need = nodes * (pods / nodes).div_ceil(64);
    targets.push(target(
        &format!("{k}-blocks"),
        "no more blocks claimed than the addresses need",
        every(&|r| r.blocks == need),
        list(&|r| format!("{} blocks", r.blocks)),
        if !agents && one_node {
            "15 block-claim writes (a claim takes 3)"
        } else if !agents {
            "180 block-claim writes on 20 nodes (a claim takes 3)"
        } else {
            "-"
        },
        &format!("{pods} addresses on {nodes} node(s) need {need} /26 blocks"),
    ));
    let notes: Vec<String> = results
        .iter()
        .flat_map(|r| r.failures.iter().take(5).cloned())
        .collect();
    json!({
        "id": id, "order": if one_node { 2 } else { 1 },
        "title": if one_node { "100 pods on one node, 5 rounds (tortie-ipam ADD processes, node agents)" } else { "Pod-address burst (tortie-ipam ADD processes, node agents)" },
        "inputs": format!("{rounds} round(s) on one cluster, each on {nodes} fresh fake Node(s) with {pods} fresh Pending pods, each annotated cni.projectcalico.org/ipv4pools [pool] with one IPPool {pool_cidr} blockSize 26 (strictAffinity false); row agent: one `tortie agent --no-bgp` per node started as the chart's DaemonSet starts it (NODE_NAME from the environment, once the Node exists and before its pods), earlier rounds' agents left running; each agent claims its node's first block as soon as its socket answers (its default `--claim-blocks-ahead`), while the round's pods are created, so that claim is not in the round's counts (3 writes + 2 reads per node), and the next block in the background when few addresses are left (in the counts); per node {per_node_conc} concurrent `tortie-ipam` processes run as a container runtime runs them (env CNI_COMMAND=ADD, CNI_ARGS with K8S_POD_NAMESPACE/K8S_POD_NAME, the network config on stdin), each handing its request to the node's agent over its unix socket (row agent) or doing the work itself (row in-process); then the same DELs, as concurrent; a real kube-apiserver 1.34 + etcd 3.6 on this machine; API calls counted from the apiserver's apiserver_request_total for crd.projectcalico.org, pods, namespaces, nodes."),
        "rows": results.iter().map(|r| r.row.clone()).collect::<Vec<_>>(),
        "targets": targets,
        "notes": notes,
    })
}

/// One round: ADD every pod (the figures), then DEL every pod.
#[allow(clippy::too_many_arguments)]
async fn burst_round(
    client: &kube::Client,
    agent_pids: &[u32],
    work: &[Vec<(String, String)>],
    node_names: &[String],
    per_node_conc: usize,
    ns: &str,
    sockets: Option<PathBuf>,
    pool_cidr: &str,
) -> Round {
    let agents = sockets.is_some();
    let pods: usize = work.iter().map(Vec::len).sum();
    let nodes = node_names.len();
    let socket_of = move |node: &str| sockets.as_ref().map(|d| d.join(format!("{node}.sock")));
    let before = request_counts(client).await;
    let cpu0 = Cpu::now(agent_pids);
    let t0 = Instant::now();
    let (latencies, failures) = drive("ADD", work, node_names, per_node_conc, ns, &socket_of).await;
    let elapsed = t0.elapsed();
    let cpu = Cpu::now(agent_pids).minus(&cpu0);
    let after = request_counts(client).await;
    let calls = diff(&after, &before);
    let mut lat = latencies;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let ok = lat.len();
    let writes: f64 = ["post", "put", "patch", "delete"]
        .iter()
        .map(|v| calls.get(*v).copied().unwrap_or(0.0))
        .sum();
    // A watch (re)connect is the standing cost of not reading per allocation; shown apart.
    let reads: f64 = ["get", "list"]
        .iter()
        .map(|v| calls.get(*v).copied().unwrap_or(0.0))
        .sum();
    let per = |x: f64| if ok > 0 { x / ok as f64 } else { 0.0 };
    let claim_writes = calls.get(CLAIM_WRITES).copied().unwrap_or(0.0);
    let claim_reads = calls.get(CLAIM_READS).copied().unwrap_or(0.0);
    let (steady_writes, steady_reads) = (per(writes - claim_writes), per(reads - claim_reads));
    let rate = ok as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&lat, 0.99);
    eprintln!(
        "burst {pods} pods / {nodes} nodes: {ok} ok, {} failed in {:.2} s = {rate:.1}/s; p50 {:.0} ms p95 {:.0} ms p99 {:.0} ms; per allocation {:.2} writes ({steady_writes:.2} steady), {:.2} reads ({steady_reads:.2} steady); calls {calls:?}",
        failures.len(),
        elapsed.as_secs_f64(),
        percentile(&lat, 0.5) * 1e3,
        percentile(&lat, 0.95) * 1e3,
        p99 * 1e3,
        per(writes),
        per(reads),
    );
    eprintln!("ADD CPU: {}", cpu.describe(elapsed.as_secs_f64(), ok));
    let net: ipnet::IpNet = pool_cidr.parse().unwrap();
    let blocks_api: Api<tortie::api::Block> = Api::all_with(
        client.clone(),
        &tortie::api::CrdMode::V1.resource(tortie::api::CalicoKind::IPAMBlock),
    );
    let ours = || async {
        blocks_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|b| {
                b.spec
                    .cidr
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|c| net.contains(&c))
                    && node_names.iter().any(|n| b.spec.host() == Some(n.as_str()))
            })
            .collect::<Vec<_>>()
    };
    let blocks = ours().await.len();

    // Release everything (DEL, as concurrent as the ADDs).
    let before = request_counts(client).await;
    let t0 = Instant::now();
    let (del_lat, del_failures) = drive("DEL", work, node_names, per_node_conc, ns, &socket_of).await;
    let del_elapsed = t0.elapsed();
    let del_calls = diff(&request_counts(client).await, &before);
    for f in del_failures.iter().take(5) {
        eprintln!("DEL {f}");
    }
    let del_rate = del_lat.len() as f64 / del_elapsed.as_secs_f64();
    let del_per = |verbs: &[&str]| {
        let n: f64 = verbs
            .iter()
            .map(|v| del_calls.get(*v).copied().unwrap_or(0.0))
            .sum();
        n / del_lat.len().max(1) as f64
    };
    let (del_writes, del_reads) = (
        del_per(&["post", "put", "patch", "delete"]),
        del_per(&["get", "list"]),
    );
    eprintln!(
        "DEL {} ok, {} failed: {del_rate:.1}/s, per release {del_writes:.2} writes, {del_reads:.2} reads; calls {del_calls:?}",
        del_lat.len(),
        del_failures.len()
    );
    let leftover: usize = ours()
        .await
        .iter()
        .map(|b| b.spec.allocations.iter().filter(|a| a.is_some()).count())
        .sum();
    let row = json!({
        "path": if agents { "agent" } else { "in-process" },
        "pods": pods, "nodes": nodes, "ok": ok, "failed": failures.len(),
        "seconds": format!("{:.2}", elapsed.as_secs_f64()),
        "allocations/s": format!("{rate:.1}"),
        "p50 ms": format!("{:.0}", percentile(&lat, 0.5) * 1e3),
        "p95 ms": format!("{:.0}", percentile(&lat, 0.95) * 1e3),
        "p99 ms": format!("{:.0}", p99 * 1e3),
        "writes/alloc": format!("{:.2}", per(writes)),
        "reads/alloc": format!("{:.2}", per(reads)),
        "steady-state writes/alloc": format!("{steady_writes:.2}"),
        "steady-state reads/alloc": format!("{steady_reads:.2}"),
        "block-claim writes + reads": format!("{claim_writes} + {claim_reads}"),
        "blocks claimed": blocks,
        "watch (re)connects": calls.get("watch").copied().unwrap_or(0.0),
        "409 conflicts (retried)": calls.get(CONFLICTS).copied().unwrap_or(0.0),
        "calls": format!("{calls:?}"),
        "CPU during the ADDs": cpu.describe(elapsed.as_secs_f64(), ok),
        "DEL/s": format!("{del_rate:.1}"),
        "DEL writes/release": format!("{del_writes:.2}"),
        "DEL reads/release": format!("{del_reads:.2}"),
        "DEL 409 conflicts": del_calls.get(CONFLICTS).copied().unwrap_or(0.0),
        "left allocated after DEL": leftover,
    });
    let mut failures = failures;
    failures.extend(del_failures.into_iter().map(|f| format!("DEL {f}")));
    Round {
        row,
        seconds: elapsed.as_secs_f64(),
        ok,
        p99,
        rate,
        steady_writes,
        steady_reads,
        writes: per(writes),
        reads: per(reads),
        claim_writes,
        claim_reads,
        blocks,
        failures,
    }
}

/// Runs `cmd` for every pod, `per_node_conc` processes at a time per node, as a kubelet does;
/// returns the latencies of the successes and the failures.
async fn drive(
    cmd: &'static str,
    work: &[Vec<(String, String)>],
    nodes: &[String],
    per_node_conc: usize,
    ns: &str,
    socket_of: &(impl Fn(&str) -> Option<PathBuf> + Sync),
) -> (Vec<f64>, Vec<String>) {
    let plugin = PathBuf::from(env!("CARGO_BIN_EXE_tortie-ipam"));
    let kc = support::cluster().kubeconfig.clone();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // (start after t0, latency, pod) of every request, for the slowest ones' timeline.
    let timeline = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64, String)>::new()));
    let t0 = Instant::now();
    let mut tasks = vec![];
    for (node, items) in nodes.iter().zip(work.iter()) {
        let items = Arc::new(std::sync::Mutex::new(items.clone()));
        let socket = socket_of(node);
        for _ in 0..per_node_conc {
            let (items, node, plugin, kc, ns, socket) = (
                items.clone(),
                node.clone(),
                plugin.clone(),
                kc.clone(),
                ns.to_string(),
                socket.clone(),
            );
            let (latencies, failures, timeline) = (latencies.clone(), failures.clone(), timeline.clone());
            tasks.push(tokio::task::spawn_blocking(move || {
                loop {
                    let Some((pod, cid)) = items.lock().unwrap().pop() else {
                        break;
                    };
                    let t = Instant::now();
                    let out = cni(&plugin, &kc, socket.as_deref(), &node, &ns, &pod, &cid, cmd);
                    let dt = t.elapsed().as_secs_f64();
                    let start = t.duration_since(t0).as_secs_f64();
                    timeline.lock().unwrap().push((start, dt, pod.clone()));
                    match out {
                        Ok(_) => latencies.lock().unwrap().push(dt),
                        Err(e) => failures.lock().unwrap().push(format!("{pod}: {e}")),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let l = latencies.lock().unwrap().clone();
    let f = failures.lock().unwrap().clone();
    let mut tl = timeline.lock().unwrap().clone();
    tl.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = tl
        .iter()
        .take(3)
        .map(|(s, d, p)| format!("{p} started at {:.0} ms took {:.0} ms", s * 1e3, d * 1e3))
        .collect();
    eprintln!("{cmd} slowest: {}", slowest.join("; "));
    (l, f)
}

/// One `tortie-ipam` run; `socket`: the node agent's (`None`: in-process, `ipam.socket` "none").
#[allow(clippy::too_many_arguments)]
fn cni(
    plugin: &Path,
    kc: &Path,
    socket: Option<&Path>,
    node: &str,
    ns: &str,
    pod: &str,
    cid: &str,
    cmd: &str,
) -> Result<Value, String> {
    let socket = socket
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none".into());
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ptp",
        "nodename": node,
        "ipam": {"type": "tortie-ipam", "assign_ipv4": "true", "assign_ipv6": "false", "socket": socket},
        "kubernetes": {"kubeconfig": kc},
    });
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", format!("/var/run/netns/{cid}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", plugin.display()))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| format!("{e}: {stdout}"))
}

/// CPU seconds (user + system) used so far: the cluster's kube-apiserver and etcd (their pid files
/// beside the kubeconfig, as e2e/cluster.sh writes them), the agents, the `tortie-ipam` processes
/// (this process's waited-for children), this process, and the whole machine (all cores).
#[derive(Clone, Copy, Default)]
struct Cpu {
    apiserver: f64,
    etcd: f64,
    agents: f64,
    plugins: f64,
    bench: f64,
    machine: f64,
}

impl Cpu {
    fn now(agent_pids: &[u32]) -> Cpu {
        let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // (utime + stime, cutime + cstime) of a process, in seconds.
        let stat = |pid: &str| -> (f64, f64) {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return (0.0, 0.0);
            };
            let f: Vec<f64> = s
                .rsplit_once(')')
                .map(|(_, rest)| {
                    rest.split_whitespace()
                        .map(|x| x.parse().unwrap_or(0.0))
                        .collect()
                })
                .unwrap_or_default();
            // Fields 14-17 of proc(5), counted from the state (field 3) here.
            let at = |i: usize| f.get(i - 3).copied().unwrap_or(0.0);
            ((at(14) + at(15)) * tick, (at(16) + at(17)) * tick)
        };
        let pids = support::cluster()
            .kubeconfig
            .parent()
            .map(|d| d.join("pids"))
            .unwrap_or_default();
        let component = |name: &str| {
            std::fs::read_to_string(pids.join(format!("{name}.pid")))
                .map(|p| stat(p.trim()).0)
                .unwrap_or(0.0)
        };
        let (bench, plugins) = stat("self");
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let v: Vec<f64> = s
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .map(|x| x.parse().unwrap_or(0.0))
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
                Some((v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?) * tick)
            })
            .unwrap_or(0.0);
        Cpu {
            apiserver: component("kube-apiserver"),
            etcd: component("etcd"),
            agents: agent_pids.iter().map(|p| stat(&p.to_string()).0).sum(),
            plugins,
            bench,
            machine,
        }
    }

    fn minus(&self, o: &Cpu) -> Cpu {
        Cpu {
            apiserver: self.apiserver - o.apiserver,
            etcd: self.etcd - o.etcd,
            agents: self.agents - o.agents,
            plugins: self.plugins - o.plugins,
            bench: self.bench - o.bench,
            machine: self.machine - o.machine,
        }
    }

    /// Core-seconds per part and per allocation, and what the rest of the machine used meanwhile.
    fn describe(&self, wall: f64, n: usize) -> String {
        let ours = self.apiserver + self.etcd + self.agents + self.plugins + self.bench;
        let per = |x: f64| x * 1e3 / n.max(1) as f64;
        format!(
            "{wall:.2} s wall on {cores} cores; core-s (ms per allocation): kube-apiserver {:.2} ({:.1}), etcd {:.2} ({:.1}), agents {:.2} ({:.1}), tortie-ipam processes {:.2} ({:.1}), bench {:.2} ({:.1}); everything else on the machine {:.2} ({:.0}% of its capacity)",
            self.apiserver,
            per(self.apiserver),
            self.etcd,
            per(self.etcd),
            self.agents,
            per(self.agents),
            self.plugins,
            per(self.plugins),
            self.bench,
            per(self.bench),
            (self.machine - ours).max(0.0),
            100.0 * (self.machine - ours).max(0.0) / (wall * cores() as f64),
            cores = cores(),
        )
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
