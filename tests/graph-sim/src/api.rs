//! Graph v1.0 as far as entra-sync uses it, with Graph's JSON shapes, paging and errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::state::{Inner, lock};
use crate::tenant::{DeltaError, DeltaGroup, PrincipalType, Tenant};
use crate::{admin, auth, batch, faults, notifications};

/// Graph expands at most this many objects of a relation (`$expand=owners`).
const MOST_EXPANDED: usize = 20;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    served(inner.clone())
        .merge(admin::router())
        .with_state(inner)
}

/// The token endpoint and Graph without the admin API: what a batch's requests go through, so
/// that faults, the request log and errors apply to each of them as to a request of its own.
pub(crate) fn graph_router(inner: Arc<Inner>) -> Router {
    served(inner.clone()).with_state(inner)
}

fn served(inner: Arc<Inner>) -> Router<Arc<Inner>> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(auth::token))
        .route("/v1.0/{*rest}", any(dispatch))
        .layer(middleware::from_fn_with_state(inner, faults::middleware))
}

/// Graph's error body.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": Uuid::new_v4(),
                "client-request-id": Uuid::new_v4(),
            }
        }
    });
    (status, axum::Json(body)).into_response()
}

fn not_found(what: &str) -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn bad_request(message: &str) -> Response {
    graph_error(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
}

async fn dispatch(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
) -> Response {
    if !auth::authorised(&inner, &headers) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty, invalid or expired.",
        );
    }
    let path = uri.path().trim_start_matches("/v1.0/");
    let segments: Vec<&str> = path.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["$batch" | "%24batch"]) => {
            batch::answer(&inner, &headers, &extensions, &body).await
        }
        (&Method::GET, ["groups", "delta"]) => groups_delta(&inner, &query),
        (&Method::GET, ["groups", id]) => group(&inner, id, &query),
        (&Method::GET, ["groups", id, "owners"]) => owners(&inner, id, &query),
        (&Method::GET, ["groups", id, "members"]) => members(&inner, id, false, &query),
        (&Method::GET, ["groups", id, "transitiveMembers"]) => members(&inner, id, true, &query),
        (&Method::POST, ["directoryObjects", "getByIds"]) => get_by_ids(&inner, &body),
        (&Method::GET, ["users", "delta"]) => users_delta(&inner, &query),
        (&Method::GET, ["users"]) => users(&inner, &query),
        (&Method::GET, ["users", id]) => user(&inner, id),
        (&Method::GET, [sp]) if sp.starts_with("servicePrincipals") => {
            service_principal(&inner, sp)
        }
        (&Method::GET, ["servicePrincipals", id]) => service_principal(&inner, id),
        (&Method::GET, [sp, "appRoleAssignedTo"]) => assigned_to(&inner, sp, &query),
        (&Method::GET, ["servicePrincipals", id, "appRoleAssignedTo"]) => {
            assigned_to(&inner, id, &query)
        }
        (&Method::POST, ["subscriptions"]) => notifications::create(&inner, &body).await,
        (&Method::GET, ["subscriptions"]) => notifications::list(&inner),
        (&Method::GET, ["subscriptions", id]) => notifications::get(&inner, id),
        (&Method::PATCH, ["subscriptions", id]) => notifications::renew(&inner, id, &body),
        (&Method::DELETE, ["subscriptions", id]) => notifications::delete(&inner, id),
        (&Method::POST, ["subscriptions", id, "reauthorize"]) => {
            notifications::reauthorize(&inner, id)
        }
        _ => graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("Resource not found for the segment '{path}'."),
        ),
    }
}

// ---- groups delta ----

/// A delta round being paged through.
pub(crate) struct DeltaSession {
    groups: Vec<DeltaGroup>,
    group: usize,
    /// How many of the current group's change entries earlier pages carried.
    offset: usize,
    /// The tenant version the round ends at: its deltaLink's token.
    version: u64,
    relations: Relations,
}

