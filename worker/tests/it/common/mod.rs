//! Helpers shared by the store's tests: fixed Entra objects, a fixed clock, and row readers.
#![allow(dead_code, clippy::unwrap_used)]

use chrono::{DateTime, NaiveDateTime, Utc};
use entity::litellm::{team, team_membership, user};
use entity::{GroupId, UserId};
use entra_sync_testkit::TestDatabase;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};
use worker::directory::EntraUser;
use worker::litellm_config::LiteLlmSettings;
use worker::store::{ApplyOptions, RemovalMode, Store};

pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn commit() -> ApplyOptions {
    ApplyOptions::commit(now())
}

pub fn dry_run() -> ApplyOptions {
    ApplyOptions::dry_run(now())
}

pub fn naive(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
}

pub fn group(n: u32) -> GroupId {
    GroupId::parse(&format!("9a000000-0000-4000-8000-{n:012}")).unwrap()
}

pub fn user_id(n: u32) -> UserId {
    UserId::parse(&format!("5b000000-0000-4000-8000-{n:012}")).unwrap()
}

pub fn entra_user(n: u32) -> EntraUser {
    EntraUser {
        id: user_id(n),
        user_principal_name: Some(format!("User{n}@Contoso.com")),
        mail: Some(format!("user{n}.mail@contoso.com")),
        display_name: Some(format!("User {n}")),
    }
}

pub fn users(range: std::ops::Range<u32>) -> Vec<EntraUser> {
    range.map(entra_user).collect()
}

pub fn settings(yaml: &str) -> LiteLlmSettings {
    LiteLlmSettings::parse(yaml, "test config", &|_| None).unwrap()
}

pub fn store(db: &TestDatabase, settings: LiteLlmSettings, mode: RemovalMode) -> Store {
    Store::new(db.conn().clone(), settings, mode)
}

pub fn plain_store(db: &TestDatabase) -> Store {
    store(db, LiteLlmSettings::default(), RemovalMode::Managed)
}

pub async fn team_row(db: &DatabaseConnection, id: &GroupId) -> team::Model {
    team::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .unwrap()
        .expect("team exists")
}

pub async fn user_row(db: &DatabaseConnection, user_id: &str) -> user::Model {
    user::Entity::find_by_id(user_id.to_owned())
        .one(db)
        .await
        .unwrap()
        .expect("user exists")
}

pub async fn membership_rows(db: &DatabaseConnection, id: &GroupId) -> Vec<team_membership::Model> {
    team_membership::Entity::find()
        .filter(team_membership::Column::TeamId.eq(id.to_string()))
        .order_by_asc(team_membership::Column::UserId)
        .all(db)
        .await
        .unwrap()
}

