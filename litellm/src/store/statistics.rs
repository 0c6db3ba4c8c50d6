//! Fresh planner statistics for LiteLLM's user and membership tables during bulk syncs.
//!
//! A first sync turns a nearly empty LiteLLM database into one with thousands of users and
//! memberships within seconds, long before autovacuum analyses the tables. With the statistics of
//! an empty table, PostgreSQL plans the store's key lookups as sequential scans, which makes every
//! team cost milliseconds more per thousand rows. So, like any bulk loader, the store runs ANALYZE
//! once a table has doubled (grown by at least 1,000 rows) since it last did: ten times on the way
//! to a million rows, each reading a sample of at most 30,000. It does so off the commit path:
//! the commit returns, and a background task runs the ANALYZE.

use std::sync::{Arc, Mutex};

use migration::database::Db;
use sea_orm::{ConnectionTrait, FromQueryResult};

use super::change::Change;
use super::sql::stmt;

const MIN_GROWTH: u64 = 1_000;

#[derive(Debug)]
struct Table {
    name: &'static str,
    grown: u64,
    threshold: u64,
    /// Grown past its threshold, waiting for its ANALYZE.
    due: bool,
}

#[derive(Debug)]
pub(super) struct Statistics {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// LiteLLM's user table, then its membership table.
    tables: [Table; 2],
    /// Set when ANALYZE is refused (the role does not own LiteLLM's tables): autovacuum then has
    /// to do it, and the store stops asking.
    disabled: bool,
    /// A task is analysing the due tables.
    running: bool,
}

#[derive(FromQueryResult)]
struct Reltuples {
    rows: i64,
}

impl Statistics {
    pub fn new() -> Self {
        let table = |name| Table {
            name,
            grown: 0,
            threshold: MIN_GROWTH,
            due: false,
        };
        Self {
            state: Mutex::new(State {
                tables: [
                    table("\"LiteLLM_UserTable\""),
                    table("\"LiteLLM_TeamMembership\""),
                ],
                disabled: false,
                running: false,
            }),
        }
    }

    /// Counts committed growth; the tables that grew past their threshold are analysed in the
    /// background, so that the commit that made them grow returns at once (an ANALYZE of a large
    /// table takes a while, and waits for any other ANALYZE of it). One task at a time: the
    /// tables falling due while it runs are analysed by it, once however many commits made them
    /// due.
    pub fn after_commit(self: &Arc<Self>, db: &Db, changes: &[Change]) {
        let users = changes
            .iter()
            .filter(|c| matches!(c, Change::UserCreated { .. }))
            .count() as u64;
        let memberships = changes
            .iter()
            .filter(|c| matches!(c, Change::MemberAdded { .. }))
            .count() as u64;
        if users == 0 && memberships == 0 {
            return;
        }
        let start = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if state.disabled {
                return;
            }
            state.tables[0].grown += users;
            state.tables[1].grown += memberships;
            for table in state.tables.iter_mut().filter(|t| t.grown >= t.threshold) {
                table.grown = 0;
                table.due = true;
            }
            let start = !state.running && state.tables.iter().any(|t| t.due);
            state.running |= start;
            start
        };
        if start {
            let statistics = Arc::clone(self);
            let db = db.clone();
            tokio::spawn(async move { statistics.analyse_due(&db).await });
        }
    }

    /// Analyses the due tables one after the other, until none is due.
    async fn analyse_due(&self, db: &Db) {
        loop {
            let table = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let next = if state.disabled {
                    None
                } else {
                    state.tables.iter_mut().find(|t| t.due).map(|t| {
                        t.due = false;
                        t.name
                    })
                };
                match next {
                    Some(table) => table,
                    None => {
                        state.running = false;
                        return;
                    }
                }
            };
            let analysed = analyze(db, table).await;
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            match analysed {
                Ok(rows) => {
                    let threshold = rows.max(MIN_GROWTH);
                    for t in state.tables.iter_mut().filter(|t| t.name == table) {
                        t.threshold = threshold;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, table, "cannot ANALYZE; leaving statistics to autovacuum");
                    state.disabled = true;
                }
            }
        }
    }
}

/// Analyses one table and returns its row count estimate.
async fn analyze(db: &impl ConnectionTrait, table: &str) -> Result<u64, sea_orm::DbErr> {
    db.execute_unprepared(&format!("ANALYZE {table}")).await?;
    let rows = Reltuples::find_by_statement(stmt(
        "SELECT reltuples::bigint AS rows FROM pg_class WHERE oid = $1::regclass",
        [table.into()],
    ))
    .one(db)
    .await?
    .map_or(0, |r| u64::try_from(r.rows).unwrap_or(0));
    tracing::debug!(table, rows, "analysed");
    Ok(rows)
}
