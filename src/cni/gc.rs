//! CNI 1.1 `GC`: release this node's addresses of this network whose container the runtime no
//! longer knows. The decision is pure; the shell lists blocks and releases by handle.
//!
//! Safety: only allocations whose `node` attribute is this node and whose handle is
//! `<network>.<containerID>` are candidates (other networks, other nodes, gateways, tunnel and
//! Calico-written legacy handles are never touched), and a config without
//! `cni.dev/valid-attachments` is an error rather than "everything is stale".

use std::collections::BTreeSet;

use serde_json::Value;

use super::error::CniError;
use crate::api::Block;

/// Container IDs of `cni.dev/valid-attachments` (or the pre-1.2.3 libcni key `cni.dev/attachments`).
pub fn valid_containers(stdin: &[u8]) -> Result<BTreeSet<String>, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    let list = v
        .get("cni.dev/valid-attachments")
        .or_else(|| v.get("cni.dev/attachments"))
        .ok_or_else(|| CniError::InvalidConfig {
            field: "cni.dev/valid-attachments".into(),
            reason: "missing: GC needs the list of valid attachments".into(),
        })?;
    let items = list.as_array().ok_or_else(|| CniError::InvalidConfig {
        field: "cni.dev/valid-attachments".into(),
        reason: format!("expected a list, got {list}"),
    })?;
    items
        .iter()
        .map(|a| {
            a.get("containerID")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CniError::InvalidConfig {
                    field: "cni.dev/valid-attachments".into(),
                    reason: format!("entry {a} has no containerID"),
                })
        })
        .collect()
}

/// Handles to release: this node's `<network>.<cid>` handles whose `cid` is not valid.
pub fn stale_handles(
    blocks: &[Block],
    node: &str,
    network: &str,
    valid: &BTreeSet<String>,
) -> BTreeSet<String> {
    let prefix = format!("{network}.");
    let mut out = BTreeSet::new();
    for b in blocks.iter().filter(|b| b.spec.deleted != Some(true)) {
        let used: BTreeSet<usize> = b.spec.allocations.iter().flatten().copied().collect();
        for idx in used {
            let Some(attr) = b.spec.attributes.get(idx) else {
                continue;
            };
            let Some(handle) = attr.handle_id.as_deref() else {
                continue;
            };
            let on_node = attr
                .secondary
                .as_ref()
                .and_then(|s| s.get("node"))
                .is_some_and(|n| n == node);
            let Some(cid) = handle.strip_prefix(&prefix) else {
                continue;
            };
            if on_node && !cid.is_empty() && !valid.contains(cid) {
                out.insert(handle.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AllocationAttribute, CalicoKind, CrdMode, IPAMBlockSpec};

    fn attr(handle: &str, node: &str) -> AllocationAttribute {
        AllocationAttribute {
            handle_id: Some(handle.into()),
            secondary: Some([("node".to_string(), node.to_string())].into()),
            ..Default::default()
        }
    }

    fn block(attrs: Vec<AllocationAttribute>) -> Block {
        let spec = IPAMBlockSpec {
            cidr: "10.0.0.0/29".into(),
            allocations: (0..8).map(|i| (i < attrs.len()).then_some(i)).collect(),
            unallocated: (attrs.len()..8).collect(),
            attributes: attrs,
            ..Default::default()
        };
        Block::new("10-0-0-0-29", &CrdMode::V1.resource(CalicoKind::IPAMBlock), spec)
    }

    #[test]
    fn only_this_nodes_unknown_containers_of_this_network() {
        let b = block(vec![
            attr("k8s-pod-network.live", "n1"),
            attr("k8s-pod-network.gone", "n1"),
            attr("k8s-pod-network.other-node", "n2"),
            attr("other-net.gone2", "n1"),
            attr("tortie-gateway.n1", "n1"),
            attr("ns.pod", "n1"),
        ]);
        let valid = BTreeSet::from(["live".to_string()]);
        assert_eq!(
            stale_handles(&[b], "n1", "k8s-pod-network", &valid),
            BTreeSet::from(["k8s-pod-network.gone".to_string()])
        );
    }

    #[test]
    fn valid_attachments_are_required() {
        let v = valid_containers(br#"{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#)
            .unwrap();
        assert!(v.contains("a"));
        let e = valid_containers(br#"{"cniVersion":"1.1.0"}"#).unwrap_err();
        assert!(e.to_string().contains("cni.dev/valid-attachments"), "{e}");
        assert!(valid_containers(br#"{"cni.dev/valid-attachments":[{}]}"#).is_err());
        assert!(
            valid_containers(br#"{"cni.dev/attachments":[]}"#)
                .unwrap()
                .is_empty()
        );
    }
}
