//! The changes the store makes to LiteLLM's tables: returned by every operation (planned ones in a
//! dry run) and written to `entra_sync_audit_log` when applied.

use std::collections::{BTreeMap, HashSet};

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
    /// A member who joined a team in an organization became a member of the organization, as
    /// LiteLLM's `add_member_to_organization` makes them (a `"LiteLLM_OrganizationMembership"`
    /// row with role `internal_user`).
    OrganizationMemberAdded {
        organization_id: String,
        user_id: String,
        user_role: String,
    },
    RoleChanged {
        user_id: String,
        from: Option<String>,
        to: String,
    },
    /// A member's role in the team (`members_with_roles`): `admin` for the group's owners
    /// (`ENTRA_SYNC_OWNERS_AS_ADMINS`), `user` again when the ownership ends. `from` is absent
    /// for an owner who joined the team as its admin.
    MemberRoleChanged {
        team_id: String,
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
    /// A removal held for a person (`ENTRA_SYNC_REMOVAL_THRESHOLD`): the member stays in the
    /// team, the keys the removal would have deleted are blocked meanwhile (their own
    /// `key_blocked` changes, reason `removal_held`), until `removals release` or `discard`.
    RemovalHeld {
        team_id: String,
        user_id: String,
        reason: RemovalReason,
    },
    /// A held removal that no longer stands: Graph lists the member again, or a person
    /// discarded it. The member stays; the keys blocked for the hold are unblocked.
    RemovalDropped {
        team_id: String,
        user_id: String,
    },
}

/// What Graph said that makes a member leave a team: the evidence behind a removal, kept with a
/// held one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// The groups delta named the member as removed from the group.
    LeftGroup,
    /// A complete read of the group's members (every page, no error) does not list them.
    NotInGroup,
    /// The group is no longer assigned to the app, or Graph deleted it (`remove-members`).
    GroupRetired,
    /// The user was disabled, or their deletion confirmed (`remove-memberships`).
    UserDeparted,
    /// They were in the team only as the group's owner, and own it no more.
    OwnershipEnded,
    /// Their keys for a team they were removed from earlier survived the removal.
    KeysSurvived,
}

impl RemovalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeftGroup => "left_group",
            Self::NotInGroup => "not_in_group",
            Self::GroupRetired => "group_retired",
            Self::UserDeparted => "user_departed",
            Self::OwnershipEnded => "ownership_ended",
            Self::KeysSurvived => "keys_survived",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::LeftGroup,
            Self::NotInGroup,
            Self::GroupRetired,
            Self::UserDeparted,
            Self::OwnershipEnded,
            Self::KeysSurvived,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == text)
    }
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
    /// The removal that would have deleted (or blocked) the key is held for a person
    /// (`ENTRA_SYNC_REMOVAL_THRESHOLD`); deleted if it is released, unblocked if it is dropped.
    RemovalHeld,
}

impl BlockReason {
    /// The marker's value in the key's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberRemoved => "member_removed",
            Self::UserDeparted => "user_departed",
            Self::RemovalHeld => "removal_held",
        }
    }
}

