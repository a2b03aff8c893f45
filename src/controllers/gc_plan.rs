//! Pure decisions of the IPAM garbage collector (Calico kube-controllers' IPAM GC, spec ipam.md §4),
//! with Calico's weak spots fixed:
//! - an address that any live pod's status.podIPs or Calico/Multus annotations show is never
//!   released, whatever the allocation's `node` attribute says (calico #12257);
//! - an allocation older than the pod of the same name belongs to an earlier pod (recreated with
//!   another UID) and is a leak even before the new pod has an address;
//! - a Node re-created under the same name after the allocation counts as gone (calico #3589);
//! - IPAMHandles that no block references are removed after the grace period;
//! - everything is planned per block so the shell makes one guarded write per block per pass;
//! - the grace clock of a leak is durable: the time it was first seen is stamped in its allocation
//!   attribute ([`LEAK_SEEN_KEY`]) by that same write, so an operator restart or a new leader
//!   does not start every grace period afresh (Calico keeps it in memory).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};

use crate::api::StrMap;
use crate::api::{AllocationAttribute, CalicoKind, IPAMBlockSpec};
use crate::ipam::block::{AllocRef, GcEdit, LEAK_SEEN_KEY};
use crate::ipam::names::sanitize_handle_id;
use crate::ipam::usage::{PoolRef, pool_of};

pub const WINDOWS_RESERVED: &str = "windows-reserved-ipam-handle";
const TUNNEL_TYPES: &[&str] = &[
    "ipipTunnelAddress",
    "vxlanTunnelAddress",
    "vxlanV6TunnelAddress",
    "wireguardTunnelAddress",
    "wireguardV6TunnelAddress",
];
/// Clock skew allowed between a node's CNI timestamp and the apiserver's creationTimestamp.
const SKEW: SignedDuration = SignedDuration::from_secs(30);

/// A live pod as the GC needs it.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// Shared with the other pods of the node in a [`PodMap`].
    pub node: Option<Arc<str>>,
    /// status.podIPs plus the addresses in Calico's and Multus' annotations.
    pub ips: Vec<IpAddr>,
    pub created: Option<Timestamp>,
    pub evicted: bool,
}

/// Live pods by namespace and name, compact for tens of thousands of pods: each namespace and
/// each node name is stored once, not once per pod.
#[derive(Clone, Debug, Default)]
pub struct PodMap {
    by_ns: HashMap<Box<str>, HashMap<Box<str>, PodInfo>>,
    nodes: HashSet<Arc<str>>,
    /// Size of `nodes` after its last pruning (names no pod uses any more are let go).
    nodes_kept: usize,
}

impl PodMap {
    pub fn get(&self, ns: &str, name: &str) -> Option<&PodInfo> {
        self.by_ns.get(ns)?.get(name)
    }

    pub fn insert(&mut self, ns: &str, name: &str, mut info: PodInfo) -> Option<PodInfo> {
        if let Some(n) = info.node.take() {
            info.node = Some(self.intern(n));
        }
        info.ips.shrink_to_fit();
        match self.by_ns.get_mut(ns) {
            Some(pods) => pods.insert(name.into(), info),
            None => {
                self.by_ns.insert(ns.into(), HashMap::from([(name.into(), info)]));
                None
            }
        }
    }

    pub fn remove(&mut self, ns: &str, name: &str) -> Option<PodInfo> {
        let pods = self.by_ns.get_mut(ns)?;
        let gone = pods.remove(name);
        if pods.is_empty() {
            self.by_ns.remove(ns);
        }
        gone
    }

    fn intern(&mut self, node: Arc<str>) -> Arc<str> {
        if let Some(n) = self.nodes.get(&node) {
            return n.clone();
        }
        if self.nodes.len() >= 2 * self.nodes_kept + 64 {
            self.nodes.retain(|n| Arc::strong_count(n) > 1);
            self.nodes_kept = self.nodes.len();
        }
        self.nodes.insert(node.clone());
        node
    }

    pub fn len(&self) -> usize {
        self.by_ns.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ns.is_empty()
    }

