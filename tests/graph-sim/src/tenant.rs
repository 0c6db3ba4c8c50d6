//! The simulated Entra tenant: users, groups and their members, the enterprise app with its app
//! roles and assignments, and a change log from which delta queries are answered.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub display_name: String,
    pub user_principal_name: String,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default = "enabled")]
    pub account_enabled: bool,
}

fn enabled() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub id: Uuid,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Direct members: users or other groups.
    #[serde(default)]
    pub members: BTreeSet<Uuid>,
    /// Owners: users (Graph also allows service principals, which entra-sync does not need).
    #[serde(default)]
    pub owners: BTreeSet<Uuid>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppRole {
    pub id: Uuid,
    pub value: String,
    pub display_name: String,
    #[serde(default = "enabled")]
    pub is_enabled: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PrincipalType {
    User,
    Group,
    ServicePrincipal,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub id: String,
    pub principal_id: Uuid,
    pub principal_type: PrincipalType,
    /// `00000000-0000-0000-0000-000000000000` is default access, without a role.
    pub app_role_id: Uuid,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct App {
    pub service_principal_id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    #[serde(default)]
    pub app_roles: Vec<AppRole>,
    #[serde(default)]
    pub assignments: Vec<Assignment>,
}

impl Default for App {
    fn default() -> Self {
        Self {
            service_principal_id: Uuid::new_v4(),
            app_id: Uuid::new_v4(),
            display_name: "LiteLLM".into(),
            app_roles: Vec::new(),
            assignments: Vec::new(),
        }
    }
}

/// A tenant as a JSON file holds it (`graph-sim --tenant FILE`, `POST /admin/tenant`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantFile {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub groups: Vec<Group>,
    #[serde(default)]
    pub app: App,
}

impl TenantFile {
    /// A generated tenant for benchmarks: `users` users and `groups` groups of `members` members
    /// each, users spread evenly over the groups; every group assigned to the app.
    pub fn generate(groups: u128, users: u128, members: u128) -> Self {
        let user = |n: u128| Uuid::from_u128(0x5b00_0000_0000_4000_8000_0000_0000_0000 + n);
        let group = |n: u128| Uuid::from_u128(0x9a00_0000_0000_4000_8000_0000_0000_0000 + n);
        let users_list = (0..users)
            .map(|n| User {
                id: user(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@contoso.example"),
                mail: None,
                account_enabled: true,
            })
            .collect();
        let groups_list = (0..groups)
            .map(|g| Group {
                id: group(g),
                display_name: format!("Group {g}"),
                description: None,
                members: (0..members)
                    .map(|k| user((g * members + k) % users.max(1)))
                    .collect(),
                owners: BTreeSet::new(),
            })
            .collect();
        let app = App {
            assignments: (0..groups)
                .map(|g| Assignment {
                    id: format!("generated-{g}"),
                    principal_id: group(g),
                    principal_type: PrincipalType::Group,
                    app_role_id: Uuid::nil(),
                })
                .collect(),
            ..App::default()
        };
        Self {
            users: users_list,
            groups: groups_list,
            app,
        }
    }
}

/// Where [`TenantFile::generate_nested`]'s ids start: apart from [`TenantFile::generate`]'s
/// (`0x5b00…` users, `0x9a00…` groups), so that both can share a tenant.
const NESTED_TOP_GROUPS: u128 = 0x9b00_0000_0000_4000_8000_0000_0000_0000;
const NESTED_GROUPS: u128 = 0x9c00_0000_0000_4000_8000_0000_0000_0000;
const NESTED_USERS: u128 = 0x5c00_0000_0000_4000_8000_0000_0000_0000;

impl TenantFile {
    /// A generated tree for benchmarks of transitive membership: `groups` top groups, each
    /// assigned to the app (default access) and having `nested_per_group` nested groups as
    /// members; each nested group (not assigned) has `users_per_nested` users, every user in
    /// exactly one nested group. No group has owners.
    ///
    /// Ids are deterministic, numbered in order of the tree:
    /// - top group `t` (0-based) is [`Self::top_group_id`]`(t)`, named `Top {t}`;
    /// - its `k`-th nested group is [`Self::nested_group_id`]`(t * nested_per_group + k)`,
    ///   named `Nested {n}` by that flat number `n`;
    /// - nested group `n`'s `u`-th user is [`Self::nested_user_id`]`(n * users_per_nested + u)`,
    ///   named `Nested user {m}` (`nested-user{m}@contoso.example`) by that flat number `m`.
    ///
    /// So the last user, deepest in the last top group, is
    /// `nested_user_id(groups * nested_per_group * users_per_nested - 1)`.
    pub fn generate_nested(groups: u128, nested_per_group: u128, users_per_nested: u128) -> Self {
        let nested_count = groups * nested_per_group;
        let users = (0..nested_count * users_per_nested)
            .map(|m| User {
                id: Self::nested_user_id(m),
                display_name: format!("Nested user {m}"),
                user_principal_name: format!("nested-user{m}@contoso.example"),
                mail: None,
                account_enabled: true,
            })
            .collect();
        let top_groups = (0..groups).map(|t| Group {
            id: Self::top_group_id(t),
            display_name: format!("Top {t}"),
            description: None,
            members: (0..nested_per_group)
                .map(|k| Self::nested_group_id(t * nested_per_group + k))
                .collect(),
            owners: BTreeSet::new(),
        });
        let nested_groups = (0..nested_count).map(|n| Group {
            id: Self::nested_group_id(n),
            display_name: format!("Nested {n}"),
            description: None,
            members: (0..users_per_nested)
                .map(|u| Self::nested_user_id(n * users_per_nested + u))
                .collect(),
            owners: BTreeSet::new(),
        });
        let app = App {
            assignments: (0..groups)
                .map(|t| Assignment {
                    id: format!("generated-top-{t}"),
                    principal_id: Self::top_group_id(t),
                    principal_type: PrincipalType::Group,
                    app_role_id: Uuid::nil(),
                })
                .collect(),
            ..App::default()
        };
        Self {
            users,
            groups: top_groups.chain(nested_groups).collect(),
            app,
        }
    }

    /// The `n`-th top group of [`Self::generate_nested`] (0-based).
    pub fn top_group_id(n: u128) -> Uuid {
        Uuid::from_u128(NESTED_TOP_GROUPS + n)
    }

    /// The `n`-th nested group of [`Self::generate_nested`], counted over all top groups.
    pub fn nested_group_id(n: u128) -> Uuid {
        Uuid::from_u128(NESTED_GROUPS + n)
    }

    /// The `n`-th user of [`Self::generate_nested`], counted over all nested groups.
    pub fn nested_user_id(n: u128) -> Uuid {
        Uuid::from_u128(NESTED_USERS + n)
    }
}

/// What a change was to, for change notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Group(Uuid),
    User(Uuid),
}

/// The changeType Graph reports: creation, updates and soft deletion are all `updated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Updated,
    Deleted,
}

