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
//! - `{p}:e`, `{p}:ew` — the event stream's batches and watch announcements
//!   (`events.rs`).
//!
//! PUBLISH answers how many nodes received a push; the origin's tracker expects that
//! many `Delivered` reports. Every delivering node — the origin included, through its
//! own subscription — encodes the push once and delivers it through its hub.
//!
//! Presence diffs travel on the room's channel too ([`Message::Presence`]).
//!
//! Files: `sync.rs` (interest → subscriptions), `writer.rs` (socket changes →
//! registry, presence diffs out), `lease.rs` (lease, liveness, dead nodes),
//! `receive.rs` (what arrives), `outbox.rs` (what is sent to other nodes),
//! `control.rs` (kick, join and leave requests), `health.rs` (the connections' state),
//! `events.rs` (the event stream across nodes).
//!
//! Three connections: the *publisher* (pushes, reports, control), the *subscriber*,
//! and the registry's own, so registry work never delays a publish or a subscription.
//!
//! Tasks, all stopped by [`RedisBus::shutdown`]:
//! - *receive*: decodes each message (bad bytes are counted and skipped) and acts.
//! - *sync*: the only writer of subscriptions. It batches the hub's notes for
//!   [`BATCH_WINDOW`], subscribes, then hands socket changes to the writer, so a
//!   socket that the registry shows is reachable by pushes. After a reconnect it
//!   re-subscribes everything.
//! - *writer*: the only writer of socket, user, room and presence entries (only when
//!   they change); reconciles the registry with the hub after a reconnect or a lost
//!   lease.
//! - *lease*: refreshes the node's lease, follows the other nodes', cleans up after
//!   dead ones — the only periodic Redis work, O(1) per node.
//! - *health*: follows the connections; while one is down `/readyz` answers 503
//!   and publishing fails fast with [`BusError::Unavailable`].
//! - *outbox*: sends reports, acks and control messages in order, pipelined.
//! - *acks* and *finals*: forward relayed acks; store final reports.
//! - *events* (once [`RedisBus::carry_events`] is called): the event stream's
//!   subscriptions and batches.

mod control;
mod events;
mod health;
mod lease;
mod outbox;
mod receive;
mod recovery;
mod sync;
mod writer;

pub use control::RoomChange;
use sync::{Barrier, Note};
pub use sync::{ClusterObserver, Notes};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::interfaces::PubsubInterface;
use fred::prelude::*;
use fred::types::FromValue;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::envelope::{Envelope, Message, PushEnvelope, Request, WireTarget};
use super::{Bus, BusError, BusFuture, Published};
use crate::delivery::Tracker;
use crate::hub::{Hub, Observer, SocketChange, Topic};
use crate::id::{NodeId, PushId, RoomName, SocketId, Target};
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
/// Failed registry operations kept to retry; past this many, the writer reconciles
/// the node whole instead.
const MAX_RETRIED_OPS: usize = 50_000;
/// Messages the subscriber's receive queue holds before it lags (lagged messages are
/// counted as dropped; their pushes end as `timed_out` at the origin). fred's queues
/// are tokio broadcast channels, which allocate every slot up front, for each of the
/// client's event streams: 65,536 slots cost ~80 MB per process before the first
/// connection. 8,192 holds several seconds of bus traffic at the rates measured in
/// BENCHMARKS.md and costs a few MB; the publisher keeps fred's default.
const RECEIVE_CAPACITY: usize = 8_192;
/// Channels per SUBSCRIBE command when re-subscribing everything.
const SUBSCRIBE_CHUNK: usize = 1000;
/// After losing Redis, how long a node that has re-subscribed waits for its peers to
/// re-subscribe too before it takes pushes again anyway (a peer that never confirms is
/// probably dead, and its lease will say so). Covers the reconnect backoff (2 s at
/// most) and a large re-subscription.
const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// How the Redis bus connects.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// Within this a dead node's entries leave every answer: its lease lives half of
    /// it and is refreshed (and the others' checked) every sixth.
    pub registry_ttl: Duration,
    /// Where the other nodes reach this one (`host:port`), published in the registry.
    pub advertise: Option<String>,
}