    /// ((namespace, name), pod), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = ((&str, &str), &PodInfo)> {
        self.by_ns
            .iter()
            .flat_map(|(ns, pods)| pods.iter().map(move |(n, p)| ((&**ns, &**n), p)))
    }

    pub fn values(&self) -> impl Iterator<Item = &PodInfo> {
        self.by_ns.values().flat_map(HashMap::values)
    }
}

impl FromIterator<((String, String), PodInfo)> for PodMap {
    fn from_iter<I: IntoIterator<Item = ((String, String), PodInfo)>>(iter: I) -> PodMap {
        let mut m = PodMap::default();
        for ((ns, name), p) in iter {
            m.insert(&ns, &name, p);
        }
        m
    }
}

/// A block from the store.
pub struct BlockIn<'a> {
    pub name: &'a str,
    pub spec: &'a IPAMBlockSpec,
    /// Its [`EMPTY_SINCE_ANNOTATION`], if any.
    pub empty_since: Option<&'a str>,
}

/// Annotation of an IPAMBlock: `<RFC 3339 time> <sequenceNumber>`, when the GC first saw the block
/// empty, valid while the block's `sequenceNumber` is still the one its own write left (every
/// write of a block, Calico's included, moves it). The durable clock of empty-block release.
pub const EMPTY_SINCE_ANNOTATION: &str = "tortie.io/empty-since";

/// The time an [`EMPTY_SINCE_ANNOTATION`] value records, if the block has not been written since.
pub fn empty_since(value: &str, spec: &IPAMBlockSpec) -> Option<Timestamp> {
    let (t, seq) = value.split_once(' ')?;
    (spec.sequence_number? == seq.parse::<u64>().ok()?).then_some(())?;
    t.parse().ok()
}

/// The annotation value the stamping write leaves: now, and the sequence number after that write.
pub fn empty_since_value(now: Timestamp, spec: &IPAMBlockSpec) -> String {
    format!("{now} {}", crate::ipam::block::sequence_after_write(spec))
}

/// A BlockAffinity from the store.
pub struct AffinityIn<'a> {
    pub name: &'a str,
    pub node: &'a str,
    pub cidr: &'a str,
    pub host_type: bool,
    /// Marked deleted by a two-step delete that did not finish.
    pub deleted: bool,
}

/// An IPAMHandle from the store.
pub struct HandleIn<'a> {
    pub name: &'a str,
    pub handle_id: &'a str,
    /// Marked deleted by a two-step delete that did not finish.
    pub deleted: bool,
}

/// The pools a pass may touch: all of them, or with a pool selector only the selected ones
/// (GC then stays inside them).
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub pools: Vec<PoolRef>,
    pub scoped: bool,
}

impl Scope {
    pub fn contains(&self, net: &IpNet) -> bool {
        !self.scoped || self.pools.iter().any(|p| p.cidr.contains(net))
    }

    /// An unparsable CIDR is inside only when the pass is not scoped.
    pub fn contains_cidr(&self, cidr: &str) -> bool {
        !self.scoped || cidr.parse::<IpNet>().is_ok_and(|n| self.contains(&n))
    }

    /// A handle is inside when every block it counts addresses in is (and it counts some); a
    /// marked one always is, so that its interrupted delete is finished.
    pub fn contains_handle<'b>(&self, deleted: bool, mut blocks: impl Iterator<Item = &'b IpNet>) -> bool {
        if deleted || !self.scoped {
            return true;
        }
        let mut any = false;
        let all = blocks.all(|n| {
            any = true;
            self.contains(n)
        });
        any && all
    }
}

/// Everything one pass looks at (inside its [`Scope`]; marked objects included).
pub struct World<'a> {
    pub blocks: Vec<BlockIn<'a>>,
    pub affinities: Vec<AffinityIn<'a>>,
    pub handles: Vec<HandleIn<'a>>,
    /// Node name → creationTimestamp.
    pub nodes: HashMap<String, Option<Timestamp>>,
    /// Live pods (borrowed from the operator's pod index).
    pub pods: std::borrow::Cow<'a, PodMap>,
    /// Pools (name, cidr) for metric labels.
    pub pools: Vec<PoolRef>,
}

