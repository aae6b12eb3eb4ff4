//! A push — target, event, data and options — as accepted from the HTTP API: a plain
//! value that the push service, the bus and the hub all carry, so it sits below them.
//!
//! Validation of what every protocol shares happens here, once per push: the target
//! is exactly one kind, the event is 1 to [`MAX_EVENT_LEN`] bytes, the options are
//! well-formed. What one protocol cannot carry (Socket.IO's reserved event names, its
//! `$binary` markers) is that frontend's codec's to refuse (`codec::PushCodec::check`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

pub use crate::id::Target;
use crate::id::{PushId, RoomName, SocketId, UserId};

/// Longest ack timeout accepted: past five minutes a caller should not hold a report
/// open, and the tracker must not keep per-socket state that long.
pub const MAX_ACK_TIMEOUT_MS: u64 = 300_000;
/// Longest event name, like Pusher's limit.
pub const MAX_EVENT_LEN: usize = 200;
/// The scope of a push that names none, and of connections of frontends without
/// namespaces.
pub const DEFAULT_SCOPE: &str = "/";

/// One validated push.
#[derive(Debug, Clone)]
pub struct Push {
    pub id: PushId,
    pub target: Target,
    pub event: String,
    /// The event's argument as the caller sent it; each frontend renders it in its
    /// own protocol (Socket.IO turns `{"$binary": …}` objects into attachments).
    pub data: Option<Value>,
    /// The namespace the caller named (the API's `namespace`), for frontends whose
    /// connections live in one (Socket.IO); `None` is [`DEFAULT_SCOPE`].
    pub scope: Option<Arc<str>>,
    pub except: HashSet<SocketId>,
    /// Ask every client to acknowledge within this time.
    pub ack: Option<Duration>,
    /// Answer the HTTP caller only when the report is final.
    pub wait: bool,
    pub accepted_at: Instant,
    /// For an event a client sent to the others (a Pusher client event): the member
    /// that sent it, which Pusher names as `user_id` on presence channels. `None` for
    /// every push from the API.
    pub sender: Option<Arc<str>>,
    /// Recorded for connection state recovery (see `recovery`): its id is its offset,
    /// which frontends that recover hand to the client with it.
    pub recoverable: bool,
}

