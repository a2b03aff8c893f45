//! Watch caches shared by every controller, the metrics endpoint and readiness.
//!
//! One reflector per kind feeds a [`Store`] and a lossy broadcast of changed objects. Controllers
//! subscribe while they run (only on the leader); a subscriber that lags just misses triggers,
//! which the periodic full reconcile covers, and the watch itself never waits for a subscriber.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeSpec, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use ipnet::IpNet;

use super::gc_plan::{PodInfo, PodMap};
use super::pod::{SlimPod, pod_info};
use crate::api::{Affinity, Block, CalicoKind, CrdMode, Handle, Installation, Pool};

/// A watched kind: its cache, its change feed and whether the first list has arrived.
pub struct Watched<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub store: Store<K>,
    pub dyntype: K::DynamicType,
    changes: broadcast::Sender<Arc<K>>,
    synced: Arc<AtomicBool>,
}

impl<K: Resource + Clone + 'static> Clone for Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Watched {
            store: self.store.clone(),
            dyntype: self.dyntype.clone(),
            changes: self.changes.clone(),
            synced: self.synced.clone(),
        }
    }
}

impl<K> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// Starts the reflector task; it runs until the process ends. `slim` cuts each object down
    /// to what the controllers read before it is cached (managed fields are always dropped).
    fn start(
        api: Api<K>,
        cfg: watcher::Config,
        dyntype: K::DynamicType,
        name: &'static str,
        slim: fn(&mut K),
    ) -> Self {
        Self::start_with(api, cfg, dyntype, name, slim, false)
    }

    /// As [`Watched::start`], for a kind an older CRD set lacks (BGPFilter): while the API does
    /// not serve it (404), it counts as synced with no objects, told once in a warning; the watch
    /// keeps retrying, so objects come in once the CRD is installed.
    fn start_optional(
        api: Api<K>,
        cfg: watcher::Config,
        dyntype: K::DynamicType,
        name: &'static str,
        slim: fn(&mut K),
    ) -> Self {
        Self::start_with(api, cfg, dyntype, name, slim, true)
    }

    fn start_with(
        api: Api<K>,
        cfg: watcher::Config,
        dyntype: K::DynamicType,
        name: &'static str,
        slim: fn(&mut K),
        optional: bool,
    ) -> Self {
        let writer = reflector::store::Writer::new(dyntype.clone());
        let store = writer.as_reader();
        let (changes, _) = broadcast::channel(1024);
        let synced = Arc::new(AtomicBool::new(false));
        let w = Watched {
            store,
            dyntype,
            changes: changes.clone(),
            synced: synced.clone(),
        };
        let stream = watcher::watcher(api, cfg)
            .default_backoff()
            .modify(move |o| {
                drop_managed_fields(o);
                slim(o);
            })
            .reflect(writer);
        let (reader, dt) = (w.store.clone(), w.dyntype.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut absent_told = false;
            while let Some(ev) = stream.next().await {
                match ev {
                    // Nobody subscribed (a replica that does not lead): nothing to send.
                    Ok(Event::Apply(_) | Event::Delete(_)) if changes.receiver_count() == 0 => {}
                    // The cache's own copy, not a second one: a subscriber that lags keeps
                    // up to the channel's capacity of them alive.
                    Ok(Event::Apply(o)) => {
                        let cached = reader.get(&reflector::ObjectRef::from_obj_with(&o, dt.clone()));
                        let _ = changes.send(cached.unwrap_or_else(|| Arc::new(o)));
                    }
                    Ok(Event::Delete(o)) => {
                        let _ = changes.send(Arc::new(o));
                    }
                    Ok(Event::InitDone) => {
                        synced.store(true, Ordering::Release);
                        if absent_told {
                            tracing::info!(kind = name, "the kind is served now: its objects are read");
                            absent_told = false;
                        }
                        tracing::debug!(kind = name, "watch cache synced");
                    }
                    Ok(_) => {}
                    Err(e) if optional && not_served(&e) => {
                        synced.store(true, Ordering::Release);
                        if !absent_told {
                            tracing::warn!(
                                kind = name,
                                error = %e,
                                "{name} is not served by the API (its CRD is not installed): running without {name} objects until it is"
                            );
                            absent_told = true;
                        } else {
                            tracing::debug!(kind = name, error = %e, "still not served");
                        }
                    }
                    Err(e) => tracing::warn!(kind = name, error = %e, "watch error (retrying)"),
                }
            }
        });
        w
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Changed (or deleted) objects from now on.
    pub fn changes(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.changes_or_missed().filter_map(futures::future::ready)
    }

    /// [`Watched::changes`], with a `None` where the subscriber lagged and changes were missed
    /// (for a subscriber that acts on each change, not on the whole cache).
    pub fn changes_or_missed(&self) -> impl Stream<Item = Option<Arc<K>>> + Send + 'static {
        let rx = self.changes.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(o) => Some((Some(o), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// Live objects in the cache.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// One cluster-scoped object of the cache by name.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.store
            .get(&reflector::ObjectRef::new_with(name, self.dyntype.clone()))
    }
}

