//! Address and block arithmetic for IPv4 and IPv6, on `u128` so both families share one code path.
//! Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Bad CIDR text, with the text and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (expected e.g. 10.48.0.0/24 or fd00::/64)")]
    Parse(String),
    #[error("{text:?} is not strictly masked: host bits are set (did you mean {masked}?)")]
    NotMasked { text: String, masked: IpNet },
    #[error("block size /{block_size} does not fit {family} pool {pool}")]
    BlockSize {
        pool: IpNet,
        block_size: u8,
        family: &'static str,
    },
}

/// Width in bits of the family of `net`.
pub fn max_bits(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

fn u128_to_ip(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// Number of addresses in `net` (2^(bits - prefix)); saturates for a whole IPv6 /0.
pub fn size(net: &IpNet) -> u128 {
    let host_bits = u32::from(max_bits(net) - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Parses a CIDR that must be strictly masked (`10.48.0.0/24`, not `10.48.0.1/24`).
pub fn parse_masked(text: &str) -> Result<IpNet, CidrError> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| CidrError::Parse(text.to_string()))?;
    if net.trunc() != net {
        return Err(CidrError::NotMasked {
            text: text.to_string(),
            masked: net.trunc(),
        });
    }
    Ok(net)
}

/// Ordinal of `ip` inside `block`, or None when `ip` is outside it (or, in an IPv6 network wider
/// than any block, past what a `usize` holds: a cast would wrap to another address's ordinal).
pub fn ordinal_of(block: &IpNet, ip: IpAddr) -> Option<usize> {
    if !block.contains(&ip) {
        return None;
    }
    usize::try_from(ip_to_u128(ip) - ip_to_u128(block.network())).ok()
}

/// The address at `ordinal` of `block`. Panics in debug builds when the ordinal is out of range.
pub fn address_of(block: &IpNet, ordinal: usize) -> IpAddr {
    debug_assert!((ordinal as u128) < size(block));
    let v6 = matches!(block, IpNet::V6(_));
    u128_to_ip(ip_to_u128(block.network()) + ordinal as u128, v6)
}

/// Builds a network from an address and prefix, masking host bits.
pub fn net_of(ip: IpAddr, prefix: u8) -> IpNet {
    match ip {
        IpAddr::V4(v) => IpNet::V4(Ipv4Net::new(v, prefix).expect("prefix <= 32").trunc()),
        IpAddr::V6(v) => IpNet::V6(Ipv6Net::new(v, prefix).expect("prefix <= 128").trunc()),
    }
}

/// Checks that blocks of `/block_size` can be cut from `pool`.
pub fn check_block_size(pool: &IpNet, block_size: u8) -> Result<(), CidrError> {
    if block_size < pool.prefix_len() || block_size > max_bits(pool) {
        let family = if max_bits(pool) == 32 { "IPv4" } else { "IPv6" };
        return Err(CidrError::BlockSize {
            pool: *pool,
            block_size,
            family,
        });
    }
    Ok(())
}

/// Number of blocks of `/block_size` in `pool` (saturating for absurd IPv6 splits).
pub fn num_blocks(pool: &IpNet, block_size: u8) -> u128 {
    let bits = u32::from(block_size.saturating_sub(pool.prefix_len()));
    1u128.checked_shl(bits).unwrap_or(u128::MAX)
}

/// The `index`-th block of `pool` (index < num_blocks).
pub fn nth_block(pool: &IpNet, block_size: u8, index: u128) -> IpNet {
    let step = size(&net_of(pool.network(), block_size));
    let v6 = matches!(pool, IpNet::V6(_));
    let base = ip_to_u128(pool.network()) + index * step;
    net_of(u128_to_ip(base, v6), block_size)
}

/// Index of `block` among the blocks of `pool`, if it is one of them.
pub fn block_index(pool: &IpNet, block: &IpNet) -> Option<u128> {
    if block.prefix_len() < pool.prefix_len() || !pool.contains(&block.network()) {
        return None;
    }
    let step = size(block);
    Some((ip_to_u128(block.network()) - ip_to_u128(pool.network())) / step)
}

/// The block of `/block_size` that holds `ip`.
pub fn block_containing(ip: IpAddr, block_size: u8) -> IpNet {
    net_of(ip, block_size)
}

/// All blocks of a pool in address order.
pub fn blocks(pool: IpNet, block_size: u8) -> impl Iterator<Item = IpNet> {
    let n = num_blocks(&pool, block_size);
    (0..n).map(move |i| nth_block(&pool, block_size, i))
}

/// Same address family.
pub fn same_family(a: &IpNet, b: &IpNet) -> bool {
    max_bits(a) == max_bits(b)
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    same_family(a, b) && (a.contains(&b.network()) || b.contains(&a.network()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ordinal_of_never_wraps() {
        // Regression (fuzz target cidr_block): ::900:0:44:4402:1000:fd in ::/32 gave the ordinal
        // of ::44:4402:1000:fd (the u128 offset was cast to usize).
        let net: IpNet = "::/32".parse().unwrap();
        let ip: IpAddr = "::900:0:44:4402:1000:fd".parse().unwrap();
        assert_eq!(ordinal_of(&net, ip), None);
        let near: IpAddr = "::44:4402:1000:fd".parse().unwrap();
        let o = ordinal_of(&net, near).unwrap();
        assert_eq!(address_of(&net, o), near);
    }

    #[test]
    fn sizes_and_blocks() {
        assert_eq!(size(&net("10.48.0.0/26")), 64);
        assert_eq!(size(&net("fd00::/122")), 64);
        assert_eq!(num_blocks(&net("10.48.0.0/24"), 26), 4);
        assert_eq!(num_blocks(&net("10.48.2.0/24"), 29), 32);
        let all: Vec<_> = blocks(net("10.48.0.0/24"), 26).map(|b| b.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.48.0.0/26",
                "10.48.0.64/26",
                "10.48.0.128/26",
                "10.48.0.192/26"
            ]
        );
        assert_eq!(
            nth_block(&net("fd00:10:244::/120"), 122, 3).to_string(),
            "fd00:10:244::c0/122"
        );
        assert_eq!(block_index(&net("10.48.0.0/24"), &net("10.48.0.192/26")), Some(3));
        assert_eq!(block_index(&net("10.48.0.0/24"), &net("10.48.1.0/26")), None);
    }

    #[test]
    fn ordinals() {
        let b = net("10.48.0.64/26");
        assert_eq!(ordinal_of(&b, "10.48.0.64".parse().unwrap()), Some(0));
        assert_eq!(ordinal_of(&b, "10.48.0.127".parse().unwrap()), Some(63));
        assert_eq!(ordinal_of(&b, "10.48.0.128".parse().unwrap()), None);
        assert_eq!(address_of(&b, 5).to_string(), "10.48.0.69");
        assert_eq!(address_of(&net("fd00::40/122"), 1).to_string(), "fd00::41");
    }

    #[test]
    fn masked_parse_names_the_problem() {
        assert_eq!(parse_masked("10.48.0.0/24").unwrap(), net("10.48.0.0/24"));
        let e = parse_masked("10.48.0.1/24").unwrap_err();
        assert!(e.to_string().contains("not strictly masked"), "{e}");
        assert!(e.to_string().contains("10.48.0.0/24"), "{e}");
        assert!(
            parse_masked("pool2")
                .unwrap_err()
                .to_string()
                .contains("\"pool2\"")
        );
        assert!(check_block_size(&net("10.0.0.0/27"), 26).is_err());
        assert!(check_block_size(&net("10.0.0.0/24"), 26).is_ok());
    }

    proptest! {
        #[test]
        fn ordinal_address_roundtrip_v4(base in any::<u32>(), prefix in 20u8..=32, off in any::<u64>()) {
            let block = net_of(IpAddr::V4(Ipv4Addr::from(base)), prefix);
            let o = (off as u128 % size(&block)) as usize;
            let ip = address_of(&block, o);
            prop_assert!(block.contains(&ip));
            prop_assert_eq!(ordinal_of(&block, ip), Some(o));
            prop_assert_eq!(block_containing(ip, prefix), block);
        }

        #[test]
        fn ordinal_address_roundtrip_v6(base in any::<u128>(), prefix in 116u8..=128, off in any::<u64>()) {
            let block = net_of(IpAddr::V6(Ipv6Addr::from(base)), prefix);
            let o = (off as u128 % size(&block)) as usize;
            let ip = address_of(&block, o);
            prop_assert_eq!(ordinal_of(&block, ip), Some(o));
        }

        #[test]
        fn blocks_tile_the_pool(base in any::<u32>(), pool_prefix in 16u8..=28, extra in 0u8..=4) {
            let pool = net_of(IpAddr::V4(Ipv4Addr::from(base)), pool_prefix);
            let bs = pool_prefix + extra;
            let n = num_blocks(&pool, bs);
            prop_assert_eq!(n * size(&net_of(pool.network(), bs)), size(&pool));
            for i in [0, n / 2, n - 1] {
                let b = nth_block(&pool, bs, i);
                prop_assert!(pool.contains(&b.network()));
                prop_assert_eq!(b.prefix_len(), bs);
                prop_assert_eq!(block_index(&pool, &b), Some(i));
            }
        }
    }
}
