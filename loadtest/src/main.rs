//! `pushgate-load`: a load generator for pushgate (and the socket.io peer in
//! `peers/socketio/`, and Pusher servers such as Sockudo). It opens Socket.IO v4, Phoenix
//! Channels v2 or Pusher Channels 7 connections over WebSocket (`--protocol`), pushes
//! stamped messages over the HTTP push API (`/v1/push`, or the Pusher HTTP API), and reports
//! connections, loss, duplicates, latency percentiles, acks and the gateways' memory and
//! CPU.
//!
//! Modules:
//! - `scenario` — settings from flags and a TOML file, resolved and checked.
//! - `client` — minimal Socket.IO, Phoenix and Pusher clients on the gateway's own codecs.
//! - `token` — connection JWTs.
//! - `payload` — the push stamp `{"t", "seq"}` and duplicate detection.
//! - `stats` — latency histograms and percentiles.
//! - `worker` — one block of connections; in-process or a re-executed child.
//! - `push` — the HTTP push driver.
//! - `delivery` — expected vs received deliveries.
//! - `limits` — open files, ports, backlogs: the plan and the advice.
//! - `proc` — RSS and CPU of the gateway processes.
//! - `run` — the parent: phases, progress, the report.
//! - `report` — summary, JSON and chart.

mod client;
mod delivery;
mod limits;
mod payload;
mod proc;
mod push;
mod report;
mod run;
mod scenario;
mod stats;
mod token;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

use crate::limits::Limits;
use crate::scenario::{Scenario, Settings, WorkerSlot};

#[derive(Parser)]
#[command(
    name = "pushgate-load",
    version,
    about = "Load generator for pushgate (Socket.IO, Phoenix and Pusher clients), Socket.IO servers and Pusher servers",
    after_help = "Example (two socket.io peers from peers/socketio/start.sh 2):\n  \
        pushgate-load --target 127.0.0.1:4001,127.0.0.1:4002 \
        --push-url http://127.0.0.1:4001/push -n 4000 --ramp-rate 1000 \
        --jwt-secret s --push all --push-rate 1 --duration 20s --out results/peer.json"
)]
struct Cli {
    /// TOML scenario file; flags override its values.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Internal: run as worker k of n (spec on stdin, reports on stdout).
    #[arg(long, hide = true)]
    worker: Option<WorkerSlot>,
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limits = match Limits::raise_and_read() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pushgate-load: cannot read the open-files limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pushgate-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.worker.is_some() {
        // A terminal's Ctrl-C reaches the whole process group; a worker stops only when
        // the parent says so (or goes away), so that it can still send its final report.
        // SAFETY: setting a signal disposition to SIG_IGN before any thread starts.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
    }
    let result = if cli.worker.is_some() {
        runtime.block_on(worker::serve_child())
    } else {
        runtime.block_on(parent(cli, limits))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushgate-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn parent(cli: Cli, limits: Limits) -> anyhow::Result<()> {
    let file = match &cli.scenario {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let sc = Scenario::resolve(cli.settings.over(file))?;
    let out = sc.out.clone();
    let chart = sc
        .chart
        .clone()
        .or_else(|| out.as_ref().map(|o| o.with_extension("png")));
    let report = run::run(sc, limits, !cli.quiet).await?;
    println!("{}", report.summary());
    if let Some(path) = &out {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
    }
    if let Some(path) = &chart {
        report
            .write_chart(path)
            .with_context(|| format!("drawing {}", path.display()))?;
        println!("chart:   {}", path.display());
    }
    Ok(())
}
