//! Presence on a single node: kept in memory, fed by the hub's socket changes.
//!
//! [`LocalPresence`] is the hub's [`Observer`] on a node without Redis. It keeps, for
//! each presence room, every connection's [`Meta`] and every member's connection
//! count, turns each change into a [`Diff`] and hands it to the hub for the room's
//! members at once. With a [`Watcher`], it also counts the connections of each watched
//! room (of any kind, not only presence rooms) and tells the watcher when one gets its
//! first or loses its last, and tells it every presence change.
//!
//! The rooms are sharded by name; a shard's lock is held while a change is applied
//! *and* its diff is delivered, so two changes to one room reach every member in the
//! order they were applied (a leave overtaking its join would leave a ghost member in
//! a client's list). Delivery only queues frames and never awaits, and the hub calls
//! observers outside its own locks, so the order is always presence shard → hub shard
//! → outbox.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{
    is_presence_room, Change, Diff, Meta, PresenceError, PresenceFuture, Presences, Profile,
    Watcher,
};
use crate::hub::{Hub, Observer, SocketChange, Topic};
use crate::id::{RoomName, SocketId, UserId};
use crate::metrics::Metrics;

/// Enough shards that unrelated rooms rarely share a lock.
const SHARDS: usize = 16;

#[derive(Default)]
struct Room {
    metas: HashMap<SocketId, Meta>,
    /// Connections per member key.
    members: HashMap<String, usize>,
}

pub struct LocalPresence {
    shards: Box<[Mutex<HashMap<RoomName, Room>>]>,
    /// Connections per watched room, sharded like `shards` (only with a watcher).
    occupancy: Box<[Mutex<HashMap<RoomName, usize>>]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    watcher: std::sync::OnceLock<Arc<dyn Watcher>>,
}

impl LocalPresence {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            occupancy: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            metrics,
            watcher: std::sync::OnceLock::new(),
        }
    }

    /// Tells `watcher` of every change to the rooms it watches from now on (set once,
    /// before connections arrive; a second call is ignored).
    pub fn watch(&self, watcher: Arc<dyn Watcher>) {
        let _ = self.watcher.set(watcher);
    }

    fn shard(&self, room: &str) -> &Mutex<HashMap<RoomName, Room>> {
        &self.shards[self.hasher.hash_one(room) as usize % self.shards.len()]
    }

    /// Counts a connection into (`+1`) or out of a watched room and tells the watcher
    /// when the room gets its first or loses its last. The shard lock is held while it
    /// tells, so the watcher hears one room's changes in order.
    fn occupy(&self, room: &RoomName, entered: bool) {
        let Some(w) = self.watcher.get().filter(|w| w.watches(room.as_str())) else {
            return;
        };
        let i = self.hasher.hash_one(room.as_str()) as usize % self.occupancy.len();
        let mut rooms = self.occupancy[i].lock();
        if entered {
            let n = rooms.entry(room.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                w.occupancy(room, true);
            }
        } else if let Some(n) = rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                rooms.remove(room);
                w.occupancy(room, false);
            }
        }
    }

    fn enter(
        &self,
        hub: &Hub,
        room: &RoomName,
        socket: &SocketId,
        user: Option<&UserId>,
        profile: Option<&Profile>,
        at: u64,
    ) {
        let meta = Meta::of(socket, user.map(UserId::as_str), profile, at);
        let mut shard = self.shard(room.as_str()).lock();
        let state = shard.entry(room.clone()).or_default();
        if state.metas.contains_key(socket) {
            return;
        }
        let n = state.members.entry(meta.key.clone()).or_insert(0);
        *n += 1;
        let edge = *n == 1;
        state.metas.insert(socket.clone(), meta.clone());
        let mut diff = Diff::new(room);
        diff.joins.push(Change { meta, edge });
        if let Some(w) = self.watcher.get() {
            if w.watches(room.as_str()) {
                w.presence(room, &diff.joins[0], true);
            }
        }
        self.deliver(hub, &diff, "join");
    }

    fn exit(&self, hub: &Hub, room: &RoomName, socket: &SocketId) {
        let mut shard = self.shard(room.as_str()).lock();
        let Some(state) = shard.get_mut(room) else {
            return;
        };
        let Some(meta) = state.metas.remove(socket) else {
            return;
        };
        let mut edge = false;
        if let Some(n) = state.members.get_mut(&meta.key) {
            *n -= 1;
            if *n == 0 {
                state.members.remove(&meta.key);
                edge = true;
            }
        }
        if state.metas.is_empty() {
            shard.remove(room);
        }
        let mut diff = Diff::new(room);
        diff.leaves.push(Change { meta, edge });
        if let Some(w) = self.watcher.get() {
            if w.watches(room.as_str()) {
                w.presence(room, &diff.leaves[0], false);
            }
        }
        self.deliver(hub, &diff, "leave");
    }

    /// Delivers under the caller's shard lock (see the module doc for why).
    fn deliver(&self, hub: &Hub, diff: &Diff, change: &'static str) {
        self.metrics
            .presence_changes
            .with_label_values(&[change])
            .inc();
        let n = hub.deliver_presence(diff);
        self.metrics.presence_deliveries.inc_by(n as u64);
        tracing::debug!(room = %diff.room, change, members = n, "presence changed");
    }
}

