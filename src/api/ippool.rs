//! IPPool: a range of pod addresses and how they are routed.
//!
//! Field names and JSON shapes are Calico's (`projectcalico.org/v3` IPPoolSpec, which the v1 CRD embeds).
//! Every optional field stays an `Option` so that what a user or Calico wrote round-trips unchanged;
//! the effective values (Calico's defaults) come from the accessor methods.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// Specification of an IP pool, as in Calico's `IPPoolSpec`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "calico",
    category = "tortie",
    status = "IPPoolStatus",
    doc = "IPPool is a range of IP addresses from which pod (and tunnel) addresses are allocated, in blocks.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Block","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"IPIP","type":"string","jsonPath":".spec.ipipMode"}"#,
    printcolumn = r#"{"name":"VXLAN","type":"string","jsonPath":".spec.vxlanMode"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled","priority":1}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.nodeSelector","priority":1}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.allocations"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".status.capacity","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.ipipMode) || !has(self.vxlanMode) || self.ipipMode == 'Never' || self.vxlanMode == 'Never' || size(self.ipipMode) == 0 || size(self.vxlanMode) == 0").message("spec.ipipMode and spec.vxlanMode cannot both be enabled").field_path(".vxlanMode"),
    validation = Rule::new("!isCIDR(self.cidr) || cidr(self.cidr).ip().family() != 6 || !has(self.ipipMode) || self.ipipMode == 'Never' || size(self.ipipMode) == 0").message("spec.ipipMode: IPIP is not supported on IPv6 pools").field_path(".ipipMode"),
    validation = Rule::new("!has(self.blockSize) || self.blockSize == 0 || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))").message("spec.blockSize must be between 20 and 32 for IPv4 pools, and between 116 and 128 for IPv6 pools").field_path(".blockSize"),
    validation = Rule::new("(has(self.disabled) && self.disabled) || !isCIDR(self.cidr) || cidr(self.cidr).prefixLength() <= (has(self.blockSize) && self.blockSize != 0 ? self.blockSize : (cidr(self.cidr).ip().family() == 4 ? 26 : 122))").message("spec.blockSize must not be shorter than the prefix of spec.cidr: the pool must hold at least one block").field_path(".blockSize"),
    validation = Rule::new("!isCIDR(self.cidr) || cidr(self.cidr).ip().family() != 4 || (!cidr('169.254.0.0/16').containsIP(cidr(self.cidr).ip()) && !cidr(self.cidr).containsIP('169.254.0.0'))").message("spec.cidr overlaps the IPv4 link-local range 169.254.0.0/16").field_path(".cidr"),
    validation = Rule::new("!isCIDR(self.cidr) || cidr(self.cidr).ip().family() != 6 || (!cidr('fe80::/10').containsIP(cidr(self.cidr).ip()) && !cidr(self.cidr).containsIP('fe80::'))").message("spec.cidr overlaps the IPv6 link-local range fe80::/10").field_path(".cidr"),
    validation = Rule::new("!has(self.allowedUses) || !self.allowedUses.exists(u, u == 'LoadBalancer') || !self.allowedUses.exists(u, u == 'Workload' || u == 'Tunnel')").message("spec.allowedUses: LoadBalancer cannot be combined with Workload or Tunnel").field_path(".allowedUses"),
    validation = Rule::new("!has(self.allowedUses) || !self.allowedUses.exists(u, u == 'LoadBalancer') || ((!has(self.ipipMode) || self.ipipMode == 'Never' || size(self.ipipMode) == 0) && (!has(self.vxlanMode) || self.vxlanMode == 'Never' || size(self.vxlanMode) == 0))").message("spec.allowedUses: a LoadBalancer pool cannot have IPIP or VXLAN enabled").field_path(".allowedUses"),
    validation = Rule::new("!has(self.allowedUses) || !self.allowedUses.exists(u, u == 'LoadBalancer') || !has(self.disableBGPExport) || !self.disableBGPExport").message("spec.disableBGPExport: a LoadBalancer pool cannot disable BGP export").field_path(".disableBGPExport"),
    validation = Rule::new("!has(self.allowedUses) || !self.allowedUses.exists(u, u == 'Tunnel') || !has(self.namespaceSelector) || size(self.namespaceSelector) == 0").message("spec.namespaceSelector cannot be set on a pool whose allowedUses include Tunnel").field_path(".namespaceSelector"),
    // A transition rule on the spec, not on the field: a field-level `self == oldSelf` only runs
    // when both versions carry the field, so adding or removing blockSize would slip through and
    // change the layout under existing blocks. Effective values are compared, so writing the
    // default explicitly (or dropping it) stays allowed.
    validation = Rule::new("(has(self.blockSize) && self.blockSize != 0 ? self.blockSize : (isCIDR(self.cidr) && cidr(self.cidr).ip().family() == 6 ? 122 : 26)) == (has(oldSelf.blockSize) && oldSelf.blockSize != 0 ? oldSelf.blockSize : (isCIDR(oldSelf.cidr) && cidr(oldSelf.cidr).ip().family() == 6 ? 122 : 26))").message("spec.blockSize cannot be changed (nor added or removed when that changes the effective size: 26 for IPv4, 122 for IPv6 when unset or 0); existing blocks keep their size; create a new pool and migrate to it instead").field_path(".blockSize")
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's range in canonical CIDR form, for example `10.48.0.0/24` or `fd00:10:48::/64`.
    /// Immutable: changing it would orphan allocated addresses; create a new pool and migrate instead.
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.cidr must be a CIDR such as 10.48.0.0/24"),
        validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("spec.cidr must be in canonical form with the host bits zero, e.g. 10.48.0.0/24"),
        validation = Rule::new("self == oldSelf").message("spec.cidr cannot be changed; create a new pool and migrate to it instead")
    )]
    #[schemars(length(max = 48))]
    pub cidr: String,

    /// When to encapsulate pod traffic in VXLAN: `Never` (default), `Always`, or `CrossSubnet`
    /// (only between nodes on different subnets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::encap_mode")]
    pub vxlan_mode: Option<String>,

    /// When to encapsulate pod traffic in IP-in-IP: `Never` (default), `Always`, or `CrossSubnet`.
    /// IPv4 pools only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::encap_mode")]
    pub ipip_mode: Option<String>,

    /// Masquerade traffic from pods in this pool to destinations outside all pools. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,

    /// A disabled pool hands out no new addresses; addresses already allocated stay valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,

    /// Do not export this pool's routes to BGP peers (routes are still programmed in the cluster).
    #[serde(rename = "disableBGPExport", default, skip_serializing_if = "Option::is_none")]
    pub disable_bgp_export: Option<bool>,

    /// Prefix length of the blocks the pool is cut into (default 26 for IPv4, 122 for IPv6;
    /// 20–32 for IPv4, 116–128 for IPv6). Immutable (the effective value: see the spec's rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub block_size: Option<i32>,

    /// Calico selector choosing the nodes that may allocate from this pool, e.g. `zone == 'a'`.
    /// Empty or `all()` selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ippool_node_selector")]
    pub node_selector: Option<String>,

    /// Calico selector choosing the namespaces whose pods may allocate from this pool. Empty selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ippool_namespace_selector")]
    pub namespace_selector: Option<String>,

    /// What the pool's addresses may be used for: `Workload`, `Tunnel`, `LoadBalancer`.
    /// Default `[Workload, Tunnel]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::allowed_uses")]
    pub allowed_uses: Option<Vec<String>>,

    /// `Automatic` (default): used for any pod the selectors allow. `Manual`: used only when a pod,
    /// namespace or CNI config names the pool explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::assignment_mode")]
    pub assignment_mode: Option<String>,
}

