//! The shards a node holds on a PostgreSQL store split into several
//! (issue 16, items 1 and 2): its rounds over the leases
//! (`PgStore::shard_round`, every TTL/8), the store's fence on what it
//! holds (`PgStore::fence_shards`), its engine handed over whenever that
//! changes ([`crate::runtime::hand_over_engine`]: the running engine
//! finishes what was sent to it, the new part is loaded after its last
//! commit), and the map its HTTP layer routes by ([`crate::lease::ShardMap`]).
//!
//! A change that only adds shards (the node keeps all it held and takes
//! another's, as when a node died) is merged into the running engine: the
//! new shards alone are read while it runs on, then merged
//! ([`crate::runtime::absorb_into_engine`]). Any other change hands the
//! engine over to a new one, in order: the fence admits what the node renewed and took;
//! the engine is handed over to the shards it keeps and took (the map
//! published once new requests wait for the new engine, so none reaches
//! an engine without its shard); the fence narrows to them; only then are
//! the shards it hands over released, so their next holder starts after
//! this node's last commit on them.
//!
//! The singletons' writes (the pager's, break-glass's) are fenced by shard
//! 0's lease (`PgStore::fence_commits` with its generation, or 0 on a node
//! without it): they are refused on every node but shard 0's holder.
//!
//! Self-fencing: a node whose rounds have not succeeded for 4/5 of the TTL
//! (by its own clock, from when it sent the last one that did) narrows its
//! fence to nothing at once, from a watchdog of its own, before any lease
//! can expire: its engine's commits on every shard are refused from then
//! on, and an action is dispatched only after its commit. The next round
//! that succeeds finds what it still holds (or nothing: lost) and hands the
//! engine over to that, so a paused node rejoins without a restart.
//!
//! Run by `drover serve --shards N`. Not settled here (docs/architecture.md,
//! "The server on several shards"): the singletons but the pager (which
//! follows [`Keeper::shard_zero`]) moved to shard 0's holder, the
//! fleet-wide records every engine keeps a copy of, and the agents'
//! action queue.

use crate::lease::{Holder, ShardMap, Shards};
use crate::runtime::{self, EngineHandle, EngineMachine, Reload};
use drover_engine::shard_lease::SelfFence;
use drover_engine::Share;
use drover_store::{PgStore, ShardFence, ShardFilter, ShardRound};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// At most this many shards are handed over at once by one node.
pub const MAX_MOVING: u32 = 2;

/// The freezes of automation made by hand, read again for every new
/// engine (the break-glass store's).
pub type Freezes = Arc<dyn Fn() -> anyhow::Result<Vec<String>> + Send + Sync>;

/// Where a job for the whole fleet runs (the status sampler, event
/// retention, the commands kept while a shard had no holder): on a fleet
/// one node holds, wherever it was started (only the holder starts them);
/// on a split fleet, only on shard 0's holder at the moment, so one node
/// runs it and another takes it up when shard 0 moves.
#[derive(Clone, Default)]
pub struct ShardZero(Option<watch::Receiver<bool>>);

impl ShardZero {
    /// On a split fleet: following whether this node holds shard 0.
    pub fn follow(holds: watch::Receiver<bool>) -> ShardZero {
        ShardZero(Some(holds))
    }

    /// Whether the fleet's jobs run here now.
    pub fn here(&self) -> bool {
        self.0.as_ref().is_none_or(|holds| *holds.borrow())
    }

    /// Whether the fleet is split (a job may become this node's later).
    pub fn split(&self) -> bool {
        self.0.is_some()
    }
}

