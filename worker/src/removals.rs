//! `entra-sync-worker removals list|release|discard`: the removals a unit of work held for a
//! person because it would have removed more than `ENTRA_SYNC_REMOVAL_THRESHOLD` memberships (or
//! key deletions) at once (see [`crate::store::Removals`]).

use std::io::Write;

use chrono::Utc;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::store::HeldRemoval;
use crate::sync::ReleaseReport;

/// `removals`' actions.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum RemovalsAction {
    /// The held removals: team, user, the keys blocked meanwhile, what held them and when.
    List {
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Applies held removals after checking each against Graph again: a member back in the
    /// group stays (and their keys are unblocked), the others leave with their keys.
    Release(Selection),
    /// Drops held removals: the members stay and their keys are unblocked. The next
    /// reconciliation finds any still due, and holds them again if they are still too many.
    Discard(Selection),
}

/// Which held removals: all of them, or these ids (from `removals list`).
#[derive(Clone, Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// Every held removal.
    #[arg(long)]
    pub all: bool,
    /// Held removals' ids (`--id 3 7` or `--id 3 --id 7`).
    #[arg(long = "id", num_args = 1..)]
    pub ids: Vec<i64>,
}

impl Selection {
    fn ids(&self) -> Option<Vec<i64>> {
        (!self.all).then(|| self.ids.clone())
    }
}

/// `removals list|release|discard`.
pub async fn removals(config: &WorkerConfig, action: &RemovalsAction) -> Result<()> {
    let db = crate::serve::open_database(config).await?;
    match action {
        RemovalsAction::List { json } => {
            let store = crate::store::Store::new(
                db,
                crate::litellm_config::LiteLlmSettings::default(),
                config.removal_mode,
            );
            let held = store.held_removals(None).await?;
            if *json {
                for hold in &held {
                    crate::commands::print_json_line(hold)?;
                }
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            write!(out, "{}", held_table(&held))
                .map_err(|e| Error::Output(format!("cannot write to stdout: {e}")))
        }
        RemovalsAction::Release(selection) | RemovalsAction::Discard(selection) => {
            let settings = config.litellm_settings()?;
            let rules = crate::serve::team_rules(config, &db).await?;
            let store =
                crate::serve::store(config, db.clone(), settings, rules, Default::default())?;
            let cache = store.litellm_cache().cloned();
            let graph = crate::graph::GraphClient::new(
                config.graph.clone().resolve()?,
                crate::graph::GraphMetrics::register(&mut Default::default()),
            )?;
            let syncer = crate::serve::syncer(config, graph, store);
            let now = Utc::now();
            let report = match action {
                RemovalsAction::Release(_) => syncer.release_removals(selection.ids(), now).await?,
                _ => syncer.discard_removals(selection.ids(), now).await?,
            };
            if let Some(cache) = cache {
                cache.flush(std::time::Duration::from_secs(3)).await;
            }
            for change in report.changes.list() {
                crate::commands::print_json_line(change)?;
            }
            eprintln!("{}", summary(&report));
            Ok(())
        }
    }
}

fn summary(report: &ReleaseReport) -> String {
    let mut line = format!(
        "released {} held removals; dropped {} (the member stays)",
        report.released, report.dropped
    );
    if !report.still_held.is_empty() {
        line.push_str(&format!(
            "; {} still held, their group could not be read:",
            report.still_held.len()
        ));
        for (team, error) in &report.still_held {
            line.push_str(&format!("\n  team {team}: {error}"));
        }
    }
    line
}

/// The held removals as a table for a human, oldest first.
fn held_table(held: &[HeldRemoval]) -> String {
    let header = [
        "ID",
        "HELD (UTC)",
        "TEAM",
        "USER",
        "KEYS",
        "REASON",
        "CAUSE",
    ];
    let rows: Vec<[String; 7]> = held
        .iter()
        .map(|hold| {
            let named = |id: &str, name: &Option<String>| match name {
                Some(name) if name != id => format!("{name} ({id})"),
                _ => id.to_owned(),
            };
            [
                hold.id.to_string(),
                hold.held_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                named(&hold.team_id, &hold.team_alias),
                named(&hold.user_id, &hold.user_email),
                hold.keys.len().to_string(),
                hold.reason.clone(),
                hold.cause.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    crate::commands::table(header, &rows, "(no held removals)")
}
