//! `ipam check` and `ipam show` as pure functions over listed objects (no I/O): the CLI lists,
//! these decide (usage per pool and block, borrowed addresses, who holds one address, the
//! problems a check finds); the CLI renders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::block as blk;
use super::cidr;
use super::reserved::Reserved;
use super::usage::{self, PoolRef};
use crate::api::{Affinity, AllocationAttribute, Block, Handle, Pool};

/// What `check` looks at.
#[derive(Default)]
pub struct CheckInput {
    pub blocks: Vec<Block>,
    pub handles: Vec<Handle>,
    pub affinities: Vec<Affinity>,
    /// Live pods as (namespace, name); None = do not check pod liveness.
    pub pods: Option<BTreeSet<(String, String)>>,
    /// The addresses live pods use (status.podIPs, Calico's annotations), as Calico's check reads
    /// them from WorkloadEndpoints; None = do not check addresses in use.
    pub in_use: Option<Vec<InUse>>,
    /// The IPPools; None = do not check blocks and addresses against pools.
    pub pools: Option<Vec<PoolRef>>,
    /// Only look at blocks, handles, affinities and addresses inside these CIDRs (None = everything).
    pub scope: Option<Vec<IpNet>>,
}

/// An address a live pod uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InUse {
    pub ip: IpAddr,
    pub namespace: String,
    pub pod: String,
}

/// One problem found by `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem {
    /// A block breaks the §1.2 invariants.
    InvalidBlock { block: String, detail: String },
    /// An allocation with no handle ID: nothing can ever release it through a handle.
    AllocationWithoutHandle { ip: IpAddr, block: String },
    /// A block names a handle that does not exist.
    MissingHandle {
        handle: String,
        ip: IpAddr,
        block: String,
    },
    /// A handle's count for a block differs from what the block holds.
    HandleCountMismatch {
        handle: String,
        block: String,
        recorded: u64,
        actual: u64,
    },
    /// A handle that holds no address at all (leaked handle).
    HandleWithoutAddresses { handle: String },
    /// The same address is allocated in two blocks (overlapping blocks).
    AddressHeldTwice { ip: IpAddr, blocks: Vec<String> },
    /// A confirmed affinity whose block is missing or affine to someone else.
    AffinityMismatch { affinity: String, detail: String },
    /// A block affine to a host with no BlockAffinity for it (Calico would not find it).
    BlockWithoutAffinity { block: String, host: String },
    /// An allocation whose pod no longer exists (leaked address).
    PodGone {
        ip: IpAddr,
        namespace: String,
        pod: String,
        handle: Option<String>,
    },
    /// A live pod uses an address inside a pool that no block allocates: the allocator may hand it
    /// out again (e.g. after `ipam release --force` of a live pod's address).
    InUseWithoutAllocation {
        ip: IpAddr,
        namespace: String,
        pod: String,
    },
    /// A live pod uses an address outside every IPPool.
    InUseOutsidePools {
        ip: IpAddr,
        namespace: String,
        pod: String,
    },
    /// Several live pods use one address.
    AddressUsedTwice { ip: IpAddr, pods: Vec<String> },
    /// An allocation names a live pod that uses other addresses of that family (leaked address).
    AllocationNotUsedByPod {
        ip: IpAddr,
        namespace: String,
        pod: String,
        uses: Vec<IpAddr>,
    },
    /// Two blocks overlap (one lies inside the other).
    OverlappingBlocks { block: String, other: String },
    /// A block inside no IPPool (its pool was deleted or its CIDR changed).
    BlockOutsidePools { block: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::InvalidBlock { block, detail } => write!(f, "IPAMBlock {block}: {detail}"),
            Problem::AllocationWithoutHandle { ip, block } => {
                write!(f, "{ip} (IPAMBlock {block}) is allocated without a handle")
            }
            Problem::MissingHandle { handle, ip, block } => {
                write!(
                    f,
                    "{ip} (IPAMBlock {block}) belongs to handle {handle}, which does not exist"
                )
            }
            Problem::HandleCountMismatch {
                handle,
                block,
                recorded,
                actual,
            } => write!(
                f,
                "IPAMHandle {handle}: spec.block[{block}] is {recorded}, the block holds {actual}"
            ),
            Problem::HandleWithoutAddresses { handle } => {
                write!(f, "IPAMHandle {handle} holds no address (leaked handle)")
            }
            Problem::AddressHeldTwice { ip, blocks } => {
                write!(f, "{ip} is allocated in several blocks: {}", blocks.join(", "))
            }
            Problem::AffinityMismatch { affinity, detail } => write!(f, "BlockAffinity {affinity}: {detail}"),
            Problem::BlockWithoutAffinity { block, host } => {
                write!(
                    f,
                    "IPAMBlock {block} is affine to {host} but has no BlockAffinity"
                )
            }
            Problem::PodGone {
                ip,
                namespace,
                pod,
                handle,
            } => write!(
                f,
                "{ip} is allocated to pod {namespace}/{pod} (handle {}), which no longer exists",
                handle.as_deref().unwrap_or("-")
            ),
            Problem::InUseWithoutAllocation { ip, namespace, pod } => write!(
                f,
                "{ip} is used by pod {namespace}/{pod} but not allocated in any IPAMBlock (it may be handed out again)"
            ),
            Problem::InUseOutsidePools { ip, namespace, pod } => {
                write!(f, "{ip} is used by pod {namespace}/{pod} but lies in no IPPool")
            }
            Problem::AddressUsedTwice { ip, pods } => {
                write!(f, "{ip} is used by several pods: {}", pods.join(", "))
            }
            Problem::AllocationNotUsedByPod {
                ip,
                namespace,
                pod,
                uses,
            } => write!(
                f,
                "{ip} is allocated to pod {namespace}/{pod}, which uses {} instead (leaked address)",
                uses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
            ),
            Problem::OverlappingBlocks { block, other } => {
                write!(f, "IPAMBlock {block} overlaps IPAMBlock {other}")
            }
            Problem::BlockOutsidePools { block } => {
                write!(f, "IPAMBlock {block} lies in no IPPool")
            }
        }
    }
}

