//! Which IPPool a block's addresses count for, decided in one place for `ipam show`, the
//! metrics and the IPPool status (issue 15: a wider pool counted a narrower pool's addresses).
//!
//! A block belongs to one pool: of the pools whose CIDR contains it, the one that could have
//! carved it (its blockSize is the block's prefix length: Calico only creates blocks of the
//! pool's size), then the most specific (longest prefix), then the first by name (Calico's pool
//! order). Disabled pools own their blocks too: their addresses stay in use. A block no pool
//! contains is an orphan (`ipam show`'s "orphaned allocation block", metrics' `no_ippool`).
//!
//! [`Usage::compute`] walks the blocks once with that rule and yields every count the metrics
//! export (Calico's per-pool-and-node series and its legacy per-node ones); [`by_pool`] gives the
//! per-pool totals the IPPool status and `ipam show` print. Both read [`attributed`], so a block
//! counts for the same pool everywhere.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::api::{IPAMBlockSpec, Pool};

/// The facts about a pool that attribution needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRef {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
}

impl PoolRef {
    /// `None` for a pool without a name or a parsable CIDR.
    pub fn from_pool(p: &Pool) -> Option<PoolRef> {
        Some(PoolRef {
            name: p.metadata.name.clone()?,
            cidr: p.spec.net()?.trunc(),
            block_size: p.spec.effective_block_size(),
        })
    }
}

/// The pool that owns `block` (see the module doc), if any.
pub fn owning_pool<'a>(pools: &'a [PoolRef], block: &IpNet) -> Option<&'a PoolRef> {
    pools.iter().filter(|p| p.cidr.contains(block)).min_by(|a, b| {
        let carves = |p: &PoolRef| p.block_size != block.prefix_len();
        (carves(a), std::cmp::Reverse(a.cidr.prefix_len()), &a.name).cmp(&(
            carves(b),
            std::cmp::Reverse(b.cidr.prefix_len()),
            &b.name,
        ))
    })
}

/// The name of the pool owning a block, `no_ippool` when none does (the metrics' and GC's label).
pub fn pool_of(pools: &[PoolRef], cidr: &IpNet) -> String {
    owning_pool(pools, cidr)
        .map(|p| p.name.clone())
        .unwrap_or_else(|| NO_IPPOOL.into())
}

/// Calico's label for an allocation without a `node` attribute.
pub const UNKNOWN_NODE: &str = "unknown_node";
/// Calico's label for a block without a `host:` affinity.
pub const NO_AFFINITY: &str = "no_affinity";
/// Calico's label for blocks no pool contains.
pub const NO_IPPOOL: &str = "no_ippool";

/// The live blocks (not marked deleted, parsable CIDR), each with the pool that owns it.
pub fn attributed<'p, 'b>(
    pools: &'p [PoolRef],
    blocks: impl IntoIterator<Item = &'b IPAMBlockSpec>,
) -> impl Iterator<Item = (Option<&'p PoolRef>, IpNet, &'b IPAMBlockSpec)> {
    blocks
        .into_iter()
        .filter(|b| !b.is_deleted())
        .filter_map(move |b| {
            let net = b.cidr.parse::<IpNet>().ok()?;
            Some((owning_pool(pools, &net), net, b))
        })
}

/// The node an allocation belongs to: its `node` attribute (an empty one is none).
fn allocation_node(b: &IPAMBlockSpec, attr: usize) -> Option<&str> {
    b.attributes
        .get(attr)
        .and_then(|a| a.secondary.as_ref())
        .and_then(|s| s.get("node"))
        .filter(|n| !n.is_empty())
}

/// Facts of one pool that do not depend on nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolSpace {
    /// Addresses in the pool's CIDR.
    pub size: f64,
    /// Addresses of the CIDR that reservations cover (overlaps counted once).
    pub reserved: f64,
}

/// (pool, node) → count.
pub type PoolNodeCounts = BTreeMap<(String, String), u64>;

