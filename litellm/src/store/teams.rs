//! Teams made from Entra groups.

use chrono::{DateTime, Utc};
use entity::GroupId;
use entity::litellm::team;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    FromQueryResult, Iterable, ModelTrait, QueryFilter, Set,
};
use serde_json::Value;
use std::collections::HashMap;
use std::str::FromStr;

use super::Applied;
use super::change::Change;
use super::sql::{litellm_timestamp, lock_team, lock_teams, stmt};
use crate::error::{Error, Result};
use crate::litellm_config::{LiteLlmSettings, ParamSource, ParamType, Place, TeamDefaults};
use crate::team_rules::{RuleDrift, TeamRules};

/// Who LiteLLM's `new_budget` names as a budget's creator when the request has no user: its
/// proxy admin (`LITELLM_PROXY_ADMIN_NAME`), as for the teams its SSO sign-in creates.
const LITELLM_PROXY_ADMIN_NAME: &str = "default_user_id";

/// The metadata key that says entra-sync blocked a team under the `block` policy.
const BLOCKED_MARKER: &str = "entra_sync_blocked";
/// Its value: the team's group was unassigned from the app, or deleted.
const BLOCKED_UNASSIGNED: &str = "group_unassigned";

/// Creates the team for a group (team_id = group id, team_alias = display name, the first
/// matching team rule's fields over LiteLLM's `default_team_params` applied) or, when it exists, brings its alias up to date, and unblocks
/// it when entra-sync had blocked it under the `block` policy (the group is assigned, or back,
/// again). Nothing else of an existing team is touched: its budget, models and spend belong to
/// LiteLLM's admins, and a team an admin blocked stays blocked.
pub(super) async fn ensure(
    txn: &DatabaseTransaction,
    group: &GroupId,
    display_name: &str,
    settings: &LiteLlmSettings,
    rules: &TeamRules,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let mut changes = ensure_many(txn, &[(group, display_name)], settings, rules, now).await?;
    Ok(changes.pop().unwrap_or_default())
}

/// [`ensure`] for several groups (each once) in one transaction: their teams locked in one
/// order and read in one statement, the new ones inserted together. Returns each group's changes.
/// A team that appears between the read and the insert is [`Error::ConcurrentChange`].
pub(super) async fn ensure_many(
    txn: &DatabaseTransaction,
    groups: &[(&GroupId, &str)],
    settings: &LiteLlmSettings,
    rules: &TeamRules,
    now: DateTime<Utc>,
) -> Result<Vec<Vec<Change>>> {
    let team_ids: Vec<String> = groups.iter().map(|(group, _)| group.to_string()).collect();
    lock_teams(txn, &team_ids).await?;
    let mut existing = existing_teams(txn, &team_ids).await?;
    let mut new_rows: HashMap<Vec<bool>, Vec<team::ActiveModel>> = HashMap::new();
    let mut all_changes = Vec::with_capacity(groups.len());
    for ((group, display_name), team_id) in groups.iter().zip(team_ids) {
        let changes = match existing.remove(&team_id) {
            Some(team) => bring_up_to_date(txn, team, display_name, now).await?,
            None => {
                let params = rules.params_for(group, display_name, &settings.team_defaults);
                let row = new_team_row(txn, &team_id, display_name, &params, settings, now).await?;
                // Rows are inserted together when they set the same columns: a column one row
                // leaves to its database default must not be NULL because another row set it.
                let columns = team::Column::iter().map(|c| row.get(c).is_set()).collect();
                new_rows.entry(columns).or_default().push(row);
                vec![Change::TeamCreated {
                    team_id,
                    team_alias: (*display_name).to_owned(),
                }]
            }
        };
        all_changes.push(changes);
    }
    for rows in new_rows.into_values() {
        insert_new_teams(txn, rows).await?;
    }
    Ok(all_changes)
}

/// What of an existing team [`ensure_many`] decides on (not its members, which can be many).
#[derive(FromQueryResult)]
struct Existing {
    team_id: String,
    team_alias: Option<String>,
    blocked: bool,
    metadata: Value,
}

/// These teams as they are, by team id (those that exist).
async fn existing_teams(
    txn: &DatabaseTransaction,
    team_ids: &[String],
) -> Result<HashMap<String, Existing>> {
    Ok(Existing::find_by_statement(stmt(
        r#"SELECT team_id, team_alias, blocked, metadata FROM "LiteLLM_TeamTable"
           WHERE team_id = ANY($1)"#,
        [team_ids.to_vec().into()],
    ))
    .all(txn)
    .await?
    .into_iter()
    .map(|team| (team.team_id.clone(), team))
    .collect())
}

