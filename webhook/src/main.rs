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

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    tracing::error!(
        listen = %cli.config.listen,
        "configuration is valid, but the webhook server is not built yet"
    );
    ExitCode::from(2)
}