/// Observed state of an IPPool, written by tortie.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// Standard conditions: `Ready` (the pool is valid and allocatable), `Allocatable` (Calico's
    /// condition, read by Calico's own IPAM), and `Terminating` while a deleted pool drains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Number of addresses currently allocated from the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
    /// Number of addresses the pool can hold (its size), capped at 2^63 for large IPv6 pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Number of IPAM blocks claimed inside the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// How IPIP or VXLAN encapsulation is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapMode {
    Never,
    Always,
    CrossSubnet,
}

impl EncapMode {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Always") => Self::Always,
            Some("CrossSubnet") => Self::CrossSubnet,
            _ => Self::Never,
        }
    }
}

/// What a pool's addresses may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowedUse {
    Workload,
    Tunnel,
    LoadBalancer,
}

impl IPPoolSpec {
    /// The pool's CIDR, if it parses.
    pub fn net(&self) -> Option<ipnet::IpNet> {
        self.cidr.parse().ok()
    }

    /// Effective block prefix length: the stored value, else Calico's default for the family.
    pub fn effective_block_size(&self) -> u8 {
        match self.block_size {
            Some(b) if b > 0 => b as u8,
            _ => match self.net() {
                Some(ipnet::IpNet::V6(_)) => 122,
                _ => 26,
            },
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.unwrap_or(false)
    }

    pub fn ipip(&self) -> EncapMode {
        EncapMode::parse(self.ipip_mode.as_deref())
    }

    pub fn vxlan(&self) -> EncapMode {
        EncapMode::parse(self.vxlan_mode.as_deref())
    }

    pub fn nat_outgoing(&self) -> bool {
        self.nat_outgoing.unwrap_or(false)
    }

    pub fn bgp_export_disabled(&self) -> bool {
        self.disable_bgp_export.unwrap_or(false)
    }

    /// Node selector with Calico's default applied (`all()`).
    pub fn effective_node_selector(&self) -> &str {
        match self.node_selector.as_deref() {
            None | Some("") => "all()",
            Some(s) => s,
        }
    }

    /// Uses with Calico's default applied (`Workload`, `Tunnel`).
    pub fn effective_allowed_uses(&self) -> Vec<AllowedUse> {
        match &self.allowed_uses {
            None => vec![AllowedUse::Workload, AllowedUse::Tunnel],
            Some(v) if v.is_empty() => vec![AllowedUse::Workload, AllowedUse::Tunnel],
            Some(v) => v
                .iter()
                .filter_map(|u| match u.as_str() {
                    "Workload" => Some(AllowedUse::Workload),
                    "Tunnel" => Some(AllowedUse::Tunnel),
                    "LoadBalancer" => Some(AllowedUse::LoadBalancer),
                    _ => None,
                })
                .collect(),
        }
    }

    pub fn allows(&self, use_: AllowedUse) -> bool {
        self.effective_allowed_uses().contains(&use_)
    }

    /// A `Manual` pool is only used when requested by name or CIDR.
    pub fn is_manual(&self) -> bool {
        self.assignment_mode.as_deref() == Some("Manual")
    }
}