/// The API does not serve the kind (its CRD is not installed): a 404 on the list or watch.
pub fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Every cache the operator reads.
#[derive(Clone)]
pub struct Stores {
    pub pools: Watched<Pool>,
    /// IPAMBlocks, compact ([`CachedBlock`]): the largest objects the operator watches.
    pub blocks: Blocks,
    pub affinities: Watched<Affinity>,
    pub installations: Watched<Installation>,
    pub kubeadm: Watched<ConfigMap>,
    pub nodes: Watched<Node>,
    /// Pods and handles number in the tens of thousands: indexes, not object caches.
    pub pods: Index<PodMap>,
    pub handles: Index<HashMap<Box<str>, HandleEntry>>,
    /// What only the BGP controller reads; started with [`BgpStores::start`] when it runs.
    pub bgp: Option<BgpStores>,
}

/// The kinds only the BGP controller reads (Nodes and BlockAffinities come from [`Stores`]).
#[derive(Clone)]
pub struct BgpStores {
    /// Untyped (also `pools`: all of them, whatever `--pool-selector` says), so that one stored
    /// object tortie's types cannot read is reported on its own instead of failing the list.
    pub configs: Watched<DynamicObject>,
    pub peers: Watched<DynamicObject>,
    pub filters: Watched<DynamicObject>,
    pub pools: Watched<DynamicObject>,
    /// Secrets of the operator namespace (BGP passwords).
    pub secrets: Watched<Secret>,
    pub services: Watched<Service>,
    pub slices: Watched<EndpointSlice>,
    /// The published objects (label `app.kubernetes.io/managed-by=tortie`), metadata only.
    pub maps: Watched<PartialObjectMeta<ConfigMap>>,
    pub secret_maps: Watched<PartialObjectMeta<Secret>>,
}

impl BgpStores {
    pub fn start(client: &Client, mode: CrdMode, namespace: &str) -> BgpStores {
        let any = watcher::Config::default;
        let owned = || any().labels("app.kubernetes.io/managed-by=tortie");
        BgpStores {
            configs: dynamic(
                client,
                mode.resource(CalicoKind::BGPConfiguration),
                any(),
                "BGPConfiguration",
                |_| {},
            ),
            peers: dynamic(
                client,
                mode.resource(CalicoKind::BGPPeer),
                any(),
                "BGPPeer",
                |_| {},
            ),
            // Older Calico CRD sets have no BGPFilter: BGP runs without filters then.
            filters: Watched::start_optional(
                Api::all_with(client.clone(), &mode.resource(CalicoKind::BGPFilter)),
                any(),
                mode.resource(CalicoKind::BGPFilter),
                "BGPFilter",
                |_| {},
            ),
            pools: dynamic(
                client,
                mode.resource(CalicoKind::IPPool),
                any(),
                "IPPool(bgp)",
                |_| {},
            ),
            secrets: Watched::start(
                Api::namespaced(client.clone(), namespace),
                any(),
                (),
                "Secret",
                |_| {},
            ),
            services: Watched::start(Api::all(client.clone()), any(), (), "Service", |_| {}),
            slices: Watched::start(Api::all(client.clone()), any(), (), "EndpointSlice", |_| {}),
            maps: Watched::start(
                Api::namespaced(client.clone(), namespace),
                owned(),
                (),
                "ConfigMap(published)",
                slim_published,
            ),
            secret_maps: Watched::start(
                Api::namespaced(client.clone(), namespace),
                owned(),
                (),
                "Secret(published)",
                slim_published,
            ),
        }
    }

    pub fn synced(&self) -> bool {
        self.configs.synced()
            && self.peers.synced()
            && self.filters.synced()
            && self.pools.synced()
            && self.secrets.synced()
            && self.services.synced()
            && self.slices.synced()
            && self.maps.synced()
            && self.secret_maps.synced()
    }
}

