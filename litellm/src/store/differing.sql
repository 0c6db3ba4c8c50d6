-- The teams whose LiteLLM rows may differ from what Graph says of their groups (see
-- compare.rs). Graph's side is in the tables graph_teams (every group read whole),
-- graph_members (its members as sync_teams would be given them) and graph_users (each member
-- once); LiteLLM's side, read meanwhile (litellm_sets.sql), in litellm_teams. Those four names
-- are replaced with the comparison's own tables before it runs, and $1 with the seed of this
-- comparison's hashes.
--
-- A team is reported equal only when its name is the group's, LiteLLM's rows agree with
-- entra-sync's record, and Graph's members are its managed members: the same count and the same
-- sum of hashes. A team with members added by hand is reported: sync_teams then decides, and
-- writes nothing when there is nothing to write.
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
)
SELECT x.team_id
FROM graph_teams x
LEFT JOIN litellm_teams t ON t.team_id = x.team_id
LEFT JOIN listed l ON l.team_id = x.team_id
LEFT JOIN unusual un ON un.team_id = x.team_id
WHERE t.team_id IS NULL
   OR NOT t.agrees
   OR x.unreadable
   OR (x.team_alias IS NOT NULL AND t.team_alias IS DISTINCT FROM x.team_alias)
   OR coalesce(un.suspect, false)
   OR (coalesce(l.n, 0), coalesce(l.h, 0) + coalesce(un.h, 0)) <> (t.members, t.members_hash)
