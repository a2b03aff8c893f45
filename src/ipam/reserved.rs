//! IPReservations: addresses automatic assignment never hands out (Calico's semantics).
//!
//! As in Calico, a reservation is not written into any block: a reserved ordinal simply stays in
//! the block's `unallocated` list, skipped in place, so Calico's tools read the same blocks.
//! Blocks wholly inside reservations are never claimed; a specific address (`ipAddrs`) and
//! existing allocations are not affected. Entries are CIDRs or single addresses; a CIDR with
//! host bits set reserves its whole network (Calico's `ParseCIDROrIP`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::cidr;

/// The reserved ranges of every IPReservation, as inclusive `(first, last)` address numbers,
/// merged and sorted per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

/// One reservation entry, parsed: a network, or the reason it is not one.
pub fn parse_entry(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR or an IP address"))
}

fn range(n: &IpNet) -> (u128, u128) {
    let first = cidr::ip_to_u128(n.network());
    (first, first + (cidr::size(n) - 1))
}

fn merge(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl Reserved {
    /// From the entries of every IPReservation (`(name, reservedCIDRs)`); entries that are not
    /// CIDRs or addresses are left out and returned as `(reservation, entry, reason)`.
    pub fn new<'a>(
        reservations: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> (Reserved, Vec<(String, String, String)>) {
        let (mut v4, mut v6, mut bad) = (Vec::new(), Vec::new(), Vec::new());
        for (name, entries) in reservations {
            for e in entries.iter().filter(|e| !e.trim().is_empty()) {
                match parse_entry(e) {
                    Ok(n @ IpNet::V4(_)) => v4.push(range(&n)),
                    Ok(n @ IpNet::V6(_)) => v6.push(range(&n)),
                    Err(why) => bad.push((name.to_string(), e.clone(), why)),
                }
            }
        }
        (
            Reserved {
                v4: merge(v4),
                v6: merge(v6),
            },
            bad,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn ranges(&self, v6: bool) -> &[(u128, u128)] {
        if v6 { &self.v6 } else { &self.v4 }
    }

    /// Whether `ip` is reserved.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let x = cidr::ip_to_u128(ip);
        let r = self.ranges(ip.is_ipv6());
        // Ranges are sorted and disjoint: the candidate is the last one starting at or below x.
        let i = r.partition_point(|(a, _)| *a <= x);
        i > 0 && r[i - 1].1 >= x
    }

    /// The reserved ranges as the fewest CIDRs that cover them exactly (for usage figures).
    pub fn nets(&self) -> Vec<IpNet> {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let v4 = self.v4.iter().flat_map(|&(a, b)| {
            ipnet::Ipv4Subnets::new(Ipv4Addr::from(a as u32), Ipv4Addr::from(b as u32), 0).map(IpNet::V4)
        });
        let v6 = self.v6.iter().flat_map(|&(a, b)| {
            ipnet::Ipv6Subnets::new(Ipv6Addr::from(a), Ipv6Addr::from(b), 0).map(IpNet::V6)
        });
        v4.chain(v6).collect()
    }

    /// How many addresses of `net` are reserved.
    pub fn count_in(&self, net: &IpNet) -> u128 {
        let (lo, hi) = range(net);
        self.ranges(matches!(net, IpNet::V6(_)))
            .iter()
            .filter(|(a, b)| *a <= hi && *b >= lo)
            .map(|(a, b)| b.min(&hi) - a.max(&lo) + 1)
            .sum()
    }

    /// Whether every address of `net` is reserved (such a block is never claimed).
    pub fn covers(&self, net: &IpNet) -> bool {
        self.count_in(net) == cidr::size(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(entries: &[&str]) -> Reserved {
        let v: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        let (r, bad) = Reserved::new([("r", v.as_slice())]);
        assert!(bad.is_empty(), "{bad:?}");
        r
    }

    #[test]
    fn nets_cover_exactly_the_merged_ranges() {
        let r = res(&["10.0.0.1", "10.0.0.2/31", "10.0.0.4/30", "fd00::/127", "fd00::2"]);
        let nets: Vec<String> = r.nets().iter().map(|n| n.to_string()).collect();
        // 10.0.0.1 .. 10.0.0.7 merged; fd00:: .. fd00::2 merged.
        assert_eq!(
            nets,
            [
                "10.0.0.1/32",
                "10.0.0.2/31",
                "10.0.0.4/30",
                "fd00::/127",
                "fd00::2/128"
            ]
        );
        let total: u128 = r.nets().iter().map(|n| r.count_in(n)).sum();
        assert_eq!(total, 7 + 3);
        assert!(Reserved::default().nets().is_empty());
    }

    #[test]
    fn addresses_and_networks() {
        let r = res(&["10.0.0.5", "10.0.1.7/24", "fd00::/126", " 10.0.2.0/31 "]);
        for ip in ["10.0.0.5", "10.0.1.0", "10.0.1.255", "fd00::3", "10.0.2.1"] {
            assert!(r.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.4", "10.0.0.6", "10.0.2.2", "fd00::4", "::a00:5"] {
            assert!(!r.contains(ip.parse().unwrap()), "{ip}");
        }
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(r.covers(&net("10.0.1.64/26")));
        assert!(!r.covers(&net("10.0.0.0/26")));
        assert_eq!(r.count_in(&net("10.0.0.0/26")), 1);
        assert_eq!(r.count_in(&net("10.0.0.0/16")), 1 + 256 + 2);
        assert_eq!(r.count_in(&net("fd00::/64")), 4);
    }

    #[test]
    fn overlapping_and_adjacent_entries_are_counted_once() {
        // Two halves plus a nested address cover the block exactly once.
        let r = res(&["10.0.0.0/27", "10.0.0.32/27", "10.0.0.40", "10.0.0.0/28"]);
        let b: IpNet = "10.0.0.0/26".parse().unwrap();
        assert!(r.covers(&b));
        assert_eq!(r.count_in(&b), 64);
    }

    #[test]
    fn bad_entries_are_returned_not_fatal() {
        let v = vec!["10.0.0.1".to_string(), "10.0.0.0/33".to_string(), "x".into()];
        let (r, bad) = Reserved::new([("r1", v.as_slice())]);
        assert!(r.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, "r1");
    }

    /// What the engine does in a block: reserved ordinals are skipped and stay in `unallocated`
    /// in their place; nothing about them is written, so the block passes Calico's invariants.
    #[test]
    fn allocation_skips_reserved_ordinals_in_place() {
        use crate::ipam::block as blk;
        let net: IpNet = "10.0.0.0/29".parse().unwrap();
        let mut b = blk::new_block(&net, Some("host:n1".into()), 1, None);
        let r = res(&["10.0.0.0", "10.0.0.2/31"]);
        let secondary = crate::api::StrMap::new();
        let skip = |o: usize| r.contains(cidr::address_of(&net, o));
        let got = blk::allocate(&mut b, 3, Some("h"), &secondary, skip);
        assert_eq!(got, [1, 4, 5]);
        assert_eq!(b.unallocated, [0, 2, 3, 6, 7]);
        assert!(blk::check(&b).is_empty(), "{:?}", blk::check(&b));
        // Only the two free unreserved ordinals are left to take.
        assert_eq!(blk::allocate(&mut b, 5, Some("h"), &secondary, skip), [6, 7]);
        assert!(blk::allocate(&mut b, 1, Some("h"), &secondary, skip).is_empty());
        assert_eq!(b.unallocated, [0, 2, 3]);
    }

    proptest::proptest! {
        /// `contains` and `count_in` agree with a brute-force walk of a small range.
        #[test]
        fn matches_brute_force(entries in proptest::collection::vec((0u8..=255, 24u8..=32), 0..6)) {
            let texts: Vec<String> = entries.iter().map(|(o, p)| format!("10.0.0.{o}/{p}")).collect();
            let (r, _) = Reserved::new([("p", texts.as_slice())]);
            let nets: Vec<IpNet> = texts.iter().map(|t| parse_entry(t).unwrap()).collect();
            let block: IpNet = "10.0.0.0/24".parse().unwrap();
            let mut n = 0u128;
            for i in 0..256u32 {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                let want = nets.iter().any(|net| net.contains(&ip));
                proptest::prop_assert_eq!(r.contains(ip), want);
                n += u128::from(want);
            }
            proptest::prop_assert_eq!(r.count_in(&block), n);
        }
    }
}
