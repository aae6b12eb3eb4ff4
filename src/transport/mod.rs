//! Transports shared by the frontends: the node's listener (long polls on a small
//! HTTP/1.1 path of its own, [`listener`] and [`http1`]; everything else through
//! hyper), WebSocket (one task per connection), the heartbeat arithmetic, and
//! forwarding a session's requests to the node that holds it ([`forward`], with the
//! session tokens that name their node, [`token`]), and the admission of new
//! connections (origin, client address, limits). Long-polling is session-shaped and differs per protocol
//! (Engine.IO's in `frontend::socketio::engine`, Phoenix's in `frontend::phoenix`),
//! but both drain the same [`crate::connection::Outbox`].
//!
//! A transport owns the small interface its users implement ([`websocket::Peer`]),
//! so it imports no frontend.

pub mod admission;
pub mod forward;
pub mod heartbeat;
pub mod http1;
pub mod listener;
pub mod token;
pub mod websocket;
