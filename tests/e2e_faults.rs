//! IPAM fault suite (issue 9), against this binary's own control plane.
//!
//! Each test: 20 allocators, each an independent [`Ipam`] with its own kube client (as 20 node
//! agents would be; half of them claim each node's next block ahead, as the agent does by
//! default), each performing 500 ADDs 4 at a time, so that they share block writes (a
//! unique handle per container, Calico's pod attributes) on one pool; kube-apiserver is restarted
//! mid-storm; meanwhile `tortie run` GCs leaked addresses of another pool and is SIGKILLed in the middle of its pass, then started
//! again. Afterwards: no address was handed out twice, every ADD returned an address or a typed
//! error naming what failed, a failed ADD (released as the CNI plugin does) left nothing, the
//! blocks hold exactly the successful ADDs, the GC reclaimed every leak and nothing else, and
//! after DEL of everything no allocation is left and `tortie ipam check` is clean.
//!
//! - `strict_affinity_storm_...`: strictAffinity on (an IPAMConfig override, the cluster's
//!   singleton is untouched), /27 blocks: every node claims ~16 blocks and every address is in a
//!   block affine to its own node. The apiserver gets SIGTERM (a graceful restart).
//! - `borrowing_storm_...`: strictAffinity off, /26 blocks, and the pool's other blocks already
//!   claimed by four neighbour nodes, so that the storm nodes can own at most 95% of what they
//!   need: blocks run out and they must borrow (asserted), while all 10,000 addresses fit. The
//!   apiserver gets SIGKILL (a crash).
//!
//! The two tests run one after the other (they restart the shared apiserver and run the
//! cluster-wide `tortie ipam check`). `TORTIE_FAULTS_SCALE=AxN` (default `20x500`) changes the
//! number of allocators and ADDs per allocator for local runs; CI runs the default.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::*;
use tortie::api::{Affinity, Block, CalicoKind, CrdMode, Handle, IPAMConfigSpec, IPPoolSpec, Pool};
use tortie::ipam::{Attrs, AutoAssignRequest, Ipam, IpamError, block as blk, report};

