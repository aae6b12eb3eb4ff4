//! The data every load push carries, `{"t": <send time, unix ns>, "seq": <push number>}`,
//! how a received event (as the gateway's codecs decoded it) is read back, and the
//! per-connection record of which pushes a connection has already seen (to count
//! duplicates).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub t: u64,
    pub seq: u64,
}

impl Stamp {
    /// The stamp in a push's data: an object with unsigned integers `t` and `seq` (other
    /// members, such as the padding, are ignored); `None` for anything else.
    pub fn of(data: &Value) -> Option<Stamp> {
        let t = data.get("t")?.as_u64()?;
        let seq = data.get("seq")?.as_u64()?;
        Some(Stamp { t, seq })
    }
}

/// A received event: its name, and the stamp when its data is one.
#[derive(Debug, PartialEq, Eq)]
pub struct ReceivedEvent<'a> {
    pub event: &'a str,
    pub stamp: Option<Stamp>,
}

/// Why a received event cannot be read as a push of this tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Socket.IO allows numeric event names; pushgate never sends one.
    #[error("event name is not a string")]
    NameNotString,
    /// What the codec would refuse anyway: not a non-empty array.
    #[error("event payload is not an array [name, args...]")]
    NotAnEvent,
}

impl<'a> ReceivedEvent<'a> {
    /// Reads a Socket.IO EVENT payload `["name", arg0, ...]` (as `packet::decode` left it).
    /// Arguments after the first (a recovery offset, say) are ignored; a first argument
    /// that is not a stamp gives `stamp: None`.
    pub fn from_socketio(args: &'a Value) -> Result<Self, PayloadError> {
        let args = args.as_array().ok_or(PayloadError::NotAnEvent)?;
        let event = match args.first() {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(PayloadError::NameNotString),
            None => return Err(PayloadError::NotAnEvent),
        };
        Ok(ReceivedEvent {
            event,
            stamp: args.get(1).and_then(Stamp::of),
        })
    }

    /// Reads a Phoenix push: the event is the frame's, the payload is the push's data (an
    /// object; pushgate wraps other values as `{"value": …}`, which is not a stamp).
    pub fn from_phoenix(event: &'a str, payload: &Value) -> Self {
        ReceivedEvent {
            event,
            stamp: Stamp::of(payload),
        }
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

    use serde_json::json;

    #[test]
    fn stamped_event_round_trips() {
        let data = push_data(1_700_000_000_123_456_789, 42, 0);
        let args = json!(["load", data]);
        let ev = ReceivedEvent::from_socketio(&args).unwrap();
        assert_eq!(ev.event, "load");
        let stamp = Some(Stamp {
            t: 1_700_000_000_123_456_789,
            seq: 42,
        });
        assert_eq!(ev.stamp, stamp);
        assert_eq!(ReceivedEvent::from_phoenix("load", &data).stamp, stamp);
    }

    #[test]
    fn padding_and_extra_arguments_are_ignored() {
        let args = json!(["load", push_data(5, 6, 100), "offset-1"]);
        assert_eq!(
            ReceivedEvent::from_socketio(&args).unwrap().stamp,
            Some(Stamp { t: 5, seq: 6 })
        );
        let args = json!(["e", {"seq": 1, "t": 2, "more": {"a": [1, 2]}}]);
        let ev = ReceivedEvent::from_socketio(&args).unwrap();
        assert_eq!(ev.stamp, Some(Stamp { t: 2, seq: 1 }));
        assert_eq!(
            ReceivedEvent::from_phoenix("load", &push_data(5, 6, 100)).stamp,
            Some(Stamp { t: 5, seq: 6 })
        );
    }

    #[test]
    fn events_without_a_stamp_parse_with_none() {
        let args = json!(["hello", "world"]);
        let ev = ReceivedEvent::from_socketio(&args).unwrap();
        assert_eq!((ev.event, ev.stamp), ("hello", None));
        let bare = json!(["bare"]);
        assert_eq!(ReceivedEvent::from_socketio(&bare).unwrap().stamp, None);
        let half = json!(["x", {"t": 1}]);
        assert_eq!(ReceivedEvent::from_socketio(&half).unwrap().stamp, None);
        let float = json!(["x", {"t": 1.5, "seq": 2}]);
        assert_eq!(ReceivedEvent::from_socketio(&float).unwrap().stamp, None);
        // pushgate wraps data that is not an object for Phoenix: not a stamp.
        let wrapped = json!({"value": [1, 2]});
        assert_eq!(ReceivedEvent::from_phoenix("x", &wrapped).stamp, None);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        // Text that is not JSON never gets here: the library's `packet::decode` refuses
        // it (its `invalid_json_is_an_error` test), and the session ends as a protocol error.
        assert_eq!(
            ReceivedEvent::from_socketio(&json!([])),
            Err(PayloadError::NotAnEvent)
        );
        assert_eq!(
            ReceivedEvent::from_socketio(&json!({"t": 1})),
            Err(PayloadError::NotAnEvent)
        );
        assert_eq!(
            ReceivedEvent::from_socketio(&json!([1, {"t": 1, "seq": 2}])),
            Err(PayloadError::NameNotString)
        );
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