/// One node's hold on its shards.
pub struct Keeper {
    store: Arc<PgStore>,
    node: String,
    address: String,
    started_at: i64,
    ttl: Duration,
    shards: u16,
    /// What this node acts on, with the generations it holds them with.
    held: Vec<(u32, i64)>,
    map: Shards,
    /// Microseconds since `base` after which this node may no longer act
    /// (the watchdog's deadline).
    act_until: Arc<AtomicU64>,
    base: Instant,
    /// Whether this node holds shard 0 (and acts on it): the singletons
    /// that run only there follow it (the pager: `oncall::start`).
    zero: Arc<watch::Sender<bool>>,
    /// The renewals between the first round and [`Keeper::keep`] (the
    /// node's first load).
    meanwhile: Option<StopOnDrop>,
    /// The runtime `keep` was called on: the hand-overs run there.
    main: Option<tokio::runtime::Handle>,
}

/// A thread of the Keeper's told to stop when this is dropped (the Keeper
/// gone with a start that failed, `keep` started, a load done).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Keeper {
    pub fn new(store: Arc<PgStore>, node: String, address: String, ttl: Duration, shards: u16, map: Shards) -> Keeper {
        let started_at = crate::runtime::now().0;
        Keeper {
            store,
            node,
            address,
            started_at,
            ttl,
            shards,
            held: Vec::new(),
            map,
            act_until: Arc::new(AtomicU64::new(0)),
            base: Instant::now(),
            zero: Arc::new(watch::channel(false).0),
            meanwhile: None,
            main: None,
        }
    }

    /// Whether this node holds shard 0 now, and each change of it.
    pub fn shard_zero(&self) -> watch::Receiver<bool> {
        self.zero.subscribe()
    }

    fn note_zero(&self) {
        let holds = self.held.iter().any(|h| h.0 == 0);
        self.zero.send_if_modified(|z| std::mem::replace(z, holds) != holds);
    }

    /// What this node holds now, with generations.
    pub fn held(&self) -> &[(u32, i64)] {
        &self.held
    }

    /// The first round, before the node has an engine: takes what it may,
    /// hands back at once what the round says to hand over (nothing acted
    /// on it here), fences the store on the rest, and returns what to load
    /// and the engine's share of the fleet.
    pub async fn first(&mut self) -> anyhow::Result<(ShardFilter, Share)> {
        let sent = Instant::now();
        let round = self.round().await?;
        self.renewed_at(sent);
        let mut held = round.held();
        held.retain(|h| !round.to_release.contains(h));
        self.fence(&held);
        if !round.to_release.is_empty() {
            self.release(round.to_release.clone()).await?;
        }
        self.held = held;
        self.note_zero();
        self.publish(&round);
        self.meanwhile = Some(self.renewing(self.held.clone()));
        Ok((self.filter(), self.share()))
    }

    /// Renews `held` every TTL/8 until the returned guard is dropped,
    /// moving the watchdog's deadline on each renewal of them all: while
    /// the engine is loaded (a hand-over, the first load), which outlasts
    /// the lease on a large fleet and must not cost the node what it is
    /// loading. A thread of its own: busy async workers cannot delay it.
    fn renewing(&self, held: Vec<(u32, i64)>) -> StopOnDrop {
        let (store, node, address, started_at, ttl) =
            (Arc::clone(&self.store), self.node.clone(), self.address.clone(), self.started_at, self.ttl);
        let (act_until, base) = (Arc::clone(&self.act_until), self.base);
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopped);
        let spawned = std::thread::Builder::new().name("drover-shard-renew".into()).spawn(move || loop {
            std::thread::sleep(ttl / 8);
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let sent = Instant::now();
            match store.renew_shards(&node, &address, started_at, ttl, &held) {
                // Renewed too late to count: the watchdog fenced meanwhile.
                Ok(renewed) if renewed.len() == held.len() && sent.elapsed() < ttl / 2 => {
                    let fence = SelfFence { ttl_micros: ttl.as_micros() as i64 };
                    let since = sent.saturating_duration_since(base).as_micros() as i64;
                    act_until.fetch_max(fence.act_until(since).max(0) as u64, Ordering::SeqCst);
                }
                // Lost some: the next round says which.
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "renewing the shards' leases during a load failed"),
            }
        });
        if let Err(error) = spawned {
            // The rounds renew as before; only a long load may outlast them.
            tracing::error!(%error, "cannot start the thread renewing the shards' leases during a load");
        }
        StopOnDrop(stopped)
    }

    /// Runs the rounds until `stop`, handing the engine behind `handle`
    /// (its actor `running`) over whenever the held set changes. Returns
    /// the last engine's actor.
    ///
    /// The rounds, the renewals during a load and the watchdog run on
    /// threads of their own (the rounds on a runtime of their own), so
    /// async workers kept busy by heartbeats or a large load cannot delay
    /// a renewal past the watchdog's deadline; the hand-overs run on the
    /// runtime that called this, where the engine's actor runs.
    pub async fn keep(
        mut self,
        handle: EngineHandle,
        running: JoinHandle<EngineMachine>,
        freezes: Freezes,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<EngineMachine> {
        self.main = Some(tokio::runtime::Handle::current());
        let node = self.node.clone();
        let (done, last) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("drover-shards".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => crate::lease::stop(&format!("cannot start the runtime of the shards' rounds: {error}")),
            };
            let running = runtime.block_on(self.rounds(handle, running, freezes, stop));
            // A round abandoned on a hung database may still be running.
            runtime.shutdown_background();
            let _ = done.send(running);
        });
        if let Err(error) = spawned {
            crate::lease::stop(&format!("node {node} cannot start the thread of its shards' rounds: {error}"));
        }
        match last.await {
            Ok(running) => running,
            Err(_) => crate::lease::stop(&format!("node {node}'s rounds over its shards' leases ended in a panic")),
        }
    }

    async fn rounds(
        mut self,
        handle: EngineHandle,
        mut running: JoinHandle<EngineMachine>,
        freezes: Freezes,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<EngineMachine> {
        self.meanwhile = None;
        let watchdog = self.watchdog(stop.clone());
        let every = (self.ttl / 8).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(every) => {}
            }
            let sent = Instant::now();
            let round = match self.round().await {
                Ok(round) => round,
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "a round over the shards' leases failed; retrying");
                    continue;
                }
            };
            let fenced_out = self.expired();
            self.renewed_at(sent);
            match self.apply(round, fenced_out, &handle, running, &freezes, &stop).await {
                Ok(next) => running = next,
                Err(error) => {
                    // The engine is gone (its load failed): callers are
                    // answered 503 and nothing more is acted on; a
                    // supervisor starts the node again.
                    tracing::error!(node = %self.node, %error, "the engine could not be handed over; this node stops");
                    crate::lease::stop(&format!("node {} could not hand its engine over: {error}", self.node));
                }
            }
        }
        drop(watchdog);
        running
    }

    /// `work` (a hand-over) on the runtime that called [`Keeper::keep`],
    /// where the engine's actor and what it spawns belong.
    async fn on_main<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    ) -> anyhow::Result<T> {
        match &self.main {
            Some(main) => main.spawn(work).await.map_err(|e| anyhow::anyhow!("the hand-over's task failed: {e}"))?,
            None => work.await,
        }
    }

    /// One round's outcome: nothing to do, or a hand-over.
    async fn apply(
        &mut self,
        round: ShardRound,
        fenced_out: bool,
        handle: &EngineHandle,
        running: JoinHandle<EngineMachine>,
        freezes: &Freezes,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<JoinHandle<EngineMachine>> {
        let mut next: Vec<(u32, i64)> = round.held();
        next.retain(|h| !round.to_release.contains(h));
        if next == self.held && round.to_release.is_empty() && !fenced_out {
            self.publish(&round);
            return Ok(running);
        }
        if !round.lost.is_empty() {
            tracing::warn!(node = %self.node, lost = ?round.lost, "shards lost: another node took them over");
        }
        tracing::info!(
            node = %self.node,
            from = ?self.held.iter().map(|h| h.0).collect::<Vec<_>>(),
            to = ?next.iter().map(|h| h.0).collect::<Vec<_>>(),
            "the shards this node holds changed: handing its engine over"
        );
        // Still acting on what it hands over until the hand-over is done.
        self.fence(&round.held());
        let kept_all = self.held.iter().all(|h| next.contains(h));
        if kept_all && round.to_release.is_empty() && !fenced_out {
            return self.take(round, next, handle, running, freezes, stop).await;
        }
        let load = self.whole(&next, freezes);
        let published = self.map_of(&round, &next);
        let map = Arc::clone(&self.map);
        let publish = move || *map.write().unwrap_or_else(|p| p.into_inner()) = published;
        let renewing = self.renewing(round.held());
        let (handle, stop) = (handle.clone(), stop.clone());
        let new =
            self.on_main(async move { runtime::hand_over_engine(&handle, running, load, stop, publish).await }).await;
        drop(renewing);
        let new = new?;
        self.fence(&next);
        self.held = next;
        self.note_zero();
        if !round.to_release.is_empty() {
            self.release(round.to_release).await?;
        }
        Ok(new)
    }

    /// A hand-over that only adds shards (another node died or gave them
    /// up; this one keeps all it held): only the new shards are read, while
    /// the engine runs on, and merged into it
    /// ([`runtime::absorb_into_engine`]). A third of a 1M-instance fleet
    /// rather than the two thirds a node then holds.
    async fn take(
        &mut self,
        round: ShardRound,
        next: Vec<(u32, i64)>,
        handle: &EngineHandle,
        running: JoinHandle<EngineMachine>,
        freezes: &Freezes,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<JoinHandle<EngineMachine>> {
        let taken: Vec<u16> =
            next.iter().filter(|h| !self.held.iter().any(|k| k.0 == h.0)).map(|h| h.0 as u16).collect();
        let renewing = self.renewing(round.held());
        let (store, filter) = (Arc::clone(&self.store), ShardFilter { shards: self.shards, held: taken });
        // An error stops the node, as a hand-over's does (`keep`).
        let part = tokio::task::spawn_blocking(move || store.load_shards_part(&filter)).await??;
        let share = Share::new(next.len() as u16, self.shards);
        let published = self.map_of(&round, &next);
        let map = Arc::clone(&self.map);
        let publish = move || *map.write().unwrap_or_else(|p| p.into_inner()) = published;
        let whole = self.whole(&next, freezes);
        let (handle, stop) = (handle.clone(), stop.clone());
        let new = self
            .on_main(
                async move { runtime::absorb_into_engine(&handle, running, part, share, whole, stop, publish).await },
            )
            .await;
        drop(renewing);
        let new = new?;
        self.fence(&next);
        self.held = next;
        self.note_zero();
        Ok(new)
    }

    /// What an engine of the shards `held` is restored from: all of them
    /// and the fleet-wide records, read when called.
    fn whole(
        &self,
        held: &[(u32, i64)],
        freezes: &Freezes,
    ) -> impl FnOnce() -> anyhow::Result<Reload> + Send + 'static {
        let (store, read) = (Arc::clone(&self.store), Arc::clone(freezes));
        let filter = ShardFilter { shards: self.shards, held: held.iter().map(|h| h.0 as u16).collect() };
        let share = Share::new(filter.held.len() as u16, self.shards);
        move || {
            let snapshot = store.load_shards(&filter)?;
            Ok(Reload { snapshot, share, freezes: read()? })
        }
    }

    async fn round(&self) -> anyhow::Result<ShardRound> {
        let (store, node, address, started_at, ttl, shards, held) = (
            Arc::clone(&self.store),
            self.node.clone(),
            self.address.clone(),
            self.started_at,
            self.ttl,
            u32::from(self.shards),
            self.held.clone(),
        );
        // A round that hangs (the database unreachable) is abandoned: the
        // watchdog fences the node meanwhile.
        let round = tokio::task::spawn_blocking(move || {
            store.shard_round(&node, &address, started_at, ttl, shards, MAX_MOVING, &held)
        });
        Ok(tokio::time::timeout(self.ttl / 2, round).await.map_err(|_| anyhow::anyhow!("no answer in time"))???)
    }

    async fn release(&self, released: Vec<(u32, i64)>) -> anyhow::Result<()> {
        let (store, node) = (Arc::clone(&self.store), self.node.clone());
        tokio::task::spawn_blocking(move || store.release_shards(&node, &released)).await??;
        Ok(())
    }

    /// The store's fences on `held`: each shard's commits, and the
    /// singletons' writes by shard 0's generation (0, which no lease has,
    /// when this node does not hold shard 0: they are refused here).
    fn fence(&self, held: &[(u32, i64)]) {
        let fleet = held.iter().find(|h| h.0 == 0).map_or(0, |h| h.1);
        let held: BTreeMap<u32, i64> = held.iter().copied().collect();
        self.store.fence_shards(ShardFence { node: self.node.clone(), shards: self.shards, held });
        self.store.fence_commits(&self.node, fleet);
    }

    fn filter(&self) -> ShardFilter {
        ShardFilter { shards: self.shards, held: self.held.iter().map(|h| h.0 as u16).collect() }
    }

    fn share(&self) -> Share {
        Share::new(self.held.len() as u16, self.shards)
    }

    fn map_of(&self, round: &ShardRound, held: &[(u32, i64)]) -> ShardMap {
        ShardMap {
            shards: self.shards,
            held: held.iter().map(|h| h.0 as u16).collect(),
            generations: held.iter().map(|h| (h.0 as u16, h.1)).collect(),
            holders: round
                .holders
                .iter()
                .map(|(shard, node, url)| (*shard as u16, Holder { node: node.clone(), url: url.clone() }))
                .collect(),
        }
    }

    fn publish(&self, round: &ShardRound) {
        let map = self.map_of(round, &self.held);
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }

    fn renewed_at(&self, sent: Instant) {
        let fence = SelfFence { ttl_micros: self.ttl.as_micros() as i64 };
        let until = fence.act_until(self.micros(sent) as i64).max(0) as u64;
        self.act_until.store(until, Ordering::SeqCst);
    }

    /// Whether the watchdog fenced this node out since its last round.
    fn expired(&self) -> bool {
        self.micros(Instant::now()) >= self.act_until.load(Ordering::SeqCst)
    }

    /// Narrows the fence to nothing once the node may no longer act (see
    /// the module), checking every 20 ms on a thread of its own, until
    /// `stop` or the returned guard is dropped.
    fn watchdog(&self, stop: watch::Receiver<bool>) -> StopOnDrop {
        let (store, node, shards, act_until, base, map, zero) = (
            Arc::clone(&self.store),
            self.node.clone(),
            self.shards,
            Arc::clone(&self.act_until),
            self.base,
            Arc::clone(&self.map),
            Arc::clone(&self.zero),
        );
        let stopped = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&stopped);
        let spawned = std::thread::Builder::new().name("drover-shard-watchdog".into()).spawn(move || {
            let mut fenced = false;
            loop {
                std::thread::sleep(Duration::from_millis(20));
                if ended.load(Ordering::SeqCst) || *stop.borrow() {
                    return;
                }
                let now = Instant::now().saturating_duration_since(base).as_micros() as u64;
                let expired = now >= act_until.load(Ordering::SeqCst);
                if expired && !fenced {
                    tracing::error!(%node, "the shards' leases could not be renewed in time: this node stops acting on them");
                    store.fence_shards(ShardFence { node: node.clone(), shards, held: BTreeMap::new() });
                    store.fence_commits(&node, 0);
                    // Taken again later, shard 0 restores the pager again.
                    zero.send_if_modified(|z| std::mem::replace(z, false));
                    let mut map = map.write().unwrap_or_else(|p| p.into_inner());
                    map.held.clear();
                    map.generations.clear();
                }
                fenced = expired;
            }
        });
        if let Err(error) = spawned {
            // Without it nothing fences this node in time: it must not act.
            crate::lease::stop(&format!("node {} cannot start its shards' watchdog: {error}", self.node));
        }
        StopOnDrop(stopped)
    }
}