fn in_scope(scope: &Option<Vec<IpNet>>, text: &str) -> bool {
    match scope {
        None => true,
        Some(s) => text
            .parse::<IpNet>()
            .is_ok_and(|n| s.iter().any(|p| p.contains(&n.network()))),
    }
}

fn ip_in_scope(scope: &Option<Vec<IpNet>>, ip: &IpAddr) -> bool {
    scope.as_ref().is_none_or(|s| s.iter().any(|p| p.contains(ip)))
}

/// The checks of `calicoctl ipam check`, with the addresses live pods use standing in for its
/// WorkloadEndpoints, and more: handle counts, overlapping blocks, blocks outside every pool.
pub fn check(input: &CheckInput) -> Vec<Problem> {
    let mut problems = Vec::new();
    let blocks: Vec<&Block> = input
        .blocks
        .iter()
        .filter(|b| !b.spec.is_deleted() && in_scope(&input.scope, &b.spec.cidr))
        .collect();
    let handles: HashMap<String, &Handle> = input
        .handles
        .iter()
        .filter(|h| !h.spec.is_deleted())
        // Exact IDs: IDs differing in case are distinct handles (Calico compares them so too).
        .map(|h| (super::names::sanitize_handle_id(&h.spec.handle_id).to_string(), h))
        .collect();
    let held = check_allocations(input, &blocks, &handles, &mut problems);
    check_in_use(input, &blocks, held.holders, &mut problems);
    check_layout(input, &blocks, &mut problems);
    check_handles(input, &handles, &held.actual, &mut problems);
    check_affinities(input, &blocks, &mut problems);
    problems
}

/// What the blocks' allocations hold.
struct Held {
    /// actual[handle][block] = count
    actual: BTreeMap<String, BTreeMap<String, u64>>,
    /// The blocks that allocate each address.
    holders: BTreeMap<IpAddr, Vec<String>>,
}

/// Each block's own consistency and each allocation's handle and pod.
fn check_allocations(
    input: &CheckInput,
    blocks: &[&Block],
    handles: &HashMap<String, &Handle>,
    problems: &mut Vec<Problem>,
) -> Held {
    // Addresses each live pod uses, for the allocations that name it.
    let mut uses: BTreeMap<(&str, &str), Vec<IpAddr>> = BTreeMap::new();
    for u in input.in_use.iter().flatten() {
        uses.entry((u.namespace.as_str(), u.pod.as_str()))
            .or_default()
            .push(u.ip);
    }
    // actual[handle][block] = count
    let mut actual: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut holders: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for b in blocks {
        let name = b.metadata.name.clone().unwrap_or_default();
        for p in blk::check(&b.spec) {
            problems.push(Problem::InvalidBlock {
                block: name.clone(),
                detail: p.to_string(),
            });
        }
        let Ok(net) = blk::block_cidr(&b.spec) else {
            continue;
        };
        for (o, ip) in blk::allocated(&b.spec, &net) {
            holders.entry(ip).or_default().push(name.clone());
            let Some(attr) = blk::attribute_of(&b.spec, o) else {
                continue;
            };
            if blk::handle_of(&b.spec, o) == Some(blk::WINDOWS_RESERVED_HANDLE) {
                continue;
            }
            match &attr.handle_id {
                None => {
                    if attr.released_at.is_none() {
                        problems.push(Problem::AllocationWithoutHandle {
                            ip,
                            block: name.clone(),
                        });
                    }
                }
                Some(h) => {
                    let key = super::names::sanitize_handle_id(h).to_string();
                    *actual
                        .entry(key.clone())
                        .or_default()
                        .entry(b.spec.cidr.clone())
                        .or_default() += 1;
                    if !handles.contains_key(&key) {
                        problems.push(Problem::MissingHandle {
                            handle: h.clone(),
                            ip,
                            block: name.clone(),
                        });
                    }
                }
            }
            check_owner(input, &uses, attr, ip, problems);
        }
    }
    Held { actual, holders }
}

/// The pod an allocation names: gone (when the live pods are known), or showing another
/// address of the family instead of this one.
fn check_owner(
    input: &CheckInput,
    uses: &BTreeMap<(&str, &str), Vec<IpAddr>>,
    attr: &AllocationAttribute,
    ip: IpAddr,
    problems: &mut Vec<Problem>,
) {
    let owner = attr
        .secondary
        .as_ref()
        .and_then(|sec| Some((sec.get("namespace")?, sec.get("pod")?)));
    if let (Some(pods), Some((ns, pod))) = (&input.pods, owner)
        && !pods.contains(&(ns.to_string(), pod.to_string()))
    {
        problems.push(Problem::PodGone {
            ip,
            namespace: ns.to_string(),
            pod: pod.to_string(),
            handle: attr.handle_id.clone(),
        });
    } else if let Some((ns, pod)) = owner
        && let Some(used) = uses.get(&(ns, pod))
        && used.iter().any(|u| u.is_ipv4() == ip.is_ipv4())
        && !used.contains(&ip)
    {
        // The pod shows an address of this family, and not this one: a sandbox's
        // allocation that outlived it (a pod still settling shows none yet).
        problems.push(Problem::AllocationNotUsedByPod {
            ip,
            namespace: ns.to_string(),
            pod: pod.to_string(),
            uses: used.clone(),
        });
    }
}

