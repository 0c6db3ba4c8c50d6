//! Finding LiteLLM users for Entra users, and creating or linking them.
//!
//! A user is found by `user_id` = object id, then `sso_user_id` = object id, then lower-cased email
//! (users made by LiteLLM's SCIM have `user_id` = UPN). A user found by email gets its
//! `sso_user_id` set, so the next lookup finds it by id.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::UserId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::change::Change;
use super::sql::{litellm_timestamp, stmt, text_array};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::litellm_config::LiteLlmSettings;

/// The columns of a LiteLLM user the store decides on.
#[derive(Clone, Debug, FromQueryResult)]
pub(super) struct UserRow {
    pub user_id: String,
    pub sso_user_id: Option<String>,
    pub user_email: Option<String>,
    pub user_alias: Option<String>,
    pub user_role: Option<String>,
    pub teams: Option<Vec<String>>,
}

impl UserRow {
    pub fn in_team(&self, team_id: &str) -> bool {
        self.teams
            .as_ref()
            .is_some_and(|teams| teams.iter().any(|t| t == team_id))
    }
}

/// Reads every user that may match these Entra users, without a lock, for a plan that then locks
/// only the rows it writes ([`lock_users`]). What a membership plan decides from these rows cannot
/// change meanwhile: a user's membership of a team changes only under that team's lock, which the
/// planner holds; and every write is relative to the row as it is then (a team appended if absent,
/// an id set if unset, a role changed from the one read), a write that finds the row changed
/// failing with [`Error::ConcurrentChange`].
///
/// `emails` pairs each email with its user's object id. Rows are read by `user_id`, then by
/// `sso_user_id` for the ids no row has as its `user_id`, then by email for the users no row has
/// the id of, since [`Candidates::find`] looks no further for the others: a batch whose users all
/// exist costs one statement. One `OR` over the three columns would make PostgreSQL scan the
/// whole table (every user's `lower(user_email)` computed) where each lookup alone uses its index.
pub(super) async fn read_candidates(
    txn: &DatabaseTransaction,
    ids: &[&String],
    emails: &[&(String, String)],
) -> Result<Vec<UserRow>> {
    let ids: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let mut rows = by_object_ids(txn, &ids).await?;
    let unmatched: Vec<&str> = {
        let found = object_ids(&rows);
        emails
            .iter()
            .filter(|(id, _)| !found.contains(id.as_str()))
            .map(|(_, email)| email.as_str())
            .collect()
    };
    let by_email = rows_where(txn, "lower(u.user_email)", &unmatched).await?;
    add_new(&mut rows, by_email);
    // LiteLLM's order, `user_id COLLATE "C"`: byte order, as Rust compares strings.
    rows.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
    Ok(rows)
}

/// The users of these Entra object ids, without a lock: by `user_id`, then by `sso_user_id` for
/// the ids no row has as its `user_id` (users LiteLLM knows by another user id, its SCIM's UPN,
/// linked to the object id). One index lookup per id, two for those not found by the first.
pub(super) async fn by_object_ids(db: &impl ConnectionTrait, ids: &[&str]) -> Result<Vec<UserRow>> {
    let mut rows = rows_where(db, "u.user_id", ids).await?;
    // A row found by its user_id that does not also carry the id as its sso_user_id (LiteLLM's
    // sign-in sets both) may share the id with another row's sso_user_id: read that one too,
    // so that [`Candidates::object`] refuses to pick between them.
    let unlinked: Vec<&str> = rows
        .iter()
        .filter(|row| row.sso_user_id.as_deref() != Some(row.user_id.as_str()))
        .map(|row| row.user_id.as_str())
        .collect();
    let sharing = rows_where(db, "u.sso_user_id", &unlinked).await?;
    add_new(&mut rows, sharing);
    let by_sso: Vec<&str> = {
        let found = object_ids(&rows);
        ids.iter()
            .copied()
            .filter(|id| !found.contains(id))
            .collect()
    };
    let linked = rows_where(db, "u.sso_user_id", &by_sso).await?;
    add_new(&mut rows, linked);
    Ok(rows)
}

