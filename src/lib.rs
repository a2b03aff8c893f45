//! tortie: a Calico-compatible IPAM and BGP control plane for Kubernetes.
//!
//! Layout: `api` (CRD types and the two CRD modes), `ipam` (pure allocator core plus the apiserver
//! store), `bgp` (pure BIRD rendering), `cni` (the CNI plugin protocol), `controllers` (the operator's
//! reconcilers), `node` (the node side: BIRD supervision and BGP session status), `cli`
//! (subcommands of the `tortie` binary), `table` (the text tables the CLI prints).

pub mod api;
pub mod bgp;
pub mod cli;
pub mod cni;
pub mod controllers;
pub mod ipam;
pub mod metrics;
pub mod node;
pub mod table;
