//! `/team/*` routes except the member routes (those live in `team_member.rs`). Thin handlers:
//! parse (FastAPI-shaped 4xx for bad input), call `service::teams`, render. Route gates follow
//! reference §2.3; the handler-level checks (team admin, roster member) live in the service.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::error::Shape;
use super::extract::{JsonBody, PagedQuery, Patch, QueryParams, parse_json};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::caller::Caller;
use crate::service::teams::{
    self, FilterUiQuery, NewTeamRequest, TeamListV2Query, UpdateTeamRequest,
};
use purser_core::unenforced;

const TAG: &str = "team management";

pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/team/new", Gate::Admin, TAG, "Create a team", new_team)
            .answers(Shape::TeamWrapped)
            .refuses(unenforced::TEAM),
        Route::post(
            "/team/update",
            Gate::SelfManaged,
            TAG,
            "Update a team (proxy admin; team admin within the editable-field allow-list)",
            update_team,
        )
        .answers(Shape::TeamWrapped)
        .refuses(unenforced::TEAM),
        Route::patch(
            "/team/{team_id}",
            Gate::Admin,
            TAG,
            "Patch a team (metadata as RFC 7386 merge patch)",
            patch_team,
        )
        .answers(Shape::TeamWrapped)
        .refuses(unenforced::TEAM),
        Route::get(
            "/team/info",
            Gate::SelfManaged,
            TAG,
            "Team with roster, memberships and keys",
            team_info,
        )
        .answers(Shape::TeamWrapped),
        Route::get(
            "/team/list",
            Gate::SelfManaged,
            TAG,
            "All teams (legacy, unpaginated)",
            list_team,
        ),
        Route::get(
            "/v2/team/list",
            Gate::SelfManaged,
            TAG,
            "Teams, paginated, filtered and sorted",
            list_team_v2,
        ),
        Route::get(
            "/team/filter/ui",
            Gate::Admin,
            TAG,
            "Search teams by id or alias",
            ui_view_teams,
        ),
        Route::get(
            "/team/available",
            Gate::SelfManaged,
            TAG,
            "Joinable teams the caller is not in",
            list_available_teams,
        ),
        Route::post(
            "/team/block",
            Gate::Admin,
            TAG,
            "Block every call of a team's keys",
            block_team,
        ),
        Route::post(
            "/team/unblock",
            Gate::Admin,
            TAG,
            "Unblock a team",
            unblock_team,
        ),
        Route::post(
            "/team/delete",
            Gate::Admin,
            TAG,
            "Delete teams and their keys",
            delete_team,
        ),
        Route::post(
            "/team/model/add",
            Gate::Admin,
            TAG,
            "Add models to a team",
            team_model_add,
        ),
        Route::post(
            "/team/model/delete",
            Gate::Admin,
            TAG,
            "Remove models from a team",
            team_model_delete,
        ),
        Route::get(
            "/team/permissions_list",
            Gate::SelfManaged,
            TAG,
            "Key permissions of team members",
            team_member_permissions,
        ),
        Route::post(
            "/team/permissions_update",
            Gate::SelfManaged,
            TAG,
            "Replace the key permissions of team members",
            update_team_member_permissions,
        ),
    ]
}

/// Typed view of a raw JSON body (the raw object is kept for metadata folding).
fn typed<T: DeserializeOwned>(raw: &Value) -> Result<T> {
    parse_json(&serde_json::to_vec(raw).map_err(Error::internal)?)
}

fn object(raw: &Value) -> Map<String, Value> {
    raw.as_object().cloned().unwrap_or_default()
}

fn missing(loc: &str, field: &str) -> Error {
    Error::validation(vec![json!(loc), json!(field)], "missing", "Field required")
}

