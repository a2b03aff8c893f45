//! Batched allocation on one node: which waiting requests share one block write, when the write
//! goes, and what each request gets from the block as read. Pure: the engine
//! ([`super::engine`]) queues the requests, writes the block in its compare-and-swap loop and
//! calls [`assign`] again on a fresh read after a 409, so a batch is all-or-nothing per write.
//!
//! Why: each ADD writes its own IPAMHandle (one per pod, as Calico), but the block write can be
//! shared. Requests that arrive while a block write is in flight, or that are still writing their
//! handle, wait for the next write instead of queuing one write each.

use std::time::{Duration, Instant};

use crate::api::{IPAMBlockSpec, StrMap};

use super::block as blk;

/// How long a batch waits for requests that are known to be on their way (they chose the block and
/// are writing their handle): a handle write slower than this is an outage, not a batch.
pub const INFLIGHT_WAIT: Duration = Duration::from_secs(1);
/// How long a batch waits for requests that the recent load makes likely (a container runtime
/// starting the next plugin process), when fewer are waiting than recently ran at once.
pub const LINGER: Duration = Duration::from_millis(15);
/// The window of [`Load`]'s recent peak.
pub const PEAK_WINDOW: Duration = Duration::from_secs(2);

/// At most this many free addresses make a node claim its next block ahead
/// ([`claim_ahead_watermark`]).
pub const MAX_AHEAD: usize = 32;

/// The low watermark of a node's free addresses under which its agent claims the next block in
/// the background ([`super::allocator::claim_ahead`]): three times the recent peak of requests at
/// once (those running now take one each; a claim takes about as long as two block writes, and
/// each of those serves that many again), at least 1, at most [`MAX_AHEAD`] (a node keeps at most
/// that many addresses spare beyond what it uses).
pub fn claim_ahead_watermark(expected: usize) -> usize {
    expected.saturating_mul(3).clamp(1, MAX_AHEAD)
}

/// One request waiting for a block write.
#[derive(Clone, Debug)]
pub struct Want<'a> {
    pub handle: &'a str,
    /// Addresses wanted from this block.
    pub n: usize,
    /// Only from a block affine to this host (`None`: borrowing).
    pub owner: Option<&'a str>,
    pub attrs: &'a StrMap,
}

/// What one request got from one block write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// These ordinals (at least one, at most `n`).
    Granted(Vec<usize>),
    /// The block has no free address left for this request.
    Full,
    /// The block is gone, or affine to another host than the request's owner.
    Gone,
}

impl Grant {
    pub fn ordinals(&self) -> &[usize] {
        match self {
            Grant::Granted(o) => o,
            _ => &[],
        }
    }
}

/// Assigns the whole batch on the block as read, in queue order: each request gets up to its `n`
/// free ordinals. Returns one grant per request; the block is changed only when some grant is
/// [`Grant::Granted`] (then it must be written, with every grant, or none of them holds).
/// Ordinals for which `reserved` holds stay free and in place (IPReservations, as Calico).
pub fn assign(
    block: Option<&mut IPAMBlockSpec>,
    wants: &[Want],
    reserved: &dyn Fn(usize) -> bool,
) -> Vec<Grant> {
    let Some(b) = block else {
        return vec![Grant::Gone; wants.len()];
    };
    wants
        .iter()
        .map(|w| {
            if let Some(h) = w.owner
                && b.host() != Some(h)
            {
                return Grant::Gone;
            }
            let ords = blk::allocate(b, w.n, Some(w.handle), w.attrs, reserved);
            if ords.is_empty() {
                Grant::Full
            } else {
                Grant::Granted(ords)
            }
        })
        .collect()
}

/// A block's queue as the writer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueView {
    /// Requests queued for the next write.
    pub queued: usize,
    /// Requests that chose the block and are still writing their handle.
    pub inflight: usize,
    /// How many requests ran at once on this node lately ([`Load::expected`]).
    pub expected: usize,
    /// How long the oldest queued request has waited.
    pub oldest_wait: Duration,
}