/// The user of one Entra object id (see [`by_object_ids`]).
pub(super) async fn by_object_id(db: &impl ConnectionTrait, id: &str) -> Result<Option<UserRow>> {
    Ok(by_object_ids(db, &[id]).await?.into_iter().next())
}

/// The users with these LiteLLM user ids, without a lock.
pub(super) async fn by_user_ids(
    db: &impl ConnectionTrait,
    user_ids: &[&str],
) -> Result<Vec<UserRow>> {
    rows_where(db, "u.user_id", user_ids).await
}

/// Every id these rows go by: their `user_id`s and `sso_user_id`s.
fn object_ids(rows: &[UserRow]) -> HashSet<&str> {
    rows.iter()
        .flat_map(|row| [Some(row.user_id.as_str()), row.sso_user_id.as_deref()])
        .flatten()
        .collect()
}

/// Adds the rows `rows` does not hold yet.
fn add_new(rows: &mut Vec<UserRow>, more: Vec<UserRow>) {
    let known: HashSet<String> = rows.iter().map(|row| row.user_id.clone()).collect();
    rows.extend(more.into_iter().filter(|row| !known.contains(&row.user_id)));
}

/// The columns of [`UserRow`], of the user table as `u`.
const USER_COLUMNS: &str =
    "u.user_id, u.sso_user_id, u.user_email, u.user_alias, u.user_role, u.teams";

/// The user rows whose `column` is one of `values`. A join on the values, so that each is looked
/// up through the column's index: with `= ANY` of a few thousand values PostgreSQL reads the
/// whole table instead.
async fn rows_where(
    db: &impl ConnectionTrait,
    column: &str,
    values: &[&str],
) -> Result<Vec<UserRow>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let mut values = values.to_vec();
    values.sort_unstable();
    values.dedup();
    Ok(UserRow::find_by_statement(stmt(
        &format!(
            r#"SELECT {USER_COLUMNS}
               FROM unnest($1::text[]) AS x(value)
               JOIN "LiteLLM_UserTable" u ON {column} = x.value"#
        ),
        [text_array(values)],
    ))
    .all(db)
    .await?)
}

/// Locks these users' rows as LiteLLM does before it writes them: in one statement, in
/// `user_id COLLATE "C"` order (the second of the store's locks, see [`super`]).
pub(super) async fn lock_users(txn: &DatabaseTransaction, user_ids: &[&str]) -> Result<()> {
    if user_ids.is_empty() {
        return Ok(());
    }
    txn.execute(stmt(
        r#"SELECT user_id FROM "LiteLLM_UserTable" WHERE user_id = ANY($1)
           ORDER BY user_id COLLATE "C" FOR UPDATE"#,
        [text_array(user_ids)],
    ))
    .await?;
    Ok(())
}

/// [`lock_users`] for one user, returning the row as it is once locked.
async fn lock_user(txn: &DatabaseTransaction, user_id: &str) -> Result<Option<UserRow>> {
    Ok(UserRow::find_by_statement(stmt(
        &format!(
            r#"SELECT {USER_COLUMNS} FROM "LiteLLM_UserTable" u WHERE u.user_id = $1 FOR UPDATE"#
        ),
        [user_id.into()],
    ))
    .one(txn)
    .await?)
}

/// How an Entra user maps onto LiteLLM's user table.
#[derive(Clone, Debug)]
pub(super) enum Match {
    /// An existing row; `link` when it was found by email and needs its `sso_user_id`.
    Existing {
        row: usize,
        link: bool,
    },
    New,
}

/// The candidate rows, indexed for matching.
pub(super) struct Candidates {
    pub rows: Vec<UserRow>,
    by_id: HashMap<String, usize>,
    by_sso: HashMap<String, usize>,
    by_email: HashMap<String, Vec<usize>>,
    claimed: HashSet<usize>,
}

