//! IPAM garbage collector: a pass every `gc_interval` (and soon after a Node change): observe the
//! watch caches, decide with [`super::gc_plan::plan`] (pure), and let the IPAM engine write.
//!
//! This file writes no IPAM object itself: every write is an engine operation
//! ([`crate::ipam::Ipam::release_guarded_block`] and `set_released_handle`, `release_empty_block`, `release_block_affinity`,
//! `delete_unreferenced_handle`), with the engine's one compare-and-swap loop and write
//! preparation. Each ordinal is freed only if its handle and `sequenceNumberForAllocation` still
//! match the plan (a re-allocated address is never freed); a pod named by a leak is re-read live
//! before the write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use kube::ResourceExt;
use kube::api::Api;

use crate::ipam::usage::PoolRef;
use crate::ipam::{Ipam, block as blk};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use super::gc_plan::{self, AffinityIn, BlockIn, Guard, HandleIn, PodInfo, Scope, World};
use super::pod::{SlimPod, pod_info};
use super::{Ctx, Error};
use crate::api::{Block, CalicoKind};
use crate::ipam::names;
use tokio_util::sync::CancellationToken;

const NAME: &str = "gc";
/// Blocks released at once in a pass.
const BLOCK_CONCURRENCY: usize = 8;
/// Handle writes in flight at once after a pass's block writes (one per freed address at most:
/// 10,000 leaks are 200 block writes and up to 10,000 handle writes).
const HANDLE_CONCURRENCY: usize = 64;
/// A namespace with at least this many leaks in a pass is read with one LIST instead of a GET
/// per pod.
const LIST_NAMESPACE_FROM: usize = 16;

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut node_changes = ctx.stores.nodes.changes().boxed();
    let mut pod_removals = ctx.stores.pods.removals().boxed();
    let mut tick = tokio::time::interval(ctx.config.gc_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A pass also runs when the earliest grace timer runs out, so a leak goes at grace + one
    // pass rather than grace + up to one interval.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let wake = async {
            match due {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake => {}
            Some(n) = node_changes.next() => {
                // Only a Node that went away has work at once (its leaks skip the grace
                // period); heartbeats and label changes wait for the next tick.
                if !node_gone(&ctx, &n) {
                    continue;
                }
                // Let a burst of deletions settle into one pass.
                tokio::time::sleep(Duration::from_secs(1)).await;
                while futures::FutureExt::now_or_never(node_changes.next()).flatten().is_some() {}
            }
            Some(p) = pod_removals.next() => {
                // A pod deleted from a Node that is gone (the pod GC deletes them after the
                // Node): its addresses, then the Node's blocks and affinities, go at once, as
                // in Calico (a pod deletion marks its node dirty). Other deletions wait for the
                // grace period anyway.
                let on_gone_node = |p: &PodInfo| p.node.as_deref().is_some_and(|n| ctx.stores.nodes.get(n).is_none());
                // `None`: deletions were missed (a burst); look anyway.
                if let Some(p) = &p
                    && !on_gone_node(p)
                {
                    continue;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                while futures::FutureExt::now_or_never(pod_removals.next()).flatten().is_some() {}
            }
        }
        let _t = ctx.metrics.reconcile(NAME);
        if let Err(e) = pass(&ctx).instrument(info_span!("gc_pass")).await {
            ctx.metrics.error(NAME, e.metric_label());
            warn!(error = %e, "IPAM GC pass failed; retrying next pass");
        }
        due = next_due(&ctx).await;
    }
}

/// The monotonic instant the earliest GC timer runs out (a little after, so it has).
async fn next_due(ctx: &Ctx) -> Option<tokio::time::Instant> {
    let grace = jiff::SignedDuration::try_from(ctx.config.gc_grace).ok()?;
    let at = ctx.gc_state.lock().await.next_due(grace)?;
    let wait = Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO);
    Some(tokio::time::Instant::now() + wait + Duration::from_millis(100))
}

