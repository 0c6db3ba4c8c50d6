//! Users delta query: which users changed since the last round. A `users` notification can be
//! lost; the users delta cannot, so each round asks it, and a lost "disabled" or rename costs a
//! poll interval instead of waiting for the reconciliation.
//!
//! Only the ids are taken from it: Graph's users delta returns an updated user "with at least the
//! properties that have been updated", so a rename may come without `accountEnabled`. The users
//! it names are read again whole (getByIds), exactly as a notification's users are.

use std::collections::BTreeSet;

use entity::UserId;
use serde::Deserialize;

use super::GraphClient;
use super::delta::DeltaStart;
use crate::error::Result;

const ENDPOINT: &str = "users_delta";
/// As little as Graph allows: the properties are read again by id anyway.
const SELECT: &str = "id";

/// One user as a users delta page names it.
#[derive(Deserialize)]
struct DeltaUserObject {
    id: String,
}

/// The users a round named (changed, or removed: `@removed` either way means "read it again",
/// and a user Graph then does not find is one answer towards a confirmed deletion), and the
/// link to resume from.
#[derive(Clone, Debug, Default)]
pub struct UsersDelta {
    pub users: BTreeSet<UserId>,
    pub delta_link: String,
    pub pages: usize,
}

impl GraphClient {
    /// Runs one users delta round to its deltaLink. An expired token is
    /// [`crate::Error::DeltaExpired`]; [`DeltaStart::Initial`] names every user of the tenant.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn users_delta(&self, start: DeltaStart) -> Result<UsersDelta> {
        let http = &self.inner;
        let url = match start {
            DeltaStart::Initial => http.url(&format!("users/delta?$select={SELECT}")),
            DeltaStart::Latest => {
                http.url(&format!("users/delta?$select={SELECT}&$deltatoken=latest"))
            }
            DeltaStart::Link(link) => {
                http.check_link(&link, ENDPOINT)?;
                link
            }
        };
        let mut users = BTreeSet::new();
        let (delta_link, pages) = self
            .delta_pages(ENDPOINT, url, |objects: Vec<DeltaUserObject>| {
                // An id that is not a user's object id cannot be one of LiteLLM's users.
                users.extend(
                    objects
                        .into_iter()
                        .filter_map(|object| UserId::parse(&object.id).ok()),
                );
            })
            .await?;
        Ok(UsersDelta {
            users,
            delta_link,
            pages,
        })
    }
}
