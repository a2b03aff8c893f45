//! tortie's IPAM engine: Calico-compatible block allocation with affinities, strict affinity,
//! borrowing and release, on Calico's own objects (IPAMBlock, BlockAffinity, IPAMHandle).
//!
//! Layout: everything here is pure (no I/O) except [`store`], which alone talks to the apiserver,
//! and [`engine`], which drives the pure decisions against the store.
//! - [`cidr`]: address and block math for both families.
//! - [`names`]: object names and labels exactly as Calico forms them.
//! - [`block`]: operations on one IPAMBlock's state (allocate, assign, release, invariants).
//! - [`selector`]: Calico's selector language (pool `nodeSelector` / `namespaceSelector`).
//! - [`allocator`]: which pools apply, which block to use or claim, limits, borrowing.
//! - [`layout`]: existing blocks and the overlap check every block creation passes.
//! - [`report`], [`leaks`], [`split`], [`usage`]: what `tortie ipam` shows, checks, releases from a
//!   report and splits, decided without I/O; [`config`]: `ipam configure`'s write.
//! - [`reserved`]: IPReservations (addresses automatic assignment skips).
//! - [`batch`]: concurrent requests of one node sharing one block write.
//!
//! # Using the engine
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), tortie::ipam::IpamError> {
//! use tortie::ipam::{AutoAssignRequest, Ipam};
//! let ipam = Ipam::new(client, tortie::api::CrdMode::V1).await?;
//! let mut req = AutoAssignRequest::new("k8s-pod-network.abc123", "node-a");
//! req.attrs = tortie::ipam::Attrs::pod("node-a", "default", "web-0");
//! req.num_v4 = 1;
//! let got = ipam.auto_assign(req).await?;
//! if !got.is_complete() {
//!     // Exhaustion is not an Err (as in Calico): the caller decides; a CNI ADD releases and fails.
//!     ipam.release_by_handle("k8s-pod-network.abc123").await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Where tortie chooses differently from Calico (spec §9.2)
//! - Block choice is deterministic and documented ([`allocator::claim_order`]): FNV-1a of the host
//!   name picks the start block, then blocks are walked upward with wrap-around. Hosts spread apart
//!   and a test can predict the block.
//! - The hot path reads nothing: pools and IPAMConfig come from watches, the node's affinities and
//!   blocks from a cache of the objects last read or written; a stale cache entry shows up as a 409
//!   (the block is the arbiter) and only then is the object re-read. A steady-state allocation is one
//!   handle write and a share of one block write: concurrent requests of one node are assigned
//!   together in one compare-and-swap write of their block ([`batch`]).
//! - Claiming a block lists block *names* only (metadata), never every block's body.
//! - A block is never created over another one ([`layout`]): claims skip candidates that overlap an
//!   existing block of any pool or size, a claim re-lists the block names after creating its block
//!   and gives it back if a racing claim made an overlapping one, and a specific address goes into
//!   the block that holds it whatever the pool's current `blockSize`. Calico trusts the pool spec
//!   and cuts overlapping blocks when a pool's block size changes under its blocks (#10778).
//! - `release_by_handle` decrements the handle even when the block no longer holds the handle's
//!   addresses (Calico leaves such a handle over-counted forever), and deletes the handle when empty.
//! - Explicitly requested pools bypass selectors as in Calico; a disabled requested pool is reported
//!   as "disabled", not "does not exist".

pub mod allocator;
pub mod batch;
pub mod block;
pub mod cidr;
pub mod config;
mod engine;
pub mod handle_count;
pub mod layout;
pub mod leaks;
pub mod names;
pub mod report;
pub mod reserved;
pub mod selector;
pub mod split;
pub mod store;
pub mod usage;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::api::StrMap;

pub use crate::api::ippool::AllowedUse;
pub use engine::{GcReleased, Ipam, IpamOptions};

/// Secondary attributes of an allocation (`attributes[].secondary` in the block), by Calico's keys:
/// `node`, `pod`, `namespace`, `timestamp` for pods, `node` + `type` for tunnel addresses.
/// Calico's GC classifies allocations purely by these keys, so use them as Calico does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs(pub StrMap);

impl Attrs {
    pub const NODE: &'static str = "node";
    pub const POD: &'static str = "pod";
    pub const NAMESPACE: &'static str = "namespace";
    pub const TIMESTAMP: &'static str = "timestamp";
    pub const TYPE: &'static str = "type";

    /// Attributes of a pod's address, stamped with the current time in Go's default text form
    /// (what Calico's CNI writes; informational only).
    pub fn pod(node: &str, namespace: &str, pod: &str) -> Attrs {
        let mut m = StrMap::new();
        m.insert(Self::NODE.into(), node.into());
        m.insert(Self::NAMESPACE.into(), namespace.into());
        m.insert(Self::POD.into(), pod.into());
        m.insert(Self::TIMESTAMP.into(), go_timestamp_now());
        Attrs(m)
    }

    pub fn with(mut self, key: &str, value: &str) -> Attrs {
        self.0.insert(key.into(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
}

/// Now as Go's `time.Time.String()` in UTC: `2026-08-01 10:00:05.123456789 +0000 UTC`.
pub fn go_timestamp_now() -> String {
    go_time_string(jiff::Timestamp::now())
}

/// Go's `time.Now().UTC().String()`, the form Calico writes in the `timestamp` attribute:
/// `2025-01-02 15:04:05.123456789 +0000 UTC` with trailing zeros of the fraction dropped.
pub fn go_time_string(t: jiff::Timestamp) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let mut s = dt.strftime("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = dt.subsec_nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// One automatic assignment (Calico's `AutoAssignArgs`).
#[derive(Clone, Debug)]
pub struct AutoAssignRequest {
    /// Handle ID, e.g. `k8s-pod-network.<containerID>`; every address is recorded under it.
    pub handle_id: String,
    /// Secondary attributes stored with each address.
    pub attrs: Attrs,
    /// The node that allocates: blocks are claimed affine to it.
    pub hostname: String,
    /// Number of IPv4 / IPv6 addresses wanted. IPv4 is served first; IPv6 only if IPv4 was complete.
    pub num_v4: usize,
    pub num_v6: usize,
    /// Requested pools (names or CIDRs, in preference order). Empty = every eligible pool, by name.
    /// Requested pools bypass nodeSelector, namespaceSelector and assignmentMode, as in Calico.
    pub v4_pools: Vec<String>,
    pub v6_pools: Vec<String>,
    /// Labels of the pod's namespace, for pools' `namespaceSelector` (None = no labels).
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// Node labels for `nodeSelector`; None = the engine reads the Node (only when some pool's
    /// selector actually references a label).
    pub node_labels: Option<BTreeMap<String, String>>,
    /// What the addresses are for (pools' `allowedUses`). Default Workload.
    pub intended_use: AllowedUse,
    /// Per-request cap on affine blocks (can only tighten IPAMConfig's `maxBlocksPerHost`).
    pub max_blocks_per_host: Option<u32>,
    /// The handle must not exist yet: its creation is the check (no read first), and an existing
    /// handle ends the request with [`IpamError::HandleExists`] before any block is written. A
    /// CNI ADD sets it so that a repeated ADD is caught without reading the handle every time.
    pub new_handle: bool,
}

impl AutoAssignRequest {
    pub fn new(handle_id: &str, hostname: &str) -> Self {
        AutoAssignRequest {
            handle_id: handle_id.into(),
            attrs: Attrs::default().with(Attrs::NODE, hostname),
            hostname: hostname.into(),
            num_v4: 0,
            num_v6: 0,
            v4_pools: vec![],
            v6_pools: vec![],
            namespace_labels: None,
            node_labels: None,
            intended_use: AllowedUse::Workload,
            max_blocks_per_host: None,
            new_handle: false,
        }
    }
}

/// Why a family got fewer addresses than requested. Not an `Err`: like Calico, the caller decides
/// (a CNI ADD releases the handle and fails with [`Shortfall::message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// Every candidate pool is full (after borrowing, if allowed).
    PoolsExhausted { pools: Vec<IpNet> },
    /// strictAffinity is on and the node's blocks are full and no new block could be claimed.
    StrictAffinity,
    /// `maxBlocksPerHost` reached; Calico does not borrow in this case and neither does tortie.
    BlockLimit { limit: u32 },
    /// `autoAllocateBlocks` is false and the node's blocks are full.
    NoAutoAllocate,
}

impl Shortfall {
    /// Calico's message for the same condition.
    pub fn message(&self) -> String {
        match self {
            Shortfall::PoolsExhausted { pools } => {
                let list: Vec<String> = pools.iter().map(|p| p.to_string()).collect();
                format!("No IPs available in pools: [{}]", list.join(" "))
            }
            Shortfall::StrictAffinity => "No more free affine blocks and strict affinity enabled".into(),
            Shortfall::BlockLimit { limit } => format!(
                "Need to allocate an IPAM block but could not - limit of {limit} blocks reached for this node"
            ),
            Shortfall::NoAutoAllocate => {
                "failed to find or claim a block: autoAllocateBlocks is false and the node's blocks are full"
                    .into()
            }
        }
    }
}

/// What one family got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyResult {
    /// Addresses with their block's prefix (Calico returns `10.48.0.5/26`); `.addr()` is the IP.
    pub ips: Vec<IpNet>,
    pub requested: usize,
    /// Set when `ips.len() < requested`.
    pub shortfall: Option<Shortfall>,
}

impl FamilyResult {
    pub fn is_complete(&self) -> bool {
        self.ips.len() >= self.requested
    }

    /// Calico's CNI wording: `Assigned 0 out of 1 requested IPv4 addresses; <reason>`.
    pub fn describe(&self, family: &str) -> String {
        let mut s = format!(
            "Assigned {} out of {} requested {family} addresses",
            self.ips.len(),
            self.requested
        );
        if let Some(r) = &self.shortfall {
            s.push_str("; ");
            s.push_str(&r.message());
        }
        s
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoAssignResult {
    pub v4: FamilyResult,
    pub v6: FamilyResult,
}

impl AutoAssignResult {
    pub fn is_complete(&self) -> bool {
        self.v4.is_complete() && self.v6.is_complete()
    }

    pub fn all_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4.ips.iter().chain(&self.v6.ips).map(|n| n.addr())
    }
}

/// One specific address (`cni.projectcalico.org/ipAddrs`), Calico's `AssignIPArgs`.
#[derive(Clone, Debug)]
pub struct AssignIpRequest {
    pub ip: IpAddr,
    pub handle_id: String,
    pub attrs: Attrs,
    pub hostname: String,
    pub intended_use: AllowedUse,
}

/// Release of one address, optionally guarded (Calico's `ReleaseOptions`): with `handle_id` and/or
/// `sequence_number` set, the release only happens if the address is still held by that handle
/// under that allocation sequence number, so an address that was freed and re-allocated in the
/// meantime is never released by mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseOptions {
    pub ip: IpAddr,
    pub handle_id: Option<String>,
    pub sequence_number: Option<u64>,
}

impl ReleaseOptions {
    pub fn ip(ip: IpAddr) -> Self {
        ReleaseOptions {
            ip,
            handle_id: None,
            sequence_number: None,
        }
    }
}

/// Outcome of [`Ipam::release_ips`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseOutcome {
    /// Addresses released by this call.
    pub released: Vec<IpAddr>,
    /// Addresses that were not allocated (nothing to do).
    pub unallocated: Vec<IpAddr>,
}

/// One allocation as stored in a block, for listings (`ipam show`, `ipam check`, GC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub block: IpNet,
    pub ordinal: usize,
    pub handle_id: Option<String>,
    pub attrs: Attrs,
    /// `sequenceNumberForAllocation[ordinal]`: pass it back in [`ReleaseOptions`] to guard a release.
    pub sequence_number: Option<u64>,
    /// The block's host affinity, if any (an allocation is borrowed when `attrs.node` differs).
    pub block_host: Option<String>,
}

/// Errors of the IPAM engine, each naming the object and field concerned.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{0}")]
    Cidr(#[from] cidr::CidrError),
    #[error("pool {pool}: {reason}")]
    Pool { pool: String, reason: String },
    /// Calico: "no configured Calico pools for node X" and the other pool-selection errors.
    #[error("{0}")]
    NoPools(String),
    #[error("{0}")]
    Selector(#[from] selector::SelectorError),
    #[error("The provided IP address {0} is not in a configured pool")]
    NotInPool(IpAddr),
    #[error("Address already assigned in block {block}: {ip}")]
    AlreadyAssigned { ip: IpAddr, block: IpNet },
    #[error(
        "Block host affinity does not match: {ip} is in block {block} affine to {owner:?}, requested by {host} (strictAffinity is true)"
    )]
    AffinityMismatch {
        ip: IpAddr,
        block: IpNet,
        owner: Option<String>,
        host: String,
    },
    #[error("IPAMBlock {block}: release refused: {reason}")]
    ReleaseConflict { block: IpNet, reason: String },
    #[error("IPAMBlock {block}: {detail}")]
    Block { block: IpNet, detail: String },
    /// A request with `new_handle` found the handle already there (a repeated ADD, or an
    /// interrupted one): nothing was allocated; the caller looks at what the handle holds.
    #[error("IPAMHandle for {0} already exists")]
    HandleExists(String),
    /// A block the pool's layout asks for would overlap an existing block (never created).
    #[error("{0}")]
    BlockOverlap(#[from] layout::Overlap),
    #[error("Max retries hit - excessive concurrent IPAM requests ({what})")]
    Contention { what: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A shared block write (a batch of requests, [`batch`]) failed: every request of the batch
    /// gets this copy of the writer's error.
    #[error("{detail}")]
    BatchWrite { detail: String, may_have_applied: bool },
}

impl IpamError {
    /// The object changed under the write more often than the retries allow (or a 409 came back).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            IpamError::Contention { .. } | IpamError::Store(store::StoreError::Conflict { .. })
        )
    }

    /// False only when the failed write certainly did not land ([`store::StoreError::may_have_applied`]).
    pub fn may_have_applied(&self) -> bool {
        match self {
            IpamError::Store(s) => s.may_have_applied(),
            IpamError::BatchWrite { may_have_applied, .. } => *may_have_applied,
            _ => false,
        }
    }

    /// The same error for another waiter of a shared write (the original holds a client error that
    /// cannot be cloned): conflicts and contention keep their kind, the rest keeps its text and
    /// whether the write may have landed.
    pub fn for_waiter(&self) -> IpamError {
        match self {
            IpamError::Contention { what } => IpamError::Contention { what: what.clone() },
            IpamError::Store(store::StoreError::Conflict { kind, name }) => {
                IpamError::Store(store::StoreError::Conflict {
                    kind,
                    name: name.clone(),
                })
            }
            IpamError::Store(store::StoreError::Invalid { kind, name, detail }) => {
                IpamError::Store(store::StoreError::Invalid {
                    kind,
                    name: name.clone(),
                    detail: detail.clone(),
                })
            }
            e => IpamError::BatchWrite {
                detail: e.to_string(),
                may_have_applied: e.may_have_applied(),
            },
        }
    }

    /// True when the request itself is wrong (retrying will not help).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            IpamError::BadRequest(_)
                | IpamError::Cidr(_)
                | IpamError::Pool { .. }
                | IpamError::NoPools(_)
                | IpamError::Selector(_)
                | IpamError::NotInPool(_)
                | IpamError::AlreadyAssigned { .. }
                | IpamError::AffinityMismatch { .. }
        )
    }
}
