//! One actor loop for every pure state machine the server runs (the engine,
//! the pager). One task owns the machine; every input arrives on one bounded
//! channel and is stepped in arrival order. Each loop drains what is queued
//! (at most `max_batch`), makes everything the batch decided durable in ONE
//! commit (group commit), and only after that commit lets its effects out
//! (actions dispatched, notifications sent) and answers callers: nobody is
//! told about a change that a crash could lose. A failed commit answers
//! every caller of the batch 503 and lets no effect out.
//!
//! What differs between machines is behind [`Machine`]: how to step, when
//! the next deadline is, and how a batch's outputs become durable.

use crate::error::ApiError;
use drover_model::Timestamp;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The loop wakes at least this often even when the machine has no
/// deadline, so a deadline added by an input is never slept through for long.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Floor on the wait before a tick: a machine that keeps reporting a past
/// deadline must not spin a core.
const MIN_TICK_WAIT: Duration = Duration::from_millis(5);

/// The wall clock, in microseconds since the Unix epoch. The only clock the
/// machines see: it is read once per batch and passed in.
pub fn now() -> Timestamp {
    Timestamp(jiff::Timestamp::now().as_microsecond())
}

/// A pure state machine and the shell around it that persists its outputs.
pub trait Machine: Send + 'static {
    type Input: Send + 'static;
    type Reply: Send + 'static;
    /// What a batch decided; made durable by [`Machine::commit`].
    type Outputs: Default + Send + 'static;
    /// What read-only queries see.
    type View: 'static;
    /// Names the machine in logs and in 503 answers ("engine", "pager").
    const NAME: &'static str;

    fn view(&self) -> &Self::View;
    fn next_deadline(&self) -> Option<Timestamp>;
    /// Time passed: fire whatever deadlines are due at `now`.
    fn tick(&mut self, now: Timestamp, out: &mut Self::Outputs);
    /// Steps one input; `None` when the input has no answer.
    fn step(
        &mut self,
        input: Self::Input,
        now: Timestamp,
        out: &mut Self::Outputs,
    ) -> Option<Result<Self::Reply, ApiError>>;
    /// Makes `out` durable in one commit and, only once it is, lets its
    /// effects out. An error means nothing of `out` may be acted upon.
    fn commit(&mut self, out: Self::Outputs, batch_size: usize) -> impl Future<Output = Result<(), String>> + Send;
}

pub type Answer<M> = Result<<M as Machine>::Reply, ApiError>;
pub type ReplySender<M> = oneshot::Sender<Answer<M>>;
pub type Query<M> = Box<dyn FnOnce(&<M as Machine>::View) + Send + 'static>;

pub enum Msg<M: Machine> {
    Input {
        input: M::Input,
        reply: Option<ReplySender<M>>,
    },
    /// Read-only look at the machine. Runs after the commit of any input
    /// that came before it (read-your-writes).
    Query(Query<M>),
}

/// How handlers reach an actor. Every clone reaches the same actor, and
/// all of them the next one after [`Handle::redirect`]: a node that hands
/// its engine over (another set of shards, issue 16) swaps the actor behind
/// the handles the dispatcher, the HTTP layer and the feeds keep.
pub struct Handle<M: Machine> {
    tx: Arc<RwLock<mpsc::Sender<Msg<M>>>>,
}

impl<M: Machine> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle { tx: Arc::clone(&self.tx) }
    }
}

impl<M: Machine> Handle<M> {
    /// The channel of the actor this handle reaches now.
    pub(crate) fn sender(&self) -> mpsc::Sender<Msg<M>> {
        self.tx.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends every later message to a new channel, whose receiver is
    /// returned for the next actor; the current actor still gets what was
    /// sent before (or is being sent now), and its loop ends once it has
    /// handled all of it (its channel closes with its last sender). So a
    /// hand-over loses no input and keeps each caller's order: start the
    /// next actor once the current one has ended (with the machine it
    /// hands back, [`Actor::run_to_end`]) and on this receiver. Until then,
    /// callers wait in the new channel (and past its capacity, in `send`).
    pub fn redirect(&self, limits: Limits) -> mpsc::Receiver<Msg<M>> {
        let (tx, rx) = mpsc::channel(limits.queue_capacity);
        // The old sender drops here, outside the lock's scope of any sender.
        let _old = std::mem::replace(&mut *self.tx.write().unwrap_or_else(PoisonError::into_inner), tx);
        rx
    }

    /// Steps `input` and waits until what it decided is durable.
    pub async fn call(&self, input: M::Input) -> Result<M::Reply, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.sender()
            .send(Msg::Input { input, reply: Some(reply) })
            .await
            .map_err(|_| ApiError::unavailable(format!("the {} is shutting down", M::NAME)))?;
        rx.await.map_err(|_| ApiError::unavailable(format!("the {} stopped before answering", M::NAME)))?
    }

