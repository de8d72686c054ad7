//! Properties of the shard rebalancing (issue 16): whatever the nodes see,
//! a plan takes only free shards and hands over only its own, never more
//! than the cap on moves; and nodes that run rounds on what the store
//! would show reach even shares from any start, with no shard left free.

use drover_engine::shard_lease::{rebalance, share, ShardView};
use proptest::prelude::*;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

/// One shard as drawn: its holder (by index), its last holder, overdue.
type RawShard = (Option<usize>, Option<usize>, bool);

/// Shards held by one of `nodes` nodes, or free (None), and whether overdue.
fn views() -> impl Strategy<Value = (usize, Vec<RawShard>)> {
    (1usize..6).prop_flat_map(|nodes| {
        let shard = (
            prop::option::of(0..nodes + 1), // holder (nodes: one not live)
            prop::option::of(0..nodes + 1), // last holder of a free one
            any::<bool>(),
        );
        (Just(nodes), prop::collection::vec(shard, 1..40))
    })
}

fn build(nodes: usize, raw: &[RawShard]) -> Vec<ShardView> {
    let name = |i: usize| format!("node-{i}");
    raw.iter()
        .enumerate()
        .map(|(s, (holder, last, overdue))| {
            let holder = holder.filter(|h| *h < nodes).map(name);
            ShardView { shard: s as u32, last: holder.clone().or_else(|| last.map(name)), holder, overdue: *overdue }
        })
        .collect()
}

proptest! {
    #[test]
    fn a_plan_takes_only_free_shards_and_hands_over_only_its_own((nodes, raw) in views(), me in 0usize..6, moving in 1usize..4) {
        let live = names(nodes);
        let me = format!("node-{}", me % nodes);
        let shards = build(nodes, &raw);
        let plan = rebalance(&me, &live, &shards, moving);
        let free: Vec<u32> = shards.iter().filter(|s| s.holder.is_none()).map(|s| s.shard).collect();
        for t in &plan.take {
            prop_assert!(free.contains(t), "took a held shard {t}: {plan:?}");
        }
        let mut taken = plan.take.clone();
        taken.sort();
        taken.dedup();
        prop_assert_eq!(taken.len(), plan.take.len(), "took a shard twice");
        for r in &plan.release {
            prop_assert_eq!(shards[*r as usize].holder.as_deref(), Some(me.as_str()), "released another's shard");
        }
        prop_assert!(free.len() + plan.release.len() <= moving.max(free.len()), "{plan:?} with {} free", free.len());
        let mine = shards.iter().filter(|s| s.holder.as_deref() == Some(me.as_str())).count();
        // It never hands over below its own share.
        prop_assert!(mine - plan.release.len() >= share(&live, &me, shards.len()).min(mine));
    }

    /// Rounds in turn, each node on what the store shows (a take or a
    /// release seen by the next node): from any start, even shares and
    /// nothing free within a bounded number of rounds.
    #[test]
    fn rounds_reach_even_shares_from_any_start((nodes, raw) in views(), moving in 1usize..4) {
        let live = names(nodes);
        let mut shards = build(nodes, &raw);
        for s in shards.iter_mut() {
            s.overdue = false;
        }
        let total = shards.len();
        let mut rounds = 0;
        loop {
            let even = live.iter().all(|n| {
                shards.iter().filter(|s| s.holder.as_deref() == Some(n.as_str())).count() == share(&live, n, total)
            });
            if even && shards.iter().all(|s| s.holder.is_some()) {
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= 4 * total + 8, "no even shares after {rounds} rounds: {shards:?}");
            for n in &live {
                let plan = rebalance(n, &live, &shards, moving);
                for r in plan.release {
                    shards[r as usize].holder = None;
                    shards[r as usize].last = Some(n.clone());
                }
                for t in plan.take {
                    // The first to take a free shard gets it (the store's
                    // conditional write); a later plan in the round sees it held.
                    if shards[t as usize].holder.is_none() {
                        shards[t as usize].holder = Some(n.clone());
                        shards[t as usize].last = Some(n.clone());
                    }
                }
            }
        }
    }
}
