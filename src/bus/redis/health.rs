//! The *health* task: follows the three Redis connections. While one is down
//! `/readyz` answers 503 and publishing fails fast with `BusError::Unavailable`; a
//! reconnect wakes the sync task to re-subscribe everything and the writer to
//! reconcile the registry.

use super::*;

impl RedisBus {
    pub(super) fn check_health(&self) -> bool {
        let up = self.publisher.is_connected()
            && self.subscriber.is_connected()
            && self.registry_client.is_connected();
        let was = self.up.swap(up, Ordering::AcqRel);
        self.metrics.bus_up.set(up as i64);
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
                _ = tick.tick() => { self.check_health(); }
                r = publisher.recv() => self.reconnected(r.is_ok(), "publisher"),
                r = subscriber.recv() => self.reconnected(r.is_ok(), "subscriber"),
                r = registry.recv() => self.reconnected(r.is_ok(), "registry"),
            }
        }
    }

    pub(super) fn reconnected(&self, ok: bool, which: &'static str) {
        if !ok {
            return;
        }
        self.metrics.bus_reconnects.inc();
        tracing::info!(connection = which, "reconnected to Redis");
        // A new subscriber connection has no subscriptions; a new publisher may face an
        // empty Redis. Either way: everything again.
        if !self.check_health() {
            return;
        }
        self.resync.notify_one();
    }
}
