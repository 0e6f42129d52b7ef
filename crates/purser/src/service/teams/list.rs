//! Team listings (`/team/list`, `/v2/team/list`, `/team/filter/ui`, `/team/available`): each runs
//! a constant number of statements whatever the number of teams, members or keys. Non-admins
//! only ever list their own teams.

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::paging::{Page, PageRules, Paged};
use crate::service::views;
use crate::store::budgets::BudgetRow;
use crate::store::keys::KeyRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::{OrgFilter, Scope, SortBy, TeamFilter, TeamRow};
use crate::store::{self, Handle};

use super::DEFAULT_ORGANIZATION;

/// Children of a set of teams, loaded in a constant number of statements.
struct Children {
    roster: HashMap<String, Vec<MembershipRow>>,
    model_tables: HashMap<i64, ModelTableRow>,
}

async fn load_children(
    h: &mut Handle,
    teams: &[TeamRow],
    scope: Scope<'_>,
) -> Result<Children, Error> {
    let mut roster: HashMap<String, Vec<MembershipRow>> = HashMap::new();
    for m in store::teams::memberships_in(h, scope).await? {
        roster.entry(m.team_id.clone()).or_default().push(m);
    }
    let model_ids: Vec<i64> = teams.iter().filter_map(|t| t.model_id).collect();
    let model_tables = store::teams::model_tables_in(h, &model_ids)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    Ok(Children {
        roster,
        model_tables,
    })
}

impl Children {
    fn team_json(&self, t: &TeamRow) -> Value {
        views::team_json(
            t,
            self.roster
                .get(&t.team_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            t.model_id.and_then(|id| self.model_tables.get(&id)),
        )
    }
}

/// Which user's teams a caller may list: admins and viewers anyone's (or all); others only
/// their own (reference §5.16/§5.17).
fn list_scope(
    caller: &Caller,
    user_id: Option<String>,
    force_own: bool,
) -> Result<Option<String>, Error> {
    if caller.can_read_all() {
        return Ok(user_id);
    }
    let denied = || {
        Error::http(
            StatusCode::UNAUTHORIZED,
            format!(
                "Only admin users can query all teams/other teams. Your user role={}",
                caller.role.as_str()
            ),
        )
    };
    match (user_id, &caller.user_id) {
        (Some(u), Some(me)) if &u == me => Ok(Some(u)),
        (None, Some(me)) if force_own => Ok(Some(me.clone())),
        _ => Err(denied()),
    }
}

fn org_filter(o: Option<String>) -> Option<OrgFilter> {
    o.map(|o| {
        if o == DEFAULT_ORGANIZATION {
            OrgFilter::NoOrg
        } else {
            OrgFilter::Is(o)
        }
    })
}

/// `GET /team/list` (legacy, unpaginated): five statements for any number of teams.
pub async fn list_team(
    state: &AppState,
    caller: &Caller,
    user_id: Option<String>,
    organization_id: Option<String>,
) -> Result<Value, Error> {
    let user_id = list_scope(caller, user_id, false)?;
    let filter = TeamFilter {
        member_user_id: user_id.clone(),
        organization_id: org_filter(organization_id),
        ..Default::default()
    };
    let mut h = state.db.conn().await?;
    let mut teams = store::teams::list_all(&mut h, &filter).await?;
    let scope = Scope::Filter(&filter);
    let children = load_children(&mut h, &teams, scope).await?;
    let budgets: HashMap<String, BudgetRow> = store::teams::budgets_in(&mut h, scope, &[])
        .await?
        .into_iter()
        .map(|b| (b.budget_id.clone(), b))
        .collect();
    let mut keys: HashMap<String, Vec<KeyRow>> = HashMap::new();
    for k in store::teams::keys_in(&mut h, scope, None).await? {
        if let Some(t) = &k.team_id {
            keys.entry(t.clone()).or_default().push(k);
        }
    }
    // Stable sort: equal aliases keep creation order.
    teams.sort_by(|a, b| {
        a.team_alias
            .as_deref()
            .unwrap_or("")
            .cmp(b.team_alias.as_deref().unwrap_or(""))
    });
    // Key hashes are key ids: only admins and viewers see them in listings.
    let with_token = caller.can_read_all();
    let items: Vec<Value> = teams
        .iter()
        .map(|t| {
            let mut v = children.team_json(t);
            let memberships: Vec<Value> = children
                .roster
                .get(&t.team_id)
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .filter(|m| user_id.as_deref().is_none_or(|u| m.user_id == u))
                .map(|m| {
                    views::membership_json(m, m.budget_id.as_ref().and_then(|b| budgets.get(b)))
                })
                .collect();
            v["team_memberships"] = Value::Array(memberships);
            v["keys"] = Value::Array(
                keys.get(&t.team_id)
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .map(|k| views::key_json(k, with_token))
                    .collect(),
            );
            v
        })
        .collect();
    Ok(Value::Array(items))
}

/// Highest `page` the team listings accept (their offset is computed with a saturating multiply).
const MAX_PAGE: i64 = i64::MAX / 1000;

/// Query of `GET /v2/team/list`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TeamListV2Query {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub search: Option<String>,
    pub page: Option<i64>,
    pub page_size: Option<i64>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub status: Option<String>,
}

