//! Commands a standby accepted while the fleet's holder did not answer
//! (issue 16: "commands for a shard whose holder just died are accepted
//! (202) and carried out once the shard is taken over"), kept in the
//! shared PostgreSQL store (`deferred_commands`, V12).
//!
//! A standby writes a row (`pending`) without the lease: the table is a
//! queue any node may add to. Only the lease's holder takes rows, one at a
//! time and in order, in transactions fenced like every write of the
//! fleet ([`crate::pg::check_lease`]): `pending` → `running` (with its
//! generation) → `done` (with the answer). A row another generation left
//! `running` is marked `interrupted`, never run again: whether it took
//! effect is unknown, and running a command twice (a second crash, a
//! second delete) can harm. A row nobody took within the expiry is
//! `expired`: a command carried out long after it was sent would surprise
//! the sender more than a refusal. Finished rows are dropped after a day.
//!
//! The embedded SQLite store serves one node, which never defers: the
//! table exists there only so both dialects keep the same tables.

use crate::pg::{check_lease, pg, DB_NOW};
use crate::{PgStore, StoreError};
use std::time::Duration;

/// How long a finished command's outcome stays readable.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);

/// One deferred command as stored. `request` and `answer` are sealed by
/// the caller (the server) with the key the nodes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredCommand {
    pub id: String,
    /// Microseconds since the epoch, by the database's clock.
    pub received_at: i64,
    /// The standby that accepted it.
    pub received_by: String,
    /// The token that sent it (only it, or an admin, reads the outcome).
    pub token_id: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub request: String,
    /// `pending`, `running`, `done`, `interrupted` or `expired`.
    pub state: String,
    /// The node that took it.
    pub taken_by: Option<String>,
    /// That node's lease generation.
    pub generation: Option<i64>,
    pub finished_at: Option<i64>,
    /// The HTTP status the API answered (`done`).
    pub status: Option<i64>,
    pub answer: Option<String>,
}

/// What a standby stores.
#[derive(Debug, Clone)]
pub struct NewDeferred {
    pub id: String,
    pub received_by: String,
    pub token_id: String,
    pub method: String,
    pub path: String,
    pub request: String,
}

const COLUMNS: &str = "id, received_at, received_by, token_id, method, path, request, state, taken_by, generation, \
                       finished_at, status, answer";

fn row(r: &tokio_postgres::Row) -> DeferredCommand {
    DeferredCommand {
        id: r.get(0),
        received_at: r.get(1),
        received_by: r.get(2),
        token_id: r.get(3),
        method: r.get(4),
        path: r.get(5),
        request: r.get(6),
        state: r.get(7),
        taken_by: r.get(8),
        generation: r.get(9),
        finished_at: r.get(10),
        status: r.get(11),
        answer: r.get(12),
    }
}

impl PgStore {
    /// Stores a command a standby accepted (`pending`); returns it as
    /// stored (with the database's time of receipt). Not fenced: any node
    /// may queue.
    pub fn defer_command(&self, new: NewDeferred) -> Result<DeferredCommand, StoreError> {
        self.with_client(move |client| async move {
            let stored = client
                .query_one(
                    &format!(
                        "INSERT INTO deferred_commands (id, received_at, received_by, token_id, method, path, request, \
                         state) VALUES ($1, {DB_NOW}, $2, $3, $4, $5, $6, 'pending') RETURNING {COLUMNS}"
                    ),
                    &[&new.id, &new.received_by, &new.token_id, &new.method, &new.path, &new.request],
                )
                .await
                .map_err(pg("storing a deferred command"))?;
            Ok(row(&stored))
        })
    }

    /// For the lease's holder: marks what an earlier holder left running
    /// `interrupted` and what waited longer than `expire_after` `expired`,
    /// drops outcomes older than [`KEPT_FOR`], then takes the oldest
    /// pending command (`running`, with this node's generation) and
    /// returns it. All in one transaction fenced by the lease:
    /// [`StoreError::LeaseLost`] for a node that does not hold it, and an
    /// error for a store not fenced yet.
    pub fn take_deferred_command(&self, expire_after: Duration) -> Result<Option<DeferredCommand>, StoreError> {
        let holder = self.holder().ok_or(StoreError::Postgres {
            operation: "taking a deferred command",
            detail: "this node does not hold the fleet's lease".into(),
        })?;
        let expire_after = expire_after.as_micros() as i64;
        let kept_for = KEPT_FOR.as_micros() as i64;
        self.with_client(move |mut client| async move {
            let write = pg("taking a deferred command");
            let tx = client.transaction().await.map_err(&write)?;
            check_lease(&tx, Some(&holder)).await?;
            let (node, generation) = &holder;
            tx.execute(
                &format!(
                    "UPDATE deferred_commands SET state = 'interrupted', finished_at = {DB_NOW} \
                     WHERE state = 'running' AND generation < $1"
                ),
                &[generation],
            )
            .await
            .map_err(&write)?;
            tx.execute(
                &format!(
                    "UPDATE deferred_commands SET state = 'expired', finished_at = {DB_NOW} \
                     WHERE state = 'pending' AND received_at < {DB_NOW} - $1"
                ),
                &[&expire_after],
            )
            .await
            .map_err(&write)?;
            tx.execute(&format!("DELETE FROM deferred_commands WHERE finished_at < {DB_NOW} - $1"), &[&kept_for])
                .await
                .map_err(&write)?;
            let taken = tx
                .query_opt(
                    &format!(
                        "UPDATE deferred_commands SET state = 'running', taken_by = $1, generation = $2 \
                         WHERE id = (SELECT id FROM deferred_commands WHERE state = 'pending' \
                                     ORDER BY received_at, id LIMIT 1 FOR UPDATE) \
                         RETURNING {COLUMNS}"
                    ),
                    &[node, generation],
                )
                .await
                .map_err(&write)?
                .map(|r| row(&r));
            tx.commit().await.map_err(&write)?;
            Ok(taken)
        })
    }

    /// Records the outcome of a command this node took (`done`); fenced
    /// like the taking. False: it was not this node's running command.
    pub fn finish_deferred_command(&self, id: &str, status: u16, answer: &str) -> Result<bool, StoreError> {
        let holder = self.holder().ok_or(StoreError::Postgres {
            operation: "finishing a deferred command",
            detail: "this node does not hold the fleet's lease".into(),
        })?;
        let (id, answer) = (id.to_string(), answer.to_string());
        self.with_client(move |mut client| async move {
            let write = pg("finishing a deferred command");
            let tx = client.transaction().await.map_err(&write)?;
            check_lease(&tx, Some(&holder)).await?;
            let n = tx
                .execute(
                    &format!(
                        "UPDATE deferred_commands SET state = 'done', finished_at = {DB_NOW}, status = $2, answer = $3 \
                         WHERE id = $1 AND state = 'running' AND taken_by = $4 AND generation = $5"
                    ),
                    &[&id, &i64::from(status), &answer, &holder.0, &holder.1],
                )
                .await
                .map_err(&write)?;
            tx.commit().await.map_err(&write)?;
            Ok(n == 1)
        })
    }

    /// One deferred command, whatever its state.
    pub fn deferred_command(&self, id: &str) -> Result<Option<DeferredCommand>, StoreError> {
        let id = id.to_string();
        self.with_client(move |client| async move {
            let found = client
                .query_opt(&format!("SELECT {COLUMNS} FROM deferred_commands WHERE id = $1"), &[&id])
                .await
                .map_err(pg("reading a deferred command"))?;
            Ok(found.as_ref().map(row))
        })
    }
}
