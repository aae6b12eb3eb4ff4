//! Client protocols. Each frontend parses and encodes one protocol, runs its
//! handshake, heartbeats and acks, and maps its concepts onto connection, user and
//! room. Socket.IO v4 is the first.

pub mod socketio;
