//! The agent's side: every `probe_interval`, each running instance that is
//! not partitioned is asked for its facts over a kept-open connection, all
//! concurrently and each with a short timeout, so one hung server never
//! delays the others' beats. One `ProviderEvent::Beats` per round.

use super::postgres;
use super::registry::InstanceEntry;
use super::{lock, Inner};
use crate::ProviderEvent;
use drover_model::{Beat, Facts, Fault, InstanceId, Role, ServiceId};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The shortest interval honoured; zero would spin.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// The most one instance's beat query may take; a slower server is silent
/// this round (and its connection is dropped and made again next round).
const MAX_BEAT_TIMEOUT: Duration = Duration::from_millis(800);

const FACTS_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     (SELECT count(*) FROM pg_stat_activity)::int4, \
     COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false), \
     (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name <> 'pg_basebackup')::int4, \
     current_setting('synchronous_standby_names'), \
     current_setting('default_transaction_read_only') = 'off'";

/// What one instance answered.
struct Sample {
    id: InstanceId,
    service: ServiceId,
    in_recovery: bool,
    lsn: Option<u64>,
    connections: u32,
    streaming: bool,
    streaming_followers: u32,
    sync_names: String,
    read_write: bool,
}

impl Inner {
    pub(super) async fn heartbeat_loop(
        self: Arc<Self>,
        sink: mpsc::Sender<ProviderEvent>,
        generation: u64,
    ) {
        let period = self.config.probe_interval.max(MIN_PROBE_INTERVAL);
        let timeout = (period * 8 / 10).min(MAX_BEAT_TIMEOUT);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if sink.is_closed()
                || self.closed.load(Ordering::SeqCst)
                || self.loop_generation.load(Ordering::SeqCst) != generation
            {
                break;
            }
            let beats = self.beat_round(timeout).await;
            if beats.is_empty() {
                continue;
            }
            if sink.send(ProviderEvent::Beats(beats)).await.is_err() {
                break;
            }
        }
        tracing::debug!(generation, "local heartbeat loop stopped");
    }

    async fn beat_round(self: &Arc<Self>, timeout: Duration) -> Vec<Beat> {
        let audible: Vec<(InstanceId, InstanceEntry)> = {
            let registry = lock(&self.registry);
            let servers = lock(&self.servers);
            registry
                .instances
                .iter()
                .filter(|(id, e)| {
                    e.should_run()
                        && e.fault != Some(Fault::Partition)
                        && servers.get(id).is_some_and(|p| !p.has_exited())
                })
                .map(|(id, e)| (*id, e.clone()))
                .collect()
        };
        let mut probes = tokio::task::JoinSet::new();
        for (id, entry) in audible {
            let inner = self.clone();
            probes.spawn(async move { inner.sample(id, &entry, timeout).await });
        }
        let mut samples = Vec::new();
        while let Some(joined) = probes.join_next().await {
            if let Ok(Some(sample)) = joined {
                samples.push(sample);
            }
        }
        self.keep_sync_mode(&samples);
        self.keep_routers();
        // Lag: the service's primary position (this round) minus the follower's.
        let primary_lsn: HashMap<ServiceId, u64> = samples
            .iter()
            .filter(|s| !s.in_recovery)
            .filter_map(|s| Some((s.service, s.lsn?)))
            .collect();
        samples
            .iter()
            .map(|s| {
                let role = if s.in_recovery {
                    Role::Follower
                } else {
                    Role::Primary
                };
                let lag = match (s.in_recovery, s.lsn, primary_lsn.get(&s.service)) {
                    (true, Some(mine), Some(theirs)) => Some(theirs.saturating_sub(mine)),
                    _ => None,
                };
                Beat {
                    instance: s.id,
                    seq: self.next_seq(),
                    facts: Facts {
                        role: Some(role),
                        writable: Some(!s.in_recovery && s.read_write),
                        wal_position: s.lsn,
                        replication_lag_bytes: lag,
                        upstream_streaming: s.in_recovery.then_some(s.streaming),
                        connections: Some(s.connections),
                        last_backup_at: None,
                    },
                }
            })
            .collect()
    }

    /// One instance's facts, within `timeout`, over its kept-open connection.
    async fn sample(
        &self,
        id: InstanceId,
        entry: &InstanceEntry,
        timeout: Duration,
    ) -> Option<Sample> {
        let slot = lock(&self.beat_clients).entry(id).or_default().clone();
        // Still held by last round's query (a hung server): stay silent.
        let mut client = slot.try_lock().ok()?;
        let attempt = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                *client = Some(postgres::connect(entry, timeout).await?);
            }
            let connection = client.as_ref().expect("connected just above");
            connection
                .query_one(FACTS_SQL, &[])
                .await
                .map_err(|e| postgres::error_text(&e))
        };
        let row = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                tracing::debug!(instance = %id, %error, "heartbeat query failed");
                *client = None;
                return None;
            }
            Err(_) => {
                *client = None;
                return None;
            }
        };
        let lsn: Option<String> = row.get(1);
        Some(Sample {
            id,
            service: entry.service,
            in_recovery: row.get(0),
            lsn: lsn.as_deref().and_then(postgres::parse_lsn),
            connections: row.get::<_, i32>(2).max(0) as u32,
            streaming: row.get(3),
            streaming_followers: row.get::<_, i32>(4).max(0) as u32,
            sync_names: row.get(5),
            read_write: row.get(6),
        })
    }

    /// Non-strict synchronous mode (see `adjust_sync`): a sync service's
    /// primary whose streaming followers went from some to none (or back)
    /// gets its synchronous_standby_names changed, off the beat path.
    fn keep_sync_mode(self: &Arc<Self>, samples: &[Sample]) {
        let sync_services: Vec<ServiceId> = {
            let registry = lock(&self.registry);
            samples
                .iter()
                .filter(|s| !s.in_recovery)
                .filter(|s| {
                    registry
                        .services
                        .get(&s.service)
                        .is_some_and(|svc| svc.sync && svc.primary == Some(s.id))
                })
                .filter(|s| (s.streaming_followers == 0) != s.sync_names.is_empty())
                .map(|s| s.service)
                .collect()
        };
        for service in sync_services {
            let inner = self.clone();
            tokio::spawn(async move {
                if let Err(error) = inner.adjust_sync(service).await {
                    tracing::warn!(%service, %error, "cannot adjust synchronous replication");
                }
            });
        }
    }

    /// A router that died unasked is started again (same port, same
    /// config): the service URL must keep working.
    fn keep_routers(self: &Arc<Self>) {
        let dead: Vec<ServiceId> = lock(&self.routers)
            .iter()
            .filter(|(_, p)| p.has_exited())
            .map(|(service, _)| *service)
            .collect();
        for service in dead {
            lock(&self.routers).remove(&service);
            let inner = self.clone();
            tokio::spawn(async move {
                let guard = inner.service_lock(service);
                let _held = guard.lock().await;
                match inner.ensure_router(service).await {
                    Ok(()) => tracing::info!(%service, "router restarted"),
                    Err(error) => tracing::warn!(%service, %error, "cannot restart router"),
                }
            });
        }
    }
}
