//! Team rules (`ENTRA_SYNC_TEAM_RULES`): per-group parameters for the teams entra-sync creates.
//!
//! A YAML file of ordered rules; the first rule whose matcher matches a group gives its team's
//! parameters, field by field over LiteLLM's `default_team_params` (a field the rule does not give
//! comes from there); no rule matches: `default_team_params` alone, as without rules.
//!
//! ```yaml
//! rules:
//!   - match: { group_id: "6c1f0d2e-8a4b-4c55-9e21-3f7a1b2c3d4e" }
//!     team: { max_budget: 5000, budget_duration: 30d, models: [gpt-4o, o3], team_member_budget: 200 }
//!     organization_id: research-org
//!   - match: { name_glob: "Interns*" }
//!     team: { max_budget: 50, budget_duration: 30d }
//!   - match: { name_regex: "^eng-(platform|infra)$" }
//!     team: { models: [gpt-4o-mini] }
//! ```
//!
//! `team` takes `default_team_params`' keys with the same parsing (see
//! [`crate::litellm_config::parse_team_params`]), unknown keys refused. Rules apply when a team is
//! created only: like `default_team_params`, they never overwrite an admin's later edits. A rule
//! whose team differs from it is reported by `sync --full --dry-run` ([`RuleDrift`]).
//!
//! Everything is checked when the file is read, and the organizations against LiteLLM's database
//! at start ([`TeamRules::check_organizations`]): a bad rule stops the worker with its position.

use std::collections::BTreeSet;
use std::path::Path;

use entity::GroupId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::litellm_config::{Compare, TeamDefaults, UnknownKeys, parse_team_params};

/// The setting's name, which every error starts with.
pub const SETTING: &str = "ENTRA_SYNC_TEAM_RULES";

/// The rules, in the file's order.
#[derive(Clone, Debug, Default)]
pub struct TeamRules {
    rules: Vec<TeamRule>,
}

/// One rule: which groups, and what their teams get.
#[derive(Clone, Debug)]
pub struct TeamRule {
    /// 1-based, as errors and reports name it.
    position: usize,
    matcher: Matcher,
    /// Only the fields the rule gives; the rule's `organization_id` is in here too.
    team: TeamDefaults,
}

/// How a rule picks its groups: by object id, or by the group's display name.
#[derive(Clone, Debug)]
pub enum Matcher {
    GroupId(GroupId),
    /// A shell-style pattern over the whole name (`*`, `?`, `[...]`), case-sensitive.
    NameGlob(glob::Pattern),
    /// A regular expression searched for in the name (anchor it with `^...$`); `(?i)` for
    /// case-insensitive.
    NameRegex(regex::Regex),
}

impl Matcher {
    fn matches(&self, group: &GroupId, name: &str) -> bool {
        match self {
            Self::GroupId(id) => id == group,
            Self::NameGlob(pattern) => pattern.matches(name),
            Self::NameRegex(regex) => regex.is_match(name),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    team: Option<Map<String, Value>>,
    organization_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    group_id: Option<String>,
    name_glob: Option<String>,
    name_regex: Option<String>,
}

fn rule_error(position: usize, problem: impl Into<String>) -> Error {
    Error::TeamRule {
        position,
        problem: problem.into(),
    }
}

impl TeamRules {
    /// Reads the rules file. `env` resolves `os.environ/NAME` references in `team` values, as in
    /// LiteLLM's config.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Settings(format!("{SETTING} {}: cannot be read: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string(), env)
    }

    /// Parses the text of a rules file; `origin` names it in file-level errors.
    pub fn parse(text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let file_error =
            |problem: String| Error::Settings(format!("{SETTING} {origin}: {problem}"));
        let document: Value = serde_saphyr::from_str(text)
            .map_err(|e| file_error(format!("is not valid YAML: {e}")))?;
        let file: RawFile = match document {
            // An empty file: no rules.
            Value::Null => RawFile { rules: None },
            Value::Object(_) => {
                serde_json::from_value(document).map_err(|e| file_error(e.to_string()))?
            }
            _ => return Err(file_error("must be a mapping with a `rules` list".into())),
        };
        let rules = file
            .rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, raw)| TeamRule::parse(index + 1, raw, env))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[TeamRule] {
        &self.rules
    }

    /// The first rule that matches the group (its object id, or its display name).
    pub fn matching(&self, group: &GroupId, name: &str) -> Option<&TeamRule> {
        self.rules
            .iter()
            .find(|rule| rule.matcher.matches(group, name))
    }

