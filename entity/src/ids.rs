//! Entra object identifiers, parsed on construction.
//!
//! Graph returns object ids as lower-case hyphenated GUIDs. Parsing normalises any other spelling
//! (upper case, braces) so that the same group or user always maps to the same LiteLLM row.

use std::fmt;
use std::str::FromStr;

use sea_orm::DeriveValueType;
use serde::{Deserialize, Serialize};

/// An id that is not an Entra object id (a GUID).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not an Entra object id (a GUID such as 0f8fad5b-d9cb-469f-a165-70867728950e)"
)]
pub struct InvalidObjectId {
    value: String,
}

fn normalise(value: &str) -> Result<String, InvalidObjectId> {
    uuid::Uuid::try_parse(value.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| InvalidObjectId {
            value: value.to_owned(),
        })
}

macro_rules! object_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, DeriveValueType, Serialize, Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and normalises an object id.
            pub fn parse(value: &str) -> Result<Self, InvalidObjectId> {
                normalise(value).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidObjectId;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::parse(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidObjectId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Required by SeaORM for primary-key columns; ids are never numeric.
        impl sea_orm::TryFromU64 for $name {
            fn try_from_u64(_: u64) -> Result<Self, sea_orm::DbErr> {
                Err(sea_orm::DbErr::ConvertFromU64(stringify!($name)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

object_id!(
    /// The object id of an Entra group. A team made from a group has `team_id` = this id.
    GroupId
);
object_id!(
    /// The object id of an Entra user. A user made by entra-sync has `user_id` = `sso_user_id` =
    /// this id; users made by LiteLLM's SCIM may have another `user_id` and carry it in
    /// `sso_user_id` once matched.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_braces() {
        let id = GroupId::parse("{0F8FAD5B-D9CB-469F-A165-70867728950E}").unwrap();
        assert_eq!(id.as_str(), "0f8fad5b-d9cb-469f-a165-70867728950e");
    }

    #[test]
    fn rejects_non_guids() {
        let err = UserId::parse("alice@example.com").unwrap_err();
        assert!(err.to_string().contains("alice@example.com"));
        assert!(serde_json::from_str::<UserId>("\"nope\"").is_err());
    }
}
