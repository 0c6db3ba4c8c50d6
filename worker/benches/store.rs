//! Store benchmark (not a test): prints how long the store takes for a 50,000-member team and for
//! 1,000 teams of 100 members, against LiteLLM's real schema on the local PostgreSQL.
//!
//! Run: `cargo bench -p worker --bench store`

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use entity::{GroupId, UserId};
use entra_sync_testkit::TestDatabase;
use worker::directory::EntraUser;
use worker::litellm_config::LiteLlmSettings;
use worker::store::{ApplyOptions, RemovalMode, Store};

fn group(n: u32) -> GroupId {
    GroupId::parse(&format!("9a000000-0000-4000-8000-{n:012}")).unwrap()
}

fn user(n: u32) -> EntraUser {
    EntraUser {
        id: UserId::parse(&format!("5b000000-0000-4000-8000-{n:012}")).unwrap(),
        user_principal_name: Some(format!("user{n}@contoso.com")),
        mail: None,
        display_name: Some(format!("User {n}")),
    }
}

fn commit() -> ApplyOptions {
    ApplyOptions::commit(Utc::now())
}

fn report(what: &str, took: Duration, changes: usize) {
    println!(
        "{what:<58} {:>9.3} s  {changes:>7} changes",
        took.as_secs_f64()
    );
}

async fn big_team() {
    let db = TestDatabase::new().await;
    let store = Store::new(
        db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    let g = group(1);
    store.ensure_team(&g, "Everyone", commit()).await.unwrap();
    let members: Vec<EntraUser> = (0..50_000).map(user).collect();

    let start = Instant::now();
    let changes = store.add_members(&g, &members, commit()).await.unwrap();
    report(
        "add 50,000 new members to one team",
        start.elapsed(),
        changes.len(),
    );

    let start = Instant::now();
    let changes = store.add_members(&g, &members, commit()).await.unwrap();
    report(
        "add the same 50,000 again (no-op)",
        start.elapsed(),
        changes.len(),
    );

    let start = Instant::now();
    let changes = store
        .replace_members(&g, &members[..45_000], commit())
        .await
        .unwrap();
    report(
        "replace with 45,000 of them (5,000 leave)",
        start.elapsed(),
        changes.len(),
    );

    let leaving: Vec<UserId> = members[..45_000].iter().map(|u| u.id.clone()).collect();
    let start = Instant::now();
    let changes = store.remove_members(&g, &leaving, commit()).await.unwrap();
    report("remove the other 45,000", start.elapsed(), changes.len());
}

async fn many_teams() {
    let db = TestDatabase::new().await;
    let store = Store::new(
        db.conn().clone(),
        LiteLlmSettings::default(),
        RemovalMode::Managed,
    );
    // 10,000 users, each in 10 of the 1,000 teams.
    let team_members = |t: u32| {
        (0..100)
            .map(|k| user((t * 100 + k) % 10_000))
            .collect::<Vec<_>>()
    };

    let start = Instant::now();
    let mut changes = 0;
    for t in 0..1_000 {
        changes += store
            .ensure_team(&group(t), &format!("Team {t}"), commit())
            .await
            .unwrap()
            .len();
        changes += store
            .add_members(&group(t), &team_members(t), commit())
            .await
            .unwrap()
            .len();
    }
    report(
        "1,000 teams x 100 members, one after another",
        start.elapsed(),
        changes,
    );

    let start = Instant::now();
    let mut changes = 0;
    for t in 0..1_000 {
        changes += store
            .ensure_team(&group(t), &format!("Team {t}"), commit())
            .await
            .unwrap()
            .len();
        changes += store
            .replace_members(&group(t), &team_members(t), commit())
            .await
            .unwrap()
            .len();
    }
    report(
        "the same 1,000 teams again (no-op check)",
        start.elapsed(),
        changes,
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only for bench.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    println!(
        "store benchmark (PostgreSQL at {})",
        entra_sync_testkit::server_url()
    );
    big_team().await;
    many_teams().await;
}
