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

/// How handlers reach an actor.
pub struct Handle<M: Machine> {
    pub(crate) tx: mpsc::Sender<Msg<M>>,
}

impl<M: Machine> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle { tx: self.tx.clone() }
    }
}

impl<M: Machine> Handle<M> {
    /// Steps `input` and waits until what it decided is durable.
    pub async fn call(&self, input: M::Input) -> Result<M::Reply, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
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
        self.tx
            .send(Msg::Query(query))
            .await
            .map_err(|_| ApiError::unavailable(format!("the {} is shutting down", M::NAME)))?;
        rx.await.map_err(|_| ApiError::unavailable(format!("the {} stopped before answering", M::NAME)))
    }

    /// Queues an input without waiting for its outcome. False once the actor
    /// has stopped.
    pub async fn send(&self, input: M::Input) -> bool {
        self.tx.send(Msg::Input { input, reply: None }).await.is_ok()
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
    (Handle { tx }, rx)
}

pub struct Actor<M: Machine> {
    pub machine: M,
    pub inbox: mpsc::Receiver<Msg<M>>,
    pub shutdown: watch::Receiver<bool>,
    pub limits: Limits,
}

impl<M: Machine> Actor<M> {
    pub async fn run(mut self) {
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
