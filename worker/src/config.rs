//! The worker's configuration, from the environment or the command line (see the README's table).

use std::path::PathBuf;

use secrecy::SecretString;

use crate::error::Result;
use crate::graph::GraphArgs;
use crate::litellm_config::LiteLlmSettings;
use crate::store::RemovalMode;

/// Settings every worker command needs.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerConfig {
    /// LiteLLM's PostgreSQL database (the variable LiteLLM itself uses).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: SecretString,

    /// LiteLLM's config.yaml, for default_team_params, default_internal_user_params, timezone
    /// and budget_reset_time. Unset: LiteLLM's defaults.
    #[arg(long, env = "LITELLM_CONFIG")]
    pub litellm_config: Option<PathBuf>,

    /// Which members a removal may take out of a team: `managed` (only those entra-sync added)
    /// or `mirror` (everyone not in the Entra group).
    #[arg(long, env = "ENTRA_SYNC_REMOVAL_MODE", value_enum, default_value_t = RemovalMode::Managed)]
    pub removal_mode: RemovalMode,

    #[command(flatten)]
    pub graph: GraphArgs,
}

impl WorkerConfig {
    /// Reads LiteLLM's config, resolving its `os.environ/NAME` references from this process's
    /// environment.
    pub fn litellm_settings(&self) -> Result<LiteLlmSettings> {
        match &self.litellm_config {
            None => Ok(LiteLlmSettings::default()),
            Some(path) => LiteLlmSettings::load(path, &|name| std::env::var(name).ok()),
        }
    }
}

fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value.to_owned()))
}
