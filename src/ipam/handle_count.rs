//! A handle's per-block count as an absolute value, never an increment.
//!
//! The engine writes the handle before the block (so that no block allocation is ever without a
//! handle entry), and either write can land while its answer is lost (a timeout, a connection
//! reset by a dying apiserver). An increment replayed after such a loss, or applied again by a
//! later ADD into a handle an interrupted one left over-counted, makes the count exceed what the
//! block holds (issue 15). Setting the entry to what the block holds for the handle (after the
//! pending write) converges instead: every replay writes the same value.

use std::collections::BTreeMap;

/// Sets `block[key]` to `count` (0 drops the entry). Returns whether anything changed.
pub fn set(block: &mut BTreeMap<String, u64>, key: &str, count: u64) -> bool {
    if count == 0 {
        return block.remove(key).is_some();
    }
    block.insert(key.to_string(), count) != Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_is_absolute() {
        let mut m = BTreeMap::new();
        assert!(set(&mut m, "10.0.0.0/26", 2));
        assert!(!set(&mut m, "10.0.0.0/26", 2));
        assert_eq!(m["10.0.0.0/26"], 2);
        assert!(set(&mut m, "10.0.0.0/26", 1));
        assert!(set(&mut m, "10.0.0.0/26", 0));
        assert!(m.is_empty());
        assert!(!set(&mut m, "10.0.0.0/26", 0));
    }

    /// A pure model of the apiserver and of one ADD's writes, where a write may land while its
    /// answer is lost (the caller sees an error and retries).
    #[derive(Default)]
    struct Model {
        handle: BTreeMap<String, u64>,
        /// Addresses the block holds for the handle.
        block_held: u64,
    }

    const KEY: &str = "10.0.0.0/26";

    /// One allocation of one address, retried until a try succeeds. `lost[i]`: on try `i`, the
    /// handle write lands but its answer is lost (`.0`), the block write lands but its answer
    /// is lost (`.1`), or the block write is refused (`.2`, a 409: not applied).
    fn allocate(m: &mut Model, lost: &[(bool, bool, bool)], absolute: bool) {
        for &(handle_lost, block_lost, block_refused) in lost.iter().chain([&(false, false, false)]) {
            // Each try reads the block first, as the engine does (a CAS loop re-reads).
            let held_before = m.block_held;
            if absolute {
                set(&mut m.handle, KEY, held_before + 1);
            } else {
                *m.handle.entry(KEY.into()).or_default() += 1;
            }
            if handle_lost {
                continue; // the handle write landed; the caller saw an error and retries
            }
            if block_refused {
                // Not applied: undo to what the block holds.
                if absolute {
                    set(&mut m.handle, KEY, held_before);
                } else {
                    *m.handle.get_mut(KEY).unwrap() -= 1;
                }
                continue;
            }
            m.block_held += 1;
            // Landed: whether its answer was lost or not, the count set before it is right (a
            // retried ADD then finds its address held: the CNI plugin's repeated-ADD path).
            let _ = block_lost;
            return;
        }
    }

    #[test]
    fn replayed_writes_keep_the_count_exact() {
        let scenarios: &[&[(bool, bool, bool)]] = &[
            &[],
            &[(true, false, false)],
            &[(true, false, false), (true, false, false)],
            &[(false, false, true), (true, false, false)],
            &[(false, true, false)],
            &[(false, false, true), (false, false, true)],
        ];
        for (i, lost) in scenarios.iter().enumerate() {
            let mut m = Model::default();
            allocate(&mut m, lost, true);
            assert_eq!(m.block_held, 1, "scenario {i}");
            assert_eq!(
                m.handle.get(KEY).copied(),
                Some(m.block_held),
                "scenario {i}: {lost:?}"
            );
            // A second address for the same handle in the same block, after a lost answer too.
            allocate(&mut m, &[(true, false, false)], true);
            assert_eq!(m.handle.get(KEY).copied(), Some(2), "scenario {i}");
            assert_eq!(m.block_held, 2);
        }
        // The increment the engine used before over-counts as soon as one answer is lost.
        let mut m = Model::default();
        allocate(&mut m, &[(true, false, false)], false);
        assert_eq!(m.block_held, 1);
        assert_eq!(m.handle.get(KEY).copied(), Some(2));
    }
}
