//! The event stream: what the gateway is doing right now — sockets connecting,
//! disconnecting, joining and leaving rooms, pushes accepted and their final reports —
//! as JSON for `GET /v1/events` (the dev console reads it, and so may apps).
//!
//! Nobody reading is the common case, so it must cost nearly nothing: every place that
//! has news calls [`Events::emit`] with a closure, and the closure (which clones ids and
//! builds the event) runs only when [`Events::is_watched`], two relaxed atomic loads.
//!
//! Each event is serialised once, into one shared frame, and offered to every local
//! reader's bounded queue ([`READER_QUEUE`] events). A reader whose queue is full is
//! dropped — its queue freed, counted in `pushgate_events_readers_dropped_total`,
//! logged — and its stream ends with a last `dropped` event; the emitter never waits,
//! so a reader that stops reading never slows a connect, a fan-out or a push.
//!
//! In a cluster the Redis bus carries events between nodes (`bus/redis/events.rs`):
//! it tells this module whether readers on other nodes want this node's events
//! ([`Events::set_remote`]), takes them from a bounded queue ([`Events::forward`]),
//! and hands other nodes' events to [`Events::deliver_remote`]. Events are emitted once
//! cluster-wide, on the node where they happen; a reader on any node sees them all.
//!
//! Locks: the readers list is a `parking_lot` mutex held to offer one frame to each
//! reader (a queue push each), never across an await and never while taking another
//! lock. Emitters may hold their own locks when they emit (the delivery tracker does);
//! this lock is always the innermost one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tokio::sync::{mpsc, watch, Notify};

use crate::id::{Frontend, NodeId, PushId, RoomName, SocketId, Target, UserId};
use crate::metrics::Metrics;
use crate::report::Report;

/// Events a reader may fall behind by before it is dropped: a console or an app that
/// reads keeps up with thousands of events per second; one that stopped reading costs
/// at most this many frames (a few hundred KB) until it is dropped.
pub const READER_QUEUE: usize = 1024;

/// Events queued for other nodes before new ones are dropped (counted): the bus
/// publishes them in batches at a bounded rate, so a burst larger than this while
/// someone reads elsewhere loses events rather than memory.
pub const FORWARD_QUEUE: usize = 4096;

/// Something that happened on a node, as readers of `GET /v1/events` see it (with
/// `node` and `at` added). The JSON shapes are documented in README's HTTP API.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A socket was registered (its first namespace, channel or connection).
    Connected {
        socket: SocketId,
        user: Option<UserId>,
        frontend: Frontend,
        transport: &'static str,
        namespace: String,
        rooms: Vec<RoomName>,
    },
    /// A socket was unregistered; `reason` is a `pushgate_disconnects_total` reason.
    Disconnected {
        socket: SocketId,
        user: Option<UserId>,
        frontend: Frontend,
        reason: &'static str,
    },
    Joined {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
    },
    Left {
        socket: SocketId,
        user: Option<UserId>,
        room: RoomName,
    },
    /// A push was accepted on this node. `report` when the node knows the fan-out at
    /// once (single node); `nodes` (how many nodes received it) in a cluster.
    Pushed {
        id: PushId,
        /// The target kind: all, user, users, room, socket.
        target: &'static str,
        /// The target as `POST /v1/push` takes it (`{"room": "lobby"}`).
        #[serde(serialize_with = "target_json")]
        to: Target,
        event: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ack_timeout_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        report: Option<Report>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nodes: Option<usize>,
    },
    /// A push's report became final (emitted by the node that accepted it).
    Report { id: PushId, report: Report },
}

impl Event {
    /// The `type` of the event, and the `type` label of `pushgate_events_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
            Event::Joined { .. } => "joined",
            Event::Left { .. } => "left",
            Event::Pushed { .. } => "pushed",
            Event::Report { .. } => "report",
        }
    }
}

/// A target in the shape of the API's `to`.
fn target_json<S: Serializer>(target: &Target, s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(1))?;
    match target {
        Target::All => m.serialize_entry("all", &true)?,
        Target::User(u) => m.serialize_entry("user", u)?,
        Target::Users(us) => m.serialize_entry("users", us)?,
        Target::Room(r) => m.serialize_entry("room", r)?,
        Target::Socket(id) => m.serialize_entry("socket", id)?,
    }
    m.end()
}

/// An event with where and when it happened: the JSON a reader gets.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(flatten)]
    event: &'a Event,
    node: &'a NodeId,
    /// Milliseconds since the Unix epoch.
    at: u64,
}

