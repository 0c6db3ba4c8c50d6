//! LiteLLM's user roles, as far as Entra app roles may set them.

use std::fmt;

/// The LiteLLM roles an Entra app role may grant, in ascending order of privilege, so that the
/// derived `Ord` picks the most privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LiteLlmRole {
    InternalUserViewer,
    InternalUser,
    OrgAdmin,
    ProxyAdminViewer,
    ProxyAdmin,
}

impl LiteLlmRole {
    /// The role a new user gets when LiteLLM's config names none.
    pub const DEFAULT_FOR_NEW_USER: Self = Self::InternalUserViewer;

    const ALL: [Self; 5] = [
        Self::InternalUserViewer,
        Self::InternalUser,
        Self::OrgAdmin,
        Self::ProxyAdminViewer,
        Self::ProxyAdmin,
    ];

    /// Reads an app-role value the way LiteLLM does: case-insensitive, surrounding blanks ignored.
    pub fn from_app_role_value(value: &str) -> Option<Self> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(value))
    }

    /// The most privileged valid role among Entra app-role values; `None` when none is valid.
    pub fn highest<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        values
            .into_iter()
            .filter_map(Self::from_app_role_value)
            .max()
    }

    /// The value stored in `"LiteLLM_UserTable".user_role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InternalUserViewer => "internal_user_viewer",
            Self::InternalUser => "internal_user",
            Self::OrgAdmin => "org_admin",
            Self::ProxyAdminViewer => "proxy_admin_viewer",
            Self::ProxyAdmin => "proxy_admin",
        }
    }
}

impl fmt::Display for LiteLlmRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_and_highest_wins_in_any_order() {
        assert_eq!(
            LiteLlmRole::highest(["Internal_User", "PROXY_ADMIN", "org_admin"]),
            Some(LiteLlmRole::ProxyAdmin)
        );
        assert_eq!(
            LiteLlmRole::highest(["org_admin", "proxy_admin_viewer"]),
            Some(LiteLlmRole::ProxyAdminViewer)
        );
        assert_eq!(
            LiteLlmRole::highest([" internal_user_viewer "]),
            Some(LiteLlmRole::InternalUserViewer)
        );
    }

    #[test]
    fn no_valid_value_is_none() {
        assert_eq!(
            LiteLlmRole::highest(["customer", "team", "Reader", ""]),
            None
        );
        assert_eq!(LiteLlmRole::highest([]), None);
    }
}
