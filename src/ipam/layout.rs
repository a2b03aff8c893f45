//! Block layout guard: the set of existing blocks and the overlap test every block creation must
//! pass. Pure: no I/O.
//!
//! A pool's blocks are cut at its block size, but nothing outside admission stops a pool's
//! effective `blockSize` (or `cidr`) from changing while blocks exist: Calico's own CRDs let an
//! update add or remove `blockSize`, a pool can be deleted and re-created with another size over
//! orphan blocks, and two pools can overlap until the IPPool controller notices. Blocks cut at
//! the new size would then overlap the old ones and hand out addresses that are already
//! allocated (Calico issue #10778, libcalico-go #1377). So the engine never trusts the pool
//! spec alone: a block is only created when it overlaps no existing block of any pool or size.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::cidr;

/// Existing block CIDRs, indexed for overlap queries.
///
/// Two CIDRs overlap exactly when one contains the other, so a query is: does a block exist at
/// one of the candidate's supernets (at most 129 lookups), or does a block start inside the
/// candidate (one range query)?
#[derive(Clone, Debug, Default)]
pub struct BlockSet {
    exact: HashSet<IpNet>,
    /// (is IPv6, first address, prefix length).
    starts: BTreeSet<(bool, u128, u8)>,
    /// (is IPv6, prefix length) -> how many blocks have it: supernet lookups try only these.
    prefixes: BTreeMap<(bool, u8), usize>,
}

/// Where a specific address must be assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockForIp {
    /// An existing block holds the address (whatever its size): assign it there.
    Existing(IpNet),
    /// No block holds the address and the pool's block for it overlaps none: create that block.
    New(IpNet),
}

/// Creating `block` would overlap `existing`, a different block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "IPAMBlock {block} would overlap existing IPAMBlock {existing}: refusing to create it (the pool's cidr or blockSize changed while blocks existed, or pools overlap)"
)]
pub struct Overlap {
    pub block: IpNet,
    pub existing: IpNet,
}

fn key(n: &IpNet) -> (bool, u128, u8) {
    (
        matches!(n, IpNet::V6(_)),
        cidr::ip_to_u128(n.network()),
        n.prefix_len(),
    )
}

impl BlockSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, n: IpNet) {
        let n = n.trunc();
        if self.exact.insert(n) {
            let k = key(&n);
            self.starts.insert(k);
            *self.prefixes.entry((k.0, k.2)).or_default() += 1;
        }
    }

    pub fn remove(&mut self, n: &IpNet) {
        let n = n.trunc();
        if self.exact.remove(&n) {
            let k = key(&n);
            self.starts.remove(&k);
            if let Some(c) = self.prefixes.get_mut(&(k.0, k.2)) {
                *c -= 1;
                if *c == 0 {
                    self.prefixes.remove(&(k.0, k.2));
                }
            }
        }
    }

    pub fn contains(&self, n: &IpNet) -> bool {
        self.exact.contains(&n.trunc())
    }

    pub fn len(&self) -> usize {
        self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.exact.iter()
    }

    /// An existing block sharing an address with `n` (`n` itself when it exists).
    pub fn overlapping(&self, n: &IpNet) -> Option<IpNet> {
        let n = n.trunc();
        let (v6, lo, plen) = key(&n);
        // A block containing n (n itself included): one of its supernets, at a prefix length
        // some block has.
        for (&(_, p), _) in self.prefixes.range((v6, 0)..=(v6, plen)).rev() {
            let sup = cidr::net_of(n.network(), p);
            if self.exact.contains(&sup) {
                return Some(sup);
            }
        }
        // A block inside n: it starts inside n.
        let hi = lo + (cidr::size(&n) - 1);
        self.starts
            .range((v6, lo, 0)..=(v6, hi, u8::MAX))
            .next()
            .map(|&(_, start, prefix)| {
                let ip = if v6 {
                    IpAddr::V6(start.into())
                } else {
                    IpAddr::V4((start as u32).into())
                };
                cidr::net_of(ip, prefix)
            })
    }

    /// Neither `n` nor any block overlapping it exists: `n` may be created.
    pub fn is_free(&self, n: &IpNet) -> bool {
        self.overlapping(n).is_none()
    }

    /// The check before creating `block`: Err names the other block when they overlap. `block`
    /// existing already is no conflict (the create's AlreadyExists arbitrates).
    pub fn check_new(&self, block: &IpNet) -> Result<(), Overlap> {
        let block = block.trunc();
        if self.exact.contains(&block) {
            return Ok(());
        }
        match self.overlapping(&block) {
            None => Ok(()),
            Some(existing) => Err(Overlap { block, existing }),
        }
    }

    /// The smallest existing block holding `ip`.
    pub fn containing(&self, ip: IpAddr) -> Option<IpNet> {
        let v6 = ip.is_ipv6();
        let bits = if v6 { 128 } else { 32 };
        self.prefixes
            .range((v6, 0)..=(v6, bits))
            .rev()
            .map(|(&(_, p), _)| cidr::net_of(ip, p))
            .find(|n| self.exact.contains(n))
    }

    /// Where to assign `ip` of a pool with `/block_size` blocks: the existing block holding it
    /// whatever its size (a block of an older block size still owns its addresses), else the
    /// pool's block for it if that overlaps nothing.
    pub fn block_for_ip(&self, ip: IpAddr, block_size: u8) -> Result<BlockForIp, Overlap> {
        if let Some(b) = self.containing(ip) {
            return Ok(BlockForIp::Existing(b));
        }
        let b = cidr::block_containing(ip, block_size);
        self.check_new(&b).map(|()| BlockForIp::New(b))
    }
}