fn dynamic<K>(
    client: &Client,
    ar: ApiResource,
    cfg: watcher::Config,
    name: &'static str,
    slim: fn(&mut K),
) -> Watched<K>
where
    K: Resource<DynamicType = ApiResource> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    Watched::start(Api::all_with(client.clone(), &ar), cfg, ar, name, slim)
}

/// The IPAMBlock cache: one compact entry per block, by object name.
pub type Blocks = Index<HashMap<Box<str>, Arc<CachedBlock>>>;

impl Blocks {
    /// Every cached block (shared entries: cheap).
    pub fn all(&self) -> Vec<Arc<CachedBlock>> {
        self.read().values().cloned().collect()
    }
}

/// An IPAMBlock as the operator caches it. Decoded, a block of 50 pod addresses takes ~20 KB
/// (every allocation's attributes are a few separate strings), and the watch holds every block
/// of the cluster; readers of the whole object are rare (a GC pass, a block write, a metrics
/// scrape), so the object is kept as its JSON, LZ4-compressed (~2-4 KB), and decoded on demand
/// ([`Self::block`]). What the frequent readers use is kept decoded beside it: the IPPool
/// counts, the GC's empty-block and handle-reference checks.
#[derive(Debug, PartialEq)]
pub struct CachedBlock {
    cidr: Box<str>,
    affinity: Option<Box<str>>,
    deleted: bool,
    /// Allocated ordinals.
    allocated: u64,
    /// No allocation but Windows' reserved ones ([`crate::ipam::block::is_empty`]).
    empty: bool,
    /// Hashes of the (sanitized) handle IDs the attributes name, sorted: a block that names a
    /// handle has its hash here (a match is confirmed on the decoded block).
    handles: Box<[u64]>,
    /// The whole object (managed fields aside), as JSON, LZ4-compressed with its length first.
    packed: Box<[u8]>,
}

fn handle_hash(handle_id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(crate::ipam::names::sanitize_handle_id(handle_id))
}

impl CachedBlock {
    pub fn new(b: &Block) -> CachedBlock {
        let s = &b.spec;
        let mut handles: Vec<u64> = s
            .attributes
            .iter()
            .filter_map(|a| a.handle_id.as_deref().map(handle_hash))
            .collect();
        handles.sort_unstable();
        handles.dedup();
        // Serializing a typed object to JSON cannot fail (string keys only).
        let json = serde_json::to_vec(b).unwrap_or_default();
        CachedBlock {
            cidr: s.cidr.as_str().into(),
            affinity: s.affinity.as_deref().map(Into::into),
            deleted: s.is_deleted(),
            allocated: s.allocations.iter().filter(|a| a.is_some()).count() as u64,
            empty: crate::ipam::block::is_empty(s),
            handles: handles.into(),
            packed: lz4_flex::compress_prepend_size(&json).into(),
        }
    }

    /// The block as the watch delivered it (managed fields aside).
    pub fn block(&self) -> Block {
        let json = lz4_flex::decompress_size_prepended(&self.packed)
            .expect("a cached block decompresses: it was compressed here");
        serde_json::from_slice(&json).expect("a cached block decodes: it was encoded from the same type")
    }

    pub fn cidr(&self) -> &str {
        &self.cidr
    }

    /// The node the block is affine to, if its affinity is `host:<node>`.
    pub fn host(&self) -> Option<&str> {
        self.affinity.as_deref().and_then(|a| a.strip_prefix("host:"))
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Allocated addresses (every allocation, with or without a handle).
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// No allocation but Windows' reserved ones.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether an allocation's attributes name `handle_id` (compared as
    /// [`crate::ipam::names::handle_owned_by`] does).
    pub fn references_handle(&self, handle_id: &str) -> bool {
        self.handles.binary_search(&handle_hash(handle_id)).is_ok()
            && self.block().spec.attributes.iter().any(|a| {
                a.handle_id
                    .as_deref()
                    .is_some_and(|h| crate::ipam::names::handle_owned_by(handle_id, h))
            })
    }
}

impl crate::ipam::usage::BlockCounts for CachedBlock {
    fn cidr(&self) -> &str {
        &self.cidr
    }
    fn is_deleted(&self) -> bool {
        self.deleted
    }
    fn allocated(&self) -> u64 {
        self.allocated
    }
}

fn block_entry(b: &Block) -> (Box<str>, Option<Arc<CachedBlock>>) {
    let name = b.metadata.name.as_deref().unwrap_or_default();
    (name.into(), Some(Arc::new(CachedBlock::new(b))))
}

/// A published object as the BGP controller reads it: its name and its content hash and shard
/// count annotations. There is one per node; labels, owner references and the rest go.
pub fn slim_published<K>(o: &mut PartialObjectMeta<K>) {
    use crate::node::published::{ANN_HASH, ANN_SHARDS};
    let m = &mut o.metadata;
    *m = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        annotations: m
            .annotations
            .take()
            .map(|a| {
                a.into_iter()
                    .filter(|(k, _)| k == ANN_HASH || k == ANN_SHARDS)
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|a| !a.is_empty()),
        ..Default::default()
    };
}

/// Managed fields are often the largest part of an object, and no controller reads them.
pub fn drop_managed_fields<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// What an [`Index`] keeps its entries in.
pub trait Table: Default + Send + Sync + 'static {
    /// An object's key, as [`Extract`] gives it.
    type Key: Send;
    type Value: Clone + Send + Sync + 'static;
    fn put(&mut self, key: Self::Key, v: Self::Value);
    fn take(&mut self, key: &Self::Key) -> Option<Self::Value>;
}