    /// What a new team for this group gets: its rule's fields over `defaults`, or `defaults`.
    pub fn params_for(&self, group: &GroupId, name: &str, defaults: &TeamDefaults) -> TeamDefaults {
        match self.matching(group, name) {
            Some(rule) => rule.team.overlaid_on(defaults),
            None => defaults.clone(),
        }
    }

    /// Every organization the rules name exists in `"LiteLLM_OrganizationTable"` (LiteLLM's
    /// `new_team` refuses a team in an unknown organization): checked at start, the first
    /// missing one is an error with its rule's position.
    pub async fn check_organizations(&self, db: &impl sea_orm::ConnectionTrait) -> Result<()> {
        let named: BTreeSet<&str> = self
            .rules
            .iter()
            .filter_map(|rule| rule.team.organization_id.as_deref())
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        let existing: BTreeSet<String> = db
            .query_all(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                r#"SELECT organization_id FROM "LiteLLM_OrganizationTable"
                   WHERE organization_id = ANY($1)"#,
                [sea_orm::Value::from(
                    named
                        .iter()
                        .map(|id| (*id).to_owned())
                        .collect::<Vec<String>>(),
                )],
            ))
            .await?
            .into_iter()
            .filter_map(|row| row.try_get_by_index::<String>(0).ok())
            .collect();
        for rule in &self.rules {
            if let Some(id) = rule.team.organization_id.as_deref()
                && !existing.contains(id)
            {
                return Err(rule_error(
                    rule.position,
                    format!(
                        "organization_id {id:?} does not exist in LiteLLM_OrganizationTable \
                         (create the organization in LiteLLM first)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl TeamRule {
    fn parse(position: usize, raw: Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        if !raw.is_object() {
            return Err(rule_error(
                position,
                "must be a mapping with `match` and `team` or `organization_id`",
            ));
        }
        let raw: RawRule =
            serde_json::from_value(raw).map_err(|e| rule_error(position, e.to_string()))?;
        let matcher = Self::parse_matcher(position, raw.matcher)?;
        let params = raw.team.unwrap_or_default();
        let mut team = parse_team_params(&params, SETTING, "team", UnknownKeys::Refuse, env)
            .map_err(|error| match error {
                Error::Config { key, problem, .. } => {
                    rule_error(position, format!("{key}: {problem}"))
                }
                other => other,
            })?;
        if team.organization_id.is_some() {
            return Err(rule_error(
                position,
                "team.organization_id: give organization_id beside match and team, not in team",
            ));
        }
        team.organization_id = match raw.organization_id {
            Some(id) if id.trim().is_empty() => {
                return Err(rule_error(position, "organization_id is empty"));
            }
            other => other,
        };
        Ok(Self {
            position,
            matcher,
            team,
        })
    }

    fn parse_matcher(position: usize, raw: Option<RawMatch>) -> Result<Matcher> {
        const NEEDS_ONE: &str = "match needs exactly one of group_id, name_glob, name_regex";
        let raw = raw.ok_or_else(|| rule_error(position, format!("no match: {NEEDS_ONE}")))?;
        let given: Vec<&str> = [
            ("group_id", raw.group_id.is_some()),
            ("name_glob", raw.name_glob.is_some()),
            ("name_regex", raw.name_regex.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if given.len() != 1 {
            let found = if given.is_empty() {
                "none given".to_owned()
            } else {
                format!("{} given", given.join(" and "))
            };
            return Err(rule_error(position, format!("{NEEDS_ONE}; {found}")));
        }
        if let Some(id) = raw.group_id {
            return GroupId::parse(&id)
                .map(Matcher::GroupId)
                .map_err(|e| rule_error(position, format!("group_id: {e}")));
        }
        if let Some(pattern) = raw.name_glob {
            return glob::Pattern::new(&pattern)
                .map(Matcher::NameGlob)
                .map_err(|e| rule_error(position, format!("name_glob {pattern:?}: {e}")));
        }
        let pattern = raw.name_regex.unwrap_or_default();
        regex::Regex::new(&pattern)
            .map(Matcher::NameRegex)
            .map_err(|e| {
                // regex's message spans lines (the pattern, a caret under the spot, then
                // `error: <reason>`): one line here, the reason kept.
                let text = e.to_string();
                let reason = match text.lines().find_map(|line| line.strip_prefix("error: ")) {
                    Some(reason) => format!("regex parse error: {reason}"),
                    None => text.split_whitespace().collect::<Vec<_>>().join(" "),
                };
                rule_error(position, format!("name_regex {pattern:?}: {reason}"))
            })
    }

    /// 1-based.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// The fields this rule gives (its `organization_id` among them).
    pub fn team(&self) -> &TeamDefaults {
        &self.team
    }

    /// The fields this rule gives that `team` (its parameters as LiteLLM has them) does not
    /// have, in [`TeamDefaults::KEYS`]' order; fields the rule leaves to `default_team_params`
    /// are not compared. Each field compares its own way ([`Compare`]): numbers and durations
    /// (by meaning: `monthly` is `30d`) exactly, lists as sets, metadata key by key (LiteLLM and
    /// admins keep their own keys in the same object).
    pub fn differences(&self, team: &TeamDefaults) -> Vec<FieldDifference> {
        let mut found = Vec::new();
        for (wanted, now) in self.team.fields().into_iter().zip(team.fields()) {
            let Some(wanted_value) = wanted.value else {
                continue;
            };
            let rule = wanted_value.to_json();
            let team = now.value.map_or(Value::Null, |value| value.to_json());
            let mut differ = |field: String, team: Value, rule: Value| {
                found.push(FieldDifference { field, team, rule });
            };
            match wanted.compare {
                Compare::Exact if team != rule => differ(wanted.name.to_owned(), team, rule),
                Compare::AsSet if !same_set(&team, &rule) => {
                    differ(wanted.name.to_owned(), team, rule);
                }
                Compare::ByKey => {
                    for (key, value) in rule.as_object().into_iter().flatten() {
                        let now = team.get(key).cloned().unwrap_or(Value::Null);
                        if now != *value {
                            differ(format!("{}.{key}", wanted.name), now, value.clone());
                        }
                    }
                }
                Compare::Exact | Compare::AsSet => {}
            }
        }
        found
    }
}

/// Lists compare as sets: LiteLLM's order carries no meaning.
fn same_set(now: &Value, wanted: &Value) -> bool {
    let items = |list: &Value| -> BTreeSet<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect()
    };
    items(now) == items(wanted)
}

/// One field where a team differs from its rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDifference {
    pub field: String,
    /// The team's value (null: not set).
    pub team: Value,
    /// The rule's value.
    pub rule: Value,
}

/// A team whose parameters differ from its rule's: reported by `sync --full --dry-run` as a JSON
/// line, never changed (an admin's edit stands, as with `default_team_params`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename = "team_differs_from_rule")]
pub struct RuleDrift {
    pub team_id: String,
    pub team_alias: Option<String>,
    /// The rule's position in the file, 1-based.
    pub rule: usize,
    pub fields: Vec<FieldDifference>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BudgetDuration;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<TeamRules> {
        TeamRules::parse(text, "rules.yaml", &no_env)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ID: &str = "6c1f0d2e-8a4b-4c55-9e21-3f7a1b2c3d4e";

    fn group(id: &str) -> GroupId {
        GroupId::parse(id).unwrap()
    }

    const EXAMPLE: &str = r#"
rules:
  - match: { group_id: "6C1F0D2E-8A4B-4C55-9E21-3F7A1B2C3D4E" }
    team: { max_budget: 5000, budget_duration: 30d, models: [gpt-4o, o3], tpm_limit: 100000, rpm_limit: 500, team_member_budget: 200 }
    organization_id: research-org
  - match: { name_glob: "Interns*" }
    team: { max_budget: 50, budget_duration: 30d }
  - match: { name_regex: "^eng-(platform|infra)$" }
    team: { models: [gpt-4o-mini] }
"#;

    #[test]
    fn reads_the_documented_example() {
        let rules = parse(EXAMPLE).unwrap();
        assert_eq!(rules.rules().len(), 3);
        let first = &rules.rules()[0];
        assert_eq!(first.position(), 1);
        assert_eq!(first.team().max_budget, Some(5000.0));
        assert_eq!(first.team().budget_duration, Some(BudgetDuration::Days(30)));
        assert_eq!(first.team().team_member_budget, Some(200.0));
        assert_eq!(
            first.team().organization_id.as_deref(),
            Some("research-org")
        );
        assert_eq!(first.team().soft_budget, None);
        let other = group("11111111-1111-4111-8111-111111111111");
        // The group id is normalised as Graph spells it.
        assert_eq!(
            rules
                .matching(&group(ID), "anything")
                .map(TeamRule::position),
            Some(1)
        );
        assert_eq!(
            rules
                .matching(&other, "Interns 2026")
                .map(TeamRule::position),
            Some(2)
        );
        assert_eq!(
            rules.matching(&other, "interns").map(TeamRule::position),
            None,
            "globs are case-sensitive"
        );
        assert_eq!(
            rules.matching(&other, "eng-infra").map(TeamRule::position),
            Some(3)
        );
        assert_eq!(
            rules
                .matching(&other, "eng-infra-old")
                .map(TeamRule::position),
            None
        );
        assert!(rules.matching(&other, "Sales").is_none());
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = parse(
            "rules:\n  - match: {name_glob: 'eng-*'}\n    team: {max_budget: 1}\n  - match: {name_regex: '^eng-infra$'}\n    team: {max_budget: 2}\n",
        )
        .unwrap();
        let defaults = TeamDefaults::default();
        let params = rules.params_for(&group(ID), "eng-infra", &defaults);
        assert_eq!(params.max_budget, Some(1.0));
    }

    #[test]
    fn a_rule_overrides_the_defaults_field_by_field() {
        let rules = parse(EXAMPLE).unwrap();
        let defaults = TeamDefaults {
            max_budget: Some(10.0),
            soft_budget: Some(8.0),
            models: Some(vec!["cheap".into()]),
            rpm_limit: Some(7),
            ..TeamDefaults::default()
        };
        let other = group("11111111-1111-4111-8111-111111111111");
        let interns = rules.params_for(&other, "Interns", &defaults);
        assert_eq!(interns.max_budget, Some(50.0));
        assert_eq!(interns.budget_duration, Some(BudgetDuration::Days(30)));
        assert_eq!(interns.soft_budget, Some(8.0));
        assert_eq!(interns.models.as_deref(), Some(&["cheap".to_owned()][..]));
        assert_eq!(interns.rpm_limit, Some(7));
        // No rule: the defaults as they are.
        assert_eq!(rules.params_for(&other, "Sales", &defaults), defaults);
    }

    #[test]
    fn empty_files_and_lists_have_no_rules() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("rules:\n").unwrap().is_empty());
        assert!(parse("rules: []\n").unwrap().is_empty());
    }

    #[test]
    fn a_bad_value_from_the_environment_is_named_by_its_reference_never_shown() {
        let env = |name: &str| (name == "INTERN_BUDGET").then(|| "sk-5ecr3t-budget".to_owned());
        for field in ["max_budget", "budget_duration", "rpm_limit", "blocked"] {
            let e = TeamRules::parse(
                &format!(
                    "rules:\n  - match: {{name_glob: 'I*'}}\n    team: {{{field}: os.environ/INTERN_BUDGET}}\n"
                ),
                "rules.yaml",
                &env,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with(&format!(
                    "ENTRA_SYNC_TEAM_RULES rule 1: team.{field}: os.environ/INTERN_BUDGET "
                )),
                "{e}"
            );
            assert!(!e.contains("5ecr3t"), "{field}: {e}");
        }
    }

    #[test]
    fn team_values_resolve_environment_references() {
        let env = |name: &str| (name == "INTERN_BUDGET").then(|| "75".to_owned());
        let rules = TeamRules::parse(
            "rules:\n  - match: {name_glob: 'I*'}\n    team: {max_budget: os.environ/INTERN_BUDGET}\n",
            "rules.yaml",
            &env,
        )
        .unwrap();
        assert_eq!(rules.rules()[0].team().max_budget, Some(75.0));
    }

    #[test]
    fn each_bad_rule_names_its_position_and_reason() {
        let ok = "  - match: {name_glob: 'A*'}\n    team: {max_budget: 1}\n";
        let cases = [
            (
                "  - match: {name_glob: 'B*'}\n    teams: {max_budget: 1}\n",
                "unknown field `teams`",
            ),
            (
                "  - match: {name_glob: 'B*', name: x}\n",
                "unknown field `name`",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {max_budgets: 1}\n",
                "team.max_budgets: unknown field",
            ),
            (
                "  - team: {max_budget: 1}\n",
                "no match: match needs exactly one of group_id, name_glob, name_regex",
            ),
            (
                "  - match: {}\n",
                "match needs exactly one of group_id, name_glob, name_regex; none given",
            ),
            (
                "  - match: {name_glob: 'B*', name_regex: '^B'}\n",
                "name_glob and name_regex given",
            ),
            (
                "  - match: {name_regex: '^('}\n",
                "name_regex \"^(\": regex parse error: unclosed group",
            ),
            ("  - match: {name_glob: 'B[*'}\n", "name_glob \"B[*\": "),
            (
                "  - match: {group_id: 'eng'}\n",
                "group_id: \"eng\" is not an Entra object id",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {max_budget: lots}\n",
                "team.max_budget: \"lots\" is not a number",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {budget_duration: 30x}\n",
                "team.budget_duration: \"30x\" is not a duration",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {team_member_budget: -5}\n",
                "team.team_member_budget: -5 is not a non-negative finite number",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {models: gpt-4o}\n",
                "team.models: must be a list of strings",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    team: {organization_id: x}\n",
                "team.organization_id: give organization_id beside match",
            ),
            (
                "  - match: {name_glob: 'B*'}\n    organization_id: ''\n",
                "organization_id is empty",
            ),
            ("  - just a string\n", "must be a mapping"),
        ];
        for (rule, reason) in cases {
            let e = error(&format!("rules:\n{ok}{rule}"));
            assert!(
                e.starts_with("ENTRA_SYNC_TEAM_RULES rule 2: "),
                "{rule}: {e}"
            );
            assert!(e.contains(reason), "{rule}: expected {reason:?} in {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn bad_files_are_named() {
        for (text, reason) in [
            ("rules: [\n", "is not valid YAML"),
            ("- a\n", "must be a mapping with a `rules` list"),
            ("rule: []\n", "unknown field `rule`"),
        ] {
            let e = error(text);
            assert!(e.contains("ENTRA_SYNC_TEAM_RULES rules.yaml: "), "{e}");
            assert!(e.contains(reason), "{text}: {e}");
        }
        let e = TeamRules::load(Path::new("/nonexistent/rules.yaml"), &no_env).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rules.yaml"), "{e}");
    }

    #[test]
    fn differences_cover_only_the_fields_the_rule_gives() {
        let rules = parse(
            "rules:\n  - match: {name_glob: '*'}\n    team: {max_budget: 100, budget_duration: monthly, models: [a, b], metadata: {cost_center: '42'}, team_member_budget: 5}\n    organization_id: org-1\n",
        )
        .unwrap();
        let rule = &rules.rules()[0];
        let mut team = TeamDefaults {
            max_budget: Some(100.0),
            budget_duration: Some(BudgetDuration::parse("30d").unwrap()),
            models: Some(vec!["b".into(), "a".into()]),
            organization_id: Some("org-1".into()),
            // Not in the rule: never compared.
            rpm_limit: Some(99),
            team_member_budget: Some(5.0),
            metadata: Some(Map::new()),
            ..TeamDefaults::default()
        };
        let metadata = team.metadata.as_mut().unwrap();
        metadata.insert("cost_center".into(), Value::from("42"));
        metadata.insert("admin_note".into(), Value::from("kept"));
        assert_eq!(rule.differences(&team), []);

        team.max_budget = Some(4000.0);
        team.models = Some(vec!["a".into()]);
        team.team_member_budget = None;
        let metadata = team.metadata.as_mut().unwrap();
        metadata.insert("cost_center".into(), Value::from("7"));
        let fields: Vec<(String, Value, Value)> = rule
            .differences(&team)
            .into_iter()
            .map(|d| (d.field, d.team, d.rule))
            .collect();
        assert_eq!(
            fields,
            [
                ("max_budget".into(), Value::from(4000.0), Value::from(100.0)),
                (
                    "models".into(),
                    serde_json::json!(["a"]),
                    serde_json::json!(["a", "b"])
                ),
                (
                    "metadata.cost_center".into(),
                    Value::from("7"),
                    Value::from("42")
                ),
                ("team_member_budget".into(), Value::Null, Value::from(5.0)),
            ]
        );
    }

    #[test]
    fn a_drift_prints_as_one_tagged_line() {
        let drift = RuleDrift {
            team_id: "t".into(),
            team_alias: Some("Interns".into()),
            rule: 2,
            fields: vec![FieldDifference {
                field: "max_budget".into(),
                team: Value::from(40.0),
                rule: Value::from(50.0),
            }],
        };
        assert_eq!(
            serde_json::to_string(&drift).unwrap(),
            r#"{"kind":"team_differs_from_rule","team_id":"t","team_alias":"Interns","rule":2,"fields":[{"field":"max_budget","team":40.0,"rule":50.0}]}"#
        );
    }
}
