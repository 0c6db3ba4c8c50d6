//! `entra-sync-migrate` on a database holding LiteLLM's real schema: up, down and up again work,
//! and LiteLLM's own schema is byte-identical throughout.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::process::Command;

use entra_sync_testkit::TestDatabase;

fn migrate(db: &TestDatabase, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_entra-sync-migrate"))
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("entra-sync-migrate runs");
    assert!(
        out.status.success(),
        "entra-sync-migrate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The schema without entra-sync's tables, as pg_dump prints it (minus the per-run random key of
/// its `\restrict` lines).
fn litellm_schema(db: &TestDatabase) -> String {
    let out = Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--exclude-table=entra_sync_*",
            "-d",
        ])
        .arg(db.url())
        .output()
        .expect("pg_dump runs (PostgreSQL's client tools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn entra_sync_tables(db: &TestDatabase) -> Vec<String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d"])
        .arg(db.url())
        .args([
            "-c",
            "select table_name from information_schema.tables where table_schema = 'public' \
             and (table_name like 'entra_sync%' or table_name like 'seaql%') order by 1",
        ])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn has_index(db: &TestDatabase, name: &str) -> bool {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d"])
        .arg(db.url())
        .args([
            "-c",
            &format!("select count(*) from pg_indexes where indexname = '{name}'"),
        ])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout).trim() == "1"
}

#[tokio::test]
async fn up_down_up_leaves_litellm_schema_byte_identical() {
    let db = TestDatabase::litellm_only().await;
    let original = litellm_schema(&db);
    assert!(original.contains("\"LiteLLM_TeamTable\""));

    migrate(&db, &["up"]);
    assert_eq!(
        entra_sync_tables(&db),
        [
            "entra_sync_assigned_groups",
            "entra_sync_audit_log",
            "entra_sync_deletion_evidence",
            "entra_sync_delta_links",
            "entra_sync_departed_users",
            "entra_sync_failed_items",
            "entra_sync_group_owners",
            "entra_sync_held_removals",
            "entra_sync_leases",
            "entra_sync_managed_memberships",
            "entra_sync_managed_roles",
            "entra_sync_migrations",
            "entra_sync_nested_groups",
            "entra_sync_poll_state",
            "entra_sync_reconciliations",
            "entra_sync_subscriptions",
        ]
    );
    assert_eq!(
        litellm_schema(&db),
        original,
        "`up` changed LiteLLM's schema"
    );
    let status = migrate(&db, &["status"]);
    assert!(
        status.starts_with("Applied\tm20261128_000001_create_sync_tables"),
        "{status}"
    );

    migrate(&db, &["down", "--all"]);
    assert_eq!(entra_sync_tables(&db), ["entra_sync_migrations"]);
    assert_eq!(
        litellm_schema(&db),
        original,
        "`down` changed LiteLLM's schema"
    );
    assert!(migrate(&db, &["status"]).starts_with("Pending"));

    migrate(&db, &["up"]);
    assert_eq!(entra_sync_tables(&db).len(), 16);
    assert!(has_index(&db, "entra_sync_audit_log_member_removed_idx"));
    assert!(has_index(&db, "entra_sync_managed_roles_entra_user"));
    assert!(has_index(&db, "entra_sync_audit_log_user_idx"));
    // One step down reverts only the newest migration: held removals and deletion evidence,
    // the audit log's cause and lookups, the poll's state, nesting and owners, the failed items
    // and departed users, the audit log's index, then the leases.
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 14);
    assert!(has_index(&db, "entra_sync_audit_log_user_idx"));
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 14);
    assert!(!has_index(&db, "entra_sync_audit_log_user_idx"));
    assert!(has_index(&db, "entra_sync_managed_roles_entra_user"));
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 13);
    assert!(!has_index(&db, "entra_sync_managed_roles_entra_user"));
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 11);
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 9);
    assert!(has_index(&db, "entra_sync_audit_log_member_removed_idx"));
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 9);
    assert!(!has_index(&db, "entra_sync_audit_log_member_removed_idx"));
    migrate(&db, &["down"]);
    assert_eq!(entra_sync_tables(&db).len(), 7);
    migrate(&db, &["up"]);
    assert_eq!(litellm_schema(&db), original);
    // Up again with nothing pending is a no-op.
    migrate(&db, &["up"]);
}

#[test]
fn up_status_and_down_work_through_pgbouncer_in_transaction_mode() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::litellm_only());
    let through = db.url_through_pgbouncer();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_entra-sync-migrate"))
            .args(args)
            .env("DATABASE_URL", &through)
            .env("RUST_LOG", "warn")
            .output()
            .expect("entra-sync-migrate runs");
        assert!(
            out.status.success(),
            "entra-sync-migrate {args:?} through PgBouncer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["up"]);
    assert_eq!(entra_sync_tables(&db).len(), 16);
    assert!(!run(&["status"]).contains("Pending"));
    run(&["down", "--all"]);
    assert_eq!(entra_sync_tables(&db), ["entra_sync_migrations"]);
}

/// Runs `entra-sync-migrate` with only this `DATABASE_URL`: its exit code and stderr.
fn migrate_with(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_entra-sync-migrate"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("entra-sync-migrate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_remote_database_url_without_a_verified_certificate_stops_every_command_before_connecting() {
    // TEST-NET-1, which no server answers for: the refusal comes from the check before any
    // connection, the opt-out's error from the attempt to connect.
    let url = "postgres://litellm:s3cr3t-Pa55@192.0.2.1:5432/litellm?sslmode=require";
    for args in [&["up"][..], &["down"], &["down", "--all"], &["status"]] {
        let (code, stderr) = migrate_with(url, args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for expected in [
            "DATABASE_URL reaches 192.0.2.1 without sslmode=verify-full",
            "PostgreSQL over TLS",
            "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS=true",
        ] {
            assert!(
                stderr.contains(expected),
                "{args:?}: {expected} not in {stderr}"
            );
        }
        assert!(!stderr.contains("cannot connect"), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cr3t-Pa55"), "{args:?}: {stderr}");
    }
    // The opt-out, as a flag: it goes on to connect, which fails there.
    let (code, stderr) = migrate_with(url, &["--allow-unverified-tls", "status"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to DATABASE_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("PostgreSQL over TLS"), "{stderr}");
    assert!(!stderr.contains("s3cr3t-Pa55"), "{stderr}");
}
