//! Ids are UUID v7: sortable by creation time, unique without coordination.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// No id: where a record must name one that does not exist.
            pub const NIL: $name = $name(Uuid::nil());
            /// A v7 id whose time part is `micros` since the Unix epoch and whose
            /// random part is `entropy`: the pure engine mints ids from its own
            /// seeded counter instead of reading a clock or the OS's randomness.
            pub fn new_at(micros: i64, entropy: u64) -> Self {
                let millis = (micros.max(0) / 1000) as u64;
                let mut random = [0u8; 10];
                random[..8].copy_from_slice(&entropy.to_be_bytes());
                random[8..].copy_from_slice(&((micros.max(0) % 1000) as u16).to_be_bytes());
                $name(*uuid::Builder::from_unix_timestamp_millis(millis, &random).as_uuid())
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            /// This id with `slot` written into it (`crate::slots`).
            pub fn in_slot(self, slot: crate::Slot) -> Self {
                $name(slot.stamp(self.0))
            }
            /// The slot this id carries (`crate::slots`).
            pub fn slot(&self) -> crate::Slot {
                crate::Slot::of_uuid(&self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// One server of a service.
    InstanceId
);
id_type!(
    /// The thing a customer holds: a database with its primary and followers.
    ServiceId
);
id_type!(
    /// One durable, idempotent action of the engine.
    ActionId
);
id_type!(
    /// One page: what a person (or the bot tier) is asked to handle.
    PageId
);
id_type!(
    /// One notification of a page to one recipient.
    NotificationId
);
id_type!(
    /// One rollout: services moved onto an image in waves.
    RolloutId
);
id_type!(
    /// One archive: the final backup of a deleted service, kept for a while.
    ArchiveId
);
id_type!(
    /// One incident: declared by people, run by an incident commander,
    /// published on the status site.
    IncidentId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_minted_later_sort_later_and_are_version_7() {
        let a = InstanceId::new_at(1_700_000_000_000_000, 1);
        let b = InstanceId::new_at(1_700_000_001_000_000, 1);
        assert!(a < b);
        assert_eq!(a.0.get_version_num(), 7);
        assert_ne!(InstanceId::new_at(5, 1), InstanceId::new_at(5, 2));
    }
}
