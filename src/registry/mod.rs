//! The cluster registry in Redis: which nodes are alive, which sockets exist on which
//! node, for which user, in which rooms, and who is present in presence rooms — so the
//! HTTP API of any node answers for connections on every node.
//!
//! Steady-state cost is O(1) per node per period whatever its connection count: only
//! a node's *lease* is refreshed periodically; every other entry is written when it
//! changes, never rewritten. Liveness comes from the lease alone: readers skip entries
//! of nodes without a live lease, and one surviving node removes a dead node's entries
//! ([`lease`]).
//!
//! Keys (prefix `p`, default `pushgate`):
//!
//! - `{p}:nodes` — hash: node id → JSON `{id, started_at, address}`; every node that
//!   registered and was not yet cleaned up. `address` is where its peers reach it
//!   (`host:port`), to forward it the requests of the sessions it holds.
//! - `{p}:lease:{node}` — the node's lease: its `started_at`, expiring after half the
//!   registry TTL, refreshed every sixth of it. Its absence means the node is dead.
//! - `{p}:ns:{{node}}:{frontend}` — set of the node's socket ids per frontend: what a
//!   cleanup removes, and the node's connection counts (SCARD) for `/v1/nodes`.
//! - `{p}:s:{sid}` — hash: `node`, `user`, `frontend`, `namespace`, `transport`,
//!   `connected_at`, and `r:{room}` → when it joined, per room.
//! - `{p}:us:{user}` / `{p}:rs:{room}` — sets of socket ids, on every node. The index
//!   of a room a [`Watcher`] watches is changed only by a script that answers the
//!   room's new size, so exactly one write sees it become occupied or vacated.
//! - `{p}:pr:{room}` — a presence room: `s:{sid}` → the connection's meta (JSON),
//!   `u:{member}` → the member's connections, `n` → the member count. Changed only by
//!   Lua scripts on this one key, so the counts are exact, every change is idempotent
//!   (a replayed join or leave changes nothing) and a Redis Cluster keeps it on one
//!   shard.
//! - `{p}:cleanup:{node}` — the lock a node holds while it removes `node`'s entries.
//! - `{p}:resubscribed` — hash: node → when it last re-subscribed after losing Redis.
//! - `{p}:push:{id}` — a final report (JSON), kept for [`crate::delivery::RETENTION`].
//!
//! Writes come from the bus's *writer* task (in the hub's order) and *lease* task;
//! any task may read. The registry talks to Redis on a connection of its own, so its
//! work never queues behind (or in front of) pushes and subscriptions.

pub mod lease;
pub mod write;

pub(crate) use write::{eval_owned, eval_two};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fred::prelude::*;
use parking_lot::RwLock;
use serde_json::{json, Value};

use crate::delivery::{Report, State, RETENTION};
use crate::hub::SocketInfo;
use crate::id::{Frontend, NodeId, RoomName, SocketId, UserId};
use crate::metrics::Metrics;
use crate::presence::{Meta, Watcher};

/// The default registry TTL: a SIGKILLed node's entries leave every answer within
/// 30 s. Its lease lives half of it and is refreshed every sixth, so a node survives
/// two missed refreshes and a dead one is noticed and cleaned within the TTL.
pub const DEFAULT_REGISTRY_TTL_MS: u64 = 30_000;

/// Why a registry read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Redis is unavailable")]
    Redis(#[from] fred::error::Error),
}

