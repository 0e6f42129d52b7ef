//! `GET /team/{team_id}/members/me`: the caller's own membership; the same 404 whether or not the
//! team exists, so it does not reveal team ids.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::views;
use crate::store;

/// `GET /team/{team_id}/members/me` (§5.12): the caller's own membership; 404 when not on the
/// roster (proxy admins included), the same answer whether or not the team exists.
pub async fn member_me(state: &AppState, caller: &Caller, team_id: &str) -> Result<Value, Error> {
    let Some(uid) = caller.user_id.as_deref() else {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            "This key has no user_id; /team/{team_id}/members/me needs a key that belongs to a user.",
        ));
    };
    let mut h = state.db.conn().await?;
    let not_member = || {
        Error::http(
            StatusCode::NOT_FOUND,
            format!("User {uid} is not a member of team {team_id}."),
        )
    };
    let team = store::teams::get(&mut h, team_id)
        .await?
        .ok_or_else(not_member)?;
    let m = store::members::get(&mut h, team_id, uid)
        .await?
        .ok_or_else(not_member)?;
    let budget = match &m.budget_id {
        Some(b) => store::budgets::get(&mut h, b).await?,
        None => None,
    };
    let mut v = views::membership_json(&m, budget.as_ref());
    v["team_alias"] = json!(team.team_alias);
    v["role"] = json!(m.role);
    v["user_email"] = json!(m.user_email);
    Ok(v)
}
