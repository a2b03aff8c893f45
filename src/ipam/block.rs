//! Operations on one IPAMBlock's state, exactly as Calico's library performs them. Pure: no I/O.
//!
//! The block is a bitmap `allocations` (index into `attributes`, null = free), a FIFO `unallocated`
//! (allocation pops the head, release appends to the tail), compact `attributes` (every entry is
//! referenced) and `sequenceNumberForAllocation` (the block's `sequenceNumber` when each ordinal was
//! allocated). Every persisted change goes through [`prepare_write`], which bumps `sequenceNumber`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::cidr;
use crate::api::StrMap;
use crate::api::{AllocationAttribute, IPAMBlockSpec};

/// Handle Calico uses for ordinals reserved on Windows hosts; they do not make a block non-empty.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// A new block as Calico creates it: all ordinals free in ascending order, `sequenceNumber` seeded
/// with the creation time in Unix nanoseconds (so a re-created block never reuses sequence values).
pub fn new_block(
    cidr: &IpNet,
    affinity: Option<String>,
    now_unix_nanos: u64,
    claim_time: Option<String>,
) -> IPAMBlockSpec {
    let n = cidr::size(cidr) as usize;
    IPAMBlockSpec {
        cidr: cidr.to_string(),
        affinity,
        affinity_claim_time: claim_time,
        allocations: vec![None; n],
        unallocated: (0..n).collect(),
        attributes: vec![],
        sequence_number: Some(now_unix_nanos),
        sequence_number_for_allocation: Some(BTreeMap::new()),
        deleted: Some(false),
        strict_affinity: false,
        extra: Default::default(),
    }
}

/// Parsed CIDR of a block.
pub fn block_cidr(b: &IPAMBlockSpec) -> Result<IpNet, cidr::CidrError> {
    cidr::parse_masked(&b.cidr)
}

pub fn sequence_number(b: &IPAMBlockSpec) -> u64 {
    b.sequence_number.unwrap_or(0)
}

/// The `sequenceNumber` the block will have once written ([`prepare_write`]).
pub fn sequence_after_write(b: &IPAMBlockSpec) -> u64 {
    sequence_number(b) + 1
}

/// Call once before each write of a changed block: the write counter goes up by one.
pub fn prepare_write(b: &mut IPAMBlockSpec) {
    b.sequence_number = Some(sequence_after_write(b));
    b.strict_affinity = false;
}

pub fn free_count(b: &IPAMBlockSpec) -> usize {
    b.unallocated.len()
}

pub fn allocated_count(b: &IPAMBlockSpec) -> usize {
    b.allocations.iter().filter(|a| a.is_some()).count()
}

fn attr_matches(a: &AllocationAttribute, handle: Option<&str>, secondary: &StrMap) -> bool {
    a.handle_id.as_deref() == handle
        && a.secondary
            .as_ref()
            .map_or(secondary.is_empty(), |s| s == secondary)
        && a.released_at.is_none()
        && a.alternate_owner_attrs.is_none()
        && a.extra.is_empty()
}

/// Calico's `findOrAddAttribute`: reuse an identical entry, else append one.
fn find_or_add_attribute(b: &mut IPAMBlockSpec, handle: Option<&str>, secondary: &StrMap) -> usize {
    if let Some(i) = b
        .attributes
        .iter()
        .position(|a| attr_matches(a, handle, secondary))
    {
        return i;
    }
    b.attributes.push(AllocationAttribute {
        handle_id: handle.map(str::to_string),
        secondary: if secondary.is_empty() {
            None
        } else {
            Some(secondary.clone())
        },
        ..Default::default()
    });
    b.attributes.len() - 1
}

fn record_sequence(b: &mut IPAMBlockSpec, ordinal: usize) {
    let seq = sequence_number(b);
    b.sequence_number_for_allocation
        .get_or_insert_with(BTreeMap::new)
        .insert(ordinal.to_string(), seq);
}

