//! The delivery tracker: for each push, the report of what happened to it, and for an
//! ack-tracked push, which sockets still owe an ack.
//!
//! An ack-tracked push gets a node-wide ack id, so the encoded frame is the same for
//! every connection (encode once) and a client's `ACK <id>` names the push directly.
//! An ack counts only from a socket the push was delivered to, once.
//!
//! Reports are kept for [`RETENTION`] after they become final (for
//! `GET /v1/pushes/{id}`), at most [`MAX_REPORTS`] of them, oldest dropped first.
//!
//! In a cluster the tracker plays two parts. On the node that accepted a push (the
//! origin) a record counts what the delivering nodes report: it expects as many
//! `Delivered` reports as PUBLISH said nodes received the push, sums them, then counts
//! acks; it is final when every expected node reported and every delivery was acked,
//! or at the deadline. On a delivering node a *relay* maps a node-local ack id back to
//! the push and its origin, accepts each socket's ack once, and hands it to the bus
//! ([`Tracker::forward_acks`]) to send to the origin.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use std::future::Future;
use std::pin::Pin;

use crate::events::{Event, Events};
use crate::hub::FanOut;
use crate::id::{NodeId, PushId, SocketId, Target};
use crate::limits::{AckSlot, Limits, Refused};
use crate::metrics::Metrics;

/// How long a final report stays readable.
pub const RETENTION: Duration = Duration::from_secs(600);
/// Reports kept at most, so a high push rate cannot grow memory without bound
/// (about 250 bytes each once final: a 64-byte record of counts in its map, its id
/// twice, and its place in the expiry queue).
pub const MAX_REPORTS: usize = 200_000;
/// How long the origin of a push without acks waits for the delivering nodes' reports
/// before it makes the report final with what arrived: a node reports within
/// milliseconds unless it died, and a caller's `wait` must never hang.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// A relay outlives its push's ack timeout by this much, so an ack that crossed the
/// deadline on the wire is still forwarded (the origin ignores it if final).
const RELAY_GRACE: Duration = Duration::from_secs(1);

pub use crate::report::{Report, State};

/// A push's report and, until it is final, how it is being gathered. Final reports
/// are most of the records (kept for `RETENTION`), so what only a pending one needs is
/// boxed apart and dropped when it becomes final.
struct Record {
    report: Report,
    /// `None` once the report is final.
    pending: Option<Box<Pending>>,
}

impl Record {
    fn new(report: Report, pending: Pending) -> Self {
        Self {
            report,
            pending: Some(Box::new(pending)),
        }
    }

    fn state(&self) -> State {
        match self.pending {
            Some(_) => State::Pending,
            None => State::Final,
        }
    }
}

/// What a pending record gathers.
struct Pending {
    ack_id: Option<u64>,
    /// Sockets the push was delivered to that have not acked yet.
    awaiting: HashSet<SocketId>,
    /// Acks that arrived before the fan-out returned (a fast client on another core).
    early: HashSet<SocketId>,
    /// Whether the fan-out has returned and `awaiting` is filled.
    delivered: bool,
    /// Cluster mode: what the delivering nodes reported so far.
    nodes: Option<Nodes>,
    waiters: Vec<oneshot::Sender<Report>>,
    /// An ack-tracked push's place among the node's pending ones, given back when it
    /// is dropped: when the record becomes final.
    _slot: Option<AckSlot>,
}

/// The origin's count of delivering nodes for one push.
struct Nodes {
    /// How many nodes received the push (PUBLISH's answer), once known.
    expected: Option<usize>,
    /// The nodes that reported their fan-out so far.
    reporters: Vec<NodeId>,
    /// Whether the push asked for acks.
    acks: bool,
    /// Whom the push was for: to count the sockets of nodes that never reported.
    target: Target,
    /// The target's sockets per node, read when some report was late.
    snapshot: Option<HashMap<String, usize>>,
}

/// Counts, in a cluster, the target's sockets per node: what nodes that received a
/// push and died before reporting held (the report's `unknown`). The registry
/// answers; an empty map when it cannot.
pub trait Unreported: Send + Sync {
    fn per_node<'a>(
        &'a self,
        target: &'a Target,
    ) -> Pin<Box<dyn Future<Output = HashMap<String, usize>> + Send + 'a>>;
}

