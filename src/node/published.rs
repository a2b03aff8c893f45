//! The published-object contract: how the operator hands a node its BIRD files and how the
//! node's agent finds, reads and acknowledges them. The BGP controller writes these objects, the
//! agent reads them; both take the names and annotations from here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

/// Label on every published object (the agent and `kubectl get -l` find them by it).
pub const LABEL_CONFIG: &str = "tortie.projectcalico.org/bird-config";
/// Annotation: the node the object is for.
pub const ANN_NODE: &str = "tortie.projectcalico.org/node";
/// Annotation: [`crate::bgp::Rendered::content_hash`] of the files in the object.
pub const ANN_HASH: &str = "tortie.projectcalico.org/content-hash";
/// Kubernetes refuses objects above 1 MiB; keep room for metadata.
pub const MAX_PUBLISHED_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// Node annotation the agent writes: content hash of the BIRD config it last installed.
pub const ANN_APPLIED_HASH: &str = "tortie.projectcalico.org/bird-config-hash";
/// Node annotation the agent writes: `Applied`, or `Error: <why>` when BIRD rejected the config
/// or the reload.
pub const ANN_STATUS: &str = "tortie.projectcalico.org/bird-config-status";

/// Name of a node's published object: `tortie-bird-<node>`, hashed when too long.
pub fn object_name(node: &str) -> String {
    let plain = format!("tortie-bird-{node}");
    if plain.len() <= 253 {
        return plain;
    }
    let h = <sha2::Sha256 as sha2::Digest>::digest(node.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("tortie-bird-{}-{hex}", &node[..200])
}

/// A node's published config in one of its two forms.
#[derive(Clone, Debug)]
pub enum Published {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

/// Files of a published ConfigMap or Secret (what the agent installs).
pub fn files_of(p: &Published) -> BTreeMap<String, Vec<u8>> {
    match p {
        Published::ConfigMap(c) => c
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
        Published::Secret(s) => s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect(),
    }
}
