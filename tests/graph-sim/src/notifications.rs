//! Subscriptions: the validation handshake Graph performs when one is created, change
//! notifications on every tenant change (with optional delay, duplication, reordering and loss),
//! and lifecycle notifications on demand.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::graph_error;
use crate::state::{Inner, lock};
use crate::tenant::{ChangeType, Notice, Resource};

/// Graph's maximum lifetime of a group or user subscription: 41,760 minutes.
const MAX_MINUTES: i64 = 41_760;
const QUOTA: usize = 100;

#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    id: String,
    resource: String,
    change_type: String,
    notification_url: String,
    lifecycle_notification_url: Option<String>,
    client_state: Option<String>,
    expiration: DateTime<Utc>,
    reauthorized: u32,
}

/// A subscription as tests see it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: Option<String>,
    pub expiration: DateTime<Utc>,
    pub reauthorized: u32,
}

impl Subscription {
    pub(crate) fn view(&self) -> SubscriptionView {
        SubscriptionView {
            id: self.id.clone(),
            resource: self.resource.clone(),
            change_type: self.change_type.clone(),
            notification_url: self.notification_url.clone(),
            lifecycle_notification_url: self.lifecycle_notification_url.clone(),
            expiration: self.expiration,
            reauthorized: self.reauthorized,
        }
    }

    fn json(&self, inner: &Inner) -> Value {
        json!({
            "@odata.context": format!("{}/v1.0/$metadata#subscriptions/$entity", inner.base_url),
            "id": self.id,
            "resource": self.resource,
            "applicationId": lock(&inner.config).client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_notification_url,
            "expirationDateTime": self.expiration.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "latestSupportedTlsVersion": "v1_2",
        })
    }

    fn covers(&self, resource: Resource) -> bool {
        let r = self.resource.trim_start_matches('/').to_ascii_lowercase();
        match resource {
            Resource::Group(id) => r == "groups" || r == format!("groups/{id}"),
            Resource::User(id) => r == "users" || r == format!("users/{id}"),
        }
    }
}

/// How change notifications reach subscribers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DeliveryConfig {
    /// Off: changes are not notified at all (as when Graph delivers nothing).
    pub enabled: bool,
    pub delay_millis: u64,
    /// Extra copies of every notification.
    pub duplicates: u32,
    /// Shuffle the notifications of each delivery and, with a delay, delay each delivery by a
    /// random part of it, so that later changes can overtake earlier ones.
    pub reorder: bool,
    /// Fraction of notifications silently dropped, 0.0 to 1.0.
    pub loss_rate: f64,
    /// Attempts per delivery before giving up (Graph retries for hours; tests need less).
    pub attempts: u32,
    pub retry_delay_millis: u64,
    pub seed: u64,
    /// Whether a change of a group's owners alone notifies the group, as a member change does.
    /// Graph's documentation does not promise it; off plays a Graph that stays silent.
    pub owner_changes: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            delay_millis: 0,
            duplicates: 0,
            reorder: false,
            loss_rate: 0.0,
            attempts: 3,
            retry_delay_millis: 200,
            seed: 7,
            owner_changes: true,
        }
    }
}

/// One POST of notifications to a subscriber.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub url: String,
    pub notifications: usize,
    /// The subscriber's status, or `None` when it could not be reached.
    pub status: Option<u16>,
    pub attempt: u32,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    graph_error(status, code, message)
}

fn active(
    inner: &Inner,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Subscription>> {
    let mut subscriptions = lock(&inner.subscriptions);
    let now = Utc::now();
    // Graph deletes expired subscriptions.
    subscriptions.retain(|_, s| s.expiration > now);
    subscriptions
}

fn parse_expiration(body: &Value) -> Result<DateTime<Utc>, Response> {
    let Some(text) = body["expirationDateTime"].as_str() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expirationDateTime is required.",
        ));
    };
    let Ok(at) = DateTime::parse_from_rfc3339(text) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "expirationDateTime is not a date.",
        ));
    };
    let at = at.with_timezone(&Utc);
    let now = Utc::now();
    if at <= now {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Subscription expiration must be in the future.",
        ));
    }
    if at > now + chrono::Duration::minutes(MAX_MINUTES) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ExtensionError",
            &format!("Subscription expiration can only be {MAX_MINUTES} minutes in the future."),
        ));
    }
    Ok(at)
}

