//! `/team/{team_id}/member/{user_id}/reset_spend`: one conditional UPDATE that applies only if the
//! spend is still the value the checks read (else 409), so a concurrent spend is never erased.

use axum::http::StatusCode;
use purser_core::money::Nanos;
use purser_core::validate;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::views;
use crate::service::write::{self, Changed};
use crate::store;

use super::{TeamAccess, member_scope, team_access};

/// §2.4 denial.
fn no_team_access() -> Error {
    Error::http_text(StatusCode::FORBIDDEN, "You do not have access to this team")
}

/// `/team/{team_id}/member/{user_id}/reset_spend` (§5.7): checks, then one conditional UPDATE
/// that only applies if the spend is still the value the checks read (else 409).
pub async fn reset_spend(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    user_id: &str,
    reset_to: f64,
) -> Result<Value, Error> {
    let mut h = state.db.conn().await?;
    let access = if store::teams::get(&mut h, team_id).await?.is_none() {
        if !caller.is_proxy_admin() {
            return Err(no_team_access());
        }
        return Err(Error::http(
            StatusCode::NOT_FOUND,
            format!("Team not found for team_id={team_id}"),
        ));
    } else {
        team_access(&mut h, caller, team_id).await?
    };
    if access == TeamAccess::None {
        return Err(no_team_access());
    }
    if access != TeamAccess::ProxyAdmin && caller.user_id.as_deref() == Some(user_id) {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            "Cannot reset your own spend. Ask a proxy admin.",
        ));
    }
    // The spend writer's gate: no chunk lands between reading the spend and replacing it, and
    // calls that settle meanwhile stay counted on top of the new value.
    let spend_write = state.ledger.spend_write().await;
    let Some(m) = store::members::get(&mut h, team_id, user_id).await? else {
        return Err(Error::http(
            StatusCode::NOT_FOUND,
            format!("User {user_id} is not a member of team {team_id}."),
        ));
    };
    let bad = |msg: String| Error::http(StatusCode::BAD_REQUEST, msg);
    let target =
        validate::usd(reset_to).map_err(|_| bad("reset_to must be a finite number >= 0".into()))?;
    if target > m.spend {
        return Err(bad(format!(
            "reset_to ({reset_to}) cannot be greater than the member's current spend ({}).",
            Nanos(m.spend).to_usd()
        )));
    }
    let budget = match &m.budget_id {
        Some(b) => store::budgets::get(&mut h, b).await?,
        None => None,
    };
    let max_budget = budget.as_ref().and_then(|b| b.max_budget);
    if let Some(mb) = max_budget
        && target > mb
    {
        return Err(bad(format!(
            "reset_to ({reset_to}) cannot be greater than the member's max_budget ({}).",
            Nanos(mb).to_usd()
        )));
    }
    if !store::members::reset_spend(&mut h, team_id, user_id, m.spend, target).await? {
        return Err(Error::http(
            StatusCode::CONFLICT,
            "Member spend changed since it was read. Retry the reset.",
        ));
    }
    drop(h);
    // The counter takes the new value (which need not be zero).
    spend_write.set(&member_scope(team_id, user_id), target);
    drop(spend_write);
    write::after_commit(
        state,
        &[
            Changed::Member {
                team_id: team_id.to_string(),
                user_id: user_id.to_string(),
            },
            Changed::SpendSet {
                scope: member_scope(team_id, user_id),
                value: target,
            },
        ],
    )
    .await;
    Ok(json!({
        "team_id": team_id,
        "user_id": user_id,
        "spend": views::usd(target),
        "previous_spend": views::usd(m.spend),
        "max_budget": views::usd_opt(max_budget),
    }))
}
