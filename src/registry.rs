//! The cluster registry in Redis: which sockets exist, on which node, for which user
//! and in which rooms, and which nodes are alive — so the HTTP API of any node can
//! answer for connections on every node.
//!
//! Keys (prefix `p`, default `pushgate`):
//!
//! - `{p}:s:{sid}` — hash: `node`, `user`, `namespace`, `transport`, `rooms` (JSON
//!   array), `frontend`, `connected_at`.
//! - `{p}:us:{user}` — set of the user's socket ids, on every node.
//! - `{p}:rs:{room}` — set of the room's socket ids, on every node (the room index that
//!   `GET /v1/rooms/{room}` reads).
//! - `{p}:nodes` — hash: node id → JSON `{id, connections, started_at, heartbeat_at}`.
//! - `{p}:push:{id}` — a final report (JSON), kept for [`crate::delivery::RETENTION`].
//!
//! Every key of a socket has a TTL that its owner refreshes every third of the TTL
//! (pipelined); a node that dies without cleaning up (SIGKILL) leaves entries that
//! vanish within one TTL. Index sets are shared between nodes, so a dead node's
//! members can outlive it there: readers keep only members whose `{p}:s:` hash still
//! exists (and remove the others), and skip nodes whose heartbeat is older than the TTL.
//!
//! Only the bus's sync task writes, in the order the hub reported changes; any task
//! may read.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use serde_json::{json, Value};

use crate::delivery::{Report, State, RETENTION};
use crate::hub::{Hub, SocketChange, SocketInfo};
use crate::id::{NodeId, RoomName, SocketId, UserId};
use crate::metrics::Metrics;

/// The default registry TTL: a SIGKILLed node's entries vanish within 30 s, while the
/// refresh every 10 s costs one pipelined round of writes per node.
pub const DEFAULT_REGISTRY_TTL_MS: u64 = 30_000;

/// Why a registry read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Redis is unavailable")]
    Redis(#[from] fred::error::Error),
}

/// Sockets per pipeline when writing the registry. One pipeline for every socket of
/// a node (tens of thousands) makes fred encode and buffer every command and collect
/// every reply at once, and the allocator keeps that peak (measured: ~7 KB per
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
    pub fn socket(&self, sid: &str) -> String {
        format!("{}:s:{sid}", self.prefix)
    }
    pub fn user(&self, user: &str) -> String {
        format!("{}:us:{user}", self.prefix)
    }
    pub fn room(&self, room: &str) -> String {
        format!("{}:rs:{room}", self.prefix)
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub fn report(&self, push: &str) -> String {
        format!("{}:push:{push}", self.prefix)
    }
}

/// A socket as the registry knows it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub node: NodeId,
    pub info: SocketInfo,
}

pub struct Registry {
    client: Client,
    keys: Keys,
    node: NodeId,
    ttl: Duration,
    started_at: u64,
    hub: std::sync::Arc<Hub>,
    metrics: std::sync::Arc<Metrics>,
}

