//! Several shards on a PostgreSQL store shared by control-plane nodes
//! (issue 16): one round of a node over every shard's lease, deciding with
//! the pure logic of [`drover_engine::shard_lease`] (what the simulator's
//! `control-plane-nodes` scenario drives) against the database as it is.
//!
//! A round, on the node's own lease connection and a pooled one:
//! 1. notes the node (`nodes.last_seen`, the database's clock);
//! 2. renews every lease it holds in one statement (holder and generation
//!    must still be its own); the others are lost, and their locks let go
//!    (after its lease connection closed, it locks what it renewed again
//!    on the new one, and counts as lost what it cannot);
//! 3. reads every shard's lease, the holder locks granted (`pg_locks`: a
//!    lease whose generation's lock nobody holds is orphaned, its holder's
//!    process gone) and the live nodes (seen within a TTL, and connected
//!    under their lease connection's `application_name`);
//! 4. plans with [`shard_lease::plan_round`], and takes shards as
//!    `PgStore::try_acquire_lease` takes the fleet's: the lock of the next
//!    generation first, then an update conditional on the generation read.
//!
//! Hand-overs are the caller's to finish: it stops acting on a shard, then
//! calls [`PgStore::release_shards`] (the server's side is
//! `drover_server::held::Keeper`, run by `drover serve --shards N`). This
//! is the store's part, tested against a real PostgreSQL
//! (`crates/store/tests/shards.rs`).

use crate::pg::{lock_key, note_node, open_lease_session, pg, take_lease_row, DB_NOW, HOLDER_LOCK};
use crate::{PgStore, StoreError};
use drover_engine::shard_lease::{self, ShardLease, HANDOVER_GRACE};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// At most this many shards (the lock key keeps 11 bits for the shard).
pub const MAX_SHARDS: u32 = 2048;

/// The shards a node loads: `held` of the fleet's `shards`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFilter {
    pub shards: u16,
    pub held: Vec<u16>,
}

impl ShardFilter {
    /// Whether a record of `slot` is in one of the held shards.
    pub fn holds(&self, slot: drover_model::Slot) -> bool {
        self.held.contains(&slot.shard(self.shards))
    }
}

/// The `cluster_settings` row of the shard count.
const SHARD_COUNT: &str = "shards";

/// What one round did ([`PgStore::shard_round`]).
/// What `PgStore::fleet_record_counts` counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetRecordCounts {
    pub images: i64,
    pub hosts: i64,
    pub cordoned: i64,
    pub draining: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardRound {
    /// Held before the round and renewed (the holder's own deadline counts
    /// from when it started the round: [`shard_lease::SelfFence`]).
    pub renewed: Vec<(u32, i64)>,
    /// Held before and no longer this node's: it stops acting on them.
    pub lost: Vec<(u32, i64)>,
    /// Taken this round, with their generation.
    pub taken: Vec<(u32, i64)>,
    /// To hand over: stop acting on them, then [`PgStore::release_shards`].
    pub to_release: Vec<(u32, i64)>,
    /// The live nodes the round saw.
    pub live: Vec<String>,
    /// The shards other nodes hold as the round read them (lease not
    /// expired, holder's lock granted), with the holder and the address it
    /// serves at: where this node forwards their requests.
    pub holders: Vec<(u32, String, String)>,
}

impl ShardRound {
    /// What this node holds after the round (before its hand-overs).
    pub fn held(&self) -> Vec<(u32, i64)> {
        let mut held: Vec<(u32, i64)> = self.renewed.iter().chain(&self.taken).copied().collect();
        held.sort();
        held
    }
}