/// The relations a delta round reports changes of (`$select=...,members,owners`); a delta token
/// remembers them, as Graph's deltaLink keeps the round's query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Relations {
    members: bool,
    owners: bool,
}

impl Relations {
    fn selected(query: &HashMap<String, String>) -> Self {
        let has = |field: &str| {
            query
                .get("$select")
                .is_some_and(|s| s.split(',').any(|f| f.trim() == field))
        };
        Self {
            members: has("members"),
            owners: has("owners"),
        }
    }

    /// One letter in front of a token's version: `p`lain, `m`embers, `o`wners, `b`oth.
    fn token_prefix(self) -> char {
        match (self.members, self.owners) {
            (false, false) => 'p',
            (true, false) => 'm',
            (false, true) => 'o',
            (true, true) => 'b',
        }
    }

    fn from_token_prefix(prefix: char) -> Option<Self> {
        let (members, owners) = match prefix {
            'p' => (false, false),
            'm' => (true, false),
            'o' => (false, true),
            'b' => (true, true),
            _ => return None,
        };
        Some(Self { members, owners })
    }

    /// The `$metadata` fragment naming the selected properties.
    fn context(self) -> String {
        let mut fields = String::from("displayName,description");
        if self.members {
            fields.push_str(",members");
        }
        if self.owners {
            fields.push_str(",owners");
        }
        format!("groups({fields})")
    }
}

fn encode_token(version: u64, relations: Relations) -> String {
    format!("{}{version:x}", relations.token_prefix())
}

fn decode_token(token: &str) -> Option<(u64, Relations)> {
    let relations = Relations::from_token_prefix(token.chars().next()?)?;
    u64::from_str_radix(&token[1..], 16)
        .ok()
        .map(|v| (v, relations))
}

fn parse_id_filter(filter: &str) -> Result<HashSet<Uuid>, Response> {
    let ids: Result<HashSet<Uuid>, ()> = filter
        .split(" or ")
        .map(|clause| {
            clause
                .trim()
                .strip_prefix("id eq '")
                .and_then(|rest| rest.strip_suffix('\''))
                .and_then(|id| Uuid::parse_str(id).ok())
                .ok_or(())
        })
        .collect();
    let ids = ids.map_err(|()| {
        graph_error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "Unsupported query: delta supports only $filter=id eq '...' joined by 'or'.",
        )
    })?;
    if ids.len() > 50 {
        return Err(graph_error(
            StatusCode::BAD_REQUEST,
            "Request_UnsupportedQuery",
            "Too many ids in $filter: at most 50.",
        ));
    }
    Ok(ids)
}

fn groups_delta(inner: &Inner, query: &HashMap<String, String>) -> Response {
    if let Some(skiptoken) = query.get("$skiptoken") {
        return delta_page(inner, skiptoken);
    }
    let tenant = lock(&inner.tenant);
    let (since, relations) = match query.get("$deltatoken").map(String::as_str) {
        Some("latest") => {
            let relations = Relations::selected(query);
            return json_ok(json!({
                "@odata.context": format!("{}/v1.0/$metadata#{}", inner.base_url, relations.context()),
                "@odata.deltaLink": delta_link(inner, tenant.version(), relations),
                "value": [],
            }));
        }
        Some(token) => match decode_token(token) {
            Some((version, relations)) => (Some(version), relations),
            None => return bad_request("Invalid delta token."),
        },
        None => (None, Relations::selected(query)),
    };
    let only = match query.get("$filter") {
        Some(filter) => match parse_id_filter(filter) {
            Ok(ids) => Some(ids),
            Err(response) => return response,
        },
        None => None,
    };
    let groups = match tenant.delta(since, only.as_ref()) {
        Ok(groups) => groups,
        Err(DeltaError::Expired) => {
            return graph_error(
                StatusCode::GONE,
                "syncStateNotFound",
                "The sync state generation is not found. Delta tokens expire: restart the sync.",
            );
        }
    };
    let session = DeltaSession {
        groups,
        group: 0,
        offset: 0,
        version: tenant.version(),
        relations,
    };
    drop(tenant);
    let id = Uuid::new_v4().simple().to_string();
    lock(&inner.delta_sessions).insert(id.clone(), session);
    delta_page(inner, &id)
}

