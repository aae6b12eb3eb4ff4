//! The wire format of the Redis bus: MessagePack (rmp-serde, named fields) of
//! `{v: 1, m: <message>}`, one enum variant per message kind.
//!
//! A node that meets an envelope it cannot read — another version, or bytes that are
//! not an envelope at all — gets a [`DecodeError`] that names why (the bus counts it
//! in `pushgate_bus_messages_dropped_total{reason}`) and goes on; nothing on a channel
//! can stop a node.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::{PushId, RoomName, SocketId, UserId};
use crate::push::{Push, Target};
use std::sync::Arc;

/// The envelope version this build writes and reads. 2: a push carries its data as
/// sent (no Socket.IO attachments) and an optional scope instead of a namespace.
pub const VERSION: u8 = 2;

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    pub m: Message,
}

/// Everything nodes tell each other. Pushes go to user, room, broadcast channels or a
/// node's inbox; everything else goes to one node's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A push to deliver to this node's matching sockets.
    Push(PushEnvelope),
    /// A delivering node's fan-out of `push`, sent to the push's origin.
    Delivered {
        push: String,
        node: String,
        sockets: u32,
        delivered: u32,
        failed: u32,
        /// Of `delivered`, those to sockets without client acks (see
        /// [`crate::delivery::Report::unackable`]). Absent from an older node's
        /// report, which had no such sockets, hence the default.
        #[serde(default)]
        unackable: u32,
    },
    /// `n` client acks for `push`, sent to its origin.
    Acked { push: String, n: u32 },
    /// Disconnect these sockets of the receiving node; answer with [`Message::Done`].
    Kick {
        request: Request,
        sockets: Vec<String>,
    },
    /// Add these sockets of the receiving node to `room`; answer with `Done`.
    Join {
        request: Request,
        room: String,
        sockets: Vec<String>,
    },
    /// Remove these sockets of the receiving node from `room`; answer with `Done`.
    Leave {
        request: Request,
        room: String,
        sockets: Vec<String>,
    },
    /// The answer to request `request`: how many sockets it applied to, and (a join)
    /// the sockets a limit kept out (`PUSHGATE_MAX_ROOMS_PER_CONNECTION`). `refused`
    /// is left out when empty and read as empty when absent, so nodes without it
    /// still understand each other.
    Done {
        request: u64,
        n: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<String>,
    },
    /// Send the report of `push`, a push the receiving node accepted; answer with
    /// [`Message::Report`].
    ReportOf { request: Request, push: String },
    /// The answer to a [`Message::ReportOf`]: the report, `None` when unknown there.
    Report {
        request: u64,
        report: Option<(crate::delivery::State, crate::delivery::Report)>,
    },
    /// Connections entered or left a presence room; published on the room's channel by
    /// the node whose registry write made the change, for every node with members to
    /// render.
    Presence(crate::presence::Diff),
    /// A batch of one node's events for readers of `GET /v1/events` on other nodes
    /// (channel `{p}:e`): each event's JSON as that node's own readers got it, so it
    /// is serialised once, where it happened.
    Events { node: String, events: Vec<String> },
    /// A node got readers of the event stream (channel `{p}:ew`, which every node
    /// follows): send your events to `{p}:e` from now on, and answer with `Done`.
    /// Added within version 2: a node without it counts it `undecodable` and skips it.
    Watch { request: Request },
}

/// Who asked, so the answer finds its way back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub from: String,
}

/// A push as it travels: everything a delivering node needs to encode and deliver it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushEnvelope {
    pub id: String,
    /// The node that accepted the push and gathers its report.
    pub origin: String,
    pub target: WireTarget,
    pub event: String,
    /// The event's argument as JSON text, as the caller sent it.
    pub data: Option<String>,
    /// The namespace the push names, if not the default.
    pub scope: Option<String>,
    pub except: Vec<String>,
    /// Ask for acks within this many milliseconds.
    pub ack_ms: Option<u64>,
    /// When the origin accepted the push, ms since the epoch (for the write-latency
    /// histogram on the delivering node).
    pub accepted_ms: u64,
    /// The member that sent a client event ([`Push::sender`]). Added within version
    /// 2: absent from older nodes' envelopes, and ignored by them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Recorded for recovery: the delivering node hands its id to the client as its
    /// offset. Added within version 2 (absent = false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recoverable: bool,
}

/// A push's target as it travels; a push to several users travels as one envelope
/// per user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireTarget {
    All,
    User(String),
    Room(String),
    Socket(String),
}

/// Why bytes from the bus were skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("envelope version {0} is not {VERSION}")]
    UnknownVersion(u64),
    #[error("not a pushgate envelope")]
    Undecodable,
}