/// How long after a push was published the origin, still missing some node's report,
/// reads the target's sockets per node: late enough that a live node has long
/// reported, early enough that a dead node's registry entries are still there (a
/// survivor removes them once its lease lapsed, after half the registry TTL).
const UNREPORTED_SNAPSHOT: Duration = Duration::from_millis(400);

/// A delivering node's view of an ack-tracked push from some origin.
struct Relay {
    push: PushId,
    origin: NodeId,
    awaiting: HashSet<SocketId>,
    early: HashSet<SocketId>,
    delivered: bool,
}

/// One client ack for a push accepted on `origin`, to be sent there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedAck {
    pub push: PushId,
    pub origin: NodeId,
}

#[derive(Default)]
struct Records {
    by_id: HashMap<PushId, Record>,
    by_ack: HashMap<u64, PushId>,
    relays: HashMap<u64, Relay>,
    /// Final reports in the order they became final, for expiry.
    finished: VecDeque<(Instant, PushId)>,
}

pub struct Tracker {
    /// One lock for the tracker's maps: taken once per push and once per ack, never on
    /// the per-delivery path and never across an await.
    records: Mutex<Records>,
    next_ack: AtomicU64,
    metrics: Arc<Metrics>,
    /// Lets deadline tasks reach the tracker without keeping it alive.
    this: Weak<Tracker>,
    /// Cluster mode: where relayed acks go (the bus sends them to their origin).
    forward: OnceLock<mpsc::UnboundedSender<ForwardedAck>>,
    /// Cluster mode: where final reports of cluster pushes go (the bus stores them in
    /// Redis, readable from any node).
    finals: OnceLock<mpsc::UnboundedSender<(PushId, Report)>>,
    /// The event stream, told of every final report (see [`Tracker::report_events`]).
    events: OnceLock<Arc<Events>>,
    /// Cluster mode: counts the sockets of nodes that never reported.
    unreported: OnceLock<Arc<dyn Unreported>>,
    /// The limit of pending ack-tracked pushes (see [`Tracker::limit_pending`]).
    limits: OnceLock<Arc<Limits>>,
}

