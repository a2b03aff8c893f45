//! Hand-written OpenAPI fragments for fields whose derived schema would be wrong for a CRD:
//! enums kept as plain strings (so unknown values read back instead of failing), nullable
//! array items, and Kubernetes condition lists.

use schemars::{Schema, SchemaGenerator, json_schema};

pub fn encap_mode(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["Never", "Always", "CrossSubnet"],
        "description": "Encapsulation mode: Never, Always or CrossSubnet."
    })
}

pub fn allowed_uses(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "What the pool's addresses may be used for: Workload, Tunnel, LoadBalancer.",
        "maxItems": 10,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "enum": ["Workload", "Tunnel", "LoadBalancer"]}
    })
}

pub fn assignment_mode(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["Automatic", "Manual"],
        "description": "Automatic or Manual."
    })
}

pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Standard Kubernetes conditions.",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "description": "One condition of the object.",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "description": "Condition type, e.g. Ready.", "maxLength": 316},
                "status": {"type": "string", "description": "True, False or Unknown.", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "description": "Generation the condition was set for.", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time", "description": "When the status last changed."},
                "reason": {"type": "string", "description": "Machine-readable reason in CamelCase.", "maxLength": 1024},
                "message": {"type": "string", "description": "Human-readable explanation.", "maxLength": 32768}
            }
        }
    })
}

/// `allocations`: one entry per address of the block, an index into `attributes` or null when free.
pub fn allocations(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "One entry per address of the block (index = ordinal): the index of its entry in attributes, or null when the address is free.",
        "x-kubernetes-list-type": "atomic",
        "items": {"type": "integer", "nullable": true}
    })
}

/// Free-form string map (attributes, handle block counts are typed separately).
pub fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "String keys and values.",
        "additionalProperties": {"type": "string"}
    })
}

pub fn int_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "String keys and integer values.",
        "additionalProperties": {"type": "integer", "format": "int64"}
    })
}

/// BlockAffinity `deleted`: a boolean in v3 mode; rewritten to a string for v1 mode by `crd::for_mode`.
pub fn affinity_deleted(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "boolean",
        "description": "Soft-delete marker: readers treat a deleted affinity as absent."
    })
}

pub fn affinity_state(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "Claim state: pending (claim intent), confirmed (block owned), pendingDeletion (being released). Empty means confirmed (legacy).",
        "enum": ["", "pending", "confirmed", "pendingDeletion"]
    })
}

/// An AS number: 1 to 4294967295 (4-byte ASNs allowed).
pub fn as_number(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int64",
        "minimum": 0,
        "maximum": 4294967295u64,
        "description": "Autonomous system number (0 to 4294967295)."
    })
}

/// The cluster's own AS number: as [`as_number`] but not 0, which is reserved (RFC 7607) and which
/// BIRD refuses as a local AS on every node (Calico's schema lets it through, to the same end).
pub fn local_as_number(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": 4294967295u64,
        "description": "Autonomous system number (1 to 4294967295; 0 is reserved)."
    })
}

/// A list of `{cidr: ...}` objects (service advertisement ranges).
pub fn service_cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "CIDR ranges, each as {cidr: ...}.",
        "maxItems": 500,
        "items": {
            "type": "object",
            "description": "One CIDR range.",
            "properties": {
                "cidr": {
                    "type": "string",
                    "description": "A CIDR such as 10.96.0.0/12.",
                    "maxLength": 64,
                    "x-kubernetes-validations": [
                        {"rule": "isCIDR(self)", "message": "cidr must be a CIDR such as 10.96.0.0/12"},
                        {"rule": "!isCIDR(self) || cidr(self) == cidr(self).masked()", "message": "cidr must have no host bits set (e.g. 10.96.0.0/12, not 10.96.0.1/12)"}
                    ]
                }
            }
        }
    })
}

/// A Calico selector string checked at admission with [`super::selector_rule`]; `path` names the
/// field in the message, `extra` holds further rules.
fn selector(path: &str, extra: &[serde_json::Value]) -> Schema {
    let mut rules = vec![serde_json::json!({
        "rule": super::selector_rule::cel_rule(),
        "message": super::selector_rule::message(path),
    })];
    rules.extend(extra.iter().cloned());
    json_schema!({
        "type": "string",
        "nullable": true,
        "maxLength": 1024,
        "description": "A Calico selector.",
        "x-kubernetes-validations": rules
    })
}

/// Calico refuses `global()` in an IPPool's selectors.
fn no_global(path: &str) -> serde_json::Value {
    serde_json::json!({
        "rule": "!self.contains('global(')",
        "message": format!("{path}: global() is not valid in an IPPool selector"),
    })
}

pub fn ippool_node_selector(_: &mut SchemaGenerator) -> Schema {
    selector("spec.nodeSelector", &[no_global("spec.nodeSelector")])
}

pub fn ippool_namespace_selector(_: &mut SchemaGenerator) -> Schema {
    selector("spec.namespaceSelector", &[no_global("spec.namespaceSelector")])
}

pub fn peer_node_selector(_: &mut SchemaGenerator) -> Schema {
    selector("spec.nodeSelector", &[])
}

pub fn peer_selector(_: &mut SchemaGenerator) -> Schema {
    selector("spec.peerSelector", &[])
}