impl Candidates {
    pub fn new(rows: Vec<UserRow>) -> Self {
        let mut by_id = HashMap::with_capacity(rows.len());
        let mut by_sso = HashMap::new();
        let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            by_id.insert(row.user_id.clone(), i);
            if let Some(sso) = &row.sso_user_id {
                by_sso.insert(sso.clone(), i);
            }
            if let Some(email) = &row.user_email {
                by_email.entry(email.to_lowercase()).or_default().push(i);
            }
        }
        Self {
            rows,
            by_id,
            by_sso,
            by_email,
            claimed: HashSet::new(),
        }
    }

    /// The row of a LiteLLM user whose `user_id` or `sso_user_id` is this object id, refusing
    /// an id that two rows go by (one as its `user_id`, another as its `sso_user_id`): writing
    /// either could be writing the wrong person.
    pub fn object(&self, id: &str) -> Result<Option<usize>> {
        match (self.by_id.get(id), self.by_sso.get(id)) {
            (Some(&by_id), Some(&by_sso)) if by_id != by_sso => Err(Error::AmbiguousUser {
                object_id: id.to_owned(),
                user_ids: [
                    self.rows[by_id].user_id.clone(),
                    self.rows[by_sso].user_id.clone(),
                ],
            }),
            (by_id, by_sso) => Ok(by_id.or(by_sso).copied()),
        }
    }

    pub fn by_user_id(&self, user_id: &str) -> Option<&UserRow> {
        self.by_id.get(user_id).map(|&i| &self.rows[i])
    }

    /// The rows among these that match these ids and emails (one request of a batch whose
    /// candidates were read together).
    pub fn matching<'c, 'q>(
        &'c self,
        ids: &'q [String],
        emails: &'q [(String, String)],
    ) -> impl Iterator<Item = &'c UserRow> + use<'c, 'q> {
        let by_ids = ids.iter().flat_map(|id| {
            [self.by_id.get(id), self.by_sso.get(id)]
                .into_iter()
                .flatten()
        });
        let by_emails = emails
            .iter()
            .flat_map(|(_, email)| self.by_email.get(email).into_iter().flatten());
        by_ids.chain(by_emails).map(|&row| &self.rows[row])
    }

    /// A user a request of the batch is creating, in `team_id`: the later requests find it as
    /// an existing row (and add their team to it) instead of creating it again.
    pub fn record_created(&mut self, user: &NewUser, team_id: &str) {
        let row = self.rows.len();
        self.by_id.insert(user.user_id.clone(), row);
        self.by_sso.insert(user.user_id.clone(), row);
        self.claimed.insert(row);
        self.rows.push(UserRow {
            user_id: user.user_id.clone(),
            sso_user_id: Some(user.user_id.clone()),
            user_email: user.user_email.clone(),
            user_alias: user.user_alias.clone(),
            user_role: None,
            teams: Some(vec![team_id.to_owned()]),
        });
    }

    /// A row found by email that a request of the batch links to `object_id`: the later
    /// requests find it by that id.
    pub fn record_link(&mut self, user_id: &str, object_id: &str) {
        if let Some(&row) = self.by_id.get(user_id) {
            self.rows[row].sso_user_id = Some(object_id.to_owned());
            self.by_sso.insert(object_id.to_owned(), row);
        }
    }

    /// A request of the batch adds `team_id` to the user's `teams`.
    pub fn record_team(&mut self, user_id: &str, team_id: &str) {
        if let Some(&row) = self.by_id.get(user_id) {
            self.rows[row]
                .teams
                .get_or_insert_with(Vec::new)
                .push(team_id.to_owned());
        }
    }

    /// Matches an Entra user. An email match only takes a row that belongs to no other Entra
    /// user (no `sso_user_id`) and that no earlier user of the same batch took; among several,
    /// the first in LiteLLM's lock order, so the choice is deterministic.
    pub fn find(&mut self, user: &EntraUser) -> Result<Match> {
        if let Some(row) = self.object(user.id.as_str())? {
            self.claimed.insert(row);
            return Ok(Match::Existing { row, link: false });
        }
        let by_email = user.email().and_then(|email| {
            self.by_email.get(&email).and_then(|rows| {
                rows.iter()
                    .copied()
                    .find(|&i| self.rows[i].sso_user_id.is_none() && !self.claimed.contains(&i))
            })
        });
        Ok(match by_email {
            Some(row) => {
                self.claimed.insert(row);
                Match::Existing { row, link: true }
            }
            None => Match::New,
        })
    }
}

/// A user row to create.
#[derive(Clone, Debug)]
pub(super) struct NewUser {
    pub user_id: String,
    pub user_email: Option<String>,
    pub user_alias: Option<String>,
}