    /// Runs `f` on the machine, after every input queued before it is committed.
    pub async fn query<R, F>(&self, f: F) -> Result<R, ApiError>
    where
        R: Send + 'static,
        F: FnOnce(&M::View) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let query: Query<M> = Box::new(move |view: &M::View| {
            let _ = tx.send(f(view));
        });
        self.sender()
            .send(Msg::Query(query))
            .await
            .map_err(|_| ApiError::unavailable(format!("the {} is shutting down", M::NAME)))?;
        rx.await.map_err(|_| ApiError::unavailable(format!("the {} stopped before answering", M::NAME)))
    }

    /// Queues an input without waiting for its outcome. False once the actor
    /// has stopped.
    pub async fn send(&self, input: M::Input) -> bool {
        self.sender().send(Msg::Input { input, reply: None }).await.is_ok()
    }
}

/// The limits of one actor: how many messages one loop drains and how many
/// may wait in front of it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages drained per loop: bounds the latency one loop adds to the
    /// first caller in it, while amortising one commit over many inputs.
    pub max_batch: usize,
    /// The channel in front of the actor; when full, senders wait
    /// (backpressure reaches HTTP callers and providers).
    pub queue_capacity: usize,
}

/// Creates the channel in front of an actor.
pub fn channel<M: Machine>(limits: Limits) -> (Handle<M>, mpsc::Receiver<Msg<M>>) {
    let (tx, rx) = mpsc::channel(limits.queue_capacity);
    (Handle { tx: Arc::new(RwLock::new(tx)) }, rx)
}

pub struct Actor<M: Machine> {
    pub machine: M,
    pub inbox: mpsc::Receiver<Msg<M>>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: Limits,
}

impl<M: Machine> Actor<M> {
    pub async fn run(self) {
        let _ = self.run_to_end().await;
    }

