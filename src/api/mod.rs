//! Calico-compatible custom resources and the two CRD modes.
//!
//! Calico stores the same resources either in its classic `crd.projectcalico.org/v1` group or, from
//! 3.32, as native `projectcalico.org/v3` CRDs. The spec structs here are shared by both modes; what
//! differs (group, the IPAM config kind, BlockAffinity's `deleted` encoding) is decided in this
//! module alone, so the rest of tortie works on one model:
//! `kube::core::Object<Spec, Status>` addressed through the [`ApiResource`] of the cluster's mode.

pub mod bgp;
pub mod bgpfilter;
pub mod cluster;
pub mod crd;
pub mod installation;
pub mod ipam;
pub mod ippool;
pub mod ipreservation;
pub mod nodestatus;
mod schema;
pub mod selector_rule;
pub mod strmap;

use std::fmt;

use kube::core::{ApiResource, NotUsed, Object};

pub use bgp::{BGPConfigurationSpec, BGPPeerSpec};
pub use bgpfilter::BGPFilterSpec;
pub use installation::{Installation, InstallationSpec, InstallationStatus};
pub use ipam::{AllocationAttribute, BlockAffinitySpec, Flag, IPAMBlockSpec, IPAMConfigSpec, IPAMHandleSpec};
pub use ippool::{IPPoolSpec, IPPoolStatus};
pub use ipreservation::IPReservationSpec;
pub use nodestatus::{CalicoNodeStatusSpec, CalicoNodeStatusStatus};
pub use strmap::StrMap;

/// An IPPool in either mode.
pub type Pool = Object<IPPoolSpec, IPPoolStatus>;
/// An IPAMBlock in either mode.
pub type Block = Object<IPAMBlockSpec, NotUsed>;
/// An IPAMHandle in either mode.
pub type Handle = Object<IPAMHandleSpec, NotUsed>;
/// A BlockAffinity in either mode.
pub type Affinity = Object<BlockAffinitySpec, NotUsed>;
/// The IPAM configuration in either mode.
pub type IpamConfig = Object<IPAMConfigSpec, NotUsed>;
/// A BGPConfiguration in either mode.
pub type BgpConfig = Object<BGPConfigurationSpec, NotUsed>;
/// A BGPPeer in either mode.
pub type BgpPeer = Object<BGPPeerSpec, NotUsed>;
/// A BGPFilter in either mode.
pub type BgpFilter = Object<BGPFilterSpec, NotUsed>;
/// An IPReservation in either mode.
pub type Reservation = Object<IPReservationSpec, NotUsed>;
/// A CalicoNodeStatus in either mode.
pub type NodeStatus = Object<CalicoNodeStatusSpec, CalicoNodeStatusStatus>;

/// Which API group holds Calico's resources in this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum CrdMode {
    /// Classic storage: `crd.projectcalico.org/v1` (every Calico release).
    #[default]
    V1,
    /// Native CRDs: `projectcalico.org/v3` (Calico 3.32+).
    V3,
}

impl fmt::Display for CrdMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CrdMode::V1 => "v1",
            CrdMode::V3 => "v3",
        })
    }
}

pub const V1_GROUP: &str = "crd.projectcalico.org";
pub const V3_GROUP: &str = "projectcalico.org";

/// Calico resources that exist in both modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalicoKind {
    IPPool,
    IPAMBlock,
    IPAMHandle,
    BlockAffinity,
    IPAMConfig,
    BGPConfiguration,
    BGPPeer,
    BGPFilter,
    IPReservation,
}

impl CalicoKind {
    pub const ALL: [CalicoKind; 9] = [
        CalicoKind::IPPool,
        CalicoKind::IPAMBlock,
        CalicoKind::IPAMHandle,
        CalicoKind::BlockAffinity,
        CalicoKind::IPAMConfig,
        CalicoKind::BGPConfiguration,
        CalicoKind::BGPPeer,
        CalicoKind::BGPFilter,
        CalicoKind::IPReservation,
    ];
}