/// The writer's next move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing queued: the writer stops (the next request starts one).
    Stop,
    /// Write every queued request now.
    Write,
    /// Wait for more (at most this long, or until the queue changes).
    Wait(Duration),
}

/// Write when nothing more is known to be coming: wait for requests writing their handle (up to
/// [`INFLIGHT_WAIT`]), and, when fewer are queued than recently ran at once, for up to [`LINGER`].
/// A node serving one request at a time never waits.
pub fn next(v: &QueueView) -> Next {
    if v.queued == 0 {
        return Next::Stop;
    }
    if v.inflight > 0 && v.oldest_wait < INFLIGHT_WAIT {
        return Next::Wait(INFLIGHT_WAIT - v.oldest_wait);
    }
    if v.queued + v.inflight < v.expected && v.oldest_wait < LINGER {
        return Next::Wait(LINGER - v.oldest_wait);
    }
    Next::Write
}

/// Requests running at once on one node: the current count and the peak of the last
/// [`PEAK_WINDOW`] (two buckets, so the peak is never older than two windows).
#[derive(Clone, Debug)]
pub struct Load {
    pub active: usize,
    peak: usize,
    prev_peak: usize,
    since: Instant,
}

impl Load {
    pub fn new(now: Instant) -> Load {
        Load {
            active: 0,
            peak: 0,
            prev_peak: 0,
            since: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= PEAK_WINDOW * 2 {
            self.prev_peak = 0;
            self.peak = self.active;
            self.since = now;
        } else if age >= PEAK_WINDOW {
            self.prev_peak = self.peak;
            self.peak = self.active;
            self.since = now;
        }
    }

    pub fn enter(&mut self, now: Instant) {
        self.roll(now);
        self.active += 1;
        self.peak = self.peak.max(self.active);
    }

    pub fn exit(&mut self, now: Instant) {
        self.roll(now);
        self.active = self.active.saturating_sub(1);
    }

    /// How many requests a batch may expect to gather: the recent peak.
    pub fn expected(&mut self, now: Instant) -> usize {
        self.roll(now);
        self.peak.max(self.prev_peak).max(self.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::block::{new_block, ordinals_of_handle};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn block(host: &str, size: u8) -> IPAMBlockSpec {
        new_block(
            &format!("10.0.0.0/{}", 32 - size).parse().unwrap(),
            Some(format!("host:{host}")),
            1,
            None,
        )
    }

    #[test]
    fn claim_ahead_watermark_follows_the_recent_peak_within_bounds() {
        assert_eq!(
            claim_ahead_watermark(0),
            1,
            "a node with no load claims when none is free"
        );
        assert_eq!(claim_ahead_watermark(1), 3);
        assert_eq!(claim_ahead_watermark(8), 24);
        assert_eq!(claim_ahead_watermark(11), MAX_AHEAD);
        assert_eq!(claim_ahead_watermark(usize::MAX), MAX_AHEAD);
        // 100 addresses at 8 at once fit two /26 blocks without a third claimed ahead.
        assert!(2 * 64 - 100 >= claim_ahead_watermark(8));
    }

    fn want<'a>(h: &'a str, n: usize, owner: Option<&'a str>, a: &'a StrMap) -> Want<'a> {
        Want {
            handle: h,
            n,
            owner,
            attrs: a,
        }
    }

    #[test]
    fn a_batch_shares_the_block_in_queue_order_and_overflow_is_full() {
        let a = StrMap::new();
        let mut b = block("n1", 2); // 4 addresses
        let wants = [
            want("h1", 1, Some("n1"), &a),
            want("h2", 2, Some("n1"), &a),
            want("h3", 3, Some("n1"), &a),
            want("h4", 1, Some("n1"), &a),
        ];
        let g = assign(Some(&mut b), &wants, &|_| false);
        assert_eq!(g[0], Grant::Granted(vec![0]));
        assert_eq!(g[1], Grant::Granted(vec![1, 2]));
        // A request takes what is left (a partial grant), the next one finds the block full.
        assert_eq!(g[2], Grant::Granted(vec![3]));
        assert_eq!(g[3], Grant::Full);
        assert_eq!(ordinals_of_handle(&b, "h2"), vec![1, 2]);
        assert!(b.unallocated.is_empty());
    }

    #[test]
    fn reserved_ordinals_are_never_granted_and_stay_free() {
        let a = StrMap::new();
        let mut b = block("n1", 2); // 4 addresses, ordinals 1 and 2 reserved
        let wants = [want("h1", 1, Some("n1"), &a), want("h2", 3, Some("n1"), &a)];
        let g = assign(Some(&mut b), &wants, &|o| o == 1 || o == 2);
        assert_eq!(g[0], Grant::Granted(vec![0]));
        assert_eq!(g[1], Grant::Granted(vec![3]));
        let mut free = b.unallocated.clone();
        free.sort();
        assert_eq!(free, vec![1, 2]);
    }

    #[test]
    fn owner_checked_per_request_and_a_missing_block_is_gone() {
        let a = StrMap::new();
        let mut b = block("n1", 3);
        let g = assign(
            Some(&mut b),
            &[
                want("h1", 1, Some("n2"), &a),
                want("h2", 1, None, &a),
                want("h3", 1, Some("n1"), &a),
            ],
            &|_| false,
        );
        assert_eq!(g[0], Grant::Gone);
        assert_eq!(g[1], Grant::Granted(vec![0]));
        assert_eq!(g[2], Grant::Granted(vec![1]));
        assert_eq!(
            assign(None, &[want("h", 1, None, &a)], &|_| false),
            vec![Grant::Gone]
        );
    }

    #[test]
    fn writer_waits_for_handles_in_flight_then_lingers_only_under_recent_load() {
        let v = |queued, inflight, expected, ms| QueueView {
            queued,
            inflight,
            expected,
            oldest_wait: Duration::from_millis(ms),
        };
        assert_eq!(next(&v(0, 3, 8, 0)), Next::Stop);
        // A lone request on a quiet node goes at once.
        assert_eq!(next(&v(1, 0, 1, 0)), Next::Write);
        assert_eq!(next(&v(1, 0, 0, 0)), Next::Write);
        // Requests writing their handle are waited for ...
        assert_eq!(
            next(&v(2, 1, 1, 5)),
            Next::Wait(INFLIGHT_WAIT - Duration::from_millis(5))
        );
        // ... but not for ever.
        assert_eq!(next(&v(2, 1, 1, 1000)), Next::Write);
        // Fewer queued than recently ran at once: linger a little for the rest.
        assert_eq!(
            next(&v(4, 0, 8, 5)),
            Next::Wait(LINGER - Duration::from_millis(5))
        );
        assert_eq!(next(&v(4, 0, 8, 15)), Next::Write);
        assert_eq!(next(&v(8, 0, 8, 0)), Next::Write);
    }

    #[test]
    fn load_remembers_the_recent_peak_and_forgets_it() {
        let t0 = Instant::now();
        let mut l = Load::new(t0);
        for _ in 0..8 {
            l.enter(t0);
        }
        for _ in 0..8 {
            l.exit(t0);
        }
        assert_eq!(l.active, 0);
        assert_eq!(l.expected(t0 + Duration::from_millis(100)), 8);
        // Still remembered in the next window ...
        assert_eq!(l.expected(t0 + PEAK_WINDOW + Duration::from_millis(1)), 8);
        // ... gone after two quiet windows.
        assert_eq!(l.expected(t0 + PEAK_WINDOW * 4), 0);
        l.enter(t0 + PEAK_WINDOW * 4);
        assert_eq!(l.expected(t0 + PEAK_WINDOW * 4), 1);
    }

    // ---------------------------------------------------------------- property: CAS + batches

    /// A writer against a versioned block, as the engine (a batch of requests, re-planned on a
    /// fresh read after a 409) or as Calico's calico-ipam (one address, same CAS).
    #[derive(Clone, Debug)]
    struct Writer {
        /// Handles of the batch this writer is placing.
        batch: Vec<String>,
        /// Version and plan of its last read.
        read: Option<(u64, IPAMBlockSpec, Vec<Grant>)>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Writer `w` reads the block and plans its batch.
        Read(usize),
        /// Writer `w` writes its plan if the block is still at the version it read.
        Write(usize),
        /// A release of one live address (by its handle), as a DEL would do it.
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..6).prop_map(Op::Read),
            3 => (0usize..6).prop_map(Op::Write),
            1 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Any interleaving of batched writers (batches of 1 to 8, some borrowing, one writing as
        /// calico-ipam does: one address per write) and releases: no address is ever held by two
        /// live requests, and the block holds exactly the live grants.
        #[test]
        fn batched_concurrent_assignment_never_duplicates(
            sizes in proptest::collection::vec(1usize..=8, 6),
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let attrs = StrMap::new();
            let mut store = (0u64, block("n1", 4)); // 16 addresses: batches overflow often
            let mut writers: Vec<Writer> = sizes
                .iter()
                .enumerate()
                .map(|(w, &s)| Writer {
                    batch: (0..s).map(|i| format!("w{w}-r{i}-g0")).collect(),
                    read: None,
                })
                .collect();
            // Writer 5 is calico-ipam: one request per write.
            writers[5].batch.truncate(1);
            let mut round = 0;
            // handle → ordinals it holds (live grants)
            let mut live: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Read(w) => {
                        let mut spec = store.1.clone();
                        let wants: Vec<Want> = writers[w]
                            .batch
                            .iter()
                            .map(|h| want(h, 1 + h.len() % 2, if w == 4 { None } else { Some("n1") }, &attrs))
                            .collect();
                        let grants = assign(Some(&mut spec), &wants, &|_| false);
                        writers[w].read = Some((store.0, spec, grants));
                    }
                    Op::Write(w) => {
                        let Some((version, spec, grants)) = writers[w].read.take() else { continue };
                        if version != store.0 {
                            continue; // 409: the writer reads again before it writes
                        }
                        if grants.iter().all(|g| g.ordinals().is_empty()) {
                            continue;
                        }
                        store = (store.0 + 1, spec);
                        for (h, g) in writers[w].batch.iter().zip(&grants) {
                            if !g.ordinals().is_empty() {
                                let prev = live.insert(h.clone(), g.ordinals().to_vec());
                                prop_assert!(prev.is_none(), "{h} granted twice");
                            }
                        }
                        // The next batch of this writer: fresh handles.
                        round += 1;
                        writers[w].batch = writers[w]
                            .batch
                            .iter()
                            .map(|h| format!("{}-g{round}", h.rsplit_once("-g").unwrap().0))
                            .collect();
                    }
                    Op::Release(k) => {
                        if live.is_empty() {
                            continue;
                        }
                        let h = live.keys().nth(k % live.len()).unwrap().clone();
                        let ords = live.remove(&h).unwrap();
                        let mut spec = store.1.clone();
                        let (freed, _) = blk::release(&mut spec, &ords);
                        prop_assert_eq!(freed.len(), ords.len());
                        store = (store.0 + 1, spec);
                    }
                }
                // Invariants after every step.
                let mut owner: HashMap<usize, &str> = HashMap::new();
                for (h, ords) in &live {
                    for o in ords {
                        prop_assert!(owner.insert(*o, h).is_none(), "ordinal {o} held twice");
                        prop_assert_eq!(blk::handle_of(&store.1, *o), Some(h.as_str()));
                    }
                }
                prop_assert_eq!(blk::allocated_count(&store.1), owner.len());
                prop_assert!(blk::check(&store.1).is_empty(), "{:?}", blk::check(&store.1));
            }
        }
    }
}
