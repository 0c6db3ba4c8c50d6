//! The team parameters entra-sync sets on the teams it creates, listed once (the
//! `team_params!` list at the end). The list gives [`TeamDefaults`] its fields, config and team
//! rules their keys and parsing ([`ParamType::from_config`]), a team rule's drift its comparison
//! ([`Compare`]) and the insert its columns ([`Place`], [`ParamType::to_column`]): a parameter
//! added to it is read, compared and written everywhere, or the crate does not compile.

use sea_orm::Value as Column;
use serde_json::{Map, Value};

use super::Reader;
use crate::budget::BudgetDuration;
use crate::error::Result;

/// Where LiteLLM keeps a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// The `"LiteLLM_TeamTable"` column of the parameter's name.
    Team,
    /// This column of the team's member budget (`"LiteLLM_BudgetTable"`, the row its
    /// `metadata.team_member_budget_id` names).
    MemberBudget(&'static str),
}

/// How a team's value is compared with a rule's when looking for drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compare {
    /// As they are (durations parsed: `monthly` is `30d`).
    Exact,
    /// Lists as sets: LiteLLM's order carries no meaning.
    AsSet,
    /// Key by key, only the keys the rule gives: LiteLLM and admins keep their own keys in the
    /// same object.
    ByKey,
}

/// One parameter of a [`TeamDefaults`], by name.
pub(crate) struct Field<'a> {
    /// LiteLLM's spelling.
    pub name: &'static str,
    pub place: Place,
    pub compare: Compare,
    /// `None`: not given.
    pub value: Option<&'a dyn ParamType>,
}

/// A parameter's type: how config reads it, how LiteLLM's column holds it.
pub(crate) trait ParamType: std::fmt::Debug {
    /// Reads the value at `key` of LiteLLM's config or a team rule (`os.environ/NAME` resolved).
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>>
    where
        Self: Sized;
    /// Reads LiteLLM's column; a value of another type, or one LiteLLM could not read (a
    /// malformed duration), is `None`.
    fn from_column(value: Column) -> Option<Self>
    where
        Self: Sized;
    fn to_column(&self) -> Column;
    /// As reports show it.
    fn to_json(&self) -> Value;
}

