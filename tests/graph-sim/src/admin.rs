//! The admin API (`/admin/...`): change the tenant while the simulator runs, inject faults and
//! replication lag, steer notification delivery, send lifecycle events and read the request
//! log. The binary and the demo use it; in-process tests call [`crate::GraphSim`] directly.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::faults::Fault;
use crate::notifications::{DeliveryConfig, send_lifecycle};
use crate::state::{Inner, lock};
use crate::tenant::{Tenant, TenantFile, User};

pub(crate) fn router() -> Router<Arc<Inner>> {
    Router::new()
        .route("/admin/tenant", get(get_tenant).put(put_tenant))
        .route("/admin/users/{id}", put(put_user).delete(delete_user))
        .route("/admin/groups/{id}", put(put_group).delete(delete_group))
        .route("/admin/groups/{id}/restore", post(restore_group))
        .route(
            "/admin/groups/{id}/members/{member}",
            put(add_member).delete(remove_member),
        )
        .route(
            "/admin/groups/{id}/owners/{owner}",
            put(add_owner).delete(remove_owner),
        )
        .route("/admin/assignments", post(assign))
        .route("/admin/assignments/{principal}", delete(unassign))
        .route("/admin/faults", post(add_fault).delete(clear_faults))
        .route("/admin/lag", get(lagging).delete(clear_lag))
        .route("/admin/lag/{id}", put(start_lag).delete(end_lag))
        .route("/admin/delta/expire", post(expire_delta))
        .route("/admin/delivery", put(put_delivery))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/subscriptions", get(subscriptions))
        .route("/admin/subscriptions/{id}/lifecycle", post(lifecycle))
        .route("/admin/requests", get(requests).delete(clear_requests))
}

async fn get_tenant(State(inner): State<Arc<Inner>>) -> Json<TenantFile> {
    Json(lock(&inner.tenant).to_file())
}

async fn put_tenant(State(inner): State<Arc<Inner>>, Json(file): Json<TenantFile>) -> StatusCode {
    *lock(&inner.tenant) = Tenant::from_file(file);
    lock(&inner.delta_sessions).clear();
    StatusCode::NO_CONTENT
}

async fn put_user(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<Uuid>,
    Json(mut user): Json<User>,
) -> StatusCode {
    user.id = id;
    inner.change(|t| ((), t.upsert_user(user)));
    StatusCode::NO_CONTENT
}