/// One SSE frame carrying `json` (compact JSON has no newline, so one `data:` line).
fn frame(json: &str) -> Bytes {
    let mut b = Vec::with_capacity(json.len() + 8);
    b.extend_from_slice(b"data: ");
    b.extend_from_slice(json.as_bytes());
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// The stream of this node's events and the readers of it.
pub struct Events {
    node: NodeId,
    metrics: Arc<Metrics>,
    /// How many local readers there are: half of the check every emitter makes.
    local: AtomicUsize,
    /// Whether readers on other nodes want this node's events (cluster; set by the bus).
    remote: AtomicBool,
    /// The local readers' queues.
    readers: Mutex<Vec<Arc<Slot>>>,
    next_reader: AtomicU64,
    /// The local reader count, for the bus, which follows the cluster's events while
    /// this node has readers.
    count: watch::Sender<usize>,
    /// Cluster mode: this node's events (their JSON) for readers on other nodes.
    forward: OnceLock<mpsc::Sender<String>>,
}

impl Events {
    pub fn new(node: NodeId, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            node,
            metrics,
            local: AtomicUsize::new(0),
            remote: AtomicBool::new(false),
            readers: Mutex::new(Vec::new()),
            next_reader: AtomicU64::new(1),
            count: watch::Sender::new(0),
            forward: OnceLock::new(),
        })
    }

    /// Whether anyone reads this node's events (here, or elsewhere in the cluster).
    #[inline]
    pub fn is_watched(&self) -> bool {
        self.local.load(Ordering::Relaxed) > 0 || self.remote.load(Ordering::Relaxed)
    }

    /// Publishes the event `make` builds, if anyone reads; never waits.
    #[inline]
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if self.is_watched() {
            self.publish(&make());
        }
    }

    fn publish(&self, event: &Event) {
        self.metrics.events.with_label_values(&[event.kind()]).inc();
        let stamped = Stamped {
            event,
            node: &self.node,
            at: crate::id::now_ms(),
        };
        // Serialising ids, strings and numbers cannot fail.
        let Ok(json) = serde_json::to_string(&stamped) else {
            return;
        };
        if self.local.load(Ordering::Relaxed) > 0 {
            self.offer(frame(&json));
        }
        if self.remote.load(Ordering::Relaxed) {
            if let Some(tx) = self.forward.get() {
                if tx.try_send(json).is_err() {
                    self.metrics
                        .events_dropped
                        .with_label_values(&["queue_full"])
                        .inc();
                }
            }
        }
    }

    /// An event of another node (its JSON as that node built it), for local readers.
    pub fn deliver_remote(&self, json: &str) {
        if self.local.load(Ordering::Relaxed) > 0 {
            self.offer(frame(json));
        }
    }

    /// Offers one frame to every local reader; drops those whose queue is full.
    fn offer(&self, frame: Bytes) {
        let mut dropped = Vec::new();
        {
            let mut readers = self.readers.lock();
            readers.retain(|slot| {
                let kept = slot.offer(&frame);
                if !kept {
                    dropped.push(slot.id);
                }
                kept
            });
            if !dropped.is_empty() {
                self.set_count(readers.len());
            }
        }
        for id in dropped {
            self.metrics
                .events_readers_dropped
                .with_label_values(&["slow"])
                .inc();
            tracing::warn!(
                reader = id,
                queue = READER_QUEUE,
                "event stream reader dropped: it fell behind by a full queue"
            );
        }
    }

    /// A new local reader. It receives every event from now on until it is dropped
    /// (when it falls behind) or the returned [`Reader`] is dropped.
    pub fn reader(self: &Arc<Self>) -> Reader {
        let slot = Arc::new(Slot {
            id: self.next_reader.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(SlotQueue::default()),
            wake: Notify::new(),
        });
        {
            let mut readers = self.readers.lock();
            readers.push(slot.clone());
            self.set_count(readers.len());
        }
        tracing::debug!(reader = slot.id, "event stream reader opened");
        Reader {
            slot,
            events: self.clone(),
        }
    }

    /// Called with the readers lock held, so counts are set in order.
    fn set_count(&self, n: usize) {
        self.local.store(n, Ordering::Relaxed);
        self.metrics.events_readers.set(n as i64);
        self.count.send_replace(n);
    }

    fn remove(&self, id: u64) {
        let mut readers = self.readers.lock();
        if let Some(pos) = readers.iter().position(|s| s.id == id) {
            readers.swap_remove(pos);
            self.set_count(readers.len());
        }
    }

    /// This node's id (events carry it).
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Cluster mode: the local reader count as it changes.
    pub fn readers_changed(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Cluster mode: whether readers on other nodes want this node's events.
    pub fn set_remote(&self, watched: bool) {
        let was = self.remote.swap(watched, Ordering::Relaxed);
        if was != watched {
            tracing::debug!(watched, "readers on other nodes follow this node's events");
        }
    }

    /// Cluster mode: the queue of this node's events for other nodes (bounded by
    /// [`FORWARD_QUEUE`]). Call once; later calls get a receiver that never yields.
    pub fn forward(&self) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
        let _ = self.forward.set(tx);
        rx
    }

    /// The first frame of every stream: the reader is registered (and, in a cluster,
    /// other nodes were told), so everything after it is seen.
    pub fn ready_frame(&self, cluster: bool) -> Bytes {
        #[derive(Serialize)]
        struct Ready<'a> {
            r#type: &'static str,
            node: &'a NodeId,
            at: u64,
            /// Whether events of other nodes come too.
            cluster: bool,
        }
        let ready = Ready {
            r#type: "ready",
            node: &self.node,
            at: crate::id::now_ms(),
            cluster,
        };
        frame(&serde_json::to_string(&ready).unwrap_or_default())
    }
}

