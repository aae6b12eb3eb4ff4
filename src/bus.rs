//! The bus: routes a push to the nodes that hold its target's connections and hands it
//! to their local hub. [`LocalBus`] is the single-node bus; a Redis bus implements the
//! same trait for clusters.
//!
//! The bus knows nothing of protocols: the frontend encodes a push once, on the node
//! that delivers it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::frontend::socketio;
use crate::hub::{Delivery, FanOut, Hub};
use crate::push::Push;

/// Why a push could not be handed to the bus; the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

pub type BusFuture<'a> = Pin<Box<dyn Future<Output = Result<FanOut, BusError>> + Send + 'a>>;

pub trait Bus: Send + Sync {
    /// Delivers `push` (with `ack_id` when ack-tracked) everywhere its target lives and
    /// returns the combined fan-out.
    fn publish<'a>(&'a self, push: &'a Push, ack_id: Option<u64>) -> BusFuture<'a>;
}

/// The in-process bus of a single node: publishing is delivering to the local hub.
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl Bus for LocalBus {
    fn publish<'a>(&'a self, push: &'a Push, ack_id: Option<u64>) -> BusFuture<'a> {
        let frames = socketio::encode_push(push, ack_id);
        let fan = self.hub.deliver(&Delivery {
            target: &push.target,
            namespace: &push.namespace,
            except: &push.except,
            frames: &frames,
            pushed_at: push.accepted_at,
            track: ack_id.is_some(),
        });
        Box::pin(std::future::ready(Ok(fan)))
    }
}
