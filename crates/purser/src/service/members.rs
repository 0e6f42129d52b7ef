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
use crate::api::extract::Patch;
use crate::app::AppState;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::store::budgets::BudgetRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
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
/// already be locked or freshly inserted in it, and the members' addresses locked with
/// [`lock_member_emails`]). Creates missing users when `may_create_users`.
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
                let mismatch = || {
                    ApiError::detail_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "user_id={id} and user_email={email} do not belong to the same user"
                        ),
                    )
                };
                match &by_id {
                    Some(u) => {
                        if let Some(existing) = &u.user_email
                            && !existing.eq_ignore_ascii_case(email)
                        {
                            return Err(mismatch());
                        }
                    }
                    // A new id must not take an email that already names another user.
                    None => {
                        if store::users::find_by_email(h, email)
                            .await?
                            .iter()
                            .any(|u| &u.user_id != id)
                        {
                            return Err(mismatch());
                        }
                    }
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
            // The reference prints the member as the request named it, not as resolved.
            let m = &members[0];
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

    // Refuse unknown ids before writing anything (the transaction would roll back anyway,
    // but the error should not depend on list order).
    if !may_create_users
        && let Some((m, _)) = resolved
            .iter()
            .find(|(m, u)| u.is_none() && m.user_id.is_some() && !on_roster(m))
    {
        return Err(ApiError::detail_error(
            StatusCode::FORBIDDEN,
            format!(
                "Only proxy admins can add a user_id that does not exist yet: {}. Add the member by user_email to invite a new user, or ask a proxy admin.",
                m.user_id.as_deref().unwrap_or_default()
            ),
        ));
    }

    let defaults = state
        .config
        .litellm_settings
        .default_internal_user_params
        .clone()
        .unwrap_or_default();
    let team_default_budget = match team_default_budget_id(team) {
        Some(id) => store::budgets::get(h, &id).await?,
        None => None,
    };

    // Create missing users with explicit ids in id order: two transactions on different teams
    // creating the same users then wait on each other in one order and cannot deadlock.
    let mut to_create: Vec<String> = resolved
        .iter()
        .filter(|(m, u)| u.is_none() && !on_roster(m))
        .filter_map(|(m, _)| m.user_id.clone())
        .collect();
    to_create.sort_unstable();
    to_create.dedup();
    let mut created: Vec<UserRow> = Vec::new();
    for id in to_create {
        let email = resolved
            .iter()
            .find(|(m, _)| m.user_id.as_deref() == Some(id.as_str()))
            .and_then(|(m, _)| m.user_email.clone());
        let (u, inserted) = create_user(h, state, &defaults, id.clone(), email, now).await?;
        if inserted {
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
            created.push(u);
        } else {
            // Created meanwhile by a concurrent transaction: use it as an existing user.
            for (m, user) in resolved.iter_mut() {
                if m.user_id.as_deref() == Some(id.as_str()) {
                    *user = Some(u.clone());
                    if m.user_email.is_none() {
                        m.user_email = u.user_email.clone();
                    }
                }
            }
        }
    }

    let mut added = Vec::new();
    let mut seen_ids: Vec<String> = Vec::new();
    let mut seen_emails: Vec<String> = Vec::new();
    for (m, user) in resolved {
        if on_roster(&m)
            || m.user_id.as_ref().is_some_and(|id| seen_ids.contains(id))
            || (m.user_id.is_none()
                && m.user_email
                    .as_ref()
                    .is_some_and(|e| seen_emails.iter().any(|x| x.eq_ignore_ascii_case(e))))
        {
            continue;
        }
        let (user, user_created) = match user {
            Some(u) => (u, false),
            None => match created
                .iter()
                .find(|u| m.user_id.as_deref() == Some(u.user_id.as_str()))
            {
                Some(u) => (u.clone(), true),
                None => {
                    // Email-only invite of a user that does not exist yet.
                    let id = uuid::Uuid::new_v4().to_string();
                    let (u, _) =
                        create_user(h, state, &defaults, id, m.user_email.clone(), now).await?;
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
            },
        };
        seen_ids.push(user.user_id.clone());
        if let Some(e) = &m.user_email {
            seen_emails.push(e.clone());
        }
        let budget_row = member_budget_for_add(budget, team_default_budget.as_ref(), caller, now)?;
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
                .or_else(|| team_default_budget.as_ref().map(|b| b.budget_id.clone())),
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
        let linked = budget_row.or_else(|| team_default_budget.clone());
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

/// A new user row with the configured defaults for internal users; inserted unless a row with
/// that id appeared meanwhile (then that row is returned and `false`).
async fn create_user(
    h: &mut Handle,
    state: &AppState,
    defaults: &crate::config::DefaultInternalUserParams,
    id: String,
    email: Option<String>,
    now: DateTime<Utc>,
) -> Result<(UserRow, bool), ApiError> {
    let mut u = UserRow::new(id, now);
    u.user_email = email;
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
    if store::members::insert_user_if_absent(h, &u).await? {
        return Ok((u, true));
    }
    match store::users::get(h, &u.user_id).await? {
        Some(existing) => Ok((existing, false)),
        None => Err(ApiError::internal("user row vanished during member add")),
    }
}

/// The team-default member budget id (`metadata.team_member_budget_id`), if the team has one.
pub fn team_default_budget_id(team: &TeamRow) -> Option<String> {
    team.metadata
        .0
        .get("team_member_budget_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Evicts what a roster change touched (call after commit).
pub async fn evict_added(state: &AppState, team_id: &str, added: &[Added]) {
    state.cache.evict_team(team_id).await;
    for a in added {
        state.cache.evict_user(&a.user.user_id).await;
        state.cache.evict_member(team_id, &a.user.user_id).await;
        // A new membership starts at zero spend, even if the same member left earlier.
        state
            .ledger
            .on_spend_set(&member_scope(team_id, &a.user.user_id), 0);
    }
}

/// Audit payload for roster changes: `{team_alias, members_with_roles}`.
pub fn roster_audit(team: &TeamRow, roster: &[MembershipRow]) -> Value {
    json!({ "team_alias": team.team_alias, "members_with_roles": roster.iter().map(views::member_json).collect::<Vec<_>>() })
}

/// The private budget row a member add creates (reference §5.4 step 8), or `None` to link the
/// team default (if any): explicit `max_budget_in_team`/`allowed_models` → a new row, with
/// `budget_duration` if given and else the team default's window (§10 #7: a member budget must
/// not lose the team's reset period); only `budget_duration` → the team default cloned with
/// that window, or a window-only row.
fn member_budget_for_add(
    b: &MemberBudget,
    team_default: Option<&BudgetRow>,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<Option<BudgetRow>, ApiError> {
    if b.is_empty() {
        return Ok(None);
    }
    let id = uuid::Uuid::new_v4().to_string();
    let by = caller.changed_by();
    let mut row = match (
        team_default,
        b.max_budget_in_team.is_none() && b.allowed_models.is_none(),
    ) {
        (Some(d), true) => {
            let mut row = d.clone();
            row.budget_id = id;
            row.created_at = now;
            row.created_by = by.clone();
            row.updated_at = now;
            row.updated_by = by;
            row
        }
        _ => BudgetRow::new(id, &by, now),
    };
    row.max_budget = b.max_budget_in_team.map(|n| n.0).or(row.max_budget);
    let duration = b
        .budget_duration
        .clone()
        .or_else(|| team_default.and_then(|d| d.budget_duration.clone()));
    row.budget_duration = None;
    row.budget_reset_at = None;
    if let Some(d) = duration {
        let parsed = BudgetDuration::parse(&d)
            .map_err(|e| ApiError::detail_error(StatusCode::BAD_REQUEST, e.to_string()))?;
        row.budget_duration = Some(d);
        row.budget_reset_at = Some(parsed.next_reset(now));
    }
    if let Some(models) = &b.allowed_models {
        row.allowed_models = Json(models.clone());
    }
    Ok(Some(row))
}

fn py_opt(v: &Option<String>) -> String {
    match v {
        Some(s) => format!("'{s}'"),
        None => "None".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Roster routes (/team/member_add, member_delete, member_update, bulk_member_add, reset_spend,
// members/me). Each write runs in one transaction that locks the team row first and reads
// everything it decides on (caller's role, roster, budgets) after that lock.
// ---------------------------------------------------------------------------------------------

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
) -> Result<TeamAccess, ApiError> {
    if caller.is_proxy_admin() {
        return Ok(TeamAccess::ProxyAdmin);
    }
    let Some(uid) = &caller.user_id else {
        return Ok(TeamAccess::None);
    };
    Ok(match store::members::get(h, team_id, uid).await? {
        Some(m) if m.role == TeamRole::Admin.as_str() => TeamAccess::TeamAdmin,
        _ => TeamAccess::None,
    })
}

/// The reference's 403 for roster routes.
pub fn not_team_admin(route: &str, team_id: &str) -> ApiError {
    ApiError::detail_error(
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
    pub async fn load(h: &mut Handle, team: TeamRow) -> Result<RosterView, ApiError> {
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

/// Result of a member add: the team after the change and what was added.
#[derive(Debug)]
pub struct AddOutcome {
    pub view: RosterView,
    pub added: Vec<Added>,
    /// The derived `teams` of each added user, parallel to `added`.
    pub user_teams: Vec<Vec<String>>,
}

impl AddOutcome {
    pub fn user_json(&self, i: usize) -> Value {
        views::user_json(&self.added[i].user, &self.user_teams[i])
    }

    pub fn membership_json(&self, i: usize) -> Value {
        let a = &self.added[i];
        views::membership_json(&a.membership, a.budget.as_ref())
    }
}

const MEMBER_ADD: &str = "/team/member_add";

/// `/team/member_add` (and `/team/bulk_member_add`): authorise under the team lock, add, commit,
/// evict. Only proxy admins may create users by id.
pub async fn member_add(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    members: &[NewMember],
    budget: &MemberBudget,
    on_duplicate: OnDuplicate,
) -> Result<AddOutcome, ApiError> {
    let mut h = state.db.begin_write().await?;
    lock_member_emails(&mut h, members).await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        ApiError::detail_error(
            StatusCode::NOT_FOUND,
            format!("Team not found for team_id={team_id}"),
        )
    })?;
    let access = team_access(&mut h, caller, team_id).await?;
    if access == TeamAccess::None {
        check_available_team_join(state, caller, team_id, members, budget)?;
    }
    let added = add_members_tx(
        &mut h,
        state,
        caller,
        &team,
        members,
        budget,
        on_duplicate,
        access == TeamAccess::ProxyAdmin,
    )
    .await?;
    let mut user_teams = Vec::with_capacity(added.len());
    for a in &added {
        user_teams.push(store::users::teams_of(&mut h, &a.user.user_id).await?);
    }
    let view = RosterView::load(&mut h, team).await?;
    h.commit().await?;
    evict_added(state, team_id, &added).await;
    Ok(AddOutcome {
        view,
        added,
        user_teams,
    })
}

/// Serialises member adds that name the same new address, so concurrent adds to different teams
/// create one user for it, not one each (see [`store::users::lock_emails`] for the lock order).
/// Every caller of [`add_members_tx`] takes it first.
pub async fn lock_member_emails(h: &mut Handle, members: &[NewMember]) -> Result<(), ApiError> {
    let emails = members.iter().filter_map(|m| m.user_email.as_deref());
    Ok(store::users::lock_emails(h, emails).await?)
}

/// Locks the team row and reads it; `None` when it does not exist (or was just deleted).
async fn lock_team(h: &mut Handle, team_id: &str) -> Result<Option<TeamRow>, ApiError> {
    if !store::teams::lock(h, team_id).await? {
        return Ok(None);
    }
    Ok(store::teams::get(h, team_id).await?)
}

/// Self-join of a team listed in `default_internal_user_params.available_teams`: only the
/// caller themself, only as `user`, without budget fields (reference §5.4).
fn check_available_team_join(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    members: &[NewMember],
    budget: &MemberBudget,
) -> Result<(), ApiError> {
    let available = state.config.available_teams().iter().any(|t| t == team_id);
    let Some(uid) = caller.user_id.as_deref().filter(|_| available) else {
        return Err(not_team_admin(MEMBER_ADD, team_id));
    };
    let forbid = |msg: &str| {
        ApiError::detail_error(
            StatusCode::FORBIDDEN,
            format!("{msg} route={MEMBER_ADD}, team_id={team_id}"),
        )
    };
    if members.iter().any(|m| m.user_id.as_deref() != Some(uid)) {
        return Err(forbid(
            "Non-admin users can only add themselves (by user_id) to an available team.",
        ));
    }
    if members.iter().any(|m| m.role != TeamRole::User) {
        return Err(forbid(
            "Non-admin users can only join an available team with role 'user'.",
        ));
    }
    if !budget.is_empty() {
        return Err(forbid(
            "Non-admin users cannot set max_budget_in_team, budget_duration or allowed_models when joining an available team.",
        ));
    }
    Ok(())
}

const MEMBER_DELETE: &str = "/team/member_delete";

/// `/team/member_delete`: under the team lock remove the membership rows matching the id or
/// email (roster and derived `teams` change with them), the members' keys of this team, and
/// private member budgets; evict all of it after commit.
pub async fn member_delete(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    user_id: Option<&str>,
    user_email: Option<&str>,
) -> Result<RosterView, ApiError> {
    let mut h = state.db.begin_write().await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        ApiError::detail_error(
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
        return Err(ApiError::detail_error(
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
    h.commit().await?;
    state.cache.evict_team(team_id).await;
    state.cache.evict_keys(&tokens).await;
    for t in &tokens {
        state.ledger.on_spend_set(&SpendScope::Key(t.clone()), 0);
    }
    for m in &matched {
        state.cache.evict_member(team_id, &m.user_id).await;
        state.cache.evict_user(&m.user_id).await;
        state
            .ledger
            .on_spend_set(&member_scope(team_id, &m.user_id), 0);
    }
    Ok(view)
}

/// Merge-patch of a member (`/team/member_update`): absent = untouched, null = clear.
#[derive(Debug, Clone, Default)]
pub struct MemberPatch {
    pub role: Option<TeamRole>,
    pub max_budget: Patch<Nanos>,
    pub tpm_limit: Patch<i64>,
    pub rpm_limit: Patch<i64>,
    pub budget_duration: Patch<String>,
    pub allowed_models: Patch<Vec<String>>,
}

impl MemberPatch {
    fn touches_budget(&self) -> bool {
        self.max_budget.is_present()
            || self.tpm_limit.is_present()
            || self.rpm_limit.is_present()
            || self.budget_duration.is_present()
            || self.allowed_models.is_present()
    }

    /// Applies the patch to a budget row. A changed `budget_duration` recomputes
    /// `budget_reset_at` from now; an unchanged one leaves the running window alone.
    fn apply(&self, row: &mut BudgetRow, now: DateTime<Utc>) -> Result<(), ApiError> {
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
        if let Some(v) = self.budget_duration.as_update()
            && v != row.budget_duration.as_ref()
        {
            row.budget_reset_at = match v {
                Some(d) => Some(
                    BudgetDuration::parse(d)
                        .map_err(|e| {
                            ApiError::detail_error(StatusCode::BAD_REQUEST, e.to_string())
                        })?
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
) -> Result<String, ApiError> {
    let now = store::now();
    let mut h = state.db.begin_write().await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        ApiError::detail_error(
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
                ApiError::detail_error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "User id doesn't exist in team table. Data=team_id='{team_id}' user_id=None user_email={}",
                        py_opt(&user_email.map(str::to_string))
                    ),
                )
            })?,
    };
    let Some(before) = roster.iter().find(|m| m.user_id == uid).cloned() else {
        return Err(ApiError::detail_error(
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
    h.commit().await?;
    state.cache.evict_member(team_id, &uid).await;
    state.cache.evict_team(team_id).await;
    state.cache.evict_user(&uid).await;
    Ok(uid)
}

/// `/team/{team_id}/member/{user_id}/reset_spend` (§5.7): checks, then one conditional UPDATE
/// that only applies if the spend is still the value the checks read (else 409).
pub async fn reset_spend(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    user_id: &str,
    reset_to: f64,
) -> Result<Value, ApiError> {
    let mut h = state.db.conn().await?;
    let access = if store::teams::get(&mut h, team_id).await?.is_none() {
        if !caller.is_proxy_admin() {
            return Err(no_team_access());
        }
        return Err(ApiError::detail_error(
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
        return Err(ApiError::detail_error(
            StatusCode::FORBIDDEN,
            "Cannot reset your own spend. Ask a proxy admin.",
        ));
    }
    let Some(m) = store::members::get(&mut h, team_id, user_id).await? else {
        return Err(ApiError::detail_error(
            StatusCode::NOT_FOUND,
            format!("User {user_id} is not a member of team {team_id}."),
        ));
    };
    let bad = |msg: String| ApiError::detail_error(StatusCode::BAD_REQUEST, msg);
    let target = Nanos::from_usd(reset_to)
        .map_err(|_| bad("reset_to must be a finite number >= 0".into()))?;
    if target.0 > m.spend {
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
        && target.0 > mb
    {
        return Err(bad(format!(
            "reset_to ({reset_to}) cannot be greater than the member's max_budget ({}).",
            Nanos(mb).to_usd()
        )));
    }
    if !store::members::reset_spend(&mut h, team_id, user_id, m.spend, target.0).await? {
        return Err(ApiError::detail_error(
            StatusCode::CONFLICT,
            "Member spend changed since it was read. Retry the reset.",
        ));
    }
    drop(h);
    // The counter takes the new value (which need not be zero).
    state
        .ledger
        .on_spend_set(&member_scope(team_id, user_id), target.0);
    state.cache.evict_member(team_id, user_id).await;
    Ok(json!({
        "team_id": team_id,
        "user_id": user_id,
        "spend": views::usd(target.0),
        "previous_spend": views::usd(m.spend),
        "max_budget": views::usd_opt(max_budget),
    }))
}

/// §2.4 denial.
fn no_team_access() -> ApiError {
    ApiError::detail(StatusCode::FORBIDDEN, "You do not have access to this team")
}

/// `GET /team/{team_id}/members/me` (§5.12): the caller's own membership; 404 when not on the
/// roster (proxy admins included), the same answer whether or not the team exists.
pub async fn member_me(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
) -> Result<Value, ApiError> {
    let Some(uid) = caller.user_id.as_deref() else {
        return Err(ApiError::detail_error(
            StatusCode::BAD_REQUEST,
            "This key has no user_id; /team/{team_id}/members/me needs a key that belongs to a user.",
        ));
    };
    let mut h = state.db.conn().await?;
    let not_member = || {
        ApiError::detail_error(
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

/// The ledger scope of one membership.
pub fn member_scope(team_id: &str, user_id: &str) -> SpendScope {
    SpendScope::Member {
        team_id: team_id.to_string(),
        user_id: user_id.to_string(),
    }
}
