//! pushgate: a push gateway. Application backends push messages over HTTP to connected
//! clients, addressed by user, room, socket or all; clients connect with Socket.IO v4.
//!
//! Map of the modules (see ARCHITECTURE.md for the invariants between them):
//!
//! - [`server`] — one node's life: build, serve, shut down in order.
//! - [`config`] — flags, environment and TOML file into a [`config::Config`].
//! - [`api`] — the HTTP API, health and metrics endpoints.
//! - [`push`] — a validated push, the value every layer carries.
//! - [`push_service`] — checks a push against every frontend and hands it to the bus.
//! - [`codec`] — the frontend seam: how each frontend encodes a push.
//! - [`delivery`] — the delivery tracker: reports and acks.
//! - [`report`] — a push's report, the vocabulary below the tracker and the event stream.
//! - [`events`] — the event stream (`GET /v1/events`): connects, disconnects, joins,
//!   pushes and reports, for the dev console and apps.
//! - [`console`] — the dev console's static pages (`/console`).
//! - [`bus`] — routes pushes to the nodes that hold their targets (local or Redis).
//! - [`registry`] — the cluster's nodes, sockets, users, rooms and presence in Redis.
//! - [`presence`] — who is in `presence-*` rooms, by user, whatever the protocol.
//! - [`hub`] — this node's connections by socket, user and room; the fan-out.
//! - [`connection`] — one connection's bounded outbound queue.
//! - [`transport`] — WebSocket and heartbeat, shared by the frontends.
//! - [`frontend`] — client protocols (Socket.IO: codecs, Engine.IO sessions, handler).
//! - [`auth`] — connection tokens and API keys.
//! - [`limits`] — what one node admits: connections, rates, sizes, pending acks.
//! - [`metrics`] — every Prometheus metric.
//! - [`id`] — the vocabulary's identifiers.

pub mod api;
pub mod auth;
pub mod bus;
pub mod codec;
pub mod config;
pub mod connection;
pub mod console;
pub mod delivery;
pub mod events;
pub mod frontend;
pub mod hub;
pub mod id;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod push_service;
pub mod recovery;
pub mod registry;
pub mod report;
pub mod server;
pub mod transport;
