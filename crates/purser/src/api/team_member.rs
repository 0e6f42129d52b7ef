//! Team roster routes: `/team/member_add`, `/team/member_delete`, `/team/member_update`,
//! `/team/bulk_member_add`, `/team/{team_id}/member/{user_id}/reset_spend` and
//! `/team/{team_id}/members/me`. Handlers only parse and validate input (every bad input is a
//! 4xx before anything is written) and render; the transactional work is in `service::members`.

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use purser_core::validate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{JsonBody, Patch, or_null};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::caller::Caller;
use crate::service::members::{self, MemberBudget, MemberPatch, NewMember, OnDuplicate};
use axum::extract::State;

const TAG: &str = "team management";
/// Most members one request may add (reference: `/team/bulk_member_add`; applied to
/// `/team/member_add` too so one call cannot hold the team lock for an unbounded time).
const MAX_MEMBERS: usize = 500;

pub fn routes() -> Vec<Route> {
    vec![
        Route::post(
            "/team/member_add",
            Gate::SelfManaged,
            TAG,
            "Add members to a team (proxy admin or team admin; self-join of available teams)",
            team_member_add,
        ),
        Route::post(
            "/team/member_delete",
            Gate::SelfManaged,
            TAG,
            "Remove a member from a team, with their keys of that team",
            team_member_delete,
        ),
        Route::post(
            "/team/member_update",
            Gate::SelfManaged,
            TAG,
            "Update a member's role and per-member budget (merge-patch)",
            team_member_update,
        ),
        Route::post(
            "/team/bulk_member_add",
            Gate::Admin,
            TAG,
            "Add up to 500 members (or every user) to a team",
            bulk_team_member_add,
        ),
        Route::post(
            "/team/{team_id}/member/{user_id}/reset_spend",
            Gate::SelfManaged,
            TAG,
            "Reset a member's spend inside a team",
            team_member_reset_spend,
        ),
        Route::get(
            "/team/{team_id}/members/me",
            Gate::SelfManaged,
            TAG,
            "The caller's own membership of a team",
            team_member_info_me,
        ),
    ]
}

/// A `Member` as sent: `role` required, at least one of `user_id`/`user_email`.
#[derive(Debug, Deserialize)]
struct MemberIn {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_email: Option<String>,
    role: TeamRole,
}

/// 422 in FastAPI's shape for a field of the body.
fn invalid(loc: &[Value], kind: &str, msg: impl Into<String>) -> Error {
    let mut full = vec![json!("body")];
    full.extend_from_slice(loc);
    Error::validation(full, kind, msg)
}

/// Parses one member at `loc`, rejecting empty identities.
fn parse_member(v: Value, loc: Vec<Value>) -> Result<NewMember> {
    if !v.is_object() {
        return Err(invalid(
            &loc,
            "model_type",
            "Input should be a valid dictionary or instance of Member",
        ));
    }
    let m: MemberIn = serde_path_to_error::deserialize(v).map_err(|e| {
        let mut l = loc.clone();
        let path = e.path().to_string();
        if path != "." {
            l.push(json!(path));
        }
        let msg = e.inner().to_string();
        let kind = if msg.starts_with("missing field") {
            "missing"
        } else {
            "type_error"
        };
        invalid(&l, kind, msg)
    })?;
    for (name, val) in [("user_id", &m.user_id), ("user_email", &m.user_email)] {
        if val.as_deref().is_some_and(|s| s.trim().is_empty()) {
            let mut l = loc.clone();
            l.push(json!(name));
            return Err(invalid(
                &l,
                "value_error",
                format!("{name} must not be empty"),
            ));
        }
    }
    if m.user_id.is_none() && m.user_email.is_none() {
        return Err(invalid(
            &loc,
            "value_error",
            "Value error, Either user id or user email must be provided",
        ));
    }
    Ok(NewMember {
        user_id: m.user_id,
        user_email: m.user_email,
        role: m.role,
    })
}

/// `member`: one Member or a list of them.
fn parse_members(v: Value) -> Result<Vec<NewMember>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, m)| parse_member(m, vec![json!("member"), json!(i)]))
            .collect(),
        Value::Null => Err(Error::http(
            StatusCode::BAD_REQUEST,
            "No member/members passed in",
        )),
        other => parse_member(other, vec![json!("member")]).map(|m| vec![m]),
    }
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            "No member/members passed in",
        ));
    }
    if n > MAX_MEMBERS {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            format!("Maximum {MAX_MEMBERS} members can be added at once"),
        ));
    }
    Ok(())
}

// Field rules are `purser_core::validate`; the roster routes answer failures with a 400 detail.

fn money(field: &str, v: f64) -> Result<Nanos> {
    validate::usd(v)
        .map(Nanos)
        .map_err(|e| Error::http(StatusCode::BAD_REQUEST, format!("{field} {e}")))
}

