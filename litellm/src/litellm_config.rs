//! The parts of LiteLLM's own config.yaml that shape what entra-sync writes:
//! `litellm_settings.default_team_params`, `default_internal_user_params`, `timezone` and
//! `budget_reset_time`; and what it says about LiteLLM's caches. Values may be LiteLLM's
//! `os.environ/NAME` references.

use std::path::Path;

use chrono::NaiveTime;
use serde_json::{Map, Value};

use crate::budget::{BudgetDuration, ResetClock};
use crate::error::{Error, Result};
use crate::roles::LiteLlmRole;

mod team_params;
pub use team_params::TeamDefaults;
pub(crate) use team_params::{Compare, ParamSource, ParamType, Place};

/// What reading team params does with a key it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownKeys {
    /// LiteLLM's own config: LiteLLM accepts more fields than entra-sync writes, so warn.
    Warn,
    /// entra-sync's own files (team rules): a key not known is a mistake.
    Refuse,
}

/// Reads a mapping of team params (`default_team_params`' syntax, `os.environ/NAME` references
/// resolved by `env`). Errors are [`Error::Config`] naming `origin` and `prefix.key`.
pub fn parse_team_params(
    params: &Map<String, Value>,
    origin: &str,
    prefix: &str,
    unknown: UnknownKeys,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TeamDefaults> {
    Reader { origin, env }.team_params(params, prefix, unknown)
}

/// Field values for users entra-sync creates (LiteLLM's `default_internal_user_params`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserDefaults {
    pub user_role: Option<LiteLlmRole>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<BudgetDuration>,
    pub models: Vec<String>,
}

/// What LiteLLM's config says about the caches its proxy serves auth objects from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheSettings {
    /// The setting that gives LiteLLM a Redis (`general_settings.coordination_redis`, or
    /// `litellm_settings.cache` of type redis): entra-sync should then be given it too.
    pub redis_from: Option<&'static str>,
    /// The Redis cache's `namespace`, if it has one.
    pub namespace: Option<String>,
    /// `general_settings.user_api_key_cache_ttl`: how long LiteLLM trusts a cached object.
    pub ttl_seconds: Option<f64>,
}

impl CacheSettings {
    /// LiteLLM's default for `user_api_key_cache_ttl`.
    pub const DEFAULT_TTL_SECONDS: f64 = 60.0;
}

/// What entra-sync takes from LiteLLM's config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LiteLlmSettings {
    pub team_defaults: TeamDefaults,
    pub user_defaults: UserDefaults,
    pub reset_clock: ResetClock,
    pub caches: CacheSettings,
}

impl LiteLlmSettings {
    /// The role of a user entra-sync creates, and the one a user falls back to when entra-sync
    /// revokes the role it set: `default_internal_user_params.user_role`, else LiteLLM's default
    /// for a new user.
    pub fn default_user_role(&self) -> LiteLlmRole {
        self.user_defaults
            .user_role
            .unwrap_or(LiteLlmRole::DEFAULT_FOR_NEW_USER)
    }

    /// Reads LiteLLM's config.yaml. `env` resolves `os.environ/NAME` references; pass
    /// `|name| std::env::var(name).ok()` in production.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.display().to_string(),
            key: "(file)".into(),
            problem: format!("cannot be read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string(), env)
    }

    /// Parses the text of LiteLLM's config.yaml; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let document: Value = serde_saphyr::from_str(text).map_err(|e| Error::Config {
            path: origin.into(),
            key: "(file)".into(),
            problem: format!("is not valid YAML: {e}"),
        })?;
        let reader = Reader { origin, env };
        let root = match &document {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            _ => return Err(reader.error("(file)", "must be a mapping of sections")),
        };
        let settings = reader.section(root.get("litellm_settings"), "litellm_settings")?;

        let timezone = match reader.string(settings.get("timezone"), "litellm_settings.timezone")? {
            None => chrono_tz::Tz::UTC,
            Some((name, origin)) => name.parse().map_err(|_| {
                reader.error(
                    "litellm_settings.timezone",
                    &format!(
                        "{} is not an IANA time zone (e.g. Europe/Berlin, UTC)",
                        origin.quote(&name)
                    ),
                )
            })?,
        };
        let reset_time = match reader.string(
            settings.get("budget_reset_time"),
            "litellm_settings.budget_reset_time",
        )? {
            None => NaiveTime::MIN,
            Some((text, origin)) => NaiveTime::parse_from_str(&text, "%H:%M").map_err(|_| {
                reader.error(
                    "litellm_settings.budget_reset_time",
                    &format!("{} is not a time of day as HH:MM", origin.quote(&text)),
                )
            })?,
        };

        Ok(Self {
            team_defaults: reader.team_defaults(settings.get("default_team_params"))?,
            user_defaults: reader.user_defaults(settings.get("default_internal_user_params"))?,
            reset_clock: ResetClock {
                timezone,
                reset_time,
            },
            caches: reader.caches(&root, &settings),
        })
    }
}