/// Timers kept between passes (rebuilt each pass, so nothing accumulates). The durable stamps
/// (leaks, empty blocks) win over these: they only bridge the time until a stamp's write lands,
/// and time orphan handles, which have nothing to stamp (in memory, as in Calico).
#[derive(Clone, Debug, Default)]
pub struct GcState {
    leak_since: HashMap<LeakKey, Timestamp>,
    empty_since: HashMap<String, Timestamp>,
    orphan_handle_since: HashMap<String, Timestamp>,
    /// The `now` of the plan that set these timers.
    planned_at: Option<Timestamp>,
}

impl GcState {
    /// When the earliest timer that had not run out at the last plan runs out: a pass then
    /// releases what has waited out the grace period instead of waiting for the next interval
    /// tick. (Judged against the plan's time, not the caller's: a timer that ran out while that
    /// pass was writing is still owed its pass.)
    pub fn next_due(&self, grace: SignedDuration) -> Option<Timestamp> {
        let planned = self.planned_at?;
        if grace.is_zero() {
            return None;
        }
        self.leak_since
            .values()
            .chain(self.empty_since.values())
            .chain(self.orphan_handle_since.values())
            .filter_map(|since| since.checked_add(grace).ok())
            .filter(|due| *due > planned)
            .min()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LeakKey {
    block: String,
    ordinal: usize,
    handle: String,
    seq: Option<u64>,
}

/// What must still hold at write time for an ordinal to be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub ordinal: usize,
    pub handle: String,
    /// `sequenceNumberForAllocation[ordinal]` when planned: a re-allocated ordinal has another.
    pub seq: Option<u64>,
    pub ip: IpAddr,
    pub node: String,
    /// (namespace, pod) the allocation names, re-checked live just before the write.
    pub pod: Option<(String, String)>,
    pub why: String,
}

impl Guard {
    pub fn alloc_ref(&self) -> AllocRef {
        AllocRef {
            ordinal: self.ordinal,
            handle_id: self.handle.clone(),
            sequence_number: self.seq,
        }
    }
}

/// The GC's work in one block: one write (releases, and leak stamps set or cleared).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockRelease {
    pub block: String,
    pub cidr: String,
    pub pool: String,
    /// Confirmed leaks to free.
    pub guards: Vec<Guard>,
    /// Leaks seen for the first time: stamped with the plan's time, their grace clock.
    pub marks: Vec<Guard>,
    /// Stamped allocations that are valid again: the stamp goes.
    pub unmarks: Vec<Guard>,
    /// The block's host when that Node no longer exists: a block this write empties is then
    /// released with its affinity at once (not at a later pass).
    pub host_gone: Option<String>,
}

impl BlockRelease {
    /// The engine's edit for this block, with `frees` (the guards still confirmed at write time).
    pub fn edit(&self, frees: &[Guard], stamp: &str) -> GcEdit {
        GcEdit {
            free: frees.iter().map(Guard::alloc_ref).collect(),
            mark: self
                .marks
                .iter()
                .map(|g| (g.alloc_ref(), stamp.to_string()))
                .collect(),
            unmark: self.unmarks.iter().map(Guard::alloc_ref).collect(),
        }
    }
}

/// An affinity of a deleted node whose block is gone or affine elsewhere.
#[derive(Clone, Debug, PartialEq)]
pub struct StaleAffinity {
    pub name: String,
    pub node: String,
    pub cidr: String,
}

