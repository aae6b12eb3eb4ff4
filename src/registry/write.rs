//! Registry writes: one [`Op`] per change of a socket, applied in order, pipelined;
//! and the reconciliation that makes a node's entries match its hub again after Redis
//! was unreachable, came back empty, or the node's lease lapsed.
//!
//! Every operation is idempotent: set additions and removals, hash fields, and the
//! presence scripts, which change counts only when a connection's meta really enters
//! or leaves. So a reconciliation may write what is already there, and a cleanup may
//! race with nothing worse than doing a removal twice.

use std::collections::{HashMap, HashSet};

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use std::sync::Arc;

use super::{Registry, RegistryError, PIPELINE_CHUNK, ROOM_FIELD};
use crate::hub::SocketInfo;
use crate::id::{Frontend, RoomName, SocketId, UserId};
use crate::presence::{is_presence_room, Change, Diff, Meta, Profile};

/// Adds a connection's meta to a presence room. KEYS[1] the room's hash; ARGV: the
/// meta's field, the meta (JSON), the member's field. Returns the member's connections
/// after the join, or -1 when the meta was already there (nothing changed).
const PRESENCE_JOIN: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
if n == 1 then redis.call('HINCRBY', KEYS[1], 'n', 1) end
return n
"#;

/// Removes a connection's meta from a presence room. KEYS[1] the room's hash; ARGV:
/// the meta's field, the member's field to use if the stored meta names none. The
/// member is the one the stored meta names (a connection may have entered as another
/// member than its user: see `presence::Profile`). Returns `{connections left, the
/// stored meta}`, or -1 when the meta was not there (nothing changed). The last
/// member takes the key.
const PRESENCE_LEAVE: &str = r#"
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
local member = ARGV[2]
local ok, decoded = pcall(cjson.decode, meta)
if ok and type(decoded) == 'table' and type(decoded['key']) == 'string' then
  member = 'u:' .. decoded['key']
end
local n = redis.call('HINCRBY', KEYS[1], member, -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], member)
  if redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then redis.call('DEL', KEYS[1]) end
  n = 0
end
return {n, meta}
"#;

/// Adds (ARGV[2] = `1`) or removes a socket id (ARGV[1]) to or from a room's index
/// set (KEYS[1]) and returns the room's connections after it, or -1 when nothing
/// changed: so exactly one write, cluster-wide, sees a watched room go from 0 to 1
/// and from 1 to 0 (`presence::Watcher::occupancy`). One key, so a Redis Cluster runs
/// it on the room's shard.
pub(super) const ROOM_OCCUPANCY: &str = r#"
local changed
if ARGV[2] == '1' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
end
if changed == 0 then return -1 end
return redis.call('SCARD', KEYS[1])
"#;

/// Removes a socket's hash (KEYS[1]); with recovery on, first keeps it for the window
/// as its session under `{p}:x:p:{pid}` (ARGV: that key's prefix, the socket id, the
/// window in ms, now in ms), unless that session lives on as another socket already
/// (a restored session's pointer names another id). Reads the pid from the hash, so a
/// survivor cleaning up after a dead node keeps its sessions too.
const REMOVE_KEEPING_SESSION: &str = r#"
local pid = redis.call('HGET', KEYS[1], 'pid')
if pid then
  local pk = ARGV[1] .. pid
  local cur = redis.call('HGET', pk, 'sid')
  if (not cur) or cur == ARGV[2] then
    local fields = redis.call('HGETALL', KEYS[1])
    redis.call('DEL', pk)
    redis.call('HSET', pk, unpack(fields))
    redis.call('HSET', pk, 'sid', ARGV[2], 'gone', ARGV[4])
    redis.call('PEXPIRE', pk, ARGV[3])
  end
end
return redis.call('DEL', KEYS[1])
"#;

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum Op {
    /// The socket whole: its hash, its node's set, its user's and rooms' indexes, its
    /// presence.
    Put(SocketInfo),
    /// Joined `room` at `at` (ms since the epoch), as the member `profile` names when
    /// it has one.
    Join {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
        at: u64,
        profile: Option<Arc<Profile>>,
    },
    Leave {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
    },
    Transport {
        socket: SocketId,
        transport: &'static str,
    },
    /// The socket is gone: every entry of it goes.
    Remove {
        socket: SocketId,
        user: Option<UserId>,
        frontend: Frontend,
        rooms: Vec<RoomName>,
        /// Keep its session for recovery (when on): it was lost, not ended.
        keep: bool,
    },
}

