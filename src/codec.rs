//! The frontend seam: everything the core (push service, hub, bus) knows of a client
//! protocol. A frontend registers one [`PushCodec`] here; the core never names a
//! concrete protocol.
//!
//! Why a trait object and not an enum of frontends: the core must compile without
//! knowing which frontends exist (the seam is what keeps `hub`, `bus` and the push
//! service free of protocol imports), and the only call on the hot path is one
//! `encode` per frontend per push, so the virtual call costs nothing measurable. Which
//! frontends exist is still a closed, bounded set ([`Frontend`]), so metrics labels
//! and the per-fan-out encoding slots are plain arrays.

use std::sync::Arc;

use crate::connection::Frame;
use crate::id::{Frontend, UserId};
use crate::presence::Diff;
use crate::push::Push;

/// How one frontend carries pushes.
pub trait PushCodec: Send + Sync {
    fn frontend(&self) -> Frontend;

    /// Whether this frontend can carry `push` at all (event names it reserves, data it
    /// cannot express). Called once per push by the push service, before anything is
    /// sent; an error refuses the push with this message (HTTP 400).
    fn check(&self, push: &Push) -> Result<(), String>;

    /// Encodes `push` once for every connection of this frontend. `ack_id` is the
    /// node-wide ack id of an ack-tracked push. Called lazily by the hub's fan-out,
    /// only when the push reaches at least one connection of this frontend, and never
    /// fails: [`PushCodec::check`] already refused what cannot be encoded.
    fn encode(&self, push: &Push, ack_id: Option<u64>) -> Vec<Frame>;

    /// Whether this frontend's frame for a push to a user names the user (Pusher's
    /// `#server-to-user-<id>` channel): the hub then encodes a push to several users
    /// once per user for this frontend ([`PushCodec::encode_for_user`]), and once in
    /// all for the others.
    fn names_user(&self) -> bool {
        false
    }

    /// Encodes a push to several users for one of them; only called when
    /// [`PushCodec::names_user`].
    fn encode_for_user(&self, push: &Push, _user: &UserId, ack_id: Option<u64>) -> Vec<Frame> {
        self.encode(push, ack_id)
    }

    /// Renders a presence diff for this frontend's members of its room, once per diff
    /// per node. Empty (the default) for a protocol without presence.
    fn encode_presence(&self, _diff: &Diff) -> Vec<Frame> {
        Vec::new()
    }

    /// Whether a connection is told of its own entering a presence room (phoenix.js
    /// reads it in `presence_diff`). Pusher's `member_added` is for the other members
    /// only: its codec says no, and the hub renders the diff without that join for
    /// the joining connection.
    fn presence_tells_own_join(&self) -> bool {
        true
    }
}

/// The codecs of the frontends this node serves, by [`Frontend`].
#[derive(Clone, Default)]
pub struct Codecs {
    slots: [Option<Arc<dyn PushCodec>>; Frontend::COUNT],
}

/// A push that a frontend cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({frontend} clients cannot receive it)")]
pub struct Refused {
    pub frontend: &'static str,
    pub message: String,
}

impl Codecs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the codec of its frontend.
    pub fn register(&mut self, codec: Arc<dyn PushCodec>) {
        let i = codec.frontend().index();
        self.slots[i] = Some(codec);
    }

    pub fn get(&self, frontend: Frontend) -> Option<&dyn PushCodec> {
        self.slots[frontend.index()].as_deref()
    }

    /// Refuses `push` when any registered frontend cannot carry it: a push is
    /// addressed to sockets, not protocols, so it must be deliverable to whichever
    /// protocol its targets speak.
    pub fn check(&self, push: &Push) -> Result<(), Refused> {
        for codec in self.slots.iter().flatten() {
            codec.check(push).map_err(|message| Refused {
                frontend: codec.frontend().as_str(),
                message,
            })?;
        }
        Ok(())
    }
}
