//! The lease logic of control-plane nodes sharing one store (issue 16),
//! pure: what a node does with a lease row it read, what the store's
//! conditional writes let through, when a holder must stop by its own
//! clock, and how shards are shared out when nodes join or leave.
//!
//! The PostgreSQL store asks these functions what to do
//! (`PgStore::try_acquire_lease`), and its SQL states the same conditions
//! as [`take_applies`], [`renew_applies`] and [`fence_admits`] (keep them
//! in step; `crates/store/tests/lease.rs` runs the SQL side); the simulator (`drover-sim`, the
//! `control-plane-nodes` scenario) drives them with nodes that die, pause
//! and return, and checks that no shard is ever acted on by two nodes with
//! the same generation, or by one whose generation is older than the
//! newest.
//!
//! A lease row names its holder and a generation that rises with every
//! acquisition. A holder keeps an advisory lock for its generation on a
//! connection of its own for as long as it lives: a live holder's lease is
//! waited out until it expires (by the database's clock), but a holder
//! whose lock is free is gone (its process died and its socket closed) and
//! its lease is taken at once ("orphaned").

/// A lease row as a node reads it; `expired` by the database's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: String,
    pub generation: i64,
    pub expired: bool,
}

/// A take of a lease: the conditional write names the generation read
/// (`observed`) and writes `next`, whose lock the node takes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    pub observed: i64,
    pub next: i64,
    /// The live holder's lock was found free: its process is gone.
    pub orphaned: bool,
}

/// What a node does about a lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody holds it, it expired, or it is this node's own (a restart
    /// under the same name): take it.
    Take(Take),
    /// Another node holds it and its lease runs: probe the lock of
    /// `generation`; free, take it as [`orphaned`]; held, wait.
    Probe { generation: i64 },
}

/// What to do with a lease row (None: no row yet).
pub fn claim(row: Option<&LeaseView>, node: &str) -> Claim {
    match row {
        None => Claim::Take(Take { observed: 0, next: 1, orphaned: false }),
        Some(r) if r.expired || r.holder == node => {
            Claim::Take(Take { observed: r.generation, next: r.generation + 1, orphaned: false })
        }
        Some(r) => Claim::Probe { generation: r.generation },
    }
}

/// The take after a probe found the lock of `generation` free.
pub fn orphaned(generation: i64) -> Take {
    Take { observed: generation, next: generation + 1, orphaned: true }
}

/// Whether the store lets `node`'s take through, given the row as it is
/// when the write runs (another node may have renewed or taken it since it
/// was read). The SQL of `PgStore::try_acquire_lease` says the same.
pub fn take_applies(row: Option<&LeaseView>, node: &str, take: &Take) -> bool {
    match row {
        None => true,
        Some(r) => r.generation == take.observed && (r.expired || r.holder == node || take.orphaned),
    }
}

/// Whether a renewal by `node` of `generation` goes through.
pub fn renew_applies(row: Option<&LeaseView>, node: &str, generation: i64) -> bool {
    row.is_some_and(|r| r.holder == node && r.generation == generation)
}

/// Whether a commit fenced with (`node`, `generation`) is admitted: its
/// transaction finds that lease in the row (share-locked, so a take waits
/// for it or, done first, makes it write nothing).
pub fn fence_admits(row: Option<&LeaseView>, node: &str, generation: i64) -> bool {
    renew_applies(row, node, generation)
}

/// Which batches of a commit group a node fenced on the shards `held`
/// (shard -> generation) writes: a batch whose shards are all held and
/// still found with that generation and this node as holder (`found`: what
/// the commit's transaction read, share-locked, so no take commits before
/// it). Each refused batch names the first shard that refuses it; the
/// others are written.
pub fn batches_admitted(
    batches: &[Vec<u32>],
    held: &std::collections::BTreeMap<u32, i64>,
    found: &std::collections::BTreeSet<u32>,
) -> Vec<Result<(), u32>> {
    batches
        .iter()
        .map(|shards| match shards.iter().find(|s| !held.contains_key(s) || !found.contains(s)) {
            Some(&refused) => Err(refused),
            None => Ok(()),
        })
        .collect()
}

