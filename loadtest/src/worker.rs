//! A worker holds one block of the connections: it ramps them, records what they
//! receive, and reports to the parent with [`WorkerMsg`]s — through a channel when it runs
//! inside the parent, as JSON lines on stdout when it is a re-executed child
//! (`pushgate-load --worker k/n`, its [`WorkerSpec`] as the first line on stdin; a `stop`
//! line or end of stdin stops it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{self, ClientConfig, CloseReason, Identity};
use crate::limits::FailKind;
use crate::payload::{self, SeqSet};
use crate::scenario::{Scenario, WorkerSlot};
use crate::stats::{self, Hist, Recorder};
use crate::token::Minter;

/// What a worker is told to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub scenario: Scenario,
    pub slot: (u32, u32),
    /// Source addresses 127.0.0.1..=127.0.0.<sources>; 0 = no bind.
    pub sources: u32,
}

/// Cumulative counters of one worker.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counts {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Established connections that ended before the run did.
    pub closed: u64,
    /// First deliveries of load pushes.
    pub deliveries: u64,
    /// Second and later deliveries of the same push to the same connection.
    pub duplicates: u64,
    pub acks_sent: u64,
    /// Load events whose data is not a stamp (or a stamp out of range).
    pub bad_payload: u64,
    /// Events with another name than the scenario's.
    pub other_events: u64,
}

/// A failure class, how often, and one example message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailCount {
    pub count: u64,
    pub sample: String,
}

/// A connection that ended before the run did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Closed {
    pub conn: u64,
    pub at_ns: u64,
    pub reason: CloseReason,
}

/// Everything a worker reports at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Final {
    /// `by_seq[s]`: connections of this worker that received push `s`.
    pub by_seq: Vec<u32>,
    pub failed: Vec<u64>,
    pub closed: Vec<Closed>,
    pub failures: BTreeMap<FailKind, FailCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Every [`TICK`]: counters so far and the latencies of the interval.
    Tick {
        counts: Counts,
        hist: Hist,
    },
    /// Every connection attempt of the block has succeeded or failed.
    Ramped {
        counts: Counts,
    },
    Final(Box<Final>),
    /// The worker cannot run (bad target, ...).
    Fatal {
        message: String,
    },
}

/// How often a worker reports: well under the parent's one-second points, so each point
/// sees counters at most this old.
const TICK: Duration = Duration::from_millis(250);

/// Shared by the connection tasks of one worker.
struct Ctx {
    scenario: Scenario,
    targets: Vec<SocketAddr>,
    sources: u32,
    client: ClientConfig,
    minter: Option<Minter>,
    recorder: Recorder,
    stop: CancellationToken,
    attempted: AtomicU64,
    established: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    acks_sent: AtomicU64,
    bad_payload: AtomicU64,
    other_events: AtomicU64,
    resolved: AtomicU64,
    resolved_notify: Notify,
    // std mutexes: taken once per failure or close, never across an await.
    failures: Mutex<BTreeMap<FailKind, FailCount>>,
    failed_conns: Mutex<Vec<u64>>,
    closed_conns: Mutex<Vec<Closed>>,
}

impl Ctx {
    fn counts(&self) -> Counts {
        Counts {
            attempted: self.attempted.load(Relaxed),
            established: self.established.load(Relaxed),
            failed: self.failed.load(Relaxed),
            closed: self.closed.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            acks_sent: self.acks_sent.load(Relaxed),
            bad_payload: self.bad_payload.load(Relaxed),
            other_events: self.other_events.load(Relaxed),
        }
    }

    fn source(&self, i: u64) -> Option<IpAddr> {
        (self.sources > 0).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % self.sources as u64) as u8,
            ))
        })
    }

    fn resolve_one(&self) {
        self.resolved.fetch_add(1, Relaxed);
        self.resolved_notify.notify_one();
    }
}

