//! Which part of the fleet a record belongs to (issue 16: several
//! control-plane nodes, each holding some shards of the fleet).
//!
//! A service's **slot** is fixed when it is created: the CRC16-XMODEM of
//! its name modulo 16,384, as Redis Cluster assigns keys to hash slots. It
//! is written into the id of the service and into the ids of everything the
//! engine mints for it (its instances, its actions), in the 14 low bits of
//! the UUID's bytes 12–13 (random bits of a v7 id). So any node can tell
//! from an id alone (a heartbeat's instance, an action's result) or from a
//! name alone (a command) where the record lives, with no lookup.
//!
//! A **shard** is what a lease covers: `slot % shards`, where `shards` is
//! the store's shard count. Slots outlive a change of that count: a store
//! resharded from 12 to 16 shards reads the same slots.
//!
//! Ids minted before slots existed carry random bits there. Their instances
//! and actions follow their service's id, as the store's load does (it
//! filters instances and actions by their service's slot).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The number of slots: a shard count is at most this.
pub const SLOTS: u16 = 16_384;

/// One of [`SLOTS`] hash slots.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slot(u16);

const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

impl Slot {
    /// The slot of a service named `name` (Redis Cluster's key slot).
    pub fn of_name(name: &str) -> Slot {
        Slot(XMODEM.checksum(name.as_bytes()) % SLOTS)
    }

    /// The slot carried by a UUID's bytes 12–13 (any UUID: an id minted
    /// before slots existed reads as the slot its random bits give).
    pub fn of_uuid(id: &uuid::Uuid) -> Slot {
        let b = id.as_bytes();
        Slot(u16::from_be_bytes([b[12], b[13]]) % SLOTS)
    }

    /// `id` with this slot written in (the other 122 bits unchanged but
    /// bytes 12–13's two high bits, which are cleared).
    pub fn stamp(self, id: uuid::Uuid) -> uuid::Uuid {
        let mut b = *id.as_bytes();
        b[12..14].copy_from_slice(&self.0.to_be_bytes());
        uuid::Uuid::from_bytes(b)
    }

    /// The shard this slot is in, for a store of `shards` shards (at least
    /// one; more than [`SLOTS`] is read as [`SLOTS`]).
    pub fn shard(self, shards: u16) -> u16 {
        self.0 % shards.clamp(1, SLOTS)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// A slot by number (`None` past [`SLOTS`]).
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOTS).then_some(Slot(n))
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// The SQL expression (PostgreSQL) of the slot of the text id in `column`:
/// [`Slot::of_uuid`] on the UUID's text form, whose bytes 12–13 are its
/// characters 29–32. The store's shard filters and their indexes use it.
pub fn slot_sql(column: &str) -> String {
    format!("((('x' || substr({column}, 29, 4))::bit(16)::integer) % {SLOTS})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceId, ServiceId};

    #[test]
    fn a_name_s_slot_is_redis_cluster_s_key_slot() {
        // The examples of the Redis Cluster specification (CRC16 of the
        // key, modulo 16384).
        assert_eq!(XMODEM.checksum(b"123456789"), 0x31C3);
        assert_eq!(Slot::of_name("foo").get(), 12182);
        assert_eq!(Slot::of_name("bar").get(), 5061);
        assert_eq!(Slot::of_name("").get(), 0);
    }

    #[test]
    fn a_stamped_id_reads_its_slot_and_keeps_its_other_bits() {
        for n in [0u16, 1, 4095, 12182, SLOTS - 1] {
            let slot = Slot::new(n).unwrap();
            let id = ServiceId::new_at(1_763_700_000_123_456, 0xdead_beef_f00d_cafe).in_slot(slot);
            assert_eq!(id.slot(), slot);
            assert_eq!(id.0.get_version_num(), 7, "still a v7 id");
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
            let plain = ServiceId::new_at(1_763_700_000_123_456, 0xdead_beef_f00d_cafe);
            let (a, b) = (id.0.as_bytes(), plain.0.as_bytes());
            assert_eq!(a[..12], b[..12]);
            assert_eq!(a[14..], b[14..]);
            // Stamping twice is stamping once.
            assert_eq!(id.in_slot(slot), id);
            // And an instance minted for it carries the same slot.
            assert_eq!(InstanceId::new_at(1, 2).in_slot(id.slot()).slot(), slot);
        }
        assert!(Slot::new(SLOTS).is_none());
    }

    #[test]
    fn the_shard_of_a_slot_is_the_slot_modulo_the_count() {
        let slot = Slot::new(12182).unwrap();
        assert_eq!(slot.shard(1), 0);
        assert_eq!(slot.shard(0), 0, "no shards reads as one");
        assert_eq!(slot.shard(12), 12182 % 12);
        assert_eq!(slot.shard(u16::MAX), 12182);
    }

    #[test]
    fn names_spread_evenly_over_shards() {
        let mut counts = [0u32; 12];
        for n in 0..120_000 {
            counts[Slot::of_name(&format!("svc-{n}")).shard(12) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_sql_expression_reads_the_characters_of_bytes_12_and_13() {
        let id = ServiceId::new_at(1, 2).in_slot(Slot::new(0x2abc).unwrap());
        let text = id.to_string();
        assert_eq!(&text[28..32], "2abc");
        assert!(slot_sql("id").contains("substr(id, 29, 4)"));
    }
}
