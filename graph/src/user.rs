//! What entra-sync knows of Entra's directory objects, independent of how Graph spells them.

use entity::UserId;

/// An Entra user, with the attributes LiteLLM's own sign-in copies into its user table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraUser {
    pub id: UserId,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub display_name: Option<String>,
}

impl EntraUser {
    /// The address LiteLLM stores as `user_email`: the userPrincipalName, else the mail address,
    /// lower-cased (LiteLLM matches users by lower-cased email).
    pub fn email(&self) -> Option<String> {
        self.user_principal_name
            .as_deref()
            .or(self.mail.as_deref())
            .map(str::trim)
            .filter(|email| !email.is_empty())
            .map(str::to_lowercase)
    }
}

/// An Entra user as Graph describes it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserState {
    pub user: EntraUser,
    /// `accountEnabled`: a disabled account cannot sign in, and loses its memberships. An
    /// answer that does not say counts as enabled.
    pub enabled: bool,
    /// The answer said `accountEnabled: true`: evidence enough that a user entra-sync holds as
    /// departed is back (an answer that does not say is not).
    pub confirmed_enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_prefers_upn_and_lower_cases() {
        let mut user = EntraUser {
            id: UserId::parse("6b1c7a52-9f0e-4bb6-8d2e-0b6d1c2f3a4b").unwrap(),
            user_principal_name: Some("Alice@Contoso.COM".into()),
            mail: Some("alice.smith@contoso.com".into()),
            display_name: None,
        };
        assert_eq!(user.email().as_deref(), Some("alice@contoso.com"));
        user.user_principal_name = None;
        assert_eq!(user.email().as_deref(), Some("alice.smith@contoso.com"));
        user.mail = Some("  ".into());
        assert_eq!(user.email(), None);
    }
}
