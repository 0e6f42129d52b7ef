//! `/user/*` routes (reference §6.4, §6.5): thin handlers over `service::users`. Writes commit,
//! then evict the touched users, keys, teams and memberships before answering.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::Shape;
use super::extract::{JsonBody, PagedQuery, QueryParams};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::caller::Caller;
use crate::service::paging::{PageRules, Paged};
use crate::service::users::{self, NewUserRequest, UpdateUserRequest};
use crate::service::views;
use crate::store::users::UserFilter;
use purser_core::unenforced;

pub fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/user/new",
            Gate::Admin,
            "internal user management",
            "Create a user (and its first key)",
            user_new,
        )
        .answers(Shape::Wrapped)
        .refuses(unenforced::USER),
        Route::get(
            "/user/info",
            Gate::SelfManaged,
            "internal user management",
            "Read a user with its keys and teams",
            user_info,
        )
        .answers(Shape::Wrapped),
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
        )
        .answers(Shape::Wrapped)
        .refuses(unenforced::USER),
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
) -> Result<Json<Value>> {
    let created = users::create(&state, &caller, &req).await?;
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
) -> Result<Json<Value>> {
    Ok(Json(users::info(&state, &caller, q.user_id).await?))
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
) -> Result<Json<Value>> {
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
    let (rows, total) = users::list(&state, &filter, paging).await?;
    Ok(Json(json!({
        "users": rows,
        "total": total,
        "page": paging.number,
        "page_size": paging.size,
        "total_pages": (total + paging.size - 1) / paging.size,
    })))
}

pub async fn user_update(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdateUserRequest>,
) -> Result<Json<Value>> {
    let (after, teams) = users::update(&state, &caller, &req).await?;
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
) -> Result<Json<Value>> {
    if req.user_ids.is_empty() {
        return Err(Error::http(
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
    users::delete(&state, &caller, &ids).await?;
    Ok(Json(json!({ "deleted_users": ids })))
}
