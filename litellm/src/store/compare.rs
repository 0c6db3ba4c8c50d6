//! A resync's comparison in sets: what Graph says of a slice of groups, (team, member) pairs
//! streamed into a temporary table with `COPY`, compared with LiteLLM's rows in one statement
//! (hash joins over the slice, not one index probe per pair from Rust). Only the teams that may
//! differ go on to be planned and written under their locks ([`Store::sync_teams`]); a no-op
//! resync of a large tenant is then a few statements per slice.
//!
//! A team is reported equal only when everything [`Store::sync_teams`] would write for it is
//! already there; whatever this cannot rule out counts as a difference (the full path then
//! decides): a member LiteLLM knows by email only (to be linked), members Graph could not read,
//! a team entra-sync blocked.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use entity::GroupId;
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, Row};

use super::{RemovalMode, Store, TeamSync};
use crate::error::Result;
use migration::database::driver_error;

/// One statement: the teams of the slice (`$1` ids, `$2` names read, `$3` whether some member
/// could not be read, `$4` mirror mode) that differ from `graph_members`.
const DIFFERING: &str = r#"
WITH teams AS (
    SELECT x.team_id, x.team_alias, x.unreadable
    FROM unnest($1::text[], $2::text[], $3::bool[]) AS x(team_id, team_alias, unreadable)
),
listed AS (
    SELECT g.team_id, g.email, g.alias,
           by_id.user_id AS by_id, by_sso.user_id AS by_sso,
           coalesce(by_id.user_id, by_sso.user_id) AS user_id,
           CASE WHEN by_id.user_id IS NOT NULL THEN by_id.user_email ELSE by_sso.user_email END
               AS user_email,
           CASE WHEN by_id.user_id IS NOT NULL THEN by_id.user_alias ELSE by_sso.user_alias END
               AS user_alias,
           CASE WHEN by_id.user_id IS NOT NULL THEN by_id.teams ELSE by_sso.teams END AS teams
    FROM graph_members g
    LEFT JOIN "LiteLLM_UserTable" by_id ON by_id.user_id = g.entra_id
    LEFT JOIN "LiteLLM_UserTable" by_sso ON by_sso.sso_user_id = g.entra_id
),
entries AS (
    SELECT t.team_id, e.entry->>'user_id' AS user_id
    FROM "LiteLLM_TeamTable" t
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(t.members_with_roles) = 'array' THEN t.members_with_roles
             ELSE '[]'::jsonb END) AS e(entry)
    WHERE t.team_id IN (SELECT team_id FROM teams)
),
managed AS (
    SELECT m.group_id AS team_id, m.user_id, m.member,
           EXISTS (SELECT 1 FROM entra_sync_group_owners o
                   WHERE o.group_id = m.group_id AND o.user_id = m.user_id) AS owner
    FROM entra_sync_managed_memberships m
    WHERE m.group_id IN (SELECT team_id FROM teams)
),
member_differs AS (
    SELECT DISTINCT l.team_id FROM listed l
    WHERE l.user_id IS NULL
       OR l.by_id <> l.by_sso
       OR (l.email IS NOT NULL AND l.user_email IS DISTINCT FROM l.email)
       OR (l.alias ~ '\S' AND (l.user_alias IS NULL OR l.user_alias !~ '\S'))
       OR NOT (l.team_id = ANY (coalesce(l.teams, '{}')))
       OR NOT EXISTS (SELECT 1 FROM "LiteLLM_TeamMembership" r
                      WHERE r.user_id = l.user_id AND r.team_id = l.team_id)
       OR NOT EXISTS (SELECT 1 FROM entries e
                      WHERE e.team_id = l.team_id AND e.user_id = l.user_id)
       OR EXISTS (SELECT 1 FROM managed m
                  WHERE m.team_id = l.team_id AND m.user_id = l.user_id AND NOT m.member)
       OR EXISTS (SELECT 1 FROM entra_sync_held_removals h
                  WHERE h.group_id = l.team_id AND h.user_id = l.user_id)
),
leaver_differs AS (
    SELECT m.team_id FROM managed m
    WHERE (m.member OR NOT m.owner)
      AND NOT EXISTS (SELECT 1 FROM listed l
                      WHERE l.team_id = m.team_id AND l.user_id = m.user_id)
    UNION
    SELECT e.team_id FROM entries e
    WHERE $4
      AND NOT EXISTS (SELECT 1 FROM listed l
                      WHERE l.team_id = e.team_id AND l.user_id = e.user_id)
      AND NOT EXISTS (SELECT 1 FROM entra_sync_group_owners o
                      WHERE o.group_id = e.team_id AND o.user_id = e.user_id)
),
team_differs AS (
    SELECT x.team_id FROM teams x
    LEFT JOIN "LiteLLM_TeamTable" t ON t.team_id = x.team_id
    WHERE t.team_id IS NULL
       OR x.unreadable
       OR (x.team_alias IS NOT NULL AND t.team_alias IS DISTINCT FROM x.team_alias)
       OR (jsonb_typeof(t.metadata) = 'object' AND t.metadata ? 'entra_sync_blocked')
)
SELECT team_id FROM member_differs
UNION SELECT team_id FROM leaver_differs
UNION SELECT team_id FROM team_differs
"#;

