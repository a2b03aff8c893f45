//! `ipam split`: Calico's split of an IPPool into 2^n equal pools (`split-<name>-<i>`, the
//! parent's spec with the child's CIDR, enabled), decided here without I/O.
//!
//! Why it is safe while pods run: every child is at least one block wide and inherits the
//! parent's `blockSize`, so each existing block lies wholly inside one child and keeps its
//! allocations and affinity; no IPAM object is written. The CLI creates the children first,
//! then disables and deletes the parent (see `tortie ipam split --help`).

use ipnet::IpNet;

use crate::api::{IPPoolSpec, Pool};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the number of pools to split into must be a power of 2 greater than 1, not {0}")]
    NotPowerOfTwo(u32),
    #[error("IPPool {pool}: spec.cidr {cidr} is not large enough to be split into {parts} pools")]
    TooSmall { pool: String, cidr: IpNet, parts: u32 },
    #[error(
        "IPPool {pool}: split into {parts} pools, each would be a /{child} smaller than the pool's blockSize {block_size}; split into at most {max} pools"
    )]
    SmallerThanBlock {
        pool: String,
        parts: u32,
        child: u8,
        block_size: u8,
        max: u128,
    },
    #[error("IPPool {pool}: spec.cidr {cidr:?} is not a CIDR")]
    BadCidr { pool: String, cidr: String },
}

/// `net` cut into `parts` equal CIDRs, in address order.
pub fn split_cidr(pool: &str, net: IpNet, parts: u32) -> Result<Vec<IpNet>, SplitError> {
    if parts < 2 || !parts.is_power_of_two() {
        return Err(SplitError::NotPowerOfTwo(parts));
    }
    let bits = parts.trailing_zeros() as u8;
    let net = net.trunc();
    let child = net.prefix_len() + bits;
    if child > net.max_prefix_len() {
        return Err(SplitError::TooSmall {
            pool: pool.into(),
            cidr: net,
            parts,
        });
    }
    Ok(net
        .subnets(child)
        .map_err(|_| SplitError::TooSmall {
            pool: pool.into(),
            cidr: net,
            parts,
        })?
        .collect())
}

/// Calico's name of the `i`-th child of pool `parent` (its parent name cut so that the whole
/// fits the 253 characters of an object name).
pub fn child_name(parent: &str, i: usize) -> String {
    let name = format!("split-{parent}-{i}");
    if name.len() <= 253 {
        return name;
    }
    let cut: String = parent.chars().take(245).collect();
    format!("split-{cut}-{i}")
}

/// The children of `pool`: (name, spec), each the parent's spec with its own CIDR, enabled.
pub fn children(pool: &Pool, parts: u32) -> Result<Vec<(String, IPPoolSpec)>, SplitError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let net = pool.spec.net().ok_or_else(|| SplitError::BadCidr {
        pool: name.clone(),
        cidr: pool.spec.cidr.clone(),
    })?;
    let cidrs = split_cidr(&name, net, parts)?;
    let block_size = pool.spec.effective_block_size();
    let child = cidrs[0].prefix_len();
    if child > block_size {
        return Err(SplitError::SmallerThanBlock {
            pool: name,
            parts,
            child,
            block_size,
            max: 1u128 << (block_size - net.prefix_len()),
        });
    }
    Ok(cidrs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut spec = pool.spec.clone();
            spec.cidr = c.to_string();
            spec.disabled = Some(false);
            (child_name(&name, i), spec)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CalicoKind, CrdMode};

    fn pool(cidr: &str, block_size: Option<i32>) -> Pool {
        Pool::new(
            "p",
            &CrdMode::V1.resource(CalicoKind::IPPool),
            IPPoolSpec {
                cidr: cidr.into(),
                block_size,
                nat_outgoing: Some(true),
                ..Default::default()
            },
        )
    }

    #[test]
    fn splits_into_equal_aligned_children_in_order() {
        let got = split_cidr("p", "172.16.0.0/12".parse().unwrap(), 4).unwrap();
        let want: Vec<IpNet> = ["172.16.0.0/14", "172.20.0.0/14", "172.24.0.0/14", "172.28.0.0/14"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // An untidy CIDR is masked first, as Calico does.
        let got = split_cidr("p", "10.0.0.7/24".parse().unwrap(), 2).unwrap();
        assert_eq!(got[1].to_string(), "10.0.0.128/25");
        let v6 = split_cidr("p", "fd00::/120".parse().unwrap(), 2).unwrap();
        assert_eq!(v6[1].to_string(), "fd00::80/121");
    }

    #[test]
    fn bad_counts_and_sizes_are_refused() {
        let n: IpNet = "10.0.0.0/30".parse().unwrap();
        for parts in [0, 1, 3, 6] {
            assert_eq!(split_cidr("p", n, parts), Err(SplitError::NotPowerOfTwo(parts)));
        }
        assert!(matches!(split_cidr("p", n, 8), Err(SplitError::TooSmall { .. })));
        // A /24 of /26 blocks holds 4 blocks: 8 children would be smaller than a block.
        let e = children(&pool("10.0.0.0/24", Some(26)), 8).unwrap_err();
        assert!(e.to_string().contains("split into at most 4 pools"), "{e}");
        assert!(children(&pool("10.0.0.0/24", Some(26)), 4).is_ok());
    }

    #[test]
    fn children_keep_the_parents_spec_and_every_block_lies_in_one_child() {
        let mut parent = pool("10.0.0.0/16", None);
        parent.spec.disabled = Some(true);
        let kids = children(&parent, 2).unwrap();
        assert_eq!(kids[0].0, "split-p-0");
        assert_eq!(kids[1].1.cidr, "10.0.128.0/17");
        for (_, s) in &kids {
            assert_eq!(s.nat_outgoing, Some(true));
            assert_eq!(s.disabled, Some(false));
        }
        let nets: Vec<IpNet> = kids.iter().map(|(_, s)| s.cidr.parse().unwrap()).collect();
        for block in crate::ipam::cidr::blocks("10.0.0.0/16".parse().unwrap(), 26).take(4096) {
            assert_eq!(nets.iter().filter(|n| n.contains(&block)).count(), 1, "{block}");
        }
        assert_eq!(child_name(&"x".repeat(300), 3).len(), 6 + 245 + 2);
    }
}
