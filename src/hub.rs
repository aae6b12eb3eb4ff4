//! The local connections of this node, indexed by socket id, user and room, and the
//! fan-out that hands one encoded push to every matching connection.
//!
//! The hub is sharded by socket id: each [`Shard`] has its own lock and indexes its
//! own connections' users and rooms. A fan-out visits the shards one after another and
//! holds each shard's read lock only while it enqueues to that shard's members — never
//! across an await and never across the whole fan-out — so joins, leaves and
//! disconnects on other shards proceed meanwhile. Enqueueing never blocks (see
//! [`crate::connection::Outbox`]), so a read lock is held for microseconds per shard.
//!
//! The hub never touches Redis and never awaits a socket. It tells an [`Observer`] when
//! a socket's facts change (registered, joined or left a room, changed transport,
//! removed) and, in a cluster, when a user, a room or the node as a whole gets its
//! first local member or loses its last one. In a cluster the observer is the Redis
//! bus, which only queues the news; on a single node it is the in-memory presence
//! store. Either way the hub never waits on it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::codec::Codecs;
use crate::connection::{CloseReason, Enqueued, Frame, Outbox};
use crate::events::{Event, Events};
use crate::id::{Frontend, RoomName, SocketId, Target, UserId};
use crate::metrics::Metrics;
use crate::presence::{meta_ref_hash, Diff, Profile};
use crate::push::{Push, DEFAULT_SCOPE};
use crate::recovery::Saved;
use crate::report::Report;

/// Enough shards that two cores rarely meet on one lock, few enough that a room
/// fan-out's per-shard lookups stay cheap.
const SHARDS: usize = 16;

/// What the hub needs from a frontend's connection.
pub trait Connection: Send + Sync {
    /// The outbound queue the fan-out fills.
    fn outbox(&self) -> &Outbox;
    /// Ends one socket by the server's decision (the HTTP API's DELETE): the frontend
    /// tells the client in its protocol and then unregisters the socket.
    fn disconnect(&self, socket: &SocketId);
    /// The transport currently carrying the connection ("websocket", "polling").
    fn transport(&self) -> &'static str;
}

/// One registered socket.
pub struct Member {
    pub connection: Arc<dyn Connection>,
    /// The protocol it speaks: which encoding of a push it gets.
    pub frontend: Frontend,
    /// The namespace it lives in, for frontends that have them (Socket.IO); a push
    /// reaches it only when it names the same one. `None`: every push's scope.
    pub scope: Option<Arc<str>>,
    /// Whether it receives pushes addressed to all, its user or itself (a Socket.IO
    /// socket always does; a Phoenix socket once it joined the `pushgate` topic, the
    /// only topic such pushes arrive on). Room pushes reach room members regardless.
    pub direct: bool,
    pub user: Option<UserId>,
    pub rooms: Vec<RoomName>,
    /// Milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// A restored session's new socket while the pushes it missed are on their way
    /// (`recovery`): recoverable pushes skip it, because they are among the missed
    /// ones, until [`Hub::release`] queues those first.
    pub held: bool,
}

/// A copy of one socket's public facts, for the HTTP API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SocketInfo {
    pub id: SocketId,
    pub user: Option<UserId>,
    pub frontend: Frontend,
    /// The member's scope (`/` for frontends without namespaces).
    pub namespace: String,
    pub transport: &'static str,
    pub rooms: Vec<RoomName>,
    pub connected_at: u64,
    /// The presence rooms it entered with a [`Profile`] (see [`Hub::join_as`]), so
    /// the registry can write its metas whole again; not shown by the API.
    #[serde(skip)]
    pub profiles: Vec<(RoomName, Arc<Profile>)>,
}

/// What one fan-out did on this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// Sockets that matched the target (minus `except`).
    pub sockets: usize,
    /// Deliveries queued.
    pub delivered: usize,
    /// Deliveries that could not be queued (closing connection or full queue).
    pub failed: usize,
    /// Of `delivered`, those of an ack-tracked push to sockets whose protocol has no
    /// client acks ([`Frontend::acks`]): never awaited, never timed out.
    pub unackable: usize,
    /// The sockets that got it, when asked for (ack-tracked pushes only).
    pub delivered_to: Vec<SocketId>,
}

impl FanOut {
    /// The report of a push whose whole fan-out this is (a single node's).
    pub fn report(&self) -> Report {
        Report {
            sockets: self.sockets,
            delivered: self.delivered,
            failed: self.failed,
            unackable: self.unackable,
            ..Report::default()
        }
    }
}

/// What a node may subscribe to on the bus because it holds matching local members.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Any local member at all (broadcast pushes).
    All,
    User(UserId),
    Room(RoomName),
}

/// A change in a socket's facts, with everything the registry and presence need to
/// apply it without asking the hub again (the socket may be gone by then).
#[derive(Debug, Clone)]
pub enum SocketChange {
    /// Registered, with its initial rooms.
    Registered(SocketInfo),
    /// Joined a room at `at` (ms since the epoch), as the member `profile` names when
    /// it has one (see [`Hub::join_as`]).
    Joined {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
        at: u64,
        profile: Option<Arc<Profile>>,
    },
    /// Left a room.
    Left {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
    },
    /// It got its user after registering ([`Hub::set_user`]): the socket whole again,
    /// for a store that writes it whole (the registry).
    UserSet(SocketInfo),
    /// Its transport changed (an Engine.IO session upgraded to WebSocket).
    Transport {
        socket: SocketId,
        transport: &'static str,
    },
    /// Unregistered, with the indexes it must be removed from.
    Removed {
        socket: SocketId,
        user: Option<UserId>,
        frontend: Frontend,
        rooms: Vec<RoomName>,
        /// Its session may come back (connection state recovery): a store keeps it.
        keep: bool,
    },
}

/// Told about socket changes (in the order they happened for one socket) and, when it
/// [tracks interest](Observer::tracks_interest), about interest (in the order it
/// changed for one topic). Calls are made outside the hub's shard locks; an
/// implementation must not block.
pub trait Observer: Send + Sync {
    /// `topic` got its first local member or lost its last one; ask
    /// [`Hub::has_interest`] for the current answer.
    fn interest_changed(&self, topic: &Topic);
    /// A socket's facts changed. `hub` is the hub that changed, for an observer that
    /// answers with a delivery (presence on a single node).
    fn socket_changed(&self, hub: &Hub, change: SocketChange);
    /// Whether the hub counts members per topic for [`Observer::interest_changed`]
    /// (a cluster bus subscribes by interest; a single node needs no counts).
    fn tracks_interest(&self) -> bool {
        true
    }
}

