//! The Redis bus: any number of nodes sharing one Redis behave as one gateway.
//!
//! Channels (prefix `p`):
//!
//! - `{p}:b` — pushes to all; `{p}:u:{user}` — pushes to a user; `{p}:r:{room}` —
//!   pushes to a room. A node subscribes to each only while it holds a matching local
//!   connection (the hub's [`Observer`] notes tell it when), so a push is one PUBLISH
//!   whatever the cluster size and a node receives only what it can deliver.
//! - `{p}:n:{node}` — the node's inbox: pushes to one of its sockets (the socket id
//!   names its node), delivery reports and acks for pushes it accepted, control
//!   requests (kick, join, leave) and their answers.
//!
//! PUBLISH answers how many nodes received a push; the origin's tracker expects that
//! many `Delivered` reports. Every delivering node — the origin included, through its
//! own subscription — encodes the push once and delivers it through its hub.
//!
//! Tasks, all stopped by [`RedisBus::shutdown`]:
//! - *receive*: decodes each message (bad bytes are counted and skipped) and acts.
//! - *sync*: the only writer of subscriptions and the registry. It batches the hub's
//!   notes for [`BATCH_WINDOW`], subscribes first and then writes the registry, so a
//!   socket that the registry shows is reachable by pushes. It refreshes the registry
//!   every third of its TTL and, after a reconnect, re-subscribes and re-registers
//!   everything.
//! - *health*: follows both connections; while either is down `/readyz` answers 503
//!   and publishing fails fast with [`BusError::Unavailable`].
//! - *outbox*: sends reports, acks and control messages in order, pipelined.
//! - *acks* and *finals*: forward relayed acks; store final reports.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::*;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::envelope::{Envelope, Message, PushEnvelope, Request, WireTarget};
use super::{Bus, BusError, BusFuture, Published};
use crate::delivery::Tracker;
use crate::hub::{Hub, Observer, SocketChange, Topic};
use crate::id::{NodeId, PushId, RoomName, SocketId};
use crate::metrics::Metrics;
use crate::push::Push;
use crate::registry::{Keys, Registry};

/// How long the sync task gathers the hub's notes before it acts on them: long enough
/// that a burst of connects becomes one SUBSCRIBE, short enough not to be noticed.
const BATCH_WINDOW: Duration = Duration::from_millis(3);
/// Every Redis command gives up after this, so neither a push nor a reader hangs on a
/// dead connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the health task looks at the connections (reconnect events are also
/// followed as they come).
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// How long a control request (kick, join, leave) waits for the owner's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// When the sync task could not reach Redis, it tries again after this.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Messages the subscriber's receive queue holds before it lags (lagged messages are
/// counted as dropped; their pushes end as `timed_out` at the origin). fred's queues
/// are tokio broadcast channels, which allocate every slot up front, for each of the
/// client's event streams: 65,536 slots cost ~80 MB per process before the first
/// connection. 8,192 holds several seconds of bus traffic at the rates measured in
/// BENCHMARKS.md and costs a few MB; the publisher keeps fred's default.
const RECEIVE_CAPACITY: usize = 8_192;
/// Channels per SUBSCRIBE command when re-subscribing everything.
const SUBSCRIBE_CHUNK: usize = 1000;

/// How the Redis bus connects.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// TTL of registry entries; refreshed every third of it.
    pub registry_ttl: Duration,
}

/// What the hub tells the bus, queued for the sync task.
enum Note {
    Topic(Topic),
    Socket(SocketChange),
    /// Answered once everything queued before it was applied.
    Barrier(oneshot::Sender<()>),
}

/// The hub's [`Observer`] in cluster mode: queues notes for the bus's sync task.
pub struct ClusterObserver {
    tx: mpsc::UnboundedSender<Note>,
}

/// The receiving end of a [`ClusterObserver`], handed to [`RedisBus::connect`].
pub struct Notes(mpsc::UnboundedReceiver<Note>, mpsc::UnboundedSender<Note>);

