//! The Socket.IO v4 frontend: Socket.IO v5 packets over Engine.IO v4 sessions.
//!
//! - [`engineio`] and [`packet`] are the pure codecs (no I/O; fuzzed under `fuzz/`).
//! - [`engine`] runs Engine.IO sessions over long-polling and WebSocket.
//! - [`SocketIo`] is the Engine.IO handler that speaks Socket.IO: namespaces, CONNECT
//!   with auth, events, acks in both directions, binary attachments. What a connected
//!   socket may do is decided by a [`Behaviour`]: the gateway's ([`Gateway`]) or, for
//!   the protocol conformance suites, the reference server's (see `examples/`).
//!
//! One Engine.IO session may carry several namespace sockets; each is one hub
//! connection with its own socket id, and they share the session's outbox.

pub mod engine;
pub mod engineio;
mod gateway;
pub mod packet;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

pub use engine::{Engine, EngineConfig, Session};
pub use gateway::Gateway;

use crate::auth::Identity;
use crate::codec::PushCodec;
use crate::connection::{CloseReason, Frame};
use crate::delivery::Tracker;
use crate::hub::{Hub, Member};
use crate::id::Frontend;
use crate::id::{NodeId, RoomName, SocketId};
use crate::limits::{Limits, UserSlot};
use crate::metrics::Metrics;
use crate::push::Push;
use crate::recovery::{Connect, Request, Restored, Saved};
use engine::{Handler, Message};
use packet::{Assembled, Assembler, PacketKind};

/// How Socket.IO carries pushes: one EVENT (or BINARY_EVENT) packet in the push's
/// namespace, with the push's node-wide ack id when ack-tracked, and `{"$binary": …}`
/// values of the data sent as binary attachments.
pub struct SocketIoCodec;

impl PushCodec for SocketIoCodec {
    fn frontend(&self) -> Frontend {
        Frontend::SocketIo
    }

    fn check(&self, push: &Push) -> Result<(), String> {
        if packet::RESERVED_EVENTS.contains(&push.event.as_str()) {
            return Err(format!(
                "invalid event: {:?} is reserved by Socket.IO",
                push.event
            ));
        }
        let nsp = push.scope();
        if !nsp.starts_with('/') || nsp.contains(',') {
            return Err(
                "invalid field \"namespace\": a Socket.IO namespace starts with '/' and has no ','"
                    .into(),
            );
        }
        if let Some(data) = &push.data {
            packet::extract_binary(&mut data.clone())
                .map_err(|e| format!("invalid field \"data\": {e}"))?;
        }
        Ok(())
    }

    fn encode(&self, push: &Push, ack_id: Option<u64>) -> Vec<Frame> {
        let mut data = push.data.clone();
        // `check` refused bad markers, so this cannot fail for an accepted push; a
        // push from a node that did not check is sent without attachments.
        let attachments = data
            .as_mut()
            .map(|d| packet::extract_binary(d).unwrap_or_default())
            .unwrap_or_default();
        let mut text = String::with_capacity(push.event.len() + 32);
        if push.recoverable && ack_id.is_none() {
            packet::encode_recoverable_event(
                &mut text,
                push.scope(),
                attachments.len(),
                &push.event,
                data.as_ref(),
                push.id.as_str(),
            );
        } else {
            packet::encode_event(
                &mut text,
                push.scope(),
                ack_id,
                attachments.len(),
                &push.event,
                data.as_ref(),
            );
        }
        let mut frames = Vec::with_capacity(1 + attachments.len());
        frames.push(Frame::text(text));
        frames.extend(attachments.into_iter().map(Frame::Binary));
        frames
    }
}

/// A refused CONNECT: the message the client sees as `connect_error`, its `data`, and
/// the `reason` label counted in `pushgate_connect_errors_total`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub message: String,
    pub data: Option<Value>,
    pub reason: &'static str,
}

/// One event a client emitted.
#[derive(Debug)]
pub struct Event<'a> {
    pub name: &'a str,
    /// The arguments after the event name (binary placeholders left in place).
    pub args: &'a [Value],
    pub attachments: &'a [Bytes],
    /// The client's ack id, when it passed a callback.
    pub ack: Option<u64>,
}

