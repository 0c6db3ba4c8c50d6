//! The worker's configuration, from the environment or the command line (see the README's table).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, Result};
use crate::graph::GraphArgs;
use crate::litellm_cache::CacheTarget;
use crate::litellm_config::LiteLlmSettings;
use crate::store::{DepartedUserKeys, KeyPolicy, RemovalMode, RemovedMemberKeys};
use crate::sync::{DepartedUserPolicy, Membership, UnassignedPolicy};
use crate::team_rules::TeamRules;
use entra_sync_core::settings::{StreamArgs, check_client_state, secret};

/// Settings every worker command needs.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerConfig {
    /// LiteLLM's PostgreSQL database (the variable LiteLLM itself uses).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: SecretString,

    /// Connect to a `DATABASE_URL` host other than loopback or a Unix socket without
    /// `sslmode=verify-full` (or `verify-ca`), whose password a man in the middle could read.
    #[arg(long, env = "ENTRA_SYNC_ALLOW_UNVERIFIED_TLS")]
    pub allow_unverified_tls: bool,

    /// LiteLLM's config.yaml, for default_team_params, default_internal_user_params, timezone
    /// and budget_reset_time. Unset: LiteLLM's defaults.
    #[arg(long, env = "LITELLM_CONFIG")]
    pub litellm_config: Option<PathBuf>,

    /// A YAML file of ordered rules giving matching groups' new teams their own parameters over
    /// default_team_params (format in the README). Unset: default_team_params for every team.
    #[arg(long, env = "ENTRA_SYNC_TEAM_RULES")]
    pub team_rules: Option<PathBuf>,

    /// Which members a removal may take out of a team: `managed` (only those entra-sync added)
    /// or `mirror` (everyone not in the Entra group).
    #[arg(long, env = "ENTRA_SYNC_REMOVAL_MODE", value_enum, default_value_t = RemovalMode::Managed)]
    pub removal_mode: RemovalMode,

    #[command(flatten)]
    pub graph: GraphArgs,

    #[command(flatten)]
    pub stream: StreamArgs,

    /// Where entries that keep failing go; default: the stream's name followed by `:dead`.
    #[arg(long, env = "ENTRA_SYNC_DEAD_LETTER_STREAM")]
    pub dead_letter_stream: Option<String>,

    /// This replica's name in the consumer group; default: the host name (the pod's name on
    /// Kubernetes) and the process id.
    #[arg(long, env = "ENTRA_SYNC_CONSUMER")]
    pub consumer: Option<String>,

    /// Health and metrics address.
    #[arg(
        long,
        env = "ENTRA_SYNC_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: std::net::SocketAddr,

    /// What happens to a team whose group is unassigned from the app or deleted.
    #[arg(long, env = "ENTRA_SYNC_UNASSIGNED_POLICY", value_enum, default_value_t = UnassignedPolicy::RemoveMembers)]
    pub unassigned_policy: UnassignedPolicy,

    /// Seconds between polls of the app's assignments (each followed by a delta round).
    #[arg(long, env = "ENTRA_SYNC_POLL_SECONDS", default_value_t = 30)]
    pub poll_seconds: u64,

    /// Seconds a dead replica's pending entries wait before another replica claims them.
    #[arg(long, env = "ENTRA_SYNC_CLAIM_IDLE_SECONDS", default_value_t = 60)]
    pub claim_idle_seconds: u64,

    /// Deliveries after which an unreadable entry goes to the dead-letter stream.
    #[arg(long, env = "ENTRA_SYNC_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u64,

    /// The https base URL at which Graph reaches the webhook; the worker keeps the Graph
    /// subscriptions pointing at `{url}/notifications` and `{url}/lifecycle`. Unset: the worker
    /// creates no subscriptions and relies on polling and reconciliation.
    #[arg(long, env = "ENTRA_SYNC_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The secret Graph echoes in every notification (the webhook's `ENTRA_SYNC_CLIENT_STATE`,
    /// 32 to 128 characters); required with `ENTRA_SYNC_PUBLIC_URL`.
    #[arg(long, env = "ENTRA_SYNC_CLIENT_STATE", hide_env_values = true, value_parser = secret)]
    pub client_state: Option<SecretString>,

    /// Seconds between full reconciliations (every assigned group and every known user compared
    /// with LiteLLM); 0 turns them off.
    #[arg(long, env = "ENTRA_SYNC_RECONCILE_SECONDS", default_value_t = 21_600)]
    pub reconcile_seconds: u64,

    /// Seconds between re-reads of the users entra-sync holds as departed (one getByIds request
    /// per thousand): one enabled again whose notification was lost comes back within this long.
    /// 0 turns them off.
    #[arg(
        long,
        env = "ENTRA_SYNC_DEPARTED_RECHECK_SECONDS",
        default_value_t = 300
    )]
    pub departed_recheck_seconds: u64,

    /// Days the audit log keeps its entries; older ones are deleted (by one replica, in batches,
    /// every hour). 0 keeps them for ever.
    #[arg(long, env = "ENTRA_SYNC_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u64,

    /// Seconds between checks of the subscriptions by the replica holding their lease (the lease
    /// passes to another replica three checks after its holder stops).
    #[arg(
        long,
        env = "ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS",
        default_value_t = 60
    )]
    pub subscription_check_seconds: u64,

    /// Seconds a unit of sync work's lease lives without renewal: how long the other replicas
    /// wait when the one doing the work dies in the middle of it (it is renewed every third).
    #[arg(long, env = "ENTRA_SYNC_LEASE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_seconds: u64,

    /// What happens to the memberships of a user deleted or disabled in Entra.
    #[arg(long, env = "ENTRA_SYNC_DEPARTED_USER_POLICY", value_enum, default_value_t = DepartedUserPolicy::RemoveMemberships)]
    pub departed_user_policy: DepartedUserPolicy,

    /// Whose membership of a group makes a team member: its `direct` members (as LiteLLM's
    /// sign-in), or its `transitive` ones, through nested groups at any depth.
    #[arg(long, env = "ENTRA_SYNC_MEMBERSHIP", value_enum, default_value_t = Membership::Direct)]
    pub membership: Membership,

    /// Group owners become their teams' admins (members with role `admin`).
    #[arg(long, env = "ENTRA_SYNC_OWNERS_AS_ADMINS")]
    pub owners_as_admins: bool,

    /// A member removed from a team: their keys for that team are deleted (copied into
    /// LiteLLM_DeletedVerificationToken first, as LiteLLM's own member removal does), blocked
    /// (unblocked if they rejoin), or kept.
    #[arg(long, env = "ENTRA_SYNC_REMOVED_MEMBER_KEYS", value_enum, default_value_t = RemovedMemberKeys::Delete)]
    pub removed_member_keys: RemovedMemberKeys,

    /// A user disabled or deleted in Entra: all their keys blocked (unblocked when enabled again,
    /// except keys an admin blocked), or kept.
    #[arg(long, env = "ENTRA_SYNC_DEPARTED_USER_KEYS", value_enum, default_value_t = DepartedUserKeys::Block)]
    pub departed_user_keys: DepartedUserKeys,

    /// One unit of work (a delta round, a resync, a reconciliation, a poll, a batch of user
    /// notifications) that would remove more memberships, or delete more keys, than this holds
    /// all its removals for `entra-sync-worker removals release` (their keys blocked
    /// meanwhile), as Entra Connect's accidental-deletion threshold does; 0: never held.
    #[arg(long, env = "ENTRA_SYNC_REMOVAL_THRESHOLD", default_value_t = crate::sync::DEFAULT_REMOVAL_THRESHOLD)]
    pub removal_threshold: u64,

    /// The Redis LiteLLM's proxy caches in: every commit evicts what it changed there and
    /// publishes the keys on LiteLLM's invalidation channel. Unset: LiteLLM may serve removed
    /// access until its cache TTL.
    #[arg(long, env = "ENTRA_SYNC_LITELLM_REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub litellm_redis_url: Option<SecretString>,

    /// LiteLLM's cache namespace, if it has one; default: the one LiteLLM's config.yaml gives.
    #[arg(long, env = "ENTRA_SYNC_LITELLM_REDIS_NAMESPACE")]
    pub litellm_redis_namespace: Option<String>,
}