fn duration(v: &str) -> Result<()> {
    validate::budget_duration(v)
        .map(|_| ())
        .map_err(|e| Error::http(StatusCode::BAD_REQUEST, e.to_string()))
}

#[derive(Debug, Deserialize)]
struct MemberAddRequest {
    team_id: String,
    member: Value,
    #[serde(default)]
    max_budget_in_team: Option<f64>,
    #[serde(default)]
    budget_duration: Option<String>,
    #[serde(default)]
    allowed_models: Option<Vec<String>>,
}

fn member_budget(
    max_budget_in_team: Option<f64>,
    budget_duration: Option<String>,
    allowed_models: Option<Vec<String>>,
) -> Result<MemberBudget> {
    if let Some(d) = &budget_duration {
        duration(d)?;
    }
    Ok(MemberBudget {
        max_budget_in_team: max_budget_in_team
            .map(|v| money("max_budget_in_team", v))
            .transpose()?,
        budget_duration,
        allowed_models,
    })
}

/// POST /team/member_add → `TeamAddMemberResponse`.
async fn team_member_add(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<MemberAddRequest>,
) -> Result<Json<Value>> {
    let list = parse_members(req.member)?;
    check_count(list.len())?;
    let budget = member_budget(
        req.max_budget_in_team,
        req.budget_duration,
        req.allowed_models,
    )?;
    let out = members::member_add(
        &state,
        &caller,
        &req.team_id,
        &list,
        &budget,
        OnDuplicate::Reject,
    )
    .await?;
    let mut body = out.view.team_json();
    body["updated_users"] = (0..out.added.len()).map(|i| out.user_json(i)).collect();
    body["updated_team_memberships"] = (0..out.added.len())
        .map(|i| out.membership_json(i))
        .collect();
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct MemberDeleteRequest {
    team_id: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_email: Option<String>,
}

/// Non-empty `user_id`/`user_email`, at least one (reference 400 message).
fn identity(user_id: &Option<String>, user_email: &Option<String>) -> Result<()> {
    for (name, v) in [("user_id", user_id), ("user_email", user_email)] {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(invalid(
                &[json!(name)],
                "value_error",
                format!("{name} must not be empty"),
            ));
        }
    }
    if user_id.is_none() && user_email.is_none() {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            "Either user_id or user_email needs to be passed in",
        ));
    }
    Ok(())
}

/// POST /team/member_delete → the team with its new roster.
async fn team_member_delete(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<MemberDeleteRequest>,
) -> Result<Json<Value>> {
    identity(&req.user_id, &req.user_email)?;
    let view = members::member_delete(
        &state,
        &caller,
        &req.team_id,
        req.user_id.as_deref(),
        req.user_email.as_deref(),
    )
    .await?;
    Ok(Json(view.team_json()))
}

#[derive(Debug, Deserialize)]
struct MemberUpdateRequest {
    team_id: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    user_email: Option<String>,
    #[serde(default)]
    role: Option<TeamRole>,
    #[serde(default)]
    max_budget_in_team: Patch<f64>,
    #[serde(default)]
    tpm_limit: Patch<i64>,
    #[serde(default)]
    rpm_limit: Patch<i64>,
    #[serde(default)]
    budget_duration: Patch<String>,
    #[serde(default)]
    allowed_models: Patch<Vec<String>>,
    #[serde(default)]
    model_max_budget: Patch<serde_json::Map<String, Value>>,
}

/// POST /team/member_update → `TeamMemberUpdateResponse` (echoes the request's values).
async fn team_member_update(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<MemberUpdateRequest>,
) -> Result<Json<Value>> {
    identity(&req.user_id, &req.user_email)?;
    let max_budget = match &req.max_budget_in_team {
        Patch::Absent => Patch::Absent,
        Patch::Null => Patch::Null,
        Patch::Value(v) => Patch::Value(money("max_budget_in_team", *v)?),
    };
    for (name, p) in [("tpm_limit", &req.tpm_limit), ("rpm_limit", &req.rpm_limit)] {
        if let Some(v) = p.value()
            && *v < 0
        {
            return Err(Error::http(
                StatusCode::BAD_REQUEST,
                format!("{name} must be >= 0, got {v}"),
            ));
        }
    }
    if let Some(d) = req.budget_duration.value() {
        duration(d)?;
    }
    if let Some(m) = req.model_max_budget.value() {
        crate::service::limits::check_model_max_budget(&Value::Object(m.clone()))?;
    }
    let patch = MemberPatch {
        role: req.role,
        max_budget,
        tpm_limit: req.tpm_limit.clone(),
        rpm_limit: req.rpm_limit.clone(),
        budget_duration: req.budget_duration.clone(),
        allowed_models: req.allowed_models.clone(),
        model_max_budget: req.model_max_budget.clone(),
    };
    let uid = members::member_update(
        &state,
        &caller,
        &req.team_id,
        req.user_id.as_deref(),
        req.user_email.as_deref(),
        &patch,
    )
    .await?;
    Ok(Json(json!({
        "user_id": uid,
        "user_email": req.user_email,
        "team_id": req.team_id,
        "max_budget_in_team": or_null(&req.max_budget_in_team.value()),
        "tpm_limit": or_null(&req.tpm_limit.value()),
        "rpm_limit": or_null(&req.rpm_limit.value()),
        "budget_duration": or_null(&req.budget_duration.value()),
        "allowed_models": or_null(&req.allowed_models.value()),
        "temp_budget_increase": null,
        "temp_budget_expiry": null,
        "model_max_budget": or_null(&req.model_max_budget.value()),
    })))
}