/// A change that Graph would notify subscribers about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    pub resource: Resource,
    pub change_type: ChangeType,
    /// Caused by an owner change only: Graph does not document whether those are notified, so
    /// delivery can leave them out (`DeliveryConfig::owner_changes`).
    pub owner_change: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    GroupChanged,
    MemberAdded(Uuid),
    MemberRemoved(Uuid),
    OwnerAdded(Uuid),
    OwnerRemoved(Uuid),
    SoftDeleted,
    Restored,
    HardDeleted,
}

/// One group as a delta round reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaGroup {
    pub id: Uuid,
    /// `None` for a removed group.
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub members_added: Vec<Uuid>,
    pub members_removed: Vec<Uuid>,
    pub owners_added: Vec<Uuid>,
    pub owners_removed: Vec<Uuid>,
    /// `changed` (soft-deleted) or `deleted` (gone for good).
    pub removed: Option<&'static str>,
}

/// Why a delta round could not be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum DeltaError {
    /// The token is older than the tenant keeps state for: the caller must resync.
    Expired,
}

/// The net change of a group's relations over a span of the log: `true` added, `false` removed.
#[derive(Default)]
struct NetChanges {
    members: HashMap<Uuid, bool>,
    owners: HashMap<Uuid, bool>,
}

impl NetChanges {
    fn apply(&mut self, event: Event) {
        match event {
            Event::MemberAdded(m) => self.members.insert(m, true),
            Event::MemberRemoved(m) => self.members.insert(m, false),
            Event::OwnerAdded(o) => self.owners.insert(o, true),
            Event::OwnerRemoved(o) => self.owners.insert(o, false),
            Event::GroupChanged | Event::SoftDeleted | Event::Restored | Event::HardDeleted => None,
        };
    }