/// Reads typed values out of the YAML tree, resolving `os.environ/` references and naming the
/// full key in every error.
pub(crate) struct Reader<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

const ENV_PREFIX: &str = "os.environ/";

/// Where a value was read: the file itself, or the environment variable an `os.environ/NAME`
/// reference names. A variable's value may be a secret (LiteLLM's configs keep keys and
/// passwords there), so an error about it names the reference and never shows the value.
#[derive(Clone, Debug, Default)]
struct Origin {
    /// `os.environ/NAME`, when the value came from there.
    reference: Option<String>,
}

impl Origin {
    /// How an error refers to the value `text`: quoted, or by its reference.
    fn quote(&self, text: &str) -> String {
        match &self.reference {
            Some(reference) => reference.clone(),
            None => format!("{text:?}"),
        }
    }

    /// How an error refers to a number read from the value: as it is, or by its reference.
    fn number(&self, number: impl std::fmt::Display) -> String {
        match &self.reference {
            Some(reference) => reference.clone(),
            None => number.to_string(),
        }
    }

    /// A `problem` worded elsewhere, which quotes the value `text` (as `{text:?}`, trimmed or
    /// not), with the quotation replaced by the reference.
    fn hide(&self, problem: &str, text: &str) -> String {
        match &self.reference {
            None => problem.to_owned(),
            Some(reference) => problem
                .replace(&format!("{text:?}"), reference)
                .replace(&format!("{:?}", text.trim()), reference),
        }
    }
}

