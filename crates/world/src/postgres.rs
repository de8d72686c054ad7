//! How a simulated PostgreSQL server answers, in its own words.

use crate::Server;
use drover_model::EngineKind;

pub(crate) const POSTGRES: Server = Server {
    engine: EngineKind::Postgres,
    // A new member restores a base backup from the store, then replays WAL.
    new_follower_needs_backup_store: true,
    synchronous_replication: true,
    peer_brokers: false,
    fenced: "fenced",
    promoted: "promoted to primary",
    restarted: "process restarted",
    backed_up: "simulated: nothing is copied",
    restored: "simulated: the latest backup restored on a scratch machine",
    no_backup_store: "backup store unavailable: cannot restore a base backup",
};
