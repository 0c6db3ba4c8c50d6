//! A reconciliation's groups compared before they are written: every group read whole is copied
//! into the store's comparison ([`Comparison`]) as it is read, and once all are read, one
//! statement says which teams may differ. Only those are read again and written
//! ([`Syncer::resync_groups`]); the others are settled as synced. What Graph says at that second
//! read is what is written: a group that changed meanwhile is written as it is then.

use chrono::{DateTime, Utc};
use entity::{GroupId, UserId};

use std::sync::Arc;

use super::Syncer;
use super::batch::{WholeGroup, WholeGroups};
use super::round::UsersRead;
use crate::error::Result;
use crate::store::{Changes, Comparison, Item, TeamSync};

/// Groups whose names are recorded in one statement, for those found equal.
const NAMES_AT_ONCE: usize = 1_000;

/// Groups read whole, copied for the comparison.
pub(super) struct Comparer {
    syncer: Syncer,
    now: DateTime<Utc>,
    comparison: Comparison,
    /// Every group copied, with its name as read.
    copied: Vec<(GroupId, Option<String>)>,
    /// Groups that could not be read but keep their new names.
    renamed: Vec<(GroupId, Option<String>)>,
    /// Each user is read, and copied, once.
    users_read: Arc<UsersRead>,
}

impl Syncer {
    /// [`Self::resync_groups`], with the groups compared first: only the teams that may differ
    /// from their groups are written. Returns how many teams changed.
    pub(super) async fn compare_groups(
        &self,
        groups: Vec<GroupId>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<usize> {
        let comparison = self.store.begin_comparison(now).await?;
        let comparer = Comparer {
            syncer: self.clone(),
            now,
            comparison,
            copied: Vec::new(),
            renamed: Vec::new(),
            users_read: Arc::default(),
        };
        self.read_whole(groups, now, changes, comparer).await
    }
}

impl WholeGroups for Comparer {
    async fn take(
        &mut self,
        whole: Vec<WholeGroup>,
        renamed: Vec<(GroupId, Option<String>)>,
        _changes: &mut Changes,
    ) -> Result<usize> {
        self.renamed.extend(renamed);
        let teams: Vec<(TeamSync, &[UserId])> = whole
            .iter()
            .map(|group| (group.as_team(), group.read_before.as_slice()))
            .collect();
        self.comparison.add(&teams).await?;
        self.copied.extend(
            whole
                .into_iter()
                .map(|group| (group.group, group.display_name)),
        );
        Ok(0)
    }

    async fn finish(self, changes: &mut Changes) -> Result<usize> {
        let Comparer {
            syncer,
            now,
            comparison,
            copied,
            mut renamed,
            users_read: _,
        } = self;
        let differing = comparison.differing().await?;
        tracing::debug!(
            groups = copied.len(),
            differing = differing.len(),
            "groups compared with their teams"
        );
        let mut again = Vec::with_capacity(differing.len());
        for (group, display_name) in copied {
            if differing.contains(&group) {
                again.push(group);
                continue;
            }
            // As a batch written with nothing to write settles its groups.
            syncer
                .settle_item(Item::Group(group.clone()), Ok(Vec::new()), now)
                .await?;
            syncer.settle_members(&group, &[], None, now).await?;
            if display_name.is_some() {
                renamed.push((group, display_name));
            }
        }
        for names in renamed.chunks(NAMES_AT_ONCE) {
            syncer.remember_assigned(names, now).await?;
        }
        syncer.resync_groups(again, now, changes).await
    }

    fn users_read(&self) -> Option<Arc<UsersRead>> {
        Some(self.users_read.clone())
    }
}
