//! The event stream across the cluster (`crate::events`): a reader on any node sees
//! the events of every node.
//!
//! Channels (prefix `p`):
//!
//! - `{p}:e` — batches of events ([`Message::Events`]). A node subscribes to it only
//!   while it has local readers, and publishes its own events to it only while some
//!   other node does.
//! - `{p}:ew` — watch announcements ([`Message::Watch`]); every node subscribes to it.
//!   A node that gets its first local reader subscribes to `{p}:e`, then announces on
//!   `{p}:ew` and waits (at most [`REQUEST_TIMEOUT`]) until every node that received
//!   the announcement answered, so that the reader's `ready` means "every event from
//!   now on". A node that starts (or reconnects) later asks `PUBSUB NUMSUB {p}:e`
//!   once.
//!
//! Forwarding stops by itself: a PUBLISH to `{p}:e` that no other node received (its
//! answer counts subscribers) turns it off, unless an announcement arrived meanwhile
//! (an epoch counter says so: the answer and the announcement travel on different
//! connections, so their order here is not Redis's order).
//!
//! Cost: nothing at steady state (two idle subscriptions at most). While someone
//! reads, each node publishes at most one batch per [`FLUSH_WINDOW`], of at most
//! [`BATCH`] events, from a bounded queue ([`crate::events::FORWARD_QUEUE`]; what
//! does not fit is dropped and counted) — independent of how many connections the
//! node holds.

use super::*;
use crate::events::Events;
use tokio::sync::watch;

/// How long the *events* task gathers events before it publishes them: bounds the
/// rate to about 20 PUBLISH per second per node while someone reads, and adds no
/// delay a person watching a console would notice.
const FLUSH_WINDOW: Duration = Duration::from_millis(50);
/// Events per PUBLISH at most (a few hundred bytes each).
const BATCH: usize = 512;