/// Node-wide member counts per topic, kept only for an observer that tracks interest.
/// Sharded by topic hash like the hub; each lock is held to bump one counter and queue
/// one note, so first/last notes for one topic are queued in the order the counts
/// changed.
struct Interest {
    counts: Box<[Mutex<HashMap<Topic, usize>>]>,
}

impl Interest {
    fn add(&self, hasher: &RandomState, observer: &dyn Observer, topic: Topic) {
        let mut counts = self.counts[hasher.hash_one(&topic) as usize % self.counts.len()].lock();
        let n = counts.entry(topic.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            observer.interest_changed(&topic);
        }
    }

    fn remove(&self, hasher: &RandomState, observer: &dyn Observer, topic: Topic) {
        let mut counts = self.counts[hasher.hash_one(&topic) as usize % self.counts.len()].lock();
        if let Some(n) = counts.get_mut(&topic) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&topic);
                observer.interest_changed(&topic);
            }
        }
    }

    fn has(&self, hasher: &RandomState, topic: &Topic) -> bool {
        self.counts[hasher.hash_one(topic) as usize % self.counts.len()]
            .lock()
            .contains_key(topic)
    }
}

#[derive(Default)]
struct Shard {
    members: HashMap<SocketId, Member>,
    rooms: HashMap<RoomName, HashSet<SocketId>>,
    users: HashMap<UserId, HashSet<SocketId>>,
    /// The profiles of the few sockets that entered presence rooms with one, kept
    /// beside [`Member`] so connections without one pay nothing for them.
    profiles: HashMap<SocketId, Vec<(RoomName, Arc<Profile>)>>,
}

impl Shard {
    fn info(&self, id: &SocketId, m: &Member) -> SocketInfo {
        info(id, m, self.profiles.get(id))
    }

    fn forget_profile(&mut self, socket: &SocketId, room: &RoomName) {
        if let Some(list) = self.profiles.get_mut(socket) {
            list.retain(|(r, _)| r != room);
            if list.is_empty() {
                self.profiles.remove(socket);
            }
        }
    }
}

pub struct Hub {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    /// One codec per frontend this node serves: the fan-out encodes through them.
    codecs: Codecs,
    /// Which frontends' frames name the user (see `deliver_users`), read once.
    names_user: [bool; Frontend::COUNT],
    metrics: Arc<Metrics>,
    /// Told about socket changes (and interest, when it tracks it).
    observer: Option<Arc<dyn Observer>>,
    /// Member counts per topic; `None` unless the observer tracks interest.
    interest: Option<Interest>,
    /// The event stream, told of connects, disconnects, joins and leaves (outside the
    /// shard locks, and only built while someone reads).
    events: Option<Arc<Events>>,
    /// Rooms one member may be in (`PUSHGATE_MAX_ROOMS_PER_CONNECTION`), enforced
    /// here because only the shard lock makes "count, then add" one step.
    max_rooms: Option<usize>,
}

/// What [`Hub::try_join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    Joined,
    /// It was in the room already.
    Already,
    /// It is in the most rooms a connection may be in; nothing changed.
    Full {
        max: usize,
    },
    /// No such socket on this node.
    Unknown,
}

