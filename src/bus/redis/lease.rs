//! The *lease* task: every [`Registry::scan_interval`] it refreshes this node's lease
//! (asking the writer to reconcile when the lease had lapsed or Redis lost it), reads
//! the other nodes' leases, and cleans up after nodes whose lease is gone, publishing
//! their members' presence leaves. Its cost does not grow with connections.

use super::writer::Work;
use super::*;
use crate::registry::lease::Lease;

impl RedisBus {
    pub(super) async fn lease(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.registry.scan_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.connected() {
                continue;
            }
            match self.registry.refresh_lease().await {
                Ok(Lease::Held) => {}
                Ok(Lease::Taken) => {
                    tracing::info!("node lease taken; reconciling the registry");
                    let _ = self.writer.send(Work::Reconcile);
                }
                Err(_) => {
                    self.unsettled();
                    continue;
                }
            }
            let quiet = self.quiet();
            let Ok(dead) = self.registry.scan(!quiet).await else {
                self.unsettled();
                continue;
            };
            if quiet {
                continue;
            }
            for node in dead {
                match self.registry.clean_up(&node).await {
                    Ok(diffs) => self.publish_presence(diffs).await,
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "cleaning up after a dead node failed; will retry")
                    }
                }
            }
        }
    }
}
