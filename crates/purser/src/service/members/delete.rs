//! `/team/member_delete`: under the team lock, removes the matching membership rows, the members'
//! keys of this team and their private budgets; evicts all of it after commit.

use axum::http::StatusCode;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::service::write::Write;
use crate::store;
use crate::store::members::MembershipRow;

use super::{
    MEMBER_DELETE, RosterView, TeamAccess, lock_team, member_scope, not_team_admin, roster_audit,
    team_access, team_default_budget_id,
};

/// `/team/member_delete`: under the team lock remove the membership rows matching the id or
/// email (roster and derived `teams` change with them), the members' keys of this team, and
/// private member budgets; evict all of it after commit.
pub async fn member_delete(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    user_id: Option<&str>,
    user_email: Option<&str>,
) -> Result<RosterView, Error> {
    let mut h = Write::begin(state).await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        Error::http(
            StatusCode::BAD_REQUEST,
            format!("Team id={team_id} does not exist in db"),
        )
    })?;
    if team_access(&mut h, caller, team_id).await? == TeamAccess::None {
        return Err(not_team_admin(MEMBER_DELETE, team_id));
    }
    let roster = store::members::list_by_team(&mut h, team_id).await?;
    let matched: Vec<MembershipRow> = roster
        .iter()
        .filter(|m| {
            user_id.is_some_and(|u| u == m.user_id)
                || user_email.is_some_and(|e| {
                    m.user_email
                        .as_deref()
                        .is_some_and(|x| x.eq_ignore_ascii_case(e))
                })
        })
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err(Error::http(
            StatusCode::BAD_REQUEST,
            "User not found in team",
        ));
    }
    let default_budget = team_default_budget_id(&team);
    let mut tokens = Vec::new();
    for m in &matched {
        store::members::delete(&mut h, team_id, &m.user_id).await?;
        for k in store::keys::list_by_team(&mut h, team_id).await? {
            if k.user_id.as_deref() == Some(m.user_id.as_str()) {
                audit::record(
                    &mut h,
                    caller,
                    action::DELETED,
                    table::KEY,
                    &k.token,
                    Some(views::key_json(&k, false)),
                    None,
                )
                .await?;
            }
        }
        tokens.extend(store::keys::delete_by_team_and_user(&mut h, team_id, &m.user_id).await?);
        if let Some(b) = &m.budget_id
            && Some(b) != default_budget.as_ref()
            && store::budgets::ref_count(&mut h, b).await? == 0
        {
            store::budgets::delete(&mut h, b).await?;
        }
    }
    let view = RosterView::load(&mut h, team).await?;
    audit::record(
        &mut h,
        caller,
        action::UPDATED,
        table::TEAM,
        team_id,
        Some(roster_audit(&view.team, &roster)),
        Some(roster_audit(&view.team, &view.roster)),
    )
    .await?;
    h.team(team_id);
    for t in &tokens {
        h.key(t);
        h.spend_zeroed(SpendScope::Key(t.clone()));
    }
    for m in &matched {
        h.member(team_id, &m.user_id);
        h.user(&m.user_id);
        h.spend_zeroed(member_scope(team_id, &m.user_id));
    }
    h.commit().await?;
    Ok(view)
}