fn delta_link(inner: &Inner, version: u64, relations: Relations) -> String {
    format!(
        "{}/v1.0/groups/delta?$deltatoken={}",
        inner.base_url,
        encode_token(version, relations)
    )
}

/// The lists of a group's change entries a round reports, in the order they are paged: member
/// additions, member removals, owner additions, owner removals. Each is its annotation's name,
/// the ids, and whether they were removed.
fn change_lists(group: &DeltaGroup, relations: Relations) -> Vec<(&'static str, &[Uuid], bool)> {
    let mut lists = Vec::with_capacity(4);
    if relations.members {
        lists.push(("members@delta", group.members_added.as_slice(), false));
        lists.push(("members@delta", group.members_removed.as_slice(), true));
    }
    if relations.owners {
        lists.push(("owners@delta", group.owners_added.as_slice(), false));
        lists.push(("owners@delta", group.owners_removed.as_slice(), true));
    }
    lists
}

/// Adds the change entries `range` (of all the group's entries, in [`change_lists`]' order) to
/// one group object: each selected relation gets its annotation, empty when this object carries
/// none of its entries, as Graph's `members@delta` on a group whose members did not change.
fn add_change_entries(
    object: &mut Value,
    tenant: &Tenant,
    lists: &[(&'static str, &[Uuid], bool)],
    range: std::ops::Range<usize>,
) {
    let mut start = 0;
    for (annotation, ids, removed) in lists {
        let entries = object[*annotation].as_array().cloned().unwrap_or_default();
        let from = range.start.max(start).min(start + ids.len()) - start;
        let to = range.end.max(start).min(start + ids.len()) - start;
        let more = ids[from..to].iter().map(|id| {
            let mut entry = json!({ "@odata.type": odata_type(tenant, *id), "id": id });
            if *removed {
                entry["@removed"] = json!({ "reason": "deleted" });
            }
            entry
        });
        object[*annotation] = Value::Array(entries.into_iter().chain(more).collect());
        start += ids.len();
    }
}

/// Members can be groups; owners here are always users (Graph's service principals as owners
/// are not played).
fn odata_type(tenant: &Tenant, id: Uuid) -> &'static str {
    if tenant.is_group(id) {
        "#microsoft.graph.group"
    } else {
        "#microsoft.graph.user"
    }
}

fn delta_page(inner: &Inner, session_id: &str) -> Response {
    let (page_size, per_object) = {
        let config = lock(&inner.config);
        (
            config.page_size.max(1),
            config.delta_members_per_object.max(1),
        )
    };
    let mut sessions = lock(&inner.delta_sessions);
    let Some(session) = sessions.get_mut(session_id) else {
        return bad_request("Invalid or expired $skiptoken.");
    };
    let mut value = Vec::new();
    while value.len() < page_size && session.group < session.groups.len() {
        let group = &session.groups[session.group];
        let mut object = json!({ "id": group.id });
        if let Some(reason) = group.removed {
            object["@removed"] = json!({ "reason": reason });
            session.group += 1;
            value.push(object);
            continue;
        }
        if session.offset == 0 {
            object["displayName"] = json!(group.display_name);
            object["description"] = json!(group.description);
        }
        // A group with more entries than one object carries appears in several, as in Graph.
        let lists = change_lists(group, session.relations);
        let total: usize = lists.iter().map(|(_, ids, _)| ids.len()).sum();
        let end = (session.offset + per_object).min(total);
        add_change_entries(
            &mut object,
            &lock(&inner.tenant),
            &lists,
            session.offset..end,
        );
        if end >= total {
            session.group += 1;
            session.offset = 0;
        } else {
            session.offset = end;
        }
        value.push(object);
    }
    let mut page = json!({
        "@odata.context": format!("{}/v1.0/$metadata#{}", inner.base_url, session.relations.context()),
        "value": value,
    });
    if session.group < session.groups.len() {
        page["@odata.nextLink"] = json!(format!(
            "{}/v1.0/groups/delta?$skiptoken={session_id}",
            inner.base_url
        ));
    } else {
        page["@odata.deltaLink"] = json!(delta_link(inner, session.version, session.relations));
        sessions.remove(session_id);
    }
    json_ok(page)
}

pub(crate) fn json_ok(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

// ---- users delta ----

/// Users delta: `$deltatoken=latest`, a first round (every user), or the users changed since a
/// token, paged. A page's `$skiptoken` is `<since or ->.<upto>.<offset>`, so a round pages
/// through the same span of the log however the tenant changes meanwhile.
fn users_delta(inner: &Inner, query: &HashMap<String, String>) -> Response {
    let tenant = lock(&inner.tenant);
    let (since, upto, offset) = if let Some(skiptoken) = query.get("$skiptoken") {
        match decode_users_skiptoken(skiptoken) {
            Some(position) => position,
            None => return bad_request("Invalid skip token."),
        }
    } else {
        match query.get("$deltatoken").map(String::as_str) {
            Some("latest") => {
                return json_ok(json!({
                    "@odata.context": format!("{}/v1.0/$metadata#users", inner.base_url),
                    "@odata.deltaLink": users_delta_link(inner, tenant.version()),
                    "value": [],
                }));
            }
            Some(token) => match token
                .strip_prefix('u')
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            {
                Some(version) => (Some(version), tenant.version(), 0),
                None => return bad_request("Invalid delta token."),
            },
            None => (None, tenant.version(), 0),
        }
    };
    let users = match tenant.users_delta(since, upto) {
        Ok(users) => users,
        Err(DeltaError::Expired) => {
            return graph_error(
                StatusCode::GONE,
                "syncStateNotFound",
                "The sync state generation is not found. Delta tokens expire: restart the sync.",
            );
        }
    };
    let page_size = lock(&inner.config).page_size.clamp(1, 200);
    let end = (offset + page_size).min(users.len());
    let value: Vec<Value> = users
        .get(offset..end)
        .unwrap_or_default()
        .iter()
        .map(|(id, gone)| match directory_object(&tenant, *id) {
            Some(object) if !gone => object,
            _ => json!({ "id": id, "@removed": { "reason": "deleted" } }),
        })
        .collect();
    let mut page = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users", inner.base_url),
        "value": value,
    });
    if end < users.len() {
        let since = since.map_or_else(|| "-".to_owned(), |v| format!("{v:x}"));
        page["@odata.nextLink"] = json!(format!(
            "{}/v1.0/users/delta?$skiptoken={since}.{upto:x}.{end}",
            inner.base_url
        ));
    } else {
        page["@odata.deltaLink"] = json!(users_delta_link(inner, upto));
    }
    json_ok(page)
}