/// Commands per pipeline when writing or reading many entries. One pipeline for every
/// socket of a node (tens of thousands) makes fred encode and buffer every command and
/// collect every reply at once, and the allocator keeps that peak (measured: ~7 KB per
/// connection at 2,000 connections); a few hundred per round trip costs little time.
const PIPELINE_CHUNK: usize = 256;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub fn lease(&self, node: &str) -> String {
        format!("{}:lease:{node}", self.prefix)
    }
    /// Hash-tagged by node, so a Redis Cluster keeps a node's sets on one shard and one
    /// command may name them all.
    pub fn node_sockets(&self, node: &str, frontend: Frontend) -> String {
        format!("{}:ns:{{{node}}}:{}", self.prefix, frontend.as_str())
    }
    pub fn cleanup(&self, node: &str) -> String {
        format!("{}:cleanup:{node}", self.prefix)
    }
    pub fn socket(&self, sid: &str) -> String {
        format!("{}:s:{sid}", self.prefix)
    }
    /// The stream of recent recoverable pushes.
    pub fn recovery_stream(&self) -> String {
        format!("{}:x", self.prefix)
    }
    /// A recovery session by pid: a removed socket's entry, kept for the window, or
    /// (a restored session's) the socket id it lives on now.
    pub fn recovery_session(&self, pid: &str) -> String {
        format!("{}:x:p:{pid}", self.prefix)
    }
    pub fn user(&self, user: &str) -> String {
        format!("{}:us:{user}", self.prefix)
    }
    pub fn room(&self, room: &str) -> String {
        format!("{}:rs:{room}", self.prefix)
    }
    pub fn presence(&self, room: &str) -> String {
        format!("{}:pr:{room}", self.prefix)
    }
    pub fn report(&self, push: &str) -> String {
        format!("{}:push:{push}", self.prefix)
    }
    /// Hash: node → when it last re-subscribed everything (ms since the epoch).
    pub fn resubscribed(&self) -> String {
        format!("{}:resubscribed", self.prefix)
    }
}

/// The prefix of a room field in a socket's hash.
const ROOM_FIELD: &str = "r:";

/// A socket as the registry knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub node: NodeId,
    pub info: SocketInfo,
}

/// A node as `/v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub connections: u64,
    /// Connections per frontend, every frontend named.
    pub frontends: std::collections::BTreeMap<&'static str, u64>,
    pub started_at: u64,
    /// Where its peers reach it (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

pub struct Registry {
    client: Client,
    keys: Keys,
    node: NodeId,
    ttl: Duration,
    started_at: u64,
    /// Where the other nodes reach this one (`host:port`), published in `{p}:nodes`.
    address: Option<String>,
    metrics: std::sync::Arc<Metrics>,
    /// Nodes that had no live lease at the last scan. Readers drop their entries: a
    /// SIGKILLed node leaves every answer once its lease lapsed, before a survivor has
    /// removed its entries. (A set of the dead rather than of the living, so a node
    /// that just started is seen before the next scan.)
    dead: RwLock<HashSet<NodeId>>,
    /// The other nodes that had a live lease at the last scan: whose re-subscription
    /// a node that lost Redis waits for (see `bus::redis::health`).
    peers: RwLock<Vec<NodeId>>,
    /// Told of the occupancy and presence changes this node's writes decide in the
    /// rooms it watches (the Pusher frontend's webhooks); set once.
    watcher: std::sync::OnceLock<std::sync::Arc<dyn Watcher>>,
    /// Connection state recovery: each socket's entry names its pid, and a removed
    /// socket's entry is kept for the window as its session (`write.rs`); set once.
    sessions: std::sync::OnceLock<Sessions>,
}

/// What the registry needs to keep sessions for recovery.
#[derive(Clone)]
pub struct Sessions {
    pub pids: std::sync::Arc<crate::recovery::Pids>,
    pub window: Duration,
}