async fn delete_user(State(inner): State<Arc<Inner>>, Path(id): Path<Uuid>) -> StatusCode {
    inner.change(|t| ((), t.delete_user(id)));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupBody {
    display_name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn put_group(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<Uuid>,
    Json(body): Json<GroupBody>,
) -> StatusCode {
    inner.change(|t| {
        (
            (),
            t.upsert_group(id, &body.display_name, body.description.as_deref()),
        )
    });
    StatusCode::NO_CONTENT
}

/// `?permanent=true` deletes for good (`deleted`); otherwise to the recycle bin (`updated`).
async fn delete_group(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<Uuid>,
    Query(query): Query<HashMap<String, String>>,
) -> StatusCode {
    let permanent = query.get("permanent").is_some_and(|v| v == "true");
    inner.change(|t| {
        let notices = if permanent {
            t.hard_delete_group(id)
        } else {
            t.soft_delete_group(id)
        };
        ((), notices)
    });
    StatusCode::NO_CONTENT
}

async fn restore_group(State(inner): State<Arc<Inner>>, Path(id): Path<Uuid>) -> StatusCode {
    inner.change(|t| ((), t.restore_group(id)));
    StatusCode::NO_CONTENT
}

async fn add_member(
    State(inner): State<Arc<Inner>>,
    Path((id, member)): Path<(Uuid, Uuid)>,
) -> StatusCode {
    inner.change(|t| ((), t.add_member(id, member)));
    StatusCode::NO_CONTENT
}

async fn remove_member(
    State(inner): State<Arc<Inner>>,
    Path((id, member)): Path<(Uuid, Uuid)>,
) -> StatusCode {
    inner.change(|t| ((), t.remove_member(id, member)));
    StatusCode::NO_CONTENT
}

async fn add_owner(
    State(inner): State<Arc<Inner>>,
    Path((id, owner)): Path<(Uuid, Uuid)>,
) -> StatusCode {
    inner.change(|t| ((), t.add_owner(id, owner)));
    StatusCode::NO_CONTENT
}

async fn remove_owner(
    State(inner): State<Arc<Inner>>,
    Path((id, owner)): Path<(Uuid, Uuid)>,
) -> StatusCode {
    inner.change(|t| ((), t.remove_owner(id, owner)));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssignBody {
    principal_id: Uuid,
    #[serde(default)]
    app_role_id: Uuid,
}

async fn assign(State(inner): State<Arc<Inner>>, Json(body): Json<AssignBody>) -> Response {
    match lock(&inner.tenant).assign(body.principal_id, body.app_role_id) {
        Some(id) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        None => (StatusCode::NOT_FOUND, "no such user or group").into_response(),
    }
}

async fn unassign(State(inner): State<Arc<Inner>>, Path(principal): Path<Uuid>) -> StatusCode {
    lock(&inner.tenant).unassign(principal);
    StatusCode::NO_CONTENT
}

async fn add_fault(State(inner): State<Arc<Inner>>, Json(fault): Json<Fault>) -> StatusCode {
    lock(&inner.faults).push(fault);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(inner): State<Arc<Inner>>) -> StatusCode {
    inner.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct LagQuery {
    /// How long the lag lasts; without it, until cleared.
    #[serde(default)]
    millis: Option<u64>,
}

/// `PUT /admin/lag/{id}[?millis=N]`: a user or group lags (see [`crate::lag`]).
async fn start_lag(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<Uuid>,
    Query(query): Query<LagQuery>,
) -> StatusCode {
    let duration = query.millis.map(std::time::Duration::from_millis);
    lock(&inner.lagging).start(id, duration);
    StatusCode::NO_CONTENT
}

async fn end_lag(State(inner): State<Arc<Inner>>, Path(id): Path<Uuid>) -> StatusCode {
    lock(&inner.lagging).end(id);
    StatusCode::NO_CONTENT
}

async fn clear_lag(State(inner): State<Arc<Inner>>) -> StatusCode {
    lock(&inner.lagging).clear();
    StatusCode::NO_CONTENT
}

/// The ids lagging now.
async fn lagging(State(inner): State<Arc<Inner>>) -> Json<Vec<Uuid>> {
    Json(lock(&inner.lagging).now())
}

async fn expire_delta(State(inner): State<Arc<Inner>>) -> StatusCode {
    lock(&inner.tenant).expire_delta_tokens();
    StatusCode::NO_CONTENT
}

async fn put_delivery(
    State(inner): State<Arc<Inner>>,
    Json(config): Json<DeliveryConfig>,
) -> StatusCode {
    *lock(&inner.delivery) = config;
    StatusCode::NO_CONTENT
}

async fn deliveries(State(inner): State<Arc<Inner>>) -> Response {
    Json(lock(&inner.deliveries).clone()).into_response()
}

async fn subscriptions(State(inner): State<Arc<Inner>>) -> Response {
    let views: Vec<_> = lock(&inner.subscriptions)
        .values()
        .map(crate::notifications::Subscription::view)
        .collect();
    Json(views).into_response()
}

#[derive(Deserialize)]
struct LifecycleBody {
    event: String,
}

async fn lifecycle(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    Json(body): Json<LifecycleBody>,
) -> Response {
    match send_lifecycle(&inner, &id, &body.event).await {
        Some(status) => Json(json!({ "status": status })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no such subscription, or it has no lifecycle URL",
        )
            .into_response(),
    }
}

async fn requests(State(inner): State<Arc<Inner>>) -> Response {
    Json(lock(&inner.requests).clone()).into_response()
}

async fn clear_requests(State(inner): State<Arc<Inner>>) -> StatusCode {
    lock(&inner.requests).clear();
    StatusCode::NO_CONTENT
}