pub async fn new_team(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Json<Value>> {
    let req: NewTeamRequest = typed(&raw)?;
    Ok(Json(
        teams::new_team(&state, &caller, &object(&raw), req).await?,
    ))
}

pub async fn update_team(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Json<Value>> {
    let req: UpdateTeamRequest = typed(&raw)?;
    let Patch::Value(team_id) = req.team_id.clone() else {
        return Err(missing("body", "team_id"));
    };
    let u = teams::update_team(&state, &caller, &team_id, &object(&raw), req, false).await?;
    Ok(Json(json!({
        "team_id": team_id,
        "data": teams::written_team_json(&u.team, &u.roster, u.model_table.as_ref()),
    })))
}

pub async fn patch_team(
    State(state): State<AppState>,
    caller: Caller,
    Path(team_id): Path<String>,
    JsonBody(raw): JsonBody<Value>,
) -> Result<Json<Value>> {
    let req: UpdateTeamRequest = typed(&raw)?;
    if let Patch::Value(body_id) = &req.team_id
        && body_id != &team_id
    {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            format!("team_id in body ({body_id}) does not match team_id in path ({team_id})"),
        ));
    }
    let u = teams::update_team(&state, &caller, &team_id, &object(&raw), req, true).await?;
    Ok(Json(teams::written_team_json(
        &u.team,
        &u.roster,
        u.model_table.as_ref(),
    )))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TeamIdQuery {
    pub team_id: Option<String>,
}

pub async fn team_info(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<TeamIdQuery>,
) -> Result<Json<teams::TeamInfo>> {
    let Some(team_id) = q.team_id.filter(|t| !t.is_empty()) else {
        return Err(Error::proxy(
            StatusCode::UNPROCESSABLE_ENTITY,
            "auth_error",
            "{'message': 'Malformed request. No team id passed in.'}",
        )
        .with_param("None"));
    };
    Ok(Json(teams::team_info(&state, &caller, &team_id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub organization_id: Option<String>,
}

pub async fn list_team(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::list_team(&state, &caller, q.user_id, q.organization_id).await?,
    ))
}

pub async fn list_team_v2(
    State(state): State<AppState>,
    caller: Caller,
    PagedQuery(q, paging): PagedQuery<TeamListV2Query>,
) -> Result<Json<Value>> {
    Ok(Json(teams::list_team_v2(&state, &caller, q, paging).await?))
}

pub async fn ui_view_teams(
    State(state): State<AppState>,
    PagedQuery(q, paging): PagedQuery<FilterUiQuery>,
) -> Result<Json<Value>> {
    Ok(Json(teams::ui_view_teams(&state, q, paging).await?))
}

pub async fn list_available_teams(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>> {
    Ok(Json(teams::list_available_teams(&state, &caller).await?))
}

#[derive(Debug, Deserialize)]
pub struct BlockTeamRequest {
    pub team_id: String,
}

pub async fn block_team(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<BlockTeamRequest>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::set_blocked(&state, &caller, &req.team_id, true).await?,
    ))
}

pub async fn unblock_team(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<BlockTeamRequest>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::set_blocked(&state, &caller, &req.team_id, false).await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeleteTeamRequest {
    pub team_ids: Patch<Vec<String>>,
}

pub async fn delete_team(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<DeleteTeamRequest>,
) -> Result<Json<Value>> {
    let ids = match req.team_ids {
        Patch::Absent => return Err(missing("body", "team_ids")),
        Patch::Null => {
            return Err(Error::http(StatusCode::BAD_REQUEST, "No team id passed in"));
        }
        Patch::Value(ids) => ids,
    };
    Ok(Json(teams::delete_teams(&state, &caller, ids).await?))
}

#[derive(Debug, Deserialize)]
pub struct TeamModelRequest {
    pub team_id: String,
    pub models: Vec<String>,
}

pub async fn team_model_add(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<TeamModelRequest>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::team_models(&state, &caller, &req.team_id, &req.models, true).await?,
    ))
}

pub async fn team_model_delete(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<TeamModelRequest>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::team_models(&state, &caller, &req.team_id, &req.models, false).await?,
    ))
}

pub async fn team_member_permissions(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<TeamIdQuery>,
) -> Result<Json<Value>> {
    let Some(team_id) = q.team_id else {
        return Err(missing("query", "team_id"));
    };
    Ok(Json(
        teams::permissions_list(&state, &caller, &team_id).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct UpdatePermissionsRequest {
    pub team_id: String,
    pub team_member_permissions: Vec<String>,
}

pub async fn update_team_member_permissions(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<UpdatePermissionsRequest>,
) -> Result<Json<Value>> {
    Ok(Json(
        teams::permissions_update(&state, &caller, &req.team_id, req.team_member_permissions)
            .await?,
    ))
}
