//! What this node sends to other nodes' inboxes, in order and pipelined: reports,
//! acks (relayed ones batched per push), control answers; and final reports stored.

use super::*;

impl RedisBus {
    pub(super) async fn send_outbox(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(String, Bytes)>,
    ) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = rx.recv_many(&mut batch, 512) => if n == 0 { return },
            }
            if !self.connected() {
                // Reports and acks for pushes in flight are lost with the connection;
                // their origins make the reports final at the deadline.
                batch.clear();
                continue;
            }
            let p = self.publisher.pipeline();
            for (channel, bytes) in batch.drain(..) {
                let _: FredResult<()> = self.publish_on(&p, channel, bytes).await;
                self.metrics
                    .bus_messages
                    .with_label_values(&["out", "inbox"])
                    .inc();
            }
            if let Err(e) = p.all::<Value>().await {
                tracing::debug!(error = %e, "bus reports not sent");
            }
        }
    }

    pub(super) async fn forward_acks(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<crate::delivery::ForwardedAck>,
    ) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = rx.recv_many(&mut batch, 1024) => if n == 0 { return },
            }
            // Acks that arrived together for one push travel as one message.
            let mut counts: HashMap<(PushId, NodeId), u32> = HashMap::new();
            for a in batch.drain(..) {
                *counts.entry((a.push, a.origin)).or_default() += 1;
            }
            for ((push, origin), n) in counts {
                if origin == self.node {
                    self.tracker.acked(&push, n as usize);
                } else {
                    self.send(
                        origin.as_str(),
                        Message::Acked {
                            push: push.to_string(),
                            n,
                        },
                    );
                }
            }
        }
    }

    pub(super) async fn store_finals(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(PushId, crate::delivery::Report)>,
    ) {
        loop {
            let (id, report) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            if self.connected() {
                // Not awaited in turn: fred pipelines concurrent commands.
                let registry = self.registry.clone();
                tokio::spawn(async move { registry.put_report(id.as_str(), &report).await });
            }
        }
    }
}
