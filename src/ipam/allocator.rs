//! Pure allocation decisions: which pools apply to a request, which block to use next, which new
//! block to claim, when to borrow and when to stop. No I/O: the engine feeds in what it knows.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::cidr;
use super::layout::BlockSet;
use super::selector::Selector;
use super::{IpamError, Shortfall};
use crate::api::ippool::AllowedUse;
use crate::api::{IPAMBlockSpec, IPAMConfigSpec, Pool};

/// Address family of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What the allocator needs to know about a pool, validated once.
#[derive(Clone, Debug)]
pub struct PoolInfo {
    pub name: String,
    pub cidr: IpNet,
    pub block_size: u8,
    pub disabled: bool,
    /// Being deleted, or `Allocatable=False` in its status: no new addresses.
    pub unavailable: bool,
    pub node_selector: Selector,
    pub namespace_selector: Selector,
    pub uses: Vec<AllowedUse>,
    pub manual: bool,
}

impl PoolInfo {
    /// Validates a pool; the error names the pool and the field.
    pub fn from_pool(p: &Pool) -> Result<PoolInfo, IpamError> {
        let name = p.metadata.name.clone().unwrap_or_default();
        let perr = |reason: String| IpamError::Pool {
            pool: name.clone(),
            reason,
        };
        let cidr = cidr::parse_masked(&p.spec.cidr).map_err(|e| perr(format!("spec.cidr: {e}")))?;
        let block_size = p.spec.effective_block_size();
        cidr::check_block_size(&cidr, block_size).map_err(|e| perr(format!("spec.blockSize: {e}")))?;
        let node_selector = Selector::parse(p.spec.effective_node_selector())
            .map_err(|e| perr(format!("spec.nodeSelector: {e}")))?;
        let namespace_selector = Selector::parse(p.spec.namespace_selector.as_deref().unwrap_or(""))
            .map_err(|e| perr(format!("spec.namespaceSelector: {e}")))?;
        let allocatable_false = p.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Allocatable" && c.status == "False")
        });
        Ok(PoolInfo {
            cidr,
            block_size,
            disabled: p.spec.is_disabled(),
            unavailable: p.metadata.deletion_timestamp.is_some() || allocatable_false,
            node_selector,
            namespace_selector,
            uses: p.spec.effective_allowed_uses(),
            manual: p.spec.is_manual(),
            name,
        })
    }

    pub fn family(&self) -> Family {
        Family::of(&self.cidr)
    }

    pub fn is_enabled(&self) -> bool {
        !self.disabled && !self.unavailable
    }

    pub fn block_of(&self, ip: std::net::IpAddr) -> IpNet {
        cidr::block_containing(ip, self.block_size)
    }

    /// Does the pool select this node (and namespace) for automatic assignment?
    pub fn selects(
        &self,
        node_labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        self.node_selector.matches(node_labels) && self.namespace_selector.matches(ns_labels)
    }

    pub fn uses_labels(&self) -> bool {
        self.node_selector.uses_labels()
    }
}

/// Inputs of pool selection for one family of one request.
#[derive(Clone, Debug)]
pub struct PoolQuery<'a> {
    pub family: Family,
    pub hostname: &'a str,
    /// Requested pools, names or CIDRs, in preference order; empty = automatic selection.
    pub requested: &'a [String],
    pub node_labels: &'a BTreeMap<String, String>,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub intended_use: AllowedUse,
}

/// The candidate pools of a request, in the order they are tried (Calico §2.2):
/// requested pools in the requested order (enabled required, selectors ignored), otherwise every
/// enabled Automatic pool whose selectors match, by name; then filtered by `allowedUses`.
pub fn select_pools(pools: &[PoolInfo], q: &PoolQuery) -> Result<Vec<PoolInfo>, IpamError> {
    let fam = q.family;
    let mut chosen: Vec<PoolInfo> = Vec::new();
    if !q.requested.is_empty() {
        for r in q.requested {
            let by_name = pools.iter().find(|p| p.name == *r);
            let wanted = match by_name {
                Some(p) => p.cidr,
                None => r.parse::<IpNet>().map_err(|_| {
                    IpamError::BadRequest(format!(
                        "requested pool {r:?} is neither the name of an IPPool nor a CIDR"
                    ))
                })?,
            };
            if Family::of(&wanted) != fam {
                return Err(IpamError::BadRequest(format!(
                    "requested pool {r:?} ({wanted}) isn't a {} pool",
                    fam.name()
                )));
            }
            match pools.iter().find(|p| p.cidr == wanted) {
                Some(p) if p.is_enabled() => {
                    if !chosen.iter().any(|c| c.cidr == p.cidr) {
                        chosen.push(p.clone())
                    }
                }
                Some(p) => {
                    return Err(IpamError::Pool {
                        pool: p.name.clone(),
                        reason: format!(
                            "the given pool ({wanted}) is not enabled (spec.disabled is true or the pool is being deleted)"
                        ),
                    });
                }
                None => {
                    return Err(IpamError::NoPools(format!(
                        "the given pool ({wanted}) does not exist, or is not enabled"
                    )));
                }
            }
        }
    } else {
        let mut all: Vec<&PoolInfo> = pools
            .iter()
            .filter(|p| p.family() == fam && p.is_enabled() && !p.manual)
            .filter(|p| p.selects(q.node_labels, q.namespace_labels))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        if all.is_empty() {
            return Err(IpamError::NoPools(format!(
                "no configured Calico pools for node {} ({})",
                q.hostname,
                fam.name()
            )));
        }
        chosen = all.into_iter().cloned().collect();
    }
    chosen.retain(|p| p.uses.contains(&q.intended_use));
    if chosen.is_empty() {
        return Err(IpamError::NoPools(format!(
            "cannot find a qualified ippool, no pools match the required use ({:?})",
            q.intended_use
        )));
    }
    Ok(chosen)
}

