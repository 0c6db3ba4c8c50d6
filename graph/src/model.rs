//! Graph's JSON shapes, as far as entra-sync reads them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::user::EntraUser;

/// What kind of directory object an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    User,
    Group,
    Other,
}

impl ObjectKind {
    fn from_odata_type(odata_type: Option<&str>) -> Self {
        match odata_type.map(str::to_ascii_lowercase).as_deref() {
            Some("#microsoft.graph.user") => Self::User,
            Some("#microsoft.graph.group") => Self::Group,
            _ => Self::Other,
        }
    }
}

/// A user, group or other object from a members list or `getByIds`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryObject {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// Only when selected (`/users`); absent, an existing account counts as enabled.
    #[serde(default)]
    pub account_enabled: Option<bool>,
}

impl DirectoryObject {
    pub fn kind(&self) -> ObjectKind {
        ObjectKind::from_odata_type(self.odata_type.as_deref())
    }

    /// The user, when this is one with a valid object id.
    pub fn into_user(self) -> Option<EntraUser> {
        if self.kind() != ObjectKind::User {
            return None;
        }
        self.into_user_state().map(|state| state.user)
    }

    /// The user, when this is one with a valid object id whose account is not disabled (an
    /// answer that does not say counts as enabled).
    pub fn into_enabled_user(self) -> Option<EntraUser> {
        if self.account_enabled == Some(false) {
            return None;
        }
        self.into_user()
    }

    /// The user and whether the account is enabled, when this is a user (a members read).
    pub fn into_member_state(self) -> Option<crate::user::UserState> {
        if self.kind() != ObjectKind::User {
            return None;
        }
        self.into_user_state()
    }

    /// The user and whether the account is enabled, for an object read from `/users` (which
    /// carries no `@odata.type`).
    pub fn into_user_state(self) -> Option<crate::user::UserState> {
        Some(crate::user::UserState {
            enabled: self.account_enabled.unwrap_or(true),
            confirmed_enabled: self.account_enabled == Some(true),
            user: EntraUser {
                id: entity::UserId::parse(&self.id).ok()?,
                user_principal_name: self.user_principal_name,
                mail: self.mail,
                display_name: self.display_name,
            },
        })
    }
}

/// A member reference in `members@delta`.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct DeltaMember {
    #[serde(rename = "@odata.type")]
    pub odata_type: Option<String>,
    pub id: String,
    #[serde(rename = "@removed")]
    pub removed: Option<Removed>,
}

impl DeltaMember {
    pub fn kind(&self) -> ObjectKind {
        ObjectKind::from_odata_type(self.odata_type.as_deref())
    }
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct Removed {
    #[serde(default)]
    pub reason: String,
}

/// One group object of a delta page; the same group may come in several.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeltaGroupObject {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(rename = "members@delta", default)]
    pub members_delta: Vec<DeltaMember>,
    /// Present when the group's owners changed (ids only; `$select=owners`).
    #[serde(rename = "owners@delta", default)]
    pub owners_delta: Vec<DeltaMember>,
    #[serde(rename = "@removed")]
    pub removed: Option<Removed>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppRole {
    pub id: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default = "yes")]
    pub is_enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    pub id: String,
    pub app_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub app_roles: Vec<AppRole>,
}

/// The app role id of an assignment without a role ("default access").
pub const DEFAULT_ACCESS: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppRoleAssignment {
    pub id: String,
    pub principal_id: String,
    /// `User`, `Group` or `ServicePrincipal`.
    pub principal_type: String,
    #[serde(default)]
    pub principal_display_name: Option<String>,
    pub app_role_id: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub resource: String,
    pub change_type: String,
    pub notification_url: String,
    #[serde(default)]
    pub lifecycle_notification_url: Option<String>,
    pub expiration_date_time: DateTime<Utc>,
}
