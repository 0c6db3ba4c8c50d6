//! The worker's one-shot commands: `sync`, `subscriptions`, `status` and `audit`. Each prints for a human
//! on stderr and, where a machine may read it, JSON on stdout.

use std::io::Write;

use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::graph::{GraphClient, GraphMetrics};
use crate::subscriptions::{self, SubscriptionManager};

fn graph(config: &WorkerConfig) -> Result<GraphClient> {
    Ok(GraphClient::new(
        config.graph.clone().resolve()?,
        GraphMetrics::register(&mut Registry::default()),
    )?)
}

pub(crate) fn print_json_line(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value)
        .map_err(|e| Error::Output(format!("cannot print as JSON: {e}")))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| Error::Output(format!("cannot write to stdout: {e}")))
}

/// `sync --full [--dry-run]`: a full reconciliation, its changes printed as JSON lines; a dry
/// run then adds a `team_differs_from_rule` line for each team whose parameters differ from its
/// team rule's (see [`crate::team_rules::RuleDrift`]). Without `--full`: the assignments polled
/// and one delta round.
pub async fn sync(config: &WorkerConfig, full: bool, dry_run: bool) -> Result<()> {
    let settings = config.litellm_settings()?;
    config.team_rules()?;
    let db = crate::serve::open_database(config).await?;
    let rules = crate::serve::team_rules(config, &db).await?;
    let store = crate::serve::store(config, db.clone(), settings, rules, Default::default())?;
    let cache = store.litellm_cache().cloned();
    let reporter = store.clone();
    let mut syncer = crate::serve::syncer(config, graph(config)?, store);
    if dry_run {
        syncer = syncer.dry_run();
    }
    let now = Utc::now();
    let changes = if full {
        syncer.reconcile(now).await?.changes
    } else {
        let mut changes = syncer.poll_assignments(now).await?.changes;
        changes.merge(syncer.delta_round(now).await?.changes);
        changes
    };
    if let Some(cache) = cache {
        cache.flush(std::time::Duration::from_secs(3)).await;
    }
    for change in changes.list() {
        print_json_line(change)?;
    }
    let verb = if dry_run { "would make" } else { "made" };
    eprintln!(
        "{} {verb} {} changes",
        if full { "reconciliation" } else { "sync" },
        changes.total()
    );
    let held = changes
        .by_kind()
        .find(|(kind, _)| *kind == "removal_held")
        .map_or(0, |(_, count)| count);
    if held > 0 {
        eprintln!(
            "{held} removals {} held for a person (more than ENTRA_SYNC_REMOVAL_THRESHOLD at once): \
             see `entra-sync-worker removals list`",
            if dry_run { "would be" } else { "are" }
        );
    }
    if full && dry_run {
        // Reported, never changed: rules apply when a team is created, and an admin's edit since
        // stands; the operator decides.
        let drift = reporter.rule_drift().await?;
        for team in &drift {
            print_json_line(team)?;
        }
        if !drift.is_empty() {
            eprintln!("{} teams differ from their team rule", drift.len());
        }
    }
    Ok(())
}

/// `subscriptions list|ensure|delete`.
pub async fn subscriptions(config: &WorkerConfig, action: &str) -> Result<()> {
    let target = config.subscription_target()?.ok_or_else(|| {
        Error::Settings("ENTRA_SYNC_PUBLIC_URL is required to manage subscriptions".into())
    })?;
    let manager = SubscriptionManager::new(
        graph(config)?,
        crate::serve::open_database(config).await?,
        target,
    );
    let now = Utc::now();
    match action {
        "list" => {
            for view in manager.list().await? {
                print_json_line(&view)?;
            }
        }
        "ensure" => {
            let actions = manager.ensure(now).await?;
            for action in &actions {
                print_json_line(action)?;
            }
            if actions.is_empty() {
                eprintln!("subscriptions are in place; nothing to do");
            }
        }
        "delete" => {
            for action in manager.delete_all().await? {
                print_json_line(&action)?;
            }
        }
        other => {
            return Err(Error::Settings(format!(
                "unknown subscriptions action {other:?}: list, ensure or delete"
            )));
        }
    }
    Ok(())
}

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub subscriptions: Vec<StoredSubscription>,
    pub subscription_keeper: Option<String>,
    pub last_delta_round: Option<DateTime<Utc>>,
    pub assigned_groups: u64,
    pub stream: Option<crate::stream::StreamStatus>,
    pub stream_error: Option<String>,
    pub last_reconciliation: Option<ReconciliationStatus>,
    /// Groups and users whose sync failed on their own, waiting for a retry (at most 100).
    pub failed_items: Vec<FailedItem>,
    /// Removals held for a person (`removals list` shows them).
    pub held_removals: i64,
}

