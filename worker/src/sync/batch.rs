//! Groups read whole and written a batch at a time: how a first sync and a resync apply
//! thousands of groups without a transaction, a commit and a score of statements for each.

use chrono::{DateTime, Utc};
use entity::GroupId;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::round::UsersRead;
use super::tasks::{Bounded, ItemTasks};
use super::{Syncer, retrying};
use crate::directory::EntraUser;
use crate::error::{Error, Result};
use crate::store::{Changes, Item, TeamSync};

/// Graph reads in flight at once.
pub(super) const PARALLEL_READS: usize = 8;

/// A batch closes at this many groups, or at this many members, whichever comes first: large
/// enough that statements and commits are few, small enough that a transaction holds LiteLLM's
/// locks for a fraction of a second.
pub(super) const BATCH_GROUPS: usize = 25;
const BATCH_MEMBERS: usize = 2_500;

/// Batches written at once: one is planned while PostgreSQL writes the other. Their teams differ;
/// users they share are locked in one order and created in one order, so that they wait for each
/// other rather than deadlock, and a user both create is settled by the retry of one batch.
pub(super) const WRITERS: usize = 2;

/// A group read whole, its team to be made equal to it.
pub(super) struct WholeGroup {
    pub group: GroupId,
    /// Set: the team is created, or renamed, to this.
    pub display_name: Option<String>,
    pub members: Vec<EntraUser>,
    /// Members the group lists whose user objects Graph could not read: they stay as they are.
    pub unreadable: Vec<entity::UserId>,
    /// Members who may join, read earlier by the same comparison (see
    /// [`super::round::UsersRead`]); always empty where groups are written.
    pub read_before: Vec<entity::UserId>,
}

impl WholeGroup {
    /// The group as the store's team sync takes it.
    pub fn as_team(&self) -> TeamSync<'_> {
        TeamSync {
            group: &self.group,
            display_name: self.display_name.as_deref(),
            members: &self.members,
            unreadable: &self.unreadable,
        }
    }
}

/// Groups read whole, collected until a batch is full.
#[derive(Default)]
pub(super) struct Batch {
    groups: Vec<WholeGroup>,
    members: usize,
}

impl Batch {
    /// Adds a group; returns whether the batch is full now.
    pub fn push(&mut self, group: WholeGroup) -> bool {
        self.members += group.members.len();
        self.groups.push(group);
        self.groups.len() >= BATCH_GROUPS || self.members >= BATCH_MEMBERS
    }

    pub fn take(&mut self) -> Vec<WholeGroup> {
        self.members = 0;
        std::mem::take(&mut self.groups)
    }
}

impl Syncer {
    /// Makes each group's team equal it, the whole batch in one transaction
    /// ([`Store::sync_teams`]); returns how many teams changed. When the batch fails on
    /// its own (one group LiteLLM refuses, say), each group is written alone, so that one bad
    /// group never holds the others back, and a group that fails alone is settled as failed.
    pub(super) async fn write_groups(
        &self,
        batch: &[WholeGroup],
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let options = self.options(now);
        let teams: Vec<TeamSync> = batch.iter().map(WholeGroup::as_team).collect();
        match retrying(|| self.store.sync_teams(&teams, options)).await {
            Ok(made) => {
                let mut changed: Vec<&str> = made.iter().filter_map(|c| c.team_id()).collect();
                changed.sort_unstable();
                changed.dedup();
                let count = changed.len();
                for whole in batch {
                    self.settle_item(Item::Group(whole.group.clone()), Ok(Vec::new()), now)
                        .await?;
                    self.settle_members(&whole.group, &whole.unreadable, None, now)
                        .await?;
                }
                changes.add(made);
                return Ok(count);
            }
            Err(error) if error.is_systemic() => return Err(error),
            Err(error) => {
                tracing::info!(%error, groups = batch.len(), "a batch of groups failed: each is tried on its own");
            }
        }
        let mut count = 0;
        for team in &teams {
            let one = [*team];
            let outcome = match retrying(|| self.store.sync_teams(&one, options)).await {
                // No team, and no name to create it with: the next poll settles it.
                Err(Error::TeamNotFound(_)) if team.display_name.is_none() => Ok(Vec::new()),
                outcome => outcome,
            };
            if outcome.is_ok() {
                self.settle_members(team.group, team.unreadable, None, now)
                    .await?;
            }
            let made = self
                .settle_item(Item::Group(team.group.clone()), outcome, now)
                .await?;
            count += usize::from(!made.is_empty());
            changes.add(made);
        }
        Ok(count)
    }
}

