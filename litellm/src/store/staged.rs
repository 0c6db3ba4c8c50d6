//! Removals an operation leaves to its unit of work: what the planner produces and the unit's
//! staging (see [`super::removals`]) collects, applies or holds.

use super::change::RemovalReason;

/// One unit of work's number, under which its operations stage their removals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitId(pub(super) u64);

/// What an operation does with the removals it plans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Removals {
    /// Applies them (an operation outside a unit of work, or a unit applying what it staged).
    #[default]
    Apply,
    /// Leaves them to its unit of work, which applies or holds them at its end.
    Stage(UnitId),
}

/// A removal an operation planned and left to its unit of work: the member (LiteLLM's user id,
/// and the Entra object id when known) leaves the team, with their keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StagedRemoval {
    pub team_id: String,
    pub user_id: String,
    pub entra_user_id: Option<String>,
    pub reason: RemovalReason,
}
