//! How a simulated Kafka broker answers, in its own words (issue 14): the
//! `local` provider's `tansu` brokers are peers over one storage database.
//! Each serves every partition on its own (role broker, writable); none
//! streams from another and none is promoted. A lost broker is fenced (cut
//! at the router) and replaced by a new one, which holds no data and needs
//! no backup: the records are in the storage, not in the brokers.

use crate::Server;
use drover_model::EngineKind;

pub(crate) const KAFKA: Server = Server {
    engine: EngineKind::Kafka,
    // A new broker copies nothing: it serves from the storage at once.
    new_follower_needs_backup_store: false,
    // No replication of its own: durability is the storage's.
    synchronous_replication: false,
    peer_brokers: true,
    fenced: "fenced: cut at the router; clients reconnect to the other brokers at the same bootstrap address",
    promoted: "never promoted: brokers are peers",
    restarted: "tansu broker restarted: it holds no data and serves at once",
    backed_up: "simulated: nothing to back up: the records are in the storage database, not the broker",
    restored: "simulated: nothing to restore: the records are in the storage database, not the broker",
    no_backup_store: "backup store unavailable (a broker does not need it)",
};