    /// The added and the removed ids, each sorted.
    fn split(net: &HashMap<Uuid, bool>) -> (Vec<Uuid>, Vec<Uuid>) {
        let mut added: Vec<Uuid> = net.iter().filter(|(_, a)| **a).map(|(id, _)| *id).collect();
        let mut removed: Vec<Uuid> = net
            .iter()
            .filter(|(_, a)| !**a)
            .map(|(id, _)| *id)
            .collect();
        added.sort();
        removed.sort();
        (added, removed)
    }
}

#[derive(Debug, Default)]
pub struct Tenant {
    pub users: HashMap<Uuid, User>,
    pub groups: HashMap<Uuid, Group>,
    /// Groups in the recycle bin, with their app role assignments, which a restore brings back
    /// ("you can fully restore the item").
    soft_deleted: HashMap<Uuid, (Group, Vec<Assignment>)>,
    pub app: App,
    version: u64,
    log: Vec<(u64, Uuid, Event)>,
    /// Delta tokens below this version are expired.
    oldest_valid: u64,
    deleted_users: HashSet<Uuid>,
    /// Users created, changed or deleted, at which version: what the users delta reports.
    user_log: Vec<(u64, Uuid)>,
}

impl Tenant {
    pub fn from_file(file: TenantFile) -> Self {
        Self {
            users: file.users.into_iter().map(|u| (u.id, u)).collect(),
            groups: file.groups.into_iter().map(|g| (g.id, g)).collect(),
            app: file.app,
            ..Self::default()
        }
    }

