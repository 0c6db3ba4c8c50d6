//! `entra-sync-worker`: applies Entra's groups, members and app roles to LiteLLM's tables.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use worker::config::WorkerConfig;

#[derive(Parser)]
#[command(name = "entra-sync-worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ENTRA_SYNC_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume notifications and keep LiteLLM in sync (the default).
    Run,
    /// Compare every assigned group with LiteLLM and fix the differences.
    Sync {
        #[arg(long)]
        full: bool,
        /// Print the planned changes as JSON lines and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage the Graph change-notification subscriptions.
    Subscriptions {
        #[arg(value_parser = ["list", "ensure", "delete"])]
        action: String,
    },
    /// Show subscriptions, the last delta round, stream lag and reconciliation results.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log: who gained or lost which team or role, when, and why.
    Audit(worker::commands::AuditArgs),
    /// Removals held for a person (more than ENTRA_SYNC_REMOVAL_THRESHOLD at once): list them,
    /// release them (each checked against Graph again) or discard them.
    Removals {
        #[command(subcommand)]
        action: worker::removals::RemovalsAction,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    entra_sync_core::init_logging(cli.log_json);
    let command = cli.command.unwrap_or(Command::Run);
    let result = match command {
        Command::Run => worker::serve::run(cli.config).await,
        Command::Sync { full, dry_run } => worker::commands::sync(&cli.config, full, dry_run).await,
        Command::Subscriptions { action } => {
            worker::commands::subscriptions(&cli.config, &action).await
        }
        Command::Status { json } => worker::commands::status(&cli.config, json).await,
        Command::Audit(args) => worker::commands::audit(&cli.config, &args).await,
        Command::Removals { action } => worker::removals::removals(&cli.config, &action).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