impl Paged for TeamListV2Query {
    const RULES: PageRules = PageRules::bounds("page_size", 10, 100, MAX_PAGE);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.page_size)
    }
}

/// `GET /v2/team/list`: count, page, rosters, key counts, alias rows — five statements per page.
pub async fn list_team_v2(
    state: &AppState,
    caller: &Caller,
    q: TeamListV2Query,
    paging: Page,
) -> Result<Value, Error> {
    let (page, page_size) = (paging.number, paging.size);
    let sort = match q.sort_by.as_deref() {
        None => SortBy::CreatedAt,
        Some(s) => SortBy::parse(s).ok_or_else(|| {
            Error::http(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid sort_by: {s}. Must be one of: {}",
                    SortBy::NAMES.join(", ")
                ),
            )
        })?,
    };
    let desc = match q
        .sort_order
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => q.sort_by.is_none(),
        Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            return Err(Error::http(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid sort_order: {}. Must be 'asc' or 'desc'",
                    q.sort_order.as_deref().unwrap_or_default()
                ),
            ));
        }
    };
    if let Some(s) = &q.status
        && s != "deleted"
    {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            "Invalid status value. Currently only 'deleted' is supported.",
        ));
    }
    let user_id = list_scope(caller, q.user_id, true)?;
    let empty = |total: i64| json!({"teams": [], "total": total, "page": page, "page_size": page_size, "total_pages": 0});
    if q.status.is_some() {
        // Deleted teams are not archived: there is never a deleted team to list.
        return Ok(empty(0));
    }
    let filter = TeamFilter {
        member_user_id: user_id,
        team_id: q.team_id.filter(|s| !s.is_empty()),
        team_alias_contains: q.team_alias.filter(|s| !s.is_empty()),
        organization_id: org_filter(q.organization_id),
        search: q.search.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    let mut h = state.db.conn().await?;
    let offset = (page - 1).saturating_mul(page_size);
    let (teams, total) =
        store::teams::list_page(&mut h, &filter, sort, desc, page_size, offset).await?;
    let ids: Vec<String> = teams.iter().map(|t| t.team_id.clone()).collect();
    let children = load_children(&mut h, &teams, Scope::Ids(&ids)).await?;
    let key_counts: HashMap<String, i64> = store::teams::key_counts(&mut h, &ids)
        .await?
        .into_iter()
        .collect();
    let items: Vec<Value> = teams
        .iter()
        .map(|t| {
            let mut v = children.team_json(t);
            v["members_count"] = json!(children.roster.get(&t.team_id).map_or(0, Vec::len));
            v["keys_count"] = json!(key_counts.get(&t.team_id).copied().unwrap_or(0));
            v
        })
        .collect();
    Ok(json!({
        "teams": items,
        "total": total,
        "page": page,
        "page_size": page_size,
        "total_pages": (total + page_size - 1) / page_size,
    }))
}

/// Query of `GET /team/filter/ui`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FilterUiQuery {
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    pub page: Option<i64>,
    pub page_size: Option<i64>,
}

impl Paged for FilterUiQuery {
    const RULES: PageRules = PageRules::bounds("page_size", 50, 100, MAX_PAGE);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.page_size)
    }
}

/// `GET /team/filter/ui`: substring search, newest first, a plain list.
pub async fn ui_view_teams(
    state: &AppState,
    q: FilterUiQuery,
    paging: Page,
) -> Result<Value, Error> {
    let (page, page_size) = (paging.number, paging.size);
    let filter = TeamFilter {
        team_id_contains: q.team_id.filter(|s| !s.is_empty()),
        team_alias_contains: q.team_alias.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    let mut h = state.db.conn().await?;
    let offset = (page - 1).saturating_mul(page_size);
    let (teams, _) =
        store::teams::list_page(&mut h, &filter, SortBy::CreatedAt, true, page_size, offset)
            .await?;
    let ids: Vec<String> = teams.iter().map(|t| t.team_id.clone()).collect();
    let children = load_children(&mut h, &teams, Scope::Ids(&ids)).await?;
    Ok(Value::Array(
        teams.iter().map(|t| children.team_json(t)).collect(),
    ))
}

/// `GET /team/available`: configured joinable teams the caller is not in yet.
pub async fn list_available_teams(state: &AppState, caller: &Caller) -> Result<Value, Error> {
    let available = state.config.available_teams();
    if available.is_empty() {
        return Ok(json!([]));
    }
    let user_not_found = || Error::http(StatusCode::NOT_FOUND, "User not found");
    let Some(uid) = &caller.user_id else {
        return Err(user_not_found());
    };
    let mut h = state.db.conn().await?;
    if store::users::get(&mut h, uid).await?.is_none() {
        return Err(user_not_found());
    }
    let mine: HashSet<String> = store::users::teams_of(&mut h, uid)
        .await?
        .into_iter()
        .collect();
    let wanted: Vec<String> = available
        .iter()
        .filter(|t| !mine.contains(*t))
        .cloned()
        .collect();
    let teams = store::teams::get_many(&mut h, &wanted).await?;
    let ids: Vec<String> = teams.iter().map(|t| t.team_id.clone()).collect();
    let children = load_children(&mut h, &teams, Scope::Ids(&ids)).await?;
    Ok(Value::Array(
        teams.iter().map(|t| children.team_json(t)).collect(),
    ))
}