fn node_gone(ctx: &Ctx, n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.metadata.deletion_timestamp.is_some()
        || ctx
            .stores
            .nodes
            .store
            .get(&kube::runtime::reflector::ObjectRef::from_obj(n))
            .is_none()
}

/// Pools this instance manages; with a pool selector, GC stays inside them.
fn scope(ctx: &Ctx) -> Scope {
    Scope {
        pools: ctx
            .stores
            .pools
            .all()
            .iter()
            .filter_map(|p| PoolRef::from_pool(p))
            .collect(),
        scoped: ctx.config.pool_selector.is_some(),
    }
}

/// One pass: observe the watch caches, decide ([`gc_plan::plan`], pure), apply through the
/// engine. Every step of the apply runs even when an earlier one failed; the first error is
/// returned.
async fn pass(ctx: &Ctx) -> Result<(), Error> {
    let ipam = ctx.ipam().await?;
    let now = jiff::Timestamp::now();
    let plan = observe_and_decide(ctx, now).await;
    ctx.metrics.set_gc_candidates(&plan.candidates);
    debug!(
        releases = plan.releases.len(),
        empty_blocks = plan.empty_blocks.len(),
        stale_affinities = plan.stale_affinities.len(),
        orphan_handles = plan.orphan_handles.len(),
        finish_deletes = plan.finish_deletes.len(),
        "GC plan"
    );
    let mut failed = Failures::default();
    release_leaks(ctx, ipam, &plan.releases, now, &mut failed).await;
    stamp_empty_blocks(ipam, &plan.stamp_empty, now, &mut failed).await;
    release_empty_blocks(ctx, ipam, &plan.empty_blocks, &mut failed).await;
    remove_stale_affinities(ipam, &plan.stale_affinities, &mut failed).await;
    remove_orphan_handles(ctx, ipam, &plan.orphan_handles, &mut failed).await;
    finish_deletes(ipam, &plan.finish_deletes, &mut failed).await;
    failed.into_result()
}

/// The first error of a pass whose steps go on after a failure.
#[derive(Default)]
struct Failures(Option<Error>);

impl Failures {
    fn note(&mut self, e: impl Into<Error>) {
        self.0.get_or_insert(e.into());
    }