/// Every IPAM count the operator reports, from one walk over the blocks.
///
/// Labels follow Calico's kube-controllers: an allocation without a `node` attribute counts
/// under `unknown_node` and is never borrowed; a block without a `host:` affinity counts under
/// `no_affinity` and every allocation in it is borrowed; blocks no pool owns under `no_ippool`.
/// Every (pool, node) pair of a known pool and a known node is present, at zero when nothing
/// is there, so that ratios and rates have a series from the start. Unlike Calico,
/// allocations without a handle count too (one rule with the IPPool status; `ipam check`
/// reports them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Allocations per (pool, node of the allocation).
    pub in_use: PoolNodeCounts,
    /// Allocations in a block not affine to their node, per (pool, node of the allocation).
    pub borrowed: PoolNodeCounts,
    /// Blocks per (pool, affine node).
    pub blocks: PoolNodeCounts,
    /// Pool → size and reserved addresses (known pools only).
    pub pools: BTreeMap<String, PoolSpace>,
    /// Calico's legacy single-label series, over every pool. As there, allocations without a
    /// `node` attribute count under the empty node name.
    pub allocations_per_node: BTreeMap<String, u64>,
    pub borrowed_per_node: BTreeMap<String, u64>,
    pub blocks_per_node: BTreeMap<String, u64>,
    /// The nodes series are present for: the known ones and those blocks name.
    pub nodes: BTreeSet<String>,
}

impl Usage {
    /// `known_nodes`: the cluster's nodes (their series are present at zero); `reserved`: the
    /// CIDRs of every IPReservation.
    pub fn compute<'b, 'n>(
        pools: &[PoolRef],
        blocks: impl IntoIterator<Item = &'b IPAMBlockSpec>,
        known_nodes: impl IntoIterator<Item = &'n str>,
        reserved: &[IpNet],
    ) -> Usage {
        let mut u = Usage::start(pools, known_nodes, reserved);
        for b in blocks {
            u.add(pools, b);
        }
        u.finish(pools)
    }

    /// [`Self::compute`] one block at a time: `start`, [`Self::add`] each block, [`Self::finish`]
    /// (for blocks decoded one by one).
    pub fn start<'n>(
        pools: &[PoolRef],
        known_nodes: impl IntoIterator<Item = &'n str>,
        reserved: &[IpNet],
    ) -> Usage {
        let mut u = Usage {
            nodes: known_nodes.into_iter().map(str::to_string).collect(),
            ..Default::default()
        };
        let reserved = IpNet::aggregate(&reserved.to_vec());
        for p in pools {
            u.pools.insert(
                p.name.clone(),
                PoolSpace {
                    size: addresses(&p.cidr),
                    reserved: reserved_in(&p.cidr, &reserved),
                },
            );
        }
        u
    }

    /// Counts one block (none when it is marked deleted or its CIDR does not parse).
    pub fn add(&mut self, pools: &[PoolRef], b: &IPAMBlockSpec) {
        let u = self;
        let key = |pool: &str, node: &str| (pool.to_string(), node.to_string());
        for (pool, _, b) in attributed(pools, [b]) {
            let pool = pool.map_or(NO_IPPOOL, |p| p.name.as_str());
            let host = b.host();
            let affine = host.unwrap_or(NO_AFFINITY);
            *u.blocks.entry(key(pool, affine)).or_default() += 1;
            *u.blocks_per_node.entry(affine.to_string()).or_default() += 1;
            if let Some(h) = host {
                u.nodes.insert(h.to_string());
            }
            for &attr in b.allocations.iter().flatten() {
                let node = allocation_node(b, attr);
                *u.in_use
                    .entry(key(pool, node.unwrap_or(UNKNOWN_NODE)))
                    .or_default() += 1;
                *u.allocations_per_node
                    .entry(node.unwrap_or("").to_string())
                    .or_default() += 1;
                let Some(node) = node else { continue };
                u.nodes.insert(node.to_string());
                if Some(node) != host {
                    *u.borrowed.entry(key(pool, node)).or_default() += 1;
                    *u.borrowed_per_node.entry(node.to_string()).or_default() += 1;
                }
            }
        }
    }

    /// Every (pool, node) pair present, at zero where nothing was counted.
    pub fn finish(mut self, pools: &[PoolRef]) -> Usage {
        let u = &mut self;
        let key = |pool: &str, node: &str| (pool.to_string(), node.to_string());
        for n in &u.nodes {
            for p in pools {
                for m in [&mut u.in_use, &mut u.borrowed, &mut u.blocks] {
                    m.entry(key(&p.name, n)).or_default();
                }
            }
            for m in [
                &mut u.allocations_per_node,
                &mut u.borrowed_per_node,
                &mut u.blocks_per_node,
            ] {
                m.entry(n.clone()).or_default();
            }
        }
        self
    }

    /// The (pool, node) pairs present at zero: every known pool with every node.
    pub fn pool_nodes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pools
            .keys()
            .flat_map(|p| self.nodes.iter().map(move |n| (p.as_str(), n.as_str())))
    }
}

