//! IPAM state objects: IPAMBlock, IPAMHandle, BlockAffinity, IPAMConfig(uration).
//!
//! These are Calico's internal state. tortie reads what Calico wrote and Calico reads what tortie
//! writes, so every field keeps its stored JSON name and shape, and fields tortie does not model are
//! kept in `extra` and written back untouched (newer Calico releases add fields).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::schema;
use super::strmap::StrMap;

/// Fields of an object that tortie does not model, kept verbatim for read-modify-write.
pub type Extra = BTreeMap<String, Value>;

/// A block of addresses (default /26) cut from a pool, usually affine to one node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    singular = "ipamblock",
    shortname = "ipb",
    category = "calico",
    category = "tortie",
    doc = "IPAMBlock holds the allocation state of one block of addresses. Internal state: do not edit by hand.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Affinity","type":"string","jsonPath":".spec.affinity"}"#,
    printcolumn = r#"{"name":"ClaimTime","type":"string","jsonPath":".spec.affinityClaimTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
// A block's range and size are fixed at creation (Calico never changes them): a block whose cidr
// or length changed under its allocations would move addresses onto other blocks' ranges.
#[x_kube(
    validation = Rule::new("self.cidr == oldSelf.cidr").message("spec.cidr of an IPAMBlock cannot be changed: a block keeps its range for life (delete an empty block instead)").field_path(".cidr"),
    validation = Rule::new("size(self.allocations) == size(oldSelf.allocations)").message("spec.allocations of an IPAMBlock must keep one entry per address of the block: its length cannot change").field_path(".allocations")
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's range, e.g. `10.48.0.0/26`.
    pub cidr: String,
    /// Owner of the block: `host:<node>` or `virtual:<name>`; absent for a block with no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// When the current affinity was claimed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<String>,
    /// One entry per address: index into `attributes`, or null when free.
    #[schemars(schema_with = "schema::allocations")]
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, in the order they will be handed out (released ordinals go to the end).
    pub unallocated: Vec<usize>,
    /// Metadata of allocations, shared by allocations with the same handle and attributes.
    pub attributes: Vec<AllocationAttribute>,
    /// Write counter of the block; increases on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<u64>,
    /// Block sequence number at the time each ordinal (the key, as a string) was allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::int_map")]
    pub sequence_number_for_allocation: Option<BTreeMap<String, u64>>,
    /// Soft-delete marker: a deleted block is treated as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Deprecated and always false; the real switch is IPAMConfig `strictAffinity`.
    pub strict_affinity: bool,
    /// Fields this version of tortie does not model, preserved on write.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Metadata of one or more allocations in a block.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationAttribute {
    /// The handle that owns the allocation, e.g. `k8s-pod-network.<containerID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Owner details: `node`, `pod`, `namespace`, `timestamp`, or `type` for tunnel addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::string_map")]
    pub secondary: Option<StrMap>,
    /// Owner details of a second owner during a KubeVirt live migration.
    #[serde(
        rename = "alternateOwnerAttrs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::string_map")]
    pub alternate_owner_attrs: Option<StrMap>,
    /// When the address was released, if it is cooling down before reuse (RFC 3339).
    #[serde(rename = "releasedAt", default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// Fields this version of tortie does not model, preserved on write.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// An allocation handle: which blocks hold addresses of one owner (a pod sandbox, a tunnel).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    singular = "ipamhandle",
    shortname = "iph",
    category = "calico",
    category = "tortie",
    doc = "IPAMHandle records how many addresses one owner holds in each block. Internal state: do not edit by hand.",
    printcolumn = r#"{"name":"ID","type":"string","jsonPath":".spec.handleID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct IPAMHandleSpec {
    /// The handle ID as the allocator gave it (the object name is its lower-cased form).
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR → number of addresses this handle holds in that block.
    #[schemars(schema_with = "schema::int_map")]
    pub block: BTreeMap<String, u64>,
    /// Soft-delete marker: a deleted handle is treated as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Fields this version of tortie does not model, preserved on write.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// A node's claim on a block.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    singular = "blockaffinity",
    shortname = "affinity",
    shortname = "affinities",
    category = "calico",
    category = "tortie",
    doc = "BlockAffinity records that a node owns (or is claiming) a block. Internal state: do not edit by hand.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".spec.state"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
// The object's name is derived from node and cidr, and the claim protocol relies on both: Calico
// never rewrites them (a claim of another block is another object).
#[x_kube(
    validation = Rule::new("self.cidr == oldSelf.cidr").message("spec.cidr of a BlockAffinity cannot be changed: claim the other block with a new BlockAffinity").field_path(".cidr"),
    validation = Rule::new("self.node == oldSelf.node").message("spec.node of a BlockAffinity cannot be changed: the new owner claims the block with its own BlockAffinity").field_path(".node")
)]
pub struct BlockAffinitySpec {
    /// `pending`, `confirmed` or `pendingDeletion`.
    #[schemars(schema_with = "schema::affinity_state")]
    pub state: String,
    /// The node (or virtual owner) name.
    pub node: String,
    /// `host` or `virtual`; absent on rows written before Calico 3.30 (means `host`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The block's CIDR.
    pub cidr: String,
    /// Soft-delete marker. Calico's v1 CRD stores it as the string "true"/"false", v3 as a boolean;
    /// the form read is the form written back.
    #[schemars(schema_with = "schema::affinity_deleted")]
    pub deleted: Flag,
    /// Fields this version of tortie does not model, preserved on write.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// A boolean that Calico's v1 storage writes as a string. Keeps the wire form it was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    Bool(bool),
    Str(bool),
}

