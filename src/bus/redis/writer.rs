//! The *writer* task: the only writer of socket, user, room and presence entries. It
//! turns the hub's socket changes into registry operations, in the order the sync
//! task handed them over (after their subscriptions), applies them, and publishes the
//! presence diffs they made on the rooms' channels. When a write fails, or the sync or
//! lease task asks, it reconciles the registry with the hub instead.

use super::*;
use crate::hub::SocketInfo;
use crate::presence::Diff;
use crate::registry::write::Op;

/// What the writer is handed.
pub(super) enum Work {
    Changes(Vec<SocketChange>),
    /// Make the registry match the hub (after a reconnect, a lost lease, at start).
    Reconcile,
    /// Answered once everything handed over before it was applied.
    Barrier(oneshot::Sender<()>),
}

impl RedisBus {
    pub(super) async fn write(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Work>) {
        let mut reconcile = false;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY_INTERVAL), if reconcile => {}
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            }
            let mut ops = Vec::new();
            let mut barriers = Vec::new();
            for work in batch.drain(..) {
                match work {
                    Work::Changes(changes) => {
                        ops.extend(changes.into_iter().filter_map(|c| self.op(c)))
                    }
                    Work::Reconcile => reconcile = true,
                    Work::Barrier(b) => barriers.push(b),
                }
            }
            if !self.connected() {
                // What changed meanwhile is reconciled once Redis is back.
                reconcile |= !ops.is_empty();
            } else if reconcile {
                // The hub's current view covers every change handed over so far.
                match self.registry.reconcile(self.hub.sockets()).await {
                    Ok(diffs) => {
                        reconcile = false;
                        self.publish_presence(diffs).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registry reconciliation failed; will retry")
                    }
                }
            } else if !ops.is_empty() {
                match self.registry.apply(ops).await {
                    Ok(diffs) => self.publish_presence(diffs).await,
                    Err(e) => {
                        tracing::warn!(error = ?e, "registry write failed; reconciling");
                        reconcile = true;
                    }
                }
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    /// The registry operation for one of the hub's changes, checked against the hub's
    /// current view: notes from different threads may arrive out of order (a join
    /// noted after the socket's removal), and writing one late would leave an entry
    /// for a socket that is gone. Additions are written only while true; removals
    /// always (they are idempotent).
    fn op(&self, change: SocketChange) -> Option<Op> {
        let now = |sid: &SocketId| self.hub.socket(sid);
        match change {
            SocketChange::Registered(info) | SocketChange::UserSet(info) => {
                now(&info.id).map(Op::Put)
            }
            SocketChange::Joined {
                socket,
                user,
                room,
                at,
                profile,
            } => now(&socket)
                .filter(|s: &SocketInfo| s.rooms.contains(&room))
                .map(|_| Op::Join {
                    socket,
                    user,
                    room,
                    at,
                    profile,
                }),
            SocketChange::Left { socket, user, room } => {
                let rejoined = now(&socket).is_some_and(|s| s.rooms.contains(&room));
                (!rejoined).then_some(Op::Leave { socket, user, room })
            }
            SocketChange::Transport { socket, .. } => now(&socket).map(|s| Op::Transport {
                socket,
                transport: s.transport,
            }),
            SocketChange::Removed {
                socket,
                user,
                frontend,
                rooms,
                keep,
            } => Some(Op::Remove {
                socket,
                user,
                frontend,
                rooms,
                keep,
            }),
        }
    }

    /// Publishes each presence diff on its room's channel, where every node with
    /// members of the room (this one included) renders it.
    pub(super) async fn publish_presence(&self, diffs: Vec<Diff>) {
        if diffs.is_empty() {
            return;
        }
        let p = self.registry.client().pipeline();
        for diff in diffs {
            let channel = format!("{}:r:{}", self.prefix, diff.room);
            let bytes = Envelope::new(Message::Presence(diff)).encode();
            let _: FredResult<()> = self.publish_on(&p, channel, bytes).await;
            self.metrics
                .bus_messages
                .with_label_values(&["out", "room"])
                .inc();
        }
        if let Err(e) = p.all::<Value>().await {
            // Clients that miss a diff see the change at their next join's state.
            tracing::warn!(error = %e, "presence diffs not published");
        }
    }
}
