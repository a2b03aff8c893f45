//! BGPConfiguration and BGPPeer, with Calico's field names.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// Go's `time.ParseDuration` syntax (what Calico's `metav1.Duration` fields decode), without a
/// sign: BIRD cannot read a negative time. At most 2^32-1 seconds, BIRD's largest number.
macro_rules! duration_rule {
    () => {
        r"self.matches('^[+]?(0|(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') && duration(self).getSeconds() <= 4294967295"
    };
}

/// Cluster-wide (`default`) or per-node (`node.<name>`) BGP settings.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    singular = "bgpconfiguration",
    shortname = "bgpconfig",
    shortname = "bgpconfigs",
    category = "calico",
    category = "tortie",
    doc = "BGPConfiguration holds BGP settings: the object named default applies to the cluster, node.<name> overrides some of them for one node.",
    validation = Rule::new("self.metadata.name == 'default' || self.metadata.name.startsWith('node.')").message("metadata.name must be 'default' or 'node.<nodename>'"),
    validation = Rule::new("self.metadata.name == 'default' || (!has(self.spec.asNumber) && !has(self.spec.nodeToNodeMeshEnabled) && !has(self.spec.serviceClusterIPs) && !has(self.spec.serviceExternalIPs) && !has(self.spec.serviceLoadBalancerIPs) && !has(self.spec.nodeMeshPassword) && !has(self.spec.nodeMeshMaxRestartTime))").message("spec.asNumber, spec.nodeToNodeMeshEnabled, spec.serviceClusterIPs, spec.serviceExternalIPs, spec.serviceLoadBalancerIPs, spec.nodeMeshPassword and spec.nodeMeshMaxRestartTime may only be set on the BGPConfiguration named 'default'"),
    printcolumn = r#"{"name":"ASN","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Mesh","type":"boolean","jsonPath":".spec.nodeToNodeMeshEnabled"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.listenPort"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.nodeMeshPassword) || !has(self.nodeToNodeMeshEnabled) || self.nodeToNodeMeshEnabled").message("spec.nodeMeshPassword cannot be set when nodeToNodeMeshEnabled is false").field_path(".nodeMeshPassword"),
    validation = Rule::new("!has(self.nodeMeshMaxRestartTime) || !has(self.nodeToNodeMeshEnabled) || self.nodeToNodeMeshEnabled").message("spec.nodeMeshMaxRestartTime cannot be set when nodeToNodeMeshEnabled is false").field_path(".nodeMeshMaxRestartTime"),
    validation = Rule::new("!has(self.communities) || size(self.communities) == 0 || (has(self.prefixAdvertisements) && size(self.prefixAdvertisements) > 0)").message("spec.communities are defined but not used in spec.prefixAdvertisements").field_path(".communities")
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// BIRD log level: Trace, Debug, Info (default), Warning, Error, Fatal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(?i)(Trace|Debug|Info|Warning|Error|Fatal)?$"))]
    pub log_severity_screen: Option<String>,
    /// Full iBGP mesh between all nodes (default true). Turn off when using route reflectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's default AS number (default 64512); a node's own AS annotation overrides it.
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::local_as_number")]
    pub as_number: Option<i64>,
    /// Service cluster IP ranges to advertise from every node.
    #[serde(
        rename = "serviceClusterIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::service_cidrs")]
    pub service_cluster_ips: Option<Vec<CidrBlock>>,
    /// Service external IP ranges that may be advertised.
    #[serde(
        rename = "serviceExternalIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::service_cidrs")]
    pub service_external_ips: Option<Vec<CidrBlock>>,
    /// Service LoadBalancer IP ranges that may be advertised.
    #[serde(
        rename = "serviceLoadBalancerIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::service_cidrs")]
    pub service_load_balancer_ips: Option<Vec<CidrBlock>>,
    /// `Enabled` (default): advertise LoadBalancer ranges whole; `Disabled`: only per-service /32s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled"]))]
    pub service_load_balancer_aggregation: Option<String>,
    /// TCP port BIRD listens on for BGP (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: Option<i64>,
    /// `NodeIP`: BIRD listens only on the node's address; `None` (default): on all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["None", "NodeIP"]))]
    pub bind_mode: Option<String>,
    /// Named BGP community values, used by prefixAdvertisements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub communities: Option<Vec<Community>>,
    /// Communities to attach to advertised prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub prefix_advertisements: Option<Vec<PrefixAdvertisement>>,
    /// Password for every mesh session, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BGPPassword>,
    /// Graceful-restart time for mesh sessions, a duration such as `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_rule!()).message("spec.nodeMeshMaxRestartTime must be a duration such as 120s, 1m30s or 2h (not negative, at most 4294967295s)"))]
    #[schemars(length(max = 64))]
    pub node_mesh_max_restart_time: Option<String>,
    /// Interfaces whose addresses BIRD must not import (glob patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ignored_interfaces")]
    pub ignored_interfaces: Option<Vec<String>>,
    /// Address local workloads peer with (IPv4); used by Felix, not by BIRD.
    #[serde(
        rename = "localWorkloadPeeringIPV4",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("size(self) == 0 || (isIP(self) && ip(self).family() == 4)").message("spec.localWorkloadPeeringIPV4 must be an IPv4 address"))]
    #[schemars(length(max = 64))]
    pub local_workload_peering_ipv4: Option<String>,
    /// Address local workloads peer with (IPv6); used by Felix, not by BIRD.
    #[serde(
        rename = "localWorkloadPeeringIPV6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("size(self) == 0 || (isIP(self) && ip(self).family() == 6)").message("spec.localWorkloadPeeringIPV6 must be an IPv6 address"))]
    #[schemars(length(max = 64))]
    pub local_workload_peering_ipv6: Option<String>,
    /// Whether BIRD programs cluster routes into the kernel: Enabled, Disabled, EnabledIPIPOnly,
    /// EnabledNoEncapOnly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly"]))]
    pub program_cluster_routes: Option<String>,
    /// Kernel metric of normal IPv4 routes (default 1024).
    #[serde(
        rename = "ipv4NormalRoutePriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 2147483646))]
    pub ipv4_normal_route_priority: Option<i64>,
    /// Kernel metric of normal IPv6 routes (default 1024).
    #[serde(
        rename = "ipv6NormalRoutePriority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 2147483646))]
    pub ipv6_normal_route_priority: Option<i64>,
}