#[derive(Debug, Deserialize)]
struct BulkMemberAddRequest {
    team_id: String,
    #[serde(default)]
    members: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "super::extract::null_as_default")]
    all_users: bool,
    #[serde(default)]
    max_budget_in_team: Option<f64>,
}

/// POST /team/bulk_member_add → `BulkTeamMemberAddResponse`. Input errors are 4xx; a failure
/// of the add itself answers 200 with every result `success: false` (nothing was added).
async fn bulk_team_member_add(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<BulkMemberAddRequest>,
) -> Result<Json<Value>> {
    let mut list = Vec::new();
    for (i, m) in req.members.unwrap_or_default().into_iter().enumerate() {
        list.push(parse_member(m, vec![json!("members"), json!(i)])?);
    }
    if req.all_users {
        let mut h = state.db.conn().await?;
        for (user_id, user_email) in crate::store::members::all_user_identities(&mut h).await? {
            if !list
                .iter()
                .any(|m| m.user_id.as_deref() == Some(user_id.as_str()))
            {
                list.push(NewMember {
                    user_id: Some(user_id),
                    user_email,
                    role: TeamRole::User,
                });
            }
        }
    }
    check_count(list.len())?;
    let budget = member_budget(req.max_budget_in_team, None, None)?;
    let total = list.len();
    let outcome = members::member_add(
        &state,
        &caller,
        &req.team_id,
        &list,
        &budget,
        OnDuplicate::Skip,
    )
    .await;
    let (results, updated_team): (Vec<Value>, Value) = match &outcome {
        Err(e) => {
            let text = e.message().to_string();
            let r = list
                .iter()
                .map(|m| result_json(m, false, Some(&text), Value::Null, Value::Null))
                .collect();
            (r, Value::Null)
        }
        Ok(out) => {
            let mut taken = vec![false; out.added.len()];
            let r = list
                .iter()
                .map(|m| {
                    let hit = out.added.iter().enumerate().position(|(i, a)| {
                        !taken[i]
                            && match &m.user_id {
                                Some(id) => *id == a.user.user_id,
                                None => m.user_email.as_deref().is_some_and(|e| {
                                    a.membership
                                        .user_email
                                        .as_deref()
                                        .is_some_and(|x| x.eq_ignore_ascii_case(e))
                                }),
                            }
                    });
                    match hit {
                        Some(i) => {
                            taken[i] = true;
                            result_json(m, true, None, out.user_json(i), out.membership_json(i))
                        }
                        None => result_json(
                            m,
                            false,
                            Some("User already in team"),
                            Value::Null,
                            Value::Null,
                        ),
                    }
                })
                .collect();
            (r, out.view.team_json())
        }
    };
    let ok = results.iter().filter(|r| r["success"] == true).count();
    Ok(Json(json!({
        "team_id": req.team_id,
        "results": results,
        "total_requested": total,
        "successful_additions": ok,
        "failed_additions": total - ok,
        "updated_team": updated_team,
    })))
}

fn result_json(
    m: &NewMember,
    success: bool,
    error: Option<&str>,
    user: Value,
    membership: Value,
) -> Value {
    json!({
        "user_id": m.user_id,
        "user_email": m.user_email,
        "success": success,
        "error": error,
        "updated_user": user,
        "updated_team_membership": membership,
    })
}

#[derive(Debug, Deserialize)]
struct ResetSpendRequest {
    reset_to: f64,
}

fn path_error(e: PathRejection) -> Error {
    Error::validation(vec![json!("path")], "type_error", e.body_text())
}

/// POST /team/{team_id}/member/{user_id}/reset_spend.
async fn team_member_reset_spend(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<ResetSpendRequest>,
) -> Result<Json<Value>> {
    let Path((team_id, user_id)) = path.map_err(path_error)?;
    members::reset_spend(&state, &caller, &team_id, &user_id, req.reset_to)
        .await
        .map(Json)
}

/// GET /team/{team_id}/members/me → `TeamMemberInfoResponse`.
async fn team_member_info_me(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>> {
    let Path(team_id) = path.map_err(path_error)?;
    members::member_me(&state, &caller, &team_id)
        .await
        .map(Json)
}
