//! Teams made from Entra groups.

use chrono::{DateTime, Utc};
use entity::GroupId;
use entity::litellm::team;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::NotSet, ConnectionTrait, DatabaseTransaction, EntityTrait, Set};
use serde_json::Value;

use super::Applied;
use super::change::Change;
use super::sql::{litellm_timestamp, lock_team, stmt};
use crate::error::Result;
use crate::litellm_config::LiteLlmSettings;

/// The metadata key that says entra-sync blocked a team under the `block` policy.
const BLOCKED_MARKER: &str = "entra_sync_blocked";
/// Its value: the team's group was unassigned from the app, or deleted.
const BLOCKED_UNASSIGNED: &str = "group_unassigned";

/// Creates the team for a group (team_id = group id, team_alias = display name, LiteLLM's
/// `default_team_params` applied) or, when it exists, brings its alias up to date, and unblocks
/// it when entra-sync had blocked it under the `block` policy (the group is assigned, or back,
/// again). Nothing else of an existing team is touched: its budget, models and spend belong to
/// LiteLLM's admins, and a team an admin blocked stays blocked.
pub(super) async fn ensure(
    txn: &DatabaseTransaction,
    group: &GroupId,
    display_name: &str,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let team_id = group.to_string();
    lock_team(txn, &team_id).await?;
    let existing = team::Entity::find_by_id(team_id.clone()).one(txn).await?;
    let mut unblocked = Vec::new();
    if let Some(team) = &existing
        && team.blocked
        && team.metadata.get(BLOCKED_MARKER).and_then(Value::as_str) == Some(BLOCKED_UNASSIGNED)
    {
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_TeamTable"
               SET blocked = false, metadata = metadata - 'entra_sync_blocked', updated_at = $2
               WHERE team_id = $1"#,
            [team_id.clone().into(), litellm_timestamp(now).into()],
        ))
        .await?;
        unblocked.push(Change::TeamUnblocked {
            team_id: team_id.clone(),
            team_alias: team.team_alias.clone(),
        });
    }
    let mut changes = match existing {
        Some(team) if team.team_alias.as_deref() == Some(display_name) => Vec::new(),
        Some(team) => {
            txn.execute(stmt(
                r#"UPDATE "LiteLLM_TeamTable" SET team_alias = $2, updated_at = $3
                   WHERE team_id = $1"#,
                [
                    team_id.clone().into(),
                    display_name.into(),
                    litellm_timestamp(now).into(),
                ],
            ))
            .await?;
            vec![Change::TeamRenamed {
                team_id,
                from: team.team_alias,
                to: display_name.to_owned(),
            }]
        }
        None => {
            team::Entity::insert(new_team(&team_id, display_name, settings, now))
                .on_conflict(
                    OnConflict::column(team::Column::TeamId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            vec![Change::TeamCreated {
                team_id,
                team_alias: display_name.to_owned(),
            }]
        }
    };
    changes.append(&mut unblocked);
    Ok(changes)
}

/// The new team's row; columns left `NotSet` keep LiteLLM's database defaults (spend among them).
fn new_team(
    team_id: &str,
    display_name: &str,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> team::ActiveModel {
    let defaults = &settings.team_defaults;
    let stamp = litellm_timestamp(now);
    let optional = |value: &Option<Vec<String>>| match value {
        Some(list) => Set(Some(list.clone())),
        None => NotSet,
    };
    team::ActiveModel {
        team_id: Set(team_id.to_owned()),
        team_alias: Set(Some(display_name.to_owned())),
        organization_id: Set(defaults.organization_id.clone()),
        // LiteLLM writes members as a JSON array; start with an empty one.
        members_with_roles: Set(Value::Array(Vec::new())),
        metadata: Set(Value::Object(defaults.metadata.clone().unwrap_or_default())),
        max_budget: Set(defaults.max_budget),
        soft_budget: Set(defaults.soft_budget),
        spend: NotSet,
        models: Set(Some(defaults.models.clone().unwrap_or_default())),
        max_parallel_requests: Set(defaults.max_parallel_requests),
        tpm_limit: Set(defaults.tpm_limit),
        rpm_limit: Set(defaults.rpm_limit),
        tpd_limit: Set(defaults.tpd_limit),
        budget_duration: Set(defaults.budget_duration.map(|d| d.to_string())),
        budget_reset_at: Set(defaults
            .budget_duration
            .map(|duration| settings.reset_clock.next_reset(duration, now))),
        blocked: Set(defaults.blocked.unwrap_or(false)),
        created_at: Set(stamp),
        updated_at: Set(stamp),
        team_member_permissions: optional(&defaults.team_member_permissions),
        access_group_ids: optional(&defaults.access_group_ids),
        policies: optional(&defaults.policies),
        default_team_member_models: optional(&defaults.default_team_member_models),
        model_max_budget: match &defaults.model_max_budget {
            Some(map) => Set(Value::Object(map.clone())),
            None => NotSet,
        },
    }
}

/// Blocks the team (the `block` policy for an unassigned or deleted group): LiteLLM then refuses
/// its keys, while the team, its members and its spend history stay. The team's metadata says
/// entra-sync blocked it, so that it is unblocked when its group is assigned or restored again.
pub(super) async fn block(
    txn: &DatabaseTransaction,
    group: &GroupId,
    now: DateTime<Utc>,
) -> Result<Applied> {
    let team_id = group.to_string();
    lock_team(txn, &team_id).await?;
    let Some(team) = team::Entity::find_by_id(team_id.clone()).one(txn).await? else {
        return Ok(Applied::default());
    };
    if team.blocked {
        return Ok(Applied::default());
    }
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_TeamTable"
           SET blocked = true, updated_at = $2,
               metadata = CASE WHEN jsonb_typeof(metadata) = 'object' THEN metadata
                               ELSE '{}'::jsonb END
                          || jsonb_build_object('entra_sync_blocked', $3::text)
           WHERE team_id = $1"#,
        [
            team_id.clone().into(),
            litellm_timestamp(now).into(),
            BLOCKED_UNASSIGNED.into(),
        ],
    ))
    .await?;
    Ok(Applied {
        changes: vec![Change::TeamBlocked { team_id }],
        // LiteLLM caches the team under its alias too.
        stale: team
            .team_alias
            .map(|alias| format!("team_alias:{alias}"))
            .into_iter()
            .collect(),
    })
}