const MODE: CrdMode = CrdMode::V1;
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn scale() -> (usize, usize) {
    let v = std::env::var("TORTIE_FAULTS_SCALE").unwrap_or_else(|_| "20x500".into());
    let (a, n) = v
        .split_once('x')
        .unwrap_or_else(|| panic!("TORTIE_FAULTS_SCALE={v:?}: expected AxN, e.g. 20x500"));
    let a: usize = a.parse().expect("TORTIE_FAULTS_SCALE: allocators");
    let n: usize = n.parse().expect("TORTIE_FAULTS_SCALE: ADDs per allocator");
    assert!(
        a > 0 && n > 0 && a * n <= 12_000,
        "TORTIE_FAULTS_SCALE={v}: at most 12,000 ADDs"
    );
    (a, n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Strict,
    Borrow,
}

/// One container's ADD attempt and what came of it.
#[derive(Clone, Debug)]
enum Outcome {
    Ok(IpAddr),
    /// A typed engine error (after which the handle was released, as the CNI plugin does).
    Err(String),
    /// The engine returned fewer addresses than asked (a shortfall, not an Err).
    Short(String),
}

#[derive(Clone, Debug)]
struct Attempt {
    allocator: usize,
    handle: String,
    outcome: Outcome,
}

/// An engine error is "clear" when it names the object (kind) or the condition that failed.
fn is_clear(e: &IpamError) -> bool {
    let s = e.to_string();
    let names_object = [
        "IPAMBlock",
        "IPAMHandle",
        "BlockAffinity",
        "IPPool",
        "IPAMConfig",
        "Node ",
        "Max retries hit",
    ]
    .iter()
    .any(|k| s.contains(k));
    names_object && s.len() > 20
}

/// The error text with object names and numbers blurred, to count kinds of errors.
fn error_kind(s: &str, prefix: &str) -> String {
    let mut out: String = s
        .split_whitespace()
        .map(|w| {
            if w.contains(prefix) || w.contains("k8s-pod-network") {
                "<name>".to_string()
            } else {
                w.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    out.truncate(200);
    out
}

struct Setup {
    client: kube::Client,
    prefix: String,
    k: u8,
    storm_nodes: Vec<String>,
    neighbour_nodes: Vec<String>,
    gc_node: String,
    storm_pool: String,
    gc_pool: String,
    storm_net: IpNet,
    gc_net: IpNet,
    block_size: u8,
    ns: String,
}

fn octet(prefix: &str) -> u8 {
    let h = prefix
        .bytes()
        .fold(17u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (30 + h % 200) as u8
}

async fn create_pool(client: &kube::Client, name: &str, label: &str, cidr: IpNet, bs: u8, selector: String) {
    let spec = IPPoolSpec {
        cidr: cidr.to_string(),
        block_size: Some(bs as i32),
        node_selector: Some(selector),
        ..Default::default()
    };
    let mut pool = Pool::new(name, &MODE.resource(CalicoKind::IPPool), spec);
    pool.metadata.labels = Some([("tortie-test".to_string(), label.to_string())].into());
    pool.metadata.annotations =
        Some([("tortie.io/allow-outside-pod-cidr".to_string(), "true".to_string())].into());
    let api: Api<Pool> = Api::all_with(client.clone(), &MODE.resource(CalicoKind::IPPool));
    api.create(&PostParams::default(), &pool)
        .await
        .unwrap_or_else(|e| panic!("create IPPool {name}: {e}"));
}

impl Setup {
    async fn new(variant: Variant, allocators: usize) -> Setup {
        let client = client().await;
        let prefix = unique_name(match variant {
            Variant::Strict => "flt-strict",
            Variant::Borrow => "flt-borrow",
        });
        let k = octet(&prefix);
        let label = [("tortie-faults", prefix.as_str())];
        let mut storm_nodes = vec![];
        for i in 0..allocators {
            let n = format!("{prefix}-n{i}");
            create_node(&client, &n, &label, None, &[], &[]).await;
            storm_nodes.push(n);
        }
        let mut neighbour_nodes = vec![];
        if variant == Variant::Borrow {
            for i in 0..4 {
                let n = format!("{prefix}-nb{i}");
                create_node(&client, &n, &label, None, &[], &[]).await;
                neighbour_nodes.push(n);
            }
        }
        let gc_node = format!("{prefix}-gc");
        create_node(
            &client,
            &gc_node,
            &[("tortie-faults-gc", prefix.as_str())],
            None,
            &[],
            &[],
        )
        .await;
        let block_size = match variant {
            Variant::Strict => 27,
            Variant::Borrow => 26,
        };
        let storm_net: IpNet = format!("10.{k}.0.0/18").parse().unwrap();
        let gc_net: IpNet = format!("10.{k}.64.0/22").parse().unwrap();
        let storm_pool = format!("{prefix}-storm");
        let gc_pool = format!("{prefix}-gc");
        let s = Setup {
            client,
            prefix: prefix.clone(),
            k,
            storm_nodes,
            neighbour_nodes,
            gc_node,
            storm_pool,
            gc_pool,
            storm_net,
            gc_net,
            block_size,
            ns: prefix.clone(),
        };
        // Leftovers of an earlier run in the same address space would falsify every count.
        s.purge().await;
        // The storm pool is not labelled for the operator: its GC never sees the storm.
        create_pool(
            &s.client,
            &s.storm_pool,
            &format!("{prefix}-storm"),
            storm_net,
            block_size,
            format!("tortie-faults == '{prefix}'"),
        )
        .await;
        create_pool(
            &s.client,
            &s.gc_pool,
            &prefix,
            gc_net,
            26,
            format!("tortie-faults-gc == '{prefix}'"),
        )
        .await;
        create_namespace(&s.client, &s.ns, &[]).await;
        s
    }

    fn in_scope(&self, cidr: &str) -> bool {
        let scope: IpNet = format!("10.{}.0.0/16", self.k).parse().unwrap();
        cidr.parse::<IpNet>().is_ok_and(|n| scope.contains(&n.network()))
    }

    async fn blocks(&self) -> Vec<Block> {
        list_calico::<Block>(&self.client, MODE, CalicoKind::IPAMBlock)
            .await
            .into_iter()
            .filter(|b| self.in_scope(&b.spec.cidr) && !b.spec.is_deleted())
            .collect()
    }

    async fn affinities(&self) -> Vec<Affinity> {
        list_calico::<Affinity>(&self.client, MODE, CalicoKind::BlockAffinity)
            .await
            .into_iter()
            .filter(|a| self.in_scope(&a.spec.cidr))
            .collect()
    }

    async fn handles(&self) -> Vec<Handle> {
        list_calico::<Handle>(&self.client, MODE, CalicoKind::IPAMHandle)
            .await
            .into_iter()
            .filter(|h| {
                h.spec.block.keys().any(|k| self.in_scope(k)) || h.spec.handle_id.contains(&self.prefix)
            })
            .collect()
    }

    /// `ipam check` over this test's address space (pods given: a pod-less allocation is a problem).
    async fn check(&self, pods: Option<BTreeSet<(String, String)>>) -> Vec<report::Problem> {
        let input = report::CheckInput {
            blocks: self.blocks().await,
            handles: self.handles().await,
            affinities: self.affinities().await,
            pods,
            scope: Some(vec![format!("10.{}.0.0/16", self.k).parse().unwrap()]),
            ..Default::default()
        };
        report::check(&input)
    }

    async fn purge(&self) {
        let (blocks, affinities, handles) =
            (self.blocks().await, self.affinities().await, self.handles().await);
        delete_ipam_objects(&self.client, MODE, &blocks, &affinities, &handles).await;
    }

    async fn cleanup(self) {
        self.purge().await;
        let pa: Api<Pool> = Api::all_with(self.client.clone(), &MODE.resource(CalicoKind::IPPool));
        for p in [&self.storm_pool, &self.gc_pool] {
            let _ = pa.delete(p, &DeleteParams::default()).await;
        }
        for n in self
            .storm_nodes
            .iter()
            .chain(&self.neighbour_nodes)
            .chain([&self.gc_node])
        {
            delete_node(&self.client, n).await;
        }
        delete_namespace(&self.client, &self.ns, Duration::from_secs(60)).await;
    }

    fn config(&self, variant: Variant) -> IPAMConfigSpec {
        IPAMConfigSpec {
            strict_affinity: variant == Variant::Strict,
            ..IPAMConfigSpec::calico_defaults()
        }
    }

    async fn ipam(&self, client: kube::Client, variant: Variant) -> Ipam {
        ipam_engine(client, MODE, self.config(variant)).await
    }

    /// An engine as the node agent runs it: it claims the node's next block ahead, in the
    /// background, while the apiserver dies under it too.
    async fn agent_ipam(&self, client: kube::Client, variant: Variant) -> Ipam {
        Ipam::new_with(
            client,
            MODE,
            tortie::ipam::IpamOptions {
                config_override: Some(self.config(variant)),
                claim_ahead: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("IPAM engine: {e}"))
    }
}

/// DEL as the runtime retries it: release_by_handle until it succeeds (the apiserver may be down).
async fn del_with_retry(ipam: &Ipam, handle: &str, errors: &AtomicUsize) -> Vec<IpAddr> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match ipam.release_by_handle(handle).await {
            Ok(v) => return v,
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                assert!(
                    Instant::now() < deadline,
                    "DEL of {handle} still failing after 180 s: {e}"
                );
                assert!(is_clear(&e), "DEL of {handle}: unclear error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct Storm {
    attempts: Vec<Attempt>,
    del_errors: usize,
    elapsed: Duration,
}

/// One node agent: `per` containers, each ADDed until it gets an address (a failed ADD is
/// released and retried under a new handle, as kubelet retries a sandbox). Exhaustion is final.
struct Agent {
    i: usize,
    per: usize,
    node: String,
    prefix: String,
    ns: String,
    ipam: Ipam,
    done: Arc<AtomicUsize>,
    del_errors: Arc<AtomicUsize>,
}

async fn allocator(agent: Agent) -> Vec<Attempt> {
    let Agent {
        i,
        per,
        node,
        prefix,
        ns,
        ipam,
        done,
        del_errors,
    } = agent;
    // A kubelet starts several sandboxes at once: the node's ADDs run CONCURRENT at a time
    // through its one engine, so they share block writes (batches) while the apiserver dies.
    let (node, prefix, ns, ipam, done, del_errors) = (&node, &prefix, &ns, &ipam, &done, &del_errors);
    let containers = futures::stream::iter(0..per)
        .map(|c| async move {
            let mut out = Vec::new();
            container(i, c, node, prefix, ns, ipam, done, del_errors, &mut out).await;
            out
        })
        .buffer_unordered(CONCURRENT)
        .collect::<Vec<_>>()
        .await;
    containers.into_iter().flatten().collect()
}

/// ADDs per node in flight at once.
const CONCURRENT: usize = 4;

/// One container, ADDed until it gets an address (see [`allocator`]).
#[allow(clippy::too_many_arguments)]
async fn container(
    i: usize,
    c: usize,
    node: &str,
    prefix: &str,
    ns: &str,
    ipam: &Ipam,
    done: &AtomicUsize,
    del_errors: &AtomicUsize,
    out: &mut Vec<Attempt>,
) {
    let pod = format!("pod-{i}-{c}");
    {
        for attempt in 0.. {
            assert!(
                attempt < 50,
                "allocator {i}: container {c} failed 50 ADDs in a row"
            );
            let handle = format!("k8s-pod-network.{prefix}-{i}-{c}-{attempt}");
            let mut req = AutoAssignRequest::new(&handle, node);
            req.attrs = Attrs::pod(node, ns, &pod);
            req.num_v4 = 1;
            match ipam.auto_assign(req).await {
                Ok(r) if r.is_complete() && r.v4.ips.len() == 1 => {
                    out.push(Attempt {
                        allocator: i,
                        handle,
                        outcome: Outcome::Ok(r.v4.ips[0].addr()),
                    });
                    break;
                }
                Ok(r) => {
                    let msg = r.v4.describe("IPv4");
                    del_with_retry(ipam, &handle, del_errors).await;
                    out.push(Attempt {
                        allocator: i,
                        handle,
                        outcome: Outcome::Short(msg),
                    });
                    break;
                }
                Err(e) => {
                    assert!(is_clear(&e), "allocator {i}: ADD {handle}: unclear error: {e}");
                    del_with_retry(ipam, &handle, del_errors).await;
                    out.push(Attempt {
                        allocator: i,
                        handle,
                        outcome: Outcome::Err(e.to_string()),
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the GC phase observed.
struct GcReport {
    leaks: usize,
    live: usize,
    freed_at_kill: usize,
    overcounted_handles_at_kill: usize,
    reclaim_after_restart: Duration,
}

/// Allocations in the GC pool: every 21st names a live pod, the others pods that never existed.
async fn plant_gc_allocations(s: &Setup, variant: Variant) -> (Vec<(String, IpAddr)>, Vec<(String, IpAddr)>) {
    let ipam = s.ipam(s.client.clone(), variant).await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let (mut live, mut leaks) = (vec![], vec![]);
    for i in 0..336usize {
        let is_live = i % 21 == 0;
        let pod = if is_live {
            format!("live-{i}")
        } else {
            format!("gone-{i}")
        };
        if is_live {
            create_pod(&s.client, &s.ns, &pod, Some(&s.gc_node), &[]).await;
        }
        let handle = format!("k8s-pod-network.{}-gc-{i}", s.prefix);
        let mut req = AutoAssignRequest::new(&handle, &s.gc_node);
        req.attrs = Attrs::pod(&s.gc_node, &s.ns, &pod);
        req.num_v4 = 1;
        req.v4_pools = vec![s.gc_pool.clone()];
        let r = ipam.auto_assign(req).await.unwrap();
        assert!(r.is_complete(), "{}", r.v4.describe("IPv4"));
        let ip = r.v4.ips[0].addr();
        if is_live {
            let ann = serde_json::json!({"metadata": {"annotations": {"cni.projectcalico.org/podIP": format!("{ip}/32")}}});
            pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&ann))
                .await
                .unwrap();
            live.push((handle, ip));
        } else {
            leaks.push((handle, ip));
        }
    }
    (live, leaks)
}

/// Starts the operator on the GC pool, SIGKILLs it right after its first block write (before
/// the handles of the freed addresses are decremented, or a few writes later), starts it again
/// and waits until every leak is reclaimed and nothing else.
async fn gc_phase(s: &Setup, live: &[(String, IpAddr)], leaks: &[(String, IpAddr)]) -> GcReport {
    let bapi: Api<Block> = Api::all_with(s.client.clone(), &MODE.resource(CalicoKind::IPAMBlock));
    let gc_blocks: Vec<String> = s
        .blocks()
        .await
        .into_iter()
        .filter(|b| b.spec.cidr.parse::<IpNet>().is_ok_and(|n| s.gc_net.contains(&n)))
        .map(|b| b.metadata.name.unwrap())
        .collect();
    let total = live.len() + leaks.len();
    let args = || -> Vec<String> {
        [
            "--controllers",
            "gc",
            "--pool-selector",
            &format!("tortie-test={}", s.prefix),
            "--lease-name",
            &s.prefix,
            "--lease-duration",
            "4s",
            "--gc-grace-period",
            "2s",
            "--gc-interval",
            "1s",
            "--crd-mode",
            "v1",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let count_allocated = || async {
        let mut n = 0;
        for name in &gc_blocks {
            n += bapi.get(name).await.map(|b| allocated(&b)).unwrap_or(total);
        }
        n
    };
    let a1 = args();
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let mut op = Operator::start(&format!("{}-op1", s.prefix), &a1);
    op.wait_ready().await;
    // Poll the blocks: the first guarded write of the pass shows as fewer allocations.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if count_allocated().await < total {
            op.kill();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator released nothing within 120 s; log {}:\n{}",
            op.log.display(),
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let freed_at_kill = total - count_allocated().await;
    let handles_left: HashSet<String> = s.handles().await.into_iter().map(|h| h.spec.handle_id).collect();
    let blocks_now = s.blocks().await;
    let held: HashSet<String> = Ipam::allocations(&blocks_now)
        .into_iter()
        .filter_map(|a| a.handle_id)
        .collect();
    let overcounted_handles_at_kill = leaks
        .iter()
        .filter(|(h, _)| handles_left.contains(h) && !held.contains(h))
        .count();
    eprintln!(
        "faults: operator SIGKILLed mid-GC: {freed_at_kill} of {} leaks freed in blocks, {overcounted_handles_at_kill} of their handles not yet decremented",
        leaks.len()
    );
    // A pass writes every block first, then the freed handles (side by side): a kill inside it
    // leaves leaks in some blocks, or handles not yet decremented for addresses already freed.
    assert!(
        freed_at_kill > 0 && (freed_at_kill < leaks.len() || overcounted_handles_at_kill > 0),
        "the kill did not land inside the GC pass ({freed_at_kill} of {} leaks freed, {overcounted_handles_at_kill} handles not yet decremented); log:\n{}",
        leaks.len(),
        op.log_text()
    );

    let t = Instant::now();
    let a2 = args();
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let op2 = Operator::start(&format!("{}-op2", s.prefix), &a2);
    op2.wait_ready().await;
    let live_handles: HashSet<&str> = live.iter().map(|(h, _)| h.as_str()).collect();
    let leak_handles: HashSet<&str> = leaks.iter().map(|(h, _)| h.as_str()).collect();
    let expect_live: BTreeSet<(String, IpAddr)> = live.iter().cloned().collect();
    // Generous: under the full storm on 2 busy cores the GC frees about one leak a second
    // (three requests per handle, each queued behind the allocators' writes).
    let limit = Duration::from_secs(1200);
    let deadline = Instant::now() + limit;
    loop {
        // The GC pool's blocks by name (cheap), the handle LIST only once they look right:
        // the storm is still writing and every LIST of 10,000 handles slows it down.
        let mut blocks = vec![];
        for name in &gc_blocks {
            if let Ok(b) = bapi.get(name).await {
                blocks.push(b);
            }
        }
        let gc_allocs: BTreeSet<(String, IpAddr)> = Ipam::allocations(&blocks)
            .into_iter()
            .map(|a| (a.handle_id.unwrap_or_default(), a.ip))
            .collect();
        let hs = if gc_allocs == expect_live || Instant::now() > deadline {
            s.handles().await
        } else {
            vec![]
        };
        let leak_handles_left: Vec<&Handle> = hs
            .iter()
            .filter(|h| leak_handles.contains(h.spec.handle_id.as_str()))
            .collect();
        if gc_allocs == expect_live && leak_handles_left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            // (Listed while the storm may still run: not a snapshot, so in-flight claims show too.)
            let problems = s.check(None).await;
            panic!(
                "leaks not all reclaimed {limit:?} after the operator restart: {} allocations in the GC pool (expected the {} live ones; first extra {:?}, first missing {:?}), {} leak handles left (first {:?}); check:\n{}\noperator log {}:\n{}",
                gc_allocs.len(),
                expect_live.len(),
                gc_allocs.difference(&expect_live).next(),
                expect_live.difference(&gc_allocs).next(),
                leak_handles_left.len(),
                leak_handles_left.first().map(|h| &h.spec),
                report::render_problems(&problems),
                op2.log.display(),
                op2.log_text()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let reclaim_after_restart = t.elapsed();
    // Nothing else released: the live pods' addresses, handles with their counts, all there.
    let hs = s.handles().await;
    for (h, ip) in live {
        let handle = hs
            .iter()
            .find(|x| x.spec.handle_id == *h)
            .unwrap_or_else(|| panic!("handle {h} of a live pod ({ip}) was removed"));
        assert_eq!(handle.spec.block.values().sum::<u64>(), 1, "handle {h}");
    }
    assert_eq!(live_handles.len(), live.len());
    drop(op2);
    drop(op);
    GcReport {
        leaks: leaks.len(),
        live: live.len(),
        freed_at_kill,
        overcounted_handles_at_kill,
        reclaim_after_restart,
    }
}

async fn run(variant: Variant) {
    let _serial = SERIAL.lock().await;
    let t_all = Instant::now();
    let (n_alloc, per) = scale();
    let total = n_alloc * per;
    let s = Setup::new(variant, n_alloc).await;
    eprintln!(
        "faults[{variant:?}]: {n_alloc} allocators x {per} ADDs on pool {} ({}, /{} blocks)",
        s.storm_pool, s.storm_net, s.block_size
    );

    // Borrow variant: the neighbours hold the pool's other blocks, leaving the storm nodes 95%
    // of what they need in blocks of their own.
    let block_addrs = 1usize << (32 - s.block_size);
    let n_blocks = 1usize << (s.block_size - s.storm_net.prefix_len());
    let mut own_capacity = n_blocks * block_addrs;
    if variant == Variant::Borrow {
        let free_blocks = (total * 95 / 100 / block_addrs).max(1);
        let taken = n_blocks - free_blocks;
        let subnets: Vec<IpNet> = s.storm_net.subnets(s.block_size).unwrap().collect();
        for (j, b) in subnets.iter().rev().take(taken).enumerate() {
            let nb = &s.neighbour_nodes[j % s.neighbour_nodes.len()];
            support::write_block(&s.client, &b.to_string(), Some(nb), &[]).await;
        }
        own_capacity = free_blocks * block_addrs;
        assert!(own_capacity < total && n_blocks * block_addrs >= total);
        eprintln!(
            "faults[{variant:?}]: {taken} of {n_blocks} blocks held by neighbours: storm nodes can own {own_capacity} addresses for {total} ADDs"
        );
    }

    let t = Instant::now();
    let (live, leaks) = plant_gc_allocations(&s, variant).await;
    eprintln!(
        "faults[{variant:?}]: planted {} leaks and {} live pods' addresses in {} in {:.1} s",
        leaks.len(),
        live.len(),
        s.gc_pool,
        t.elapsed().as_secs_f64()
    );

    // The storm.
    let done = Arc::new(AtomicUsize::new(0));
    let del_errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = vec![];
    let mut ipams = vec![];
    for (i, node) in s.storm_nodes.iter().enumerate() {
        // Half the nodes' engines claim ahead (the agent's default), half do not (tortie-ipam
        // in-process, or an agent with `--claim-blocks-ahead false`): both paths see the faults.
        let ipam = if i % 2 == 0 {
            s.agent_ipam(client().await, variant).await
        } else {
            s.ipam(client().await, variant).await
        };
        ipams.push(ipam.clone());
        tasks.push(tokio::spawn(allocator(Agent {
            i,
            per,
            node: node.clone(),
            prefix: s.prefix.clone(),
            ns: s.ns.clone(),
            ipam,
            done: done.clone(),
            del_errors: del_errors.clone(),
        })));
    }
    let t_storm = Instant::now();
    // Mid-storm: the apiserver restart, then the operator's GC with its kill, while ADDs go on.
    let wait_for = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::Relaxed) < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(total / 3).await;
    let at = done.load(Ordering::Relaxed);
    let kill = variant == Variant::Borrow;
    let down = tokio::task::spawn_blocking(move || restart_apiserver(kill))
        .await
        .unwrap();
    let after = done.load(Ordering::Relaxed);
    eprintln!(
        "faults[{variant:?}]: kube-apiserver {} at {at}/{total} ADDs, ready again after {:.1} s ({} ADDs completed meanwhile)",
        if kill { "SIGKILLed" } else { "SIGTERMed" },
        down.as_secs_f64(),
        after - at
    );
    let gc = gc_phase(&s, &live, &leaks).await;
    eprintln!(
        "faults[{variant:?}]: GC: {} leaks reclaimed ({} freed before the kill, {} handles left over-counted by it), {} live kept; {:.1} s after the restart; storm at {}/{total}",
        gc.leaks,
        gc.freed_at_kill,
        gc.overcounted_handles_at_kill,
        gc.live,
        gc.reclaim_after_restart.as_secs_f64(),
        done.load(Ordering::Relaxed)
    );
    let mut attempts = vec![];
    for t in tasks {
        attempts.extend(t.await.expect("allocator panicked"));
    }
    let storm = Storm {
        attempts,
        del_errors: del_errors.load(Ordering::Relaxed),
        elapsed: t_storm.elapsed(),
    };

    // ---- every ADD: a unique address or a clear error; the blocks hold exactly the successes.
    let mut by_ip: HashMap<IpAddr, &Attempt> = HashMap::new();
    let mut ok = 0;
    let mut errs: BTreeMap<String, usize> = BTreeMap::new();
    let mut shorts: BTreeMap<String, usize> = BTreeMap::new();
    for a in &storm.attempts {
        match &a.outcome {
            Outcome::Ok(ip) => {
                ok += 1;
                if let Some(prev) = by_ip.insert(*ip, a) {
                    panic!("{ip} handed out twice: to {} and {}", prev.handle, a.handle);
                }
            }
            Outcome::Err(e) => *errs.entry(error_kind(e, &s.prefix)).or_default() += 1,
            Outcome::Short(m) => *shorts.entry(m.clone()).or_default() += 1,
        }
    }
    eprintln!(
        "faults[{variant:?}]: storm {:.1} s: {ok} addresses, {} failed ADDs (released), {} shortfalls, {} DEL retries; {:.0} ADDs/s",
        storm.elapsed.as_secs_f64(),
        errs.values().sum::<usize>(),
        shorts.values().sum::<usize>(),
        storm.del_errors,
        ok as f64 / storm.elapsed.as_secs_f64()
    );
    for (e, n) in &errs {
        eprintln!("faults[{variant:?}]:   {n} x {e}");
    }
    assert!(
        shorts.is_empty(),
        "ADDs ran short although {total} addresses fit: {shorts:?}"
    );
    assert_eq!(ok, total, "every container got an address");

    let blocks = s.blocks().await;
    let storm_allocs: Vec<_> = Ipam::allocations(&blocks)
        .into_iter()
        .filter(|a| s.storm_net.contains(&a.ip))
        .collect();
    let in_blocks: BTreeSet<(String, IpAddr)> = storm_allocs
        .iter()
        .map(|a| (a.handle_id.clone().unwrap_or_default(), a.ip))
        .collect();
    let expected: BTreeSet<(String, IpAddr)> = by_ip.iter().map(|(ip, a)| (a.handle.clone(), *ip)).collect();
    if in_blocks != expected {
        let extra: Vec<_> = in_blocks.difference(&expected).take(20).collect();
        let missing: Vec<_> = expected.difference(&in_blocks).take(20).collect();
        panic!(
            "blocks and successful ADDs differ: {} in blocks only (leaks, first {extra:?}), {} ADDs not in blocks (first {missing:?})",
            in_blocks.difference(&expected).count(),
            expected.difference(&in_blocks).count()
        );
    }
    let problems = s.check(None).await;
    assert!(
        problems.is_empty(),
        "ipam check after the storm:\n{}",
        report::render_problems(&problems)
    );

    // ---- topology: strict = own blocks only; borrow = borrowing really happened.
    let node_of: HashMap<usize, &String> = s.storm_nodes.iter().enumerate().collect();
    let mut blocks_per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &blocks {
        if let Some(h) = b.spec.host()
            && s.storm_net.contains(&b.spec.cidr.parse::<IpNet>().unwrap())
        {
            *blocks_per_node.entry(h).or_default() += 1;
        }
    }
    let mut borrowed = 0;
    for a in &storm_allocs {
        let attempt = by_ip[&a.ip];
        let node = node_of[&attempt.allocator];
        assert_eq!(a.attrs.get("node"), Some(node.as_str()));
        if a.block_host.as_deref() != Some(node.as_str()) {
            borrowed += 1;
        }
    }
    let storm_counts: Vec<usize> = s
        .storm_nodes
        .iter()
        .map(|n| blocks_per_node.get(n.as_str()).copied().unwrap_or(0))
        .collect();
    let (min_b, max_b) = (
        storm_counts.iter().min().copied().unwrap_or(0),
        storm_counts.iter().max().copied().unwrap_or(0),
    );
    eprintln!(
        "faults[{variant:?}]: {} blocks affine to storm nodes ({min_b}..{max_b} per node), {borrowed} addresses borrowed",
        storm_counts.iter().sum::<usize>()
    );
    match variant {
        Variant::Strict => {
            assert_eq!(
                borrowed, 0,
                "strictAffinity: addresses outside their node's blocks"
            );
            let need = per.div_ceil(block_addrs);
            for n in &s.storm_nodes {
                let have = blocks_per_node.get(n.as_str()).copied().unwrap_or(0);
                assert!(have >= need, "node {n} holds {have} blocks, needs {need}");
            }
        }
        Variant::Borrow => {
            assert!(
                borrowed >= total - own_capacity,
                "only {borrowed} borrowed addresses; the storm nodes could own {own_capacity} of {total}"
            );
        }
    }

    // ---- DEL everything, as each node's runtime would.
    let t = Instant::now();
    let mut dels = vec![];
    for (i, ipam) in ipams.iter().enumerate() {
        let mine: Vec<(String, IpAddr)> = by_ip
            .iter()
            .filter(|(_, a)| a.allocator == i)
            .map(|(ip, a)| (a.handle.clone(), *ip))
            .collect();
        let ipam = ipam.clone();
        let del_errors = del_errors.clone();
        dels.push(tokio::spawn(async move {
            for (h, ip) in mine {
                let got = del_with_retry(&ipam, &h, &del_errors).await;
                assert_eq!(got, vec![ip], "DEL of {h} released {got:?}, expected {ip}");
            }
        }));
    }
    for d in dels {
        d.await.expect("DEL task panicked");
    }
    let ipam = s.ipam(s.client.clone(), variant).await;
    for (h, ip) in &live {
        assert_eq!(ipam.release_by_handle(h).await.unwrap(), vec![*ip]);
    }
    eprintln!(
        "faults[{variant:?}]: DEL of {total} + {} containers in {:.1} s",
        live.len(),
        t.elapsed().as_secs_f64()
    );
    let blocks = s.blocks().await;
    let left: Vec<_> = Ipam::allocations(&blocks);
    assert!(
        left.is_empty(),
        "{} allocations left after DEL of everything (first: {:?})",
        left.len(),
        left.first()
    );
    for b in &blocks {
        assert!(blk::is_empty(&b.spec), "block {} not empty", b.spec.cidr);
    }
    let hs = s.handles().await;
    assert!(hs.is_empty(), "{} handles left, e.g. {:?}", hs.len(), hs[0].spec);

    // ---- the real `tortie ipam check`, as a process. The GC pool's live pods had their
    // addresses released above (their DEL): they go too, or check rightly reports pods using
    // addresses nothing allocates.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    pods.delete_collection(
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
        &Default::default(),
    )
    .await
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tortie"))
        .args(["ipam", "check", "--crd-mode", "v1", "--show-problem-ips"])
        .env("KUBECONFIG", &cluster().kubeconfig)
        .output()
        .expect("run tortie ipam check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tortie ipam check: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("Checking "), "{text}");
    assert!(!text.lines().any(|l| l.trim_start().starts_with("- ")), "{text}");
    assert!(text.contains("Check complete; found 0 problems."), "{text}");
    eprintln!(
        "faults[{variant:?}]: tortie ipam check: {}",
        text.trim().replace('\n', " / ")
    );

    drop(ipams);
    s.cleanup().await;
    eprintln!(
        "faults[{variant:?}]: done in {:.1} s",
        t_all.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_affinity_storm_survives_apiserver_restart_and_operator_kill() {
    run(Variant::Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowing_storm_survives_apiserver_crash_and_operator_kill() {
    run(Variant::Borrow).await;
}