/// An empty block to delete together with its affinity.
#[derive(Clone, Debug, PartialEq)]
pub struct EmptyBlock {
    pub block: String,
    pub cidr: String,
    pub node: String,
    pub why: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcPlan {
    pub releases: Vec<BlockRelease>,
    pub empty_blocks: Vec<EmptyBlock>,
    /// Affinities of deleted nodes whose block does not exist or is not affine to the node.
    pub stale_affinities: Vec<StaleAffinity>,
    /// Handle object names no block references.
    pub orphan_handles: Vec<String>,
    /// CIDRs of empty blocks seen empty for the first time (their clock is stamped on them).
    pub stamp_empty: Vec<String>,
    /// (pool, node) → leak candidates not yet released (Calico's `ipam_allocations_gc_candidates`).
    pub candidates: BTreeMap<(String, String), u64>,
    /// Objects marked deleted whose two-step delete was interrupted between the mark and the
    /// DELETE (a process killed there): absent to every reader already, but they stay in etcd
    /// for good unless finished, since nothing reads a marked object by name again. Handles
    /// first, then blocks, then affinities.
    pub finish_deletes: Vec<(CalicoKind, String)>,
}

/// Calico's `timestamp` attribute: Go's time text `2026-08-01 10:00:05.123456789 +0000 UTC`.
pub fn parse_go_time(s: &str) -> Option<Timestamp> {
    let mut parts = s.split_whitespace();
    let (d, t, off) = (parts.next()?, parts.next()?, parts.next()?);
    jiff::fmt::strtime::parse("%Y-%m-%d %H:%M:%S%.f %z", format!("{d} {t} {off}"))
        .ok()?
        .to_timestamp()
        .ok()
}

fn ordinal_ip(net: &IpNet, ordinal: usize) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => u32::from(n.network())
            .checked_add(ordinal as u32)
            .map(|v| IpAddr::V4(v.into())),
        IpNet::V6(n) => u128::from(n.network())
            .checked_add(ordinal as u128)
            .map(|v| IpAddr::V6(v.into())),
    }
}

enum Verdict {
    Valid,
    /// Never cleaned automatically (no handle, no pod attributes, VM...).
    Unknown,
    Leak {
        why: String,
        node_gone: bool,
    },
}

fn node_gone(world: &World<'_>, node: &str, alloc_time: Option<Timestamp>) -> bool {
    match world.nodes.get(node) {
        None => true,
        // A Node re-created under the same name after the allocation is another machine.
        Some(Some(created)) => alloc_time.is_some_and(|t| *created > t + SKEW),
        Some(None) => false,
    }
}

/// The pod an allocation names, if any.
fn pod_key(attr: &AllocationAttribute) -> Option<(String, String)> {
    let s = attr.secondary.as_ref()?;
    Some((s.get("namespace")?.to_string(), s.get("pod")?.to_string()))
}

fn classify(
    world: &World<'_>,
    live_ips: &HashSet<IpAddr>,
    attr: &AllocationAttribute,
    ip: IpAddr,
    block_host: Option<&str>,
) -> (Verdict, String) {
    let empty = StrMap::new();
    let sec = attr.secondary.as_ref().unwrap_or(&empty);
    let node = sec.get("node").or(block_host).unwrap_or("").to_string();
    let handle = attr.handle_id.as_deref().unwrap_or("");
    if handle.is_empty() || handle == WINDOWS_RESERVED || live_ips.contains(&ip) {
        let v = if live_ips.contains(&ip) {
            Verdict::Valid
        } else {
            Verdict::Unknown
        };
        return (v, node);
    }
    let at = sec.get("timestamp").and_then(parse_go_time);
    if let Some(t) = sec.get("type")
        && TUNNEL_TYPES.contains(&t)
    {
        let v = if world.nodes.contains_key(&node) {
            Verdict::Valid
        } else {
            Verdict::Leak {
                why: format!("tunnel address of deleted node {node}"),
                node_gone: true,
            }
        };
        return (v, node);
    }
    if sec.contains_key("vmi-name") {
        return (Verdict::Unknown, node);
    }
    let (Some(ns), Some(pod)) = (sec.get("namespace"), sec.get("pod")) else {
        return (Verdict::Unknown, node);
    };
    let gone = node.is_empty() || node_gone(world, &node, at);
    let why = match world.pods.get(ns, pod) {
        None => format!("pod {ns}/{pod} no longer exists"),
        Some(p) if p.evicted => format!("pod {ns}/{pod} was evicted"),
        Some(p) if at.zip(p.created).is_some_and(|(a, c)| a + SKEW < c) => {
            format!("pod {ns}/{pod} was re-created after the address was allocated")
        }
        Some(p) if p.node.as_deref().is_some_and(|n| !n.is_empty() && n != node) => {
            format!(
                "pod {ns}/{pod} runs on node {} now, not {node}",
                p.node.as_deref().unwrap_or("")
            )
        }
        Some(p) if !p.ips.is_empty() => format!("pod {ns}/{pod} holds other addresses"),
        Some(_) => return (Verdict::Valid, node),
    };
    (Verdict::Leak { why, node_gone: gone }, node)
}