/// Whether an action of `generation` is carried out by whoever receives it
/// (a provider, an agent) that has seen `newest` before: a lower one comes
/// from a node that lost the lease.
pub fn action_admitted(generation: i64, newest: Option<i64>) -> bool {
    newest.is_none_or(|n| generation >= n)
}

/// A holder's own clock: it renews every `ttl / 4` and stops acting once
/// `ttl - ttl / 5` has passed since it *sent* the last renewal that
/// succeeded (so before the database's expiry, which counts from when the
/// renewal arrived).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfFence {
    pub ttl_micros: i64,
}

impl SelfFence {
    pub fn renew_every(&self) -> i64 {
        self.ttl_micros / 4
    }

    /// The last moment (by the node's clock) it may act after a renewal
    /// sent at `sent` succeeded.
    pub fn act_until(&self, sent: i64) -> i64 {
        sent + self.ttl_micros - self.ttl_micros / 5
    }
}

/// A free shard left for a node under its share is anybody's after this
/// long (by the database's clock since its lease expired or was released):
/// the store's rounds and the simulator's read `overdue` by it.
pub const HANDOVER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// One shard's lease as the rebalancing sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardView {
    pub shard: u32,
    /// None: nobody holds it (no row, expired, released, or orphaned).
    pub holder: Option<String>,
    /// Who held it last (the row's holder, also when it is free).
    pub last: Option<String>,
    /// Free for longer than a hand-over takes (the caller's grace, about a
    /// second by the database's clock since its lease expired or was
    /// released): the node it was left for is not taking it (paused).
    pub overdue: bool,
}

/// What one node does with the shards this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebalance {
    /// Shards to hand over: it stops acting on them first, then lets the
    /// lease expire at once so a node under its share takes them.
    pub release: Vec<u32>,
    /// Shards to take (each through [`claim`]).
    pub take: Vec<u32>,
}

/// Each live node's share of `shards`: as even as can be, the first
/// `shards % nodes` of the names in order one more.
pub fn share(live: &[String], node: &str, shards: usize) -> usize {
    let mut names: Vec<&String> = live.iter().collect();
    names.sort();
    names.dedup();
    let Some(rank) = names.iter().position(|n| *n == node) else { return 0 };
    shards / names.len() + usize::from(rank < shards % names.len())
}