fn url_allowed(url: &str) -> bool {
    url.starts_with("https://")
        || url.starts_with("http://127.")
        || url.starts_with("http://localhost")
        || url.starts_with("http://[::1]")
}

/// Graph's handshake: POST `{url}?validationToken=...` as text/plain; the endpoint must answer
/// 200 with the decoded token as its whole body within 10 seconds.
async fn validate(inner: &Inner, url: &str) -> bool {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        Uuid::new_v4()
    );
    let Ok(mut target) = reqwest::Url::parse(url) else {
        return false;
    };
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let response = inner
        .http
        .post(target)
        .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match response {
        Ok(response) if response.status() == reqwest::StatusCode::OK => {
            response.text().await.is_ok_and(|body| body == token)
        }
        _ => false,
    }
}

pub(crate) async fn create(inner: &Inner, body: &[u8]) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid JSON body.",
        );
    };
    let text = |key: &str| body[key].as_str().map(str::to_owned);
    let (Some(resource), Some(change_type), Some(notification_url)) = (
        text("resource"),
        text("changeType"),
        text("notificationUrl"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "resource, changeType and notificationUrl are required.",
        );
    };
    let lifecycle_notification_url = text("lifecycleNotificationUrl");
    let client_state = text("clientState");
    let expiration = match parse_expiration(&body) {
        Ok(at) => at,
        Err(response) => return response,
    };
    let resource_ok = {
        let r = resource.trim_start_matches('/').to_ascii_lowercase();
        r == "groups" || r == "users" || r.starts_with("groups/") || r.starts_with("users/")
    };
    if !resource_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &format!("Unsupported resource '{resource}'."),
        );
    }
    if !change_type
        .split(',')
        .all(|c| matches!(c.trim(), "updated" | "deleted"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "changeType for groups and users: updated, deleted.",
        );
    }
    if client_state
        .as_ref()
        .is_some_and(|c| c.chars().count() > 128)
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "clientState is longer than 128 characters.",
        );
    }
    let urls = std::iter::once(&notification_url).chain(lifecycle_notification_url.as_ref());
    for url in urls.clone() {
        if !url_allowed(url) {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "The notification URL must use https.",
            );
        }
    }
    if active(inner).len() >= QUOTA {
        return error(
            StatusCode::FORBIDDEN,
            "ExtensionError",
            "Operation: Create; Exception: [Status Code: Forbidden; Reason: The subscription quota has been reached.]",
        );
    }
    for url in urls {
        if !validate(inner, url).await {
            return error(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request.",
            );
        }
    }
    let subscription = Subscription {
        id: Uuid::new_v4().to_string(),
        resource,
        change_type,
        notification_url,
        lifecycle_notification_url,
        client_state,
        expiration,
        reauthorized: 0,
    };
    let json = subscription.json(inner);
    lock(&inner.subscriptions).insert(subscription.id.clone(), subscription);
    (StatusCode::CREATED, axum::Json(json)).into_response()
}

fn subscription_not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        &format!("The object was not found. Subscription '{id}'."),
    )
}

pub(crate) fn list(inner: &Inner) -> Response {
    let value: Vec<Value> = active(inner).values().map(|s| s.json(inner)).collect();
    axum::Json(json!({ "value": value })).into_response()
}

pub(crate) fn get(inner: &Inner, id: &str) -> Response {
    let subscription = active(inner).get(id).cloned();
    match subscription {
        Some(s) => axum::Json(s.json(inner)).into_response(),
        None => subscription_not_found(id),
    }
}

pub(crate) fn renew(inner: &Inner, id: &str, body: &[u8]) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid JSON body.",
        );
    };
    let expiration = match parse_expiration(&body) {
        Ok(at) => at,
        Err(response) => return response,
    };
    let renewed = active(inner).get_mut(id).map(|s| {
        s.expiration = expiration;
        s.clone()
    });
    match renewed {
        Some(s) => axum::Json(s.json(inner)).into_response(),
        None => subscription_not_found(id),
    }
}

pub(crate) fn delete(inner: &Inner, id: &str) -> Response {
    match active(inner).remove(id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => subscription_not_found(id),
    }
}