fn users_delta_link(inner: &Inner, version: u64) -> String {
    format!(
        "{}/v1.0/users/delta?$deltatoken=u{version:x}",
        inner.base_url
    )
}

/// `<since or ->.<upto>.<offset>`, as [`users_delta`] writes it.
fn decode_users_skiptoken(token: &str) -> Option<(Option<u64>, u64, usize)> {
    let mut parts = token.split('.');
    let since = match parts.next()? {
        "-" => None,
        hex => Some(u64::from_str_radix(hex, 16).ok()?),
    };
    let upto = u64::from_str_radix(parts.next()?, 16).ok()?;
    let offset = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((since, upto, offset))
}

// ---- members, objects ----

pub(crate) fn directory_object(tenant: &Tenant, id: Uuid) -> Option<Value> {
    if let Some(user) = tenant.users.get(&id) {
        return Some(json!({
            "@odata.type": "#microsoft.graph.user",
            "id": user.id,
            "displayName": user.display_name,
            "mail": user.mail,
            "userPrincipalName": user.user_principal_name,
            "accountEnabled": user.account_enabled,
        }));
    }
    tenant.groups.get(&id).map(|group| {
        json!({
            "@odata.type": "#microsoft.graph.group",
            "id": group.id,
            "displayName": group.display_name,
            "description": group.description,
        })
    })
}