/// A script to run once the chunk's plain writes are queued, whose answer says what
/// changed.
enum Scripted {
    Presence {
        room: RoomName,
        meta: Meta,
        join: bool,
        field: String,
    },
    /// A watched room's index (see [`ROOM_OCCUPANCY`]).
    Occupancy {
        room: RoomName,
        socket: SocketId,
        enter: bool,
    },
}

/// Gathers presence changes into per-room diffs, in order. phoenix.js applies a
/// diff's joins before its leaves, so a join that follows a leave in the same room
/// starts a new diff for it.
#[derive(Default)]
struct Diffs {
    out: Vec<Diff>,
    /// Index in `out` of each room's current diff.
    current: HashMap<RoomName, usize>,
}

impl Diffs {
    fn add(&mut self, room: &RoomName, change: Change, join: bool) {
        let i = match self.current.get(room) {
            Some(&i) if !join || self.out[i].leaves.is_empty() => i,
            _ => {
                self.out.push(Diff::new(room));
                self.current.insert(room.clone(), self.out.len() - 1);
                self.out.len() - 1
            }
        };
        if join {
            self.out[i].joins.push(change);
        } else {
            self.out[i].leaves.push(change);
        }
    }
}

/// `EVAL script` on `key`'s slot, by hand: fred pipelines no scripts, and routes a
/// custom command on a Redis Cluster only by an explicit slot (the script's one key's).
pub(super) fn eval(
    script: &'static str,
    key: String,
    args: impl IntoIterator<Item = String>,
) -> (CustomCommand, Vec<String>) {
    eval_owned(script.to_owned(), key, args)
}

/// [`eval`] of a script built at run time.
pub(crate) fn eval_owned(
    script: String,
    key: String,
    args: impl IntoIterator<Item = String>,
) -> (CustomCommand, Vec<String>) {
    let slot = fred::types::Key::from(key.as_str()).cluster_hash();
    let command = CustomCommand::new_static("EVAL", ClusterHash::Custom(slot), false);
    let mut all = vec![script, "1".to_owned(), key];
    all.extend(args);
    (command, all)
}

/// [`eval_owned`] of a script on two keys (a single Redis only: they may live on
/// different shards of a cluster).
pub(crate) fn eval_two(
    script: String,
    first: String,
    second: String,
    args: impl IntoIterator<Item = String>,
) -> (CustomCommand, Vec<String>) {
    let (command, mut all) = eval_owned(script, first, std::iter::once(second).chain(args));
    all[1] = "2".to_owned(); // numkeys: the second key was passed as the first argument
    (command, all)
}

impl Registry {
    /// Applies `ops` in order, in pipelines of at most [`PIPELINE_CHUNK`]; returns the
    /// presence diffs they made (only real changes: a replayed join makes none), and
    /// tells the watcher, if any, what they changed in the rooms it watches.
    pub async fn apply(&self, ops: &[Op]) -> Result<Vec<Diff>, RegistryError> {
        let mut diffs = Diffs::default();
        for chunk in ops.chunks(PIPELINE_CHUNK) {
            self.apply_chunk(chunk, &mut diffs).await.map_err(|e| {
                self.error("write", &e);
                RegistryError::Redis(e)
            })?;
        }
        Ok(diffs.out)
    }

