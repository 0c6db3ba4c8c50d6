//! Groups delta query: what changed in which group since the last round.

use std::collections::HashMap;

use entity::GroupId;
use serde::de::DeserializeOwned;

use super::GraphClient;
use super::http::Page;
use super::model::{DeltaGroupObject, ObjectKind};
use crate::error::{Error, Result};

const ENDPOINT: &str = "groups_delta";
/// Graph's limit for `$filter=id eq ... or ...` on delta.
const FILTER_CHUNK: usize = 50;
/// What a round asks about each group. Owners too: Graph tracks any directoryObject relation
/// selected, so a change of owners comes with the round like a change of members.
const SELECT: &str = "displayName,description,members,owners";

/// Where a delta round starts.
#[derive(Clone, Debug)]
pub enum DeltaStart {
    /// Every group with all its members.
    Initial,
    /// From the deltaLink the previous round returned.
    Link(String),
    /// Nothing: just a deltaLink for "from now on".
    Latest,
}

/// A member change: the object id and what kind of object it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberChange {
    pub id: String,
    pub kind: ObjectKind,
}

/// Everything one round said about one group, merged across pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDelta {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub added: Vec<MemberChange>,
    pub removed: Vec<MemberChange>,
    /// The group itself was removed: `changed` (soft-deleted, restorable) or `deleted`.
    pub group_removed: Option<String>,
    /// Its owners changed (delta names them by id only: they are read whole when needed).
    pub owners_changed: bool,
}

/// The merged result of a delta round and the link to resume from.
#[derive(Clone, Debug, Default)]
pub struct DeltaRound {
    /// In the order groups first appeared.
    pub groups: Vec<(GroupId, GroupDelta)>,
    pub delta_link: String,
    pub pages: usize,
}

/// Merges a round's pages as they come: groups by id, and each group's members by id, so that a
/// member named again (later pages may repeat a group) replaces its earlier word in constant
/// time, however large the group.
#[derive(Default)]
struct Merger {
    /// Group id -> its position in the round.
    groups: HashMap<GroupId, usize>,
    /// (group position, member id) -> where the member's last word is: `removed` or `added`,
    /// and its index there.
    members: HashMap<(usize, String), (bool, usize)>,
    /// Words replaced by a later one, left as empty ids until [`Self::finish`].
    superseded: bool,
}

impl Merger {
    fn merge(&mut self, round: &mut DeltaRound, object: DeltaGroupObject) {
        let Ok(id) = GroupId::parse(&object.id) else {
            tracing::warn!(
                id = object.id,
                "delta returned a group id that is not a GUID; skipped"
            );
            return;
        };
        let position = *self.groups.entry(id.clone()).or_insert_with(|| {
            round.groups.push((id, GroupDelta::default()));
            round.groups.len() - 1
        });
        let group = &mut round.groups[position].1;
        // Later pages may repeat a group with only some of its properties.
        if object.display_name.is_some() {
            group.display_name = object.display_name;
        }
        if object.description.is_some() {
            group.description = object.description;
        }
        if let Some(removed) = object.removed {
            group.group_removed = Some(removed.reason);
        }
        if !object.owners_delta.is_empty() {
            group.owners_changed = true;
        }
        for member in object.members_delta {
            let removed = member.removed.is_some();
            let change = MemberChange {
                kind: member.kind(),
                id: member.id,
            };
            let list = if removed {
                &mut group.removed
            } else {
                &mut group.added
            };
            list.push(change);
            let now_at = (removed, list.len() - 1);
            let key = (position, list[now_at.1].id.clone());
            // A member named twice in one round: the last word wins.
            if let Some((was_removed, at)) = self.members.insert(key, now_at) {
                let earlier = if was_removed {
                    &mut group.removed
                } else {
                    &mut group.added
                };
                earlier[at].id.clear();
                self.superseded = true;
            }
        }
    }

    /// Takes the replaced words out.
    fn finish(self, round: &mut DeltaRound) {
        if self.superseded {
            for (_, group) in &mut round.groups {
                group.added.retain(|m| !m.id.is_empty());
                group.removed.retain(|m| !m.id.is_empty());
            }
        }
    }
}

/// Graph's answers to a delta token it no longer keeps state for.
fn is_expired(error: &Error) -> bool {
    matches!(error, Error::Graph { status: 410, .. })
        || matches!(
            error,
            Error::Graph { code, .. }
                if matches!(code.as_str(), "syncStateNotFound" | "resyncRequired" | "syncStateInvalid")
        )
}

impl GraphClient {
    /// Runs one groups delta round to its deltaLink. An expired token is [`Error::DeltaExpired`].
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn groups_delta(&self, start: DeltaStart) -> Result<DeltaRound> {
        let http = &self.inner;
        let first = match start {
            DeltaStart::Initial => http.url(&format!("groups/delta?$select={SELECT}")),
            DeltaStart::Latest => {
                http.url(&format!("groups/delta?$select={SELECT}&$deltatoken=latest"))
            }
            DeltaStart::Link(link) => {
                http.check_link(&link, ENDPOINT)?;
                link
            }
        };
        self.delta_from(first).await
    }

