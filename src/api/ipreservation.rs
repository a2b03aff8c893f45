//! IPReservation: addresses Calico IPAM never hands out (Calico's `projectcalico.org/v3`
//! IPReservationSpec, embedded unchanged by the v1 CRD).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// Reserved CIDRs and addresses: new allocations skip them; existing allocations stay.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "IPReservation",
    plural = "ipreservations",
    singular = "ipreservation",
    category = "calico",
    category = "tortie",
    doc = "IPReservation lists addresses that IPAM never allocates (existing allocations inside them are left alone).",
    printcolumn = r#"{"name":"Reserved","type":"string","jsonPath":".spec.reservedCIDRs"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPReservationSpec {
    /// CIDRs or single addresses; a CIDR with host bits set reserves its whole network, as in Calico.
    #[serde(rename = "reservedCIDRs", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::reserved_cidrs")]
    pub reserved_cidrs: Option<Vec<String>>,
}
