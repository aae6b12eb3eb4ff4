//! The `pushgate` binary: read the configuration, set up logging, run one node until
//! SIGTERM or SIGINT.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Printed once, here: the error also used to go through `tracing::error!`, and
        // both write to stderr, so every configuration error appeared twice.
        Err(e) => {
            eprintln!("pushgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads the configuration first, because it sizes the runtime.
fn run() -> anyhow::Result<()> {
    let config = pushgate::config::Config::load().context("invalid configuration")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    runtime
        .build()
        .context("cannot start the runtime")?
        .block_on(async {
            let shutdown = shutdown_signal()?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            pushgate::server::run(config, listener, shutdown).await?;
            Ok(())
        })
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed when this
/// returns, before the node listens, not when the future is first polled: a signal
/// that arrived after "listening on" but before `server::run` first looked at the
/// future (a moment a busy machine can stretch) took the default action and killed
/// the process without the ordered shutdown.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