    /// The current state of these groups through delta with `$filter=id eq ...`, 50 ids a
    /// request, the requests at once (a resync's slice is four); one round (and deltaLink) per
    /// chunk, in the order of the chunks.
    #[tracing::instrument(skip(self, ids), fields(groups = ids.len()), err(level = "debug"))]
    pub async fn groups_delta_for(&self, ids: &[GroupId]) -> Result<Vec<DeltaRound>> {
        let mut reads = tokio::task::JoinSet::new();
        for (at, chunk) in ids.chunks(FILTER_CHUNK).enumerate() {
            let filter: Vec<String> = chunk.iter().map(|id| format!("id eq '{id}'")).collect();
            let url = reqwest::Url::parse_with_params(
                &self.inner.url("groups/delta"),
                [
                    ("$select", SELECT.to_owned()),
                    ("$filter", filter.join(" or ")),
                ],
            )
            .map_err(|e| Error::Settings(format!("MICROSOFT_GRAPH_ENDPOINT: {e}")))?;
            let client = self.clone();
            reads.spawn(async move { (at, client.delta_from(url.to_string()).await) });
        }
        let mut rounds = Vec::with_capacity(reads.len());
        while let Some(read) = reads.join_next().await {
            let (at, round) = match read {
                Ok(read) => read,
                // A bug in a read: it goes on up as the panic it is, as it would have unspawned.
                Err(failure) if failure.is_panic() => {
                    std::panic::resume_unwind(failure.into_panic())
                }
                Err(failure) => {
                    return Err(Error::GraphUnavailable {
                        endpoint: ENDPOINT,
                        reason: format!("a filtered read stopped: {failure}"),
                    });
                }
            };
            rounds.push((at, round?));
        }
        rounds.sort_by_key(|(at, _)| *at);
        Ok(rounds.into_iter().map(|(_, round)| round).collect())
    }

    async fn delta_from(&self, first: String) -> Result<DeltaRound> {
        let mut round = DeltaRound::default();
        let mut merger = Merger::default();
        let (delta_link, pages) = self
            .delta_pages(ENDPOINT, first, |objects: Vec<DeltaGroupObject>| {
                for object in objects {
                    merger.merge(&mut round, object);
                }
            })
            .await?;
        merger.finish(&mut round);
        round.delta_link = delta_link;
        round.pages = pages;
        Ok(round)
    }

    /// Pages a delta query from `first` to its deltaLink, handing each page's objects to
    /// `page`; returns the deltaLink and how many pages there were. An expired token is
    /// [`Error::DeltaExpired`]; a paging link that leaves Graph is refused.
    pub(super) async fn delta_pages<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        first: String,
        mut page: impl FnMut(Vec<T>),
    ) -> Result<(String, usize)> {
        let http = &self.inner;
        let mut url = first;
        let mut pages = 0;
        loop {
            let read: Page<T> = http.get_json(endpoint, &url).await.map_err(|e| {
                if is_expired(&e) {
                    Error::DeltaExpired
                } else {
                    e
                }
            })?;
            pages += 1;
            page(read.value);
            match (read.next_link, read.delta_link) {
                (Some(next), _) => {
                    http.check_link(&next, endpoint)?;
                    url = next;
                }
                (None, Some(delta)) => return Ok((delta, pages)),
                (None, None) => {
                    return Err(Error::Graph {
                        endpoint,
                        status: 200,
                        code: "missingDeltaLink".into(),
                        message: "a delta page had neither nextLink nor deltaLink".into(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GROUP: &str = "6c1f0d2e-8a4b-4c55-9e21-3f7a1b2c3d4e";

    fn page(members: &[(&str, bool)]) -> DeltaGroupObject {
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|(id, removed)| {
                let mut entry =
                    serde_json::json!({"@odata.type": "#microsoft.graph.user", "id": id});
                if *removed {
                    entry["@removed"] = serde_json::json!({"reason": "deleted"});
                }
                entry
            })
            .collect();
        serde_json::from_value(serde_json::json!({"id": GROUP, "members@delta": members})).unwrap()
    }

    fn ids(changes: &[MemberChange]) -> Vec<&str> {
        changes.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn a_member_named_again_on_a_later_page_keeps_only_its_last_word() {
        let mut round = DeltaRound::default();
        let mut merger = Merger::default();
        merger.merge(&mut round, page(&[("a", false), ("b", false), ("c", true)]));
        merger.merge(&mut round, page(&[("a", true), ("c", false), ("d", false)]));
        merger.merge(&mut round, page(&[("a", false)]));
        merger.finish(&mut round);
        assert_eq!(round.groups.len(), 1);
        let group = &round.groups[0].1;
        assert_eq!(ids(&group.added), ["b", "c", "d", "a"]);
        assert!(group.removed.is_empty());
    }

    #[test]
    fn a_large_group_merges_in_linear_time() {
        // 200,000 words about 100,000 members: quadratic merging would take minutes.
        let first: Vec<String> = (0..100_000).map(|n| format!("user-{n}")).collect();
        let mut round = DeltaRound::default();
        let mut merger = Merger::default();
        let added: Vec<(&str, bool)> = first.iter().map(|id| (id.as_str(), false)).collect();
        merger.merge(&mut round, page(&added));
        let removed: Vec<(&str, bool)> = first.iter().map(|id| (id.as_str(), true)).collect();
        merger.merge(&mut round, page(&removed));
        merger.finish(&mut round);
        let group = &round.groups[0].1;
        assert!(group.added.is_empty());
        assert_eq!(group.removed.len(), 100_000);
    }
}
