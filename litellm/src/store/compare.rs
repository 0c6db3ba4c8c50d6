//! A reconciliation's comparison in sets: what Graph says of every assigned group, streamed
//! into tables of the comparison's own with `COPY` as the groups are read, then compared in one statement
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
//!
//! Why unlogged tables named for the comparison rather than temporary ones: behind PgBouncer in
//! transaction mode each transaction may run on another server connection, where a session's
//! temporary tables are not; tables of the database are there for every one. They are dropped
//! when the comparison ends, however it ends, and a comparison drops those a worker stopped in
//! the middle left (their names carry the time they were made).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};
use sea_orm::sqlx::{Connection, Executor, PgConnection, Row};

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

/// The tables Graph's side and LiteLLM's are copied into, by the names the SQL gives them, and
/// their columns. Each comparison has its own ([`Tables`]).
const TABLES: [(&str, &str); 4] = [
    (
        "graph_teams",
        "(team_id text NOT NULL, team_alias text, unreadable bool NOT NULL)",
    ),
    (
        "graph_members",
        "(team_id text NOT NULL, entra_id text NOT NULL)",
    ),
    (
        "graph_users",
        "(entra_id text NOT NULL, email text, alias text)",
    ),
    (
        "litellm_teams",
        "(team_id text NOT NULL, team_alias text, members bigint NOT NULL,
          members_hash numeric NOT NULL, agrees bool NOT NULL)",
    ),
];

/// What every comparison's table names start with.
const TABLE_PREFIX: &str = "entra_sync_compare_";

/// A comparison's tables older than this were left by a worker stopped in the middle of one
/// (a resync of a large tenant takes minutes, not hours).
const LEFT_BEHIND_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(6);

/// Memory for the comparison's hash tables, for its statement only (`SET LOCAL`: behind
/// PgBouncer a session's setting would stay with a server connection others use): a million
/// pairs hashed in memory rather than in batches on disk.
const WORK_MEM: &str = "SET LOCAL work_mem = '64MB'";

/// One comparison's tables: `entra_sync_compare_<unix seconds>_<random>_<table>`.
#[derive(Clone)]
struct Tables {
    prefix: String,
}

impl Tables {
    fn new(now: DateTime<Utc>) -> Self {
        Self {
            // 8 random hex digits: two comparisons begun in the same second do not meet, and
            // the longest name stays within PostgreSQL's 63 characters.
            prefix: format!(
                "{TABLE_PREFIX}{}_{:08x}",
                now.timestamp(),
                uuid::Uuid::new_v4().as_u128() as u32
            ),
        }
    }

    /// The table the SQL calls `table`.
    fn name(&self, table: &str) -> String {
        format!("{}_{table}", self.prefix)
    }

    /// `sql` with this comparison's tables for the names it gives them.
    fn in_sql(&self, sql: &str) -> String {
        TABLES.iter().fold(sql.to_owned(), |sql, (table, _)| {
            sql.replace(table, &self.name(table))
        })
    }

    /// When a comparison's table was made, from its name; `None` for any other table.
    fn made_at(table: &str) -> Option<DateTime<Utc>> {
        let seconds = table.strip_prefix(TABLE_PREFIX)?.split('_').next()?;
        DateTime::from_timestamp(seconds.parse().ok()?, 0)
    }
}

type Driven<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Graph's side of a comparison, being copied: a session of its own ([`Db::session`]) that
/// writes nothing but its own tables, each statement a transaction of its own, so that no
/// transaction stays open while Graph is read.
pub struct Comparison {
    /// Taken when the comparison ends; one dropped before that drops its tables on its way.
    session: Option<PgConnection>,
    tables: Tables,
    /// LiteLLM's side, being read (as `COPY` lines for `litellm_teams`); stopped when this is
    /// dropped.
    litellm_side: JoinSet<Result<String>>,
    /// Users copied already: each once, however many groups list her.
    users: HashSet<UserId>,
    seed: i64,
}

impl Store {
    /// Starts a comparison: its session and empty tables (and drops the tables of comparisons
    /// a stopped worker left).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn begin_comparison(&self, now: DateTime<Utc>) -> Result<Comparison> {
        let tables = Tables::new(now);
        let session = prepare(self.db.session().await?, tables.clone(), now).await?;
        let seed = i64::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or_default(),
        );
        let mut litellm_side = JoinSet::new();
        let db = self.db.clone();
        litellm_side.spawn(async move { read_litellm_side(&db, seed).await });
        Ok(Comparison {
            session: Some(session),
            tables,
            litellm_side,
            users: HashSet::new(),
            seed,
        })
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
        self.copy(lines).await
    }

    /// Appends the lines to this comparison's tables.
    async fn copy(&mut self, lines: Lines) -> Result<()> {
        let session = self.session.as_mut().ok_or_else(ended)?;
        copy(session, &self.tables, lines).await
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
        // Copied while the comparison still holds its session: were this to fail, dropping
        // the comparison drops its tables.
        self.copy(lines).await?;
        let session = self.session.take().ok_or_else(ended)?;
        let rows = compare(session, self.tables.clone(), self.seed).await?;
        Ok(rows
            .iter()
            .filter_map(|team_id| GroupId::parse(team_id).ok())
            .collect())
    }
}

fn ended() -> Error {
    Error::Database(sea_orm::DbErr::Custom("the comparison has ended".into()))
}

/// `COPY`'s text format for the four tables.
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