/// Effective block cap (Calico §2.3 step 1): the smaller of the global and per-request values
/// when both are set, whichever is set otherwise, 20 when neither is.
pub fn max_blocks(cfg: &IPAMConfigSpec, per_request: Option<u32>) -> u32 {
    let global = cfg
        .max_blocks_per_host
        .filter(|n| *n > 0)
        .map(|n| n.min(u32::MAX as i64) as u32);
    let per_request = per_request.filter(|n| *n > 0);
    match (global, per_request) {
        (Some(g), Some(r)) => g.min(r),
        (Some(g), None) => g,
        (None, Some(r)) => r,
        (None, None) => crate::api::ipam::DEFAULT_MAX_BLOCKS_PER_HOST,
    }
}

/// 32-bit FNV-1a.
pub fn fnv1a32(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Index of the block where `host` starts looking in a pool of `n` blocks.
pub fn start_index(host: &str, n: u128) -> u128 {
    if n == 0 { 0 } else { u128::from(fnv1a32(host)) % n }
}

/// tortie's documented, deterministic claim order for `host` in `pool`: start at block
/// `fnv1a32(host) mod #blocks`, walk upward, wrap around, visit each block once. Different hosts
/// start at different places (spreading them apart), one host always starts at the same place.
pub fn claim_order<'a>(pool: &'a PoolInfo, host: &str) -> impl Iterator<Item = IpNet> + 'a {
    let n = cidr::num_blocks(&pool.cidr, pool.block_size);
    let start = start_index(host, n);
    (0..n).map(move |i| cidr::nth_block(&pool.cidr, pool.block_size, (start + i) % n))
}

/// The first block of the candidate pools, in pool order then claim order, that does not exist.
/// `max_probe` bounds the walk of huge IPv6 pools.
pub fn pick_new_block(
    pools: &[PoolInfo],
    host: &str,
    exists: impl Fn(&IpNet) -> bool,
    max_probe: usize,
) -> Option<IpNet> {
    pools
        .iter()
        .find_map(|p| claim_order(p, host).take(max_probe).find(|b| !exists(b)))
}

/// [`pick_new_block`] against the existing blocks: a candidate is taken only when it overlaps
/// no existing block of any pool or size, so a pool whose block size changed under its blocks
/// (or a pool overlapping another) moves on to a free candidate instead of cutting across one.
/// Blocks wholly inside IPReservations are passed over, as in Calico.
pub fn pick_free_block(
    pools: &[PoolInfo],
    host: &str,
    existing: &BlockSet,
    reserved: &super::reserved::Reserved,
    max_probe: usize,
) -> Option<IpNet> {
    pick_new_block(
        pools,
        host,
        |b| !existing.is_free(b) || reserved.covers(b),
        max_probe,
    )
}

/// Existing blocks of `pool`, in `host`'s claim order: the order borrowing visits them.
pub fn borrow_order(pool: &PoolInfo, host: &str, existing: &[IpNet]) -> Vec<IpNet> {
    let n = cidr::num_blocks(&pool.cidr, pool.block_size);
    let start = start_index(host, n);
    let mut v: Vec<(u128, IpNet)> = existing
        .iter()
        .filter(|b| b.prefix_len() == pool.block_size)
        .filter_map(|b| cidr::block_index(&pool.cidr, b).map(|i| ((i + n - start) % n, *b)))
        .collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|(_, b)| b).collect()
}

/// True when `block` is a block of one of `pools` (inside it, of its block size).
pub fn in_pools(pools: &[PoolInfo], block: &IpNet) -> bool {
    pools
        .iter()
        .any(|p| p.cidr.contains(&block.network()) && block.prefix_len() == p.block_size)
}

/// The host's own blocks worth trying, from its affinities `(cidr, state)`: those of the
/// candidate pools not pending deletion, in pool order then address order.
pub fn owned_blocks<'a>(
    pools: &[PoolInfo],
    affinities: impl IntoIterator<Item = (&'a IpNet, &'a str)>,
) -> Vec<IpNet> {
    let mut owned: Vec<IpNet> = affinities
        .into_iter()
        .filter(|(c, state)| in_pools(pools, c) && *state != "pendingDeletion")
        .map(|(c, _)| *c)
        .collect();
    owned.sort_by_key(|c| {
        (
            pools.iter().position(|p| p.cidr.contains(&c.network())),
            cidr::ip_to_u128(c.network()),
        )
    });
    owned
}

/// What an own block (by its affinity) turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnBlock {
    /// Affine to the host with a free address: use it.
    HasSpace,
    /// Affine to the host, no free address.
    Full,
    /// The block is affine elsewhere: the block is authoritative, the affinity is stale.
    AffineElsewhere,
    /// Affinity without block (an interrupted claim): finish the claim.
    Missing,
}