/// Takes up to `n` ordinals from the head of `unallocated` (skipping those `skip` rejects, which stay
/// in place), all sharing one attributes entry. Returns the ordinals taken, in order.
pub fn allocate(
    b: &mut IPAMBlockSpec,
    n: usize,
    handle: Option<&str>,
    secondary: &StrMap,
    skip: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut taken = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(b.unallocated.len());
    for &o in &b.unallocated {
        if taken.len() < n && !skip(o) && o < b.allocations.len() {
            taken.push(o);
        } else {
            rest.push(o);
        }
    }
    if taken.is_empty() {
        return taken;
    }
    b.unallocated = rest;
    let idx = find_or_add_attribute(b, handle, secondary);
    for &o in &taken {
        b.allocations[o] = Some(idx);
        record_sequence(b, o);
    }
    taken
}

/// Marks one specific ordinal allocated (Calico's `assign`), wherever it sits in `unallocated`.
pub fn assign(
    b: &mut IPAMBlockSpec,
    ordinal: usize,
    handle: Option<&str>,
    secondary: &StrMap,
) -> Result<(), AssignError> {
    if ordinal >= b.allocations.len() {
        return Err(AssignError::OutOfRange(ordinal));
    }
    if b.allocations[ordinal].is_some() {
        return Err(AssignError::AlreadyAssigned(ordinal));
    }
    b.unallocated.retain(|&o| o != ordinal);
    let idx = find_or_add_attribute(b, handle, secondary);
    b.allocations[ordinal] = Some(idx);
    record_sequence(b, ordinal);
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("ordinal {0} is outside the block")]
    OutOfRange(usize),
    #[error("ordinal {0} is already assigned")]
    AlreadyAssigned(usize),
}

/// The attribute entry of an allocated ordinal.
pub fn attribute_of(b: &IPAMBlockSpec, ordinal: usize) -> Option<&AllocationAttribute> {
    b.allocations
        .get(ordinal)
        .copied()
        .flatten()
        .and_then(|i| b.attributes.get(i))
}

pub fn handle_of(b: &IPAMBlockSpec, ordinal: usize) -> Option<&str> {
    attribute_of(b, ordinal).and_then(|a| a.handle_id.as_deref())
}

pub fn allocation_sequence(b: &IPAMBlockSpec, ordinal: usize) -> Option<u64> {
    b.sequence_number_for_allocation
        .as_ref()?
        .get(&ordinal.to_string())
        .copied()
}

/// Frees ordinals: allocations nulled, ordinals appended to `unallocated` in the order given,
/// sequence entries dropped, attributes compacted and renumbered. Ordinals that are not allocated
/// are ignored and returned as the second list.
pub fn release(b: &mut IPAMBlockSpec, ordinals: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut done = Vec::new();
    let mut not_allocated = Vec::new();
    let mut seen = BTreeSet::new();
    for &o in ordinals {
        if !seen.insert(o) {
            continue;
        }
        match b.allocations.get(o).copied().flatten() {
            Some(_) => {
                b.allocations[o] = None;
                b.unallocated.push(o);
                if let Some(m) = b.sequence_number_for_allocation.as_mut() {
                    m.remove(&o.to_string());
                }
                done.push(o);
            }
            None => not_allocated.push(o),
        }
    }
    compact_attributes(b);
    (done, not_allocated)
}

/// Drops attributes no allocation references and renumbers the rest, keeping their order.
fn compact_attributes(b: &mut IPAMBlockSpec) {
    let mut used = vec![false; b.attributes.len()];
    for i in b.allocations.iter().flatten() {
        if let Some(u) = used.get_mut(*i) {
            *u = true;
        }
    }
    if used.iter().all(|u| *u) {
        return;
    }
    let mut remap = vec![usize::MAX; used.len()];
    let mut kept = Vec::new();
    for (i, attr) in std::mem::take(&mut b.attributes).into_iter().enumerate() {
        if used[i] {
            remap[i] = kept.len();
            kept.push(attr);
        }
    }
    b.attributes = kept;
    for a in b.allocations.iter_mut().flatten() {
        if let Some(&r) = remap.get(*a) {
            *a = r;
        }
    }
}

/// One guarded release request inside a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedRelease {
    pub ordinal: usize,
    pub handle_id: Option<String>,
    pub sequence_number: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("bad handle: ordinal {ordinal} is held by {actual:?}, not {expected:?}")]
    BadHandle {
        ordinal: usize,
        expected: String,
        actual: Option<String>,
    },
    #[error("bad sequence number: ordinal {ordinal} was allocated at {actual:?}, not {expected}")]
    BadSequence {
        ordinal: usize,
        expected: u64,
        actual: Option<u64>,
    },
}

