//! Team use cases (`/team/*` except the member routes): create, update, merge-patch, info,
//! listings, block, delete, model lists and member permissions. Invariants: every write runs in
//! one write transaction with its audit row and evicts the cached team (and what else it
//! touched) after commit and before answering; listings and `/team/info` run a constant number
//! of statements whatever the number of teams, members or keys; `metadata.team_member_budget_id`
//! is server-owned (never taken from a caller); re-sending an unchanged `budget_duration` never
//! moves `budget_reset_at` (reference §10 #24).

use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::budget::BudgetDuration;
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::api::error::ApiError;
use crate::api::extract::{Patch, null_as_default};
use crate::app::AppState;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::members::{self, MemberBudget, NewMember, OnDuplicate};
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::store::budgets::BudgetRow;
use crate::store::keys::KeyRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::{OrgFilter, Scope, SortBy, TeamFilter, TeamRow};
use crate::store::{self, Handle};

/// Reserved for the LiteLLM admin UI (reference §4.16).
pub const RESERVED_TEAM_ID: &str = "litellm-dashboard";
/// Explicit "every model" entry (reference §4.16).
pub const ALL_PROXY_MODELS: &str = "all-proxy-models";
/// Server-owned metadata key pointing at the team-default member budget.
pub const MEMBER_BUDGET_ID_KEY: &str = "team_member_budget_id";
/// `organization_id` filter value meaning "teams without an organization".
pub const DEFAULT_ORGANIZATION: &str = "default_organization";

/// Top-level request fields stored inside `metadata` (reference §4.11; no premium gate here).
pub const METADATA_FIELDS: &[&str] = &[
    "model_rpm_limit",
    "model_tpm_limit",
    "model_itpm_limit",
    "model_otpm_limit",
    "default_estimated_output_tokens",
    "default_estimated_output_tokens_per_model",
    "mcp_rpm_limit",
    "tag_rpm_limit",
    "rpm_limit_type",
    "tpm_limit_type",
    "enforced_params",
    "temp_budget_increase",
    "temp_budget_expiry",
    "allowed_vector_store_indexes",
    "enforced_batch_output_expires_after",
    "enforced_file_expires_after",
    "throttle_on_budget_exceeded",
    "enable_prompt_caching",
    "end_user_budget_id",
    "require_trace_id",
    "disable_global_guardrails",
    "guardrails",
    "policies",
    "tags",
    "team_member_key_duration",
    "prompts",
    "logging",
    "secret_manager_settings",
    "allowed_passthrough_routes",
    "denied_passthrough_routes",
];

/// Permissions every team member has on the team's keys (reference §2.5).
pub const BASELINE_MEMBER_PERMISSIONS: &[&str] = &["/key/info", "/key/health"];

/// Valid `team_member_permissions` entries: the key-management routes (reference §2.5).
pub const KEY_MANAGEMENT_ROUTES: &[&str] = &[
    "/key/generate",
    "/key/update",
    "/key/delete",
    "/key/info",
    "/key/health",
    "/key/regenerate",
    "/key/service-account/generate",
    "/key/{key_id}/regenerate",
    "/key/list",
    "/key/block",
    "/key/unblock",
    "/key/bulk_update",
    "/team/key/bulk_update",
    "/team/daily/activity",
    "/team/daily/activity/aggregated",
    "/team/daily/activity/aggregated/keys",
    "/team/daily/activity/aggregated/search",
    "/team/daily/activity/aggregated/model_top_keys",
    "/team/daily/activity/export",
    "/spend/logs",
    "/spend/logs/v2",
    "/key/{key_id}/reset_spend",
    "/key/aliases",
    "/key/access_group_assignment",
    "/auto_router/manage",
];

/// Fields a team admin may be allowed to edit (`general_settings.team_admin_editable_team_fields`).
const PERMISSION_TOKENS: &[&str] = &[
    "raise_max_budget",
    "projects",
    "member_key_budgets",
    "create_member_keys",
];

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// Error of a wrapped handler (`/team/new`, `/team/update`, PATCH): the reference converts its
/// `HTTPException(detail={"error": …})` with type `internal_server_error` whatever the status
/// (recorded: duplicate team id → 400 `internal_server_error`), and `auth_error` for 401/403.
pub fn wrapped(status: StatusCode, msg: &str) -> ApiError {
    let mut e = ApiError::wrapped(status, msg);
    if let ApiError::Proxy { kind, .. } = &mut e
        && status != StatusCode::UNAUTHORIZED
        && status != StatusCode::FORBIDDEN
    {
        *kind = "internal_server_error".into();
    }
    e
}

fn no_access() -> ApiError {
    ApiError::proxy(
        StatusCode::FORBIDDEN,
        "auth_error",
        "You do not have access to this team",
    )
}

fn team_not_found_detail(team_id: &str) -> ApiError {
    ApiError::detail_error(
        StatusCode::NOT_FOUND,
        format!("Team not found, passed team_id={team_id}"),
    )
}

/// Python's `str(float)` for messages (`10` → `10.0`).
fn py_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

fn money(field: &str, v: f64) -> Result<i64, ApiError> {
    Nanos::from_usd(v).map(|n| n.0).map_err(|_| {
        wrapped(
            StatusCode::BAD_REQUEST,
            &format!(
                "{field} must be a non-negative finite number. Received: {}",
                py_float(v)
            ),
        )
    })
}

fn money_opt(field: &str, v: Option<f64>) -> Result<Option<i64>, ApiError> {
    v.map(|x| money(field, x)).transpose()
}

fn money_patch(field: &str, v: &Patch<f64>) -> Result<Patch<i64>, ApiError> {
    Ok(match v {
        Patch::Absent => Patch::Absent,
        Patch::Null => Patch::Null,
        Patch::Value(x) => Patch::Value(money(field, *x)?),
    })
}

fn non_negative(field: &str, v: Option<i64>) -> Result<(), ApiError> {
    match v {
        Some(n) if n < 0 => Err(ApiError::validation(
            vec![json!("body"), json!(field)],
            "greater_than_equal",
            "Input should be greater than or equal to 0",
        )),
        _ => Ok(()),
    }
}

