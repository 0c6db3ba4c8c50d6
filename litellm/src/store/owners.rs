//! The group's owners as LiteLLM writes them: the roles of the team's admins in
//! `members_with_roles`, and `entra_sync_group_owners`, which remembers the owners and whether
//! entra-sync made each admin. What changes is planned in [`super::planning`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::planning::OwnerRow;
use super::sql::{litellm_timestamp, stmt, text_array};
use crate::error::Result;

/// Gives these members of the team their new roles in `members_with_roles`, keeping every entry,
/// its order and its other fields.
pub(super) async fn set_roles(
    txn: &DatabaseTransaction,
    team_id: &str,
    roles: &[(String, &'static str)],
    now: DateTime<Utc>,
) -> Result<()> {
    let (user_ids, roles): (Vec<&str>, Vec<&str>) = roles
        .iter()
        .map(|(user, role)| (user.as_str(), *role))
        .unzip();
    txn.execute(stmt(
        r#"UPDATE "LiteLLM_TeamTable"
           SET members_with_roles = (
                 SELECT coalesce(jsonb_agg(
                          CASE WHEN r.role IS NULL THEN entry
                               ELSE jsonb_set(entry, '{role}', to_jsonb(r.role)) END
                          ORDER BY position), '[]'::jsonb)
                 FROM jsonb_array_elements(
                        CASE WHEN jsonb_typeof(members_with_roles) = 'array'
                             THEN members_with_roles ELSE '[]'::jsonb END
                      ) WITH ORDINALITY AS current(entry, position)
                 LEFT JOIN unnest($2::text[], $3::text[]) AS r(user_id, role)
                        ON r.user_id = entry->>'user_id'
               ),
               updated_at = $4
           WHERE team_id = $1"#,
        [
            team_id.into(),
            text_array(user_ids),
            text_array(roles),
            litellm_timestamp(now).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Remembers the group's owners as `rows` say (nothing is written when they are as stored).
pub(super) async fn store_owners(
    txn: &DatabaseTransaction,
    team_id: &str,
    rows: &HashMap<String, OwnerRow>,
    stored: &HashMap<String, OwnerRow>,
) -> Result<()> {
    let same = rows.len() == stored.len()
        && rows.iter().all(|(user_id, row)| {
            stored.get(user_id).is_some_and(|old| {
                old.entra_user_id == row.entra_user_id && old.made_admin == row.made_admin
            })
        });
    if same {
        return Ok(());
    }
    let user_ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    let entra_ids: Vec<&str> = rows.values().map(|r| r.entra_user_id.as_str()).collect();
    let made_admin: Vec<bool> = rows.values().map(|r| r.made_admin).collect();
    txn.execute(stmt(
        "DELETE FROM entra_sync_group_owners WHERE group_id = $1 AND NOT (user_id = ANY($2))",
        [team_id.into(), text_array(&user_ids)],
    ))
    .await?;
    if !rows.is_empty() {
        txn.execute(stmt(
            "INSERT INTO entra_sync_group_owners (group_id, user_id, entra_user_id, made_admin)
             SELECT $1, x.user_id, x.entra_user_id, x.made_admin
             FROM unnest($2::text[], $3::text[], $4::bool[]) AS x(user_id, entra_user_id, made_admin)
             ON CONFLICT (group_id, user_id)
             DO UPDATE SET entra_user_id = EXCLUDED.entra_user_id, made_admin = EXCLUDED.made_admin",
            [
                team_id.into(),
                text_array(&user_ids),
                text_array(&entra_ids),
                made_admin.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}
