//! `ipam check` and `ipam show` as pure functions over listed objects (no I/O): the CLI lists,
//! these decide and render.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::block as blk;
use super::cidr;
use super::usage::{self, PoolRef};
use crate::api::{Affinity, Block, Handle, Pool};

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
    for b in &blocks {
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
    }
    // Addresses in use: allocated, inside a pool, used once.
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
    // Block layout: no overlaps (sorted by start, each compared with the widest reach so far),
    // each inside a pool.
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
    let block_cidrs: BTreeSet<&str> = blocks.iter().map(|b| b.spec.cidr.as_str()).collect();
    for (key, h) in &handles {
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
    // Affinities ↔ blocks.
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
    for b in &blocks {
        if let Some(host) = b.spec.host()
            && !affine_rows.contains(&(host.to_string(), b.spec.cidr.clone()))
        {
            problems.push(Problem::BlockWithoutAffinity {
                block: b.metadata.name.clone().unwrap_or_default(),
                host: host.into(),
            });
        }
    }
    problems
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
    /// "IP Pool" or "Block".
    pub grouping: String,
    pub cidr: String,
    /// Pool name, or the block's affinity.
    pub owner: String,
    pub total: u128,
    pub in_use: u128,
    pub free: u128,
}

/// A borrowed address: its node differs from the block's owner.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Borrowed {
    pub ip: IpAddr,
    pub borrowing_node: String,
    pub block: String,
    pub block_owner: String,
    pub allocated_to: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub rows: Vec<UsageRow>,
    pub borrowed: Vec<Borrowed>,
}

/// calicoctl's `ipam show` numbers: IN USE = block size − len(unallocated); pool FREE includes
/// space not yet carved into blocks; blocks outside every pool are listed under a pseudo-pool.
/// Each block counts for the one pool that owns it ([`usage::owning_pool`]), as in the metrics
/// and IPPool status: a wider pool does not count a narrower pool's addresses.
pub fn usage(pools: &[Pool], blocks: &[Block], show_blocks: bool) -> Usage {
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
    let block_row = |b: &Block| -> Option<UsageRow> {
        let net = blk::block_cidr(&b.spec).ok()?;
        let total = cidr::size(&net);
        let free = b.spec.unallocated.len() as u128;
        Some(UsageRow {
            grouping: "Block".into(),
            cidr: b.spec.cidr.clone(),
            owner: b.spec.affinity.clone().unwrap_or_else(|| "-".into()),
            total,
            in_use: total.saturating_sub(free),
            free,
        })
    };
    for p in &refs {
        let inside: Vec<&Block> = live
            .iter()
            .zip(&owner)
            .filter(|(_, o)| **o == Some(p.name.as_str()))
            .map(|(b, _)| *b)
            .collect();
        let in_use: u128 = inside.iter().filter_map(|b| block_row(b)).map(|r| r.in_use).sum();
        let total = cidr::size(&p.cidr);
        out.rows.push(UsageRow {
            grouping: "IP Pool".into(),
            cidr: p.cidr.to_string(),
            owner: p.name.clone(),
            total,
            in_use,
            free: total.saturating_sub(in_use),
        });
        if show_blocks {
            out.rows.extend(inside.iter().filter_map(|b| block_row(b)));
        }
    }
    if show_blocks {
        let orphans = live
            .iter()
            .zip(&owner)
            .filter(|(_, o)| o.is_none())
            .map(|(b, _)| b);
        for b in orphans {
            if let Some(mut r) = block_row(b) {
                r.grouping = "Block (orphaned allocation block)".into();
                out.rows.push(r);
            }
        }
    }
    for a in super::Ipam::allocations(blocks) {
        let node = a.attrs.get("node").unwrap_or("").to_string();
        if a.block_host.as_deref() != Some(node.as_str()) {
            let to = match (a.attrs.get("namespace"), a.attrs.get("pod")) {
                (Some(ns), Some(p)) => format!("{ns}/{p}"),
                _ => a.handle_id.clone().unwrap_or_default(),
            };
            out.borrowed.push(Borrowed {
                ip: a.ip,
                borrowing_node: node,
                block: a.block.to_string(),
                block_owner: a.block_host.clone().unwrap_or_else(|| "-".into()),
                allocated_to: to,
            });
        }
    }
    out
}

fn pct(part: u128, total: u128) -> String {
    if total == 0 {
        "0%".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / total as f64)
    }
}

/// The table calicoctl prints.
pub fn render_usage(u: &Usage) -> String {
    let mut rows = vec![vec![
        "GROUPING".to_string(),
        "CIDR".into(),
        "OWNER".into(),
        "IPS TOTAL".into(),
        "IPS IN USE".into(),
        "IPS FREE".into(),
    ]];
    for r in &u.rows {
        rows.push(vec![
            r.grouping.clone(),
            r.cidr.clone(),
            r.owner.clone(),
            r.total.to_string(),
            format!("{} ({})", r.in_use, pct(r.in_use, r.total)),
            format!("{} ({})", r.free, pct(r.free, r.total)),
        ]);
    }
    let mut s = table(&rows);
    if !u.borrowed.is_empty() {
        s.push('\n');
        let mut rows = vec![vec![
            "IP".to_string(),
            "BORROWING-NODE".into(),
            "BLOCK".into(),
            "BLOCK OWNER".into(),
            "ALLOCATED-TO".into(),
        ]];
        for b in &u.borrowed {
            rows.push(vec![
                b.ip.to_string(),
                b.borrowing_node.clone(),
                b.block.clone(),
                b.block_owner.clone(),
                b.allocated_to.clone(),
            ]);
        }
        s.push_str(&table(&rows));
    }
    s
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, |r| r.len());
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        s.push_str(line.join(" | ").trim_end());
        s.push('\n');
    }
    s
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
        let u = usage(&[pool], &[b, block("10.9.0.0/26", "z")], true);
        assert_eq!(u.rows[0].total, 256);
        assert_eq!(u.rows[0].in_use, 3);
        assert_eq!(u.rows[0].free, 253);
        assert_eq!(u.rows[1].grouping, "Block");
        assert_eq!(u.rows[1].in_use, 3);
        assert!(u.rows[2].grouping.contains("orphaned"));
        assert_eq!(u.borrowed.len(), 3);
        assert_eq!(u.borrowed[0].block_owner, "a");
        let text = render_usage(&u);
        assert!(
            text.contains("IPS IN USE") && text.contains("BORROWING-NODE"),
            "{text}"
        );
    }
}