    pub fn to_file(&self) -> TenantFile {
        let mut users: Vec<User> = self.users.values().cloned().collect();
        users.sort_by_key(|u| u.id);
        let mut groups: Vec<Group> = self.groups.values().cloned().collect();
        groups.sort_by_key(|g| g.id);
        TenantFile {
            users,
            groups,
            app: self.app.clone(),
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn record(&mut self, group: Uuid, event: Event) {
        self.version += 1;
        self.log.push((self.version, group, event));
    }

    fn group_notice(id: Uuid, change_type: ChangeType) -> Vec<Notice> {
        vec![Notice {
            resource: Resource::Group(id),
            change_type,
            owner_change: false,
        }]
    }

    fn owner_notice(id: Uuid) -> Vec<Notice> {
        vec![Notice {
            resource: Resource::Group(id),
            change_type: ChangeType::Updated,
            owner_change: true,
        }]
    }

    fn record_user(&mut self, user: Uuid) {
        self.version += 1;
        self.user_log.push((self.version, user));
    }

    pub fn upsert_user(&mut self, user: User) -> Vec<Notice> {
        let id = user.id;
        self.deleted_users.remove(&id);
        self.users.insert(id, user);
        self.record_user(id);
        vec![Notice {
            resource: Resource::User(id),
            change_type: ChangeType::Updated,
            owner_change: false,
        }]
    }

    /// Deletes a user for good: it leaves every group, as member and as owner.
    pub fn delete_user(&mut self, id: Uuid) -> Vec<Notice> {
        let mut notices = Vec::new();
        if self.users.remove(&id).is_none() {
            return notices;
        }
        self.deleted_users.insert(id);
        self.record_user(id);
        for group in self.groups_where(|g| g.members.contains(&id)) {
            notices.extend(self.remove_member(group, id));
        }
        for group in self.groups_where(|g| g.owners.contains(&id)) {
            notices.extend(self.remove_owner(group, id));
        }
        notices.push(Notice {
            resource: Resource::User(id),
            change_type: ChangeType::Deleted,
            owner_change: false,
        });
        notices
    }

    fn groups_where(&self, test: impl Fn(&Group) -> bool) -> Vec<Uuid> {
        self.groups
            .values()
            .filter(|g| test(g))
            .map(|g| g.id)
            .collect()
    }

    /// Creates a group or changes its name and description (not its members).
    pub fn upsert_group(
        &mut self,
        id: Uuid,
        display_name: &str,
        description: Option<&str>,
    ) -> Vec<Notice> {
        let group = self.groups.entry(id).or_insert_with(|| Group {
            id,
            display_name: String::new(),
            description: None,
            members: BTreeSet::new(),
            owners: BTreeSet::new(),
        });
        group.display_name = display_name.to_owned();
        group.description = description.map(str::to_owned);
        self.record(id, Event::GroupChanged);
        Self::group_notice(id, ChangeType::Updated)
    }

    pub fn add_member(&mut self, group: Uuid, member: Uuid) -> Vec<Notice> {
        let Some(g) = self.groups.get_mut(&group) else {
            return Vec::new();
        };
        if !g.members.insert(member) {
            return Vec::new();
        }
        self.record(group, Event::MemberAdded(member));
        Self::group_notice(group, ChangeType::Updated)
    }

    pub fn remove_member(&mut self, group: Uuid, member: Uuid) -> Vec<Notice> {
        let Some(g) = self.groups.get_mut(&group) else {
            return Vec::new();
        };
        if !g.members.remove(&member) {
            return Vec::new();
        }
        self.record(group, Event::MemberRemoved(member));
        Self::group_notice(group, ChangeType::Updated)
    }

    pub fn add_owner(&mut self, group: Uuid, owner: Uuid) -> Vec<Notice> {
        let Some(g) = self.groups.get_mut(&group) else {
            return Vec::new();
        };
        if !g.owners.insert(owner) {
            return Vec::new();
        }
        self.record(group, Event::OwnerAdded(owner));
        Self::owner_notice(group)
    }

    pub fn remove_owner(&mut self, group: Uuid, owner: Uuid) -> Vec<Notice> {
        let Some(g) = self.groups.get_mut(&group) else {
            return Vec::new();
        };
        if !g.owners.remove(&owner) {
            return Vec::new();
        }
        self.record(group, Event::OwnerRemoved(owner));
        Self::owner_notice(group)
    }

    /// A group's owners in id order; `None` for a group the tenant does not have.
    pub fn owners_of(&self, group: Uuid) -> Option<Vec<Uuid>> {
        self.groups
            .get(&group)
            .map(|g| g.owners.iter().copied().collect())
    }

    /// Moves a group to the recycle bin: Graph reports this as `updated`.
    pub fn soft_delete_group(&mut self, id: Uuid) -> Vec<Notice> {
        let Some(group) = self.groups.remove(&id) else {
            return Vec::new();
        };
        let (assignments, kept): (Vec<Assignment>, Vec<Assignment>) = self
            .app
            .assignments
            .drain(..)
            .partition(|a| a.principal_id == id);
        self.app.assignments = kept;
        self.soft_deleted.insert(id, (group, assignments));
        self.record(id, Event::SoftDeleted);
        Self::group_notice(id, ChangeType::Updated)
    }

    pub fn restore_group(&mut self, id: Uuid) -> Vec<Notice> {
        let Some((group, assignments)) = self.soft_deleted.remove(&id) else {
            return Vec::new();
        };
        self.groups.insert(id, group);
        self.app.assignments.extend(assignments);
        self.record(id, Event::Restored);
        Self::group_notice(id, ChangeType::Updated)
    }

    /// Deletes a group for good (from the recycle bin or directly): Graph reports `deleted`.
    pub fn hard_delete_group(&mut self, id: Uuid) -> Vec<Notice> {
        if self.groups.remove(&id).is_none() && self.soft_deleted.remove(&id).is_none() {
            return Vec::new();
        }
        self.app.assignments.retain(|a| a.principal_id != id);
        self.record(id, Event::HardDeleted);
        Self::group_notice(id, ChangeType::Deleted)
    }

    /// Assigns a user or group to the app, with an app role or (nil id) default access.
    pub fn assign(&mut self, principal_id: Uuid, app_role_id: Uuid) -> Option<String> {
        let principal_type = if self.groups.contains_key(&principal_id) {
            PrincipalType::Group
        } else if self.users.contains_key(&principal_id) {
            PrincipalType::User
        } else {
            return None;
        };
        let id = format!("sim-{}", Uuid::new_v4().simple());
        self.app.assignments.push(Assignment {
            id: id.clone(),
            principal_id,
            principal_type,
            app_role_id,
        });
        Some(id)
    }

    /// Removes every assignment of the principal; returns how many there were.
    pub fn unassign(&mut self, principal_id: Uuid) -> usize {
        let before = self.app.assignments.len();
        self.app
            .assignments
            .retain(|a| a.principal_id != principal_id);
        before - self.app.assignments.len()
    }

    pub fn display_name_of(&self, id: Uuid) -> Option<&str> {
        self.users
            .get(&id)
            .map(|u| u.display_name.as_str())
            .or_else(|| self.groups.get(&id).map(|g| g.display_name.as_str()))
    }

    /// Makes every delta token issued so far expired.
    pub fn expire_delta_tokens(&mut self) {
        self.oldest_valid = self.version + 1;
        // Nothing before it can be asked for again.
        self.log.clear();
        self.user_log.clear();
        // A later token must still be distinguishable from the expired ones.
        self.version += 1;
    }

    /// Direct members, or all members with nested groups flattened (`transitive`).
    pub fn members_of(&self, group: Uuid, transitive: bool) -> Option<Vec<Uuid>> {
        let g = self.groups.get(&group)?;
        if !transitive {
            return Some(g.members.iter().copied().collect());
        }
        let mut seen = BTreeSet::new();
        let mut stack: Vec<Uuid> = g.members.iter().copied().collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id)
                && let Some(nested) = self.groups.get(&id)
            {
                stack.extend(nested.members.iter().copied());
            }
        }
        Some(seen.into_iter().collect())
    }

