//! Change-notification subscriptions.

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use serde_json::json;

use super::GraphClient;
use super::http::Page;
use super::model::Subscription;
use crate::error::{Error, Result};

const ENDPOINT: &str = "subscriptions";

/// What to subscribe to.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// `groups` or `users`.
    pub resource: String,
    /// `updated,deleted` for groups and users.
    pub change_type: String,
    pub notification_url: String,
    pub lifecycle_notification_url: String,
    pub client_state: secrecy::SecretString,
    pub expiration: DateTime<Utc>,
}

/// The path of subscription `id`, followed by `rest`. Ids come from notifications and stored
/// rows as well as from Graph: anything but a GUID never goes into the URL.
fn path(id: &str, rest: &str) -> Result<String> {
    if !entra_sync_core::settings::is_guid(id) {
        return Err(Error::NotAGuid {
            what: "subscription id",
            id: id.to_owned(),
        });
    }
    Ok(format!("subscriptions/{id}{rest}"))
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl GraphClient {
    /// Creates a subscription; Graph validates both URLs first (400 when they fail).
    #[tracing::instrument(skip(self, new), fields(resource = new.resource), err(level = "debug"))]
    pub async fn create_subscription(&self, new: &NewSubscription) -> Result<Subscription> {
        use secrecy::ExposeSecret as _;
        let body = json!({
            "changeType": new.change_type,
            "notificationUrl": new.notification_url,
            "lifecycleNotificationUrl": new.lifecycle_notification_url,
            "resource": new.resource,
            "expirationDateTime": timestamp(new.expiration),
            "clientState": new.client_state.expose_secret(),
            "latestSupportedTlsVersion": "v1_2",
        });
        let url = self.inner.url("subscriptions");
        self.inner
            .json(ENDPOINT, Method::POST, &url, Some(&body))
            .await
    }

    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn get_subscription(&self, id: &str) -> Result<Subscription> {
        let url = self.inner.url(&path(id, "")?);
        self.inner.get_json(ENDPOINT, &url).await
    }

    /// The app's subscriptions.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>> {
        let url = self.inner.url("subscriptions");
        let page: Page<Subscription> = self.inner.get_json(ENDPOINT, &url).await?;
        Ok(page.value)
    }

    /// Moves the expiry; a 404 means Graph already deleted it: create a new one.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn renew_subscription(
        &self,
        id: &str,
        expiration: DateTime<Utc>,
    ) -> Result<Subscription> {
        let url = self.inner.url(&path(id, "")?);
        let body = json!({ "expirationDateTime": timestamp(expiration) });
        self.inner
            .json(ENDPOINT, Method::PATCH, &url, Some(&body))
            .await
    }

    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn reauthorize_subscription(&self, id: &str) -> Result<()> {
        let url = self.inner.url(&path(id, "/reauthorize")?);
        self.inner.send(ENDPOINT, Method::POST, &url, None).await?;
        Ok(())
    }

    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn delete_subscription(&self, id: &str) -> Result<()> {
        let url = self.inner.url(&path(id, "")?);
        self.inner
            .send(ENDPOINT, Method::DELETE, &url, None)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_guid_goes_into_a_subscription_url() {
        assert_eq!(
            super::path("0b1d2c3e-aaaa-4bbb-8ccc-000000000001", "/reauthorize").ok(),
            Some("subscriptions/0b1d2c3e-aaaa-4bbb-8ccc-000000000001/reauthorize".into())
        );
        for id in [
            "",
            "../users",
            "x/reauthorize",
            "%2e%2e",
            "0b1d2c3e-aaaa-4bbb-8ccc-00000000000/",
        ] {
            let error = super::path(id, "").unwrap_err().to_string();
            assert!(error.contains("is not a GUID"), "{id}: {error}");
        }
    }
}