impl DecodeError {
    /// The `reason` label of `pushgate_bus_messages_dropped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::Undecodable => "undecodable",
        }
    }
}

impl Envelope {
    pub fn new(m: Message) -> Self {
        Self { v: VERSION, m }
    }

    pub fn encode(&self) -> Bytes {
        // Serializing these plain types into a Vec cannot fail.
        Bytes::from(rmp_serde::to_vec_named(self).expect("envelope serializes"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        #[derive(Deserialize)]
        struct Header {
            v: u64,
        }
        match rmp_serde::from_slice::<Envelope>(bytes) {
            Ok(e) if e.v == VERSION => Ok(e),
            Ok(e) => Err(DecodeError::UnknownVersion(e.v.into())),
            Err(_) => match rmp_serde::from_slice::<Header>(bytes) {
                Ok(h) if h.v != u64::from(VERSION) => Err(DecodeError::UnknownVersion(h.v)),
                _ => Err(DecodeError::Undecodable),
            },
        }
    }
}

impl PushEnvelope {
    /// The envelopes of `push`, one per channel-sized target.
    pub fn of(push: &Push, origin: &str, accepted_ms: u64) -> Vec<(WireTarget, PushEnvelope)> {
        let targets = match &push.target {
            Target::All => vec![WireTarget::All],
            Target::User(u) => vec![WireTarget::User(u.to_string())],
            Target::Users(us) => us.iter().map(|u| WireTarget::User(u.to_string())).collect(),
            Target::Room(r) => vec![WireTarget::Room(r.to_string())],
            Target::Socket(s) => vec![WireTarget::Socket(s.to_string())],
        };
        let data = push.data.as_ref().map(|d| d.to_string());
        let except: Vec<String> = push.except.iter().map(|s| s.to_string()).collect();
        targets
            .into_iter()
            .map(|target| {
                let env = PushEnvelope {
                    id: push.id.to_string(),
                    origin: origin.to_owned(),
                    target: target.clone(),
                    event: push.event.clone(),
                    data: data.clone(),
                    scope: push.scope.as_deref().map(str::to_owned),
                    except: except.clone(),
                    ack_ms: push.ack.map(|d| d.as_millis() as u64),
                    accepted_ms,
                    sender: push.sender.as_deref().map(str::to_owned),
                    recoverable: push.recoverable,
                };
                (target, env)
            })
            .collect()
    }

    /// The push to deliver on this node. `None` when the data is not JSON.
    pub fn into_push(self, now_ms: u64) -> Option<Push> {
        let data = match self.data {
            Some(text) => Some(serde_json::from_str(&text).ok()?),
            None => None,
        };
        let target = match self.target {
            WireTarget::All => Target::All,
            WireTarget::User(u) => Target::User(UserId::from(u)),
            WireTarget::Room(r) => Target::Room(RoomName::from(r)),
            WireTarget::Socket(s) => Target::Socket(SocketId::from(s)),
        };
        let age = Duration::from_millis(now_ms.saturating_sub(self.accepted_ms));
        let now = Instant::now();
        Some(Push {
            id: PushId::from(self.id),
            target,
            event: self.event,
            data,
            scope: self.scope.map(Arc::from),
            except: self
                .except
                .into_iter()
                .map(SocketId::from)
                .collect::<HashSet<_>>(),
            ack: self.ack_ms.map(Duration::from_millis),
            wait: false,
            accepted_at: now.checked_sub(age).unwrap_or(now),
            sender: self.sender.map(Arc::from),
            recoverable: self.recoverable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_push_round_trips_with_its_data_and_options() {
        let push = Push::from_json(json!({
            "to": {"users": ["a", "b"]}, "event": "e", "data": {"x": {"$binary": "AQID"}, "n": 1},
            "except": ["n1.x"], "ack": {"timeout_ms": 700}, "namespace": "/admin"
        }))
        .unwrap();
        let envs = PushEnvelope::of(&push, "n1", 5);
        assert_eq!(envs.len(), 2, "one envelope per user");
        let (_, env) = envs.into_iter().next().unwrap();
        let bytes = Envelope::new(Message::Push(env.clone())).encode();
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back.m, Message::Push(env.clone()));
        let p = env.into_push(5).unwrap();
        assert_eq!(p.target, Target::User(UserId::from("a")));
        assert_eq!(p.data, push.data);
        assert_eq!(p.scope(), "/admin");
        assert_eq!(p.ack, Some(Duration::from_millis(700)));
        assert!(p.except.contains("n1.x"));
        assert!(!p.recoverable);
        let mut rec = Push::new(Target::All, "e", None);
        rec.recoverable = true;
        let (_, env) = PushEnvelope::of(&rec, "n1", 5).remove(0);
        let back = Envelope::decode(&Envelope::new(Message::Push(env)).encode()).unwrap();
        let Message::Push(env) = back.m else {
            panic!("a push")
        };
        assert!(env.into_push(5).unwrap().recoverable, "recoverable travels");
    }

    #[test]
    fn a_client_events_sender_travels_and_an_envelope_without_one_reads_as_none() {
        let mut push = Push::new(Target::Room(RoomName::from("presence-a")), "client-x", None);
        push.sender = Some(Arc::from("ann"));
        let (_, env) = PushEnvelope::of(&push, "n1", 5).remove(0);
        let back = Envelope::decode(&Envelope::new(Message::Push(env)).encode()).unwrap();
        let Message::Push(env) = back.m else {
            panic!("not a push");
        };
        assert_eq!(env.into_push(5).unwrap().sender.as_deref(), Some("ann"));
        let old = rmp_serde::to_vec_named(&json!({"v": VERSION, "m": {"Push": {
            "id": "p", "origin": "n", "target": {"Room": "r"}, "event": "e", "data": null,
            "scope": null, "except": [], "ack_ms": null, "accepted_ms": 1
        }}}))
        .unwrap();
        let Message::Push(env) = Envelope::decode(&old).unwrap().m else {
            panic!("not a push");
        };
        assert_eq!(env.sender, None);
    }

    #[test]
    fn every_control_message_round_trips() {
        let request = Request {
            id: 7,
            from: "n2".into(),
        };
        for m in [
            Message::Delivered {
                push: "p".into(),
                node: "n".into(),
                sockets: 3,
                delivered: 2,
                failed: 1,
                unackable: 1,
            },
            Message::Acked {
                push: "p".into(),
                n: 4,
            },
            Message::Kick {
                request: request.clone(),
                sockets: vec!["n.a".into()],
            },
            Message::Join {
                request: request.clone(),
                room: "r".into(),
                sockets: vec![],
            },
            Message::Leave {
                request: request.clone(),
                room: "r".into(),
                sockets: vec!["n.b".into()],
            },
            Message::Done {
                request: 7,
                n: 1,
                refused: Vec::new(),
            },
            Message::Done {
                request: 8,
                n: 0,
                refused: vec!["n1.abc".into()],
            },
            Message::ReportOf {
                request,
                push: "n1.abc".into(),
            },
            Message::Report {
                request: 7,
                report: Some((
                    crate::delivery::State::Pending,
                    crate::delivery::Report {
                        sockets: 2,
                        delivered: 2,
                        ..Default::default()
                    },
                )),
            },
            Message::Presence(crate::presence::Diff {
                room: "presence-lobby".into(),
                joins: vec![crate::presence::Change {
                    meta: crate::presence::Meta::new(&SocketId::from("n.x"), Some("u"), 9),
                    edge: true,
                }],
                leaves: Vec::new(),
            }),
            Message::Events {
                node: "n1".into(),
                events: vec![r#"{"type":"joined"}"#.into(), "{}".into()],
            },
            Message::Watch {
                request: Request {
                    id: 8,
                    from: "n3".into(),
                },
            },
        ] {
            let e = Envelope::new(m);
            assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn a_delivered_report_without_the_unackable_count_reads_as_zero() {
        let old = rmp_serde::to_vec_named(&json!({"v": VERSION, "m": {"Delivered": {
            "push": "p", "node": "n", "sockets": 2, "delivered": 2, "failed": 0
        }}}))
        .unwrap();
        match Envelope::decode(&old).unwrap().m {
            Message::Delivered { unackable, .. } => assert_eq!(unackable, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_bytes_and_other_versions_are_refused_with_a_reason() {
        assert_eq!(
            Envelope::decode(b"\xc1garbage").unwrap_err(),
            DecodeError::Undecodable
        );
        assert_eq!(Envelope::decode(b"").unwrap_err(), DecodeError::Undecodable);
        let future = rmp_serde::to_vec_named(&json!({"v": 3, "m": {"Hologram": {}}})).unwrap();
        assert_eq!(
            Envelope::decode(&future).unwrap_err(),
            DecodeError::UnknownVersion(3)
        );
        let mut e = Envelope::new(Message::Done {
            request: 1,
            n: 1,
            refused: Vec::new(),
        });
        e.v = 9;
        assert_eq!(
            Envelope::decode(&e.encode()).unwrap_err().reason(),
            "unknown_version"
        );
    }
}