/// An existing team: renamed to its group's name, and unblocked if entra-sync blocked it when
/// its group was unassigned (it is assigned again).
async fn bring_up_to_date(
    txn: &DatabaseTransaction,
    team: Existing,
    display_name: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let team_id = team.team_id;
    if team.team_alias.as_deref() != Some(display_name) {
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
        changes.push(Change::TeamRenamed {
            team_id: team_id.clone(),
            from: team.team_alias.clone(),
            to: display_name.to_owned(),
        });
    }
    if team.blocked
        && team.metadata.get(BLOCKED_MARKER).and_then(Value::as_str) == Some(BLOCKED_UNASSIGNED)
    {
        txn.execute(stmt(
            r#"UPDATE "LiteLLM_TeamTable"
               SET blocked = false, metadata = metadata - 'entra_sync_blocked', updated_at = $2
               WHERE team_id = $1"#,
            [team_id.clone().into(), litellm_timestamp(now).into()],
        ))
        .await?;
        changes.push(Change::TeamUnblocked {
            team_id,
            team_alias: team.team_alias,
        });
    }
    Ok(changes)
}

/// A new team's row from its parameters, with its member budget made first when the parameters
/// give one (its id kept in the team's metadata, as LiteLLM keeps it).
async fn new_team_row(
    txn: &DatabaseTransaction,
    team_id: &str,
    display_name: &str,
    params: &TeamDefaults,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<team::ActiveModel> {
    let mut row = new_team(team_id, display_name, params, settings, now)?;
    if params.has_member_budget() {
        let budget_id = create_member_budget(txn, display_name, params, settings, now).await?;
        let mut metadata = params.metadata.clone().unwrap_or_default();
        metadata.insert(MEMBER_BUDGET_KEY.into(), Value::String(budget_id));
        row.metadata = Set(Value::Object(metadata));
    }
    Ok(row)
}

/// Inserts new teams that set the same columns. LiteLLM creates teams without the team lock
/// (`/team/new`, its SSO sign-in): a row that appeared since the read is theirs. Nothing of ours
/// may stand for it (the `team_created` change, the member budget made for it): it all rolls
/// back with [`Error::ConcurrentChange`], and the retry finds the team as it is.
async fn insert_new_teams(txn: &DatabaseTransaction, rows: Vec<team::ActiveModel>) -> Result<()> {
    let planned = rows.len() as u64;
    let inserted = team::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::column(team::Column::TeamId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(txn)
        .await?;
    if inserted != planned {
        return Err(Error::ConcurrentChange(
            "a team being created appeared meanwhile (LiteLLM's own /team/new?)".into(),
        ));
    }
    Ok(())
}

/// The team metadata key naming its member budget (LiteLLM's `team_member_budget_id`).
const MEMBER_BUDGET_KEY: &str = "team_member_budget_id";

/// Creates the team's member budget as LiteLLM's `new_team` does
/// (`TeamMemberBudgetHandler.create_team_member_budget_table` through `new_budget`): a
/// `"LiteLLM_BudgetTable"` row named `team-<alias, spaces as dashes>-budget-<uuid hex>` with the
/// member limits, whose period is `team_member_budget_duration`, else the team's
/// `budget_duration`, and whose first reset follows LiteLLM's rule. Returns its id, which the
/// team's metadata keeps and every new membership row gets as its `budget_id`.
#[tracing::instrument(skip(txn, params, settings), err(level = "debug"))]
async fn create_member_budget(
    txn: &DatabaseTransaction,
    display_name: &str,
    params: &TeamDefaults,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<String> {
    let budget_id = format!(
        "team-{}-budget-{}",
        display_name.replace(' ', "-"),
        uuid::Uuid::new_v4().simple()
    );
    let duration = params
        .team_member_budget_duration
        .or(params.budget_duration);
    let stamp = litellm_timestamp(now);
    txn.execute(stmt(
        r#"INSERT INTO "LiteLLM_BudgetTable"
             (budget_id, max_budget, tpm_limit, rpm_limit, budget_duration, budget_reset_at,
              created_at, created_by, updated_at, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7, $8)"#,
        [
            budget_id.clone().into(),
            params.team_member_budget.into(),
            params.team_member_tpm_limit.into(),
            params.team_member_rpm_limit.into(),
            duration.map(|d| d.to_string()).into(),
            duration
                .map(|d| settings.reset_clock.next_reset(d, now))
                .into(),
            stamp.into(),
            LITELLM_PROXY_ADMIN_NAME.into(),
        ],
    ))
    .await?;
    Ok(budget_id)
}

/// The new team's row from its parameters (a rule's over `default_team_params`): each one given
/// in its column of the parameter's name; columns left `NotSet` keep LiteLLM's database defaults
/// (spend among them).
fn new_team(
    team_id: &str,
    display_name: &str,
    defaults: &TeamDefaults,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<team::ActiveModel> {
    let stamp = litellm_timestamp(now);
    let mut row = team::ActiveModel {
        team_id: Set(team_id.to_owned()),
        team_alias: Set(Some(display_name.to_owned())),
        // LiteLLM writes members as a JSON array; start with an empty one.
        members_with_roles: Set(Value::Array(Vec::new())),
        metadata: Set(Value::Object(serde_json::Map::new())),
        // LiteLLM's "all models".
        models: Set(Some(Vec::new())),
        blocked: Set(false),
        budget_reset_at: Set(defaults
            .budget_duration
            .map(|duration| settings.reset_clock.next_reset(duration, now))),
        created_at: Set(stamp),
        updated_at: Set(stamp),
        ..Default::default()
    };
    for field in defaults.fields() {
        if let (Place::Team, Some(value)) = (field.place, field.value) {
            let column = team::Column::from_str(field.name).map_err(|_| {
                DbErr::Custom(format!("LiteLLM's team table has no column {}", field.name))
            })?;
            row.try_set(column, value.to_column())?;
        }
    }
    Ok(row)
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
        staged: Vec::new(),
    })
}

#[derive(FromQueryResult)]
struct BudgetRow {
    budget_id: String,
    max_budget: Option<f64>,
    budget_duration: Option<String>,
    tpm_limit: Option<i64>,
    rpm_limit: Option<i64>,
}

impl BudgetRow {
    /// The value of one of its columns, as the database gives it.
    fn column(&self, name: &str) -> Option<sea_orm::Value> {
        Some(match name {
            "max_budget" => self.max_budget.into(),
            "budget_duration" => self.budget_duration.clone().into(),
            "tpm_limit" => self.tpm_limit.into(),
            "rpm_limit" => self.rpm_limit.into(),
            _ => return None,
        })
    }
}

/// The teams of these groups (id -> the group's name, else the team's alias counts) whose
/// parameters differ from their rule's, in team id order. Reads only: an admin's edit stands.
#[tracing::instrument(skip_all, fields(groups = groups.len()), err(level = "debug"))]
pub(super) async fn rule_drift(
    db: &impl ConnectionTrait,
    rules: &TeamRules,
    groups: &HashMap<GroupId, Option<String>>,
) -> Result<Vec<RuleDrift>> {
    if rules.is_empty() || groups.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = groups.keys().map(ToString::to_string).collect();
    let teams = team::Entity::find()
        .filter(team::Column::TeamId.is_in(ids))
        .all(db)
        .await?;
    let budgets = member_budgets(db, &teams).await?;
    let mut drift = Vec::new();
    for team in teams {
        let Ok(group) = GroupId::parse(&team.team_id) else {
            continue;
        };
        let name = groups
            .get(&group)
            .cloned()
            .flatten()
            .or_else(|| team.team_alias.clone())
            .unwrap_or_default();
        let Some(rule) = rules.matching(&group, &name) else {
            continue;
        };
        let (team_id, team_alias) = (team.team_id.clone(), team.team_alias.clone());
        let fields = rule.differences(&team_now(&team, &budgets)?);
        if !fields.is_empty() {
            drift.push(RuleDrift {
                team_id,
                team_alias,
                rule: rule.position(),
                fields,
            });
        }
    }
    drift.sort_by(|a, b| a.team_id.cmp(&b.team_id));
    Ok(drift)
}

/// The member budgets these teams' metadata names, by budget id.
async fn member_budgets(
    db: &impl ConnectionTrait,
    teams: &[team::Model],
) -> Result<HashMap<String, BudgetRow>> {
    let budget_ids: Vec<String> = teams
        .iter()
        .filter_map(|t| {
            t.metadata
                .get(MEMBER_BUDGET_KEY)?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    if budget_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(BudgetRow::find_by_statement(stmt(
        r#"SELECT budget_id, max_budget, budget_duration, tpm_limit, rpm_limit
           FROM "LiteLLM_BudgetTable" WHERE budget_id = ANY($1)"#,
        [budget_ids.into()],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(|row| (row.budget_id.clone(), row))
    .collect())
}

/// A team's parameters as LiteLLM has them, its member budget's among them.
fn team_now(team: &team::Model, budgets: &HashMap<String, BudgetRow>) -> Result<TeamDefaults> {
    let budget = team
        .metadata
        .get(MEMBER_BUDGET_KEY)
        .and_then(Value::as_str)
        .and_then(|id| budgets.get(id));
    TeamDefaults::read(&mut TeamRow { team, budget })
}

/// A team's row and its member budget's, read parameter by parameter.
struct TeamRow<'a> {
    team: &'a team::Model,
    budget: Option<&'a BudgetRow>,
}

impl ParamSource for TeamRow<'_> {
    fn get<T: ParamType>(&mut self, name: &'static str, place: Place) -> Result<Option<T>> {
        let value = match place {
            Place::Team => team::Column::from_str(name)
                .ok()
                .map(|column| self.team.get(column)),
            Place::MemberBudget(column) => self.budget.and_then(|row| row.column(column)),
        };
        Ok(value.and_then(T::from_column))
    }
}
