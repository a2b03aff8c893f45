//! The IPAM engine (work in progress: the API is fixed, the implementation lands next).

use super::*;

/// Handle to the IPAM engine; cheap to clone (shares caches and watches).
#[derive(Clone)]
pub struct Ipam {
    _client: kube::Client,
    mode: crate::api::CrdMode,
}

impl Ipam {
    pub async fn new(client: kube::Client, mode: crate::api::CrdMode) -> Result<Ipam, IpamError> {
        Ok(Ipam {
            _client: client,
            mode,
        })
    }
    pub fn mode(&self) -> crate::api::CrdMode {
        self.mode
    }
    pub async fn auto_assign(&self, _req: AutoAssignRequest) -> Result<AutoAssignResult, IpamError> {
        Err(IpamError::BadRequest("auto_assign: not implemented yet".into()))
    }
    pub async fn assign_ip(&self, _req: AssignIpRequest) -> Result<(), IpamError> {
        Err(IpamError::BadRequest("assign_ip: not implemented yet".into()))
    }
    /// Idempotent: Ok(empty) when the handle holds nothing.
    pub async fn release_by_handle(&self, _handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        Err(IpamError::BadRequest(
            "release_by_handle: not implemented yet".into(),
        ))
    }
    pub async fn release_ips(&self, _ips: &[ReleaseOptions]) -> Result<ReleaseOutcome, IpamError> {
        Err(IpamError::BadRequest("release_ips: not implemented yet".into()))
    }
    pub async fn ips_by_handle(&self, _handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        Err(IpamError::BadRequest("ips_by_handle: not implemented yet".into()))
    }
}
