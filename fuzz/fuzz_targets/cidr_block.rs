//! Address and block math (`ipam::cidr`, `ipam::block`, `ipam::names`): ordinal <-> address and
//! block <-> index round trips, block object names <-> CIDR, and a block that stays consistent
//! (`block::check` clean, free + allocated = size) through any sequence of allocate, assign and
//! release.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tortie::ipam::{block, cidr, names};

#[derive(Arbitrary, Debug)]
enum Op {
    Allocate { n: u8, handle: u8, skip_odd: bool },
    Assign { ordinal: u16, handle: u8 },
    Release { ordinals: Vec<u16> },
    ReleaseHandle { handle: u8 },
}

#[derive(Arbitrary, Debug)]
struct Case {
    v6: bool,
    bits: u128,
    pool_prefix: u8,
    block_size: u8,
    ordinal: u128,
    name: String,
    ops: Vec<Op>,
}

fuzz_target!(|c: Case| {
    let ip = if c.v6 {
        IpAddr::V6(Ipv6Addr::from(c.bits))
    } else {
        IpAddr::V4(Ipv4Addr::from(c.bits as u32))
    };
    let max = if c.v6 { 128 } else { 32 };
    let bs = c.block_size % (max + 1);
    let pp = c.pool_prefix % (bs + 1);
    let block = cidr::net_of(ip, bs);
    let pool = cidr::net_of(ip, pp);
    assert_eq!(block.trunc(), block);
    assert!(block.contains(&ip) && pool.contains(&block));
    assert_eq!(cidr::block_containing(ip, bs), block);

    // ordinal <-> address
    let offset = cidr::ip_to_u128(ip) - cidr::ip_to_u128(block.network());
    match cidr::ordinal_of(&block, ip) {
        Some(o) => assert_eq!(cidr::address_of(&block, o), ip),
        None => assert!(usize::try_from(offset).is_err(), "{ip} in {block} has no ordinal"),
    }
    let size = cidr::size(&block);
    if let Ok(ord) = usize::try_from(c.ordinal % size.max(1))
        && (ord as u128) < size
    {
        let a = cidr::address_of(&block, ord);
        assert!(block.contains(&a));
        assert_eq!(cidr::ordinal_of(&block, a), Some(ord));
    }

    // block <-> index in its pool
    assert!(cidr::check_block_size(&pool, bs).is_ok());
    let idx = cidr::block_index(&pool, &block).expect("block of its pool");
    assert!(idx < cidr::num_blocks(&pool, bs));
    assert_eq!(cidr::nth_block(&pool, bs, idx), block);
    assert!(cidr::overlaps(&pool, &block) && cidr::same_family(&pool, &block));

    // CIDR text and block object names
    assert_eq!(cidr::parse_masked(&block.to_string()), Ok(block));
    let name = names::block_name(&block);
    assert_eq!(
        names::parse_block_name(&name),
        Some(block),
        "{block} named {name}"
    );
    if let Some(net) = names::parse_block_name(&c.name) {
        assert_eq!(names::block_name(&net), c.name, "{:?} parsed as {net}", c.name);
    }
    if let Ok(net) = cidr::parse_masked(&c.name) {
        assert_eq!(net.trunc(), net);
    }

    // A small block (at most 256 addresses) through a sequence of operations.
    let small = cidr::net_of(ip, max - (c.block_size % 9).min(max));
    let n = cidr::size(&small) as usize;
    let mut b = block::new_block(&small, Some("host:n".into()), 1, None);
    let attrs = tortie::api::StrMap::new();
    let handles = ["h0", "h1", "h2"];
    for op in c.ops.iter().take(64) {
        match op {
            Op::Allocate {
                n: k,
                handle,
                skip_odd,
            } => {
                let free = block::free_count(&b);
                let got = block::allocate(
                    &mut b,
                    usize::from(*k),
                    Some(handles[usize::from(*handle) % 3]),
                    &attrs,
                    |o| *skip_odd && o % 2 == 1,
                );
                assert!(got.len() <= usize::from(*k) && got.len() <= free);
                assert_eq!(block::free_count(&b), free - got.len());
            }
            Op::Assign { ordinal, handle } => {
                let ord = usize::from(*ordinal) % (n + 2);
                let was_free = b.allocations.get(ord).is_some_and(|a| a.is_none());
                let r = block::assign(&mut b, ord, Some(handles[usize::from(*handle) % 3]), &attrs);
                assert_eq!(r.is_ok(), was_free, "assign {ord}: {r:?}");
            }
            Op::Release { ordinals } => {
                let ords: Vec<usize> = ordinals.iter().map(|o| usize::from(*o) % (n + 2)).collect();
                let before = block::allocated_count(&b);
                let (done, _) = block::release(&mut b, &ords);
                assert_eq!(block::allocated_count(&b), before - done.len());
            }
            Op::ReleaseHandle { handle } => {
                let h = handles[usize::from(*handle) % 3];
                block::release_handle(&mut b, h, None);
                assert!(block::ordinals_of_handle(&b, h).is_empty());
            }
        }
        assert_eq!(block::free_count(&b) + block::allocated_count(&b), n);
        let problems = block::check(&b);
        assert!(problems.is_empty(), "{op:?} left {problems:?}");
    }
});