    async fn apply_chunk(&self, ops: &[Op], diffs: &mut Diffs) -> FredResult<()> {
        let p = self.client.pipeline();
        let mut scripted: Vec<Scripted> = Vec::new();
        for op in ops {
            self.queue(&p, op, &mut scripted).await?;
        }
        let _: Vec<Value> = p.all().await?;
        if scripted.is_empty() {
            return Ok(());
        }
        let p = self.client.pipeline();
        for op in &scripted {
            let (command, args) = match op {
                Scripted::Presence {
                    room,
                    meta,
                    join: true,
                    field,
                } => eval(
                    PRESENCE_JOIN,
                    self.keys.presence(room.as_str()),
                    [
                        field.clone(),
                        serde_json::to_string(meta).unwrap_or_default(),
                        format!("u:{}", meta.key),
                    ],
                ),
                Scripted::Presence {
                    room,
                    meta,
                    join: false,
                    field,
                } => eval(
                    PRESENCE_LEAVE,
                    self.keys.presence(room.as_str()),
                    [field.clone(), format!("u:{}", meta.key)],
                ),
                Scripted::Occupancy {
                    room,
                    socket,
                    enter,
                } => eval(
                    ROOM_OCCUPANCY,
                    self.keys.room(room.as_str()),
                    [
                        socket.to_string(),
                        if *enter { "1" } else { "0" }.to_owned(),
                    ],
                ),
            };
            let () = p.custom(command, args).await?;
        }
        let answers: Vec<Value> = p.all().await?;
        let watcher = self.watcher.get();
        for (op, answer) in scripted.into_iter().zip(answers) {
            match op {
                Scripted::Occupancy { room, enter, .. } => {
                    let n = answer.as_i64().unwrap_or(-1);
                    if n < 0 || (enter && n != 1) || (!enter && n != 0) {
                        continue;
                    }
                    tracing::debug!(room = %room, occupied = enter, "room occupancy changed");
                    if let Some(w) = watcher {
                        w.occupancy(&room, enter);
                    }
                }
                Scripted::Presence {
                    room, meta, join, ..
                } => {
                    let (n, meta) = match answer {
                        // A leave answers the meta as stored, with the member it counted.
                        Value::Array(mut pair) if !join && pair.len() == 2 => {
                            let stored = pair
                                .pop()
                                .and_then(|m| m.into_string())
                                .and_then(|m| serde_json::from_str::<Meta>(&m).ok());
                            (pair[0].as_i64().unwrap_or(-1), stored.unwrap_or(meta))
                        }
                        other => (other.as_i64().unwrap_or(-1), meta),
                    };
                    if n < 0 {
                        continue;
                    }
                    let change = if join { "join" } else { "leave" };
                    self.metrics
                        .presence_changes
                        .with_label_values(&[change])
                        .inc();
                    let edge = if join { n == 1 } else { n == 0 };
                    let change = Change { meta, edge };
                    if let Some(w) = watcher.filter(|w| w.watches(room.as_str())) {
                        w.presence(&room, &change, join);
                    }
                    diffs.add(&room, change, join);
                }
            }
        }
        Ok(())
    }

    /// Whether the watcher (if any) watches `room`: its index is then changed by
    /// [`ROOM_OCCUPANCY`] rather than a plain SADD or SREM.
    pub(super) fn watched(&self, room: &RoomName) -> bool {
        self.watcher.get().is_some_and(|w| w.watches(room.as_str()))
    }

    /// Queues `op`'s plain writes on `p` and its scripted changes on `scripted`: for a
    /// join the room's occupancy before its presence, for a leave after, so a watcher
    /// hears a room occupied before its first member arrives and a member leave
    /// before the room is vacated.
    async fn queue(
        &self,
        p: &fred::clients::Pipeline<Client>,
        op: &Op,
        scripted: &mut Vec<Scripted>,
    ) -> FredResult<()> {
        let presence = |room: &RoomName, socket: &SocketId, meta: Meta, join| Scripted::Presence {
            room: room.clone(),
            field: format!("s:{socket}"),
            meta,
            join,
        };
        let leave_meta = |socket: &SocketId, user: Option<&UserId>| {
            Meta::new(socket, user.map(UserId::as_str), 0)
        };
        match op {
            Op::Put(s) => {
                let sid = s.id.as_str();
                let node = s.id.node().unwrap_or_default();
                let mut fields: Vec<(String, String)> = vec![
                    ("node".into(), node.to_owned()),
                    (
                        "user".into(),
                        s.user.as_ref().map(|u| u.to_string()).unwrap_or_default(),
                    ),
                    ("frontend".into(), s.frontend.as_str().to_owned()),
                    ("namespace".into(), s.namespace.clone()),
                    ("transport".into(), s.transport.to_owned()),
                    ("connected_at".into(), s.connected_at.to_string()),
                ];
                for room in &s.rooms {
                    fields.push((format!("{ROOM_FIELD}{room}"), s.connected_at.to_string()));
                }
                if let Some(sessions) = self.sessions() {
                    fields.push(("pid".into(), sessions.pids.pid_of(&s.id)));
                }
                let () = p.hset(self.keys.socket(sid), fields).await?;
                let () = p
                    .sadd(self.keys.node_sockets(node, s.frontend), sid)
                    .await?;
                if let Some(user) = &s.user {
                    let () = p.sadd(self.keys.user(user.as_str()), sid).await?;
                }
                for room in &s.rooms {
                    self.enter_index(p, room, &s.id, scripted).await?;
                    if is_presence_room(room.as_str()) {
                        let profile = s
                            .profiles
                            .iter()
                            .find(|(r, _)| r == room)
                            .map(|(_, p)| &**p);
                        let user = s.user.as_ref().map(UserId::as_str);
                        let meta = Meta::of(&s.id, user, profile, s.connected_at);
                        scripted.push(presence(room, &s.id, meta, true));
                    }
                }
            }
            Op::Join {
                socket,
                user,
                room,
                at,
                profile,
            } => {
                let field = format!("{ROOM_FIELD}{room}");
                let () = p
                    .hset(self.keys.socket(socket.as_str()), (field, at.to_string()))
                    .await?;
                self.enter_index(p, room, socket, scripted).await?;
                if is_presence_room(room.as_str()) {
                    let user = user.as_ref().map(UserId::as_str);
                    let meta = Meta::of(socket, user, profile.as_deref(), *at);
                    scripted.push(presence(room, socket, meta, true));
                }
            }
            Op::Leave { socket, user, room } => {
                let field = format!("{ROOM_FIELD}{room}");
                let () = p.hdel(self.keys.socket(socket.as_str()), field).await?;
                if is_presence_room(room.as_str()) {
                    let meta = leave_meta(socket, user.as_ref());
                    scripted.push(presence(room, socket, meta, false));
                }
                self.leave_index(p, room, socket, scripted).await?;
            }
            Op::Transport { socket, transport } => {
                let () = p
                    .hset(self.keys.socket(socket.as_str()), ("transport", *transport))
                    .await?;
            }
            Op::Remove {
                socket,
                user,
                frontend,
                rooms,
                keep,
            } => {
                let sid = socket.as_str();
                let node = socket.node().unwrap_or_default();
                match self.sessions().filter(|_| *keep) {
                    Some(sessions) => {
                        let (command, args) = eval(
                            REMOVE_KEEPING_SESSION,
                            self.keys.socket(sid),
                            [
                                self.keys.recovery_session(""),
                                sid.to_owned(),
                                sessions.window.as_millis().to_string(),
                                crate::id::now_ms().to_string(),
                            ],
                        );
                        let () = p.custom(command, args).await?;
                    }
                    None => {
                        let () = p.del(self.keys.socket(sid)).await?;
                    }
                }
                let () = p.srem(self.keys.node_sockets(node, *frontend), sid).await?;
                if let Some(user) = user {
                    let () = p.srem(self.keys.user(user.as_str()), sid).await?;
                }
                for room in rooms {
                    if is_presence_room(room.as_str()) {
                        let meta = leave_meta(socket, user.as_ref());
                        scripted.push(presence(room, socket, meta, false));
                    }
                    self.leave_index(p, room, socket, scripted).await?;
                }
            }
        }
        Ok(())
    }

