//! The fleet's lease on a PostgreSQL store shared by several control-plane
//! nodes (issue 16, first step: one shard, the whole fleet).
//!
//! A node starts as a standby until it holds the lease
//! ([`drover_store::PgStore::try_acquire_lease`]: the generation rises on
//! every acquisition); only then does it load the fleet and act. It renews
//! every quarter of the TTL, by the database's clock. Two guards keep a
//! node that lost the lease from acting on the fleet:
//!
//! - **fencing**: every commit checks holder and generation in its own
//!   transaction ([`drover_store::PgStore::fence_commits`]); the engine
//!   dispatches an action only after its commit, so a stale node's
//!   decisions are never carried out;
//! - **self-fencing**: a node that has not renewed for 4/5 of the TTL (by
//!   its own monotonic clock, counted from when it sent the last renewal
//!   that succeeded, so before the database's expiry) or that finds the
//!   lease taken stops at once (exit code 3), as if killed -9: a
//!   supervisor starts it again, as a standby. A holder whose lease
//!   connection closed (the database restarted) takes its lock again on a
//!   new one before it renews; if a standby took the fleet over meanwhile,
//!   the renewal fails and it stops.
//!
//! A holder that dies is not waited for: it holds an advisory lock for its
//! generation on a connection of its own, which PostgreSQL lets go of when
//! the process's socket closes, and a standby that finds the lock free
//! takes the lease over before its expiry (`PgStore::try_acquire_lease`).
//! A paused holder keeps its connection, and so its lock: it is taken over
//! when its lease expires, as before.
//!
//! What to do with a lease that was read is `drover_engine::shard_lease`
//! (pure, and driven by the simulator's `control-plane-nodes`). Not built
//! yet here: several shards (that module's `rebalance`) in the server.

use drover_store::PgStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The exit code of a node that stopped itself for its lease.
pub const LEASE_EXIT_CODE: i32 = 3;

/// `--node`, else the host's name.
pub fn node_name(node: Option<&str>) -> String {
    if let Some(node) = node.map(str::trim).filter(|n| !n.is_empty()) {
        return node.to_string();
    }
    crate::host_name()
}

/// The longest node name: its lease connection's `application_name`
/// (`drover-lease:` and the name) must fit PostgreSQL's 63 bytes, or two
/// names alike in their first 50 would pass for one another.
pub const MAX_NODE_NAME: usize = 63 - "drover-lease:".len();

/// Why `name` cannot name a node sharing a PostgreSQL store: the other
/// nodes see it alive by its lease connection's `application_name`, which
/// PostgreSQL keeps to 63 bytes of printable ASCII (anything else turned
/// into `?`, and such a node would never count as alive).
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(format!(
            "the node name {name:?} must be 1 to {MAX_NODE_NAME} characters (it names the node's connection to the \
             store, which PostgreSQL keeps to 63 bytes); pass a shorter --node"
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "the node name {name:?} has {c:?}: a node name is printable ASCII only (PostgreSQL shows any other \
             character of a connection's name as '?', and the other nodes would never see this one alive); pass \
             another --node"
        ));
    }
    Ok(())
}

/// Who holds the fleet, as a standby last saw it: where it forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    /// Its API URL (`http://host:port`).
    pub url: String,
}

/// What a standby tells its HTTP layer (None: not a standby, or no holder).
pub type Standby = Arc<std::sync::RwLock<Option<Holder>>>;

/// Which shards a ready node holds and who holds the others, as its lease
/// rounds last saw them: where its HTTP layer sends a request for a shard
/// it does not hold (`forward`, `shard_route::decide`). The default is a
/// fleet not split, which this node answers whole once ready.
#[derive(Clone, Debug, Default)]
pub struct ShardMap {
    /// The fleet's shard count (0 or 1: not split).
    pub shards: u16,
    /// The shards this node holds and acts on.
    pub held: std::collections::BTreeSet<u16>,
    /// The holder of each other shard that has one.
    pub holders: std::collections::BTreeMap<u16, Holder>,
    /// The generation this node holds each of `held` with: what its
    /// actions on that shard carry (`sim_provider::RemoteSim`).
    pub generations: std::collections::BTreeMap<u16, i64>,
}

impl ShardMap {
    /// Whether this node answers every request itself.
    pub fn whole(&self) -> bool {
        self.shards <= 1 || (0..self.shards).all(|s| self.held.contains(&s))
    }
}

/// A ready node's [`ShardMap`], shared with its HTTP layer.
pub type Shards = Arc<std::sync::RwLock<ShardMap>>;

/// The URL other nodes reach this one at: the listen URL, with the host's
/// name for an unspecified address (`0.0.0.0`).
pub fn advertised_url(listen_url: &str) -> String {
    match listen_url.split_once("://") {
        Some((scheme, rest)) if rest.starts_with("0.0.0.0:") || rest.starts_with("[::]:") => {
            let port = rest.rsplit(':').next().unwrap_or_default();
            format!("{scheme}://{}:{port}", crate::host_name())
        }
        _ => listen_url.to_string(),
    }
}