/// What a resync does with the groups it reads whole, slice after slice: write them
/// ([`BatchWriter`]), or compare them with LiteLLM's rows first ([`super::compare::Comparer`]).
pub(super) trait WholeGroups {
    /// A slice's groups read whole, and groups that could not be read but keep their new
    /// names (`renamed`). Returns how many teams changed meanwhile.
    async fn take(
        &mut self,
        whole: Vec<WholeGroup>,
        renamed: Vec<(GroupId, Option<String>)>,
        changes: &mut Changes,
    ) -> Result<usize>;

    /// After the last slice: what is left, and how many teams it changed.
    async fn finish(self, changes: &mut Changes) -> Result<usize>;

    /// Users read once for all the groups ([`UsersRead`]): only for a comparison, which needs
    /// each user's details once; groups to be written are read with every member's.
    fn users_read(&self) -> Option<Arc<UsersRead>> {
        None
    }
}

/// Groups read whole, written a batch at a time by [`Writers`].
pub(super) struct BatchWriter {
    writers: Writers,
    batch: Batch,
    /// Groups that keep their new names, recorded with the next batch.
    renamed: Vec<(GroupId, Option<String>)>,
}

impl BatchWriter {
    pub fn new(syncer: &Syncer, now: DateTime<Utc>) -> Self {
        Self {
            writers: Writers::new(syncer, now),
            batch: Batch::default(),
            renamed: Vec::new(),
        }
    }
}

impl WholeGroups for BatchWriter {
    async fn take(
        &mut self,
        whole: Vec<WholeGroup>,
        renamed: Vec<(GroupId, Option<String>)>,
        changes: &mut Changes,
    ) -> Result<usize> {
        self.renamed.extend(renamed);
        let mut changed = 0;
        for group in whole {
            if self.batch.push(group) {
                let renamed = std::mem::take(&mut self.renamed);
                changed += self
                    .writers
                    .write(self.batch.take(), renamed, changes)
                    .await?;
            }
        }
        Ok(changed)
    }

    async fn finish(mut self, changes: &mut Changes) -> Result<usize> {
        let renamed = std::mem::take(&mut self.renamed);
        let changed = self
            .writers
            .write(self.batch.take(), renamed, changes)
            .await?;
        Ok(changed + self.writers.finish(changes).await?)
    }
}

/// Batches written by [`WRITERS`] tasks at once, each batch's groups recorded as assigned once
/// it is written (so that a failure repeats at most the batches in flight). The tasks stop when
/// this is dropped.
pub(super) struct Writers {
    syncer: Syncer,
    now: DateTime<Utc>,
    running: ItemTasks<Writing, Result<(usize, Changes)>>,
}

/// One batch being written: its groups, and every group it records as assigned.
struct Writing {
    groups: Vec<GroupId>,
    assigned: Vec<(GroupId, Option<String>)>,
}

impl Writers {
    pub fn new(syncer: &Syncer, now: DateTime<Utc>) -> Self {
        Self {
            syncer: syncer.clone(),
            now,
            running: ItemTasks::new(),
        }
    }

    /// Writes `batch` as soon as a writer is free, then records its named groups and `also`
    /// (groups that could not be read, say) as assigned. Returns how many teams the batches
    /// that finished meanwhile changed, their changes added to `changes`.
    pub async fn write(
        &mut self,
        batch: Vec<WholeGroup>,
        also: Vec<(GroupId, Option<String>)>,
        changes: &mut Changes,
    ) -> Result<usize> {
        let mut changed = 0;
        while self.running.len() >= WRITERS {
            changed += self.next_written(changes).await?;
        }
        let mut assigned = also;
        assigned.extend(
            batch
                .iter()
                .filter_map(|whole| Some((whole.group.clone(), Some(whole.display_name.clone()?)))),
        );
        let writing = Writing {
            groups: batch.iter().map(|whole| whole.group.clone()).collect(),
            assigned: assigned.clone(),
        };
        let syncer = self.syncer.clone();
        let now = self.now;
        self.running.spawn(writing, async move {
            let mut written = syncer.tally();
            let changed = syncer.write_groups(&batch, now, &mut written).await?;
            syncer.remember_assigned(&assigned, now).await?;
            Ok((changed, written))
        });
        Ok(changed)
    }

