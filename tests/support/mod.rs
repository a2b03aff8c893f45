//! The one shared harness of tortie's tests and system benchmarks against a real control plane
//! (etcd + kube-apiserver + kube-controller-manager, see `e2e/README.md`).
//!
//! Use it from an integration test with `mod support;` (a benchmark: `#[path =
//! "../tests/support/mod.rs"] mod support;`). The first call to [`cluster`] (every helper calls
//! it) does one of two things, once per test binary:
//!
//! * **attach** to a running cluster: the kubeconfig named by `TORTIE_E2E_KUBECONFIG`, or by
//!   `KUBECONFIG` when that is a cluster made by `e2e/cluster.sh` (current context `tortie-e2e`) or
//!   `TORTIE_E2E_ATTACH=1` is set. Any other `KUBECONFIG` is ignored, so tests never create Nodes in a
//!   cluster you did not make for them.
//! * otherwise **start** one with `e2e/cluster.sh up -d e2e/.run/test-<pid> --watch-pid <pid>`: a
//!   detached watchdog takes it down when this test process exits, however it exits.
//!
//! It then installs the CRDs (`crds/v1/*.yaml` when present; `TORTIE_E2E_CRDS` names other
//! directories, `:`-separated, or `none`). Objects made with the helpers get unique names
//! ([`unique_name`]) so that tests can run in parallel in one cluster.
//!
//! Modules by topic (the first three are re-exported here, so `use support::*;` has them):
//! - [`cluster`]: the control plane, kubectl, kube clients, waiting;
//! - [`fixtures`]: Nodes, Namespaces, Pods, IPPools, and IPAM objects as Calico leaves them;
//! - [`operator`]: `tortie run` as a process and its HTTP server;
//! - [`cni`]: `tortie-ipam` run the way a container runtime runs a CNI plugin;
//! - [`bgp_lab`]: BIRD daemons in network namespaces, and the BGP state published for a node;
//! - [`corpus`]: the bad-input corpus (`tests/bad-inputs`).
#![allow(dead_code, unused_imports)]

pub mod bgp_lab;
pub mod cluster;
pub mod cni;
pub mod corpus;
pub mod fixtures;
pub mod operator;

pub use bgp_lab::published_files;
pub use cluster::*;
pub use fixtures::*;
pub use operator::*;