impl<V: Clone + Send + Sync + 'static> Table for HashMap<Box<str>, V> {
    type Key = Box<str>;
    type Value = V;
    fn put(&mut self, key: Box<str>, v: V) {
        self.insert(key, v);
    }
    fn take(&mut self, key: &Box<str>) -> Option<V> {
        self.remove(key)
    }
}

impl Table for PodMap {
    type Key = PodKey;
    type Value = PodInfo;
    fn put(&mut self, (ns, name): PodKey, v: PodInfo) {
        self.insert(&ns, &name, v);
    }
    fn take(&mut self, (ns, name): &PodKey) -> Option<PodInfo> {
        self.remove(ns, name)
    }
}

/// A watch cache that keeps, per object, only what its reader uses (`extract`): for kinds with
/// tens of thousands of objects. A reflector store held ~1 KiB per pod and ~1.5 KiB per handle
/// (object metadata, and keys carrying the API resource, resourceVersion and uid); the GC reads
/// a few hundred bytes of each, and the tables keep those compactly.
pub struct Index<T: Table> {
    map: Arc<RwLock<T>>,
    synced: Arc<AtomicBool>,
    /// Entries of objects deleted (watch DELETE events), for readers that act on a deletion.
    removed: broadcast::Sender<T::Value>,
    /// Entries of objects changed or deleted (watch events after the first list), for readers
    /// triggered by a change; sent only while someone listens.
    changed: broadcast::Sender<T::Value>,
}

impl<T: Table> Clone for Index<T> {
    fn clone(&self) -> Self {
        Index {
            map: self.map.clone(),
            synced: self.synced.clone(),
            removed: self.removed.clone(),
            changed: self.changed.clone(),
        }
    }
}

impl<T: Table> Default for Index<T> {
    fn default() -> Self {
        Index {
            map: Default::default(),
            synced: Default::default(),
            removed: broadcast::channel(1024).0,
            changed: broadcast::channel(1024).0,
        }
    }
}

/// An object's key and what the index keeps of it (`None`: the reader ignores it).
pub type Extract<K, T> = fn(&K) -> (<T as Table>::Key, Option<<T as Table>::Value>);