pub(crate) fn reauthorize(inner: &Inner, id: &str) -> Response {
    match active(inner).get_mut(id) {
        Some(s) => {
            s.reauthorized += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        None => subscription_not_found(id),
    }
}

/// Sends a lifecycle event to a subscription's lifecycle URL; `subscriptionRemoved` also
/// removes the subscription, as Graph does. Returns the subscriber's status.
pub(crate) async fn send_lifecycle(inner: &Arc<Inner>, id: &str, event: &str) -> Option<u16> {
    let subscription = active(inner).get(id).cloned()?;
    if event == "subscriptionRemoved" {
        active(inner).remove(id);
    }
    let url = subscription.lifecycle_notification_url.clone()?;
    let tenant_id = lock(&inner.config).tenant_id;
    let body = json!({
        "value": [{
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": subscription.expiration.to_rfc3339(),
            "tenantId": tenant_id,
            "clientState": subscription.client_state,
            "lifecycleEvent": event,
        }]
    });
    post_once(inner, &url, &body, 1, 1).await
}

async fn post_once(
    inner: &Inner,
    url: &str,
    body: &Value,
    count: usize,
    attempt: u32,
) -> Option<u16> {
    let status = inner
        .http
        .post(url)
        .json(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    lock(&inner.deliveries).push(DeliveryRecord {
        url: url.to_owned(),
        notifications: count,
        status,
        attempt,
    });
    status
}

/// The delivery loop: turns tenant changes into change notifications for every subscription
/// that covers them.
pub(crate) async fn deliver(
    inner: Weak<Inner>,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<(Vec<Notice>, DeliveryConfig)>,
) {
    let mut sequence: u64 = 0;
    let mut rng = None;
    while let Some((notices, config)) = inbox.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !config.enabled {
            continue;
        }
        let rng = rng.get_or_insert_with(|| fastrand::Rng::with_seed(config.seed));
        let tenant_id = lock(&inner.config).tenant_id;
        let subscriptions: Vec<Subscription> = active(&inner).values().cloned().collect();
        for subscription in subscriptions {
            let mut batch = Vec::new();
            let notified = |n: &&Notice| config.owner_changes || !n.owner_change;
            for notice in notices
                .iter()
                .filter(notified)
                .filter(|n| subscription.covers(n.resource))
            {
                sequence += 1;
                let notification = notification(&subscription, notice, tenant_id, sequence);
                for _ in 0..=config.duplicates {
                    if rng.f64() >= config.loss_rate {
                        batch.push(notification.clone());
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            if config.reorder {
                rng.shuffle(&mut batch);
            }
            let inner = inner.clone();
            let url = subscription.notification_url.clone();
            let config = config.clone();
            let delay = if config.reorder {
                rng.u64(0..=config.delay_millis)
            } else {
                config.delay_millis
            };
            let send = async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let count = batch.len();
                let body = json!({ "value": batch });
                for attempt in 1..=config.attempts.max(1) {
                    let status = post_once(&inner, &url, &body, count, attempt).await;
                    if status.is_some_and(|s| (200..300).contains(&s)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(config.retry_delay_millis)).await;
                }
            };
            if config.delay_millis > 0 {
                tokio::spawn(send);
            } else {
                send.await;
            }
        }
    }
}

fn notification(
    subscription: &Subscription,
    notice: &Notice,
    tenant_id: Uuid,
    sequence: u64,
) -> Value {
    let (kind, collection, id) = match notice.resource {
        Resource::Group(id) => ("#Microsoft.Graph.Group", "Groups", id),
        Resource::User(id) => ("#Microsoft.Graph.User", "Users", id),
    };
    json!({
        "subscriptionId": subscription.id,
        "subscriptionExpirationDateTime": subscription.expiration.to_rfc3339(),
        "changeType": match notice.change_type {
            ChangeType::Updated => "updated",
            ChangeType::Deleted => "deleted",
        },
        "resource": format!("{collection}/{id}"),
        "clientState": subscription.client_state,
        "tenantId": tenant_id,
        "resourceData": {
            "@odata.type": kind,
            "@odata.id": format!("{collection}/{id}"),
            "id": id,
            "organizationId": tenant_id,
            "eventTime": Utc::now().to_rfc3339(),
            "sequenceNumber": sequence,
        }
    })
}
