//! The plugin's one error type: every failure a runtime can see, with its CNI error code.
//!
//! Codes 1–11 (and 50) are the CNI specification's well-known codes; 100 and up are tortie's own,
//! one per kind of cause so that a runtime's logs can be grouped without parsing messages.

use serde_json::{Value, json};

/// Who set the pool or address request that failed: errors name it so a user knows what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    PodAnnotation {
        namespace: String,
        pod: String,
        key: String,
    },
    NamespaceAnnotation {
        namespace: String,
        key: String,
    },
    NetConf {
        field: &'static str,
    },
    /// No request: every eligible pool.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::PodAnnotation { namespace, pod, key } => {
                write!(f, "annotation {key} of pod {namespace}/{pod}")
            }
            Source::NamespaceAnnotation { namespace, key } => {
                write!(f, "annotation {key} of namespace {namespace}")
            }
            Source::NetConf { field } => write!(f, "network config field {field}"),
            Source::Default => f.write_str("the eligible IPPools of the node"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version {requested}: this plugin supports {supported}")]
    IncompatibleVersion { requested: String, supported: String },

    #[error("container {container_id} is unknown: {reason}")]
    ContainerUnknown { container_id: String, reason: String },

    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },

    #[error("I/O failure: {0}")]
    Io(String),

    #[error("cannot decode the network config on stdin: {0}")]
    Decode(String),

    #[error("invalid network config field {field}: {reason}")]
    InvalidConfig { field: String, reason: String },

    #[error("{0}; try again later")]
    TryAgainLater(String),

    #[error("plugin not available: {0}")]
    NotAvailable(String),

    /// Malformed annotation: bad JSON, wrong shape, bad address text, contradictory annotations.
    #[error("{origin}: {reason}")]
    Annotation { origin: Source, reason: String },

    /// A requested pool (by name or CIDR) matches no IPPool.
    #[error("{origin}: {reason}")]
    UnknownPool { origin: Source, reason: String },

    /// A requested pool exists but cannot be used for this request (disabled, wrong family, ...).
    #[error("{origin}: {reason}")]
    PoolNotUsable { origin: Source, reason: String },

    /// No free address in the chosen pools, or no pool to choose from.
    #[error("{0}")]
    Exhausted(String),

    /// A requested address is outside every pool or already in use.
    #[error("{0}")]
    AddressUnavailable(String),

    /// The apiserver could not be reached or answered an error.
    #[error("Kubernetes API: {0}")]
    Apiserver(String),

    /// The IPAM engine failed for another reason.
    #[error("IPAM: {0}")]
    Ipam(String),

    /// CHECK found the container's allocation missing or different.
    #[error("{0}")]
    CheckFailed(String),
}

impl CniError {
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => 1,
            CniError::ContainerUnknown { .. } => 3,
            CniError::InvalidEnv { .. } => 4,
            CniError::Io(_) => 5,
            CniError::Decode(_) => 6,
            CniError::InvalidConfig { .. } => 7,
            CniError::TryAgainLater(_) => 11,
            CniError::NotAvailable(_) => 50,
            CniError::Annotation { .. } => 100,
            CniError::UnknownPool { .. } => 101,
            CniError::PoolNotUsable { .. } => 102,
            CniError::Exhausted(_) => 103,
            CniError::AddressUnavailable(_) => 104,
            CniError::Apiserver(_) => 105,
            CniError::Ipam(_) => 106,
            CniError::CheckFailed(_) => 107,
        }
    }

    /// A short hint on what to do, for the `details` field.
    pub fn details(&self) -> &'static str {
        match self {
            CniError::IncompatibleVersion { .. } => "set cniVersion to one of the supported versions",
            CniError::ContainerUnknown { .. } => "",
            CniError::InvalidEnv { .. } => {
                "the container runtime must set CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS with K8S_POD_NAMESPACE and K8S_POD_NAME"
            }
            CniError::Io(_) => "",
            CniError::Decode(_) | CniError::InvalidConfig { .. } => {
                "fix the CNI network config (the .conflist in the node's CNI config directory)"
            }
            CniError::TryAgainLater(_) => "",
            CniError::NotAvailable(_) => "",
            CniError::Annotation { .. } => {
                r#"annotations cni.projectcalico.org/ipv4pools and ipv6pools take a JSON list of IPPool names or CIDRs, e.g. ["pool2-ipv4-ippool"]; ipAddrs takes a JSON list of at most one IPv4 and one IPv6 address"#
            }
            CniError::UnknownPool { .. } | CniError::PoolNotUsable { .. } => {
                "list the pools with `kubectl get ippools`; a pool must be enabled and of the right address family"
            }
            CniError::Exhausted(_) => {
                "add or enlarge an IPPool, or release leaked addresses (`tortie ipam check`)"
            }
            CniError::AddressUnavailable(_) => "an ipAddrs address must lie in an enabled IPPool and be free",
            CniError::Apiserver(_) => {
                "check network config kubernetes.kubeconfig and that the apiserver is reachable from the node"
            }
            CniError::Ipam(_) | CniError::CheckFailed(_) => "",
        }
    }

    /// The CNI error object written on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_code_msg_details() {
        let e = CniError::UnknownPool {
            origin: Source::PodAnnotation {
                namespace: "yaobank".into(),
                pod: "db".into(),
                key: "cni.projectcalico.org/ipv4pools".into(),
            },
            reason: r#"no IPPool named "pool9""#.into(),
        };
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 101);
        assert_eq!(j["cniVersion"], "1.0.0");
        assert_eq!(
            j["msg"],
            r#"annotation cni.projectcalico.org/ipv4pools of pod yaobank/db: no IPPool named "pool9""#
        );
        assert!(j["details"].as_str().unwrap().contains("kubectl get ippools"));
    }

    #[test]
    fn well_known_codes() {
        assert_eq!(
            CniError::IncompatibleVersion {
                requested: "9".into(),
                supported: "1.0.0".into()
            }
            .code(),
            1
        );
        assert_eq!(
            CniError::InvalidEnv {
                var: "CNI_COMMAND",
                reason: "x".into()
            }
            .code(),
            4
        );
        assert_eq!(CniError::Decode("x".into()).code(), 6);
        assert_eq!(CniError::TryAgainLater("x".into()).code(), 11);
    }
}