    /// Waits for every batch; returns how many teams they changed, as [`Self::write`] does.
    pub async fn finish(mut self, changes: &mut Changes) -> Result<usize> {
        let mut changed = 0;
        while !self.running.is_empty() {
            changed += self.next_written(changes).await?;
        }
        Ok(changed)
    }

    /// The next batch written. A writer that panicked fails its batch's groups as items (each
    /// is read whole again at its retry), recorded as assigned all the same, as a group that
    /// fails on its own is.
    async fn next_written(&mut self, changes: &mut Changes) -> Result<usize> {
        let (writing, reason) = match self.running.next().await {
            Some((_, Ok(outcome))) => {
                let (changed, written) = outcome?;
                changes.merge(written);
                return Ok(changed);
            }
            Some((writing, Err(reason))) => (writing, reason),
            None => return Ok(0),
        };
        for group in writing.groups {
            let outcome = Err(Error::ItemTaskFailed(reason.clone()));
            changes.add(
                self.syncer
                    .settle_item(Item::Group(group), outcome, self.now)
                    .await?,
            );
        }
        self.syncer
            .remember_assigned(&writing.assigned, self.now)
            .await?;
        Ok(0)
    }
}

/// [`read_in_parallel`], every outcome collected (in the order they came).
pub(super) async fn read_all_in_parallel<I, T, F, Fut>(
    items: Vec<I>,
    read: F,
) -> Vec<(I, Result<T>)>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(&I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let (sender, mut receiver) = mpsc::channel(PARALLEL_READS);
    let collecting = async {
        let mut read = Vec::new();
        while let Some(done) = receiver.recv().await {
            read.push(done);
        }
        read
    };
    tokio::join!(read_in_parallel(items, read, sender), collecting).1
}

/// Runs `read` for every item, [`PARALLEL_READS`] at a time, and sends each item with its
/// outcome as soon as it is read; stops when the receiver is gone. A read whose task panicked
/// is that item's failure ([`Error::ItemTaskFailed`]): every item is sent, none dropped.
pub(super) async fn read_in_parallel<I, T, F, Fut>(
    items: Vec<I>,
    read: F,
    sender: mpsc::Sender<(I, Result<T>)>,
) where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(&I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut running = Bounded::new(items, PARALLEL_READS, |item| {
        let reading = read(&item);
        (item, reading)
    });
    while let Some((item, outcome)) = running.next().await {
        let outcome = outcome.unwrap_or_else(|reason| Err(Error::ItemTaskFailed(reason)));
        if sender.send((item, outcome)).await.is_err() {
            return; // nobody wants the rest
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Reads item `n`: item 13's read panics, item 5's fails on its own, the others double it.
    async fn read(n: u32) -> Result<u32> {
        match n {
            13 => panic!("a bug met by item 13"),
            5 => Err(Error::UserNotFound("five".into())),
            n => Ok(n * 2),
        }
    }

    /// Checks every item's outcome: each item once, item 13's an item error of its own.
    fn check(mut read: Vec<(u32, Result<u32>)>) {
        read.sort_by_key(|(n, _)| *n);
        assert_eq!(
            read.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            (0..30).collect::<Vec<_>>(),
            "every item once, none dropped"
        );
        for (n, outcome) in read {
            match (n, outcome) {
                (13, Err(error)) => {
                    assert!(matches!(error, Error::ItemTaskFailed(_)), "{error}");
                    assert!(!error.is_systemic(), "an item's failure, not the unit's");
                    assert!(error.to_string().contains("a bug met by item 13"));
                }
                (5, Err(Error::UserNotFound(_))) => {}
                (n, Ok(doubled)) if n != 5 && n != 13 => assert_eq!(doubled, n * 2),
                (n, outcome) => panic!("item {n}: {outcome:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_read_that_panics_is_that_items_failure_and_every_outcome_arrives() {
        // More items than reads in flight, so that reads start after the panic too.
        check(read_all_in_parallel((0..30).collect(), |n| read(*n)).await);
    }

    #[tokio::test]
    async fn a_reader_sends_every_item_when_one_read_panics() {
        // As a poll reads new groups: the reader a task of its own, one item read ahead.
        let (sender, mut receiver) = mpsc::channel(1);
        let reader = tokio::spawn(read_in_parallel((0..30).collect(), |n| read(*n), sender));
        let mut read = Vec::new();
        while let Some(done) = receiver.recv().await {
            read.push(done);
        }
        reader.await.unwrap();
        check(read);
    }
}