/// What a connected socket may do, decided per deployment.
pub trait Behaviour: Send + Sync + 'static {
    /// Accepts or refuses a CONNECT to `nsp`. `token` is `auth.token`, else `?token=`.
    fn connect(
        &self,
        nsp: &str,
        auth: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Identity, Refusal>;
    /// The socket is connected (its CONNECT answer is queued).
    fn connected(&self, _socket: &Socket<'_>, _auth: Option<&Value>) {}
    /// The client emitted an event.
    fn event(&self, socket: &Socket<'_>, event: Event<'_>);
}

/// A connected namespace socket, as a [`Behaviour`] sees it.
pub struct Socket<'a> {
    pub id: &'a SocketId,
    pub nsp: &'a str,
    pub identity: &'a Identity,
    outbox: &'a crate::connection::Outbox,
    hub: &'a Hub,
}

impl Socket<'_> {
    /// Emits `event` with `args` (placeholders for `attachments` left in place).
    pub fn emit(&self, event: &str, args: &[Value], attachments: &[Bytes]) {
        let mut data = Vec::with_capacity(args.len() + 1);
        data.push(Value::String(event.to_owned()));
        data.extend_from_slice(args);
        let kind = if attachments.is_empty() {
            PacketKind::Event
        } else {
            PacketKind::BinaryEvent
        };
        self.send(kind, None, Value::Array(data), attachments);
    }

    /// Answers the client's ack `id` with `args` (a JSON array).
    pub fn ack(&self, id: u64, args: Value, attachments: &[Bytes]) {
        let kind = if attachments.is_empty() {
            PacketKind::Ack
        } else {
            PacketKind::BinaryAck
        };
        self.send(kind, Some(id), args, attachments);
    }

    fn send(&self, kind: PacketKind, id: Option<u64>, data: Value, attachments: &[Bytes]) {
        let text = packet::encode(&packet::Packet {
            kind,
            nsp: self.nsp.to_owned(),
            id,
            attachments: attachments.len(),
            data: Some(data),
        });
        let mut frames = Vec::with_capacity(1 + attachments.len());
        frames.push(Frame::text(text));
        frames.extend(attachments.iter().cloned().map(Frame::Binary));
        self.outbox.push(&frames, Some(Instant::now()));
    }

    /// Joins a room; false when already a member or in as many rooms as allowed.
    pub fn join(&self, room: &RoomName) -> bool {
        self.hub.join(self.id, room)
    }

    /// Joins a room, saying why not when it did not.
    pub fn try_join(&self, room: &RoomName) -> crate::hub::Join {
        self.hub.try_join(self.id, room)
    }

    /// Leaves a room; false when not a member.
    pub fn leave(&self, room: &RoomName) -> bool {
        self.hub.leave(self.id, room)
    }
}

/// The per-session state of the Socket.IO layer.
pub struct State {
    assembler: Assembler,
    sockets: Vec<NamespaceSocket>,
    /// `?token=` from the handshake URL, used when CONNECT carries no `auth.token`.
    query_token: Option<Box<str>>,
}

struct NamespaceSocket {
    nsp: Arc<str>,
    id: SocketId,
    identity: Identity,
    /// Its share of its user's connections (given back when it is dropped).
    _user: Option<UserSlot>,
}

/// The Engine.IO handler that speaks Socket.IO.
pub struct SocketIo<B: Behaviour> {
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
    node: NodeId,
    namespaces: Vec<String>,
    behaviour: B,
    metrics: Arc<Metrics>,
    /// The per-user connection limit; `None` for none.
    limits: Option<Arc<Limits>>,
    /// Connection state recovery, when on.
    recovery: Option<Recovery>,
}

pub use crate::recovery::Recovery;

/// The recovery a CONNECT asks for: `auth.pid` and `auth.offset`, as
/// socket.io-client sends them back.
fn recovery_request(auth: Option<&Value>, identity: &Identity, nsp: &str) -> Option<Request> {
    let auth = auth?;
    let pid = auth.get("pid")?.as_str()?;
    let offset = auth.get("offset")?.as_str()?;
    if pid.len() > 512 || offset.len() > 512 {
        return None;
    }
    Some(Request {
        pid: pid.to_owned(),
        offset: offset.to_owned(),
        user: identity.user.clone(),
        namespace: Some(nsp.to_owned()),
    })
}