impl Store {
    /// Of these teams as Graph describes them (read whole), those whose LiteLLM rows may differ:
    /// the others [`Self::sync_teams`] would leave as they are. A `COPY` of every (team,
    /// member) pair into a temporary table and one statement, in a transaction that writes
    /// nothing and locks nothing.
    #[tracing::instrument(skip_all, fields(teams = teams.len()), err(level = "debug"))]
    pub async fn differing_teams(&self, teams: &[TeamSync<'_>]) -> Result<HashSet<GroupId>> {
        if teams.is_empty() {
            return Ok(HashSet::new());
        }
        // Built before any await: nothing borrowed from `teams` is held across one.
        let mut lines = String::new();
        for team in teams {
            for member in team.members {
                copy_line(&mut lines, team.group, member);
            }
        }
        let ids: Vec<String> = teams.iter().map(|t| t.group.to_string()).collect();
        let names: Vec<Option<String>> = teams
            .iter()
            .map(|t| t.display_name.map(str::to_owned))
            .collect();
        let unreadable: Vec<bool> = teams.iter().map(|t| !t.unreadable.is_empty()).collect();
        let mirror = self.removal_mode == RemovalMode::Mirror;
        let txn = self.db.begin_driver().await?;
        let rows = compare(txn, lines, ids, names, unreadable, mirror).await?;
        let mut differing = HashSet::with_capacity(rows.len());
        for row in rows {
            let team_id: String = row.try_get(0).map_err(driver_error)?;
            if let Ok(group) = GroupId::parse(&team_id) {
                differing.insert(group);
            }
        }
        Ok(differing)
    }
}

/// The comparison itself, on owned values: a boxed `Send` future, since the driver's executor
/// traits (higher-ranked over the connection's lifetime) keep the compiler from proving that
/// an `async fn` holding them is `Send`.
fn compare(
    mut txn: sqlx::Transaction<'static, sqlx::Postgres>,
    lines: String,
    ids: Vec<String>,
    names: Vec<Option<String>>,
    unreadable: Vec<bool>,
    mirror: bool,
) -> Pin<Box<dyn Future<Output = Result<Vec<PgRow>>> + Send>> {
    Box::pin(async move {
        sqlx::query(
            "CREATE TEMPORARY TABLE graph_members
               (team_id text NOT NULL, entra_id text NOT NULL, email text, alias text)
             ON COMMIT DROP",
        )
        .persistent(false)
        .execute(&mut *txn)
        .await
        .map_err(driver_error)?;
        let mut copy = txn
            .copy_in_raw("COPY graph_members FROM STDIN")
            .await
            .map_err(driver_error)?;
        for chunk in lines.as_bytes().chunks(1 << 16) {
            copy.send(chunk).await.map_err(driver_error)?;
        }
        copy.finish().await.map_err(driver_error)?;
        sqlx::query("ANALYZE graph_members")
            .persistent(false)
            .execute(&mut *txn)
            .await
            .map_err(driver_error)?;
        let rows = sqlx::query(DIFFERING)
            .persistent(false)
            .bind(ids)
            .bind(names)
            .bind(unreadable)
            .bind(mirror)
            .fetch_all(&mut *txn)
            .await
            .map_err(driver_error)?;
        txn.rollback().await.map_err(driver_error)?;
        Ok(rows)
    })
}

/// One (team, member) pair as a line of `COPY`'s text format: the email as LiteLLM would be
/// given it (lower case), the display name as read.
fn copy_line(buffer: &mut String, group: &GroupId, member: &crate::directory::EntraUser) {
    buffer.push_str(group.as_ref());
    buffer.push('\t');
    buffer.push_str(member.id.as_str());
    buffer.push('\t');
    push_copy_value(buffer, member.email().as_deref());
    buffer.push('\t');
    push_copy_value(buffer, member.display_name.as_deref());
    buffer.push('\n');
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
