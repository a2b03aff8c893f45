//! BGP: renders one node's BIRD 1.6 configuration from Calico's resources. Pure: no I/O here.
//!
//! The pure logic decides a render model ([`model`]); minijinja templates ([`template`]) turn it
//! into text. The built-in templates follow Calico's newest template generation (G3): the files
//! `bird.cfg`, `bird_ipam.cfg`, `bird_aggr.cfg` and their `bird6*` twins, byte-for-byte
//! deterministic for a given [`Snapshot`]. Fork-only BIRD syntax (`krt_tunnel`) is only written
//! when [`RenderOptions::bird_fork`] is set, so stock Debian `bird` accepts the default output.

pub mod filter;
pub mod model;
pub mod peers;
pub mod selector;
pub mod services;
pub mod snapshot;
pub mod template;
pub mod validate;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use peers::{BirdPeer, PeerKind};
pub use selector::{CalicoSelectors, SelectorEngine};
pub use snapshot::{NodeBgp, Snapshot};
pub use template::{TemplateError, Templates};

/// Calico's AS number when the default BGPConfiguration sets none.
pub const DEFAULT_AS: u64 = 64512;
/// Full-mesh size above which route reflectors are advised (Calico maintainers: 50–100 nodes).
pub const MESH_ADVISORY_NODES: usize = 100;

/// Errors that stop a node's rendering. Problems in other objects are warnings instead, so one
/// bad BGPPeer cannot take every node's BGP down.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("node {node:?} not found among the Nodes")]
    NodeNotFound { node: String },
    #[error("Node {node:?}: {field}: {message}")]
    Node {
        node: String,
        field: String,
        message: String,
    },
    #[error("{origin}: {message}")]
    Manifest { origin: String, message: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// Choices that are not in the Calico resources.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Calico's `CALICO_ROUTER_ID`: `hash`, an explicit IPv4 router id, or unset (node IPv4).
    pub router_id: Option<String>,
    /// The BIRD in use is Calico's fork: allows `krt_tunnel` so BIRD can program IPIP routes.
    pub bird_fork: bool,
}

/// One node's files plus what the caller should report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// File name -> content, in name order.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Input problems that were skipped, each naming the object and field.
    pub warnings: Vec<String>,
    /// Some file carries a BGP password (publish as a Secret, not a ConfigMap).
    pub has_password: bool,
    /// Number of nodes in the full mesh, when the mesh is on.
    pub mesh_size: Option<usize>,
}

impl Rendered {
    /// SHA-256 over names and contents: equal hashes mean nothing to reload.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for (name, body) in &self.files {
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            h.update((body.len() as u64).to_be_bytes());
            h.update(body);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Total size of the files in bytes.
    pub fn total_size(&self) -> usize {
        self.files.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Renders `node`'s BIRD files from `snap` with the built-in templates.
pub fn render(
    snap: &Snapshot,
    node: &str,
    opts: &RenderOptions,
    selectors: &dyn SelectorEngine,
) -> Result<Rendered, RenderError> {
    render_with(snap, node, opts, selectors, &Templates::builtin())
}

/// Renders `node`'s BIRD files from `snap` with `templates` (built-in or a cluster's own).
pub fn render_with(
    snap: &Snapshot,
    node: &str,
    opts: &RenderOptions,
    selectors: &dyn SelectorEngine,
    templates: &Templates,
) -> Result<Rendered, RenderError> {
    let cluster = peers::Cluster::new(snap, node, selectors)?;
    let m = model::build(&cluster, opts)?;
    let mut files = BTreeMap::new();
    for fam in &m.families {
        templates.render_family(fam, &mut files)?;
    }
    Ok(Rendered {
        files,
        warnings: m.warnings,
        has_password: m.has_password,
        mesh_size: m.mesh_size,
    })
}

/// Calico's `CALICO_ROUTER_ID=hash`: the first four bytes of SHA-256(node name), with 32 taken off
/// a first byte above 223 so the id is never a multicast or reserved address.
pub fn hashed_router_id(node: &str) -> String {
    let d = Sha256::digest(node.as_bytes());
    let first = if d[0] > 223 { d[0] - 32 } else { d[0] };
    format!("{}.{}.{}.{}", first, d[1], d[2], d[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_id_hash_matches_calico() {
        // Calico's golden mesh/hash: kube-master -> 25.79.212.8.
        assert_eq!(hashed_router_id("kube-master"), "25.79.212.8");
    }
}