impl FromIterator<IpNet> for BlockSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        let mut s = BlockSet::new();
        for n in iter {
            s.insert(n);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn set(v: &[&str]) -> BlockSet {
        v.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn smaller_and_larger_blocks_overlap() {
        let s = set(&["10.0.0.0/26", "10.0.1.32/27", "fd00::/122"]);
        // A /27 inside an existing /26 (blockSize 26 -> 27).
        assert_eq!(s.overlapping(&net("10.0.0.32/27")), Some(net("10.0.0.0/26")));
        // A /25 over an existing /26 (blockSize 26 -> 25) and over a /27 in its upper half.
        assert_eq!(s.overlapping(&net("10.0.0.0/25")), Some(net("10.0.0.0/26")));
        assert_eq!(s.overlapping(&net("10.0.1.0/26")), Some(net("10.0.1.32/27")));
        assert_eq!(s.overlapping(&net("10.0.1.0/27")), None);
        assert_eq!(s.overlapping(&net("10.0.0.64/26")), None);
        // Families never overlap: 10.0.0.0 is not ::a00:0.
        assert_eq!(s.overlapping(&net("::a00:0/122")), None);
        assert_eq!(s.overlapping(&net("fd00::20/123")), Some(net("fd00::/122")));
        assert_eq!(s.overlapping(&net("fd00::/64")), Some(net("fd00::/122")));
        assert!(s.is_free(&net("fd00::40/122")));
    }

    #[test]
    fn check_new_names_both_blocks_and_accepts_the_same_block() {
        let s = set(&["10.48.0.0/26"]);
        assert_eq!(s.check_new(&net("10.48.0.0/26")), Ok(()));
        let e = s.check_new(&net("10.48.0.32/27")).unwrap_err();
        assert_eq!(e.existing, net("10.48.0.0/26"));
        let msg = e.to_string();
        assert!(
            msg.contains("IPAMBlock 10.48.0.32/27") && msg.contains("existing IPAMBlock 10.48.0.0/26"),
            "{msg}"
        );
    }

    #[test]
    fn an_address_goes_to_the_block_that_holds_it() {
        let s = set(&["10.0.0.0/26"]);
        let ip: IpAddr = "10.0.0.40".parse().unwrap();
        // The pool now says /27: the /26 still owns .40.
        assert_eq!(
            s.block_for_ip(ip, 27),
            Ok(BlockForIp::Existing(net("10.0.0.0/26")))
        );
        let ip: IpAddr = "10.0.0.70".parse().unwrap();
        assert_eq!(s.block_for_ip(ip, 27), Ok(BlockForIp::New(net("10.0.0.64/27"))));
        // The pool now says /25: .70's /25 would cover the /26.
        let e = s.block_for_ip(ip, 25).unwrap_err();
        assert_eq!((e.block, e.existing), (net("10.0.0.0/25"), net("10.0.0.0/26")));
    }

    #[test]
    fn remove_forgets() {
        let mut s = set(&["10.0.0.0/26"]);
        s.remove(&net("10.0.0.0/26"));
        assert!(s.is_empty());
        assert!(s.is_free(&net("10.0.0.0/24")));
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u8>(), 20u8..=32).prop_map(|(a, p)| cidr::net_of(IpAddr::V4([10, 0, a & 3, a].into()), p)),
            (any::<u8>(), 116u8..=128).prop_map(|(a, p)| cidr::net_of(
                IpAddr::V6([0xfd00, 0, 0, 0, 0, 0, u16::from(a & 3), u16::from(a)].into()),
                p
            )),
        ]
    }

    proptest! {
        /// The index agrees with the definition: n overlaps some member iff a member shares an address.
        #[test]
        fn overlap_matches_the_definition(members in proptest::collection::vec(any_net(), 0..12), q in any_net()) {
            let s: BlockSet = members.iter().copied().collect();
            let brute = members.iter().any(|m| cidr::overlaps(m, &q));
            let got = s.overlapping(&q);
            prop_assert_eq!(got.is_some(), brute);
            if let Some(o) = got {
                prop_assert!(s.contains(&o) && cidr::overlaps(&o, &q));
            }
        }
    }
}