    /// Runs until shut down or until its channel closed and was drained
    /// (every handle [`Handle::redirect`]ed or dropped), and hands the
    /// machine back, every batch committed.
    pub async fn run_to_end(mut self) -> M {
        let mut batch: Vec<Msg<M>> = Vec::with_capacity(self.limits.max_batch);
        loop {
            let wait = self.wait_for_deadline();
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                received = self.inbox.recv_many(&mut batch, self.limits.max_batch) => {
                    if received == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            self.handle_batch(&mut batch).await;
            if *self.shutdown.borrow() {
                break;
            }
        }
        tracing::info!(actor = M::NAME, "actor stopped");
        self.machine
    }

    fn wait_for_deadline(&self) -> Duration {
        match self.machine.next_deadline() {
            Some(deadline) => {
                let micros = deadline.0.saturating_sub(now().0).max(0) as u64;
                Duration::from_micros(micros).clamp(MIN_TICK_WAIT, MAX_IDLE)
            }
            None => MAX_IDLE,
        }
    }

    async fn handle_batch(&mut self, batch: &mut Vec<Msg<M>>) {
        let now = now();
        let size = batch.len();
        let mut out = M::Outputs::default();
        let mut replies: Vec<(ReplySender<M>, Answer<M>)> = Vec::new();
        let mut deferred: Vec<Query<M>> = Vec::new();
        let mut stepped = false;

        if self.machine.next_deadline().is_some_and(|d| d <= now) {
            self.machine.tick(now, &mut out);
            stepped = true;
        }
        for msg in batch.drain(..) {
            match msg {
                Msg::Input { input, reply } => {
                    let answer = self.machine.step(input, now, &mut out);
                    stepped = true;
                    if let Some(reply) = reply {
                        let answer = answer.unwrap_or_else(|| {
                            Err(ApiError::internal(format!("the {} gave no answer to this request", M::NAME)))
                        });
                        replies.push((reply, answer));
                    }
                }
                Msg::Query(query) => {
                    if stepped {
                        deferred.push(query);
                    } else {
                        query(self.machine.view());
                    }
                }
            }
        }

        match self.machine.commit(out, size).await {
            Ok(()) => {
                for (reply, answer) in replies {
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                // The machine's memory is now ahead of the store. Later
                // commits write the newest records again; callers retry.
                tracing::error!(actor = M::NAME, %error, "group commit failed; nothing let out, callers told");
                for (reply, _) in replies {
                    let _ = reply.send(Err(ApiError::unavailable(format!(
                        "the {} could not persist this change: {error}; retry later",
                        M::NAME
                    ))));
                }
            }
        }
        for query in deferred {
            query(self.machine.view());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Counts inputs and notes which machine (its generation) stepped each.
    struct Counter {
        generation: u32,
        count: u64,
        stepped: Vec<(u32, u64)>,
        commits: u64,
    }

    impl Machine for Counter {
        type Input = (u32, u64);
        type Reply = (u32, u64);
        type Outputs = ();
        type View = u64;
        const NAME: &'static str = "counter";

        fn view(&self) -> &u64 {
            &self.count
        }
        fn next_deadline(&self) -> Option<Timestamp> {
            None
        }
        fn tick(&mut self, _now: Timestamp, _out: &mut ()) {}
        fn step(
            &mut self,
            (caller, n): (u32, u64),
            _now: Timestamp,
            _out: &mut (),
        ) -> Option<Result<(u32, u64), ApiError>> {
            self.count += 1;
            self.stepped.push((caller, n));
            Some(Ok((self.generation, self.count)))
        }
        async fn commit(&mut self, _out: (), _batch_size: usize) -> Result<(), String> {
            // A commit that takes time, so a hand-over meets queued inputs.
            tokio::task::yield_now().await;
            self.commits += 1;
            Ok(())
        }
    }

    const SMALL: Limits = Limits { max_batch: 8, queue_capacity: 4 };

    /// Callers keep calling through clones of one handle while the actor
    /// behind it is handed over to a machine built from the old one: every
    /// call is answered, every input is stepped exactly once by one of the
    /// two, each caller's inputs in order, and once the new machine answered
    /// a caller the old one never does again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_over_behind_the_handle_loses_no_input_and_keeps_each_caller_s_order() {
        let mut split = 0;
        for round in 0..20u64 {
            let (handle, inbox) = channel::<Counter>(SMALL);
            let (_stop, shutdown) = watch::channel(false);
            let first = Counter { generation: 1, count: 0, stepped: Vec::new(), commits: 0 };
            let old =
                tokio::spawn(Actor { machine: first, inbox, shutdown: shutdown.clone(), limits: SMALL }.run_to_end());
            const CALLERS: u32 = 4;
            const CALLS: u64 = 300;
            // Two callers wait at a call of theirs until the hand-over, so
            // it falls in the middle of their calls however loaded the
            // machine; the other two race it.
            let (redirected, gate) = watch::channel(false);
            let gate_at = 50 + round * 10;
            let callers: Vec<_> = (0..CALLERS)
                .map(|caller| {
                    let (handle, mut gate) = (handle.clone(), gate.clone());
                    tokio::spawn(async move {
                        let mut answers = Vec::new();
                        for n in 0..CALLS {
                            if caller < 2 && n == gate_at {
                                let _ = gate.wait_for(|r| *r).await;
                            }
                            answers.push(handle.call((caller, n)).await.expect("every call is answered"));
                        }
                        answers
                    })
                })
                .collect();
            // Somewhere in the middle of the calls (reached before the gate
            // opens: the racing callers alone make 600).
            let midway = 100 + round * 20;
            while handle.query(|count| *count).await.unwrap() < midway {
                tokio::task::yield_now().await;
            }
            let inbox = handle.redirect(SMALL);
            redirected.send_replace(true);
            let old = old.await.expect("the old actor ends once its channel is drained");
            let handed = old.count;
            let second = Counter { generation: 2, count: old.count, stepped: Vec::new(), commits: 0 };
            let new =
                tokio::spawn(Actor { machine: second, inbox, shutdown: shutdown.clone(), limits: SMALL }.run_to_end());
            let mut answered = BTreeMap::new();
            for (caller, task) in callers.into_iter().enumerate() {
                answered.insert(caller as u32, task.await.unwrap());
            }
            drop(handle);
            let new = new.await.unwrap();
            assert_eq!(new.count, u64::from(CALLERS) * CALLS, "round {round}: every input stepped once in all");
            assert_eq!(old.stepped.len() as u64 + new.stepped.len() as u64, new.count, "round {round}");
            for caller in 0..CALLERS {
                let mine: Vec<u64> =
                    old.stepped.iter().chain(&new.stepped).filter(|(c, _)| *c == caller).map(|(_, n)| *n).collect();
                assert_eq!(
                    mine,
                    (0..CALLS).collect::<Vec<_>>(),
                    "round {round}: caller {caller}'s inputs once, in order"
                );
                let generations: Vec<u32> = answered[&caller].iter().map(|(g, _)| *g).collect();
                assert!(generations.windows(2).all(|w| w[0] <= w[1]), "round {round}: an old answer after a new one");
            }
            let counts: Vec<u64> = answered.values().flatten().map(|(_, c)| *c).collect();
            let mut sorted = counts.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), counts.len(), "round {round}: no count answered twice");
            assert!(handed <= new.count && old.commits > 0, "round {round}");
            split += usize::from(!old.stepped.is_empty() && !new.stepped.is_empty());
        }
        assert_eq!(split, 20, "the hand-over fell in the middle of the calls in only {split} of 20 rounds");
    }

    #[tokio::test]
    async fn a_redirected_handle_whose_next_actor_never_starts_makes_its_callers_wait_not_fail() {
        let (handle, inbox) = channel::<Counter>(SMALL);
        let (_stop, shutdown) = watch::channel(false);
        let first = Counter { generation: 1, count: 0, stepped: Vec::new(), commits: 0 };
        let old = tokio::spawn(Actor { machine: first, inbox, shutdown, limits: SMALL }.run_to_end());
        assert_eq!(handle.call((0, 0)).await.unwrap(), (1, 1));
        let inbox = handle.redirect(SMALL);
        assert_eq!(old.await.unwrap().count, 1);
        let waiting = handle.clone();
        let call = tokio::spawn(async move { waiting.call((0, 1)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!call.is_finished(), "a call made during the hand-over waits for the next actor");
        drop(inbox);
        let err = call.await.unwrap().expect_err("its channel closed with the receiver");
        assert!(format!("{err:?}").contains("counter"), "{err:?}");
    }
}
