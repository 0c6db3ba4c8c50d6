//! LiteLLM keys the soak makes as it goes, and what must have become of each.
//!
//! A team key is made only for a member LiteLLM shows at that moment, under the locks the store
//! takes (the team's advisory lock, then the user's row), so that a removal either committed
//! before it (no key is made) or comes after it (and sees the key). A personal key is made only
//! for a user enabled in Entra who has a LiteLLM row.
//!
//! What each must be once LiteLLM equals Entra:
//! - a personal key: blocked exactly when its user is disabled;
//! - a team key whose user should not be a member now: gone (the removal after it deleted it),
//!   except for a group unassigned under `block` or `keep`, whose members stay and whose keys
//!   are not checked;
//! - a team key of a member who never left that team in Entra since the soak began: there and
//!   unblocked;
//! - a team key of a member who left and came back: gone, or there and unblocked (whether
//!   entra-sync saw the leaving depends on timing).

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use worker::sync::UnassignedPolicy;

use super::entra::{Entra, History};
use super::litellm::{Difference, Litellm};
use crate::graph_common::{gid, uid};

/// One key the soak made.
#[derive(Clone, Debug)]
pub struct Key {
    pub token: String,
    pub user: u128,
    /// The group whose team it is for; `None`: a personal key.
    pub team: Option<u128>,
}

/// What a key must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Unblocked,
    Blocked,
    Gone,
    UnblockedOrGone,
    Unchecked,
}

#[derive(Debug, Default)]
pub struct Keys {
    pub made: Vec<Key>,
}

/// Runs `sql` in one transaction; returns the rows the last statement affected.
async fn in_transaction(db: &DatabaseConnection, statements: &[String]) -> u64 {
    let txn = db.begin().await.unwrap();
    let mut affected = 0;
    for sql in statements {
        affected = txn
            .execute(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap_or_else(|e| panic!("making a key: {sql}: {e}"))
            .rows_affected();
    }
    txn.commit().await.unwrap();
    affected
}

fn insert_key(token: &str, user: &str, team: Option<&str>, condition: &str) -> String {
    let team = team.map_or("NULL".to_owned(), |t| format!("'{t}'"));
    format!(
        r#"INSERT INTO "LiteLLM_VerificationToken"
             (token, key_alias, user_id, team_id, models, spend, metadata, created_at)
           SELECT '{token}', 'alias-{token}', '{user}', {team}, ARRAY['gpt-4o'], 0, '{{}}',
                  now() AT TIME ZONE 'UTC'
           WHERE {condition}"#
    )
}

impl Keys {
    /// Makes a key of user `user`'s for group `group`'s team, if LiteLLM shows them as its
    /// member now; returns whether it did.
    pub async fn make_team_key(
        &mut self,
        db: &DatabaseConnection,
        token: String,
        user: u128,
        group: u128,
    ) -> bool {
        let (user_id, team_id) = (uid(user).to_string(), gid(group).to_string());
        let statements = [
            format!("SELECT pg_advisory_xact_lock(hashtext('{team_id}'))"),
            format!(r#"SELECT 1 FROM "LiteLLM_UserTable" WHERE user_id = '{user_id}' FOR UPDATE"#),
            insert_key(
                &token,
                &user_id,
                Some(&team_id),
                &format!(
                    r#"EXISTS (SELECT 1 FROM "LiteLLM_TeamMembership"
                               WHERE user_id = '{user_id}' AND team_id = '{team_id}')"#
                ),
            ),
        ];
        let made = in_transaction(db, &statements).await == 1;
        if made {
            self.made.push(Key {
                token,
                user,
                team: Some(group),
            });
        }
        made
    }

    /// Makes a personal key of user `user`'s, who is enabled in Entra, if LiteLLM has a row of
    /// theirs; returns whether it did.
    pub async fn make_personal_key(
        &mut self,
        db: &DatabaseConnection,
        token: String,
        user: u128,
    ) -> bool {
        let user_id = uid(user).to_string();
        let statements = [
            format!(r#"SELECT 1 FROM "LiteLLM_UserTable" WHERE user_id = '{user_id}' FOR UPDATE"#),
            insert_key(
                &token,
                &user_id,
                None,
                &format!(
                    r#"EXISTS (SELECT 1 FROM "LiteLLM_UserTable" WHERE user_id = '{user_id}')"#
                ),
            ),
        ];
        let made = in_transaction(db, &statements).await == 1;
        if made {
            self.made.push(Key {
                token,
                user,
                team: None,
            });
        }
        made
    }

    /// How the keys differ from what they must be (see the module's documentation).
    pub fn differences(
        &self,
        found: &Litellm,
        entra: &Entra,
        history: &History,
        policy: UnassignedPolicy,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        for key in &self.made {
            let expect = match key.team {
                None if entra.enabled.contains(&key.user) => Expect::Unblocked,
                None => Expect::Blocked,
                Some(group) if !entra.teams.contains_key(&group) => match policy {
                    UnassignedPolicy::RemoveMembers => Expect::Gone,
                    UnassignedPolicy::Block | UnassignedPolicy::Keep => Expect::Unchecked,
                },
                Some(group) if !entra.is_member(key.user, group) => Expect::Gone,
                Some(group) if history.left.contains(&(key.user, group)) => Expect::UnblockedOrGone,
                Some(_) => Expect::Unblocked,
            };
            let row = found.keys.get(&key.token);
            let state = match row {
                None => "gone",
                Some(row) if row.blocked => "blocked",
                Some(_) => "unblocked",
            };
            let fine = match expect {
                Expect::Unblocked => state == "unblocked",
                Expect::Blocked => state == "blocked",
                Expect::Gone => state == "gone",
                Expect::UnblockedOrGone => state != "blocked",
                Expect::Unchecked => true,
            };
            if !fine {
                let owner = match key.team {
                    Some(group) => format!("user {}, group {group}", key.user),
                    None => format!("user {}, personal", key.user),
                };
                out.push(Difference {
                    subject: format!("key {} ({owner})", key.token),
                    place: "key",
                    expected: format!("{expect:?}").to_lowercase(),
                    found: state.into(),
                });
            }
        }
        out
    }
}