/// A budget: LiteLLM's `new_team` refuses a negative or infinite one.
impl ParamType for f64 {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.budget(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::Double(number) => number,
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::Double(Some(*self))
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for i64 {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.integer(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::BigInt(number) => number,
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::BigInt(Some(*self))
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

/// LiteLLM's `integer` columns (`max_parallel_requests`).
impl ParamType for i32 {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader
            .integer(value, key)?
            .map(|n| i32::try_from(n).map_err(|_| reader.error(key, "is too large")))
            .transpose()
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::Int(number) => number,
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::Int(Some(*self))
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for bool {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.boolean(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::Bool(flag) => flag,
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::Bool(Some(*self))
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl ParamType for String {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        Ok(reader.string(value, key)?.map(|(text, _)| text))
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::String(text) => text.map(|text| *text),
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::String(Some(Box::new(self.clone())))
    }
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
}

/// LiteLLM's `text[]` columns.
impl ParamType for Vec<String> {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.strings(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::Array(_, Some(items)) => items.into_iter().map(String::from_column).collect(),
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::Array(
            sea_orm::sea_query::ArrayType::String,
            Some(Box::new(self.iter().map(String::to_column).collect())),
        )
    }
    fn to_json(&self) -> Value {
        Value::from(self.clone())
    }
}

/// LiteLLM's `jsonb` columns that hold an object.
impl ParamType for Map<String, Value> {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.object(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        match value {
            Column::Json(Some(json)) => match *json {
                Value::Object(map) => Some(map),
                _ => None,
            },
            _ => None,
        }
    }
    fn to_column(&self) -> Column {
        Column::Json(Some(Box::new(self.to_json())))
    }
    fn to_json(&self) -> Value {
        Value::Object(self.clone())
    }
}

/// LiteLLM's duration text.
impl ParamType for BudgetDuration {
    fn from_config(reader: &Reader, value: Option<&Value>, key: &str) -> Result<Option<Self>> {
        reader.duration(value, key)
    }
    fn from_column(value: Column) -> Option<Self> {
        String::from_column(value).and_then(|text| BudgetDuration::parse(&text).ok())
    }
    fn to_column(&self) -> Column {
        self.to_string().to_column()
    }
    fn to_json(&self) -> Value {
        Value::from(self.to_string())
    }
}

/// Where the team's parameters come from, field by field: config, a team rule or a team as
/// LiteLLM has it.
pub(crate) trait ParamSource {
    fn get<T: ParamType>(&mut self, name: &'static str, place: Place) -> Result<Option<T>>;
}

macro_rules! team_params {
    ($(
        $(#[$doc:meta])*
        $name:ident: $type:ty, $compare:ident, $place:expr;
    )*) => {
        /// Field values for teams entra-sync creates (LiteLLM's `default_team_params`, or a team
        /// rule's `team`, see [`crate::team_rules`]), or a team's values as LiteLLM has them.
        /// Applied only when a team is created; later edits by an admin are never overwritten.
        /// `None`: not given, so the team gets LiteLLM's default (and a rule's field falls back
        /// to `default_team_params`' one, see [`TeamDefaults::overlaid_on`]).
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct TeamDefaults {
            $( $(#[$doc])* pub $name: Option<$type>, )*
        }

        impl TeamDefaults {
            /// The keys a params mapping may hold, in LiteLLM's spelling.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// These values, each field not given here taken from `base`: a team rule over
            /// `default_team_params`. Whole fields, not their insides: a rule's `metadata` or
            /// `models` replaces the default's.
            #[must_use]
            pub fn overlaid_on(&self, base: &TeamDefaults) -> TeamDefaults {
                TeamDefaults {
                    $( $name: self.$name.clone().or_else(|| base.$name.clone()), )*
                }
            }

            /// Every field, in the list's order.
            pub(crate) fn fields(&self) -> Vec<Field<'_>> {
                vec![$(
                    Field {
                        name: stringify!($name),
                        place: $place,
                        compare: Compare::$compare,
                        value: self.$name.as_ref().map(|value| value as &dyn ParamType),
                    },
                )*]
            }

            /// Each field read from `source`.
            pub(crate) fn read(source: &mut impl ParamSource) -> Result<TeamDefaults> {
                Ok(TeamDefaults {
                    $( $name: source.get(stringify!($name), $place)?, )*
                })
            }
        }
    };
}

team_params! {
    max_budget: f64, Exact, Place::Team;
    soft_budget: f64, Exact, Place::Team;
    budget_duration: BudgetDuration, Exact, Place::Team;
    /// Empty (or not given) means all models, as in LiteLLM.
    models: Vec<String>, AsSet, Place::Team;
    tpm_limit: i64, Exact, Place::Team;
    rpm_limit: i64, Exact, Place::Team;
    tpd_limit: i64, Exact, Place::Team;
    max_parallel_requests: i32, Exact, Place::Team;
    team_member_permissions: Vec<String>, AsSet, Place::Team;
    organization_id: String, Exact, Place::Team;
    access_group_ids: Vec<String>, AsSet, Place::Team;
    policies: Vec<String>, AsSet, Place::Team;
    default_team_member_models: Vec<String>, AsSet, Place::Team;
    metadata: Map<String, Value>, ByKey, Place::Team;
    model_max_budget: Map<String, Value>, Exact, Place::Team;
    blocked: bool, Exact, Place::Team;
    /// Each member's budget in the team: LiteLLM keeps it in a `"LiteLLM_BudgetTable"` row made
    /// with the team, named in the team's `metadata.team_member_budget_id`.
    team_member_budget: f64, Exact, Place::MemberBudget("max_budget");
    /// The member budget's reset period; not given: the team's `budget_duration`, as in LiteLLM.
    team_member_budget_duration: BudgetDuration, Exact, Place::MemberBudget("budget_duration");
    team_member_tpm_limit: i64, Exact, Place::MemberBudget("tpm_limit");
    team_member_rpm_limit: i64, Exact, Place::MemberBudget("rpm_limit");
}

impl TeamDefaults {
    /// Whether the team gets a member budget row (LiteLLM's `should_create_budget`: any member
    /// limit given).
    pub fn has_member_budget(&self) -> bool {
        self.fields()
            .iter()
            .any(|field| matches!(field.place, Place::MemberBudget(_)) && field.value.is_some())
    }
}