/// Addresses live pods use: allocated, inside a pool, used once; and allocated once.
fn check_in_use(
    input: &CheckInput,
    blocks: &[&Block],
    holders: BTreeMap<IpAddr, Vec<String>>,
    problems: &mut Vec<Problem>,
) {
    let mut users: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for u in input.in_use.iter().flatten() {
        if !ip_in_scope(&input.scope, &u.ip) {
            continue;
        }
        users
            .entry(u.ip)
            .or_default()
            .insert(format!("{}/{}", u.namespace, u.pod));
        if holders.contains_key(&u.ip) {
            continue;
        }
        let in_pool = input
            .pools
            .as_ref()
            .map(|ps| ps.iter().any(|p| p.cidr.contains(&u.ip)));
        let in_block = blocks
            .iter()
            .any(|b| b.spec.cidr.parse::<IpNet>().is_ok_and(|n| n.contains(&u.ip)));
        let (ip, namespace, pod) = (u.ip, u.namespace.clone(), u.pod.clone());
        if in_pool == Some(true) || in_block {
            problems.push(Problem::InUseWithoutAllocation { ip, namespace, pod });
        } else if in_pool == Some(false) {
            problems.push(Problem::InUseOutsidePools { ip, namespace, pod });
        }
    }
    for (ip, pods) in users {
        if pods.len() > 1 {
            problems.push(Problem::AddressUsedTwice {
                ip,
                pods: pods.into_iter().collect(),
            });
        }
    }
    for (ip, bs) in holders {
        if bs.len() > 1 {
            problems.push(Problem::AddressHeldTwice { ip, blocks: bs });
        }
    }
}

/// Block layout: no overlaps (sorted by start, each compared with the widest reach so far),
/// each inside a pool.
fn check_layout(input: &CheckInput, blocks: &[&Block], problems: &mut Vec<Problem>) {
    let mut nets: Vec<(IpNet, String)> = blocks
        .iter()
        .filter_map(|b| {
            Some((
                blk::block_cidr(&b.spec).ok()?,
                b.metadata.name.clone().unwrap_or_default(),
            ))
        })
        .collect();
    nets.sort_by_key(|(n, _)| {
        (
            n.network().is_ipv6(),
            cidr::ip_to_u128(n.network()),
            n.prefix_len(),
        )
    });
    let mut reach: Option<(IpNet, &str)> = None;
    for (n, name) in &nets {
        if let Some((r, rname)) = reach
            && r.network().is_ipv6() == n.network().is_ipv6()
            && r.contains(&n.network())
        {
            // CIDRs nest or are disjoint: `r` is the wider one, and still the reach.
            problems.push(Problem::OverlappingBlocks {
                block: name.clone(),
                other: rname.to_string(),
            });
            continue;
        }
        reach = Some((*n, name));
    }
    if let Some(pools) = &input.pools {
        for (n, name) in &nets {
            if usage::owning_pool(pools, n).is_none() {
                problems.push(Problem::BlockOutsidePools { block: name.clone() });
            }
        }
    }
}

/// Each handle's recorded counts against what the blocks hold for it.
fn check_handles(
    input: &CheckInput,
    handles: &HashMap<String, &Handle>,
    actual: &BTreeMap<String, BTreeMap<String, u64>>,
    problems: &mut Vec<Problem>,
) {
    for (key, h) in handles {
        let relevant: Vec<(&String, &u64)> = h
            .spec
            .block
            .iter()
            .filter(|(c, _)| in_scope(&input.scope, c))
            .collect();
        if relevant.is_empty() && input.scope.is_some() {
            continue;
        }
        let held = actual.get(key);
        let total: u64 = held.map(|m| m.values().sum()).unwrap_or(0);
        if total == 0 {
            problems.push(Problem::HandleWithoutAddresses {
                handle: h.spec.handle_id.clone(),
            });
            continue;
        }
        let mut cidrs: BTreeSet<&String> = relevant.iter().map(|(c, _)| *c).collect();
        if let Some(m) = held {
            cidrs.extend(m.keys());
        }
        for c in cidrs {
            let recorded = h.spec.block.get(c).copied().unwrap_or(0);
            let got = held.and_then(|m| m.get(c)).copied().unwrap_or(0);
            if recorded != got {
                problems.push(Problem::HandleCountMismatch {
                    handle: h.spec.handle_id.clone(),
                    block: c.clone(),
                    recorded,
                    actual: got,
                });
            }
        }
    }
}

/// Affinities ↔ blocks.
fn check_affinities(input: &CheckInput, blocks: &[&Block], problems: &mut Vec<Problem>) {
    let block_cidrs: BTreeSet<&str> = blocks.iter().map(|b| b.spec.cidr.as_str()).collect();
    let mut affine_rows: BTreeSet<(String, String)> = BTreeSet::new();
    for a in input
        .affinities
        .iter()
        .filter(|a| !a.spec.is_deleted() && in_scope(&input.scope, &a.spec.cidr))
    {
        let name = a.metadata.name.clone().unwrap_or_default();
        affine_rows.insert((a.spec.node.clone(), a.spec.cidr.clone()));
        if !a.spec.is_confirmed() {
            continue;
        }
        let owner = format!("{}:{}", a.spec.affinity_type(), a.spec.node);
        match blocks.iter().find(|b| b.spec.cidr == a.spec.cidr) {
            None if !block_cidrs.contains(a.spec.cidr.as_str()) => problems.push(Problem::AffinityMismatch {
                affinity: name,
                detail: format!(
                    "confirmed for {}, but IPAMBlock {} does not exist",
                    a.spec.node, a.spec.cidr
                ),
            }),
            Some(b) if b.spec.affinity.as_deref() != Some(owner.as_str()) => {
                problems.push(Problem::AffinityMismatch {
                    affinity: name,
                    detail: format!(
                        "confirmed for {}, but IPAMBlock {} has affinity {:?}",
                        a.spec.node, a.spec.cidr, b.spec.affinity
                    ),
                })
            }
            _ => {}
        }
    }
    for b in blocks {
        if let Some(host) = b.spec.host()
            && !affine_rows.contains(&(host.to_string(), b.spec.cidr.clone()))
        {
            problems.push(Problem::BlockWithoutAffinity {
                block: b.metadata.name.clone().unwrap_or_default(),
                host: host.into(),
            });
        }
    }
}

