//! IPAM garbage collector: a pass every `gc_interval` (and soon after a Node change), deciding
//! with [`super::gc_plan::plan`] and writing one guarded update per block.
//!
//! Every write is a full update carrying the resourceVersion just read; each ordinal is freed
//! only if its handle and `sequenceNumberForAllocation` still match the plan (a re-allocated
//! address is never freed); a pod named by a leak is re-read live before the write. Deletes of
//! IPAM objects are Calico's two steps: mark `deleted`, then DELETE with a UID precondition.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::core::{NotUsed, Object};
use kube::{Resource, ResourceExt};

use crate::ipam::usage::PoolRef;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use super::gc_plan::{self, AffinityIn, BlockIn, Guard, HandleIn, PodInfo, World};
use super::store::SlimPod;
use super::tokio_util_shim::CancellationToken;
use super::{Ctx, Error};
use crate::api::{Affinity, Block, CalicoKind, Handle};
use crate::ipam::names;

const NAME: &str = "gc";
const CAS_RETRIES: usize = 3;
/// Blocks released at once in a pass.
const BLOCK_CONCURRENCY: usize = 4;
/// Handle writes in flight at once during a block's release.
const HANDLE_CONCURRENCY: usize = 16;
/// A namespace with at least this many leaks in a pass is read with one LIST instead of a GET
/// per pod.
const LIST_NAMESPACE_FROM: usize = 16;

pub async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut node_changes = ctx.stores.nodes.changes().boxed();
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

/// Annotations that name a pod's addresses: Calico's two, then Multus' network status.
pub const POD_IP_ANNOTATIONS: [&str; 3] = [
    "cni.projectcalico.org/podIP",
    "cni.projectcalico.org/podIPs",
    "k8s.v1.cni.cncf.io/network-status",
];

/// Addresses a live pod shows: status.podIPs, Calico's and Multus' annotations.
pub fn pod_info(p: &SlimPod) -> Option<PodInfo> {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = p.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut push = |s: &str| {
        let s = s.trim();
        let s = s.split('/').next().unwrap_or(s);
        if let Ok(ip) = s.parse() {
            ips.push(ip);
        }
    };
    if let Some(st) = status {
        st.pod_ips.iter().flatten().for_each(|i| push(&i.ip));
        st.pod_ip.iter().for_each(|i| push(i));
    }
    let ann = p.annotations();
    for key in POD_IP_ANNOTATIONS[..2].iter().copied() {
        if let Some(v) = ann.get(key) {
            v.split(',').for_each(&mut push);
        }
    }
    if let Some(v) = ann.get(POD_IP_ANNOTATIONS[2])
        && let Ok(serde_json::Value::Array(nets)) = serde_json::from_str::<serde_json::Value>(v)
    {
        for n in nets {
            for ip in n.get("ips").and_then(|x| x.as_array()).into_iter().flatten() {
                if let Some(s) = ip.as_str() {
                    push(s);
                }
            }
        }
    }
    Some(PodInfo {
        node: spec.and_then(|s| s.node_name.clone()),
        ips,
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        evicted: status
            .is_some_and(|s| s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some("Evicted")),
    })
}

/// Pools this instance manages; with a pool selector, GC stays inside them.
fn scope(ctx: &Ctx) -> (Vec<PoolRef>, bool) {
    let pools = ctx
        .stores
        .pools
        .all()
        .iter()
        .filter_map(|p| PoolRef::from_pool(p))
        .collect();
    (pools, ctx.config.pool_selector.is_some())
}

