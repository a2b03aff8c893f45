//! BGPFilter: import and export rules for BGP peers, with Calico's field names
//! (`projectcalico.org/v3` BGPFilterSpec, embedded unchanged by the v1 CRD).
//!
//! Enumerated fields stay strings so that a stored value the renderer cannot use reads back and is
//! reported ([`crate::bgp::validate`]) instead of failing the whole list.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::schema;

/// Import and export rules per address family; a BGPPeer applies filters by name (`spec.filters`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "BGPFilter",
    plural = "bgpfilters",
    singular = "bgpfilter",
    category = "calico",
    category = "tortie",
    doc = "BGPFilter holds ordered import and export rules (accept or reject, optionally changing the route) that BGPPeers apply through spec.filters."
)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterSpec {
    /// Rules for IPv4 routes exported to a peer, first match wins.
    #[serde(rename = "exportV4", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub export_v4: Option<Vec<BGPFilterRuleV4>>,
    /// Rules for IPv4 routes imported from a peer, first match wins.
    #[serde(rename = "importV4", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub import_v4: Option<Vec<BGPFilterRuleV4>>,
    /// Rules for IPv6 routes exported to a peer, first match wins.
    #[serde(rename = "exportV6", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub export_v6: Option<Vec<BGPFilterRuleV6>>,
    /// Rules for IPv6 routes imported from a peer, first match wins.
    #[serde(rename = "importV6", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub import_v6: Option<Vec<BGPFilterRuleV6>>,
}

/// One rule: conditions (all must hold; none: every route), operations, and the action.
/// `$cidr_rule`/`$cidr_msg`: the family check of `cidr`.
macro_rules! filter_rule {
    ($name:ident, $prefix:ident, $bits:literal, $cidr_max:literal, $cidr_rule:literal, $cidr_msg:literal) => {
        /// One filter rule: conditions (all must hold; none: every route), operations, and the action.
        #[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
        #[x_kube(
            validation = Rule::new("(has(self.cidr) && size(self.cidr) > 0) == (has(self.matchOperator) && size(self.matchOperator) > 0)").message("cidr and matchOperator must both be set or both be empty"),
            validation = Rule::new("!has(self.prefixLength) || (has(self.cidr) && size(self.cidr) > 0)").message("cidr is required when prefixLength is set"),
            validation = Rule::new("!has(self.operations) || size(self.operations) == 0 || self.action == 'Accept'").message("operations may only be used with action Accept"),
            validation = Rule::new("!has(self.prefixLength) || !has(self.cidr) || !isCIDR(self.cidr) || ((!has(self.prefixLength.max) || self.prefixLength.max >= cidr(self.cidr).prefixLength()) && (!has(self.prefixLength.min) || !has(self.prefixLength.max) || self.prefixLength.min <= self.prefixLength.max))").message("prefixLength.max must be at least the prefix length of cidr and at least prefixLength.min (BIRD refuses an empty range)")
        )]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The route's prefix is compared with this CIDR (host bits zero) by matchOperator.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[x_kube(
                validation = Rule::new($cidr_rule).message($cidr_msg),
                validation = Rule::new("size(self) == 0 || !isCIDR(self) || cidr(self) == cidr(self).masked()").message("cidr must have no host bits set (BIRD refuses such a prefix)")
            )]
            #[schemars(length(max = $cidr_max))]
            pub cidr: Option<String>,
            /// Restricts the prefix lengths matched inside cidr (default: cidr's own length up to the family's longest).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub prefix_length: Option<$prefix>,
            /// `RemotePeers`: only routes learned from BGP peers.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(extend("enum" = ["RemotePeers"]))]
            pub source: Option<String>,
            /// Only routes whose interface matches this pattern (1 to 15 letters, digits or `_ . - *`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(regex(pattern = r"^[a-zA-Z0-9_.*-]{1,15}$"))]
            pub interface: Option<String>,
            /// How the route's prefix is compared with cidr: Equal, NotEqual, In, NotIn.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(extend("enum" = ["Equal", "NotEqual", "In", "NotIn"]))]
            pub match_operator: Option<String>,
            /// Only towards peers of this type: `iBGP` (same AS as the node) or `eBGP`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(extend("enum" = ["eBGP", "iBGP"]))]
            pub peer_type: Option<String>,
            /// Only routes carrying this community.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub communities: Option<BGPFilterCommunityMatch>,
            /// Only routes whose AS path starts with these AS numbers.
            #[serde(rename = "asPathPrefix", default, skip_serializing_if = "Option::is_none")]
            #[schemars(schema_with = "schema::as_path")]
            pub as_path_prefix: Option<Vec<i64>>,
            /// Only routes with this priority (kernel metric units, 1 to 2147483646).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 1, max = 2147483646))]
            pub priority: Option<i64>,
            /// `Accept` or `Reject` a matching route.
            #[schemars(extend("enum" = ["Accept", "Reject"]))]
            pub action: String,
            /// Changes made to a matching route before it is accepted (Accept only), in order.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(length(min = 1, max = 10))]
            pub operations: Option<Vec<BGPFilterOperation>>,
        }

        /// Allowed prefix lengths of a matching route.
        #[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
        pub struct $prefix {
            /// Shortest prefix length matched.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = $bits))]
            pub min: Option<i32>,
            /// Longest prefix length matched.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 0, max = $bits))]
            pub max: Option<i32>,
        }
    };
}

filter_rule!(
    BGPFilterRuleV4,
    BGPFilterPrefixLengthV4,
    32,
    18,
    "size(self) == 0 || (isCIDR(self) && cidr(self).ip().family() == 4)",
    "cidr must be an IPv4 CIDR such as 10.0.0.0/8"
);
filter_rule!(
    BGPFilterRuleV6,
    BGPFilterPrefixLengthV6,
    128,
    43,
    "size(self) == 0 || (isCIDR(self) && cidr(self).ip().family() == 6)",
    "cidr must be an IPv6 CIDR such as fd00::/8"
);

/// Community a route must carry: exactly one value, `aa:nn` or `aa:nn:mm`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BGPFilterCommunityMatch {
    /// The community value (one entry).
    #[schemars(schema_with = "schema::filter_community_values")]
    pub values: Vec<String>,
}

/// One change to a route; exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("(has(self.addCommunity) ? 1 : 0) + (has(self.prependASPath) ? 1 : 0) + (has(self.setPriority) ? 1 : 0) == 1").message("each operation must set exactly one of addCommunity, prependASPath, setPriority")
)]
#[serde(rename_all = "camelCase")]
pub struct BGPFilterOperation {
    /// Adds a community to the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_community: Option<BGPFilterAddCommunity>,
    /// Prepends AS numbers to the route's AS path.
    #[serde(rename = "prependASPath", default, skip_serializing_if = "Option::is_none")]
    pub prepend_as_path: Option<BGPFilterPrependASPath>,
    /// Sets the route's priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_priority: Option<BGPFilterSetPriority>,
}

/// A community to add.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BGPFilterAddCommunity {
    /// `aa:nn` (16-bit numbers) or `aa:nn:mm` (32-bit numbers).
    #[schemars(schema_with = "schema::filter_community_value")]
    pub value: String,
}

/// AS numbers to prepend; the path then starts with them in this order.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BGPFilterPrependASPath {
    /// One to ten AS numbers.
    #[schemars(schema_with = "schema::as_path_prepend")]
    pub prefix: Vec<i64>,
}

/// A priority to set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BGPFilterSetPriority {
    /// Priority in kernel metric units, 1 to 2147483646 (lower wins).
    #[schemars(range(min = 1, max = 2147483646))]
    pub value: i64,
}
