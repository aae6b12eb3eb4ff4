//! Transports shared by the frontends: WebSocket (one task per connection), the
//! heartbeat arithmetic, and forwarding a session's requests to the node that holds
//! it ([`forward`], with the session tokens that name their node, [`token`]). Long-polling is session-shaped and differs per protocol
//! (Engine.IO's in `frontend::socketio::engine`, Phoenix's in `frontend::phoenix`),
//! but both drain the same [`crate::connection::Outbox`].
//!
//! A transport owns the small interface its users implement ([`websocket::Peer`]),
//! so it imports no frontend.

pub mod forward;
pub mod heartbeat;
pub mod token;
pub mod websocket;