impl PgStore {
    /// The fleet's shard count, fixed by the first node that starts on the
    /// store: `requested` is stored if none is yet; a node that asks for
    /// another count than the stored one is refused (moving services
    /// between shards is not built: a slot's shard is `slot % shards`).
    pub fn shard_count(&self, requested: Option<u16>) -> Result<u16, StoreError> {
        if let Some(n) = requested.filter(|n| *n == 0 || u32::from(*n) > MAX_SHARDS) {
            return Err(StoreError::Invalid(format!("a fleet has between 1 and {MAX_SHARDS} shards, not {n}")));
        }
        self.with_client(move |client| async move {
            let op = pg("reading the shard count");
            if let Some(n) = requested.filter(|n| *n > 1) {
                // Slots are what a node routes by: a service minted before
                // them (its id's slot not its name's) would be routed by its
                // name to one shard and loaded by its id into another.
                let set = client
                    .query_opt("SELECT 1 FROM cluster_settings WHERE name = $1", &[&SHARD_COUNT])
                    .await
                    .map_err(&op)?
                    .is_some();
                if !set {
                    let rows = client
                        .query("SELECT id, name FROM services WHERE state != 'deleted'", &[])
                        .await
                        .map_err(&op)?;
                    let unslotted = rows.iter().find(|row| {
                        let (id, name): (&str, &str) = (row.get(0), row.get(1));
                        id.parse::<drover_model::ServiceId>()
                            .map_or(true, |id| id.slot() != drover_model::Slot::of_name(name))
                    });
                    if let Some(row) = unslotted {
                        let name: &str = row.get(1);
                        return Err(StoreError::Invalid(format!(
                            "this store's fleet cannot be split into {n} shards: service {name:?} was created by a \
                             Drover before slots (its id does not carry its name's slot), so it could not be routed; \
                             serve this store without --shards (one shard)"
                        )));
                    }
                }
            }
            if let Some(n) = requested {
                client
                    .execute(
                        "INSERT INTO cluster_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&SHARD_COUNT, &n.to_string()],
                    )
                    .await
                    .map_err(&op)?;
            }
            let stored: Option<String> = client
                .query_opt("SELECT value FROM cluster_settings WHERE name = $1", &[&SHARD_COUNT])
                .await
                .map_err(&op)?
                .map(|row| row.get(0));
            let stored = match stored {
                None => 1,
                Some(v) => {
                    v.parse::<u16>().ok().filter(|n| *n >= 1 && u32::from(*n) <= MAX_SHARDS).ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "the store's shard count {v:?} is not a number from 1 to {MAX_SHARDS}"
                        ))
                    })?
                }
            };
            match requested {
                Some(n) if n != stored => Err(StoreError::Invalid(format!(
                    "this store's fleet has {stored} shards, fixed when it was first served; a node cannot serve it \
                     with {n} (start it with --shards {stored}, or without --shards)"
                ))),
                _ => Ok(stored),
            }
        })
    }

    /// The live state of the shards in `filter` only (what a node loads
    /// when it takes them; see `PgStore::load_where`).
    pub fn load_shards(&self, filter: &ShardFilter) -> Result<drover_model::Snapshot, StoreError> {
        self.load_where(Some(filter), true)
    }

    /// Only the shards' own records in `filter` (services, instances, open
    /// actions, archives): what a node running an engine adds to it when it
    /// takes shards over (`Engine::absorb`); the fleet-wide records are left
    /// out, its engine has them.
    pub fn load_shards_part(&self, filter: &ShardFilter) -> Result<drover_model::Snapshot, StoreError> {
        self.load_where(Some(filter), false)
    }

    /// How many images and hosts the store has, and how many hosts an
    /// operator cordoned or drained: images and hosts are only ever added,
    /// and a host's operator state only moves forward (ready → cordoned →
    /// draining; the hosts' upsert never takes it back, `pg::HOSTS_UPSERT`),
    /// so a node that saw these numbers has seen it all
    /// (`PgStore::fleet_records`).
    pub fn fleet_record_counts(&self) -> Result<FleetRecordCounts, StoreError> {
        self.with_client(|client| async move {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM images), count(*), count(*) FILTER (WHERE state = 'cordoned'),
                       count(*) FILTER (WHERE state = 'draining') FROM hosts",
                    &[],
                )
                .await
                .map_err(pg("counting the fleet's images and hosts"))?;
            Ok(FleetRecordCounts { images: row.get(0), hosts: row.get(1), cordoned: row.get(2), draining: row.get(3) })
        })
    }

    /// Writes how `node`'s engine sees each shard it holds (`rows`: shard,
    /// the generation it holds it with, the health as JSON). A row is
    /// replaced only by the same or a newer generation: a node that lost a
    /// shard does not write over its new holder's. Returns how many rows
    /// were written.
    pub fn put_shard_health(&self, node: &str, rows: &[(u16, i64, String)]) -> Result<u64, StoreError> {
        let (node, rows) = (node.to_string(), rows.to_vec());
        self.with_client(move |client| async move {
            let write = pg("writing the shards' health");
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO shard_health (shard, generation, node, health, at) VALUES ($1, $2, $3, $4, {DB_NOW})
                     ON CONFLICT (shard) DO UPDATE SET generation = excluded.generation, node = excluded.node,
                       health = excluded.health, at = excluded.at
                     WHERE shard_health.generation <= excluded.generation"
                ))
                .await
                .map_err(&write)?;
            let mut written = 0;
            for (shard, generation, health) in &rows {
                written += client
                    .execute(&statement, &[&i64::from(*shard), generation, &node, health])
                    .await
                    .map_err(&write)?;
            }
            Ok(written)
        })
    }

    /// Every shard's health written within `fresh` (by the database's
    /// clock): shard, the node that wrote it, the JSON.
    pub fn shard_health(&self, fresh: Duration) -> Result<Vec<(u16, String, String)>, StoreError> {
        let fresh = fresh.as_micros().min(i64::MAX as u128) as i64;
        self.with_client(move |client| async move {
            let rows = client
                .query(
                    &format!("SELECT shard, node, health FROM shard_health WHERE {DB_NOW} - at < $1 ORDER BY shard"),
                    &[&fresh],
                )
                .await
                .map_err(pg("reading the shards' health"))?;
            Ok(rows
                .iter()
                .filter_map(|r| Some((u16::try_from(r.get::<_, i64>(0)).ok()?, r.get(1), r.get(2))))
                .collect())
        })
    }

    /// Every image and host of the fleet, in the order a load reads them:
    /// what the engines of a split fleet learn from the store once shard
    /// 0's holder registered them.
    pub fn fleet_records(&self) -> Result<(Vec<drover_model::Image>, Vec<drover_model::HostRecord>), StoreError> {
        self.with_client(|client| async move {
            let read = pg("reading the fleet's images and hosts");
            let images = crate::pg::records(
                "images",
                &client
                    .query("SELECT id, record FROM images ORDER BY created_at, id COLLATE \"C\"", &[])
                    .await
                    .map_err(&read)?,
            )?;
            let hosts = crate::pg::records(
                "hosts",
                &client
                    .query("SELECT name, record FROM hosts ORDER BY registered_at, name COLLATE \"C\"", &[])
                    .await
                    .map_err(&read)?,
            )?;
            Ok((images, hosts))
        })
    }

    /// The rollouts' records not finished, and those written at or after
    /// `since` (micros, the writer's clock), oldest write first: what the
    /// engines of a split fleet follow of the rollouts shard 0's holder
    /// keeps.
    pub fn rollouts_since(&self, since: i64) -> Result<Vec<drover_model::RolloutRecord>, StoreError> {
        self.with_client(move |client| async move {
            let read = pg("reading the rollouts");
            crate::pg::records(
                "rollouts",
                &client
                    .query(
                        "SELECT id, record FROM rollouts WHERE updated_at >= $1 OR state IN ('pending', 'running', 'paused') \
                         ORDER BY updated_at, id COLLATE \"C\"",
                        &[&since],
                    )
                    .await
                    .map_err(&read)?,
            )
        })
    }

    /// One round of `node` over `shards` shards (see the module): renews
    /// what it `held`, takes its share and what nobody holds, and says what
    /// to hand over (at most `max_moving` shards free at once).
    #[allow(clippy::too_many_arguments)]
    pub fn shard_round(
        &self,
        node: &str,
        address: &str,
        started_at: i64,
        ttl: Duration,
        shards: u32,
        max_moving: u32,
        held: &[(u32, i64)],
    ) -> Result<ShardRound, StoreError> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(StoreError::Postgres {
                operation: "a round over the shards",
                detail: format!("shards must be 1 to {MAX_SHARDS}, not {shards}"),
            });
        }
        let (node, address, held) = (node.to_string(), address.to_string(), held.to_vec());
        let ttl = ttl.as_micros().min(i64::MAX as u128) as i64;
        let grace = HANDOVER_GRACE.as_micros() as i64;
        let (session, closed_flag) = (Arc::clone(&self.lease_session), Arc::clone(&self.lease_session_closed));
        let (config, target) = (self.config.clone(), self.target.clone());
        self.with_client(move |client| async move {
            let mut slot = session.lock().await;
            // A lease connection that closed (the database restarted, an
            // administrator ended it) took this node's locks with it:
            // other nodes see its shards orphaned from then on.
            let reopened = slot.as_ref().is_some_and(|s| s.closed.load(std::sync::atomic::Ordering::SeqCst));
            let session = open_lease_session(&mut slot, &closed_flag, &config, &target, &node).await?;
            note_node(&client, &node, &address, started_at).await?;
            // Renew what it holds, in one statement.
            let renewed: HashSet<(u32, i64)> = renew(&client, &node, ttl, &held).await?.into_iter().collect();
            let mut round = ShardRound::default();
            for h in &held {
                // Its locks again on the new connection, before it counts
                // a shard as its own; one it cannot lock, it gives up.
                let relocked = !reopened || !renewed.contains(h) || session.try_lock(h.0 as i64, h.1).await?;
                if renewed.contains(h) && relocked {
                    round.renewed.push(*h);
                } else {
                    // Taken over (it had expired): its lock is stale.
                    session.unlock(h.0 as i64, h.1).await?;
                    round.lost.push(*h);
                }
            }
            // Every lease, the locks granted, the live nodes.
            let rows = client
                .query(
                    &format!(
                        "SELECT shard, holder, generation, expires_at <= {DB_NOW}, {DB_NOW} - expires_at > $2, \
                           address FROM leases WHERE shard >= 0 AND shard < $1"
                    ),
                    &[&(shards as i64), &grace],
                )
                .await
                .map_err(pg("reading the shards' leases"))?;
            let locked: HashSet<i64> = client
                .query(
                    "SELECT objid::bigint FROM pg_locks \
                     WHERE locktype = 'advisory' AND classid::bigint = $1 AND objsubid = 2 AND granted",
                    &[&(HOLDER_LOCK as i64)],
                )
                .await
                .map_err(pg("reading the holders' locks"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let lock_held = |shard: i64, generation: i64| locked.contains(&(lock_key(shard, generation) as u32 as i64));
            round.live = client
                .query(
                    &format!(
                        "SELECT n.name FROM nodes n WHERE {DB_NOW} - n.last_seen < $1 AND EXISTS \
                           (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = \
                              left('drover-lease:' || n.name, 63)) ORDER BY n.name"
                    ),
                    &[&ttl],
                )
                .await
                .map_err(pg("reading the live nodes"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut leases: Vec<ShardLease> =
                (0..shards).map(|_| ShardLease { lease: None, locked: false, overdue: false }).collect();
            for r in &rows {
                let shard: i64 = r.get(0);
                let (holder, generation, expired, overdue): (String, i64, bool, bool) =
                    (r.get(1), r.get(2), r.get(3), r.get(4));
                if !expired && lock_held(shard, generation) && holder != node {
                    round.holders.push((shard as u32, holder.clone(), r.get(5)));
                }
                leases[shard as usize] = ShardLease {
                    lease: Some(shard_lease::LeaseView { holder, generation, expired }),
                    locked: lock_held(shard, generation),
                    overdue,
                };
            }
            // What it just renewed reads as its own.
            let plan = shard_lease::plan_round(&node, &round.live, &leases, max_moving as usize);
            round.to_release =
                plan.release.iter().filter_map(|s| round.renewed.iter().find(|(r, _)| r == s).copied()).collect();
            for (shard, take) in plan.take {
                if !session.try_lock(shard as i64, take.next).await? {
                    continue; // Another node is taking it right now.
                }
                if take_lease_row(&client, shard as i64, &node, &address, ttl, &take).await? {
                    round.taken.push((shard, take.next));
                    round.holders.retain(|(s, _, _)| *s != shard);
                } else {
                    session.unlock(shard as i64, take.next).await?;
                }
            }
            Ok(round)
        })
    }

    /// Renews `held` only, nothing taken or handed over: what a node does
    /// while it loads the shards a round gave it (a load of a large fleet
    /// outlasts the lease). Returns those renewed, still its own; a lost
    /// one is the next round's to say.
    pub fn renew_shards(
        &self,
        node: &str,
        address: &str,
        started_at: i64,
        ttl: Duration,
        held: &[(u32, i64)],
    ) -> Result<Vec<(u32, i64)>, StoreError> {
        let (node, address) = (node.to_string(), address.to_string());
        let ttl = ttl.as_micros().min(i64::MAX as u128) as i64;
        let held = held.to_vec();
        self.with_client(move |client| async move {
            note_node(&client, &node, &address, started_at).await?;
            renew(&client, &node, ttl, &held).await
        })
    }

    /// Hands `released` over (the caller no longer acts on them): each
    /// lease, if still this node's, expires now, and its lock is let go.
    pub fn release_shards(&self, node: &str, released: &[(u32, i64)]) -> Result<(), StoreError> {
        let (node, released) = (node.to_string(), released.to_vec());
        let (session, closed_flag) = (Arc::clone(&self.lease_session), Arc::clone(&self.lease_session_closed));
        let (config, target) = (self.config.clone(), self.target.clone());
        self.with_client(move |client| async move {
            let mut slot = session.lock().await;
            let session = open_lease_session(&mut slot, &closed_flag, &config, &target, &node).await?;
            for (shard, generation) in released {
                client
                    .execute(
                        &format!(
                            "UPDATE leases SET expires_at = {DB_NOW} \
                             WHERE shard = $1 AND holder = $2 AND generation = $3"
                        ),
                        &[&(shard as i64), &node, &generation],
                    )
                    .await
                    .map_err(pg("handing a shard over"))?;
                session.unlock(shard as i64, generation).await?;
            }
            Ok(())
        })
    }
}

/// Renews `node`'s leases of `held` for `ttl` microseconds by the
/// database's clock, in one statement: those still its own.
async fn renew(
    client: &tokio_postgres::Client,
    node: &str,
    ttl: i64,
    held: &[(u32, i64)],
) -> Result<Vec<(u32, i64)>, StoreError> {
    let (shards, generations): (Vec<i64>, Vec<i64>) = held.iter().map(|(s, g)| (*s as i64, *g)).unzip();
    let renewed = client
        .query(
            &format!(
                "UPDATE leases SET expires_at = {DB_NOW} + $2 \
                 WHERE holder = $1 AND (shard, generation) IN \
                   (SELECT * FROM unnest($3::bigint[], $4::bigint[])) \
                 RETURNING shard, generation"
            ),
            &[&node, &ttl, &shards, &generations],
        )
        .await
        .map_err(pg("renewing the shards' leases"))?;
    Ok(renewed.iter().map(|r| (r.get::<_, i64>(0) as u32, r.get::<_, i64>(1))).collect())
}