fn duration(v: &str) -> Result<BudgetDuration, ApiError> {
    BudgetDuration::parse(v).map_err(|e| wrapped(StatusCode::BAD_REQUEST, &e.to_string()))
}

fn validate_permissions(perms: &[String]) -> Result<(), ApiError> {
    for p in perms {
        if !KEY_MANAGEMENT_ROUTES.contains(&p.as_str()) {
            return Err(ApiError::detail_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid team member permission: {p}. Valid permissions: {}",
                    KEY_MANAGEMENT_ROUTES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Validates `budget_limits` windows and initialises a missing `reset_at`.
fn budget_limits(list: &[Value], now: DateTime<Utc>) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let bad = |what: &str| {
            wrapped(
                StatusCode::BAD_REQUEST,
                &format!("budget_limits[{i}]: {what}"),
            )
        };
        let Some(obj) = entry.as_object() else {
            return Err(bad("must be an object with budget_duration and max_budget"));
        };
        let Some(d) = obj.get("budget_duration").and_then(Value::as_str) else {
            return Err(bad("budget_duration is required"));
        };
        let parsed = duration(d)?;
        let Some(mb) = obj.get("max_budget").and_then(Value::as_f64) else {
            return Err(bad("max_budget is required"));
        };
        money("max_budget", mb)?;
        let mut obj = obj.clone();
        if obj.get("reset_at").is_none_or(Value::is_null) {
            obj.insert("reset_at".into(), views::ts(parsed.next_reset(now)));
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

/// Copies the top-level metadata fields present (non-null) in the raw body into `metadata`.
fn fold_metadata(metadata: &mut Map<String, Value>, raw: &Map<String, Value>) {
    for f in METADATA_FIELDS {
        if let Some(v) = raw.get(*f)
            && !v.is_null()
        {
            metadata.insert((*f).to_string(), v.clone());
        }
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn default_budget_id(t: &TeamRow) -> Option<String> {
    t.metadata
        .0
        .get(MEMBER_BUDGET_ID_KEY)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The team row as write routes return it (`/team/update` data, block, models, permissions):
/// the reference's update responses also carry these two relations (always null here).
pub fn written_team_json(
    t: &TeamRow,
    roster: &[MembershipRow],
    model_table: Option<&ModelTableRow>,
) -> Value {
    let mut v = views::team_json(t, roster, model_table);
    v["litellm_organization_table"] = Value::Null;
    v["projects"] = Value::Null;
    v
}

fn empty_map() -> Json<Value> {
    Json(Value::Object(Map::new()))
}

// ------------------------------------------------------------------------------------------
// POST /team/new
// ------------------------------------------------------------------------------------------

/// A member named in `members_with_roles`.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberIn {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub user_email: Option<String>,
    pub role: TeamRole,
}

/// `NewTeamRequest` (reference §4.3); unknown fields are ignored like pydantic does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewTeamRequest {
    pub team_alias: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub members_with_roles: Vec<MemberIn>,
    pub team_member_permissions: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpd_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub budget_limits: Option<Vec<Value>>,
    pub models: Option<Vec<String>>,
    pub blocked: Option<bool>,
    pub router_settings: Option<Map<String, Value>>,
    pub access_group_ids: Option<Vec<String>>,
    pub default_team_member_models: Option<Vec<String>>,
    pub policies: Option<Vec<String>>,
    pub model_aliases: Option<Map<String, Value>>,
    pub model_max_budget: Option<Map<String, Value>>,
    pub team_member_budget: Option<f64>,
    pub team_member_rpm_limit: Option<i64>,
    pub team_member_tpm_limit: Option<i64>,
    pub team_member_budget_duration: Option<String>,
}

/// Creates a team with its alias row, default member budget and roster in one transaction.
pub async fn new_team(
    state: &AppState,
    caller: &Caller,
    raw: &Map<String, Value>,
    req: NewTeamRequest,
) -> Result<Value, ApiError> {
    let now = store::now();
    let by = caller.changed_by();
    // Validation first: nothing is written for a bad request.
    let max_budget = money_opt("max_budget", req.max_budget)?;
    let soft_budget = money_opt("soft_budget", req.soft_budget)?;
    let member_budget = money_opt("team_member_budget", req.team_member_budget)?;
    for (f, v) in [
        ("tpm_limit", req.tpm_limit),
        ("rpm_limit", req.rpm_limit),
        ("tpd_limit", req.tpd_limit),
        ("max_parallel_requests", req.max_parallel_requests),
        ("team_member_rpm_limit", req.team_member_rpm_limit),
        ("team_member_tpm_limit", req.team_member_tpm_limit),
    ] {
        non_negative(f, v)?;
    }
    let budget_reset_at = match &req.budget_duration {
        Some(d) => Some(duration(d)?.next_reset(now)),
        None => None,
    };
    if let Some(d) = &req.team_member_budget_duration {
        duration(d)?;
    }
    if let (Some(s), Some(m)) = (req.soft_budget, req.max_budget)
        && soft_budget >= max_budget
    {
        return Err(wrapped(
            StatusCode::BAD_REQUEST,
            &format!(
                "soft_budget ({}) must be strictly lower than max_budget ({})",
                py_float(s),
                py_float(m)
            ),
        ));
    }
    if let Some(p) = &req.team_member_permissions {
        validate_permissions(p)?;
    }
    let limits = req
        .budget_limits
        .as_deref()
        .map(|l| budget_limits(l, now))
        .transpose()?;
    for (i, m) in req.members_with_roles.iter().enumerate() {
        if m.user_id.is_none() && m.user_email.is_none() {
            return Err(ApiError::validation(
                vec![json!("body"), json!("members_with_roles"), json!(i)],
                "value_error",
                "Value error, Either user id or user email must be provided",
            ));
        }
    }
    let team_id = match req.team_id.as_deref() {
        Some(id) if !id.trim().is_empty() => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    };
    if team_id == RESERVED_TEAM_ID {
        return Err(wrapped(
            StatusCode::BAD_REQUEST,
            &format!(
                "team_id '{RESERVED_TEAM_ID}' is reserved for the LiteLLM UI. Please use a different team id."
            ),
        ));
    }
    let duplicate = || {
        wrapped(
            StatusCode::BAD_REQUEST,
            &format!("Team id = {team_id} already exists. Please use a different team id."),
        )
    };

    let mut metadata = req.metadata.clone().unwrap_or_default();
    metadata.remove(MEMBER_BUDGET_ID_KEY);
    fold_metadata(&mut metadata, raw);

    let mut h = state.db.begin_write().await?;
    if store::teams::get(&mut h, &team_id).await?.is_some() {
        return Err(duplicate());
    }
    let model_table = match &req.model_aliases {
        Some(aliases) => {
            let id =
                store::models::insert(&mut h, &Value::Object(aliases.clone()), &by, now).await?;
            store::models::get(&mut h, id).await?
        }
        None => None,
    };
    let wants_member_budget = req.team_member_budget.is_some()
        || req.team_member_rpm_limit.is_some()
        || req.team_member_tpm_limit.is_some()
        || req.team_member_budget_duration.is_some();
    if wants_member_budget {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let id = match &req.team_alias {
            Some(a) if !a.is_empty() => format!("team-{}-budget-{hex}", a.replace(' ', "-")),
            _ => format!("team-budget-{hex}"),
        };
        let mut b = BudgetRow::new(id.clone(), &by, now);
        b.max_budget = member_budget;
        b.rpm_limit = req.team_member_rpm_limit;
        b.tpm_limit = req.team_member_tpm_limit;
        b.budget_duration = req
            .team_member_budget_duration
            .clone()
            .or_else(|| req.budget_duration.clone());
        if let Some(d) = &b.budget_duration {
            b.budget_reset_at = Some(duration(d)?.next_reset(now));
        }
        store::budgets::insert(&mut h, &b).await?;
        metadata.insert(MEMBER_BUDGET_ID_KEY.into(), Value::String(id));
    }
    let team = TeamRow {
        team_id: team_id.clone(),
        team_alias: req.team_alias.clone(),
        organization_id: req.organization_id.clone().filter(|o| !o.is_empty()),
        metadata: Json(Value::Object(metadata)),
        max_budget,
        soft_budget,
        spend: 0,
        models: Json(req.models.clone().unwrap_or_default()),
        max_parallel_requests: req.max_parallel_requests,
        tpm_limit: req.tpm_limit,
        rpm_limit: req.rpm_limit,
        tpd_limit: req.tpd_limit,
        budget_duration: req.budget_duration.clone(),
        budget_reset_at,
        blocked: req.blocked.unwrap_or(false),
        model_spend: empty_map(),
        model_max_budget: Json(Value::Object(
            req.model_max_budget.clone().unwrap_or_default(),
        )),
        router_settings: Json(Value::Object(
            req.router_settings.clone().unwrap_or_default(),
        )),
        team_member_permissions: Json(req.team_member_permissions.clone().unwrap_or_default()),
        access_group_ids: Json(req.access_group_ids.clone().unwrap_or_default()),
        policies: Json(req.policies.clone().unwrap_or_default()),
        default_team_member_models: Json(
            req.default_team_member_models.clone().unwrap_or_default(),
        ),
        budget_limits: limits.map(Json),
        model_id: model_table.as_ref().map(|m| m.id),
        created_at: now,
        updated_at: now,
    };
    store::teams::insert(&mut h, &team).await.map_err(|e| {
        if store::is_unique_violation(&e) {
            duplicate()
        } else {
            e.into()
        }
    })?;
    audit::record(
        &mut h,
        caller,
        action::CREATED,
        table::TEAM,
        &team_id,
        None,
        Some(views::team_json(&team, &[], model_table.as_ref())),
    )
    .await?;

    let mut new_members: Vec<NewMember> = req
        .members_with_roles
        .iter()
        .map(|m| NewMember {
            user_id: m.user_id.clone(),
            user_email: m.user_email.clone(),
            role: m.role,
        })
        .collect();
    let disable_auto_add = caller.is_proxy_admin()
        && state
            .config
            .general_settings
            .disable_auto_add_proxy_admin_to_teams
            .unwrap_or(false);
    if let Some(uid) = &caller.user_id
        && !disable_auto_add
        && !new_members
            .iter()
            .any(|m| m.user_id.as_deref() == Some(uid.as_str()))
    {
        new_members.push(NewMember {
            user_id: Some(uid.clone()),
            user_email: None,
            role: TeamRole::Admin,
        });
    }
    // The new team is invisible to other writers, so taking the address locks after it cannot
    // deadlock.
    members::lock_member_emails(&mut h, &new_members).await?;
    let added = members::add_members_tx(
        &mut h,
        state,
        caller,
        &team,
        &new_members,
        &MemberBudget::default(),
        OnDuplicate::Skip,
        true,
    )
    .await?;
    let roster = store::members::list_by_team(&mut h, &team_id).await?;
    h.commit().await?;
    members::evict_added(state, &team_id, &added).await;
    Ok(views::team_json(&team, &roster, model_table.as_ref()))
}

// ------------------------------------------------------------------------------------------
// POST /team/update and PATCH /team/{team_id}
// ------------------------------------------------------------------------------------------

/// `UpdateTeamRequest` / `PatchTeamRequest` (reference §4.4): absent = unchanged, `null` = clear.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpdateTeamRequest {
    pub team_id: Patch<String>,
    pub team_alias: Patch<String>,
    pub organization_id: Patch<String>,
    pub metadata: Patch<Map<String, Value>>,
    pub tpm_limit: Patch<i64>,
    pub rpm_limit: Patch<i64>,
    pub tpd_limit: Patch<i64>,
    pub max_parallel_requests: Patch<i64>,
    pub max_budget: Patch<f64>,
    pub soft_budget: Patch<f64>,
    pub models: Patch<Vec<String>>,
    pub blocked: Patch<bool>,
    pub budget_duration: Patch<String>,
    pub budget_limits: Patch<Vec<Value>>,
    pub model_aliases: Patch<Map<String, Value>>,
    pub router_settings: Patch<Map<String, Value>>,
    pub access_group_ids: Patch<Vec<String>>,
    pub default_team_member_models: Patch<Vec<String>>,
    pub policies: Patch<Vec<String>>,
    pub team_member_permissions: Patch<Vec<String>>,
    pub model_max_budget: Patch<Map<String, Value>>,
    pub team_member_budget: Patch<f64>,
    pub team_member_budget_duration: Patch<String>,
    pub team_member_rpm_limit: Patch<i64>,
    pub team_member_tpm_limit: Patch<i64>,
}

/// How much of a team the caller may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EditAccess {
    Unrestricted,
    TeamAdmin,
}

/// A budget duration change: unchanged keeps the reset instant (§10 #24), a new value
/// recomputes it, `null` clears both.
fn apply_duration(
    patch: &Patch<String>,
    duration_col: &mut Option<String>,
    reset_col: &mut Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<bool, ApiError> {
    match patch {
        Patch::Absent => Ok(false),
        Patch::Null => {
            let changed = duration_col.is_some() || reset_col.is_some();
            *duration_col = None;
            *reset_col = None;
            Ok(changed)
        }
        Patch::Value(d) => {
            let parsed = duration(d)?;
            if duration_col.as_deref() == Some(d.as_str()) {
                if reset_col.is_none() {
                    *reset_col = Some(parsed.next_reset(now));
                }
                Ok(false)
            } else {
                *duration_col = Some(d.clone());
                *reset_col = Some(parsed.next_reset(now));
                Ok(true)
            }
        }
    }
}

/// The updated team with what a response needs.
pub struct UpdatedTeam {
    pub team: TeamRow,
    pub roster: Vec<MembershipRow>,
    pub model_table: Option<ModelTableRow>,
}

/// `/team/update` (`merge_metadata = false`: metadata replaces) and PATCH (`true`: RFC 7386).
pub async fn update_team(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    raw: &Map<String, Value>,
    req: UpdateTeamRequest,
    merge_metadata: bool,
) -> Result<UpdatedTeam, ApiError> {
    let now = store::now();
    let by = caller.changed_by();
    let max_budget = money_patch("max_budget", &req.max_budget)?;
    let soft_budget = money_patch("soft_budget", &req.soft_budget)?;
    let member_budget = money_patch("team_member_budget", &req.team_member_budget)?;
    for (f, v) in [
        ("tpm_limit", &req.tpm_limit),
        ("rpm_limit", &req.rpm_limit),
        ("tpd_limit", &req.tpd_limit),
        ("max_parallel_requests", &req.max_parallel_requests),
        ("team_member_rpm_limit", &req.team_member_rpm_limit),
        ("team_member_tpm_limit", &req.team_member_tpm_limit),
    ] {
        non_negative(f, v.value().copied())?;
    }
    for d in [&req.budget_duration, &req.team_member_budget_duration] {
        if let Patch::Value(d) = d {
            duration(d)?;
        }
    }
    if let Patch::Value(p) = &req.team_member_permissions {
        validate_permissions(p)?;
    }
    let limits = match &req.budget_limits {
        Patch::Value(l) => Patch::Value(budget_limits(l, now)?),
        Patch::Null => Patch::Null,
        Patch::Absent => Patch::Absent,
    };

    let mut h = state.db.begin_write().await?;
    let old = if store::teams::lock(&mut h, team_id).await? {
        store::teams::get(&mut h, team_id).await?
    } else {
        None
    };
    let Some(old) = old else {
        return Err(if caller.is_proxy_admin() {
            wrapped(
                StatusCode::NOT_FOUND,
                &format!("Team not found, passed team_id={team_id}"),
            )
        } else {
            no_access()
        });
    };
    let access = if caller.is_proxy_admin() {
        EditAccess::Unrestricted
    } else {
        let admin = match &caller.user_id {
            Some(uid) => store::members::get(&mut h, team_id, uid)
                .await?
                .is_some_and(|m| m.role == TeamRole::Admin.as_str()),
            None => false,
        };
        if !admin {
            return Err(no_access());
        }
        EditAccess::TeamAdmin
    };

    let mut t = old.clone();
    let mut changed: Vec<&'static str> = Vec::new();
    macro_rules! set {
        ($name:literal, $field:expr, $new:expr) => {{
            let v = $new;
            if $field != v {
                changed.push($name);
                $field = v;
            }
        }};
    }
    if let Some(v) = req.team_alias.as_update() {
        set!("team_alias", t.team_alias, v.cloned());
    }
    if let Some(v) = req.organization_id.as_update() {
        // "" unsets the organization.
        set!(
            "organization_id",
            t.organization_id,
            v.filter(|o| !o.is_empty()).cloned()
        );
    }
    for (name, patch, col) in [
        ("tpm_limit", &req.tpm_limit, &mut t.tpm_limit),
        ("rpm_limit", &req.rpm_limit, &mut t.rpm_limit),
        ("tpd_limit", &req.tpd_limit, &mut t.tpd_limit),
        (
            "max_parallel_requests",
            &req.max_parallel_requests,
            &mut t.max_parallel_requests,
        ),
    ] {
        if let Some(v) = patch.as_update() {
            let v = v.copied();
            if *col != v {
                changed.push(name);
                *col = v;
            }
        }
    }
    if let Some(v) = max_budget.as_update() {
        set!("max_budget", t.max_budget, v.copied());
    }
    if let Some(v) = soft_budget.as_update() {
        set!("soft_budget", t.soft_budget, v.copied());
    }
    if let Some(v) = req.models.as_update() {
        set!("models", t.models.0, v.cloned().unwrap_or_default());
    }
    if let Some(v) = req.blocked.as_update() {
        set!("blocked", t.blocked, v.copied().unwrap_or(false));
    }
    if apply_duration(
        &req.budget_duration,
        &mut t.budget_duration,
        &mut t.budget_reset_at,
        now,
    )? {
        changed.push("budget_duration");
    }
    match limits {
        Patch::Absent => {}
        Patch::Null => set!("budget_limits", t.budget_limits, None),
        Patch::Value(v) => set!("budget_limits", t.budget_limits, Some(Json(v))),
    }
    if let Some(v) = req.router_settings.as_update() {
        set!(
            "router_settings",
            t.router_settings.0,
            Value::Object(v.cloned().unwrap_or_default())
        );
    }
    if let Some(v) = req.model_max_budget.as_update() {
        set!(
            "model_max_budget",
            t.model_max_budget.0,
            Value::Object(v.cloned().unwrap_or_default())
        );
    }
    for (name, patch, col) in [
        (
            "access_group_ids",
            &req.access_group_ids,
            &mut t.access_group_ids.0,
        ),
        (
            "default_team_member_models",
            &req.default_team_member_models,
            &mut t.default_team_member_models.0,
        ),
        ("policies", &req.policies, &mut t.policies.0),
        (
            "team_member_permissions",
            &req.team_member_permissions,
            &mut t.team_member_permissions.0,
        ),
    ] {
        if let Some(v) = patch.as_update() {
            let v = v.cloned().unwrap_or_default();
            if *col != v {
                changed.push(name);
                *col = v;
            }
        }
    }

    // Metadata: replaced (or merge-patched) wholesale, folded fields on top, the server-owned
    // default-budget pointer always preserved.
    let budget_pointer = old.metadata.0.get(MEMBER_BUDGET_ID_KEY).cloned();
    let mut metadata = match &req.metadata {
        Patch::Absent => old.metadata.0.clone(),
        Patch::Null => Value::Object(Map::new()),
        Patch::Value(m) => {
            let mut m = m.clone();
            m.remove(MEMBER_BUDGET_ID_KEY);
            if merge_metadata {
                let mut base = old.metadata.0.clone();
                merge_patch(&mut base, &Value::Object(m));
                base
            } else {
                Value::Object(m)
            }
        }
    };
    if !metadata.is_object() {
        metadata = Value::Object(Map::new());
    }
    let md = metadata.as_object_mut().expect("object");
    fold_metadata(md, raw);
    md.remove(MEMBER_BUDGET_ID_KEY);
    if let Some(p) = &budget_pointer {
        md.insert(MEMBER_BUDGET_ID_KEY.into(), p.clone());
    }
    set!("metadata", t.metadata.0, metadata);

    // Team-default member budget.
    let member_fields_sent = req.team_member_budget.is_present()
        || req.team_member_budget_duration.is_present()
        || req.team_member_rpm_limit.is_present()
        || req.team_member_tpm_limit.is_present();
    let old_budget = match default_budget_id(&old) {
        Some(id) => store::budgets::get(&mut h, &id).await?,
        None => None,
    };
    let mut new_budget: Option<BudgetRow> = None;
    if member_fields_sent {
        let any_value = member_budget.value().is_some()
            || req.team_member_budget_duration.value().is_some()
            || req.team_member_rpm_limit.value().is_some()
            || req.team_member_tpm_limit.value().is_some();
        let base = match &old_budget {
            Some(b) => Some(b.clone()),
            None if any_value => {
                let hex = uuid::Uuid::new_v4().simple().to_string();
                let id = match &t.team_alias {
                    Some(a) if !a.is_empty() => {
                        format!("team-{}-budget-{hex}", a.replace(' ', "-"))
                    }
                    _ => format!("team-budget-{hex}"),
                };
                let mut b = BudgetRow::new(id, &by, now);
                // A new default budget follows the team's period unless one is given.
                if req.team_member_budget_duration.is_absent()
                    && let Some(d) = &t.budget_duration
                {
                    b.budget_duration = Some(d.clone());
                    b.budget_reset_at = Some(duration(d)?.next_reset(now));
                }
                Some(b)
            }
            None => None,
        };
        if let Some(mut b) = base {
            if let Some(v) = member_budget.as_update() {
                let v = v.copied();
                if b.max_budget != v {
                    changed.push("team_member_budget");
                    b.max_budget = v;
                }
            }
            if let Some(v) = req.team_member_rpm_limit.as_update() {
                let v = v.copied();
                if b.rpm_limit != v {
                    changed.push("team_member_rpm_limit");
                    b.rpm_limit = v;
                }
            }
            if let Some(v) = req.team_member_tpm_limit.as_update() {
                let v = v.copied();
                if b.tpm_limit != v {
                    changed.push("team_member_tpm_limit");
                    b.tpm_limit = v;
                }
            }
            if apply_duration(
                &req.team_member_budget_duration,
                &mut b.budget_duration,
                &mut b.budget_reset_at,
                now,
            )? {
                changed.push("team_member_budget_duration");
            }
            b.updated_at = now;
            b.updated_by = by.clone();
            new_budget = Some(b);
        }
    }

    // Model aliases live in `model_table`.
    let old_aliases = match old.model_id {
        Some(id) => store::models::get(&mut h, id).await?,
        None => None,
    };
    let new_aliases = req
        .model_aliases
        .as_update()
        .map(|v| Value::Object(v.cloned().unwrap_or_default()));
    if let Some(a) = &new_aliases
        && old_aliases.as_ref().map(|m| &m.aliases.0) != Some(a)
        && !(old_aliases.is_none() && a.as_object().is_some_and(Map::is_empty))
    {
        changed.push("model_aliases");
    }

    if access == EditAccess::TeamAdmin && !changed.is_empty() {
        let (editable, fields) = team_admin_editable(state);
        if fields.is_empty() {
            return Err(ApiError::proxy(
                StatusCode::FORBIDDEN,
                "auth_error",
                "Team admins on this proxy cannot edit team settings. Ask a proxy admin to enable fields under Settings > UI > Team admin editable fields.",
            ));
        }
        for f in &changed {
            if !fields.iter().any(|e| e.as_str() == *f) {
                return Err(ApiError::proxy(
                    StatusCode::FORBIDDEN,
                    "auth_error",
                    format!(
                        "Team admins on this proxy do not have permission to update '{f}'. Ask a proxy admin to add it under Settings > UI > Team admin editable fields."
                    ),
                ));
            }
        }
        if changed.contains(&"max_budget") {
            match (old.max_budget, t.max_budget) {
                (Some(_), None) => {
                    return Err(ApiError::proxy(
                        StatusCode::FORBIDDEN,
                        "auth_error",
                        "Only a proxy admin can remove the team's max_budget.",
                    ));
                }
                (Some(o), Some(n))
                    if n > o && !editable.iter().any(|e| e == "raise_max_budget") =>
                {
                    return Err(ApiError::proxy(
                        StatusCode::FORBIDDEN,
                        "auth_error",
                        "Team admins on this proxy cannot raise the team's max_budget.",
                    ));
                }
                _ => {}
            }
        }
    }

    if (max_budget.is_present() || soft_budget.is_present())
        && let (Some(s), Some(m)) = (t.soft_budget, t.max_budget)
        && s >= m
    {
        let (s, m) = (Nanos(s).to_usd(), Nanos(m).to_usd());
        let msg = if soft_budget.is_present() {
            format!(
                "soft_budget ({}) must be strictly lower than max_budget ({})",
                py_float(s),
                py_float(m)
            )
        } else {
            format!(
                "max_budget ({}) must be strictly greater than soft_budget ({})",
                py_float(m),
                py_float(s)
            )
        };
        return Err(wrapped(StatusCode::BAD_REQUEST, &msg));
    }

    // Writes.
    let model_table = match (&new_aliases, &old_aliases) {
        (Some(a), Some(m)) => {
            store::models::update(&mut h, m.id, a, &by, now).await?;
            store::models::get(&mut h, m.id).await?
        }
        (Some(a), None) => {
            let id = store::models::insert(&mut h, a, &by, now).await?;
            t.model_id = Some(id);
            store::models::get(&mut h, id).await?
        }
        (None, m) => m.clone(),
    };
    let member_budget_changed = new_budget.is_some();
    if let Some(b) = &new_budget {
        if old_budget.is_some() {
            store::budgets::update(&mut h, b).await?;
        } else {
            store::budgets::insert(&mut h, b).await?;
            if let Some(md) = t.metadata.0.as_object_mut() {
                md.insert(
                    MEMBER_BUDGET_ID_KEY.into(),
                    Value::String(b.budget_id.clone()),
                );
            }
            store::teams::link_default_budget(&mut h, team_id, &b.budget_id).await?;
        }
    }
    t.updated_at = now;
    store::teams::update(&mut h, &t).await?;
    let roster = store::members::list_by_team(&mut h, team_id).await?;
    audit::record(
        &mut h,
        caller,
        action::UPDATED,
        table::TEAM,
        team_id,
        Some(views::team_json(&old, &roster, old_aliases.as_ref())),
        Some(views::team_json(&t, &roster, model_table.as_ref())),
    )
    .await?;
    h.commit().await?;
    state.cache.evict_team(team_id).await;
    if member_budget_changed {
        state.cache.evict_team_members(team_id);
    }
    Ok(UpdatedTeam {
        team: t,
        roster,
        model_table,
    })
}

// ------------------------------------------------------------------------------------------
// GET /team/info
// ------------------------------------------------------------------------------------------

fn is_roster_admin(roster: &[MembershipRow], caller: &Caller) -> bool {
    caller.user_id.as_deref().is_some_and(|u| {
        roster
            .iter()
            .any(|m| m.user_id == u && m.role == TeamRole::Admin.as_str())
    })
}

/// The 403 of `/team/info` for callers outside the team (reference §5.11 wording).
fn info_forbidden(caller: &Caller, team_id: &str) -> ApiError {
    let msg = match (&caller.user_id, caller.key_team_id()) {
        (Some(u), _) => format!("User={u} not authorized to access this team={team_id}"),
        (None, Some(k)) => {
            format!("Team key for team={k} not authorized to access this team={team_id}")
        }
        (None, None) => format!(
            "API key not authorized to access this team={team_id}. No user_id or team_id associated with this key."
        ),
    };
    ApiError::proxy(
        StatusCode::FORBIDDEN,
        "auth_error",
        format!("{{'error': '{msg}'}}"),
    )
    .with_param("None")
}

/// `general_settings.team_admin_editable_team_fields` as configured (including permission
/// tokens such as `raise_max_budget`), and the field names among them that team admins may edit.
fn team_admin_editable(state: &AppState) -> (&[String], Vec<&String>) {
    let editable = state
        .config
        .general_settings
        .team_admin_editable_team_fields
        .as_deref()
        .unwrap_or_default();
    let fields = editable
        .iter()
        .filter(|f| !PERMISSION_TOKENS.contains(&f.as_str()))
        .collect();
    (editable, fields)
}

fn caller_edit_access(state: &AppState, caller: &Caller, roster: &[MembershipRow]) -> Value {
    if caller.is_proxy_admin() {
        return json!({"kind": "unrestricted"});
    }
    if !is_roster_admin(roster, caller) {
        return json!({"kind": "none"});
    }
    let (editable, fields) = team_admin_editable(state);
    if fields.is_empty() {
        return json!({"kind": "team_admin_disabled"});
    }
    json!({
        "kind": "team_admin",
        "editable_fields": fields,
        "may_raise_max_budget": editable.iter().any(|e| e == "raise_max_budget"),
        "proxy_controlled_metadata_keys": [MEMBER_BUDGET_ID_KEY],
    })
}

/// `GET /team/info`: five statements at most (team, roster, roster users, budgets, keys, and
/// the alias row when the team has one).
pub async fn team_info(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
) -> Result<TeamInfo, ApiError> {
    let now = store::now();
    let mut h = state.db.conn().await?;
    let Some(team) = store::teams::get(&mut h, team_id).await? else {
        if !caller.can_read_all() && caller.key_team_id() != Some(team_id) {
            return Err(info_forbidden(caller, team_id));
        }
        return Err(ApiError::proxy(
            StatusCode::NOT_FOUND,
            "auth_error",
            format!("{{'message': 'Team not found, passed team id: {team_id}.'}}"),
        )
        .with_param("None"));
    };
    let roster = store::members::list_by_team(&mut h, team_id).await?;
    let allowed = caller.can_read_all()
        || caller.key_team_id() == Some(team_id)
        || caller
            .user_id
            .as_deref()
            .is_some_and(|u| roster.iter().any(|m| m.user_id == u));
    if !allowed {
        return Err(info_forbidden(caller, team_id));
    }
    let users: HashMap<String, store::teams::RosterUser> =
        store::teams::roster_users(&mut h, team_id)
            .await?
            .into_iter()
            .map(|u| (u.user_id.clone(), u))
            .collect();
    let default_id = default_budget_id(&team);
    let ids = [team_id.to_string()];
    let budgets: HashMap<String, BudgetRow> =
        store::teams::budgets_in(&mut h, Scope::Ids(&ids), default_id.as_slice())
            .await?
            .into_iter()
            .map(|b| (b.budget_id.clone(), b))
            .collect();
    let keys = store::teams::keys_in(&mut h, Scope::Ids(&ids), Some(now)).await?;
    let model_table = match team.model_id {
        Some(id) => store::models::get(&mut h, id).await?,
        None => None,
    };

    let mut info = views::team_json(&team, &roster, model_table.as_ref());
    info["members_with_roles"] = Value::Array(
        roster
            .iter()
            .map(|m| {
                let u = users.get(&m.user_id);
                json!({
                    "user_id": m.user_id,
                    "user_email": m.user_email.clone().or_else(|| u.and_then(|u| u.user_email.clone())),
                    "role": m.role,
                    "user_alias": u.and_then(|u| u.user_alias.clone()),
                })
            })
            .collect(),
    );
    let extra = json!({
        "team_member_budget_table": default_id.as_ref().and_then(|id| budgets.get(id)).map(views::budget_json),
        "access_group_models": null,
        "access_group_mcp_server_ids": null,
        "access_group_agent_ids": null,
        "access_group_skill_names": null,
        "unresolved_access_group_ids": null,
        "access_group_details": null,
        "organization_models": null,
        "model_max_budget_usage": {},
        "caller_edit_access": caller_edit_access(state, caller, &roster),
    });
    if let (Some(o), Some(e)) = (info.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let memberships: Vec<Value> = roster
        .iter()
        .map(|m| {
            let budget = m.budget_id.as_ref().and_then(|b| budgets.get(b));
            let mut v = views::membership_json(m, budget);
            v["budget_source"] = json!(match &m.budget_id {
                None => "none",
                Some(b) if Some(b) == default_id.as_ref() => "team_default",
                Some(_) => "custom",
            });
            v
        })
        .collect();
    Ok(TeamInfo {
        team_id: team_id.to_string(),
        team_info: info,
        keys,
        team_memberships: memberships,
    })
}

/// `GET /team/info` response (`TeamInfoResponseObject`). Keys are serialised straight from their
/// rows (a big team has thousands), and never with their hash: members would learn other
/// members' key ids.
#[derive(serde::Serialize)]
pub struct TeamInfo {
    team_id: String,
    team_info: Value,
    #[serde(serialize_with = "keys_without_token")]
    keys: Vec<KeyRow>,
    team_memberships: Vec<Value>,
}

fn keys_without_token<S: serde::Serializer>(keys: &[KeyRow], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| views::KeyView::new(k, false)))
}

// ------------------------------------------------------------------------------------------
// Listings
// ------------------------------------------------------------------------------------------

/// Children of a set of teams, loaded in a constant number of statements.
struct Children {
    roster: HashMap<String, Vec<MembershipRow>>,
    model_tables: HashMap<i64, ModelTableRow>,
}

async fn load_children(
    h: &mut Handle,
    teams: &[TeamRow],
    scope: Scope<'_>,
) -> Result<Children, ApiError> {
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
) -> Result<Option<String>, ApiError> {
    if caller.can_read_all() {
        return Ok(user_id);
    }
    let denied = || {
        ApiError::detail_error(
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
) -> Result<Value, ApiError> {
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

fn query_range(field: &str, v: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if v < 1 {
        return Err(ApiError::validation(
            vec![json!("query"), json!(field)],
            "greater_than_equal",
            "Input should be greater than or equal to 1",
        ));
    }
    if v > max {
        return Err(ApiError::validation(
            vec![json!("query"), json!(field)],
            "less_than_equal",
            format!("Input should be less than or equal to {max}"),
        ));
    }
    Ok(v)
}

/// `GET /v2/team/list`: count, page, rosters, key counts, alias rows — five statements per page.
pub async fn list_team_v2(
    state: &AppState,
    caller: &Caller,
    q: TeamListV2Query,
) -> Result<Value, ApiError> {
    let page = query_range("page", q.page, 1, i64::MAX / 1000)?;
    let page_size = query_range("page_size", q.page_size, 10, 100)?;
    let sort = match q.sort_by.as_deref() {
        None => SortBy::CreatedAt,
        Some(s) => SortBy::parse(s).ok_or_else(|| {
            ApiError::detail_error(
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
            return Err(ApiError::detail_error(
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
        return Err(ApiError::detail_error(
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

/// `GET /team/filter/ui`: substring search, newest first, a plain list.
pub async fn ui_view_teams(state: &AppState, q: FilterUiQuery) -> Result<Value, ApiError> {
    let page = query_range("page", q.page, 1, i64::MAX / 1000)?;
    let page_size = query_range("page_size", q.page_size, 50, 100)?;
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
pub async fn list_available_teams(state: &AppState, caller: &Caller) -> Result<Value, ApiError> {
    let available = state.config.available_teams();
    if available.is_empty() {
        return Ok(json!([]));
    }
    let user_not_found = || ApiError::detail_error(StatusCode::NOT_FOUND, "User not found");
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

// ------------------------------------------------------------------------------------------
// Block / unblock, models, permissions: read-modify-write of one team row
// ------------------------------------------------------------------------------------------

/// Locks and loads a team inside `h`, or the unwrapped 404.
async fn load_locked(h: &mut Handle, team_id: &str) -> Result<TeamRow, ApiError> {
    if !store::teams::lock(h, team_id).await? {
        return Err(team_not_found_detail(team_id));
    }
    store::teams::get(h, team_id)
        .await?
        .ok_or_else(|| team_not_found_detail(team_id))
}

/// Writes `t` (already modified from `old`), audits, commits, evicts; returns the team JSON.
async fn save_team(
    state: &AppState,
    caller: &Caller,
    mut h: Handle,
    old: &TeamRow,
    mut t: TeamRow,
    act: &str,
) -> Result<Value, ApiError> {
    t.updated_at = store::now();
    store::teams::update(&mut h, &t).await?;
    let roster = store::members::list_by_team(&mut h, &t.team_id).await?;
    let model_table = match t.model_id {
        Some(id) => store::models::get(&mut h, id).await?,
        None => None,
    };
    audit::record(
        &mut h,
        caller,
        act,
        table::TEAM,
        &t.team_id,
        Some(views::team_json(old, &roster, model_table.as_ref())),
        Some(views::team_json(&t, &roster, model_table.as_ref())),
    )
    .await?;
    h.commit().await?;
    state.cache.evict_team(&t.team_id).await;
    Ok(written_team_json(&t, &roster, model_table.as_ref()))
}

/// `POST /team/block` / `/team/unblock`. The cache eviction makes the very next request of
/// the team's keys see the new state (reference §10 #8).
pub async fn set_blocked(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    blocked: bool,
) -> Result<Value, ApiError> {
    let mut h = state.db.begin_write().await?;
    let old = load_locked(&mut h, team_id).await?;
    let mut t = old.clone();
    t.blocked = blocked;
    let act = if blocked {
        action::BLOCKED
    } else {
        action::UNBLOCKED
    };
    save_team(state, caller, h, &old, t, act).await
}

/// `POST /team/model/add` (union; an "all models" team keeps full access through
/// `all-proxy-models`) and `/team/model/delete` (removal).
pub async fn team_models(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    models: &[String],
    add: bool,
) -> Result<Value, ApiError> {
    let mut h = state.db.begin_write().await?;
    let old = load_locked(&mut h, team_id).await?;
    let mut t = old.clone();
    if add {
        if t.models.0.is_empty() {
            t.models.0.push(ALL_PROXY_MODELS.to_string());
        }
        for m in models {
            if !t.models.0.contains(m) {
                t.models.0.push(m.clone());
            }
        }
    } else {
        t.models.0.retain(|m| !models.contains(m));
    }
    save_team(state, caller, h, &old, t, action::UPDATED).await
}

/// `GET /team/permissions_list`: proxy admins, viewers and the team's admins.
pub async fn permissions_list(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
) -> Result<Value, ApiError> {
    let mut h = state.db.conn().await?;
    let Some(team) = store::teams::get(&mut h, team_id).await? else {
        return Err(team_not_found_detail(team_id));
    };
    if !caller.can_read_all() {
        let roster = store::members::list_by_team(&mut h, team_id).await?;
        if !is_roster_admin(&roster, caller) {
            return Err(ApiError::detail(
                StatusCode::FORBIDDEN,
                "You do not have access to this team",
            ));
        }
    }
    Ok(json!({
        "team_id": team_id,
        "team_member_permissions": team.team_member_permissions.0,
        "all_available_permissions": KEY_MANAGEMENT_ROUTES,
    }))
}

/// `POST /team/permissions_update`: proxy admins and the team's admins replace the list.
pub async fn permissions_update(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    perms: Vec<String>,
) -> Result<Value, ApiError> {
    validate_permissions(&perms)?;
    let mut h = state.db.begin_write().await?;
    let old = load_locked(&mut h, team_id).await?;
    if !caller.is_proxy_admin() {
        let roster = store::members::list_by_team(&mut h, team_id).await?;
        if !is_roster_admin(&roster, caller) {
            return Err(ApiError::detail(
                StatusCode::FORBIDDEN,
                "You do not have access to this team",
            ));
        }
    }
    let mut t = old.clone();
    t.team_member_permissions = Json(perms);
    save_team(state, caller, h, &old, t, action::UPDATED).await
}

// ------------------------------------------------------------------------------------------
// POST /team/delete
// ------------------------------------------------------------------------------------------

/// Deletes teams with their keys, roster, alias rows and default member budgets, all or
/// nothing: any unknown id is a 404 before anything is removed. Teams are locked in sorted
/// order so concurrent deletes and roster changes cannot deadlock.
pub async fn delete_teams(
    state: &AppState,
    caller: &Caller,
    team_ids: Vec<String>,
) -> Result<Value, ApiError> {
    let mut ids: Vec<String> = Vec::with_capacity(team_ids.len());
    for id in team_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let mut h = state.db.begin_write().await?;
    let mut existing = HashSet::new();
    for id in &sorted {
        if store::teams::lock(&mut h, id).await? {
            existing.insert(id.clone());
        }
    }
    if let Some(missing) = ids.iter().find(|id| !existing.contains(*id)) {
        return Err(team_not_found_detail(missing));
    }
    let mut evict_tokens = Vec::new();
    let mut evict_members: Vec<(String, String)> = Vec::new();
    for id in &sorted {
        let Some(team) = store::teams::get(&mut h, id).await? else {
            return Err(team_not_found_detail(id));
        };
        let roster = store::members::list_by_team(&mut h, id).await?;
        evict_tokens.extend(store::keys::delete_by_team(&mut h, id).await?);
        audit::record(
            &mut h,
            caller,
            action::DELETED,
            table::TEAM,
            id,
            Some(views::team_json(&team, &roster, None)),
            Some(json!({})),
        )
        .await?;
        // Memberships go with the team row (ON DELETE CASCADE).
        store::teams::delete(&mut h, id).await?;
        if let Some(model_id) = team.model_id {
            store::models::delete(&mut h, model_id).await?;
        }
        if let Some(b) = default_budget_id(&team) {
            store::budgets::delete(&mut h, &b).await?;
        }
        evict_members.extend(roster.into_iter().map(|m| (m.team_id, m.user_id)));
    }
    h.commit().await?;
    // Deleted entities forget their spend counters, so a team, key or membership created
    // later under the same id starts from zero.
    for id in &ids {
        state.cache.evict_team(id).await;
        state.cache.evict_team_members(id);
        state.ledger.on_spend_set(&SpendScope::Team(id.clone()), 0);
    }
    state.cache.evict_keys(&evict_tokens).await;
    for t in &evict_tokens {
        state.ledger.on_spend_set(&SpendScope::Key(t.clone()), 0);
    }
    for (t, u) in &evict_members {
        state.cache.evict_member(t, u).await;
        state.cache.evict_user(u).await;
        state
            .ledger
            .on_spend_set(&crate::service::members::member_scope(t, u), 0);
    }
    Ok(json!({ "deleted_teams": ids }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(
            &mut t,
            &json!({"a": null, "b": {"c": 5, "d": null}, "f": "x"}),
        );
        assert_eq!(t, json!({"b": {"c": 5}, "e": [1], "f": "x"}));
        merge_patch(&mut t, &json!({"b": 7}));
        assert_eq!(t["b"], json!(7));
    }

    #[test]
    fn python_floats() {
        assert_eq!(py_float(10.0), "10.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(-1.0), "-1.0");
    }
}