/// How many addresses a CIDR holds (as a float: an IPv6 pool holds more than any integer gauge).
fn addresses(net: &IpNet) -> f64 {
    2f64.powi((net.max_prefix_len() - net.prefix_len()) as i32)
}

/// Addresses of `pool` inside `reserved`, which holds no overlapping CIDRs: two CIDRs either
/// nest or are disjoint.
fn reserved_in(pool: &IpNet, reserved: &[IpNet]) -> f64 {
    reserved
        .iter()
        .map(|r| {
            if pool.contains(r) {
                addresses(r)
            } else if r.contains(pool) {
                addresses(pool)
            } else {
                0.0
            }
        })
        .sum()
}

/// Allocated addresses and blocks a pool owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub allocations: u64,
    pub blocks: u64,
}

/// What the per-pool counts read of a block: a block, or a compact copy of one.
pub trait BlockCounts: Sync {
    fn cidr(&self) -> &str;
    fn is_deleted(&self) -> bool;
    /// Allocated addresses.
    fn allocated(&self) -> u64;
}

impl BlockCounts for IPAMBlockSpec {
    fn cidr(&self) -> &str {
        &self.cidr
    }
    fn is_deleted(&self) -> bool {
        IPAMBlockSpec::is_deleted(self)
    }
    fn allocated(&self) -> u64 {
        self.allocations.iter().filter(|a| a.is_some()).count() as u64
    }
}