impl NewUser {
    pub fn from_entra(user: &EntraUser) -> Self {
        Self {
            user_id: user.id.to_string(),
            user_email: user.email(),
            user_alias: user.display_name.clone(),
        }
    }

    pub fn change(&self, settings: &LiteLlmSettings) -> Change {
        Change::UserCreated {
            user_id: self.user_id.clone(),
            user_email: self.user_email.clone(),
            user_role: settings.default_user_role().as_str().to_owned(),
        }
    }
}

/// Creates users as LiteLLM's Microsoft sign-in does: `user_id` = `sso_user_id` = object id,
/// `metadata.auth_provider` = microsoft, `default_internal_user_params` applied, and each user's
/// `teams` set (the teams they join as they are created).
pub(super) async fn create(
    txn: &DatabaseTransaction,
    users: &[(&NewUser, Vec<&str>)],
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let defaults = &settings.user_defaults;
    #[derive(serde::Serialize)]
    struct Row<'u> {
        user_id: &'u str,
        user_email: Option<&'u str>,
        user_alias: Option<&'u str>,
        teams: &'u [&'u str],
    }
    let rows: Vec<Row> = users
        .iter()
        .map(|(u, teams)| Row {
            user_id: &u.user_id,
            user_email: u.user_email.as_deref(),
            user_alias: u.user_alias.as_deref(),
            teams,
        })
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|e| sea_orm::DbErr::Custom(format!("cannot serialise new users: {e}")))?;
    let reset_at = defaults
        .budget_duration
        .map(|duration| settings.reset_clock.next_reset(duration, now));
    // In user_id order, as rows are locked: two writers creating the same users wait for each
    // other instead of deadlocking.
    let result = txn
        .execute(stmt(
            r#"INSERT INTO "LiteLLM_UserTable"
                 (user_id, sso_user_id, user_email, user_alias, user_role, teams, models, max_budget,
                  budget_duration, budget_reset_at, metadata, created_at, updated_at)
               SELECT x.user_id, x.user_id, x.user_email, x.user_alias, $2, x.teams, $3, $4, $5,
                      $6, '{"auth_provider": "microsoft"}'::jsonb, $7, $7
               FROM jsonb_to_recordset($1::text::jsonb)
                    AS x(user_id text, user_email text, user_alias text, teams text[])
               ORDER BY x.user_id COLLATE "C"
               ON CONFLICT DO NOTHING"#,
            [
                rows.into(),
                settings.default_user_role().as_str().into(),
                text_array(&defaults.models),
                defaults.max_budget.into(),
                defaults.budget_duration.map(|d| d.to_string()).into(),
                reset_at.into(),
                litellm_timestamp(now).into(),
            ],
        ))
        .await?;
    if result.rows_affected() != users.len() as u64 {
        return Err(Error::ConcurrentChange(
            "a user being created appeared meanwhile (LiteLLM's own sign-in?)".into(),
        ));
    }
    Ok(())
}

/// Sets `sso_user_id` on users found by email: (LiteLLM user_id, Entra object id) pairs. A row
/// linked meanwhile (to whichever id) is a [`Error::ConcurrentChange`]: it was found for the
/// plan as a row no Entra user had.
pub(super) async fn link(
    txn: &DatabaseTransaction,
    links: &[(String, String)],
    now: DateTime<Utc>,
) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let (user_ids, object_ids): (Vec<_>, Vec<_>) = links.iter().cloned().unzip();
    let rows: HashSet<&String> = user_ids.iter().collect();
    let expected = rows.len() as u64;
    let linked = txn
        .execute(stmt(
            r#"UPDATE "LiteLLM_UserTable" AS u SET sso_user_id = x.object_id, updated_at = $3
               FROM unnest($1::text[], $2::text[]) AS x(user_id, object_id)
               WHERE u.user_id = x.user_id AND u.sso_user_id IS NULL"#,
            [
                text_array(&user_ids),
                text_array(object_ids),
                litellm_timestamp(now).into(),
            ],
        ))
        .await?;
    if linked.rows_affected() != expected {
        return Err(Error::ConcurrentChange(
            "a user being linked by email was linked or removed meanwhile".into(),
        ));
    }
    Ok(())
}

