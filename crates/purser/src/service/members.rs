//! Team roster changes. Invariant: a member is one `team_memberships` row; adding or removing
//! one changes the roster, the user's `teams` and the membership (spend, budget link) together,
//! because they are the same row. Every change runs in one write transaction that first locks the
//! team row (PostgreSQL `FOR UPDATE`; SQLite `BEGIN IMMEDIATE`), so concurrent adds, deletes and
//! team deletion serialise per team and nothing is lost or left dangling.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::budget::BudgetDuration;
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::views;
use crate::store::budgets::BudgetRow;
use crate::store::members::MembershipRow;
use crate::store::teams::TeamRow;
use crate::store::users::UserRow;
use crate::store::{self, Handle};

/// A member as named in a request: by id, by email, or both.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub role: TeamRole,
}

/// Per-member budget requested with the add (`max_budget_in_team`, `budget_duration`, `allowed_models`).
#[derive(Debug, Clone, Default)]
pub struct MemberBudget {
    pub max_budget_in_team: Option<Nanos>,
    pub budget_duration: Option<String>,
    pub allowed_models: Option<Vec<String>>,
}

impl MemberBudget {
    fn is_empty(&self) -> bool {
        self.max_budget_in_team.is_none()
            && self.budget_duration.is_none()
            && self.allowed_models.is_none()
    }
}

/// What to do when members are already on the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// `/team/member_add`: a single duplicate, or a list of only duplicates, is a 400; partial
    /// duplicates are skipped.
    Reject,
    /// `/team/new` and `/user/new`: skip silently.
    Skip,
}

/// One member added by [`add_members_tx`].
#[derive(Debug, Clone)]
pub struct Added {
    pub user: UserRow,
    pub user_created: bool,
    pub membership: MembershipRow,
    pub budget: Option<BudgetRow>,
}

