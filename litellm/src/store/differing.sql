-- The teams whose LiteLLM rows may differ from what Graph says of their groups (see
-- compare.rs). Graph's side is in the temporary tables graph_teams (every group read whole),
-- graph_members (its members as sync_teams would be given them) and graph_users (each member
-- once). $1: the seed of this comparison's hashes.
--
-- Each team's member sets are compared by their count and the sum of a 64-bit hash of each user
-- id, every source aggregated in one pass, group by group: a scan of each table, never one probe
-- per member. A team is reported equal only when every set agrees with entra-sync's own record
-- (entra_sync_managed_memberships):
--   - Graph's members   = the managed rows that say "member";
--   - LiteLLM's membership rows, members_with_roles entries and users' `teams`
--                       = every managed row (members and owners alike).
-- A team with members entra-sync does not manage (added by hand) is reported: sync_teams then
-- decides, and writes nothing when there is nothing to write.
WITH found AS (
    -- Each user Graph lists, as LiteLLM's sign-in would find her: by user_id, else by
    -- sso_user_id (users LiteLLM knows by another id).
    SELECT g.entra_id, g.email, g.alias, by_id.user_id AS by_id, by_sso.user_id AS by_sso,
           CASE WHEN by_id.user_id IS NOT NULL THEN by_id.user_email ELSE by_sso.user_email END
               AS user_email,
           CASE WHEN by_id.user_id IS NOT NULL THEN by_id.user_alias ELSE by_sso.user_alias END
               AS user_alias
    FROM graph_users g
    LEFT JOIN "LiteLLM_UserTable" by_id ON by_id.user_id = g.entra_id
    LEFT JOIN "LiteLLM_UserTable" by_sso ON by_sso.sso_user_id = g.entra_id
),
users AS MATERIALIZED (
    -- Her LiteLLM user id when it is not her object id, and whether sync_teams would write her
    -- row (to create it, link it, correct its email or fill in its alias) or refuse to pick
    -- between two rows.
    SELECT entra_id,
           CASE WHEN by_id IS NULL THEN by_sso END AS known_as,
           (by_id IS NULL AND by_sso IS NULL)
           OR by_id <> by_sso
           OR (email IS NOT NULL AND user_email IS DISTINCT FROM email)
           OR (alias ~ '\S' AND coalesce(user_alias, '') !~ '\S') AS suspect
    FROM found
),
listed AS (
    -- Graph's members of each team, by object id...
    SELECT team_id, count(*) AS n, sum(hashtextextended(entra_id, $1)) AS h
    FROM graph_members GROUP BY team_id
),
unusual_users AS MATERIALIZED (
    SELECT * FROM users WHERE known_as IS NOT NULL OR suspect
),
unusual AS (
    -- ...corrected for the few LiteLLM knows by another user id, with the teams of those
    -- whose row sync_teams would write.
    SELECT m.team_id,
           coalesce(sum(hashtextextended(u.known_as, $1)::numeric
                        - hashtextextended(m.entra_id, $1)::numeric), 0) AS h,
           bool_or(u.suspect) AS suspect
    FROM graph_members m JOIN unusual_users u ON u.entra_id = m.entra_id
    GROUP BY m.team_id
),
managed AS (
    -- strays: a membership kept for an owner who no longer owns the group (a leaver).
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
    FROM graph_teams x JOIN "LiteLLM_TeamTable" t ON t.team_id = x.team_id
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
SELECT x.team_id
FROM graph_teams x
LEFT JOIN "LiteLLM_TeamTable" t ON t.team_id = x.team_id
LEFT JOIN listed l ON l.team_id = x.team_id
LEFT JOIN unusual un ON un.team_id = x.team_id
LEFT JOIN managed m ON m.team_id = x.team_id
LEFT JOIN membership_rows r ON r.team_id = x.team_id
LEFT JOIN entries e ON e.team_id = x.team_id
LEFT JOIN user_teams ut ON ut.team_id = x.team_id
LEFT JOIN held h ON h.team_id = x.team_id
WHERE t.team_id IS NULL
   OR x.unreadable
   OR (x.team_alias IS NOT NULL AND t.team_alias IS DISTINCT FROM x.team_alias)
   OR (jsonb_typeof(t.metadata) = 'object' AND t.metadata ? 'entra_sync_blocked')
   OR h.team_id IS NOT NULL
   OR coalesce(un.suspect, false)
   OR coalesce(m.strays, 0) > 0
   OR (coalesce(l.n, 0), coalesce(l.h, 0) + coalesce(un.h, 0)) <> (coalesce(m.n, 0), coalesce(m.h, 0))
   OR (coalesce(r.n, 0), coalesce(r.h, 0)) <> (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
   OR (coalesce(e.n, 0), coalesce(e.h, 0)) <> (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
   OR (coalesce(ut.n, 0), coalesce(ut.h, 0)) <> (coalesce(m.n_all, 0), coalesce(m.h_all, 0))
