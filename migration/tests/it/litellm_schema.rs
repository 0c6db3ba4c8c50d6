//! The check of LiteLLM's schema that `run`, `sync` and `migrate status` make at start, on the
//! tests' LiteLLM schema: supported as it is, a missing column named, a newer schema said so.
#![allow(clippy::unwrap_used)]

use entra_sync_testkit::TestDatabase;
use migration::litellm_schema::{NEWEST_KNOWN_MIGRATION, SUPPORTED_LITELLM, SchemaCheck, check};
use migration::sea_orm::ConnectionTrait;

#[tokio::test]
async fn the_tested_schema_is_supported_and_a_missing_column_is_named() {
    let db = TestDatabase::litellm_only().await;
    assert_eq!(check(db.conn()).await.unwrap(), SchemaCheck::Supported);

    db.conn()
        .execute_unprepared(r#"ALTER TABLE "LiteLLM_TeamTable" DROP COLUMN policies"#)
        .await
        .unwrap();
    db.conn()
        .execute_unprepared(r#"DROP TABLE "LiteLLM_OrganizationMembership""#)
        .await
        .unwrap();
    let found = check(db.conn()).await.unwrap();
    assert_eq!(
        found,
        SchemaCheck::Missing(vec![
            "LiteLLM_TeamTable.policies".into(),
            "LiteLLM_OrganizationMembership".into()
        ])
    );
    let message = found.message().unwrap();
    assert!(message.contains("LiteLLM_TeamTable.policies"), "{message}");
    assert!(message.contains(SUPPORTED_LITELLM), "{message}");
}

#[tokio::test]
async fn a_newer_schema_with_everything_present_is_said_to_be_newer() {
    let db = TestDatabase::litellm_only().await;
    // As LiteLLM's `prisma migrate deploy` records its migrations.
    db.conn()
        .execute_unprepared(&format!(
            "CREATE TABLE _prisma_migrations (migration_name text, finished_at timestamptz, rolled_back_at timestamptz);
             INSERT INTO _prisma_migrations VALUES ('{NEWEST_KNOWN_MIGRATION}', now(), NULL);"
        ))
        .await
        .unwrap();
    assert_eq!(check(db.conn()).await.unwrap(), SchemaCheck::Supported);
    db.conn()
        .execute_unprepared(
            "INSERT INTO _prisma_migrations VALUES ('20991231000000_from_the_future', now(), NULL)",
        )
        .await
        .unwrap();
    let found = check(db.conn()).await.unwrap();
    assert_eq!(
        found,
        SchemaCheck::Newer("20991231000000_from_the_future".into())
    );
    assert!(found.message().unwrap().contains("newer"));
}