/// Calico's `ReleaseIPs` on one block: all-or-nothing. Any guard that fails (the address was
/// re-allocated to someone else meanwhile) refuses the whole block release and changes nothing.
/// Returns (released, not allocated).
pub fn release_guarded(
    b: &mut IPAMBlockSpec,
    reqs: &[GuardedRelease],
) -> Result<(Vec<usize>, Vec<usize>), ReleaseError> {
    let mut ords = Vec::new();
    let mut not_allocated = Vec::new();
    for r in reqs {
        if b.allocations.get(r.ordinal).copied().flatten().is_none() {
            not_allocated.push(r.ordinal);
            continue;
        }
        if let Some(expected) = &r.handle_id {
            let actual = handle_of(b, r.ordinal);
            if actual.map(super::names::sanitize_handle_id)
                != Some(super::names::sanitize_handle_id(expected))
            {
                return Err(ReleaseError::BadHandle {
                    ordinal: r.ordinal,
                    expected: expected.clone(),
                    actual: actual.map(str::to_string),
                });
            }
        }
        if let Some(expected) = r.sequence_number {
            let actual = allocation_sequence(b, r.ordinal);
            if actual != Some(expected) {
                return Err(ReleaseError::BadSequence {
                    ordinal: r.ordinal,
                    expected,
                    actual,
                });
            }
        }
        ords.push(r.ordinal);
    }
    let (done, _) = release(b, &ords);
    Ok((done, not_allocated))
}

/// Ordinals held by `handle` (compared sanitized, as Calico does).
pub fn ordinals_of_handle(b: &IPAMBlockSpec, handle: &str) -> Vec<usize> {
    let want = super::names::sanitize_handle_id(handle);
    b.allocations
        .iter()
        .enumerate()
        .filter_map(|(o, a)| {
            let attr = b.attributes.get((*a)?)?;
            (attr.handle_id.as_deref().map(super::names::sanitize_handle_id) == Some(want)).then_some(o)
        })
        .collect()
}

/// Releases every ordinal of `handle`; optionally only those allocated at `sequence`.
pub fn release_handle(b: &mut IPAMBlockSpec, handle: &str, sequence: Option<u64>) -> Vec<usize> {
    let ords: Vec<usize> = ordinals_of_handle(b, handle)
        .into_iter()
        .filter(|&o| sequence.is_none_or(|s| allocation_sequence(b, o) == Some(s)))
        .collect();
    release(b, &ords).0
}

/// Allocation-attribute key in which the GC records when it first saw the allocation leaked
/// (RFC 3339). Kept in the block's spec so that the grace period survives an operator restart or a
/// change of leader, and so that Calico's writes (which keep `secondary` whole) keep it too; an
/// ordinal re-allocated gets a new attribute entry without it.
pub const LEAK_SEEN_KEY: &str = "tortie.io/leak-seen";

/// One allocation as the GC saw it: acted on only while the ordinal still holds exactly this
/// handle at this `sequenceNumberForAllocation` (an address re-allocated meanwhile is left alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocRef {
    pub ordinal: usize,
    pub handle_id: String,
    pub sequence_number: Option<u64>,
}

/// What one GC write does to one block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcEdit {
    /// Allocations to free.
    pub free: Vec<AllocRef>,
    /// Allocations to stamp with [`LEAK_SEEN_KEY`] = the string (an existing stamp is kept).
    pub mark: Vec<(AllocRef, String)>,
    /// Allocations whose stamp goes (they turned out valid).
    pub unmark: Vec<AllocRef>,
}

impl GcEdit {
    pub fn is_empty(&self) -> bool {
        self.free.is_empty() && self.mark.is_empty() && self.unmark.is_empty()
    }
}

fn still_holds(b: &IPAMBlockSpec, r: &AllocRef) -> bool {
    handle_of(b, r.ordinal) == Some(r.handle_id.as_str())
        && allocation_sequence(b, r.ordinal) == r.sequence_number
}

