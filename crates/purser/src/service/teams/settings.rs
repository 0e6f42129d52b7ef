//! Block/unblock, model list and member-permission edits: read-modify-write of one team row
//! under its lock, audited and evicted after commit.

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::views;
use crate::service::write::Write;
use crate::store::teams::TeamRow;
use crate::store::{self, WriteTx};

use super::{
    ALL_PROXY_MODELS, KEY_MANAGEMENT_ROUTES, is_roster_admin, team_not_found, validate_permissions,
    written_team_json,
};

/// Locks and loads a team inside `h`, or the 404.
async fn load_locked(h: &mut WriteTx, team_id: &str) -> Result<TeamRow, Error> {
    if !store::teams::lock(h, team_id).await? {
        return Err(team_not_found(team_id));
    }
    store::teams::get(h, team_id)
        .await?
        .ok_or_else(|| team_not_found(team_id))
}

/// Writes `t` (already modified from `old`), audits, commits, evicts; returns the team JSON.
async fn save_team(
    caller: &Caller,
    mut h: Write<'_>,
    old: &TeamRow,
    mut t: TeamRow,
    act: &str,
) -> Result<Value, Error> {
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
    h.team(&t.team_id);
    h.commit().await?;
    Ok(written_team_json(&t, &roster, model_table.as_ref()))
}

/// `POST /team/block` / `/team/unblock`. The cache eviction makes the very next request of
/// the team's keys see the new state (reference §10 #8).
pub async fn set_blocked(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    blocked: bool,
) -> Result<Value, Error> {
    let mut h = Write::begin(state).await?;
    let old = load_locked(&mut h, team_id).await?;
    let mut t = old.clone();
    t.blocked = blocked;
    let act = if blocked {
        action::BLOCKED
    } else {
        action::UNBLOCKED
    };
    save_team(caller, h, &old, t, act).await
}

/// `POST /team/model/add` (union; an "all models" team keeps full access through
/// `all-proxy-models`) and `/team/model/delete` (removal).
pub async fn team_models(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    models: &[String],
    add: bool,
) -> Result<Value, Error> {
    let mut h = Write::begin(state).await?;
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
    save_team(caller, h, &old, t, action::UPDATED).await
}

/// `GET /team/permissions_list`: proxy admins, viewers and the team's admins.
pub async fn permissions_list(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
) -> Result<Value, Error> {
    let mut h = state.db.conn().await?;
    let Some(team) = store::teams::get(&mut h, team_id).await? else {
        return Err(team_not_found(team_id));
    };
    if !caller.can_read_all() {
        let roster = store::members::list_by_team(&mut h, team_id).await?;
        if !is_roster_admin(&roster, caller) {
            return Err(Error::http_text(
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
) -> Result<Value, Error> {
    validate_permissions(&perms)?;
    let mut h = Write::begin(state).await?;
    let old = load_locked(&mut h, team_id).await?;
    if !caller.is_proxy_admin() {
        let roster = store::members::list_by_team(&mut h, team_id).await?;
        // Viewers never write, whatever their team role.
        if caller.is_viewer() || !is_roster_admin(&roster, caller) {
            return Err(Error::http_text(
                StatusCode::FORBIDDEN,
                "You do not have access to this team",
            ));
        }
    }
    let mut t = old.clone();
    t.team_member_permissions = Json(perms);
    save_team(caller, h, &old, t, action::UPDATED).await
}
