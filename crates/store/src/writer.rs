//! The single writer: one thread owns the write connection and commits every
//! batch waiting in its queue in one transaction (group commit), so the cost
//! of the fsync is shared by every caller that arrived while the previous
//! group was being written.

use crate::rows::{self, EncodedChanges};
use crate::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

/// The most batches folded into one transaction. Callers block until their
/// batch is durable, so the queue never holds more than one batch per
/// waiting caller; this only bounds how long one transaction (and the
/// write lock) can last when thousands of callers pile up at once.
pub(crate) const MAX_BATCHES_PER_GROUP: usize = 4096;

pub(crate) struct Request {
    pub(crate) batch: EncodedChanges,
    /// The slots of the services the batch writes (`drover_model::Slot`):
    /// on a store of several shards, the batch needs all of theirs.
    pub(crate) slots: Vec<drover_model::Slot>,
    pub(crate) reply: SyncSender<Result<(), StoreError>>,
}

/// Counters for tests and, later, metrics.
#[derive(Default)]
pub(crate) struct WriterStats {
    pub(crate) transactions: AtomicU64,
    pub(crate) batches: AtomicU64,
}

/// Runs until every sender of `queue` is gone (the store was dropped), after
/// answering whatever was still queued.
pub(crate) fn run(mut conn: Connection, queue: Receiver<Request>, stats: Arc<WriterStats>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_BATCHES_PER_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let batches = group.len();
        match commit_group(&mut conn, &group) {
            Ok(()) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                stats.batches.fetch_add(batches as u64, Ordering::Relaxed);
                tracing::trace!(batches, "store group committed");
                for request in group {
                    // A caller that went away no longer needs the answer.
                    let _ = request.reply.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(batches, %error, "store commit failed; every batch of the group is refused");
                let cause = Arc::new(error);
                for request in group {
                    let _ = request.reply.send(Err(StoreError::CommitFailed { batches, cause: Arc::clone(&cause) }));
                }
            }
        }
    }
    tracing::debug!("store writer stopped: the store was dropped");
}

fn commit_group(conn: &mut Connection, group: &[Request]) -> Result<(), StoreError> {
    let database = |operation| move |source| StoreError::Database { operation, source };
    // IMMEDIATE takes the write lock up front, so the transaction cannot fail
    // half-way for want of it.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(database("beginning a commit"))?;
    for request in group {
        rows::apply(&tx, &request.batch).map_err(database("writing a commit"))?;
    }
    // On error the dropped transaction rolls back: nothing of the group stays.
    tx.commit().map_err(database("committing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{Changes, Event, EventSubject, Timestamp};
    use std::path::PathBuf;
    use std::sync::mpsc::{self, Receiver};

    struct TempDb(PathBuf);
    impl TempDb {
        fn new(name: &str) -> TempDb {
            let path = std::env::temp_dir().join(format!("drover-store-writer-{name}-{}.db", std::process::id()));
            TempDb::remove(&path);
            TempDb(path)
        }
        fn remove(path: &std::path::Path) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
        fn migrated(&self) -> Connection {
            let mut conn = Connection::open(&self.0).unwrap();
            crate::sqlite::embedded::migrations::runner().run(&mut conn).unwrap();
            conn
        }
        fn event_count(&self) -> i64 {
            Connection::open(&self.0).unwrap().query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap()
        }
    }
    impl Drop for TempDb {
        fn drop(&mut self) {
            TempDb::remove(&self.0);
        }
    }

    fn one_event(service: &str) -> Changes {
        Changes {
            events: vec![Event {
                id: Default::default(),
                seq: 0,
                at: Timestamp(1),
                subject: EventSubject::Fleet,
                service: Some(service.into()),
                service_id: None,
                instance: None,
                action: None,
                from: None,
                to: None,
                cause: "test".into(),
                kind: Default::default(),
                team: None,
            }],
            ..Default::default()
        }
    }

    /// Queues every batch before the writer starts, so the writer must find
    /// them all waiting: the grouping is deterministic, not a race.
    fn run_queued(
        conn: Connection,
        batches: Vec<Changes>,
    ) -> (Vec<Receiver<Result<(), StoreError>>>, Arc<WriterStats>) {
        let (queue, requests) = mpsc::channel();
        let mut answers = Vec::new();
        for changes in batches {
            let (reply, answer) = mpsc::sync_channel(1);
            queue.send(Request { batch: rows::encode(&changes).unwrap(), slots: Vec::new(), reply }).unwrap();
            answers.push(answer);
        }
        drop(queue);
        let stats = Arc::new(WriterStats::default());
        run(conn, requests, Arc::clone(&stats));
        (answers, stats)
    }

    #[test]
    fn batches_waiting_in_the_queue_are_committed_in_one_transaction() {
        let db = TempDb::new("group");
        let batches = (0..10).map(|n| one_event(&format!("s{n}"))).collect();
        let (answers, stats) = run_queued(db.migrated(), batches);
        for answer in answers {
            answer.recv().unwrap().unwrap();
        }
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 1);
        assert_eq!(stats.batches.load(Ordering::Relaxed), 10);
        assert_eq!(db.event_count(), 10);
    }

    #[test]
    fn a_failed_transaction_fails_every_batch_of_its_group_and_writes_none_of_them() {
        let db = TempDb::new("poison");
        let conn = db.migrated();
        // A write that fails inside the transaction, as a full disk would.
        conn.execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.service = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned batch'); END;",
        )
        .unwrap();
        let batches = vec![one_event("fine-1"), one_event("poison"), one_event("fine-2")];
        let (answers, stats) = run_queued(conn, batches);
        for answer in answers {
            match answer.recv().unwrap() {
                Err(StoreError::CommitFailed { batches, cause }) => {
                    assert_eq!(batches, 3);
                    assert!(cause.to_string().contains("poisoned batch"), "{cause}");
                }
                other => panic!("expected CommitFailed, got {other:?}"),
            }
        }
        assert_eq!(stats.transactions.load(Ordering::Relaxed), 0);
        assert_eq!(db.event_count(), 0, "a failed group must leave nothing behind");

        // The connection is still usable for the next group.
        let (answers, _) = run_queued(Connection::open(&db.0).unwrap(), vec![one_event("fine-3")]);
        answers[0].recv().unwrap().unwrap();
        assert_eq!(db.event_count(), 1);
    }
}
