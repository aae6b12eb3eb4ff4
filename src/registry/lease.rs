//! Node leases: the only registry entry refreshed periodically, and the whole of
//! liveness. A node holds `{p}:lease:{node}` (its `started_at`, expiring after half the
//! TTL); every node scans the others' leases; a node whose lease is gone is dead, and
//! one surviving node (the one that takes `{p}:cleanup:{node}`) removes its entries.
//!
//! Cost per node per scan: one pipelined lease write and one pipelined read of the
//! leases of known nodes — nothing per connection.

use std::collections::HashSet;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use super::{Registry, RegistryError};
use crate::id::{Frontend, NodeId};
use crate::presence::Diff;

/// How long a cleanup lock holds if its holder dies: longer than any cleanup takes.
const CLEANUP_LOCK: Duration = Duration::from_secs(60);
/// How often a node waiting for its own cleanup lock tries again.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// What refreshing the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The lease was this run's and still live: the registry holds this node's entries.
    Held,
    /// There was no lease, or a previous run's: the node is new, Redis lost its data,
    /// or the lease lapsed and a survivor may have removed this node's entries. The
    /// entries must be reconciled with the hub.
    Taken,
}

impl Registry {
    /// How long a lease lives: half the TTL, so a dead node's lease lapses, is noticed
    /// by the next scan and its entries are gone within the TTL.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl / 2
    }

    /// How often a node refreshes its lease and scans the others': a sixth of the TTL,
    /// so a lease survives two missed refreshes.
    pub fn scan_interval(&self) -> Duration {
        self.ttl / 6
    }

    /// Refreshes this node's lease (and its `{p}:nodes` entry, which a Redis that came
    /// back empty no longer has).
    pub async fn refresh_lease(&self) -> Result<Lease, RegistryError> {
        let me = self.started_at.to_string();
        let result: FredResult<Option<String>> = async {
            let p = self.client.pipeline();
            let () = p
                .hset(self.keys.nodes(), (self.node.as_str(), self.node_json()))
                .await?;
            let () = p
                .set(
                    self.keys.lease(self.node.as_str()),
                    me.as_str(),
                    Some(Expiration::PX(self.lease_ttl().as_millis() as i64)),
                    None,
                    true,
                )
                .await?;
            let (_, previous): (i64, Option<String>) = p.all().await?;
            Ok(previous)
        }
        .await;
        match result {
            Ok(Some(previous)) if previous == me => Ok(Lease::Held),
            Ok(_) => Ok(Lease::Taken),
            Err(e) => {
                self.error("refresh", &e);
                Err(RegistryError::Redis(e))
            }
        }
    }

    /// Reads every known node's lease; remembers the dead ones for readers and returns
    /// them.
    ///
    /// `settled` is false just after this node saw Redis fail (a restart, a failover):
    /// every peer's lease may have lapsed then for want of Redis, not of the peer, so
    /// a lease found missing makes no node newly dead — readers keep counting its
    /// sockets and nobody cleans up — until the peers have had time to refresh.
    /// Nodes already dead stay dead.
    pub async fn scan(&self, settled: bool) -> Result<Vec<NodeId>, RegistryError> {
        let nodes: Vec<String> = self
            .client
            .hkeys(self.keys.nodes())
            .await
            .map_err(|e| self.read_error(e))?;
        let others: Vec<String> = nodes
            .into_iter()
            .filter(|n| n != self.node.as_str())
            .collect();
        let alive: Vec<bool> = if others.is_empty() {
            Vec::new()
        } else {
            let p = self.client.pipeline();
            for n in &others {
                let () = p
                    .exists(self.keys.lease(n))
                    .await
                    .map_err(|e| self.read_error(e))?;
            }
            if others.len() == 1 {
                vec![p.last().await.map_err(|e| self.read_error(e))?]
            } else {
                p.all().await.map_err(|e| self.read_error(e))?
            }
        };
        let mut peers = Vec::new();
        let mut dead = Vec::new();
        {
            let known_dead = self.dead.read();
            for (n, alive) in others.into_iter().zip(alive) {
                let n = NodeId::from(n);
                if alive || !(settled || known_dead.contains(&n)) {
                    peers.push(n);
                } else {
                    dead.push(n);
                }
            }
        }
        self.metrics.cluster_nodes.set(peers.len() as i64 + 1);
        *self.peers.write() = peers;
        *self.dead.write() = dead.iter().cloned().collect::<HashSet<_>>();
        Ok(dead)
    }

    /// Removes a dead node's entries, if this node wins its cleanup lock and the node
    /// is still dead once the lock is held. Returns the presence diffs (its members
    /// leaving) for the bus to publish.
    pub async fn clean_up(&self, dead: &NodeId) -> Result<Vec<Diff>, RegistryError> {
        if !self.lock_cleanup(dead.as_str(), false).await? {
            return Ok(Vec::new());
        }
        let result = self.clean_up_locked(dead).await;
        self.unlock_cleanup(dead.as_str()).await;
        result
    }

    async fn clean_up_locked(&self, dead: &NodeId) -> Result<Vec<Diff>, RegistryError> {
        let fail = |e: fred::error::Error| {
            self.error("write", &e);
            RegistryError::Redis(e)
        };
        let back: bool = self
            .client
            .exists(self.keys.lease(dead.as_str()))
            .await
            .map_err(fail)?;
        if back {
            return Ok(Vec::new());
        }
        let sids = self.node_sockets(dead.as_str()).await.map_err(fail)?;
        let sockets = sids.len();
        let ops = self.removals(sids).await.map_err(fail)?;
        let diffs = self.apply(&ops).await?;
        let sets: Vec<String> = Frontend::ALL
            .into_iter()
            .map(|f| self.keys.node_sockets(dead.as_str(), f))
            .collect();
        let p = self.client.pipeline();
        let () = p.del(sets).await.map_err(fail)?;
        let () = p
            .hdel(self.keys.nodes(), dead.as_str())
            .await
            .map_err(fail)?;
        let _: Vec<Value> = p.all().await.map_err(fail)?;
        self.metrics.registry_cleanups.inc();
        tracing::info!(node = %dead, sockets, "removed a dead node's registry entries");
        Ok(diffs)
    }

    /// Takes `node`'s cleanup lock. `wait`: keep trying until it is free (a node
    /// reconciling its own entries waits out a survivor's cleanup of them); otherwise
    /// give up at once (another survivor is cleaning).
    pub(super) async fn lock_cleanup(&self, node: &str, wait: bool) -> Result<bool, RegistryError> {
        let deadline = tokio::time::Instant::now() + CLEANUP_LOCK;
        loop {
            let taken: Option<String> = self
                .client
                .set(
                    self.keys.cleanup(node),
                    self.node.as_str(),
                    Some(Expiration::PX(CLEANUP_LOCK.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(|e| self.read_error(e))?;
            if taken.is_some() {
                return Ok(true);
            }
            if !wait || tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    pub(super) async fn unlock_cleanup(&self, node: &str) {
        let r: FredResult<i64> = self.client.del(self.keys.cleanup(node)).await;
        if let Err(e) = r {
            self.error("write", &e);
        }
    }

    /// Takes this node out of the registry at a clean shutdown: its lease goes, and so
    /// does its `{p}:nodes` entry when its sockets were all removed as they closed.
    /// When some were not (a removal failed), the entry stays and a survivor's next
    /// scan cleans up after this node as after a dead one.
    pub async fn leave(&self) {
        let node = self.node.as_str();
        let result: FredResult<()> = async {
            let () = self.client.del(self.keys.lease(node)).await?;
            let left = self.node_sockets(node).await?;
            if left.is_empty() {
                let () = self.client.hdel(self.keys.nodes(), node).await?;
            } else {
                tracing::warn!(
                    sockets = left.len(),
                    "sockets left in the registry at shutdown; another node will remove them"
                );
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.error("write", &e);
        }
    }
}