impl ClusterObserver {
    pub fn new() -> (Arc<Self>, Notes) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { tx: tx.clone() }), Notes(rx, tx))
    }
}

impl Observer for ClusterObserver {
    fn interest_changed(&self, topic: &Topic) {
        let _ = self.tx.send(Note::Topic(topic.clone()));
    }
    fn socket_changed(&self, change: SocketChange) {
        let _ = self.tx.send(Note::Socket(change));
    }
}

/// The `kind` label of bus metrics for a channel.
fn kind_of(target: &WireTarget) -> &'static str {
    match target {
        WireTarget::All => "broadcast",
        WireTarget::User(_) => "user",
        WireTarget::Room(_) => "room",
        WireTarget::Socket(_) => "inbox",
    }
}

pub struct RedisBus {
    node: NodeId,
    prefix: String,
    /// Commands and PUBLISH; one connection, so everything this node sends is ordered.
    publisher: Client,
    /// SUBSCRIBE and incoming messages.
    subscriber: Client,
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// Both connections are up (as last seen by the health task).
    up: AtomicBool,
    notes: mpsc::UnboundedSender<Note>,
    /// Wakes the sync task to re-subscribe and re-register everything.
    resync: Notify,
    outbox: mpsc::UnboundedSender<(String, Bytes)>,
    /// Control requests waiting for their answer.
    requests: Mutex<HashMap<u64, oneshot::Sender<u32>>>,
    next_request: AtomicU64,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisBus {
    /// Connects (waiting briefly; a Redis that is down at start only makes the node
    /// not ready until it comes) and starts the bus's tasks.
    pub async fn connect(
        settings: RedisSettings,
        node: NodeId,
        started_at: u64,
        hub: Arc<Hub>,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
        notes: Notes,
    ) -> Result<Arc<Self>, BusError> {
        let config = Config::from_url(&settings.url).map_err(BusError::Redis)?;
        let build = |receive_capacity: Option<usize>| {
            Builder::from_config(config.clone())
                .with_performance_config(|p| {
                    p.default_command_timeout = COMMAND_TIMEOUT;
                    if let Some(capacity) = receive_capacity {
                        p.broadcast_channel_capacity = capacity;
                    }
                })
                .with_connection_config(|c| {
                    c.connection_timeout = COMMAND_TIMEOUT;
                    c.internal_command_timeout = COMMAND_TIMEOUT;
                    // A command in flight when the connection dies fails rather than
                    // being sent again later: the caller got an error and may retry.
                    c.max_command_attempts = 1;
                })
                // Unlimited attempts, 100 ms doubling to 2 s.
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2))
                .with_config(|c| c.fail_fast = false)
                .build()
        };
        let publisher = build(None).map_err(BusError::Redis)?;
        let subscriber = build(Some(RECEIVE_CAPACITY)).map_err(BusError::Redis)?;
        let Notes(notes_rx, notes_tx) = notes;
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let keys = Keys::new(&settings.prefix);
        let registry = Arc::new(Registry::new(
            publisher.clone(),
            keys,
            node.clone(),
            settings.registry_ttl,
            started_at,
            hub.clone(),
            metrics.clone(),
        ));
        let bus = Arc::new(RedisBus {
            node,
            prefix: settings.prefix,
            publisher,
            subscriber,
            hub,
            tracker,
            metrics,
            registry,
            up: AtomicBool::new(false),
            notes: notes_tx,
            resync: Notify::new(),
            outbox: outbox_tx,
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        });
        // The receive queue must exist before the first SUBSCRIBE.
        let messages = bus.subscriber.message_rx();
        // The connection tasks run (and reconnect) until `quit`; their handles are not
        // needed.
        drop(bus.publisher.connect());
        drop(bus.subscriber.connect());
        let first = async {
            let _ = bus.publisher.wait_for_connect().await;
            let _ = bus.subscriber.wait_for_connect().await;
        };
        if tokio::time::timeout(COMMAND_TIMEOUT, first).await.is_err() {
            tracing::warn!(url = %redact(&settings.url), "Redis is not reachable yet; the node is not ready until it is");
        }
        bus.check_health();
        let acks = bus.tracker.forward_acks();
        let finals = bus.tracker.final_reports();
        let tasks = vec![
            tokio::spawn(bus.clone().receive(messages)),
            tokio::spawn(bus.clone().sync(notes_rx)),
            tokio::spawn(bus.clone().health()),
            tokio::spawn(bus.clone().send_outbox(outbox_rx)),
            tokio::spawn(bus.clone().forward_acks(acks)),
            tokio::spawn(bus.clone().store_finals(finals)),
        ];
        *bus.tasks.lock() = tasks;
        Ok(bus)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Whether both Redis connections are up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn channel(&self, target: &WireTarget) -> String {
        match target {
            WireTarget::All => format!("{}:b", self.prefix),
            WireTarget::User(u) => format!("{}:u:{u}", self.prefix),
            WireTarget::Room(r) => format!("{}:r:{r}", self.prefix),
            WireTarget::Socket(s) => {
                self.inbox(SocketId::from(s.as_str()).node().unwrap_or_default())
            }
        }
    }