pub fn render_problems(problems: &[Problem]) -> String {
    let mut s = String::new();
    for p in problems {
        s.push_str(&format!("- {p}\n"));
    }
    s.push_str(&format!("Check complete; found {} problems.\n", problems.len()));
    s
}

/// One row of `ipam show`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    /// "IP Pool", "Block", or "Block (orphaned allocation block)" for a block in no pool.
    pub grouping: String,
    pub cidr: String,
    /// Pool name, or the block's affinity.
    pub owner: String,
    pub total: u128,
    pub in_use: u128,
    /// Addresses IPReservations cover (calicoctl's IPS RESERVED). An address allocated before it
    /// was reserved counts here and in `in_use`, so the three need not add up to `total`.
    pub reserved: u128,
    /// Neither in use nor reserved.
    pub free: u128,
    /// Of `in_use`: released addresses still cooling down before reuse (IPAMConfig
    /// `ipCooldownSeconds`), as calicoctl's IPS COOLING.
    pub cooling: u128,
    /// Of `in_use`: addresses allocated by another node than the block's (borrowed).
    pub borrowed: u128,
    /// Blocks in the pool (pool rows only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    /// The pool's `spec.disabled` (pool rows only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// A borrowed address: its node differs from the block's owner.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Borrowed {
    pub ip: IpAddr,
    pub borrowing_node: String,
    pub block: String,
    pub block_owner: String,
    /// `pod`, `vmi`, or the allocation's `type` attribute (a tunnel address), as calicoctl's TYPE.
    #[serde(rename = "type")]
    pub type_: String,
    pub allocated_to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub rows: Vec<UsageRow>,
    pub borrowed: Vec<Borrowed>,
    /// Allocations without a `node` attribute: whether they are borrowed cannot be told
    /// (calicoctl prints the same note).
    pub unclassified: u64,
}

/// The owner of a block's affinity without its `host:` (or `virtual:`) prefix, "" for none.
fn affinity_owner(affinity: Option<&str>) -> String {
    affinity
        .map(|a| a.split_once(':').map_or(a, |(_, o)| o).to_string())
        .unwrap_or_default()
}

/// calicoctl's `ipam show` numbers: IN USE = block size − len(unallocated); RESERVED = addresses
/// `reserved` (every IPReservation) covers in the row's CIDR; FREE = neither, and for a pool
/// includes space not yet carved into blocks; blocks outside every pool are listed under a
/// pseudo-pool. Each block counts for the one pool that owns it ([`usage::owning_pool`]), as in
/// the metrics and IPPool status: a wider pool does not count a narrower pool's addresses.
pub fn usage(pools: &[Pool], blocks: &[Block], reserved: &Reserved, show_blocks: bool) -> Usage {
    let mut out = Usage::default();
    let refs: Vec<PoolRef> = pools.iter().filter_map(PoolRef::from_pool).collect();
    let live: Vec<&Block> = blocks.iter().filter(|b| !b.spec.is_deleted()).collect();
    let owner: Vec<Option<&str>> = live
        .iter()
        .map(|b| {
            let n = blk::block_cidr(&b.spec).ok()?;
            usage::owning_pool(&refs, &n).map(|p| p.name.as_str())
        })
        .collect();
    for (p, pool) in refs
        .iter()
        .zip(pools.iter().filter(|p| PoolRef::from_pool(p).is_some()))
    {
        let inside: Vec<UsageRow> = live
            .iter()
            .zip(&owner)
            .filter(|(_, o)| **o == Some(p.name.as_str()))
            .filter_map(|(b, _)| block_row(b, reserved))
            .collect();
        let sum = |f: fn(&UsageRow) -> u128| inside.iter().map(f).sum::<u128>();
        let in_use = sum(|r| r.in_use);
        let total = cidr::size(&p.cidr);
        let held = reserved.count_in(&p.cidr);
        // Reserved and in use: counted in IN USE already (FREE must not lose them twice).
        let held_in_use = sum(|r| r.reserved.saturating_sub(r.total - r.in_use - r.free));
        out.rows.push(UsageRow {
            grouping: "IP Pool".into(),
            cidr: p.cidr.to_string(),
            owner: p.name.clone(),
            total,
            in_use,
            reserved: held,
            free: total.saturating_sub(in_use + held.saturating_sub(held_in_use)),
            cooling: sum(|r| r.cooling),
            borrowed: sum(|r| r.borrowed),
            blocks: Some(inside.len() as u64),
            disabled: Some(pool.spec.is_disabled()),
        });
        if show_blocks {
            out.rows.extend(inside);
        }
    }
    if show_blocks {
        let orphans = live
            .iter()
            .zip(&owner)
            .filter(|(_, o)| o.is_none())
            .map(|(b, _)| b);
        for b in orphans {
            if let Some(mut r) = block_row(b, reserved) {
                r.grouping = "Block (orphaned allocation block)".into();
                out.rows.push(r);
            }
        }
    }
    for b in &live {
        borrowed_in(b, &mut out);
    }
    out
}

