//! LiteLLM's tables, as created by LiteLLM's own migrations (`litellm-proxy-extras`).
//!
//! Only the columns entra-sync reads or writes are mapped. Types follow Prisma's mapping:
//! `String[]` is a nullable `text[]`, `Json` is `jsonb`, `DateTime` is `timestamp(3)` holding UTC.
//! Prisma fills `updated_at` in its client, so every writer must set it on update.

pub mod team;
pub mod team_membership;
pub mod user;

/// The keys of one entry of `"LiteLLM_TeamTable".members_with_roles`, which LiteLLM writes as a
/// JSON array of `{"user_id", "user_email", "role"}` objects (and reads `{}` as an empty list).
pub mod member_entry {
    pub const USER_ID: &str = "user_id";
    pub const USER_EMAIL: &str = "user_email";
    pub const ROLE: &str = "role";
    /// The role LiteLLM gives a member added by its sign-in sync.
    pub const ROLE_USER: &str = "user";
    /// A team admin: manages the team's members and keys in LiteLLM.
    pub const ROLE_ADMIN: &str = "admin";
}
