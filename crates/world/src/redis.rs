//! How a simulated Redis server answers, in its own words (issue 13): a
//! failover cuts the old primary at the router and stops it, promotes with
//! `REPLICAOF NO ONE`; a new replica copies its primary by a full resync
//! (it needs the primary, not the backup store); backups are RDB snapshots.

use crate::Server;
use drover_model::EngineKind;

pub(crate) const REDIS: Server = Server {
    engine: EngineKind::Redis,
    new_follower_needs_backup_store: false,
    synchronous_replication: false,
    peer_brokers: false,
    fenced: "fenced: cut at the router, its sessions shut, writes paused",
    promoted: "REPLICAOF NO ONE: promoted to primary",
    restarted: "redis-server restarted: dataset reloaded from its RDB/AOF",
    backed_up: "simulated: an RDB snapshot (BGSAVE), nothing is copied",
    restored: "simulated: the latest RDB snapshot loaded into a scratch server",
    no_backup_store: "backup store unavailable: cannot load the latest RDB snapshot",
};