impl CrdMode {
    pub fn group(self) -> &'static str {
        match self {
            CrdMode::V1 => V1_GROUP,
            CrdMode::V3 => V3_GROUP,
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            CrdMode::V1 => "v1",
            CrdMode::V3 => "v3",
        }
    }

    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }

    /// Kind and plural of a resource in this mode (only the IPAM config differs).
    pub fn kind_and_plural(self, kind: CalicoKind) -> (&'static str, &'static str) {
        match (kind, self) {
            (CalicoKind::IPPool, _) => ("IPPool", "ippools"),
            (CalicoKind::IPAMBlock, _) => ("IPAMBlock", "ipamblocks"),
            (CalicoKind::IPAMHandle, _) => ("IPAMHandle", "ipamhandles"),
            (CalicoKind::BlockAffinity, _) => ("BlockAffinity", "blockaffinities"),
            (CalicoKind::IPAMConfig, CrdMode::V1) => ("IPAMConfig", "ipamconfigs"),
            (CalicoKind::IPAMConfig, CrdMode::V3) => ("IPAMConfiguration", "ipamconfigurations"),
            (CalicoKind::BGPConfiguration, _) => ("BGPConfiguration", "bgpconfigurations"),
            (CalicoKind::BGPPeer, _) => ("BGPPeer", "bgppeers"),
            (CalicoKind::BGPFilter, _) => ("BGPFilter", "bgpfilters"),
            (CalicoKind::IPReservation, _) => ("IPReservation", "ipreservations"),
        }
    }

    /// The resource to address with `Api::all_with`.
    pub fn resource(self, kind: CalicoKind) -> ApiResource {
        let (k, plural) = self.kind_and_plural(kind);
        ApiResource {
            group: self.group().into(),
            version: self.version().into(),
            api_version: self.api_version(),
            kind: k.into(),
            plural: plural.into(),
        }
    }

    /// CalicoNodeStatus in this mode (same kind and plural in both groups).
    pub fn node_status_resource(self) -> ApiResource {
        ApiResource {
            group: self.group().into(),
            version: self.version().into(),
            api_version: self.api_version(),
            kind: "CalicoNodeStatus".into(),
            plural: "caliconodestatuses".into(),
        }
    }

    /// BlockAffinity `deleted` in this mode's wire form.
    pub fn affinity_flag(self, deleted: bool) -> Flag {
        match self {
            CrdMode::V1 => Flag::Str(deleted),
            CrdMode::V3 => Flag::Bool(deleted),
        }
    }

    /// Calico's rule: v3 only when `projectcalico.org` is served as CRDs and `crd.projectcalico.org`
    /// is absent. (With the aggregated API server both groups are present, which means v1 mode.)
    pub fn from_groups<'a>(groups: impl IntoIterator<Item = &'a str>) -> CrdMode {
        let (mut v1, mut v3) = (false, false);
        for g in groups {
            v1 |= g == V1_GROUP;
            v3 |= g == V3_GROUP;
        }
        if v3 && !v1 { CrdMode::V3 } else { CrdMode::V1 }
    }

    /// Detects the mode from the API groups the server offers.
    pub async fn detect(client: &kube::Client) -> Result<CrdMode, kube::Error> {
        let groups = client.list_api_groups().await?;
        Ok(CrdMode::from_groups(
            groups.groups.iter().map(|g| g.name.as_str()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_detection_follows_calico() {
        assert_eq!(CrdMode::from_groups(["apps", V1_GROUP]), CrdMode::V1);
        assert_eq!(CrdMode::from_groups(["apps", V3_GROUP]), CrdMode::V3);
        // Aggregated API server in front of v1 storage: both groups, v1 mode.
        assert_eq!(CrdMode::from_groups([V1_GROUP, V3_GROUP]), CrdMode::V1);
        assert_eq!(CrdMode::from_groups(["apps"]), CrdMode::V1);
    }

    #[test]
    fn ipam_config_kind_differs_by_mode() {
        assert_eq!(CrdMode::V1.resource(CalicoKind::IPAMConfig).kind, "IPAMConfig");
        assert_eq!(CrdMode::V1.resource(CalicoKind::IPAMConfig).plural, "ipamconfigs");
        assert_eq!(
            CrdMode::V3.resource(CalicoKind::IPAMConfig).kind,
            "IPAMConfiguration"
        );
        assert_eq!(
            CrdMode::V3.resource(CalicoKind::IPPool).api_version,
            "projectcalico.org/v3"
        );
        assert_eq!(
            CrdMode::V1.resource(CalicoKind::IPPool).api_version,
            "crd.projectcalico.org/v1"
        );
    }
}
