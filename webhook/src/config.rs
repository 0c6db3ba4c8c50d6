//! The webhook's configuration, from the environment or the command line (see the README's table).

use std::net::SocketAddr;

use secrecy::SecretString;

#[derive(Clone, Debug, clap::Args)]
pub struct WebhookConfig {
    /// Address to listen on.
    #[arg(long, env = "ENTRA_SYNC_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis holding the notification stream.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = secret)]
    pub redis_url: SecretString,

    /// Stream key notifications are appended to.
    #[arg(
        long,
        env = "ENTRA_SYNC_STREAM",
        default_value = "entra-sync:notifications"
    )]
    pub stream: String,

    /// The secret shared with Graph subscriptions; notifications carrying another are dropped.
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE", hide_env_values = true, value_parser = secret)]
    pub client_state: SecretString,

    /// Earlier secrets still accepted while subscriptions are rotated (comma-separated).
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE_PREVIOUS", hide_env_values = true, value_delimiter = ',', value_parser = secret)]
    pub client_state_previous: Vec<SecretString>,
}

fn secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(value.to_owned()))
}
