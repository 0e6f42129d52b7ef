//! Team roster changes. Invariant: a member is one `team_memberships` row; adding or removing
//! one changes the roster, the user's `teams` and the membership (spend, budget link) together,
//! because they are the same row. Every change runs in one write transaction that first locks the
//! team row (PostgreSQL `FOR UPDATE`; SQLite `BEGIN IMMEDIATE`), so concurrent adds, deletes and
//! team deletion serialise per team and nothing is lost or left dangling.
//!
//! This module holds what the roster use cases share (request shapes, the caller's standing on a
//! team, the team lock, the spend scope of a membership); each use case lives in its own file.

use axum::http::StatusCode;
use purser_core::money::Nanos;
use purser_core::roles::TeamRole;
use serde_json::{Value, json};

use crate::error::Error;
use crate::service::caller::Caller;
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::TeamRow;
use crate::store::{self, Handle, WriteTx};

mod add;
mod delete;
mod me;
mod reset_spend;
mod update;

pub use add::{AddOutcome, Added, add_members_tx, lock_member_emails, member_add, record_added};
pub use delete::member_delete;
pub use me::member_me;
pub use reset_spend::reset_spend;
pub use update::{MemberPatch, member_update};

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

/// The team-default member budget id (`metadata.team_member_budget_id`), if the team has one.
pub fn team_default_budget_id(team: &TeamRow) -> Option<String> {
    team.metadata
        .0
        .get("team_member_budget_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Audit payload for roster changes: `{team_alias, members_with_roles}`.
pub fn roster_audit(team: &TeamRow, roster: &[MembershipRow]) -> Value {
    json!({ "team_alias": team.team_alias, "members_with_roles": roster.iter().map(views::member_json).collect::<Vec<_>>() })
}

fn py_opt(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{s}'"),
        None => "None".into(),
    }
}

/// The caller's standing on one team, read under the team lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeamAccess {
    ProxyAdmin,
    TeamAdmin,
    None,
}

/// Proxy admin, else the caller's membership role on the team (§2.4 `is_team_admin`).
pub async fn team_access(
    h: &mut Handle,
    caller: &Caller,
    team_id: &str,
) -> Result<TeamAccess, Error> {
    if caller.is_proxy_admin() {
        return Ok(TeamAccess::ProxyAdmin);
    }
    let Some(uid) = &caller.user_id else {
        return Ok(TeamAccess::None);
    };
    // Every caller of this decides a write; viewers never write, whatever their team role.
    if caller.is_viewer() {
        return Ok(TeamAccess::None);
    }
    Ok(match store::members::get(h, team_id, uid).await? {
        Some(m) if m.role == TeamRole::Admin.as_str() => TeamAccess::TeamAdmin,
        _ => TeamAccess::None,
    })
}

/// The reference's 403 for roster routes.
pub fn not_team_admin(route: &str, team_id: &str) -> Error {
    Error::http(
        StatusCode::FORBIDDEN,
        format!(
            "Call not allowed. User not proxy admin OR team admin. route={route}, team_id={team_id}"
        ),
    )
}

/// A team with its roster as read inside a transaction (rendered after commit).
#[derive(Debug, Clone)]
pub struct RosterView {
    pub team: TeamRow,
    pub model_table: Option<ModelTableRow>,
    pub roster: Vec<MembershipRow>,
}

impl RosterView {
    pub async fn load(h: &mut Handle, team: TeamRow) -> Result<RosterView, Error> {
        let roster = store::members::list_by_team(h, &team.team_id).await?;
        let model_table = match team.model_id {
            Some(id) => store::models::get(h, id).await?,
            None => None,
        };
        Ok(RosterView {
            team,
            model_table,
            roster,
        })
    }

    /// `LiteLLM_TeamTable` with the roster.
    pub fn team_json(&self) -> Value {
        views::team_json(&self.team, &self.roster, self.model_table.as_ref())
    }
}

/// Locks the team row and reads it; `None` when it does not exist (or was just deleted).
async fn lock_team(h: &mut WriteTx, team_id: &str) -> Result<Option<TeamRow>, Error> {
    if !store::teams::lock(h, team_id).await? {
        return Ok(None);
    }
    Ok(store::teams::get(h, team_id).await?)
}

const MEMBER_DELETE: &str = "/team/member_delete";

/// The ledger scope of one membership.
pub fn member_scope(team_id: &str, user_id: &str) -> SpendScope {
    SpendScope::Member {
        team_id: team_id.to_string(),
        user_id: user_id.to_string(),
    }
}
