//! entra-sync's webhook: the HTTP endpoint Microsoft Graph delivers change notifications to.
//!
//! Its only job is to verify and store, fast: it answers Graph's validation handshake, keeps the
//! notifications whose `clientState` and tenant are ours, appends them to a Redis stream (the
//! requests arriving together share one MULTI/EXEC, see `group_commit.rs`), and answers 202 only
//! once Redis has them — or 503 before its deadline, so that Graph retries. It calls nothing else.

pub mod config;
mod error;
mod group_commit;
mod handlers;
mod metrics;
mod notification;
mod queue;
mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use secrecy::ExposeSecret;

pub use config::{Settings, WebhookConfig};
pub use error::WebhookError;

/// What the handlers share.
pub(crate) struct AppState {
    settings: Settings,
    verifier: verify::Verifier,
    queue: Arc<queue::Queue>,
    /// Where requests hand their entries to be stored, together with those of the requests
    /// waiting at the same moment.
    commits: group_commit::GroupCommit,
    metrics: metrics::Metrics,
}

/// The webhook's routes, with their state; the backlog watcher runs while the router lives.
pub fn router(settings: Settings) -> Result<Router, redis::RedisError> {
    let queue = Arc::new(queue::Queue::new(
        settings.redis_url.expose_secret(),
        settings.stream.clone(),
    )?);
    queue.watch_backlog(settings.backlog_interval);
    let metrics = metrics::Metrics::new();
    let state = Arc::new(AppState {
        verifier: verify::Verifier::new(
            &settings.client_state,
            &settings.client_state_previous,
            &settings.tenant_id,
        ),
        commits: group_commit::GroupCommit::start(queue.clone(), metrics.commit_requests.clone()),
        queue,
        metrics,
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

/// The longest header timeout handed to hyper, whose clock arithmetic would overflow on
/// `Duration::MAX` (`Settings` built by hand are not range-checked).
const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Serves until `shutdown` resolves, then stops accepting and finishes the requests in flight.
///
/// HTTP/1 through hyper directly rather than `axum::serve`, which sets no timer: a client that
/// sends its headers slowly (slowloris) is cut off after `settings.header_timeout`, as is a
/// keep-alive connection left idle that long. Bodies have their own deadline, in the handler.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = settings.header_timeout.min(MAX_HEADER_TIMEOUT);
    // Redis' error is not repeated: it could one day quote the URL, password included.
    let app = router(settings).map_err(|_| {
        std::io::Error::other("REDIS_URL is not a Redis URL (redis:// or rediss://)")
    })?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // An error here is a client's: gone, too slow, or not speaking HTTP.
            let _ = connection.await;
        });
    }
    drop(listener);
    // Idle connections close at once; those with a request in flight after its answer.
    connections.shutdown().await;
    Ok(())
}

/// A connection that failed before it was accepted is the client's business; anything else
/// (out of file descriptors, say) gets a pause, so that the loop does not spin on it.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept connections; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