/// What the Redis bus keeps for the event stream.
pub(super) struct Link {
    events: Arc<Events>,
    /// Bumped by every announcement from another node: a PUBLISH answer or a NUMSUB
    /// count that was asked before it must not turn forwarding off.
    epoch: AtomicU64,
    /// This node's announcements waiting for answers, by request id.
    announcements: Mutex<HashMap<u64, Announcement>>,
    /// Readers waiting until the cluster's events are followed.
    barriers: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

struct Announcement {
    /// How many nodes received it (PUBLISH's answer), once known.
    expected: Option<usize>,
    answered: usize,
    done: Option<oneshot::Sender<()>>,
}

impl Announcement {
    fn settle(&mut self) {
        if self.expected.is_some_and(|e| self.answered >= e) {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl RedisBus {
    /// Carries `events` across the cluster: starts the *events* task. Call once.
    pub fn carry_events(self: &Arc<Self>, events: Arc<Events>) {
        let (barriers, barriers_rx) = mpsc::unbounded_channel();
        let forward = events.forward();
        let readers = events.readers_changed();
        let link = Link {
            events,
            epoch: AtomicU64::new(0),
            announcements: Mutex::new(HashMap::new()),
            barriers,
        };
        if self.events.set(link).is_err() {
            return;
        }
        let task = tokio::spawn(self.clone().carry(forward, readers, barriers_rx));
        self.tasks.lock().push(task);
    }

    /// Waits until this node follows the other nodes' events and they were told to
    /// send them (at most about two request timeouts; on a Redis outage, at once).
    pub async fn events_followed(&self) {
        let Some(link) = self.events.get() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if link.barriers.send(tx).is_ok() {
            let _ = tokio::time::timeout(2 * REQUEST_TIMEOUT, rx).await;
        }
    }

    fn events_channel(&self) -> String {
        format!("{}:e", self.prefix)
    }

    fn watch_channel(&self) -> String {
        format!("{}:ew", self.prefix)
    }

    /// Another node's batch: to the local readers (this node's own batches come back
    /// through its subscription and are skipped: its readers had them first-hand).
    pub(super) fn on_events(&self, node: &str, events: Vec<String>) {
        if node == self.node.as_str() {
            return;
        }
        if let Some(link) = self.events.get() {
            for json in &events {
                link.events.deliver_remote(json);
            }
        }
    }

    /// A node announced readers: forward this node's events, and answer.
    pub(super) fn on_watch(&self, request: Request) {
        if let Some(link) = self.events.get() {
            if request.from != self.node.as_str() {
                link.epoch.fetch_add(1, Ordering::AcqRel);
                link.events.set_remote(true);
            }
        }
        self.send(
            &request.from,
            Message::Done {
                request: request.id,
                n: 1,
                refused: Vec::new(),
            },
        );
    }

    /// An answer to one of this node's announcements; false when `request` is not one.
    pub(super) fn on_watch_answer(&self, request: u64) -> bool {
        let Some(link) = self.events.get() else {
            return false;
        };
        let mut pending = link.announcements.lock();
        match pending.get_mut(&request) {
            Some(a) => {
                a.answered += 1;
                a.settle();
                true
            }
            None => false,
        }
    }

    /// The *events* task: follows `{p}:e` while there are local readers, publishes
    /// this node's events in batches, re-subscribes after a reconnect.
    async fn carry(
        self: Arc<Self>,
        mut forward: mpsc::Receiver<String>,
        mut readers: watch::Receiver<usize>,
        mut barriers: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    ) {
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut reconnects_open = true;
        // Whether the watch channel must be (re)subscribed and the cluster asked.
        let mut setup = true;
        // Whether this node is subscribed to `{p}:e`.
        let mut following = false;
        let mut batch: Vec<String> = Vec::new();
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            // First the state (at once when the task starts: a node that has not
            // subscribed to the watch channel yet would miss an announcement).
            let want = *readers.borrow_and_update() > 0;
            if !self.connected() {
                setup = true;
            } else if setup {
                setup = !self.setup_events(want).await;
                following = want && !setup;
            } else if want != following {
                if self.follow_events(want).await {
                    following = want;
                } else {
                    setup = true;
                }
            }
            // Answered even when Redis is away: the reader then sees this node only.
            for b in waiting.drain(..) {
                let _ = b.send(());
            }
            if !batch.is_empty() {
                self.publish_events(&mut batch, following).await;
            }
            let subscribed = if setup { 0 } else { 1 + following as i64 };
            self.metrics
                .bus_subscriptions
                .with_label_values(&["events"])
                .set(subscribed);
            // Then wait for news.
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = reconnects.recv(), if reconnects_open => match r {
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => reconnects_open = false,
                    // A new connection has no subscriptions.
                    _ => setup = true,
                },
                r = readers.changed() => if r.is_err() { return },
                b = barriers.recv() => match b {
                    Some(b) => waiting.push(b),
                    None => return,
                },
                _ = tokio::time::sleep(RETRY_INTERVAL), if setup => {}
                n = forward.recv_many(&mut batch, BATCH) => {
                    if n == 0 { return }
                    tokio::time::sleep(FLUSH_WINDOW).await;
                    while batch.len() < BATCH {
                        match forward.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    /// Subscribes to the watch channel (and to `{p}:e` when `follow`), asks whether
    /// other nodes read, and announces this node's readers. False: try again later.
    async fn setup_events(&self, follow: bool) -> bool {
        let link = self.events.get().expect("carry_events set the link");
        let mut channels = vec![self.watch_channel()];
        if follow {
            channels.push(self.events_channel());
        }
        if let Err(e) = self.subscribe_all(channels).await {
            tracing::warn!(error = %e, "subscribing to the event channels failed; will retry");
            return false;
        }
        let epoch = link.epoch.load(Ordering::Acquire);
        // On a Redis Cluster the channels are sharded: every subscriber is on the
        // channel's shard, which SHARDNUMSUB (routed there) counts.
        let counts: FredResult<Vec<Value>> = if self.sharded {
            self.publisher
                .pubsub_shardnumsub(self.events_channel())
                .await
        } else {
            self.publisher.pubsub_numsub(self.events_channel()).await
        };
        let subscribers = match counts {
            Ok(v) => v.get(1).and_then(Value::as_i64).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "PUBSUB NUMSUB failed; will retry");
                return false;
            }
        };
        let others = subscribers - follow as i64 > 0;
        if others || link.epoch.load(Ordering::Acquire) == epoch {
            link.events.set_remote(others);
        }
        if follow {
            self.announce(link).await
        } else {
            true
        }
    }

    /// Subscribes to `{p}:e` and announces (`follow`), or unsubscribes.
    async fn follow_events(&self, follow: bool) -> bool {
        let link = self.events.get().expect("carry_events set the link");
        if follow {
            if let Err(e) = self.subscribe_all(vec![self.events_channel()]).await {
                tracing::warn!(error = %e, "subscribing to the events channel failed");
                return false;
            }
            tracing::debug!("following the cluster's events");
            self.announce(link).await
        } else {
            if let Err(e) = self.unsubscribe_all(vec![self.events_channel()]).await {
                tracing::warn!(error = %e, "unsubscribing from the events channel failed");
                return false;
            }
            tracing::debug!("no event readers left: not following the cluster's events");
            true
        }
    }

    /// Tells every node that this one has readers and waits for their answers.
    async fn announce(&self, link: &Link) -> bool {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.announcements.lock().insert(
            id,
            Announcement {
                expected: None,
                answered: 0,
                done: Some(tx),
            },
        );
        let message = Message::Watch {
            request: Request {
                id,
                from: self.node.to_string(),
            },
        };
        let sent: FredResult<i64> = self
            .publish_on(
                &self.publisher,
                self.watch_channel(),
                Envelope::new(message).encode(),
            )
            .await;
        self.metrics
            .bus_messages
            .with_label_values(&["out", "events"])
            .inc();
        let ok = match sent {
            Ok(n) => {
                if let Some(a) = link.announcements.lock().get_mut(&id) {
                    a.expected = Some(n.max(0) as usize);
                    a.settle();
                }
                if tokio::time::timeout(REQUEST_TIMEOUT, rx).await.is_err() {
                    tracing::debug!(
                        nodes = n,
                        "not every node answered the events announcement in time"
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "announcing event readers failed; will retry");
                false
            }
        };
        link.announcements.lock().remove(&id);
        ok
    }

    /// Publishes one batch of this node's events; stops forwarding when no other node
    /// received it.
    async fn publish_events(&self, batch: &mut Vec<String>, following: bool) {
        let link = self.events.get().expect("carry_events set the link");
        let n = batch.len() as u64;
        if !self.connected() {
            batch.clear();
            self.metrics
                .events_dropped
                .with_label_values(&["unavailable"])
                .inc_by(n);
            return;
        }
        let epoch = link.epoch.load(Ordering::Acquire);
        let message = Message::Events {
            node: self.node.to_string(),
            events: std::mem::take(batch),
        };
        let sent: FredResult<i64> = self
            .publish_on(
                &self.publisher,
                self.events_channel(),
                Envelope::new(message).encode(),
            )
            .await;
        match sent {
            Ok(receivers) => {
                // This node's own subscription counts too. (Before the metric, so that
                // whoever sees the message counted sees forwarding off.)
                if receivers <= following as i64 && link.epoch.load(Ordering::Acquire) == epoch {
                    link.events.set_remote(false);
                }
                self.metrics
                    .bus_messages
                    .with_label_values(&["out", "events"])
                    .inc();
            }
            Err(e) => {
                self.metrics
                    .events_dropped
                    .with_label_values(&["unavailable"])
                    .inc_by(n);
                tracing::debug!(error = %e, events = n, "events not published");
            }
        }
    }
}