impl Default for Flag {
    fn default() -> Self {
        Flag::Bool(false)
    }
}

impl Flag {
    pub fn value(self) -> bool {
        match self {
            Flag::Bool(b) | Flag::Str(b) => b,
        }
    }

    /// The same wire form with another value.
    pub fn with(self, v: bool) -> Flag {
        match self {
            Flag::Bool(_) => Flag::Bool(v),
            Flag::Str(_) => Flag::Str(v),
        }
    }
}

impl Serialize for Flag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Flag::Bool(b) => s.serialize_bool(*b),
            Flag::Str(b) => s.serialize_str(if *b { "true" } else { "false" }),
        }
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Flag::Bool(b)),
            // Calico parses the string with strconv.ParseBool and treats "" as false.
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" => Ok(Flag::Str(true)),
                "false" | "f" | "0" | "" => Ok(Flag::Str(false)),
                other => Err(serde::de::Error::custom(format!(
                    "deleted: {other:?} is not a boolean"
                ))),
            },
            Value::Null => Ok(Flag::Bool(false)),
            other => Err(serde::de::Error::custom(format!(
                "deleted: {other} is not a boolean"
            ))),
        }
    }
}

/// Cluster-wide IPAM settings, singleton `default` (kind `IPAMConfig` in v1 mode,
/// `IPAMConfiguration` in v3 mode).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "IPAMConfiguration",
    plural = "ipamconfigurations",
    singular = "ipamconfiguration",
    shortname = "ipamconfig",
    shortname = "ipamconfigs",
    category = "calico",
    category = "tortie",
    doc = "IPAMConfiguration holds cluster-wide IPAM settings; only the object named default is read.",
    validation = Rule::new("self.metadata.name == 'default'").message("metadata.name: the IPAM configuration must be named 'default'"),
    printcolumn = r#"{"name":"StrictAffinity","type":"boolean","jsonPath":".spec.strictAffinity"}"#,
    printcolumn = r#"{"name":"MaxBlocksPerHost","type":"integer","jsonPath":".spec.maxBlocksPerHost"}"#,
    printcolumn = r#"{"name":"AutoAllocateBlocks","type":"boolean","jsonPath":".spec.autoAllocateBlocks"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMConfigSpec {
    /// When true, a node allocates only from blocks affine to it and never borrows addresses from
    /// other nodes' blocks.
    pub strict_affinity: bool,
    /// When false, nodes never claim new blocks.
    pub auto_allocate_blocks: bool,
    /// Cap on blocks affine to one node (0 means the default, 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub max_blocks_per_host: Option<i64>,
    /// KubeVirt VM address persistence: `Enabled` or `Disabled`.
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_virt_vm_address_persistence: Option<String>,
    /// Minimum age in seconds of a released address before it is handed out again (0–1200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1200))]
    pub ip_cooldown_seconds: Option<i64>,
    /// Fields this version of tortie does not model, preserved on write.
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Extra,
}

/// Calico's default for `maxBlocksPerHost` when the stored value is 0.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

impl IPAMConfigSpec {
    /// The settings Calico uses when no IPAMConfig exists.
    pub fn calico_defaults() -> Self {
        IPAMConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            ..Default::default()
        }
    }

    pub fn effective_max_blocks_per_host(&self) -> u32 {
        match self.max_blocks_per_host {
            Some(n) if n > 0 => n.min(u32::MAX as i64) as u32,
            _ => DEFAULT_MAX_BLOCKS_PER_HOST,
        }
    }
}

impl BlockAffinitySpec {
    pub fn is_deleted(&self) -> bool {
        self.deleted.value()
    }

    pub fn is_confirmed(&self) -> bool {
        matches!(self.state.as_str(), "confirmed" | "")
    }

    pub fn affinity_type(&self) -> &str {
        self.type_.as_deref().unwrap_or("host")
    }
}

impl IPAMBlockSpec {
    pub fn is_deleted(&self) -> bool {
        self.deleted.unwrap_or(false)
    }

    /// The node this block is affine to, if its affinity is `host:<node>`.
    pub fn host(&self) -> Option<&str> {
        self.affinity.as_deref().and_then(|a| a.strip_prefix("host:"))
    }
}

impl IPAMHandleSpec {
    pub fn is_deleted(&self) -> bool {
        self.deleted.unwrap_or(false)
    }
}
