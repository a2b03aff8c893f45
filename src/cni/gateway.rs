//! Per-node gateway addresses for main plugins that need one (`ipam.gateway: "node"`).
//!
//! The reference `ptp` and `bridge` plugins route the pod through `gateway`, which must lie in the
//! address's subnet (the block) and must never be a pod's address (ptp puts it on every host-side
//! veth, bridge on the bridge). So the node holds one allocation per block its pods use, under the
//! handle `tortie-gateway.<node>`, attributes `node` and `type: gatewayAddress`; it is reused by
//! every later pod in that block and never released by DEL (a pod does not own it). Calico's GC
//! leaves allocations that are neither pod nor tunnel addresses alone.

use std::net::IpAddr;

use ipnet::IpNet;

pub const HANDLE_PREFIX: &str = "tortie-gateway.";
pub const TYPE: &str = "gatewayAddress";

pub fn handle_id(node: &str) -> String {
    format!("{HANDLE_PREFIX}{node}")
}

/// What to do for a pod address `addr` (carrying its block's prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The node already holds this gateway in the block.
    Existing(IpAddr),
    /// Assign one of these (in order; another ADD may take one first).
    Claim(Vec<IpAddr>),
}

/// `held`: the node's gateway addresses; `unallocated`: the block's free ordinals in hand-out order.
pub fn choose(addr: IpNet, held: &[IpAddr], unallocated: &[usize]) -> Choice {
    let block = addr.trunc();
    if let Some(gw) = held.iter().find(|ip| block.contains(*ip)) {
        return Choice::Existing(*gw);
    }
    Choice::Claim(
        unallocated
            .iter()
            .filter_map(|o| nth(block, *o))
            .filter(|ip| *ip != addr.addr())
            .take(4)
            .collect(),
    )
}

/// The `ordinal`-th address of `block`, if inside it.
pub fn nth(block: IpNet, ordinal: usize) -> Option<IpAddr> {
    let ord = u128::try_from(ordinal).ok()?;
    let ip = match block.network() {
        IpAddr::V4(n) => IpAddr::V4(
            u32::try_from(u128::from(u32::from(n)).checked_add(ord)?)
                .ok()?
                .into(),
        ),
        IpAddr::V6(n) => IpAddr::V6(u128::from(n).checked_add(ord)?.into()),
    };
    block.contains(&ip).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_node_gateway_of_the_block() {
        let addr: IpNet = "10.48.0.7/26".parse().unwrap();
        let held = ["10.48.0.70".parse().unwrap(), "10.48.0.2".parse().unwrap()];
        assert_eq!(
            choose(addr, &held, &[8, 9]),
            Choice::Existing("10.48.0.2".parse().unwrap())
        );
    }

    #[test]
    fn claims_free_ordinals_of_the_block_in_order() {
        let addr: IpNet = "10.48.0.7/26".parse().unwrap();
        assert_eq!(
            choose(addr, &[], &[8, 63, 64]),
            Choice::Claim(vec!["10.48.0.8".parse().unwrap(), "10.48.0.63".parse().unwrap()])
        );
        assert_eq!(choose(addr, &[], &[]), Choice::Claim(vec![]));
        let v6: IpNet = "fd00::5/122".parse().unwrap();
        assert_eq!(
            choose(v6, &[], &[1]),
            Choice::Claim(vec!["fd00::1".parse().unwrap()])
        );
    }

    #[test]
    fn nth_stays_in_block() {
        let b: IpNet = "10.48.0.64/26".parse().unwrap();
        assert_eq!(nth(b, 0), Some("10.48.0.64".parse().unwrap()));
        assert_eq!(nth(b, 64), None);
        assert_eq!(nth("255.255.255.0/24".parse().unwrap(), 300), None);
    }
}