impl Observer for LocalPresence {
    fn interest_changed(&self, _topic: &Topic) {}

    fn socket_changed(&self, hub: &Hub, change: SocketChange) {
        match change {
            SocketChange::Registered(info) => {
                for room in &info.rooms {
                    self.occupy(room, true);
                    if is_presence_room(room.as_str()) {
                        let profile = info
                            .profiles
                            .iter()
                            .find(|(r, _)| r == room)
                            .map(|(_, p)| &**p);
                        let user = info.user.as_ref();
                        self.enter(hub, room, &info.id, user, profile, info.connected_at);
                    }
                }
            }
            SocketChange::Joined {
                socket,
                user,
                room,
                at,
                profile,
            } => {
                self.occupy(&room, true);
                if is_presence_room(room.as_str()) {
                    self.enter(hub, &room, &socket, user.as_ref(), profile.as_deref(), at)
                }
            }
            SocketChange::Left { socket, room, .. } => {
                if is_presence_room(room.as_str()) {
                    self.exit(hub, &room, &socket)
                }
                self.occupy(&room, false);
            }
            SocketChange::Removed { socket, rooms, .. } => {
                for room in &rooms {
                    if is_presence_room(room.as_str()) {
                        self.exit(hub, room, &socket);
                    }
                    self.occupy(room, false);
                }
            }
            // A socket that got its user keeps the metas it entered its rooms with, as
            // the registry keeps them in a cluster.
            SocketChange::Transport { .. } | SocketChange::UserSet(_) => {}
        }
    }

    fn tracks_interest(&self) -> bool {
        false
    }
}

impl Presences for LocalPresence {
    fn state<'a>(&'a self, room: &'a RoomName) -> PresenceFuture<'a, Vec<Meta>> {
        let result = if is_presence_room(room.as_str()) {
            let shard = self.shard(room.as_str()).lock();
            let mut metas: Vec<Meta> = shard
                .get(room)
                .map(|r| r.metas.values().cloned().collect())
                .unwrap_or_default();
            metas.sort_by_key(|m| m.online_at);
            Ok(metas)
        } else {
            Err(PresenceError::NotTracked)
        };
        Box::pin(std::future::ready(result))
    }

    fn count<'a>(&'a self, room: &'a RoomName) -> PresenceFuture<'a, usize> {
        let result = if is_presence_room(room.as_str()) {
            let shard = self.shard(room.as_str()).lock();
            Ok(shard.get(room).map_or(0, |r| r.members.len()))
        } else {
            Err(PresenceError::NotTracked)
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codecs, PushCodec};
    use crate::connection::{Frame, Outbox, Queued};
    use crate::hub::{Connection, Member};
    use crate::id::{Frontend, NodeId};
    use crate::push::Push;

    struct TestConn(Outbox);
    impl Connection for TestConn {
        fn outbox(&self) -> &Outbox {
            &self.0
        }
        fn disconnect(&self, _: &SocketId) {}
        fn transport(&self) -> &'static str {
            "test"
        }
    }

