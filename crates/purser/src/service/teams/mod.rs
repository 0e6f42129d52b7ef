//! Team use cases (`/team/*` except the member routes): create, update, merge-patch, info,
//! listings, block, delete, model lists and member permissions. Invariants: every write runs in
//! one write transaction with its audit row and evicts the cached team (and what else it
//! touched) after commit and before answering; listings and `/team/info` run a constant number
//! of statements whatever the number of teams, members or keys; `metadata.team_member_budget_id`
//! is server-owned (never taken from a caller); re-sending an unchanged `budget_duration` never
//! moves `budget_reset_at` (reference §10 #24).
//!
//! This module holds what several team use cases share (constants, error shapes, the metadata
//! fold, validation helpers); each use case lives in its own file and is re-exported here.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::budget::BudgetDuration;
use purser_core::roles::TeamRole;
use purser_core::validate;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::patch::Patch;
use crate::service::views;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::TeamRow;

mod create;
mod delete;
mod info;
mod list;
mod settings;
mod update;

pub use create::{MemberIn, NewTeamRequest, new_team};
pub use delete::delete_teams;
pub use info::{TeamInfo, team_info};
pub use list::{
    FilterUiQuery, TeamListV2Query, list_available_teams, list_team, list_team_v2, ui_view_teams,
};
pub use settings::{permissions_list, permissions_update, set_blocked, team_models};
pub use update::{UpdateTeamRequest, UpdatedTeam, update_team};

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

fn team_not_found(team_id: &str) -> Error {
    Error::http(
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

// Field rules are `purser_core::validate`; these turn their failures into the team routes' refusals.

fn money(field: &str, v: f64) -> Result<i64, Error> {
    validate::usd(v).map_err(|_| {
        Error::http(
            StatusCode::BAD_REQUEST,
            format!(
                "{field} must be a non-negative finite number. Received: {}",
                py_float(v)
            ),
        )
    })
}

fn money_opt(field: &str, v: Option<f64>) -> Result<Option<i64>, Error> {
    v.map(|x| money(field, x)).transpose()
}

fn money_patch(field: &str, v: &Patch<f64>) -> Result<Patch<i64>, Error> {
    Ok(match v {
        Patch::Absent => Patch::Absent,
        Patch::Null => Patch::Null,
        Patch::Value(x) => Patch::Value(money(field, *x)?),
    })
}

fn non_negative(field: &str, v: Option<i64>) -> Result<(), Error> {
    match v.map(validate::count_limit) {
        Some(Err(_)) => Err(Error::validation(
            vec![json!("body"), json!(field)],
            "greater_than_equal",
            "Input should be greater than or equal to 0",
        )),
        _ => Ok(()),
    }
}

fn duration(v: &str) -> Result<BudgetDuration, Error> {
    validate::budget_duration(v).map_err(|e| Error::http(StatusCode::BAD_REQUEST, e.to_string()))
}

fn validate_permissions(perms: &[String]) -> Result<(), Error> {
    for p in perms {
        if !KEY_MANAGEMENT_ROUTES.contains(&p.as_str()) {
            return Err(Error::http(
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

/// Validates `budget_limits` windows (of teams and keys) and initialises a missing `reset_at`.
pub(crate) fn budget_limits(list: &[Value], now: DateTime<Utc>) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let bad = |what: &str| {
            Error::http(
                StatusCode::BAD_REQUEST,
                format!("budget_limits[{i}]: {what}"),
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

fn is_roster_admin(roster: &[MembershipRow], caller: &Caller) -> bool {
    caller.user_id.as_deref().is_some_and(|u| {
        roster
            .iter()
            .any(|m| m.user_id == u && m.role == TeamRole::Admin.as_str())
    })
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
