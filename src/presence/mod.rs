//! Presence: who is in a room, by user, cluster-wide — one core for every protocol.
//!
//! A room whose name starts with [`PREFIX`] (`presence-`) tracks its members. Each
//! connection in such a room is one [`Meta`] (phoenix.js's word): its member key (the
//! user id, or for a connection without a user the meta's own ref), a ref unique to
//! the connection and stable on every node, and when it entered. A member is one user
//! however many connections or nodes it has; a [`Change`] says whether it was the
//! user's first connection in the room (a join edge) or its last (a leave edge), which
//! is what protocols that count members and not connections (Pusher) announce.
//!
//! Changes travel as a [`Diff`] per room, which the hub hands to the room's local
//! members through each frontend's codec (`codec::PushCodec::encode_presence`): the
//! Phoenix frontend renders `presence_diff`, a frontend without presence renders
//! nothing. The state a joining client first receives comes from [`Presences::state`].
//!
//! Two stores keep the state: [`local::LocalPresence`] in memory on a single node, and
//! the cluster registry in Redis (`registry`), where the bus publishes each diff on the
//! room's channel so every node with members renders it.
//!
//! A connection usually counts for its user (the JWT `sub`), and its meta says nothing
//! more. A protocol in which a connection names the member itself, per room, and
//! describes it to the others (Pusher's `channel_data`: `user_id` and `user_info`)
//! enters the room with a [`Profile`]; the meta then carries the profile's key and
//! `info`. Only such connections pay for it: the hub keeps profiles beside its members,
//! not in them.
//!
//! Both stores also tell a [`Watcher`] (the Pusher frontend's webhooks) what they
//! decided exactly once, cluster-wide: a watched room's first connection arriving and
//! last one leaving (occupancy), and every presence change with its edge.

pub mod local;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::id::{RoomName, SocketId};

/// Rooms whose names start with this track their members.
pub const PREFIX: &str = "presence-";

/// Whether `room` tracks presence.
pub fn is_presence_room(room: &str) -> bool {
    room.starts_with(PREFIX)
}

/// One connection's presence in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The member this connection counts for: its user id, or its own ref when it has
    /// no user (each anonymous connection is a member of its own).
    pub key: String,
    /// Unique to the connection and the same on every node (see [`meta_ref`]); never
    /// the socket id, which other members of the room have no business knowing.
    pub r#ref: String,
    /// When the connection entered the room, ms since the epoch.
    pub online_at: u64,
    /// What the member tells the others about itself, as compact JSON text (Pusher's
    /// `user_info`); absent for connections that entered without a [`Profile`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

impl Meta {
    /// The meta of `socket` (of `user`, if any) entering a room at `online_at`.
    pub fn new(socket: &SocketId, user: Option<&str>, online_at: u64) -> Self {
        let r#ref = meta_ref(socket);
        Self {
            key: user.map_or_else(|| r#ref.clone(), str::to_owned),
            r#ref,
            online_at,
            info: None,
        }
    }

    /// The meta of `socket` entering a room at `online_at`: as [`Meta::new`], or, with
    /// a profile, as the member the profile names, with its info.
    pub fn of(
        socket: &SocketId,
        user: Option<&str>,
        profile: Option<&Profile>,
        online_at: u64,
    ) -> Self {
        match profile {
            None => Self::new(socket, user, online_at),
            Some(p) => Self {
                key: p.key.clone(),
                r#ref: meta_ref(socket),
                online_at,
                info: p.info.clone(),
            },
        }
    }
}

/// How a connection presents itself in one presence room when its protocol names the
/// member per room (Pusher's `channel_data`), instead of counting for its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The member it counts for (a user id in pushgate's user namespace, so a Pusher
    /// member `alice` and a Phoenix connection of user `alice` are one member).
    pub key: String,
    /// Compact JSON text shown to the other members.
    pub info: Option<String>,
}

/// One connection entering or leaving a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub meta: Meta,
    /// For a join: the member's first connection in the room, cluster-wide. For a
    /// leave: its last. Members, not connections, are what some protocols announce.
    pub edge: bool,
}

/// The changes of one room, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub room: String,
    pub joins: Vec<Change>,
    pub leaves: Vec<Change>,
}

