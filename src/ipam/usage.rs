//! Which IPPool a block's addresses count for, decided in one place for `ipam show`, the
//! metrics and the IPPool status (issue 15: a wider pool counted a narrower pool's addresses).
//!
//! A block belongs to one pool: of the pools whose CIDR contains it, the one that could have
//! carved it (its blockSize is the block's prefix length: Calico only creates blocks of the
//! pool's size), then the most specific (longest prefix), then the first by name (Calico's pool
//! order). Disabled pools own their blocks too: their addresses stay in use. A block no pool
//! contains is an orphan (`ipam show`'s "orphaned allocation block", metrics' `no_ippool`).

use std::collections::BTreeMap;

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
        .unwrap_or_else(|| "no_ippool".into())
}

/// Allocated addresses and blocks a pool owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    pub allocations: u64,
    pub blocks: u64,
}

/// Usage per owning pool name (`None`: blocks no pool contains). Deleted blocks do not count.
pub fn by_pool<'a>(
    pools: &[PoolRef],
    blocks: impl IntoIterator<Item = &'a IPAMBlockSpec>,
) -> BTreeMap<Option<String>, PoolUsage> {
    let mut out: BTreeMap<Option<String>, PoolUsage> = BTreeMap::new();
    for b in blocks {
        if b.is_deleted() {
            continue;
        }
        let Ok(net) = b.cidr.parse::<IpNet>() else {
            continue;
        };
        let u = out
            .entry(owning_pool(pools, &net).map(|p| p.name.clone()))
            .or_default();
        u.blocks += 1;
        u.allocations += b.allocations.iter().filter(|a| a.is_some()).count() as u64;
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
}
