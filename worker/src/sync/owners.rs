//! Group owners as team admins (`ENTRA_SYNC_OWNERS_AS_ADMINS`). A round's groups delta says
//! whose owners changed (by id only), and those groups' owners are read whole, twenty groups a
//! request; every poll (and so every reconciliation) reads every assigned group's owners, which
//! also covers a deltaLink older than owner tracking. With the setting off, the owners entra-sync
//! made admins earlier are let go at the next poll.

use chrono::{DateTime, Utc};
use entity::GroupId;

use super::{Syncer, retrying};
use crate::error::Result;
use crate::store::{Changes, Item};

impl Syncer {
    /// Makes each group's owners its team's admins (or, with the setting off, lets go of the
    /// owners entra-sync made admins earlier).
    pub(super) async fn sync_owners(
        &self,
        groups: &[GroupId],
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<()> {
        let owners = if self.owners_as_admins {
            self.graph.group_owners(groups).await?
        } else {
            let remembered = self.store.groups_with_owners().await?;
            groups
                .iter()
                .filter(|group| remembered.contains(*group))
                .map(|group| (group.clone(), Ok(Vec::new())))
                .collect()
        };
        self.in_parallel(
            owners,
            |(group, _)| Item::Group(group.clone()),
            now,
            move |syncer, (group, found)| async move {
                let owners: Vec<_> = found?
                    .into_iter()
                    .filter(|owner| syncer.included(&owner.id))
                    .collect();
                retrying(|| {
                    syncer
                        .store
                        .sync_owners(&group, &owners, syncer.options(now))
                })
                .await
            },
            changes,
        )
        .await?;
        Ok(())
    }
}