impl WorkerConfig {
    /// Reads LiteLLM's config, resolving its `os.environ/NAME` references from this process's
    /// environment.
    pub fn litellm_settings(&self) -> Result<LiteLlmSettings> {
        match &self.litellm_config {
            None => Ok(LiteLlmSettings::default()),
            Some(path) => Ok(LiteLlmSettings::load(path, &|name| {
                std::env::var(name).ok()
            })?),
        }
    }
}

impl WorkerConfig {
    /// Reads the team rules, resolving `os.environ/NAME` references in their values from this
    /// process's environment. Their organizations are checked against the database separately
    /// ([`TeamRules::check_organizations`]).
    pub fn team_rules(&self) -> Result<TeamRules> {
        match &self.team_rules {
            None => Ok(TeamRules::default()),
            Some(path) => Ok(TeamRules::load(path, &|name| std::env::var(name).ok())?),
        }
    }
}

/// The longest interval a `*_SECONDS` setting may ask for: a year. A longer one is a mistake
/// (milliseconds for seconds, a stray digit), and could overflow the clock arithmetic it feeds.
pub const MAX_INTERVAL_SECONDS: u64 = 365 * 24 * 3600;

/// `value` seconds of the setting `name`, refused when longer than [`MAX_INTERVAL_SECONDS`].
fn interval(name: &str, value: u64) -> Result<Duration> {
    if value > MAX_INTERVAL_SECONDS {
        return Err(Error::Settings(format!(
            "{name} is {value} seconds; at most {MAX_INTERVAL_SECONDS} (a year) is accepted"
        )));
    }
    Ok(Duration::from_secs(value))
}