    /// Renders a diff as "+key!" / "-key" per change ("!" marks an edge).
    struct Render;
    impl PushCodec for Render {
        fn frontend(&self) -> Frontend {
            Frontend::Phoenix
        }
        fn check(&self, _: &Push) -> Result<(), String> {
            Ok(())
        }
        fn encode(&self, _: &Push, _: Option<u64>) -> Vec<Frame> {
            Vec::new()
        }
        fn encode_presence(&self, diff: &Diff) -> Vec<Frame> {
            let mut s = String::new();
            for c in &diff.joins {
                s += &format!("+{}{}", c.meta.key, if c.edge { "!" } else { "" });
            }
            for c in &diff.leaves {
                s += &format!("-{}{}", c.meta.key, if c.edge { "!" } else { "" });
            }
            vec![Frame::text(s)]
        }
    }

    /// Renders like [`Render`] for Pusher members, who are not told of their own join.
    struct RenderOthers;
    impl PushCodec for RenderOthers {
        fn frontend(&self) -> Frontend {
            Frontend::Pusher
        }
        fn check(&self, _: &Push) -> Result<(), String> {
            Ok(())
        }
        fn encode(&self, _: &Push, _: Option<u64>) -> Vec<Frame> {
            Vec::new()
        }
        fn encode_presence(&self, diff: &Diff) -> Vec<Frame> {
            Render.encode_presence(diff)
        }
        fn presence_tells_own_join(&self) -> bool {
            false
        }
    }

    /// Records what a watcher hears, as "+room" / "-room" and "join key!" lines.
    #[derive(Default)]
    struct Heard(parking_lot::Mutex<Vec<String>>);
    impl Watcher for Heard {
        fn watches(&self, room: &str) -> bool {
            !room.starts_with("unwatched")
        }
        fn occupancy(&self, room: &RoomName, occupied: bool) {
            let sign = if occupied { "+" } else { "-" };
            self.0.lock().push(format!("{sign}{room}"));
        }
        fn presence(&self, _room: &RoomName, change: &Change, join: bool) {
            let what = if join { "join" } else { "leave" };
            let edge = if change.edge { "!" } else { "" };
            self.0
                .lock()
                .push(format!("{what} {}{edge}", change.meta.key));
        }
    }

    fn setup() -> (Arc<LocalPresence>, Hub) {
        let metrics = Arc::new(Metrics::new());
        let presence = Arc::new(LocalPresence::new(metrics.clone()));
        let mut codecs = Codecs::new();
        codecs.register(Arc::new(Render));
        codecs.register(Arc::new(RenderOthers));
        let hub = Hub::with_observer(codecs, metrics, presence.clone());
        (presence, hub)
    }

    fn add(hub: &Hub, user: Option<&str>, rooms: &[&str]) -> (SocketId, Arc<TestConn>) {
        add_as(hub, Frontend::Phoenix, user, rooms)
    }

    fn add_as(
        hub: &Hub,
        frontend: Frontend,
        user: Option<&str>,
        rooms: &[&str],
    ) -> (SocketId, Arc<TestConn>) {
        let id = SocketId::generate(&NodeId::from("n1"));
        let conn = Arc::new(TestConn(Outbox::new(64, 1 << 20)));
        hub.register(
            id.clone(),
            Member {
                connection: conn.clone(),
                frontend,
                scope: None,
                direct: false,
                user: user.map(UserId::from),
                rooms: rooms.iter().map(|r| RoomName::from(*r)).collect(),
                connected_at: 1,
                held: false,
            },
        );
        (id, conn)
    }

    fn seen(conn: &TestConn) -> Vec<String> {
        let mut out: Vec<Queued> = Vec::new();
        conn.0.drain(&mut out);
        out.into_iter()
            .map(|q| match q.frame {
                Frame::Text(t) => t.to_string(),
                Frame::Binary(_) => "binary".into(),
            })
            .collect()
    }

    fn now<T>(f: PresenceFuture<'_, T>) -> T {
        futures_util::FutureExt::now_or_never(f)
            .expect("local presence answers at once")
            .expect("a presence room")
    }