/// Pages through a list with `$top` and an offset `$skiptoken`.
fn paged(
    inner: &Inner,
    path: &str,
    query: &HashMap<String, String>,
    items: Vec<Value>,
) -> Response {
    let max = lock(&inner.config).page_size.max(1);
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 999)
        .min(max);
    let offset = query
        .get("$skiptoken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let end = (offset + top).min(items.len());
    let value: Vec<Value> = items
        .get(offset..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut page = json!({ "value": value });
    if end < items.len() {
        let mut next = format!("{}/v1.0/{path}?$top={top}&$skiptoken={end}", inner.base_url);
        if let Some(select) = query.get("$select") {
            next.push_str(&format!("&$select={select}"));
        }
        page["@odata.nextLink"] = json!(next);
    }
    json_ok(page)
}

/// Every user, in a stable order (`$select` is accepted; every user property is returned).
fn users(inner: &Inner, query: &HashMap<String, String>) -> Response {
    let items = {
        let tenant = lock(&inner.tenant);
        let mut ids: Vec<Uuid> = tenant.users.keys().copied().collect();
        ids.sort_unstable();
        // A listing served by a replica that lags.
        ids.into_iter()
            .filter(|id| !inner.lags(*id))
            .filter_map(|id| directory_object(&tenant, id))
            .collect()
    };
    paged(inner, "users", query, items)
}

fn user(inner: &Inner, id: &str) -> Response {
    let Ok(user) = Uuid::parse_str(id) else {
        return bad_request(&format!("Invalid object identifier '{id}'."));
    };
    if inner.lags(user) {
        return not_found(id);
    }
    let tenant = lock(&inner.tenant);
    match tenant.users.get(&user).and(directory_object(&tenant, user)) {
        Some(object) => json_ok(object),
        None => not_found(id),
    }
}

fn members(inner: &Inner, id: &str, transitive: bool, query: &HashMap<String, String>) -> Response {
    let Ok(group) = Uuid::parse_str(id) else {
        return bad_request(&format!("Invalid object identifier '{id}'."));
    };
    if inner.lags(group) {
        return not_found(id);
    }
    let items = {
        let tenant = lock(&inner.tenant);
        let Some(ids) = tenant.members_of(group, transitive) else {
            return not_found(id);
        };
        ids.into_iter()
            .filter_map(|member| directory_object(&tenant, member))
            .collect()
    };
    let kind = if transitive {
        "transitiveMembers"
    } else {
        "members"
    };
    paged(inner, &format!("groups/{id}/{kind}"), query, items)
}

/// A group's owners, paged like its members.
fn owners(inner: &Inner, id: &str, query: &HashMap<String, String>) -> Response {
    let Ok(group) = Uuid::parse_str(id) else {
        return bad_request(&format!("Invalid object identifier '{id}'."));
    };
    if inner.lags(group) {
        return not_found(id);
    }
    let items = {
        let tenant = lock(&inner.tenant);
        let Some(ids) = tenant.owners_of(group) else {
            return not_found(id);
        };
        ids.into_iter()
            .filter_map(|owner| directory_object(&tenant, owner))
            .collect()
    };
    paged(inner, &format!("groups/{id}/owners"), query, items)
}

/// One group; `$expand=owners` adds its owners, at most [`MOST_EXPANDED`] as Graph does.
fn group(inner: &Inner, id: &str, query: &HashMap<String, String>) -> Response {
    let Ok(group) = Uuid::parse_str(id) else {
        return bad_request(&format!("Invalid object identifier '{id}'."));
    };
    if inner.lags(group) {
        return not_found(id);
    }
    let tenant = lock(&inner.tenant);
    let Some(mut object) = tenant
        .is_group(group)
        .then(|| directory_object(&tenant, group))
        .flatten()
    else {
        return not_found(id);
    };
    if expands_owners(query) {
        object["owners"] = expanded_owners(&tenant, group);
    }
    json_ok(object)
}

/// `$expand=owners`, also with options (`owners($select=id)`), which are accepted and ignored.
fn expands_owners(query: &HashMap<String, String>) -> bool {
    query.get("$expand").is_some_and(|expand| {
        expand
            .split(',')
            .map(str::trim)
            .any(|e| e == "owners" || e.starts_with("owners("))
    })
}

fn expanded_owners(tenant: &Tenant, group: Uuid) -> Value {
    let owners = tenant.owners_of(group).unwrap_or_default();
    Value::Array(
        owners
            .into_iter()
            .filter_map(|owner| directory_object(tenant, owner))
            .take(MOST_EXPANDED)
            .collect(),
    )
}

fn get_by_ids(inner: &Inner, body: &[u8]) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return bad_request("Invalid JSON body.");
    };
    let Some(ids) = request["ids"].as_array() else {
        return bad_request("The 'ids' parameter is required.");
    };
    if ids.len() > 1000 {
        return bad_request("Too many ids: at most 1000 per request.");
    }
    let types: Vec<String> = request["types"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|v| v.as_str())
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let tenant = lock(&inner.tenant);
    let value: Vec<Value> = ids
        .iter()
        .filter_map(|id| id.as_str().and_then(|id| Uuid::parse_str(id).ok()))
        .filter(|id| !inner.lags(*id))
        .filter_map(|id| directory_object(&tenant, id))
        .filter(|object| {
            let kind = object["@odata.type"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("#microsoft.graph.");
            types.is_empty() || types.iter().any(|t| t == kind)
        })
        .collect();
    json_ok(json!({ "value": value }))
}

