//! What entra-sync's two binaries share, so that neither imports the other: the stream record
//! the webhook writes and the worker reads, what the Redis server can do with streams, the
//! settings both read (Redis, the stream, secrets), logging, and shutdown.

pub mod record;
pub mod redis_server;
pub mod settings;

/// Logs to stderr at `RUST_LOG` (default `info`), as JSON lines when `json` is set.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing the work in flight");
}