/// Classifies an own block from what the store holds for it.
pub fn own_block(block: Option<&IPAMBlockSpec>, host: &str) -> OwnBlock {
    match block {
        None => OwnBlock::Missing,
        Some(b) if b.host() != Some(host) => OwnBlock::AffineElsewhere,
        Some(b) if super::block::free_count(b) > 0 => OwnBlock::HasSpace,
        Some(_) => OwnBlock::Full,
    }
}

/// What to do next in the allocation loop of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Allocate from this affine block.
    Use(IpNet),
    /// Claim a new block (two-phase affinity protocol).
    Claim,
    /// Borrow single addresses from other hosts' blocks.
    Borrow,
    /// Give up with this reason.
    Stop(Shortfall),
}

/// State of the loop that decides the next step.
#[derive(Clone, Debug)]
pub struct LoopState {
    /// An affine block (in a candidate pool) that still has free addresses.
    pub affine_with_space: Option<IpNet>,
    /// Affine blocks this host holds inside the candidate pools.
    pub owned: usize,
    pub max_blocks: u32,
    pub auto_allocate: bool,
    pub strict_affinity: bool,
    /// No unclaimed block is left in any candidate pool.
    pub no_free_blocks: bool,
    pub pools: Vec<IpNet>,
}

/// Calico's order (§2.3): own blocks → claim (unless at the cap: fail without borrowing; unless
/// autoAllocateBlocks is off: fail) → borrow (only without strict affinity).
pub fn next_step(s: &LoopState) -> Step {
    if let Some(b) = s.affine_with_space {
        return Step::Use(b);
    }
    if s.owned as u64 >= u64::from(s.max_blocks) {
        return Step::Stop(Shortfall::BlockLimit { limit: s.max_blocks });
    }
    if !s.auto_allocate {
        return Step::Stop(Shortfall::NoAutoAllocate);
    }
    if !s.no_free_blocks {
        return Step::Claim;
    }
    if s.strict_affinity {
        Step::Stop(Shortfall::StrictAffinity)
    } else {
        Step::Borrow
    }
}

/// What [`claim_ahead`] looks at: the host's own blocks in the candidate pools and the rules a
/// request's claim obeys.
#[derive(Clone, Debug)]
pub struct AheadState {
    /// Free addresses left in the host's affine blocks of the candidate pools.
    pub free: usize,
    /// Claim once fewer than this many are free (at least 1: a host with no free address).
    pub watermark: usize,
    /// Affine blocks the host holds inside the candidate pools.
    pub owned: usize,
    pub max_blocks: u32,
    pub auto_allocate: bool,
}