/// Existing users' rows as LiteLLM's sign-in leaves them: (user id, new email, new alias), each
/// part `None` when it stays. One statement however many.
pub(super) async fn signed_in(
    txn: &DatabaseTransaction,
    users: &[&(String, Option<String>, Option<String>)],
    now: DateTime<Utc>,
) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    #[derive(serde::Serialize)]
    struct Row<'u> {
        user_id: &'u str,
        user_email: Option<&'u str>,
        user_alias: Option<&'u str>,
    }
    let rows: Vec<Row> = users
        .iter()
        .map(|(user_id, email, alias)| Row {
            user_id,
            user_email: email.as_deref(),
            user_alias: alias.as_deref(),
        })
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|e| sea_orm::DbErr::Custom(format!("cannot serialise signed-in users: {e}")))?;
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_UserTable" AS u
           SET user_email = coalesce(x.user_email, u.user_email),
               user_alias = coalesce(x.user_alias, u.user_alias),
               updated_at = $2
           FROM jsonb_to_recordset($1::text::jsonb)
                AS x(user_id text, user_email text, user_alias text)
           WHERE u.user_id = x.user_id"#,
        [rows.into(), litellm_timestamp(now).into()],
    ))
    .await?;
    Ok(())
}

/// Ensures one user exists (created or linked), outside of any team.
pub(super) async fn ensure(
    txn: &DatabaseTransaction,
    user: &EntraUser,
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    Ok(ensure_many(txn, &[user], settings, now).await?.1)
}

/// Ensures each user exists, outside of any team, in a few statements however many: the
/// candidate rows read ([`read_candidates`]), the rows found by email locked and linked, the
/// rest created. Returns each user's LiteLLM `user_id`, and the changes.
pub(super) async fn ensure_many(
    txn: &DatabaseTransaction,
    users: &[&EntraUser],
    settings: &LiteLlmSettings,
    now: DateTime<Utc>,
) -> Result<(HashMap<UserId, String>, Vec<Change>)> {
    let ensuring = Ensuring::plan(txn, users, settings).await?;
    lock_users(txn, &ensuring.written().collect::<Vec<_>>()).await?;
    ensuring.execute(txn, settings, now).await?;
    Ok((ensuring.found, ensuring.changes))
}

/// Users made to exist, planned from their rows as read: the caller locks the rows it writes
/// ([`Self::written`], with any others it writes, in one statement), then executes it.
pub(super) struct Ensuring {
    /// Each user's LiteLLM `user_id`.
    pub found: HashMap<UserId, String>,
    /// The rows of the users who exist, as read, by `user_id`.
    pub rows: HashMap<String, UserRow>,
    links: Vec<(String, String)>,
    new: Vec<NewUser>,
    pub changes: Vec<Change>,
}

impl Ensuring {
    pub async fn plan(
        txn: &DatabaseTransaction,
        users: &[&EntraUser],
        settings: &LiteLlmSettings,
    ) -> Result<Self> {
        let ids: Vec<String> = users.iter().map(|user| user.id.to_string()).collect();
        let emails: Vec<(String, String)> = users
            .iter()
            .filter_map(|user| Some((user.id.to_string(), user.email()?)))
            .collect();
        let mut candidates = Candidates::new(
            read_candidates(
                txn,
                &ids.iter().collect::<Vec<_>>(),
                &emails.iter().collect::<Vec<_>>(),
            )
            .await?,
        );
        let mut found = HashMap::with_capacity(users.len());
        let mut rows = HashMap::new();
        let mut links = Vec::new();
        let mut new = Vec::new();
        let mut changes = Vec::new();
        for user in users {
            let user_id = match candidates.find(user)? {
                Match::Existing { row, link } => {
                    let row = &candidates.rows[row];
                    if link {
                        links.push((row.user_id.clone(), user.id.to_string()));
                        changes.push(Change::UserLinked {
                            user_id: row.user_id.clone(),
                            sso_user_id: user.id.to_string(),
                        });
                    }
                    rows.insert(row.user_id.clone(), row.clone());
                    row.user_id.clone()
                }
                Match::New => {
                    let created = NewUser::from_entra(user);
                    changes.push(created.change(settings));
                    let user_id = created.user_id.clone();
                    new.push(created);
                    user_id
                }
            };
            found.insert(user.id.clone(), user_id);
        }
        Ok(Self {
            found,
            rows,
            links,
            new,
            changes,
        })
    }

