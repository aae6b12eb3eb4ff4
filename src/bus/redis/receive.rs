//! The *receive* task: decodes each message from Redis (bad bytes are counted and
//! skipped) and acts on it: deliver a push and report to its origin, count reports and
//! acks, answer control requests.

use super::*;

impl RedisBus {
    pub(super) async fn receive(
        self: Arc<Self>,
        mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = rx.recv() => m,
            };
            match msg {
                Ok(msg) => self.on_message(msg),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(messages = n, "the bus fell behind and skipped messages");
                    self.metrics
                        .bus_dropped
                        .with_label_values(&["lagged"])
                        .inc_by(n);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    pub(super) fn on_message(&self, msg: fred::types::Message) {
        let kind = self.channel_kind(&msg.channel);
        self.metrics
            .bus_messages
            .with_label_values(&["in", kind])
            .inc();
        let bytes: Bytes = match msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            _ => Bytes::new(),
        };
        if bytes.first() == Some(&recovery::REPLAY_TAG) {
            return self.on_replay(&bytes);
        }
        let envelope = match Envelope::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .bus_dropped
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::debug!(channel = %msg.channel, error = %e, "bus message skipped");
                return;
            }
        };
        match envelope.m {
            Message::Push(push) => self.deliver(push),
            Message::Delivered {
                push,
                node,
                sockets,
                delivered,
                failed,
                unackable,
            } => self.tracker.node_reported(
                &PushId::from(push),
                &NodeId::from(node),
                &crate::hub::FanOut {
                    sockets: sockets as usize,
                    delivered: delivered as usize,
                    failed: failed as usize,
                    unackable: unackable as usize,
                    delivered_to: Vec::new(),
                },
            ),
            Message::Acked { push, n } => self.tracker.acked(&PushId::from(push), n as usize),
            Message::Kick { request, sockets } => {
                let mut n = 0;
                for sid in sockets {
                    let sid = SocketId::from(sid);
                    if let Some(conn) = self.hub.connection(&sid) {
                        conn.disconnect(&sid);
                        n += 1;
                    }
                }
                tracing::info!(sockets = n, from = %request.from, "sockets disconnected on request");
                self.send(
                    &request.from,
                    Message::Done {
                        request: request.id,
                        n,
                        refused: Vec::new(),
                    },
                );
            }
            Message::Join {
                request,
                room,
                sockets,
            } => self.rooms(request, room, sockets, true),
            Message::Leave {
                request,
                room,
                sockets,
            } => self.rooms(request, room, sockets, false),
            Message::Done {
                request,
                n,
                refused,
            } => {
                let waiting = self.requests.lock().remove(&request);
                if let Some(tx) = waiting {
                    let _ = tx.send(control::Answer::Count(control::Counted { n, refused }));
                } else {
                    self.on_watch_answer(request);
                }
            }
            Message::ReportOf { request, push } => {
                let report = self.tracker.get(&push);
                self.send(
                    &request.from,
                    Message::Report {
                        request: request.id,
                        report,
                    },
                );
            }
            Message::Report { request, report } => {
                if let Some(tx) = self.requests.lock().remove(&request) {
                    let _ = tx.send(control::Answer::Report(report));
                }
            }
            Message::Presence(diff) => {
                let n = self.hub.deliver_presence(&diff);
                self.metrics.presence_deliveries.inc_by(n as u64);
                tracing::trace!(room = %diff.room, members = n, "presence diff delivered");
            }
            Message::Events { node, events } => self.on_events(&node, events),
            Message::Watch { request } => self.on_watch(request),
        }
    }

    /// Delivers a push from the bus to this node's sockets and reports to its origin.
    pub(super) fn deliver(&self, env: PushEnvelope) {
        let origin = NodeId::from(env.origin.as_str());
        let Some(push) = env.into_push(crate::id::now_ms()) else {
            self.metrics
                .bus_dropped
                .with_label_values(&["undecodable"])
                .inc();
            return;
        };
        let local_ack = push.ack.map(|_| self.tracker.relay(&push.id, &origin));
        let fan = crate::bus::deliver(&self.hub, &push, local_ack);
        if origin == self.node {
            self.tracker.node_reported(&push.id, &self.node, &fan);
        } else {
            self.send(
                origin.as_str(),
                Message::Delivered {
                    push: push.id.to_string(),
                    node: self.node.to_string(),
                    sockets: fan.sockets as u32,
                    delivered: fan.delivered as u32,
                    failed: fan.failed as u32,
                    unackable: fan.unackable as u32,
                },
            );
        }
        if let (Some(ack_id), Some(timeout)) = (local_ack, push.ack) {
            self.tracker.relayed(ack_id, fan.delivered_to, timeout);
        }
    }
}