// ---- the enterprise app ----

/// Resolves `servicePrincipals(appId='...')` or a bare object id to the app, if it is ours.
fn resolve_app<'a>(tenant: &'a Tenant, segment: &str) -> Option<&'a crate::tenant::App> {
    let app = &tenant.app;
    let matches = if let Some(rest) = segment.strip_prefix("servicePrincipals(appId='") {
        rest.strip_suffix("')")
            .and_then(|id| Uuid::parse_str(id).ok())
            == Some(app.app_id)
    } else {
        Uuid::parse_str(segment).ok() == Some(app.service_principal_id)
    };
    matches.then_some(app)
}

fn service_principal(inner: &Inner, segment: &str) -> Response {
    let tenant = lock(&inner.tenant);
    let Some(app) = resolve_app(&tenant, segment) else {
        return not_found(segment);
    };
    let roles: Vec<Value> = app
        .app_roles
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "value": r.value,
                "displayName": r.display_name,
                "isEnabled": r.is_enabled,
                "allowedMemberTypes": ["User"],
                "description": r.display_name,
            })
        })
        .collect();
    json_ok(json!({
        "id": app.service_principal_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "appRoles": roles,
    }))
}

fn assigned_to(inner: &Inner, segment: &str, query: &HashMap<String, String>) -> Response {
    let (items, path) = {
        let tenant = lock(&inner.tenant);
        let Some(app) = resolve_app(&tenant, segment) else {
            return not_found(segment);
        };
        let items: Vec<Value> = app
            .assignments
            .iter()
            .map(|a| {
                json!({
                    "id": a.id,
                    "principalId": a.principal_id,
                    "principalType": match a.principal_type {
                        PrincipalType::User => "User",
                        PrincipalType::Group => "Group",
                        PrincipalType::ServicePrincipal => "ServicePrincipal",
                    },
                    "principalDisplayName": tenant.display_name_of(a.principal_id),
                    "appRoleId": a.app_role_id,
                    "resourceId": app.service_principal_id,
                    "resourceDisplayName": app.display_name,
                    "createdDateTime": "2026-01-01T00:00:00Z",
                })
            })
            .collect();
        (
            items,
            format!(
                "servicePrincipals/{}/appRoleAssignedTo",
                app.service_principal_id
            ),
        )
    };
    paged(inner, &path, query, items)
}