/// A block's row of `ipam show --show-blocks`.
fn block_row(b: &Block, reserved: &Reserved) -> Option<UsageRow> {
    let net = blk::block_cidr(&b.spec).ok()?;
    let total = cidr::size(&net);
    let unallocated = b.spec.unallocated.len() as u128;
    let in_use = total.saturating_sub(unallocated);
    let held = reserved.count_in(&net);
    // Reserved addresses that are free (not in use): those FREE leaves out.
    let held_free = if held == 0 {
        0
    } else {
        b.spec
            .unallocated
            .iter()
            .filter(|&&o| (o as u128) < total && reserved.contains(cidr::address_of(&net, o)))
            .count() as u128
    };
    let host = affinity_owner(b.spec.affinity.as_deref());
    let (mut cooling, mut borrowed) = (0, 0);
    for (o, _) in blk::allocated(&b.spec, &net) {
        let Some(a) = blk::attribute_of(&b.spec, o) else {
            continue;
        };
        cooling += u128::from(a.released_at.is_some());
        let node = a.secondary.as_ref().and_then(|s| s.get("node"));
        borrowed += u128::from(node.is_some_and(|n| *n != host));
    }
    Some(UsageRow {
        grouping: "Block".into(),
        cidr: b.spec.cidr.clone(),
        owner: b.spec.affinity.clone().unwrap_or_else(|| "-".into()),
        total,
        in_use,
        reserved: held,
        free: unallocated.saturating_sub(held_free),
        cooling,
        borrowed,
        blocks: None,
        disabled: None,
    })
}

/// The addresses of `b` that a node other than its owner holds (`ipam show --show-borrowed`);
/// the ones that name no node are counted as unclassified.
fn borrowed_in(b: &Block, out: &mut Usage) {
    let Ok(net) = blk::block_cidr(&b.spec) else {
        return;
    };
    let block_owner = affinity_owner(b.spec.affinity.as_deref());
    for (o, ip) in blk::allocated(&b.spec, &net) {
        let Some(attr) = blk::attribute_of(&b.spec, o) else {
            continue;
        };
        let sec = attr.secondary.clone().unwrap_or_default();
        let Some(node) = sec.get("node") else {
            out.unclassified += 1;
            continue;
        };
        if *node == block_owner {
            continue;
        }
        let ns = sec.get("namespace").unwrap_or("");
        let (type_, allocated_to) = if let Some(vmi) = sec.get("vmi") {
            ("vmi".to_string(), format!("{ns}/{vmi}"))
        } else if let Some(pod) = sec.get("pod") {
            ("pod".to_string(), format!("{ns}/{pod}"))
        } else {
            (
                sec.get("type").unwrap_or_default().to_string(),
                attr.handle_id.clone().unwrap_or_default(),
            )
        };
        out.borrowed.push(Borrowed {
            ip,
            borrowing_node: node.to_string(),
            block: net.to_string(),
            block_owner: block_owner.clone(),
            type_,
            allocated_to,
        });
    }
}

/// What one address is, for `ipam show --ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IpState {
    /// Allocated (`handleId` and `attributes` say to whom).
    Assigned,
    /// Released, and cooling down before it may be handed out again.
    Cooling,
    /// Held back from allocation: Windows' reserved addresses of a block.
    Reserved,
    NotAssigned,
}

/// `ipam show --ip`: who holds an address.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpInfo {
    pub ip: IpAddr,
    pub state: IpState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// The allocation's owner attributes (`node`, `namespace`, `pod`, `timestamp`, `type`, ...):
    /// calicoctl's "Active Owner Attributes".
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// A second owner's attributes (KubeVirt live migration).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub alternate_attributes: BTreeMap<String, String>,
    /// The block holding the address, its affinity, and whether its node borrowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_affinity: Option<String>,
    pub borrowed: bool,
    /// `sequenceNumberForAllocation` of the address (a guarded release names it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    /// The pool owning the block (or containing the address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// IPReservations whose `reservedCIDRs` hold the address (as `NAME (CIDR)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reserved_by: Vec<String>,
}

impl IpInfo {
    /// The pod recorded for the address, as (namespace, name).
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.attributes.get("namespace")?.as_str(),
            self.attributes.get("pod")?.as_str(),
        ))
    }
}