impl<T: Table> Index<T> {
    fn start<K>(api: Api<K>, kind: &'static str, extract: Extract<K, T>) -> Self
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    {
        let index = Self::default();
        let writer = index.clone();
        let stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(drop_managed_fields);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut relist = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => writer.apply(&mut relist, ev, extract),
                    Err(e) => tracing::warn!(kind, error = %e, "watch error (retrying)"),
                }
            }
        });
        index
    }

    /// Applies one watch event; a re-list builds a fresh table in `relist` and swaps it in when
    /// complete, so readers never see a half-listed cluster.
    fn apply<K>(&self, relist: &mut Option<T>, ev: Event<K>, extract: Extract<K, T>) {
        match ev {
            Event::Apply(o) => {
                let (key, v) = extract(&o);
                let mut map = self.map.write().unwrap();
                match v {
                    Some(v) => {
                        if self.changed.receiver_count() > 0 {
                            let _ = self.changed.send(v.clone());
                        }
                        map.put(key, v)
                    }
                    None => {
                        map.take(&key);
                    }
                };
            }
            Event::Delete(o) => {
                let gone = self.map.write().unwrap().take(&extract(&o).0);
                if let Some(v) = gone {
                    if self.changed.receiver_count() > 0 {
                        let _ = self.changed.send(v.clone());
                    }
                    // No receiver is fine: nobody is waiting for deletions.
                    let _ = self.removed.send(v);
                }
            }
            Event::Init => *relist = Some(T::default()),
            Event::InitApply(o) => {
                if let (Some(m), (key, Some(v))) = (relist.as_mut(), extract(&o)) {
                    m.put(key, v);
                }
            }
            Event::InitDone => {
                if let Some(m) = relist.take() {
                    *self.map.write().unwrap() = m;
                }
                self.synced.store(true, Ordering::Release);
            }
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Entries of objects deleted from now on (`None`: some were missed, the receiver lagged).
    pub fn removals(&self) -> impl Stream<Item = Option<T::Value>> + Send + 'static {
        let rx = self.removed.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(v) => Some((Some(v), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// Entries of objects changed or deleted from now on (a lagging receiver misses some: for
    /// triggers that a periodic full pass backs up).
    pub fn changes(&self) -> impl Stream<Item = T::Value> + Send + 'static {
        let rx = self.changed.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(v) => return Some((v, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Read access to the whole index; never held across an `.await`.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.map.read().unwrap()
    }
}

impl<V: Clone + Send + Sync + 'static> Index<HashMap<Box<str>, V>> {
    pub fn get(&self, key: &str) -> Option<V> {
        self.read().get(key).cloned()
    }
}

/// (namespace, name) of a pod.
pub type PodKey = (String, String);

fn pod_entry(p: &SlimPod) -> (PodKey, Option<PodInfo>) {
    let key = (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    );
    (key, pod_info(p))
}

/// What the GC reads of an IPAMHandle (keyed by name): the plan's inputs, and enough to write
/// the handle back (a CAS update) without reading it first. Compact (~100 bytes besides the
/// name): there is one per pod address.
#[derive(Clone, Debug, PartialEq)]
pub struct HandleEntry {
    /// `spec.handleID` where it differs from the object name (Calico's legacy names).
    id: Option<Box<str>>,
    /// The object's UID (as two halves: a `u128` would align the entry, and every slot of
    /// the index's table, to 16 bytes) and resourceVersion, when [`Self::plain`].
    uid: [u64; 2],
    resource_version: u64,
    /// Block CIDR → addresses held there.
    blocks: Box<[(IpNet, u64)]>,
    deleted: Option<bool>,
    /// No labels, annotations, owners, finalizers or unknown spec fields, and every field in
    /// its canonical text form: [`Self::to_handle`] rebuilds the object as stored. Otherwise a
    /// writer reads it first.
    plain: bool,
}

/// A UUID in its canonical (lower-case, hyphenated) text form, as 128 bits.
fn parse_uid(s: &str) -> Option<u128> {
    let hex: String = s.split('-').collect();
    let v = u128::from_str_radix(&hex, 16).ok()?;
    (hex.len() == 32 && format_uid(v) == s).then_some(v)
}

fn format_uid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn handle_entry(h: &Handle) -> (Box<str>, Option<HandleEntry>) {
    let m = &h.metadata;
    let name = m.name.as_deref().unwrap_or_default();
    let uid = m.uid.as_deref().map(parse_uid);
    let rv = m.resource_version.as_deref().and_then(|v| {
        let n: u64 = v.parse().ok()?;
        (n.to_string() == v).then_some(n)
    });
    // A CIDR that does not parse leaves the list empty (no block is known to be held).
    let blocks: Vec<(IpNet, u64)> = h
        .spec
        .block
        .iter()
        .map(|(c, n)| Some((c.parse::<IpNet>().ok()?, *n)))
        .collect::<Option<_>>()
        .unwrap_or_default();
    // Rebuilt text must be the stored text, or the write would change the object.
    let canonical = blocks.len() == h.spec.block.len()
        && blocks
            .iter()
            .zip(h.spec.block.keys())
            .all(|((net, _), c)| net.to_string() == *c)
        && uid.is_some_and(|u| u.is_some())
        && rv.is_some();
    let plain = canonical
        && m.labels.as_ref().is_none_or(|x| x.is_empty())
        && m.annotations.as_ref().is_none_or(|x| x.is_empty())
        && m.owner_references.as_ref().is_none_or(|x| x.is_empty())
        && m.finalizers.as_ref().is_none_or(|x| x.is_empty())
        && h.spec.extra.is_empty();
    let entry = HandleEntry {
        id: (h.spec.handle_id != name).then(|| h.spec.handle_id.as_str().into()),
        uid: uid.flatten().map_or([0; 2], |u| [(u >> 64) as u64, u as u64]),
        resource_version: rv.unwrap_or_default(),
        blocks: blocks.into(),
        deleted: h.spec.deleted,
        plain,
    };
    (name.into(), Some(entry))
}

impl HandleEntry {
    pub fn is_deleted(&self) -> bool {
        self.deleted == Some(true)
    }

    /// `spec.handleID`, given the object's name (the index's key).
    pub fn handle_id<'a>(&'a self, name: &'a str) -> &'a str {
        self.id.as_deref().unwrap_or(name)
    }

    /// Blocks the handle holds addresses in (none when one of its CIDRs does not parse).
    pub fn blocks(&self) -> impl Iterator<Item = &IpNet> {
        self.blocks.iter().map(|(net, _)| net)
    }

    /// The handle as stored (server-kept fields aside: creation time, generation), for a CAS
    /// update on its resourceVersion; `None` unless [`Self::plain`].
    pub fn to_handle(&self, name: &str, ar: &ApiResource) -> Option<Handle> {
        if !self.plain {
            return None;
        }
        let spec = crate::api::IPAMHandleSpec {
            handle_id: self.handle_id(name).to_string(),
            block: self.blocks.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            deleted: self.deleted,
            extra: Default::default(),
        };
        let mut h = Handle::new(name, ar, spec);
        h.metadata.uid = Some(format_uid(
            (u128::from(self.uid[0]) << 64) | u128::from(self.uid[1]),
        ));
        h.metadata.resource_version = Some(self.resource_version.to_string());
        Some(h)
    }
}

/// A Node as the GC, the pod-CIDR check and the BGP controller read it: identity, labels,
/// Calico's annotations, creation and deletion time, `spec.podCIDR(s)`. Status (images, conditions) is large and unused here.
pub fn slim_node(n: &mut Node) {
    // Calico's annotations (BGP addresses, AS, reflector id) stay: the BGP controller reads them.
    n.metadata.annotations = n
        .metadata
        .annotations
        .take()
        .map(|a| {
            a.into_iter()
                .filter(|(k, _)| k.starts_with("projectcalico.org/"))
                .collect::<std::collections::BTreeMap<_, _>>()
        })
        .filter(|a| !a.is_empty());
    n.status = None;
    n.spec = n.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..Default::default()
    });
}

impl Stores {
    /// Starts every watch. `pool_selector` limits the IPPools watched.
    pub fn start(client: &Client, mode: CrdMode, pool_selector: Option<&str>) -> Stores {
        let mut pool_cfg = watcher::Config::default();
        if let Some(s) = pool_selector {
            pool_cfg = pool_cfg.labels(s);
        }
        let any = watcher::Config::default;
        Stores {
            pools: dynamic(
                client,
                mode.resource(CalicoKind::IPPool),
                pool_cfg,
                "IPPool",
                |_| {},
            ),
            blocks: Index::start(
                Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMBlock)),
                "IPAMBlock",
                block_entry,
            ),
            affinities: dynamic(
                client,
                mode.resource(CalicoKind::BlockAffinity),
                any(),
                "BlockAffinity",
                |_| {},
            ),
            handles: Index::start(
                Api::all_with(client.clone(), &mode.resource(CalicoKind::IPAMHandle)),
                "IPAMHandle",
                handle_entry,
            ),
            installations: Watched::start(Api::all(client.clone()), any(), (), "Installation", |_| {}),
            kubeadm: Watched::start(
                Api::namespaced(client.clone(), "kube-system"),
                any().fields("metadata.name=kubeadm-config"),
                (),
                "ConfigMap",
                |_| {},
            ),
            nodes: Watched::start(Api::all(client.clone()), any(), (), "Node", slim_node),
            pods: Index::start(Api::all(client.clone()), "Pod", pod_entry),
            bgp: None,
        }
    }

    /// True once every watch has listed its objects at least once.
    pub fn synced(&self) -> bool {
        self.pools.synced()
            && self.blocks.synced()
            && self.affinities.synced()
            && self.handles.synced()
            && self.installations.synced()
            && self.kubeadm.synced()
            && self.nodes.synced()
            && self.pods.synced()
    }

    /// The cluster's pod CIDRs: kubeadm's podSubnet, else a cover of the Nodes' podCIDRs.
    pub fn pod_cidrs(&self) -> Result<Option<super::podcidr::PodCidrs>, super::podcidr::PodCidrError> {
        let kubeadm = match self.kubeadm.all().first() {
            Some(cm) => super::podcidr::from_kubeadm(cm.data.as_ref().unwrap_or(&Default::default()))?,
            None => None,
        };
        let nodes = self.nodes.all();
        let node_cidrs: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref())
            .flat_map(|s| s.pod_cidrs.iter().flatten().chain(s.pod_cidr.iter()))
            .map(String::as_str)
            .collect();
        Ok(super::podcidr::resolve(
            kubeadm,
            super::podcidr::from_node_cidrs(node_cidrs),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, host_network: bool) -> SlimPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"nodeName": "n1", "hostNetwork": host_network},
            "status": {"podIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn index_follows_the_watch_and_swaps_in_a_relist_whole() {
        let idx: Index<PodMap> = Index::default();
        let mut relist = None;
        let apply = |relist: &mut _, ev| idx.apply(relist, ev, pod_entry);
        apply(&mut relist, Event::Init);
        apply(&mut relist, Event::InitApply(pod("a", "10.0.0.1", false)));
        apply(&mut relist, Event::InitApply(pod("host", "192.168.1.5", true)));
        assert!(
            idx.read().is_empty() && !idx.synced(),
            "visible before the list completed"
        );
        apply(&mut relist, Event::InitDone);
        assert!(idx.synced());
        let key = |n: &str| ("ns".to_string(), n.to_string());
        assert_eq!(idx.read().len(), 1, "host-network pods are not the GC's");
        assert_eq!(
            idx.read().get("ns", "a").unwrap().ips,
            ["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        apply(&mut relist, Event::Apply(pod("b", "10.0.0.2", false)));
        apply(&mut relist, Event::Delete(pod("a", "10.0.0.1", false)));
        let keys = |idx: &Index<PodMap>| {
            idx.read()
                .iter()
                .map(|((ns, n), _)| (ns.to_string(), n.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&idx), [key("b")]);
        // A re-list (after a watch gap) replaces everything, dropping pods deleted meanwhile.
        apply(&mut relist, Event::Init);
        apply(&mut relist, Event::InitApply(pod("c", "10.0.0.3", false)));
        assert_eq!(keys(&idx), [key("b")]);
        apply(&mut relist, Event::InitDone);
        assert_eq!(keys(&idx), [key("c")]);
    }

    #[test]
    fn a_published_object_keeps_its_name_and_the_annotations_the_bgp_controller_reads() {
        use crate::node::published::{ANN_HASH, ANN_SHARDS};
        let mut o: PartialObjectMeta<ConfigMap> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "bgp-node-a", "namespace": "tortie-system", "uid": "u", "resourceVersion": "9",
                         "labels": {"app.kubernetes.io/managed-by": "tortie"},
                         "annotations": {ANN_HASH: "h1", ANN_SHARDS: "4", "other": "x"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "a", "uid": "n"}]}
        }))
        .unwrap();
        slim_published(&mut o);
        let m = &o.metadata;
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref()),
            (Some("bgp-node-a"), Some("tortie-system"))
        );
        let a = m.annotations.as_ref().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[ANN_HASH].as_str(), a[ANN_SHARDS].as_str()), ("h1", "4"));
        assert!(m.labels.is_none() && m.owner_references.is_none() && m.uid.is_none());
    }

    #[test]
    fn a_cached_block_decodes_to_the_block_and_answers_the_frequent_readers() {
        let stored = serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMBlock",
            "metadata": {"name": "10-0-0-0-29", "uid": "0b6f7f0e-8c1e-4c5a-9d3e-1f2a3b4c5d6e", "resourceVersion": "42",
                         "annotations": {"tortie.io/empty-since": "2026-01-01T00:00:00Z 3"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {
                "cidr": "10.0.0.0/29", "affinity": "host:n1", "strictAffinity": false,
                "allocations": [0, null, 1, 2, null, null, null, null], "unallocated": [1, 4, 5, 6, 7],
                "attributes": [
                    {"handle_id": "k8s-pod-network.a", "secondary": {"namespace": "ns", "node": "n1", "pod": "a", "timestamp": "t"}},
                    {"handle_id": "k8s-pod-network.b\rjunk", "secondary": {"node": "n1"}, "releasedAt": "2026-01-01T00:00:00Z"},
                    {"handle_id": "windows-reserved-ipam-handle", "futureField": {"x": [1, 2]}}
                ],
                "sequenceNumber": 7, "sequenceNumberForAllocation": {"0": 3, "2": 5, "3": 6},
                "deleted": false, "futureSpecField": "kept"
            }
        });
        let b: Block = serde_json::from_value(stored.clone()).unwrap();
        let (name, entry) = block_entry(&b);
        let c = entry.unwrap();
        assert_eq!(&*name, "10-0-0-0-29");
        let mut expect = b.clone();
        expect.metadata.managed_fields = None;
        let mut without_mf = b.clone();
        drop_managed_fields(&mut without_mf);
        let json = |b: &Block| serde_json::to_value(b).unwrap();
        assert_eq!(json(&CachedBlock::new(&without_mf).block()), json(&expect));
        assert_eq!(
            json(&c.block()),
            stored,
            "every field, unknown ones too, comes back"
        );
        assert_eq!(
            (c.cidr(), c.host(), c.is_deleted(), c.allocated(), c.is_empty()),
            ("10.0.0.0/29", Some("n1"), false, 3, false)
        );
        assert!(c.references_handle("k8s-pod-network.a"));
        assert!(
            c.references_handle("k8s-pod-network.b"),
            "compared after sanitizing, as Calico does"
        );
        assert!(!c.references_handle("k8s-pod-network.A") && !c.references_handle("k8s-pod-network.c"));
        // Windows' reserved addresses alone leave a block empty.
        let mut only_reserved = b.clone();
        only_reserved.spec.allocations = vec![None, None, None, Some(2), None, None, None, None];
        let r = CachedBlock::new(&only_reserved);
        assert!(r.is_empty() && r.allocated() == 1);
        let usage = crate::ipam::usage::by_pool(&[], [&*c]);
        assert_eq!(
            usage[&None],
            crate::ipam::usage::PoolUsage {
                allocations: 3,
                blocks: 1
            }
        );
    }

    #[test]
    fn a_plain_handle_is_rebuilt_as_stored_and_others_are_not() {
        // 100,000 handles: every byte of an entry counts (no 16-byte alignment).
        assert!(std::mem::size_of::<HandleEntry>() <= 64);
        let ar = CrdMode::V1.resource(CalicoKind::IPAMHandle);
        let stored = serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1", "kind": "IPAMHandle",
            "metadata": {"name": "k8s-pod-network.abc", "uid": "0b6f7f0e-8c1e-4c5a-9d3e-1f2a3b4c5d6e", "resourceVersion": "42"},
            "spec": {"handleID": "k8s-pod-network.abc", "block": {"10.0.0.0/26": 2, "fd00::40/122": 1}, "deleted": false}
        });
        let h: Handle = serde_json::from_value(stored.clone()).unwrap();
        let (name, e) = handle_entry(&h);
        let e = e.unwrap();
        assert!(e.plain && !e.is_deleted() && e.id.is_none());
        let back = serde_json::to_value(e.to_handle(&name, &ar).unwrap()).unwrap();
        assert_eq!(back, stored);
        // Calico's legacy object name (the ID differs from it) is kept and rebuilt.
        let mut legacy = stored.clone();
        legacy["spec"]["handleID"] = "k8s-pod-network.ABC".into();
        let (lname, le) = handle_entry(&serde_json::from_value(legacy.clone()).unwrap());
        let le = le.unwrap();
        assert_eq!(le.handle_id(&lname), "k8s-pod-network.ABC");
        assert_eq!(
            serde_json::to_value(le.to_handle(&lname, &ar).unwrap()).unwrap(),
            legacy
        );
        for extra in [
            // Text the compact entry would not rebuild as stored.
            serde_json::json!({"metadata": {"uid": "u-1"}}),
            serde_json::json!({"metadata": {"uid": "0B6F7F0E-8C1E-4C5A-9D3E-1F2A3B4C5D6E"}}),
            serde_json::json!({"metadata": {"resourceVersion": "042"}}),
            serde_json::json!({"metadata": {"resourceVersion": "opaque"}}),
            serde_json::json!({"spec": {"block": {"fd00:0:0:0:0:0:0:40/122": 2}}}),
            serde_json::json!({"metadata": {"labels": {"a": "b"}}}),
            serde_json::json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "x"}]}}),
            serde_json::json!({"spec": {"futureField": 1}}),
        ] {
            let mut v = stored.clone();
            for (section, fields) in extra.as_object().unwrap() {
                for (k, f) in fields.as_object().unwrap() {
                    v[section][k] = f.clone();
                }
            }
            let h: Handle = serde_json::from_value(v).unwrap();
            let e = handle_entry(&h).1.unwrap();
            assert!(!e.plain && e.to_handle(&name, &ar).is_none(), "{extra}");
        }
    }
}