/// What `node` does this round, from every shard's holder and the live
/// nodes (those the store sees alive, `node` among them). A free shard
/// whose last holder is gone (not live), or that is overdue, is nobody's:
/// every node takes its
/// slice of those at once, ahead of the shares, which hand-overs even out
/// later (a live node under its share may be paused, and would keep them
/// waiting). Otherwise it takes free shards up to its share, and beyond it
/// those no node under its share can take; it releases what it holds
/// beyond its share while another live node is under its own, no more
/// than `max_moving` shards being free (released, not yet taken) at once
/// across the fleet.
pub fn rebalance(node: &str, live: &[String], shards: &[ShardView], max_moving: usize) -> Rebalance {
    let mut live: Vec<String> = live.to_vec();
    if !live.iter().any(|n| n == node) {
        live.push(node.to_string());
    }
    live.sort();
    live.dedup();
    let held_by = |n: &str| shards.iter().filter(|s| s.holder.as_deref() == Some(n)).count();
    let mine: Vec<u32> = shards.iter().filter(|s| s.holder.as_deref() == Some(node)).map(|s| s.shard).collect();
    let free: Vec<u32> = shards.iter().filter(|s| s.holder.is_none()).map(|s| s.shard).collect();
    let quota = share(&live, node, shards.len());
    // What the other live nodes under their share can take of the free ones.
    let others_want: usize = live
        .iter()
        .filter(|n| n.as_str() != node)
        .map(|n| share(&live, n, shards.len()).saturating_sub(held_by(n)))
        .sum();
    let mut plan = Rebalance::default();
    let wanted = quota.saturating_sub(mine.len());
    // Up to its share; and what would stay free even after the others took theirs.
    let beyond = free.len().saturating_sub(wanted + others_want);
    // Each node starts at its own place among the free shards, so that
    // nodes taking at once race for fewer of the same ones.
    let rank = live.iter().position(|n| n == node).unwrap_or(0);
    let start = if free.is_empty() { 0 } else { rank * free.len() / live.len() };
    let orphans: Vec<u32> = shards
        .iter()
        .filter(|s| s.holder.is_none() && (s.overdue || s.last.as_ref().is_none_or(|h| !live.contains(h))))
        .map(|s| s.shard)
        .collect();
    let slice = orphans.len().div_ceil(live.len());
    let orphan_start = if orphans.is_empty() { 0 } else { rank * orphans.len() / live.len() };
    plan.take = orphans.iter().cycle().skip(orphan_start).take(slice).copied().collect();
    for s in free.iter().cycle().skip(start).take((wanted + beyond).min(free.len())) {
        if !plan.take.contains(s) {
            plan.take.push(*s);
        }
    }
    if mine.len() > quota && others_want > 0 && free.len() < max_moving {
        let n = (mine.len() - quota).min(max_moving - free.len()).min(others_want.saturating_sub(free.len()));
        plan.release = mine.iter().rev().take(n).copied().collect();
    }
    plan
}

/// One shard's lease as a node's round reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardLease {
    /// None: no row yet.
    pub lease: Option<LeaseView>,
    /// The lock of its generation is held (by a live session).
    pub locked: bool,
    /// Free for longer than [`ShardView::overdue`]'s grace.
    pub overdue: bool,
}

/// What a round decided: the shards to hand over, and the takes to try
/// (each: the next generation's lock, then the conditional write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundPlan {
    pub release: Vec<u32>,
    pub take: Vec<(u32, Take)>,
}

