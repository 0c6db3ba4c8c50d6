//! The webhook's one error type, mapped to HTTP in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::verify::Dropped;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("malformed notification: {0}")]
    Malformed(String),
    /// Every notification was dropped; how many for which reason.
    #[error(
        "no notification carried an accepted clientState and tenant ({} with another clientState, \
         {} from another tenant)",
        .0.client_state,
        .0.tenant
    )]
    Unauthorized(Dropped),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The client did not send its whole body in time.
    #[error("the body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    #[error("notifications must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the validation token is longer than {0} characters")]
    TokenTooLong(usize),
    /// Redis did not store the notifications in time: Graph must retry.
    #[error("the notifications could not be stored: {0}")]
    Unavailable(String),
    /// Too many entries wait for the workers: Graph should retry later.
    #[error("{0} notifications are waiting for the workers; try again later")]
    Backpressure(i64),
}

impl WebhookError {
    /// The label of the request counter.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::TokenTooLong(_) => "malformed",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooLarge(_) => "too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::Backpressure(_) => "backpressure",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::TokenTooLong(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) | Self::Backpressure(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            axum::Json(json!({ "error": self.outcome(), "message": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
