//! `operator.tigera.io/v1` Installation: the pod-networking part of the Tigera operator's resource.
//!
//! tortie reads the same object a Calico user already has; fields it does not act on are still
//! accepted (`x-kubernetes-preserve-unknown-fields` on the parts of the spec it does not model).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use super::schema;

/// Desired cluster networking.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "operator.tigera.io",
    version = "v1",
    kind = "Installation",
    plural = "installations",
    singular = "installation",
    category = "tortie",
    status = "InstallationStatus",
    doc = "Installation configures pod networking for the cluster; tortie reads the object named default.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name: tortie reads only the Installation named 'default'"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstallationSpec {
    /// The platform: "", EKS, GKE, AKS, OpenShift, DockerEnterprise, RKE2, TKG, Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["", "EKS", "GKE", "AKS", "OpenShift", "DockerEnterprise", "RKE2", "TKG", "Kind"]))]
    pub kubernetes_provider: Option<String>,
    /// The CNI plugin and IPAM in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniSpec>,
    /// Calico networking: pools, BGP, MTU, node address autodetection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calico_network: Option<CalicoNetworkSpec>,
    /// Other Installation fields (registry, images, component resources...), kept as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: BTreeMap<String, Value>,
}

/// CNI plugin selection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CniSpec {
    /// Calico (tortie's own IPAM plugin is used in its place), GKE, AmazonVPC, AzureVNET.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["Calico", "GKE", "AmazonVPC", "AzureVNET"]))]
    pub type_: String,
    /// The IPAM plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamSpec>,
    /// Directory holding CNI binaries on the nodes (default /opt/cni/bin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<String>,
    /// Directory holding CNI network configs on the nodes (default /etc/cni/net.d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf_dir: Option<String>,
}

/// IPAM plugin selection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct IpamSpec {
    /// Calico (served by tortie-ipam), HostLocal, AmazonVPC, AzureVNET.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["Calico", "HostLocal", "AmazonVPC", "AzureVNET"]))]
    pub type_: String,
}

/// Pod networking settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CalicoNetworkSpec {
    /// `Enabled` (default for Calico CNI) or `Disabled`: whether nodes run BGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"]))]
    pub bgp: Option<String>,
    /// Pools to create. Absent: one default pool per pod CIDR of the cluster. Empty list: pools are
    /// managed by hand and tortie creates none.
    #[serde(rename = "ipPools", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 25))]
    pub ip_pools: Option<Vec<InstallationIPPool>>,
    /// MTU of pod interfaces; unset means auto-detect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub mtu: Option<i32>,
    /// How nodes find their IPv4 address (one method).
    #[serde(
        rename = "nodeAddressAutodetectionV4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_address_autodetection_v4: Option<NodeAddressAutodetection>,
    /// How nodes find their IPv6 address (one method).
    #[serde(
        rename = "nodeAddressAutodetectionV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub node_address_autodetection_v6: Option<NodeAddressAutodetection>,
    /// Other calicoNetwork fields (dataplane, hostPorts...), kept as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: BTreeMap<String, Value>,
}

/// One pool the Installation asks for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallationIPPool {
    /// Name of the IPPool to create; default `default-ipv4-ippool` / `default-ipv6-ippool`, or one
    /// derived from the CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pool's CIDR; must lie inside the cluster's pod CIDR.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("calicoNetwork.ipPools[].cidr must be a CIDR such as 10.48.0.0/16"))]
    pub cidr: String,
    /// IPIP, IPIPCrossSubnet, VXLAN, VXLANCrossSubnet or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["IPIPCrossSubnet", "IPIP", "VXLAN", "VXLANCrossSubnet", "None"]))]
    pub encapsulation: Option<String>,
    /// `Enabled` or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"]))]
    pub nat_outgoing: Option<String>,
    /// Calico selector of the nodes that may use the pool (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Block prefix length (default 26 / 122).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128))]
    pub block_size: Option<i32>,
    /// Do not export the pool's routes over BGP.
    #[serde(rename = "disableBGPExport", default, skip_serializing_if = "Option::is_none")]
    pub disable_bgp_export: Option<bool>,
    /// Stop handing out new addresses from the pool (maps to IPPool `disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_new_allocations: Option<bool>,
    /// Workload, Tunnel, LoadBalancer (default Workload and Tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_uses: Option<Vec<String>>,
    /// Automatic or Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<String>,
}

/// One node-address autodetection method (tortie passes it on; it does not detect addresses).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.firstFound), has(self.kubernetes), has(self.interface), has(self.skipInterface), has(self.canReach), has(self.cidrs)].filter(x, x).size() <= 1").message("no more than one autodetection method can be specified"))]
pub struct NodeAddressAutodetection {
    /// Use the first valid address found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_found: Option<bool>,
    /// `NodeInternalIP`: use the Node's internal address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<String>,
    /// Regex of interfaces to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Regex of interfaces to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_interface: Option<String>,
    /// Use the address that reaches this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_reach: Option<String>,
    /// Use an address inside one of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidrs: Option<Vec<String>>,
}

/// What tortie observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallationStatus {
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The installed product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The MTU in use (0 = auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    /// The pod CIDRs tortie found for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
