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
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            pushgate::server::run(config, listener, shutdown_signal()).await?;
            Ok(())
        })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