/// Waits (a standby, publishing the holder in `standby` for the HTTP
/// layer to forward to) until `node` holds the fleet's lease, fences the
/// store's commits with it and starts its renewal; returns the store and
/// the lease's generation (sent with every action: `sim_provider`).
pub async fn hold_the_fleet(
    store: Arc<PgStore>,
    node: String,
    address: String,
    ttl: Duration,
    standby: Standby,
) -> anyhow::Result<(Arc<PgStore>, i64)> {
    let waiting = Arc::clone(&store);
    let name = node.clone();
    let published = Arc::clone(&standby);
    let started_at = crate::runtime::now().0;
    let seen_address = address.clone();
    let generation = tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
        let mut said: Option<(String, i64)> = None;
        loop {
            if let Err(error) = waiting.node_seen(&name, &address, started_at) {
                tracing::warn!(node = %name, %error, "cannot note this node in the store");
            }
            match waiting.try_acquire_lease(&name, &address, ttl)? {
                Ok(generation) => {
                    *published.write().unwrap_or_else(|p| p.into_inner()) = None;
                    return Ok(generation);
                }
                Err(held) => {
                    let holder = (!held.address.is_empty())
                        .then(|| Holder { node: held.holder.clone(), url: held.address.clone() });
                    *published.write().unwrap_or_else(|p| p.into_inner()) = holder;
                    let who = (held.holder.clone(), held.generation);
                    if said.as_ref() != Some(&who) {
                        tracing::warn!(
                            node = %name,
                            holder = %held.holder,
                            generation = held.generation,
                            expires_in_ms = held.expires_in.as_millis() as u64,
                            "standby: another node holds the fleet's lease; taking over when it expires or its holder dies"
                        );
                        said = Some(who);
                    }
                    // Often: a holder that died is found out by its lock,
                    // not by its lease's expiry.
                    std::thread::sleep((ttl / 8).clamp(Duration::from_millis(100), Duration::from_millis(250)));
                }
            }
        }
    })
    .await??;
    store.fence_commits(&node, generation);
    tracing::info!(%node, generation, ttl_ms = ttl.as_millis() as u64, "this node holds the fleet's lease");
    keep(Arc::downgrade(&store), node, seen_address, started_at, generation, ttl);
    Ok((store, generation))
}

/// Renews the lease every TTL/4 and stops the process once it is lost or
/// could not be renewed in time (see the module). Ends with the store.
fn keep(store: Weak<PgStore>, node: String, address: String, started_at: i64, generation: i64, ttl: Duration) {
    let base = Instant::now();
    let margin = ttl / 5;
    let at = move |i: Instant| i.duration_since(base).as_micros() as u64;
    // Just acquired: the database's expiry is at least a TTL away.
    let deadline = Arc::new(AtomicU64::new(at(Instant::now() + ttl - margin)));
    let watched = Arc::clone(&deadline);
    let watched_store = store.clone();
    let watch_node = node.clone();
    std::thread::Builder::new()
        .name("drover-lease-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(50));
            if watched_store.strong_count() == 0 {
                return;
            }
            if at(Instant::now()) >= watched.load(Ordering::SeqCst) {
                stop(&format!(
                    "node {watch_node} could not renew the fleet's lease (generation {generation}) in time; it \
                     stops before the lease can expire"
                ));
            }
        })
        .expect("spawn the lease watchdog");
    std::thread::Builder::new()
        .name("drover-lease".into())
        .spawn(move || loop {
            std::thread::sleep(ttl / 4);
            let Some(store) = store.upgrade() else { return };
            let sent = Instant::now();
            if store.lease_session_lost() {
                // The database restarted, or the connection was cut: the
                // lock went with it, and a standby may have taken the
                // fleet over meanwhile (then the renewal below fails).
                match store.reclaim_lease_lock(generation) {
                    Ok(true) => {
                        tracing::warn!(%node, generation, "the lease's connection was lost; its lock is taken again")
                    }
                    Ok(false) => stop(&format!(
                        "node {node} lost its lease's connection and another node holds the lock of generation \
                         {generation}"
                    )),
                    Err(error) => {
                        tracing::warn!(%node, %error, "cannot take the lease's lock again; retrying");
                        continue;
                    }
                }
            }
            match store.renew_lease(&node, generation, ttl) {
                Ok(true) => {
                    deadline.fetch_max(at(sent + ttl - margin), Ordering::SeqCst);
                    if let Err(error) = store.node_seen(&node, &address, started_at) {
                        tracing::warn!(%node, %error, "cannot note this node in the store");
                    }
                }
                Ok(false) => stop(&format!(
                    "node {node} lost the fleet's lease (generation {generation}): another node took the fleet over"
                )),
                Err(error) => tracing::warn!(%node, %error, "cannot renew the fleet's lease; retrying"),
            }
        })
        .expect("spawn the lease renewal");
}

/// Stops the process at once: nothing more of this node's may reach the
/// fleet (its commits are refused anyway), and its servers live on for the
/// next holder, as after a kill -9.
pub(crate) fn stop(why: &str) -> ! {
    tracing::error!("{why}; exiting with code {LEASE_EXIT_CODE}");
    eprintln!("drover serve: {why}; exiting with code {LEASE_EXIT_CODE}");
    std::process::exit(LEASE_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_fits_its_connection_s_name_in_printable_ascii() {
        for ok in ["a", "node-1", "cp 2.eu-west", &"n".repeat(MAX_NODE_NAME)] {
            assert_eq!(check_node_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(MAX_NODE_NAME, 50);
        let long = "n".repeat(MAX_NODE_NAME + 1);
        assert!(check_node_name(&long).unwrap_err().contains("1 to 50 characters"));
        assert!(check_node_name("").unwrap_err().contains("1 to 50"));
        for bad in ["nœud", "tab\there", "a\u{7f}"] {
            let err = check_node_name(bad).unwrap_err();
            assert!(err.contains("printable ASCII"), "{bad}: {err}");
        }
        // What the store names the connection: the name whole.
        assert_eq!(format!("drover-lease:{long}").len(), 64, "one past PostgreSQL's 63");
    }
}