    /// The groups a delta round reports: everything since `since` (a token's version; `None` for
    /// the first round, which reports every group with all its members and owners), limited to
    /// `only`.
    pub fn delta(
        &self,
        since: Option<u64>,
        only: Option<&HashSet<Uuid>>,
    ) -> Result<Vec<DeltaGroup>, DeltaError> {
        let wanted = |id: &Uuid| only.is_none_or(|only| only.contains(id));
        let Some(since) = since else {
            let mut all: Vec<DeltaGroup> = self
                .groups
                .values()
                .filter(|g| wanted(&g.id))
                .map(|g| DeltaGroup {
                    id: g.id,
                    display_name: Some(g.display_name.clone()),
                    description: g.description.clone(),
                    members_added: g.members.iter().copied().collect(),
                    members_removed: Vec::new(),
                    owners_added: g.owners.iter().copied().collect(),
                    owners_removed: Vec::new(),
                    removed: None,
                })
                .collect();
            all.sort_by_key(|g| g.id);
            return Ok(all);
        };
        if since < self.oldest_valid {
            return Err(DeltaError::Expired);
        }
        // Net effect per group since the token: the last word on each member and owner wins.
        let mut touched: Vec<Uuid> = Vec::new();
        let mut changes: HashMap<Uuid, NetChanges> = HashMap::new();
        for (version, group, event) in &self.log {
            if *version <= since || !wanted(group) {
                continue;
            }
            if !changes.contains_key(group) {
                touched.push(*group);
            }
            changes.entry(*group).or_default().apply(*event);
        }
        let out = touched
            .into_iter()
            .map(|id| {
                let net = changes.remove(&id).unwrap_or_default();
                self.delta_group(id, net)
            })
            .collect();
        Ok(out)
    }

