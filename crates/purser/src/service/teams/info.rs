//! `GET /team/info`: the team with roster, budgets, keys and its spend forecast in a constant
//! number of statements;
//! visible to readers of everything, the team's own keys and its members. Key hashes are never
//! shown here (members would learn other members' key ids).

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::views;
use crate::store;
use crate::store::budgets::BudgetRow;
use crate::store::keys::KeyRow;
use crate::store::members::MembershipRow;
use crate::store::teams::Scope;

use super::{MEMBER_BUDGET_ID_KEY, default_budget_id, is_roster_admin, team_admin_editable};

/// The 403 of `/team/info` for callers outside the team (reference §5.11 wording).
fn info_forbidden(caller: &Caller, team_id: &str) -> Error {
    let msg = match (&caller.user_id, caller.key_team_id()) {
        (Some(u), _) => format!("User={u} not authorized to access this team={team_id}"),
        (None, Some(k)) => {
            format!("Team key for team={k} not authorized to access this team={team_id}")
        }
        (None, None) => format!(
            "API key not authorized to access this team={team_id}. No user_id or team_id associated with this key."
        ),
    };
    Error::proxy(
        StatusCode::FORBIDDEN,
        "auth_error",
        format!("{{'error': '{msg}'}}"),
    )
    .with_param("None")
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
) -> Result<TeamInfo, Error> {
    let now = store::now();
    let mut h = state.db.conn().await?;
    let Some(team) = store::teams::get(&mut h, team_id).await? else {
        if !caller.can_read_all() && caller.key_team_id() != Some(team_id) {
            return Err(info_forbidden(caller, team_id));
        }
        return Err(Error::proxy(
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
    let spend_forecast = crate::service::forecast::spend_forecast(
        state,
        &mut h,
        crate::service::forecast::Subject {
            column: store::spend::SpendColumn::Team,
            id: team_id,
            scope: crate::service::spend::SpendScope::Team(team_id.to_string()),
            created_at: team.created_at,
            spend: team.spend,
            max_budget: team.max_budget,
            budget_reset_at: team.budget_reset_at,
        },
    )
    .await?;
    Ok(TeamInfo {
        team_id: team_id.to_string(),
        team_info: info,
        keys,
        team_memberships: memberships,
        spend_forecast,
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
    /// Purser: the burn rate and when the budget runs out (`service::forecast`).
    spend_forecast: Value,
}

fn keys_without_token<S: serde::Serializer>(keys: &[KeyRow], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| views::KeyView::new(k, false)))
}