    /// The existing rows it writes: those it links.
    pub fn written(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(user_id, _)| user_id.as_str())
    }

    /// The users it creates, by `user_id`.
    pub fn created(&self) -> impl Iterator<Item = &str> {
        self.new.iter().map(|user| user.user_id.as_str())
    }

    /// Links and creates, [`Self::written`] being locked.
    pub async fn execute(
        &self,
        txn: &DatabaseTransaction,
        settings: &LiteLlmSettings,
        now: DateTime<Utc>,
    ) -> Result<()> {
        link(txn, &self.links, now).await?;
        let new: Vec<(&NewUser, Vec<&str>)> =
            self.new.iter().map(|user| (user, Vec::new())).collect();
        create(txn, &new, settings, now).await
    }
}

/// What of a user's LiteLLM row differs from Entra.
struct Renamed {
    email_changed: bool,
    alias_changed: bool,
}

impl Renamed {
    /// Entra may omit an attribute (no mail, no UPN): LiteLLM's value then stays rather than
    /// being erased, and does not count as a difference.
    fn compare(user: &EntraUser, email: Option<&str>, alias: Option<&str>) -> Self {
        let entra_email = user.email();
        Self {
            email_changed: entra_email.is_some() && entra_email.as_deref() != email,
            alias_changed: user.display_name.is_some() && user.display_name.as_deref() != alias,
        }
    }
}