#[derive(Debug, Serialize)]
pub struct FailedItem {
    pub kind: String,
    pub id: String,
    pub attempts: i32,
    pub error: String,
    pub first_failed_at: DateTime<Utc>,
    pub retry_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct StoredSubscription {
    pub id: String,
    pub resource: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct ReconciliationStatus {
    pub finished_at: DateTime<Utc>,
    pub drift: i64,
    pub error: Option<String>,
}

/// Reads the status from the database and Redis (Graph is not asked).
pub async fn read_status(config: &WorkerConfig) -> Result<Status> {
    let db = crate::serve::open_database(config).await?;
    let subscriptions = crate::store::subscriptions::stored(&db)
        .await?
        .into_iter()
        .map(|row| StoredSubscription {
            id: row.id,
            resource: row.resource,
            expires_at: row.expires_at,
        })
        .collect();
    let keeper = crate::store::lease::held(&db, subscriptions::LEASE)
        .await?
        .map(|(holder, _)| holder);
    let last_delta_round = crate::store::last_delta_round(&db).await?;
    let assigned_groups = crate::store::assigned_group_count(&db).await?;
    let (stream, stream_error) = match crate::stream::stream_status(
        config.stream.redis_url.expose_secret(),
        &config.stream.stream,
        &config.dead_letter_stream(),
    )
    .await
    {
        Ok(status) => (Some(status), None),
        Err(error) => (None, Some(error.to_string())),
    };
    let last_reconciliation =
        crate::store::last_reconciliation(&db)
            .await?
            .map(|run| ReconciliationStatus {
                finished_at: run.finished_at,
                drift: run.changes,
                error: run.error,
            });
    let failed_items = crate::store::failed_items(&db)
        .await?
        .into_iter()
        .map(|item| FailedItem {
            kind: item.kind,
            id: item.id,
            attempts: item.attempts,
            error: item.error,
            first_failed_at: item.first_failed_at,
            retry_at: item.retry_at,
        })
        .collect();
    let held_removals = crate::store::held_count(&db).await?;
    Ok(Status {
        held_removals,
        failed_items,
        subscriptions,
        subscription_keeper: keeper,
        last_delta_round,
        assigned_groups,
        stream,
        stream_error,
        last_reconciliation,
    })
}

/// `status [--json]`.
pub async fn status(config: &WorkerConfig, json: bool) -> Result<()> {
    let status = read_status(config).await?;
    if json {
        return print_json_line(&status);
    }
    let now = Utc::now();
    let mut rows = subscription_rows(&status, now);
    rows.extend(sync_rows(&status, now));
    rows.extend(failed_item_rows(&status, now));
    print_rows(&rows)
}

/// The subscriptions, their expiry, and who keeps them.
fn subscription_rows(status: &Status, now: DateTime<Utc>) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    if status.subscriptions.is_empty() {
        rows.push(("subscriptions".into(), "none".into()));
    }
    for s in &status.subscriptions {
        rows.push((
            format!("subscription {}", s.resource),
            format!(
                "{} expires {} (in {})",
                s.id,
                s.expires_at.format("%Y-%m-%d %H:%M UTC"),
                human_duration(s.expires_at - now)
            ),
        ));
    }
    rows.push((
        "subscription keeper".into(),
        status
            .subscription_keeper
            .clone()
            .unwrap_or_else(|| "nobody".into()),
    ));
    rows
}

/// The last round, the stream, the last reconciliation and the removals held.
fn sync_rows(status: &Status, now: DateTime<Utc>) -> Vec<(String, String)> {
    let ago = |at: DateTime<Utc>| human_duration(now - at);
    let mut rows: Vec<(String, String)> = vec![
        (
            "last delta round".into(),
            status
                .last_delta_round
                .map_or("never".into(), |at| format!("{} ago", ago(at))),
        ),
        ("assigned groups".into(), status.assigned_groups.to_string()),
    ];
    match (&status.stream, &status.stream_error) {
        (Some(s), _) => {
            rows.push(("stream lag".into(), s.lag.to_string()));
            rows.push(("stream pending".into(), s.pending.to_string()));
            rows.push(("dead letters".into(), s.dead_letters.to_string()));
        }
        (None, error) => rows.push((
            "stream".into(),
            format!("unreadable: {}", error.as_deref().unwrap_or("?")),
        )),
    }
    rows.push((
        "last reconciliation".into(),
        match &status.last_reconciliation {
            None => "never".into(),
            Some(r) => match &r.error {
                Some(error) => format!("{} ago, failed: {error}", ago(r.finished_at)),
                None => format!("{} ago, drift fixed: {}", ago(r.finished_at), r.drift),
            },
        },
    ));
    rows.push((
        "held removals".into(),
        match status.held_removals {
            0 => "none".into(),
            held => format!("{held}, waiting for a person: entra-sync-worker removals list"),
        },
    ));
    rows
}

/// Each failed item, its attempts and its next retry.
fn failed_item_rows(status: &Status, now: DateTime<Utc>) -> Vec<(String, String)> {
    if status.failed_items.is_empty() {
        return vec![("failed items".into(), "none".into())];
    }
    status
        .failed_items
        .iter()
        .map(|item| {
            (
                format!("failed {} {}", item.kind, item.id),
                format!(
                    "{} attempts since {} ago, next in {}: {}",
                    item.attempts,
                    human_duration(now - item.first_failed_at),
                    human_duration(item.retry_at - now),
                    item.error
                ),
            )
        })
        .collect()
}

/// Key-value rows, aligned, with control characters escaped.
fn print_rows(rows: &[(String, String)]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let rows: Vec<(String, String)> = rows
        .iter()
        .map(|(key, value)| (printable(key).into_owned(), printable(value).into_owned()))
        .collect();
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (key, value) in rows {
        writeln!(out, "{key:<width$}  {value}")
            .map_err(|e| Error::Output(format!("cannot write to stdout: {e}")))?;
    }
    Ok(())
}

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...): names and messages come
/// from Entra and Graph, and an ANSI escape sequence or a line break in one must not rewrite an
/// operator's terminal or forge a line of the table.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn human_duration(d: chrono::Duration) -> String {
    let seconds = d.num_seconds();
    let sign = if seconds < 0 { "-" } else { "" };
    let s = seconds.unsigned_abs();
    match s {
        0..=119 => format!("{sign}{s}s"),
        120..=7199 => format!("{sign}{}m", s / 60),
        7200..=172_799 => format!("{sign}{}h", s / 3600),
        _ => format!("{sign}{}d", s / 86_400),
    }
}