/// Why a push request was refused (an HTTP 400 with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("the push must be a JSON object")]
    NotAnObject,
    #[error("missing \"to\": give exactly one of all, user, users, room, socket")]
    MissingTarget,
    #[error("\"to\" must name exactly one of all, user, users, room, socket")]
    AmbiguousTarget,
    #[error("unknown target {0:?}: give one of all, user, users, room, socket")]
    UnknownTarget(String),
    #[error("invalid target: {0}")]
    InvalidTarget(&'static str),
    #[error("missing \"event\"")]
    MissingEvent,
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("invalid field {field:?}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("unknown field {0:?}")]
    UnknownField(String),
}

fn field(field: &'static str, message: impl Into<String>) -> PushError {
    PushError::InvalidField {
        field,
        message: message.into(),
    }
}

impl Push {
    /// Validates one push as sent to `POST /v1/push`.
    pub fn from_json(value: Value) -> Result<Self, PushError> {
        let Value::Object(mut obj) = value else {
            return Err(PushError::NotAnObject);
        };
        let target = parse_target(obj.remove("to").ok_or(PushError::MissingTarget)?)?;
        let event = match obj.remove("event") {
            None | Some(Value::Null) => return Err(PushError::MissingEvent),
            Some(Value::String(e)) => e,
            Some(_) => return Err(PushError::InvalidEvent("must be a string".into())),
        };
        if event.is_empty() || event.len() > MAX_EVENT_LEN {
            return Err(PushError::InvalidEvent(format!(
                "must be 1 to {MAX_EVENT_LEN} bytes long"
            )));
        }
        let data = obj.remove("data");
        let scope = match obj.remove("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if n == DEFAULT_SCOPE => None,
            Some(Value::String(n)) if !n.is_empty() => Some(Arc::from(n)),
            Some(_) => return Err(field("namespace", "a non-empty string")),
        };
        let except = match obj.remove("except") {
            None | Some(Value::Null) => HashSet::new(),
            Some(Value::Array(ids)) => ids
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(SocketId::from(s)),
                    _ => Err(field("except", "a list of socket ids")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(field("except", "a list of socket ids")),
        };
        let ack = match obj.remove("ack") {
            None | Some(Value::Null) => None,
            Some(Value::Object(mut a)) => {
                let ms = a
                    .remove("timeout_ms")
                    .and_then(|v| v.as_u64())
                    .filter(|ms| (1..=MAX_ACK_TIMEOUT_MS).contains(ms))
                    .ok_or_else(|| {
                        field("ack", format!("timeout_ms from 1 to {MAX_ACK_TIMEOUT_MS}"))
                    })?;
                if let Some(k) = a.keys().next() {
                    return Err(field("ack", format!("unknown field {k:?}")));
                }
                Some(Duration::from_millis(ms))
            }
            Some(_) => return Err(field("ack", "an object {\"timeout_ms\": n}")),
        };
        let wait = match obj.remove("wait") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(field("wait", "true or false")),
        };
        if let Some(k) = obj.keys().next() {
            return Err(PushError::UnknownField(k.clone()));
        }
        Ok(Push {
            id: PushId::generate(),
            target,
            event,
            data,
            scope,
            except,
            ack,
            wait,
            accepted_at: Instant::now(),
            sender: None,
            recoverable: false,
        })
    }
}

impl Push {
    /// A push with no options, as tests and tools build one.
    pub fn new(target: Target, event: impl Into<String>, data: Option<Value>) -> Self {
        Push {
            id: PushId::generate(),
            target,
            event: event.into(),
            data,
            scope: None,
            except: HashSet::new(),
            ack: None,
            wait: false,
            accepted_at: Instant::now(),
            sender: None,
            recoverable: false,
        }
    }

    /// The namespace the push is for ([`DEFAULT_SCOPE`] when it named none).
    pub fn scope(&self) -> &str {
        self.scope.as_deref().unwrap_or(DEFAULT_SCOPE)
    }
}

fn parse_target(v: Value) -> Result<Target, PushError> {
    let Value::Object(obj) = v else {
        return Err(PushError::MissingTarget);
    };
    let mut entries = obj.into_iter();
    let Some((kind, value)) = entries.next() else {
        return Err(PushError::MissingTarget);
    };
    if entries.next().is_some() {
        return Err(PushError::AmbiguousTarget);
    }
    let name = |v: Value, what: &'static str| match v {
        Value::String(s) if !s.is_empty() => Ok(s),
        _ => Err(PushError::InvalidTarget(what)),
    };
    Ok(match kind.as_str() {
        "all" => match value {
            Value::Bool(true) => Target::All,
            _ => return Err(PushError::InvalidTarget("all must be true")),
        },
        "user" => Target::User(UserId::from(name(
            value,
            "user must be a non-empty string",
        )?)),
        "room" => Target::Room(RoomName::from(name(
            value,
            "room must be a non-empty string",
        )?)),
        "socket" => Target::Socket(SocketId::from(name(
            value,
            "socket must be a non-empty string",
        )?)),
        "users" => {
            let Value::Array(list) = value else {
                return Err(PushError::InvalidTarget("users must be a list of user ids"));
            };
            // Duplicates dropped in one pass (a set beside the list keeps the order).
            let mut users: Vec<UserId> = Vec::with_capacity(list.len());
            let mut seen: HashSet<UserId> = HashSet::with_capacity(list.len());
            for v in list {
                let u = UserId::from(name(v, "users must be a list of non-empty strings")?);
                if seen.insert(u.clone()) {
                    users.push(u);
                }
            }
            if users.is_empty() {
                return Err(PushError::InvalidTarget("users must not be empty"));
            }
            Target::Users(users)
        }
        other => return Err(PushError::UnknownTarget(other.to_owned())),
    })
}

