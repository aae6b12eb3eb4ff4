//! Client protocols. Each frontend parses and encodes one protocol, runs its
//! handshake, heartbeats and acks, maps its concepts onto connection, user and room,
//! and registers a push codec with the core (`codec`): Socket.IO v4 and Phoenix
//! Channels v2.

pub mod phoenix;
pub mod socketio;