/// A local reader's queue.
struct Slot {
    id: u64,
    queue: Mutex<SlotQueue>,
    /// Wakes the reader's stream; `notify_one` keeps a permit, so no wake-up is lost
    /// between a look at the queue and the wait.
    wake: Notify,
}

#[derive(Default)]
struct SlotQueue {
    frames: VecDeque<Bytes>,
    dropped: bool,
}

impl Slot {
    /// Queues a frame; false (and the queue freed) when the reader fell too far behind.
    fn offer(&self, frame: &Bytes) -> bool {
        let mut q = self.queue.lock();
        if q.frames.len() >= READER_QUEUE {
            q.dropped = true;
            q.frames = VecDeque::new();
            drop(q);
            self.wake.notify_one();
            return false;
        }
        q.frames.push_back(frame.clone());
        drop(q);
        self.wake.notify_one();
        true
    }
}

/// What a reader gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// One SSE frame (`data: {...}\n\n`).
    Frame(Bytes),
    /// The reader fell behind and was dropped; nothing more comes.
    Dropped,
}

/// One local reader of the event stream; unregisters itself when dropped.
pub struct Reader {
    slot: Arc<Slot>,
    events: Arc<Events>,
}

impl Reader {
    /// The next frame, waiting for one.
    pub async fn next(&self) -> Item {
        loop {
            {
                let mut q = self.slot.queue.lock();
                if let Some(f) = q.frames.pop_front() {
                    return Item::Frame(f);
                }
                if q.dropped {
                    return Item::Dropped;
                }
            }
            self.slot.wake.notified().await;
        }
    }

    /// The frame that ends a dropped reader's stream, so it knows why it ended.
    pub fn dropped_frame(&self) -> Bytes {
        #[derive(Serialize)]
        struct Dropped<'a> {
            r#type: &'static str,
            node: &'a NodeId,
            at: u64,
            reason: &'static str,
            /// The queue it overflowed, in events.
            queue: usize,
        }
        let dropped = Dropped {
            r#type: "dropped",
            node: &self.events.node,
            at: crate::id::now_ms(),
            reason: "slow",
            queue: READER_QUEUE,
        };
        frame(&serde_json::to_string(&dropped).unwrap_or_default())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.events.remove(self.slot.id);
        tracing::debug!(reader = self.slot.id, "event stream reader closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Arc<Events> {
        Events::new(NodeId::from("n1"), Arc::new(Metrics::new()))
    }

    fn joined(room: &str) -> Event {
        Event::Joined {
            socket: SocketId::from("n1.abc"),
            user: Some(UserId::from("alice")),
            room: RoomName::from(room),
        }
    }