impl<B: Behaviour> SocketIo<B> {
    pub fn new(
        hub: Arc<Hub>,
        tracker: Arc<Tracker>,
        node: NodeId,
        namespaces: Vec<String>,
        behaviour: B,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            hub,
            tracker,
            node,
            namespaces,
            behaviour,
            metrics,
            limits: None,
            recovery: None,
        }
    }

    /// The same handler, with connection state recovery.
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// The same handler, counting each socket against its user's connection limit.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = Some(limits);
        self
    }

    fn refuse(&self, session: &Session<Self>, nsp: &str, refusal: Refusal) {
        self.metrics
            .connect_errors
            .with_label_values(&[Frontend::SocketIo.as_str(), refusal.reason])
            .inc();
        self.connect_error(session, nsp, refusal);
    }

    /// Sends CONNECT_ERROR (the refusal is counted already).
    fn connect_error(&self, session: &Session<Self>, nsp: &str, refusal: Refusal) {
        tracing::debug!(nsp, reason = refusal.reason, "socket.io connect refused");
        let mut text = String::new();
        packet::encode_connect_error(&mut text, nsp, &refusal.message, refusal.data.as_ref());
        session.outbox().push_control(Frame::text(text));
    }

    fn connect(
        &self,
        session: &Arc<Session<Self>>,
        state: &mut State,
        nsp: &str,
        auth: Option<&Value>,
    ) {
        if !self.namespaces.iter().any(|n| n == nsp) {
            return self.refuse(
                session,
                nsp,
                Refusal {
                    message: "Invalid namespace".into(),
                    data: None,
                    reason: "invalid_namespace",
                },
            );
        }
        if state.sockets.iter().any(|s| &*s.nsp == nsp) {
            return self.refuse(
                session,
                nsp,
                Refusal {
                    message: "already connected to this namespace".into(),
                    data: None,
                    reason: "duplicate",
                },
            );
        }
        let token = auth
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
            .or(state.query_token.as_deref());
        let identity = match self.behaviour.connect(nsp, auth, token) {
            Ok(identity) => identity,
            Err(refusal) => return self.refuse(session, nsp, refusal),
        };
        let user_slot = match (&self.limits, &identity.user) {
            (Some(limits), Some(user)) => match limits.user(user, Frontend::SocketIo) {
                Ok(slot) => Some(slot),
                Err(refused) => {
                    // Counted by the limits; socket.io-client does not reconnect after
                    // a CONNECT_ERROR, so the user sees this message once.
                    let refusal = Refusal {
                        message: refused.to_string(),
                        data: Some(serde_json::json!({"code": refused.limit.as_str()})),
                        reason: refused.limit.as_str(),
                    };
                    return self.connect_error(session, nsp, refusal);
                }
            },
            _ => None,
        };
        if let Some(recovery) = &self.recovery {
            if let Some(request) = recovery_request(auth, &identity, nsp) {
                let session = session.clone();
                let nsp: Arc<str> = Arc::from(nsp);
                let auth = auth.cloned();
                let connect: Connect = Box::new(move |restored| {
                    let s = session.clone();
                    session
                        .with_state(|state| {
                            s.handler().finish_connect(
                                &s,
                                state,
                                nsp,
                                identity,
                                user_slot,
                                auth.as_ref(),
                                Some(restored),
                            )
                        })
                        .flatten()
                });
                // Off this session's state lock: the store calls `connect`, which
                // takes it.
                let store = recovery.store.clone();
                tokio::spawn(async move { store.restore(request, connect).await });
                return;
            }
        }
        self.finish_connect(
            session,
            state,
            Arc::from(nsp),
            identity,
            user_slot,
            auth,
            None,
        );
    }

    /// Registers a connected socket and answers its CONNECT. `recovery`: the outcome
    /// of the recovery it asked for, if it asked. Returns its socket id, or `None`
    /// when the namespace got connected meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn finish_connect(
        &self,
        session: &Arc<Session<Self>>,
        state: &mut State,
        nsp: Arc<str>,
        mut identity: Identity,
        user_slot: Option<UserSlot>,
        auth: Option<&Value>,
        recovery: Option<Option<Restored>>,
    ) -> Option<SocketId> {
        if state.sockets.iter().any(|s| s.nsp == nsp) {
            return None;
        }
        let id = SocketId::generate(&self.node);
        let mut text = String::new();
        let asked = recovery.is_some();
        let restored = recovery.flatten();
        match (&self.recovery, &restored) {
            (Some(r), Some(restored)) => {
                r.pids.restored(&id, &restored.pid);
                packet::encode_connect_with_pid(&mut text, &nsp, id.as_str(), &restored.pid);
            }
            (Some(r), None) => {
                packet::encode_connect_with_pid(&mut text, &nsp, id.as_str(), &r.pids.of(&id))
            }
            (None, _) => packet::encode_connect(&mut text, &nsp, id.as_str()),
        }
        session.outbox().push_control(Frame::text(text));
        let mut rooms = std::mem::take(&mut identity.rooms);
        if let Some(r) = &restored {
            for room in &r.saved.rooms {
                if !rooms.contains(room) {
                    rooms.push(room.clone());
                }
            }
        }
        let connected_at = crate::id::now_ms();
        self.hub.register(
            id.clone(),
            Member {
                connection: session.clone(),
                frontend: Frontend::SocketIo,
                scope: Some(nsp.clone()),
                direct: true,
                user: identity.user.clone(),
                rooms,
                connected_at,
                held: restored.is_some(),
            },
        );
        if let Some(r) = restored {
            self.metrics
                .recovery
                .with_label_values(&["recovered"])
                .inc();
            tracing::debug!(socket = %id, lost = %r.saved.sid, missed = r.missed.len(), "socket.io session recovered");
            if !r.held {
                if let Some(n) = self.hub.release(&id, &r.saved.sid, &r.missed) {
                    self.metrics.recovery_replayed.inc_by(n as u64);
                }
            }
        } else if asked {
            self.metrics
                .recovery
                .with_label_values(&["not_found"])
                .inc();
        }
        session.set_attached(true);
        tracing::debug!(socket = %id, user = ?identity.user, "socket.io socket connected");
        let socket = Socket {
            id: &id,
            nsp: &nsp,
            identity: &identity,
            outbox: session.outbox(),
            hub: &self.hub,
        };
        self.behaviour.connected(&socket, auth);
        // Most sessions hold one namespace: grow by one, not to Vec's default of four.
        state.sockets.reserve_exact(1);
        state.sockets.push(NamespaceSocket {
            nsp,
            id: id.clone(),
            identity,
            _user: user_slot,
        });
        Some(id)
    }

    /// A socket of this session is gone: keep its session when it may come back.
    fn gone(&self, socket: &SocketId, nsp: &str, member: Option<Member>, keep: bool) {
        let Some(recovery) = &self.recovery else {
            return;
        };
        if let (true, Some(m)) = (keep, member) {
            recovery.store.lost(
                &recovery.pids.pid_of(socket),
                Saved {
                    sid: socket.clone(),
                    user: m.user,
                    namespace: Some(nsp.to_owned()),
                    rooms: m.rooms,
                },
            );
        }
        recovery.pids.forget(socket);
    }

    fn packet(
        &self,
        session: &Arc<Session<Self>>,
        state: &mut State,
        packet: packet::Packet,
        attachments: Vec<Bytes>,
    ) -> Result<(), CloseReason> {
        match packet.kind {
            PacketKind::Connect => {
                self.connect(session, state, &packet.nsp, packet.data.as_ref());
                Ok(())
            }
            PacketKind::Disconnect => {
                if let Some(pos) = state.sockets.iter().position(|s| *s.nsp == packet.nsp) {
                    let s = state.sockets.swap_remove(pos);
                    let member = self.hub.unregister(&s.id);
                    self.gone(&s.id, &s.nsp, member, false);
                    tracing::debug!(socket = %s.id, "socket.io socket disconnected by client");
                }
                Ok(())
            }
            PacketKind::Event | PacketKind::BinaryEvent => {
                // Events for a namespace the session is not connected to are ignored,
                // as the reference server does.
                let Some(s) = state.sockets.iter().find(|s| *s.nsp == packet.nsp) else {
                    return Ok(());
                };
                let Some(Value::Array(items)) = &packet.data else {
                    return Err(CloseReason::ProtocolError);
                };
                let name = match items.first() {
                    Some(Value::String(name)) => name.as_str(),
                    // Numeric event names are valid on the wire; none is meaningful here.
                    Some(Value::Number(_)) => "",
                    _ => return Err(CloseReason::ProtocolError),
                };
                let socket = Socket {
                    id: &s.id,
                    nsp: &s.nsp,
                    identity: &s.identity,
                    outbox: session.outbox(),
                    hub: &self.hub,
                };
                self.behaviour.event(
                    &socket,
                    Event {
                        name,
                        args: &items[1..],
                        attachments: &attachments,
                        ack: packet.id,
                    },
                );
                Ok(())
            }
            PacketKind::Ack | PacketKind::BinaryAck => {
                self.metrics.client_events.with_label_values(&["ack"]).inc();
                if let (Some(id), Some(s)) = (
                    packet.id,
                    state.sockets.iter().find(|s| *s.nsp == packet.nsp),
                ) {
                    self.tracker.ack(id, &s.id);
                }
                Ok(())
            }
            PacketKind::ConnectError => Err(CloseReason::ProtocolError),
        }
    }
}

