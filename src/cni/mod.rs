//! `tortie-ipam`, the CNI IPAM plugin: the protocol (environment, stdin, result and error JSON) and
//! the request decision are pure and live in the submodules; `plugin` is the thin shell that
//! reads the pod, namespace and pools, calls the IPAM engine and writes the answer. `server` runs
//! the same shell warm inside `tortie agent`, `client` and `wire` carry requests to it.

pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod gateway;
pub mod gc;
pub mod install;
pub mod plugin;
pub mod request;
pub mod result;
pub mod server;
pub mod wire;

use crate::api::StrMap;

pub use config::NetConf;
pub use env::{CniArgs, CniEnv, Command};
pub use error::{CniError, Source};
pub use result::IpamResult;

/// Handle of a container's addresses: `<network name>.<containerID>` (`k8s-pod-network.<id>`).
pub fn handle_id(network: &str, container_id: &str) -> String {
    format!("{network}.{container_id}")
}

/// Calico's older workload-ID handle, `<namespace>.<pod>`, which DEL also releases.
pub fn legacy_handle_id(namespace: &str, pod: &str) -> String {
    format!("{namespace}.{pod}")
}

/// Attributes stored with a pod's allocation; Calico's GC recognises pods by `pod` + `namespace`.
pub fn allocation_attrs(node: &str, namespace: &str, pod: &str, now: jiff::Timestamp) -> StrMap {
    StrMap::from([
        ("node".to_string(), node.to_string()),
        ("namespace".to_string(), namespace.to_string()),
        ("pod".to_string(), pod.to_string()),
        ("timestamp".to_string(), go_time_string(now)),
    ])
}

pub use crate::ipam::go_time_string;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_attrs() {
        assert_eq!(handle_id("k8s-pod-network", "abc123"), "k8s-pod-network.abc123");
        assert_eq!(legacy_handle_id("yaobank", "db-1"), "yaobank.db-1");
        let t: jiff::Timestamp = "2025-03-04T05:06:07.120Z".parse().unwrap();
        let a = allocation_attrs("node-a", "yaobank", "db-1", t);
        assert_eq!(&a["timestamp"], "2025-03-04 05:06:07.12 +0000 UTC");
        assert_eq!(&a["node"], "node-a");
        let t: jiff::Timestamp = "2025-03-04T05:06:07Z".parse().unwrap();
        assert_eq!(go_time_string(t), "2025-03-04 05:06:07 +0000 UTC");
    }
}
