//! One simulated world: the rules by which a simulated provider answers
//! each action on a simulated machine. Written once, used by the `sim`
//! provider (`crates/providers/src/sim`), the fleet simulator
//! (`crates/sim`) and the engine's test harness
//! (`crates/engine/tests/common`); each keeps only its own bookkeeping
//! around these rules (a state file, WAL and writers at a million
//! instances, a map for tests).
//!
//! Pure: no clock, no I/O, no randomness. A caller passes the machine, the
//! action and the [`Ground`] around the machine (its host, the backup
//! store), and gets the outcome the provider reports and the [`Effect`] it
//! had, which the caller turns into its own physics (a promoted primary
//! starts writing, a restarted process boots, ...). Every rule is
//! idempotent: a retried action finds its effect in place and succeeds.

use drover_model::{ActionKind, ActionOutcome, EngineKind, Facts, Fault, Role, ServiceId};
use serde::{Deserialize, Serialize};

mod kafka;
mod postgres;
mod redis;

/// What differs between engines in how a simulated server answers: its
/// words, and what building a new follower needs. Found by [`server`];
/// every rule below is the same for every engine and reads only this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    pub engine: EngineKind,
    /// A new follower is built from the backup store (PostgreSQL: a base
    /// backup, then WAL) rather than copied from its primary (Redis).
    pub new_follower_needs_backup_store: bool,
    /// It can hold a commit until a follower has it (PostgreSQL's
    /// synchronous replication); false: replication is asynchronous
    /// whatever the plan says (Redis; a client may still `WAIT`).
    pub synchronous_replication: bool,
    /// Its members are peer brokers (Kafka): each serves on its own, none
    /// replicates from another or is promoted, and a lost one is replaced
    /// (fenced, then a new one built) rather than failed over.
    pub peer_brokers: bool,
    pub fenced: &'static str,
    pub promoted: &'static str,
    pub restarted: &'static str,
    pub backed_up: &'static str,
    pub restored: &'static str,
    /// Why a member that needs the backup store cannot be built without it.
    pub no_backup_store: &'static str,
}

/// The server of `engine`.
pub fn server(engine: EngineKind) -> &'static Server {
    match engine {
        EngineKind::Postgres => &postgres::POSTGRES,
        EngineKind::Redis => &redis::REDIS,
        EngineKind::Kafka => &kafka::KAFKA,
    }
}

/// What the agent beside a broker reports on a heartbeat: a broker that
/// serves (as the `local` provider's `kafka_beats` say of a live `tansu`);
/// a fenced one is cut at the router and cannot take writes. No replication
/// facts: a broker streams from nobody.
pub fn broker_facts(m: &Machine) -> Facts {
    Facts { role: Some(Role::Broker), writable: Some(!m.fenced), ..Facts::default() }
}

/// One simulated machine running one server of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The server it runs; how it words its answers ([`server`]).
    #[serde(default)]
    pub engine: EngineKind,
    pub role: Role,
    /// The process died (kill -9); it stays dead until restarted.
    pub crashed: bool,
    /// The process stopped answering but stays (SIGSTOP; or still booting).
    pub hung: bool,
    /// It runs but the control plane cannot hear it (probes reach it out of band).
    pub partitioned: bool,
    /// The provider made sure it cannot accept writes. Permanent: a fenced
    /// machine is replaced, never un-fenced (a restart keeps the fence).
    pub fenced: bool,
    /// False once retired: no process, no beats.
    pub running: bool,
    pub archived: bool,
    /// Its disk or host is broken for good: it never starts again.
    pub broken_for_good: bool,
}

