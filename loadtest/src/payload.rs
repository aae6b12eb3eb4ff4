//! The data every load push carries, `{"t": <send time, unix ns>, "seq": <push number>}`,
//! how a received event is read back, and the per-connection record of which pushes a
//! connection has already seen (to count duplicates).

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

/// Wall-clock time in ns since the epoch; the same clock in every process of this host,
/// so a send stamp from the parent and a receive time in a worker compare directly.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `data` of push `seq` sent at `t` (unix ns), padded with `pad` bytes of filler.
pub fn push_data(t: u64, seq: u64, pad: usize) -> serde_json::Value {
    if pad == 0 {
        serde_json::json!({ "t": t, "seq": seq })
    } else {
        serde_json::json!({ "t": t, "seq": seq, "pad": "x".repeat(pad) })
    }
}

/// The stamp a load push carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    pub t: u64,
    pub seq: u64,
}

/// A received Socket.IO event: its name, and the stamp when its first argument is one.
#[derive(Debug, PartialEq, Eq)]
pub struct ReceivedEvent<'a> {
    pub event: Cow<'a, str>,
    pub stamp: Option<Stamp>,
}

/// Reads an EVENT payload `["name", arg0, ...]`. Arguments after the first (a recovery
/// offset, say) are ignored; a first argument that is not a stamp gives `stamp: None`.
pub fn parse_event(json: &str) -> Result<ReceivedEvent<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let ev = de.deserialize_seq(EventVisitor)?;
    de.end()?;
    Ok(ev)
}

struct EventVisitor;

/// The first argument, read as a stamp when it has `t` and `seq`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MaybeStamp {
    Stamp(Stamp),
    Other(IgnoredAny),
}

impl<'de> Visitor<'de> for EventVisitor {
    type Value = ReceivedEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event array [name, args...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        #[derive(Deserialize)]
        struct Name<'a>(#[serde(borrow)] Cow<'a, str>);
        let Name(event) = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("empty event array"))?;
        let stamp = match seq.next_element::<MaybeStamp>()? {
            Some(MaybeStamp::Stamp(s)) => Some(s),
            _ => None,
        };
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ReceivedEvent { event, stamp })
    }
}

/// The push numbers one connection has received, to tell a duplicate from a first
/// delivery. Sparse (a sorted list) while that is smaller, dense (a bitmap over
/// 0..=max) once the bitmap is smaller: a connection that gets every broadcast costs one
/// bit per push, one that gets a few user pushes a few words.
#[derive(Debug, Clone)]
pub enum SeqSet {
    Sparse(Vec<u32>),
    Dense(Vec<u64>),
}

impl Default for SeqSet {
    fn default() -> Self {
        SeqSet::Sparse(Vec::new())
    }
}

impl SeqSet {
    /// Records `seq`; true when it was not there before.
    pub fn insert(&mut self, seq: u32) -> bool {
        match self {
            SeqSet::Dense(bits) => set_bit(bits, seq),
            SeqSet::Sparse(list) => {
                let at = match list.binary_search(&seq) {
                    Ok(_) => return false,
                    Err(at) => at,
                };
                list.insert(at, seq);
                let max = *list.last().unwrap_or(&0) as usize;
                // Bitmap bytes vs list bytes.
                if max / 8 + 8 < list.len() * 4 {
                    let mut bits = Vec::new();
                    for &s in list.iter() {
                        set_bit(&mut bits, s);
                    }
                    *self = SeqSet::Dense(bits);
                }
                true
            }
        }
    }

    #[cfg(test)]
    pub fn contains(&self, seq: u32) -> bool {
        match self {
            SeqSet::Sparse(list) => list.binary_search(&seq).is_ok(),
            SeqSet::Dense(bits) => bits
                .get(seq as usize / 64)
                .is_some_and(|w| w & (1 << (seq % 64)) != 0),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        match self {
            SeqSet::Sparse(list) => list.len(),
            SeqSet::Dense(bits) => bits.iter().map(|w| w.count_ones() as usize).sum(),
        }
    }
}

fn set_bit(bits: &mut Vec<u64>, seq: u32) -> bool {
    let word = seq as usize / 64;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    let mask = 1u64 << (seq % 64);
    let new = bits[word] & mask == 0;
    bits[word] |= mask;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_event_round_trips() {
        let data = push_data(1_700_000_000_123_456_789, 42, 0);
        let text = serde_json::json!(["load", data]).to_string();
        let ev = parse_event(&text).unwrap();
        assert_eq!(ev.event, "load");
        assert_eq!(
            ev.stamp,
            Some(Stamp {
                t: 1_700_000_000_123_456_789,
                seq: 42
            })
        );
    }

    #[test]
    fn padding_and_extra_arguments_are_ignored() {
        let text = serde_json::json!(["load", push_data(5, 6, 100), "offset-1"]).to_string();
        assert_eq!(
            parse_event(&text).unwrap().stamp,
            Some(Stamp { t: 5, seq: 6 })
        );
        let ev = parse_event(r#"["e",{"seq":1,"t":2,"more":{"a":[1,2]}}]"#).unwrap();
        assert_eq!(ev.stamp, Some(Stamp { t: 2, seq: 1 }));
    }

    #[test]
    fn events_without_a_stamp_parse_with_none() {
        let ev = parse_event(r#"["hello","world"]"#).unwrap();
        assert_eq!((ev.event.as_ref(), ev.stamp), ("hello", None));
        assert_eq!(parse_event(r#"["bare"]"#).unwrap().stamp, None);
        assert_eq!(parse_event(r#"["x",{"t":1}]"#).unwrap().stamp, None);
        // Escaped names are unescaped.
        assert_eq!(parse_event(r#"["a\"b",1]"#).unwrap().event, "a\"b");
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(parse_event("").is_err());
        assert!(parse_event("[]").is_err());
        assert!(parse_event(r#"{"t":1}"#).is_err());
        assert!(parse_event(r#"["x",1] trailing"#).is_err());
        assert!(parse_event(r#"[1,{"t":1,"seq":2}]"#).is_err());
    }

    #[test]
    fn seq_set_detects_duplicates_sparse_and_dense() {
        let mut s = SeqSet::default();
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(matches!(s, SeqSet::Sparse(_)));
        for i in 0..1000 {
            assert!(s.insert(i));
        }
        assert!(
            matches!(s, SeqSet::Dense(_)),
            "dense once the bitmap is smaller"
        );
        assert!(!s.insert(999));
        assert!(s.insert(5000));
        assert!(s.contains(5000) && s.contains(0) && !s.contains(4999));
        assert_eq!(s.len(), 1002);
    }

    #[test]
    fn sparse_far_apart_values_stay_sparse() {
        let mut s = SeqSet::default();
        for i in 0..50 {
            assert!(s.insert(i * 100_000));
        }
        assert!(matches!(s, SeqSet::Sparse(_)));
        assert_eq!(s.len(), 50);
        assert!(!s.insert(100_000));
    }
}
