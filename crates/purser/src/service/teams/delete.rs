//! `POST /team/delete`: all or nothing (an unknown id is a 404 before anything is removed); teams
//! are locked in sorted order so concurrent deletes and roster changes cannot deadlock; deleted
//! entities forget their spend counters.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::service::write::{Changed, Write};
use crate::store;

use super::{default_budget_id, team_not_found};

/// Deletes teams with their keys, roster, alias rows and default member budgets, all or
/// nothing: any unknown id is a 404 before anything is removed. Teams are locked in sorted
/// order so concurrent deletes and roster changes cannot deadlock.
pub async fn delete_teams(
    state: &AppState,
    caller: &Caller,
    team_ids: Vec<String>,
) -> Result<Value, Error> {
    let mut ids: Vec<String> = Vec::with_capacity(team_ids.len());
    for id in team_ids {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let mut h = Write::begin(state).await?;
    let mut existing = HashSet::new();
    for id in &sorted {
        if store::teams::lock(&mut h, id).await? {
            existing.insert(id.clone());
        }
    }
    if let Some(missing) = ids.iter().find(|id| !existing.contains(*id)) {
        return Err(team_not_found(missing));
    }
    let mut evict_tokens = Vec::new();
    let mut evict_members: Vec<(String, String)> = Vec::new();
    for id in &sorted {
        let Some(team) = store::teams::get(&mut h, id).await? else {
            return Err(team_not_found(id));
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
    // Deleted entities forget their spend counters, so a team, key or membership created
    // later under the same id starts from zero.
    for id in &ids {
        h.team(id);
        h.changed(Changed::TeamMembers(id.clone()));
        h.spend_zeroed(SpendScope::Team(id.clone()));
    }
    for t in &evict_tokens {
        h.key(t);
        h.spend_zeroed(SpendScope::Key(t.clone()));
    }
    for (t, u) in &evict_members {
        h.member(t, u);
        h.user(u);
        h.spend_zeroed(crate::service::members::member_scope(t, u));
    }
    h.commit().await?;
    Ok(json!({ "deleted_teams": ids }))
}