impl Machine {
    /// A PostgreSQL server.
    pub fn new(role: Role) -> Machine {
        Machine::of(EngineKind::Postgres, role)
    }
    /// A server of `engine`.
    pub fn of(engine: EngineKind, role: Role) -> Machine {
        Machine {
            engine,
            role,
            crashed: false,
            hung: false,
            partitioned: false,
            fenced: false,
            running: true,
            archived: false,
            broken_for_good: false,
        }
    }
    /// The process runs and answers (it may still be partitioned).
    pub fn is_alive(&self) -> bool {
        self.running && !self.crashed && !self.hung
    }
    /// The control plane hears its agent.
    pub fn is_audible(&self) -> bool {
        self.is_alive() && !self.partitioned
    }
    /// Accepts writes. A partitioned primary still serves its clients.
    pub fn is_writing(&self) -> bool {
        self.is_alive() && self.role == Role::Primary && !self.fenced
    }
    /// Serves its clients: a writing primary, or a live broker not cut at
    /// the router (a broker serves on its own; a partitioned one still does).
    pub fn is_serving(&self) -> bool {
        self.is_writing() || (self.is_alive() && self.role == Role::Broker && !self.fenced)
    }
    /// The one fault a provider reports (crash over hang over partition).
    pub fn fault(&self) -> Option<Fault> {
        if self.crashed {
            Some(Fault::Crash)
        } else if self.hung {
            Some(Fault::Hang)
        } else if self.partitioned {
            Some(Fault::Partition)
        } else {
            None
        }
    }
    /// Sets the flags from one fault (`Heal` and `None` clear them).
    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.crashed = fault == Some(Fault::Crash);
        self.hung = fault == Some(Fault::Hang);
        self.partitioned = fault == Some(Fault::Partition);
    }
}

/// What surrounds a machine when an action reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ground {
    /// Its host (and zone) is up; for a provision, the zone has capacity.
    pub host_up: bool,
    /// The backup/WAL store answers: base backups, restore tests and new
    /// members (restored from a base backup) need it.
    pub backup_store_up: bool,
}

impl Default for Ground {
    fn default() -> Self {
        Ground { host_up: true, backup_store_up: true }
    }
}

/// What an action did to the machine, for the caller's own bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changed (a refusal, a probe, a repeat).
    Nothing,
    /// It was writing and is fenced now (the caller stops its writes).
    Fenced,
    /// It became the primary (the caller starts its writes).
    Promoted,
    /// Its process (re)started (the caller boots it).
    Restarted,
    /// Its process stopped for good (retired or archived).
    Stopped,
    /// The caller removes it and keeps a tombstone: an id is never provisioned again.
    Terminated,
    /// A fault was injected or healed.
    Faulted,
}

/// The provider's answer to one attempt of an action.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub outcome: ActionOutcome,
    pub effect: Effect,
}

pub fn succeeded(detail: impl Into<String>) -> ActionOutcome {
    ActionOutcome::Succeeded { detail: Some(detail.into()) }
}

/// Refused for good: retrying cannot help.
pub fn refused(error: impl Into<String>) -> ActionOutcome {
    ActionOutcome::Failed { error: error.into(), retryable: false }
}

/// Failed for now: the same attempt may succeed later.
pub fn unavailable(error: impl Into<String>) -> ActionOutcome {
    ActionOutcome::Failed { error: error.into(), retryable: true }
}

fn answer(outcome: ActionOutcome, effect: Effect) -> Answer {
    Answer { outcome, effect }
}

/// Whether a Provision may create a machine. `Some(outcome)`: answer that
/// and create nothing (a repeat of an earlier provision succeeds; a
/// terminated id is refused); `None`: create it.
pub fn admit_provision(
    tombstoned: bool,
    existing: Option<ServiceId>,
    service: ServiceId,
    zone: &str,
    ground: Ground,
) -> Option<ActionOutcome> {
    if tombstoned {
        return Some(refused("the instance was terminated; a terminated id is never provisioned again"));
    }
    if let Some(owner) = existing {
        return Some(if owner == service {
            succeeded("already provisioned")
        } else {
            refused(format!("the instance id already belongs to service {owner}, not {service}"))
        });
    }
    if !ground.host_up {
        return Some(refused(format!("zone {zone} unavailable: insufficient capacity")));
    }
    if !ground.backup_store_up {
        return Some(unavailable(server(EngineKind::Postgres).no_backup_store));
    }
    None
}