    /// Adds `socket` to `room`'s index: a plain SADD, or the occupancy script for a
    /// watched room.
    async fn enter_index(
        &self,
        p: &fred::clients::Pipeline<Client>,
        room: &RoomName,
        socket: &SocketId,
        scripted: &mut Vec<Scripted>,
    ) -> FredResult<()> {
        if self.watched(room) {
            scripted.push(Scripted::Occupancy {
                room: room.clone(),
                socket: socket.clone(),
                enter: true,
            });
            return Ok(());
        }
        p.sadd(self.keys.room(room.as_str()), socket.as_str()).await
    }

    /// Removes `socket` from `room`'s index (see [`Registry::enter_index`]).
    async fn leave_index(
        &self,
        p: &fred::clients::Pipeline<Client>,
        room: &RoomName,
        socket: &SocketId,
        scripted: &mut Vec<Scripted>,
    ) -> FredResult<()> {
        if self.watched(room) {
            scripted.push(Scripted::Occupancy {
                room: room.clone(),
                socket: socket.clone(),
                enter: false,
            });
            return Ok(());
        }
        p.srem(self.keys.room(room.as_str()), socket.as_str()).await
    }

    /// Removes `sids` from watched room `room`'s index through the occupancy script,
    /// telling the watcher if that vacated the room (a reader that found sockets whose
    /// hash is gone may be the one write that sees it).
    pub(super) async fn forget_in_index(
        &self,
        room: &RoomName,
        sids: Vec<String>,
    ) -> FredResult<()> {
        let p = self.client.pipeline();
        for sid in sids {
            let (command, args) = eval(
                ROOM_OCCUPANCY,
                self.keys.room(room.as_str()),
                [sid, "0".into()],
            );
            let () = p.custom(command, args).await?;
        }
        let answers: Vec<Value> = p.all().await?;
        if answers.iter().any(|a| a.as_i64() == Some(0)) {
            tracing::debug!(room = %room, occupied = false, "room occupancy changed");
            if let Some(w) = self.watcher.get() {
                w.occupancy(room, false);
            }
        }
        Ok(())
    }