/// Of these users (enabled in Entra), those [`update`] and a return from departure have nothing
/// to do for, found in two statements however many: LiteLLM's row already has their email and
/// display name (or there is no row), and no key of theirs is blocked for their departure.
pub(super) async fn unchanged(
    db: &impl ConnectionTrait,
    users: &[&EntraUser],
) -> Result<HashSet<UserId>> {
    #[derive(FromQueryResult)]
    struct KeyOwner {
        user_id: String,
    }
    let rows = rows_of(db, users).await?;
    let blocked: HashSet<String> = KeyOwner::find_by_statement(stmt(
        r#"SELECT DISTINCT user_id FROM "LiteLLM_VerificationToken"
           WHERE user_id = ANY($1) AND metadata->>'entra_sync_blocked' = 'user_departed'"#,
        [text_array(rows.iter().map(|row| row.user_id.as_str()))],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(|owner| owner.user_id)
    .collect();
    let by_id = by_entra_id(&rows);
    Ok(users
        .iter()
        .filter(|user| match by_id.get(user.id.as_str()) {
            None => true,
            Some(row) => !is_renamed(user, row) && !blocked.contains(&row.user_id),
        })
        .map(|user| user.id.clone())
        .collect())
}

/// Of these users (enabled in Entra), those whose LiteLLM row has another email or display name
/// than Entra's: [`update`] has something to do for them. One statement however many.
pub(super) async fn renamed(
    db: &impl ConnectionTrait,
    users: &[&EntraUser],
) -> Result<HashSet<UserId>> {
    let rows = rows_of(db, users).await?;
    let by_id = by_entra_id(&rows);
    Ok(users
        .iter()
        .filter(|user| {
            by_id
                .get(user.id.as_str())
                .is_some_and(|row| is_renamed(user, row))
        })
        .map(|user| user.id.clone())
        .collect())
}

async fn rows_of(db: &impl ConnectionTrait, users: &[&EntraUser]) -> Result<Vec<UserRow>> {
    let ids: Vec<&str> = users.iter().map(|user| user.id.as_str()).collect();
    by_object_ids(db, &ids).await
}

/// The rows by the Entra id each is found by, as [`update`] finds a user: by user_id, else by
/// sso_user_id.
fn by_entra_id(rows: &[UserRow]) -> HashMap<&str, &UserRow> {
    let mut by_id: HashMap<&str, &UserRow> = HashMap::new();
    for row in rows {
        if let Some(sso) = row.sso_user_id.as_deref() {
            by_id.entry(sso).or_insert(row);
        }
    }
    for row in rows {
        by_id.insert(row.user_id.as_str(), row);
    }
    by_id
}

fn is_renamed(user: &EntraUser, row: &UserRow) -> bool {
    let renamed = Renamed::compare(user, row.user_email.as_deref(), row.user_alias.as_deref());
    renamed.email_changed || renamed.alias_changed
}

/// Brings a known user's `user_email` and `user_alias` up to date with Entra, and the email in
/// their entries of `members_with_roles`. An unknown user is left for the next membership change
/// to create. The row is read first, and nothing is locked when it is up to date; otherwise the
/// locks are taken in the store's order (the user's teams, then the row) and the row is read
/// again under them.
pub(super) async fn update(
    txn: &DatabaseTransaction,
    user: &EntraUser,
    now: DateTime<Utc>,
) -> Result<Vec<Change>> {
    let Some(read) = by_object_id(txn, user.id.as_str()).await? else {
        return Ok(Vec::new());
    };
    let renamed = Renamed::compare(user, read.user_email.as_deref(), read.user_alias.as_deref());
    if !renamed.email_changed && !renamed.alias_changed {
        return Ok(Vec::new());
    }
    let (row, teams) = lock_for_rename(txn, &read).await?;
    let renamed = Renamed::compare(user, row.user_email.as_deref(), row.user_alias.as_deref());
    if !renamed.email_changed && !renamed.alias_changed {
        return Ok(Vec::new());
    }
    let new_email = if renamed.email_changed {
        user.email()
    } else {
        row.user_email.clone()
    };
    let new_alias = if renamed.alias_changed {
        user.display_name.clone()
    } else {
        row.user_alias.clone()
    };
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_UserTable" SET user_email = $2, user_alias = $3, updated_at = $4
           WHERE user_id = $1"#,
        [
            row.user_id.clone().into(),
            new_email.clone().into(),
            new_alias.clone().into(),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    if renamed.email_changed {
        email_in_member_lists(txn, &row.user_id, &teams, new_email.as_deref()).await?;
    }
    Ok(vec![Change::UserUpdated {
        user_id: row.user_id,
        user_email: new_email,
        user_alias: new_alias,
    }])
}

/// Locks what renaming a user read as `read` writes, in the store's order (the user's teams,
/// then the row), and reads the row again under the locks. Returns it and the user's teams.
async fn lock_for_rename(
    txn: &DatabaseTransaction,
    read: &UserRow,
) -> Result<(UserRow, Vec<String>)> {
    let mut teams = read.teams.clone().unwrap_or_default();
    teams.sort();
    teams.dedup();
    super::sql::lock_teams(txn, &teams).await?;
    let Some(row) = lock_user(txn, &read.user_id).await? else {
        return Err(Error::ConcurrentChange(
            "a user being renamed was deleted meanwhile".into(),
        ));
    };
    // A team joined since the read would keep the old email in its member list.
    if let Some(joined) = row
        .teams
        .iter()
        .flatten()
        .find(|team| teams.binary_search(team).is_err())
    {
        return Err(Error::ConcurrentChange(format!(
            "a user being renamed joined team {joined} meanwhile"
        )));
    }
    Ok((row, teams))
}

/// The user's new email in their entries of these teams' `members_with_roles`.
async fn email_in_member_lists(
    txn: &DatabaseTransaction,
    user_id: &str,
    teams: &[String],
    email: Option<&str>,
) -> Result<()> {
    if teams.is_empty() {
        return Ok(());
    }
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_TeamTable"
           SET members_with_roles = (
                 SELECT jsonb_agg(
                          CASE WHEN entry->>'user_id' = $1
                               THEN jsonb_set(entry, '{user_email}', to_jsonb($3::text))
                               ELSE entry END
                          ORDER BY position)
                 FROM jsonb_array_elements(members_with_roles)
                      WITH ORDINALITY AS current(entry, position))
           WHERE team_id = ANY($2) AND jsonb_typeof(members_with_roles) = 'array'
             AND jsonb_array_length(members_with_roles) > 0"#,
        [
            user_id.into(),
            text_array(teams),
            email.map(str::to_owned).into(),
        ],
    ))
    .await?;
    Ok(())
}