/// The user ids in a team's members_with_roles, in order.
pub async fn entry_ids(db: &DatabaseConnection, id: &GroupId) -> Vec<String> {
    team_row(db, id)
        .await
        .members_with_roles
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["user_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub async fn execute(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql).await.unwrap();
}

pub async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    db.query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

pub async fn scalar_text(db: &DatabaseConnection, sql: &str) -> String {
    db.query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap()
}

pub async fn managed_memberships(db: &DatabaseConnection) -> i64 {
    scalar_i64(db, "SELECT count(*) FROM entra_sync_managed_memberships").await
}

/// Every row of the tables entra-sync writes, as one JSON text, for before/after comparisons.
pub async fn snapshot(db: &DatabaseConnection, with_audit: bool) -> String {
    let mut tables = vec![
        r#"(SELECT coalesce(jsonb_agg(t ORDER BY team_id), '[]') FROM "LiteLLM_TeamTable" t)"#,
        r#"(SELECT coalesce(jsonb_agg(u ORDER BY user_id), '[]') FROM "LiteLLM_UserTable" u)"#,
        r#"(SELECT coalesce(jsonb_agg(m ORDER BY team_id, user_id), '[]') FROM "LiteLLM_TeamMembership" m)"#,
        "(SELECT coalesce(jsonb_agg(m ORDER BY group_id, user_id), '[]') FROM entra_sync_managed_memberships m)",
        "(SELECT coalesce(jsonb_agg(r ORDER BY user_id), '[]') FROM entra_sync_managed_roles r)",
    ];
    if with_audit {
        tables
            .push("(SELECT coalesce(jsonb_agg(a ORDER BY id), '[]') FROM entra_sync_audit_log a)");
    }
    let sql = format!("SELECT jsonb_build_array({})::text", tables.join(", "));
    db.query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap()
}

/// Adds a member the way an admin does in LiteLLM's UI: every trace, but not marked as entra-sync's.
pub async fn add_member_by_hand(
    db: &DatabaseConnection,
    team: &GroupId,
    user_id: &str,
    role: &str,
) {
    execute(
        db,
        &format!(
            r#"INSERT INTO "LiteLLM_UserTable" (user_id, user_email, teams, metadata)
               VALUES ('{user_id}', '{user_id}@hand.example', ARRAY['{team}'], '{{}}')
               ON CONFLICT (user_id) DO UPDATE SET teams = array_append("LiteLLM_UserTable".teams, '{team}');
               INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id) VALUES ('{user_id}', '{team}');
               UPDATE "LiteLLM_TeamTable"
                 SET members_with_roles = (CASE WHEN jsonb_typeof(members_with_roles) = 'array'
                     THEN members_with_roles ELSE '[]' END)
                     || jsonb_build_array(jsonb_build_object('user_id', '{user_id}', 'user_email', '{user_id}@hand.example', 'role', '{role}'))
                 WHERE team_id = '{team}';"#
        ),
    )
    .await;
}

/// A LiteLLM virtual key as LiteLLM's /key/generate leaves it (the columns the tests look at),
/// created at `created_at` (LiteLLM's UTC timestamp, as text).
pub async fn insert_key(
    db: &DatabaseConnection,
    token: &str,
    user_id: &str,
    team_id: Option<&str>,
    blocked: Option<bool>,
    created_at: &str,
) {
    let team = team_id.map_or("NULL".to_owned(), |t| format!("'{t}'"));
    let blocked = blocked.map_or("NULL".to_owned(), |b| b.to_string());
    execute(
        db,
        &format!(
            r#"INSERT INTO "LiteLLM_VerificationToken"
                 (token, key_alias, user_id, team_id, blocked, models, spend, metadata, created_at)
               VALUES ('{token}', 'alias-{token}', '{user_id}', {team}, {blocked}, ARRAY['gpt-4o'],
                       1.25, '{{"note": "kept"}}', '{created_at}')"#
        ),
    )
    .await;
}

/// A key's `blocked` and `metadata`, or `None` when the row is gone.
pub async fn key_state(
    db: &DatabaseConnection,
    token: &str,
) -> Option<(Option<bool>, serde_json::Value)> {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            format!(r#"SELECT blocked, metadata FROM "LiteLLM_VerificationToken" WHERE token = '{token}'"#),
        ))
        .await
        .unwrap()?;
    Some((
        row.try_get::<Option<bool>>("", "blocked").unwrap(),
        row.try_get::<serde_json::Value>("", "metadata").unwrap(),
    ))
}

/// Every row of LiteLLM's key tables, as text, for before/after comparisons.
pub async fn key_snapshot(db: &DatabaseConnection) -> String {
    let sql = r#"SELECT jsonb_build_array(
        (SELECT coalesce(jsonb_agg(k ORDER BY token), '[]') FROM "LiteLLM_VerificationToken" k),
        (SELECT coalesce(jsonb_agg(d ORDER BY token), '[]') FROM "LiteLLM_DeletedVerificationToken" d))::text"#;
    db.query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<String>(0)
        .unwrap()
}