impl Diff {
    pub fn new(room: &RoomName) -> Self {
        Self {
            room: room.to_string(),
            joins: Vec::new(),
            leaves: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// A member and how many connections it has in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user: String,
    pub connections: usize,
}

/// Groups metas by member, in key order.
pub fn members(metas: &[Meta]) -> Vec<Member> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in metas {
        *counts.entry(&m.key).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(user, connections)| Member {
            user: user.to_owned(),
            connections,
        })
        .collect()
}

/// A stable, non-reversible ref for a socket's metas: FNV-1a (64 bits) of the socket
/// id in hex. Every node computes the same ref for the same socket, so a leave sent by
/// one node matches the join another node announced; and it does not reveal the
/// socket id, which lets an API caller address the connection.
pub fn meta_ref(socket: &SocketId) -> String {
    format!("{:016x}", meta_ref_hash(socket))
}

/// The number behind [`meta_ref`], compared without allocating (the hub matches it
/// against each member of a room when a frontend does not tell a connection of its
/// own join).
pub fn meta_ref_hash(socket: &SocketId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in socket.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Told what the presence stores decided exactly once, cluster-wide, about the rooms
/// it watches: on a single node by [`local::LocalPresence`], in a cluster by the
/// registry write whose atomic result showed the change (so one node tells, however
/// many nodes have members). Calls are made from the stores' tasks and locks: an
/// implementation only queues.
pub trait Watcher: Send + Sync {
    /// Whether `room` is watched. Only watched rooms pay for occupancy (a script per
    /// join and leave in a cluster, a counter on a single node).
    fn watches(&self, room: &str) -> bool;
    /// `room` got its first connection (`true`) or lost its last one (`false`).
    fn occupancy(&self, room: &RoomName, occupied: bool);
    /// A connection entered (`join`) or left presence room `room`; `change.edge` marks
    /// its member's first or last connection there.
    fn presence(&self, room: &RoomName, change: &Change, join: bool);
}

/// Why presence could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence is tracked only in rooms named {PREFIX}*")]
    NotTracked,
    #[error("the cluster registry cannot be read")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type PresenceFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, PresenceError>> + Send + 'a>>;

/// Reads presence, wherever it is kept.
pub trait Presences: Send + Sync {
    /// Every connection's meta in `room`. Includes every change this node made before
    /// the call (a client that just joined sees itself).
    fn state<'a>(&'a self, room: &'a RoomName) -> PresenceFuture<'a, Vec<Meta>>;

    /// How many members `room` has: cheap whatever the room's size.
    fn count<'a>(&'a self, room: &'a RoomName) -> PresenceFuture<'a, usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meta_ref_is_stable_and_is_not_the_socket_id() {
        let sid = SocketId::from("gw1.AbCdEfGhIjKlMn");
        assert_eq!(
            meta_ref(&sid),
            meta_ref(&SocketId::from("gw1.AbCdEfGhIjKlMn"))
        );
        assert_ne!(
            meta_ref(&sid),
            meta_ref(&SocketId::from("gw1.AbCdEfGhIjKlMo"))
        );
        assert_eq!(meta_ref(&sid).len(), 16);
        assert!(!meta_ref(&sid).contains("gw1"));
    }

    #[test]
    fn an_anonymous_connection_is_a_member_of_its_own() {
        let a = Meta::new(&SocketId::from("n.a"), None, 1);
        let b = Meta::new(&SocketId::from("n.b"), None, 1);
        assert_eq!(a.key, a.r#ref);
        assert_ne!(a.key, b.key);
        let u = Meta::new(&SocketId::from("n.c"), Some("alice"), 1);
        assert_eq!(u.key, "alice");
    }

    #[test]
    fn members_count_connections_per_user() {
        let metas = vec![
            Meta::new(&SocketId::from("n.1"), Some("bob"), 1),
            Meta::new(&SocketId::from("n.2"), Some("alice"), 1),
            Meta::new(&SocketId::from("m.3"), Some("bob"), 2),
        ];
        assert_eq!(
            members(&metas),
            vec![
                Member {
                    user: "alice".into(),
                    connections: 1
                },
                Member {
                    user: "bob".into(),
                    connections: 2
                }
            ]
        );
    }

    #[test]
    fn only_presence_rooms_track_members() {
        assert!(is_presence_room("presence-lobby"));
        assert!(!is_presence_room("lobby"));
        assert!(!is_presence_room("xpresence-lobby"));
    }
}
