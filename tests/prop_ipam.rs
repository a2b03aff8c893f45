//! Property tests of Calico's object names (no cluster): block names for any IPv4/IPv6 block,
//! affinity names for any host name length, handle names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tortie::ipam::{cidr, names};

fn v4_block() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 20u8..=32).prop_map(|(a, p)| cidr::net_of(IpAddr::V4(Ipv4Addr::from(a)), p))
}

fn v6_block() -> impl Strategy<Value = IpNet> {
    // Mostly-zero addresses exercise the "::" compression Calico's names inherit.
    let groups = proptest::collection::vec(prop_oneof![Just(0u16), any::<u16>()], 8);
    (groups, 116u8..=128).prop_map(|(g, p)| {
        let mut a = [0u16; 8];
        a.copy_from_slice(&g);
        cidr::net_of(IpAddr::V6(Ipv6Addr::from(a)), p)
    })
}

fn host() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9.-]{0,300}[a-z0-9])?"
}

proptest! {
    /// IPv4: dots and the slash become dashes, nothing else changes.
    #[test]
    fn v4_block_names(b in v4_block()) {
        let name = names::block_name(&b);
        prop_assert_eq!(&name, &b.to_string().replace(['.', '/'], "-"));
        prop_assert_eq!(names::parse_block_name(&name), Some(b));
    }

    /// IPv6: Calico encodes the compressed lower-case text; every colon (at most 7) and the slash
    /// become dashes, and the name parses back to the block.
    #[test]
    fn v6_block_names(b in v6_block()) {
        let text = b.to_string();
        prop_assert!(text.matches(':').count() <= 7);
        let name = names::block_name(&b);
        prop_assert_eq!(&name, &text.replace([':', '/'], "-"));
        prop_assert_eq!(name.to_lowercase(), name.clone());
        prop_assert_eq!(names::parse_block_name(&name), Some(b));
    }

    /// Affinity names: `<host>-<block>` below 253 characters, else truncated host, block name and
    /// the first 11 hex digits of sha256("<host>+<block>"), 252 characters in all.
    #[test]
    fn affinity_names(h in host(), b in prop_oneof![v4_block(), v6_block()]) {
        let encoded = names::block_name(&b);
        let name = names::affinity_name(&h, &b);
        let plain = format!("{h}-{encoded}");
        if plain.len() < 253 {
            prop_assert_eq!(name, plain);
        } else {
            prop_assert_eq!(name.len(), 252);
            let hex: String = Sha256::digest(format!("{h}+{encoded}").as_bytes()).iter().map(|x| format!("{x:02x}")).collect();
            let keep = 252 - encoded.len() - 13;
            prop_assert_eq!(name, format!("{}-{encoded}-{}", &h[..keep], &hex[..11]));
        }
    }

    /// Distinct hosts never share an affinity name for the same block (the hash keeps long names apart).
    #[test]
    fn long_host_names_stay_distinct(a in host(), b in host(), blk in v4_block()) {
        prop_assume!(a != b);
        prop_assert_ne!(names::affinity_name(&a, &blk), names::affinity_name(&b, &blk));
    }

    /// An ID that is a valid object name keeps Calico's name (itself, already lower case); every
    /// name is a valid object name; distinct IDs never share a name (issue 15: `ABC` and `abc`
    /// shared one and one leaked).
    #[test]
    fn handle_names_valid_and_distinct(a in "[A-Za-z0-9._/ü-]{1,300}", b in "[A-Za-z0-9._/ü-]{1,300}") {
        for id in [&a, &b] {
            let n = names::handle_name(id);
            prop_assert!(names::is_dns_subdomain(&n), "{:?} -> {:?}", id, n);
            if names::is_dns_subdomain(id) {
                prop_assert_eq!(&n, id);
            }
        }
        if a != b {
            prop_assert_ne!(names::handle_name(&a), names::handle_name(&b));
        }
        let lower = a.to_lowercase();
        if lower != a {
            prop_assert_ne!(names::handle_name(&a), names::handle_name(&lower));
        }
    }

    /// The claim order visits every block of a pool exactly once, starting where the host hash says.
    #[test]
    fn claim_order_is_a_permutation(h in host(), base in any::<u32>(), p in 20u8..=26, extra in 0u8..=6) {
        let pool_net = cidr::net_of(IpAddr::V4(Ipv4Addr::from(base)), p);
        let spec = tortie::api::IPPoolSpec { cidr: pool_net.to_string(), block_size: Some(i32::from(p + extra)), ..Default::default() };
        let pool = tortie::api::Pool::new("p", &tortie::api::CrdMode::V1.resource(tortie::api::CalicoKind::IPPool), spec);
        let info = tortie::ipam::allocator::PoolInfo::from_pool(&pool).unwrap();
        let order: Vec<IpNet> = tortie::ipam::allocator::claim_order(&info, &h).collect();
        let n = cidr::num_blocks(&pool_net, p + extra) as usize;
        prop_assert_eq!(order.len(), n);
        let set: std::collections::BTreeSet<_> = order.iter().collect();
        prop_assert_eq!(set.len(), n);
        let start = tortie::ipam::allocator::start_index(&h, n as u128);
        prop_assert_eq!(order[0], cidr::nth_block(&pool_net, p + extra, start));
    }
}
