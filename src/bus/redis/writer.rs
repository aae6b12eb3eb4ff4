//! The *writer* task: the only writer of socket, user, room and presence entries. It
//! turns the hub's socket changes into registry operations, in the order the sync
//! task handed them over (after their subscriptions), applies them, and publishes the
//! presence diffs they made on the rooms' channels. A write that fails (or is made
//! while Redis is away) is retried as it was — every operation is idempotent — so a
//! moment of overload costs Redis the failed writes again, not every socket of the
//! node. Only when Redis may have lost what it held (the lease task found the lease
//! gone, or after a reconnect the Redis server is another one: a restart, a failover)
//! does it reconcile the registry with the whole hub.

use super::*;
use crate::hub::SocketInfo;
use crate::presence::Diff;
use crate::registry::write::Op;

/// What the writer is handed.
pub(super) enum Work {
    Changes(Vec<SocketChange>),
    /// Make the registry match the hub (a lost lease, at start).
    Reconcile,
    /// The connections are back and subscribed: retry what failed, or reconcile when
    /// the Redis server is not the one the node wrote to before.
    Reconnected,
    /// Answered once everything handed over before it was applied.
    Barrier(oneshot::Sender<()>),
}

impl RedisBus {
    pub(super) async fn write(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Work>) {
        let mut reconcile = false;
        // Operations that failed or waited for Redis, in order, to apply again.
        let mut retry: Vec<Op> = Vec::new();
        // The Redis server written to (its `run_id`), to tell a reconnect to the same
        // server (nothing lost but the failed writes) from a new or restarted one.
        let mut server: Option<String> = None;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY_INTERVAL), if reconcile || !retry.is_empty() => {}
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
            }
            let mut ops = std::mem::take(&mut retry);
            let mut barriers = Vec::new();
            for work in batch.drain(..) {
                match work {
                    Work::Changes(changes) => {
                        ops.extend(changes.into_iter().filter_map(|c| self.op(c)))
                    }
                    Work::Reconcile => reconcile = true,
                    Work::Reconnected => {
                        let now = self.server_id().await;
                        if self.sharded || now.is_none() || now != server {
                            reconcile = true;
                        }
                        server = now.or(server);
                    }
                    Work::Barrier(b) => barriers.push(b),
                }
            }
            if ops.len() > MAX_RETRIED_OPS {
                // Rewriting the node whole is cheaper than this backlog.
                reconcile = true;
            }
            if reconcile {
                ops.clear();
            }
            if !self.connected() {
                // Applied (or reconciled) once Redis is back.
                retry = ops;
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
                let n = ops.len();
                match self.registry.apply(&ops).await {
                    Ok(diffs) => self.publish_presence(diffs).await,
                    Err(e) => {
                        tracing::warn!(error = ?e, ops = n, "registry write failed; will retry it");
                        self.metrics.registry_retried_ops.inc_by(n as u64);
                        retry = ops;
                    }
                }
            }
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    /// The `run_id` of the Redis server the registry's connection reaches; `None`
    /// when it cannot be read (the caller then reconciles).
    async fn server_id(&self) -> Option<String> {
        let command = fred::types::CustomCommand::new_static("INFO", None, false);
        let info: String = self
            .registry
            .client()
            .custom(command, vec!["server"])
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
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