/// Whether the node's next block is claimed now, ahead of the requests that will need it: only
/// when fewer than `watermark` addresses are free in the host's own blocks, and only when a
/// request finding no free address would claim one itself ([`next_step`]: under
/// `maxBlocksPerHost`, with `autoAllocateBlocks`). Whether a free block is left in the pools is
/// found out by the claim itself (it then claims nothing); strictAffinity only decides what a
/// request does when none is left, so it does not enter here.
pub fn claim_ahead(s: &AheadState) -> bool {
    s.free < s.watermark.max(1) && (s.owned as u64) < u64::from(s.max_blocks) && s.auto_allocate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IPPoolSpec;
    use crate::ipam::block;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};
    use std::net::IpAddr;

    fn pool(name: &str, cidr: &str, bs: Option<i32>) -> Pool {
        let mut p = Pool::new(
            name,
            &kube::core::ApiResource {
                group: "crd.projectcalico.org".into(),
                version: "v1".into(),
                api_version: "crd.projectcalico.org/v1".into(),
                kind: "IPPool".into(),
                plural: "ippools".into(),
            },
            IPPoolSpec {
                cidr: cidr.into(),
                block_size: bs,
                ..Default::default()
            },
        );
        p.status = None;
        p
    }

    #[test]
    fn claim_ahead_only_below_the_watermark_and_when_a_request_could_claim() {
        let s = AheadState {
            free: 20,
            watermark: 16,
            owned: 1,
            max_blocks: 20,
            auto_allocate: true,
        };
        assert!(!claim_ahead(&s), "enough free addresses: nothing to do");
        assert!(claim_ahead(&AheadState {
            free: 15,
            ..s.clone()
        }));
        assert!(
            !claim_ahead(&AheadState {
                free: 16,
                ..s.clone()
            }),
            "the watermark itself is enough"
        );
        // A fresh host: no block, nothing free.
        assert!(claim_ahead(&AheadState {
            free: 0,
            owned: 0,
            ..s.clone()
        }));
        // A watermark of 0 still claims for a host with no free address.
        assert!(claim_ahead(&AheadState {
            free: 0,
            watermark: 0,
            ..s.clone()
        }));
        assert!(!claim_ahead(&AheadState {
            free: 1,
            watermark: 0,
            ..s.clone()
        }));
        // The rules of a request's claim.
        assert!(
            !claim_ahead(&AheadState {
                free: 0,
                owned: 20,
                ..s.clone()
            }),
            "at maxBlocksPerHost"
        );
        assert!(!claim_ahead(&AheadState {
            free: 0,
            owned: 1,
            max_blocks: 1,
            ..s.clone()
        }));
        assert!(!claim_ahead(&AheadState {
            free: 0,
            max_blocks: 0,
            owned: 0,
            ..s.clone()
        }));
        assert!(
            !claim_ahead(&AheadState {
                free: 0,
                auto_allocate: false,
                ..s.clone()
            }),
            "autoAllocateBlocks off"
        );
    }

    proptest! {
        /// Claiming ahead never claims where a request that found no free address would not
        /// claim: it agrees with [`next_step`] whenever the host is out of addresses.
        #[test]
        fn claim_ahead_never_claims_where_a_request_would_not(
            free in 0usize..200, watermark in 0usize..64, owned in 0usize..30,
            max_blocks in 0u32..30, auto in any::<bool>(), strict in any::<bool>(),
        ) {
            let ahead = claim_ahead(&AheadState { free, watermark, owned, max_blocks, auto_allocate: auto });
            let step = next_step(&LoopState {
                affine_with_space: None,
                owned,
                max_blocks,
                auto_allocate: auto,
                strict_affinity: strict,
                no_free_blocks: false,
                pools: vec![],
            });
            if ahead {
                prop_assert_eq!(step.clone(), Step::Claim);
                prop_assert!(free < watermark.max(1));
            }
            if free == 0 && step == Step::Claim {
                prop_assert!(ahead, "a host with nothing free claims when a request would");
            }
        }
    }

    #[test]
    fn wholly_reserved_blocks_are_never_picked() {
        let pools = [info("p", "10.0.0.0/28", Some(30))];
        let none = BlockSet::new();
        let first = pick_free_block(&pools, "node-a", &none, &Default::default(), 16).unwrap();
        // Reserving that whole block moves the pick on; reserving part of it does not.
        let entries = [first.to_string()];
        let (all, _) = super::super::reserved::Reserved::new([("r", &entries[..])]);
        let next = pick_free_block(&pools, "node-a", &none, &all, 16).unwrap();
        assert_ne!(next, first);
        let partial = [first.network().to_string()];
        let (some, _) = super::super::reserved::Reserved::new([("r", &partial[..])]);
        assert_eq!(pick_free_block(&pools, "node-a", &none, &some, 16), Some(first));
        let whole = ["10.0.0.0/28".to_string()];
        let (pool, _) = super::super::reserved::Reserved::new([("r", &whole[..])]);
        assert_eq!(pick_free_block(&pools, "node-a", &none, &pool, 16), None);
    }

    fn info(name: &str, cidr: &str, bs: Option<i32>) -> PoolInfo {
        PoolInfo::from_pool(&pool(name, cidr, bs)).unwrap()
    }

    fn lab() -> Vec<PoolInfo> {
        let mut ext = info("external-pool", "10.48.2.0/24", Some(29));
        ext.manual = true;
        let mut p2 = info("pool2-ipv4-ippool", "10.48.128.0/24", None);
        p2.manual = true;
        vec![
            p2,
            info("default-ipv4-ippool", "10.48.0.0/24", None),
            ext,
            info("v6", "fd00:10:48::/120", None),
        ]
    }

    fn query<'a>(req: &'a [String], fam: Family, empty: &'a BTreeMap<String, String>) -> PoolQuery<'a> {
        PoolQuery {
            family: fam,
            hostname: "node-a",
            requested: req,
            node_labels: empty,
            namespace_labels: empty,
            intended_use: AllowedUse::Workload,
        }
    }

    #[test]
    fn automatic_selection_skips_manual_and_sorts_by_name() {
        let e = BTreeMap::new();
        let got = select_pools(&lab(), &query(&[], Family::V4, &e)).unwrap();
        assert_eq!(
            got.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["default-ipv4-ippool"]
        );
        let got = select_pools(&lab(), &query(&[], Family::V6, &e)).unwrap();
        assert_eq!(got[0].name, "v6");
        assert_eq!(got[0].block_size, 122);
    }

    #[test]
    fn requested_pools_bypass_selectors_in_requested_order() {
        let e = BTreeMap::new();
        let mut pools = lab();
        pools[0].node_selector = Selector::parse("!all()").unwrap();
        let req = vec!["pool2-ipv4-ippool".to_string(), "10.48.2.0/24".to_string()];
        let got = select_pools(&pools, &query(&req, Family::V4, &e)).unwrap();
        assert_eq!(
            got.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["pool2-ipv4-ippool", "external-pool"]
        );
    }

    #[test]
    fn selection_errors_are_clear() {
        let e = BTreeMap::new();
        let req = vec!["10.48.128.0/25".to_string()];
        let err = select_pools(&lab(), &query(&req, Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the given pool (10.48.128.0/25) does not exist"),
            "{err}"
        );
        let req = vec!["new-pool2".to_string()];
        let err = select_pools(&lab(), &query(&req, Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"new-pool2\" is neither the name of an IPPool nor a CIDR"),
            "{err}"
        );
        let req = vec!["v6".to_string()];
        let err = select_pools(&lab(), &query(&req, Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(err.contains("isn't a IPv4 pool"), "{err}");
        let mut pools = lab();
        pools[0].disabled = true;
        let req = vec!["pool2-ipv4-ippool".to_string()];
        let err = select_pools(&pools, &query(&req, Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not enabled"), "{err}");
        pools[1].node_selector = Selector::parse("zone == 'x'").unwrap();
        let err = select_pools(&pools, &query(&[], Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no configured Calico pools for node node-a"),
            "{err}"
        );
        let mut pools = lab();
        pools[1].uses = vec![AllowedUse::Tunnel];
        let err = select_pools(&pools, &query(&[], Family::V4, &e))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no pools match the required use (Workload)"),
            "{err}"
        );
    }

    #[test]
    fn bad_pools_name_the_field() {
        let err = PoolInfo::from_pool(&pool("p", "10.0.0.1/24", None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pool p: spec.cidr") && err.contains("not strictly masked"),
            "{err}"
        );
        let err = PoolInfo::from_pool(&pool("p", "10.0.0.0/27", None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.blockSize"), "{err}");
        let mut p = pool("p", "10.0.0.0/24", None);
        p.spec.node_selector = Some("zone = 'a'".into());
        let err = PoolInfo::from_pool(&p).unwrap_err().to_string();
        assert!(
            err.contains("spec.nodeSelector") && err.contains("position 5"),
            "{err}"
        );
    }

    #[test]
    fn namespace_selector_applies() {
        let mut pools = vec![
            info("team-a", "10.1.0.0/24", None),
            info("z-default", "10.2.0.0/24", None),
        ];
        pools[0].namespace_selector = Selector::parse("team == 'a'").unwrap();
        let e = BTreeMap::new();
        let ns: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let mut q = query(&[], Family::V4, &e);
        assert_eq!(select_pools(&pools, &q).unwrap().len(), 1);
        q.namespace_labels = &ns;
        assert_eq!(select_pools(&pools, &q).unwrap()[0].name, "team-a");
    }

    #[test]
    fn block_limits() {
        let mut cfg = IPAMConfigSpec::calico_defaults();
        assert_eq!(max_blocks(&cfg, None), 20);
        assert_eq!(max_blocks(&cfg, Some(1)), 1);
        cfg.max_blocks_per_host = Some(2);
        assert_eq!(max_blocks(&cfg, Some(3)), 2);
        cfg.max_blocks_per_host = Some(3);
        assert_eq!(max_blocks(&cfg, Some(2)), 2);
        assert_eq!(max_blocks(&cfg, None), 3);
    }

    #[test]
    fn own_blocks_are_tried_in_pool_order_then_address_order() {
        // lab(): pool2 (10.48.128.0/24) before default (10.48.0.0/24), blocks of /26.
        let pools = lab();
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let affs = [
            (n("10.48.0.64/26"), "confirmed"),
            (n("10.48.128.64/26"), "confirmed"),
            (n("10.48.0.0/26"), "confirmed"),
            (n("10.48.128.0/26"), "pendingDeletion"),
            // Not a block of a candidate pool: outside all, or of another size.
            (n("10.99.0.0/26"), "confirmed"),
            (n("10.48.0.128/28"), "confirmed"),
            (n("10.48.2.0/29"), "pending"),
        ];
        let got = owned_blocks(&pools, affs.iter().map(|(c, s)| (c, *s)));
        assert_eq!(
            got,
            ["10.48.128.64/26", "10.48.0.0/26", "10.48.0.64/26", "10.48.2.0/29"].map(n)
        );
        assert!(in_pools(&pools, &n("10.48.0.192/26")));
        assert!(!in_pools(&pools, &n("10.48.0.0/27")));
        assert!(owned_blocks(&[], affs.iter().map(|(c, s)| (c, *s))).is_empty());
    }

    #[test]
    fn own_block_verdicts() {
        let net: IpNet = "10.48.0.0/30".parse().unwrap();
        let mut b = block::new_block(&net, Some("host:node-a".into()), 1, None);
        assert_eq!(own_block(None, "node-a"), OwnBlock::Missing);
        assert_eq!(own_block(Some(&b), "node-a"), OwnBlock::HasSpace);
        assert_eq!(own_block(Some(&b), "node-b"), OwnBlock::AffineElsewhere);
        block::allocate(&mut b, 4, Some("h"), &Default::default(), |_| false);
        assert_eq!(own_block(Some(&b), "node-a"), OwnBlock::Full);
        // A full block of another host is still another host's.
        assert_eq!(own_block(Some(&b), "node-b"), OwnBlock::AffineElsewhere);
        b.affinity = None;
        assert_eq!(own_block(Some(&b), "node-a"), OwnBlock::AffineElsewhere);
    }

    #[test]
    fn steps_follow_calico() {
        let mut s = LoopState {
            affine_with_space: None,
            owned: 1,
            max_blocks: 1,
            auto_allocate: true,
            strict_affinity: false,
            no_free_blocks: false,
            pools: vec![],
        };
        assert_eq!(next_step(&s), Step::Stop(Shortfall::BlockLimit { limit: 1 }));
        s.max_blocks = 20;
        assert_eq!(next_step(&s), Step::Claim);
        s.no_free_blocks = true;
        assert_eq!(next_step(&s), Step::Borrow);
        s.strict_affinity = true;
        assert_eq!(next_step(&s), Step::Stop(Shortfall::StrictAffinity));
        s.auto_allocate = false;
        assert_eq!(next_step(&s), Step::Stop(Shortfall::NoAutoAllocate));
        s.affine_with_space = Some("10.0.0.0/26".parse().unwrap());
        assert!(matches!(next_step(&s), Step::Use(_)));
    }

    #[test]
    fn claim_order_is_deterministic_and_spreads_hosts() {
        let p = info("p", "10.48.0.0/16", None);
        let a: Vec<_> = claim_order(&p, "node-a").take(3).collect();
        assert_eq!(a, claim_order(&p, "node-a").take(3).collect::<Vec<_>>());
        let starts: HashSet<IpNet> = (0..16)
            .map(|i| claim_order(&p, &format!("node-{i}")).next().unwrap())
            .collect();
        assert!(
            starts.len() >= 14,
            "16 hosts start in {} distinct blocks",
            starts.len()
        );
        let all: BTreeSet<IpNet> = claim_order(&p, "node-a").collect();
        assert_eq!(all.len(), 1024);
        let existing = [a[0]];
        assert_eq!(
            pick_new_block(std::slice::from_ref(&p), "node-a", |b| existing.contains(b), 10),
            Some(a[1])
        );
        assert_eq!(borrow_order(&p, "node-a", &[a[2], a[0]]), vec![a[0], a[2]]);
    }

    /// In-memory cluster used to check that the decisions compose into a correct allocator.
    #[derive(Default)]
    struct World {
        blocks: BTreeMap<IpNet, crate::api::IPAMBlockSpec>,
    }

    impl World {
        fn owned(&self, host: &str, pools: &[PoolInfo]) -> Vec<IpNet> {
            self.blocks
                .iter()
                .filter(|(n, b)| {
                    // As the engine: only blocks of the pool's current block size are its own.
                    b.host() == Some(host)
                        && pools
                            .iter()
                            .any(|p| p.cidr.contains(&n.network()) && n.prefix_len() == p.block_size)
                })
                .map(|(n, _)| *n)
                .collect()
        }

        fn assign(
            &mut self,
            host: &str,
            handle: &str,
            n: usize,
            pools: &[PoolInfo],
            cfg: &IPAMConfigSpec,
        ) -> (Vec<IpAddr>, Option<Shortfall>) {
            let attrs: crate::api::StrMap = [("node".to_string(), host.to_string())].into();
            let mut got = vec![];
            loop {
                if got.len() == n {
                    return (got, None);
                }
                let owned = self.owned(host, pools);
                let st = LoopState {
                    affine_with_space: owned
                        .iter()
                        .copied()
                        .find(|b| block::free_count(&self.blocks[b]) > 0),
                    owned: owned.len(),
                    max_blocks: max_blocks(cfg, None),
                    auto_allocate: cfg.auto_allocate_blocks,
                    strict_affinity: cfg.strict_affinity,
                    no_free_blocks: pick_free_block(
                        pools,
                        host,
                        &self.block_set(),
                        &Default::default(),
                        4096,
                    )
                    .is_none(),
                    pools: pools.iter().map(|p| p.cidr).collect(),
                };
                match next_step(&st) {
                    Step::Use(b) => {
                        let blk = self.blocks.get_mut(&b).unwrap();
                        for o in block::allocate(blk, n - got.len(), Some(handle), &attrs, |_| false) {
                            got.push(cidr::address_of(&b, o));
                        }
                        block::prepare_write(blk);
                    }
                    Step::Claim => {
                        let b = pick_free_block(pools, host, &self.block_set(), &Default::default(), 4096)
                            .unwrap();
                        self.blocks
                            .insert(b, block::new_block(&b, Some(format!("host:{host}")), 1, None));
                    }
                    Step::Borrow => {
                        for p in pools {
                            let existing: Vec<IpNet> = self.blocks.keys().copied().collect();
                            for b in borrow_order(p, host, &existing) {
                                let blk = self.blocks.get_mut(&b).unwrap();
                                for o in block::allocate(blk, n - got.len(), Some(handle), &attrs, |_| false)
                                {
                                    got.push(cidr::address_of(&b, o));
                                }
                            }
                        }
                        let short = (got.len() < n).then(|| Shortfall::PoolsExhausted {
                            pools: st.pools.clone(),
                        });
                        return (got, short);
                    }
                    Step::Stop(s) => return (got, Some(s)),
                }
            }
        }

        fn release(&mut self, handle: &str) -> Vec<IpAddr> {
            let mut out = vec![];
            for (n, b) in self.blocks.iter_mut() {
                for o in block::release_handle(b, handle, None) {
                    out.push(cidr::address_of(n, o));
                }
            }
            out
        }
    }

    #[test]
    fn scenario_21_borrow_after_own_block() {
        // Pool of 2 blocks: host-a 1 IP, host-b 1 IP, host-a asks for 64 → 63 own + 1 borrowed.
        let pools = vec![info("p", "10.0.0.0/25", None)];
        let cfg = IPAMConfigSpec::calico_defaults();
        let mut w = World::default();
        assert_eq!(w.assign("host-a", "a1", 1, &pools, &cfg).0.len(), 1);
        assert_eq!(w.assign("host-b", "b1", 1, &pools, &cfg).0.len(), 1);
        let (ips, short) = w.assign("host-a", "a2", 64, &pools, &cfg);
        assert_eq!((ips.len(), short), (64, None));
        assert_eq!(w.owned("host-a", &pools).len(), 1);
    }

    #[test]
    fn scenario_17_strict_affinity_block_limit() {
        let pools = vec![info("p", "10.0.0.0/28", Some(30))];
        let mut cfg = IPAMConfigSpec::calico_defaults();
        cfg.strict_affinity = true;
        cfg.max_blocks_per_host = Some(2);
        let mut w = World::default();
        assert_eq!(w.assign("host1", "h", 8, &pools, &cfg).0.len(), 8);
        let (ips, short) = w.assign("host1", "h9", 1, &pools, &cfg);
        assert_eq!((ips.len(), short), (0, Some(Shortfall::BlockLimit { limit: 2 })));
        assert_eq!(w.assign("host2", "x", 1, &pools, &cfg).0.len(), 1);
    }

    proptest! {
        /// Random assigns and releases across hosts: no address is ever held twice, release gives
        /// back exactly what was assigned, blocks stay valid, and strict affinity never borrows.
        #[test]
        fn never_the_same_address_twice(
            ops in proptest::collection::vec((0usize..4, 0usize..12, 1usize..20, any::<bool>()), 1..60),
            strict in any::<bool>(),
            max in 1i64..4,
        ) {
            let pools = vec![info("a", "10.9.0.0/26", Some(29)), info("b", "10.9.1.0/28", Some(30))];
            let mut cfg = IPAMConfigSpec::calico_defaults();
            cfg.strict_affinity = strict;
            cfg.max_blocks_per_host = Some(max);
            let mut w = World::default();
            let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
            let mut by_handle: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
            for (host, h, n, release) in ops {
                let handle = format!("h{h}");
                if release {
                    let got: BTreeSet<IpAddr> = w.release(&handle).into_iter().collect();
                    let want = by_handle.remove(&handle).unwrap_or_default();
                    prop_assert_eq!(&got, &want);
                    for ip in got { held.remove(&ip); }
                } else {
                    let host = format!("host-{host}");
                    let (ips, _) = w.assign(&host, &handle, n, &pools, &cfg);
                    prop_assert!(ips.len() <= n);
                    for ip in ips {
                        prop_assert!(held.insert(ip, handle.clone()).is_none(), "{} handed out twice", ip);
                        by_handle.entry(handle.clone()).or_default().insert(ip);
                        if strict {
                            let b = w.blocks.keys().find(|b| b.contains(&ip)).unwrap();
                            prop_assert_eq!(w.blocks[b].host(), Some(host.as_str()));
                        }
                    }
                }
                for b in w.blocks.values() {
                    prop_assert_eq!(block::check(b), vec![]);
                }
                for h in w.owned_hosts() {
                    prop_assert!(w.owned(&h, &pools).len() as i64 <= max);
                }
            }
        }
    }

    impl World {
        fn block_set(&self) -> BlockSet {
            self.blocks.keys().copied().collect()
        }

        /// The engine's AssignIP: the block holding the address whatever its size, else the
        /// pool's block for it when that overlaps nothing (claimed for `host`).
        fn assign_ip(
            &mut self,
            host: &str,
            handle: &str,
            ip: IpAddr,
            pools: &[PoolInfo],
        ) -> Result<(), String> {
            let pool = pools
                .iter()
                .find(|p| p.is_enabled() && p.cidr.contains(&ip))
                .ok_or("not in a pool")?;
            let b = match self
                .block_set()
                .block_for_ip(ip, pool.block_size)
                .map_err(|e| e.to_string())?
            {
                crate::ipam::layout::BlockForIp::Existing(b) => b,
                crate::ipam::layout::BlockForIp::New(b) => {
                    self.blocks
                        .insert(b, block::new_block(&b, Some(format!("host:{host}")), 1, None));
                    b
                }
            };
            let attrs: crate::api::StrMap = [("node".to_string(), host.to_string())].into();
            let blk = self.blocks.get_mut(&b).unwrap();
            block::assign(blk, cidr::ordinal_of(&b, ip).unwrap(), Some(handle), &attrs)
                .map_err(|e| format!("{e:?}"))?;
            block::prepare_write(blk);
            Ok(())
        }

        fn owned_hosts(&self) -> BTreeSet<String> {
            self.blocks
                .values()
                .filter_map(|b| b.host().map(str::to_string))
                .collect()
        }
    }

    /// One step of the layout property test.
    #[derive(Clone, Debug)]
    enum LayoutOp {
        /// Create (or replace) pool `name` with menu cidr `cidr` and block size offset.
        Create {
            name: usize,
            cidr: usize,
            bs: u8,
        },
        /// Change a pool's block size as if admission were bypassed (Calico's CRDs let an
        /// update add or remove blockSize).
        EditBlockSize {
            name: usize,
            bs: u8,
        },
        /// Change a pool's cidr (a raw write, or delete and re-create under the same name).
        EditCidr {
            name: usize,
            cidr: usize,
        },
        Delete {
            name: usize,
        },
        Disable {
            name: usize,
            disabled: bool,
        },
        Assign {
            v6: bool,
            host: usize,
            handle: usize,
            n: usize,
        },
        AssignIp {
            v6: bool,
            host: usize,
            handle: usize,
            offset: u8,
        },
        Release {
            handle: usize,
        },
    }

    /// Pool cidrs: nested and overlapping on purpose, in both families.
    const LAYOUT_CIDRS: [&str; 6] = [
        "10.9.0.0/24",
        "10.9.0.0/25",
        "10.9.0.128/26",
        "fd00:9::/120",
        "fd00:9::/121",
        "fd00:9::c0/122",
    ];

    fn layout_op() -> impl Strategy<Value = LayoutOp> {
        prop_oneof![
            2 => (0usize..3, 0..LAYOUT_CIDRS.len(), 0u8..5).prop_map(|(name, cidr, bs)| LayoutOp::Create { name, cidr, bs }),
            3 => (0usize..3, 0u8..5).prop_map(|(name, bs)| LayoutOp::EditBlockSize { name, bs }),
            1 => (0usize..3, 0..LAYOUT_CIDRS.len()).prop_map(|(name, cidr)| LayoutOp::EditCidr { name, cidr }),
            1 => (0usize..3).prop_map(|name| LayoutOp::Delete { name }),
            1 => (0usize..3, any::<bool>()).prop_map(|(name, disabled)| LayoutOp::Disable { name, disabled }),
            6 => (any::<bool>(), 0usize..3, 0usize..10, 1usize..12).prop_map(|(v6, host, handle, n)| LayoutOp::Assign { v6, host, handle, n }),
            3 => (any::<bool>(), 0usize..3, 0usize..10, any::<u8>()).prop_map(|(v6, host, handle, offset)| LayoutOp::AssignIp { v6, host, handle, offset }),
            2 => (0usize..10).prop_map(|handle| LayoutOp::Release { handle }),
        ]
    }

    /// A pool of menu cidr `cidr` cut at `prefix + 2 + bs` (capped at the family's width).
    fn layout_pool(name: usize, cidr: usize, bs: u8) -> PoolInfo {
        let net: IpNet = LAYOUT_CIDRS[cidr].parse().unwrap();
        let size = (net.prefix_len() + 2 + bs).min(cidr::max_bits(&net));
        info(&format!("pool-{name}"), LAYOUT_CIDRS[cidr], Some(i32::from(size)))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random pool creates, edits that change the layout under existing blocks (block size,
        /// cidr: what admission forbids, but a raw write, Calico's own CRDs or a delete and
        /// re-create can still do), deletes, allocations and releases, with the engine's
        /// decisions: no two blocks ever overlap and no address is ever handed out twice.
        #[test]
        fn layout_changes_never_overlap_blocks_or_duplicate_addresses(
            ops in proptest::collection::vec(layout_op(), 1..80),
            strict in any::<bool>(),
        ) {
            let mut cfg = IPAMConfigSpec::calico_defaults();
            cfg.strict_affinity = strict;
            let mut pools: BTreeMap<usize, PoolInfo> = BTreeMap::new();
            let mut w = World::default();
            let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
            let e = BTreeMap::new();
            for op in ops {
                match op {
                    LayoutOp::Create { name, cidr, bs } => {
                        pools.insert(name, layout_pool(name, cidr, bs));
                    }
                    LayoutOp::EditBlockSize { name, bs } => {
                        if let Some(p) = pools.get_mut(&name) {
                            p.block_size = (p.cidr.prefix_len() + bs).min(cidr::max_bits(&p.cidr));
                        }
                    }
                    LayoutOp::EditCidr { name, cidr } => {
                        if let Some(p) = pools.get(&name) {
                            let bs = p.block_size;
                            let mut np = layout_pool(name, cidr, 0);
                            if bs >= np.cidr.prefix_len() && bs <= cidr::max_bits(&np.cidr) {
                                np.block_size = bs;
                            }
                            pools.insert(name, np);
                        }
                    }
                    LayoutOp::Delete { name } => {
                        // Calico leaves the blocks (orphans keep their addresses valid).
                        pools.remove(&name);
                    }
                    LayoutOp::Disable { name, disabled } => {
                        if let Some(p) = pools.get_mut(&name) {
                            p.disabled = disabled;
                        }
                    }
                    LayoutOp::Assign { v6, host, handle, n } => {
                        let fam = if v6 { Family::V6 } else { Family::V4 };
                        let all: Vec<PoolInfo> = pools.values().cloned().collect();
                        if let Ok(cands) = select_pools(&all, &query(&[], fam, &e)) {
                            let handle = format!("h{handle}");
                            let (ips, _) = w.assign(&format!("host-{host}"), &handle, n, &cands, &cfg);
                            prop_assert!(ips.len() <= n);
                            for ip in ips {
                                prop_assert!(held.insert(ip, handle.clone()).is_none(), "{} handed out twice", ip);
                            }
                        }
                    }
                    LayoutOp::AssignIp { v6, host, handle, offset } => {
                        let ip: IpAddr = if v6 {
                            IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, u16::from(offset)))
                        } else {
                            IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 0, offset))
                        };
                        let all: Vec<PoolInfo> = pools.values().cloned().collect();
                        let handle = format!("h{handle}");
                        if w.assign_ip(&format!("host-{host}"), &handle, ip, &all).is_ok() {
                            prop_assert!(held.insert(ip, handle.clone()).is_none(), "{} assigned twice", ip);
                        }
                    }
                    LayoutOp::Release { handle } => {
                        let handle = format!("h{handle}");
                        for ip in w.release(&handle) {
                            prop_assert_eq!(held.remove(&ip), Some(handle.clone()));
                        }
                    }
                }
                let blocks: Vec<IpNet> = w.blocks.keys().copied().collect();
                for (i, a) in blocks.iter().enumerate() {
                    for b in &blocks[i + 1..] {
                        prop_assert!(!cidr::overlaps(a, b), "blocks {} and {} overlap", a, b);
                    }
                    prop_assert_eq!(block::check(&w.blocks[a]), vec![]);
                }
                // What the blocks hold is exactly what was handed out, each address once.
                let mut stored: BTreeMap<IpAddr, String> = BTreeMap::new();
                for (n, b) in &w.blocks {
                    for (o, ip) in block::allocated(b, n) {
                        let h = block::handle_of(b, o).unwrap_or_default().to_string();
                        prop_assert!(stored.insert(ip, h).is_none(), "{} stored twice", ip);
                    }
                }
                prop_assert_eq!(&stored, &held);
            }
        }
    }
}