impl Registry {
    pub fn new(
        client: Client,
        keys: Keys,
        node: NodeId,
        ttl: Duration,
        started_at: u64,
        address: Option<String>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            keys,
            node,
            ttl,
            started_at,
            address,
            metrics,
            dead: RwLock::new(HashSet::new()),
            peers: RwLock::new(Vec::new()),
            watcher: std::sync::OnceLock::new(),
            sessions: std::sync::OnceLock::new(),
        }
    }

    /// Tells `watcher` of every occupancy and presence change this node's writes
    /// decide in the rooms it watches, from now on (set once, before connections
    /// arrive; a second call is ignored).
    pub fn watch(&self, watcher: std::sync::Arc<dyn Watcher>) {
        let _ = self.watcher.set(watcher);
    }

    /// Keeps sessions for connection state recovery (see [`Sessions`]).
    pub fn keep_sessions(&self, sessions: Sessions) {
        let _ = self.sessions.set(sessions);
    }

    pub(crate) fn sessions(&self) -> Option<&Sessions> {
        self.sessions.get()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Where this node told its peers to reach it.
    pub fn advertised(&self) -> Option<&str> {
        self.address.as_deref()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    fn error(&self, op: &'static str, e: &fred::error::Error) {
        self.metrics.registry_errors.with_label_values(&[op]).inc();
        tracing::debug!(op, error = %e, "registry command failed");
    }

    fn read_error(&self, e: fred::error::Error) -> RegistryError {
        self.error("read", &e);
        RegistryError::Redis(e)
    }

    /// Whether `node` was not found dead at the last scan.
    pub fn is_live(&self, node: &str) -> bool {
        node == self.node.as_str() || !self.dead.read().contains(node)
    }

    fn live_socket(&self, sid: &str) -> bool {
        SocketId::from(sid).node().is_some_and(|n| self.is_live(n))
    }

    /// One socket on any live node.
    pub async fn socket(&self, sid: &SocketId) -> Result<Option<Entry>, RegistryError> {
        if !self.live_socket(sid.as_str()) {
            return Ok(None);
        }
        let map: HashMap<String, String> = self
            .client
            .hgetall(self.keys.socket(sid.as_str()))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(entry(sid, map))
    }

    /// The hashes of `sids`, in order (empty maps for missing ones), pipelined in
    /// chunks.
    pub(crate) async fn hashes(
        &self,
        sids: &[String],
    ) -> Result<Vec<HashMap<String, String>>, fred::error::Error> {
        let mut out = Vec::with_capacity(sids.len());
        for chunk in sids.chunks(PIPELINE_CHUNK) {
            let p = self.client.pipeline();
            for sid in chunk {
                let () = p.hgetall(self.keys.socket(sid)).await?;
            }
            let maps: Vec<HashMap<String, String>> = if chunk.len() == 1 {
                vec![p.last().await?]
            } else {
                p.all().await?
            };
            out.extend(maps);
        }
        Ok(out)
    }

    /// The live entries of the sockets in the index set `index` (of `room`, for a room
    /// index). Members whose hash is gone are removed from the index (through the
    /// occupancy script in a watched room, whose watcher hears if that vacated it);
    /// members of dead nodes are skipped (their node's cleanup removes them).
    async fn indexed(
        &self,
        index: String,
        room: Option<&RoomName>,
    ) -> Result<Vec<Entry>, RegistryError> {
        let members: Vec<String> = self
            .client
            .smembers(&index)
            .await
            .map_err(|e| self.read_error(e))?;
        let members: Vec<String> = members
            .into_iter()
            .filter(|m| self.live_socket(m))
            .collect();
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let maps = self
            .hashes(&members)
            .await
            .map_err(|e| self.read_error(e))?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (m, map) in members.into_iter().zip(maps) {
            match entry(&SocketId::from(m.as_str()), map) {
                Some(e) => out.push(e),
                None => stale.push(m),
            }
        }
        if stale.is_empty() {
            return Ok(out);
        }
        match room.filter(|r| self.watched(r)) {
            Some(room) => {
                // Only the index changes here: a stale socket's room field and
                // presence went with its hash.
                if let Err(e) = self.forget_in_index(room, stale).await {
                    self.error("write", &e);
                }
            }
            None => {
                let r: FredResult<i64> = self.client.srem(index, stale).await;
                if let Err(e) = r {
                    self.error("write", &e);
                }
            }
        }
        Ok(out)
    }

    /// Every socket of `user` on any live node.
    pub async fn user(&self, user: &UserId) -> Result<Vec<Entry>, RegistryError> {
        self.indexed(self.keys.user(user.as_str()), None).await
    }

    /// Every socket in `room` on any live node.
    pub async fn room(&self, room: &RoomName) -> Result<Vec<Entry>, RegistryError> {
        self.indexed(self.keys.room(room.as_str()), Some(room))
            .await
    }

    /// The names of the rooms that start with `prefix` and have an index entry (a room
    /// index may outlive its last member until a dead node's cleanup; readers of its
    /// members drop those). A SCAN over the keyspace, on every primary of a Redis
    /// Cluster: for admin calls such as Pusher's channel listing, never for a push.
    pub async fn rooms(&self, prefix: &str) -> Result<Vec<RoomName>, RegistryError> {
        use futures_util::TryStreamExt;
        let index = self.keys.room("");
        let mut pattern = String::with_capacity(index.len() + prefix.len() + 1);
        for c in index.chars().chain(prefix.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let keys: Vec<fred::types::Key> = if self.client.is_clustered() {
            self.client
                .scan_cluster_buffered(pattern, Some(500), None)
                .try_collect()
                .await
        } else {
            self.client
                .scan_buffered(pattern, Some(500), None)
                .try_collect()
                .await
        }
        .map_err(|e| self.read_error(e))?;
        let mut rooms: Vec<RoomName> = keys
            .iter()
            .filter_map(|k| k.as_str()?.strip_prefix(index.as_str()).map(RoomName::from))
            .collect();
        rooms.sort();
        rooms.dedup();
        Ok(rooms)
    }

    /// How many sockets `target` has on each node, dead nodes included (nothing is
    /// filtered: this counts what nodes that died before reporting held). Sets are read
    /// whole; for a push to all, every node's socket sets are counted.
    pub async fn sockets_per_node(
        &self,
        target: &crate::id::Target,
    ) -> Result<HashMap<String, usize>, RegistryError> {
        use crate::id::Target;
        let mut out: HashMap<String, usize> = HashMap::new();
        let mut count = |sids: Vec<String>| {
            for sid in sids {
                if let Some(node) = SocketId::from(sid).node() {
                    *out.entry(node.to_owned()).or_default() += 1;
                }
            }
        };
        match target {
            Target::Socket(sid) => {
                let exists: bool = self
                    .client
                    .exists(self.keys.socket(sid.as_str()))
                    .await
                    .map_err(|e| self.read_error(e))?;
                if exists {
                    count(vec![sid.to_string()]);
                }
            }
            Target::User(u) => count(self.members(&self.keys.user(u.as_str())).await?),
            Target::Users(users) => {
                for u in users {
                    count(self.members(&self.keys.user(u.as_str())).await?);
                }
            }
            Target::Room(r) => count(self.members(&self.keys.room(r.as_str())).await?),
            Target::All => {
                let nodes: Vec<String> = self
                    .client
                    .hkeys(self.keys.nodes())
                    .await
                    .map_err(|e| self.read_error(e))?;
                for node in nodes {
                    let p = self.client.pipeline();
                    for f in Frontend::ALL {
                        let () = p
                            .scard(self.keys.node_sockets(&node, f))
                            .await
                            .map_err(|e| self.read_error(e))?;
                    }
                    let counts: Vec<usize> = p.all().await.map_err(|e| self.read_error(e))?;
                    out.insert(node, counts.iter().sum());
                }
            }
        }
        Ok(out)
    }

    async fn members(&self, set: &str) -> Result<Vec<String>, RegistryError> {
        self.client
            .smembers(set)
            .await
            .map_err(|e| self.read_error(e))
    }

    /// Every node with a live lease, with its connection counts as written when they
    /// changed (exact up to the writer's few milliseconds).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let known: HashMap<String, String> = self
            .client
            .hgetall(self.keys.nodes())
            .await
            .map_err(|e| self.read_error(e))?;
        let mut ids: Vec<(String, u64, Option<String>)> = known
            .into_iter()
            .filter(|(id, _)| self.is_live(id))
            .map(|(id, text)| {
                let entry = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
                let started = entry["started_at"].as_u64().unwrap_or(0);
                (id, started, address_of(&entry))
            })
            .collect();
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let p = self.client.pipeline();
        for (id, _, _) in &ids {
            for f in Frontend::ALL {
                let () = p
                    .scard(self.keys.node_sockets(id, f))
                    .await
                    .map_err(|e| self.read_error(e))?;
            }
        }
        let counts: Vec<u64> = p.all().await.map_err(|e| self.read_error(e))?;
        Ok(ids
            .into_iter()
            .zip(counts.chunks(Frontend::COUNT))
            .map(|((id, started_at, address), counts)| NodeInfo {
                id: NodeId::from(id),
                connections: counts.iter().sum(),
                frontends: Frontend::ALL
                    .iter()
                    .zip(counts)
                    .map(|(f, n)| (f.as_str(), *n))
                    .collect(),
                started_at,
                address,
            })
            .collect())
    }

    /// Where the other nodes reach `node` (`host:port`): `None` when it is not alive,
    /// not registered, or published no address. One HGET; callers cache it.
    pub async fn address(&self, node: &str) -> Result<Option<String>, RegistryError> {
        if !self.is_live(node) {
            return Ok(None);
        }
        let text: Option<String> = self
            .client
            .hget(self.keys.nodes(), node)
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(text
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| address_of(&v)))
    }

    /// Every meta in presence room `room`, of live nodes only, oldest first.
    pub async fn presence(&self, room: &RoomName) -> Result<Vec<Meta>, RegistryError> {
        let map: HashMap<String, String> = self
            .client
            .hgetall(self.keys.presence(room.as_str()))
            .await
            .map_err(|e| self.read_error(e))?;
        let mut metas: Vec<Meta> = map
            .into_iter()
            .filter_map(|(field, text)| {
                let sid = field.strip_prefix("s:")?;
                self.live_socket(sid).then_some(())?;
                serde_json::from_str(&text).ok()
            })
            .collect();
        metas.sort_by(|a, b| (a.online_at, &a.r#ref).cmp(&(b.online_at, &b.r#ref)));
        Ok(metas)
    }

    /// How many members presence room `room` has: one field read, whatever the room's
    /// size. A SIGKILLed node's members count until its cleanup (within the TTL).
    pub async fn presence_count(&self, room: &RoomName) -> Result<usize, RegistryError> {
        let n: Option<i64> = self
            .client
            .hget(self.keys.presence(room.as_str()), "n")
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(n.unwrap_or(0).max(0) as usize)
    }

    /// Stores a final report for any node to read.
    pub async fn put_report(&self, id: &str, report: &Report) {
        let text = serde_json::to_string(report).unwrap_or_default();
        let r: FredResult<()> = self
            .client
            .set(
                self.keys.report(id),
                text,
                Some(Expiration::EX(RETENTION.as_secs() as i64)),
                None,
                false,
            )
            .await;
        if let Err(e) = r {
            self.error("write", &e);
        }
    }

    /// A final report stored by any node.
    pub async fn report(&self, id: &str) -> Result<Option<(State, Report)>, RegistryError> {
        let text: Option<String> = self
            .client
            .get(self.keys.report(id))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(text
            .and_then(|t| serde_json::from_str::<Report>(&t).ok())
            .map(|r| (State::Final, r)))
    }

    /// Takes back every verdict of death: called when this node lost Redis, whose
    /// outage may be why those leases lapsed (the scans made meanwhile saw the shards
    /// that were up, not the nodes that could not reach the others). Scans find the
    /// really dead again once Redis has been back long enough for every live node to
    /// refresh its lease (see [`Registry::scan`]).
    pub fn forget_dead(&self) {
        self.dead.write().clear();
    }

    /// The other nodes that were alive at the last scan.
    pub fn peers(&self) -> Vec<NodeId> {
        self.peers.read().clone()
    }

    /// Records that this node re-subscribed every channel it needs just now.
    pub async fn mark_resubscribed(&self) -> Result<(), RegistryError> {
        let now = crate::id::now_ms().to_string();
        self.client
            .hset::<(), _, _>(self.keys.resubscribed(), (self.node.as_str(), now))
            .await
            .map_err(|e| {
                self.error("write", &e);
                RegistryError::Redis(e)
            })
    }

    /// When each of `nodes` last re-subscribed (ms since the epoch; 0 for never).
    pub async fn resubscribed_at(&self, nodes: &[NodeId]) -> Result<Vec<u64>, RegistryError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<&str> = nodes.iter().map(NodeId::as_str).collect();
        let marks: Vec<Option<u64>> = self
            .client
            .hmget(self.keys.resubscribed(), fields)
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(marks.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// This node's entry in `{p}:nodes`.
    fn node_json(&self) -> String {
        json!({"id": self.node, "started_at": self.started_at, "address": self.address}).to_string()
    }
}

impl crate::delivery::Unreported for Registry {
    /// The target's sockets per node (none known when Redis cannot say, and then the
    /// report cannot either).
    fn per_node<'a>(
        &'a self,
        target: &'a crate::id::Target,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = HashMap<String, usize>> + Send + 'a>>
    {
        Box::pin(async move { self.sockets_per_node(target).await.unwrap_or_default() })
    }
}

/// The `address` of a `{p}:nodes` entry.
fn address_of(entry: &Value) -> Option<String> {
    entry["address"]
        .as_str()
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

/// A socket entry from its hash; `None` when the hash is gone (or was never complete).
pub(crate) fn entry(sid: &SocketId, mut map: HashMap<String, String>) -> Option<Entry> {
    let node = map.remove("node")?;
    let user = map.remove("user").filter(|u| !u.is_empty());
    let transport = match map.get("transport").map(String::as_str) {
        Some("websocket") => "websocket",
        Some("polling") => "polling",
        Some("longpoll") => "longpoll",
        _ => "unknown",
    };
    let mut rooms: Vec<(u64, RoomName)> = map
        .iter()
        .filter_map(|(k, v)| {
            let room = k.strip_prefix(ROOM_FIELD)?;
            Some((v.parse().unwrap_or(0), RoomName::from(room)))
        })
        .collect();
    rooms.sort();
    Some(Entry {
        node: NodeId::from(node),
        info: SocketInfo {
            id: sid.clone(),
            user: user.map(UserId::from),
            frontend: map
                .get("frontend")
                .and_then(|f| Frontend::parse(f))
                .unwrap_or(Frontend::SocketIo),
            namespace: map.remove("namespace").unwrap_or_else(|| "/".into()),
            transport,
            rooms: rooms.into_iter().map(|(_, r)| r).collect(),
            connected_at: map
                .get("connected_at")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            // Profiles live in the presence hashes' metas, not in the socket's hash.
            profiles: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_its_rooms_from_room_fields_in_join_order() {
        let map: HashMap<String, String> = [
            ("node", "gw1"),
            ("user", "alice"),
            ("frontend", "phoenix"),
            ("transport", "websocket"),
            ("connected_at", "5"),
            ("r:b", "7"),
            ("r:a", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let e = entry(&SocketId::from("gw1.x"), map).unwrap();
        assert_eq!(e.node.as_str(), "gw1");
        assert_eq!(e.info.frontend, Frontend::Phoenix);
        assert_eq!(e.info.rooms, vec![RoomName::from("b"), RoomName::from("a")]);
        assert_eq!(e.info.user, Some(UserId::from("alice")));
        assert!(entry(&SocketId::from("gw1.x"), HashMap::new()).is_none());
    }
}