/// A node's round over every shard (`shards[i]` is shard `i`), after its
/// renewals: who holds what ([`ShardView`]: a lease that expired, or whose
/// lock nobody holds, is free), the rebalancing, and a [`claim`] for each
/// shard to take. The store (`PgStore::shard_round`) and the simulator
/// (`control-plane-nodes`) both decide through this.
pub fn plan_round(node: &str, live: &[String], shards: &[ShardLease], max_moving: usize) -> RoundPlan {
    let views: Vec<ShardView> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| ShardView {
            shard: i as u32,
            holder: s.lease.as_ref().filter(|l| !l.expired && s.locked).map(|l| l.holder.clone()),
            last: s.lease.as_ref().map(|l| l.holder.clone()),
            overdue: s.overdue,
        })
        .collect();
    let plan = rebalance(node, live, &views, max_moving);
    let take = plan
        .take
        .into_iter()
        .filter_map(|shard| {
            let s = &shards[shard as usize];
            match claim(s.lease.as_ref(), node) {
                Claim::Take(take) => Some((shard, take)),
                // Its holder's lock is free: the holder is gone.
                Claim::Probe { generation } if !s.locked => Some((shard, orphaned(generation))),
                Claim::Probe { .. } => None,
            }
        })
        .collect();
    RoundPlan { release: plan.release, take }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_is_written_only_if_all_its_shards_are_held_and_found() {
        use std::collections::{BTreeMap, BTreeSet};
        let held: BTreeMap<u32, i64> = [(1, 4), (2, 7)].into();
        let found: BTreeSet<u32> = [1].into();
        let batches = vec![vec![1], vec![1, 2], vec![3], vec![], vec![2, 1]];
        assert_eq!(
            super::batches_admitted(&batches, &held, &found),
            vec![Ok(()), Err(2), Err(3), Ok(()), Err(2)],
            "shard 2 held but not found (taken over); 3 never held; no shard: the fleet's records"
        );
    }

    use super::*;

    fn row(holder: &str, generation: i64, expired: bool) -> LeaseView {
        LeaseView { holder: holder.into(), generation, expired }
    }

    #[test]
    fn a_live_holder_is_probed_an_expired_or_own_lease_is_taken() {
        assert_eq!(claim(None, "a"), Claim::Take(Take { observed: 0, next: 1, orphaned: false }));
        assert_eq!(claim(Some(&row("b", 4, false)), "a"), Claim::Probe { generation: 4 });
        assert_eq!(claim(Some(&row("b", 4, true)), "a"), Claim::Take(Take { observed: 4, next: 5, orphaned: false }));
        assert_eq!(claim(Some(&row("a", 4, false)), "a"), Claim::Take(Take { observed: 4, next: 5, orphaned: false }));
        assert_eq!(orphaned(4), Take { observed: 4, next: 5, orphaned: true });
    }

    #[test]
    fn a_take_goes_through_only_on_the_generation_it_read() {
        let t = Take { observed: 4, next: 5, orphaned: false };
        assert!(take_applies(Some(&row("b", 4, true)), "a", &t));
        // Renewed since it was read: no longer expired.
        assert!(!take_applies(Some(&row("b", 4, false)), "a", &t));
        // Taken by another node meanwhile.
        assert!(!take_applies(Some(&row("c", 5, false)), "a", &t));
        assert!(!take_applies(Some(&row("c", 5, true)), "a", &t));
        // Orphaned: a live-looking lease is taken.
        assert!(take_applies(Some(&row("b", 4, false)), "a", &orphaned(4)));
        assert!(!take_applies(Some(&row("b", 5, false)), "a", &orphaned(4)));
        assert!(take_applies(None, "a", &Take { observed: 0, next: 1, orphaned: false }));
    }

    #[test]
    fn renewals_commits_and_actions_need_the_newest_generation() {
        assert!(renew_applies(Some(&row("a", 3, true)), "a", 3));
        assert!(!renew_applies(Some(&row("a", 4, false)), "a", 3));
        assert!(!renew_applies(Some(&row("b", 3, false)), "a", 3));
        assert!(!renew_applies(None, "a", 3));
        assert!(fence_admits(Some(&row("a", 3, false)), "a", 3));
        assert!(!fence_admits(Some(&row("b", 4, false)), "a", 3));
        assert!(action_admitted(3, None) && action_admitted(3, Some(3)) && action_admitted(4, Some(3)));
        assert!(!action_admitted(2, Some(3)));
    }

    #[test]
    fn a_holder_stops_acting_before_the_database_lets_its_lease_expire() {
        let f = SelfFence { ttl_micros: 10_000_000 };
        assert_eq!(f.renew_every(), 2_500_000);
        assert_eq!(f.act_until(1_000_000), 9_000_000);
        assert!(f.act_until(0) < f.ttl_micros);
    }

    /// Shards by holder; a free one written `-x`: last held by x (`-`: never).
    fn view(holders: &[&str]) -> Vec<ShardView> {
        let named = |h: &str| (!h.is_empty()).then(|| h.to_string());
        holders
            .iter()
            .enumerate()
            .map(|(i, h)| match h.strip_prefix('-') {
                Some(last) => ShardView { shard: i as u32, holder: None, last: named(last), overdue: false },
                None => ShardView { shard: i as u32, holder: named(h), last: named(h), overdue: false },
            })
            .collect()
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_round_takes_an_orphaned_lease_and_leaves_a_live_one() {
        let lease = |holder: &str, generation, expired, locked| ShardLease {
            lease: Some(row(holder, generation, expired)),
            locked,
            overdue: false,
        };
        let shards = vec![
            lease("a", 3, false, true),  // a's, live
            lease("c", 7, false, false), // c died: its lock is free
            lease("b", 2, true, true),   // b's lease expired
            ShardLease { lease: None, locked: false, overdue: false },
        ];
        let plan = plan_round("a", &names(&["a", "b"]), &shards, 1);
        assert_eq!(plan.release, Vec::<u32>::new());
        assert!(plan.take.contains(&(1, orphaned(7))), "{plan:?}");
        assert!(plan.take.iter().all(|(s, _)| *s != 0), "{plan:?}");
        let b = plan_round("b", &names(&["a", "b"]), &shards, 1);
        assert!(b.take.contains(&(2, Take { observed: 2, next: 3, orphaned: false })), "its own expired lease: {b:?}");
    }

    #[test]
    fn shares_are_even_and_sum_to_the_shards() {
        let live = names(&["c", "a", "b"]);
        let shares: Vec<usize> = ["a", "b", "c"].iter().map(|n| share(&live, n, 10)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(share(&live, "z", 10), 0);
    }

    #[test]
    fn a_lone_node_takes_every_shard() {
        let plan = rebalance("a", &names(&["a"]), &view(&["-", "-", "-"]), 1);
        assert_eq!(plan, Rebalance { release: vec![], take: vec![0, 1, 2] });
    }

    #[test]
    fn a_node_that_joins_gets_shards_handed_over_a_few_at_a_time() {
        let all_a = view(&["a"; 6]);
        let live = names(&["a", "b"]);
        // b has nothing to take yet; a releases, at most 2 free at once.
        assert_eq!(rebalance("b", &live, &all_a, 2), Rebalance::default());
        let plan = rebalance("a", &live, &all_a, 2);
        assert_eq!(plan, Rebalance { release: vec![5, 4], take: vec![] });
        // Two are free: a releases no more until they are taken, and does
        // not take them back.
        let moving = view(&["a", "a", "a", "a", "-a", "-a"]);
        assert_eq!(rebalance("a", &live, &moving, 2), Rebalance::default());
        assert_eq!(rebalance("b", &live, &moving, 2).take, vec![5, 4]);
        let next = view(&["a", "a", "a", "a", "b", "b"]);
        assert_eq!(rebalance("a", &live, &next, 2).release, vec![3]);
        let even = view(&["a", "a", "a", "b", "b", "b"]);
        assert_eq!(rebalance("a", &live, &even, 2), Rebalance::default());
        assert_eq!(rebalance("b", &live, &even, 2), Rebalance::default());
    }

    #[test]
    fn the_shards_of_a_node_that_is_gone_are_taken_at_once_by_whoever_runs() {
        // c died: its two shards are free; a and b are at their old share.
        let v = view(&["a", "a", "b", "b", "-c", "-c"]);
        let live = names(&["a", "b"]);
        assert_eq!(rebalance("a", &live, &v, 1).take, vec![4]);
        assert_eq!(rebalance("b", &live, &v, 1).take, vec![5]);
        // b is paused but still counts as live (and under its share): a
        // does not wait for it; a slice a round, so a takes both in two.
        let v = view(&["a", "a", "a", "a", "b", "b", "-c", "-c"]);
        assert_eq!(rebalance("a", &live, &v, 1).take, vec![6]);
        let v = view(&["a", "a", "a", "a", "b", "b", "a", "-c"]);
        assert_eq!(rebalance("a", &live, &v, 1).take, vec![7]);
        // Released by a live node: left for the node under its share.
        let mut v = view(&["a", "a", "a", "b", "-a", "-a"]);
        assert_eq!(rebalance("a", &live, &v, 2).take, Vec::<u32>::new());
        // ... until it is overdue (b is paused): then a takes it back.
        v[4].overdue = true;
        assert_eq!(rebalance("a", &live, &v, 2).take, vec![4]);
        // More free than the live nodes under their share want: the rest
        // is taken beyond a share rather than left free.
        let v = view(&["-a", "-a", "-a", "-a", "b", "b"]);
        let plan = rebalance("b", &live, &v, 1);
        assert_eq!(plan.take.len(), 1, "{plan:?}");
        assert_eq!(rebalance("a", &live, &v, 1).take, vec![0, 1, 2]);
    }
}