/// The timing settings of `run`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub poll: Duration,
    pub claim_idle: Duration,
    /// `None`: reconciliations only on demand.
    pub reconcile: Option<Duration>,
    /// `None`: departed users are read again only by reconciliations and notifications.
    pub departed_recheck: Option<Duration>,
    pub subscription_check: Duration,
    /// How long the subscription lease lasts: three checks, so that it passes to another
    /// replica only after its holder missed several.
    pub subscription_lease: Duration,
}

impl WorkerConfig {
    /// The intervals `run` works with, each within [`MAX_INTERVAL_SECONDS`]; an error names the
    /// setting that is out of range. Zero keeps its meaning: one second for the poll and the
    /// subscription check, never for reconciliation.
    pub fn intervals(&self) -> Result<Intervals> {
        let subscription_check = interval(
            "ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS",
            self.subscription_check_seconds.max(1),
        )?;
        let subscription_lease = subscription_check.checked_mul(3).ok_or_else(|| {
            Error::Settings("ENTRA_SYNC_SUBSCRIPTION_CHECK_SECONDS is too long".into())
        })?;
        Ok(Intervals {
            poll: interval("ENTRA_SYNC_POLL_SECONDS", self.poll_seconds.max(1))?,
            claim_idle: interval("ENTRA_SYNC_CLAIM_IDLE_SECONDS", self.claim_idle_seconds)?,
            reconcile: match self.reconcile_seconds {
                0 => None,
                seconds => Some(interval("ENTRA_SYNC_RECONCILE_SECONDS", seconds)?),
            },
            departed_recheck: match self.departed_recheck_seconds {
                0 => None,
                seconds => Some(interval("ENTRA_SYNC_DEPARTED_RECHECK_SECONDS", seconds)?),
            },
            subscription_check,
            subscription_lease,
        })
    }

    /// How long audit entries are kept; `None`: for ever.
    pub fn audit_retention(&self) -> Option<Duration> {
        match self.audit_retention_days {
            0 => None,
            days => Some(Duration::from_secs(days.saturating_mul(86_400))),
        }
    }

    pub fn key_policy(&self) -> KeyPolicy {
        KeyPolicy {
            removed_member: self.removed_member_keys,
            departed_user: self.departed_user_keys,
        }
    }

