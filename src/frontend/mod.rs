//! Client protocols. Each frontend parses and encodes one protocol, runs its
//! handshake, heartbeats and acks, maps its concepts onto connection, user and room,
//! and registers a push codec with the core (`codec`): Socket.IO v4, Phoenix
//! Channels v2 and Pusher Channels 7.

pub mod phoenix;
pub mod pusher;
pub mod socketio;

/// A JSON syntax error in a client frame, kept as the source of a codec's decode error.
///
/// `serde_json::Error` has no `PartialEq`; this compares the error's category and position,
/// so that the codecs' error enums can be compared in tests.
#[derive(Debug)]
pub struct JsonError(pub serde_json::Error);

impl PartialEq for JsonError {
    fn eq(&self, other: &Self) -> bool {
        self.0.classify() == other.0.classify()
            && self.0.line() == other.0.line()
            && self.0.column() == other.0.column()
    }
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JsonError {}
