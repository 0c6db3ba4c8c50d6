//! entra-sync's webhook: the HTTP endpoint Microsoft Graph delivers change notifications to.
//!
//! Its only job is to verify and store, fast: it answers Graph's validation handshake, keeps the
//! notifications whose `clientState` and tenant are ours, appends them to a Redis stream in one
//! round trip, and answers 202 only once Redis has them — or 503 before its deadline, so that
//! Graph retries. It calls nothing else.

pub mod config;
mod error;
mod handlers;
mod metrics;
mod notification;
mod queue;
pub mod record;
mod verify;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use secrecy::ExposeSecret;

pub use config::{Settings, WebhookConfig};
pub use error::WebhookError;

/// What the handlers share.
pub(crate) struct AppState {
    settings: Settings,
    verifier: verify::Verifier,
    queue: Arc<queue::Queue>,
    metrics: metrics::Metrics,
}

/// The webhook's routes, with their state; the backlog watcher runs while the router lives.
pub fn router(settings: Settings) -> Result<Router, redis::RedisError> {
    let queue = Arc::new(queue::Queue::new(
        settings.redis_url.expose_secret(),
        settings.stream.clone(),
    )?);
    queue.watch_backlog(settings.backlog_interval);
    let state = Arc::new(AppState {
        verifier: verify::Verifier::new(
            &settings.client_state,
            &settings.client_state_previous,
            &settings.tenant_id,
        ),
        queue,
        metrics: metrics::Metrics::new(),
        settings,
    });
    Ok(Router::new()
        .route("/notifications", post(handlers::notifications))
        .route("/lifecycle", post(handlers::notifications))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        // Our own limit answers with our own 413; axum's default (2 MiB) must not come first.
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .with_state(state))
}

/// Logs to stderr at `RUST_LOG` (default `info`), as JSON lines when `json` is set. Shared by the
/// webhook and worker binaries.
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

/// Serves until `shutdown` resolves, then stops accepting and finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Redis' error is not repeated: it could one day quote the URL, password included.
    let app = router(settings).map_err(|_| {
        std::io::Error::other("REDIS_URL is not a Redis URL (redis:// or rediss://)")
    })?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// SIGTERM (Kubernetes) or Ctrl-C.
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
    tracing::info!("shutting down: finishing requests in flight");
}