impl Tracker {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            records: Mutex::new(Records::default()),
            next_ack: AtomicU64::new(1),
            metrics,
            this: this.clone(),
            forward: OnceLock::new(),
            finals: OnceLock::new(),
            events: OnceLock::new(),
            unreported: OnceLock::new(),
            limits: OnceLock::new(),
        })
    }

    /// Cluster mode: how to count, at a deadline, the sockets of nodes that received a
    /// push and never reported. Call once.
    pub fn count_unreported_with(&self, unreported: Arc<dyn Unreported>) {
        let _ = self.unreported.set(unreported);
    }

    /// Refuses new ack-tracked pushes while `limits`' maximum of them is pending
    /// (`PUSHGATE_MAX_PENDING_ACKS`); without it there is no limit. Call once.
    pub fn limit_pending(&self, limits: Arc<Limits>) {
        let _ = self.limits.set(limits);
    }

    /// A slot for one more pending ack-tracked push, or the refusal.
    fn pending_slot(&self) -> Result<Option<AckSlot>, Refused> {
        self.limits.get().map(|l| l.pending_ack()).transpose()
    }

    /// Tells `events` of every final report from now on (the tracker is built before
    /// the event stream's other parts, hence a setter). Call once.
    pub fn report_events(&self, events: Arc<Events>) {
        let _ = self.events.set(events);
    }

    /// Cluster mode: the stream of acks that relays accepted for pushes of other nodes
    /// (and of this one). Call once; later calls get a receiver that never yields.
    pub fn forward_acks(&self) -> mpsc::UnboundedReceiver<ForwardedAck> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.forward.set(tx);
        rx
    }

    /// Cluster mode: the stream of final reports of cluster pushes. Call once.
    pub fn final_reports(&self) -> mpsc::UnboundedReceiver<(PushId, Report)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.finals.set(tx);
        rx
    }

    /// Cluster mode, on the origin: opens a pending record before the push is published
    /// (reports may arrive before PUBLISH answers). An ack-tracked push is refused
    /// when the node has its maximum of them pending.
    pub fn open(&self, id: &PushId, acks: bool, target: &Target) -> Result<(), Refused> {
        let slot = if acks { self.pending_slot()? } else { None };
        let mut r = self.records.lock();
        r.by_id.insert(
            id.clone(),
            Record::new(
                Report::default(),
                Pending {
                    ack_id: None,
                    awaiting: HashSet::new(),
                    early: HashSet::new(),
                    delivered: false,
                    nodes: Some(Nodes {
                        expected: None,
                        reporters: Vec::new(),
                        acks,
                        target: target.clone(),
                        snapshot: None,
                    }),
                    waiters: Vec::new(),
                    _slot: slot,
                },
            ),
        );
        Ok(())
    }

    /// Cluster mode, on the origin: `nodes` received the push; the report is final when
    /// they all reported (and acked), or after `timeout`.
    pub fn expect(&self, id: &PushId, nodes: usize, timeout: Duration) {
        {
            let mut r = self.records.lock();
            let Some(rec) = r.by_id.get_mut(id) else {
                return;
            };
            if let Some(n) = rec.pending.as_mut().and_then(|p| p.nodes.as_mut()) {
                n.expected = Some(nodes);
            }
            if self.settle(&mut r, id) {
                return;
            }
        }
        self.arm(id.clone(), timeout);
    }

    /// Cluster mode, on the origin: one delivering node's fan-out.
    pub fn node_reported(&self, id: &PushId, node: &NodeId, fan: &FanOut) {
        let mut r = self.records.lock();
        let Some(rec) = r.by_id.get_mut(id) else {
            return;
        };
        let Some(n) = rec.pending.as_mut().and_then(|p| p.nodes.as_mut()) else {
            return;
        };
        n.reporters.push(node.clone());
        rec.report.sockets += fan.sockets;
        rec.report.delivered += fan.delivered;
        rec.report.failed += fan.failed;
        rec.report.unackable += fan.unackable;
        self.settle(&mut r, id);
    }

    /// Cluster mode, on the origin: `n` acks that delivering nodes accepted.
    pub fn acked(&self, id: &PushId, n: usize) {
        let mut r = self.records.lock();
        let Some(rec) = r.by_id.get_mut(id) else {
            return;
        };
        if rec.pending.as_ref().is_none_or(|p| p.nodes.is_none()) {
            return;
        }
        rec.report.acked += n;
        self.metrics
            .acks
            .with_label_values(&["acked"])
            .inc_by(n as u64);
        self.settle(&mut r, id);
    }

    /// Makes a cluster record final if every expected node reported and, for an
    /// ack-tracked push, every delivery was acked. Returns whether it is final.
    fn settle(&self, r: &mut Records, id: &PushId) -> bool {
        let Some(rec) = r.by_id.get(id) else {
            return true;
        };
        let Some(pending) = &rec.pending else {
            return true;
        };
        let Some(n) = &pending.nodes else {
            return false;
        };
        let all_reported = n.expected.is_some_and(|e| n.reporters.len() >= e);
        let ackable = rec.report.delivered.saturating_sub(rec.report.unackable);
        let all_acked = !n.acks || rec.report.acked >= ackable;
        if all_reported && all_acked {
            self.finish(r, id);
            return true;
        }
        false
    }

    fn arm(&self, id: PushId, timeout: Duration) {
        let tracker = self.this.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            // A report still missing a little after publishing: read where the target's
            // sockets are, while a dead node's entries are still in the registry.
            tokio::time::sleep(UNREPORTED_SNAPSHOT.min(timeout / 2)).await;
            let Some(t) = tracker.upgrade() else {
                return;
            };
            if let (Some(target), Some(counter)) = (t.missing(&id), t.unreported.get()) {
                let per_node = counter.per_node(&target).await;
                if let Some(n) = t
                    .records
                    .lock()
                    .by_id
                    .get_mut(&id)
                    .and_then(|r| r.pending.as_mut())
                    .and_then(|p| p.nodes.as_mut())
                {
                    n.snapshot = Some(per_node);
                }
            }
            drop(t);
            tokio::time::sleep_until(start + timeout).await;
            let Some(t) = tracker.upgrade() else {
                return;
            };
            let mut r = t.records.lock();
            if let Some(rec) = r.by_id.get_mut(&id) {
                let unknown = match rec.pending.as_ref().and_then(|p| p.nodes.as_ref()) {
                    Some(n) => Self::unreported(n),
                    None => 0,
                };
                if unknown > 0 {
                    rec.report.unknown = unknown;
                    tracing::info!(push = %id, unknown, "nodes that received a push never reported: its report counts their sockets as unknown");
                }
            }
            t.finish(&mut r, &id);
        });
    }

    /// The target of a pending cluster record that some node that received it has
    /// not reported on yet.
    fn missing(&self, id: &PushId) -> Option<Target> {
        let r = self.records.lock();
        let n = r.by_id.get(id)?.pending.as_ref()?.nodes.as_ref()?;
        let missing = n.expected.is_some_and(|e| n.reporters.len() < e);
        missing.then(|| n.target.clone())
    }

    /// Cluster mode, on a delivering node: a node-local ack id for `push` from
    /// `origin`, to encode into this node's frames.
    pub fn relay(&self, push: &PushId, origin: &NodeId) -> u64 {
        let ack_id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        self.records.lock().relays.insert(
            ack_id,
            Relay {
                push: push.clone(),
                origin: origin.clone(),
                awaiting: HashSet::new(),
                early: HashSet::new(),
                delivered: false,
            },
        );
        ack_id
    }

    /// Cluster mode, on a delivering node: the sockets the relayed push reached; acks
    /// are accepted from them until `timeout` (plus a grace) has passed.
    pub fn relayed(&self, ack_id: u64, delivered_to: Vec<SocketId>, timeout: Duration) {
        {
            let mut r = self.records.lock();
            let Some(relay) = r.relays.get_mut(&ack_id) else {
                return;
            };
            relay.delivered = true;
            let early = std::mem::take(&mut relay.early);
            for socket in delivered_to {
                if early.contains(&socket) {
                    self.forward(relay);
                } else {
                    relay.awaiting.insert(socket);
                }
            }
            if relay.awaiting.is_empty() {
                r.relays.remove(&ack_id);
                return;
            }
        }
        let tracker = self.this.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout + RELAY_GRACE).await;
            if let Some(t) = tracker.upgrade() {
                t.records.lock().relays.remove(&ack_id);
            }
        });
    }

    fn forward(&self, relay: &Relay) {
        if let Some(tx) = self.forward.get() {
            let _ = tx.send(ForwardedAck {
                push: relay.push.clone(),
                origin: relay.origin.clone(),
            });
        }
    }

    /// Opens a pending record for an ack-tracked push and returns its ack id; refused
    /// when the node has its maximum of them pending.
    pub fn begin(&self, id: &PushId) -> Result<u64, Refused> {
        let slot = self.pending_slot()?;
        let ack_id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let mut r = self.records.lock();
        r.by_ack.insert(ack_id, id.clone());
        r.by_id.insert(
            id.clone(),
            Record::new(
                Report::default(),
                Pending {
                    ack_id: Some(ack_id),
                    awaiting: HashSet::new(),
                    early: HashSet::new(),
                    delivered: false,
                    nodes: None,
                    waiters: Vec::new(),
                    _slot: slot,
                },
            ),
        );
        Ok(ack_id)
    }

    /// Forgets a push the bus refused before anything was delivered.
    pub fn abandon(&self, id: &PushId) {
        let mut r = self.records.lock();
        if let Some(a) = r
            .by_id
            .remove(id)
            .and_then(|rec| rec.pending)
            .and_then(|p| p.ack_id)
        {
            r.by_ack.remove(&a);
        }
    }

    /// Records the fan-out of an ack-tracked push and arms its deadline.
    pub fn delivered(&self, id: &PushId, fan: FanOut, timeout: Duration) {
        {
            let mut r = self.records.lock();
            let Some(rec) = r.by_id.get_mut(id) else {
                return;
            };
            let Some(pending) = rec.pending.as_mut() else {
                return;
            };
            rec.report = fan.report();
            pending.delivered = true;
            let early = std::mem::take(&mut pending.early);
            for socket in fan.delivered_to {
                if early.contains(&socket) {
                    rec.report.acked += 1;
                } else {
                    pending.awaiting.insert(socket);
                }
            }
            self.metrics
                .acks
                .with_label_values(&["acked"])
                .inc_by(rec.report.acked as u64);
            if pending.awaiting.is_empty() {
                self.finish(&mut r, id);
                return;
            }
        }
        self.arm(id.clone(), timeout);
    }

    /// Records the final report of a push without acks.
    pub fn complete(&self, id: &PushId, report: Report) {
        let mut r = self.records.lock();
        r.by_id.insert(
            id.clone(),
            Record {
                report,
                pending: None,
            },
        );
        self.keep_final(&mut r, id, report);
    }

    /// A client acknowledged ack id `ack_id`. Returns whether it counted: an ack for an
    /// unknown or finished push, from a socket it was not delivered to, or repeated,
    /// does not.
    pub fn ack(&self, ack_id: u64, socket: &SocketId) -> bool {
        let mut r = self.records.lock();
        let Some(id) = r.by_ack.get(&ack_id).cloned() else {
            let Some(relay) = r.relays.get_mut(&ack_id) else {
                return false;
            };
            if !relay.delivered {
                return relay.early.insert(socket.clone());
            }
            if !relay.awaiting.remove(socket) {
                return false;
            }
            self.forward(relay);
            if relay.awaiting.is_empty() {
                r.relays.remove(&ack_id);
            }
            return true;
        };
        let Some(rec) = r.by_id.get_mut(&id) else {
            return false;
        };
        let Some(pending) = rec.pending.as_mut() else {
            return false;
        };
        if !pending.delivered {
            return pending.early.insert(socket.clone());
        }
        if !pending.awaiting.remove(socket) {
            return false;
        }
        rec.report.acked += 1;
        self.metrics.acks.with_label_values(&["acked"]).inc();
        if pending.awaiting.is_empty() {
            self.finish(&mut r, &id);
        }
        true
    }

    /// The current report of a push.
    pub fn get(&self, id: &str) -> Option<(State, Report)> {
        let r = self.records.lock();
        r.by_id.get(id).map(|rec| (rec.state(), rec.report))
    }

    /// Resolves with the final report (at once if it is final already).
    pub async fn wait(&self, id: &PushId) -> Option<Report> {
        let rx = {
            let mut r = self.records.lock();
            let rec = r.by_id.get_mut(id)?;
            let Some(pending) = rec.pending.as_mut() else {
                return Some(rec.report);
            };
            let (tx, rx) = oneshot::channel();
            pending.waiters.push(tx);
            rx
        };
        rx.await.ok()
    }

    /// The sockets, as last read, of nodes that received a push but did not report.
    fn unreported(n: &Nodes) -> usize {
        let missing = n
            .expected
            .map_or(0, |e| e.saturating_sub(n.reporters.len()));
        if missing == 0 {
            return 0;
        }
        let silent = |node: &str| !n.reporters.iter().any(|r| r.as_str() == node);
        let (named, sockets) = n
            .snapshot
            .iter()
            .flatten()
            .filter(|(node, _)| silent(node))
            .fold((0, 0), |(k, sum), (_, count)| (k + 1, sum + count));
        // A node receives a push only for a socket of its target it holds: each silent
        // node the snapshot could not name (the registry was unreadable, on the shard
        // that failed) held one at least.
        sockets + missing.saturating_sub(named)
    }

    /// Makes a record final: what is still awaited timed out; waiters are answered;
    /// the event stream hears of it; old final reports expire.
    fn finish(&self, r: &mut Records, id: &PushId) {
        let Some(rec) = r.by_id.get_mut(id) else {
            return;
        };
        // A final report keeps its counts and nothing of how they were gathered;
        // dropping the pending part also frees its place among the pending ack-tracked
        // pushes, for another to take.
        let Some(pending) = rec.pending.take() else {
            return;
        };
        rec.report.timed_out = match &pending.nodes {
            // Deliveries whose ack never came, including those of a node that died after
            // reporting. A node that never reported is not counted: nothing says it
            // delivered anything.
            Some(n) if n.acks => rec
                .report
                .delivered
                .saturating_sub(rec.report.unackable)
                .saturating_sub(rec.report.acked),
            Some(_) => 0,
            None => pending.awaiting.len(),
        };
        let report = rec.report;
        if let (Some(_), Some(tx)) = (&pending.nodes, self.finals.get()) {
            let _ = tx.send((id.clone(), report));
        }
        if report.timed_out > 0 {
            self.metrics
                .acks
                .with_label_values(&["timed_out"])
                .inc_by(report.timed_out as u64);
        }
        if let Some(a) = pending.ack_id {
            r.by_ack.remove(&a);
        }
        self.keep_final(r, id, report);
        for w in pending.waiters {
            let _ = w.send(report);
        }
    }

    /// What every report does once final: the event stream hears of it, and it is kept
    /// for `RETENTION`, up to `MAX_REPORTS` of them (older ones expire).
    fn keep_final(&self, r: &mut Records, id: &PushId, report: Report) {
        if let Some(events) = self.events.get() {
            events.emit(|| Event::Report {
                id: id.clone(),
                report,
            });
        }
        let now = Instant::now();
        r.finished.push_back((now, id.clone()));
        while let Some((at, old)) = r.finished.front() {
            if now.duration_since(*at) < RETENTION && r.finished.len() <= MAX_REPORTS {
                break;
            }
            let old = old.clone();
            r.finished.pop_front();
            r.by_id.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Arc<Tracker> {
        Tracker::new(Arc::new(Metrics::new()))
    }

    impl Tracker {
        /// The report of `id`, if it is final (its record holds nothing pending).
        fn report_if_final(&self, id: &PushId) -> Option<Report> {
            let r = self.records.lock();
            let rec = r.by_id.get(id)?;
            rec.pending.is_none().then_some(rec.report)
        }
    }

    fn fan(to: &[&SocketId]) -> FanOut {
        FanOut {
            sockets: to.len(),
            delivered: to.len(),
            failed: 0,
            unackable: 0,
            delivered_to: to.iter().map(|s| (*s).clone()).collect(),
        }
    }

    fn fan_n(sockets: usize, delivered: usize, unackable: usize) -> FanOut {
        FanOut {
            sockets,
            delivered,
            unackable,
            ..FanOut::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_report_keeps_its_counts_and_nothing_of_how_they_were_gathered() {
        let t = tracker();
        let id = PushId::generate();
        let a = SocketId::from("n.a");
        let ack = t.begin(&id).unwrap();
        t.delivered(&id, fan(&[&a]), Duration::from_secs(5));
        assert!(
            t.report_if_final(&id).is_none(),
            "pending while the ack is awaited"
        );
        assert!(t.ack(ack, &a));
        let kept = t.report_if_final(&id).expect("final once acked");
        assert_eq!((kept.delivered, kept.acked), (1, 1));
        assert!(t.records.lock().by_ack.is_empty(), "its ack id is gone");
        // What MAX_REPORTS' estimate counts on: a record of counts, in one word more.
        assert!(
            std::mem::size_of::<Record>() <= std::mem::size_of::<Report>() + 8,
            "{} bytes",
            std::mem::size_of::<Record>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unackable_deliveries_are_neither_awaited_nor_timed_out() {
        let t = tracker();
        let id = PushId::generate();
        let a = SocketId::from("n.a");
        let ack = t.begin(&id).unwrap();
        let mut f = fan(&[&a]);
        f.delivered = 2;
        f.sockets = 2;
        f.unackable = 1;
        t.delivered(&id, f, Duration::from_secs(5));
        assert!(t.ack(ack, &a));
        let (state, report) = t.get(id.as_str()).unwrap();
        assert_eq!(
            state,
            State::Final,
            "final once every ackable delivery acked"
        );
        assert_eq!(
            (report.acked, report.unackable, report.timed_out),
            (1, 1, 0)
        );

        let cluster = PushId::generate();
        t.open(&cluster, true, &Target::All).unwrap();
        t.node_reported(&cluster, &NodeId::from("n1"), &fan_n(3, 3, 2));
        t.expect(&cluster, 1, Duration::from_millis(300));
        t.acked(&cluster, 1);
        let (state, report) = t.get(cluster.as_str()).unwrap();
        assert_eq!(state, State::Final);
        assert_eq!(
            (report.acked, report.unackable, report.timed_out),
            (1, 2, 0)
        );
        let json = serde_json::to_value(report).unwrap();
        assert_eq!(json["unackable"], 2);
        let plain = serde_json::to_value(Report::default()).unwrap();
        assert!(plain.get("unackable").is_none(), "absent when 0: {plain}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_event_stream_hears_each_report_once_when_it_becomes_final() {
        let metrics = Arc::new(Metrics::new());
        let t = Tracker::new(metrics.clone());
        let events = crate::events::Events::new(NodeId::from("n1"), metrics);
        t.report_events(events.clone());
        let reader = events.reader();
        let s1 = SocketId::from("n1.a");
        let id = PushId::from("p1");
        let ack_id = t.begin(&id).unwrap();
        t.delivered(&id, fan(&[&s1]), Duration::from_secs(5));
        assert!(t.ack(ack_id, &s1));
        assert!(!t.ack(ack_id, &s1), "a second ack changes nothing");
        let crate::events::Item::Frame(f) = reader.next().await else {
            panic!("dropped");
        };
        let text = std::str::from_utf8(&f).unwrap();
        assert!(text.contains(r#""type":"report","id":"p1""#), "{text}");
        assert!(text.contains(r#""acked":1"#), "{text}");
        t.complete(&PushId::from("p2"), Report::default());
        let crate::events::Item::Frame(f) = reader.next().await else {
            panic!("dropped");
        };
        assert!(std::str::from_utf8(&f).unwrap().contains(r#""id":"p2""#));
    }

    #[tokio::test(start_paused = true)]
    async fn all_acks_make_the_report_final_at_once() {
        let t = tracker();
        let id = PushId::generate();
        let (a, b) = (SocketId::from("n.a"), SocketId::from("n.b"));
        let ack = t.begin(&id).unwrap();
        t.delivered(&id, fan(&[&a, &b]), Duration::from_secs(5));
        assert_eq!(t.get(id.as_str()).unwrap().0, State::Pending);
        assert!(t.ack(ack, &a));
        assert!(!t.ack(ack, &a), "a repeated ack does not count twice");
        assert!(!t.ack(ack, &SocketId::from("n.stranger")));
        assert!(t.ack(ack, &b));
        let (state, report) = t.get(id.as_str()).unwrap();
        assert_eq!(state, State::Final);
        assert_eq!((report.acked, report.timed_out), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn missing_acks_time_out_at_the_deadline() {
        let t = tracker();
        let id = PushId::generate();
        let (a, b) = (SocketId::from("n.a"), SocketId::from("n.b"));
        let ack = t.begin(&id).unwrap();
        t.delivered(&id, fan(&[&a, &b]), Duration::from_millis(300));
        t.ack(ack, &a);
        let report = tokio::time::timeout(Duration::from_secs(1), t.wait(&id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (report.delivered, report.acked, report.timed_out),
            (2, 1, 1)
        );
        assert!(!t.ack(ack, &b), "late acks do not change a final report");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_that_beats_the_fan_out_still_counts() {
        let t = tracker();
        let id = PushId::generate();
        let a = SocketId::from("n.a");
        let ack = t.begin(&id).unwrap();
        assert!(t.ack(ack, &a));
        t.delivered(&id, fan(&[&a]), Duration::from_secs(5));
        let (state, report) = t.get(id.as_str()).unwrap();
        assert_eq!((state, report.acked), (State::Final, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cluster_report_sums_every_node_and_waits_for_their_acks() {
        let t = tracker();
        let id = PushId::generate();
        t.open(&id, true, &Target::All).unwrap();
        t.node_reported(&id, &NodeId::from("n1"), &fan_n(2, 2, 0));
        t.acked(&id, 1);
        t.expect(&id, 2, Duration::from_secs(5));
        assert_eq!(t.get(id.as_str()).unwrap().0, State::Pending);
        t.node_reported(&id, &NodeId::from("n2"), &fan_n(1, 1, 0));
        t.acked(&id, 1);
        assert_eq!(
            t.get(id.as_str()).unwrap().0,
            State::Pending,
            "2 of 3 acked"
        );
        t.acked(&id, 1);
        let (state, report) = t.get(id.as_str()).unwrap();
        assert_eq!(state, State::Final);
        assert_eq!((report.sockets, report.delivered, report.acked), (3, 3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_never_reports_ends_in_a_final_report_at_the_deadline() {
        let t = tracker();
        let id = PushId::generate();
        t.open(&id, true, &Target::All).unwrap();
        t.expect(&id, 2, Duration::from_millis(300));
        t.node_reported(&id, &NodeId::from("n1"), &fan_n(2, 2, 0));
        t.acked(&id, 1);
        let report = tokio::time::timeout(Duration::from_secs(1), t.wait(&id))
            .await
            .expect("no hang")
            .unwrap();
        assert_eq!(
            (report.delivered, report.acked, report.timed_out),
            (2, 1, 1)
        );
    }

    /// The registry's answer, as a table of sockets per node.
    struct PerNode(&'static [(&'static str, usize)]);
    impl Unreported for PerNode {
        fn per_node<'a>(
            &'a self,
            _: &'a Target,
        ) -> Pin<Box<dyn Future<Output = HashMap<String, usize>> + Send + 'a>> {
            let map = self.0.iter().map(|(n, c)| (n.to_string(), *c)).collect();
            Box::pin(std::future::ready(map))
        }
    }

    /// The final report of a push to `target` that `nodes` nodes received, of which
    /// only n1 reported (`fan`): the others stay silent until the deadline.
    async fn n1_alone_reports(t: &Tracker, target: Target, nodes: usize, fan: FanOut) -> Report {
        let id = PushId::generate();
        t.open(&id, false, &target).unwrap();
        t.expect(&id, nodes, Duration::from_millis(300));
        t.node_reported(&id, &NodeId::from("n1"), &fan);
        tokio::time::timeout(Duration::from_secs(1), t.wait(&id))
            .await
            .expect("no hang")
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_sockets_of_a_node_that_never_reported_are_counted_unknown() {
        let t = tracker();
        t.count_unreported_with(Arc::new(PerNode(&[("n1", 2), ("n2", 5)])));
        let report = n1_alone_reports(&t, Target::All, 2, fan_n(2, 2, 0)).await;
        assert_eq!(
            (report.sockets, report.delivered, report.unknown),
            (2, 2, 5)
        );
        let json = serde_json::to_value(report).unwrap();
        assert_eq!(json["unknown"], 5);

        let whole = PushId::generate();
        t.open(&whole, false, &Target::All).unwrap();
        t.expect(&whole, 1, Duration::from_millis(300));
        t.node_reported(&whole, &NodeId::from("n1"), &fan_n(2, 2, 0));
        let report = t.get(whole.as_str()).unwrap().1;
        assert_eq!(report.unknown, 0, "every node reported: nothing unknown");
        assert!(serde_json::to_value(report)
            .unwrap()
            .get("unknown")
            .is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_the_registry_could_not_name_counts_one_unknown_socket() {
        let t = tracker();
        // The registry was unreadable (its shard failing): an empty table.
        t.count_unreported_with(Arc::new(PerNode(&[])));
        let alice = Target::User(crate::id::UserId::from("alice"));
        let report = n1_alone_reports(&t, alice, 3, fan_n(1, 1, 0)).await;
        assert_eq!(
            (report.sockets, report.delivered, report.unknown),
            (1, 1, 2),
            "two nodes received the push and never said how many sockets: two at least"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_forwards_each_sockets_ack_once() {
        let t = tracker();
        let mut acks = t.forward_acks();
        let (push, origin) = (PushId::generate(), NodeId::from("o"));
        let (a, b) = (SocketId::from("n.a"), SocketId::from("n.b"));
        let ack = t.relay(&push, &origin);
        assert!(t.ack(ack, &a), "an ack before the fan-out returned");
        t.relayed(ack, vec![a.clone(), b.clone()], Duration::from_secs(5));
        assert!(t.ack(ack, &b));
        assert!(!t.ack(ack, &b));
        assert!(!t.ack(ack, &SocketId::from("n.c")));
        let expected = ForwardedAck { push, origin };
        assert_eq!(acks.try_recv().unwrap(), expected);
        assert_eq!(acks.try_recv().unwrap(), expected);
        assert!(acks.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_push_without_acks_is_final_immediately() {
        let t = tracker();
        let id = PushId::generate();
        t.complete(
            &id,
            Report {
                sockets: 3,
                delivered: 2,
                failed: 1,
                ..Report::default()
            },
        );
        assert_eq!(t.wait(&id).await.unwrap().failed, 1);
    }
}
