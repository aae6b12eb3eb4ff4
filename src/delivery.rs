//! The delivery tracker: for each push, the report of what happened to it, and for an
//! ack-tracked push, which sockets still owe an ack.
//!
//! An ack-tracked push gets a node-wide ack id, so the encoded frame is the same for
//! every connection (encode once) and a client's `ACK <id>` names the push directly.
//! An ack counts only from a socket the push was delivered to, once.
//!
//! Reports are kept for [`RETENTION`] after they become final (for
//! `GET /v1/pushes/{id}`), at most [`MAX_REPORTS`] of them, oldest dropped first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::hub::FanOut;
use crate::id::{PushId, SocketId};
use crate::metrics::Metrics;

/// How long a final report stays readable.
pub const RETENTION: Duration = Duration::from_secs(600);
/// Reports kept at most, so a high push rate cannot grow memory without bound
/// (about 200 bytes each).
pub const MAX_REPORTS: usize = 200_000;

/// The outcome of a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub sockets: usize,
    pub delivered: usize,
    pub acked: usize,
    pub timed_out: usize,
    pub failed: usize,
}

impl Report {
    pub fn from_fan_out(fan: &FanOut) -> Self {
        Report {
            sockets: fan.sockets,
            delivered: fan.delivered,
            failed: fan.failed,
            ..Report::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Final,
}

struct Record {
    report: Report,
    state: State,
    ack_id: Option<u64>,
    /// Sockets the push was delivered to that have not acked yet.
    awaiting: HashSet<SocketId>,
    /// Acks that arrived before the fan-out returned (a fast client on another core).
    early: HashSet<SocketId>,
    /// Whether the fan-out has returned and `awaiting` is filled.
    delivered: bool,
    waiters: Vec<oneshot::Sender<Report>>,
}

#[derive(Default)]
struct Records {
    by_id: HashMap<PushId, Record>,
    by_ack: HashMap<u64, PushId>,
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
}

impl Tracker {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            records: Mutex::new(Records::default()),
            next_ack: AtomicU64::new(1),
            metrics,
            this: this.clone(),
        })
    }

    /// Opens a pending record for an ack-tracked push and returns its ack id.
    pub fn begin(&self, id: &PushId) -> u64 {
        let ack_id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let mut r = self.records.lock();
        r.by_ack.insert(ack_id, id.clone());
        r.by_id.insert(
            id.clone(),
            Record {
                report: Report::default(),
                state: State::Pending,
                ack_id: Some(ack_id),
                awaiting: HashSet::new(),
                early: HashSet::new(),
                delivered: false,
                waiters: Vec::new(),
            },
        );
        ack_id
    }

    /// Forgets a push the bus refused before anything was delivered.
    pub fn abandon(&self, id: &PushId) {
        let mut r = self.records.lock();
        if let Some(rec) = r.by_id.remove(id) {
            if let Some(a) = rec.ack_id {
                r.by_ack.remove(&a);
            }
        }
    }

    /// Records the fan-out of an ack-tracked push and arms its deadline.
    pub fn delivered(&self, id: &PushId, fan: FanOut, timeout: Duration) {
        {
            let mut r = self.records.lock();
            let Some(rec) = r.by_id.get_mut(id) else {
                return;
            };
            rec.report = Report::from_fan_out(&fan);
            rec.delivered = true;
            let early = std::mem::take(&mut rec.early);
            for socket in fan.delivered_to {
                if early.contains(&socket) {
                    rec.report.acked += 1;
                } else {
                    rec.awaiting.insert(socket);
                }
            }
            self.metrics
                .acks
                .with_label_values(&["acked"])
                .inc_by(rec.report.acked as u64);
            if rec.awaiting.is_empty() {
                finish(&mut r, id, &self.metrics);
                return;
            }
        }
        let tracker = self.this.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(t) = tracker.upgrade() {
                let mut r = t.records.lock();
                finish(&mut r, &id, &t.metrics);
            }
        });
    }

    /// Records the final report of a push without acks.
    pub fn complete(&self, id: &PushId, report: Report) {
        let mut r = self.records.lock();
        r.by_id.insert(
            id.clone(),
            Record {
                report,
                state: State::Pending,
                ack_id: None,
                awaiting: HashSet::new(),
                early: HashSet::new(),
                delivered: true,
                waiters: Vec::new(),
            },
        );
        finish(&mut r, id, &self.metrics);
    }

    /// A client acknowledged ack id `ack_id`. Returns whether it counted: an ack for an
    /// unknown or finished push, from a socket it was not delivered to, or repeated,
    /// does not.
    pub fn ack(&self, ack_id: u64, socket: &SocketId) -> bool {
        let mut r = self.records.lock();
        let Some(id) = r.by_ack.get(&ack_id).cloned() else {
            return false;
        };
        let Some(rec) = r.by_id.get_mut(&id) else {
            return false;
        };
        if !rec.delivered {
            return rec.early.insert(socket.clone());
        }
        if !rec.awaiting.remove(socket) {
            return false;
        }
        rec.report.acked += 1;
        self.metrics.acks.with_label_values(&["acked"]).inc();
        if rec.awaiting.is_empty() {
            finish(&mut r, &id, &self.metrics);
        }
        true
    }

    /// The current report of a push.
    pub fn get(&self, id: &str) -> Option<(State, Report)> {
        let r = self.records.lock();
        r.by_id.get(id).map(|rec| (rec.state, rec.report))
    }

    /// Resolves with the final report (at once if it is final already).
    pub async fn wait(&self, id: &PushId) -> Option<Report> {
        let rx = {
            let mut r = self.records.lock();
            let rec = r.by_id.get_mut(id)?;
            if rec.state == State::Final {
                return Some(rec.report);
            }
            let (tx, rx) = oneshot::channel();
            rec.waiters.push(tx);
            rx
        };
        rx.await.ok()
    }
}

/// Makes a record final: what is still awaited timed out; waiters are answered; old
/// final reports expire.
fn finish(r: &mut Records, id: &PushId, metrics: &Metrics) {
    let Some(rec) = r.by_id.get_mut(id) else {
        return;
    };
    if rec.state == State::Final {
        return;
    }
    rec.state = State::Final;
    rec.report.timed_out = rec.awaiting.len();
    if rec.report.timed_out > 0 {
        metrics
            .acks
            .with_label_values(&["timed_out"])
            .inc_by(rec.report.timed_out as u64);
    }
    rec.awaiting = HashSet::new();
    for w in rec.waiters.drain(..) {
        let _ = w.send(rec.report);
    }
    if let Some(a) = rec.ack_id.take() {
        r.by_ack.remove(&a);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Arc<Tracker> {
        Tracker::new(Arc::new(Metrics::new()))
    }

    fn fan(to: &[&SocketId]) -> FanOut {
        FanOut {
            sockets: to.len(),
            delivered: to.len(),
            failed: 0,
            delivered_to: to.iter().map(|s| (*s).clone()).collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_acks_make_the_report_final_at_once() {
        let t = tracker();
        let id = PushId::generate();
        let (a, b) = (SocketId::from("n.a"), SocketId::from("n.b"));
        let ack = t.begin(&id);
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
        let ack = t.begin(&id);
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
        let ack = t.begin(&id);
        assert!(t.ack(ack, &a));
        t.delivered(&id, fan(&[&a]), Duration::from_secs(5));
        let (state, report) = t.get(id.as_str()).unwrap();
        assert_eq!((state, report.acked), (State::Final, 1));
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