/// Plans one pass. `grace` zero disables leak and empty-block release (as in Calico), but the
/// cleanup of deleted nodes still runs.
pub fn plan<'a>(world: &'a World<'a>, state: &mut GcState, now: Timestamp, grace: SignedDuration) -> GcPlan {
    let live: Vec<&BlockIn<'a>> = world.blocks.iter().filter(|b| !b.spec.is_deleted()).collect();
    let nets: Vec<Option<IpNet>> = live.iter().map(|b| b.spec.cidr.parse().ok()).collect();
    let mut out = GcPlan::default();
    let mut next = GcState::default();
    let pass = Pass {
        world,
        prev: state,
        now,
        grace,
    };
    let scan = pass.scan(&live, &nets, &mut next, &mut out.candidates);
    out.releases = pass.block_releases(&live, &nets, scan.by_block);
    (out.empty_blocks, out.stamp_empty) =
        pass.empty_blocks(&live, &scan.empty, &scan.blocks_of_node, &mut next);
    out.stale_affinities = stale_affinities(world, &live);
    out.orphan_handles = pass.orphan_handles(&scan.referenced, &mut next);
    out.finish_deletes = finish_deletes(world);
    next.planned_at = Some(now);
    *state = next;
    out
}

/// The marked objects of [`GcPlan::finish_deletes`].
fn finish_deletes(world: &World<'_>) -> Vec<(CalicoKind, String)> {
    let handles = world
        .handles
        .iter()
        .filter(|h| h.deleted)
        .map(|h| (CalicoKind::IPAMHandle, h.name));
    let blocks = world
        .blocks
        .iter()
        .filter(|b| b.spec.is_deleted())
        .map(|b| (CalicoKind::IPAMBlock, b.name));
    let affinities = world
        .affinities
        .iter()
        .filter(|a| a.deleted)
        .map(|a| (CalicoKind::BlockAffinity, a.name));
    handles
        .chain(blocks)
        .chain(affinities)
        .map(|(k, n)| (k, n.to_string()))
        .collect()
}

/// One pass: what it sees, the state the previous pass left, and its clock.
struct Pass<'a, 's> {
    world: &'a World<'a>,
    prev: &'s GcState,
    now: Timestamp,
    grace: SignedDuration,
}

/// Per block (by index among the live blocks): confirmed leaks to release, leaks to stamp with
/// their first sighting, stamped allocations valid again.
#[derive(Default)]
struct BlockEdits {
    guards: BTreeMap<usize, Vec<Guard>>,
    marks: BTreeMap<usize, Vec<Guard>>,
    unmarks: BTreeMap<usize, Vec<Guard>>,
}

/// What one walk over every allocation finds.
#[derive(Default)]
struct Scan<'a> {
    by_block: BlockEdits,
    /// Affine blocks per node.
    blocks_of_node: HashMap<&'a str, usize>,
    /// Handle IDs the blocks name (exact, as Calico compares them: IDs that differ only in case
    /// are distinct handles).
    referenced: HashSet<&'a str>,
    /// Affine blocks with no allocation (Windows' reserved ones aside), with their node.
    empty: Vec<(usize, &'a str)>,
}

