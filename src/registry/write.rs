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

use super::{Registry, RegistryError, PIPELINE_CHUNK, ROOM_FIELD};
use crate::hub::SocketInfo;
use crate::id::{Frontend, RoomName, SocketId, UserId};
use crate::presence::{is_presence_room, Change, Diff, Meta};

/// Adds a connection's meta to a presence room. KEYS[1] the room's hash; ARGV: the
/// meta's field, the meta, the member's field. Returns the member's connections after
/// the join, or -1 when the meta was already there (nothing changed).
const PRESENCE_JOIN: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
if n == 1 then redis.call('HINCRBY', KEYS[1], 'n', 1) end
return n
"#;

/// Removes a connection's meta from a presence room. KEYS[1] the room's hash; ARGV:
/// the meta's field, the member's field. Returns the member's connections left, or -1
/// when the meta was not there (nothing changed). The last member takes the key.
const PRESENCE_LEAVE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[2])
  if redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then redis.call('DEL', KEYS[1]) end
  return 0
end
return n
"#;

/// One change to the registry.
#[derive(Debug, Clone)]
pub enum Op {
    /// The socket whole: its hash, its node's set, its user's and rooms' indexes, its
    /// presence.
    Put(SocketInfo),
    /// Joined `room` at `at` (ms since the epoch).
    Join {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
        at: u64,
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
    },
}

/// A presence script to run once the chunk's plain writes are queued.
struct PresenceOp {
    room: RoomName,
    meta: Meta,
    join: bool,
    field: String,
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

impl Registry {
    /// Applies `ops` in order, in pipelines of at most [`PIPELINE_CHUNK`]; returns the
    /// presence diffs they made (only real changes: a replayed join makes none).
    pub async fn apply(&self, ops: Vec<Op>) -> Result<Vec<Diff>, RegistryError> {
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
        let mut presence: Vec<PresenceOp> = Vec::new();
        for op in ops {
            self.queue(&p, op, &mut presence).await?;
        }
        let _: Vec<Value> = p.all().await?;
        if presence.is_empty() {
            return Ok(());
        }
        let p = self.client.pipeline();
        for op in &presence {
            let key = self.keys.presence(op.room.as_str());
            // EVAL by hand: fred pipelines no scripts, and routes a custom command on a
            // Redis Cluster only by an explicit slot (the script's one key's).
            let slot = fred::types::Key::from(key.as_str()).cluster_hash();
            let eval = CustomCommand::new_static("EVAL", ClusterHash::Custom(slot), false);
            let member = format!("u:{}", op.meta.key);
            let args: Vec<String> = if op.join {
                let meta = serde_json::to_string(&op.meta).unwrap_or_default();
                vec![
                    PRESENCE_JOIN.into(),
                    "1".into(),
                    key,
                    op.field.clone(),
                    meta,
                    member,
                ]
            } else {
                vec![
                    PRESENCE_LEAVE.into(),
                    "1".into(),
                    key,
                    op.field.clone(),
                    member,
                ]
            };
            let () = p.custom(eval.clone(), args).await?;
        }
        let counts: Vec<i64> = p.all().await?;
        for (op, n) in presence.into_iter().zip(counts) {
            if n < 0 {
                continue;
            }
            let change = if op.join { "join" } else { "leave" };
            self.metrics
                .presence_changes
                .with_label_values(&[change])
                .inc();
            let edge = if op.join { n == 1 } else { n == 0 };
            diffs.add(
                &op.room,
                Change {
                    meta: op.meta,
                    edge,
                },
                op.join,
            );
        }
        Ok(())
    }

    /// Queues `op`'s plain writes on `p` and its presence changes on `presence`.
    async fn queue(
        &self,
        p: &fred::clients::Pipeline<Client>,
        op: &Op,
        presence: &mut Vec<PresenceOp>,
    ) -> FredResult<()> {
        let presence_op =
            |room: &RoomName, socket: &SocketId, user: Option<&UserId>, at, join| PresenceOp {
                room: room.clone(),
                meta: Meta::new(socket, user.map(UserId::as_str), at),
                join,
                field: format!("s:{socket}"),
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
                let () = p.hset(self.keys.socket(sid), fields).await?;
                let () = p
                    .sadd(self.keys.node_sockets(node, s.frontend), sid)
                    .await?;
                if let Some(user) = &s.user {
                    let () = p.sadd(self.keys.user(user.as_str()), sid).await?;
                }
                for room in &s.rooms {
                    let () = p.sadd(self.keys.room(room.as_str()), sid).await?;
                    if is_presence_room(room.as_str()) {
                        presence.push(presence_op(
                            room,
                            &s.id,
                            s.user.as_ref(),
                            s.connected_at,
                            true,
                        ));
                    }
                }
            }
            Op::Join {
                socket,
                user,
                room,
                at,
            } => {
                let field = format!("{ROOM_FIELD}{room}");
                let () = p
                    .hset(self.keys.socket(socket.as_str()), (field, at.to_string()))
                    .await?;
                let () = p
                    .sadd(self.keys.room(room.as_str()), socket.as_str())
                    .await?;
                if is_presence_room(room.as_str()) {
                    presence.push(presence_op(room, socket, user.as_ref(), *at, true));
                }
            }
            Op::Leave { socket, user, room } => {
                let field = format!("{ROOM_FIELD}{room}");
                let () = p.hdel(self.keys.socket(socket.as_str()), field).await?;
                let () = p
                    .srem(self.keys.room(room.as_str()), socket.as_str())
                    .await?;
                if is_presence_room(room.as_str()) {
                    presence.push(presence_op(room, socket, user.as_ref(), 0, false));
                }
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
            } => {
                let sid = socket.as_str();
                let node = socket.node().unwrap_or_default();
                let () = p.del(self.keys.socket(sid)).await?;
                let () = p.srem(self.keys.node_sockets(node, *frontend), sid).await?;
                if let Some(user) = user {
                    let () = p.srem(self.keys.user(user.as_str()), sid).await?;
                }
                for room in rooms {
                    let () = p.srem(self.keys.room(room.as_str()), sid).await?;
                    if is_presence_room(room.as_str()) {
                        presence.push(presence_op(room, socket, user.as_ref(), 0, false));
                    }
                }
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
                    },
                    None => Op::Remove {
                        socket,
                        user: None,
                        frontend,
                        rooms: Vec::new(),
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
        let diffs = self.apply(ops).await?;
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
