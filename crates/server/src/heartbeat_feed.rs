//! The engine's side of an agent host's heartbeat batches, run apart from
//! the HTTP answer (issue 11, the 1 s lease).
//!
//! An agent with `--host` renews its lease by the acknowledgement of its
//! batch; with no acknowledgement for a lease (1 s) it fences its own
//! primaries. If the answer waited for the engine, a stall of the engine or
//! of the store (a long group commit, another process holding the store's
//! lock, a burst of work) would make every agent host fence at once: a
//! control-plane hiccup turned into a fleet-wide write outage. So
//! `POST /v1/heartbeats` records the batch's arrival (what the control
//! plane's own judgement of a silent host counts from) and answers within a
//! budget ([`ack_budget`]); what the engine does with the batch (the
//! ownership check, re-registering an empty host, feeding the beats) goes
//! on here, in arrival order per host.
//!
//! Order: one host's batches are fed one after the other, never two at
//! once, so a later batch never overtakes an earlier one (the engine would
//! count the earlier one's beats stale and drop them, and a port or fact
//! could go back in time).
//!
//! Back-pressure: at most [`MAX_QUEUED_BATCHES_PER_HOST`] batches wait per
//! host besides the one being fed. Beyond that the OLDEST waiting batch is
//! dropped, not the new one refused: every batch of an agent carries the
//! facts of all its instances with newer seqs, so the newest supersedes the
//! older ones whole, while a 503 would leave the agent's lease unrenewed and
//! fence its primaries, the very outage this exists to prevent. So a
//! stalled engine holds at most one task and a few batches per host.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The longest `POST /v1/heartbeats` from an agent host waits for the
/// engine before it answers. The agent (1 s lease) gives up on a request
/// after a quarter of its lease (250 ms; `drover_agent::control_plane`)
/// and sends every 250 ms: answering well within that leaves room for the
/// network, and a healthy engine answers in a few milliseconds anyway.
pub const ACK_BUDGET: Duration = Duration::from_millis(150);

/// Batches that may wait for the engine per host besides the one being
/// fed: a second of batches at the agent's 250 ms cadence. Older ones are
/// superseded by the newest (see the module's comment).
pub const MAX_QUEUED_BATCHES_PER_HOST: usize = 4;

/// The budget for an agent holding a lease of `lease`: [`ACK_BUDGET`], or
/// an eighth of a shorter lease (half the agent's request timeout there).
pub fn ack_budget(lease: Duration) -> Duration {
    ACK_BUDGET.min(lease / 8)
}

/// One batch's engine work; its answer travels on a channel it holds.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

#[derive(Default)]
struct HostQueue {
    waiting: VecDeque<Job>,
    /// A task is feeding this host's batches.
    running: bool,
}

/// Every agent host's waiting batches. Cheap to clone.
#[derive(Clone, Default)]
pub struct HeartbeatFeeds {
    hosts: Arc<Mutex<HashMap<String, HostQueue>>>,
}

impl HeartbeatFeeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostQueue>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` behind `host`'s earlier batches and starts feeding the
    /// host if nothing does. Answers how many waiting batches were dropped
    /// to make room (their channels close unanswered).
    pub fn push(&self, host: &str, job: Job) -> usize {
        let mut hosts = self.lock();
        let queue = hosts.entry(host.to_string()).or_default();
        let mut dropped = 0;
        while queue.waiting.len() >= MAX_QUEUED_BATCHES_PER_HOST {
            queue.waiting.pop_front();
            dropped += 1;
        }
        queue.waiting.push_back(job);
        if !queue.running {
            queue.running = true;
            tokio::spawn(self.clone().feed(host.to_string()));
        }
        dropped
    }

    /// Runs `host`'s batches one at a time until none waits.
    async fn feed(self, host: String) {
        loop {
            let job = {
                let mut hosts = self.lock();
                let Some(queue) = hosts.get_mut(&host) else { return };
                match queue.waiting.pop_front() {
                    Some(job) => job,
                    None => {
                        hosts.remove(&host);
                        return;
                    }
                }
            };
            // A task of its own: a job that panicked must not stop the
            // host's later batches from being fed.
            if let Err(error) = tokio::spawn(job).await {
                tracing::error!(%host, %error, "feeding a heartbeat batch to the engine failed");
            }
        }
    }

    /// Batches of `host` waiting (not counting the one being fed).
    #[cfg(test)]
    fn waiting(&self, host: &str) -> usize {
        self.lock().get(host).map_or(0, |q| q.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    #[tokio::test]
    async fn one_hosts_batches_are_fed_in_arrival_order_one_at_a_time() {
        let feeds = HeartbeatFeeds::default();
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let first = done_tx.clone();
        feeds.push(
            "h1",
            Box::pin(async move {
                let _ = gate_rx.await;
                let _ = first.send(1);
            }),
        );
        for n in 2..=4 {
            let done = done_tx.clone();
            feeds.push(
                "h1",
                Box::pin(async move {
                    let _ = done.send(n);
                }),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(done_rx.try_recv().is_err(), "a later batch overtook the first one, still being fed");
        assert_eq!(feeds.waiting("h1"), 3);
        gate_tx.send(()).unwrap();
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await.unwrap().unwrap());
        }
        assert_eq!(order, vec![1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_stalled_host_keeps_a_bounded_queue_dropping_its_oldest_batches_and_others_are_not_held() {
        let feeds = HeartbeatFeeds::default();
        let (_stall, stalled) = oneshot::channel::<()>();
        feeds.push(
            "h1",
            Box::pin(async move {
                let _ = stalled.await;
            }),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut answers = Vec::new();
        let mut dropped = 0;
        for _ in 0..10 {
            let (tx, rx) = oneshot::channel::<()>();
            dropped += feeds.push(
                "h1",
                Box::pin(async move {
                    let _ = tx.send(());
                }),
            );
            answers.push(rx);
        }
        assert_eq!(feeds.waiting("h1"), MAX_QUEUED_BATCHES_PER_HOST);
        assert_eq!(dropped, 10 - MAX_QUEUED_BATCHES_PER_HOST);
        // The oldest were dropped: their channels closed unanswered.
        for rx in answers.drain(..10 - MAX_QUEUED_BATCHES_PER_HOST) {
            assert!(rx.await.is_err());
        }
        // Another host is fed meanwhile.
        let (tx, rx) = oneshot::channel();
        feeds.push(
            "h2",
            Box::pin(async move {
                let _ = tx.send(());
            }),
        );
        tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_batch_that_panics_does_not_stop_its_hosts_later_batches() {
        let feeds = HeartbeatFeeds::default();
        feeds.push("h1", Box::pin(async { panic!("a broken batch") }));
        let (tx, rx) = oneshot::channel();
        feeds.push(
            "h1",
            Box::pin(async move {
                let _ = tx.send(());
            }),
        );
        tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    }

    #[test]
    fn the_budget_stays_inside_the_agents_request_timeout() {
        // The agent gives up after lease / 4 (at least 100 ms).
        for lease_ms in [400, 1_000, 10_000, 60_000] {
            let lease = Duration::from_millis(lease_ms);
            assert!(ack_budget(lease) <= lease / 8, "{lease_ms}");
            assert!(ack_budget(lease) <= ACK_BUDGET);
        }
        assert_eq!(ack_budget(Duration::from_secs(1)), Duration::from_millis(125));
    }
}