/// The GC's edit of one block, skipping every allocation that no longer matches (unlike
/// [`release_guarded`], which refuses the whole block). Returns the ordinals freed and whether the
/// block changed at all (only then is it written).
pub fn apply_gc_edit(b: &mut IPAMBlockSpec, e: &GcEdit) -> (Vec<usize>, bool) {
    let mut changed = false;
    let mut stamp = |b: &mut IPAMBlockSpec, r: &AllocRef, value: Option<&str>| {
        if !still_holds(b, r) {
            return;
        }
        let Some(i) = b.allocations[r.ordinal] else { return };
        let sec = b.attributes[i].secondary.get_or_insert_with(Default::default);
        match value {
            Some(v) if !sec.contains_key(LEAK_SEEN_KEY) => {
                sec.insert(LEAK_SEEN_KEY.into(), v.into());
                changed = true;
            }
            None if sec.remove(LEAK_SEEN_KEY).is_some() => changed = true,
            _ => {}
        }
    };
    for (r, v) in &e.mark {
        stamp(b, r, Some(v));
    }
    for r in &e.unmark {
        stamp(b, r, None);
    }
    let ords: Vec<usize> = e
        .free
        .iter()
        .filter(|r| still_holds(b, r))
        .map(|r| r.ordinal)
        .collect();
    let (freed, _) = release(b, &ords);
    changed |= !freed.is_empty();
    (freed, changed)
}

/// Calico's emptiness: every allocation is free or Windows-reserved.
pub fn is_empty(b: &IPAMBlockSpec) -> bool {
    (0..b.allocations.len()).all(|o| match b.allocations[o] {
        None => true,
        Some(_) => handle_of(b, o) == Some(WINDOWS_RESERVED_HANDLE),
    })
}

/// Address count per handle in this block.
pub fn handle_counts(b: &IPAMBlockSpec) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for a in b.allocations.iter().flatten() {
        if let Some(h) = b.attributes.get(*a).and_then(|a| a.handle_id.as_deref()) {
            *m.entry(h.to_string()).or_default() += 1;
        }
    }
    m
}

/// Allocated ordinals with their address.
pub fn allocated(b: &IPAMBlockSpec, net: &IpNet) -> Vec<(usize, IpAddr)> {
    b.allocations
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_some())
        .map(|(o, _)| (o, cidr::address_of(net, o)))
        .collect()
}

/// One broken invariant of a block (what `calicoctl ipam check` calls an invalid IPAMBlock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockProblem {
    BadCidr(String),
    WrongLength {
        expected: usize,
        actual: usize,
    },
    DanglingAllocation {
        ordinal: usize,
        attribute: usize,
    },
    UnreferencedAttribute(usize),
    UnallocatedOutOfRange(usize),
    UnallocatedTwice(usize),
    UnallocatedButAllocated(usize),
    CountMismatch {
        free: usize,
        allocated: usize,
        size: usize,
    },
}

impl std::fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockProblem::BadCidr(s) => write!(f, "spec.cidr {s:?} is not a masked CIDR"),
            BlockProblem::WrongLength { expected, actual } => {
                write!(
                    f,
                    "spec.allocations has {actual} entries, the block size is {expected}"
                )
            }
            BlockProblem::DanglingAllocation { ordinal, attribute } => write!(
                f,
                "spec.allocations[{ordinal}] points at attributes[{attribute}], which does not exist"
            ),
            BlockProblem::UnreferencedAttribute(i) => {
                write!(f, "spec.attributes[{i}] is referenced by no allocation")
            }
            BlockProblem::UnallocatedOutOfRange(o) => {
                write!(f, "spec.unallocated holds {o}, outside the block")
            }
            BlockProblem::UnallocatedTwice(o) => write!(f, "spec.unallocated holds {o} twice"),
            BlockProblem::UnallocatedButAllocated(o) => {
                write!(f, "ordinal {o} is both allocated and in spec.unallocated")
            }
            BlockProblem::CountMismatch {
                free,
                allocated,
                size,
            } => write!(f, "{free} free + {allocated} allocated != block size {size}"),
        }
    }
}