/// [`admit_provision`] for a member of `role` on a server of `engine`: a
/// new follower that copies its primary (Redis) and a new broker (Kafka: it
/// holds no data) do not need the backup store; a new primary always does
/// (it is rebuilt from the latest backup).
pub fn admit_member(
    engine: EngineKind,
    role: Role,
    tombstoned: bool,
    existing: Option<ServiceId>,
    service: ServiceId,
    zone: &str,
    ground: Ground,
) -> Option<ActionOutcome> {
    let srv = server(engine);
    let needs_store = role == Role::Primary || srv.new_follower_needs_backup_store;
    let ground = Ground { backup_store_up: ground.backup_store_up || !needs_store, ..ground };
    // Its only retryable refusal is the missing store: said in the engine's words.
    match admit_provision(tombstoned, existing, service, zone, ground) {
        Some(ActionOutcome::Failed { retryable: true, .. }) => Some(unavailable(srv.no_backup_store)),
        other => other,
    }
}

/// An action on an id the world does not hold (never provisioned, or
/// terminated): stopping it again is done; anything else is refused, and
/// `gone` says the machine does not exist. Provision is not handled here.
pub fn act_on_missing(kind: &ActionKind) -> (ActionOutcome, bool) {
    match kind {
        ActionKind::Fence { .. } => (succeeded("no such machine: nothing left that could write"), false),
        ActionKind::Retire | ActionKind::Archive | ActionKind::Terminate => {
            (succeeded("no such machine: already gone"), false)
        }
        // An archive's purge is addressed to its last primary, gone by then:
        // simulated backups hold nothing, so there is nothing to remove.
        ActionKind::PurgeArchive { .. } => (succeeded("simulated: no backups to remove"), false),
        _ => (refused("the machine does not exist (never provisioned, or terminated)"), true),
    }
}

/// One attempt of `kind` on an existing machine.
pub fn act(m: &mut Machine, kind: &ActionKind, ground: Ground) -> Answer {
    match kind {
        ActionKind::Provision(_) => answer(succeeded("already provisioned"), Effect::Nothing),
        ActionKind::Probe => answer(probe(m, ground), Effect::Nothing),
        ActionKind::Fence { .. } => fence(m),
        ActionKind::Promote => promote(m, ground),
        ActionKind::Restart => restart(m, ground),
        ActionKind::Retire => {
            let detail = if m.running { "retired: process stopped for good" } else { "already retired" };
            m.running = false;
            answer(succeeded(detail), Effect::Stopped)
        }
        ActionKind::Archive => {
            let detail = if m.archived {
                "already archived"
            } else if m.running {
                "retired, then archived (it was still running)"
            } else {
                "archived"
            };
            m.running = false;
            m.archived = true;
            answer(succeeded(detail), Effect::Stopped)
        }
        ActionKind::Terminate => answer(succeeded("terminated: nothing left of it"), Effect::Terminated),
        ActionKind::InjectFault { fault } => inject(m, *fault),
        // A restore test restores the latest backup from the store into a
        // scratch machine (as the local provider's pgBackRest does): it
        // needs the store, not the machine being backed up.
        ActionKind::VerifyRestore => answer(
            if ground.backup_store_up {
                succeeded(server(m.engine).restored)
            } else {
                unavailable("backup store unavailable")
            },
            Effect::Nothing,
        ),
        // Simulated backups hold no data: they succeed when the machine
        // could serve one and the backup store answers.
        ActionKind::Backup => {
            if !ground.backup_store_up {
                return answer(unavailable("backup store unavailable"), Effect::Nothing);
            }
            match probe(m, ground) {
                ActionOutcome::Succeeded { .. } => answer(succeeded(server(m.engine).backed_up), Effect::Nothing),
                failed => answer(failed, Effect::Nothing),
            }
        }
        // Simulated services have no credentials: a rotation changes nothing.
        ActionKind::RotateCredentials => answer(succeeded("simulated: no credentials to rotate"), Effect::Nothing),
        ActionKind::RevokePreviousCredentials => {
            answer(succeeded("simulated: no previous credential to revoke"), Effect::Nothing)
        }
        ActionKind::PurgeArchive { .. } => answer(succeeded("simulated: no backups to remove"), Effect::Nothing),
    }
}

