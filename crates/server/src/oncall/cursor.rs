//! Where the pager's reading of the engine's event log stands, so that it
//! sees every event once it is committed, even when events commit out of
//! their seq's order, and takes up after a restart or a takeover where it
//! left off.
//!
//! An event's seq is given when its row is inserted; on a store several
//! nodes commit to (PostgreSQL), a commit holding seq 7 can become visible
//! after one holding seq 8. A reader that moved its cursor past 8 would
//! never read 7. So the cursor (`low`) only moves over seqs read; a seq
//! missing below one read is waited for, for [`GAP_GRACE`] from when the
//! gap was first seen (a rolled-back commit leaves a seq that never
//! comes), and the events read above it are remembered so that each is
//! handed on once. `low` is what is kept in the store: after a restart or
//! on shard 0's next holder, reading resumes from it, and what was read
//! above it again is handed on again (at least once: the pager folds a
//! repeated alert into its open page by its dedup key).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a seq missing below one already read is waited for.
pub const GAP_GRACE: Duration = Duration::from_secs(10);

/// The `cluster_settings` row the cursor is kept in.
pub const SETTING: &str = "pager_event_cursor";

#[derive(Debug)]
pub struct EventCursor {
    /// Every event with a seq up to this one was handed on (or given up).
    low: u64,
    /// Seqs above `low` handed on already.
    read: BTreeSet<u64>,
    /// Since when `low + 1` has been missing while a later seq was read.
    stuck_since: Option<Instant>,
}

impl EventCursor {
    pub fn at(low: u64) -> EventCursor {
        EventCursor { low, read: BTreeSet::new(), stuck_since: None }
    }

    /// Where the next read starts (exclusive).
    pub fn low(&self) -> u64 {
        self.low
    }

    /// Whether it waits for a seq missing below one read (so it should
    /// read again soon, woken or not).
    pub fn waiting(&self) -> bool {
        !self.read.is_empty()
    }

    /// Whether the event `seq` (just read) is to be handed on: not yet
    /// handed on. Marks it handed on.
    pub fn take(&mut self, seq: u64) -> bool {
        seq > self.low && self.read.insert(seq)
    }

    /// Moves `low` over the seqs handed on in a row, and over a gap waited
    /// for past [`GAP_GRACE`]: up to the first seq read after it (every
    /// seq below that one was given out before it, so before the gap was
    /// seen).
    pub fn settle(&mut self, now: Instant) {
        loop {
            while self.read.first() == Some(&(self.low + 1)) {
                self.read.pop_first();
                self.low += 1;
                self.stuck_since = None;
            }
            let Some(&next) = self.read.first() else {
                self.stuck_since = None;
                return;
            };
            let since = *self.stuck_since.get_or_insert(now);
            if now.duration_since(since) < GAP_GRACE {
                return;
            }
            tracing::warn!(from = self.low + 1, to = next - 1, "engine events never committed (or too late): skipped");
            self.low = next - 1;
            self.stuck_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_it_moves_with_every_event() {
        let mut c = EventCursor::at(4);
        let now = Instant::now();
        for seq in 5..=9 {
            assert!(c.take(seq));
            c.settle(now);
            assert_eq!(c.low(), seq);
        }
        assert!(!c.take(9), "an event read again is not handed on again");
        assert!(!c.take(3), "nor one below the cursor");
    }

    #[test]
    fn a_seq_committed_late_is_waited_for_and_handed_on_once() {
        let t0 = Instant::now();
        let mut c = EventCursor::at(6);
        // 8 and 9 visible, 7 still committing.
        assert!(c.take(8));
        assert!(c.take(9));
        c.settle(t0);
        assert_eq!(c.low(), 6, "the cursor waits below the gap");
        // Read again from 6: 8 and 9 come back, not handed on twice.
        assert!(!c.take(8));
        assert!(!c.take(9));
        c.settle(t0 + GAP_GRACE / 2);
        assert_eq!(c.low(), 6);
        // 7 commits: handed on, and the cursor moves over all three.
        assert!(c.take(7));
        c.settle(t0 + GAP_GRACE / 2);
        assert_eq!(c.low(), 9);
    }

    #[test]
    fn a_seq_that_never_comes_is_given_up_after_the_grace() {
        let t0 = Instant::now();
        let mut c = EventCursor::at(10);
        // 11 and 12 rolled back; 13 read.
        assert!(c.take(13));
        c.settle(t0);
        assert_eq!(c.low(), 10);
        c.settle(t0 + GAP_GRACE - Duration::from_millis(1));
        assert_eq!(c.low(), 10, "still within the grace");
        c.settle(t0 + GAP_GRACE);
        assert_eq!(c.low(), 13, "both missing seqs given up at once, the one read taken");
        // A new gap starts its own wait.
        assert!(c.take(15));
        c.settle(t0 + GAP_GRACE);
        assert_eq!(c.low(), 13);
        assert!(c.take(14));
        c.settle(t0 + GAP_GRACE);
        assert_eq!(c.low(), 15);
    }
}