    /// One changed group as a later round reports it: a removed group carries no relations.
    fn delta_group(&self, id: Uuid, net: NetChanges) -> DeltaGroup {
        let removed = if self.soft_deleted.contains_key(&id) {
            Some("changed")
        } else if !self.groups.contains_key(&id) {
            Some("deleted")
        } else {
            None
        };
        let net = if removed.is_some() {
            NetChanges::default()
        } else {
            net
        };
        let (members_added, members_removed) = NetChanges::split(&net.members);
        let (owners_added, owners_removed) = NetChanges::split(&net.owners);
        let group = self.groups.get(&id);
        DeltaGroup {
            id,
            display_name: group.map(|g| g.display_name.clone()),
            description: group.and_then(|g| g.description.clone()),
            members_added,
            members_removed,
            owners_added,
            owners_removed,
            removed,
        }
    }

    /// The users a users delta round reports, sorted: every user for the first round (`since`
    /// `None`), else those created, changed or deleted after version `since` up to `upto`, each
    /// with `true` when it is gone (`@removed`, reason `deleted`).
    pub fn users_delta(
        &self,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<(Uuid, bool)>, DeltaError> {
        let users: BTreeSet<Uuid> = match since {
            None => self.users.keys().copied().collect(),
            Some(since) if since < self.oldest_valid => return Err(DeltaError::Expired),
            Some(since) => self
                .user_log
                .iter()
                .filter(|(version, _)| *version > since && *version <= upto)
                .map(|(_, user)| *user)
                .collect(),
        };
        Ok(users
            .into_iter()
            .map(|id| (id, !self.users.contains_key(&id)))
            .collect())
    }

    pub fn is_group(&self, id: Uuid) -> bool {
        self.groups.contains_key(&id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn tenant() -> Tenant {
        let mut t = Tenant::default();
        for n in 1..=3 {
            t.upsert_user(User {
                id: id(n),
                display_name: format!("User {n}"),
                user_principal_name: format!("user{n}@sim.example"),
                mail: None,
                account_enabled: true,
            });
        }
        t.upsert_group(id(100), "Engineering", None);
        t.add_member(id(100), id(1));
        t.add_member(id(100), id(2));
        t
    }

    #[test]
    fn first_round_reports_every_group_with_all_members() {
        let t = tenant();
        let delta = t.delta(None, None).unwrap();
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].members_added, [id(1), id(2)]);
        assert_eq!(delta[0].removed, None);
    }

    #[test]
    fn later_rounds_report_net_member_changes() {
        let mut t = tenant();
        let token = t.version();
        t.add_member(id(100), id(3));
        t.remove_member(id(100), id(1));
        t.add_member(id(100), id(1));
        t.remove_member(id(100), id(2));
        let delta = t.delta(Some(token), None).unwrap();
        assert_eq!(delta[0].members_added, [id(1), id(3)]);
        assert_eq!(delta[0].members_removed, [id(2)]);
        assert!(t.delta(Some(t.version()), None).unwrap().is_empty());
    }

    #[test]
    fn soft_and_hard_deletion() {
        let mut t = tenant();
        let token = t.version();
        assert_eq!(
            t.soft_delete_group(id(100))[0].change_type,
            ChangeType::Updated
        );
        assert_eq!(
            t.delta(Some(token), None).unwrap()[0].removed,
            Some("changed")
        );
        assert_eq!(
            t.hard_delete_group(id(100))[0].change_type,
            ChangeType::Deleted
        );
        assert_eq!(
            t.delta(Some(token), None).unwrap()[0].removed,
            Some("deleted")
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let mut t = tenant();
        let token = t.version();
        t.expire_delta_tokens();
        assert_eq!(t.delta(Some(token), None), Err(DeltaError::Expired));
        assert!(t.delta(Some(t.version()), None).unwrap().is_empty());
    }

    #[test]
    fn transitive_members_flatten_nested_groups() {
        let mut t = tenant();
        t.upsert_group(id(200), "Parent", None);
        t.add_member(id(200), id(100));
        t.add_member(id(200), id(3));
        assert_eq!(t.members_of(id(200), false).unwrap(), [id(3), id(100)]);
        assert_eq!(
            t.members_of(id(200), true).unwrap(),
            [id(1), id(2), id(3), id(100)]
        );
    }

    #[test]
    fn users_delta_reports_changed_and_deleted_users_once_each() {
        let mut t = tenant();
        assert_eq!(
            t.users_delta(None, t.version()).unwrap(),
            [(id(1), false), (id(2), false), (id(3), false)]
        );
        let token = t.version();
        t.add_member(id(100), id(3)); // not a change of the user
        let mut renamed = t.users[&id(1)].clone();
        renamed.display_name = "Renamed".into();
        t.upsert_user(renamed.clone());
        t.upsert_user(renamed);
        t.delete_user(id(2));
        let upto = t.version();
        assert_eq!(
            t.users_delta(Some(token), upto).unwrap(),
            [(id(1), false), (id(2), true)]
        );
        t.delete_user(id(3));
        assert_eq!(t.users_delta(Some(token), upto).unwrap().len(), 2);
        t.expire_delta_tokens();
        assert_eq!(
            t.users_delta(Some(token), t.version()),
            Err(DeltaError::Expired)
        );
    }

    #[test]
    fn first_round_reports_every_owner() {
        let mut t = tenant();
        t.add_owner(id(100), id(3));
        let delta = t.delta(None, None).unwrap();
        assert_eq!(delta[0].owners_added, [id(3)]);
        assert!(delta[0].owners_removed.is_empty());
    }

    #[test]
    fn later_rounds_report_net_owner_changes() {
        let mut t = tenant();
        t.add_owner(id(100), id(1));
        let token = t.version();
        t.add_owner(id(100), id(2));
        t.remove_owner(id(100), id(1));
        t.add_owner(id(100), id(3));
        t.remove_owner(id(100), id(3));
        let delta = t.delta(Some(token), None).unwrap();
        assert_eq!(delta.len(), 1);
        assert_eq!(delta[0].owners_added, [id(2)]);
        assert_eq!(delta[0].owners_removed, [id(1), id(3)]);
        assert!(delta[0].members_added.is_empty());
        assert_eq!(t.owners_of(id(100)).unwrap(), [id(2)]);
    }

    #[test]
    fn owner_changes_notify_the_group_as_owner_changes() {
        let mut t = tenant();
        let notices = t.add_owner(id(100), id(1));
        assert_eq!(notices[0].resource, Resource::Group(id(100)));
        assert!(notices[0].owner_change);
        assert!(t.add_owner(id(100), id(1)).is_empty(), "already an owner");
        assert!(t.add_owner(id(999), id(1)).is_empty(), "no such group");
        assert!(!t.add_member(id(100), id(3))[0].owner_change);
    }

    #[test]
    fn a_deleted_user_owns_nothing() {
        let mut t = tenant();
        t.add_owner(id(100), id(1));
        let token = t.version();
        t.delete_user(id(1));
        assert!(t.owners_of(id(100)).unwrap().is_empty());
        let delta = t.delta(Some(token), None).unwrap();
        assert_eq!(delta[0].owners_removed, [id(1)]);
        assert_eq!(delta[0].members_removed, [id(1)]);
        assert_eq!(t.owners_of(id(999)), None);
    }

    #[test]
    fn a_nested_tenant_has_the_documented_shape() {
        let file = TenantFile::generate_nested(2, 3, 4);
        assert_eq!(file.users.len(), 2 * 3 * 4);
        assert_eq!(file.groups.len(), 2 + 2 * 3);
        assert_eq!(file.app.assignments.len(), 2);
        let t = Tenant::from_file(file);
        let top = TenantFile::top_group_id(1);
        let nested: Vec<Uuid> = (3..6).map(TenantFile::nested_group_id).collect();
        assert_eq!(t.members_of(top, false).unwrap(), nested);
        let deepest = TenantFile::nested_user_id(2 * 3 * 4 - 1);
        assert!(t.members_of(top, true).unwrap().contains(&deepest));
        assert!(
            !t.members_of(TenantFile::top_group_id(0), true)
                .unwrap()
                .contains(&deepest)
        );
        assert!(
            t.app
                .assignments
                .iter()
                .all(|a| a.principal_id == TenantFile::top_group_id(0) || a.principal_id == top)
        );
        let users: HashSet<Uuid> = t.users.keys().copied().collect();
        assert_eq!(users.len(), 24, "every user distinct");
    }
}
