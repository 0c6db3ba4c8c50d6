//! `entra-sync-migrate` with a DATABASE_URL that does not work: the error names DATABASE_URL
//! and nothing it prints holds the URL's password.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const PASSWORD: &str = "s3cr3t-Pa55";

#[test]
fn a_database_url_that_fails_never_shows_its_password() {
    let server = entra_sync_testkit::server_addr();
    for url in [
        // A host that does not resolve (with verify-full, so that connecting is tried).
        format!("postgres://u:{PASSWORD}@unreachable.invalid:5432/db?sslmode=verify-full"),
        // A remote host without it: refused before connecting.
        format!("postgres://u:{PASSWORD}@unreachable.invalid:5432/db"),
        // Not a URL: sea-orm alone would quote it whole.
        format!("postgres://u:{PASSWORD}@[bad"),
        format!("postgres://u:{PASSWORD}@host:port/db"),
        // Not PostgreSQL.
        format!("mysql://u:{PASSWORD}@{server}/db"),
        // A real server refusing the role, the password also given as a parameter.
        format!(
            "postgres://entra_sync_nobody:{PASSWORD}@{server}/entra_sync_no_such_database\
             ?password={PASSWORD}&sslmode=disable"
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_entra-sync-migrate"))
            .arg("status")
            .env_clear()
            .env("DATABASE_URL", &url)
            // As much logging as there is, for a leak to have every chance to show.
            .env("RUST_LOG", "trace")
            .output()
            .expect("entra-sync-migrate runs");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{url}: {printed}");
        assert!(printed.contains("DATABASE_URL"), "{url}: {printed}");
        assert!(!printed.contains(PASSWORD), "{url}: {printed}");
    }
}