/// A batch's pushes (1 to `max`), validated all before any is sent.
pub fn batch_from_json(value: Value, max: usize) -> Result<Vec<Push>, (Option<usize>, PushError)> {
    let mut obj: Map<String, Value> = match value {
        Value::Object(o) => o,
        _ => return Err((None, PushError::NotAnObject)),
    };
    let Some(Value::Array(list)) = obj.remove("pushes") else {
        return Err((None, field("pushes", "a list of pushes")));
    };
    if list.is_empty() || list.len() > max {
        return Err((None, field("pushes", format!("1 to {max} pushes"))));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| Push::from_json(v).map_err(|e| (Some(i), e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_push_is_read_with_every_option() {
        let p = Push::from_json(json!({
            "to": {"room": "r"}, "event": "e", "data": {"x": {"$binary": "AQID"}},
            "except": ["n.a"], "ack": {"timeout_ms": 500}, "wait": true, "namespace": "/admin"
        }))
        .unwrap();
        assert_eq!(p.target, Target::Room(RoomName::from("r")));
        assert_eq!(
            p.data,
            Some(json!({"x": {"$binary": "AQID"}})),
            "data as sent"
        );
        assert_eq!(p.scope(), "/admin");
        assert_eq!(p.ack, Some(Duration::from_millis(500)));
        assert!(p.wait && p.except.contains("n.a"));
    }

    #[test]
    fn every_target_kind_parses() {
        let t = |to| Push::from_json(json!({"to": to, "event": "e"})).map(|p| p.target);
        assert_eq!(t(json!({"all": true})), Ok(Target::All));
        assert_eq!(t(json!({"user": "u"})), Ok(Target::User("u".into())));
        assert_eq!(
            t(json!({"users": ["u", "v", "u"]})),
            Ok(Target::Users(vec!["u".into(), "v".into()]))
        );
        assert_eq!(
            t(json!({"socket": "n.x"})),
            Ok(Target::Socket("n.x".into()))
        );
    }

    #[test]
    fn bad_pushes_are_refused_with_a_reason() {
        let e = |v| Push::from_json(v).unwrap_err();
        assert_eq!(e(json!({"event": "e"})), PushError::MissingTarget);
        assert_eq!(
            e(json!({"to": {"group": "x"}, "event": "e"})),
            PushError::UnknownTarget("group".into())
        );
        assert_eq!(
            e(json!({"to": {"all": true, "room": "r"}, "event": "e"})),
            PushError::AmbiguousTarget
        );
        assert!(matches!(
            e(json!({"to": {"all": false}, "event": "e"})),
            PushError::InvalidTarget(_)
        ));
        assert_eq!(e(json!({"to": {"all": true}})), PushError::MissingEvent);
        assert!(matches!(
            e(json!({"to": {"all": true}, "event": ""})),
            PushError::InvalidEvent(_)
        ));
        assert!(matches!(
            e(json!({"to": {"all": true}, "event": "e", "ack": {"timeout_ms": 0}})),
            PushError::InvalidField { field: "ack", .. }
        ));
        assert!(matches!(
            e(json!({"to": {"all": true}, "event": "e", "namespace": 7})),
            PushError::InvalidField {
                field: "namespace",
                ..
            }
        ));
        assert_eq!(
            e(json!({"to": {"all": true}, "event": "e", "tarjet": 1})),
            PushError::UnknownField("tarjet".into())
        );
        assert_eq!(e(json!([1])), PushError::NotAnObject);
    }

    #[test]
    fn a_batch_names_the_index_of_its_bad_push() {
        let ok = json!({"to": {"all": true}, "event": "e"});
        let err = batch_from_json(json!({"pushes": [ok.clone(), ok.clone(), {"to": {}}]}), 10)
            .unwrap_err();
        assert_eq!(err.0, Some(2));
        assert!(batch_from_json(json!({"pushes": []}), 10).is_err());
        assert!(batch_from_json(json!({"pushes": [ok.clone(), ok]}), 1).is_err());
    }
}