/// The walk's running sets; [`Walk::finish`] turns them into a [`Scan`].
#[derive(Default)]
struct Walk<'a> {
    scan: Scan<'a>,
    /// All-or-nothing per handle keeps handle counts right for multi-address pods: a handle's
    /// confirmed leaks are released only when none of its allocations is still held. Only the
    /// confirmed leaks carry a guard (at 50,000 live allocations a guard for every one was tens
    /// of MiB per pass).
    held: HashSet<&'a str>,
    confirmed: HashMap<&'a str, Vec<(usize, Guard)>>,
    /// Stamped allocations found valid, per block with their attribute index. An attribute
    /// entry is shared by the addresses of one handle with the same attributes: its stamp is
    /// cleared only when none of them is a leak, or two passes would set and clear it in turn.
    unmarks: BTreeMap<usize, Vec<(usize, Guard)>>,
    leaky_attrs: HashSet<(usize, usize)>,
}

impl<'a> Walk<'a> {
    fn finish(mut self) -> Scan<'a> {
        for (handle, allocs) in self.confirmed {
            if self.held.contains(handle) {
                continue;
            }
            for (bi, g) in allocs {
                self.scan.by_block.guards.entry(bi).or_default().push(g);
            }
        }
        for (bi, list) in self.unmarks {
            let list: Vec<Guard> = list
                .into_iter()
                .filter(|(ai, _)| !self.leaky_attrs.contains(&(bi, *ai)))
                .map(|(_, g)| g)
                .collect();
            if !list.is_empty() {
                self.scan.by_block.unmarks.insert(bi, list);
            }
        }
        self.scan
    }
}

/// One allocated address of a live block.
struct Alloc<'a> {
    /// Index of the block among the live ones, and of the allocation's attribute entry.
    bi: usize,
    ai: usize,
    ordinal: usize,
    ip: IpAddr,
    attr: &'a AllocationAttribute,
    spec: &'a IPAMBlockSpec,
}

