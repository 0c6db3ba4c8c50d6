//! Settings the webhook and the worker both read, defined once so that their defaults can never
//! drift apart (a webhook and a worker on different streams would lose every notification).

use secrecy::SecretString;

/// The Redis stream the webhook appends to and the workers read.
#[derive(Clone, Debug, clap::Args)]
pub struct StreamArgs {
    /// Redis holding the notification stream.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379", hide_env_values = true, value_parser = secret)]
    pub redis_url: SecretString,

    /// The stream the webhook appends to and the workers read.
    #[arg(
        long,
        env = "ENTRA_SYNC_STREAM",
        default_value = "entra-sync:notifications"
    )]
    pub stream: String,
}

/// Reads a command-line or environment value as a secret: kept out of `Debug` output and logs.
/// An empty value is refused, with the setting's name, rather than taken for a secret.
pub fn secret(value: &str) -> Result<SecretString, String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    #[test]
    fn a_secret_is_kept_and_an_empty_one_refused() {
        assert_eq!(super::secret("s3cr3t").unwrap().expose_secret(), "s3cr3t");
        assert!(super::secret("").is_err());
        assert!(super::secret("   ").is_err());
    }

    #[test]
    fn both_binaries_read_the_same_stream_by_default() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            stream: super::StreamArgs,
        }
        let cli = Cli::parse_from(["test"]);
        assert_eq!(cli.stream.stream, "entra-sync:notifications");
        assert_eq!(
            cli.stream.redis_url.expose_secret(),
            "redis://127.0.0.1:6379"
        );
    }
}
