//! The BGP inputs of `benches/bgp_render.rs` and the `publish` section of `benches/operator.rs`:
//! nodes `n<i>` at 10.<i/250>.<i%250>.1/16 with one confirmed /26 block each, default
//! BGPConfiguration (AS 64512) plus serviceClusterIPs 10.96.0.0/12, one no-encap pool
//! 10.48.0.0/12, one global BGPPeer 192.0.2.1 AS 65100. `mesh`: nodeToNodeMeshEnabled true;
//! otherwise mesh off, 3 route reflectors `n0`..`n2` (label rr=true, cluster id 224.0.0.1) and a
//! BGPPeer `nodeSelector: has(rr)`, `peerSelector: !has(rr)`.

use serde_json::json;
use tortie::bgp::Snapshot;

/// The inputs described above, for `n` nodes.
pub fn cluster(n: usize, mesh: bool) -> Snapshot {
    let mut docs = Vec::new();
    for i in 0..n {
        let mut labels = serde_json::Map::new();
        let mut ann = serde_json::Map::new();
        ann.insert(
            "projectcalico.org/IPv4Address".into(),
            format!("10.{}.{}.1/16", i / 250, i % 250).into(),
        );
        if !mesh && i < 3 {
            labels.insert("rr".into(), "true".into());
            ann.insert(
                "projectcalico.org/RouteReflectorClusterID".into(),
                "224.0.0.1".into(),
            );
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("n{i}"), "labels": labels, "annotations": ann}}));
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BlockAffinity",
            "metadata": {"name": format!("a{i}")},
            "spec": {"cidr": format!("10.{}.{}.{}/26", 48 + i / 1024, (i / 4) % 256, (i % 4) * 64),
                     "node": format!("n{i}"),
                     "state": "confirmed", "deleted": "false"}}),
        );
    }
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": mesh, "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}]}}),
    );
    docs.push(json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
        "metadata": {"name": "pool"}, "spec": {"cidr": "10.48.0.0/12"}}));
    docs.push(
        json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
        "metadata": {"name": "tor"}, "spec": {"peerIP": "192.0.2.1", "asNumber": 65100}}),
    );
    if !mesh {
        docs.push(
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "BGPPeer",
            "metadata": {"name": "rr"},
            "spec": {"nodeSelector": "has(rr)", "peerSelector": "!has(rr)"}}),
        );
    }
    let text = docs
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mut s = Snapshot::default();
    s.add_manifests("bench", &text).unwrap();
    s
}
