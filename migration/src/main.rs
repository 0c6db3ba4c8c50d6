//! `entra-sync-migrate`: applies or reverts entra-sync's own tables in LiteLLM's database.
//!
//! Deliberately smaller than sea-orm-migration's bundled CLI: its `fresh` and `reset` commands
//! drop every table in the database, which here would be LiteLLM's.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use entra_sync_core::settings::secret;
use migration::database::{self, Transport};
use migration::litellm_schema::{self, SchemaCheck};
use migration::sea_orm::{DbErr, TransactionTrait};
use migration::{Migrator, MigratorTrait};
use secrecy::{ExposeSecret, SecretString};

#[derive(Parser)]
#[command(name = "entra-sync-migrate", version, about)]
struct Cli {
    /// LiteLLM's PostgreSQL database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    database_url: SecretString,
    /// Connect to a `DATABASE_URL` host other than loopback or a Unix socket without
    /// `sslmode=verify-full` (or `verify-ca`), whose password a man in the middle could read.
    #[arg(long, env = "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS")]
    allow_unverified_tls: bool,
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
    let url = cli.database_url.expose_secret();
    if let Transport::Unverified { host } =
        database::check_transport(url, cli.allow_unverified_tls).map_err(anyhow::Error::msg)?
    {
        tracing::warn!(
            host,
            "connecting to DATABASE_URL without verifying the server's certificate ({}=true)",
            database::ALLOW_UNVERIFIED_TLS
        );
    }
    let db = database::connect(url, |_| {})
        .await
        .map_err(anyhow::Error::msg)?;
    migrate(&db, cli.command).await.map_err(|error| {
        if database::is_lost_prepared_statement(&error) {
            anyhow::anyhow!("{error}: {}", database::PGBOUNCER_FIX)
        } else {
            error.into()
        }
    })
}

async fn migrate(db: &database::Db, command: Command) -> Result<(), DbErr> {
    // In one transaction: PostgreSQL's DDL is transactional, a half-done migration cannot be
    // left behind, and behind PgBouncer in transaction mode every statement needs one anyway.
    let transaction = db.begin().await?;
    match command {
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
            // LiteLLM's side of the database: what entra-sync uses must be there.
            match litellm_schema::check(&transaction).await? {
                SchemaCheck::Supported => {}
                newer @ SchemaCheck::Newer(_) => {
                    tracing::warn!("{}", newer.message().unwrap_or_default());
                }
                missing @ SchemaCheck::Missing(_) => {
                    return Err(DbErr::Custom(missing.message().unwrap_or_default()));
                }
            }
        }
    }
    transaction.commit().await?;
    Ok(())
}
