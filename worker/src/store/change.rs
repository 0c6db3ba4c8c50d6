//! The changes the store makes to LiteLLM's tables: returned by every operation (planned ones in a
//! dry run) and written to `entra_sync_audit_log` when applied.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use serde::Serialize;

use super::sql::stmt;
use crate::error::Result;

/// One change to LiteLLM's tables. Serialised with a `kind` tag; `team_id` and `user_id` are
/// LiteLLM's ids (for users made by LiteLLM's SCIM, `user_id` may be a UPN).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    TeamCreated {
        team_id: String,
        team_alias: String,
    },
    TeamRenamed {
        team_id: String,
        from: Option<String>,
        to: String,
    },
    /// The team's group was unassigned or deleted under the `block` policy.
    TeamBlocked {
        team_id: String,
    },
    /// A team blocked under the `block` policy is unblocked: its group is assigned (or restored)
    /// again.
    TeamUnblocked {
        team_id: String,
        team_alias: Option<String>,
    },
    UserCreated {
        user_id: String,
        user_email: Option<String>,
        user_role: String,
    },
    /// An existing LiteLLM user (found by email) was given its Entra object id as `sso_user_id`.
    UserLinked {
        user_id: String,
        sso_user_id: String,
    },
    /// Entra changed the user's sign-in name or display name: `user_email` and `user_alias` (and
    /// the email in the user's `members_with_roles` entries) follow.
    UserUpdated {
        user_id: String,
        user_email: Option<String>,
        user_alias: Option<String>,
    },
    /// The user became a full member: `members_with_roles`, the user's `teams` and the
    /// `"LiteLLM_TeamMembership"` row (any that were missing).
    MemberAdded {
        team_id: String,
        user_id: String,
    },
    /// Every trace of the membership was removed (the member's keys for the team follow
    /// `ENTRA_SYNC_REMOVED_MEMBER_KEYS`, as their own changes).
    MemberRemoved {
        team_id: String,
        user_id: String,
    },
    RoleChanged {
        user_id: String,
        from: Option<String>,
        to: String,
    },
    /// A virtual key was copied into `"LiteLLM_DeletedVerificationToken"` and deleted, as
    /// LiteLLM's own member removal does. `token` is the key's SHA-256 hash (LiteLLM's primary
    /// key), never the key itself.
    KeyDeleted {
        token: String,
        user_id: String,
        team_id: Option<String>,
        key_alias: Option<String>,
    },
    /// A virtual key was blocked, with `metadata.entra_sync_blocked` = `reason`.
    KeyBlocked {
        token: String,
        user_id: String,
        team_id: Option<String>,
        reason: BlockReason,
    },
    /// A key entra-sync had blocked was unblocked: its reason no longer holds.
    KeyUnblocked {
        token: String,
        user_id: String,
        team_id: Option<String>,
        reason: BlockReason,
    },
}

/// Why entra-sync blocked a key: the value of the key's `metadata.entra_sync_blocked` marker.
/// Only keys carrying the marker are ever unblocked, so a key an admin blocked stays blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// The user left the key's team (`ENTRA_SYNC_REMOVED_MEMBER_KEYS=block`); unblocked when
    /// they rejoin it.
    MemberRemoved,
    /// The user was disabled or deleted in Entra (`ENTRA_SYNC_DEPARTED_USER_KEYS=block`);
    /// unblocked when they are enabled again.
    UserDeparted,
}

impl BlockReason {
    /// The marker's value in the key's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberRemoved => "member_removed",
            Self::UserDeparted => "user_departed",
        }
    }
}

impl Change {
    /// The team the change is about, if any.
    pub fn team_id(&self) -> Option<&str> {
        match self {
            Self::TeamCreated { team_id, .. }
            | Self::TeamRenamed { team_id, .. }
            | Self::TeamBlocked { team_id }
            | Self::TeamUnblocked { team_id, .. }
            | Self::MemberAdded { team_id, .. }
            | Self::MemberRemoved { team_id, .. } => Some(team_id),
            Self::KeyDeleted { team_id, .. }
            | Self::KeyBlocked { team_id, .. }
            | Self::KeyUnblocked { team_id, .. } => team_id.as_deref(),
            Self::UserCreated { .. }
            | Self::UserLinked { .. }
            | Self::UserUpdated { .. }
            | Self::RoleChanged { .. } => None,
        }
    }

    /// The `kind` tag, for metrics and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TeamCreated { .. } => "team_created",
            Self::TeamRenamed { .. } => "team_renamed",
            Self::TeamBlocked { .. } => "team_blocked",
            Self::TeamUnblocked { .. } => "team_unblocked",
            Self::UserCreated { .. } => "user_created",
            Self::UserLinked { .. } => "user_linked",
            Self::UserUpdated { .. } => "user_updated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::RoleChanged { .. } => "role_changed",
            Self::KeyDeleted { .. } => "key_deleted",
            Self::KeyBlocked { .. } => "key_blocked",
            Self::KeyUnblocked { .. } => "key_unblocked",
        }
    }
}

/// Appends the changes to the audit log, in one statement.
pub(super) async fn record(
    txn: &DatabaseTransaction,
    changes: &[Change],
    now: DateTime<Utc>,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let detail = serde_json::to_value(changes).map_err(|e| {
        sea_orm::DbErr::Custom(format!("cannot serialise changes for the audit log: {e}"))
    })?;
    txn.execute(stmt(
        r#"INSERT INTO entra_sync_audit_log (recorded_at, kind, team_id, user_id, detail)
           SELECT $1, c->>'kind', c->>'team_id', c->>'user_id', c
           FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS x(c, n)
           ORDER BY n"#,
        [now.into(), detail.into()],
    ))
    .await?;
    Ok(())
}