impl Change {
    /// The cache keys LiteLLM stores the objects a change touched under (litellm 1.110.2):
    /// - a team: `team_id:<id>` and `team_alias:<alias>` (`delete_cache_team_object`);
    /// - a user: its `user_id` (`evict_and_broadcast` in the user and member endpoints);
    /// - a membership: `<team_id>_<user_id>` and `team_membership:<user_id>:<team_id>`
    ///   (`invalidate_team_member_spend_state`), besides the team and the user;
    /// - a key: its hashed token (`delete_cache_key_objects`); a blocked or unblocked key also its
    ///   `budget_windows_absent:key:<token>` marker (`delete_cache_key_object`, which SCIM's
    ///   `_set_user_keys_blocked` calls).
    ///
    /// A membership change also makes the team's alias key stale; the change does not carry the
    /// alias, so the store adds that key itself.
    pub fn cache_keys(&self) -> Vec<String> {
        let team = |id: &str| format!("team_id:{id}");
        let alias = |alias: &str| format!("team_alias:{alias}");
        match self {
            Change::TeamCreated {
                team_id,
                team_alias,
            } => vec![team(team_id), alias(team_alias)],
            Change::TeamRenamed { team_id, from, to } => {
                let mut keys = vec![team(team_id), alias(to)];
                keys.extend(from.as_deref().map(alias));
                keys
            }
            Change::TeamBlocked { team_id } => vec![team(team_id)],
            Change::TeamUnblocked {
                team_id,
                team_alias,
            } => {
                let mut keys = vec![team(team_id)];
                keys.extend(team_alias.as_deref().map(alias));
                keys
            }
            Change::UserCreated { user_id, .. }
            | Change::UserLinked { user_id, .. }
            | Change::UserUpdated { user_id, .. }
            | Change::RoleChanged { user_id, .. }
            // LiteLLM caches the user object with its organization memberships.
            | Change::OrganizationMemberAdded { user_id, .. } => vec![user_id.clone()],
            Change::MemberAdded { team_id, user_id }
            | Change::MemberRemoved { team_id, user_id }
            | Change::MemberRoleChanged {
                team_id, user_id, ..
            } => {
                vec![
                    team(team_id),
                    user_id.clone(),
                    format!("{team_id}_{user_id}"),
                    format!("team_membership:{user_id}:{team_id}"),
                ]
            }
            Change::KeyDeleted { token, .. } => vec![token.clone()],
            Change::KeyBlocked { token, .. } | Change::KeyUnblocked { token, .. } => {
                vec![token.clone(), format!("budget_windows_absent:key:{token}")]
            }
            // Holding or dropping a removal changes no LiteLLM row (its keys' changes evict theirs).
            Change::RemovalHeld { .. } | Change::RemovalDropped { .. } => Vec::new(),
        }
    }

    /// The team the change is about, if any.
    pub fn team_id(&self) -> Option<&str> {
        match self {
            Self::TeamCreated { team_id, .. }
            | Self::TeamRenamed { team_id, .. }
            | Self::TeamBlocked { team_id }
            | Self::TeamUnblocked { team_id, .. }
            | Self::MemberAdded { team_id, .. }
            | Self::MemberRoleChanged { team_id, .. }
            | Self::MemberRemoved { team_id, .. }
            | Self::RemovalHeld { team_id, .. }
            | Self::RemovalDropped { team_id, .. } => Some(team_id),
            Self::KeyDeleted { team_id, .. }
            | Self::KeyBlocked { team_id, .. }
            | Self::KeyUnblocked { team_id, .. } => team_id.as_deref(),
            Self::UserCreated { .. }
            | Self::UserLinked { .. }
            | Self::UserUpdated { .. }
            | Self::OrganizationMemberAdded { .. }
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
            Self::MemberRoleChanged { .. } => "member_role_changed",
            Self::MemberRemoved { .. } => "member_removed",
            Self::OrganizationMemberAdded { .. } => "organization_member_added",
            Self::RoleChanged { .. } => "role_changed",
            Self::KeyDeleted { .. } => "key_deleted",
            Self::KeyBlocked { .. } => "key_blocked",
            Self::KeyUnblocked { .. } => "key_unblocked",
            Self::RemovalHeld { .. } => "removal_held",
            Self::RemovalDropped { .. } => "removal_dropped",
        }
    }
}

