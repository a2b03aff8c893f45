//! The IPAM engine: drives the pure decisions of [`allocator`] and [`block`] against the
//! [`store`], with caches so that a steady-state allocation is one handle write plus one block
//! write and no read.
//!
//! Caches and why they are safe:
//! - Pools and IPAMConfig: watched (reflectors). A pool named in a request but missing from the
//!   cache triggers one direct LIST (a cache miss), so a just-created pool is never "unknown".
//! - A host's affinities: loaded once per host (label-selector LIST), then kept up to date by this
//!   process's own writes; re-listed before every new block claim (rare) so that claims made by
//!   other processes for the same host are seen.
//! - Blocks and handles: the last version read or written. Every write carries its
//!   resourceVersion, so a stale entry costs one 409, after which the object is re-read.
//!   The block's `affinity` field is authoritative, so a stale affinity cache cannot make a node
//!   allocate from a block it does not own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::{Instrument, debug, info_span, warn};

use super::allocator::{self, AheadState, Family, LoopState, OwnBlock, PoolInfo, PoolQuery, Step};
use super::batch::{self, Grant};
use super::block as blk;
use super::layout::{BlockForIp, BlockSet, Overlap};
use super::reserved::Reserved;
use super::store::{Store, StoreError};
use super::*;
use crate::api::{
    Affinity, Block, CalicoKind, CrdMode, Handle, IPAMConfigSpec, IpamConfig, Pool, Reservation,
};

/// Calico's bound on every compare-and-swap loop.
const RETRIES: usize = 100;
/// Handle writes in flight at once after one block's GC release (a 10,000-leak pass is bound by these).
const HANDLE_CONCURRENCY: usize = 16;
/// How far a claim walks a pool looking for an unclaimed block (bounds huge IPv6 pools).
const MAX_PROBE: usize = 1 << 20;
/// How long node labels are trusted (only read when a pool selector references labels).
const NODE_LABEL_TTL: Duration = Duration::from_secs(30);
/// How long the block listing of [`Ipam::warm_host`] may stand in for a first claim's own.
const WARM_BLOCKS_TTL: Duration = Duration::from_secs(30);

/// Handle to the IPAM engine; cheap to clone (clones share caches, watches and per-node locks).
#[derive(Clone)]
pub struct Ipam {
    inner: Arc<Inner>,
}

/// Options of an [`Ipam`] handle.
#[derive(Clone, Debug, Default)]
pub struct IpamOptions {
    /// Use this configuration instead of the cluster's IPAMConfig `default` (embedding, tests
    /// that must not change the cluster-wide singleton).
    pub config_override: Option<IPAMConfigSpec>,
    /// Keep no block between writes: the caller watches blocks itself and hands the engine its
    /// copy before a write ([`Ipam::prime_block`]). The operator's GC: with a watch cache of
    /// every block, a second copy of each block it ever wrote was most of its memory.
    pub no_block_cache: bool,
    /// Claim a host's next block in the background once its free addresses fall under the
    /// watermark of its recent load ([`batch::claim_ahead_watermark`]), so that its requests find
    /// a block ready instead of waiting for a claim. For a long-running server of one node (the
    /// node agent); a process that exits after one request would leave the claim unfinished.
    pub claim_ahead: bool,
}

struct Inner {
    store: Store,
    opts: IpamOptions,
    pools: reflector::Store<Pool>,
    config: reflector::Store<IpamConfig>,
    reservations: reflector::Store<Reservation>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    cache: Mutex<Cache>,
    host_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One writer per block in this process: concurrent releases (and a release beside an
    /// allocation) of one block would otherwise only race each other into 409s and re-reads.
    block_locks: Mutex<HashMap<IpNet, Arc<tokio::sync::Mutex<()>>>>,
    /// Allocation requests waiting for a shared block write, and each host's recent load.
    batches: Mutex<Batches>,
}

#[derive(Default)]
struct Batches {
    blocks: HashMap<IpNet, BlockQueue>,
    load: HashMap<String, batch::Load>,
}

/// The requests of one block's next write.
#[derive(Default)]
struct BlockQueue {
    queue: Vec<Queued>,
    /// Requests that chose the block and are writing their handle (they queue next).
    inflight: usize,
    /// A writer task runs for this block.
    writer: bool,
    notify: Arc<tokio::sync::Notify>,
}

struct Queued {
    handle: String,
    n: usize,
    owner: Option<String>,
    attrs: Attrs,
    host: String,
    since: Instant,
    tx: tokio::sync::oneshot::Sender<Result<Placed, IpamError>>,
}

/// What a queued request got, and what the block holds for its handle after the write (or as
/// read, when nothing was written).
struct Placed {
    grant: Grant,
    held: u64,
}

/// A request's seat in a block's next batch while it writes its handle: the writer waits for
/// it. Dropped without queuing (the handle write failed), it gives the seat up.
struct Seat<'a> {
    ipam: &'a Ipam,
    cidr: IpNet,
    queued: bool,
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        if self.queued {
            return;
        }
        let mut b = self.ipam.inner.batches.lock().unwrap();
        if let Some(q) = b.blocks.get_mut(&self.cidr) {
            q.inflight = q.inflight.saturating_sub(1);
            q.notify.notify_one();
        }
    }
}

/// Counts a request in its host's load while it runs.
struct LoadGuard<'a> {
    ipam: &'a Ipam,
    host: String,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let mut b = self.ipam.inner.batches.lock().unwrap();
        if let Some(l) = b.load.get_mut(&self.host) {
            l.exit(Instant::now());
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
struct Cache {
    blocks: HashMap<IpNet, Block>,
    handles: HashMap<String, Handle>,
    /// host → (block CIDR → affinity); present once loaded for that host.
    affinities: HashMap<String, HashMap<IpNet, Affinity>>,
    /// host → how often its cached affinities changed (a claim waiting for the host's claim lock
    /// looks again when another request changed them meanwhile).
    affinity_gen: HashMap<String, u64>,
    node_labels: HashMap<String, (Instant, BTreeMap<String, String>)>,
    /// Extra pools read by a direct LIST after a cache miss.
    listed_pools: Option<(Instant, Vec<Pool>)>,
    /// IPReservation entries already reported as unreadable (reported once per process).
    bad_reservations: HashSet<(String, String)>,
    /// The block listing [`Ipam::warm_host`] made for a host without blocks, for its first claim.
    warm_blocks: Option<(String, Instant, BlockSet)>,
    /// Hosts whose next block is being claimed ahead ([`Ipam::claim_ahead`]).
    claiming_ahead: HashSet<String>,
}

fn spawn_reflector<K>(
    api: kube::Api<K>,
    dyntype: K::DynamicType,
) -> (reflector::Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, task, _) = spawn_reflector_with(api, dyntype, None);
    (reader, task)
}

/// As [`spawn_reflector`], for a kind an older CRD set lacks: the receiver turns `true` when the
/// API does not serve `kind` (404), warned once; the watch keeps retrying and fills the store
/// once the CRD is installed.
fn spawn_optional_reflector<K>(
    api: kube::Api<K>,
    dyntype: K::DynamicType,
    kind: &'static str,
) -> (
    reflector::Store<K>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<bool>,
)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    spawn_reflector_with(api, dyntype, Some(kind))
}

fn spawn_reflector_with<K>(
    api: kube::Api<K>,
    dyntype: K::DynamicType,
    optional: Option<&'static str>,
) -> (
    reflector::Store<K>,
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<bool>,
)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let (absent_tx, absent) = tokio::sync::watch::channel(false);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(reflector(writer, stream));
        while let Some(ev) = s.next().await {
            match ev {
                Err(e) if optional.is_some() && not_served(&e) => {
                    let kind = optional.unwrap_or_default();
                    if !*absent_tx.borrow() {
                        warn!(
                            kind,
                            error = %e,
                            "{kind} is not served by the API (its CRD is not installed): running as if there were none until it is"
                        );
                    }
                    absent_tx.send_replace(true);
                }
                Err(e) => debug!(error = %e, "ipam watch error (retrying)"),
                Ok(watcher::Event::InitDone) => {
                    absent_tx.send_replace(false);
                }
                Ok(_) => {}
            }
        }
    });
    (reader, task, absent)
}

/// The API does not serve the kind (its CRD is not installed): a 404 on the list or watch.
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

fn jitter() -> Duration {
    // Cheap randomness: nanoseconds of the clock; spreads retries of racing allocators.
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_micros(500 + u64::from(n % 20_000))
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn block_net(b: &Block) -> Result<IpNet, IpamError> {
    blk::block_cidr(&b.spec).map_err(|e| {
        IpamError::Store(StoreError::Invalid {
            kind: "IPAMBlock",
            name: b.metadata.name.clone().unwrap_or_default(),
            detail: format!("spec.cidr: {e}"),
        })
    })
}

/// How a claim ended.
enum Claim {
    Ours,
    /// Another host won the block (or it vanished): pick again.
    Lost,
    /// The block would overlap (or, after a race, did overlap) another block: nothing of it
    /// was kept.
    Overlap(Overlap),
}

/// What [`Ipam::release_guarded`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcReleased {
    /// Ordinals freed, with the handle each was held by.
    pub freed: Vec<(usize, String)>,
    /// The block after the write (`None`: deleted, or gone).
    pub after: Option<crate::api::IPAMBlockSpec>,
    /// Handles whose count could not be set (left over-counted until the orphan-handle GC).
    pub over_counted: Vec<String>,
}

impl GcReleased {
    /// Addresses `handle` still holds in the block after the write.
    pub fn left_for(&self, handle: &str) -> u64 {
        self.after
            .as_ref()
            .map_or(0, |s| blk::ordinals_of_handle(s, handle).len() as u64)
    }
}

