-- LiteLLM's side of a resync's comparison (see compare.rs), read while Graph is read: for each
-- team, entra-sync's managed members (their count and the sum of a 64-bit hash of their user
-- ids, seeded with $1), and whether LiteLLM's rows agree with entra-sync's record. A team's rows
-- agree when its membership rows, its members_with_roles entries and the users whose `teams`
-- name it are each exactly its managed memberships (members and owners alike), no membership is
-- kept for an owner who no longer owns the group, no removal is held, and entra-sync has not
-- blocked it. Each table is read by one scan and aggregated to one row per team.
WITH managed AS (
    SELECT m.group_id AS team_id,
           count(*) FILTER (WHERE m.member) AS n,
           sum(hashtextextended(m.user_id, $1)) FILTER (WHERE m.member) AS h,
           count(*) AS n_all, sum(hashtextextended(m.user_id, $1)) AS h_all,
           count(*) FILTER (WHERE NOT m.member AND o.user_id IS NULL) AS strays
    FROM entra_sync_managed_memberships m
    LEFT JOIN entra_sync_group_owners o ON o.group_id = m.group_id AND o.user_id = m.user_id
    GROUP BY m.group_id
),
membership_rows AS (
    SELECT team_id, count(*) AS n, sum(hashtextextended(user_id, $1)) AS h
    FROM "LiteLLM_TeamMembership" GROUP BY team_id
),
entries AS (
    SELECT t.team_id, count(*) AS n, sum(hashtextextended(e.entry->>'user_id', $1)) AS h
    FROM "LiteLLM_TeamTable" t
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(t.members_with_roles) = 'array' THEN t.members_with_roles
             ELSE '[]'::jsonb END) AS e(entry)
    GROUP BY t.team_id
),
user_teams AS (
    SELECT j.team_id, count(*) AS n, sum(hashtextextended(u.user_id, $1)) AS h
    FROM "LiteLLM_UserTable" u CROSS JOIN LATERAL unnest(u.teams) AS j(team_id)
    GROUP BY j.team_id
),
held AS (SELECT DISTINCT group_id AS team_id FROM entra_sync_held_removals)
SELECT t.team_id, t.team_alias,
       coalesce(m.n, 0) AS members,
       coalesce(m.h, 0)::text AS members_hash,
       (h.team_id IS NULL
        AND NOT coalesce(jsonb_typeof(t.metadata) = 'object'
                         AND t.metadata ? 'entra_sync_blocked', false)
        AND coalesce(m.strays, 0) = 0
        AND (coalesce(r.n, 0), coalesce(r.h, 0)) = (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
        AND (coalesce(e.n, 0), coalesce(e.h, 0)) = (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
        AND (coalesce(ut.n, 0), coalesce(ut.h, 0)) = (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
       ) AS agrees
FROM "LiteLLM_TeamTable" t
LEFT JOIN managed m ON m.team_id = t.team_id
LEFT JOIN membership_rows r ON r.team_id = t.team_id
LEFT JOIN entries e ON e.team_id = t.team_id
LEFT JOIN user_teams ut ON ut.team_id = t.team_id
LEFT JOIN held h ON h.team_id = t.team_id
