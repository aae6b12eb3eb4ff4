//! The gateway's [`Behaviour`]: connections authenticate with a JWT, and a client may
//! join or leave rooms itself through `pushgate:join` / `pushgate:leave` where its
//! token allows it. Every other client event is answered as unknown.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Behaviour, Event, Refusal, Socket};
use crate::auth::{Authenticator, Identity};
use crate::hub::Join;
use crate::id::RoomName;
use crate::limits::Limit;
use crate::metrics::Metrics;

/// Event a client emits to join a room: `emit("pushgate:join", room, callback)`.
pub const JOIN_EVENT: &str = "pushgate:join";
/// Event a client emits to leave a room: `emit("pushgate:leave", room, callback)`.
pub const LEAVE_EVENT: &str = "pushgate:leave";
/// Longest room name a client may ask for.
const MAX_ROOM_LEN: usize = 200;

pub struct Gateway {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { auth, metrics }
    }

    fn room_op(&self, socket: &Socket<'_>, event: &Event<'_>, join: bool) -> Value {
        let op = if join { "join" } else { "leave" };
        self.metrics.client_events.with_label_values(&[op]).inc();
        let room = match (event.args.first(), event.attachments.is_empty()) {
            (Some(Value::String(r)), true) if !r.is_empty() && r.len() <= MAX_ROOM_LEN => r,
            _ => {
                self.metrics
                    .client_joins
                    .with_label_values(&[op, "refused"])
                    .inc();
                return error(
                    "bad_request",
                    &format!("{op} takes a room name (1 to {MAX_ROOM_LEN} bytes) and a callback"),
                );
            }
        };
        if join && !socket.identity.may_join(room) {
            self.metrics
                .client_joins
                .with_label_values(&[op, "refused"])
                .inc();
            tracing::debug!(socket = %socket.id, room, "client join refused");
            return error("forbidden", &format!("token does not allow joining {room}"));
        }
        let room_name = RoomName::from(room.as_str());
        if join {
            if let Join::Full { max } = socket.try_join(&room_name) {
                self.metrics
                    .client_joins
                    .with_label_values(&[op, "refused"])
                    .inc();
                tracing::debug!(socket = %socket.id, room, "client join refused: room limit");
                return error(
                    Limit::Rooms.as_str(),
                    &format!("at most {max} rooms per connection"),
                );
            }
        } else {
            socket.leave(&room_name);
        }
        self.metrics
            .client_joins
            .with_label_values(&[op, "ok"])
            .inc();
        tracing::debug!(socket = %socket.id, room, op, "client room change");
        json!({"ok": true, "room": room})
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

impl Behaviour for Gateway {
    fn connect(
        &self,
        _nsp: &str,
        _auth: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Identity, Refusal> {
        self.auth.authenticate(token).map_err(|e| Refusal {
            message: e.to_string(),
            data: Some(json!({"code": e.code()})),
            reason: e.code(),
        })
    }

    fn event(&self, socket: &Socket<'_>, event: Event<'_>) {
        let answer = match event.name {
            JOIN_EVENT => self.room_op(socket, &event, true),
            LEAVE_EVENT => self.room_op(socket, &event, false),
            other => {
                self.metrics
                    .client_events
                    .with_label_values(&["unknown"])
                    .inc();
                error(
                    "unknown_event",
                    &format!(
                        "the gateway does not handle {other:?}; use {JOIN_EVENT} or {LEAVE_EVENT}"
                    ),
                )
            }
        };
        if let Some(id) = event.ack {
            socket.ack(id, Value::Array(vec![answer]), &[]);
        }
    }
}