/// Adds members to `team` inside the caller's open write transaction `h` (the team row must
/// already be locked or freshly inserted in it). Creates missing users when `may_create_users`.
#[allow(clippy::too_many_arguments)]
pub async fn add_members_tx(
    h: &mut Handle,
    state: &AppState,
    caller: &Caller,
    team: &TeamRow,
    members: &[NewMember],
    budget: &MemberBudget,
    on_duplicate: OnDuplicate,
    may_create_users: bool,
) -> Result<Vec<Added>, ApiError> {
    let now = store::now();
    let roster = store::members::list_by_team(h, &team.team_id).await?;

    // Resolve identities first so duplicates are detected by user id as well as by email.
    let mut resolved: Vec<(NewMember, Option<UserRow>)> = Vec::with_capacity(members.len());
    for m in members {
        let by_id = match &m.user_id {
            Some(id) => store::users::get(h, id).await?,
            None => None,
        };
        let user = match (&m.user_id, &m.user_email) {
            (Some(id), Some(email)) => {
                if let Some(u) = &by_id
                    && let Some(existing) = &u.user_email
                    && !existing.eq_ignore_ascii_case(email)
                {
                    return Err(ApiError::detail_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "user_id={id} and user_email={email} do not belong to the same user"
                        ),
                    ));
                }
                by_id
            }
            (Some(_), None) => by_id,
            (None, Some(email)) => {
                let found = store::users::find_by_email(h, email).await?;
                if found.len() > 1 {
                    return Err(ApiError::detail_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Multiple users found with email '{email}'. Please use 'user_id' instead."
                        ),
                    ));
                }
                found.into_iter().next()
            }
            (None, None) => {
                return Err(ApiError::detail_error(
                    StatusCode::BAD_REQUEST,
                    "Either user id or user email must be provided",
                ));
            }
        };
        let mut named = m.clone();
        if let Some(u) = &user {
            named.user_id = Some(u.user_id.clone());
            if named.user_email.is_none() {
                named.user_email = u.user_email.clone();
            }
        }
        resolved.push((named, user));
    }

    let on_roster = |m: &NewMember| {
        roster.iter().any(|r| {
            m.user_id.as_deref() == Some(r.user_id.as_str())
                || (m.user_id.is_none()
                    && m.user_email.as_deref().is_some_and(|e| {
                        r.user_email
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(e))
                    }))
        })
    };
    let dup_count = resolved.iter().filter(|(m, _)| on_roster(m)).count();
    if on_duplicate == OnDuplicate::Reject && dup_count > 0 && dup_count == resolved.len() {
        let existing = roster
            .iter()
            .map(|r| {
                format!(
                    "Member(user_id='{}', user_email={}, role='{}')",
                    r.user_id,
                    py_opt(&r.user_email),
                    r.role
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let message = if resolved.len() == 1 {
            let m = &resolved[0].0;
            format!(
                "User already in team. Member: user_id={}, user_email={}. Existing members=[{existing}]",
                m.user_id.as_deref().unwrap_or("None"),
                m.user_email.as_deref().unwrap_or("None")
            )
        } else {
            format!("All users are already in team. Existing members=[{existing}]")
        };
        return Err(ApiError::proxy(
            StatusCode::BAD_REQUEST,
            "team_member_already_in_team",
            message,
        )
        .with_param("member"));
    }

    let defaults = state
        .config
        .litellm_settings
        .default_internal_user_params
        .clone()
        .unwrap_or_default();
    let team_default_budget = team
        .metadata
        .0
        .get("team_member_budget_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut added = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (m, user) in resolved {
        if on_roster(&m) || m.user_id.as_ref().is_some_and(|id| seen.contains(id)) {
            continue;
        }
        let (user, user_created) = match user {
            Some(u) => (u, false),
            None => {
                if m.user_id.is_some() && !may_create_users {
                    return Err(ApiError::detail_error(
                        StatusCode::FORBIDDEN,
                        format!(
                            "Only proxy admins can add a user_id that does not exist yet: {}. Add the member by user_email to invite a new user, or ask a proxy admin.",
                            m.user_id.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                let id = m
                    .user_id
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let mut u = UserRow::new(id, now);
                u.user_email = m.user_email.clone();
                if let Some(models) = &defaults.models {
                    u.models = Json(models.clone());
                }
                if let Some(mb) = defaults
                    .max_budget
                    .or(state.config.litellm_settings.max_internal_user_budget)
                {
                    u.max_budget = Nanos::from_usd(mb).ok().map(|n| n.0);
                }
                let duration = defaults.budget_duration.clone().or_else(|| {
                    state
                        .config
                        .litellm_settings
                        .internal_user_budget_duration
                        .clone()
                });
                if let Some(d) = duration
                    && let Ok(parsed) = BudgetDuration::parse(&d)
                {
                    u.budget_reset_at = Some(parsed.next_reset(now));
                    u.budget_duration = Some(d);
                }
                store::users::insert(h, &u).await?;
                audit::record(
                    h,
                    caller,
                    action::CREATED,
                    table::USER,
                    &u.user_id,
                    None,
                    Some(views::user_json(&u, &[])),
                )
                .await?;
                (u, true)
            }
        };
        seen.push(user.user_id.clone());
        let budget_row = if budget.is_empty() {
            None
        } else {
            Some(new_member_budget(budget, caller, now)?)
        };
        if let Some(b) = &budget_row {
            store::budgets::insert(h, b).await?;
        }
        let membership = MembershipRow {
            team_id: team.team_id.clone(),
            user_id: user.user_id.clone(),
            role: m.role.as_str().to_string(),
            user_email: m.user_email.clone().or_else(|| user.user_email.clone()),
            spend: 0,
            total_spend: 0,
            budget_id: budget_row
                .as_ref()
                .map(|b| b.budget_id.clone())
                .or_else(|| team_default_budget.clone()),
            added_at: now,
        };
        store::members::insert(h, &membership).await.map_err(|e| {
            if store::is_foreign_key_violation(&e) {
                ApiError::detail_error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "Team={} was deleted while this member add was running",
                        team.team_id
                    ),
                )
            } else {
                e.into()
            }
        })?;
        let linked = match (&budget_row, &membership.budget_id) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(id)) => store::budgets::get(h, id).await?,
            (None, None) => None,
        };
        added.push(Added {
            user,
            user_created,
            membership,
            budget: linked,
        });
    }
    if !added.is_empty() {
        let after = store::members::list_by_team(h, &team.team_id).await?;
        audit::record(
            h,
            caller,
            action::UPDATED,
            table::TEAM,
            &team.team_id,
            Some(roster_audit(team, &roster)),
            Some(roster_audit(team, &after)),
        )
        .await?;
    }
    Ok(added)
}

/// Evicts what a roster change touched (call after commit).
pub async fn evict_added(state: &AppState, team_id: &str, added: &[Added]) {
    state.cache.evict_team(team_id).await;
    for a in added {
        state.cache.evict_user(&a.user.user_id).await;
        state.cache.evict_member(team_id, &a.user.user_id).await;
    }
}

/// Audit payload for roster changes: `{team_alias, members_with_roles}`.
pub fn roster_audit(team: &TeamRow, roster: &[MembershipRow]) -> Value {
    json!({ "team_alias": team.team_alias, "members_with_roles": roster.iter().map(views::member_json).collect::<Vec<_>>() })
}

fn new_member_budget(
    b: &MemberBudget,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<BudgetRow, ApiError> {
    let mut row = BudgetRow::new(uuid::Uuid::new_v4().to_string(), &caller.changed_by(), now);
    row.max_budget = b.max_budget_in_team.map(|n| n.0);
    if let Some(d) = &b.budget_duration {
        let parsed = BudgetDuration::parse(d)
            .map_err(|e| ApiError::detail_error(StatusCode::BAD_REQUEST, e.to_string()))?;
        row.budget_duration = Some(d.clone());
        row.budget_reset_at = Some(parsed.next_reset(now));
    }
    if let Some(models) = &b.allowed_models {
        row.allowed_models = Json(models.clone());
    }
    Ok(row)
}

fn py_opt(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{s}'"),
        None => "None".into(),
    }
}
