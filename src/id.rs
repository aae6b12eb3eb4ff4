//! Identifiers of the design brief's vocabulary, as newtypes so that a room name can
//! never be passed where a user id is expected.
//!
//! A [`SocketId`] embeds the [`NodeId`] of the node that owns the connection
//! (`<node>.<random>`), so a push to one socket can be routed to its node without a
//! lookup.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use rand::distr::{Alphanumeric, SampleString};

/// How many random characters follow the node id in a socket id: 14 alphanumerics
/// give ~83 bits, enough that ids are unguessable and never collide in practice.
const SOCKET_ID_RANDOM_LEN: usize = 14;

/// The longest node id accepted, so socket ids stay short (they are stored per
/// connection and written into every registry entry).
pub const NODE_ID_MAX_LEN: usize = 16;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

string_id!(
    /// One gateway process.
    NodeId
);
string_id!(
    /// The public id of one connection (one Socket.IO namespace socket).
    SocketId
);
string_id!(
    /// The authenticated identity of a connection (the JWT `sub`).
    UserId
);
string_id!(
    /// A named group of connections.
    RoomName
);
string_id!(
    /// The id of one accepted push, returned to the API caller.
    PushId
);

/// Who a push is for. Vocabulary shared by the push, the bus and the hub, so it lives
/// with the ids rather than in any one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    User(UserId),
    Users(Vec<UserId>),
    Room(RoomName),
    Socket(SocketId),
}

impl Target {
    /// The `target` label of `pushgate_pushes_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::All => "all",
            Target::User(_) => "user",
            Target::Users(_) => "users",
            Target::Room(_) => "room",
            Target::Socket(_) => "socket",
        }
    }
}

/// One client protocol, as the core names it: a bounded label for metrics, a field of
/// the registry, and the index of its encoding in a fan-out. Adding a frontend adds a
/// variant here and a codec at registration (see `codec`); nothing else in the core
/// changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frontend {
    SocketIo = 0,
    Phoenix = 1,
    Pusher = 2,
}

impl Frontend {
    /// Every frontend, in index order.
    pub const ALL: [Frontend; 3] = [Frontend::SocketIo, Frontend::Phoenix, Frontend::Pusher];
    pub const COUNT: usize = Self::ALL.len();

    /// The `frontend` label and registry field.
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::SocketIo => "socketio",
            Frontend::Phoenix => "phoenix",
            Frontend::Pusher => "pusher",
        }
    }

    /// Whether the protocol lets a client acknowledge a delivery. Pusher Channels has
    /// no client acks: an ack-tracked push counts its Pusher deliveries as
    /// `unackable` in the report rather than letting them time out.
    pub fn acks(self) -> bool {
        !matches!(self, Frontend::Pusher)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Reads a registry field back; unknown names (a newer node's frontend) are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl serde::Serialize for Frontend {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch: the wall clock that registry entries, node
/// heartbeats and envelopes carry between nodes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a node id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node id must be 1-{NODE_ID_MAX_LEN} characters of [A-Za-z0-9_-], got {0:?}")]
pub struct InvalidNodeId(pub String);

impl NodeId {
    /// A node id from configuration; only characters that are safe in a socket id,
    /// a Redis key and a URL.
    pub fn parse(s: &str) -> Result<Self, InvalidNodeId> {
        let ok = !s.is_empty()
            && s.len() <= NODE_ID_MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self::from(s))
        } else {
            Err(InvalidNodeId(s.to_owned()))
        }
    }

    /// A random 8-character node id, for nodes started without `PUSHGATE_NODE_ID`.
    pub fn random() -> Self {
        Self::from(Alphanumeric.sample_string(&mut rand::rng(), 8))
    }
}

impl SocketId {
    /// A fresh, unguessable socket id owned by `node`.
    pub fn generate(node: &NodeId) -> Self {
        let mut s = String::with_capacity(node.as_str().len() + 1 + SOCKET_ID_RANDOM_LEN);
        s.push_str(node.as_str());
        s.push('.');
        Alphanumeric.append_string(&mut rand::rng(), &mut s, SOCKET_ID_RANDOM_LEN);
        Self::from(s)
    }

    /// The node that owns this socket, read from the id itself.
    pub fn node(&self) -> Option<&str> {
        self.0.split_once('.').map(|(node, _)| node)
    }
}

impl PushId {
    pub fn generate() -> Self {
        Self::from(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A fresh push id accepted by `node`: `<node>.<32 hex>`, so any node can ask the
    /// origin for a pending report without a lookup.
    pub fn accepted_by(node: &NodeId) -> Self {
        Self::from(format!("{node}.{}", uuid::Uuid::new_v4().simple()))
    }

    /// The node that accepted this push, read from the id itself (`None` for ids of
    /// older versions, which name none).
    pub fn origin(&self) -> Option<&str> {
        self.0.split_once('.').map(|(node, _)| node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_id_names_its_node() {
        let node = NodeId::parse("gw-1").unwrap();
        let sid = SocketId::generate(&node);
        assert_eq!(sid.node(), Some("gw-1"));
        assert_eq!(sid.as_str().len(), 4 + 1 + SOCKET_ID_RANDOM_LEN);
        assert_ne!(sid, SocketId::generate(&node));
    }

    #[test]
    fn a_push_id_names_the_node_that_accepted_it() {
        let id = PushId::accepted_by(&NodeId::from("gw-2"));
        assert_eq!(id.origin(), Some("gw-2"));
        assert_ne!(id, PushId::accepted_by(&NodeId::from("gw-2")));
        assert_eq!(PushId::generate().origin(), None);
    }

    #[test]
    fn node_id_refuses_characters_unsafe_in_keys_and_ids() {
        assert!(NodeId::parse("a.b").is_err());
        assert!(NodeId::parse("").is_err());
        assert!(NodeId::parse(&"x".repeat(NODE_ID_MAX_LEN + 1)).is_err());
        assert!(NodeId::parse("node_7-B").is_ok());
        assert!(NodeId::parse(NodeId::random().as_str()).is_ok());
    }
}
