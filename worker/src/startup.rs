//! Checks made before the worker starts, each failing with what to do about it.

use migration::MigratorTrait;
use migration::litellm_schema::SchemaCheck;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::error::{Error, Result};

/// LiteLLM's tables exist with every column entra-sync uses, and entra-sync's migrations have all
/// run. A LiteLLM schema newer than the supported releases, with everything present, is said once.
pub async fn check_database(db: &impl ConnectionTrait) -> Result<()> {
    let litellm = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            r#"SELECT (to_regclass('"LiteLLM_TeamTable"') IS NOT NULL
                   AND to_regclass('"LiteLLM_UserTable"') IS NOT NULL
                   AND to_regclass('"LiteLLM_TeamMembership"') IS NOT NULL
                   AND to_regclass('"LiteLLM_VerificationToken"') IS NOT NULL
                   AND to_regclass('"LiteLLM_DeletedVerificationToken"') IS NOT NULL)::int AS ok"#,
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<i32>(0).ok());
    if litellm != Some(1) {
        return Err(Error::Settings(
            "LiteLLM's tables are not in DATABASE_URL: run LiteLLM's migrations first (start LiteLLM once)".into(),
        ));
    }
    match migration::litellm_schema::check(db).await? {
        SchemaCheck::Supported => {}
        newer @ SchemaCheck::Newer(_) => {
            tracing::warn!("{}", newer.message().unwrap_or_default());
        }
        missing @ SchemaCheck::Missing(_) => {
            return Err(Error::Settings(missing.message().unwrap_or_default()));
        }
    }
    // No migrations table: none ran. Any other failure is the database's, said as such (a
    // lost prepared statement behind PgBouncer, say, is not a missing migration).
    let has_table = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT (to_regclass('{}') IS NOT NULL)::int",
                migration::MIGRATION_TABLE
            ),
        ))
        .await?
        .and_then(|row| row.try_get_by_index::<i32>(0).ok())
        == Some(1);
    let applied: Vec<String> = if has_table {
        db.query_all(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT version FROM {}", migration::MIGRATION_TABLE),
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.try_get_by_index::<String>(0).ok())
        .collect()
    } else {
        Vec::new()
    };
    let missing: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Settings(format!(
            "entra-sync's tables are not up to date ({} pending): run `entra-sync-migrate up` first",
            missing.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use entity::litellm::{team, team_membership, user};
    use sea_orm::{Iden, Iterable};

    fn required(table: &str) -> Vec<String> {
        migration::litellm_schema::REQUIRED
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, columns)| columns.iter().map(|c| (*c).to_owned()).collect())
            .unwrap_or_default()
    }

    /// The schema check names every column the entities read and write.
    #[test]
    fn the_required_columns_are_the_entities() {
        let columns = |names: Vec<String>| {
            let mut names = names;
            names.sort();
            names
        };
        assert_eq!(
            columns(team::Column::iter().map(|c| c.to_string()).collect()),
            columns(required("LiteLLM_TeamTable"))
        );
        assert_eq!(
            columns(user::Column::iter().map(|c| c.to_string()).collect()),
            columns(required("LiteLLM_UserTable"))
        );
        assert_eq!(
            columns(
                team_membership::Column::iter()
                    .map(|c| c.to_string())
                    .collect()
            ),
            columns(required("LiteLLM_TeamMembership"))
        );
    }
}
