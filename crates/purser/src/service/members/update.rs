//! `/team/member_update`: role and per-member budget changes under the team lock. Invariant: a
//! budget row shared with the team default or other members is cloned before it changes
//! (clone-on-write), never edited in place.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use purser_core::validate;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::patch::Patch;
use crate::service::views;
use crate::service::write::Write;
use crate::store;
use crate::store::budgets::BudgetRow;

use super::{
    MEMBER_DELETE, TeamAccess, lock_team, not_team_admin, py_opt, roster_audit, team_access,
    team_default_budget_id,
};

/// Merge-patch of a member (`/team/member_update`): absent = untouched, null = clear.
#[derive(Debug, Clone, Default)]
pub struct MemberPatch {
    pub role: Option<TeamRole>,
    pub max_budget: Patch<Nanos>,
    pub tpm_limit: Patch<i64>,
    pub rpm_limit: Patch<i64>,
    pub budget_duration: Patch<String>,
    pub allowed_models: Patch<Vec<String>>,
    /// Per-model caps of the member in this team (`service::model_budget`); `{}` or `null`
    /// removes them.
    pub model_max_budget: Patch<serde_json::Map<String, Value>>,
}

impl MemberPatch {
    fn touches_budget(&self) -> bool {
        self.max_budget.is_present()
            || self.tpm_limit.is_present()
            || self.rpm_limit.is_present()
            || self.budget_duration.is_present()
            || self.allowed_models.is_present()
            || self.model_max_budget.is_present()
    }

    /// Applies the patch to a budget row. A changed `budget_duration` recomputes
    /// `budget_reset_at` from now; an unchanged one leaves the running window alone.
    fn apply(&self, row: &mut BudgetRow, now: DateTime<Utc>) -> Result<(), Error> {
        if let Some(v) = self.max_budget.as_update() {
            row.max_budget = v.map(|n| n.0);
        }
        if let Some(v) = self.tpm_limit.as_update() {
            row.tpm_limit = v.copied();
        }
        if let Some(v) = self.rpm_limit.as_update() {
            row.rpm_limit = v.copied();
        }
        if let Some(v) = self.allowed_models.as_update() {
            row.allowed_models = Json(v.cloned().unwrap_or_default());
        }
        if let Some(v) = self.model_max_budget.as_update() {
            row.model_max_budget = v
                .filter(|m| !m.is_empty())
                .map(|m| Json(Value::Object(m.clone())));
        }
        if let Some(v) = self.budget_duration.as_update()
            && v != row.budget_duration.as_ref()
        {
            row.budget_reset_at = match v {
                Some(d) => Some(
                    validate::budget_duration(d)
                        .map_err(|e| Error::http(StatusCode::BAD_REQUEST, e.to_string()))?
                        .next_reset(now),
                ),
                None => None,
            };
            row.budget_duration = v.cloned();
        }
        Ok(())
    }
}

/// `/team/member_update`. Returns the resolved user id. Private member budgets are patched in
/// place (and dropped, falling back to the team default, when no limit is left); a shared row
/// (team default or used by others) is cloned before the change (clone-on-write).
pub async fn member_update(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    user_id: Option<&str>,
    user_email: Option<&str>,
    patch: &MemberPatch,
) -> Result<String, Error> {
    let now = store::now();
    let mut h = Write::begin(state).await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        Error::http(
            StatusCode::BAD_REQUEST,
            format!("Team id={team_id} does not exist in db"),
        )
    })?;
    if team_access(&mut h, caller, team_id).await? == TeamAccess::None {
        // The reference names member_delete's route here too.
        return Err(not_team_admin(MEMBER_DELETE, team_id));
    }
    let roster = store::members::list_by_team(&mut h, team_id).await?;
    let uid = match user_id {
        Some(u) => u.to_string(),
        None => roster
            .iter()
            .find(|m| {
                m.user_email
                    .as_deref()
                    .zip(user_email)
                    .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
            })
            .map(|m| m.user_id.clone())
            .ok_or_else(|| {
                Error::http(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "User id doesn't exist in team table. Data=team_id='{team_id}' user_id=None user_email={}",
                        py_opt(&user_email.map(str::to_string))
                    ),
                )
            })?,
    };
    let Some(before) = roster.iter().find(|m| m.user_id == uid).cloned() else {
        return Err(Error::http(
            StatusCode::NOT_FOUND,
            format!("User {uid} is not a member of team {team_id}"),
        ));
    };
    let mut membership = before.clone();
    if let Some(role) = patch.role {
        membership.role = role.as_str().to_string();
    }
    let default_id = team_default_budget_id(&team);
    let by = caller.changed_by();
    let mut drop_budget: Option<String> = None;
    if patch.touches_budget() {
        let current = match &membership.budget_id {
            Some(id) => store::budgets::get(&mut h, id).await?,
            None => None,
        };
        match current {
            None => {
                let mut row = BudgetRow::new(uuid::Uuid::new_v4().to_string(), &by, now);
                patch.apply(&mut row, now)?;
                if row.has_limits() {
                    store::budgets::insert(&mut h, &row).await?;
                    membership.budget_id = Some(row.budget_id);
                }
            }
            Some(cur) => {
                let is_default = default_id.as_deref() == Some(cur.budget_id.as_str());
                let shared =
                    is_default || store::budgets::ref_count(&mut h, &cur.budget_id).await? > 1;
                let mut row = cur.clone();
                if is_default {
                    // The team default's per-model caps are not inherited by a member's own row.
                    row.model_max_budget = None;
                }
                patch.apply(&mut row, now)?;
                row.updated_at = now;
                row.updated_by = by.clone();
                if !shared {
                    if row.has_limits() {
                        store::budgets::update(&mut h, &row).await?;
                    } else {
                        membership.budget_id = default_id.clone();
                        drop_budget = Some(cur.budget_id.clone());
                    }
                } else if !row.same_limits(&cur) || (is_default && cur.model_max_budget.is_some()) {
                    if row.has_limits() {
                        row.budget_id = uuid::Uuid::new_v4().to_string();
                        row.created_at = now;
                        row.created_by = by.clone();
                        store::budgets::insert(&mut h, &row).await?;
                        membership.budget_id = Some(row.budget_id);
                    } else if !is_default {
                        membership.budget_id = default_id.clone();
                    }
                }
            }
        }
    }
    store::members::update(&mut h, &membership).await?;
    if let Some(b) = drop_budget {
        store::budgets::delete(&mut h, &b).await?;
    }
    let budget_after = match &membership.budget_id {
        Some(id) => store::budgets::get(&mut h, id).await?,
        None => None,
    };
    audit::record(
        &mut h,
        caller,
        action::UPDATED,
        table::MEMBERSHIP,
        &format!("{team_id}:{uid}"),
        Some(json!({"role": before.role, "budget_id": before.budget_id})),
        Some(json!({
            "role": membership.role,
            "membership": views::membership_json(&membership, budget_after.as_ref()),
        })),
    )
    .await?;
    if before.role != membership.role {
        let after = store::members::list_by_team(&mut h, team_id).await?;
        audit::record(
            &mut h,
            caller,
            action::UPDATED,
            table::TEAM,
            team_id,
            Some(roster_audit(&team, &roster)),
            Some(roster_audit(&team, &after)),
        )
        .await?;
    }
    h.member(team_id, &uid);
    h.team(team_id);
    h.user(&uid);
    h.commit().await?;
    Ok(uid)
}