/// Usage per owning pool name (`None`: blocks no pool contains). Deleted blocks (and blocks
/// whose CIDR does not parse) do not count.
pub fn by_pool<'a, B: BlockCounts + ?Sized + 'a>(
    pools: &[PoolRef],
    blocks: impl IntoIterator<Item = &'a B>,
) -> BTreeMap<Option<String>, PoolUsage> {
    let mut out: BTreeMap<Option<String>, PoolUsage> = BTreeMap::new();
    for b in blocks {
        if b.is_deleted() {
            continue;
        }
        let Ok(net) = b.cidr().parse::<IpNet>() else {
            continue;
        };
        let pool = owning_pool(pools, &net);
        let u = out.entry(pool.map(|p| p.name.clone())).or_default();
        u.blocks += 1;
        u.allocations += b.allocated();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, cidr: &str, bs: u8) -> PoolRef {
        PoolRef {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            block_size: bs,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn block(cidr: &str, used: usize) -> IPAMBlockSpec {
        let n = net(cidr);
        let size = 1usize << (n.max_prefix_len() - n.prefix_len());
        IPAMBlockSpec {
            cidr: cidr.into(),
            allocations: (0..size).map(|i| (i < used).then_some(0)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn nested_pools_each_own_their_blocks() {
        let pools = vec![
            pool("wide", "10.0.0.0/16", 26),
            pool("narrow", "10.0.128.0/24", 26),
            pool("narrower", "10.0.128.0/25", 26),
        ];
        assert_eq!(owning_pool(&pools, &net("10.0.0.0/26")).unwrap().name, "wide");
        assert_eq!(
            owning_pool(&pools, &net("10.0.128.0/26")).unwrap().name,
            "narrower"
        );
        assert_eq!(
            owning_pool(&pools, &net("10.0.128.128/26")).unwrap().name,
            "narrow"
        );
        assert_eq!(owning_pool(&pools, &net("10.1.0.0/26")), None);
        // Pool order does not matter.
        let mut rev = pools.clone();
        rev.reverse();
        assert_eq!(owning_pool(&rev, &net("10.0.128.0/26")).unwrap().name, "narrower");

        let blocks = [
            block("10.0.0.0/26", 3),
            block("10.0.128.0/26", 5),
            block("10.0.128.128/26", 7),
            block("10.1.0.0/26", 1),
        ];
        let u = by_pool(&pools, blocks.iter());
        let get = |k: Option<&str>| u.get(&k.map(str::to_string)).copied().unwrap_or_default();
        assert_eq!(
            get(Some("wide")),
            PoolUsage {
                allocations: 3,
                blocks: 1
            }
        );
        assert_eq!(
            get(Some("narrow")),
            PoolUsage {
                allocations: 7,
                blocks: 1
            }
        );
        assert_eq!(
            get(Some("narrower")),
            PoolUsage {
                allocations: 5,
                blocks: 1
            }
        );
        assert_eq!(
            get(None),
            PoolUsage {
                allocations: 1,
                blocks: 1
            }
        );
        // Every block counts exactly once.
        let total: u64 = u.values().map(|u| u.allocations).sum();
        assert_eq!(total, 16);
    }

    #[test]
    fn the_pool_that_carves_the_block_size_wins() {
        // A /29 block inside a /24 pool of /29 blocks that sits inside a /16 pool of /26 blocks
        // came from the /24 pool; a /26 block there came from the wide pool (a block made
        // before the narrower pool existed).
        let pools = vec![
            pool("wide", "10.0.0.0/16", 26),
            pool("small-blocks", "10.0.5.0/24", 29),
        ];
        assert_eq!(
            owning_pool(&pools, &net("10.0.5.8/29")).unwrap().name,
            "small-blocks"
        );
        assert_eq!(owning_pool(&pools, &net("10.0.5.0/26")).unwrap().name, "wide");
        // Same CIDR twice: the first by name.
        let twins = vec![pool("b", "10.0.0.0/24", 26), pool("a", "10.0.0.0/24", 26)];
        assert_eq!(owning_pool(&twins, &net("10.0.0.0/26")).unwrap().name, "a");
        // Deleted blocks do not count.
        let mut gone = block("10.0.0.0/26", 2);
        gone.deleted = Some(true);
        assert!(by_pool(&twins, [&gone]).is_empty());
    }

    fn owned_by(nodes: &[Option<&str>], affinity: Option<&str>, cidr: &str) -> IPAMBlockSpec {
        use crate::api::AllocationAttribute;
        let n = net(cidr);
        let size = 1usize << (n.max_prefix_len() - n.prefix_len());
        let mut allocations = vec![None; size];
        let attributes = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                allocations[i] = Some(i);
                AllocationAttribute {
                    handle_id: Some(format!("h{i}")),
                    secondary: node.map(|n| [("node".to_string(), n.to_string())].into_iter().collect()),
                    ..Default::default()
                }
            })
            .collect();
        IPAMBlockSpec {
            cidr: cidr.into(),
            affinity: affinity.map(str::to_string),
            allocations,
            attributes,
            ..Default::default()
        }
    }

    fn k(p: &str, n: &str) -> (String, String) {
        (p.to_string(), n.to_string())
    }

    #[test]
    fn usage_follows_calicos_labels() {
        let pools = vec![pool("p", "10.0.0.0/24", 30), pool("inner", "10.0.0.128/25", 30)];
        let blocks = [
            // Affine to a: a's own, one borrowed by b, one without a node attribute.
            owned_by(&[Some("a"), Some("b"), None], Some("host:a"), "10.0.0.0/30"),
            // No affinity: every allocation with a node is borrowed.
            owned_by(&[Some("a")], None, "10.0.0.4/30"),
            // A virtual affinity is no host affinity.
            owned_by(&[Some("b")], Some("virtual:x"), "10.0.0.8/30"),
            // Owned by the narrower pool only.
            owned_by(&[Some("a")], Some("host:a"), "10.0.0.128/30"),
            // Outside every pool.
            owned_by(&[], None, "10.9.0.0/30"),
        ];
        let mut gone = owned_by(&[Some("a")], Some("host:a"), "10.0.0.12/30");
        gone.deleted = Some(true);
        let u = Usage::compute(&pools, blocks.iter().chain([&gone]), ["a", "c"], &[]);

        assert_eq!(u.in_use[&k("p", "a")], 2);
        assert_eq!(u.in_use[&k("p", "b")], 2);
        assert_eq!(u.in_use[&k("p", UNKNOWN_NODE)], 1);
        assert_eq!(u.borrowed[&k("p", "a")], 1);
        assert_eq!(u.borrowed[&k("p", "b")], 2);
        assert!(!u.borrowed.contains_key(&k("p", UNKNOWN_NODE)));
        assert_eq!(u.blocks[&k("p", "a")], 1);
        assert_eq!(u.blocks[&k("p", NO_AFFINITY)], 2);
        assert_eq!(u.in_use[&k("inner", "a")], 1);
        assert_eq!(u.blocks[&k("inner", "a")], 1);
        assert_eq!(u.blocks[&k(NO_IPPOOL, NO_AFFINITY)], 1);
        // Known node c has no allocations and no blocks: present at zero in every pool.
        for m in [&u.in_use, &u.borrowed, &u.blocks] {
            assert_eq!(m[&k("p", "c")], 0);
            assert_eq!(m[&k("inner", "c")], 0);
        }
        // b is no known node but holds allocations: zero in the pool where it has none.
        assert_eq!(u.in_use[&k("inner", "b")], 0);
        // no_ippool is not seeded.
        assert!(!u.in_use.contains_key(&k(NO_IPPOOL, "c")));

        // Legacy series: over every pool, unknown allocations under the empty name.
        assert_eq!(u.allocations_per_node["a"], 3);
        assert_eq!(u.allocations_per_node["b"], 2);
        assert_eq!(u.allocations_per_node[""], 1);
        assert_eq!(u.allocations_per_node["c"], 0);
        assert_eq!(u.borrowed_per_node["a"], 1);
        assert_eq!(u.borrowed_per_node["b"], 2);
        assert_eq!(u.blocks_per_node["a"], 2);
        assert_eq!(u.blocks_per_node[NO_AFFINITY], 3);
        assert_eq!(u.blocks_per_node["c"], 0);

        // Every allocation counts once per family.
        let total = |m: &PoolNodeCounts| m.values().sum::<u64>();
        assert_eq!(total(&u.in_use), 6);
        assert_eq!(u.allocations_per_node.values().sum::<u64>(), 6);
        assert_eq!(total(&u.blocks), 5);
        assert_eq!(u.nodes, ["a", "b", "c"].iter().map(|s| s.to_string()).collect());
        // The status' per-pool totals come from the same attribution.
        let by = by_pool(&pools, blocks.iter());
        assert_eq!(by[&Some("p".to_string())].allocations, 5);
        assert_eq!(by[&Some("inner".to_string())].allocations, 1);
    }

    #[test]
    fn reserved_addresses_count_once_per_pool() {
        let pools = vec![
            pool("v4", "10.0.0.0/24", 26),
            pool("small", "10.1.0.0/30", 30),
            pool("v6", "fd00::/120", 122),
        ];
        let reserved: Vec<IpNet> = [
            "10.0.0.0/26",
            "10.0.0.8/29", // inside the /26: no double count
            "10.0.0.200/32",
            "10.0.0.201/32",
            "10.1.0.0/16", // covers the whole small pool
            "fd00::10/124",
            "192.168.0.0/24", // in no pool
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        let u = Usage::compute(&pools, [], [], &reserved);
        assert_eq!(
            u.pools["v4"],
            PoolSpace {
                size: 256.0,
                reserved: 66.0
            }
        );
        assert_eq!(
            u.pools["small"],
            PoolSpace {
                size: 4.0,
                reserved: 4.0
            }
        );
        assert_eq!(
            u.pools["v6"],
            PoolSpace {
                size: 256.0,
                reserved: 16.0
            }
        );
        let none = Usage::compute(&pools, [], [], &[]);
        assert_eq!(none.pools["v4"].reserved, 0.0);
        // A /64 pool's size is beyond any integer gauge but exact as a float.
        let big = Usage::compute(&[pool("big", "fd00::/64", 122)], [], [], &[]);
        assert_eq!(big.pools["big"].size, 2f64.powi(64));
    }
}
