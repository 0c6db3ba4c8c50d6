//! The webhook's configuration, from the environment or the command line (see the README's table).

use std::net::SocketAddr;
use std::time::Duration;

use entra_sync_core::settings::{StreamArgs, secret};
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone, Debug, clap::Args)]
pub struct WebhookConfig {
    /// Address to listen on.
    #[arg(long, env = "ENTRA_SYNC_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub stream: StreamArgs,

    /// The secret shared with Graph subscriptions; notifications carrying another are dropped.
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE", hide_env_values = true, value_parser = secret)]
    pub client_state: SecretString,

    /// Earlier secrets still accepted while subscriptions are rotated (comma-separated).
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE_PREVIOUS", hide_env_values = true, value_delimiter = ',', value_parser = secret)]
    pub client_state_previous: Vec<SecretString>,

    /// The tenant whose notifications are accepted.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub azure_tenant_id: Option<String>,
    #[arg(long, env = "MICROSOFT_TENANT", hide = true)]
    pub microsoft_tenant: Option<String>,

    /// Answer 503 when Redis has not stored a request's notifications within this many
    /// milliseconds (Graph gives an endpoint 3 seconds).
    #[arg(long, env = "ENTRA_SYNC_WEBHOOK_DEADLINE_MS", default_value_t = 2000)]
    pub deadline_ms: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "ENTRA_SYNC_WEBHOOK_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Close a connection whose request headers have not all arrived within this many
    /// milliseconds, and an idle keep-alive connection after as long.
    #[arg(
        long,
        env = "ENTRA_SYNC_WEBHOOK_HEADER_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub header_timeout_ms: u64,

    /// Answer 408 when a request's whole body has not arrived within this many milliseconds.
    #[arg(
        long,
        env = "ENTRA_SYNC_WEBHOOK_BODY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub body_timeout_ms: u64,

    /// Answer 503 (Graph retries later) while more entries than this wait for the workers.
    #[arg(long, env = "ENTRA_SYNC_MAX_BACKLOG", default_value_t = 100_000)]
    pub max_backlog: i64,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "ENTRA_SYNC_LOG_JSON")]
    pub log_json: bool,
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis_url: SecretString,
    pub stream: String,
    pub client_state: SecretString,
    pub client_state_previous: Vec<SecretString>,
    pub tenant_id: String,
    pub deadline: Duration,
    pub body_limit: usize,
    /// How long a client may take to send its request headers (and a keep-alive connection may
    /// stay idle).
    pub header_timeout: Duration,
    /// How long a client may take to send a whole body, however it paces it.
    pub body_timeout: Duration,
    pub max_backlog: i64,
    /// How often the backlog is measured.
    pub backlog_interval: Duration,
}

impl WebhookConfig {
    pub fn settings(&self) -> Result<Settings, String> {
        let tenant_id = self
            .azure_tenant_id
            .clone()
            .or_else(|| self.microsoft_tenant.clone())
            .filter(|t| !t.trim().is_empty())
            .ok_or("AZURE_TENANT_ID (or MICROSOFT_TENANT) is required: notifications from other tenants are refused")?;
        // The URL may hold a password: the error never repeats it, nor Redis' own message.
        redis::Client::open(self.stream.redis_url.expose_secret())
            .map_err(|_| "REDIS_URL is not a Redis URL (redis:// or rediss://)".to_owned())?;
        if !(100..=2900).contains(&self.deadline_ms) {
            return Err("ENTRA_SYNC_WEBHOOK_DEADLINE_MS must be between 100 and 2900: Graph counts answers after about 2.9 s as slow".into());
        }
        // Slow clients hold a connection each for this long: minutes would undo the point.
        for (name, value) in [
            (
                "ENTRA_SYNC_WEBHOOK_HEADER_TIMEOUT_MS",
                self.header_timeout_ms,
            ),
            ("ENTRA_SYNC_WEBHOOK_BODY_TIMEOUT_MS", self.body_timeout_ms),
        ] {
            if !(100..=60_000).contains(&value) {
                return Err(format!(
                    "{name} must be between 100 and 60000 (a minute): got {value}"
                ));
            }
        }
        Ok(Settings {
            redis_url: self.stream.redis_url.clone(),
            stream: self.stream.stream.clone(),
            client_state: self.client_state.clone(),
            client_state_previous: self.client_state_previous.clone(),
            tenant_id,
            deadline: Duration::from_millis(self.deadline_ms),
            body_limit: self.body_limit,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_backlog: self.max_backlog,
            backlog_interval: Duration::from_millis(500),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: WebhookConfig,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec![
            "webhook",
            "--client-state",
            "sekrit-value",
            "--client-state-previous",
            "old-1,old-2",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .config
            .settings()
    }

    #[test]
    fn the_tenant_is_required_and_the_deadline_stays_under_graphs_limit() {
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("AZURE_TENANT_ID"), "{e}");
        let settings = parse(&["--microsoft-tenant", "t"]).unwrap();
        assert_eq!(settings.tenant_id, "t");
        assert_eq!(settings.client_state_previous.len(), 2);
        assert_eq!(settings.deadline, Duration::from_secs(2));
        let e = parse(&["--azure-tenant-id", "t", "--deadline-ms", "3000"]).unwrap_err();
        assert!(e.contains("ENTRA_SYNC_WEBHOOK_DEADLINE_MS"), "{e}");
    }

    #[test]
    fn slow_client_timeouts_default_to_5_and_10_seconds_and_stay_within_a_minute() {
        let settings = parse(&["--azure-tenant-id", "t"]).unwrap();
        assert_eq!(settings.header_timeout, Duration::from_secs(5));
        assert_eq!(settings.body_timeout, Duration::from_secs(10));
        let settings = parse(&[
            "--azure-tenant-id",
            "t",
            "--header-timeout-ms",
            "100",
            "--body-timeout-ms",
            "60000",
        ])
        .unwrap();
        assert_eq!(settings.header_timeout, Duration::from_millis(100));
        assert_eq!(settings.body_timeout, Duration::from_secs(60));
        let huge = u64::MAX.to_string();
        for (flag, name) in [
            (
                "--header-timeout-ms",
                "ENTRA_SYNC_WEBHOOK_HEADER_TIMEOUT_MS",
            ),
            ("--body-timeout-ms", "ENTRA_SYNC_WEBHOOK_BODY_TIMEOUT_MS"),
        ] {
            for value in ["0", "99", "60001", huge.as_str()] {
                let e = parse(&["--azure-tenant-id", "t", flag, value]).unwrap_err();
                assert!(e.contains(name), "{flag} {value}: {e}");
            }
        }
    }

    #[test]
    fn a_malformed_redis_url_is_named_without_its_password() {
        for url in ["redis://:s3cr3t@[bad", "http://:s3cr3t@host:6379", "s3cr3t"] {
            let e = parse(&["--azure-tenant-id", "t", "--redis-url", url]).unwrap_err();
            assert!(e.contains("REDIS_URL"), "{url}: {e}");
            assert!(!e.contains("s3cr3t"), "{url}: {e}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let settings = parse(&["--azure-tenant-id", "t"]).unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("sekrit-value") && !shown.contains("old-1"),
            "{shown}"
        );
    }
}