/// Who holds `ip`, from the pools and blocks (and reservations as `(name, cidr)`).
pub fn ip_info(pools: &[Pool], blocks: &[Block], reservations: &[(String, IpNet)], ip: IpAddr) -> IpInfo {
    let refs: Vec<PoolRef> = pools.iter().filter_map(PoolRef::from_pool).collect();
    let reserved_by: Vec<String> = reservations
        .iter()
        .filter(|(_, n)| n.contains(&ip))
        .map(|(name, n)| format!("{name} ({n})"))
        .collect();
    let mut info = IpInfo {
        ip,
        state: IpState::NotAssigned,
        handle_id: None,
        attributes: BTreeMap::new(),
        alternate_attributes: BTreeMap::new(),
        block: None,
        block_affinity: None,
        borrowed: false,
        sequence_number: None,
        // The most specific pool containing the address (a block, if any, settles it below).
        pool: refs
            .iter()
            .filter(|p| p.cidr.contains(&ip))
            .max_by_key(|p| (p.cidr.prefix_len(), std::cmp::Reverse(p.name.clone())))
            .map(|p| p.name.clone()),
        reserved_by,
    };
    // The block holding it: the narrowest live block containing the address (blocks never
    // overlap, but a damaged layout should still answer with the allocation if any holds it).
    let mut holding: Vec<(&Block, IpNet)> = blocks
        .iter()
        .filter(|b| !b.spec.is_deleted())
        .filter_map(|b| Some((b, blk::block_cidr(&b.spec).ok()?)))
        .filter(|(_, n)| n.contains(&ip))
        .collect();
    holding.sort_by_key(|(b, n)| {
        let o = cidr::ordinal_of(n, ip).unwrap_or(0);
        (
            b.spec.allocations.get(o).copied().flatten().is_none(),
            std::cmp::Reverse(n.prefix_len()),
        )
    });
    let Some((b, net)) = holding.first() else {
        return info;
    };
    info.block = Some(net.to_string());
    info.block_affinity = b.spec.affinity.clone();
    if let Some(p) = usage::owning_pool(&refs, net) {
        info.pool = Some(p.name.clone());
    }
    let Some(o) = cidr::ordinal_of(net, ip) else {
        return info;
    };
    if b.spec.allocations.get(o).copied().flatten().is_none() {
        return info;
    }
    let attr = blk::attribute_of(&b.spec, o).cloned().unwrap_or_default();
    info.handle_id = attr.handle_id.clone();
    info.attributes = attr.secondary.clone().unwrap_or_default().into_iter().collect();
    info.alternate_attributes = attr
        .alternate_owner_attrs
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    info.sequence_number = blk::allocation_sequence(&b.spec, o);
    info.state = if attr.handle_id.as_deref() == Some(blk::WINDOWS_RESERVED_HANDLE) {
        IpState::Reserved
    } else if attr.released_at.is_some() {
        IpState::Cooling
    } else {
        IpState::Assigned
    };
    let host = affinity_owner(b.spec.affinity.as_deref());
    info.borrowed = info.attributes.get("node").is_some_and(|n| *n != host);
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BlockAffinitySpec, CalicoKind, CrdMode, Flag, IPAMHandleSpec, IPPoolSpec};

    fn block(cidr: &str, host: &str) -> Block {
        let net: IpNet = cidr.parse().unwrap();
        Block::new(
            &super::super::names::block_name(&net),
            &CrdMode::V1.resource(CalicoKind::IPAMBlock),
            blk::new_block(&net, Some(format!("host:{host}")), 1, None),
        )
    }

    fn handle(id: &str, cidr: &str, n: u64) -> Handle {
        Handle::new(
            &id.to_lowercase(),
            &CrdMode::V1.resource(CalicoKind::IPAMHandle),
            IPAMHandleSpec {
                handle_id: id.into(),
                block: [(cidr.to_string(), n)].into(),
                ..Default::default()
            },
        )
    }

    fn affinity(host: &str, cidr: &str) -> Affinity {
        let net: IpNet = cidr.parse().unwrap();
        Affinity::new(
            &super::super::names::affinity_name(host, &net),
            &CrdMode::V1.resource(CalicoKind::BlockAffinity),
            BlockAffinitySpec {
                state: "confirmed".into(),
                node: host.into(),
                type_: Some("host".into()),
                cidr: cidr.into(),
                deleted: Flag::Str(false),
                extra: Default::default(),
            },
        )
    }

    fn pod_attrs(pod: &str) -> crate::api::StrMap {
        [
            ("namespace".to_string(), "default".to_string()),
            ("pod".into(), pod.into()),
            ("node".into(), "a".into()),
        ]
        .into()
    }

    #[test]
    fn clean_state_has_no_problems_and_each_problem_is_found() {
        let mut b = block("10.0.0.0/26", "a");
        blk::allocate(&mut b.spec, 2, Some("h1"), &pod_attrs("p1"), |_| false);
        let mut input = CheckInput {
            blocks: vec![b.clone()],
            handles: vec![handle("h1", "10.0.0.0/26", 2)],
            affinities: vec![affinity("a", "10.0.0.0/26")],
            pods: Some([("default".to_string(), "p1".to_string())].into()),
            ..Default::default()
        };
        assert_eq!(check(&input), vec![]);

        input.handles[0].spec.block.insert("10.0.0.0/26".into(), 3);
        input.handles.push(handle("orphan", "10.0.0.0/26", 1));
        input.pods = Some(BTreeSet::new());
        input.affinities.push(affinity("b", "10.0.1.0/26"));
        blk::allocate(
            &mut input.blocks[0].spec,
            1,
            None,
            &crate::api::StrMap::new(),
            |_| false,
        );
        let mut other = block("10.0.0.0/25", "c");
        blk::allocate(&mut other.spec, 1, Some("h1"), &crate::api::StrMap::new(), |_| {
            false
        });
        input.blocks.push(other);
        let p = check(&input);
        let kinds: BTreeSet<String> = p
            .iter()
            .map(|p| {
                serde_json::to_value(p).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        for k in [
            "handleCountMismatch",
            "handleWithoutAddresses",
            "podGone",
            "affinityMismatch",
            "allocationWithoutHandle",
            "addressHeldTwice",
            "blockWithoutAffinity",
        ] {
            assert!(kinds.contains(k), "{k} not reported in:\n{}", render_problems(&p));
        }
        assert!(render_problems(&p).contains("Check complete; found"));
    }

    fn pool_ref(name: &str, cidr: &str) -> PoolRef {
        PoolRef {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: 26,
        }
    }

    fn kinds(p: &[Problem]) -> Vec<String> {
        p.iter()
            .map(|p| {
                serde_json::to_value(p).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// A clean node: one pod holding 10.0.0.0, its block, handle and affinity.
    fn clean() -> CheckInput {
        let mut b = block("10.0.0.0/26", "a");
        blk::allocate(&mut b.spec, 1, Some("h1"), &pod_attrs("p1"), |_| false);
        CheckInput {
            blocks: vec![b],
            handles: vec![handle("h1", "10.0.0.0/26", 1)],
            affinities: vec![affinity("a", "10.0.0.0/26")],
            pods: Some([("default".to_string(), "p1".to_string())].into()),
            in_use: Some(vec![in_use("10.0.0.0", "p1")]),
            pools: Some(vec![pool_ref("pool", "10.0.0.0/24")]),
            scope: None,
        }
    }

    fn in_use(ip: &str, pod: &str) -> InUse {
        InUse {
            ip: ip.parse().unwrap(),
            namespace: "default".into(),
            pod: pod.into(),
        }
    }

    #[test]
    fn a_live_pods_address_without_allocation_is_found() {
        assert_eq!(check(&clean()), vec![]);
        // `ipam release --force` of the live pod's address: the block no longer holds it.
        let mut input = clean();
        input.blocks = vec![block("10.0.0.0/26", "a")];
        input.handles.clear();
        let p = check(&input);
        assert_eq!(
            kinds(&p),
            vec!["inUseWithoutAllocation"],
            "{}",
            render_problems(&p)
        );
        assert!(
            p[0].to_string().contains("10.0.0.0 is used by pod default/p1"),
            "{}",
            p[0]
        );
        // Even with no block left at all, the pool says the address is IPAM's.
        input.blocks.clear();
        input.affinities.clear();
        assert_eq!(kinds(&check(&input)), vec!["inUseWithoutAllocation"]);
        // Outside every pool.
        input.in_use = Some(vec![in_use("192.168.9.9", "p1")]);
        assert_eq!(kinds(&check(&input)), vec!["inUseOutsidePools"]);
        // Out of scope: not looked at.
        input.scope = Some(vec!["10.0.0.0/16".parse().unwrap()]);
        assert!(check(&input).is_empty());
    }

    #[test]
    fn an_address_two_pods_use_is_found() {
        let mut input = clean();
        input
            .pods
            .as_mut()
            .unwrap()
            .insert(("default".into(), "p2".into()));
        input.in_use.as_mut().unwrap().push(in_use("10.0.0.0", "p2"));
        let p = check(&input);
        assert_eq!(kinds(&p), vec!["addressUsedTwice"]);
        assert!(p[0].to_string().contains("default/p1, default/p2"), "{}", p[0]);
    }

    #[test]
    fn an_allocation_its_pod_does_not_use_is_found() {
        let mut input = clean();
        // The pod (a new sandbox) uses another address; the old one was never released.
        input.in_use = Some(vec![in_use("10.0.0.9", "p1")]);
        let p = check(&input);
        let k = kinds(&p);
        assert!(
            k.contains(&"allocationNotUsedByPod".to_string()),
            "{}",
            render_problems(&p)
        );
        // ... and the address it does use is not allocated.
        assert!(
            k.contains(&"inUseWithoutAllocation".to_string()),
            "{}",
            render_problems(&p)
        );
        // A pod that shows no address yet (still being set up) is not judged.
        input.in_use = Some(vec![]);
        assert!(check(&input).is_empty());
        // Nor one that shows only an address of the other family.
        input.in_use = Some(vec![in_use("fd00::9", "p1")]);
        assert_eq!(kinds(&check(&input)), vec!["inUseOutsidePools"]);
    }

    #[test]
    fn overlapping_blocks_and_blocks_outside_pools_are_found() {
        let mut input = clean();
        input.blocks.push(block("10.0.0.0/28", "a"));
        input.blocks.push(block("10.0.0.16/28", "a"));
        input.blocks.push(block("10.9.0.0/26", "a"));
        for c in ["10.0.0.0/28", "10.0.0.16/28", "10.9.0.0/26"] {
            input.affinities.push(affinity("a", c));
        }
        let p = check(&input);
        let overlaps: Vec<String> = p
            .iter()
            .filter(|p| matches!(p, Problem::OverlappingBlocks { .. }))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            overlaps,
            vec![
                "IPAMBlock 10-0-0-0-28 overlaps IPAMBlock 10-0-0-0-26",
                "IPAMBlock 10-0-0-16-28 overlaps IPAMBlock 10-0-0-0-26"
            ]
        );
        assert!(p.contains(&Problem::BlockOutsidePools {
            block: "10-9-0-0-26".into()
        }));
        assert_eq!(p.len(), 3, "{}", render_problems(&p));
        // Without pools, blocks are not judged against them.
        input.pools = None;
        assert_eq!(check(&input).len(), 2);
    }

    #[test]
    fn handles_are_matched_by_exact_id() {
        // Two handles differing only in case are two handles: each is checked on its own.
        let mut input = clean();
        let mut other = handle("H1", "10.0.0.0/26", 1);
        other.metadata.name = Some(crate::ipam::names::handle_name("H1"));
        input.handles.push(other);
        let p = check(&input);
        assert_eq!(
            p,
            vec![Problem::HandleWithoutAddresses { handle: "H1".into() }],
            "{}",
            render_problems(&p)
        );
    }

    #[test]
    fn nested_pools_count_only_their_own_blocks() {
        let pool = |name: &str, cidr: &str| {
            Pool::new(
                name,
                &CrdMode::V1.resource(CalicoKind::IPPool),
                IPPoolSpec {
                    cidr: cidr.into(),
                    ..Default::default()
                },
            )
        };
        let mut outer_b = block("10.0.0.0/26", "a");
        blk::allocate(&mut outer_b.spec, 2, Some("h1"), &pod_attrs("p1"), |_| false);
        let mut inner_b = block("10.0.1.0/26", "a");
        blk::allocate(&mut inner_b.spec, 5, Some("h2"), &pod_attrs("p2"), |_| false);
        let u = usage(
            &[pool("outer", "10.0.0.0/16"), pool("inner", "10.0.1.0/24")],
            &[outer_b, inner_b],
            &Reserved::default(),
            true,
        );
        let row = |cidr: &str| {
            u.rows
                .iter()
                .find(|r| r.grouping == "IP Pool" && r.cidr == cidr)
                .unwrap()
        };
        assert_eq!(row("10.0.0.0/16").in_use, 2);
        assert_eq!(row("10.0.1.0/24").in_use, 5);
        // Each block is listed once, under its owner.
        assert_eq!(u.rows.iter().filter(|r| r.grouping == "Block").count(), 2);
        let inner_at = u.rows.iter().position(|r| r.cidr == "10.0.1.0/24").unwrap();
        assert_eq!(u.rows[inner_at + 1].cidr, "10.0.1.0/26");
    }

    #[test]
    fn reserved_addresses_count_apart_from_free() {
        let pool = Pool::new(
            "default",
            &CrdMode::V1.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: "10.0.0.0/24".into(),
                ..Default::default()
            },
        );
        let mut b = block("10.0.0.0/26", "a");
        blk::allocate(&mut b.spec, 3, Some("h1"), &pod_attrs("p1"), |_| false);
        // .2 was allocated before it was reserved (in use and reserved), .3 is reserved and free,
        // and 16 reserved addresses lie outside every block.
        let entries = vec!["10.0.0.2/31".to_string(), "10.0.0.128/28".to_string()];
        let (reserved, bad) = Reserved::new([("r", entries.as_slice())]);
        assert!(bad.is_empty());
        let u = usage(&[pool], &[b], &reserved, true);
        let (p, b) = (&u.rows[0], &u.rows[1]);
        assert_eq!((b.total, b.in_use, b.reserved, b.free), (64, 3, 2, 60));
        assert_eq!((p.total, p.in_use, p.reserved, p.free), (256, 3, 18, 236));
        let none = usage(&[], &[], &Reserved::default(), true);
        assert!(none.rows.is_empty());
    }

    #[test]
    fn usage_counts_like_calicoctl() {
        let pool = Pool::new(
            "default",
            &CrdMode::V1.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: "10.0.0.0/24".into(),
                ..Default::default()
            },
        );
        let mut b = block("10.0.0.0/26", "a");
        let mut attrs = pod_attrs("p1");
        attrs.insert("node".into(), "b".into());
        blk::allocate(&mut b.spec, 3, Some("h1"), &attrs, |_| false);
        let u = usage(
            &[pool],
            &[b, block("10.9.0.0/26", "z")],
            &Reserved::default(),
            true,
        );
        assert_eq!(u.rows[0].total, 256);
        assert_eq!(u.rows[0].in_use, 3);
        assert_eq!(u.rows[0].free, 253);
        assert_eq!(u.rows[1].grouping, "Block");
        assert_eq!(u.rows[1].in_use, 3);
        assert!(u.rows[2].grouping.contains("orphaned"));
        assert_eq!(u.borrowed.len(), 3);
        assert_eq!(u.borrowed[0].block_owner, "a");
        assert_eq!(u.borrowed[0].type_, "pod");
        assert_eq!(u.borrowed[0].allocated_to, "default/p1");
        assert_eq!((u.rows[0].borrowed, u.rows[0].blocks), (3, Some(1)));
        assert_eq!(u.unclassified, 0);
    }

    #[test]
    fn ip_info_says_who_holds_an_address() {
        let pool = Pool::new(
            "default",
            &CrdMode::V1.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: "10.0.0.0/24".into(),
                ..Default::default()
            },
        );
        let mut b = block("10.0.0.0/26", "a");
        let mut attrs = pod_attrs("p1");
        attrs.insert("node".into(), "b".into());
        blk::allocate(&mut b.spec, 1, Some("h1"), &attrs, |_| false);
        blk::allocate(
            &mut b.spec,
            1,
            Some(blk::WINDOWS_RESERVED_HANDLE),
            &Default::default(),
            |_| false,
        );
        let pools = [pool];
        let blocks = [b];
        let i = ip_info(&pools, &blocks, &[], "10.0.0.0".parse().unwrap());
        assert_eq!(i.state, IpState::Assigned);
        assert_eq!(i.handle_id.as_deref(), Some("h1"));
        assert_eq!(i.pod(), Some(("default", "p1")));
        assert!(i.borrowed, "node b allocated from a's block");
        assert_eq!(i.block.as_deref(), Some("10.0.0.0/26"));
        assert_eq!(i.pool.as_deref(), Some("default"));
        assert!(i.sequence_number.is_some());
        let r = ip_info(&pools, &blocks, &[], "10.0.0.1".parse().unwrap());
        assert_eq!(r.state, IpState::Reserved);
        let keep = [("keep".to_string(), "10.0.0.0/28".parse().unwrap())];
        let free = ip_info(&pools, &blocks, &keep, "10.0.0.9".parse().unwrap());
        assert_eq!(free.state, IpState::NotAssigned);
        assert_eq!(free.reserved_by, vec!["keep (10.0.0.0/28)".to_string()]);
        assert_eq!(free.block.as_deref(), Some("10.0.0.0/26"));
        let outside = ip_info(&pools, &blocks, &[], "10.0.3.1".parse().unwrap());
        assert_eq!(
            (outside.state, outside.block, outside.pool),
            (IpState::NotAssigned, None, None)
        );
        let unblocked = ip_info(&pools, &blocks, &[], "10.0.0.200".parse().unwrap());
        assert_eq!(
            (unblocked.block, unblocked.pool.as_deref()),
            (None, Some("default"))
        );
    }
}
