//! `/user/*` routes (reference §6.4, §6.5): thin handlers over `service::users`. Writes commit,
//! then evict the touched users, keys, teams and memberships before answering.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, PagedQuery, QueryParams};
use super::{Gate, Route};
use crate::app::AppState;
use crate::service::caller::Caller;
use crate::service::paging::{PageRules, Paged};
use crate::service::users::{self, NewUserRequest, UpdateUserRequest};
use crate::service::views;
use crate::store::{self, users::UserFilter};

pub fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/user/new",
            Gate::Admin,
            "internal user management",
            "Create a user (and its first key)",
            user_new,
        ),
        Route::get(
            "/user/info",
            Gate::SelfManaged,
            "internal user management",
            "Read a user with its keys and teams",
            user_info,
        ),
        Route::get(
            "/user/list",
            Gate::Admin,
            "internal user management",
            "List users (paginated)",
            user_list,
        ),
        Route::post(
            "/user/update",
            Gate::Admin,
            "internal user management",
            "Update a user (only sent fields change)",
            user_update,
        ),
        Route::post(
            "/user/delete",
            Gate::Admin,
            "internal user management",
            "Delete users with their keys and memberships",
            user_delete,
        ),
    ]
}

pub async fn user_new(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<NewUserRequest>,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.begin_write().await?;
    let created = users::create_tx(&mut h, &state, &caller, &req).await?;
    h.commit().await?;
    users::evict_created(&state, &created).await;
    Ok(Json(users::created_response(
        &created,
        req.duration.as_deref(),
    )))
}

#[derive(Debug, Deserialize)]
pub struct UserInfoQuery {
    user_id: Option<String>,
}

pub async fn user_info(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<UserInfoQuery>,
) -> ApiResult<Json<Value>> {
    let Some(user_id) = q.user_id.clone().or_else(|| caller.user_id.clone()) else {
        return Err(ApiError::wrapped(
            StatusCode::BAD_REQUEST,
            "user_id is required",
        ));
    };
    if !caller.can_read_all() && caller.user_id.as_deref() != Some(user_id.as_str()) {
        return Err(ApiError::wrapped(
            StatusCode::FORBIDDEN,
            &format!(
                "key not allowed to access this user's info. user_id={}, key's user_id={}",
                user_id,
                caller.user_id.as_deref().unwrap_or("None")
            ),
        ));
    }
    let mut h = state.db.conn().await?;
    let Some(user) = store::users::get(&mut h, &user_id).await? else {
        return Err(users::user_not_found(&user_id));
    };
    let memberships = store::members::list_by_user(&mut h, &user_id).await?;
    let team_ids: Vec<String> = memberships.iter().map(|m| m.team_id.clone()).collect();
    let keys: Vec<Value> = store::keys::list_by_user(&mut h, &user_id)
        .await?
        .iter()
        .map(|k| views::key_json(k, true))
        .collect();
    let mut teams = Vec::new();
    for m in &memberships {
        let Some(team) = store::teams::get(&mut h, &m.team_id).await? else {
            continue;
        };
        let roster = store::members::list_by_team(&mut h, &team.team_id).await?;
        let model_table = match team.model_id {
            Some(id) => store::models::get(&mut h, id).await?,
            None => None,
        };
        let budget = match &m.budget_id {
            Some(b) => store::budgets::get(&mut h, b).await?,
            None => None,
        };
        let team_keys: Vec<Value> = store::keys::list_by_team(&mut h, &team.team_id)
            .await?
            .iter()
            .map(|k| {
                // Hashes of other members' keys are shown only to readers of everything.
                let own = k.user_id.as_deref() == Some(user_id.as_str());
                views::key_json(k, caller.can_read_all() || own)
            })
            .collect();
        let mut t = views::team_json(&team, &roster, model_table.as_ref());
        t["team_memberships"] = json!([views::membership_json(m, budget.as_ref())]);
        t["keys"] = json!(team_keys);
        teams.push(t);
    }
    Ok(Json(json!({
        "user_id": user_id,
        "user_info": views::user_json(&user, &team_ids),
        "keys": keys,
        "teams": teams,
    })))
}

#[derive(Debug, Deserialize)]
pub struct UserListQuery {
    page: Option<i64>,
    page_size: Option<i64>,
    user_ids: Option<String>,
    role: Option<String>,
    team: Option<String>,
    user_email: Option<String>,
}

impl Paged for UserListQuery {
    const RULES: PageRules = PageRules::between("page_size", 25, 100);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.page_size)
    }
}

pub async fn user_list(
    State(state): State<AppState>,
    PagedQuery(q, paging): PagedQuery<UserListQuery>,
) -> ApiResult<Json<Value>> {
    let (page, page_size) = (paging.number, paging.size);
    let filter = UserFilter {
        user_ids: q.user_ids.as_ref().map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        }),
        role: q.role.clone(),
        team: q.team.clone(),
        email_contains: q.user_email.clone(),
    };
    let mut h = state.db.conn().await?;
    let (rows, total) =
        store::users::list(&mut h, &filter, page_size, (page - 1) * page_size).await?;
    let mut out = Vec::with_capacity(rows.len());
    for u in &rows {
        let teams = store::users::teams_of(&mut h, &u.user_id).await?;
        out.push(views::user_json(u, &teams));
    }
    Ok(Json(json!({
        "users": out,
        "total": total,
        "page": page,
        "page_size": page_size,
        "total_pages": (total + page_size - 1) / page_size,
    })))
}

pub async fn user_update(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateUserRequest>,
) -> ApiResult<Json<Value>> {
    let mut h = state.db.begin_write().await?;
    let (_, after) = users::update_tx(&mut h, &caller, &req).await?;
    h.commit().await?;
    state.cache.evict_user(&after.user_id).await;
    let mut h = state.db.conn().await?;
    let teams = store::users::teams_of(&mut h, &after.user_id).await?;
    Ok(Json(
        json!({ "user_id": after.user_id, "data": views::user_json(&after, &teams) }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct UserDeleteRequest {
    user_ids: Vec<String>,
}

pub async fn user_delete(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UserDeleteRequest>,
) -> ApiResult<Json<Value>> {
    if req.user_ids.is_empty() {
        return Err(ApiError::detail_error(
            StatusCode::BAD_REQUEST,
            "user_ids must not be empty",
        ));
    }
    let mut ids: Vec<String> = Vec::new();
    for id in &req.user_ids {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let mut h = state.db.begin_write().await?;
    let deleted = users::delete_tx(&mut h, &caller, &ids).await?;
    h.commit().await?;
    users::evict_deleted(&state, &ids, &deleted).await;
    Ok(Json(json!({ "deleted_users": ids })))
}