pub fn local_workload_selector(_: &mut SchemaGenerator) -> Schema {
    selector("spec.localWorkloadSelector", &[])
}

/// BGPConfiguration `ignoredInterfaces`: Calico's interface pattern (letters, digits, `_.-*`,
/// 1 to 15 characters, not `*` alone), which also keeps BIRD's quoted string intact. Patterns
/// rather than CEL here and below: per-item CEL over these lists exceeds the apiserver's budget.
pub fn ignored_interfaces(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Interfaces whose addresses BIRD must not import (glob patterns such as docker*).",
        "items": {
            "type": "string",
            "description": "An interface name pattern: 1 to 15 letters, digits or _ . - *, not * alone.",
            "pattern": "^([a-zA-Z0-9_.-][a-zA-Z0-9_.*-]{0,14}|[*][a-zA-Z0-9_.*-]{1,14})$"
        }
    })
}

/// `prefixAdvertisements[].communities`: names from `communities` or literal community values.
pub fn advertised_communities(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Community names (from communities) or literal values aa:nn / aa:nn:mm.",
        "maxItems": 50,
        "items": {
            "type": "string",
            "description": "A community name, or a value aa:nn (16-bit numbers) or aa:nn:mm (32-bit numbers).",
            "pattern": "^(0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}):0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})|0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9}):0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9}):0*(429496729[0-5]|42949672[0-8][0-9]|4294967[01][0-9]{2}|429496[0-6][0-9]{3}|42949[0-5][0-9]{4}|4294[0-8][0-9]{5}|429[0-3][0-9]{6}|42[0-8][0-9]{7}|4[01][0-9]{8}|[1-3][0-9]{9}|[0-9]{1,9})|[^:]+)$"
        }
    })
}

/// Calico's `BGPCommunityValue`: `aa:nn` with 16-bit numbers or `aa:nn:mm` with 32-bit numbers,
/// written without leading zeros (BIRD reads the numbers as they are written).
const FILTER_COMMUNITY: &str = "^(([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]):([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])|([0-9]|[1-9][0-9]{1,8}|[1-3][0-9]{9}|4[0-1][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[0-1][0-9]{2}|42949672[0-8][0-9]|429496729[0-5]):([0-9]|[1-9][0-9]{1,8}|[1-3][0-9]{9}|4[0-1][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[0-1][0-9]{2}|42949672[0-8][0-9]|429496729[0-5]):([0-9]|[1-9][0-9]{1,8}|[1-3][0-9]{9}|4[0-1][0-9]{8}|42[0-8][0-9]{7}|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}|4294967[0-1][0-9]{2}|42949672[0-8][0-9]|429496729[0-5]))$";

/// BGPFilter `communities.values`: exactly one community value.
pub fn filter_community_values(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Exactly one community value, aa:nn (16-bit numbers) or aa:nn:mm (32-bit numbers).",
        "minItems": 1,
        "maxItems": 1,
        "x-kubernetes-list-type": "atomic",
        "items": {"type": "string", "maxLength": 32, "pattern": FILTER_COMMUNITY,
                  "description": "aa:nn (16-bit numbers) or aa:nn:mm (32-bit numbers)."}
    })
}

/// BGPFilter `addCommunity.value`.
pub fn filter_community_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": FILTER_COMMUNITY,
        "description": "aa:nn (16-bit numbers) or aa:nn:mm (32-bit numbers)."
    })
}

fn as_list(min: u32, max: u32, description: &str) -> Schema {
    json_schema!({
        "type": "array",
        "description": description,
        "minItems": min,
        "maxItems": max,
        "x-kubernetes-list-type": "atomic",
        "items": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64,
                  "description": "Autonomous system number (0 to 4294967295)."}
    })
}

/// BGPFilter `asPathPrefix`: AS numbers the route's AS path starts with.
pub fn as_path(_: &mut SchemaGenerator) -> Schema {
    as_list(
        0,
        64,
        "AS numbers the route's AS path must start with (up to 64).",
    )
}

/// BGPFilter `prependASPath.prefix`.
pub fn as_path_prepend(_: &mut SchemaGenerator) -> Schema {
    as_list(
        1,
        10,
        "AS numbers to prepend, 1 to 10; the path then starts with them in this order.",
    )
}

/// BGPPeer `filters`: names of BGPFilter objects (Kubernetes object names, which BIRD's quoted
/// function names can hold).
pub fn peer_filters(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Names of BGPFilter objects, applied in this order.",
        "maxItems": 100,
        "x-kubernetes-list-type": "atomic",
        "items": {"type": "string", "maxLength": 253,
                  "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                  "description": "A BGPFilter name (lower-case letters, digits, '-' and '.')."}
    })
}

/// IPReservation `reservedCIDRs`: CIDRs or single addresses that are never handed out.
pub fn reserved_cidrs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "CIDRs (10.0.0.0/24) or single addresses (10.0.0.1) that IPAM never allocates.",
        "maxItems": 1000,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": 64,
            "description": "A CIDR or an IP address.",
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self) || isIP(self)", "message": "reservedCIDRs entries must be CIDRs such as 10.0.0.0/24 or addresses such as 10.0.0.1"}
            ]
        }
    })
}