/// The block rules of `calicoctl ipam check` (spec §1.2 invariants 1–5).
pub fn check(b: &IPAMBlockSpec) -> Vec<BlockProblem> {
    let mut p = Vec::new();
    let net = match block_cidr(b) {
        Ok(n) => n,
        Err(_) => return vec![BlockProblem::BadCidr(b.cidr.clone())],
    };
    let size = cidr::size(&net) as usize;
    if b.allocations.len() != size {
        p.push(BlockProblem::WrongLength {
            expected: size,
            actual: b.allocations.len(),
        });
    }
    let mut referenced = vec![false; b.attributes.len()];
    for (o, a) in b.allocations.iter().enumerate() {
        if let Some(i) = a {
            match referenced.get_mut(*i) {
                Some(r) => *r = true,
                None => p.push(BlockProblem::DanglingAllocation {
                    ordinal: o,
                    attribute: *i,
                }),
            }
        }
    }
    for (i, r) in referenced.iter().enumerate() {
        if !r {
            p.push(BlockProblem::UnreferencedAttribute(i));
        }
    }
    let mut seen = BTreeSet::new();
    for &o in &b.unallocated {
        if o >= size {
            p.push(BlockProblem::UnallocatedOutOfRange(o));
        } else if !seen.insert(o) {
            p.push(BlockProblem::UnallocatedTwice(o));
        } else if b.allocations.get(o).copied().flatten().is_some() {
            p.push(BlockProblem::UnallocatedButAllocated(o));
        }
    }
    let alloc = allocated_count(b);
    if b.unallocated.len() + alloc != size {
        p.push(BlockProblem::CountMismatch {
            free: b.unallocated.len(),
            allocated: alloc,
            size,
        });
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pod: &str) -> StrMap {
        [
            ("pod".to_string(), pod.to_string()),
            ("node".into(), "node-a".into()),
        ]
        .into()
    }

    fn fresh() -> IPAMBlockSpec {
        new_block(
            &"10.48.0.0/26".parse().unwrap(),
            Some("host:node-a".into()),
            1_000,
            None,
        )
    }

    #[test]
    fn new_block_is_calico_shaped() {
        let b = fresh();
        assert_eq!(b.allocations.len(), 64);
        assert_eq!(b.unallocated, (0..64).collect::<Vec<_>>());
        assert_eq!(b.sequence_number, Some(1_000));
        assert!(!b.strict_affinity);
        let json = serde_json::to_value(&b).unwrap();
        assert!(json["allocations"][0].is_null(), "nulls are explicit");
        assert!(check(&b).is_empty());
        assert!(is_empty(&b));
    }

    #[test]
    fn allocation_is_fifo_and_shares_attributes() {
        let mut b = fresh();
        assert_eq!(
            allocate(&mut b, 2, Some("h1"), &attrs("p1"), |_| false),
            vec![0, 1]
        );
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.allocations[0], Some(0));
        assert_eq!(b.allocations[1], Some(0));
        prepare_write(&mut b);
        assert_eq!(
            allocate(&mut b, 2, Some("h2"), &attrs("p2"), |_| false),
            vec![2, 3]
        );
        assert_eq!(allocation_sequence(&b, 0), Some(1_000));
        assert_eq!(allocation_sequence(&b, 2), Some(1_001));
        // Scenario 49: release 1 → next gets 4; 1 comes back only after 4..63.
        let (done, _) = release(&mut b, &[1]);
        assert_eq!(done, vec![1]);
        assert_eq!(allocate(&mut b, 1, Some("h3"), &attrs("p3"), |_| false), vec![4]);
        assert_eq!(*b.unallocated.last().unwrap(), 1);
        assert!(check(&b).is_empty(), "{:?}", check(&b));
    }

    #[test]
    fn release_compacts_attributes() {
        let mut b = fresh();
        allocate(&mut b, 1, Some("h1"), &attrs("p1"), |_| false);
        allocate(&mut b, 1, Some("h2"), &attrs("p2"), |_| false);
        allocate(&mut b, 1, Some("h3"), &attrs("p3"), |_| false);
        assert_eq!(release_handle(&mut b, "h2", None), vec![1]);
        assert_eq!(b.attributes.len(), 2);
        assert_eq!(handle_of(&b, 2), Some("h3"));
        assert_eq!(b.allocations[2], Some(1));
        assert!(check(&b).is_empty());
    }

    #[test]
    fn guarded_release_is_all_or_nothing() {
        let mut b = fresh();
        allocate(&mut b, 1, Some("h1"), &attrs("p1"), |_| false);
        prepare_write(&mut b);
        allocate(&mut b, 1, Some("h2"), &attrs("p2"), |_| false);
        let before = b.clone();
        let reqs = [
            GuardedRelease {
                ordinal: 0,
                handle_id: Some("h1".into()),
                sequence_number: Some(1_000),
            },
            GuardedRelease {
                ordinal: 1,
                handle_id: Some("h2".into()),
                sequence_number: Some(1_000),
            },
        ];
        assert!(matches!(
            release_guarded(&mut b, &reqs),
            Err(ReleaseError::BadSequence { ordinal: 1, .. })
        ));
        assert_eq!(b, before);
        let reqs = [GuardedRelease {
            ordinal: 0,
            handle_id: Some("other".into()),
            sequence_number: None,
        }];
        assert!(matches!(
            release_guarded(&mut b, &reqs),
            Err(ReleaseError::BadHandle { .. })
        ));
        let reqs = [GuardedRelease {
            ordinal: 1,
            handle_id: Some("h2".into()),
            sequence_number: Some(1_001),
        }];
        assert_eq!(release_guarded(&mut b, &reqs).unwrap(), (vec![1], vec![]));
    }

    #[test]
    fn gc_edit_skips_what_changed_and_keeps_the_first_stamp() {
        let mut b = fresh();
        let a = allocate(&mut b, 2, Some("h1"), &attrs("p1"), |_| false);
        let c = allocate(&mut b, 1, Some("h2"), &attrs("p2"), |_| false);
        let r = |o: usize, h: &str, b: &IPAMBlockSpec| AllocRef {
            ordinal: o,
            handle_id: h.into(),
            sequence_number: allocation_sequence(b, o),
        };
        // Stamp h1's entry (shared by its two ordinals); a stale guard on h2 changes nothing.
        let mut stale = r(c[0], "h2", &b);
        stale.sequence_number = Some(12345);
        let e = GcEdit {
            mark: vec![(r(a[0], "h1", &b), "t1".into()), (stale.clone(), "t1".into())],
            ..Default::default()
        };
        let (freed, changed) = apply_gc_edit(&mut b, &e);
        assert!(freed.is_empty() && changed);
        assert_eq!(
            &attribute_of(&b, a[1]).unwrap().secondary.as_ref().unwrap()[LEAK_SEEN_KEY],
            "t1"
        );
        assert!(
            !attribute_of(&b, c[0])
                .unwrap()
                .secondary
                .as_ref()
                .unwrap()
                .contains_key(LEAK_SEEN_KEY)
        );
        // A second stamp keeps the first time: nothing to write.
        let e2 = GcEdit {
            mark: vec![(r(a[0], "h1", &b), "t2".into())],
            ..Default::default()
        };
        assert_eq!(apply_gc_edit(&mut b, &e2), (vec![], false));
        // Free h1 (both) and a wrong-handle guard for h2: only h1's go; unmark is a no-op for h2.
        let e3 = GcEdit {
            free: vec![r(a[0], "h1", &b), r(a[1], "h1", &b), r(c[0], "other", &b)],
            unmark: vec![r(c[0], "h2", &b)],
            ..Default::default()
        };
        let (freed, changed) = apply_gc_edit(&mut b, &e3);
        assert_eq!((freed, changed), (a.clone(), true));
        assert_eq!(allocated_count(&b), 1);
        assert!(check(&b).is_empty());
        // A re-allocated ordinal (new sequence) is not freed by the old guard.
        let old = r(a[0], "h1", &b);
        let again = allocate(&mut b, 64, Some("h1"), &attrs("p3"), |o| o != a[0]);
        assert_eq!(again, vec![a[0]]);
        let mut old = old;
        old.sequence_number = Some(1);
        let e4 = GcEdit {
            free: vec![old],
            ..Default::default()
        };
        assert_eq!(apply_gc_edit(&mut b, &e4), (vec![], false));
    }

    #[test]
    fn assign_specific_and_twice() {
        let mut b = fresh();
        assign(&mut b, 10, Some("h"), &attrs("p")).unwrap();
        assert!(!b.unallocated.contains(&10));
        assert_eq!(
            assign(&mut b, 10, Some("h2"), &attrs("q")),
            Err(AssignError::AlreadyAssigned(10))
        );
        assert_eq!(
            assign(&mut b, 64, Some("h2"), &attrs("q")),
            Err(AssignError::OutOfRange(64))
        );
        assert!(check(&b).is_empty());
    }

    #[test]
    fn windows_reserved_counts_as_empty() {
        let mut b = fresh();
        allocate(&mut b, 3, Some(WINDOWS_RESERVED_HANDLE), &StrMap::new(), |_| {
            false
        });
        assert!(is_empty(&b));
        allocate(&mut b, 1, Some("h"), &attrs("p"), |_| false);
        assert!(!is_empty(&b));
    }

    #[test]
    fn checker_finds_broken_blocks() {
        let mut b = fresh();
        allocate(&mut b, 1, Some("h"), &attrs("p"), |_| false);
        b.unallocated.push(0);
        b.attributes.push(AllocationAttribute::default());
        b.allocations[5] = Some(9);
        let p = check(&b);
        assert!(p.contains(&BlockProblem::UnallocatedButAllocated(0)));
        assert!(p.contains(&BlockProblem::UnreferencedAttribute(1)));
        assert!(p.contains(&BlockProblem::DanglingAllocation {
            ordinal: 5,
            attribute: 9
        }));
    }

    #[test]
    fn calico_written_block_is_valid_and_continues() {
        let text = include_str!("../../tests/fixtures/calico/calico332-ipamblock.yaml");
        let obj: crate::api::Block = serde_saphyr::from_str(text).unwrap();
        let mut b = obj.spec;
        assert!(check(&b).is_empty(), "{:?}", check(&b));
        prepare_write(&mut b);
        assert_eq!(allocate(&mut b, 1, Some("h"), &attrs("p"), |_| false), vec![2]);
        assert_eq!(allocation_sequence(&b, 2), Some(1754042400000000003));
        assert!(b.extra.contains_key("futureField"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize, u8),
        Assign(usize, u8),
        ReleaseHandle(u8),
        ReleaseOrdinals(Vec<usize>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..10, 0u8..6).prop_map(|(n, h)| Op::Alloc(n, h)),
            (0usize..70, 0u8..6).prop_map(|(o, h)| Op::Assign(o, h)),
            (0u8..6).prop_map(Op::ReleaseHandle),
            proptest::collection::vec(0usize..70, 0..6).prop_map(Op::ReleaseOrdinals),
        ]
    }

    proptest! {
        /// Any sequence of operations keeps the block valid, never hands out an allocated ordinal,
        /// and a release returns exactly what was held.
        #[test]
        fn invariants_hold_after_any_ops(ops in proptest::collection::vec(op(), 1..60)) {
            let mut b = fresh();
            // Model: ordinal -> handle.
            let mut model: BTreeMap<usize, String> = BTreeMap::new();
            let mut last_seq = sequence_number(&b);
            for op in ops {
                match op {
                    Op::Alloc(n, h) => {
                        let handle = format!("h{h}");
                        let got = allocate(&mut b, n, Some(&handle), &attrs(&handle), |_| false);
                        prop_assert_eq!(got.len(), n.min(64 - model.len()));
                        for o in got {
                            prop_assert!(model.insert(o, handle.clone()).is_none(), "ordinal {} handed out twice", o);
                        }
                    }
                    Op::Assign(o, h) => {
                        let handle = format!("h{h}");
                        match assign(&mut b, o, Some(&handle), &attrs(&handle)) {
                            Ok(()) => prop_assert!(model.insert(o, handle).is_none()),
                            Err(AssignError::AlreadyAssigned(x)) => prop_assert!(model.contains_key(&x)),
                            Err(AssignError::OutOfRange(x)) => prop_assert!(x >= 64),
                        }
                    }
                    Op::ReleaseHandle(h) => {
                        let handle = format!("h{h}");
                        let mut got = release_handle(&mut b, &handle, None);
                        got.sort();
                        let want: Vec<usize> = model.iter().filter(|(_, v)| **v == handle).map(|(k, _)| *k).collect();
                        prop_assert_eq!(&got, &want);
                        for o in got { model.remove(&o); }
                    }
                    Op::ReleaseOrdinals(os) => {
                        let (done, not) = release(&mut b, &os);
                        for o in &done { prop_assert!(model.remove(o).is_some()); }
                        for o in &not { prop_assert!(!model.contains_key(o)); }
                    }
                }
                prepare_write(&mut b);
                prop_assert!(sequence_number(&b) > last_seq);
                last_seq = sequence_number(&b);
                prop_assert_eq!(check(&b), vec![]);
                prop_assert_eq!(allocated_count(&b), model.len());
                for (o, h) in &model {
                    prop_assert_eq!(handle_of(&b, *o), Some(h.as_str()));
                }
            }
        }
    }
}
