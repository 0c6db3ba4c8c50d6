//! `entra-sync-migrate`: applies or reverts entra-sync's own tables in LiteLLM's database.
//!
//! Deliberately smaller than sea-orm-migration's bundled CLI: its `fresh` and `reset` commands
//! drop every table in the database, which here would be LiteLLM's.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use entra_sync_core::settings::secret;
use migration::sea_orm::TransactionTrait;
use migration::{Migrator, MigratorTrait};
use secrecy::{ExposeSecret, SecretString};

#[derive(Parser)]
#[command(name = "entra-sync-migrate", version, about)]
struct Cli {
    /// LiteLLM's PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    database_url: SecretString,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "ENTRA_SYNC_LOG_JSON", default_value_t = false)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply every pending migration.
    Up,
    /// Revert the most recent migrations (one unless told otherwise).
    Down {
        /// How many migrations to revert.
        #[arg(short = 'n', long, default_value_t = 1, conflicts_with = "all")]
        steps: u32,
        /// Revert every applied migration, dropping all of entra-sync's tables.
        #[arg(long)]
        all: bool,
    },
    /// List the migrations and whether each is applied.
    Status,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    entra_sync_core::init_logging(cli.log_json);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let db = migration::database::connect(cli.database_url.expose_secret(), |_| {})
        .await
        .map_err(anyhow::Error::msg)?;
    // In one transaction: PostgreSQL's DDL is transactional, a half-done migration cannot be
    // left behind, and behind PgBouncer in transaction mode every statement needs one anyway.
    let transaction = db.begin().await?;
    match cli.command {
        Command::Up => Migrator::up(&transaction, None).await?,
        Command::Down { steps, all } => {
            Migrator::down(&transaction, (!all).then_some(steps)).await?
        }
        Command::Status => {
            for migration in Migrator::get_migration_with_status(&transaction).await? {
                #[allow(clippy::print_stdout)] // the command's output
                {
                    println!("{}\t{}", migration.status(), migration.name());
                }
            }
        }
    }
    transaction.commit().await?;
    Ok(())
}
