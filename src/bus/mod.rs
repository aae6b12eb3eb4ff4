//! The bus: routes a push to the nodes that hold its target's connections and hands it
//! to their local hub. [`LocalBus`] is the single-node bus; [`RedisBus`] joins any
//! number of nodes through one Redis (see `redis.rs` for the channels and
//! `envelope.rs` for the wire format).
//!
//! The bus knows nothing of protocols: the hub encodes a push once per frontend,
//! through the frontends' codecs, on the node that delivers it.

mod envelope;
mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use envelope::{DecodeError, Envelope, Message, PushEnvelope, WireTarget, VERSION};
pub use redis::{ClusterObserver, RedisBus, RedisSettings, RoomChange};

use crate::hub::{FanOut, Hub};
use crate::push::Push;

/// Why a push (or a cluster operation) could not be handed to the bus; the caller may
/// retry.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
    #[error("Redis refused or lost the command")]
    Redis(#[source] fred::error::Error),
}

/// Where a published push went.
#[derive(Debug)]
pub enum Published {
    /// Delivered in this process; the fan-out is the whole story.
    Local(FanOut),
    /// Received by this many nodes, each of which reports its own fan-out to the
    /// origin's tracker. `refused`: users of a push to several users whose envelope
    /// could not be published (the others got it); empty otherwise.
    Cluster {
        nodes: usize,
        refused: Vec<crate::id::UserId>,
    },
}

pub type BusFuture<'a> = Pin<Box<dyn Future<Output = Result<Published, BusError>> + Send + 'a>>;

pub trait Bus: Send + Sync {
    /// Delivers `push` everywhere its target lives. `ack_id` is the node-wide ack id
    /// for a local delivery; a cluster bus lets every delivering node pick its own.
    fn publish<'a>(&'a self, push: &'a Push, ack_id: Option<u64>) -> BusFuture<'a>;

    /// Whether deliveries are reported by nodes ([`Published::Cluster`]) rather than
    /// returned ([`Published::Local`]).
    fn is_cluster(&self) -> bool {
        false
    }
}

/// The in-process bus of a single node: publishing is delivering to the local hub.
pub struct LocalBus {
    hub: Arc<Hub>,
    /// Recent recoverable pushes, recorded as they are delivered (recovery on).
    ring: Option<Arc<crate::recovery::Ring>>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub, ring: None }
    }

    /// The same bus, recording recoverable pushes in `ring`.
    pub fn with_recovery(mut self, ring: Arc<crate::recovery::Ring>) -> Self {
        self.ring = Some(ring);
        self
    }
}

/// Hands `push` to every matching connection of `hub` (which encodes it once per
/// frontend it reaches): what a node does with a push it received, whichever bus
/// brought it.
pub(crate) fn deliver(hub: &Hub, push: &Push, ack_id: Option<u64>) -> FanOut {
    hub.deliver(push, ack_id)
}

impl Bus for LocalBus {
    fn publish<'a>(&'a self, push: &'a Push, ack_id: Option<u64>) -> BusFuture<'a> {
        let fan = match &self.ring {
            Some(ring) if push.recoverable => {
                ring.record(push, || deliver(&self.hub, push, ack_id))
            }
            _ => deliver(&self.hub, push, ack_id),
        };
        Box::pin(std::future::ready(Ok(Published::Local(fan))))
    }
}