/// `audit`'s arguments: which entries, and how to print them.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditArgs {
    /// A user: LiteLLM user id, Entra object id or email.
    #[arg(long)]
    pub user: Option<String>,
    /// A team: its id (the group's object id) or its alias.
    #[arg(long)]
    pub team: Option<String>,
    /// Entries this recent (`7d`, `36h`, `90min`) or since this time (`2026-11-30`,
    /// `2026-11-30T09:00:00Z`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<Since>,
    /// Entries of this kind (`member_removed`, `team_created`, ...); repeat for several.
    #[arg(long)]
    pub kind: Vec<String>,
    /// At most this many entries, the newest.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: a time, or how long before now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    Ago(std::time::Duration),
    At(DateTime<Utc>),
}

impl Since {
    fn at(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::At(at) => at,
            Self::Ago(ago) => chrono::Duration::from_std(ago)
                .ok()
                .and_then(|ago| now.checked_sub_signed(ago))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

/// Parses `--since`: an RFC 3339 time, a date (midnight UTC), or a duration.
pub fn parse_since(text: &str) -> std::result::Result<Since, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(Since::At(at.with_timezone(&Utc)));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(Since::At(day.and_time(chrono::NaiveTime::MIN).and_utc()));
    }
    humantime::parse_duration(text)
        .map(Since::Ago)
        .map_err(|_| {
            format!("{text:?} is neither a duration (7d, 36h) nor a time (2026-11-30, RFC 3339)")
        })
}