    /// The socket ids registered for `node`, with the frontend set each was in.
    pub(crate) async fn node_sockets(
        &self,
        node: &str,
    ) -> Result<Vec<(String, Frontend)>, fred::error::Error> {
        let p = self.client.pipeline();
        for f in Frontend::ALL {
            let () = p.smembers(self.keys.node_sockets(node, f)).await?;
        }
        let sets: Vec<Vec<String>> = p.all().await?;
        Ok(Frontend::ALL
            .into_iter()
            .zip(sets)
            .flat_map(|(f, sids)| sids.into_iter().map(move |s| (s, f)))
            .collect())
    }

    /// The removals of `sids` (of any node), read from their hashes: what a socket
    /// that is gone leaves behind.
    pub(crate) async fn removals(
        &self,
        sids: Vec<(String, Frontend)>,
    ) -> Result<Vec<Op>, fred::error::Error> {
        let ids: Vec<String> = sids.iter().map(|(s, _)| s.clone()).collect();
        let maps = self.hashes(&ids).await?;
        Ok(sids
            .into_iter()
            .zip(maps)
            .map(|((sid, frontend), map)| {
                let socket = SocketId::from(sid);
                match super::entry(&socket, map) {
                    Some(e) => Op::Remove {
                        socket,
                        user: e.info.user,
                        frontend: e.info.frontend,
                        rooms: e.info.rooms,
                        // A dead node's sockets, or ones their node lost track of:
                        // their clients may come back.
                        keep: true,
                    },
                    None => Op::Remove {
                        socket,
                        user: None,
                        frontend,
                        rooms: Vec::new(),
                        keep: true,
                    },
                }
            })
            .collect())
    }

    /// Makes this node's entries match `sockets`, its hub's view: removes entries of
    /// sockets it no longer has (a previous run's, or ones whose removal was lost while
    /// Redis was unreachable), drops rooms they left, and writes every socket whole.
    /// O(connections) — only after a reconnect, a lost lease or at start. Holds the
    /// node's cleanup lock meanwhile, so a survivor that thought this node dead does
    /// not remove what it writes.
    pub async fn reconcile(&self, sockets: Vec<SocketInfo>) -> Result<Vec<Diff>, RegistryError> {
        let locked = self.lock_cleanup(self.node.as_str(), true).await?;
        let result = self.reconcile_locked(sockets).await;
        if locked {
            self.unlock_cleanup(self.node.as_str()).await;
        }
        result
    }

    async fn reconcile_locked(&self, sockets: Vec<SocketInfo>) -> Result<Vec<Diff>, RegistryError> {
        let fail = |e: fred::error::Error| {
            self.error("refresh", &e);
            RegistryError::Redis(e)
        };
        let current: HashSet<&str> = sockets.iter().map(|s| s.id.as_str()).collect();
        let registered = self.node_sockets(self.node.as_str()).await.map_err(fail)?;
        let stale: Vec<(String, Frontend)> = registered
            .into_iter()
            .filter(|(sid, _)| !current.contains(sid.as_str()))
            .collect();
        let mut ops = self.removals(stale).await.map_err(fail)?;
        let ids: Vec<String> = sockets.iter().map(|s| s.id.to_string()).collect();
        let maps = self.hashes(&ids).await.map_err(fail)?;
        for (s, map) in sockets.into_iter().zip(maps) {
            if let Some(old) = super::entry(&s.id, map) {
                for room in old.info.rooms.iter().filter(|r| !s.rooms.contains(r)) {
                    ops.push(Op::Leave {
                        socket: s.id.clone(),
                        user: old.info.user.clone(),
                        room: room.clone(),
                    });
                }
            }
            ops.push(Op::Put(s));
        }
        let n = ops.len();
        let diffs = self.apply(&ops).await?;
        self.metrics.registry_reconciles.inc();
        tracing::info!(ops = n, "registry reconciled with the hub");
        Ok(diffs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Meta;

    fn change(key: &str) -> Change {
        Change {
            meta: Meta {
                key: key.into(),
                r#ref: key.into(),
                online_at: 0,
                info: None,
            },
            edge: true,
        }
    }

    #[test]
    fn a_join_after_a_leave_in_one_room_starts_a_new_diff() {
        let mut d = Diffs::default();
        let a = RoomName::from("presence-a");
        let b = RoomName::from("presence-b");
        d.add(&a, change("x"), true);
        d.add(&a, change("y"), false);
        d.add(&b, change("z"), true);
        d.add(&a, change("x"), true);
        assert_eq!(d.out.len(), 3);
        assert_eq!(
            (d.out[0].joins.len(), d.out[0].leaves.len()),
            (1, 1),
            "a leave after a join stays in the diff: joins apply first"
        );
        assert_eq!(d.out[1].room, "presence-b");
        assert_eq!(
            (d.out[2].room.as_str(), d.out[2].joins.len()),
            ("presence-a", 1)
        );
    }
}