    fn json_of(next: Item) -> serde_json::Value {
        let Item::Frame(f) = next else {
            panic!("expected a frame, got {next:?}");
        };
        let text = std::str::from_utf8(&f).unwrap();
        let body = text
            .strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not one SSE data frame: {text:?}"));
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn nothing_is_built_while_nobody_reads() {
        let e = events();
        assert!(!e.is_watched());
        e.emit(|| panic!("an event was built with no reader"));
        let reader = e.reader();
        assert!(e.is_watched());
        drop(reader);
        assert!(!e.is_watched());
        e.emit(|| panic!("an event was built after the last reader left"));
    }

    #[tokio::test]
    async fn a_reader_gets_each_event_as_one_json_frame_with_node_and_time() {
        let e = events();
        let reader = e.reader();
        e.emit(|| joined("lobby"));
        let v = json_of(reader.next().await);
        assert_eq!(v["type"], "joined");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["socket"], "n1.abc");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["room"], "lobby");
        assert!(v["at"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn a_push_names_its_target_as_the_api_takes_it() {
        let e = events();
        let reader = e.reader();
        e.emit(|| Event::Pushed {
            id: PushId::from("p1"),
            target: "users",
            to: Target::Users(vec![UserId::from("a"), UserId::from("b")]),
            event: "news".into(),
            ack_timeout_ms: Some(5000),
            report: None,
            nodes: Some(2),
        });
        let v = json_of(reader.next().await);
        assert_eq!(v["type"], "pushed");
        assert_eq!(v["to"], serde_json::json!({"users": ["a", "b"]}));
        assert_eq!(v["ack_timeout_ms"], 5000);
        assert_eq!(v["nodes"], 2);
        assert!(v.get("report").is_none());
    }

    #[tokio::test]
    async fn a_reader_that_falls_a_full_queue_behind_is_dropped_and_the_others_are_not() {
        let metrics = Arc::new(Metrics::new());
        let e = Events::new(NodeId::from("n1"), metrics.clone());
        let slow = e.reader();
        let fast = e.reader();
        for i in 0..READER_QUEUE + 1 {
            e.emit(|| joined(&format!("r{i}")));
            assert!(matches!(fast.next().await, Item::Frame(_)));
        }
        assert_eq!(slow.next().await, Item::Dropped, "its queue was freed");
        assert_eq!(
            metrics
                .events_readers_dropped
                .with_label_values(&["slow"])
                .get(),
            1
        );
        assert_eq!(metrics.events_readers.get(), 1);
        e.emit(|| joined("after"));
        assert_eq!(json_of(fast.next().await)["room"], "after");
        drop(slow);
        assert_eq!(
            metrics.events_readers.get(),
            1,
            "dropping it again is a no-op"
        );
    }

    #[tokio::test]
    async fn events_go_to_other_nodes_only_while_they_read_and_a_full_queue_drops() {
        let metrics = Arc::new(Metrics::new());
        let e = Events::new(NodeId::from("n1"), metrics.clone());
        let mut rx = e.forward();
        e.emit(|| panic!("built with nobody reading anywhere"));
        e.set_remote(true);
        e.emit(|| joined("x"));
        let json = rx.try_recv().unwrap();
        assert!(json.contains(r#""room":"x""#), "{json}");
        for _ in 0..FORWARD_QUEUE + 3 {
            e.emit(|| joined("y"));
        }
        assert_eq!(
            metrics
                .events_dropped
                .with_label_values(&["queue_full"])
                .get(),
            3
        );
        e.set_remote(false);
        e.emit(|| panic!("built after the other nodes stopped reading"));
    }

    #[tokio::test]
    async fn another_nodes_event_reaches_local_readers_as_it_was_built() {
        let e = events();
        let reader = e.reader();
        e.deliver_remote(r#"{"type":"left","node":"n2","socket":"n2.x","room":"r","at":1}"#);
        let v = json_of(reader.next().await);
        assert_eq!(
            (v["type"].as_str(), v["node"].as_str()),
            (Some("left"), Some("n2"))
        );
    }

    #[test]
    fn every_event_type_is_a_metric_series_from_the_start() {
        let text = Metrics::new().render();
        let report = Report::default();
        let id = || SocketId::from("n1.a");
        for event in [
            Event::Connected {
                socket: id(),
                user: None,
                frontend: Frontend::SocketIo,
                transport: "websocket",
                namespace: "/".into(),
                rooms: vec![],
            },
            Event::Disconnected {
                socket: id(),
                user: None,
                frontend: Frontend::Phoenix,
                reason: "client",
            },
            joined("r"),
            Event::Left {
                socket: id(),
                user: None,
                room: RoomName::from("r"),
            },
            Event::Pushed {
                id: PushId::from("p"),
                target: "all",
                to: Target::All,
                event: "e".into(),
                ack_timeout_ms: None,
                report: Some(report),
                nodes: None,
            },
            Event::Report {
                id: PushId::from("p"),
                report,
            },
        ] {
            let series = format!(r#"pushgate_events_total{{type="{}"}} 0"#, event.kind());
            assert!(text.contains(&series), "missing {series}");
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], event.kind());
        }
    }

    #[tokio::test]
    async fn the_reader_count_is_followed_for_the_bus() {
        let e = events();
        let mut rx = e.readers_changed();
        let a = e.reader();
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        drop(a);
        assert_eq!(*rx.borrow_and_update(), 0);
    }
}
