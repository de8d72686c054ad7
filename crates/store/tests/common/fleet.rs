//! A fleet as the engine writes it, for the load's tests and benchmark:
//! services of a primary and a synchronous follower, their ids in their
//! names' slots as the engine mints them (`drover_model::Slot`).

use drover_model::{
    ActionId, ActionKind, ActionRecord, ActionState, BackupStatus, Changes, CredentialStatus, EngineKind, ImageId,
    InstanceId, InstanceRecord, InstanceState, Plan, Role, ServiceId, ServiceRecord, ServiceState, Slot, Timestamp,
};
use drover_store::PgStore;

pub const T0: i64 = 1_763_700_000_000_000;

pub fn service(n: u64) -> ServiceRecord {
    let name = format!("svc-{n}");
    ServiceRecord {
        upgraded_from: None,
        id: ServiceId::new_at(T0 + n as i64, n).in_slot(Slot::of_name(&name)),
        name,
        engine: EngineKind::Postgres,
        plan: Plan {
            followers: 1,
            sync: true,
            max_failover_lag_bytes: 16 << 20,
            credential_rotation_days: None,
            brokers: None,
        },
        team: "default".into(),
        zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
        image: ImageId("sha256:0f5c2a9d1e7b4c3a8f6e5d4c3b2a19087f6e5d4c3b2a19087f6e5d4c3b2a1908".into()),
        provider: "local".into(),
        state: ServiceState::Available,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 10 + n as i64),
        needs_human: false,
        remedy_failures: 0,
        failing_since: None,
        backups: BackupStatus { last_backup_at: Some(Timestamp(T0 + 5)), ..Default::default() },
        credentials: CredentialStatus { last_rotated_at: Some(Timestamp(T0 + 6)), ..Default::default() },
        maintenance_window: None,
        forked_from: None,
        labels: Default::default(),
        read_slots: Vec::new(),
    }
}

pub fn instance(n: u64, service: &ServiceRecord, role: Role) -> InstanceRecord {
    InstanceRecord {
        id: InstanceId::new_at(T0 + n as i64, n).in_slot(service.id.slot()),
        service: service.id,
        role,
        zone: service.zones[(n % 3) as usize].clone(),
        provider: "local".into(),
        image: service.image.clone(),
        state: InstanceState::Available,
        fenced: false,
        restarts: 0,
        created_at: Timestamp(T0 + n as i64),
        state_since: Timestamp(T0 + 5 + n as i64),
        host: Some(format!("h{:02}", n % 30)),
        read_slot: None,
    }
}

pub fn action(n: u64, instance: &InstanceRecord, state: ActionState) -> ActionRecord {
    ActionRecord {
        id: ActionId::new_at(T0 + n as i64, n).in_slot(instance.service.slot()),
        service: instance.service,
        instance: instance.id,
        kind: ActionKind::Restart,
        state,
        attempts: 1,
        cause: "a test".into(),
        created_at: Timestamp(T0 + n as i64),
        updated_at: Timestamp(T0 + n as i64),
        deadline: Timestamp(T0 + 60_000_000),
        error: None,
    }
}

/// Commits `instances / 2` services of two instances each, 5,000 services
/// per commit.
pub fn seed(store: &PgStore, instances: usize) {
    use drover_store::Store;
    let mut changes = Changes::default();
    for s in 0..(instances / 2) as u64 {
        let svc = service(s);
        changes.instances.push(instance(2 * s, &svc, Role::Primary));
        changes.instances.push(instance(2 * s + 1, &svc, Role::Follower));
        changes.services.push(svc);
        if changes.services.len() == 5_000 {
            store.commit(std::mem::take(&mut changes)).expect("seeding");
        }
    }
    store.commit(changes).expect("seeding");
}