impl<B: Behaviour> Handler for SocketIo<B> {
    type State = State;

    fn open(&self, _session: &Arc<Session<Self>>, query: &engineio::Query) -> State {
        State {
            assembler: Assembler::default(),
            sockets: Vec::new(),
            query_token: query.token.as_deref().map(Box::from),
        }
    }

    fn message(
        &self,
        session: &Arc<Session<Self>>,
        state: &mut State,
        message: Message<'_>,
    ) -> Result<(), CloseReason> {
        let assembled = match message {
            Message::Text(text) => state.assembler.push_text(text),
            Message::Binary(bytes) => state.assembler.push_binary(bytes),
        };
        match assembled {
            Ok(Assembled::Complete(packet, attachments)) => {
                self.packet(session, state, packet, attachments)
            }
            Ok(Assembled::NeedMore) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "socket.io packet refused");
                Err(CloseReason::ProtocolError)
            }
        }
    }

    fn close(&self, _session: &Arc<Session<Self>>, state: State, reason: CloseReason) {
        let keep = self.recovery.is_some() && crate::recovery::may_come_back(reason);
        for s in state.sockets {
            let member = if keep {
                self.hub.unregister_keeping(&s.id)
            } else {
                self.hub.unregister(&s.id)
            };
            self.gone(&s.id, &s.nsp, member, keep);
            tracing::debug!(socket = %s.id, reason = reason.as_str(), "socket.io socket closed");
        }
    }

    fn disconnect(&self, session: &Session<Self>, state: &mut State, socket: &SocketId) {
        if let Some(pos) = state.sockets.iter().position(|s| &s.id == socket) {
            let s = state.sockets.swap_remove(pos);
            let member = self.hub.unregister_because(&s.id, CloseReason::Kicked);
            self.gone(&s.id, &s.nsp, member, false);
            let mut text = String::new();
            packet::encode_disconnect(&mut text, &s.nsp);
            session.outbox().push_control(Frame::text(text));
            tracing::debug!(socket = %s.id, "socket.io socket disconnected by the server");
        }
    }

    /// The registry keeps each socket's transport: tell it about the new one.
    fn upgraded(&self, _session: &Session<Self>, state: &mut State) {
        for s in &state.sockets {
            self.hub.transport_changed(&s.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Target;
    use serde_json::json;

    fn push(v: Value) -> Push {
        Push::from_json(v).unwrap()
    }

    #[test]
    fn reserved_events_bad_binary_and_bad_namespaces_are_refused() {
        let c = SocketIoCodec;
        let e = |v| c.check(&push(v)).unwrap_err();
        assert!(e(json!({"to": {"all": true}, "event": "connect"})).contains("reserved"));
        assert!(
            e(json!({"to": {"all": true}, "event": "e", "data": {"$binary": "%%"}}))
                .contains("data")
        );
        assert!(
            e(json!({"to": {"all": true}, "event": "e", "namespace": "admin"}))
                .contains("namespace")
        );
        assert!(e(json!({"to": {"all": true}, "event": "e",
            "data": [{"$binary": "AQID"}, {"_placeholder": true, "num": 0}]}))
        .contains("_placeholder"));
        assert!(c
            .check(&push(
                json!({"to": {"all": true}, "event": "e", "namespace": "/a"})
            ))
            .is_ok());
    }

    #[test]
    fn binary_markers_become_attachments_in_the_push_namespace() {
        let p = push(json!({"to": {"all": true}, "event": "e",
            "data": {"x": {"$binary": "AQID"}}, "namespace": "/admin"}));
        let frames = SocketIoCodec.encode(&p, Some(7));
        assert_eq!(
            frames,
            vec![
                Frame::text(r#"451-/admin,7["e",{"x":{"_placeholder":true,"num":0}}]"#),
                Frame::Binary(Bytes::from_static(&[1, 2, 3])),
            ]
        );
        let plain = SocketIoCodec.encode(&Push::new(Target::All, "e", None), None);
        assert_eq!(plain, vec![Frame::text(r#"42["e"]"#)]);
        // A recorded push carries its id as the recovery offset, unless acked.
        let mut rec = Push::new(Target::All, "e", Some(json!(1)));
        rec.id = crate::id::PushId::from("n1.f00");
        rec.recoverable = true;
        assert_eq!(
            SocketIoCodec.encode(&rec, None),
            vec![Frame::text(r#"42["e",1,"n1.f00"]"#)]
        );
        assert_eq!(
            SocketIoCodec.encode(&rec, Some(4)),
            vec![Frame::text(r#"424["e",1]"#)]
        );
    }
}
