//! The simulator's event queue: a radix heap over `(at, seq)`.
//!
//! The order is exactly a binary heap's on `(at, seq)` (time, ties broken by
//! the order of scheduling), so runs and digests do not change; the cost
//! does. A radix heap needs keys that never go below the last one popped,
//! which holds here: an event is scheduled at `now` or later, and `seq`
//! only grows. Entries sit in 129 buckets by the highest bit in which their
//! key differs from the last key popped; a pop empties the lowest non-empty
//! bucket into lower ones, so each entry moves a few times along vectors
//! read in order, instead of ~20 random reads per pop of a binary heap of a
//! million entries (7–9% of a 1M-service run).

pub(super) struct Queue<T> {
    /// The key popped last: every key queued is at least this.
    last: u128,
    len: usize,
    /// The smallest key queued, once looked for (kept by `push`, dropped by
    /// `pop`), so peeking every step does not search again.
    min: Option<u128>,
    buckets: Vec<Vec<(u128, T)>>,
}

/// Bucket 0 holds keys equal to `last`; bucket `b` keys whose highest bit
/// differing from `last` is bit `b - 1`.
fn bucket(last: u128, key: u128) -> usize {
    (128 - (key ^ last).leading_zeros()) as usize
}

/// Orders signed times as unsigned keys.
fn key(at: i64, seq: u64) -> u128 {
    (u128::from((at as u64) ^ (1 << 63)) << 64) | u128::from(seq)
}

fn at_of(key: u128) -> i64 {
    (((key >> 64) as u64) ^ (1 << 63)) as i64
}

impl<T> Queue<T> {
    pub(super) fn new() -> Self {
        Queue { last: 0, len: 0, min: None, buckets: (0..=128).map(|_| Vec::new()).collect() }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Queues `item` for time `at`; `seq` must grow from push to push. An
    /// `at` earlier than the last entry popped (the simulator schedules
    /// nothing in its past) is taken as that entry's time.
    pub(super) fn push(&mut self, at: i64, seq: u64, item: T) {
        let k = key(at.max(at_of(self.last)), seq).max(self.last);
        self.buckets[bucket(self.last, k)].push((k, item));
        self.len += 1;
        if let Some(m) = self.min {
            if k < m {
                self.min = Some(k);
            }
        }
    }

    fn min_key(&mut self) -> Option<u128> {
        if self.len == 0 {
            return None;
        }
        if self.min.is_none() {
            let b = self.buckets.iter().position(|b| !b.is_empty())?;
            self.min = self.buckets[b].iter().map(|e| e.0).min();
        }
        self.min
    }

    /// The time of the next entry.
    pub(super) fn peek_at(&mut self) -> Option<i64> {
        self.min_key().map(at_of)
    }

    /// The entry with the smallest `(at, seq)`, and its time.
    pub(super) fn pop(&mut self) -> Option<(i64, T)> {
        let m = self.min_key()?;
        if self.buckets[0].is_empty() {
            let b = self.buckets.iter().position(|b| !b.is_empty())?;
            self.last = m;
            let mut moving = std::mem::take(&mut self.buckets[b]);
            for (k, item) in moving.drain(..) {
                self.buckets[bucket(m, k)].push((k, item));
            }
            // A big bucket, once emptied, gives its memory back (the build
            // queues a million boots in one bucket or two).
            if moving.capacity() <= 4096 {
                self.buckets[b] = moving;
            }
        }
        // Keys are unique (`seq`): bucket 0 holds exactly the minimum.
        let (k, item) = self.buckets[0].pop()?;
        debug_assert_eq!(k, m);
        self.len -= 1;
        self.min = None;
        Some((at_of(k), item))
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use rand::{Rng, SeedableRng};
    use std::collections::BinaryHeap;

    /// Pops in exactly a binary heap's order on `(at, seq)`, with pushes
    /// interleaved at or after the current time, peeks in between, and ties.
    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut q = Queue::new();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (-5_000i64, 0u64);
        for round in 0..200_000u64 {
            if rng.random_bool(0.55) || heap.is_empty() {
                // Ties on `at` are common: small delays, and some of zero.
                let bits = rng.random_range(1..40);
                let d = if rng.random_bool(0.2) { 0 } else { rng.random_range(0..1i64 << bits) };
                seq += 1;
                q.push(now + d, seq, round);
                heap.push(std::cmp::Reverse((now + d, seq, round)));
            } else {
                let std::cmp::Reverse((at, _, want)) = heap.pop().unwrap();
                assert_eq!(q.peek_at(), Some(at));
                assert_eq!(q.pop(), Some((at, want)));
                now = at;
            }
            assert_eq!(q.len(), heap.len());
        }
        while let Some(std::cmp::Reverse((at, _, want))) = heap.pop() {
            assert_eq!(q.pop(), Some((at, want)));
        }
        assert_eq!(q.pop(), None);
    }
}