/// A node's way back after it lost Redis: its own subscriptions, then its peers'.
#[derive(Default)]
struct Recovery {
    /// When the loss was seen (ms since the epoch); `None` when nothing is pending.
    lost_at: Option<u64>,
    /// The nodes alive before the loss, whose re-subscription this node waits for.
    peers: Vec<NodeId>,
    /// When this node had re-subscribed everything after the loss.
    resubscribed_at: Option<Instant>,
    /// Until when dead-node cleanups wait: after a loss every node's lease may have
    /// lapsed, and the others need a scan interval to refresh theirs.
    quiet_until: Option<Instant>,
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
    /// The registry's own connection (held by `registry`).
    registry_client: Client,
    /// On a Redis Cluster every channel is sharded (SSUBSCRIBE/SPUBLISH): all of a
    /// channel's subscribers are on the one shard that owns its slot, so a SPUBLISH's
    /// answer counts every node that will deliver — where a plain PUBLISH in a cluster
    /// counts only the receivers connected to the Redis node that took it.
    sharded: bool,
    hub: Arc<Hub>,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// Every connection is up (as last seen by the health task).
    up: AtomicBool,
    /// This node's subscriptions are in place since the connections last came up.
    subscribed: AtomicBool,
    /// No peer is still re-subscribing after a loss of Redis this node saw too (see
    /// `health.rs`): pushes would reach none of that peer's sockets.
    caught_up: AtomicBool,
    recovery: Mutex<Recovery>,
    notes: mpsc::UnboundedSender<Note>,
    /// Wakes the sync task to re-subscribe everything (and the writer to reconcile).
    resync: Notify,
    /// The writer task's queue.
    writer: mpsc::UnboundedSender<writer::Work>,
    outbox: mpsc::UnboundedSender<(String, Bytes)>,
    /// Control requests waiting for their answer.
    requests: Mutex<HashMap<u64, oneshot::Sender<control::Answer>>>,
    next_request: AtomicU64,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The event stream's cluster path, once carried (`events.rs`).
    events: OnceLock<events::Link>,
    /// Connection state recovery, when on (`recovery.rs`).
    keeping: OnceLock<recovery::Keeping>,
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
        let sharded = config.server.is_clustered();
        let publisher = build(None).map_err(BusError::Redis)?;
        let subscriber = build(Some(RECEIVE_CAPACITY)).map_err(BusError::Redis)?;
        let registry_client = build(None).map_err(BusError::Redis)?;
        let Notes(notes_rx, notes_tx) = notes;
        let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let keys = Keys::new(&settings.prefix);
        let registry = Arc::new(Registry::new(
            registry_client.clone(),
            keys,
            node.clone(),
            settings.registry_ttl,
            started_at,
            settings.advertise.clone(),
            metrics.clone(),
        ));
        let bus = Arc::new(RedisBus {
            node,
            prefix: settings.prefix,
            publisher,
            subscriber,
            registry_client,
            sharded,
            hub,
            tracker,
            metrics,
            registry,
            up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            caught_up: AtomicBool::new(true),
            recovery: Mutex::new(Recovery::default()),
            notes: notes_tx,
            resync: Notify::new(),
            writer: writer_tx,
            outbox: outbox_tx,
            requests: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            events: OnceLock::new(),
            keeping: OnceLock::new(),
        });
        // The receive queue must exist before the first SUBSCRIBE.
        let messages = bus.subscriber.message_rx();
        // The connection tasks run (and reconnect) until `quit`; their handles are not
        // needed.
        drop(bus.publisher.connect());
        drop(bus.subscriber.connect());
        drop(bus.registry_client.connect());
        let first = async {
            let _ = bus.publisher.wait_for_connect().await;
            let _ = bus.subscriber.wait_for_connect().await;
            let _ = bus.registry_client.wait_for_connect().await;
        };
        if tokio::time::timeout(COMMAND_TIMEOUT, first).await.is_err() {
            tracing::warn!(url = %redact(&settings.url), "Redis is not reachable yet; the node is not ready until it is");
        }
        bus.check_health();
        bus.tracker.count_unreported_with(bus.registry.clone());
        let acks = bus.tracker.forward_acks();
        let finals = bus.tracker.final_reports();
        let tasks = vec![
            tokio::spawn(bus.clone().receive(messages)),
            tokio::spawn(bus.clone().sync(notes_rx)),
            tokio::spawn(bus.clone().write(writer_rx)),
            tokio::spawn(bus.clone().lease()),
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

    /// Whether the node takes pushes: every Redis connection is up, its subscriptions
    /// are in place, and its peers re-subscribed after a loss they saw too. `/readyz`
    /// answers from this.
    pub fn is_up(&self) -> bool {
        self.connected()
            && self.subscribed.load(Ordering::Acquire)
            && self.caught_up.load(Ordering::Acquire)
    }

    /// Whether every Redis connection is up (enough for the registry and reports).
    pub fn connected(&self) -> bool {
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
        } else if rest == "e" || rest == "ew" {
            "events"
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

    /// Stops the tasks (after the sync task applied what the hub queued during
    /// shutdown), takes the node out of the registry and closes the connections.
    pub async fn shutdown(&self) {
        self.synced().await;
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        if self.connected() {
            self.registry.leave().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.subscriber.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.publisher.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.registry_client.quit()).await;
    }

    /// PUBLISH `bytes` on `channel` through `client` (a client or a pipeline), or
    /// SPUBLISH on a Redis Cluster (see [`RedisBus::sharded`]).
    async fn publish_on<C, R>(&self, client: &C, channel: String, bytes: Bytes) -> FredResult<R>
    where
        C: PubsubInterface + Sync,
        R: FromValue,
    {
        if self.sharded {
            client.spublish(channel, bytes).await
        } else {
            client.publish(channel, bytes).await
        }
    }

    /// SUBSCRIBE to `channels`; on a Redis Cluster SSUBSCRIBE, one command per hash
    /// slot (a sharded subscription names channels of one slot), sent concurrently.
    async fn subscribe_all(&self, channels: Vec<String>) -> FredResult<()> {
        if !self.sharded {
            return self.subscriber.subscribe(channels).await;
        }
        let by_slot = by_slot(channels);
        futures_util::future::try_join_all(
            by_slot.into_values().map(|c| self.subscriber.ssubscribe(c)),
        )
        .await
        .map(|_| ())
    }

    /// UNSUBSCRIBE, or SUNSUBSCRIBE per hash slot on a Redis Cluster.
    async fn unsubscribe_all(&self, channels: Vec<String>) -> FredResult<()> {
        if !self.sharded {
            return self.subscriber.unsubscribe(channels).await;
        }
        futures_util::future::try_join_all(
            by_slot(channels)
                .into_values()
                .map(|c| self.subscriber.sunsubscribe(c)),
        )
        .await
        .map(|_| ())
    }

    /// Publishes a recoverable push through the recording script: all of it or,
    /// on an error, none of it.
    async fn publish_recorded(
        &self,
        push: &Push,
        envelopes: Vec<(WireTarget, PushEnvelope)>,
        start: Instant,
    ) -> Result<Published, BusError> {
        let kinds: Vec<&'static str> = envelopes.iter().map(|(t, _)| kind_of(t)).collect();
        let messages: Vec<(String, Bytes)> = envelopes
            .into_iter()
            .map(|(target, env)| {
                (
                    self.channel(&target),
                    Envelope::new(Message::Push(env)).encode(),
                )
            })
            .collect();
        let counts = self
            .record_and_publish(push, &messages)
            .await
            .map_err(BusError::Redis)?;
        for kind in kinds {
            self.metrics
                .bus_messages
                .with_label_values(&["out", kind])
                .inc();
        }
        self.metrics
            .bus_publish_seconds
            .observe(start.elapsed().as_secs_f64());
        let nodes = counts.iter().map(|n| (*n).max(0) as usize).sum();
        tracing::trace!(push = %push.id, nodes, "recorded and published");
        Ok(Published::Cluster {
            nodes,
            refused: Vec::new(),
        })
    }

    fn send(&self, node: &str, message: Message) {
        let _ = self
            .outbox
            .send((self.inbox(node), Envelope::new(message).encode()));
    }
}

impl Bus for RedisBus {
    /// One PUBLISH per envelope (one per user for a push to several users), sent in one
    /// pipeline. Users whose PUBLISH failed are named in the answer: the push reached
    /// the others, and a retry must resend only those.
    fn publish<'a>(&'a self, push: &'a Push, _ack_id: Option<u64>) -> BusFuture<'a> {
        Box::pin(async move {
            if !self.is_up() {
                return Err(Self::unavailable());
            }
            let start = Instant::now();
            let envelopes = PushEnvelope::of(push, self.node.as_str(), crate::id::now_ms());
            if push.recoverable && self.keeping.get().is_some() {
                return self.publish_recorded(push, envelopes, start).await;
            }
            let p = self.publisher.pipeline();
            let mut kinds = Vec::with_capacity(envelopes.len());
            for (target, env) in envelopes {
                let channel = self.channel(&target);
                let bytes = Envelope::new(Message::Push(env)).encode();
                let () = self
                    .publish_on(&p, channel, bytes)
                    .await
                    .map_err(BusError::Redis)?;
                kinds.push(target);
            }
            let answers: Vec<FredResult<i64>> = p.try_all().await;
            let mut nodes = 0usize;
            let mut refused = Vec::new();
            let mut last_error = None;
            for (target, answer) in kinds.iter().zip(answers) {
                match answer {
                    Ok(n) => {
                        nodes += n.max(0) as usize;
                        self.metrics
                            .bus_messages
                            .with_label_values(&["out", kind_of(target)])
                            .inc();
                    }
                    Err(e) => {
                        if let WireTarget::User(u) = target {
                            refused.push(crate::id::UserId::from(u.as_str()));
                        }
                        last_error = Some(e);
                    }
                }
            }
            self.metrics
                .bus_publish_seconds
                .observe(start.elapsed().as_secs_f64());
            if let Some(e) = last_error {
                // Nothing published, or a target that is not a list of users: the push
                // was not accepted at all.
                if refused.len() == kinds.len() || !matches!(push.target, Target::Users(_)) {
                    return Err(BusError::Redis(e));
                }
                tracing::warn!(push = %push.id, refused = refused.len(), error = %e, "a push to several users reached only some of them");
            }
            tracing::trace!(push = %push.id, nodes, "published");
            Ok(Published::Cluster { nodes, refused })
        })
    }

    fn is_cluster(&self) -> bool {
        true
    }
}

/// Channels grouped by their Redis Cluster hash slot.
fn by_slot(channels: Vec<String>) -> HashMap<u16, Vec<String>> {
    let mut out: HashMap<u16, Vec<String>> = HashMap::new();
    for c in channels {
        let slot = fred::types::Key::from(c.as_str()).cluster_hash();
        out.entry(slot).or_default().push(c);
    }
    out
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl crate::presence::Presences for RedisBus {
    /// Waits for this node's earlier changes to be written (a client that just joined
    /// sees itself), then reads the room from the registry.
    fn state<'a>(
        &'a self,
        room: &'a RoomName,
    ) -> crate::presence::PresenceFuture<'a, Vec<crate::presence::Meta>> {
        Box::pin(async move {
            if !crate::presence::is_presence_room(room.as_str()) {
                return Err(crate::presence::PresenceError::NotTracked);
            }
            self.synced().await;
            self.registry
                .presence(room)
                .await
                .map_err(|e| crate::presence::PresenceError::Unavailable(Box::new(e)))
        })
    }

    fn count<'a>(&'a self, room: &'a RoomName) -> crate::presence::PresenceFuture<'a, usize> {
        Box::pin(async move {
            if !crate::presence::is_presence_room(room.as_str()) {
                return Err(crate::presence::PresenceError::NotTracked);
            }
            self.registry
                .presence_count(room)
                .await
                .map_err(|e| crate::presence::PresenceError::Unavailable(Box::new(e)))
        })
    }
}