/// Resolves `host:port` to an IPv4 address.
async fn resolve(target: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("target {target}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("target {target}: no IPv4 address"))
}

/// Runs the block of worker `spec.slot` until `stop` fires, reporting on `tx`.
pub async fn run(spec: WorkerSpec, tx: mpsc::UnboundedSender<WorkerMsg>, stop: CancellationToken) {
    let sc = spec.scenario;
    let mut targets = Vec::new();
    for t in &sc.targets {
        match resolve(t).await {
            Ok(a) => targets.push(a),
            Err(message) => {
                let _ = tx.send(WorkerMsg::Fatal { message });
                return;
            }
        }
    }
    let slot = WorkerSlot {
        k: spec.slot.0,
        n: spec.slot.1,
    };
    let block = sc.block(slot.k, slot.n);
    let ctx = Arc::new(Ctx {
        targets,
        sources: spec.sources,
        client: ClientConfig {
            protocol: sc.protocol,
            path: sc.path.clone(),
            token_in: sc.token_in,
            connect_timeout: sc.connect_timeout,
            ack: sc.client_ack,
            heartbeat: sc.heartbeat,
            pusher_key: sc.pusher_app.key.clone(),
        },
        minter: sc.jwt_secret.as_deref().map(Minter::new),
        recorder: Recorder::default(),
        stop: stop.clone(),
        attempted: AtomicU64::new(0),
        established: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        acks_sent: AtomicU64::new(0),
        bad_payload: AtomicU64::new(0),
        other_events: AtomicU64::new(0),
        resolved: AtomicU64::new(0),
        resolved_notify: Notify::new(),
        failures: Mutex::new(BTreeMap::new()),
        failed_conns: Mutex::new(Vec::new()),
        closed_conns: Mutex::new(Vec::new()),
        scenario: sc,
    });
    let tracker = TaskTracker::new();

    // Ticks, from now until the end.
    let ticker = {
        let ctx = ctx.clone();
        let tx = tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => {}
                }
                let hist = Hist(ctx.recorder.take_interval());
                let _ = tx.send(WorkerMsg::Tick {
                    counts: ctx.counts(),
                    hist,
                });
            }
        })
    };

    // Ramp: start connection i once the block's share of the ramp rate says so.
    let share = (block.end - block.start) as f64 / ctx.scenario.connections as f64;
    let rate = ctx.scenario.ramp_rate * share;
    let total = block.end - block.start;
    let started = Instant::now();
    let mut next = block.start;
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    while next < block.end && !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = pace.tick() => {}
        }
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while next - block.start < due {
            let ctx = ctx.clone();
            let i = next;
            ctx.attempted.fetch_add(1, Relaxed);
            tracker.spawn(async move { connection(i, ctx).await });
            next += 1;
        }
    }
    // Ramped once every attempt has an outcome.
    let launched = next - block.start;
    loop {
        let notified = ctx.resolved_notify.notified();
        if ctx.resolved.load(Relaxed) >= launched {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = notified => {}
        }
    }
    if !stop.is_cancelled() {
        let _ = tx.send(WorkerMsg::Ramped {
            counts: ctx.counts(),
        });
    }

    stop.cancelled().await;
    tracker.close();
    // Connection tasks see the stop at their next poll; set-ups in progress end at
    // their timeout at the latest.
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    let _ = ticker.await;
    let _ = tx.send(WorkerMsg::Tick {
        counts: ctx.counts(),
        hist: Hist(ctx.recorder.take_interval()),
    });
    let fin = Final {
        by_seq: ctx.recorder.by_seq(),
        failed: std::mem::take(&mut *ctx.failed_conns.lock().unwrap_or_else(|e| e.into_inner())),
        closed: std::mem::take(&mut *ctx.closed_conns.lock().unwrap_or_else(|e| e.into_inner())),
        failures: std::mem::take(&mut *ctx.failures.lock().unwrap_or_else(|e| e.into_inner())),
    };
    let _ = tx.send(WorkerMsg::Final(Box::new(fin)));
}

/// The life of connection `i`: set-up, then receive until the stop or the server ends it.
async fn connection(i: u64, ctx: Arc<Ctx>) {
    let sc = &ctx.scenario;
    let target = ctx.targets[(i % ctx.targets.len() as u64) as usize];
    let room = sc.room_of(i).map(|r| format!("r{r}"));
    let token = ctx.minter.as_ref().map(|m| {
        let user = format!("u{}", sc.user_of(i));
        m.mint(&user, room.as_deref())
    });
    let who = Identity {
        token: token.as_deref(),
        room: room.as_deref(),
    };
    let session = tokio::select! {
        _ = ctx.stop.cancelled() => { ctx.resolve_one(); return }
        r = client::connect(target, ctx.source(i), who, &ctx.client) => r,
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let kind = FailKind::of(&e);
            ctx.failed.fetch_add(1, Relaxed);
            ctx.failed_conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(i);
            ctx.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind)
                .or_insert_with(|| FailCount {
                    count: 0,
                    sample: format!("{e} (to {target})"),
                })
                .count += 1;
            ctx.resolve_one();
            return;
        }
    };
    ctx.established.fetch_add(1, Relaxed);
    ctx.resolve_one();
    let mut seen = SeqSet::default();
    let reason = session
        .run(&ctx.stop, |ev| {
            let now = payload::unix_ns();
            if ev.acked {
                ctx.acks_sent.fetch_add(1, Relaxed);
            }
            let parsed = match ev.received {
                Ok(p) => p,
                Err(_) => {
                    ctx.bad_payload.fetch_add(1, Relaxed);
                    return;
                }
            };
            if parsed.event != sc.event {
                ctx.other_events.fetch_add(1, Relaxed);
                return;
            }
            let Some(stamp) = parsed.stamp.filter(|s| s.seq < stats::MAX_SEQ) else {
                ctx.bad_payload.fetch_add(1, Relaxed);
                return;
            };
            let seq = stamp.seq as u32;
            if seen.insert(seq) {
                ctx.deliveries.fetch_add(1, Relaxed);
                ctx.recorder.record(i, seq, stats::latency_us(stamp.t, now));
            } else {
                ctx.duplicates.fetch_add(1, Relaxed);
            }
        })
        .await;
    if reason != CloseReason::Stopped {
        ctx.closed.fetch_add(1, Relaxed);
        ctx.closed_conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Closed {
                conn: i,
                at_ns: payload::unix_ns(),
                reason,
            });
    }
}

/// Entry of a re-executed worker process: spec from stdin, messages to stdout.
pub async fn serve_child() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("worker: no spec on stdin"))?;
    let spec: WorkerSpec = serde_json::from_str(&first)?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            // "stop", or the parent gone (end of stdin), ends the run.
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "stop" {
                    break;
                }
            }
            stop.cancel();
        });
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn(run(spec, tx, stop));
    let mut out = tokio::io::stdout();
    while let Some(msg) = rx.recv().await {
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    runner.await?;
    Ok(())
}