    /// LiteLLM's Redis cache, when `ENTRA_SYNC_LITELLM_REDIS_URL` is set; its namespace is
    /// `ENTRA_SYNC_LITELLM_REDIS_NAMESPACE`, else the one LiteLLM's config gives.
    pub fn litellm_cache_target(&self, settings: &LiteLlmSettings) -> Result<Option<CacheTarget>> {
        let Some(url) = &self.litellm_redis_url else {
            return Ok(None);
        };
        // The URL may hold a password: the error never repeats it.
        let client = redis::Client::open(url.expose_secret()).map_err(|_| {
            Error::Settings(
                "ENTRA_SYNC_LITELLM_REDIS_URL is not a Redis URL (redis:// or rediss://)".into(),
            )
        })?;
        let namespace = self
            .litellm_redis_namespace
            .clone()
            .or_else(|| settings.caches.namespace.clone())
            .filter(|ns| !ns.is_empty());
        Ok(Some(CacheTarget { client, namespace }))
    }

    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(crate::store::lease::this_process)
    }

    /// Where subscriptions point, when `ENTRA_SYNC_PUBLIC_URL` is set; checked at start.
    pub fn subscription_target(&self) -> Result<Option<crate::subscriptions::Target>> {
        if let Some(client_state) = &self.client_state {
            check_client_state("ENTRA_SYNC_CLIENT_STATE", client_state).map_err(Error::Settings)?;
        }
        let Some(url) = &self.public_url else {
            return Ok(None);
        };
        let url = crate::graph::checked_url("ENTRA_SYNC_PUBLIC_URL", url)?;
        let client_state = self.client_state.clone().ok_or_else(|| {
            Error::Settings("ENTRA_SYNC_CLIENT_STATE is required with ENTRA_SYNC_PUBLIC_URL".into())
        })?;
        crate::subscriptions::Target::new(&url, client_state).map(Some)
    }

    pub fn dead_letter_stream(&self) -> String {
        self.dead_letter_stream
            .clone()
            .unwrap_or_else(|| format!("{}:dead", self.stream.stream))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: WorkerConfig,
    }

    fn config(args: &[&str]) -> WorkerConfig {
        let mut all = vec!["worker", "--database-url", "postgres://localhost/litellm"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().config
    }

    #[test]
    fn default_intervals() {
        let intervals = config(&[]).intervals().unwrap();
        assert_eq!(intervals.poll, Duration::from_secs(30));
        assert_eq!(intervals.claim_idle, Duration::from_secs(60));
        assert_eq!(intervals.reconcile, Some(Duration::from_secs(21_600)));
        assert_eq!(intervals.subscription_check, Duration::from_secs(60));
        assert_eq!(intervals.subscription_lease, Duration::from_secs(180));
    }

    #[test]
    fn zero_keeps_its_meaning() {
        let intervals = config(&[
            "--poll-seconds",
            "0",
            "--reconcile-seconds",
            "0",
            "--subscription-check-seconds",
            "0",
            "--claim-idle-seconds",
            "0",
        ])
        .intervals()
        .unwrap();
        assert_eq!(intervals.poll, Duration::from_secs(1));
        assert_eq!(intervals.reconcile, None);
        assert_eq!(intervals.subscription_check, Duration::from_secs(1));
        assert_eq!(intervals.claim_idle, Duration::ZERO);
    }

    #[test]
    fn absurd_intervals_are_refused_by_name() {
        let year = MAX_INTERVAL_SECONDS.to_string();
        let intervals = config(&[
            "--poll-seconds",
            &year,
            "--reconcile-seconds",
            &year,
            "--subscription-check-seconds",
            &year,
            "--claim-idle-seconds",
            &year,
        ])
        .intervals()
        .unwrap();
        assert_eq!(
            intervals.subscription_lease,
            Duration::from_secs(3 * 365 * 24 * 3600)
        );
        let huge = u64::MAX.to_string();
        let just_over = (MAX_INTERVAL_SECONDS + 1).to_string();
        for flag in [
            "--poll-seconds",
            "--reconcile-seconds",
            "--subscription-check-seconds",
            "--claim-idle-seconds",
        ] {
            let name = format!(
                "ENTRA_SYNC_{}",
                flag.trim_start_matches("--")
                    .replace('-', "_")
                    .to_ascii_uppercase()
            );
            for value in [&huge, &just_over] {
                let error = config(&[flag, value]).intervals().unwrap_err().to_string();
                assert!(error.contains(&name), "{flag} {value}: {error}");
                assert!(error.contains(value.as_str()), "{flag} {value}: {error}");
            }
        }
    }

    #[test]
    fn a_client_state_shorter_than_32_characters_is_refused_without_showing_it() {
        let short = "short-s3cr3t";
        for args in [
            vec!["--client-state", short],
            vec![
                "--client-state",
                short,
                "--public-url",
                "https://sync.contoso.com",
            ],
        ] {
            let error = config(&args).subscription_target().unwrap_err().to_string();
            assert!(
                error.contains("ENTRA_SYNC_CLIENT_STATE is shorter than 32"),
                "{error}"
            );
            assert!(!error.contains(short), "{error}");
        }
        let long = "k".repeat(40);
        let target = config(&[
            "--client-state",
            &long,
            "--public-url",
            "https://sync.contoso.com",
        ])
        .subscription_target()
        .unwrap()
        .unwrap();
        assert_eq!(
            target.notification_url,
            "https://sync.contoso.com/notifications"
        );
    }
}
