//! The parent: plans the run, starts the workers (in this process, or re-executed children
//! with `--worker k/n`), walks the phases ramp → hold → push → drain → stop, shows
//! progress, samples the gateway processes, and gathers everything into a [`Report`].

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, Population};
use crate::limits::{Limits, Plan};
use crate::payload;
use crate::proc::Watch;
use crate::push::{self, PushLog};
use crate::report::{
    self, Acks, Connections, Deliveries, FailureLine, Phase, Point, Pushes, Report,
};
use crate::scenario::{PushTo, Scenario};
use crate::stats::{self, add_counts, Percentiles};
use crate::worker::{self, Counts, Final, WorkerMsg, WorkerSpec};

/// What arrives from the workers.
enum Event {
    Msg(usize, WorkerMsg),
    /// The worker's stream ended (child exited, or the in-process task finished).
    Gone(usize),
}

/// How the parent reaches one worker.
enum Handle {
    InProcess(CancellationToken),
    Child {
        child: Box<Child>,
        stdin: Option<ChildStdin>,
    },
}

impl Handle {
    async fn stop(&mut self) {
        match self {
            Handle::InProcess(t) => t.cancel(),
            Handle::Child { stdin, .. } => {
                if let Some(mut s) = stdin.take() {
                    let _ = s.write_all(b"stop\n").await;
                    let _ = s.flush().await;
                }
            }
        }
    }
}

/// Per-worker state the parent keeps.
#[derive(Default)]
struct WorkerState {
    counts: Counts,
    ramped: bool,
    fin: Option<Final>,
    gone: bool,
    fatal: Option<String>,
}

async fn spawn_workers(
    sc: &Scenario,
    plan: &Plan,
    tx: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<Vec<Handle>> {
    let n = plan.workers;
    let mut handles = Vec::new();
    for k in 0..n {
        let spec = WorkerSpec {
            scenario: sc.clone(),
            slot: (k, n),
            sources: plan.sources,
        };
        if plan.in_process {
            let stop = CancellationToken::new();
            let (wtx, mut wrx) = mpsc::unbounded_channel();
            tokio::spawn(worker::run(spec, wtx, stop.clone()));
            let tx = tx.clone();
            let k = k as usize;
            tokio::spawn(async move {
                while let Some(m) = wrx.recv().await {
                    let _ = tx.send(Event::Msg(k, m));
                }
                let _ = tx.send(Event::Gone(k));
            });
            handles.push(Handle::InProcess(stop));
            continue;
        }
        let exe = std::env::current_exe().context("cannot find this executable to re-exec")?;
        let mut child = Command::new(exe)
            .arg("--worker")
            .arg(format!("{k}/{n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let mut stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let mut line = serde_json::to_vec(&spec)?;
        line.push(b'\n');
        let tx = tx.clone();
        let k = k as usize;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<WorkerMsg>(&l) {
                    Ok(m) => {
                        let _ = tx.send(Event::Msg(k, m));
                    }
                    Err(e) => eprintln!("worker {k}: unreadable line ({e}): {l:.200}"),
                }
            }
            let _ = tx.send(Event::Gone(k));
        });
        // The spec goes in after the reader exists; a worker that dies early shows as Gone.
        let write = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        write
            .await
            .context("cannot hand the scenario to a worker")?;
        handles.push(Handle::Child {
            child: Box::new(child),
            stdin: Some(stdin),
        });
    }
    Ok(handles)
}