/// The changes of a unit of work (a round, a poll, a reconciliation), counted by kind as they
/// come, and listed as well when the caller wants the list (a command prints it, a test reads
/// it). The worker's loop only counts, so that a first sync of a million memberships never holds
/// a million changes in memory; each of them is in the audit log already.
///
/// A unit's changes are a set: a listed change equal to one already listed is neither listed nor
/// counted again. A real run cannot make the same change twice (the second attempt finds it
/// made), but a dry run can plan it twice: each item's plan is rolled back, so a user two
/// groups share is planned as created by both. Planning the whole unit in one transaction
/// instead would hold LiteLLM's row locks across every Graph call of a reconciliation, and
/// stall LiteLLM's own writers for minutes.
#[derive(Debug, Default)]
pub struct Changes {
    by_kind: BTreeMap<&'static str, u64>,
    /// `Some` when listing: the changes, in order, and the same as a set.
    listed: Option<(Vec<Change>, HashSet<Change>)>,
}

impl Changes {
    /// Counts and lists.
    pub fn listed() -> Self {
        Self {
            by_kind: BTreeMap::new(),
            listed: Some(Default::default()),
        }
    }

    /// Counts only.
    pub fn counted() -> Self {
        Self::default()
    }

    pub fn add(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            if let Some((list, seen)) = &mut self.listed {
                if seen.contains(&change) {
                    continue;
                }
                seen.insert(change.clone());
                *self.by_kind.entry(change.kind()).or_default() += 1;
                list.push(change);
            } else {
                *self.by_kind.entry(change.kind()).or_default() += 1;
            }
        }
    }

    /// Adds another tally's changes (its list, when this one lists).
    pub fn merge(&mut self, other: Changes) {
        match other.listed {
            Some((list, _)) if self.listed.is_some() => self.add(list),
            _ => {
                for (kind, count) in other.by_kind {
                    *self.by_kind.entry(kind).or_default() += count;
                }
            }
        }
    }

    /// How many changes.
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// How many of each kind ([`Change::kind`]), the kinds in order.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.by_kind.iter().map(|(kind, count)| (*kind, *count))
    }

    /// The changes, in the order they were made; empty when only counting.
    pub fn list(&self) -> &[Change] {
        self.listed.as_ref().map_or(&[], |(list, _)| list)
    }

    pub fn into_list(self) -> Vec<Change> {
        self.listed.map(|(list, _)| list).unwrap_or_default()
    }
}

/// What made a change: the unit of work it belongs to. With the time it was recorded at (each
/// unit's changes share one), it names the very round, poll or reconciliation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A groups-delta round, after a notification or on the timer.
    DeltaRound,
    /// Every assigned group read whole again (the first round, an expired delta token, a
    /// `missed` lifecycle notification).
    Resync,
    /// The poll of the app's assignments: new and unassigned groups, app roles.
    AssignmentPoll,
    /// The periodic reconciliation.
    Reconciliation,
    /// Users re-read after `users` notifications (or after notifications were missed).
    UserNotification,
    /// The users held as departed, read again (`ENTRA_SYNC_DEPARTED_RECHECK_SECONDS`).
    DepartedRecheck,
    /// Held removals a person released (`removals release`), each checked against Graph again.
    RemovalRelease,
    /// Held removals a person discarded (`removals discard`).
    RemovalDiscard,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeltaRound => "delta_round",
            Self::Resync => "resync",
            Self::AssignmentPoll => "assignment_poll",
            Self::Reconciliation => "reconciliation",
            Self::UserNotification => "user_notification",
            Self::DepartedRecheck => "departed_recheck",
            Self::RemovalRelease => "removal_release",
            Self::RemovalDiscard => "removal_discard",
        }
    }
}

