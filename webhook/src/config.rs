//! The webhook's configuration, from the environment or the command line (see the README's table).

use std::net::SocketAddr;
use std::time::Duration;

use entra_sync_core::settings::{
    CLIENT_STATE_MAX_CHARS, CLIENT_STATE_MIN_CHARS, StreamArgs, Tenant, check_client_state, secret,
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone, Debug, clap::Args)]
pub struct WebhookConfig {
    /// Address to listen on.
    #[arg(long, env = "ENTRA_SYNC_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub stream: StreamArgs,

    /// The secret shared with Graph subscriptions (32 to 128 characters); notifications
    /// carrying another are dropped.
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE", hide_env_values = true, value_parser = secret)]
    pub client_state: SecretString,

    /// Earlier secrets still accepted while subscriptions are rotated (comma-separated); one
    /// shorter than 32 characters is accepted with a warning, to rotate away from it.
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE_PREVIOUS", hide_env_values = true, value_delimiter = ',', value_parser = secret)]
    pub client_state_previous: Vec<SecretString>,

    /// The tenant whose notifications are accepted: its id (a GUID), as notifications carry it.
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
        let tenant_id = self.tenant_id()?;
        check_client_state("ENTRA_SYNC_CLIENT_STATE", &self.client_state)?;
        self.check_previous_client_states()?;
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

    /// The tenant's id. Notifications carry the tenant's GUID, never a domain name: a domain
    /// name here would have every notification dropped, so it is refused at start.
    fn tenant_id(&self) -> Result<String, String> {
        let (name, value) = [
            ("AZURE_TENANT_ID", &self.azure_tenant_id),
            ("MICROSOFT_TENANT", &self.microsoft_tenant),
        ]
        .into_iter()
        .find_map(|(name, value)| {
            value
                .as_deref()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
        .ok_or("AZURE_TENANT_ID (or MICROSOFT_TENANT) is required: notifications from other tenants are refused")?;
        match Tenant::parse(name, value)? {
            Tenant::Id(id) => Ok(id),
            Tenant::Domain(domain) => Err(format!(
                "{name} {domain:?} is a domain name: the webhook needs the tenant's id (a GUID, \
                 Overview > Tenant ID in the Entra admin center), which is what notifications \
                 carry"
            )),
        }
    }

    /// Earlier clientStates were accepted before the 32-character rule: one shorter is still
    /// accepted, so that subscriptions made with it keep being heard while they are re-created
    /// with the new one, with a warning to remove it then. One longer than Graph allows was
    /// never a subscription's: a mistake, refused.
    fn check_previous_client_states(&self) -> Result<(), String> {
        for previous in &self.client_state_previous {
            let chars = previous.expose_secret().chars().count();
            if chars > CLIENT_STATE_MAX_CHARS {
                return Err(format!(
                    "ENTRA_SYNC_CLIENT_STATE_PREVIOUS holds a value longer than \
                     {CLIENT_STATE_MAX_CHARS} characters, which Graph never accepted as a clientState"
                ));
            }
            if chars < CLIENT_STATE_MIN_CHARS {
                tracing::warn!(
                    "ENTRA_SYNC_CLIENT_STATE_PREVIOUS holds a value shorter than \
                     {CLIENT_STATE_MIN_CHARS} characters: accepted while the subscriptions are \
                     re-created with ENTRA_SYNC_CLIENT_STATE; remove it once they are"
                );
            }
        }
        Ok(())
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

    /// A clientState as long as it must be.
    const SECRET: &str = "sekrit-value-sekrit-value-sekrit-value";
    const TENANT: &str = "7d3c1b2a-1111-4222-8333-944455556666";

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec![
            "webhook",
            "--client-state",
            SECRET,
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
        let settings = parse(&["--microsoft-tenant", TENANT]).unwrap();
        assert_eq!(settings.tenant_id, TENANT);
        assert_eq!(settings.client_state_previous.len(), 2);
        assert_eq!(settings.deadline, Duration::from_secs(2));
        let e = parse(&["--azure-tenant-id", TENANT, "--deadline-ms", "3000"]).unwrap_err();
        assert!(e.contains("ENTRA_SYNC_WEBHOOK_DEADLINE_MS"), "{e}");
    }

    #[test]
    fn slow_client_timeouts_default_to_5_and_10_seconds_and_stay_within_a_minute() {
        let settings = parse(&["--azure-tenant-id", TENANT]).unwrap();
        assert_eq!(settings.header_timeout, Duration::from_secs(5));
        assert_eq!(settings.body_timeout, Duration::from_secs(10));
        let settings = parse(&[
            "--azure-tenant-id",
            TENANT,
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
                let e = parse(&["--azure-tenant-id", TENANT, flag, value]).unwrap_err();
                assert!(e.contains(name), "{flag} {value}: {e}");
            }
        }
    }

    #[test]
    fn a_malformed_redis_url_is_named_without_its_password() {
        for url in ["redis://:s3cr3t@[bad", "http://:s3cr3t@host:6379", "s3cr3t"] {
            let e = parse(&["--azure-tenant-id", TENANT, "--redis-url", url]).unwrap_err();
            assert!(e.contains("REDIS_URL"), "{url}: {e}");
            assert!(!e.contains("s3cr3t"), "{url}: {e}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let settings = parse(&["--azure-tenant-id", TENANT]).unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("old-1"),
            "{shown}"
        );
    }

    #[test]
    fn the_tenant_is_its_id_as_notifications_carry_it() {
        let settings =
            parse(&["--azure-tenant-id", "7D3C1B2A-1111-4222-8333-944455556666"]).unwrap();
        assert_eq!(settings.tenant_id, TENANT);
        let e = parse(&["--azure-tenant-id", "contoso.onmicrosoft.com"]).unwrap_err();
        assert!(
            e.contains("AZURE_TENANT_ID") && e.contains("domain name") && e.contains("GUID"),
            "{e}"
        );
        for bad in ["t", "common", "contoso.com/../x"] {
            let e = parse(&["--microsoft-tenant", bad]).unwrap_err();
            assert!(e.contains("MICROSOFT_TENANT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_short_client_state_is_refused_and_a_short_previous_one_still_heard() {
        let short = "short-s3cr3t";
        let e = Cli::try_parse_from([
            "webhook",
            "--client-state",
            short,
            "--azure-tenant-id",
            TENANT,
        ])
        .unwrap()
        .config
        .settings()
        .unwrap_err();
        assert!(
            e.contains("ENTRA_SYNC_CLIENT_STATE is shorter than 32"),
            "{e}"
        );
        assert!(!e.contains(short), "{e}");
        let long = "x".repeat(129);
        let e = Cli::try_parse_from([
            "webhook",
            "--client-state",
            &long,
            "--azure-tenant-id",
            TENANT,
        ])
        .unwrap()
        .config
        .settings()
        .unwrap_err();
        assert!(e.contains("Graph's limit"), "{e}");
        // "old-1" and "old-2", from before the rule: accepted, to rotate away from them.
        assert_eq!(
            parse(&["--azure-tenant-id", TENANT])
                .unwrap()
                .client_state_previous
                .len(),
            2
        );
        let e = parse(&[
            "--azure-tenant-id",
            TENANT,
            "--client-state-previous",
            &long,
        ])
        .unwrap_err();
        assert!(e.contains("ENTRA_SYNC_CLIENT_STATE_PREVIOUS"), "{e}");
        assert!(!e.contains(&long), "{e}");
    }
}
