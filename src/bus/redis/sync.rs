//! The *sync* task: the only writer of subscriptions. It batches the hub's notes for
//! [`BATCH_WINDOW`], subscribes and unsubscribes as local interest changed, then hands
//! the batch's socket changes to the *writer* task (`writer.rs`) — so a socket that
//! the registry shows is already reachable by pushes. After a reconnect it
//! re-subscribes everything and asks the writer to reconcile the registry.

use super::writer::Work;
use super::*;

/// What the hub tells the bus, queued for the sync task.
pub(super) enum Note {
    Topic(Topic),
    Socket(SocketChange),
    /// Answered once everything queued before it is in effect (see [`Barrier`]).
    Barrier(Barrier, oneshot::Sender<()>),
}

/// How far a barrier waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Barrier {
    /// Until the subscriptions of earlier notes are made: pushes reach the sockets.
    Subscribed,
    /// Until the registry is written too: every node's API and presence see them.
    Written,
}

/// The hub's [`Observer`] in cluster mode: queues notes for the bus's sync task.
pub struct ClusterObserver {
    tx: mpsc::UnboundedSender<Note>,
}

/// The receiving end of a [`ClusterObserver`], handed to [`RedisBus::connect`].
pub struct Notes(
    pub(super) mpsc::UnboundedReceiver<Note>,
    pub(super) mpsc::UnboundedSender<Note>,
);

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
    fn socket_changed(&self, _hub: &Hub, change: SocketChange) {
        let _ = self.tx.send(Note::Socket(change));
    }
}

impl RedisBus {
    async fn barrier(&self, kind: Barrier) {
        let (tx, rx) = oneshot::channel();
        if self.notes.send(Note::Barrier(kind, tx)).is_ok() {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        }
    }

    /// Waits until the subscriptions for every note the hub queued so far are made (at
    /// most [`REQUEST_TIMEOUT`]): a push sent afterwards reaches those sockets.
    pub async fn subscribed(&self) {
        self.barrier(Barrier::Subscribed).await
    }

    /// Waits until every note the hub queued so far is applied: subscriptions made and
    /// registry written (at most [`REQUEST_TIMEOUT`]).
    pub async fn synced(&self) {
        self.barrier(Barrier::Written).await
    }

    pub(super) async fn sync(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Note>) {
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut full = true;
        let mut notes = Vec::new();
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.resync.notified() => full = true,
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
            let mut subscribed_barriers = Vec::new();
            let mut written_barriers = Vec::new();
            for note in notes.drain(..) {
                match note {
                    Note::Topic(t) => {
                        topics.insert(t);
                    }
                    Note::Socket(c) => changes.push(c),
                    Note::Barrier(Barrier::Subscribed, b) => subscribed_barriers.push(b),
                    Note::Barrier(Barrier::Written, b) => written_barriers.push(b),
                }
            }
            if self.connected() {
                if full {
                    full = !self.resubscribe(&mut subscribed).await;
                    if !full {
                        // Whatever failed while Redis was away is written again; all
                        // of it, when Redis is a new server (see the writer).
                        let _ = self.writer.send(Work::Reconnected);
                    }
                    topics.clear();
                }
                if !topics.is_empty() && !self.update(&mut subscribed, topics).await {
                    full = true;
                }
            } else {
                full = true;
            }
            if !changes.is_empty() {
                let _ = self.writer.send(Work::Changes(changes));
            }
            self.count_subscriptions(&subscribed);
            for b in subscribed_barriers {
                let _ = b.send(());
            }
            for b in written_barriers {
                let _ = self.writer.send(Work::Barrier(b));
            }
        }
    }

    /// Subscribes to the inbox and every channel with local interest; drops the rest.
    pub(super) async fn resubscribe(&self, subscribed: &mut HashSet<String>) -> bool {
        let mut want: HashSet<String> = self
            .hub
            .interests()
            .iter()
            .map(|t| self.topic_channel(t))
            .collect();
        want.insert(self.inbox(self.node.as_str()));
        let all: Vec<String> = want.iter().cloned().collect();
        for chunk in all.chunks(SUBSCRIBE_CHUNK) {
            if let Err(e) = self.subscribe_all(chunk.to_vec()).await {
                tracing::warn!(error = %e, "re-subscribing failed; will retry");
                return false;
            }
        }
        let stale: Vec<String> = subscribed.difference(&want).cloned().collect();
        if !stale.is_empty() {
            let _ = self.unsubscribe_all(stale).await;
        }
        tracing::info!(channels = want.len(), "subscribed to every needed channel");
        *subscribed = want;
        self.resubscribed().await;
        true
    }

    /// Makes the subscriptions of `topics` match the hub's current interest.
    pub(super) async fn update(
        &self,
        subscribed: &mut HashSet<String>,
        topics: HashSet<Topic>,
    ) -> bool {
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
            match self.subscribe_all(add.clone()).await {
                Ok(()) => subscribed.extend(add),
                Err(e) => {
                    tracing::warn!(error = %e, "SUBSCRIBE failed");
                    return false;
                }
            }
        }
        if !remove.is_empty() {
            match self.unsubscribe_all(remove.clone()).await {
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

    pub(super) fn count_subscriptions(&self, subscribed: &HashSet<String>) {
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
