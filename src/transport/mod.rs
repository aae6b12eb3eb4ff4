//! Transports shared by the frontends: WebSocket (one task per connection), the
//! heartbeat arithmetic, and the admission of new connections (origin, client
//! address, limits). Long-polling is session-shaped and differs per protocol
//! (Engine.IO's in `frontend::socketio::engine`, Phoenix's in `frontend::phoenix`),
//! but both drain the same [`crate::connection::Outbox`].
//!
//! A transport owns the small interface its users implement ([`websocket::Peer`]),
//! so it imports no frontend.

pub mod admission;
pub mod heartbeat;
pub mod websocket;