/// The progress line: indicatif on a terminal, a plain line every 5 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    /// Plain lines when stderr is not a terminal (and progress is on).
    plain: bool,
    last_plain: Instant,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            plain: enabled && bar.is_none(),
            bar,
            last_plain: Instant::now(),
        }
    }

    fn show(&mut self, line: String, t_s: f64) {
        match &self.bar {
            Some(b) => b.set_message(line),
            None if self.plain && self.last_plain.elapsed() >= Duration::from_secs(5) => {
                self.last_plain = Instant::now();
                eprintln!("[{t_s:>6.1}s] {line}");
            }
            None => {}
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn total(states: &[WorkerState]) -> Counts {
    let mut t = Counts::default();
    for s in states {
        let c = &s.counts;
        t.attempted += c.attempted;
        t.established += c.established;
        t.failed += c.failed;
        t.closed += c.closed;
        t.deliveries += c.deliveries;
        t.duplicates += c.duplicates;
        t.acks_sent += c.acks_sent;
        t.bad_payload += c.bad_payload;
        t.other_events += c.other_events;
    }
    t
}

/// Runs the whole scenario and returns its report.
pub async fn run(sc: Scenario, limits: Limits, progress_on: bool) -> anyhow::Result<Report> {
    let plan = Plan::new(&sc, &limits);
    let mut progress = Progress::new(progress_on);
    progress.println(&format!(
        "pushgate-load: {} connections to {} at {}/s, {} worker process(es){}, {} source address(es); open files {}/{}",
        sc.connections,
        sc.targets.join(","),
        sc.ramp_rate,
        plan.workers,
        if plan.in_process { " (in-process)" } else { "" },
        plan.sources.max(1),
        limits.nofile_soft,
        limits.nofile_hard
    ));
    for w in &plan.warnings {
        progress.println(&format!("warning: {w}"));
    }

    let started_unix_ms = payload::unix_ns() / 1_000_000;
    let t0 = Instant::now();
    let mut gateway = Watch::new(sc.pids.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut handles = spawn_workers(&sc, &plan, tx).await?;
    // This process and its worker children: is the load tool itself the bottleneck?
    let mut load_pids = vec![std::process::id()];
    for h in &handles {
        if let Handle::Child { child, .. } = h {
            load_pids.extend(child.id());
        }
    }
    let mut load = Watch::new(load_pids);
    let mut states: Vec<WorkerState> = (0..handles.len()).map(|_| WorkerState::default()).collect();

    let sc = Arc::new(sc);
    let push_log = Arc::new(PushLog::default());
    let push_stop = CancellationToken::new();
    let mut push_task: Option<tokio::task::JoinHandle<()>> = None;

    let mut phase = Phase::Ramp;
    let mut phase_deadline: Option<Instant> = None;
    // A ramp that has not finished by then is abandoned (workers died silently, ...).
    let ramp_limit = t0
        + Duration::from_secs_f64(sc.connections as f64 / sc.ramp_rate)
        + sc.connect_timeout
        + Duration::from_secs(30);
    let mut ramp_secs = 0.0;
    let mut push_window: Option<(Instant, Option<Instant>)> = None;
    let mut stop_sent_at: Option<Instant> = None;

    let mut total_hist = stats::new_hist();
    let mut interval_hist = stats::new_hist();
    let mut timeline: Vec<Point> = Vec::new();
    let mut last_point = (0.0_f64, 0_u64, 0_u64); // t, deliveries, pushes sent
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;

    loop {
        // Phase transitions.
        let now = Instant::now();
        match phase {
            Phase::Ramp => {
                let done = states.iter().all(|s| s.ramped || s.gone);
                if done || now >= ramp_limit {
                    ramp_secs = t0.elapsed().as_secs_f64();
                    if !done {
                        progress.println("warning: ramp did not finish in time; going on");
                    }
                    phase = Phase::Hold;
                    phase_deadline = Some(now + sc.hold);
                }
            }
            Phase::Hold if phase_deadline.is_some_and(|d| now >= d) => {
                gateway.mark_idle();
                load.mark_idle();
                if sc.push != PushTo::None {
                    push_task = Some(tokio::spawn(push::run(
                        sc.clone(),
                        push_log.clone(),
                        push_stop.clone(),
                    )));
                    push_window = Some((now, None));
                    phase = Phase::Push;
                    phase_deadline = None;
                } else {
                    phase = Phase::Stop;
                }
            }
            Phase::Push if push_task.as_ref().is_none_or(|t| t.is_finished()) => {
                if let Some((start, _)) = push_window {
                    push_window = Some((start, Some(now)));
                }
                gateway.mark_push_end();
                load.mark_push_end();
                phase = Phase::Drain;
                phase_deadline = Some(now + sc.drain);
            }
            Phase::Drain if phase_deadline.is_some_and(|d| now >= d) => phase = Phase::Stop,
            _ => {}
        }
        if phase == Phase::Stop && stop_sent_at.is_none() {
            push_stop.cancel();
            for h in &mut handles {
                h.stop().await;
            }
            stop_sent_at = Some(Instant::now());
        }
        if phase == Phase::Stop {
            let all_done = states.iter().all(|s| s.fin.is_some() || s.gone);
            let waited = stop_sent_at.is_some_and(|t| t.elapsed() > Duration::from_secs(20));
            if all_done || waited {
                if !all_done {
                    progress.println("warning: some workers sent no final report");
                }
                break;
            }
        }

        let wake = tokio::time::Instant::from_std(
            phase_deadline.unwrap_or(now + Duration::from_secs(3600)),
        );
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            // Notice the end of the push task promptly.
            _ = tokio::time::sleep(Duration::from_millis(50)), if phase == Phase::Push => {}
            ev = rx.recv() => match ev {
                Some(Event::Msg(k, WorkerMsg::Tick { counts, hist })) => {
                    states[k].counts = counts;
                    let _ = interval_hist.add(&hist.0);
                    let _ = total_hist.add(&hist.0);
                }
                Some(Event::Msg(k, WorkerMsg::Ramped { counts })) => {
                    states[k].counts = counts;
                    states[k].ramped = true;
                }
                Some(Event::Msg(k, WorkerMsg::Final(f))) => states[k].fin = Some(*f),
                Some(Event::Msg(k, WorkerMsg::Fatal { message })) => {
                    progress.println(&format!("worker {k}: {message}"));
                    states[k].fatal = Some(message);
                }
                Some(Event::Gone(k)) => states[k].gone = true,
                None => break,
            },
            _ = ticker.tick() => {
                let t_s = t0.elapsed().as_secs_f64();
                let c = total(&states);
                let sent = push_log.sent.load(Relaxed);
                let dt = (t_s - last_point.0).max(1e-3);
                let sample = gateway.tick();
                let load_cpu: f64 = load.tick().iter().filter_map(|s| s.cpu_pct).sum();
                let point = Point {
                    t_s,
                    phase,
                    connections: c.established - c.closed,
                    failed: c.failed,
                    deliveries_per_s: (c.deliveries - last_point.1) as f64 / dt,
                    pushes_per_s: (sent - last_point.2) as f64 / dt,
                    latency: Percentiles::of(&interval_hist),
                    rss_kib: sample.iter().map(|s| s.rss_kib).collect(),
                    cpu_pct: sample.iter().map(|s| s.cpu_pct).collect(),
                    load_cpu_pct: load_cpu,
                };
                interval_hist.reset();
                last_point = (t_s, c.deliveries, sent);
                let rss: u64 = sample.iter().filter_map(|s| s.rss_kib).sum();
                progress.show(
                    format!(
                        "{:?} | conns {}/{} (failed {}) | pushes {} | deliveries {:.0}/s | p99 {:.2} ms{}",
                        phase,
                        point.connections,
                        sc.connections,
                        c.failed,
                        sent,
                        point.deliveries_per_s,
                        point.latency.p99_ms,
                        if sample.is_empty() { String::new() } else { format!(" | gateway RSS {:.0} MiB", rss as f64 / 1024.0) }
                    ),
                    t_s,
                );
                timeline.push(point);
            },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                progress.println("interrupted: stopping and reporting what was measured");
                phase = Phase::Stop;
            }
        }
    }
    progress.finish();
    if push_window.is_some_and(|(_, end)| end.is_none()) {
        push_window = push_window.map(|(s, _)| (s, Some(Instant::now())));
        gateway.mark_push_end();
        load.mark_push_end();
    }
    if let Some(t) = push_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for h in &mut handles {
        if let Handle::Child { child, .. } = h {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
    let duration_secs = t0.elapsed().as_secs_f64();
    // Gather the finals.
    let mut by_seq = Vec::new();
    let mut failed = Vec::new();
    let mut closed = Vec::new();
    let mut failures: BTreeMap<_, (u64, String)> = BTreeMap::new();
    for s in &states {
        if let Some(f) = &s.fin {
            add_counts(&mut by_seq, &f.by_seq);
            failed.extend_from_slice(&f.failed);
            closed.extend_from_slice(&f.closed);
            for (kind, fc) in &f.failures {
                let e = failures.entry(*kind).or_insert((0, fc.sample.clone()));
                e.0 += fc.count;
            }
        }
    }
    let c = total(&states);
    let records = push_log.records();
    let pop = Population::new(&sc, &failed, &closed);
    let accounting = delivery::account(&pop, &records, &by_seq);

    let mut close_reasons = BTreeMap::new();
    for cl in &closed {
        *close_reasons
            .entry(report::close_reason_name(cl.reason))
            .or_insert(0) += 1;
    }
    let failures: Vec<FailureLine> = failures
        .into_iter()
        .map(|(kind, (count, sample))| FailureLine {
            kind,
            count,
            sample,
            advice: kind.advice(&limits),
        })
        .collect();

    let mut advice = plan.warnings.clone();
    for s in &states {
        if let Some(m) = &s.fatal {
            advice.push(format!("a worker stopped: {m}"));
        }
    }
    if states.iter().any(|s| s.fin.is_none()) {
        advice.push("some workers sent no final report: their deliveries are missing".into());
    }
    if interrupted {
        advice.push("the run was interrupted".into());
    }
    if c.failed > 0 {
        advice.push(format!(
            "{} connection(s) failed; see the failures for the limit and how to raise it",
            c.failed
        ));
    }
    if accounting.lost > 0 && c.closed > 0 {
        advice.push(
            "connections closed during the run: loss near their close time is expected".into(),
        );
    }

    let push_secs = push_window
        .and_then(|(s, e)| Some(e?.duration_since(s).as_secs_f64()))
        .unwrap_or(0.0);
    let sent = push_log.sent.load(Relaxed);
    let accepted = push_log.accepted.load(Relaxed);
    let pushes = Pushes {
        sent,
        accepted,
        rejected: sent - accepted.min(sent),
        rate_per_s: if push_secs > 0.0 {
            sent as f64 / push_secs.min(sc.duration.as_secs_f64().max(1e-3))
        } else {
            0.0
        },
        errors: push_log.errors(),
        api_latency: Percentiles::of(&push_log.api_latency()),
    };
    let sums = push_log.sums();

    let gateway = gateway.usage(push_secs);
    let load = load.usage(push_secs);
    let gateway_rss_bytes_per_connection = {
        let start: Option<u64> = gateway.iter().map(|g| g.rss_kib_start).sum();
        let idle: Option<u64> = gateway.iter().map(|g| g.rss_kib_idle).sum();
        match (start, idle) {
            (Some(s), Some(i)) if !gateway.is_empty() && c.established > 0 => {
                Some((i as f64 - s as f64) * 1024.0 / c.established as f64)
            }
            _ => None,
        }
    };
    if gateway_rss_bytes_per_connection.is_some_and(|b| b < 0.0) {
        advice.push(
            "gateway RSS fell between the start and the idle point (GC, memory handed back): \
             start a fresh gateway to measure memory per connection"
                .into(),
        );
    }
    let latency = Percentiles::of(&total_hist);

    Ok(Report {
        tool: format!("pushgate-load {}", env!("CARGO_PKG_VERSION")),
        label: sc.label.clone(),
        started_unix_ms,
        duration_secs,
        scenario: sc.redacted(),
        limits,
        plan,
        connections: Connections {
            attempted: c.attempted,
            established: c.established,
            failed: c.failed,
            closed_during_run: c.closed,
            close_reasons,
            ramp_secs,
            connect_rate_per_s: if ramp_secs > 0.0 {
                c.established as f64 / ramp_secs
            } else {
                0.0
            },
            failures,
        },
        pushes,
        deliveries: Deliveries {
            accounting,
            duplicates: c.duplicates,
            bad_payload: c.bad_payload,
            other_events: c.other_events,
        },
        latency,
        acks: Acks {
            requested: sc.ack_timeout_ms.is_some(),
            client_sent: c.acks_sent,
            server: (sums.reports > 0).then_some(sums),
        },
        gateway,
        gateway_rss_bytes_per_connection,
        load,
        timeline,
        advice,
    })
}