    fn into_result(self) -> Result<(), Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Observe (the watch caches, inside this instance's scope) and decide. The pod and handle
/// indexes are read in place (no copy of 50k entries per pass); their locks are let go before
/// the first write.
async fn observe_and_decide(ctx: &Ctx, now: jiff::Timestamp) -> gc_plan::GcPlan {
    let st = &ctx.stores;
    let scope = scope(ctx);
    // The pass reads whole blocks: decoded from the compact cache for this pass only.
    let blocks: Vec<Block> = st
        .blocks
        .all()
        .iter()
        .filter(|b| scope.contains_cidr(b.cidr()))
        .map(|b| b.block())
        .collect();
    let (affinities, nodes) = (st.affinities.all(), st.nodes.all());
    let grace = jiff::SignedDuration::try_from(ctx.config.gc_grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut state = ctx.gc_state.lock().await;
    let pods = st.pods.read();
    let handles = st.handles.read();
    let world = World {
        blocks: blocks
            .iter()
            .map(|b| BlockIn {
                name: b.metadata.name.as_deref().unwrap_or(""),
                spec: &b.spec,
                empty_since: b
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(gc_plan::EMPTY_SINCE_ANNOTATION))
                    .map(String::as_str),
            })
            .collect(),
        affinities: affinities
            .iter()
            .filter(|a| scope.contains_cidr(&a.spec.cidr))
            .map(|a| AffinityIn {
                name: a.metadata.name.as_deref().unwrap_or(""),
                node: &a.spec.node,
                cidr: &a.spec.cidr,
                host_type: a.spec.affinity_type() == "host",
                deleted: a.spec.is_deleted(),
            })
            .collect(),
        handles: handles
            .iter()
            .filter(|(_, h)| scope.contains_handle(h.is_deleted(), h.blocks()))
            .map(|(name, h)| HandleIn {
                name,
                handle_id: h.handle_id(name),
                deleted: h.is_deleted(),
            })
            .collect(),
        nodes: nodes
            .iter()
            .map(|n| (n.name_any(), n.metadata.creation_timestamp.as_ref().map(|t| t.0)))
            .collect(),
        pods: std::borrow::Cow::Borrowed(&*pods),
        pools: scope.pools.clone(),
    };
    gc_plan::plan(&world, &mut state, now, grace)
}

/// Frees the planned leaks: every block first (the addresses are free once its write lands; a
/// few blocks at once, they are independent objects), then every freed handle's count side by
/// side, so that no block waits for another block's handles.
async fn release_leaks(
    ctx: &Ctx,
    ipam: &Ipam,
    plan: &[gc_plan::BlockRelease],
    now: jiff::Timestamp,
    failed: &mut Failures,
) {
    prime_handles(ctx, ipam, plan);
    let stamp = now.to_string();
    let pod_cache = tokio::sync::Mutex::new(LivePods::for_releases(plan));
    let releases: Vec<_> = plan
        .iter()
        .map(|r| {
            let (pod_cache, stamp) = (&pod_cache, &stamp);
            async move {
                let res = release_block(ctx, ipam, r, stamp, pod_cache)
                    .instrument(info_span!("release", ipamblock = %r.block))
                    .await;
                (r, res)
            }
        })
        .collect();
    let mut releases = futures::stream::iter(releases).buffer_unordered(BLOCK_CONCURRENCY);
    let mut handle_sets: Vec<(IpNet, String, u64)> = Vec::new();
    while let Some((r, res)) = releases.next().await {
        match res {
            Ok(sets) => handle_sets.extend(sets),
            Err(e) => {
                warn!(block = %r.block, error = %e, "release failed; retrying next pass");
                failed.note(e);
            }
        }
    }
    drop(releases);
    // Collected first: a lazy iterator of borrowing futures is not provably Send.
    let sets: Vec<_> = handle_sets
        .iter()
        .map(|(cidr, h, left)| ipam.set_released_handle(cidr, h, *left))
        .collect();
    let mut sets = futures::stream::iter(sets).buffer_unordered(HANDLE_CONCURRENCY);
    let mut over_counted = 0usize;
    while let Some(r) = sets.next().await {
        over_counted += usize::from(r.is_err());
    }
    if over_counted > 0 {
        debug!(
            over_counted,
            "handles left over-counted (the orphan-handle GC takes them)"
        );
    }
}

/// Stamps empty blocks seen empty for the first time with that time, while still empty (the
/// value names the sequence number the stamp leaves).
async fn stamp_empty_blocks(ipam: &Ipam, cidrs: &[String], now: jiff::Timestamp, failed: &mut Failures) {
    for cidr in cidrs {
        let Ok(net) = cidr.parse::<IpNet>() else { continue };
        let stamp = |spec: &crate::api::IPAMBlockSpec| {
            blk::is_empty(spec).then(|| gc_plan::empty_since_value(now, spec))
        };
        if let Err(e) = ipam
            .annotate_block(&net, gc_plan::EMPTY_SINCE_ANNOTATION, stamp)
            .await
        {
            warn!(block = %cidr, error = %e, "could not stamp an empty block's first sighting");
            failed.note(e);
        }
    }
}

async fn release_empty_blocks(ctx: &Ctx, ipam: &Ipam, empty: &[gc_plan::EmptyBlock], failed: &mut Failures) {
    for e in empty {
        let res = release_empty_block(ctx, ipam, &e.cidr, Some(&e.node))
            .instrument(info_span!("release_empty", ipamblock = %e.block))
            .await;
        match res {
            Ok(true) => info!(block = %e.block, node = %e.node, why = e.why, "empty block released"),
            Ok(false) => {}
            Err(err) => {
                warn!(block = %e.block, error = %err, "empty block release failed");
                failed.note(err);
            }
        }
    }
}

async fn remove_stale_affinities(ipam: &Ipam, stale: &[gc_plan::StaleAffinity], failed: &mut Failures) {
    for a in stale {
        let Ok(net) = a.cidr.parse::<IpNet>() else {
            continue;
        };
        match ipam.release_block_affinity(&a.node, &net, true).await {
            Ok(_) => info!(affinity = %a.name, "stale affinity of a deleted node removed"),
            Err(e) => failed.note(e),
        }
    }
}

/// Deletes the planned orphan handles that are still unreferenced by the blocks the watch has
/// now (a block written since the plan may name one again).
async fn remove_orphan_handles(ctx: &Ctx, ipam: &Ipam, orphans: &[String], failed: &mut Failures) {
    let st = &ctx.stores;
    for name in orphans {
        // The handle's ID from the index (the object name may be Calico's legacy form).
        let Some(entry) = st.handles.get(name) else {
            continue;
        };
        if entry.is_deleted() {
            continue;
        }
        let id = entry.handle_id(name).to_string();
        let referenced = st.blocks.all().iter().any(|b| b.references_handle(&id));
        if referenced {
            continue;
        }
        match ipam.delete_unreferenced_handle(&id).await {
            Ok(true) => info!(handle = %name, "IPAMHandle no block references removed"),
            Ok(false) => {}
            Err(e) => failed.note(e),
        }
    }
}

/// Finishes the two-step deletes the plan found interrupted ([`gc_plan::GcPlan::finish_deletes`]).
async fn finish_deletes(ipam: &Ipam, marked: &[(CalicoKind, String)], failed: &mut Failures) {
    let store = ipam.store();
    for (kind, name) in marked {
        match store.finish_delete(*kind, name).await {
            Ok(()) => info!(object = %name, "finished an interrupted delete"),
            Err(e) => failed.note(Error::Ipam(e.into())),
        }
    }
}

/// Seeds the engine's handle cache from the handle index for the handles a pass will set, so
/// that a release costs no handle read (a stale copy costs a 409 and a re-read).
fn prime_handles(ctx: &Ctx, ipam: &Ipam, releases: &[gc_plan::BlockRelease]) {
    let ar = ctx.resource(CalicoKind::IPAMHandle);
    let ids: std::collections::BTreeSet<&str> = releases
        .iter()
        .flat_map(|r| &r.guards)
        .map(|g| g.handle.as_str())
        .collect();
    for id in ids {
        let names = std::iter::once(names::handle_name(id)).chain(names::calico_handle_name(id));
        for name in names {
            if let Some(h) = ctx
                .stores
                .handles
                .get(&name)
                .and_then(|e| e.to_handle(&name, &ar))
                && names::handle_owned_by(&h.spec.handle_id, id)
            {
                ipam.prime_handle(h);
                break;
            }
        }
    }
}

/// The object, or `None` only when the apiserver says this object does not exist: a restarting
/// apiserver's bare 404 (see [`crate::ipam::store::object_absent`]) must not read as "pod gone"
/// (its addresses would be released).
async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if crate::ipam::store::object_absent(&s, name) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Live pods named by the pass's leaks, read at most once per pass: a GET per pod, or one LIST
/// for a namespace with many leaks.
struct LivePods {
    list_namespaces: std::collections::HashSet<String>,
    listed: HashMap<String, HashMap<String, PodInfo>>,
    got: HashMap<(String, String), Option<PodInfo>>,
}

impl LivePods {
    fn for_releases(releases: &[gc_plan::BlockRelease]) -> LivePods {
        let mut per_ns: HashMap<&str, usize> = HashMap::new();
        for g in releases.iter().flat_map(|r| &r.guards) {
            if let Some((ns, _)) = &g.pod {
                *per_ns.entry(ns).or_default() += 1;
            }
        }
        LivePods {
            list_namespaces: per_ns
                .into_iter()
                .filter(|(_, n)| *n >= LIST_NAMESPACE_FROM)
                .map(|(ns, _)| ns.to_string())
                .collect(),
            listed: HashMap::new(),
            got: HashMap::new(),
        }
    }

    async fn get(&mut self, ctx: &Ctx, ns: &str, name: &str) -> Result<Option<&PodInfo>, Error> {
        let api = Api::<SlimPod>::namespaced(ctx.client.clone(), ns);
        if self.list_namespaces.contains(ns) {
            if !self.listed.contains_key(ns) {
                let pods = api.list(&Default::default()).await?;
                let infos = pods
                    .items
                    .iter()
                    .filter_map(|p| Some((p.name_any(), pod_info(p)?)))
                    .collect();
                self.listed.insert(ns.to_string(), infos);
            }
            return Ok(self.listed[ns].get(name));
        }
        let key = (ns.to_string(), name.to_string());
        if !self.got.contains_key(&key) {
            let live = get_opt(&api, name).await?;
            self.got.insert(key.clone(), live.as_ref().and_then(pod_info));
        }
        Ok(self.got[&key].as_ref())
    }
}

/// One block's GC write through the engine: frees the confirmed leaks still confirmed after a
/// live look at their pods, stamps new leaks and clears stamps, in one guarded block write.
/// Returns the freed handles' counts to set (block, handle, addresses left). A block this
/// empties whose node is gone goes at once with its affinity (Calico's node cleanup).
async fn release_block(
    ctx: &Ctx,
    ipam: &Ipam,
    r: &gc_plan::BlockRelease,
    stamp: &str,
    pods: &tokio::sync::Mutex<LivePods>,
) -> Result<Vec<(IpNet, String, u64)>, Error> {
    let guards = still_leaked(ctx, &r.guards, pods).await?;
    let edit = r.edit(&guards, stamp);
    if edit.is_empty() {
        return Ok(vec![]);
    }
    let Ok(cidr) = r.cidr.parse::<IpNet>() else {
        return Ok(vec![]);
    };
    if let Some(b) = ctx.stores.blocks.get(&r.block) {
        ipam.prime_block(&b.block());
    }
    let done = ipam.release_guarded_block(&cidr, &edit).await?;
    if !r.marks.is_empty() {
        debug!(count = r.marks.len(), "leaks stamped with their first sighting");
    }
    if let (Some(host), Some(after)) = (&r.host_gone, &done.after)
        && blk::is_empty(after)
        && release_empty_block(ctx, ipam, &r.cidr, Some(host)).await?
    {
        info!(block = %r.block, node = %host, "emptied block of a deleted node released");
    }
    if done.freed.is_empty() {
        return Ok(vec![]);
    }
    let freed: Vec<&Guard> = guards
        .iter()
        .filter(|g| done.freed.iter().any(|(o, _)| *o == g.ordinal))
        .collect();
    report_freed(ctx, r, &freed).await;
    let handles: std::collections::BTreeSet<&str> = done.freed.iter().map(|(_, h)| h.as_str()).collect();
    Ok(handles
        .into_iter()
        .map(|h| (cidr, h.to_string(), done.left_for(h)))
        .collect())
}

/// The planned frees whose pod, looked at live, does not show the address: never free what a
/// pod shows it holds.
async fn still_leaked(
    ctx: &Ctx,
    planned: &[Guard],
    pods: &tokio::sync::Mutex<LivePods>,
) -> Result<Vec<Guard>, Error> {
    let mut guards = Vec::new();
    for g in planned {
        if let Some((ns, name)) = &g.pod
            && pods
                .lock()
                .await
                .get(ctx, ns, name)
                .await?
                .is_some_and(|p| p.ips.contains(&g.ip))
        {
            info!(ip = %g.ip, pod = %format!("{ns}/{name}"), "pod holds the address now; not released");
            continue;
        }
        guards.push(g.clone());
    }
    Ok(guards)
}

/// Reclamation metrics per node, a log line and an Event on the block for the freed addresses.
async fn report_freed(ctx: &Ctx, r: &gc_plan::BlockRelease, freed: &[&Guard]) {
    let mut per_node: BTreeMap<&str, u64> = BTreeMap::new();
    for g in freed {
        *per_node.entry(&g.node).or_default() += 1;
    }
    for (node, n) in per_node {
        ctx.metrics.add_reclamations(&r.pool, node, n);
    }
    let list: Vec<String> = freed.iter().map(|g| format!("{} ({})", g.ip, g.why)).collect();
    info!(
        count = freed.len(),
        "released leaked addresses: {}",
        list.join(", ")
    );
    let ar = ctx.resource(CalicoKind::IPAMBlock);
    let obj = event_target(ctx, &r.block);
    ctx.event(
        &obj,
        &ar,
        false,
        "LeakReleased",
        "Release",
        format!("Released {} leaked address(es): {}", freed.len(), list.join(", ")),
    )
    .await;
}

/// The block an Event is about, as the watch last saw it (its UID lets `kubectl describe` find
/// the Event); a bare reference by name when the watch has not seen it.
fn event_target(ctx: &Ctx, name: &str) -> Block {
    match ctx.stores.blocks.get(name) {
        Some(b) => b.block(),
        None => Block::new(name, &ctx.resource(CalicoKind::IPAMBlock), Default::default()),
    }
}

/// Deletes an empty block (with the affinity of `host` for it) through the engine, and says so
/// in an Event. Returns false when the block was not empty any more, or already gone.
pub async fn release_empty_block(
    ctx: &Ctx,
    ipam: &Ipam,
    cidr: &str,
    host: Option<&str>,
) -> Result<bool, Error> {
    let Ok(net) = cidr.parse::<IpNet>() else {
        return Ok(false);
    };
    let existed = ctx.stores.blocks.all().iter().any(|b| b.cidr() == cidr);
    if !ipam.release_empty_block(&net, host).await? || !existed {
        return Ok(false);
    }
    let ar = ctx.resource(CalicoKind::IPAMBlock);
    let obj = event_target(ctx, &names::block_name(&net));
    ctx.event(
        &obj,
        &ar,
        false,
        "BlockReleased",
        "Release",
        format!("Released empty block {cidr} of node {}", host.unwrap_or("(none)")),
    )
    .await;
    Ok(true)
}

/// Used by the IPPool finalizer: every empty block `owned` says is the deleted pool's, with its
/// affinity, goes, and so does every host affinity of its CIDRs left without a block.
pub async fn delete_empty_blocks_where(ctx: &Ctx, owned: impl Fn(&IpNet) -> bool) -> Result<(), Error> {
    let ipam = ctx.ipam().await?;
    for b in ctx.stores.blocks.all() {
        let inside = b.cidr().parse::<IpNet>().is_ok_and(|n| owned(&n));
        if inside && !b.is_deleted() && b.is_empty() {
            release_empty_block(ctx, ipam, b.cidr(), b.host()).await?;
        }
    }
    for a in ctx.stores.affinities.all() {
        let Ok(cidr) = a.spec.cidr.parse::<IpNet>() else {
            continue;
        };
        let block_left = ctx
            .stores
            .blocks
            .all()
            .iter()
            .any(|b| b.cidr() == a.spec.cidr && !b.is_deleted());
        if owned(&cidr) && !block_left && !a.spec.is_deleted() && a.spec.affinity_type() == "host" {
            ipam.release_block_affinity(&a.spec.node, &cidr, true).await?;
        }
    }
    Ok(())
}