impl Registry {
    pub fn new(
        client: Client,
        keys: Keys,
        node: NodeId,
        ttl: Duration,
        started_at: u64,
        hub: std::sync::Arc<Hub>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            keys,
            node,
            ttl,
            started_at,
            hub,
            metrics,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    fn error(&self, op: &'static str, e: &fred::error::Error) {
        self.metrics.registry_errors.with_label_values(&[op]).inc();
        tracing::debug!(op, error = %e, "registry command failed");
    }

    /// Writes one socket's entry and index memberships, with fresh TTLs.
    async fn put(&self, p: &fred::clients::Pipeline<Client>, s: &SocketInfo) -> FredResult<()> {
        let key = self.keys.socket(s.id.as_str());
        let rooms = serde_json::to_string(&s.rooms).unwrap_or_else(|_| "[]".into());
        let fields: Vec<(&str, String)> = vec![
            ("node", self.node.to_string()),
            (
                "user",
                s.user.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            ),
            ("namespace", s.namespace.clone()),
            ("transport", s.transport.to_owned()),
            ("rooms", rooms),
            ("frontend", s.frontend.as_str().to_owned()),
            ("connected_at", s.connected_at.to_string()),
        ];
        let ttl = self.ttl_ms();
        let () = p.hset(&key, fields).await?;
        let () = p.pexpire(&key, ttl, None).await?;
        if let Some(user) = &s.user {
            let k = self.keys.user(user.as_str());
            let () = p.sadd(&k, s.id.as_str()).await?;
            let () = p.pexpire(&k, ttl, None).await?;
        }
        for room in &s.rooms {
            let k = self.keys.room(room.as_str());
            let () = p.sadd(&k, s.id.as_str()).await?;
            let () = p.pexpire(&k, ttl, None).await?;
        }
        Ok(())
    }

    /// Applies the hub's socket changes, in order, in pipelines of at most
    /// [`PIPELINE_CHUNK`] changes.
    pub async fn apply(&self, changes: Vec<SocketChange>) {
        let mut changes = changes.into_iter().peekable();
        while changes.peek().is_some() {
            let chunk: Vec<SocketChange> = changes.by_ref().take(PIPELINE_CHUNK).collect();
            self.apply_chunk(chunk).await;
        }
    }

    async fn apply_chunk(&self, changes: Vec<SocketChange>) {
        let p = self.client.pipeline();
        let queued: FredResult<()> = async {
            for change in changes {
                match change {
                    SocketChange::Upserted(sid) => {
                        // The hub's current view; a socket already gone is skipped
                        // (its Removed follows).
                        if let Some(info) = self.hub.socket(&sid) {
                            self.put(&p, &info).await?;
                        }
                    }
                    SocketChange::Joined(sid, room) => {
                        if let Some(info) = self.hub.socket(&sid) {
                            self.put(&p, &info).await?;
                        } else {
                            let () = p.srem(self.keys.room(room.as_str()), sid.as_str()).await?;
                        }
                    }
                    SocketChange::Left(sid, room) => {
                        let () = p.srem(self.keys.room(room.as_str()), sid.as_str()).await?;
                        if let Some(info) = self.hub.socket(&sid) {
                            self.put(&p, &info).await?;
                        }
                    }
                    SocketChange::Removed {
                        socket,
                        user,
                        rooms,
                    } => {
                        let () = p.del(self.keys.socket(socket.as_str())).await?;
                        if let Some(user) = user {
                            let () = p
                                .srem(self.keys.user(user.as_str()), socket.as_str())
                                .await?;
                        }
                        for room in rooms {
                            let () = p
                                .srem(self.keys.room(room.as_str()), socket.as_str())
                                .await?;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        let result = match queued {
            Ok(()) => p.all::<fred::types::Value>().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.error("write", &e);
        }
    }

    /// The node's heartbeat and a rewrite of every local socket with fresh TTLs. Also
    /// what re-registers everything after Redis came back (possibly empty).
    pub async fn refresh(&self) -> Result<usize, RegistryError> {
        let sockets = self.hub.sockets();
        let now = crate::id::now_ms();
        let heartbeat = json!({
            "id": self.node,
            "connections": self.metrics.connections_total(),
            "started_at": self.started_at,
            "heartbeat_at": now,
        })
        .to_string();
        let result: FredResult<()> = async {
            let p = self.client.pipeline();
            let () = p
                .hset(self.keys.nodes(), vec![(self.node.to_string(), heartbeat)])
                .await?;
            let () = p.pexpire(self.keys.nodes(), self.ttl_ms(), None).await?;
            p.all::<fred::types::Value>().await.map(|_| ())?;
            for chunk in sockets.chunks(PIPELINE_CHUNK) {
                let p = self.client.pipeline();
                for s in chunk {
                    self.put(&p, s).await?;
                }
                p.all::<fred::types::Value>().await.map(|_| ())?;
            }
            Ok(())
        }
        .await;
        result.map_err(|e| {
            self.error("refresh", &e);
            RegistryError::Redis(e)
        })?;
        Ok(sockets.len())
    }

    /// Takes this node out of `{p}:nodes` (clean shutdown; sockets were removed one by
    /// one as they closed).
    pub async fn leave(&self) {
        let r: FredResult<i64> = self
            .client
            .hdel(self.keys.nodes(), self.node.as_str())
            .await;
        if let Err(e) = r {
            self.error("write", &e);
        }
    }

    fn read_error(&self, e: fred::error::Error) -> RegistryError {
        self.error("read", &e);
        RegistryError::Redis(e)
    }

    /// One socket on any node.
    pub async fn socket(&self, sid: &SocketId) -> Result<Option<Entry>, RegistryError> {
        let map: HashMap<String, String> = self
            .client
            .hgetall(self.keys.socket(sid.as_str()))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(entry(sid, map))
    }

    /// Reads the entries of `members`, dropping (and removing from `index`) those whose
    /// socket key expired.
    async fn entries(
        &self,
        index: &str,
        members: Vec<String>,
    ) -> Result<Vec<Entry>, RegistryError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let p = self.client.pipeline();
        for m in &members {
            let () = p
                .hgetall(self.keys.socket(m))
                .await
                .map_err(|e| self.read_error(e))?;
        }
        let maps: Vec<HashMap<String, String>> = if members.len() == 1 {
            vec![p.last().await.map_err(|e| self.read_error(e))?]
        } else {
            p.all().await.map_err(|e| self.read_error(e))?
        };
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (m, map) in members.into_iter().zip(maps) {
            match entry(&SocketId::from(m.as_str()), map) {
                Some(e) => out.push(e),
                None => stale.push(m),
            }
        }
        if !stale.is_empty() {
            let r: FredResult<i64> = self.client.srem(index, stale).await;
            if let Err(e) = r {
                self.error("write", &e);
            }
        }
        Ok(out)
    }

    /// Every socket of `user` on any node.
    pub async fn user(&self, user: &UserId) -> Result<Vec<Entry>, RegistryError> {
        self.indexed(self.keys.user(user.as_str())).await
    }

    /// Every socket in `room` on any node.
    pub async fn room(&self, room: &RoomName) -> Result<Vec<Entry>, RegistryError> {
        self.indexed(self.keys.room(room.as_str())).await
    }

    /// The live entries of the sockets listed in the index set `index`.
    async fn indexed(&self, index: String) -> Result<Vec<Entry>, RegistryError> {
        let members: Vec<String> = self
            .client
            .smembers(&index)
            .await
            .map_err(|e| self.read_error(e))?;
        self.entries(&index, members).await
    }

    /// The names of the rooms that start with `prefix` and have an index entry on some
    /// node (a room index may outlive its last member by up to one TTL; readers of
    /// its members drop those). A SCAN over the keyspace: for admin calls such as
    /// Pusher's channel listing, never for a push.
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
        let keys: Vec<fred::types::Key> = self
            .client
            .scan_buffered(pattern, Some(500), None)
            .try_collect()
            .await
            .map_err(|e| self.read_error(e))?;
        let mut rooms: Vec<RoomName> = keys
            .iter()
            .filter_map(|k| k.as_str()?.strip_prefix(index.as_str()).map(RoomName::from))
            .collect();
        rooms.sort();
        rooms.dedup();
        Ok(rooms)
    }

    /// Every node whose heartbeat is younger than the TTL.
    pub async fn nodes(&self) -> Result<Vec<Value>, RegistryError> {
        let map: HashMap<String, String> = self
            .client
            .hgetall(self.keys.nodes())
            .await
            .map_err(|e| self.read_error(e))?;
        let now = crate::id::now_ms();
        let ttl = self.ttl.as_millis() as u64;
        let mut out: Vec<Value> = Vec::new();
        for (node, text) in map {
            let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let beat = v["heartbeat_at"].as_u64().unwrap_or(0);
            if now.saturating_sub(beat) > ttl {
                let _: FredResult<i64> = self.client.hdel(self.keys.nodes(), node).await;
                continue;
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("heartbeat_at");
            }
            out.push(v);
        }
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(out)
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
}

fn entry(sid: &SocketId, mut map: HashMap<String, String>) -> Option<Entry> {
    let node = map.remove("node")?;
    let user = map.remove("user").filter(|u| !u.is_empty());
    let rooms: Vec<String> = map
        .remove("rooms")
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_default();
    let transport = match map.get("transport").map(String::as_str) {
        Some("websocket") => "websocket",
        Some("polling") => "polling",
        Some("longpoll") => "longpoll",
        _ => "unknown",
    };
    Some(Entry {
        node: NodeId::from(node),
        info: SocketInfo {
            id: sid.clone(),
            user: user.map(UserId::from),
            frontend: map
                .get("frontend")
                .and_then(|f| crate::id::Frontend::parse(f))
                .unwrap_or(crate::id::Frontend::SocketIo),
            namespace: map.remove("namespace").unwrap_or_else(|| "/".into()),
            transport,
            rooms: rooms.into_iter().map(RoomName::from).collect(),
            connected_at: map
                .get("connected_at")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        },
    })
}
