//! A Kafka service's storage (issue 14): the PostgreSQL service that holds
//! its records, offsets and groups (tansu's brokers keep nothing of their
//! own). It is an ordinary PostgreSQL service of the engine, so it gets
//! everything PostgreSQL gets here: a synchronous follower, fenced
//! failover, backups and restore tests, rolls by replacement.
//!
//! The link is its name, `<kafka>-storage`, made and broken in one command:
//! creating a Kafka service creates its storage first (both or neither),
//! deleting it deletes its storage, and the storage cannot be deleted on
//! its own while its Kafka service lives.

use crate::api::CommandError;
use crate::fleet::Svc;
use crate::Engine;
use drover_model::{CreateService, EngineKind};

pub use drover_model::{kafka_storage_name as storage_name, KAFKA_STORAGE_SUFFIX as STORAGE_SUFFIX};

/// The storage service a Kafka service `req` is created with: PostgreSQL,
/// one synchronous follower (an acknowledged record is on two servers
/// before the broker answers), in the same team, zones and provider,
/// labelled with its Kafka service.
pub fn storage_request(req: &CreateService) -> CreateService {
    CreateService {
        name: storage_name(&req.name),
        engine: EngineKind::Postgres,
        followers: 1,
        sync: Some(true),
        max_failover_lag_bytes: None,
        // The brokers hold its URL, credentials included, for their life:
        // a rotation would lock them out (not handled yet).
        credential_rotation_days: None,
        team: req.team.clone(),
        zones: req.zones.clone(),
        provider: req.provider.clone(),
        labels: Some([("kafka".to_string(), req.name.clone())].into_iter().collect()),
        brokers: None,
    }
}

impl Engine {
    /// The slot of the Kafka service whose storage `s` is (None: `s` is no
    /// Kafka service's storage).
    pub(crate) fn kafka_of_storage(&self, s: &Svc) -> Option<u32> {
        if s.engine != EngineKind::Postgres {
            return None;
        }
        let kafka = s.name.strip_suffix(STORAGE_SUFFIX)?;
        let &slot = self.service_names.get(kafka)?;
        self.services.get(slot).filter(|k| k.engine == EngineKind::Kafka).map(|_| slot)
    }

    /// The slot of a Kafka service's storage (None: not Kafka, or no
    /// storage: services created before storages were services).
    pub(crate) fn storage_of_kafka(&self, s: &Svc) -> Option<u32> {
        if s.engine != EngineKind::Kafka {
            return None;
        }
        let &slot = self.service_names.get(storage_name(&s.name).as_str())?;
        self.services.get(slot).filter(|st| st.engine == EngineKind::Postgres).map(|_| slot)
    }

    /// Refuses a Kafka service whose storage could not be created with it,
    /// before anything is created.
    pub(crate) fn storage_can_be_created(&self, kafka: &CreateService) -> Result<CreateService, CommandError> {
        let max = 63 - STORAGE_SUFFIX.len();
        if kafka.name.len() > max {
            return Err(CommandError::Invalid(format!(
                "a Kafka service's name may have at most {max} characters (its storage is named {:?})",
                storage_name(&kafka.name)
            )));
        }
        let storage = storage_request(kafka);
        if self.service_names.contains_key(storage.name.as_str()) {
            return Err(CommandError::Conflict(format!(
                "the name {:?}, which the Kafka service's storage takes, is used by another service",
                storage.name
            )));
        }
        self.name_not_held_by_archive(&storage.name)?;
        if self.images.latest_for(EngineKind::Postgres).is_none() {
            return Err(CommandError::Invalid(
                "no image registered for engine postgres, which a Kafka service's storage runs".into(),
            ));
        }
        Ok(storage)
    }
}
