//! The token endpoint (`POST /{tenant}/oauth2/v2.0/token`, client credentials) and the bearer
//! check of every Graph request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::state::{Inner, lock};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn oauth_error(status: StatusCode, error: &str, aadsts: u32, description: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {description}"),
            "error_codes": [aadsts],
            "timestamp": chrono::Utc::now().to_rfc3339(),
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct AssertionClaims {
    #[allow(dead_code)]
    jti: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

pub(crate) async fn token(
    State(inner): State<Arc<Inner>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let config = lock(&inner.config).clone();
    if tenant != config.tenant_id.to_string() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    // The simulated Graph is a cloud of its own, as graph.microsoft.us is: a token is for it
    // only when the scope names its origin (https://graph.microsoft.com/.default is refused).
    if form.get("scope").map(String::as_str) != Some(&format!("{}/.default", inner.base_url)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid.",
        );
    }
    if form.get("client_id").map(String::as_str) != Some(&config.client_id.to_string()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    let token_url = format!("{}/{tenant}/oauth2/v2.0/token", inner.base_url);
    let accepted = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), None) => config.client_secret.as_deref() == Some(secret.as_str()),
        (None, Some(assertion)) => {
            form.get("client_assertion_type").map(String::as_str) == Some(JWT_BEARER)
                && assertion_valid(assertion, &config, &token_url)
        }
        _ => false,
    };
    if !accepted {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret or assertion provided.",
        );
    }
    let access_token = format!("sim-{}", Uuid::new_v4().simple());
    lock(&inner.tokens).insert(access_token.clone(), Instant::now() + config.token_lifetime);
    let seconds = config.token_lifetime.as_secs();
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": seconds,
        "ext_expires_in": seconds,
        "access_token": access_token,
    }))
    .into_response()
}

/// A federated assertion must equal the configured one; a certificate assertion must be a JWT
/// naming a registered certificate in `x5t#S256`, signed by its key, with aud = the token URL,
/// iss = sub = the client id, a jti, and a lifetime of at most ten minutes.
fn assertion_valid(assertion: &str, config: &crate::SimConfig, token_url: &str) -> bool {
    if config.federated_assertion.as_deref() == Some(assertion) {
        return true;
    }
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return false;
    };
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return false;
    }
    let Some(certificate) = config
        .certificates
        .iter()
        .find(|c| header.x5t_s256.as_deref() == Some(c.thumbprint_sha256.as_str()))
    else {
        return false;
    };
    let Ok(key) = DecodingKey::from_rsa_pem(certificate.public_key_pem.as_bytes()) else {
        return false;
    };
    let client_id = config.client_id.to_string();
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[&client_id]);
    validation.sub = Some(client_id);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) else {
        return false;
    };
    let issued = data
        .claims
        .iat
        .or(data.claims.nbf)
        .unwrap_or(data.claims.exp);
    data.claims.exp - issued <= 600
}

/// The Graph API answers 401 without a valid, unexpired bearer token.
pub(crate) fn authorised(inner: &Inner, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    lock(&inner.tokens)
        .get(token)
        .is_some_and(|expires| *expires > Instant::now())
}
