//! `entra-sync-webhook`: Microsoft Graph's notification endpoint.

use std::process::ExitCode;

use clap::Parser;
use webhook::config::WebhookConfig;

#[derive(Parser)]
#[command(name = "entra-sync-webhook", version, about)]
struct Cli {
    #[command(flatten)]
    config: WebhookConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    entra_sync_core::init_logging(cli.config.log_json);
    let settings = match cli.config.settings() {
        Ok(settings) => settings,
        Err(problem) => {
            tracing::error!("configuration: {problem}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(cli.config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(listen = %cli.config.listen, "cannot listen: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The address bound, not the one asked for: with port 0 the system picks it.
    let listen = listener.local_addr().unwrap_or(cli.config.listen);
    tracing::info!(%listen, stream = settings.stream, "webhook listening");
    match webhook::serve(listener, settings, entra_sync_core::shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}
