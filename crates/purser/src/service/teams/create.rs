//! `POST /team/new`: validates the whole request before writing anything, then inserts the team,
//! its alias row, the team-default member budget and the roster in one write transaction.
//! Invariant: `metadata.team_member_budget_id` is never taken from the caller.

use axum::http::StatusCode;
use purser_core::roles::TeamRole;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::members::{self, MemberBudget, NewMember, OnDuplicate};
use crate::service::patch::null_as_default;
use crate::service::views;
use crate::service::write::Write;
use crate::store;
use crate::store::budgets::BudgetRow;
use crate::store::teams::TeamRow;

use super::{
    MEMBER_BUDGET_ID_KEY, RESERVED_TEAM_ID, budget_limits, duration, empty_map, fold_metadata,
    money_opt, non_negative, py_float, validate_permissions,
};

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
) -> Result<Value, Error> {
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
    crate::service::limits::check_body(raw)?;
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
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            format!(
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
            return Err(Error::validation(
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
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            format!(
                "team_id '{RESERVED_TEAM_ID}' is reserved for the LiteLLM UI. Please use a different team id."
            ),
        ));
    }
    let duplicate = || {
        Error::http(
            StatusCode::BAD_REQUEST,
            format!("Team id = {team_id} already exists. Please use a different team id."),
        )
    };

    let mut metadata = req.metadata.clone().unwrap_or_default();
    metadata.remove(MEMBER_BUDGET_ID_KEY);
    fold_metadata(&mut metadata, raw);

    let mut h = Write::begin(state).await?;
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
        soft_budget_cooldown: false,
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
    members::record_added(&mut h, &team_id, &added);
    h.commit().await?;
    Ok(views::team_json(&team, &roster, model_table.as_ref()))
}