/// `audit`: the audit log's entries that match, newest first: when, what, which team and user,
/// and what made the change.
pub async fn audit(config: &WorkerConfig, args: &AuditArgs) -> Result<()> {
    let db = crate::serve::open_database(config).await?;
    let store = crate::store::Store::new(
        db,
        crate::litellm_config::LiteLlmSettings::default(),
        config.removal_mode,
    );
    let filter = crate::store::AuditFilter {
        user: args.user.clone(),
        team: args.team.clone(),
        since: args.since.map(|since| since.at(Utc::now())),
        kinds: args.kind.clone(),
        limit: args.limit,
    };
    let entries = store.audit_entries(&filter).await?;
    if args.json {
        for entry in &entries {
            print_json_line(entry)?;
        }
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    let table = audit_table(&entries);
    write!(out, "{table}").map_err(|e| Error::Output(format!("cannot write to stdout: {e}")))
}

/// The entries as a table for a human: one line each, columns aligned.
fn audit_table(entries: &[crate::store::AuditEntry]) -> String {
    let header = ["WHEN (UTC)", "WHAT", "TEAM", "USER", "CAUSE", "DETAIL"];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|entry| {
            let named = |id: &Option<String>, name: &Option<String>| match (id, name) {
                (Some(id), Some(name)) if name != id => format!("{name} ({id})"),
                (Some(id), _) => id.clone(),
                (None, _) => "-".to_owned(),
            };
            [
                entry.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                entry.kind.clone(),
                named(&entry.team_id, &entry.team_alias),
                named(&entry.user_id, &entry.user_email),
                entry.cause.clone().unwrap_or_else(|| "-".to_owned()),
                detail_summary(&entry.detail),
            ]
        })
        .collect();
    table(header, &rows, "(no entries)")
}

/// Rows for a human under `header`, columns aligned, every cell [`printable`]; `empty` when
/// there are none.
pub(crate) fn table<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    empty: &str,
) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.clone().map(|cell| printable(&cell).into_owned()))
        .collect();
    let header = header.map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    if rows.is_empty() {
        table.push_str(empty);
        table.push('\n');
    }
    table
}

/// What an entry's detail adds to its kind, team and user: the other fields, `key=value`.
fn detail_summary(detail: &serde_json::Value) -> String {
    let Some(fields) = detail.as_object() else {
        return String::new();
    };
    fields
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "kind" | "team_id" | "user_id"))
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => format!("{key}={text}"),
            other => format!("{key}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_a_date_or_a_duration_before_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |text: &str| parse_since(text).map(|since| since.at(now).to_rfc3339());
        assert_eq!(at("7d").unwrap(), "2026-11-25T10:00:00+00:00");
        assert_eq!(at("36h").unwrap(), "2026-11-30T22:00:00+00:00");
        assert_eq!(at("2026-11-30").unwrap(), "2026-11-30T00:00:00+00:00");
        assert_eq!(
            at("2026-11-30T09:30:00+01:00").unwrap(),
            "2026-11-30T08:30:00+00:00"
        );
        assert!(at("yesterday").unwrap_err().contains("neither a duration"));
    }

    #[test]
    fn the_table_aligns_its_columns_and_names_teams_and_users() {
        let entry = crate::store::AuditEntry {
            id: 1,
            recorded_at: DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            kind: "member_removed".into(),
            team_id: Some("g-2".into()),
            team_alias: Some("Research".into()),
            user_id: Some("u-1".into()),
            user_email: Some("ada@contoso.example".into()),
            cause: Some("delta_round".into()),
            detail: serde_json::json!({"kind": "member_removed", "team_id": "g-2", "user_id": "u-1"}),
        };
        let table = audit_table(&[entry]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert_eq!(
            lines[1],
            "2026-12-02 10:00:00  member_removed  Research (g-2)  ada@contoso.example (u-1)  delta_round"
        );
        assert_eq!(lines[0].find("WHAT"), lines[1].find("member_removed"));
        assert_eq!(
            audit_table(&[]),
            "WHEN (UTC)  WHAT  TEAM  USER  CAUSE  DETAIL\n(no entries)\n"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_every_other_character_kept() {
        assert_eq!(printable("Équipe Ünïcode – 研究"), "Équipe Ünïcode – 研究");
        assert_eq!(
            printable("a\u{1b}[31mb\nc\td\r\u{7f}\u{9b}2J"),
            r"a\u{1b}[31mb\nc\td\r\u{7f}\u{9b}2J"
        );
    }
}