/// Through the provider's API, out of band: a partition between the
/// control plane and the machine does not stop it.
fn probe(m: &Machine, ground: Ground) -> ActionOutcome {
    if !m.running {
        refused("retired: no process runs")
    } else if !ground.host_up {
        refused("not answering: its host is down")
    } else if m.crashed {
        refused("process crashed: nothing listens")
    } else if m.hung {
        refused("process hung: it accepts connections but answers nothing")
    } else if m.partitioned {
        succeeded("alive (reached out of band; the control plane cannot hear it)")
    } else {
        succeeded("alive")
    }
}

/// At the network level, by the provider: works even where the host is down.
fn fence(m: &mut Machine) -> Answer {
    let was_writing = m.is_writing();
    let was_fenced = m.fenced;
    m.fenced = true;
    let detail = if m.hung {
        // A hung process may wake up and write: kill it.
        m.hung = false;
        m.crashed = true;
        "hung process killed and fenced"
    } else if was_fenced {
        "already fenced"
    } else if m.crashed {
        "crashed: it already cannot write; fenced"
    } else if !m.running {
        "retired: nothing runs; fenced"
    } else if m.partitioned {
        "fenced out of band (partitioned from the control plane)"
    } else {
        server(m.engine).fenced
    };
    answer(succeeded(detail), if was_writing || !was_fenced { Effect::Fenced } else { Effect::Nothing })
}

fn promote(m: &mut Machine, ground: Ground) -> Answer {
    let refuse = |why: &str| answer(refused(why), Effect::Nothing);
    if !m.running {
        return refuse("cannot promote a retired instance");
    }
    if m.crashed {
        return refuse("cannot promote: process crashed");
    }
    if m.hung {
        return refuse("cannot promote: process hung");
    }
    if !ground.host_up {
        return refuse("cannot promote: its host is down");
    }
    if m.fenced {
        return refuse("cannot promote a fenced instance: it must never accept writes again");
    }
    if m.role == Role::Primary {
        return answer(succeeded("already primary"), Effect::Nothing);
    }
    if m.role == Role::Broker || server(m.engine).peer_brokers {
        return refuse(server(m.engine).promoted);
    }
    m.role = Role::Primary;
    answer(succeeded(server(m.engine).promoted), Effect::Promoted)
}

fn restart(m: &mut Machine, ground: Ground) -> Answer {
    if !m.running {
        return answer(refused("cannot restart a retired instance"), Effect::Nothing);
    }
    if m.broken_for_good || !ground.host_up {
        return answer(refused("does not start: its host is gone"), Effect::Nothing);
    }
    m.crashed = false;
    m.hung = false;
    // The network is not the process: a restart does not heal a partition.
    let restarted = server(m.engine).restarted;
    let detail = if m.partitioned {
        format!("{restarted}; still partitioned from the control plane")
    } else {
        restarted.to_string()
    };
    answer(succeeded(detail), Effect::Restarted)
}