    fn topic_channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::All => format!("{}:b", self.prefix),
            Topic::User(u) => format!("{}:u:{u}", self.prefix),
            Topic::Room(r) => format!("{}:r:{r}", self.prefix),
        }
    }

    fn inbox(&self, node: &str) -> String {
        format!("{}:n:{node}", self.prefix)
    }

    /// The metrics `kind` of a channel this node receives on.
    fn channel_kind(&self, channel: &str) -> &'static str {
        let rest = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or("");
        if rest == "b" {
            "broadcast"
        } else if rest.starts_with("u:") {
            "user"
        } else if rest.starts_with("r:") {
            "room"
        } else {
            "inbox"
        }
    }

    fn unavailable() -> BusError {
        BusError::Unavailable("Redis is unreachable; retry later or on another node".into())
    }

    /// Waits until every note the hub queued so far was applied (subscriptions made,
    /// registry written), at most [`REQUEST_TIMEOUT`].
    pub async fn synced(&self) {
        let (tx, rx) = oneshot::channel();
        if self.notes.send(Note::Barrier(tx)).is_ok() {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        }
    }

    /// Sends a control message to `node` and waits for its answer: how many sockets it
    /// applied to (0 when the node is gone or did not answer in time).
    async fn request(
        &self,
        node: &str,
        make: impl FnOnce(Request) -> Message,
    ) -> Result<u32, BusError> {
        if !self.is_up() {
            return Err(Self::unavailable());
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.requests.lock().insert(id, tx);
        let message = make(Request {
            id,
            from: self.node.to_string(),
        });
        let sent: Result<i64, _> = self
            .publisher
            .publish(self.inbox(node), Envelope::new(message).encode())
            .await;
        let answer = match sent {
            Ok(0) => Ok(0),
            Ok(_) => Ok(tokio::time::timeout(REQUEST_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0)),
            Err(e) => Err(BusError::Redis(e)),
        };
        self.requests.lock().remove(&id);
        self.metrics
            .bus_messages
            .with_label_values(&["out", "inbox"])
            .inc();
        answer
    }

    /// Disconnects sockets of `node`; returns how many it found.
    pub async fn kick(&self, node: &str, sockets: Vec<SocketId>) -> Result<u32, BusError> {
        let sockets = sockets.into_iter().map(|s| s.to_string()).collect();
        self.request(node, |request| Message::Kick { request, sockets })
            .await
    }

    /// Adds (`join`) or removes sockets of `node` to or from `room`; returns how many
    /// changed.
    pub async fn change_room(
        &self,
        node: &str,
        room: &RoomName,
        sockets: Vec<SocketId>,
        join: bool,
    ) -> Result<u32, BusError> {
        let sockets = sockets.into_iter().map(|s| s.to_string()).collect();
        let room = room.to_string();
        self.request(node, |request| {
            if join {
                Message::Join {
                    request,
                    room,
                    sockets,
                }
            } else {
                Message::Leave {
                    request,
                    room,
                    sockets,
                }
            }
        })
        .await
    }

    /// Stops the tasks (after the sync task applied what the hub queued during
    /// shutdown), takes the node out of the registry and closes the connections.
    pub async fn shutdown(&self) {
        self.synced().await;
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        if self.is_up() {
            self.registry.leave().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.subscriber.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.publisher.quit()).await;
    }

    fn send(&self, node: &str, message: Message) {
        let _ = self
            .outbox
            .send((self.inbox(node), Envelope::new(message).encode()));
    }

    // ------------------------------------------------------------------ tasks

    async fn receive(
        self: Arc<Self>,
        mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return,
                m = rx.recv() => m,
            };
            match msg {
                Ok(msg) => self.on_message(msg),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(messages = n, "the bus fell behind and skipped messages");
                    self.metrics
                        .bus_dropped
                        .with_label_values(&["lagged"])
                        .inc_by(n);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn on_message(&self, msg: fred::types::Message) {
        let kind = self.channel_kind(&msg.channel);
        self.metrics
            .bus_messages
            .with_label_values(&["in", kind])
            .inc();
        let bytes: Bytes = match msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.into_inner(),
            _ => Bytes::new(),
        };
        let envelope = match Envelope::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .bus_dropped
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::debug!(channel = %msg.channel, error = %e, "bus message skipped");
                return;
            }
        };
        match envelope.m {
            Message::Push(push) => self.deliver(push),
            Message::Delivered {
                push,
                sockets,
                delivered,
                failed,
                ..
            } => self.tracker.node_reported(
                &PushId::from(push),
                sockets as usize,
                delivered as usize,
                failed as usize,
            ),
            Message::Acked { push, n } => self.tracker.acked(&PushId::from(push), n as usize),
            Message::Kick { request, sockets } => {
                let mut n = 0;
                for sid in sockets {
                    let sid = SocketId::from(sid);
                    if let Some(conn) = self.hub.connection(&sid) {
                        conn.disconnect(&sid);
                        n += 1;
                    }
                }
                tracing::info!(sockets = n, from = %request.from, "sockets disconnected on request");
                self.send(
                    &request.from,
                    Message::Done {
                        request: request.id,
                        n,
                    },
                );
            }
            Message::Join {
                request,
                room,
                sockets,
            } => self.rooms(request, room, sockets, true),
            Message::Leave {
                request,
                room,
                sockets,
            } => self.rooms(request, room, sockets, false),
            Message::Done { request, n } => {
                if let Some(tx) = self.requests.lock().remove(&request) {
                    let _ = tx.send(n);
                }
            }
        }
    }

    fn rooms(&self, request: Request, room: String, sockets: Vec<String>, join: bool) {
        let room = RoomName::from(room);
        let n = sockets
            .into_iter()
            .map(SocketId::from)
            .filter(|s| {
                if join {
                    self.hub.join(s, &room)
                } else {
                    self.hub.leave(s, &room)
                }
            })
            .count() as u32;
        // Answer once the subscription for the room is in place, so that a push the
        // caller sends after the answer reaches the sockets.
        let (tx, rx) = oneshot::channel();
        let _ = self.notes.send(Note::Barrier(tx));
        let outbox = self.outbox.clone();
        let to = self.inbox(&request.from);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
            let _ = outbox.send((
                to,
                Envelope::new(Message::Done {
                    request: request.id,
                    n,
                })
                .encode(),
            ));
        });
    }

    /// Delivers a push from the bus to this node's sockets and reports to its origin.
    fn deliver(&self, env: PushEnvelope) {
        let origin = NodeId::from(env.origin.as_str());
        let Some(push) = env.into_push(crate::id::now_ms()) else {
            self.metrics
                .bus_dropped
                .with_label_values(&["undecodable"])
                .inc();
            return;
        };
        let local_ack = push.ack.map(|_| self.tracker.relay(&push.id, &origin));
        let fan = super::deliver(&self.hub, &push, local_ack);
        if origin == self.node {
            self.tracker
                .node_reported(&push.id, fan.sockets, fan.delivered, fan.failed);
        } else {
            self.send(
                origin.as_str(),
                Message::Delivered {
                    push: push.id.to_string(),
                    node: self.node.to_string(),
                    sockets: fan.sockets as u32,
                    delivered: fan.delivered as u32,
                    failed: fan.failed as u32,
                },
            );
        }
        if let (Some(ack_id), Some(timeout)) = (local_ack, push.ack) {
            self.tracker.relayed(ack_id, fan.delivered_to, timeout);
        }
    }

    async fn send_outbox(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, Bytes)>) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = rx.recv_many(&mut batch, 512) => if n == 0 { return },
            }
            if !self.is_up() {
                // Reports and acks for pushes in flight are lost with the connection;
                // their origins make the reports final at the deadline.
                batch.clear();
                continue;
            }
            let p = self.publisher.pipeline();
            for (channel, bytes) in batch.drain(..) {
                let _: FredResult<()> = p.publish(channel, bytes).await;
                self.metrics
                    .bus_messages
                    .with_label_values(&["out", "inbox"])
                    .inc();
            }
            if let Err(e) = p.all::<Value>().await {
                tracing::debug!(error = %e, "bus reports not sent");
            }
        }
    }

    async fn forward_acks(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<crate::delivery::ForwardedAck>,
    ) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                n = rx.recv_many(&mut batch, 1024) => if n == 0 { return },
            }
            // Acks that arrived together for one push travel as one message.
            let mut counts: HashMap<(PushId, NodeId), u32> = HashMap::new();
            for a in batch.drain(..) {
                *counts.entry((a.push, a.origin)).or_default() += 1;
            }
            for ((push, origin), n) in counts {
                if origin == self.node {
                    self.tracker.acked(&push, n as usize);
                } else {
                    self.send(
                        origin.as_str(),
                        Message::Acked {
                            push: push.to_string(),
                            n,
                        },
                    );
                }
            }
        }
    }

    async fn store_finals(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(PushId, crate::delivery::Report)>,
    ) {
        loop {
            let (id, report) = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            if self.is_up() {
                // Not awaited in turn: fred pipelines concurrent commands.
                let registry = self.registry.clone();
                tokio::spawn(async move { registry.put_report(id.as_str(), &report).await });
            }
        }
    }

    fn check_health(&self) -> bool {
        let up = self.publisher.is_connected() && self.subscriber.is_connected();
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

    async fn health(self: Arc<Self>) {
        let mut publisher = self.publisher.reconnect_rx();
        let mut subscriber = self.subscriber.reconnect_rx();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => { self.check_health(); }
                r = publisher.recv() => self.reconnected(r.is_ok(), "publisher"),
                r = subscriber.recv() => self.reconnected(r.is_ok(), "subscriber"),
            }
        }
    }

    fn reconnected(&self, ok: bool, which: &'static str) {
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

    async fn sync(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Note>) {
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut full = true;
        let mut refresh = tokio::time::interval(self.registry.ttl() / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notes = Vec::new();
        loop {
            let mut refresh_due = false;
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.resync.notified() => full = true,
                _ = refresh.tick() => refresh_due = true,
                _ = tokio::time::sleep(RETRY_INTERVAL), if full => {}
                n = rx.recv_many(&mut notes, 4096) => {
                    if n == 0 { return }
                    tokio::time::sleep(BATCH_WINDOW).await;
                    while let Ok(note) = rx.try_recv() {
                        notes.push(note);
                    }
                }
            }
            let mut topics = HashSet::new();
            let mut changes = Vec::new();
            let mut barriers = Vec::new();
            for note in notes.drain(..) {
                match note {
                    Note::Topic(t) => {
                        topics.insert(t);
                    }
                    Note::Socket(c) => changes.push(c),
                    Note::Barrier(b) => barriers.push(b),
                }
            }
            if self.is_up() {
                if full {
                    full = !self.resubscribe(&mut subscribed).await;
                    if !full {
                        match self.registry.refresh().await {
                            Ok(n) => tracing::info!(sockets = n, "registered every local socket"),
                            Err(_) => full = true,
                        }
                    }
                    topics.clear();
                    refresh_due = false;
                }
                if !topics.is_empty() && !self.update(&mut subscribed, topics).await {
                    full = true;
                }
                self.registry.apply(changes).await;
                if refresh_due && self.registry.refresh().await.is_err() {
                    full = true;
                }
            } else {
                full = true;
            }
            self.count_subscriptions(&subscribed);
            for b in barriers {
                let _ = b.send(());
            }
        }
    }

    /// Subscribes to the inbox and every channel with local interest; drops the rest.
    async fn resubscribe(&self, subscribed: &mut HashSet<String>) -> bool {
        let mut want: HashSet<String> = self
            .hub
            .interests()
            .iter()
            .map(|t| self.topic_channel(t))
            .collect();
        want.insert(self.inbox(self.node.as_str()));
        let all: Vec<String> = want.iter().cloned().collect();
        for chunk in all.chunks(SUBSCRIBE_CHUNK) {
            if let Err(e) = self.subscriber.subscribe(chunk.to_vec()).await {
                tracing::warn!(error = %e, "re-subscribing failed; will retry");
                return false;
            }
        }
        let stale: Vec<String> = subscribed.difference(&want).cloned().collect();
        if !stale.is_empty() {
            let _ = self.subscriber.unsubscribe(stale).await;
        }
        tracing::info!(channels = want.len(), "subscribed to every needed channel");
        *subscribed = want;
        true
    }

    /// Makes the subscriptions of `topics` match the hub's current interest.
    async fn update(&self, subscribed: &mut HashSet<String>, topics: HashSet<Topic>) -> bool {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for t in topics {
            let channel = self.topic_channel(&t);
            let want = self.hub.has_interest(&t);
            if want && !subscribed.contains(&channel) {
                add.push(channel);
            } else if !want && subscribed.contains(&channel) {
                remove.push(channel);
            }
        }
        if !add.is_empty() {
            match self.subscriber.subscribe(add.clone()).await {
                Ok(()) => subscribed.extend(add),
                Err(e) => {
                    tracing::warn!(error = %e, "SUBSCRIBE failed");
                    return false;
                }
            }
        }
        if !remove.is_empty() {
            match self.subscriber.unsubscribe(remove.clone()).await {
                Ok(()) => {
                    for c in &remove {
                        subscribed.remove(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UNSUBSCRIBE failed");
                    return false;
                }
            }
        }
        true
    }

    fn count_subscriptions(&self, subscribed: &HashSet<String>) {
        let mut counts: HashMap<&'static str, i64> =
            [("broadcast", 0), ("user", 0), ("room", 0), ("inbox", 0)].into();
        for c in subscribed {
            *counts.entry(self.channel_kind(c)).or_default() += 1;
        }
        for (kind, n) in counts {
            self.metrics
                .bus_subscriptions
                .with_label_values(&[kind])
                .set(n);
        }
    }
}

impl Bus for RedisBus {
    fn publish<'a>(&'a self, push: &'a Push, _ack_id: Option<u64>) -> BusFuture<'a> {
        Box::pin(async move {
            if !self.is_up() {
                return Err(Self::unavailable());
            }
            let start = Instant::now();
            let mut nodes = 0usize;
            for (target, env) in PushEnvelope::of(push, self.node.as_str(), crate::id::now_ms()) {
                let channel = self.channel(&target);
                let bytes = Envelope::new(Message::Push(env)).encode();
                let n: i64 = self
                    .publisher
                    .publish(channel, bytes)
                    .await
                    .map_err(BusError::Redis)?;
                nodes += n.max(0) as usize;
                self.metrics
                    .bus_messages
                    .with_label_values(&["out", kind_of(&target)])
                    .inc();
            }
            self.metrics
                .bus_publish_seconds
                .observe(start.elapsed().as_secs_f64());
            tracing::trace!(push = %push.id, nodes, "published");
            Ok(Published::Cluster { nodes })
        })
    }

    fn is_cluster(&self) -> bool {
        true
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