impl Hub {
    pub fn new(codecs: Codecs, metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            names_user: Frontend::ALL.map(|f| codecs.get(f).is_some_and(|c| c.names_user())),
            codecs,
            metrics,
            observer: None,
            interest: None,
            events: None,
            max_rooms: None,
        }
    }

    /// The same hub, refusing joins past `max` rooms per member (`None`: no limit).
    pub fn with_max_rooms(mut self, max: Option<usize>) -> Self {
        self.max_rooms = max;
        self
    }

    /// The same hub, telling `events` what happens to its sockets.
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = Some(events);
        self
    }

    fn emit(&self, make: impl FnOnce() -> Event) {
        if let Some(e) = &self.events {
            e.emit(make);
        }
    }

    /// A hub that tells `observer` about socket changes, and about interest when the
    /// observer tracks it.
    pub fn with_observer(
        codecs: Codecs,
        metrics: Arc<Metrics>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self {
            interest: observer.tracks_interest().then(|| Interest {
                counts: (0..SHARDS).map(|_| Mutex::default()).collect(),
            }),
            observer: Some(observer),
            ..Self::new(codecs, metrics)
        }
    }

    /// Whether some local member matches `topic` (false on a hub without observer).
    pub fn has_interest(&self, topic: &Topic) -> bool {
        self.interest
            .as_ref()
            .is_some_and(|i| i.has(&self.hasher, topic))
    }

    /// Every topic with a local member right now (to re-subscribe after a reconnect).
    pub fn interests(&self) -> Vec<Topic> {
        let Some(i) = &self.interest else {
            return Vec::new();
        };
        i.counts
            .iter()
            .flat_map(|c| c.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn topic_added(&self, topic: Topic) {
        if let (Some(i), Some(o)) = (&self.interest, &self.observer) {
            i.add(&self.hasher, &**o, topic);
        }
    }

    fn topic_removed(&self, topic: Topic) {
        if let (Some(i), Some(o)) = (&self.interest, &self.observer) {
            i.remove(&self.hasher, &**o, topic);
        }
    }

    fn socket_changed(&self, change: SocketChange) {
        if let Some(o) = &self.observer {
            o.socket_changed(self, change);
        }
    }

    fn shard(&self, socket: &str) -> &RwLock<Shard> {
        let h = self.hasher.hash_one(socket) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// Registers a socket with its user and initial rooms.
    pub fn register(&self, socket: SocketId, member: Member) {
        let topics = self.interest.as_ref().map(|_| {
            let mut t = vec![Topic::All];
            t.extend(member.user.iter().cloned().map(Topic::User));
            t.extend(member.rooms.iter().cloned().map(Topic::Room));
            t
        });
        let registered = self.observer.as_ref().map(|_| info(&socket, &member, None));
        let connected = self
            .events
            .as_ref()
            .filter(|e| e.is_watched())
            .map(|_| Event::Connected {
                socket: socket.clone(),
                user: member.user.clone(),
                frontend: member.frontend,
                transport: member.connection.transport(),
                namespace: member.scope.as_deref().unwrap_or(DEFAULT_SCOPE).to_owned(),
                rooms: member.rooms.clone(),
            });
        self.register_locked(socket, member);
        if let Some(event) = connected {
            self.emit(|| event);
        }
        for t in topics.into_iter().flatten() {
            self.topic_added(t);
        }
        if let Some(info) = registered {
            self.socket_changed(SocketChange::Registered(info));
        }
    }

    fn register_locked(&self, socket: SocketId, member: Member) {
        let mut shard = self.shard(socket.as_str()).write();
        let shard = &mut *shard;
        if let Some(user) = &member.user {
            shard
                .users
                .entry(user.clone())
                .or_default()
                .insert(socket.clone());
        }
        for room in &member.rooms {
            shard
                .rooms
                .entry(room.clone())
                .or_default()
                .insert(socket.clone());
        }
        shard.members.insert(socket, member);
    }

    /// Removes a socket from every index; the last member of a room or user removes
    /// the room or user entry. The reason (for the event stream) is the connection's
    /// close reason, or `client` while it stays open (the client left a namespace).
    pub fn unregister(&self, socket: &SocketId) -> Option<Member> {
        self.remove(socket, None, false)
    }

    /// [`Hub::unregister`] with a known reason (a server-side disconnect of one
    /// namespace socket, whose connection stays open).
    pub fn unregister_because(&self, socket: &SocketId, reason: CloseReason) -> Option<Member> {
        self.remove(socket, Some(reason), false)
    }

    /// [`Hub::unregister`] of a socket whose client may come back for its session
    /// (connection state recovery): the observer is told to keep it.
    pub fn unregister_keeping(&self, socket: &SocketId) -> Option<Member> {
        self.remove(socket, None, true)
    }

    fn remove(&self, socket: &SocketId, reason: Option<CloseReason>, keep: bool) -> Option<Member> {
        let member = {
            let mut shard = self.shard(socket.as_str()).write();
            let shard = &mut *shard;
            let member = shard.members.remove(socket)?;
            shard.profiles.remove(socket);
            if let Some(user) = &member.user {
                remove_from(&mut shard.users, user, socket);
            }
            for room in &member.rooms {
                remove_from(&mut shard.rooms, room, socket);
            }
            member
        };
        if self.interest.is_some() {
            self.topic_removed(Topic::All);
            if let Some(user) = &member.user {
                self.topic_removed(Topic::User(user.clone()));
            }
            for room in &member.rooms {
                self.topic_removed(Topic::Room(room.clone()));
            }
        }
        if self.observer.is_some() {
            self.socket_changed(SocketChange::Removed {
                socket: socket.clone(),
                user: member.user.clone(),
                frontend: member.frontend,
                rooms: member.rooms.clone(),
                keep,
            });
        }
        self.emit(|| Event::Disconnected {
            socket: socket.clone(),
            user: member.user.clone(),
            frontend: member.frontend,
            reason: reason
                .or_else(|| member.connection.outbox().closing())
                .unwrap_or(CloseReason::Client)
                .as_str(),
        });
        Some(member)
    }

    /// Adds a socket to a room; false when it is unknown here, already in it, or in
    /// as many rooms as it may be (see [`Hub::try_join`]).
    pub fn join(&self, socket: &SocketId, room: &RoomName) -> bool {
        self.try_join(socket, room) == Join::Joined
    }

    /// Adds a socket to a room, saying why not when it did not. A refusal for the
    /// room limit is counted in `pushgate_limit_refusals_total{limit="rooms"}`.
    pub fn try_join(&self, socket: &SocketId, room: &RoomName) -> Join {
        self.try_join_as(socket, room, None)
    }

    /// Adds a socket to a room, in a presence room as the member `profile` names (and
    /// with its info) rather than as its user; false when it did not join (see
    /// [`Hub::try_join`]). The profile is kept until the socket leaves the room.
    pub fn join_as(&self, socket: &SocketId, room: &RoomName, profile: Option<Profile>) -> bool {
        self.try_join_as(socket, room, profile) == Join::Joined
    }

    /// [`Hub::try_join`], with the profile of [`Hub::join_as`].
    pub fn try_join_as(
        &self,
        socket: &SocketId,
        room: &RoomName,
        profile: Option<Profile>,
    ) -> Join {
        let profile = profile.map(Arc::new);
        let user = match self.join_locked(socket, room, profile.as_ref()) {
            Ok(user) => user,
            Err(outcome) => {
                if let Join::Full { .. } = outcome {
                    self.metrics
                        .limit_refusals
                        .with_label_values(&[crate::limits::Limit::Rooms.as_str()])
                        .inc();
                }
                return outcome;
            }
        };
        self.emit(|| Event::Joined {
            socket: socket.clone(),
            user: user.clone(),
            room: room.clone(),
        });
        self.topic_added(Topic::Room(room.clone()));
        if self.observer.is_some() {
            self.socket_changed(SocketChange::Joined {
                socket: socket.clone(),
                user,
                room: room.clone(),
                at: crate::id::now_ms(),
                profile,
            });
        }
        Join::Joined
    }

    /// Joins under the shard lock; the member's user when it joined.
    fn join_locked(
        &self,
        socket: &SocketId,
        room: &RoomName,
        profile: Option<&Arc<Profile>>,
    ) -> Result<Option<UserId>, Join> {
        let mut shard = self.shard(socket.as_str()).write();
        let shard = &mut *shard;
        let member = shard.members.get_mut(socket).ok_or(Join::Unknown)?;
        if member.rooms.contains(room) {
            return Err(Join::Already);
        }
        if let Some(max) = self.max_rooms {
            if member.rooms.len() >= max {
                return Err(Join::Full { max });
            }
        }
        member.rooms.push(room.clone());
        let user = member.user.clone();
        shard
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(socket.clone());
        if let Some(p) = profile {
            shard
                .profiles
                .entry(socket.clone())
                .or_default()
                .push((room.clone(), p.clone()));
        }
        Ok(user)
    }

    /// Removes a socket from a room; false when it was not in it.
    pub fn leave(&self, socket: &SocketId, room: &RoomName) -> bool {
        let Some(user) = self.leave_locked(socket, room) else {
            return false;
        };
        self.emit(|| Event::Left {
            socket: socket.clone(),
            user: user.clone(),
            room: room.clone(),
        });
        self.topic_removed(Topic::Room(room.clone()));
        if self.observer.is_some() {
            self.socket_changed(SocketChange::Left {
                socket: socket.clone(),
                user,
                room: room.clone(),
            });
        }
        true
    }

    /// Leaves under the shard lock; the member's user when it left.
    fn leave_locked(&self, socket: &SocketId, room: &RoomName) -> Option<Option<UserId>> {
        let mut shard = self.shard(socket.as_str()).write();
        let shard = &mut *shard;
        let member = shard.members.get_mut(socket)?;
        let pos = member.rooms.iter().position(|r| r == room)?;
        member.rooms.swap_remove(pos);
        let user = member.user.clone();
        remove_from(&mut shard.rooms, room, socket);
        shard.forget_profile(socket, room);
        Some(user)
    }

    /// Tells the observer that a socket's transport changed (the hub reads transports
    /// live from the connection; the registry keeps a copy).
    pub fn transport_changed(&self, socket: &SocketId) {
        if self.observer.is_none() {
            return;
        }
        let transport = {
            let shard = self.shard(socket.as_str()).read();
            match shard.members.get(socket) {
                Some(m) => m.connection.transport(),
                None => return,
            }
        };
        self.socket_changed(SocketChange::Transport {
            socket: socket.clone(),
            transport,
        });
    }

    /// Gives a socket registered without a user its user (a Pusher `pusher:signin`
    /// after connecting); false when the socket is unknown here or already has one.
    /// Like `join`, it notes the interest after the shard lock is released, so the
    /// caller must not race it with the socket's `unregister` (the Pusher connection's
    /// own task does both, one after the other).
    pub fn set_user(&self, socket: &SocketId, user: UserId) -> bool {
        let registered = {
            let mut shard = self.shard(socket.as_str()).write();
            let shard = &mut *shard;
            let Some(member) = shard.members.get_mut(socket) else {
                return false;
            };
            if member.user.is_some() {
                return false;
            }
            member.user = Some(user.clone());
            let registered = self
                .observer
                .as_ref()
                .map(|_| info(socket, member, shard.profiles.get(socket)));
            shard
                .users
                .entry(user.clone())
                .or_default()
                .insert(socket.clone());
            registered
        };
        self.topic_added(Topic::User(user));
        if let Some(info) = registered {
            // The registry writes the socket whole again, now with its user.
            self.socket_changed(SocketChange::UserSet(info));
        }
        true
    }

    /// Marks whether a socket receives pushes addressed to all, its user or itself
    /// (see [`Member::direct`]); false when the socket is unknown here.
    pub fn set_direct(&self, socket: &SocketId, direct: bool) -> bool {
        let mut shard = self.shard(socket.as_str()).write();
        match shard.members.get_mut(socket) {
            Some(m) => {
                m.direct = direct;
                true
            }
            None => false,
        }
    }

    /// Hands `push` to every matching connection's queue, encoded once per frontend
    /// that has a member among the targets (lazily: a push that reaches only one
    /// protocol's sockets is encoded for that protocol only). `ack_id` is the
    /// node-wide ack id of an ack-tracked push: the sockets that got it are listed
    /// in the answer.
    pub fn deliver(&self, push: &Push, ack_id: Option<u64>) -> FanOut {
        let mut fan = Fan {
            push,
            ack_id,
            scope: push.scope(),
            frames: Default::default(),
            user: None,
            user_frames: HashMap::new(),
            delivered: [0; Frontend::COUNT],
            out: FanOut::default(),
        };
        match &push.target {
            Target::Socket(id) => {
                let shard = self.shard(id.as_str()).read();
                if let Some(m) = shard.members.get(id) {
                    self.offer(&mut fan, id, m, true);
                }
            }
            Target::All => {
                for shard in self.shards.iter() {
                    let shard = shard.read();
                    for (id, m) in &shard.members {
                        self.offer(&mut fan, id, m, true);
                    }
                }
            }
            Target::Room(room) => {
                for shard in self.shards.iter() {
                    let shard = shard.read();
                    for id in shard.rooms.get(room).into_iter().flatten() {
                        if let Some(m) = shard.members.get(id) {
                            self.offer(&mut fan, id, m, false);
                        }
                    }
                }
            }
            Target::User(user) => self.deliver_users(&mut fan, std::slice::from_ref(user)),
            Target::Users(users) => self.deliver_users(&mut fan, users),
        }
        for f in Frontend::ALL {
            let n = fan.delivered[f.index()];
            if n > 0 {
                self.metrics.frontend(f).deliveries.inc_by(n);
            }
        }
        fan.out
    }

    /// Hands a presence diff to this node's members of its room, rendered once per
    /// frontend that shows presence; a frontend whose codec renders nothing (no
    /// presence in its protocol) is skipped. A frontend that does not tell a
    /// connection of its own join ([`crate::codec::PushCodec::presence_tells_own_join`])
    /// gets, for the joining connection only, a rendering without that join. Returns
    /// how many members got it.
    pub fn deliver_presence(&self, diff: &Diff) -> usize {
        let mut frames: [Option<Vec<Frame>>; Frontend::COUNT] = Default::default();
        // The refs of the joins, to find the joining connections among the members.
        let joined: Vec<u64> = diff
            .joins
            .iter()
            .filter_map(|c| u64::from_str_radix(&c.meta.r#ref, 16).ok())
            .collect();
        let mut n = 0;
        for shard in self.shards.iter() {
            let shard = shard.read();
            for id in shard.rooms.get(diff.room.as_str()).into_iter().flatten() {
                let Some(m) = shard.members.get(id) else {
                    continue;
                };
                let Some(codec) = self.codecs.get(m.frontend) else {
                    continue;
                };
                let own;
                let encoded = if !joined.is_empty()
                    && !codec.presence_tells_own_join()
                    && joined.contains(&meta_ref_hash(id))
                {
                    let others = without_own_join(diff, id);
                    if others.is_empty() {
                        continue;
                    }
                    own = codec.encode_presence(&others);
                    &own
                } else {
                    frames[m.frontend.index()].get_or_insert_with(|| codec.encode_presence(diff))
                };
                if encoded.is_empty() {
                    continue;
                }
                match m.connection.outbox().push(encoded, None) {
                    Enqueued::Queued => n += 1,
                    Enqueued::Overflow => {
                        self.metrics
                            .queue_overflows
                            .with_label_values(&[m.frontend.as_str()])
                            .inc();
                    }
                    Enqueued::Closed => {}
                }
            }
        }
        n
    }

    /// A push to several users, in one pass: encoded once per frontend, except for a
    /// frontend whose frame names the user ([`crate::codec::PushCodec::names_user`]),
    /// which is encoded once per user it reaches.
    fn deliver_users<'a>(&self, fan: &mut Fan<'a>, users: &'a [UserId]) {
        for shard in self.shards.iter() {
            let shard = shard.read();
            for user in users {
                fan.user = Some(user);
                for id in shard.users.get(user).into_iter().flatten() {
                    if let Some(m) = shard.members.get(id) {
                        self.offer(fan, id, m, true);
                    }
                }
            }
        }
        fan.user = None;
    }

    /// Offers the push to one member. `direct`: the push is addressed to all, a user
    /// or a socket, which only members that take direct pushes receive.
    #[inline]
    fn offer(&self, fan: &mut Fan<'_>, id: &SocketId, m: &Member, direct: bool) {
        if (direct && !m.direct)
            || (m.held && fan.push.recoverable)
            || m.scope.as_deref().is_some_and(|s| s != fan.scope)
            || (!fan.push.except.is_empty() && fan.push.except.contains(id))
        {
            return;
        }
        fan.out.sockets += 1;
        let i = m.frontend.index();
        let frames = match fan.user {
            Some(user) if self.names_user[i] => fan
                .user_frames
                .entry((i, user.clone()))
                .or_insert_with(|| match self.codecs.get(m.frontend) {
                    Some(codec) => codec.encode_for_user(fan.push, user, fan.ack_id),
                    None => Vec::new(),
                }),
            _ => fan.frames[i].get_or_insert_with(|| match self.codecs.get(m.frontend) {
                Some(codec) => codec.encode(fan.push, fan.ack_id),
                None => Vec::new(),
            }),
        };
        if frames.is_empty() {
            // No codec for this frontend: a registration bug, not the client's fault.
            fan.out.failed += 1;
            self.metrics
                .delivery_failures
                .with_label_values(&["unencodable"])
                .inc();
            return;
        }
        match m
            .connection
            .outbox()
            .push(frames, Some(fan.push.accepted_at))
        {
            Enqueued::Queued => {
                fan.out.delivered += 1;
                fan.delivered[i] += 1;
                if fan.ack_id.is_some() {
                    if m.frontend.acks() {
                        fan.out.delivered_to.push(id.clone());
                    } else {
                        fan.out.unackable += 1;
                    }
                }
            }
            Enqueued::Overflow => {
                fan.out.failed += 1;
                self.metrics
                    .queue_overflows
                    .with_label_values(&[m.frontend.as_str()])
                    .inc();
                self.metrics
                    .delivery_failures
                    .with_label_values(&["queue_full"])
                    .inc();
            }
            Enqueued::Closed => {
                fan.out.failed += 1;
                self.metrics
                    .delivery_failures
                    .with_label_values(&["closed"])
                    .inc();
            }
        }
    }

    /// Queues, in order, the pushes a restored socket missed while it was lost as
    /// `lost` (those that reach it: see [`Saved::is_reached_by`]), then stops holding
    /// it: under its shard's lock, so that no push reaches it in between. Returns how
    /// many it got, or `None` when the socket is gone.
    pub fn release(&self, socket: &SocketId, lost: &SocketId, missed: &[Push]) -> Option<usize> {
        let mut shard = self.shard(socket.as_str()).write();
        let m = shard.members.get_mut(socket)?;
        let saved = Saved {
            sid: lost.clone(),
            user: m.user.clone(),
            namespace: m.scope.as_deref().map(str::to_owned),
            rooms: m.rooms.clone(),
        };
        let codec = self.codecs.get(m.frontend)?;
        // Recorded before the replay was cut, a push may name the new socket too.
        let reaches = |p: &&Push| {
            !p.except.contains(socket)
                && (saved.is_reached_by(p)
                    || (matches!(&p.target, Target::Socket(s) if s == socket)
                        && saved.namespace.as_deref().is_none_or(|n| n == p.scope())))
        };
        let mut n = 0;
        for push in missed.iter().filter(reaches) {
            let frames = codec.encode(push, None);
            match m.connection.outbox().push(&frames, Some(push.accepted_at)) {
                Enqueued::Queued => n += 1,
                Enqueued::Overflow | Enqueued::Closed => break,
            }
        }
        m.held = false;
        if n > 0 {
            self.metrics
                .frontend(m.frontend)
                .deliveries
                .inc_by(n as u64);
        }
        Some(n)
    }

    /// The connection behind a socket, to act on it outside the hub's locks.
    pub fn connection(&self, socket: &SocketId) -> Option<Arc<dyn Connection>> {
        let shard = self.shard(socket.as_str()).read();
        shard.members.get(socket).map(|m| m.connection.clone())
    }

    pub fn socket(&self, socket: &SocketId) -> Option<SocketInfo> {
        let shard = self.shard(socket.as_str()).read();
        shard.members.get(socket).map(|m| shard.info(socket, m))
    }

    pub fn user_sockets(&self, user: &UserId) -> Vec<SocketInfo> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            for id in shard.users.get(user).into_iter().flatten() {
                if let Some(m) = shard.members.get(id) {
                    out.push(shard.info(id, m));
                }
            }
        }
        out
    }

    pub fn room_sockets(&self, room: &RoomName) -> Vec<SocketId> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.read().rooms.get(room).into_iter().flatten().cloned());
        }
        out
    }

    /// Every local socket (to refresh the cluster registry).
    pub fn sockets(&self) -> Vec<SocketInfo> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            out.extend(shard.members.iter().map(|(id, m)| shard.info(id, m)));
        }
        out
    }

    /// Every connection (for shutdown), deduplicated by pointer: one Engine.IO session
    /// carries several namespace sockets.
    pub fn connections(&self) -> Vec<Arc<dyn Connection>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for m in shard.read().members.values() {
                if seen.insert(Arc::as_ptr(&m.connection) as *const () as usize) {
                    out.push(m.connection.clone());
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().members.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One fan-out in progress: the push, its encodings so far (one slot per frontend),
/// and the counts.
struct Fan<'a> {
    push: &'a Push,
    ack_id: Option<u64>,
    scope: &'a str,
    frames: [Option<Vec<Frame>>; Frontend::COUNT],
    /// The user being delivered to, in a push to several users.
    user: Option<&'a UserId>,
    /// Encodings per user, for frontends whose frame names the user; empty (and not
    /// allocated) otherwise.
    user_frames: HashMap<(usize, UserId), Vec<Frame>>,
    delivered: [u64; Frontend::COUNT],
    out: FanOut,
}

fn info(id: &SocketId, m: &Member, profiles: Option<&Vec<(RoomName, Arc<Profile>)>>) -> SocketInfo {
    SocketInfo {
        id: id.clone(),
        user: m.user.clone(),
        frontend: m.frontend,
        namespace: m.scope.as_deref().unwrap_or(DEFAULT_SCOPE).to_owned(),
        transport: m.connection.transport(),
        rooms: m.rooms.clone(),
        connected_at: m.connected_at,
        profiles: profiles.cloned().unwrap_or_default(),
    }
}

/// `diff` without the join of `socket`: what a connection is told of a diff that holds
/// its own join, in a protocol that does not tell it.
fn without_own_join(diff: &Diff, socket: &SocketId) -> Diff {
    let own = crate::presence::meta_ref(socket);
    Diff {
        room: diff.room.clone(),
        joins: diff
            .joins
            .iter()
            .filter(|c| c.meta.r#ref != own)
            .cloned()
            .collect(),
        leaves: diff.leaves.clone(),
    }
}

fn remove_from<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, HashSet<SocketId>>,
    key: &K,
    socket: &SocketId,
) {
    if let Some(set) = index.get_mut(key) {
        set.remove(socket);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::Queued;
    use crate::id::NodeId;

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

    /// Encodes a push as its event name and counts its encodings.
    struct Names(Frontend, std::sync::atomic::AtomicUsize);
    impl crate::codec::PushCodec for Names {
        fn frontend(&self) -> Frontend {
            self.0
        }
        fn check(&self, _: &Push) -> Result<(), String> {
            Ok(())
        }
        fn encode(&self, push: &Push, _: Option<u64>) -> Vec<Frame> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![Frame::text(push.event.clone())]
        }
    }

    fn codecs() -> (Codecs, Arc<Names>, Arc<Names>) {
        let sio = Arc::new(Names(Frontend::SocketIo, Default::default()));
        let phx = Arc::new(Names(Frontend::Phoenix, Default::default()));
        let mut c = Codecs::new();
        c.register(sio.clone());
        c.register(phx.clone());
        c.register(Arc::new(Names(Frontend::Pusher, Default::default())));
        (c, sio, phx)
    }

    fn hub() -> Hub {
        Hub::new(codecs().0, Arc::new(Metrics::new()))
    }

    fn add(
        hub: &Hub,
        user: Option<&str>,
        rooms: &[&str],
        capacity: usize,
    ) -> (SocketId, Arc<TestConn>) {
        add_as(hub, Frontend::SocketIo, true, user, rooms, capacity)
    }

    fn add_as(
        hub: &Hub,
        frontend: Frontend,
        direct: bool,
        user: Option<&str>,
        rooms: &[&str],
        capacity: usize,
    ) -> (SocketId, Arc<TestConn>) {
        let id = SocketId::generate(&NodeId::from("n1"));
        let conn = Arc::new(TestConn(Outbox::new(capacity, 1 << 20)));
        hub.register(
            id.clone(),
            Member {
                connection: conn.clone(),
                frontend,
                scope: (frontend == Frontend::SocketIo).then(|| Arc::from("/")),
                direct,
                user: user.map(UserId::from),
                rooms: rooms.iter().map(|r| RoomName::from(*r)).collect(),
                connected_at: 0,
                held: false,
            },
        );
        (id, conn)
    }

    fn received(conn: &TestConn) -> usize {
        let mut out: Vec<Queued> = Vec::new();
        conn.0.drain(&mut out);
        out.len()
    }

    fn push(hub: &Hub, target: Target, except: &[SocketId]) -> FanOut {
        let mut p = Push::new(target, "e", None);
        p.except = except.iter().cloned().collect();
        hub.deliver(&p, Some(1))
    }

    #[test]
    fn joins_stop_at_the_room_limit_and_say_why() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(codecs().0, metrics.clone()).with_max_rooms(Some(2));
        let (id, _) = add(&hub, None, &["a"], 8);
        assert_eq!(hub.try_join(&id, &RoomName::from("b")), Join::Joined);
        assert_eq!(hub.try_join(&id, &RoomName::from("b")), Join::Already);
        assert_eq!(
            hub.try_join(&id, &RoomName::from("c")),
            Join::Full { max: 2 }
        );
        assert!(!hub.join(&id, &RoomName::from("c")));
        assert_eq!(hub.socket(&id).unwrap().rooms.len(), 2, "nothing changed");
        assert!(hub.leave(&id, &RoomName::from("a")));
        assert_eq!(hub.try_join(&id, &RoomName::from("c")), Join::Joined);
        let unknown = SocketId::from("n1.nobody");
        assert_eq!(hub.try_join(&unknown, &RoomName::from("c")), Join::Unknown);
        assert_eq!(
            metrics.limit_refusals.with_label_values(&["rooms"]).get(),
            2
        );
    }

    #[test]
    fn room_push_reaches_members_only() {
        let hub = hub();
        let (_, a) = add(&hub, None, &["r"], 8);
        let (_, b) = add(&hub, None, &["r", "s"], 8);
        let (_, c) = add(&hub, None, &["s"], 8);
        let out = push(&hub, Target::Room(RoomName::from("r")), &[]);
        assert_eq!((out.sockets, out.delivered, out.failed), (2, 2, 0));
        assert_eq!((received(&a), received(&b), received(&c)), (1, 1, 0));
    }

    #[test]
    fn user_push_reaches_every_socket_of_the_user_except_excluded() {
        let hub = hub();
        let (a_id, a) = add(&hub, Some("alice"), &[], 8);
        let (_, a2) = add(&hub, Some("alice"), &[], 8);
        let (_, b) = add(&hub, Some("bob"), &[], 8);
        let out = push(&hub, Target::User(UserId::from("alice")), &[a_id]);
        assert_eq!(out.delivered, 1);
        assert_eq!((received(&a), received(&a2), received(&b)), (0, 1, 0));
    }

    #[test]
    fn last_leave_removes_the_room_and_unregister_cleans_indexes() {
        let hub = hub();
        let (id, _) = add(&hub, Some("u"), &["r"], 8);
        let room = RoomName::from("r");
        assert!(!hub.join(&id, &room), "already a member");
        assert!(hub.join(&id, &RoomName::from("t")));
        assert!(hub.leave(&id, &room));
        assert!(hub.room_sockets(&room).is_empty());
        hub.unregister(&id);
        assert!(hub.user_sockets(&UserId::from("u")).is_empty());
        assert!(hub.room_sockets(&RoomName::from("t")).is_empty());
        assert!(hub.is_empty());
    }

    #[test]
    fn full_queue_counts_a_failure_and_spares_the_others() {
        let hub = hub();
        let (_, slow) = add(&hub, None, &[], 1);
        let (_, fast) = add(&hub, None, &[], 8);
        assert_eq!(push(&hub, Target::All, &[]).delivered, 2);
        received(&fast);
        let out = push(&hub, Target::All, &[]);
        assert_eq!((out.delivered, out.failed), (1, 1));
        assert_eq!(received(&fast), 1);
        assert_eq!(
            slow.0.closing(),
            Some(crate::connection::CloseReason::SlowClient)
        );
    }

    #[derive(Default)]
    struct Notes(Mutex<Vec<Topic>>);
    impl Observer for Notes {
        fn interest_changed(&self, topic: &Topic) {
            self.0.lock().push(topic.clone());
        }
        fn socket_changed(&self, _: &Hub, _: SocketChange) {}
    }

    #[test]
    fn interest_changes_on_the_first_member_and_after_the_last() {
        let notes = Arc::new(Notes::default());
        let hub = Hub::with_observer(codecs().0, Arc::new(Metrics::new()), notes.clone());
        let room = Topic::Room(RoomName::from("r"));
        let (a, _) = add(&hub, Some("u"), &["r"], 8);
        let (b, _) = add(&hub, Some("u"), &["r"], 8);
        let user = Topic::User(UserId::from("u"));
        assert_eq!(
            *notes.0.lock(),
            vec![Topic::All, user.clone(), room.clone()]
        );
        assert!(hub.has_interest(&room));
        hub.unregister(&a);
        assert_eq!(notes.0.lock().len(), 3, "b still holds every topic");
        assert!(hub.leave(&b, &RoomName::from("r")));
        assert!(!hub.has_interest(&room));
        hub.unregister(&b);
        assert_eq!(
            notes.0.lock()[3..],
            [room, Topic::All, user.clone()],
            "each topic is noted once more, when its last member left"
        );
        assert!(hub.interests().is_empty());
    }

    #[test]
    fn socket_target_tracks_the_delivered_socket() {
        let hub = hub();
        let (id, _) = add(&hub, None, &[], 8);
        let out = push(&hub, Target::Socket(id.clone()), &[]);
        assert_eq!(out.delivered_to, vec![id]);
        let missing = push(&hub, Target::Socket(SocketId::from("n1.nope")), &[]);
        assert_eq!(missing, FanOut::default());
    }

    #[test]
    fn a_push_is_encoded_once_per_frontend_that_it_reaches() {
        let (codecs, sio, phx) = codecs();
        let hub = Hub::new(codecs, Arc::new(Metrics::new()));
        let (_, a) = add(&hub, None, &["r"], 8);
        let (_, b) = add(&hub, None, &["r"], 8);
        let out = push(&hub, Target::Room(RoomName::from("r")), &[]);
        assert_eq!(out.delivered, 2);
        assert_eq!((received(&a), received(&b)), (1, 1));
        let count = |n: &Names| n.1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            (count(&sio), count(&phx)),
            (1, 0),
            "no Phoenix member, no Phoenix encoding"
        );
        let (_, c) = add_as(&hub, Frontend::Phoenix, true, None, &["r"], 8);
        push(&hub, Target::Room(RoomName::from("r")), &[]);
        assert_eq!((count(&sio), count(&phx)), (2, 1));
        assert_eq!(received(&c), 1);
    }

    /// Names the user in its frame, like Pusher's `#server-to-user-<id>`.
    struct PerUser(std::sync::atomic::AtomicUsize);
    impl crate::codec::PushCodec for PerUser {
        fn frontend(&self) -> Frontend {
            Frontend::Pusher
        }
        fn check(&self, _: &Push) -> Result<(), String> {
            Ok(())
        }
        fn encode(&self, push: &Push, _: Option<u64>) -> Vec<Frame> {
            vec![Frame::text(push.event.clone())]
        }
        fn names_user(&self) -> bool {
            true
        }
        fn encode_for_user(&self, _: &Push, user: &UserId, _: Option<u64>) -> Vec<Frame> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![Frame::text(format!("to {user}"))]
        }
    }

    #[test]
    fn a_push_to_several_users_is_encoded_per_user_only_for_a_frontend_that_names_the_user() {
        let (mut codecs, sio, _) = codecs();
        let per_user = Arc::new(PerUser(Default::default()));
        codecs.register(per_user.clone());
        let hub = Hub::new(codecs, Arc::new(Metrics::new()));
        let (_, a_sio) = add(&hub, Some("a"), &[], 8);
        let (_, a_pusher) = add_as(&hub, Frontend::Pusher, true, Some("a"), &[], 8);
        let (_, a_pusher2) = add_as(&hub, Frontend::Pusher, true, Some("a"), &[], 8);
        let (_, b_sio) = add(&hub, Some("b"), &[], 8);
        let (_, b_pusher) = add_as(&hub, Frontend::Pusher, true, Some("b"), &[], 8);
        let out = push(
            &hub,
            Target::Users(vec![UserId::from("a"), UserId::from("b")]),
            &[],
        );
        assert_eq!(out.delivered, 5);
        let count =
            |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            count(&sio.1),
            1,
            "one encoding serves every Socket.IO member"
        );
        assert_eq!(
            count(&per_user.0),
            2,
            "one per user, shared by its connections"
        );
        let text = |conn: &TestConn| {
            let mut out: Vec<Queued> = Vec::new();
            conn.0.drain(&mut out);
            match &out[0].frame {
                Frame::Text(t) => t.to_string(),
                Frame::Binary(_) => String::new(),
            }
        };
        assert_eq!(text(&a_pusher), "to a");
        assert_eq!(text(&a_pusher2), "to a");
        assert_eq!(text(&b_pusher), "to b");
        assert_eq!((text(&a_sio), text(&b_sio)), ("e".into(), "e".into()));
    }

    #[test]
    fn a_held_socket_gets_its_missed_pushes_first_then_the_live_ones() {
        let hub = hub();
        let (id, conn) = add(&hub, Some("u"), &["r"], 16);
        let texts = |conn: &TestConn| {
            let mut out: Vec<Queued> = Vec::new();
            conn.0.drain(&mut out);
            out.into_iter()
                .map(|q| match q.frame {
                    Frame::Text(t) => t.as_str().to_owned(),
                    Frame::Binary(_) => "binary".to_owned(),
                })
                .collect::<Vec<_>>()
        };
        hub.shard(id.as_str())
            .write()
            .members
            .get_mut(&id)
            .unwrap()
            .held = true;
        let recoverable = |event: &str, target: Target| {
            let mut p = Push::new(target, event, None);
            p.recoverable = true;
            p
        };
        // While held: recoverable pushes skip it (they are among the missed ones),
        // others (acked: not recorded) do not.
        assert_eq!(
            hub.deliver(&recoverable("live-1", Target::All), None)
                .sockets,
            0
        );
        assert_eq!(
            hub.deliver(&Push::new(Target::All, "acked", None), Some(3))
                .delivered,
            1
        );
        let lost = SocketId::from("n0.lost");
        let missed = vec![
            recoverable("m1", Target::Room(RoomName::from("r"))),
            recoverable("other-room", Target::Room(RoomName::from("x"))),
            recoverable("m2", Target::Socket(lost.clone())),
            recoverable("m3", Target::Socket(id.clone())),
            recoverable("m4", Target::User(UserId::from("u"))),
        ];
        assert_eq!(hub.release(&id, &lost, &missed), Some(4));
        assert_eq!(
            hub.deliver(&recoverable("live-2", Target::All), None)
                .delivered,
            1
        );
        assert_eq!(texts(&conn), ["acked", "m1", "m2", "m3", "m4", "live-2"]);
        assert_eq!(
            hub.release(&SocketId::from("n0.gone"), &lost, &missed),
            None
        );
    }

    #[test]
    fn direct_pushes_skip_members_that_do_not_take_them_but_room_pushes_do_not() {
        let hub = hub();
        let (id, conn) = add_as(&hub, Frontend::Phoenix, false, Some("u"), &["r"], 8);
        assert_eq!(push(&hub, Target::All, &[]).sockets, 0);
        assert_eq!(push(&hub, Target::User(UserId::from("u")), &[]).sockets, 0);
        assert_eq!(push(&hub, Target::Socket(id.clone()), &[]).sockets, 0);
        assert_eq!(
            push(&hub, Target::Room(RoomName::from("r")), &[]).delivered,
            1
        );
        assert!(hub.set_direct(&id, true));
        assert_eq!(
            push(&hub, Target::User(UserId::from("u")), &[]).delivered,
            1
        );
        assert_eq!(received(&conn), 2);
    }

    #[tokio::test]
    async fn the_event_stream_hears_connects_joins_leaves_and_disconnects_with_their_reason() {
        use crate::events::{Events, Item};
        let metrics = Arc::new(Metrics::new());
        let events = Events::new(NodeId::from("n1"), metrics.clone());
        let hub = Hub::new(codecs().0, metrics).with_events(events.clone());
        let (quiet, _) = add(&hub, Some("nobody-reads"), &[], 8);
        let reader = events.reader();
        let (id, conn) = add(&hub, Some("alice"), &["r"], 8);
        assert!(hub.join(&id, &RoomName::from("s")));
        assert!(hub.leave(&id, &RoomName::from("r")));
        hub.unregister_because(&quiet, CloseReason::Kicked);
        conn.0.close(CloseReason::PingTimeout);
        hub.unregister(&id);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let Item::Frame(f) = reader.next().await else {
                panic!("dropped");
            };
            let v: serde_json::Value =
                serde_json::from_slice(f.strip_prefix(b"data: ").unwrap().trim_ascii()).unwrap();
            seen.push(format!(
                "{} {} {}",
                v["type"].as_str().unwrap(),
                v["user"].as_str().unwrap_or("-"),
                v["room"]
                    .as_str()
                    .or(v["reason"].as_str())
                    .or(v["transport"].as_str())
                    .unwrap()
            ));
        }
        assert_eq!(
            seen,
            [
                "connected alice test",
                "joined alice s",
                "left alice r",
                "disconnected nobody-reads kicked",
                "disconnected alice ping_timeout",
            ]
        );
    }

    #[test]
    fn an_ack_tracked_push_counts_sockets_without_client_acks_as_unackable() {
        let hub = hub();
        let (sio, _) = add(&hub, None, &["r"], 8);
        let (_, _) = add_as(&hub, Frontend::Pusher, true, None, &["r"], 8);
        let out = push(&hub, Target::Room(RoomName::from("r")), &[]);
        assert_eq!((out.delivered, out.unackable), (2, 1));
        assert_eq!(
            out.delivered_to,
            vec![sio],
            "only the ackable socket is awaited"
        );
        let plain = hub.deliver(
            &Push::new(Target::Room(RoomName::from("r")), "e", None),
            None,
        );
        assert_eq!((plain.delivered, plain.unackable), (2, 0));
    }

    #[test]
    fn a_user_given_after_registering_receives_user_pushes_and_is_noted() {
        let notes = Arc::new(Notes::default());
        let hub = Hub::with_observer(codecs().0, Arc::new(Metrics::new()), notes.clone());
        let (id, conn) = add_as(&hub, Frontend::Pusher, true, None, &[], 8);
        let user = UserId::from("u");
        assert_eq!(push(&hub, Target::User(user.clone()), &[]).sockets, 0);
        assert!(hub.set_user(&id, user.clone()));
        assert!(
            !hub.set_user(&id, UserId::from("v")),
            "a user is given once"
        );
        assert_eq!(push(&hub, Target::User(user.clone()), &[]).delivered, 1);
        assert_eq!(received(&conn), 1);
        assert!(hub.has_interest(&Topic::User(user.clone())));
        hub.unregister(&id);
        assert!(!hub.has_interest(&Topic::User(user)));
    }

    #[test]
    fn a_namespaced_push_reaches_only_members_of_that_namespace_or_of_none() {
        let hub = hub();
        let (_, sio) = add(&hub, None, &[], 8);
        let (_, phx) = add_as(&hub, Frontend::Phoenix, true, None, &[], 8);
        let mut p = Push::new(Target::All, "e", None);
        p.scope = Some(Arc::from("/admin"));
        assert_eq!(hub.deliver(&p, None).delivered, 1);
        assert_eq!((received(&sio), received(&phx)), (0, 1));
    }
}
