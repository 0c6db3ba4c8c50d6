//! A reconciliation's comparison in sets: what Graph says of every assigned group, streamed
//! into temporary tables with `COPY` as the groups are read, then compared in one statement
//! ([`DIFFERING`]) with LiteLLM's side, which a statement of its own ([`LITELLM_SETS`]) reads
//! on another connection meanwhile, each table in one scan. Only the teams that may differ go
//! on to be planned and written under their locks ([`Store::sync_teams`]); a resync that finds
//! nothing is then a scan of each table instead of two index probes per membership.
//!
//! Why once per resync and by per-team hashes: compared slice by slice, each slice's joins read
//! LiteLLM's whole membership table (it has no index on `team_id`), and joining a million
//! (team, member) pairs with it spills to disk (17 s at 10,000 x 100 here). Aggregates per team
//! keep a few numbers for each of 10,000 teams instead. A team is reported equal only when
//! everything [`Store::sync_teams`] would write for it is there already; whatever the
//! comparison cannot rule out (a member LiteLLM knows by email only, members Graph could not
//! read, a team entra-sync blocked, members added by hand) counts as a difference, which the
//! full path then settles.
//!
//! The hashes are seeded anew for each comparison: two different sets of the same size whose
//! hashes sum alike (about one chance in 2^64 for a team) would not agree again next time.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use entity::{GroupId, UserId};
use sea_orm::sqlx::{self, Connection, PgConnection, Row};

use sea_orm::FromQueryResult;
use tokio::task::JoinSet;

use super::sql::stmt;
use super::{Store, TeamSync};
use crate::error::{Error, Result};
use migration::database::{Db, driver_error};

/// The statement that names the teams that may differ.
const DIFFERING: &str = include_str!("differing.sql");

/// LiteLLM's side, team by team.
const LITELLM_SETS: &str = include_str!("litellm_sets.sql");

/// The temporary tables Graph's side and LiteLLM's are copied into; they go with the session.
const TABLES: [&str; 4] = [
    "CREATE TEMPORARY TABLE graph_teams
       (team_id text NOT NULL, team_alias text, unreadable bool NOT NULL)",
    "CREATE TEMPORARY TABLE graph_members (team_id text NOT NULL, entra_id text NOT NULL)",
    "CREATE TEMPORARY TABLE graph_users (entra_id text NOT NULL, email text, alias text)",
    "CREATE TEMPORARY TABLE litellm_teams (team_id text NOT NULL, team_alias text,
       members bigint NOT NULL, members_hash numeric NOT NULL, agrees bool NOT NULL)",
];

/// Memory for the comparison's hash tables, for its session only: a million pairs hashed in
/// memory rather than in batches on disk.
const WORK_MEM: &str = "SET work_mem = '64MB'";

type Driven<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Graph's side of a comparison, being copied: a session of its own ([`Db::session`]) that
/// writes nothing but its temporary tables, each statement a transaction of its own, so that
/// no transaction stays open while Graph is read.
pub struct Comparison {
    session: PgConnection,
    /// LiteLLM's side, being read (as `COPY` lines for `litellm_teams`); stopped when this is
    /// dropped.
    litellm_side: JoinSet<Result<String>>,
    /// Users copied already: each once, however many groups list her.
    users: HashSet<UserId>,
    seed: i64,
}

impl Store {
    /// Starts a comparison: its session and empty tables. `None` behind PgBouncer in
    /// transaction mode, where a session's tables do not last: groups are then written without
    /// comparing first.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn begin_comparison(&self) -> Result<Option<Comparison>> {
        let Some(session) = self.db.session().await? else {
            return Ok(None);
        };
        let session = prepare(session).await?;
        let seed = i64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let mut litellm_side = JoinSet::new();
        let db = self.db.clone();
        litellm_side.spawn(async move { read_litellm_side(&db, seed).await });
        Ok(Some(Comparison {
            session,
            litellm_side,
            users: HashSet::new(),
            seed,
        }))
    }
}