async fn pass(ctx: &Ctx) -> Result<(), Error> {
    let st = &ctx.stores;
    let (pools, scoped) = scope(ctx);
    let in_scope = |cidr: &str| {
        !scoped
            || cidr
                .parse::<IpNet>()
                .is_ok_and(|n| pools.iter().any(|p| p.cidr.contains(&n)))
    };
    let blocks = st.blocks.all();
    let affinities = st.affinities.all();
    let nodes = st.nodes.all();
    let grace = jiff::SignedDuration::try_from(ctx.config.gc_grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut state = ctx.gc_state.lock().await;
    // The pod and handle indexes are read in place (no copy of 50k entries per pass); their
    // locks are let go before the first write.
    let (plan, marked_handles) = {
        let pods = st.pods.read();
        let handles = st.handles.read();
        let world = World {
            blocks: blocks
                .iter()
                .filter(|b| in_scope(&b.spec.cidr))
                .map(|b| BlockIn {
                    name: b.metadata.name.as_deref().unwrap_or(""),
                    spec: &b.spec,
                })
                .collect(),
            affinities: affinities
                .iter()
                .filter(|a| !a.spec.is_deleted() && in_scope(&a.spec.cidr))
                .map(|a| AffinityIn {
                    name: a.metadata.name.as_deref().unwrap_or(""),
                    node: &a.spec.node,
                    cidr: &a.spec.cidr,
                    host_type: a.spec.affinity_type() == "host",
                })
                .collect(),
            handles: handles
                .iter()
                .filter(|(_, h)| {
                    !h.is_deleted()
                        && (!scoped || (!h.blocks.is_empty() && h.blocks.iter().all(|(c, _)| in_scope(c))))
                })
                .map(|(name, h)| HandleIn {
                    name,
                    handle_id: &h.handle_id,
                })
                .collect(),
            nodes: nodes
                .iter()
                .map(|n| (n.name_any(), n.metadata.creation_timestamp.as_ref().map(|t| t.0)))
                .collect(),
            pods: std::borrow::Cow::Borrowed(&*pods),
            pools: pools.clone(),
        };
        let plan = gc_plan::plan(&world, &mut state, jiff::Timestamp::now(), grace);
        let marked: Vec<(String, Option<String>)> = handles
            .iter()
            .filter(|(_, h)| h.is_deleted())
            .map(|(name, h)| (name.clone(), h.uid.clone()))
            .collect();
        (plan, marked)
    };
    drop(state);
    ctx.metrics.set_gc_candidates(&plan.candidates);
    debug!(
        releases = plan.releases.len(),
        empty_blocks = plan.empty_blocks.len(),
        stale_affinities = plan.stale_affinities.len(),
        orphan_handles = plan.orphan_handles.len(),
        "GC plan"
    );
    let mut first_err = None;
    let pod_cache = tokio::sync::Mutex::new(LivePods::for_releases(&plan.releases));
    // Blocks are independent objects: release a few at once.
    let releases: Vec<_> = plan
        .releases
        .iter()
        .map(|r| {
            let pod_cache = &pod_cache;
            async move {
                let res = release_block(ctx, r, pod_cache)
                    .instrument(info_span!("release", ipamblock = %r.block))
                    .await;
                (r, res)
            }
        })
        .collect();
    let mut releases = futures::stream::iter(releases).buffer_unordered(BLOCK_CONCURRENCY);
    while let Some((r, res)) = releases.next().await {
        if let Err(e) = res {
            warn!(block = %r.block, error = %e, "release failed; retrying next pass");
            first_err.get_or_insert(e);
        }
    }
    drop(releases);
    for e in &plan.empty_blocks {
        match release_empty_block(ctx, &e.block, Some(&e.node))
            .instrument(info_span!("release_empty", ipamblock = %e.block))
            .await
        {
            Ok(true) => info!(block = %e.block, node = %e.node, why = e.why, "empty block released"),
            Ok(false) => {}
            Err(err) => {
                warn!(block = %e.block, error = %err, "empty block release failed");
                first_err.get_or_insert(err);
            }
        }
    }
    let aff_api: Api<Affinity> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::BlockAffinity));
    for name in &plan.stale_affinities {
        if let Err(e) = delete_affinity(ctx, &aff_api, name).await {
            first_err.get_or_insert(e);
        } else {
            info!(affinity = %name, "stale affinity of a deleted node removed");
        }
    }
    let h_api: Api<Handle> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::IPAMHandle));
    for name in &plan.orphan_handles {
        match get_opt(&h_api, name).await? {
            Some(h) if !h.spec.is_deleted() => {
                let referenced = ctx.stores.blocks.all().iter().any(|b| {
                    b.spec.attributes.iter().any(|a| {
                        a.handle_id
                            .as_deref()
                            .is_some_and(|id| names::handle_owned_by(&h.spec.handle_id, id))
                    })
                });
                if referenced {
                    continue;
                }
                if let Err(e) = soft_delete(&h_api, h, |s| s.deleted = Some(true)).await {
                    first_err.get_or_insert(e);
                } else {
                    info!(handle = %name, "IPAMHandle no block references removed");
                }
            }
            _ => {}
        }
    }
    // Two-step deletes interrupted between the mark and the DELETE (a process killed there, this
    // operator included): the objects are already absent to every reader; finish them, or they
    // stay in etcd for good since nothing reads a marked handle by name again.
    for (name, uid) in &marked_handles {
        if let Err(e) = finish_delete_named(&h_api, name, uid.clone()).await {
            first_err.get_or_insert(e);
        }
    }
    let b_api: Api<Block> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::IPAMBlock));
    for b in blocks
        .iter()
        .filter(|b| b.spec.is_deleted() && in_scope(&b.spec.cidr))
    {
        if let Err(e) = finish_delete(&b_api, b).await {
            first_err.get_or_insert(e);
        }
    }
    for a in affinities
        .iter()
        .filter(|a| a.spec.is_deleted() && in_scope(&a.spec.cidr))
    {
        if let Err(e) = finish_delete(&aff_api, a).await {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The DELETE of a marked object, with a UID precondition (a new object under the name is not ours).
async fn finish_delete<K>(api: &Api<K>, obj: &K) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    finish_delete_named(api, &name, obj.meta().uid.clone()).await
}

async fn finish_delete_named<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            info!(object = %name, "finished an interrupted delete");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The object, or `None` only when the apiserver says this object does not exist: a restarting
/// apiserver's bare 404 (see [`crate::ipam::store::object_absent`]) must not read as "pod gone"
/// (its addresses would be released) or "block gone".
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

/// Frees the guarded ordinals of one block in one write, then decrements the handles.
async fn release_block(
    ctx: &Ctx,
    r: &gc_plan::BlockRelease,
    pods: &tokio::sync::Mutex<LivePods>,
) -> Result<(), Error> {
    // Re-validate each leak's pod live: never free what a pod shows it holds.
    let mut guards: Vec<Guard> = Vec::new();
    for g in &r.guards {
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
    if guards.is_empty() {
        return Ok(());
    }
    let ar = ctx.resource(CalicoKind::IPAMBlock);
    let api: Api<Block> = Api::all_with(ctx.client.clone(), &ar);
    let mut attempt = 0;
    let (block, freed) = loop {
        attempt += 1;
        let Some(mut block) = get_opt(&api, &r.block).await? else {
            return Ok(());
        };
        if block.spec.is_deleted() {
            return Ok(());
        }
        let freed = gc_plan::release(&mut block.spec, &guards);
        if freed.is_empty() {
            return Ok(());
        }
        match api.replace(&r.block, &PostParams::default(), &block).await {
            Ok(b) => break (b, freed),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CAS_RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Handles after the block (Calico's order): a crash here leaves an over-counted handle only.
    let mut per_handle: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_node: BTreeMap<&str, u64> = BTreeMap::new();
    for g in &freed {
        *per_handle.entry(&g.handle).or_default() += 1;
        *per_node.entry(&g.node).or_default() += 1;
    }
    let h_api: Api<Handle> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::IPAMHandle));
    // Independent objects: decrement them concurrently (a 10,000-leak pass is bound by these).
    // Each handle is set to what the written block still holds for it, not decremented: a pass
    // repeated after a lost answer cannot count down twice (issue 15).
    let decrements: Vec<_> = per_handle
        .into_keys()
        .map(|handle| {
            let left = crate::ipam::block::ordinals_of_handle(&block.spec, handle).len() as u64;
            let (handle, h_api, cidr) = (handle.to_string(), h_api.clone(), r.cidr.clone());
            async move {
                let res = set_handle_count(ctx, &h_api, &handle, &cidr, left).await;
                (handle, res)
            }
        })
        .collect();
    let mut decrements = futures::stream::iter(decrements).buffer_unordered(HANDLE_CONCURRENCY);
    while let Some((handle, res)) = decrements.next().await {
        if let Err(e) = res {
            warn!(%handle, error = %e, "handle decrement failed (left over-counted)");
        }
    }
    drop(decrements);
    for (node, n) in per_node {
        ctx.metrics.add_reclamations(&r.pool, node, n);
    }
    let list: Vec<String> = freed.iter().map(|g| format!("{} ({})", g.ip, g.why)).collect();
    info!(
        count = freed.len(),
        "released leaked addresses: {}",
        list.join(", ")
    );
    ctx.event(
        &block,
        &ar,
        false,
        "LeakReleased",
        "Release",
        format!("Released {} leaked address(es): {}", freed.len(), list.join(", ")),
    )
    .await;
    Ok(())
}

/// Sets a handle's count for `cidr` to `left` (what the block still holds for it) by CAS; the
/// first attempt rebuilds it from the handle index (saving a read), a stale copy costs one 409
/// and a fresh read.
async fn set_handle_count(
    ctx: &Ctx,
    api: &Api<Handle>,
    handle_id: &str,
    cidr: &str,
    left: u64,
) -> Result<(), Error> {
    // The ID's own object, else the one Calico named for a mixed-case ID; never an object that
    // holds another ID (Calico's lower-cased names would have shared one).
    let candidates: Vec<String> = std::iter::once(names::handle_name(handle_id))
        .chain(names::calico_handle_name(handle_id))
        .collect();
    for attempt in 1..=CAS_RETRIES {
        let mut current = None;
        for name in &candidates {
            let cached = (attempt == 1)
                .then(|| ctx.stores.handles.get(name))
                .flatten()
                .and_then(|e| e.to_handle(name, &ctx.resource(CalicoKind::IPAMHandle)));
            let h = match cached {
                Some(h) => Some(h),
                None => get_opt(api, name).await?,
            };
            if let Some(h) = h.filter(|h| names::handle_owned_by(&h.spec.handle_id, handle_id)) {
                current = Some(h);
                break;
            }
        }
        let Some(mut h) = current else {
            return Ok(());
        };
        let name = h.name_any();
        if h.spec.is_deleted() {
            return Ok(());
        }
        if !crate::ipam::handle_count::set(&mut h.spec.block, cidr, left) {
            // Already so: believed from a fresh read only, not from the index.
            if attempt == 1 {
                continue;
            }
            return Ok(());
        }
        let res = if h.spec.block.is_empty() {
            soft_delete(api, h, |s| s.deleted = Some(true)).await
        } else {
            api.replace(&name, &PostParams::default(), &h)
                .await
                .map(|_| ())
                .map_err(Error::from)
        };
        match res {
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 && attempt < CAS_RETRIES => continue,
            other => return other,
        }
    }
    Ok(())
}

/// Calico's two-step delete: mark `deleted` with a CAS update, then DELETE with a UID precondition.
pub async fn soft_delete<S>(
    api: &Api<Object<S, NotUsed>>,
    mut obj: Object<S, NotUsed>,
    mark: impl FnOnce(&mut S),
) -> Result<(), Error>
where
    S: Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    Object<S, NotUsed>: Resource,
{
    let name = obj.name_any();
    mark(&mut obj.spec);
    let marked = api.replace(&name, &PostParams::default(), &obj).await?;
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: marked.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_affinity(_ctx: &Ctx, api: &Api<Affinity>, name: &str) -> Result<(), Error> {
    match get_opt(api, name).await? {
        Some(a) if !a.spec.is_deleted() => soft_delete(api, a, |s| s.deleted = s.deleted.with(true)).await,
        _ => Ok(()),
    }
}

/// Deletes an empty block and the affinity of `host` for it: affinity → pendingDeletion, block
/// marked deleted (CAS on the resourceVersion read while checking it is empty) and deleted, then
/// the affinity. Returns false when the block is not empty (or not `host`'s) any more.
pub async fn release_empty_block(ctx: &Ctx, block_name: &str, host: Option<&str>) -> Result<bool, Error> {
    let api: Api<Block> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::IPAMBlock));
    let aff_api: Api<Affinity> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::BlockAffinity));
    let Some(block) = get_opt(&api, block_name).await? else {
        return Ok(false);
    };
    if block.spec.is_deleted() || !gc_plan::is_empty(&block.spec) || block.spec.host() != host {
        return Ok(false);
    }
    let net: Option<IpNet> = block.spec.cidr.parse().ok();
    let aff_name = host.zip(net).map(|(h, n)| names::affinity_name(h, &n));
    let mut aff = match &aff_name {
        Some(n) => get_opt(&aff_api, n).await?.filter(|a| !a.spec.is_deleted()),
        None => None,
    };
    if let Some(a) = aff.as_mut() {
        a.spec.state = "pendingDeletion".into();
        *a = aff_api.replace(&a.name_any(), &PostParams::default(), a).await?;
    }
    let ar = ctx.resource(CalicoKind::IPAMBlock);
    match soft_delete(&api, block.clone(), |s| s.deleted = Some(true)).await {
        Ok(()) => {}
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 409 => {
            // The block changed under us (an allocation): give the affinity back.
            if let Some(mut a) = aff {
                a.spec.state = "confirmed".into();
                let _ = aff_api.replace(&a.name_any(), &PostParams::default(), &a).await;
            }
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    if let Some(a) = aff {
        soft_delete(&aff_api, a, |s| s.deleted = s.deleted.with(true)).await?;
    }
    ctx.event(
        &block,
        &ar,
        false,
        "BlockReleased",
        "Release",
        format!(
            "Released empty block {} of node {}",
            block.spec.cidr,
            host.unwrap_or("(none)")
        ),
    )
    .await;
    Ok(true)
}

/// Used by the IPPool finalizer: every empty block inside `net`, with its affinity, goes.
pub async fn delete_empty_blocks_in(ctx: &Ctx, net: &IpNet) -> Result<(), Error> {
    for b in ctx.stores.blocks.all() {
        let inside = b.spec.cidr.parse::<IpNet>().is_ok_and(|n| net.contains(&n));
        if inside && !b.spec.is_deleted() && gc_plan::is_empty(&b.spec) {
            release_empty_block(ctx, &b.name_any(), b.spec.host()).await?;
        }
    }
    let aff_api: Api<Affinity> = Api::all_with(ctx.client.clone(), &ctx.resource(CalicoKind::BlockAffinity));
    for a in ctx.stores.affinities.all() {
        let inside = a.spec.cidr.parse::<IpNet>().is_ok_and(|n| net.contains(&n));
        let block_left = ctx
            .stores
            .blocks
            .all()
            .iter()
            .any(|b| b.spec.cidr == a.spec.cidr && !b.spec.is_deleted());
        if inside && !block_left && !a.spec.is_deleted() {
            delete_affinity(ctx, &aff_api, &a.name_any()).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> SlimPod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_addresses_from_status_and_annotations() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "annotations": {
                "cni.projectcalico.org/podIPs": "10.0.0.5/32, fd00::5/128",
                "k8s.v1.cni.cncf.io/network-status": "[{\"name\":\"x\",\"ips\":[\"10.9.0.1\"]}]"
            }},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"podIPs": [{"ip": "10.0.0.4"}], "phase": "Running"}
        }));
        let i = pod_info(&p).unwrap();
        let ips: Vec<String> = i.ips.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, ["10.0.0.4", "10.0.0.5", "fd00::5", "10.9.0.1"]);
        assert_eq!(i.node.as_deref(), Some("n1"));
        assert!(!i.evicted);
    }

    #[test]
    fn host_network_pods_hold_no_pool_address_and_evicted_is_seen() {
        let hn = pod(
            serde_json::json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []}, "status": {"podIP": "192.0.2.1"}}),
        );
        assert!(pod_info(&hn).is_none());
        let ev = pod(
            serde_json::json!({"metadata": {"name": "e"}, "spec": {"containers": []}, "status": {"phase": "Failed", "reason": "Evicted"}}),
        );
        assert!(pod_info(&ev).unwrap().evicted);
    }

    #[test]
    fn slim_pods_keep_what_the_gc_reads() {
        // A full Pod as the apiserver sends it, read into the slim type the watch caches.
        let full = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "n", "creationTimestamp": "2026-11-23T01:00:00Z",
                "labels": {"app": "web"}, "managedFields": [{"manager": "kubectl", "operation": "Update"}],
                "annotations": {"cni.projectcalico.org/podIP": "10.0.0.6/32", "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "k8s.v1.cni.cncf.io/network-status": "[{\"name\":\"x\",\"ips\":[\"10.9.0.2\"]}]"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}], "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"podIP": "10.0.0.4", "podIPs": [{"ip": "10.0.0.4"}], "phase": "Failed", "reason": "Evicted",
                "conditions": [{"type": "Ready", "status": "False"}]}
        });
        let p = pod(full);
        let i = pod_info(&p).unwrap();
        let ips: std::collections::BTreeSet<String> = i.ips.iter().map(|a| a.to_string()).collect();
        assert_eq!(ips, ["10.0.0.4", "10.0.0.6", "10.9.0.2"].map(String::from).into());
        assert_eq!(i.node.as_deref(), Some("n1"));
        assert!(i.evicted && i.created.is_some());
        let only_pod_ip =
            pod(serde_json::json!({"metadata": {"name": "q"}, "status": {"podIP": "10.0.0.7"}}));
        assert_eq!(
            pod_info(&only_pod_ip).unwrap().ips,
            ["10.0.0.7".parse::<IpAddr>().unwrap()]
        );
    }
}