/// Drops the tables of comparisons left behind, then makes this one's, empty. Every statement
/// here is sent as a simple query, its own transaction, as PgBouncer in transaction mode wants
/// (an extended-protocol statement prepared in one transaction may be missing in the next).
fn prepare(
    mut session: PgConnection,
    tables: Tables,
    now: DateTime<Utc>,
) -> Driven<'static, PgConnection> {
    Box::pin(async move {
        let existing = session
            .fetch_all(
                "SELECT tablename::text FROM pg_tables
                 WHERE schemaname = current_schema()
                   AND starts_with(tablename, 'entra_sync_compare_')",
            )
            .await
            .map_err(driver_error)?;
        for row in existing {
            let table: String = row.try_get(0).map_err(driver_error)?;
            if Tables::made_at(&table).is_some_and(|made| made < now - LEFT_BEHIND_AFTER) {
                tracing::info!(table, "dropping a comparison's table a stopped worker left");
                let drop = format!("DROP TABLE IF EXISTS \"{table}\"");
                session.execute(drop.as_str()).await.map_err(driver_error)?;
            }
        }
        for (table, columns) in TABLES {
            // Unlogged: nothing of it needs to survive a crash. No autovacuum: the comparison
            // analyzes each table itself once it is filled.
            let create = format!(
                "CREATE UNLOGGED TABLE {} {columns} WITH (autovacuum_enabled = false)",
                tables.name(table)
            );
            session
                .execute(create.as_str())
                .await
                .map_err(driver_error)?;
        }
        Ok(session)
    })
}

/// Appends the lines to their tables.
fn copy<'a>(session: &'a mut PgConnection, tables: &'a Tables, lines: Lines) -> Driven<'a, ()> {
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
                .copy_in_raw(&format!("COPY {} FROM STDIN", tables.name(table)))
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

/// The comparison itself, then its tables dropped (whether it succeeded or not) and the
/// session closed.
fn compare(mut session: PgConnection, tables: Tables, seed: i64) -> Driven<'static, Vec<String>> {
    Box::pin(async move {
        let differing = differing_teams(&mut session, &tables, seed).await;
        let dropped = drop_tables(session, tables).await;
        let differing = differing?;
        dropped?;
        Ok(differing)
    })
}

/// The teams [`DIFFERING`] names. One simple query, so one transaction however PgBouncer
/// hands out server connections, with its memory setting; the seed is written into it (an
/// integer), as a simple query takes no parameters.
fn differing_teams<'a>(
    session: &'a mut PgConnection,
    tables: &'a Tables,
    seed: i64,
) -> Driven<'a, Vec<String>> {
    Box::pin(async move {
        for (table, _) in TABLES {
            let analyze = format!("ANALYZE {}", tables.name(table));
            session
                .execute(analyze.as_str())
                .await
                .map_err(driver_error)?;
        }
        let differing = tables
            .in_sql(DIFFERING)
            .replace("$1", &format!("({seed}::bigint)"));
        let rows = session
            .fetch_all(format!("{WORK_MEM};\n{differing}").as_str())
            .await
            .map_err(driver_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<String, _>(0)
                    .map_err(|e| driver_error(e).into())
            })
            .collect()
    })
}

/// Drops a comparison's tables and closes its session.
fn drop_tables(mut session: PgConnection, tables: Tables) -> Driven<'static, ()> {
    Box::pin(async move {
        let names: Vec<String> = TABLES.iter().map(|(table, _)| tables.name(table)).collect();
        let drop = format!("DROP TABLE IF EXISTS {}", names.join(", "));
        session.execute(drop.as_str()).await.map_err(driver_error)?;
        session.close().await.map_err(driver_error)?;
        Ok(())
    })
}

impl Drop for Comparison {
    /// A comparison given up (Graph failed, the worker is stopping) drops its tables on its way
    /// out; one whose worker stops first leaves them to the next comparison's sweep.
    fn drop(&mut self) {
        let (Some(session), Ok(runtime)) =
            (self.session.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let tables = self.tables.clone();
        runtime.spawn(async move {
            if let Err(error) = drop_tables(session, tables).await {
                tracing::warn!(%error, "could not drop a comparison's tables; the next comparison will");
            }
        });
    }
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
    use super::{DIFFERING, TABLES, Tables, push_copy_value};
    use chrono::DateTime;

    #[test]
    fn a_comparisons_tables_are_its_own_and_say_when_they_were_made() {
        let made = DateTime::from_timestamp(1_765_000_000, 0).unwrap();
        let tables = Tables::new(made);
        for (table, _) in TABLES {
            let name = tables.name(table);
            // PostgreSQL cuts longer names to 63 bytes, and two tables would then share one.
            assert!(name.len() <= 63, "{name}");
            assert_eq!(Tables::made_at(&name), Some(made));
        }
        assert_ne!(
            tables.name("graph_teams"),
            Tables::new(made).name("graph_teams")
        );
        assert_eq!(Tables::made_at("entra_sync_delta_links"), None);
        assert_eq!(Tables::made_at("entra_sync_compare_soon_graph_teams"), None);
        let sql = tables.in_sql(DIFFERING);
        for (table, _) in TABLES {
            let qualified = tables.name(table);
            // Every mention is the comparison's table, none the bare name.
            assert!(sql.contains(&qualified), "{table}");
            assert_eq!(
                sql.matches(table).count(),
                sql.matches(&qualified).count(),
                "{table}"
            );
        }
    }

    #[test]
    fn copy_values_escape_what_copy_gives_meaning() {
        let mut line = String::new();
        push_copy_value(&mut line, Some("a\tb\\c\nd\re"));
        push_copy_value(&mut line, None);
        assert_eq!(line, "a\\tb\\\\c\\nd\\re\\N");
    }
}
