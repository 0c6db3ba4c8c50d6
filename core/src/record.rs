//! The stream record: how one accepted notification is stored on the Redis stream. Defined once,
//! here; the worker reads it with [`StreamRecord::from_fields`].
//!
//! Format version 1, one stream entry per notification, all values strings:
//!
//! | field | value |
//! | --- | --- |
//! | `v` | `1` |
//! | `kind` | `change` or `lifecycle` |
//! | `subscription_id` | Graph's subscription id |
//! | `tenant_id` | the tenant |
//! | `change_type` | `updated` / `deleted` (change only) |
//! | `lifecycle_event` | `reauthorizationRequired` / `subscriptionRemoved` / `missed` (lifecycle only) |
//! | `resource` | e.g. `Groups/{id}` (change only) |
//! | `resource_id` | `resourceData.id` (change only, when given) |
//! | `odata_type` | `resourceData.@odata.type` (change only, when given) |
//! | `subscription_expires` | `subscriptionExpirationDateTime` as Graph sent it (when given) |
//! | `received_at` | when the webhook accepted it, RFC 3339 UTC |
//!
//! The `clientState` secret is checked by the webhook and never stored.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// The version written in the `v` field.
pub const FORMAT_VERSION: &str = "1";
/// The consumer group the workers read the stream with; the webhook measures the backlog by it.
pub const CONSUMER_GROUP: &str = "entra-sync-workers";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Change {
        change_type: String,
        resource: String,
        resource_id: Option<String>,
        odata_type: Option<String>,
    },
    Lifecycle {
        event: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    pub subscription_id: String,
    pub tenant_id: String,
    pub kind: Kind,
    pub subscription_expires: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// A stream entry that is not a record this version understands.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a version-{FORMAT_VERSION} notification record: {0}")]
pub struct RecordError(String);

impl StreamRecord {
    /// The entry's fields, in a stable order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::with_capacity(10);
        self.each_field(|name, value| fields.push((name, value.to_owned())));
        fields
    }

    /// Hands each field to `write`, in [`Self::to_fields`]' order, without copying the values:
    /// the webhook encodes them straight into its XADD commands.
    pub fn each_field(&self, mut write: impl FnMut(&'static str, &str)) {
        write("v", FORMAT_VERSION);
        write("subscription_id", &self.subscription_id);
        write("tenant_id", &self.tenant_id);
        match &self.kind {
            Kind::Change {
                change_type,
                resource,
                resource_id,
                odata_type,
            } => {
                write("kind", "change");
                write("change_type", change_type);
                write("resource", resource);
                if let Some(id) = resource_id {
                    write("resource_id", id);
                }
                if let Some(t) = odata_type {
                    write("odata_type", t);
                }
            }
            Kind::Lifecycle { event } => {
                write("kind", "lifecycle");
                write("lifecycle_event", event);
            }
        }
        if let Some(expires) = &self.subscription_expires {
            write("subscription_expires", expires);
        }
        let received_at = self
            .received_at
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        write("received_at", &received_at);
    }

    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Self, RecordError> {
        let get = |name: &str| fields.get(name).cloned();
        let need = |name: &str| get(name).ok_or_else(|| RecordError(format!("no `{name}` field")));
        let version = need("v")?;
        if version != FORMAT_VERSION {
            return Err(RecordError(format!("version {version:?}")));
        }
        let kind = match need("kind")?.as_str() {
            "change" => Kind::Change {
                change_type: need("change_type")?,
                resource: need("resource")?,
                resource_id: get("resource_id"),
                odata_type: get("odata_type"),
            },
            "lifecycle" => Kind::Lifecycle {
                event: need("lifecycle_event")?,
            },
            other => return Err(RecordError(format!("kind {other:?}"))),
        };
        let received_at = DateTime::parse_from_rfc3339(&need("received_at")?)
            .map_err(|e| RecordError(format!("received_at: {e}")))?
            .with_timezone(&Utc);
        Ok(Self {
            subscription_id: need("subscription_id")?,
            tenant_id: need("tenant_id")?,
            kind,
            subscription_expires: get("subscription_expires"),
            received_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(record: &StreamRecord) -> StreamRecord {
        let fields = record
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        StreamRecord::from_fields(&fields).unwrap()
    }

    #[test]
    fn both_kinds_round_trip() {
        let at = DateTime::parse_from_rfc3339("2026-11-28T12:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let change = StreamRecord {
            subscription_id: "s".into(),
            tenant_id: "t".into(),
            kind: Kind::Change {
                change_type: "updated".into(),
                resource: "Groups/g".into(),
                resource_id: Some("g".into()),
                odata_type: None,
            },
            subscription_expires: Some("2026-12-01T00:00:00Z".into()),
            received_at: at,
        };
        assert_eq!(round_trip(&change), change);
        let lifecycle = StreamRecord {
            kind: Kind::Lifecycle {
                event: "missed".into(),
            },
            subscription_expires: None,
            ..change
        };
        assert_eq!(round_trip(&lifecycle), lifecycle);
    }

    #[test]
    fn other_versions_and_kinds_are_refused() {
        let mut fields: HashMap<String, String> = [("v", "2"), ("kind", "change")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(StreamRecord::from_fields(&fields).is_err());
        fields.insert("v".into(), "1".into());
        fields.insert("kind".into(), "other".into());
        assert!(StreamRecord::from_fields(&fields).is_err());
    }
}