/// Appends the changes to the audit log, in one statement.
pub(super) async fn record(
    txn: &DatabaseTransaction,
    changes: &[Change],
    now: DateTime<Utc>,
    cause: Option<Cause>,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    // Serialised straight to text: a `serde_json::Value` tree of a first sync's million changes
    // would cost an allocation per field, twice.
    let detail = serde_json::to_string(changes).map_err(|e| {
        sea_orm::DbErr::Custom(format!("cannot serialise changes for the audit log: {e}"))
    })?;
    txn.execute(stmt(
        r#"INSERT INTO entra_sync_audit_log (recorded_at, kind, team_id, user_id, detail, cause)
           SELECT $1, c->>'kind', c->>'team_id', c->>'user_id', c, $3
           FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS x(c, n)
           ORDER BY n"#,
        [now.into(), detail.into(), cause.map(Cause::as_str).into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_names_the_keys_litellm_caches_its_objects_under() {
        let member = |removed: bool| {
            let (team_id, user_id) = ("t1".to_owned(), "u1".to_owned());
            if removed {
                Change::MemberRemoved { team_id, user_id }
            } else {
                Change::MemberAdded { team_id, user_id }
            }
        };
        for change in [member(true), member(false)] {
            assert_eq!(
                change.cache_keys(),
                ["team_id:t1", "u1", "t1_u1", "team_membership:u1:t1"]
            );
        }
        assert_eq!(
            Change::TeamRenamed {
                team_id: "t1".into(),
                from: Some("Old".into()),
                to: "New".into()
            }
            .cache_keys(),
            ["team_id:t1", "team_alias:New", "team_alias:Old"]
        );
        assert_eq!(
            Change::TeamCreated {
                team_id: "t1".into(),
                team_alias: "New".into()
            }
            .cache_keys(),
            ["team_id:t1", "team_alias:New"]
        );
        assert_eq!(
            Change::RoleChanged {
                user_id: "u1".into(),
                from: Some("proxy_admin".into()),
                to: "internal_user".into()
            }
            .cache_keys(),
            ["u1"]
        );
        assert_eq!(
            Change::KeyDeleted {
                token: "abc".into(),
                user_id: "u1".into(),
                team_id: Some("t1".into()),
                key_alias: None
            }
            .cache_keys(),
            ["abc"]
        );
        assert_eq!(
            Change::KeyBlocked {
                token: "abc".into(),
                user_id: "u1".into(),
                team_id: None,
                reason: BlockReason::UserDeparted
            }
            .cache_keys(),
            ["abc", "budget_windows_absent:key:abc"]
        );
    }

    fn created(user: &str) -> Change {
        Change::UserCreated {
            user_id: user.into(),
            user_email: None,
            user_role: "internal_user_viewer".into(),
        }
    }

    fn added(user: &str) -> Change {
        Change::MemberAdded {
            team_id: "t".into(),
            user_id: user.into(),
        }
    }

    #[test]
    fn a_listing_tally_lists_and_counts_each_change_once() {
        let mut changes = Changes::listed();
        changes.add([created("a"), added("a")]);
        changes.add([created("a"), added("b")]);
        assert_eq!(changes.list(), [created("a"), added("a"), added("b")]);
        assert_eq!(changes.total(), 3);
        assert_eq!(
            changes.by_kind().collect::<Vec<_>>(),
            [("member_added", 2), ("user_created", 1)]
        );
    }

    #[test]
    fn a_counting_tally_counts_by_kind_and_lists_nothing() {
        let mut changes = Changes::counted();
        changes.add([created("a"), added("a"), added("b")]);
        assert!(changes.list().is_empty());
        assert_eq!(changes.total(), 3);
        assert_eq!(
            changes.by_kind().collect::<Vec<_>>(),
            [("member_added", 2), ("user_created", 1)]
        );
    }

    #[test]
    fn merging_keeps_the_list_when_both_list_and_the_counts_always() {
        let mut listed = Changes::listed();
        listed.add([created("a")]);
        let mut other = Changes::listed();
        other.add([created("a"), added("a")]);
        listed.merge(other);
        assert_eq!(listed.list(), [created("a"), added("a")]);

        let mut counted = Changes::counted();
        counted.add([created("a")]);
        let mut other = Changes::listed();
        other.add([created("a"), added("a")]);
        counted.merge(other);
        assert_eq!(
            counted.total(),
            3,
            "a counting tally does not know what it saw"
        );
        assert!(counted.list().is_empty());
    }
}