    #[test]
    fn a_user_is_one_member_however_many_connections_and_edges_mark_first_and_last() {
        let (presence, hub) = setup();
        let room = RoomName::from("presence-lobby");
        let (a1, watcher) = add(&hub, Some("alice"), &["presence-lobby"]);
        assert_eq!(seen(&watcher), ["+alice!"], "a member sees its own join");
        let (a2, _) = add(&hub, Some("alice"), &[]);
        assert!(hub.join(&a2, &room));
        let (_b, _) = add(&hub, Some("bob"), &["presence-lobby"]);
        assert_eq!(seen(&watcher), ["+alice", "+bob!"]);
        assert_eq!(now(presence.count(&room)), 2);
        assert_eq!(now(presence.state(&room)).len(), 3);
        hub.unregister(&a2);
        assert!(hub.leave(&a1, &room));
        assert_eq!(
            seen(&watcher),
            ["-alice"],
            "the watcher itself left after its second connection"
        );
        assert_eq!(now(presence.count(&room)), 1);
        let members = super::super::members(&now(presence.state(&room)));
        assert_eq!(members[0].user, "bob");
    }

    #[test]
    fn rooms_without_the_prefix_track_nothing() {
        let (presence, hub) = setup();
        let (_, conn) = add(&hub, Some("alice"), &["lobby"]);
        assert!(seen(&conn).is_empty());
        assert!(
            futures_util::FutureExt::now_or_never(presence.count(&RoomName::from("lobby")))
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn an_unregistered_socket_leaves_every_presence_room_it_was_in() {
        let (presence, hub) = setup();
        let (a, _) = add(&hub, Some("alice"), &["presence-a", "presence-b", "c"]);
        let (_, watcher) = add(&hub, Some("bob"), &["presence-b"]);
        seen(&watcher);
        hub.unregister(&a);
        assert_eq!(seen(&watcher), ["-alice!"]);
        assert_eq!(now(presence.count(&RoomName::from("presence-a"))), 0);
        assert_eq!(now(presence.count(&RoomName::from("presence-b"))), 1);
    }

    fn profile(key: &str, info: Option<&str>) -> Option<Profile> {
        Some(Profile {
            key: key.into(),
            info: info.map(str::to_owned),
        })
    }

    #[test]
    fn a_profile_names_the_member_and_its_info_and_a_frontend_may_skip_its_own_join() {
        let (presence, hub) = setup();
        let room = RoomName::from("presence-p");
        let (_, phx) = add(&hub, Some("ann"), &["presence-p"]);
        let (pusher, pusher_conn) = add_as(&hub, Frontend::Pusher, None, &[]);
        assert!(hub.join_as(&pusher, &room, profile("bob", Some(r#"{"n":1}"#))));
        assert_eq!(seen(&phx), ["+ann!", "+bob!"]);
        assert!(
            seen(&pusher_conn).is_empty(),
            "a Pusher member is not told of its own join"
        );
        let (_, other) = add_as(&hub, Frontend::Pusher, Some("cy"), &["presence-p"]);
        assert_eq!(seen(&pusher_conn), ["+cy!"], "but of the others'");
        assert!(seen(&other).is_empty());
        let state = now(presence.state(&room));
        let bob = state.iter().find(|m| m.key == "bob").unwrap();
        assert_eq!(bob.info.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(
            hub.socket(&pusher).unwrap().profiles[0].1.key,
            "bob",
            "the hub keeps the profile for the registry"
        );
        assert!(hub.leave(&pusher, &room));
        assert_eq!(seen(&other), ["-bob!"], "a leave is keyed by the profile");
        assert!(hub.socket(&pusher).unwrap().profiles.is_empty());
    }

    #[test]
    fn a_watcher_hears_watched_rooms_occupied_then_joined_and_left_then_vacated() {
        let (presence, hub) = setup();
        let heard = Arc::new(Heard::default());
        presence.watch(heard.clone());
        let (a, _) = add(&hub, Some("ann"), &["presence-w", "plain", "unwatched"]);
        let (b, _) = add(&hub, Some("ann"), &[]);
        assert!(hub.join(&b, &RoomName::from("presence-w")));
        assert!(hub.join(&b, &RoomName::from("plain")));
        hub.unregister(&a);
        hub.unregister(&b);
        assert_eq!(
            *heard.0.lock(),
            [
                "+presence-w",
                "join ann!",
                "+plain",
                "join ann",
                "leave ann",
                "leave ann!",
                "-presence-w",
                "-plain",
            ]
        );
    }
}
