//! Graph's changeNotificationCollection, parsed and checked: which notifications to accept.

use serde::Deserialize;

use entra_sync_core::record::{Kind, StreamRecord};

/// The body Graph POSTs: `{"value": [...], "validationTokens": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Collection {
    value: Vec<Notification>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    subscription_id: String,
    tenant_id: String,
    #[serde(default)]
    client_state: Option<String>,
    #[serde(default)]
    subscription_expiration_date_time: Option<String>,
    #[serde(default)]
    change_type: Option<String>,
    #[serde(default)]
    lifecycle_event: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    resource_data: Option<ResourceData>,
}

#[derive(Debug, Deserialize)]
struct ResourceData {
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
}

/// A notification that passed parsing, with the secret it carried (kept out of the record).
#[derive(Debug)]
pub struct Parsed {
    pub record: StreamRecord,
    pub client_state: Option<String>,
}

/// Parses a body; the error names what is wrong, for a 400 answer.
pub fn parse(
    body: &[u8],
    received_at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Parsed>, String> {
    let collection: Collection = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if collection.value.is_empty() {
        return Err("`value` holds no notification".into());
    }
    collection
        .value
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let kind = match (n.change_type, n.lifecycle_event) {
                (Some(change_type), None) => Kind::Change {
                    change_type,
                    resource: n
                        .resource
                        .ok_or_else(|| format!("value[{i}]: missing field `resource`"))?,
                    resource_id: n.resource_data.as_ref().and_then(|d| d.id.clone()),
                    odata_type: n.resource_data.and_then(|d| d.odata_type),
                },
                (None, Some(event)) => Kind::Lifecycle { event },
                _ => {
                    return Err(format!(
                        "value[{i}]: exactly one of `changeType` and `lifecycleEvent` is required"
                    ));
                }
            };
            Ok(Parsed {
                record: StreamRecord {
                    subscription_id: n.subscription_id,
                    tenant_id: n.tenant_id,
                    kind,
                    subscription_expires: n.subscription_expiration_date_time,
                    received_at,
                },
                client_state: n.client_state,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    #[test]
    fn reads_change_and_lifecycle_notifications() {
        let body = br##"{"value": [
            {"subscriptionId": "s", "tenantId": "t", "clientState": "c", "changeType": "updated",
             "resource": "Groups/g", "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "id": "g"}},
            {"subscriptionId": "s", "tenantId": "t", "clientState": "c", "lifecycleEvent": "missed"}
        ]}"##;
        let parsed = parse(body, now()).unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(
            matches!(&parsed[0].record.kind, Kind::Change { resource_id: Some(id), .. } if id == "g")
        );
        assert_eq!(parsed[1].client_state.as_deref(), Some("c"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse(
            br#"{"value": [{"subscriptionId": "s", "changeType": "updated"}]}"#,
            now(),
        )
        .unwrap_err();
        assert!(e.contains("tenantId"), "{e}");
        let e = parse(
            br#"{"value": [{"subscriptionId": "s", "tenantId": "t"}]}"#,
            now(),
        )
        .unwrap_err();
        assert!(e.contains("changeType"), "{e}");
        let e = parse(
            br#"{"value": [{"subscriptionId": "s", "tenantId": "t", "changeType": "updated"}]}"#,
            now(),
        )
        .unwrap_err();
        assert!(e.contains("resource"), "{e}");
        assert!(
            parse(b"{\"value\": []}", now())
                .unwrap_err()
                .contains("no notification")
        );
        assert!(parse(b"not json", now()).is_err());
    }
}

/// Property tests: whatever arrives, the parser answers with notifications or an error, never a
/// panic.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::parse;

    const KEYS: &[&str] = &[
        "value",
        "subscriptionId",
        "tenantId",
        "clientState",
        "changeType",
        "lifecycleEvent",
        "resource",
        "resourceData",
        "id",
        "@odata.type",
        "subscriptionExpirationDateTime",
        "validationTokens",
    ];

    /// JSON shaped like Graph's bodies: the keys the parser looks for, with values of any type.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            prop::sample::select(KEYS).prop_map(str::to_owned),
                            ".{0,12}"
                        ],
                        inner
                    ),
                    0..8
                )
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes, chrono::Utc::now());
        }

        #[test]
        fn arbitrary_json_never_panics(value in json()) {
            let _ = parse(value.to_string().as_bytes(), chrono::Utc::now());
        }

        #[test]
        fn graph_shaped_bodies_never_panic(items in prop::collection::vec(json(), 0..5)) {
            let body = serde_json::json!({ "value": items });
            let _ = parse(body.to_string().as_bytes(), chrono::Utc::now());
        }
    }
}
