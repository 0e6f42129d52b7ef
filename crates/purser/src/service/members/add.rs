//! Adding members (`/team/member_add`, `/team/bulk_member_add`, and the rosters of `/team/new` and
//! `/user/new`): one membership row per member, users created on demand, private member budgets.
//! Invariant: callers of [`add_members_tx`] hold the team row lock (or just inserted the team) and
//! took the address locks first ([`lock_member_emails`]), so one address becomes one user.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::roles::TeamRole;
use purser_core::validate;
use serde_json::Value;
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::views;
use crate::service::write::Write;
use crate::store::budgets::BudgetRow;
use crate::store::members::MembershipRow;
use crate::store::teams::TeamRow;
use crate::store::users::UserRow;
use crate::store::{self, Handle, WriteTx};

use super::{
    MemberBudget, NewMember, OnDuplicate, RosterView, TeamAccess, lock_team, member_scope,
    not_team_admin, py_opt, roster_audit, team_access, team_default_budget_id,
};

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
) -> Result<Vec<Added>, Error> {
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
                    Error::http(
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
                    return Err(Error::http(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Multiple users found with email '{email}'. Please use 'user_id' instead."
                        ),
                    ));
                }
                found.into_iter().next()
            }
            (None, None) => {
                return Err(Error::http(
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
        return Err(Error::proxy(
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
        return Err(Error::http(
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
                Error::http(
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
) -> Result<(UserRow, bool), Error> {
    let mut u = UserRow::new(id, now);
    u.user_email = email;
    if let Some(models) = &defaults.models {
        u.models = Json(models.clone());
    }
    if let Some(mb) = defaults
        .max_budget
        .or(state.config.litellm_settings.max_internal_user_budget)
    {
        u.max_budget = validate::usd(mb).ok();
    }
    let duration = defaults.budget_duration.clone().or_else(|| {
        state
            .config
            .litellm_settings
            .internal_user_budget_duration
            .clone()
    });
    if let Some(d) = duration
        && let Ok(parsed) = validate::budget_duration(&d)
    {
        u.budget_reset_at = Some(parsed.next_reset(now));
        u.budget_duration = Some(d);
    }
    if store::members::insert_user_if_absent(h, &u).await? {
        return Ok((u, true));
    }
    match store::users::get(h, &u.user_id).await? {
        Some(existing) => Ok((existing, false)),
        None => Err(Error::internal("user row vanished during member add")),
    }
}

/// Records what a roster change touched, for the after-commit step.
pub fn record_added(w: &mut Write<'_>, team_id: &str, added: &[Added]) {
    w.team(team_id);
    for a in added {
        w.user(&a.user.user_id);
        w.member(team_id, &a.user.user_id);
        // A new membership starts at zero spend, even if the same member left earlier.
        w.spend_zeroed(member_scope(team_id, &a.user.user_id));
    }
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
) -> Result<Option<BudgetRow>, Error> {
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
        let parsed = validate::budget_duration(&d)
            .map_err(|e| Error::http(StatusCode::BAD_REQUEST, e.to_string()))?;
        row.budget_duration = Some(d);
        row.budget_reset_at = Some(parsed.next_reset(now));
    }
    if let Some(models) = &b.allowed_models {
        row.allowed_models = Json(models.clone());
    }
    Ok(Some(row))
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
) -> Result<AddOutcome, Error> {
    let mut h = Write::begin(state).await?;
    lock_member_emails(&mut h, members).await?;
    let team = lock_team(&mut h, team_id).await?.ok_or_else(|| {
        Error::http(
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
    record_added(&mut h, team_id, &added);
    h.commit().await?;
    Ok(AddOutcome {
        view,
        added,
        user_teams,
    })
}

/// Serialises member adds that name the same new address, so concurrent adds to different teams
/// create one user for it, not one each (see [`store::users::lock_emails`] for the lock order).
/// Every caller of [`add_members_tx`] takes it first.
pub async fn lock_member_emails(h: &mut WriteTx, members: &[NewMember]) -> Result<(), Error> {
    let emails = members.iter().filter_map(|m| m.user_email.as_deref());
    Ok(store::users::lock_emails(h, emails).await?)
}

/// Self-join of a team listed in `default_internal_user_params.available_teams`: only the
/// caller themself, only as `user`, without budget fields (reference §5.4).
fn check_available_team_join(
    state: &AppState,
    caller: &Caller,
    team_id: &str,
    members: &[NewMember],
    budget: &MemberBudget,
) -> Result<(), Error> {
    let available = state.config.available_teams().iter().any(|t| t == team_id);
    let Some(uid) = caller.user_id.as_deref().filter(|_| available) else {
        return Err(not_team_admin(MEMBER_ADD, team_id));
    };
    let forbid = |msg: &str| {
        Error::http(
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
