//! The agent's side: every `probe_interval`, each running instance that is
//! not partitioned is asked for its facts over a kept-open connection, all
//! concurrently and each with a short timeout, so one hung server never
//! delays the others' beats. One `ProviderEvent::Beats` per round.

use super::postgres;
use super::probe::{round_facts, Sample, FACTS_SQL};
use super::registry::InstanceEntry;
use super::{lock, Inner};
use crate::ProviderEvent;
use drover_model::{Beat, Fault, InstanceId, ServiceId};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The shortest interval honoured; zero would spin.
const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// The most one instance's beat query may take; a slower server is silent
/// this round (and its connection is dropped and made again next round).
const MAX_BEAT_TIMEOUT: Duration = Duration::from_millis(800);

impl Inner {
    pub(super) async fn heartbeat_loop(self: Arc<Self>, sink: mpsc::Sender<ProviderEvent>, generation: u64) {
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
            let mut beats = self.beat_round(timeout).await;
            beats.extend(self.redis_beats(timeout).await);
            beats.extend(self.kafka_beats(timeout).await);
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
            registry
                .instances
                .iter()
                .filter(|(id, e)| e.should_run() && e.fault != Some(Fault::Partition) && self.servers.alive(**id))
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
        round_facts(&samples)
            .into_iter()
            .map(|(instance, facts)| Beat { instance, seq: self.next_seq(), facts })
            .collect()
    }

    /// One instance's facts, within `timeout`, over its kept-open connection.
    async fn sample(&self, id: InstanceId, entry: &InstanceEntry, timeout: Duration) -> Option<Sample> {
        let slot = lock(&self.beat_clients).entry(id).or_default().clone();
        // Still held by last round's query (a hung server): stay silent.
        let mut client = slot.try_lock().ok()?;
        let attempt = async {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                *client = Some(postgres::connect(entry, timeout).await.map_err(|e| e.to_string())?);
            }
            let connection = client.as_ref().expect("connected just above");
            connection.query_one(FACTS_SQL, &[]).await.map_err(|e| postgres::error_text(&e))
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
        Some(Sample::from_row(id, entry.service, &row))
    }

    /// Non-strict synchronous mode (see `adjust_sync`): a sync service's
    /// primary whose streaming followers went from some to none (or back)
    /// gets its synchronous_standby_names changed, off the beat path.
    fn keep_sync_mode(self: &Arc<Self>, samples: &[Sample]) {
        let sync_services: Vec<ServiceId> = {
            let registry = lock(&self.registry);
            samples
                .iter()
                .filter(|s| s.is_primary())
                .filter(|s| registry.services.get(&s.service).is_some_and(|svc| svc.sync && svc.primary == Some(s.id)))
                // With read replicas the count of streaming standbys says
                // nothing of the plan's followers: adjust_sync looks (and
                // does nothing when the names are right already).
                .filter(|s| {
                    (s.streaming_followers == 0) != s.sync_names.is_empty()
                        || !registry.read_routes(s.service).is_empty()
                        || unnamed_standby(s)
                })
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
        for (service, exit) in self.routers.take_exited() {
            let inner = self.clone();
            tokio::spawn(async move {
                let guard = inner.service_lock(service);
                let _held = guard.lock().await;
                let detail = match inner.ensure_router(service).await {
                    Ok(()) => {
                        tracing::info!(%service, "router restarted");
                        format!("router (pgbouncer) exited unasked ({exit}); started again on the same port")
                    }
                    Err(error) => {
                        tracing::warn!(%service, %error, "cannot restart router");
                        format!("router (pgbouncer) exited unasked ({exit}) and cannot be started again: {error}")
                    }
                };
                inner.report_router(service, detail);
            });
        }
    }
}

/// A standby streams that the primary's named `synchronous_standby_names`
/// leave out (a follower built since it was set): `adjust_sync` looks,
/// and names it if it is one of the plan's followers (a read replica
/// stays out, and `adjust_sync` then changes nothing). `*` (an agent
/// host's strict mode) names every standby already.
fn unnamed_standby(s: &Sample) -> bool {
    !s.sync_names.is_empty()
        && !s.sync_names.contains('*')
        && s.standby_names.iter().any(|n| !s.sync_names.contains(&drover_engine::policy::quoted_standby_name(n)))
}
