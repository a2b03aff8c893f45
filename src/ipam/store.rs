//! The only I/O of `src/ipam`: reads and compare-and-swap writes of Calico's IPAM objects.

/// Errors talking to the apiserver, naming the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name}: {source}")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} {name}: {detail}")]
    Invalid {
        kind: &'static str,
        name: String,
        detail: String,
    },
}
