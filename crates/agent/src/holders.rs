//! Which control-plane node holds each shard of a fleet split between
//! nodes (issue 16), as a node tells an agent in its answer to a heartbeat
//! batch: the [`HEADER`] `SHARDS SHARD=URL SHARD=URL …` (a shard with no
//! holder at the moment left out). An agent that knows it sends each
//! holder the beats of its shards, so no node parses and forwards another
//! holder's part (`forward::heartbeat_parts` on the server); a beat whose
//! shard has no known holder goes to any node, which passes it on.
//!
//! The map is a hint, never authority: a holder that moved answers with
//! the map it knows, and a part it no longer holds it forwards itself.

use drover_model::Beat;
use std::collections::BTreeMap;

/// The response header that carries the map.
pub const HEADER: &str = "drover-shard-holders";

/// The holders of a split fleet's shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holders {
    shards: u16,
    urls: BTreeMap<u16, String>,
}

impl Holders {
    /// The map of a fleet of `shards` shards whose holders are `urls`.
    pub fn new(shards: u16, urls: impl IntoIterator<Item = (u16, String)>) -> Holders {
        Holders { shards, urls: urls.into_iter().filter(|(s, _)| *s < shards).collect() }
    }

    /// The header's value: `SHARDS SHARD=URL …`.
    pub fn render(&self) -> String {
        let mut out = self.shards.to_string();
        for (shard, url) in &self.urls {
            out.push_str(&format!(" {shard}={url}"));
        }
        out
    }

    /// Reads the header's value; None for anything else (a fleet of one
    /// shard, or a value this agent does not understand: it then sends
    /// whole batches, as before).
    pub fn parse(value: &str) -> Option<Holders> {
        let mut words = value.split_ascii_whitespace();
        let shards: u16 = words.next()?.parse().ok().filter(|&n| n > 1)?;
        let mut urls = BTreeMap::new();
        for word in words {
            let (shard, url) = word.split_once('=')?;
            let shard: u16 = shard.parse().ok().filter(|&s| s < shards)?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return None;
            }
            urls.insert(shard, url.trim_end_matches('/').to_string());
        }
        Some(Holders { shards, urls })
    }

    /// Only the holders at one of `urls` (the nodes an agent was given
    /// with `--server`): it sends its token to no other address, and a
    /// beat of another's shard goes to a node it knows, which passes it on.
    pub fn among(mut self, urls: &[String]) -> Holders {
        self.urls.retain(|_, url| urls.iter().any(|u| u.trim_end_matches('/') == url));
        self
    }

    /// `beats` by the node that holds their shard, each part in the
    /// batch's order; the beats of shards with no known holder last, under
    /// None (for any node to pass on).
    pub fn split(&self, beats: &[Beat]) -> Vec<(Option<&str>, Vec<Beat>)> {
        let mut parts: BTreeMap<Option<&str>, Vec<Beat>> = BTreeMap::new();
        for beat in beats {
            let url = self.urls.get(&beat.instance.slot().shard(self.shards)).map(String::as_str);
            parts.entry(url).or_default().push(beat.clone());
        }
        let mut parts: Vec<(Option<&str>, Vec<Beat>)> = parts.into_iter().collect();
        // None sorts first in a BTreeMap: the unplaced part goes last.
        let unplaced = parts.first().is_some_and(|(url, _)| url.is_none());
        parts.rotate_left(usize::from(unplaced));
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_model::{InstanceId, Slot};

    #[test]
    fn the_header_reads_back_as_written_and_nonsense_is_no_map() {
        let map = Holders::new(3, [(0, "http://a:1".to_string()), (2, "https://c:3".to_string())]);
        assert_eq!(map.render(), "3 0=http://a:1 2=https://c:3");
        assert_eq!(Holders::parse(&map.render()), Some(map.clone()));
        for bad in ["", "1", "x", "3 7=http://a", "3 0=ftp://a", "3 0", "3 =http://a", "0"] {
            assert_eq!(Holders::parse(bad), None, "{bad:?}");
        }
        // Only the nodes an agent was given.
        let known = map.clone().among(&["https://c:3/".to_string()]);
        assert_eq!(known.render(), "3 2=https://c:3");
    }

    proptest::proptest! {
        /// Every beat in exactly one part, in the batch's order, each part
        /// its shard's holder's (or unplaced, last, for a shard with none).
        #[test]
        fn a_batch_splits_by_holder_into_a_partition(
            names in proptest::collection::vec("[a-z][a-z0-9]{0,12}", 0..80),
            shards in 2u16..9,
            held in proptest::collection::vec(proptest::option::of(0usize..3), 9),
        ) {
            let urls = ["http://a:1", "http://b:2", "http://c:3"];
            let map = Holders::new(
                shards,
                (0..shards).filter_map(|s| held[s as usize].map(|n| (s, urls[n].to_string()))),
            );
            let beats: Vec<Beat> = names
                .iter()
                .enumerate()
                .map(|(i, n)| Beat {
                    instance: InstanceId::new_at(1_700_000_000_000_000, i as u64).in_slot(Slot::of_name(n)),
                    seq: i as u64,
                    facts: Default::default(),
                })
                .collect();
            let parts = map.split(&beats);
            let mut seen: Vec<u64> = Vec::new();
            for (k, (url, part)) in parts.iter().enumerate() {
                proptest::prop_assert!(part.windows(2).all(|w| w[0].seq < w[1].seq), "in order");
                proptest::prop_assert!(url.is_some() || k + 1 == parts.len(), "the unplaced part last");
                for beat in part {
                    let shard = beat.instance.slot().shard(shards);
                    let want = held[shard as usize].map(|n| urls[n]);
                    proptest::prop_assert_eq!(*url, want);
                    seen.push(beat.seq);
                }
            }
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..beats.len() as u64).collect::<Vec<_>>());
        }
    }
}
