//! Members, users by id, the enterprise app and its assignments.

use std::collections::HashMap;

use entity::{GroupId, UserId};
use reqwest::Method;
use serde_json::json;

use super::GraphClient;
use super::model::{AppRoleAssignment, DirectoryObject, ServicePrincipal};
use crate::error::{Error, Result};
use crate::user::{EntraUser, UserState};

/// The user properties entra-sync reads.
const USER_SELECT: &str = "id,displayName,mail,userPrincipalName,accountEnabled";

/// Graph's limit for `directoryObjects/getByIds`.
const GET_BY_IDS_CHUNK: usize = 1000;

impl GraphClient {
    /// A group's members (`transitive`: nested groups' members too), every page.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn group_members(
        &self,
        group: &GroupId,
        transitive: bool,
    ) -> Result<Vec<DirectoryObject>> {
        let relation = if transitive {
            "transitiveMembers"
        } else {
            "members"
        };
        let url = self.inner.url(&format!(
            "groups/{group}/{relation}?$select={USER_SELECT}&$top=999"
        ));
        self.inner.get_all("group_members", &url).await
    }

    /// The owners of each group that are users with an enabled account, twenty groups a request
    /// (JSON batching: Graph's groups delta does not carry owners). A group Graph no longer has
    /// is left out; any other failure is that group's own.
    #[tracing::instrument(skip(self, groups), fields(groups = groups.len()), err(level = "debug"))]
    pub async fn group_owners(
        &self,
        groups: &[GroupId],
    ) -> Result<Vec<(GroupId, Result<Vec<EntraUser>>)>> {
        const ENDPOINT: &str = "group_owners";
        let paths: Vec<String> = groups
            .iter()
            .map(|group| format!("/groups/{group}/owners?$select={USER_SELECT}&$top=999"))
            .collect();
        let answers = self.inner.batch_get(ENDPOINT, &paths).await?;
        let mut owners = Vec::with_capacity(groups.len());
        for (group, answer) in groups.iter().zip(answers) {
            let found = match answer {
                Ok(body) => self.all_of(ENDPOINT, body).await,
                Err(Error::Graph { status: 404, .. }) => continue,
                Err(error) => Err(error),
            };
            let users = found.map(|objects| {
                objects
                    .into_iter()
                    .filter_map(DirectoryObject::into_enabled_user)
                    .collect()
            });
            owners.push((group.clone(), users));
        }
        Ok(owners)
    }

    /// A collection's first page, answered in a batch, and the pages after it.
    async fn all_of(
        &self,
        endpoint: &'static str,
        first: serde_json::Value,
    ) -> Result<Vec<DirectoryObject>> {
        let page: super::http::Page<DirectoryObject> =
            serde_json::from_value(first).map_err(|e| Error::Graph {
                endpoint,
                status: 200,
                code: "unreadableResponse".into(),
                message: e.to_string(),
            })?;
        let mut objects = page.value;
        if let Some(next) = page.next_link {
            self.inner.check_link(&next, endpoint)?;
            objects.extend(self.inner.get_all(endpoint, &next).await?);
        }
        Ok(objects)
    }

    /// Users by object id, 1,000 a request, with whether each account is enabled. Ids that are
    /// not users are absent from the result, and so are users Graph cannot read (deleted, or
    /// not replicated yet: the answer does not say which).
    #[tracing::instrument(skip(self, ids), fields(ids = ids.len()), err(level = "debug"))]
    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserState>> {
        // Only a subset of a user's properties comes back by default: `accountEnabled` must be
        // asked for.
        let url = self
            .inner
            .url(&format!("directoryObjects/getByIds?$select={USER_SELECT}"));
        let mut users = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_BY_IDS_CHUNK) {
            let body = json!({ "ids": chunk, "types": ["user"] });
            let page: super::http::Page<DirectoryObject> = self
                .inner
                .json("get_by_ids", Method::POST, &url, Some(&body))
                .await?;
            users.extend(
                page.value
                    .into_iter()
                    .filter(|object| object.kind() != super::model::ObjectKind::Group)
                    .filter_map(DirectoryObject::into_user_state),
            );
        }
        Ok(users)
    }

    /// One user as it is now; `None` when it no longer exists (deleted).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn user_state(&self, id: &UserId) -> Result<Option<UserState>> {
        let url = self.inner.url(&format!("users/{id}?$select={USER_SELECT}"));
        match self.inner.get_json::<DirectoryObject>("user", &url).await {
            Ok(user) => Ok(user.into_user_state()),
            Err(Error::Graph { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// These users as they are now: each user's state, `None` when it no longer exists, or the
    /// error Graph gave for it alone. Read a thousand a request (`getByIds`); those it leaves out
    /// (deleted, or not replicated yet: it does not say which) are read one by one, twenty a
    /// request (JSON batching), so that Graph's 404 says which are gone. Ten thousand users
    /// disabled at once cost ten requests.
    #[tracing::instrument(skip(self, ids), fields(users = ids.len()), err(level = "debug"))]
    pub async fn user_states(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, Result<Option<UserState>>)>> {
        let mut found: HashMap<UserId, UserState> = self
            .users_by_ids(ids)
            .await?
            .into_iter()
            .map(|state| (state.user.id.clone(), state))
            .collect();
        let missing: Vec<UserId> = ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .cloned()
            .collect();
        let mut states: Vec<(UserId, Result<Option<UserState>>)> =
            self.user_states_one_by_one(&missing).await?;
        states.extend(
            ids.iter()
                .filter_map(|id| Some((id.clone(), Ok(Some(found.remove(id)?))))),
        );
        Ok(states)
    }

    /// [`Self::user_states`], each user read on their own, twenty a request.
    async fn user_states_one_by_one(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, Result<Option<UserState>>)>> {
        const ENDPOINT: &str = "user";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("/users/{id}?$select={USER_SELECT}"))
            .collect();
        let answers = self.inner.batch_get(ENDPOINT, &paths).await?;
        Ok(ids
            .iter()
            .cloned()
            .zip(answers)
            .map(|(id, answer)| {
                let state = match answer {
                    Ok(body) => serde_json::from_value::<DirectoryObject>(body)
                        .map(DirectoryObject::into_user_state)
                        .map_err(|e| Error::Graph {
                            endpoint: ENDPOINT,
                            status: 200,
                            code: "unreadableResponse".into(),
                            message: e.to_string(),
                        }),
                    Err(Error::Graph { status: 404, .. }) => Ok(None),
                    Err(error) => Err(error),
                };
                (id, state)
            })
            .collect())
    }

    /// Every user of the tenant, 999 a page (reconciliation compares them with LiteLLM's).
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn all_users(&self) -> Result<Vec<UserState>> {
        let url = self
            .inner
            .url(&format!("users?$select={USER_SELECT}&$top=999"));
        let users: Vec<DirectoryObject> = self.inner.get_all("users", &url).await?;
        Ok(users
            .into_iter()
            .filter_map(DirectoryObject::into_user_state)
            .collect())
    }

    /// The enterprise app: by `MICROSOFT_SERVICE_PRINCIPAL_ID` if set, else by the client id.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn service_principal(&self) -> Result<ServicePrincipal> {
        let path = self.service_principal_path();
        let url = self
            .inner
            .url(&format!("{path}?$select=id,appId,displayName,appRoles"));
        self.inner.get_json("service_principal", &url).await
    }

    /// Every user and group assigned to the app, every page.
    #[tracing::instrument(skip(self), err(level = "debug"))]
    pub async fn app_role_assignments(&self) -> Result<Vec<AppRoleAssignment>> {
        let path = self.service_principal_path();
        let url = self
            .inner
            .url(&format!("{path}/appRoleAssignedTo?$top=999"));
        self.inner.get_all("app_role_assigned_to", &url).await
    }

    fn service_principal_path(&self) -> String {
        let config = self.inner.config();
        match &config.service_principal_id {
            Some(id) => format!("servicePrincipals/{id}"),
            None => format!("servicePrincipals(appId='{}')", config.client_id),
        }
    }
}
