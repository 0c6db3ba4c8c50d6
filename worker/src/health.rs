//! The worker's HTTP endpoint for its operators: `/healthz` (the process answers), `/readyz`
//! (the database answers, the stream can be read, rounds commit; see [`crate::readiness`]) and
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use migration::database::Db;
use prometheus_client::registry::Registry;
use sea_orm::ConnectionTrait;

use crate::error::{Error, Result};
use crate::readiness::Readiness;

struct Health {
    db: Db,
    registry: Registry,
    readiness: Readiness,
}

async fn healthz() -> StatusCode {
    StatusCode::OK
}

async fn readyz(State(health): State<Arc<Health>>) -> StatusCode {
    if !health.readiness.is_ready() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match health.db.execute_unprepared("SELECT 1").await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn metrics_text(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &health.registry);
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Binds `listen` (a clear error when it cannot) and serves the endpoint in the background.
pub async fn serve(
    listen: SocketAddr,
    db: Db,
    registry: Registry,
    readiness: Readiness,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Settings(format!("ENTRA_SYNC_METRICS_LISTEN {listen}: {e}")))?;
    // The address bound, not the one asked for: with port 0 the system picks it.
    let listen = listener.local_addr().unwrap_or(listen);
    tracing::info!(%listen, "health and metrics listening");
    let health = Arc::new(Health {
        db,
        registry,
        readiness,
    });
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics_text))
        .with_state(health);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}