impl<'a> Pass<'a, '_> {
    fn scan(
        &self,
        live: &[&BlockIn<'a>],
        nets: &[Option<IpNet>],
        next: &mut GcState,
        candidates: &mut BTreeMap<(String, String), u64>,
    ) -> Scan<'a> {
        let world = self.world;
        let live_ips: HashSet<IpAddr> = world.pods.values().flat_map(|p| p.ips.iter().copied()).collect();
        let mut walk = Walk::default();
        for (bi, b) in live.iter().enumerate() {
            let Some(net) = nets[bi] else { continue };
            let pool = pool_of(&world.pools, &net);
            let spec: &'a IPAMBlockSpec = b.spec;
            let host = spec.host();
            if let Some(h) = host {
                *walk.scan.blocks_of_node.entry(h).or_default() += 1;
            }
            let mut in_use = 0;
            for (ordinal, a) in spec.allocations.iter().enumerate() {
                let Some(ai) = *a else { continue };
                let Some(attr) = spec.attributes.get(ai) else {
                    continue;
                };
                if let Some(h) = &attr.handle_id {
                    walk.scan.referenced.insert(sanitize_handle_id(h));
                }
                if attr.handle_id.as_deref() == Some(WINDOWS_RESERVED) {
                    continue;
                }
                in_use += 1;
                let Some(ip) = ordinal_ip(&net, ordinal) else {
                    continue;
                };
                let (verdict, node) = classify(world, &live_ips, attr, ip, host);
                let at = Alloc {
                    bi,
                    ai,
                    ordinal,
                    ip,
                    attr,
                    spec,
                };
                match verdict {
                    Verdict::Leak { why, node_gone } => {
                        *candidates.entry((pool.clone(), node.clone())).or_default() += 1;
                        self.leak(&mut walk, at, node, why, node_gone, next);
                    }
                    Verdict::Valid | Verdict::Unknown => Self::kept(&mut walk, at, node),
                }
            }
            if in_use == 0
                && let Some(h) = host
            {
                walk.scan.empty.push((bi, h));
            }
        }
        walk.finish()
    }

    /// A leak: released once confirmed (its node gone, or leaked for the grace period), else
    /// held and, the first time it is seen, stamped with that time.
    fn leak(
        &self,
        walk: &mut Walk<'a>,
        at: Alloc<'a>,
        node: String,
        why: String,
        node_gone: bool,
        next: &mut GcState,
    ) {
        let handle = at.attr.handle_id.as_deref().unwrap_or_default();
        let stamped = leak_stamp(at.attr);
        walk.leaky_attrs.insert((at.bi, at.ai));
        let key = LeakKey {
            block: at.spec.cidr.clone(),
            ordinal: at.ordinal,
            handle: handle.to_string(),
            seq: ordinal_seq(at.spec, at.ordinal),
        };
        // The durable stamp first; else this process's own first sighting (the stamp's write
        // may not have landed yet). An unreadable stamp counts as now.
        let since = match stamped {
            Some(Some(t)) => t.min(self.now),
            _ => *self.prev.leak_since.get(&key).unwrap_or(&self.now),
        };
        next.leak_since.insert(key, since);
        let (bi, g) = (at.bi, guard(&at, node, why));
        if node_gone || self.grace_over(since) {
            walk.confirmed.entry(handle).or_default().push((bi, g));
        } else {
            walk.held.insert(handle);
            if stamped.is_none() && !self.grace.is_zero() {
                walk.scan.by_block.marks.entry(bi).or_default().push(g);
            }
        }
    }

    /// A valid (or never automatically cleaned) allocation holds its handle; a stale leak stamp
    /// on it is cleared.
    fn kept(walk: &mut Walk<'a>, at: Alloc<'a>, node: String) {
        let handle = at.attr.handle_id.as_deref().unwrap_or_default();
        if handle.is_empty() {
            return;
        }
        walk.held.insert(handle);
        if leak_stamp(at.attr).is_some() {
            let g = guard(&at, node, "valid again".into());
            walk.unmarks.entry(at.bi).or_default().push((at.ai, g));
        }
    }

    /// Whether a clock started at `since` has run for the grace period (never, with grace 0).
    fn grace_over(&self, since: Timestamp) -> bool {
        !self.grace.is_zero() && self.now.duration_since(since) >= self.grace
    }

    /// One write per block with something to release, stamp or clear.
    fn block_releases(
        &self,
        live: &[&BlockIn<'a>],
        nets: &[Option<IpNet>],
        mut e: BlockEdits,
    ) -> Vec<BlockRelease> {
        let touched: std::collections::BTreeSet<usize> = e
            .guards
            .keys()
            .chain(e.marks.keys())
            .chain(e.unmarks.keys())
            .copied()
            .collect();
        let mut out = Vec::new();
        for bi in touched {
            let mut guards = e.guards.remove(&bi).unwrap_or_default();
            guards.sort_by_key(|g| g.ordinal);
            let marks = e.marks.remove(&bi).unwrap_or_default();
            let unmarks = e.unmarks.remove(&bi).unwrap_or_default();
            let net = nets[bi].expect("parsed in the scan");
            let b = live[bi];
            out.push(BlockRelease {
                block: b.name.to_string(),
                cidr: b.spec.cidr.clone(),
                pool: pool_of(&self.world.pools, &net),
                guards,
                marks,
                unmarks,
                host_gone: b
                    .spec
                    .host()
                    .filter(|h| !self.world.nodes.contains_key(*h))
                    .map(str::to_string),
            });
        }
        out
    }

    /// Empty blocks to delete, and the CIDRs whose empty clock to stamp: a deleted node's go at
    /// once; a live node's after `grace`, keeping its last one.
    fn empty_blocks(
        &self,
        live: &[&BlockIn<'a>],
        empty: &[(usize, &'a str)],
        blocks_of_node: &HashMap<&'a str, usize>,
        next: &mut GcState,
    ) -> (Vec<EmptyBlock>, Vec<String>) {
        let (mut out, mut stamp) = (Vec::new(), Vec::new());
        let mut released_of_node: HashMap<&str, usize> = HashMap::new();
        for &(bi, node) in empty {
            let b = live[bi];
            let gone = !self.world.nodes.contains_key(node);
            if gone {
                out.push(EmptyBlock {
                    block: b.name.into(),
                    cidr: b.spec.cidr.clone(),
                    node: node.into(),
                    why: "its node no longer exists",
                });
                continue;
            }
            let total = blocks_of_node.get(node).copied().unwrap_or(0);
            let stamped = b.empty_since.and_then(|v| empty_since(v, b.spec));
            let since = match stamped {
                Some(t) => t.min(self.now),
                None => *self.prev.empty_since.get(&b.spec.cidr).unwrap_or(&self.now),
            };
            next.empty_since.insert(b.spec.cidr.clone(), since);
            // A node's only block is never released: its clock needs no write.
            if stamped.is_none() && !self.grace.is_zero() && total > 1 {
                stamp.push(b.spec.cidr.clone());
            }
            let done = released_of_node.entry(node).or_default();
            if self.grace_over(since) && total > *done + 1 {
                *done += 1;
                out.push(EmptyBlock {
                    block: b.name.into(),
                    cidr: b.spec.cidr.clone(),
                    node: node.into(),
                    why: "it stayed empty for the grace period and its node has other blocks",
                });
            }
        }
        (out, stamp)
    }

    /// Handles no block references, once unreferenced for the grace period: the allocator
    /// increments a handle before it writes the block, so a young orphan may be in flight.
    fn orphan_handles(&self, referenced: &HashSet<&str>, next: &mut GcState) -> Vec<String> {
        let mut out = Vec::new();
        for h in self.world.handles.iter().filter(|h| !h.deleted) {
            if referenced.contains(sanitize_handle_id(h.handle_id)) {
                continue;
            }
            let since = *self.prev.orphan_handle_since.get(h.name).unwrap_or(&self.now);
            next.orphan_handle_since.insert(h.name.to_string(), since);
            if self.grace_over(since) {
                out.push(h.name.to_string());
            }
        }
        out
    }
}

/// The guard that makes a release of `at` fail if the address changed hands meanwhile.
fn guard(at: &Alloc<'_>, node: String, why: String) -> Guard {
    Guard {
        ordinal: at.ordinal,
        handle: at.attr.handle_id.clone().unwrap_or_default(),
        seq: ordinal_seq(at.spec, at.ordinal),
        ip: at.ip,
        node,
        pod: pod_key(at.attr),
        why,
    }
}

/// The allocation's sequence number, if the block records one.
fn ordinal_seq(spec: &IPAMBlockSpec, ordinal: usize) -> Option<u64> {
    spec.sequence_number_for_allocation
        .as_ref()
        .and_then(|m| m.get(&ordinal.to_string()).copied())
}

/// The leak's durable first sighting: `None` unstamped, `Some(None)` unreadable.
fn leak_stamp(attr: &AllocationAttribute) -> Option<Option<Timestamp>> {
    attr.secondary
        .as_ref()
        .and_then(|s| s.get(LEAK_SEEN_KEY))
        .map(|v| v.parse::<Timestamp>().ok())
}

/// Affinities of deleted nodes whose block is gone or belongs to someone else.
fn stale_affinities(world: &World<'_>, live: &[&BlockIn<'_>]) -> Vec<StaleAffinity> {
    let block_host: HashMap<&str, Option<&str>> = live
        .iter()
        .map(|b| (b.spec.cidr.as_str(), b.spec.host()))
        .collect();
    world
        .affinities
        .iter()
        .filter(|a| !a.deleted && a.host_type && !world.nodes.contains_key(a.node))
        .filter(|a| !matches!(block_host.get(a.cidr), Some(Some(h)) if *h == a.node))
        .map(|a| StaleAffinity {
            name: a.name.to_string(),
            node: a.node.to_string(),
            cidr: a.cidr.to_string(),
        })
        .collect()
}

/// True when no allocation is left but Windows' reserved ones.
pub fn is_empty(spec: &IPAMBlockSpec) -> bool {
    crate::ipam::block::is_empty(spec)
}

#[cfg(test)]
mod tests;