/// Step 3 of a claim: the pending affinity confirmed (re-read on a conflict, re-created when it
/// vanished meanwhile).
async fn confirm_affinity(
    store: &Store,
    host: &str,
    cidr: &IpNet,
    mut aff: Affinity,
) -> Result<Affinity, IpamError> {
    for _ in 0..RETRIES {
        if aff.spec.is_confirmed() && aff.spec.state == "confirmed" {
            return Ok(aff);
        }
        aff.spec.state = "confirmed".into();
        match store.update_affinity(&aff).await {
            Ok(a) => return Ok(a),
            Err(StoreError::Conflict { .. }) => match store.get_affinity(host, cidr).await? {
                Some(a) => aff = a,
                None => return Ok(store.create_affinity(host, cidr, "confirmed").await?),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(aff)
}

/// The request's candidate pools and its cap on the host's blocks.
struct OwnUse<'a> {
    pools: &'a [PoolInfo],
    max_blocks: u32,
}

/// How [`Ipam::claim_next_block`] ended.
enum NextClaim {
    /// This call claimed the block.
    Claimed(IpNet),
    /// Another process had claimed a block for the host meanwhile: nothing claimed.
    Found,
    /// No unclaimed block is left in the pools.
    NoFreeBlock,
    /// Another host won the block, or it would overlap another: pick again.
    NotOurs,
}

/// Records the explicitly requested address (at `ordinal` of the block `cidr`) in the block as
/// read; the error says why it cannot be (with `strict`: the block is another host's).
fn assign_ordinal(
    b: &mut crate::api::IPAMBlockSpec,
    req: &AssignIpRequest,
    cidr: &IpNet,
    ordinal: usize,
    strict: bool,
) -> Result<(), IpamError> {
    if strict && b.host() != Some(req.hostname.as_str()) {
        return Err(IpamError::AffinityMismatch {
            ip: req.ip,
            block: *cidr,
            owner: b.affinity.clone(),
            host: req.hostname.clone(),
        });
    }
    blk::assign(b, ordinal, Some(&req.handle_id), &req.attrs.0).map_err(|e| match e {
        blk::AssignError::AlreadyAssigned(_) => IpamError::AlreadyAssigned {
            ip: req.ip,
            block: *cidr,
        },
        blk::AssignError::OutOfRange(o) => IpamError::Block {
            block: *cidr,
            detail: format!("ordinal {o} outside spec.allocations"),
        },
    })
}

/// What step 2 of a claim found.
enum Created {
    /// This claim created the block.
    New,
    /// The block exists, affine to this host (an earlier claim of the host was interrupted).
    Ours,
    /// The block is another host's, or was deleted meanwhile.
    Theirs,
}

enum BlockOutcome {
    Allocated(Vec<IpNet>),
    /// The block is gone or no longer affine to the host.
    Gone,
}

impl Ipam {
    /// Starts the pool and IPAMConfig watches and waits for their first listing.
    pub async fn new(client: kube::Client, mode: CrdMode) -> Result<Ipam, IpamError> {
        Self::new_with(client, mode, IpamOptions::default()).await
    }

    pub async fn new_with(client: kube::Client, mode: CrdMode, opts: IpamOptions) -> Result<Ipam, IpamError> {
        let store = Store::new(client, mode);
        let (pools, t1) = spawn_reflector(store.pools_api(), mode.resource(CalicoKind::IPPool));
        let (config, t2) = spawn_reflector(store.config_api(), mode.resource(CalicoKind::IPAMConfig));
        let ar = mode.resource(CalicoKind::IPReservation);
        // Older Calico CRD sets have no IPReservation: then nothing is reserved.
        let (reservations, t3, mut no_reservations) = spawn_optional_reflector(
            kube::Api::all_with(store.client().clone(), &ar),
            ar,
            "IPReservation",
        );
        let inner = Inner {
            store,
            opts,
            pools,
            config,
            reservations,
            tasks: vec![t1, t2, t3],
            cache: Mutex::new(Cache::default()),
            host_locks: Mutex::new(HashMap::new()),
            block_locks: Mutex::new(HashMap::new()),
            batches: Mutex::new(Batches::default()),
        };
        let ready = async {
            let _ = inner.pools.wait_until_ready().await;
            let _ = inner.config.wait_until_ready().await;
            // As in Calico, no automatic assignment without knowing the reservations (none when
            // the kind is not served).
            tokio::select! {
                _ = inner.reservations.wait_until_ready() => {}
                _ = no_reservations.wait_for(|absent| *absent) => {}
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .is_err()
        {
            return Err(IpamError::BadRequest(format!(
                "could not list IPPools/IPAMConfig/IPReservations ({} mode) within 30 s: are the Calico CRDs installed?",
                mode
            )));
        }
        Ok(Ipam {
            inner: Arc::new(inner),
        })
    }

    pub fn mode(&self) -> CrdMode {
        self.inner.store.mode()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    // ------------------------------------------------------------------ config, pools, nodes

    /// The effective IPAMConfig (Calico's defaults when none exists; nothing is persisted).
    pub fn config(&self) -> IPAMConfigSpec {
        if let Some(c) = &self.inner.opts.config_override {
            return c.clone();
        }
        self.inner
            .config
            .state()
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("default"))
            .map(|c| c.spec.clone())
            .unwrap_or_else(IPAMConfigSpec::calico_defaults)
    }

    /// The addresses every IPReservation covers (cached from the watch).
    pub fn reserved(&self) -> Reserved {
        let all = self.inner.reservations.state();
        let (reserved, bad) = Reserved::new(all.iter().map(|r| {
            (
                r.metadata.name.as_deref().unwrap_or(""),
                r.spec.reserved_cidrs.as_deref().unwrap_or(&[]),
            )
        }));
        // Admission refuses these; one stored without the CRD's rule is ignored, and said so.
        for (name, entry, why) in bad {
            if self
                .inner
                .cache
                .lock()
                .unwrap()
                .bad_reservations
                .insert((name.clone(), entry))
            {
                warn!(ipreservation = %name, "IPReservation {name:?}: spec.reservedCIDRs entry {why}; ignored");
            }
        }
        reserved
    }

    /// All pools (cached), including disabled ones.
    pub fn pools(&self) -> Vec<Pool> {
        let mut v: Vec<Pool> = self.inner.pools.state().iter().map(|p| (**p).clone()).collect();
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        v
    }

    /// Pools from the cache; on a miss (a requested pool unknown, or no pool at all) a LIST.
    async fn pool_infos(&self, requested: &[String]) -> Result<Vec<PoolInfo>, IpamError> {
        self.pool_infos_from(requested, Instant::now(), false).await
    }

    /// Pools as [`pool_infos`](Self::pool_infos) gives them, except that on a miss, or always
    /// with `listed`, they come from a LIST issued after `since` (the request's start): a pool
    /// created a moment before the request may not have reached the watch. Concurrent misses
    /// share one LIST.
    async fn pool_infos_from(
        &self,
        requested: &[String],
        since: Instant,
        listed: bool,
    ) -> Result<Vec<PoolInfo>, IpamError> {
        let mut pools = self.pools();
        let known = |pools: &[Pool], r: &String| {
            pools
                .iter()
                .any(|p| p.metadata.name.as_ref() == Some(r) || p.spec.cidr == *r)
        };
        if listed || pools.is_empty() || requested.iter().any(|r| !known(&pools, r)) {
            let memo = self.inner.cache.lock().unwrap().listed_pools.clone();
            pools = match memo {
                Some((issued, v)) if issued >= since => v,
                _ => {
                    let issued = Instant::now();
                    let list = self
                        .inner
                        .store
                        .pools_api()
                        .list(&Default::default())
                        .await
                        .map_err(|e| StoreError::Api {
                            kind: "IPPool",
                            name: "(list)".into(),
                            source: e,
                        })?;
                    let mut cache = self.inner.cache.lock().unwrap();
                    if cache.listed_pools.as_ref().is_none_or(|(t, _)| *t < issued) {
                        cache.listed_pools = Some((issued, list.items.clone()));
                    }
                    list.items
                }
            };
        }
        let mut infos = Vec::with_capacity(pools.len());
        for p in &pools {
            match PoolInfo::from_pool(p) {
                Ok(i) => infos.push(i),
                Err(e) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if requested.contains(&name) {
                        return Err(e);
                    }
                    warn!(pool = %name, error = %e, "skipping invalid IPPool");
                }
            }
        }
        Ok(infos)
    }

    /// The node's labels, cached for `NODE_LABEL_TTL`; `fresh` reads them from the API.
    async fn node_labels(&self, host: &str, fresh: bool) -> Result<BTreeMap<String, String>, IpamError> {
        if !fresh
            && let Some((t, l)) = self.inner.cache.lock().unwrap().node_labels.get(host)
            && t.elapsed() < NODE_LABEL_TTL
        {
            return Ok(l.clone());
        }
        let labels = self.inner.store.node_labels(host).await?.ok_or_else(|| {
            IpamError::BadRequest(format!(
                "Node {host} does not exist (its labels are needed for the pools' nodeSelector)"
            ))
        })?;
        self.inner
            .cache
            .lock()
            .unwrap()
            .node_labels
            .insert(host.into(), (Instant::now(), labels.clone()));
        Ok(labels)
    }

    fn host_lock(&self, host: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .host_locks
            .lock()
            .unwrap()
            .entry(host.into())
            .or_default()
            .clone()
    }

    fn block_lock(&self, cidr: &IpNet) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .block_locks
            .lock()
            .unwrap()
            .entry(*cidr)
            .or_default()
            .clone()
    }

    // ------------------------------------------------------------------ cached objects

    async fn block(&self, cidr: &IpNet) -> Result<Option<Block>, IpamError> {
        if let Some(b) = self.inner.cache.lock().unwrap().blocks.get(cidr) {
            return Ok(Some(b.clone()));
        }
        self.fresh_block(cidr).await
    }

    async fn fresh_block(&self, cidr: &IpNet) -> Result<Option<Block>, IpamError> {
        let b = self.inner.store.get_block(cidr).await?;
        let mut c = self.inner.cache.lock().unwrap();
        match &b {
            Some(b) if !self.inner.opts.no_block_cache => c.blocks.insert(*cidr, b.clone()),
            _ => c.blocks.remove(cidr),
        };
        Ok(b)
    }

    fn remember_block(&self, b: &Block) {
        if let Ok(n) = block_net(b) {
            let mut c = self.inner.cache.lock().unwrap();
            if self.inner.opts.no_block_cache {
                c.blocks.remove(&n);
            } else {
                c.blocks.insert(n, b.clone());
            }
        }
    }

    /// Seeds the block cache with a copy from a watch: the next write of the block needs no
    /// read (a stale copy costs one 409 and a re-read, as any cache entry).
    pub fn prime_block(&self, b: &Block) {
        if let Ok(n) = block_net(b) {
            self.inner.cache.lock().unwrap().blocks.insert(n, b.clone());
        }
    }

    fn forget_block(&self, cidr: &IpNet) {
        self.inner.cache.lock().unwrap().blocks.remove(cidr);
    }

    /// Every existing block, from a metadata LIST (names only).
    async fn block_set(&self) -> Result<BlockSet, IpamError> {
        Ok(self.inner.store.list_block_cidrs().await?.into_iter().collect())
    }

    /// The host's affinities (cached after the first load; `refresh` forces a LIST).
    async fn host_affinities(
        &self,
        host: &str,
        refresh: bool,
    ) -> Result<HashMap<IpNet, Affinity>, IpamError> {
        let known = self.inner.cache.lock().unwrap().affinities.get(host).cloned();
        let first_load = known.is_none();
        if !refresh && let Some(m) = known {
            return Ok(m);
        }
        let list = self.inner.store.list_host_affinities(host, first_load).await?;
        let m: HashMap<IpNet, Affinity> = list
            .into_iter()
            .filter_map(|a| a.spec.cidr.parse().ok().map(|c| (c, a)))
            .collect();
        {
            let mut c = self.inner.cache.lock().unwrap();
            c.affinities.insert(host.into(), m.clone());
            *c.affinity_gen.entry(host.into()).or_default() += 1;
        }
        Ok(m)
    }

    fn affinity_gen(&self, host: &str) -> u64 {
        self.inner
            .cache
            .lock()
            .unwrap()
            .affinity_gen
            .get(host)
            .copied()
            .unwrap_or(0)
    }

    fn remember_affinity(&self, host: &str, cidr: IpNet, a: Option<Affinity>) {
        let mut c = self.inner.cache.lock().unwrap();
        *c.affinity_gen.entry(host.into()).or_default() += 1;
        if let Some(m) = c.affinities.get_mut(host) {
            match a {
                Some(a) => m.insert(cidr, a),
                None => m.remove(&cidr),
            };
        }
    }

    // ------------------------------------------------------------------ handles

    /// Sets the handle's count for `cidr` to `count`: creates the handle for a first entry, drops
    /// the entry at 0 and deletes a handle left empty. The count is what the block holds for the
    /// handle (or will hold once the pending block write lands), so the write is idempotent: a
    /// retry after an answer was lost, or a later ADD into a handle an interrupted one left
    /// over-counted, lands on the same value where an increment would count twice (issue 15).
    /// With `new_handle`, a handle this process does not know must be created, not found.
    async fn handle_set(
        &self,
        handle_id: &str,
        cidr: &IpNet,
        count: u64,
        new_handle: bool,
    ) -> Result<(), IpamError> {
        let key = cidr.to_string();
        let mut checked = false;
        for attempt in 0..RETRIES {
            let cached = self.inner.cache.lock().unwrap().handles.get(handle_id).cloned();
            let res = match cached {
                None if count == 0 => match self.refresh_handle(handle_id).await? {
                    None => return Ok(()),
                    Some(_) => continue,
                },
                None => self
                    .inner
                    .store
                    .create_handle(handle_id, [(key.clone(), count)].into())
                    .await
                    .map(Some),
                Some(mut h) => {
                    if !handle_count::set(&mut h.spec.block, &key, count) {
                        // Already so in the cached copy: believe it once the server agrees.
                        if checked {
                            return Ok(());
                        }
                        checked = true;
                        self.refresh_handle(handle_id).await?;
                        continue;
                    }
                    if h.spec.block.is_empty() {
                        self.inner.store.delete_handle(&h).await.map(|_| None)
                    } else {
                        self.inner.store.update_handle(&h).await.map(Some)
                    }
                }
            };
            match res {
                Ok(Some(h)) => {
                    self.inner
                        .cache
                        .lock()
                        .unwrap()
                        .handles
                        .insert(handle_id.into(), h);
                    return Ok(());
                }
                Ok(None) => {
                    self.inner.cache.lock().unwrap().handles.remove(handle_id);
                    return Ok(());
                }
                Err(StoreError::AlreadyExists { .. }) if new_handle && attempt == 0 => {
                    return Err(IpamError::HandleExists(handle_id.into()));
                }
                Err(StoreError::AlreadyExists { name, .. }) => {
                    if self.refresh_handle(handle_id).await?.is_none()
                        && let Some(other) = self.inner.store.handle_name_holder(handle_id).await?
                        && !names::handle_owned_by(&other, handle_id)
                    {
                        return Err(IpamError::BadRequest(format!(
                            "IPAMHandle {name} already holds handle ID {other:?}, so handle ID {handle_id:?} cannot be stored under it"
                        )));
                    }
                }
                Err(StoreError::Conflict { .. }) => {
                    self.refresh_handle(handle_id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMHandle {}", names::handle_name(handle_id)),
        })
    }

    /// Whether this process last saw the handle existing (its own writes, its own reads).
    fn handle_cached(&self, handle_id: &str) -> bool {
        self.inner.cache.lock().unwrap().handles.contains_key(handle_id)
    }

    async fn refresh_handle(&self, handle_id: &str) -> Result<Option<Handle>, IpamError> {
        let h = self.inner.store.get_handle(handle_id).await?;
        let mut c = self.inner.cache.lock().unwrap();
        match &h {
            Some(h) => c.handles.insert(handle_id.into(), h.clone()),
            None => c.handles.remove(handle_id),
        };
        Ok(h)
    }

    // ------------------------------------------------------------------ block writes

    /// Addresses `handle` holds in the cached copy of the block at `cidr` (0 when none is
    /// cached): the base of the count a handle is preset to before an allocation's block write.
    fn cached_held(&self, cidr: &IpNet, handle: &str) -> u64 {
        let cache = self.inner.cache.lock().unwrap();
        cache
            .blocks
            .get(cidr)
            .map_or(0, |b| blk::ordinals_of_handle(&b.spec, handle).len() as u64)
    }

    /// Allocates up to `n` addresses from one block for one request, in the block's next shared
    /// write ([`batch`]). With `owner` set, only while the block is affine to that host. The
    /// handle's count for the block is set first (to what the block will hold for it) and set to
    /// what the block holds once the batch's write is known not to give the request that much.
    async fn allocate_batched(
        &self,
        cidr: &IpNet,
        n: usize,
        req: &AutoAssignRequest,
        owner: Option<&str>,
    ) -> Result<BlockOutcome, IpamError> {
        let handle = req.handle_id.as_str();
        let held_before = self.cached_held(cidr, handle);
        let preset = held_before + n as u64;
        let mut seat = self.seat(cidr);
        self.handle_set(handle, cidr, preset, req.new_handle).await?;
        let rx = {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.queue(
                &mut seat,
                Queued {
                    handle: handle.to_string(),
                    n,
                    owner: owner.map(str::to_string),
                    attrs: req.attrs.clone(),
                    host: req.hostname.clone(),
                    since: Instant::now(),
                    tx,
                },
            );
            rx
        };
        let placed = rx.await.unwrap_or_else(|_| {
            Err(IpamError::Contention {
                what: format!("IPAMBlock {} (its writer stopped)", names::block_name(cidr)),
            })
        });
        match placed {
            Ok(Placed { grant, held }) => {
                if held != preset {
                    // Fewer than asked (or none): the handle keeps what the block holds. A
                    // failure leaves it over-counted, which a DEL or a later ADD sets right.
                    let fix = self.handle_set(handle, cidr, held, false).await;
                    match (&grant, fix) {
                        (_, Ok(())) => {}
                        (Grant::Granted(_), Err(e)) => {
                            warn!(error = %e, "handle left over-counted after a partial grant")
                        }
                        (_, Err(e)) => return Err(e),
                    }
                }
                Ok(match grant {
                    Grant::Granted(ords) => BlockOutcome::Allocated(
                        ords.iter()
                            .map(|o| {
                                // Calico returns each address with its block's prefix (10.48.0.5/26).
                                IpNet::new(cidr::address_of(cidr, *o), cidr.prefix_len())
                                    .expect("valid prefix")
                            })
                            .collect(),
                    ),
                    Grant::Full => BlockOutcome::Allocated(vec![]),
                    Grant::Gone => BlockOutcome::Gone,
                })
            }
            Err(e) => {
                // A write that may have landed keeps the count, so that the DEL after this failed
                // ADD still visits this block and frees what may be recorded there.
                if !e.may_have_applied()
                    && let Err(u) = self.handle_set(handle, cidr, held_before, false).await
                {
                    warn!(error = %u, "handle left over-counted after a failed block write");
                }
                Err(e)
            }
        }
    }

    /// Takes a seat in the block's next batch: its writer waits for this request's handle write.
    fn seat(&self, cidr: &IpNet) -> Seat<'_> {
        let mut b = self.inner.batches.lock().unwrap();
        b.blocks.entry(*cidr).or_default().inflight += 1;
        Seat {
            ipam: self,
            cidr: *cidr,
            queued: false,
        }
    }

    /// Queues the request for the block's next write; starts the block's writer when none runs.
    fn queue(&self, seat: &mut Seat<'_>, q: Queued) {
        let mut b = self.inner.batches.lock().unwrap();
        let bq = b.blocks.entry(seat.cidr).or_default();
        bq.inflight = bq.inflight.saturating_sub(1);
        seat.queued = true;
        bq.queue.push(q);
        if bq.writer {
            bq.notify.notify_one();
            return;
        }
        bq.writer = true;
        let (ipam, cidr) = (self.clone(), seat.cidr);
        let span = info_span!("ipamblock", name = %names::block_name(&cidr));
        // A task of its own: a request given up by its caller must not stop the others' write.
        tokio::spawn(async move { ipam.block_writer(cidr).await }.instrument(span));
    }

    /// Writes the block's batches until its queue is empty ([`batch::next`] decides when).
    async fn block_writer(&self, cidr: IpNet) {
        loop {
            let (wait, notify) = {
                let mut guard = self.inner.batches.lock().unwrap();
                let b = &mut *guard;
                let Some(bq) = b.blocks.get_mut(&cidr) else { return };
                let expected = bq
                    .queue
                    .first()
                    .and_then(|q| b.load.get_mut(&q.host))
                    .map_or(0, |l| l.expected(Instant::now()));
                let view = batch::QueueView {
                    queued: bq.queue.len(),
                    inflight: bq.inflight,
                    expected,
                    oldest_wait: bq.queue.first().map_or(Duration::ZERO, |q| q.since.elapsed()),
                };
                match batch::next(&view) {
                    batch::Next::Stop => {
                        bq.writer = false;
                        if bq.inflight == 0 {
                            b.blocks.remove(&cidr);
                        }
                        return;
                    }
                    batch::Next::Write => (None, std::mem::take(&mut bq.queue)),
                    batch::Next::Wait(d) => (Some((d, bq.notify.clone())), vec![]),
                }
            };
            match wait {
                Some((d, n)) => {
                    let _ = tokio::time::timeout(d, n.notified()).await;
                }
                None => self.write_batch(&cidr, notify).await,
            }
        }
    }

    /// One compare-and-swap write of the block for the whole batch ([`batch::assign`], again on a
    /// fresh read after a conflict), then each request gets its part.
    async fn write_batch(&self, cidr: &IpNet, batch: Vec<Queued>) {
        debug!(requests = batch.len(), "block write for a batch");
        let wants: Vec<batch::Want> = batch
            .iter()
            .map(|q| batch::Want {
                handle: &q.handle,
                n: q.n,
                owner: q.owner.as_deref(),
                attrs: &q.attrs.0,
            })
            .collect();
        let mut grants: Vec<Grant> = vec![];
        // Reserved ordinals stay free and in place (Calico's semantics).
        let reserved = self.reserved();
        let is_reserved = |o: usize| reserved.contains(cidr::address_of(cidr, o));
        let res = self
            .edit_block_with(cidr, true, |b| {
                grants = batch::assign(Some(&mut b.spec), &wants, &is_reserved);
                Ok(grants
                    .iter()
                    .any(|g| matches!(g, Grant::Granted(_)))
                    .then_some(()))
            })
            .await;
        drop(wants);
        match res {
            Ok((_, after)) => {
                if after.is_none() || grants.len() != batch.len() {
                    // The block is gone.
                    grants = vec![Grant::Gone; batch.len()];
                }
                for (q, grant) in batch.into_iter().zip(grants) {
                    let held = after
                        .as_ref()
                        .map_or(0, |s| blk::ordinals_of_handle(s, &q.handle).len() as u64);
                    let _ = q.tx.send(Ok(Placed { grant, held }));
                }
            }
            Err(e) => {
                for q in batch {
                    let _ = q.tx.send(Err(e.for_waiter()));
                }
            }
        }
    }

    /// Two-phase claim (§2.5): affinity pending → block created → affinity confirmed.
    ///
    /// Layout guard: the block is only created when it overlaps no existing block (`known`: a
    /// listing the caller just made, else one is made here), and after the creation the blocks
    /// are listed again: a racing claim of an overlapping block by a process with another view
    /// of the pools is caught by at least one of the two, which gives its new block back.
    async fn claim_block(
        &self,
        host: &str,
        cidr: &IpNet,
        known: Option<&BlockSet>,
    ) -> Result<Claim, IpamError> {
        let span = info_span!("blockaffinity", name = %names::affinity_name(host, cidr));
        async {
            let listed;
            let existing = match known {
                Some(k) => k,
                None => {
                    listed = self.block_set().await?;
                    &listed
                }
            };
            if let Err(o) = existing.check_new(cidr) {
                warn!(error = %o, "not claiming a block that overlaps another");
                return Ok(Claim::Overlap(o));
            }
            // 1. pending affinity
            let aff = self.pending_affinity(host, cidr).await?;
            // 2. the block: creation is the arbiter between hosts.
            match self.create_affine_block(host, cidr).await? {
                Created::New => self.confirm_guarded(host, cidr, aff).await,
                Created::Ours => {
                    // 3. confirm (the block of an earlier, interrupted claim of this host)
                    let aff = confirm_affinity(&self.inner.store, host, cidr, aff).await?;
                    self.remember_affinity(host, *cidr, Some(aff));
                    Ok(Claim::Ours)
                }
                Created::Theirs => {
                    if let Err(e) = self.inner.store.delete_affinity(&aff).await
                        && !e.is_conflict()
                    {
                        return Err(e.into());
                    }
                    self.remember_affinity(host, *cidr, None);
                    Ok(Claim::Lost)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Step 1 of a claim: the host's affinity for the block, pending (one left confirmed by an
    /// earlier claim is kept as it is).
    async fn pending_affinity(&self, host: &str, cidr: &IpNet) -> Result<Affinity, IpamError> {
        let store = &self.inner.store;
        for _ in 0..RETRIES {
            match store.create_affinity(host, cidr, "pending").await {
                Ok(a) => return Ok(a),
                Err(StoreError::AlreadyExists { .. }) => match store.get_affinity(host, cidr).await? {
                    None => continue,
                    Some(a) if a.spec.is_confirmed() => return Ok(a),
                    Some(mut a) => {
                        a.spec.state = "pending".into();
                        match store.update_affinity(&a).await {
                            Ok(a) => return Ok(a),
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("BlockAffinity {}", names::affinity_name(host, cidr)),
        })
    }

    /// Step 2 of a claim: the block, created affine to the host (the creation is the arbiter
    /// between hosts).
    async fn create_affine_block(&self, host: &str, cidr: &IpNet) -> Result<Created, IpamError> {
        let claim_time = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let spec = blk::new_block(cidr, Some(format!("host:{host}")), now_nanos(), Some(claim_time));
        match self.inner.store.create_block(spec).await {
            Ok(b) => {
                self.remember_block(&b);
                Ok(Created::New)
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(match self.fresh_block(cidr).await? {
                Some(b) if b.spec.host() == Some(host) => Created::Ours,
                // Another host's, or deleted meanwhile: let the caller pick again.
                _ => Created::Theirs,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Step 3 of a claim that created its block, beside the layout guard: the affinity is
    /// confirmed while the blocks are listed again (two round trips at once, not one after the
    /// other). When the listing shows an overlapping block created concurrently, the new block is
    /// given back with its affinity, confirmed or not, exactly as before a confirmation; a failed
    /// listing fails the claim as before (the block and its affinity stay the host's).
    async fn confirm_guarded(&self, host: &str, cidr: &IpNet, aff: Affinity) -> Result<Claim, IpamError> {
        let (listed, confirmed) = tokio::join!(
            self.block_set(),
            confirm_affinity(&self.inner.store, host, cidr, aff)
        );
        let mut now = listed?;
        now.remove(cidr);
        if let Some(other) = now.overlapping(cidr) {
            let o = Overlap {
                block: *cidr,
                existing: other,
            };
            warn!(error = %o, "a block overlapping this new one was created concurrently: giving the new one back");
            self.release_block_affinity(host, cidr, true).await?;
            return Ok(Claim::Overlap(o));
        }
        let aff = confirmed?;
        self.remember_affinity(host, *cidr, Some(aff));
        Ok(Claim::Ours)
    }

    // ------------------------------------------------------------------ auto assign

    /// Calico's AutoAssign: IPv4 first, IPv6 only when IPv4 was served completely.
    pub async fn auto_assign(&self, req: AutoAssignRequest) -> Result<AutoAssignResult, IpamError> {
        if req.handle_id.is_empty() {
            return Err(IpamError::BadRequest("handle_id must not be empty".into()));
        }
        if req.hostname.is_empty() {
            return Err(IpamError::BadRequest("hostname must not be empty".into()));
        }
        let span = info_span!("ipamhandle", name = %names::handle_name(&req.handle_id), node = %req.hostname);
        async {
            // No lock for the whole request: concurrent requests of the host share block writes
            // ([`batch`]); only block claims take the host's lock.
            let _load = self.enter_load(&req.hostname);
            if req.new_handle && self.handle_cached(&req.handle_id) {
                return Err(IpamError::HandleExists(req.handle_id.clone()));
            }
            let mut out = AutoAssignResult::default();
            if req.num_v4 > 0 {
                out.v4 = self
                    .assign_family(&req, Family::V4, req.num_v4, &req.v4_pools)
                    .await?;
            }
            if req.num_v6 > 0 && out.v4.is_complete() {
                out.v6 = self
                    .assign_family(&req, Family::V6, req.num_v6, &req.v6_pools)
                    .await?;
            } else {
                out.v6.requested = req.num_v6;
            }
            Ok(out)
        }
        .instrument(span)
        .await
    }

    fn enter_load(&self, host: &str) -> LoadGuard<'_> {
        let now = Instant::now();
        self.inner
            .batches
            .lock()
            .unwrap()
            .load
            .entry(host.into())
            .or_insert_with(|| batch::Load::new(now))
            .enter(now);
        LoadGuard {
            ipam: self,
            host: host.into(),
        }
    }

    async fn candidate_pools(
        &self,
        req: &AutoAssignRequest,
        fam: Family,
        requested: &[String],
    ) -> Result<Vec<PoolInfo>, IpamError> {
        let since = Instant::now();
        let mut listed = false;
        loop {
            let infos = self.pool_infos_from(requested, since, listed).await?;
            let empty = BTreeMap::new();
            let ns = req.namespace_labels.as_ref().unwrap_or(&empty);
            let needs_labels =
                requested.is_empty() && infos.iter().any(|p| p.family() == fam && p.uses_labels());
            let node_labels = match (&req.node_labels, needs_labels) {
                (Some(l), _) => l.clone(),
                (None, true) => self.node_labels(&req.hostname, listed).await?,
                (None, false) => BTreeMap::new(),
            };
            let chosen = allocator::select_pools(
                &infos,
                &PoolQuery {
                    family: fam,
                    hostname: &req.hostname,
                    requested,
                    node_labels: &node_labels,
                    namespace_labels: ns,
                    intended_use: req.intended_use,
                },
            );
            // The second look reads pools and the node's labels from the API: either may be
            // newer than the caches (a pool just created, a node just labelled).
            match chosen {
                Err(IpamError::NoPools(_)) if !listed => listed = true,
                Err(IpamError::BadRequest(_)) if !listed && !requested.is_empty() => listed = true,
                other => return other,
            }
        }
    }

    async fn assign_family(
        &self,
        req: &AutoAssignRequest,
        fam: Family,
        n: usize,
        requested: &[String],
    ) -> Result<FamilyResult, IpamError> {
        let pools = self.candidate_pools(req, fam, requested).await?;
        let cfg = self.config();
        let host = req.hostname.as_str();
        let max_blocks = allocator::max_blocks(&cfg, req.max_blocks_per_host);
        let mut got: Vec<IpNet> = Vec::new();
        let mut no_free_blocks = false;
        let mut full: HashSet<IpNet> = HashSet::new();
        let mut shortfall = None;
        for _round in 0..RETRIES * 4 {
            if got.len() >= n {
                break;
            }
            let seen = self.affinity_gen(host);
            let affs = self.host_affinities(host, false).await?;
            let owned = allocator::owned_blocks(&pools, affs.iter().map(|(c, a)| (c, a.spec.state.as_str())));
            let with_space = self
                .first_with_space(host, &owned, &affs, &mut full, seen)
                .await?;
            let state = LoopState {
                affine_with_space: with_space,
                owned: self.still_owned(host, &owned),
                max_blocks,
                auto_allocate: cfg.auto_allocate_blocks,
                strict_affinity: cfg.strict_affinity,
                no_free_blocks,
                pools: pools.iter().map(|p| p.cidr).collect(),
            };
            match allocator::next_step(&state) {
                Step::Use(c) => {
                    let own = OwnUse {
                        pools: &pools,
                        max_blocks,
                    };
                    self.use_own_block(req, &c, n, &own, &mut got, &mut full).await?;
                }
                Step::Claim => {
                    // One claim at a time per host in this process; a request that waited for
                    // the lock looks again when another one changed the host's blocks meanwhile.
                    let lock = self.host_lock(host);
                    let _claiming = lock.lock().await;
                    if self.affinity_gen(host) != seen {
                        continue;
                    }
                    match self.claim_next_block(host, &pools, &affs, &full).await? {
                        NextClaim::NoFreeBlock => no_free_blocks = true,
                        NextClaim::NotOurs => tokio::time::sleep(jitter()).await,
                        NextClaim::Found | NextClaim::Claimed(_) => {}
                    }
                }
                Step::Borrow => {
                    self.borrow(req, &pools, n, &mut got).await?;
                    if got.len() < n {
                        shortfall = Some(Shortfall::PoolsExhausted { pools: state.pools });
                    }
                    break;
                }
                Step::Stop(s) => {
                    shortfall = Some(s);
                    break;
                }
            }
        }
        if got.len() < n && shortfall.is_none() {
            return Err(IpamError::Contention {
                what: format!("auto-assign for {host}"),
            });
        }
        Ok(FamilyResult {
            ips: got,
            requested: n,
            shortfall,
        })
    }

    /// Allocates what is still missing of `n` from the host's own block `c`: a block that gave
    /// nothing is marked full, one gone is forgotten (the affinities are listed again); after an
    /// allocation the host's next block may be claimed ahead ([`Self::claim_ahead`]).
    async fn use_own_block(
        &self,
        req: &AutoAssignRequest,
        c: &IpNet,
        n: usize,
        own: &OwnUse<'_>,
        got: &mut Vec<IpNet>,
        full: &mut HashSet<IpNet>,
    ) -> Result<(), IpamError> {
        let host = req.hostname.as_str();
        match self.allocate_batched(c, n - got.len(), req, Some(host)).await? {
            BlockOutcome::Allocated(ips) if ips.is_empty() => {
                full.insert(*c);
            }
            BlockOutcome::Allocated(ips) => {
                got.extend(ips);
                self.claim_ahead(host, own.pools, own.max_blocks);
            }
            BlockOutcome::Gone => {
                self.remember_affinity(host, *c, None);
                self.host_affinities(host, true).await?;
            }
        }
        Ok(())
    }

    /// The first of the host's own blocks (`owned`, from its affinities `affs`) with a free
    /// address; blocks found full are skipped and added to `full`. A block whose free addresses
    /// the requests already waiting for its next write take up is passed over for a later one
    /// with room (used only when there is none): those requests would fill it and this one would
    /// get nothing from the write, then go to the next block anyway (two more handle writes). On
    /// the way a stale affinity (the block is affine elsewhere) is removed, and an interrupted
    /// claim (an affinity without its block) is finished, after which `None` makes the caller
    /// look again.
    async fn first_with_space(
        &self,
        host: &str,
        owned: &[IpNet],
        affs: &HashMap<IpNet, Affinity>,
        full: &mut HashSet<IpNet>,
        seen: u64,
    ) -> Result<Option<IpNet>, IpamError> {
        let mut taken_up = None;
        for c in owned {
            if full.contains(c) {
                continue;
            }
            let b = self.block(c).await?;
            match allocator::own_block(b.as_ref().map(|b| &b.spec), host) {
                OwnBlock::HasSpace => {
                    let free = b.as_ref().map_or(0, |b| blk::free_count(&b.spec));
                    if self.waiting_for(c) < free {
                        return Ok(Some(*c));
                    }
                    taken_up.get_or_insert(*c);
                }
                OwnBlock::Full => {
                    full.insert(*c);
                }
                OwnBlock::AffineElsewhere => {
                    // The block is authoritative: this affinity is stale.
                    warn!(block = %c, host, "removing stale BlockAffinity: the block is affine elsewhere");
                    self.drop_affinity(host, c, affs.get(c)).await?;
                }
                OwnBlock::Missing => {
                    self.finish_interrupted_claim(host, c, affs.get(c), seen).await?;
                    return Ok(None);
                }
            }
        }
        Ok(taken_up)
    }

    /// Addresses the requests queued for the block's next write ask for, plus one for each
    /// request still writing its handle before it queues.
    fn waiting_for(&self, cidr: &IpNet) -> usize {
        let b = self.inner.batches.lock().unwrap();
        b.blocks
            .get(cidr)
            .map_or(0, |q| q.inflight + q.queue.iter().map(|q| q.n).sum::<usize>())
    }

    /// Deletes the host's affinity `aff` for `cidr` (gone already is fine) and forgets it.
    async fn drop_affinity(&self, host: &str, cidr: &IpNet, aff: Option<&Affinity>) -> Result<(), IpamError> {
        if let Some(a) = aff
            && let Err(e) = self.inner.store.delete_affinity(a).await
            && !e.is_conflict()
        {
            return Err(e.into());
        }
        self.remember_affinity(host, *cidr, None);
        Ok(())
    }

    /// An affinity without its block: an interrupted claim (or one of another process in
    /// progress) is finished, unless a request of this process changed the host's blocks while
    /// this one waited for the claim lock (`seen`: the generation it looked at).
    async fn finish_interrupted_claim(
        &self,
        host: &str,
        cidr: &IpNet,
        aff: Option<&Affinity>,
        seen: u64,
    ) -> Result<(), IpamError> {
        let lock = self.host_lock(host);
        let _claiming = lock.lock().await;
        if self.affinity_gen(host) != seen {
            return Ok(());
        }
        match self.claim_block(host, cidr, None).await? {
            Claim::Ours => Ok(()),
            Claim::Lost => {
                self.remember_affinity(host, *cidr, None);
                Ok(())
            }
            // The block can never be created: drop the claim's leftover.
            Claim::Overlap(_) => self.drop_affinity(host, cidr, aff).await,
        }
    }

    /// How many of `owned` the host still has an affinity for in the cache (some may have been
    /// dropped while looking for space).
    fn still_owned(&self, host: &str, owned: &[IpNet]) -> usize {
        let c = self.inner.cache.lock().unwrap();
        let Some(m) = c.affinities.get(host) else { return 0 };
        owned.iter().filter(|b| m.contains_key(b)).count()
    }

    /// Claims the host's next block in `pools`; the caller holds the host's claim lock. `affs`:
    /// the affinities the caller looked at; `full`: its blocks found full.
    ///
    /// Another process may have claimed a block for this host: the blocks are listed first, then
    /// the host's affinities. A claim creates its affinity before its block, so a block in the
    /// listing claimed for this host shows up among the affinities (then nothing is claimed:
    /// [`NextClaim::Found`]), and one created after the listing is where this claim goes too (the
    /// pick is deterministic), so both processes share one block.
    async fn claim_next_block(
        &self,
        host: &str,
        pools: &[PoolInfo],
        affs: &HashMap<IpNet, Affinity>,
        full: &HashSet<IpNet>,
    ) -> Result<NextClaim, IpamError> {
        let t = Instant::now();
        let existing = match self.take_warm_blocks(host) {
            Some(b) => b,
            None => self.block_set().await?,
        };
        let t_list = t.elapsed();
        let fresh = self.host_affinities(host, true).await?;
        debug!(blocks_list = ?t_list, affinities_list = ?(t.elapsed() - t_list), "listed before claiming");
        let found = allocator::owned_blocks(pools, fresh.iter().map(|(c, a)| (c, a.spec.state.as_str())))
            .into_iter()
            .any(|c| !affs.contains_key(&c) && !full.contains(&c));
        if found {
            return Ok(NextClaim::Found);
        }
        let Some(c) = allocator::pick_free_block(pools, host, &existing, &self.reserved(), MAX_PROBE) else {
            return Ok(NextClaim::NoFreeBlock);
        };
        debug!(block = %c, "claiming block");
        Ok(match self.claim_block(host, &c, Some(&existing)).await? {
            Claim::Ours => NextClaim::Claimed(c),
            Claim::Lost | Claim::Overlap(_) => NextClaim::NotOurs,
        })
    }

    /// Borrows single addresses from other hosts' blocks of `pools` (in the host's claim order)
    /// until `got` holds `n`.
    async fn borrow(
        &self,
        req: &AutoAssignRequest,
        pools: &[PoolInfo],
        n: usize,
        got: &mut Vec<IpNet>,
    ) -> Result<(), IpamError> {
        let existing: Vec<IpNet> = self.block_set().await?.iter().copied().collect();
        for p in pools {
            for c in allocator::borrow_order(p, &req.hostname, &existing) {
                if got.len() >= n {
                    return Ok(());
                }
                if let BlockOutcome::Allocated(ips) =
                    self.allocate_batched(&c, n - got.len(), req, None).await?
                {
                    got.extend(ips);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ claiming ahead

    /// After an allocation, on a server with [`IpamOptions::claim_ahead`]: when the host's free
    /// addresses in `pools` fell under the watermark of its recent load and a request finding
    /// none would claim ([`allocator::claim_ahead`]), the next block is claimed in the
    /// background, under the host's claim lock as a request's claim, one at a time per host.
    /// Decided from the caches alone: no read.
    fn claim_ahead(&self, host: &str, pools: &[PoolInfo], max_blocks: u32) {
        if !self.inner.opts.claim_ahead {
            return;
        }
        let watermark = {
            let mut b = self.inner.batches.lock().unwrap();
            let expected = b.load.get_mut(host).map_or(0, |l| l.expected(Instant::now()));
            batch::claim_ahead_watermark(expected)
        };
        if !self.wants_block_ahead(host, pools, max_blocks, watermark)
            || !self
                .inner
                .cache
                .lock()
                .unwrap()
                .claiming_ahead
                .insert(host.to_string())
        {
            return;
        }
        let (ipam, host, pools) = (self.clone(), host.to_string(), pools.to_vec());
        let span = info_span!("claim_ahead", node = %host, watermark);
        tokio::spawn(
            async move {
                match ipam.claim_ahead_now(&host, &pools, max_blocks, watermark).await {
                    Ok(Some(c)) => debug!(block = %c, "claimed the next block ahead"),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "claiming the next block ahead failed (the request that needs it claims it)")
                    }
                }
                ipam.inner.cache.lock().unwrap().claiming_ahead.remove(&host);
            }
            .instrument(span),
        );
    }

    /// Whether the host's next block in `pools` is due ([`allocator::claim_ahead`]), from the
    /// cached affinities and blocks (false when the cache cannot tell).
    fn wants_block_ahead(&self, host: &str, pools: &[PoolInfo], max_blocks: u32, watermark: usize) -> bool {
        let auto_allocate = self.config().auto_allocate_blocks;
        let Some((free, owned)) = self.cached_own_space(host, pools) else {
            return false;
        };
        allocator::claim_ahead(&AheadState {
            free,
            watermark,
            owned,
            max_blocks,
            auto_allocate,
        })
    }

    /// Free addresses in the host's own blocks of `pools` and how many those blocks are, from the
    /// caches (`None`: affinities not loaded, or a block never read).
    fn cached_own_space(&self, host: &str, pools: &[PoolInfo]) -> Option<(usize, usize)> {
        let c = self.inner.cache.lock().unwrap();
        let affs = c.affinities.get(host)?;
        let owned = allocator::owned_blocks(pools, affs.iter().map(|(c, a)| (c, a.spec.state.as_str())));
        let mut free = 0;
        for b in &owned {
            let spec = &c.blocks.get(b)?.spec;
            if spec.host() == Some(host) {
                free += blk::free_count(spec);
            }
        }
        Some((free, owned.len()))
    }

    /// Takes the host's claim lock and claims its next block in `pools` when it is (still) due:
    /// a request may have claimed one while this waited for the lock.
    async fn claim_ahead_now(
        &self,
        host: &str,
        pools: &[PoolInfo],
        max_blocks: u32,
        watermark: usize,
    ) -> Result<Option<IpNet>, IpamError> {
        let lock = self.host_lock(host);
        let _claiming = lock.lock().await;
        let affs = self.host_affinities(host, false).await?;
        for c in allocator::owned_blocks(pools, affs.iter().map(|(c, a)| (c, a.spec.state.as_str()))) {
            self.block(&c).await?;
        }
        if !self.wants_block_ahead(host, pools, max_blocks, watermark) {
            return Ok(None);
        }
        Ok(
            match self.claim_next_block(host, pools, &affs, &HashSet::new()).await? {
                NextClaim::Claimed(c) => Some(c),
                NextClaim::Found | NextClaim::NoFreeBlock | NextClaim::NotOurs => None,
            },
        )
    }

    /// Claims the host's first block of each address family before its first pod asks (a node
    /// agent starting): the block a pod without pool annotations would claim, in the pools that
    /// select the node, only when the host has no free address there and a request would claim
    /// (autoAllocateBlocks on, under maxBlocksPerHost). Calico's calico-node likewise claims a
    /// block when it starts, for its tunnel address. Returns the blocks claimed.
    pub async fn claim_first_blocks(&self, host: &str) -> Result<Vec<IpNet>, IpamError> {
        let max_blocks = allocator::max_blocks(&self.config(), None);
        let req = AutoAssignRequest::new("", host);
        let mut claimed = Vec::new();
        for fam in [Family::V4, Family::V6] {
            let any = self
                .pool_infos(&[])
                .await?
                .iter()
                .any(|p| p.family() == fam && p.is_enabled());
            if !any {
                continue;
            }
            let pools = match self.candidate_pools(&req, fam, &[]).await {
                Ok(p) => p,
                Err(IpamError::NoPools(_)) => continue,
                Err(e) => return Err(e),
            };
            claimed.extend(self.claim_ahead_now(host, &pools, max_blocks, 1).await?);
        }
        Ok(claimed)
    }

    // ------------------------------------------------------------------ assign one address

    /// Calico's AssignIP: one specific address (`ipAddrs`). Claims the block for the host when
    /// it does not exist; with strictAffinity an address in another host's block is refused.
    pub async fn assign_ip(&self, req: AssignIpRequest) -> Result<(), IpamError> {
        self.assign_ip_with(req, false).await
    }

    /// [`assign_ip`](Self::assign_ip); with `new_handle` as in [`AutoAssignRequest::new_handle`].
    pub async fn assign_ip_with(&self, req: AssignIpRequest, new_handle: bool) -> Result<(), IpamError> {
        let span = info_span!("ipamhandle", name = %names::handle_name(&req.handle_id), node = %req.hostname, ip = %req.ip);
        async {
            let (cidr, mut listed) = self.block_for_ip(&req).await?;
            let lock = self.host_lock(&req.hostname);
            let _guard = lock.lock().await;
            if new_handle && self.handle_cached(&req.handle_id) {
                return Err(IpamError::HandleExists(req.handle_id.clone()));
            }
            // A missing block is claimed for the host first (a lost race leaves another host's).
            for _ in 0..RETRIES {
                if self.block(&cidr).await?.is_some() {
                    break;
                }
                if let Claim::Overlap(o) = self
                    .claim_block(&req.hostname, &cidr, listed.take().as_ref())
                    .await?
                {
                    return Err(o.into());
                }
            }
            self.assign_in_block(&req, &cidr, new_handle).await
        }
        .instrument(span)
        .await
    }

    /// The block an explicitly requested address belongs to: the pool's block for it unless the
    /// pool's block size changed under its blocks. Only when the pool's block is missing are the
    /// blocks listed, to find an older one (or to refuse an overlap); that listing is returned
    /// for the first claim (a retry after a lost race lists afresh).
    async fn block_for_ip(&self, req: &AssignIpRequest) -> Result<(IpNet, Option<BlockSet>), IpamError> {
        let since = Instant::now();
        let mut infos = self.pool_infos(&[]).await?;
        if !infos.iter().any(|p| p.is_enabled() && p.cidr.contains(&req.ip)) {
            // A pool created a moment ago may not have reached the watch yet: ask the API.
            infos = self.pool_infos_from(&[], since, true).await?;
        }
        let pool = infos
            .iter()
            .find(|p| p.is_enabled() && p.cidr.contains(&req.ip))
            .ok_or(IpamError::NotInPool(req.ip))?;
        if !pool.uses.contains(&req.intended_use) {
            return Err(IpamError::Pool {
                pool: pool.name.clone(),
                reason: format!(
                    "IP address {} is in IP pool {:?}, which is not allowed for use {:?} (spec.allowedUses: {:?})",
                    req.ip, pool.name, req.intended_use, pool.uses
                ),
            });
        }
        let cidr = pool.block_of(req.ip);
        if self.block(&cidr).await?.is_some() {
            return Ok((cidr, None));
        }
        let set = self.block_set().await?;
        let cidr = match set.block_for_ip(req.ip, pool.block_size)? {
            BlockForIp::Existing(b) | BlockForIp::New(b) => b,
        };
        Ok((cidr, Some(set)))
    }

    /// Records the explicitly requested address in its (existing) block: as in
    /// [`Self::allocate_batched`], the handle first, counting what the block will hold for it,
    /// then set to what the block holds when the write did not give it the address.
    async fn assign_in_block(
        &self,
        req: &AssignIpRequest,
        cidr: &IpNet,
        new_handle: bool,
    ) -> Result<(), IpamError> {
        let cidr = *cidr;
        let ordinal = cidr::ordinal_of(&cidr, req.ip).expect("ip is inside its block");
        let strict = self.config().strict_affinity;
        let handle = req.handle_id.as_str();
        let held_before = self.cached_held(&cidr, handle);
        let preset = held_before + 1;
        self.handle_set(handle, &cidr, preset, new_handle).await?;
        let mut refused = None;
        let res = self
            .edit_block(&cidr, |b| {
                refused = assign_ordinal(&mut b.spec, req, &cidr, ordinal, strict).err();
                Ok(refused.is_none().then_some(()))
            })
            .await;
        let (result, held) = match res {
            Ok((Some(()), after)) => (
                Ok(()),
                after
                    .as_ref()
                    .map(|s| blk::ordinals_of_handle(s, handle).len() as u64),
            ),
            Ok((None, spec)) => (
                Err(refused.unwrap_or_else(|| IpamError::Contention {
                    what: format!(
                        "IPAMBlock {} (deleted while assigning {})",
                        names::block_name(&cidr),
                        req.ip
                    ),
                })),
                Some(
                    spec.as_ref()
                        .map_or(0, |s| blk::ordinals_of_handle(s, handle).len() as u64),
                ),
            ),
            // A write that may have landed keeps its count (the DEL after the failed ADD
            // then still visits this block).
            Err(e) if e.may_have_applied() => (Err(e), None),
            Err(e) => (Err(e), Some(held_before)),
        };
        if let Some(held) = held.filter(|h| *h != preset) {
            // When this fails too, the handle stays over-counted (harmless: a DEL drops the
            // entry, a later allocation sets it right) and the first error is the one to report.
            if let Err(e) = self.handle_set(handle, &cidr, held, false).await {
                match result {
                    Ok(()) => warn!(error = %e, "handle count not set after an assignment"),
                    Err(_) => warn!(error = %e, "handle left over-counted after a failed block write"),
                }
            }
        }
        result
    }

    // ------------------------------------------------------------------ release

    /// Releases everything a handle holds and deletes the handle. Idempotent: a handle that does
    /// not exist is `Ok(vec![])`. Returns the addresses released.
    ///
    /// A handle this process wrote last is used from the cache (no read): the block writes are
    /// guarded by the block's own state, and the handle's deletion by its resourceVersion, so a
    /// stale entry costs a 409 and a re-read, after which the remaining entries are released.
    pub async fn release_by_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let name = names::handle_name(handle_id);
        let span = info_span!("ipamhandle", name = %name);
        async {
            let mut released = Vec::new();
            let mut h = self.inner.cache.lock().unwrap().handles.get(handle_id).cloned();
            for _ in 0..RETRIES {
                let cur = match h.take() {
                    Some(h) => h,
                    None => match self.refresh_handle(handle_id).await? {
                        Some(h) => h,
                        None => return Ok(released),
                    },
                };
                for key in cur.spec.block.keys() {
                    let Ok(cidr) = cidr::parse_masked(key) else {
                        warn!(block = %key, "IPAMHandle {}: spec.block has a key that is not a CIDR", cur.metadata.name.as_deref().unwrap_or(""));
                        continue;
                    };
                    let (ords, _) = self
                        .release_in_block(&cidr, |spec| blk::ordinals_of_handle(spec, handle_id).into_iter().map(|o| blk::GuardedRelease { ordinal: o, handle_id: None, sequence_number: None }).collect())
                        .await?;
                    released.extend(ords.iter().map(|o| cidr::address_of(&cidr, *o)));
                    // Drop the whole entry even if the block no longer held the handle's addresses
                    // (Calico leaves such a handle over-counted).
                    self.handle_set(handle_id, &cidr, 0, false).await?;
                }
                // Deleted (gone from the cache) unless entries the cached copy lacked remain.
                match self.inner.cache.lock().unwrap().handles.get(handle_id) {
                    None => return Ok(released),
                    Some(rest) if rest.spec.block.is_empty() => return Ok(released),
                    Some(rest) => h = Some(rest.clone()),
                }
            }
            Err(IpamError::Contention { what: format!("IPAMHandle {name}") })
        }
        .instrument(span)
        .await
    }

    /// One guarded release in one block: a single CAS write (or a delete when the block becomes
    /// empty and has no affinity). `select` computes the releases from the current block state on
    /// every attempt. Returns the ordinals released and the block as it then is (`None`: gone).
    /// Handles are not touched here.
    async fn release_in_block(
        &self,
        cidr: &IpNet,
        select: impl Fn(&crate::api::IPAMBlockSpec) -> Vec<blk::GuardedRelease>,
    ) -> Result<(Vec<usize>, Option<crate::api::IPAMBlockSpec>), IpamError> {
        let (done, after) = self
            .edit_block(cidr, |b| {
                let spec = &mut b.spec;
                let reqs = select(spec);
                if reqs.is_empty() {
                    return Ok(None);
                }
                let (done, _) =
                    blk::release_guarded(spec, &reqs).map_err(|e| IpamError::ReleaseConflict {
                        block: *cidr,
                        reason: e.to_string(),
                    })?;
                Ok((!done.is_empty()).then_some(done))
            })
            .await?;
        Ok((done.unwrap_or_default(), after))
    }

    /// The CAS loop of every release-side block write: `edit` changes the block read (its spec,
    /// or its annotations) and returns
    /// `Some` when there is something to write (it runs again on a fresh read after a conflict).
    /// A block left empty and without affinity is deleted (Calico's rule: whoever empties an
    /// orphan block deletes it); an empty affine block gets `ensureConsistentAffinity`. Returns
    /// what `edit` returned for the write that landed (`None`: nothing to do, judged on a fresh
    /// read) and the block as it then is (`None`: gone).
    async fn edit_block<T>(
        &self,
        cidr: &IpNet,
        edit: impl FnMut(&mut Block) -> Result<Option<T>, IpamError>,
    ) -> Result<(Option<T>, Option<crate::api::IPAMBlockSpec>), IpamError> {
        self.edit_block_with(cidr, false, edit).await
    }

    /// [`Self::edit_block`]; with `trust_cache`, "nothing to do" (or "no such block") judged on
    /// the cached copy is believed: allocation's "full" or "affine elsewhere" from a stale copy
    /// only sends the request to another block, where a release's would leak an address.
    async fn edit_block_with<T>(
        &self,
        cidr: &IpNet,
        trust_cache: bool,
        mut edit: impl FnMut(&mut Block) -> Result<Option<T>, IpamError>,
    ) -> Result<(Option<T>, Option<crate::api::IPAMBlockSpec>), IpamError> {
        let span = info_span!("ipamblock", name = %names::block_name(cidr));
        async {
            let lock = self.block_lock(cidr);
            let _guard = lock.lock().await;
            let mut fresh = false;
            for _ in 0..RETRIES {
                let cached =
                    !trust_cache && !fresh && self.inner.cache.lock().unwrap().blocks.contains_key(cidr);
                let b = if fresh {
                    self.fresh_block(cidr).await?
                } else {
                    self.block(cidr).await?
                };
                fresh = true;
                // "Nothing to do" is only believed from a fresh read: a cached copy can predate a
                // write whose answer was lost (a failed ADD that did allocate).
                let Some(mut b) = b else {
                    if cached {
                        continue;
                    }
                    return Ok((None, None));
                };
                let Some(out) = edit(&mut b)? else {
                    if cached {
                        continue;
                    }
                    return Ok((None, Some(b.spec)));
                };
                blk::prepare_write(&mut b.spec);
                let res = if blk::is_empty(&b.spec) && b.spec.affinity.is_none() {
                    self.inner.store.delete_block(&b).await.map(|_| None)
                } else {
                    self.inner.store.update_block(&b).await.map(Some)
                };
                match res {
                    Ok(Some(new)) => {
                        self.remember_block(&new);
                        if blk::is_empty(&new.spec)
                            && let Some(host) = new.spec.host()
                        {
                            self.ensure_consistent_affinity(host, cidr).await?;
                        }
                        return Ok((Some(out), Some(new.spec)));
                    }
                    Ok(None) => {
                        self.forget_block(cidr);
                        return Ok((Some(out), None));
                    }
                    Err(StoreError::Conflict { .. }) => {
                        self.forget_block(cidr);
                        tokio::time::sleep(jitter()).await;
                    }
                    Err(e) => {
                        self.forget_block(cidr);
                        return Err(e.into());
                    }
                }
            }
            Err(IpamError::Contention {
                what: format!("IPAMBlock {}", names::block_name(cidr)),
            })
        }
        .instrument(span)
        .await
    }

    /// The GC's write to one block ([`blk::apply_gc_edit`]): frees, stamps and un-stamps only the
    /// allocations that still match, in ONE block write (re-read and re-checked on a conflict),
    /// then sets each freed handle's count for the block to what the block still holds for it
    /// (handles concurrently: they are independent objects). A handle whose last entry goes is
    /// deleted. Returns the ordinals freed with the handle that held each, and the block after;
    /// a handle write that failed does not make the call fail (the block write has landed).
    pub async fn release_guarded(&self, cidr: &IpNet, edit: &blk::GcEdit) -> Result<GcReleased, IpamError> {
        let mut done = self.release_guarded_block(cidr, edit).await?;
        let handles: std::collections::BTreeSet<&str> = done.freed.iter().map(|(_, h)| h.as_str()).collect();
        // Collected first: a lazy iterator of borrowing futures is not provably Send.
        let sets: Vec<_> = handles
            .into_iter()
            .map(|h| {
                let left = done.left_for(h);
                async move { (h, self.set_released_handle(cidr, h, left).await) }
            })
            .collect();
        let mut sets = futures::stream::iter(sets).buffer_unordered(HANDLE_CONCURRENCY);
        let mut over_counted = Vec::new();
        while let Some((h, r)) = sets.next().await {
            if r.is_err() {
                over_counted.push(h.to_string());
            }
        }
        drop(sets);
        done.over_counted = over_counted;
        Ok(done)
    }

    /// The block write of [`Self::release_guarded`] alone: the addresses are free once it
    /// returns. The caller then sets the freed handles with [`Self::set_released_handle`] (a
    /// large GC pass frees every block first and sets all handles after, side by side).
    pub async fn release_guarded_block(
        &self,
        cidr: &IpNet,
        edit: &blk::GcEdit,
    ) -> Result<GcReleased, IpamError> {
        let mut holders: Vec<(usize, String)> = Vec::new();
        let (freed, after) = self
            .edit_block(cidr, |b| {
                let spec = &mut b.spec;
                holders = edit
                    .free
                    .iter()
                    .filter_map(|r| Some((r.ordinal, blk::handle_of(spec, r.ordinal)?.to_string())))
                    .collect();
                let (freed, changed) = blk::apply_gc_edit(spec, edit);
                Ok(changed.then_some(freed))
            })
            .await?;
        let freed: Vec<(usize, String)> = freed
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| holders.iter().find(|(h, _)| *h == o).cloned())
            .collect();
        Ok(GcReleased {
            freed,
            after,
            over_counted: vec![],
        })
    }

    /// Sets a handle's count for `cidr` to `left` (what the block still holds for it after a GC
    /// release: [`GcReleased::left_for`]); deletes the handle when that was its last entry. A
    /// failure is logged: the handle stays over-counted until the orphan-handle GC takes it.
    pub async fn set_released_handle(
        &self,
        cidr: &IpNet,
        handle_id: &str,
        left: u64,
    ) -> Result<(), IpamError> {
        let r = self.handle_set(handle_id, cidr, left, false).await;
        if let Err(e) = &r {
            // The addresses are free either way; the handle is an orphan for the GC to take.
            warn!(block = %cidr, handle = handle_id, error = %e, "IPAMHandle count not set after a release (left over-counted)");
        }
        r
    }

    /// Seeds the handle cache with a copy from a watch, where this process has none: the first
    /// write then needs no read (a stale copy costs one 409 and a re-read, as any cache entry).
    pub fn prime_handle(&self, h: Handle) {
        let mut c = self.inner.cache.lock().unwrap();
        c.handles.entry(h.spec.handle_id.clone()).or_insert(h);
    }

    /// Deletes an empty block: an affine one with its affinity ([`Self::release_block_affinity`]
    /// with `require_empty`), an unaffine one by itself. Returns false when the block is not
    /// empty any more (or already gone).
    pub async fn release_empty_block(&self, cidr: &IpNet, host: Option<&str>) -> Result<bool, IpamError> {
        if let Some(h) = host {
            return self.release_block_affinity(h, cidr, true).await;
        }
        // An edit that changes nothing: the write deletes the block when it is empty and unaffine.
        let (done, after) = self
            .edit_block(cidr, |b| {
                Ok((blk::is_empty(&b.spec) && b.spec.affinity.is_none()).then_some(()))
            })
            .await?;
        Ok(done.is_some() && after.is_none())
    }

    /// Sets one annotation of a block to what `value` computes from the block as read (`None`:
    /// leave the block alone), in the engine's CAS loop. Returns whether it was written.
    pub async fn annotate_block(
        &self,
        cidr: &IpNet,
        key: &str,
        value: impl Fn(&crate::api::IPAMBlockSpec) -> Option<String>,
    ) -> Result<bool, IpamError> {
        let (done, _) = self
            .edit_block(cidr, |b| {
                let Some(v) = value(&b.spec) else { return Ok(None) };
                let ann = b.metadata.annotations.get_or_insert_with(Default::default);
                if ann.get(key) == Some(&v) {
                    return Ok(None);
                }
                ann.insert(key.to_string(), v);
                Ok(Some(()))
            })
            .await?;
        Ok(done.is_some())
    }

    /// Deletes a handle no block holds an address of: each block its `spec.block` names is read
    /// afresh first, and the delete is a CAS on the handle as read. Returns whether it went.
    pub async fn delete_unreferenced_handle(&self, handle_id: &str) -> Result<bool, IpamError> {
        for _ in 0..RETRIES {
            let Some(h) = self.refresh_handle(handle_id).await? else {
                return Ok(false);
            };
            for key in h.spec.block.keys() {
                let Ok(c) = cidr::parse_masked(key) else { continue };
                if let Some(b) = self.fresh_block(&c).await?
                    && !blk::ordinals_of_handle(&b.spec, handle_id).is_empty()
                {
                    return Ok(false);
                }
            }
            match self.inner.store.delete_handle(&h).await {
                Ok(()) => {
                    self.inner.cache.lock().unwrap().handles.remove(handle_id);
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMHandle {}", names::handle_name(handle_id)),
        })
    }

    /// Calico's `ensureConsistentAffinity`: a block that just became empty keeps its affinity only
    /// while an enabled pool holding it still selects the host (a re-labelled node or a pool
    /// whose nodeSelector changed gives its empty blocks back).
    async fn ensure_consistent_affinity(&self, host: &str, cidr: &IpNet) -> Result<(), IpamError> {
        let infos = self.pool_infos(&[]).await?;
        let pool = infos
            .iter()
            .find(|p| p.is_enabled() && p.cidr.contains(&cidr.network()));
        let keep = match pool {
            None => false,
            Some(p) if !p.uses_labels() => p.node_selector.matches(&BTreeMap::new()),
            Some(p) => match self.inner.store.node_labels(host).await? {
                Some(l) => p.node_selector.matches(&l),
                // The node is gone: that is the GC's business (it also checks grace periods).
                None => true,
            },
        };
        if !keep {
            debug!(block = %cidr, host, "pool no longer selects the host: releasing the empty block");
            self.release_block_affinity(host, cidr, true).await?;
        }
        Ok(())
    }

    /// For GC: releases specific allocations of ONE block in one guarded write. Each entry is
    /// checked against the block (handle and `sequenceNumberForAllocation`); if any no longer
    /// matches (the address was re-allocated) nothing is released and `ReleaseConflict` is
    /// returned. Handles are decremented after the block write.
    pub async fn release_block_allocations(
        &self,
        block: &IpNet,
        releases: &[ReleaseOptions],
    ) -> Result<ReleaseOutcome, IpamError> {
        let mut reqs = Vec::new();
        let mut out = ReleaseOutcome::default();
        for r in releases {
            let Some(ordinal) = cidr::ordinal_of(block, r.ip) else {
                return Err(IpamError::BadRequest(format!(
                    "{} is not inside block {block}",
                    r.ip
                )));
            };
            reqs.push(blk::GuardedRelease {
                ordinal,
                handle_id: r.handle_id.clone(),
                sequence_number: r.sequence_number,
            });
        }
        // Remember which handle held each ordinal, from the state the release is computed on.
        let holders: Mutex<HashMap<usize, Option<String>>> = Mutex::new(HashMap::new());
        let (done, after) = self
            .release_in_block(block, |spec| {
                let mut h = holders.lock().unwrap();
                h.clear();
                for r in &reqs {
                    h.insert(r.ordinal, blk::handle_of(spec, r.ordinal).map(str::to_string));
                }
                reqs.clone()
            })
            .await?;
        let holders = holders.into_inner().unwrap();
        let mut per_handle: BTreeMap<String, u64> = BTreeMap::new();
        for o in &done {
            if let Some(Some(h)) = holders.get(o) {
                *per_handle.entry(h.clone()).or_default() += 1;
            }
            out.released.push(cidr::address_of(block, *o));
        }
        for r in releases {
            if !out.released.contains(&r.ip) {
                out.unallocated.push(r.ip);
            }
        }
        // Each handle keeps what the block still holds for it: idempotent, where a decrement
        // replayed after a lost answer would count down twice.
        for h in per_handle.keys() {
            let left = after
                .as_ref()
                .map_or(0, |s| blk::ordinals_of_handle(s, h).len() as u64);
            self.handle_set(h, block, left, false).await?;
        }
        Ok(out)
    }

    /// Calico's ReleaseIPs: addresses grouped by block, one guarded write per block.
    pub async fn release_ips(&self, ips: &[ReleaseOptions]) -> Result<ReleaseOutcome, IpamError> {
        let infos = self.pool_infos(&[]).await?;
        let mut by_block: BTreeMap<IpNet, Vec<ReleaseOptions>> = BTreeMap::new();
        let mut all_blocks: Option<BlockSet> = None;
        let mut out = ReleaseOutcome::default();
        for r in ips {
            let in_pool = infos
                .iter()
                .find(|p| p.cidr.contains(&r.ip))
                .map(|p| p.block_of(r.ip));
            let cidr = match in_pool {
                Some(c) if self.block(&c).await?.is_some() => Some(c),
                _ => {
                    // Outside every pool, or the pool's block size is not the size of the block
                    // holding the address: find the containing block by name.
                    if all_blocks.is_none() {
                        all_blocks = Some(self.block_set().await?);
                    }
                    all_blocks.as_ref().unwrap().containing(r.ip)
                }
            };
            match cidr {
                Some(c) => by_block.entry(c).or_default().push(r.clone()),
                None => out.unallocated.push(r.ip),
            }
        }
        for (block, rs) in by_block {
            let o = self.release_block_allocations(&block, &rs).await?;
            out.released.extend(o.released);
            out.unallocated.extend(o.unallocated);
        }
        Ok(out)
    }

    /// Addresses held by a handle (empty when it does not exist).
    /// Loads a host's affinities and their blocks into the cache, so that a node-local server
    /// pays these reads once at start instead of on its first requests.
    ///
    /// A host without blocks will claim one on its first ADD: the blocks are listed here for that
    /// claim (before the affinities, the order a claim lists them in), which also makes the
    /// apiserver set up its IPAMBlock storage now, not on that ADD (a first LIST there took 1 s).
    pub async fn warm_host(&self, host: &str) -> Result<usize, IpamError> {
        let listed = Instant::now();
        let blocks = self.block_set().await?;
        let affs = self.host_affinities(host, false).await?;
        if affs.is_empty() {
            self.inner.cache.lock().unwrap().warm_blocks = Some((host.to_string(), listed, blocks));
        }
        for cidr in affs.keys() {
            self.block(cidr).await?;
        }
        Ok(affs.len())
    }

    /// The blocks as [`Ipam::warm_host`] listed them for `host`, once and while recent; a stale
    /// listing is safe (a block created since fails to be created again and the claim picks
    /// anew, an overlap is caught by the listing after the creation) but costs a retry.
    fn take_warm_blocks(&self, host: &str) -> Option<BlockSet> {
        let mut c = self.inner.cache.lock().unwrap();
        let (h, t, set) = c.warm_blocks.take()?;
        (h == host && t.elapsed() < WARM_BLOCKS_TTL).then_some(set)
    }

    /// Whether any of the host's blocks holds an address of the handle, from the cache alone:
    /// `None` when the cache cannot tell (affinities not loaded, a block never read).
    pub fn host_blocks_hold(&self, host: &str, handle_id: &str) -> Option<bool> {
        let c = self.inner.cache.lock().unwrap();
        let affs = c.affinities.get(host)?;
        let mut held = false;
        for cidr in affs.keys() {
            let b = c.blocks.get(cidr)?;
            held |= !blk::ordinals_of_handle(&b.spec, handle_id).is_empty();
        }
        Some(held)
    }

    /// Always read from the apiserver (it settles what a cached view cannot).
    pub async fn ips_by_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let Some(h) = self.refresh_handle(handle_id).await? else {
            return Ok(vec![]);
        };
        let mut ips = Vec::new();
        for key in h.spec.block.keys() {
            let Ok(c) = cidr::parse_masked(key) else { continue };
            if let Some(b) = self.fresh_block(&c).await? {
                ips.extend(
                    blk::ordinals_of_handle(&b.spec, handle_id)
                        .into_iter()
                        .map(|o| cidr::address_of(&c, o)),
                );
            }
        }
        Ok(ips)
    }

    // ------------------------------------------------------------------ listings, affinities

    /// Every live block (a LIST; for tools and GC, not for allocation).
    pub async fn list_blocks(&self) -> Result<Vec<Block>, IpamError> {
        Ok(self.inner.store.list_blocks().await?)
    }

    pub async fn list_handles(&self) -> Result<Vec<Handle>, IpamError> {
        Ok(self.inner.store.list_handles().await?)
    }

    pub async fn list_affinities(&self) -> Result<Vec<Affinity>, IpamError> {
        Ok(self.inner.store.list_affinities().await?)
    }

    /// Every allocation of the given blocks.
    pub fn allocations(blocks: &[Block]) -> Vec<Allocation> {
        let mut v = Vec::new();
        for b in blocks {
            let Ok(net) = blk::block_cidr(&b.spec) else {
                continue;
            };
            for (o, ip) in blk::allocated(&b.spec, &net) {
                let attr = blk::attribute_of(&b.spec, o);
                v.push(Allocation {
                    ip,
                    block: net,
                    ordinal: o,
                    handle_id: attr.and_then(|a| a.handle_id.clone()),
                    attrs: Attrs(attr.and_then(|a| a.secondary.clone()).unwrap_or_default()),
                    sequence_number: blk::allocation_sequence(&b.spec, o),
                    block_host: b.spec.host().map(str::to_string),
                });
            }
        }
        v
    }

    /// Releases a host's affinity for a block (§2.11): pendingDeletion, then the empty block is
    /// deleted (or a non-empty one loses its affinity and becomes an orphan whose addresses stay
    /// valid), then the affinity is deleted. With `require_empty`, a non-empty block is left alone
    /// and `Ok(false)` returned.
    pub async fn release_block_affinity(
        &self,
        host: &str,
        cidr: &IpNet,
        require_empty: bool,
    ) -> Result<bool, IpamError> {
        let span = info_span!("blockaffinity", name = %names::affinity_name(host, cidr));
        async {
            let store = &self.inner.store;
            // Whether this call set pendingDeletion: a block found non-empty on a retry (an
            // allocation won the race) gives the affinity back, or the host could never use the
            // block again (allocation skips pendingDeletion affinities).
            let mut marked_here = false;
            for _ in 0..RETRIES {
                let aff = store.get_affinity(host, cidr).await?;
                let b = self.fresh_block(cidr).await?;
                if let Some(b) = &b
                    && b.spec.host() == Some(host)
                    && require_empty
                    && !blk::is_empty(&b.spec)
                {
                    if marked_here && let Some(mut a) = aff.filter(|a| a.spec.state == "pendingDeletion") {
                        a.spec.state = "confirmed".into();
                        match store.update_affinity(&a).await {
                            Ok(a) => self.remember_affinity(host, *cidr, Some(a)),
                            Err(e) => {
                                warn!(error = %e, "BlockAffinity left pendingDeletion on a non-empty block")
                            }
                        }
                    }
                    return Ok(false);
                }
                let aff = match aff {
                    Some(mut a) if a.spec.state != "pendingDeletion" => {
                        a.spec.state = "pendingDeletion".into();
                        match store.update_affinity(&a).await {
                            Ok(a) => {
                                marked_here = true;
                                Some(a)
                            }
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    other => other,
                };
                if let Some(mut b) = b
                    && b.spec.host() == Some(host)
                {
                    let res = if blk::is_empty(&b.spec) {
                        blk::prepare_write(&mut b.spec);
                        store.delete_block(&b).await
                    } else {
                        b.spec.affinity = None;
                        b.spec.affinity_claim_time = None;
                        blk::prepare_write(&mut b.spec);
                        store.update_block(&b).await.map(|nb| self.remember_block(&nb))
                    };
                    match res {
                        Ok(()) => {}
                        Err(StoreError::Conflict { .. }) => {
                            self.forget_block(cidr);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.forget_block(cidr);
                }
                if let Some(a) = aff {
                    match store.delete_affinity(&a).await {
                        Ok(()) | Err(StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.remember_affinity(host, *cidr, None);
                return Ok(true);
            }
            Err(IpamError::Contention {
                what: format!("BlockAffinity {}", names::affinity_name(host, cidr)),
            })
        }
        .instrument(span)
        .await
    }
}