/// A CIDR range to advertise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrBlock {
    /// A CIDR such as `10.96.0.0/12`.
    #[serde(default)]
    pub cidr: String,
}

/// A named BGP community value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Community {
    /// Name used in prefixAdvertisements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `aa:nn` (standard) or `aa:nn:mm` (large) community.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Numbers are range-checked by the pattern itself (16 bits each in `aa:nn`, 32 in `aa:nn:mm`):
    /// a CEL rule over up to 500 entries would exceed the apiserver's cost budget.
    #[schemars(regex(
        pattern = r"^(0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}):0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})|0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9}):0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9}):0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9}))$"
    ))]
    pub value: Option<String>,
}

/// Communities to attach to one prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixAdvertisement {
    /// The prefix, e.g. `10.48.0.0/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("prefixAdvertisements[].cidr must be a CIDR"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("prefixAdvertisements[].cidr must have no host bits set (e.g. 10.48.0.0/16, not 10.48.0.1/16)")
    )]
    #[schemars(length(max = 64))]
    pub cidr: Option<String>,
    /// Community names (from `communities`) or literal values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::advertised_communities")]
    pub communities: Option<Vec<String>>,
}

/// A BGP password stored in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BGPPassword {
    /// The Secret key holding the password (in the operator's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// Reference to one key of a Secret (Kubernetes' `SecretKeySelector`, as in Calico's schema).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
    /// The Secret or its key may be missing: the session then has no password and nothing is
    /// reported. Without it a missing Secret or key is reported (still no password, as Calico).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A BGP peering: which nodes peer with which remote speaker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "BGPPeer",
    plural = "bgppeers",
    singular = "bgppeer",
    shortname = "bgpp",
    category = "calico",
    category = "tortie",
    doc = "BGPPeer declares BGP sessions between cluster nodes (node, nodeSelector, or all) and a remote speaker (peerIP or peerSelector).",
    printcolumn = r#"{"name":"Node Selector","type":"string","jsonPath":".spec.nodeSelector"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Peer Selector","type":"string","jsonPath":".spec.peerSelector"}"#,
    printcolumn = r#"{"name":"Peer IP","type":"string","jsonPath":".spec.peerIP"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.asNumber"}"#
)]
#[x_kube(
    validation = Rule::new("!has(self.node) || size(self.node) == 0 || !has(self.nodeSelector) || size(self.nodeSelector) == 0").message("spec.node and spec.nodeSelector cannot both be set").field_path(".nodeSelector"),
    validation = Rule::new("!has(self.peerIP) || size(self.peerIP) == 0 || !has(self.peerSelector) || size(self.peerSelector) == 0").message("spec.peerIP and spec.peerSelector cannot both be set").field_path(".peerSelector"),
    validation = Rule::new("!has(self.peerSelector) || size(self.peerSelector) == 0 || !has(self.asNumber) || self.asNumber == 0").message("spec.asNumber must be empty when spec.peerSelector is set (the peers' own AS numbers are used)").field_path(".asNumber"),
    validation = Rule::new("!has(self.localWorkloadSelector) || size(self.localWorkloadSelector) == 0 || !has(self.peerIP) || size(self.peerIP) == 0").message("spec.peerIP must be empty when spec.localWorkloadSelector is set").field_path(".peerIP"),
    validation = Rule::new("!has(self.localWorkloadSelector) || size(self.localWorkloadSelector) == 0 || !has(self.peerSelector) || size(self.peerSelector) == 0").message("spec.peerSelector must be empty when spec.localWorkloadSelector is set").field_path(".peerSelector"),
    validation = Rule::new("!has(self.localWorkloadSelector) || size(self.localWorkloadSelector) == 0 || (has(self.asNumber) && self.asNumber != 0)").message("spec.asNumber is required when spec.localWorkloadSelector is set").field_path(".asNumber"),
    validation = Rule::new("!has(self.reachableBy) || size(self.reachableBy) == 0 || (has(self.peerIP) && size(self.peerIP) > 0)").message("spec.reachableBy must be empty when spec.peerIP is empty").field_path(".reachableBy"),
    validation = Rule::new("!has(self.reachableBy) || !isIP(self.reachableBy) || !has(self.peerIP) || size(self.peerIP) == 0 || (isIP(self.peerIP) ? ip(self.peerIP).family() : (self.peerIP.startsWith('[') ? 6 : 4)) == ip(self.reachableBy).family()").message("spec.reachableBy must be of the same IP family as spec.peerIP").field_path(".reachableBy"),
    validation = Rule::new("!has(self.keepOriginalNextHop) || !self.keepOriginalNextHop || !has(self.nextHopMode)").message("spec.keepOriginalNextHop and spec.nextHopMode cannot both be set; keepOriginalNextHop is deprecated, use nextHopMode").field_path(".nextHopMode")
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The one node that has this peering. Empty with an empty nodeSelector: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node: Option<String>,
    /// Calico selector of the nodes that have this peering, e.g. `all()` or `rack == 'a'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::peer_node_selector")]
    pub node_selector: Option<String>,
    /// The remote speaker's address, optionally with a port: `192.168.1.10`, `192.168.1.10:178`,
    /// `[fd00::1]:178`.
    #[serde(rename = "peerIP", default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"size(self) == 0 || isIP(self) || (self.matches('^[0-9.]+:[0-9]{1,5}$') && isIP(self.substring(0, self.lastIndexOf(':'))) && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535) || (self.matches('^\\[[0-9a-fA-F:.]+\\]:[0-9]{1,5}$') && isIP(self.substring(1, self.lastIndexOf(']'))) && int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)").message("spec.peerIP must be an IP address, optionally with a port from 1 to 65535: 192.168.1.10, 192.168.1.10:178 or [fd00::1]:178"))]
    #[schemars(length(max = 64))]
    pub peer_ip: Option<String>,
    /// Calico selector of cluster nodes to peer with (route reflectors use this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::peer_selector")]
    pub peer_selector: Option<String>,
    /// The remote AS number (required with peerIP).
    #[serde(rename = "asNumber", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::as_number")]
    pub as_number: Option<i64>,
    /// Local AS number to use for this peering instead of the node's.
    #[serde(rename = "localASNumber", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::as_number")]
    pub local_as_number: Option<i64>,
    /// Keep the original next hop when forwarding routes to this peer (deprecated: nextHopMode Keep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_original_next_hop: Option<bool>,
    /// `Auto`, `Self` or `Keep`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Auto", "Self", "Keep"]))]
    pub next_hop_mode: Option<String>,
    /// Session password, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BGPPassword>,
    /// `UseNodeIP` (default): source the session from the node's address; `None`: let the kernel choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["UseNodeIP", "None"]))]
    pub source_address: Option<String>,
    /// Graceful-restart time, a duration such as `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_rule!()).message("spec.maxRestartTime must be a duration such as 120s, 1m30s or 2h (not negative, at most 4294967295s)"))]
    #[schemars(length(max = 64))]
    pub max_restart_time: Option<String>,
    /// Keepalive time, a duration such as `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_rule!()).message("spec.keepaliveTime must be a duration such as 30s, 1m30s or 2h (not negative, at most 4294967295s)"))]
    #[schemars(length(max = 64))]
    pub keepalive_time: Option<String>,
    /// Accept routes whose AS path contains the local AS up to this many times.
    #[serde(
        rename = "numAllowedLocalASNumbers",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0, max = 255))]
    pub num_allowed_local_as_numbers: Option<i64>,
    /// Number of hops for TTL security (GTSM).
    #[serde(rename = "ttlSecurity", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub ttl_security: Option<i64>,
    /// Names of BGPFilter objects to apply, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::peer_filters")]
    pub filters: Option<Vec<String>>,
    /// Address of a router through which the peer is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) == 0 || isIP(self)").message("spec.reachableBy must be an IP address"))]
    #[schemars(length(max = 64))]
    pub reachable_by: Option<String>,
    /// Selector of local workloads that peer with the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::local_workload_selector")]
    pub local_workload_selector: Option<String>,
    /// `Auto` (default): the selected remote Calico nodes peer back automatically; `Manual`: they don't.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Auto", "Manual"]))]
    pub reverse_peering: Option<String>,
}
