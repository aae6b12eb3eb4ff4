//! A report: the outcome of a push — sockets targeted, delivered, acked, timed out,
//! failed — and whether it is final. Vocabulary that the delivery tracker fills, the
//! hub's fan-out starts, the event stream and the API show, and the bus carries, so it
//! sits below all of them.

use serde::{Deserialize, Serialize};

/// The outcome of a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub sockets: usize,
    pub delivered: usize,
    pub acked: usize,
    pub timed_out: usize,
    pub failed: usize,
    /// Of `delivered`, deliveries of an ack-tracked push to sockets whose protocol has
    /// no client acks (Pusher): they are neither acked nor timed out. Written only
    /// when not 0, and read as 0 when absent, so reports of pushes that reach no such
    /// socket keep their old shape (and old nodes' stored reports still read).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unackable: usize,
    /// Cluster: sockets of the target on nodes that received the push but never
    /// reported what they did with it (they died in between), as the registry knew
    /// them at the deadline. Neither delivered nor failed: nobody can say. Written
    /// only when not 0, like `unackable`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Final,
}