impl Reader<'_> {
    fn error(&self, key: &str, problem: &str) -> Error {
        Error::Config {
            path: self.origin.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Replaces an `os.environ/NAME` string with the variable's value, saying so in its
    /// [`Origin`].
    fn resolve(&self, value: Option<&Value>, key: &str) -> Result<Option<(Value, Origin)>> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.starts_with(ENV_PREFIX) => {
                let name = &text[ENV_PREFIX.len()..];
                let resolved = (self.env)(name).ok_or_else(|| {
                    self.error(
                        key,
                        &format!("refers to environment variable {name}, which is not set"),
                    )
                })?;
                let origin = Origin {
                    reference: Some(text.clone()),
                };
                Ok(Some((Value::String(resolved), origin)))
            }
            Some(other) => Ok(Some((other.clone(), Origin::default()))),
        }
    }

    fn section(&self, value: Option<&Value>, key: &str) -> Result<Map<String, Value>> {
        match self.resolve(value, key)? {
            None => Ok(Map::new()),
            Some((Value::Object(map), _)) => Ok(map),
            Some(_) => Err(self.error(key, "must be a mapping")),
        }
    }

    fn string(&self, value: Option<&Value>, key: &str) -> Result<Option<(String, Origin)>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::String(text), origin)) => Ok(Some((text, origin))),
            Some((Value::Number(number), origin)) => Ok(Some((number.to_string(), origin))),
            Some(_) => Err(self.error(key, "must be a string")),
        }
    }

    fn float(&self, value: Option<&Value>, key: &str) -> Result<Option<(f64, Origin)>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::Number(number), origin)) => Ok(number.as_f64().map(|n| (n, origin))),
            Some((Value::String(text), origin)) => match text.trim().parse() {
                Ok(number) => Ok(Some((number, origin))),
                Err(_) => Err(self.error(key, &format!("{} is not a number", origin.quote(&text)))),
            },
            Some(_) => Err(self.error(key, "must be a number")),
        }
    }

    fn integer(&self, value: Option<&Value>, key: &str) -> Result<Option<i64>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::Number(number), origin)) => number.as_i64().map(Some).ok_or_else(|| {
                self.error(
                    key,
                    &format!("{} is not a whole number", origin.number(&number)),
                )
            }),
            Some((Value::String(text), origin)) => text.trim().parse().map(Some).map_err(|_| {
                self.error(
                    key,
                    &format!("{} is not a whole number", origin.quote(&text)),
                )
            }),
            Some(_) => Err(self.error(key, "must be a whole number")),
        }
    }

    fn boolean(&self, value: Option<&Value>, key: &str) -> Result<Option<bool>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::Bool(flag), _)) => Ok(Some(flag)),
            Some((Value::String(text), origin)) => {
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" => Ok(Some(true)),
                    "false" => Ok(Some(false)),
                    _ => Err(self.error(
                        key,
                        &format!("{} is not true or false", origin.quote(&text)),
                    )),
                }
            }
            Some(_) => Err(self.error(key, "must be true or false")),
        }
    }

    fn strings(&self, value: Option<&Value>, key: &str) -> Result<Option<Vec<String>>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::Array(items), _)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    self.string(Some(item), &format!("{key}[{i}]"))?
                        .map(|(text, _)| text)
                        .ok_or_else(|| self.error(&format!("{key}[{i}]"), "must be a string"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.error(key, "must be a list of strings")),
        }
    }

    fn object(&self, value: Option<&Value>, key: &str) -> Result<Option<Map<String, Value>>> {
        match self.resolve(value, key)? {
            None => Ok(None),
            Some((Value::Object(map), _)) => Ok(Some(map)),
            Some(_) => Err(self.error(key, "must be a mapping")),
        }
    }

    fn duration(&self, value: Option<&Value>, key: &str) -> Result<Option<BudgetDuration>> {
        self.string(value, key)?
            .map(|(text, origin)| {
                BudgetDuration::parse(&text)
                    .map_err(|problem| self.error(key, &origin.hide(&problem, &text)))
            })
            .transpose()
    }

    fn team_defaults(&self, value: Option<&Value>) -> Result<TeamDefaults> {
        const KEY: &str = "litellm_settings.default_team_params";
        let params = self.section(value, KEY)?;
        self.team_params(&params, KEY, UnknownKeys::Warn)
    }

    fn team_params(
        &self,
        params: &Map<String, Value>,
        prefix: &str,
        unknown: UnknownKeys,
    ) -> Result<TeamDefaults> {
        let key = |name: &str| format!("{prefix}.{name}");
        match unknown {
            UnknownKeys::Warn => warn_unknown(params, TeamDefaults::KEYS, prefix),
            UnknownKeys::Refuse => {
                if let Some(name) = params
                    .keys()
                    .find(|name| !TeamDefaults::KEYS.contains(&name.as_str()))
                {
                    return Err(self.error(
                        &key(name),
                        &format!(
                            "unknown field; expected one of {}",
                            TeamDefaults::KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
        TeamDefaults::read(&mut ConfigParams {
            reader: self,
            params,
            prefix,
        })
    }

    /// A budget: LiteLLM's `new_team` refuses a negative or infinite one.
    fn budget(&self, value: Option<&Value>, key: &str) -> Result<Option<f64>> {
        match self.float(value, key)? {
            Some((amount, origin)) if !amount.is_finite() || amount < 0.0 => Err(self.error(
                key,
                &format!(
                    "{} is not a non-negative finite number",
                    origin.number(amount)
                ),
            )),
            other => Ok(other.map(|(amount, _)| amount)),
        }
    }

    fn user_defaults(&self, value: Option<&Value>) -> Result<UserDefaults> {
        const KEY: &str = "litellm_settings.default_internal_user_params";
        let params = self.section(value, KEY)?;
        let key = |name: &str| format!("{KEY}.{name}");
        warn_unknown(
            &params,
            &["user_role", "max_budget", "budget_duration", "models"],
            KEY,
        );
        let user_role = self
            .string(params.get("user_role"), &key("user_role"))?
            .map(|(value, origin)| {
                LiteLlmRole::from_app_role_value(&value).ok_or_else(|| {
                    self.error(
                        &key("user_role"),
                        &format!(
                            "{} is not one of proxy_admin, proxy_admin_viewer, org_admin, \
                             internal_user, internal_user_viewer",
                            origin.quote(&value)
                        ),
                    )
                })
            })
            .transpose()?;
        Ok(UserDefaults {
            user_role,
            max_budget: self
                .float(params.get("max_budget"), &key("max_budget"))?
                .map(|(amount, _)| amount),
            budget_duration: self
                .duration(params.get("budget_duration"), &key("budget_duration"))?,
            models: self
                .strings(params.get("models"), &key("models"))?
                .unwrap_or_default(),
        })
    }
}

impl Reader<'_> {
    /// Where LiteLLM gets a Redis (read as `ProxyConfig.load_config` and `init_cache` do: a
    /// `coordination_redis` block wins, else a `cache` of type redis, the default type). Only
    /// advice is drawn from it, so values that cannot be read count as absent.
    fn caches(&self, root: &Map<String, Value>, settings: &Map<String, Value>) -> CacheSettings {
        let general = self
            .section(root.get("general_settings"), "general_settings")
            .unwrap_or_default();
        let lenient = |value: Option<&Value>, key: &str| {
            self.string(value, key).ok().flatten().map(|(text, _)| text)
        };
        let coordination = self
            .object(
                general.get("coordination_redis"),
                "general_settings.coordination_redis",
            )
            .ok()
            .flatten();
        let cache_on = self
            .boolean(settings.get("cache"), "litellm_settings.cache")
            .ok()
            .flatten()
            == Some(true);
        let params = self
            .object(
                settings.get("cache_params"),
                "litellm_settings.cache_params",
            )
            .ok()
            .flatten()
            .unwrap_or_default();
        let cache_is_redis = cache_on
            && lenient(params.get("type"), "litellm_settings.cache_params.type")
                .is_none_or(|kind| kind == "redis" || kind == "redis-semantic");
        let (redis_from, namespace) = match &coordination {
            Some(block) => (
                Some("general_settings.coordination_redis"),
                lenient(
                    block.get("namespace"),
                    "general_settings.coordination_redis.namespace",
                ),
            ),
            None if cache_is_redis => (
                Some("litellm_settings.cache"),
                lenient(
                    params.get("namespace"),
                    "litellm_settings.cache_params.namespace",
                ),
            ),
            None => (None, None),
        };
        CacheSettings {
            redis_from,
            namespace,
            ttl_seconds: self
                .float(
                    general.get("user_api_key_cache_ttl"),
                    "general_settings.user_api_key_cache_ttl",
                )
                .ok()
                .flatten()
                .map(|(seconds, _)| seconds),
        }
    }
}

/// LiteLLM accepts more team fields than entra-sync writes; say which ones are ignored rather than
/// refuse a config LiteLLM itself accepts.
/// A params mapping of config or a team rule, read key by key.
struct ConfigParams<'a> {
    reader: &'a Reader<'a>,
    params: &'a Map<String, Value>,
    prefix: &'a str,
}

impl ParamSource for ConfigParams<'_> {
    fn get<T: ParamType>(&mut self, name: &'static str, _: Place) -> Result<Option<T>> {
        let key = format!("{}.{name}", self.prefix);
        T::from_config(self.reader, self.params.get(name), &key)
    }
}

fn warn_unknown(params: &Map<String, Value>, known: &[&str], section: &str) {
    for name in params.keys().filter(|name| !known.contains(&name.as_str())) {
        tracing::warn!(setting = %format!("{section}.{name}"), "ignored: entra-sync does not set this field");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<LiteLlmSettings> {
        LiteLlmSettings::parse(text, "config.yaml", &no_env)
    }

    #[test]
    fn reads_defaults_timezone_and_reset_time() {
        let settings = parse(
            r#"
model_list: []
litellm_settings:
  timezone: Europe/Berlin
  budget_reset_time: "06:30"
  default_team_params:
    max_budget: 100
    budget_duration: 30d
    models: ["gpt-4o", "gpt-4o-mini"]
    tpm_limit: 1000
    rpm_limit: 10
    team_member_permissions: ["/key/generate"]
    metadata: {cost_center: "42"}
  default_internal_user_params:
    user_role: Internal_User
    max_budget: 5.5
    budget_duration: 1d
    models: ["gpt-4o-mini"]
"#,
        )
        .unwrap();
        let team = &settings.team_defaults;
        assert_eq!(team.max_budget, Some(100.0));
        assert_eq!(team.budget_duration, Some(BudgetDuration::Days(30)));
        assert_eq!(
            team.models.as_deref(),
            Some(&["gpt-4o".to_owned(), "gpt-4o-mini".to_owned()][..])
        );
        assert_eq!(team.tpm_limit, Some(1000));
        assert_eq!(
            team.team_member_permissions.as_deref(),
            Some(&["/key/generate".to_owned()][..])
        );
        assert_eq!(team.metadata.as_ref().unwrap()["cost_center"], "42");
        let user = &settings.user_defaults;
        assert_eq!(user.user_role, Some(LiteLlmRole::InternalUser));
        assert_eq!(user.max_budget, Some(5.5));
        assert_eq!(settings.reset_clock.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(
            settings.reset_clock.reset_time,
            NaiveTime::from_hms_opt(6, 30, 0).unwrap()
        );
    }

    #[test]
    fn empty_or_missing_sections_give_litellm_defaults() {
        assert_eq!(parse("").unwrap(), LiteLlmSettings::default());
        assert_eq!(
            parse("general_settings: {}\n").unwrap(),
            LiteLlmSettings::default()
        );
        assert_eq!(
            parse("litellm_settings:\n").unwrap(),
            LiteLlmSettings::default()
        );
    }

    #[test]
    fn resolves_os_environ_references() {
        let env = |name: &str| match name {
            "TEAM_BUDGET" => Some("250".to_owned()),
            "TEAM_MODEL" => Some("claude".to_owned()),
            "TZ_NAME" => Some("Asia/Kolkata".to_owned()),
            _ => None,
        };
        let settings = LiteLlmSettings::parse(
            "litellm_settings:\n  timezone: os.environ/TZ_NAME\n  default_team_params:\n    max_budget: os.environ/TEAM_BUDGET\n    models: [os.environ/TEAM_MODEL]\n",
            "config.yaml",
            &env,
        )
        .unwrap();
        assert_eq!(settings.team_defaults.max_budget, Some(250.0));
        assert_eq!(
            settings.team_defaults.models.as_deref(),
            Some(&["claude".to_owned()][..])
        );
        assert_eq!(settings.reset_clock.timezone, chrono_tz::Asia::Kolkata);
    }

    fn error_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let e = error_text("litellm_settings:\n  default_team_params:\n    budget_duration: 30x\n");
        assert!(
            e.contains("litellm_settings.default_team_params.budget_duration"),
            "{e}"
        );
        assert!(e.contains("30x"), "{e}");

        let e = error_text("litellm_settings:\n  default_team_params:\n    max_budget: lots\n");
        assert!(e.contains("default_team_params.max_budget"), "{e}");

        let e = error_text("litellm_settings:\n  default_team_params:\n    models: gpt-4\n");
        assert!(e.contains("default_team_params.models"), "{e}");

        let e =
            error_text("litellm_settings:\n  default_internal_user_params:\n    user_role: root\n");
        assert!(e.contains("default_internal_user_params.user_role"), "{e}");

        let e = error_text("litellm_settings:\n  timezone: Mars/Olympus\n");
        assert!(e.contains("litellm_settings.timezone"), "{e}");

        let e = error_text("litellm_settings:\n  budget_reset_time: noon\n");
        assert!(e.contains("litellm_settings.budget_reset_time"), "{e}");

        let e = error_text(
            "litellm_settings:\n  default_team_params:\n    max_budget: os.environ/MISSING\n",
        );
        assert!(
            e.contains("MISSING") && e.contains("default_team_params.max_budget"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_an_environment_reference_and_never_show_its_value() {
        const SECRET: &str = "sk-live-5ecr3t-Value";
        let env = |name: &str| match name {
            "LEAKY" => Some(format!(" {SECRET} ")),
            "NEGATIVE" => Some("-7.25".to_owned()),
            _ => None,
        };
        let team = |field: &str, reference: &str| {
            format!("litellm_settings:\n  default_team_params:\n    {field}: {reference}\n")
        };
        let user = |field: &str| {
            format!(
                "litellm_settings:\n  default_internal_user_params:\n    {field}: os.environ/LEAKY\n"
            )
        };
        let cases = [
            (
                "litellm_settings:\n  timezone: os.environ/LEAKY\n".to_owned(),
                "litellm_settings.timezone",
            ),
            (
                "litellm_settings:\n  budget_reset_time: os.environ/LEAKY\n".to_owned(),
                "litellm_settings.budget_reset_time",
            ),
            (
                team("max_budget", "os.environ/LEAKY"),
                "default_team_params.max_budget",
            ),
            (
                team("tpm_limit", "os.environ/LEAKY"),
                "default_team_params.tpm_limit",
            ),
            (
                team("blocked", "os.environ/LEAKY"),
                "default_team_params.blocked",
            ),
            (
                team("budget_duration", "os.environ/LEAKY"),
                "default_team_params.budget_duration",
            ),
            (
                team("team_member_budget_duration", "os.environ/LEAKY"),
                "default_team_params.team_member_budget_duration",
            ),
            (user("user_role"), "default_internal_user_params.user_role"),
            (
                user("max_budget"),
                "default_internal_user_params.max_budget",
            ),
        ];
        for (yaml, key) in cases {
            let e = LiteLlmSettings::parse(&yaml, "config.yaml", &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains("os.environ/LEAKY"), "{key}: {e}");
            assert!(!e.contains("5ecr3t"), "{key}: {e}");
        }
        let e = LiteLlmSettings::parse(
            &team("team_member_budget", "os.environ/NEGATIVE"),
            "config.yaml",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("os.environ/NEGATIVE is not a non-negative finite number"),
            "{e}"
        );
        assert!(!e.contains("7.25"), "{e}");
        // The file's own values are still quoted: they are not secrets.
        let e = error_text(&team("tpm_limit", "lots"));
        assert!(e.contains("\"lots\" is not a whole number"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        for text in [
            "litellm_settings: [\n",
            "- a\n- b\n",
            "litellm_settings: 3\n",
            "\t:\n  - {",
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("LiteLLM config config.yaml"), "{e}");
        }
    }

    #[test]
    fn finds_the_redis_cache_its_namespace_and_ttl() {
        let none = parse("litellm_settings:\n  cache: false\n").unwrap().caches;
        assert_eq!(none, CacheSettings::default());

        let cache = parse(
            "litellm_settings:\n  cache: true\n  cache_params:\n    type: redis\n    namespace: prod\ngeneral_settings:\n  user_api_key_cache_ttl: 30\n",
        )
        .unwrap()
        .caches;
        assert_eq!(cache.redis_from, Some("litellm_settings.cache"));
        assert_eq!(cache.namespace.as_deref(), Some("prod"));
        assert_eq!(cache.ttl_seconds, Some(30.0));

        // The default cache type is redis; a local cache is not.
        let default_type = parse("litellm_settings:\n  cache: true\n").unwrap().caches;
        assert_eq!(default_type.redis_from, Some("litellm_settings.cache"));
        let local = parse("litellm_settings:\n  cache: true\n  cache_params: {type: local}\n")
            .unwrap()
            .caches;
        assert_eq!(local.redis_from, None);

        // A coordination_redis block wins, with its own namespace.
        let coordination = parse(
            "general_settings:\n  coordination_redis: {host: redis, namespace: coord}\nlitellm_settings:\n  cache: true\n  cache_params: {namespace: other}\n",
        )
        .unwrap()
        .caches;
        assert_eq!(
            coordination.redis_from,
            Some("general_settings.coordination_redis")
        );
        assert_eq!(coordination.namespace.as_deref(), Some("coord"));

        // Only advice: an unresolvable reference is not an error.
        let unresolved = parse(
            "litellm_settings:\n  cache: true\n  cache_params: {host: os.environ/REDIS_HOST, namespace: os.environ/NS}\n",
        )
        .unwrap()
        .caches;
        assert_eq!(unresolved.redis_from, Some("litellm_settings.cache"));
        assert_eq!(unresolved.namespace, None);
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = LiteLlmSettings::load(Path::new("/nonexistent/litellm.yaml"), &no_env).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/litellm.yaml"), "{e}");
    }
}