impl Comparison {
    /// Copies these groups as Graph has them now (read whole), each with the members whose
    /// details an earlier call copied already (read once, listed by id here).
    #[tracing::instrument(skip_all, fields(teams = teams.len()), err(level = "debug"))]
    pub async fn add(&mut self, teams: &[(TeamSync<'_>, &[UserId])]) -> Result<()> {
        // Built before any await: nothing borrowed from `teams` is held across one.
        let mut lines = Lines::default();
        for (team, copied_before) in teams {
            lines.team(team);
            for member in team.members {
                lines.member(team.group, &member.id);
                if self.users.insert(member.id.clone()) {
                    lines.user(member);
                }
            }
            for user in *copied_before {
                lines.member(team.group, user);
            }
        }
        copy(&mut self.session, lines).await
    }

    /// The teams that may differ from what was copied; the others are as Graph says.
    #[tracing::instrument(skip_all, fields(users = self.users.len()), err(level = "debug"))]
    pub async fn differing(mut self) -> Result<HashSet<GroupId>> {
        let litellm_teams = match self.litellm_side.join_next().await {
            Some(Ok(read)) => read?,
            Some(Err(failure)) if failure.is_panic() => {
                std::panic::resume_unwind(failure.into_panic())
            }
            // Only a task aborted, which nothing does while the comparison lives.
            _ => {
                let stopped = "the read of LiteLLM's teams stopped".to_owned();
                return Err(Error::Database(sea_orm::DbErr::Custom(stopped)));
            }
        };
        let lines = Lines {
            litellm_teams,
            ..Lines::default()
        };
        copy(&mut self.session, lines).await?;
        let rows = compare(self.session, self.seed).await?;
        Ok(rows
            .iter()
            .filter_map(|team_id| GroupId::parse(team_id).ok())
            .collect())
    }
}

/// `COPY`'s text format for the three tables.
#[derive(Default)]
struct Lines {
    teams: String,
    members: String,
    users: String,
    litellm_teams: String,
}

impl Lines {
    fn team(&mut self, team: &TeamSync<'_>) {
        let line = &mut self.teams;
        line.push_str(team.group.as_ref());
        line.push('\t');
        push_copy_value(line, team.display_name);
        line.push('\t');
        line.push_str(if team.unreadable.is_empty() { "f" } else { "t" });
        line.push('\n');
    }

    fn member(&mut self, group: &GroupId, user: &UserId) {
        self.members.push_str(group.as_ref());
        self.members.push('\t');
        self.members.push_str(user.as_str());
        self.members.push('\n');
    }

    /// The email as LiteLLM would be given it (lower case), the display name as read.
    fn user(&mut self, user: &crate::directory::EntraUser) {
        let line = &mut self.users;
        line.push_str(user.id.as_str());
        line.push('\t');
        push_copy_value(line, user.email().as_deref());
        line.push('\t');
        push_copy_value(line, user.display_name.as_deref());
        line.push('\n');
    }
}

/// A value in `COPY`'s text format: `\N` for none, the characters it gives meaning escaped.
fn push_copy_value(buffer: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        buffer.push_str("\\N");
        return;
    };
    for character in value.chars() {
        match character {
            '\\' => buffer.push_str("\\\\"),
            '\t' => buffer.push_str("\\t"),
            '\n' => buffer.push_str("\\n"),
            '\r' => buffer.push_str("\\r"),
            other => buffer.push(other),
        }
    }
}

// The driver's calls run in boxed `Send` futures over owned values: its executor traits
// (higher-ranked over the connection's lifetime) keep the compiler from proving that an
// `async fn` holding them is `Send`.

/// The session's settings and empty tables.
fn prepare(mut session: PgConnection) -> Driven<'static, PgConnection> {
    Box::pin(async move {
        for statement in [WORK_MEM].iter().chain(TABLES.iter()) {
            sqlx::query(statement)
                .persistent(false)
                .execute(&mut session)
                .await
                .map_err(driver_error)?;
        }
        Ok(session)
    })
}

/// Appends the lines to their tables.
fn copy(session: &mut PgConnection, lines: Lines) -> Driven<'_, ()> {
    Box::pin(async move {
        for (table, text) in [
            ("graph_teams", lines.teams),
            ("graph_members", lines.members),
            ("graph_users", lines.users),
            ("litellm_teams", lines.litellm_teams),
        ] {
            if text.is_empty() {
                continue;
            }
            let mut copy = session
                .copy_in_raw(&format!("COPY {table} FROM STDIN"))
                .await
                .map_err(driver_error)?;
            for chunk in text.as_bytes().chunks(1 << 16) {
                copy.send(chunk).await.map_err(driver_error)?;
            }
            copy.finish().await.map_err(driver_error)?;
        }
        Ok(())
    })
}

/// The comparison itself, then the session closed (its tables go with it).
fn compare(mut session: PgConnection, seed: i64) -> Driven<'static, Vec<String>> {
    Box::pin(async move {
        for table in [
            "graph_teams",
            "graph_members",
            "graph_users",
            "litellm_teams",
        ] {
            sqlx::query(&format!("ANALYZE {table}"))
                .persistent(false)
                .execute(&mut session)
                .await
                .map_err(driver_error)?;
        }
        let rows = sqlx::query(DIFFERING)
            .persistent(false)
            .bind(seed)
            .fetch_all(&mut session)
            .await
            .map_err(driver_error)?;
        session.close().await.map_err(driver_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<String, _>(0)
                    .map_err(|e| driver_error(e).into())
            })
            .collect()
    })
}

/// A team as [`LITELLM_SETS`] reads it.
#[derive(FromQueryResult)]
struct LiteLlmTeam {
    team_id: String,
    team_alias: Option<String>,
    members: i64,
    members_hash: String,
    agrees: bool,
}

/// LiteLLM's side of the comparison, as `COPY` lines for `litellm_teams`: a statement that
/// reads, on a connection of its own, while Graph's side is copied.
async fn read_litellm_side(db: &Db, seed: i64) -> Result<String> {
    let mut lines = String::new();
    for team in LiteLlmTeam::find_by_statement(stmt(LITELLM_SETS, [seed.into()]))
        .all(db)
        .await?
    {
        lines.push_str(&team.team_id);
        lines.push('\t');
        push_copy_value(&mut lines, team.team_alias.as_deref());
        lines.push_str(&format!(
            "\t{}\t{}\t{}\n",
            team.members,
            team.members_hash,
            if team.agrees { "t" } else { "f" }
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::push_copy_value;

    #[test]
    fn copy_values_escape_what_copy_gives_meaning() {
        let mut line = String::new();
        push_copy_value(&mut line, Some("a\tb\\c\nd\re"));
        push_copy_value(&mut line, None);
        assert_eq!(line, "a\\tb\\\\c\\nd\\re\\N");
    }
}
