//! CalicoNodeStatus: a user asks for one node's BGP status by creating the object; the node's agent
//! fills `status` (Calico's calico-node does the same). Field names and shapes are Calico's, so
//! Calico's tools read what tortie writes and tortie reads what calico-node wrote.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::{Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Calico's classes of information a CalicoNodeStatus may ask for.
pub const CLASSES: [&str; 3] = ["Agent", "BGP", "Routes"];
/// Calico's longest update period: one day.
pub const MAX_UPDATE_PERIOD_SECONDS: i64 = 86400;

/// What to report about one node, and how often.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "CalicoNodeStatus",
    plural = "caliconodestatuses",
    singular = "caliconodestatus",
    category = "calico",
    category = "tortie",
    status = "CalicoNodeStatusStatus",
    doc = "CalicoNodeStatus asks the agent on spec.node to report that node's BIRD daemons, BGP sessions and routes in status, every spec.updatePeriodSeconds.",
    printcolumn = r#"{"name":"Node","type":"string","description":"The name of the node","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Classes","type":"string","description":"The types of information to monitor for this calico/node","jsonPath":".spec.classes"}"#
)]
#[x_kube(
    // Calico's validator requires all three; calico-node ignores an object without a period.
    validation = Rule::new("has(self.node) && size(self.node) > 0").message("spec.node is required: the name of the node to report on").field_path(".node"),
    validation = Rule::new("has(self.classes)").message("spec.classes is required: any of Agent, BGP, Routes").field_path(".classes"),
    validation = Rule::new("has(self.updatePeriodSeconds)").message("spec.updatePeriodSeconds is required: seconds between updates, 0 to 86400 (0: report once)").field_path(".updatePeriodSeconds")
)]
#[serde(rename_all = "camelCase")]
pub struct CalicoNodeStatusSpec {
    /// The node whose status to report (a Kubernetes Node name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "node_name")]
    pub node: Option<String>,
    /// What to report: Agent (the BIRD daemons), BGP (the sessions), Routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "classes")]
    pub classes: Option<Vec<String>>,
    /// Seconds between updates of the status, 0 to 86400; 0 reports once and then stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "update_period")]
    pub update_period_seconds: Option<i64>,
}

impl CalicoNodeStatusSpec {
    pub fn wants(&self, class: &str) -> bool {
        self.classes
            .as_ref()
            .is_some_and(|c| c.iter().any(|x| x == class))
    }
}

fn node_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "The node whose status to report (a Kubernetes Node name).",
        "maxLength": 253,
        "x-kubernetes-validations": [{
            "rule": "size(self) == 0 || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
            "message": "spec.node must be a node name: lower case letters, digits, '-' and '.'"
        }]
    })
}

fn classes(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "What to report: Agent (the BIRD daemons), BGP (the sessions), Routes.",
        "maxItems": 3,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "enum": CLASSES}
    })
}

fn update_period(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "maximum": MAX_UPDATE_PERIOD_SECONDS,
        "description": "Seconds between updates of the status, 0 to 86400 (one day); 0 reports once and then stops."
    })
}

fn last_updated(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "date-time",
        "nullable": true,
        "description": "When the agent last wrote this status (RFC 3339, UTC)."
    })
}

/// What the node's agent observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CalicoNodeStatusStatus {
    /// When the agent last wrote this status (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "last_updated")]
    pub last_updated: Option<Time>,
    /// The BIRD daemons on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    /// The node's BGP sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// Routes known to the node's BIRD daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RouteStatus>,
}

/// Both BIRD daemons (IPv4 `bird`, IPv6 `bird6`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The IPv4 daemon.
    #[serde(rename = "birdV4", default)]
    pub bird_v4: DaemonStatus,
    /// The IPv6 daemon.
    #[serde(rename = "birdV6", default)]
    pub bird_v6: DaemonStatus,
}

/// One BIRD daemon, from its `show status`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    /// Ready when the daemon answers on its control socket, else NotReady.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Ready", "NotReady"]))]
    pub state: Option<String>,
    /// The daemon's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The daemon's router ID.
    #[serde(rename = "routerID", default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// When the daemon started, as BIRD prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot_time: Option<String>,
    /// When the daemon last read its configuration, as BIRD prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconfiguration_time: Option<String>,
}

/// Session counts and the sessions of each family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["numberEstablishedV4", "numberEstablishedV6", "numberNotEstablishedV4", "numberNotEstablishedV6"]))]
pub struct BgpStatus {
    /// IPv4 sessions Established.
    #[serde(rename = "numberEstablishedV4", default)]
    pub number_established_v4: i64,
    /// IPv4 sessions not Established.
    #[serde(rename = "numberNotEstablishedV4", default)]
    pub number_not_established_v4: i64,
    /// IPv6 sessions Established.
    #[serde(rename = "numberEstablishedV6", default)]
    pub number_established_v6: i64,
    /// IPv6 sessions not Established.
    #[serde(rename = "numberNotEstablishedV6", default)]
    pub number_not_established_v6: i64,
    /// IPv4 sessions.
    #[serde(rename = "peersV4", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub peers_v4: Vec<PeerStatus>,
    /// IPv6 sessions.
    #[serde(rename = "peersV6", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub peers_v6: Vec<PeerStatus>,
}

/// One BGP session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's address.
    #[serde(rename = "peerIP", default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Where the session comes from: NodeMesh (the node-to-node mesh), NodePeer (a BGPPeer for
    /// some nodes) or GlobalPeer (a BGPPeer for every node).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["NodeMesh", "NodePeer", "GlobalPeer"]))]
    pub type_: Option<String>,
    /// The BGP session state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established", "Close"]))]
    pub state: Option<String>,
    /// Since when the session is in this state, as BIRD prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Routes of each family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// IPv4 routes.
    #[serde(rename = "routesV4", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub routes_v4: Vec<Route>,
    /// IPv6 routes.
    #[serde(rename = "routesV6", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub routes_v6: Vec<Route>,
}

/// One route known to BIRD.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// FIB (used for forwarding) or RIB (known, not used).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["FIB", "RIB"]))]
    pub type_: Option<String>,
    /// The destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The outgoing interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Where the route was learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_from: Option<LearnedFrom>,
}

/// The source of a route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LearnedFrom {
    /// Kernel, Static, Direct, NodeMesh or BGPPeer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Kernel", "Static", "Direct", "NodeMesh", "BGPPeer"]))]
    pub source_type: Option<String>,
    /// The peer that sent the route (NodeMesh and BGPPeer sources).
    #[serde(rename = "peerIP", default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
}
