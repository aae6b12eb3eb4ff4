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
            let shutdown = shutdown_signal().context("cannot install the signal handlers")?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            pushgate::server::run(config, listener, shutdown).await?;
            Ok(())
        })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: `server::run` polls it only once it serves, and a
/// SIGTERM that came in between (a busy host, a client that connects at once) would
/// otherwise kill the process without a graceful shutdown.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