/// One fault at a time: a later hang or partition replaces an earlier one;
/// a crash sticks until a restart.
fn inject(m: &mut Machine, fault: Fault) -> Answer {
    if !m.running {
        return answer(refused(format!("cannot inject {fault}: the instance is retired")), Effect::Nothing);
    }
    let outcome = match (fault, m.crashed) {
        (Fault::Heal, true) => succeeded("nothing healed: a crashed process needs a restart"),
        (Fault::Heal, false) if m.hung || m.partitioned => {
            m.set_fault(None);
            succeeded("healed")
        }
        (Fault::Heal, false) => succeeded("nothing to heal"),
        (Fault::Crash, _) => {
            m.set_fault(Some(Fault::Crash));
            succeeded("crashed")
        }
        // Setting a hang or partition on a dead process would bring it back.
        (_, true) => refused(format!("cannot inject {fault}: the process crashed; restart it first")),
        (fault, false) => {
            m.set_fault(Some(fault));
            succeeded(format!("{fault} injected"))
        }
    };
    answer(outcome, Effect::Faulted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_primary_is_killed_when_fenced_and_never_promoted_again() {
        let mut m = Machine::new(Role::Primary);
        act(&mut m, &ActionKind::InjectFault { fault: Fault::Hang }, Ground::default());
        let a = act(&mut m, &ActionKind::Fence { immediate: true }, Ground::default());
        assert_eq!(a.effect, Effect::Fenced);
        assert!(m.crashed && m.fenced && !m.is_writing());
        act(&mut m, &ActionKind::Restart, Ground::default());
        assert!(m.fenced, "a restart keeps the fence");
        let again = act(&mut m, &ActionKind::Promote, Ground::default());
        assert!(matches!(again.outcome, ActionOutcome::Failed { retryable: false, .. }));
    }

    #[test]
    fn every_action_is_idempotent() {
        let g = Ground::default();
        for kind in
            [ActionKind::Promote, ActionKind::Fence { immediate: false }, ActionKind::Retire, ActionKind::Archive]
        {
            let mut m = Machine::new(Role::Follower);
            let first = act(&mut m, &kind, g).outcome;
            let after = m.clone();
            let second = act(&mut m, &kind, g).outcome;
            assert_eq!(m, after, "{kind:?} changed the machine twice");
            assert_eq!(
                matches!(first, ActionOutcome::Succeeded { .. }),
                matches!(second, ActionOutcome::Succeeded { .. }),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn what_surrounds_a_machine_decides_too() {
        let mut m = Machine::new(Role::Follower);
        let down = Ground { host_up: false, backup_store_up: true };
        assert!(matches!(act(&mut m, &ActionKind::Restart, down).outcome, ActionOutcome::Failed { .. }));
        assert!(matches!(act(&mut m, &ActionKind::Probe, down).outcome, ActionOutcome::Failed { .. }));
        let no_store = Ground { host_up: true, backup_store_up: false };
        assert!(matches!(
            act(&mut m, &ActionKind::Backup, no_store).outcome,
            ActionOutcome::Failed { retryable: true, .. }
        ));
        // A restore test needs the store, not the machine.
        let mut dead = Machine::new(Role::Primary);
        dead.crashed = true;
        assert!(matches!(
            act(&mut dead, &ActionKind::VerifyRestore, Ground::default()).outcome,
            ActionOutcome::Succeeded { .. }
        ));
        assert!(matches!(act(&mut dead, &ActionKind::Backup, Ground::default()).outcome, ActionOutcome::Failed { .. }));
        let s = ServiceId::new_at(0, 1);
        assert!(admit_provision(false, None, s, "zone-a", Ground::default()).is_none());
        assert!(matches!(
            admit_provision(true, None, s, "zone-a", Ground::default()),
            Some(ActionOutcome::Failed { .. })
        ));
        assert!(matches!(act_on_missing(&ActionKind::Probe), (ActionOutcome::Failed { .. }, true)));
        assert!(matches!(act_on_missing(&ActionKind::Terminate), (ActionOutcome::Succeeded { .. }, false)));
    }

    #[test]
    fn a_redis_server_answers_in_its_own_words_under_the_same_rules() {
        let g = Ground::default();
        let mut pg = Machine::new(Role::Follower);
        let mut rd = Machine::of(EngineKind::Redis, Role::Follower);
        let detail = |a: Answer| match a.outcome {
            ActionOutcome::Succeeded { detail } => detail.unwrap_or_default(),
            failed => panic!("{failed:?}"),
        };
        assert_eq!(detail(act(&mut pg, &ActionKind::Promote, g)), "promoted to primary");
        let a = act(&mut rd, &ActionKind::Promote, g);
        assert_eq!(a.effect, Effect::Promoted, "the same rule");
        assert!(detail(a).starts_with("REPLICAOF NO ONE"));
        assert!(rd.is_writing());
        let a = act(&mut rd, &ActionKind::Fence { immediate: true }, g);
        assert_eq!(a.effect, Effect::Fenced);
        assert!(detail(a).contains("router") && !rd.is_writing());
        assert!(matches!(
            act(&mut rd, &ActionKind::Promote, g).outcome,
            ActionOutcome::Failed { retryable: false, .. }
        ));
        assert!(detail(act(&mut rd, &ActionKind::Backup, g)).contains("RDB"));

        // A new Redis replica resyncs from its primary: no backup store needed;
        // a new primary is rebuilt from the latest snapshot: needed.
        let s = ServiceId::new_at(0, 1);
        let no_store = Ground { host_up: true, backup_store_up: false };
        assert!(admit_member(EngineKind::Redis, Role::Follower, false, None, s, "zone-a", no_store).is_none());
        let primary = admit_member(EngineKind::Redis, Role::Primary, false, None, s, "zone-a", no_store);
        assert!(matches!(&primary, Some(ActionOutcome::Failed { retryable: true, error }) if error.contains("RDB")));
        assert_eq!(
            admit_member(EngineKind::Postgres, Role::Follower, false, None, s, "zone-a", no_store),
            admit_provision(false, None, s, "zone-a", no_store),
            "PostgreSQL's answer is unchanged"
        );
        assert!(
            admit_member(EngineKind::Redis, Role::Follower, true, None, s, "zone-a", g).is_some(),
            "tombstones hold"
        );
    }
    #[test]
    fn a_kafka_broker_serves_as_a_peer_is_never_promoted_and_needs_no_backup_store() {
        let g = Ground::default();
        let detail = |a: Answer| match a.outcome {
            ActionOutcome::Succeeded { detail } => detail.unwrap_or_default(),
            failed => panic!("{failed:?}"),
        };
        assert_eq!(server(EngineKind::Kafka).engine, EngineKind::Kafka, "its own server, not PostgreSQL's");
        assert!(server(EngineKind::Kafka).peer_brokers && !server(EngineKind::Postgres).peer_brokers);
        assert!(!server(EngineKind::Kafka).synchronous_replication, "no replication of its own");

        let mut b = Machine::of(EngineKind::Kafka, Role::Broker);
        assert!(b.is_serving() && !b.is_writing(), "a broker serves; it is no primary");
        let facts = broker_facts(&b);
        assert_eq!((facts.role, facts.writable), (Some(Role::Broker), Some(true)));
        assert_eq!((facts.wal_position, facts.upstream_streaming), (None, None), "it streams from nobody");

        // Never promoted, whatever state it is in: peers have no primary.
        let refused_promotion = act(&mut b, &ActionKind::Promote, g);
        assert!(matches!(refused_promotion.outcome, ActionOutcome::Failed { retryable: false, .. }));
        assert_eq!((refused_promotion.effect, b.role), (Effect::Nothing, Role::Broker));

        // Crashed, hung and partitioned like any machine.
        act(&mut b, &ActionKind::InjectFault { fault: Fault::Partition }, g);
        assert!(b.is_serving() && !b.is_audible(), "a partitioned broker still serves its clients");
        act(&mut b, &ActionKind::InjectFault { fault: Fault::Hang }, g);
        assert!(!b.is_serving());
        act(&mut b, &ActionKind::InjectFault { fault: Fault::Crash }, g);
        assert!(!b.is_serving());
        assert!(detail(act(&mut b, &ActionKind::Restart, g)).starts_with("tansu broker restarted"));
        assert!(b.is_serving());

        // Lost: fenced at the router, in its own words, and never serves again.
        let a = act(&mut b, &ActionKind::Fence { immediate: true }, g);
        assert_eq!(a.effect, Effect::Fenced);
        assert!(detail(a).contains("router"));
        assert!(!b.is_serving() && broker_facts(&b).writable == Some(false));
        act(&mut b, &ActionKind::Restart, g);
        assert!(!b.is_serving(), "a restart keeps the fence");

        // Its replacement holds no data: built without the backup store.
        let s = ServiceId::new_at(0, 1);
        let no_store = Ground { host_up: true, backup_store_up: false };
        assert!(admit_member(EngineKind::Kafka, Role::Broker, false, None, s, "zone-a", no_store).is_none());
        let lost_zone = Ground { host_up: false, backup_store_up: true };
        assert!(matches!(
            admit_member(EngineKind::Kafka, Role::Broker, false, None, s, "zone-a", lost_zone),
            Some(ActionOutcome::Failed { retryable: false, .. })
        ));
        assert!(admit_member(EngineKind::Kafka, Role::Broker, true, None, s, "zone-a", g).is_some(), "tombstones hold");
    }
}
