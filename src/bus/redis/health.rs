//! The *health* task: follows the three Redis connections. While one is down
//! `/readyz` answers 503 and publishing fails fast with `BusError::Unavailable`; a
//! reconnect wakes the sync task to re-subscribe everything and the writer to
//! reconcile the registry.
//!
//! Readiness comes back only when pushes would reach every socket again: this node's
//! subscriptions are in place, and so are its peers'. A loss of Redis (a restart, a
//! Redis Cluster failover) drops every node's subscriptions at once, and a node that
//! re-subscribed first would otherwise accept pushes for a user whose node is still
//! re-subscribing — answered, and delivered nowhere. So each node records in the
//! registry when it re-subscribed, and a node that saw a loss waits until every peer
//! alive before it re-subscribed after the loss, or [`RECOVERY_WAIT`] passed.

use super::*;

impl RedisBus {
    pub(super) fn check_health(&self) -> bool {
        let up = self.publisher.is_connected()
            && self.subscriber.is_connected()
            && self.registry_client.is_connected();
        let was = self.up.swap(up, Ordering::AcqRel);
        self.metrics.bus_up.set(up as i64);
        if !up {
            self.lost();
        }
        if up != was {
            if up {
                tracing::info!("Redis is reachable: re-subscribing and re-registering");
                self.resync.notify_one();
            } else {
                tracing::warn!(
                    "Redis connection lost: not ready, pushes answer 503 until it is back"
                );
            }
        }
        up
    }

    pub(super) async fn health(self: Arc<Self>) {
        let mut publisher = self.publisher.reconnect_rx();
        let mut subscriber = self.subscriber.reconnect_rx();
        let mut registry = self.registry_client.reconnect_rx();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {
                    if self.check_health() {
                        self.catch_up().await;
                    }
                }
                r = publisher.recv() => self.reconnected(r.is_ok(), "publisher"),
                r = subscriber.recv() => self.reconnected(r.is_ok(), "subscriber"),
                r = registry.recv() => self.reconnected(r.is_ok(), "registry"),
            }
        }
    }

    /// Not ready until re-subscribed and caught up with the peers.
    fn lost(&self) {
        self.subscribed.store(false, Ordering::Release);
        self.caught_up.store(false, Ordering::Release);
        let mut r = self.recovery.lock();
        if r.lost_at.is_none() {
            r.lost_at = Some(crate::id::now_ms());
            r.peers = self.registry.peers();
            r.resubscribed_at = None;
            self.registry.forget_dead();
        }
    }

    pub(super) fn reconnected(&self, ok: bool, which: &'static str) {
        if !ok {
            return;
        }
        self.metrics.bus_reconnects.inc();
        tracing::info!(connection = which, "reconnected to Redis");
        // A connection that came back before a health check saw it gone was lost all
        // the same (every node's may have been: a Redis restart, a failover): not
        // ready until the subscriptions, this node's and its peers', are made again.
        self.lost();
        // A new subscriber connection has no subscriptions; a new publisher may face an
        // empty Redis. Either way: everything again.
        if !self.check_health() {
            return;
        }
        self.resync.notify_one();
    }
}

impl RedisBus {
    /// Called by the sync task once every needed channel is subscribed.
    pub(super) async fn resubscribed(&self) {
        if self.registry.mark_resubscribed().await.is_err() {
            // Peers waiting for this node give up after RECOVERY_WAIT.
            tracing::warn!("could not record this node's re-subscription");
        }
        self.recovery.lock().resubscribed_at = Some(Instant::now());
        self.subscribed.store(true, Ordering::Release);
    }

    /// Marks the node caught up once every peer re-subscribed after the loss.
    async fn catch_up(&self) {
        if !self.subscribed.load(Ordering::Acquire) || self.caught_up.load(Ordering::Acquire) {
            return;
        }
        let (lost_at, peers, since) = {
            let r = self.recovery.lock();
            (r.lost_at, r.peers.clone(), r.resubscribed_at)
        };
        let waiting: Vec<NodeId> = match lost_at {
            None => Vec::new(),
            Some(lost_at) => match self.registry.resubscribed_at(&peers).await {
                Ok(marks) => peers
                    .into_iter()
                    .zip(marks)
                    .filter(|(_, at)| *at < lost_at)
                    .map(|(n, _)| n)
                    .collect(),
                Err(_) => return,
            },
        };
        let gave_up = since.is_some_and(|s| s.elapsed() >= RECOVERY_WAIT);
        if !waiting.is_empty() && !gave_up {
            return;
        }
        if !waiting.is_empty() {
            tracing::warn!(nodes = ?waiting, "peers did not confirm their re-subscription; taking pushes again");
        } else if lost_at.is_some() {
            tracing::info!("every peer re-subscribed: taking pushes again");
        }
        {
            let mut r = self.recovery.lock();
            r.lost_at = None;
            r.peers.clear();
            r.quiet_until = Some(Instant::now() + self.registry.scan_interval() * 2);
        }
        self.caught_up.store(true, Ordering::Release);
    }

    /// Notes that Redis failed this node's lease task: the peers' may have failed
    /// too, so nobody is newly dead until two scans after the failures stop.
    pub(super) fn unsettled(&self) {
        self.recovery.lock().quiet_until = Some(Instant::now() + self.registry.scan_interval() * 2);
    }

    /// Whether dead-node cleanups, and newly dead nodes, should wait (just after a
    /// loss of Redis).
    pub(super) fn quiet(&self) -> bool {
        let r = self.recovery.lock();
        r.lost_at.is_some() || r.quiet_until.is_some_and(|t| Instant::now() < t)
    }
}
