//! Internal user management (reference §6.4, §6.5): create (with an optional first key and team
//! memberships), read, list, update, delete. Invariants: a user's `teams` is derived from
//! `team_memberships` and never stored; creation of the user, its memberships and its key is one
//! transaction (an unknown team leaves nothing behind); deleting a user deletes its keys and
//! (by foreign-key cascade) its memberships; every write has its audit row in the same
//! transaction, and the handler evicts the touched cache entries after commit.

use axum::http::StatusCode;
use purser_core::money::Nanos;
use purser_core::roles::{TeamRole, UserRole};
use purser_core::validate;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::keys::{
    self, GenerateKeyRequest, bad_request, budget_reset, limit_field, money_field,
};
use crate::service::members::{self, Added, MemberBudget, NewMember, OnDuplicate};
use crate::service::paging::Page;
use crate::service::patch::{Patch, null_as_default};
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::service::write::Write;
use crate::store::keys::KeyRow;
use crate::store::users::{UserFilter, UserRow};
use crate::store::{self, Handle, WriteTx};

/// One entry of `teams` in `/user/new`: a bare team id or an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TeamSpec {
    Id(String),
    Full {
        team_id: String,
        #[serde(default)]
        user_role: Option<TeamRole>,
        #[serde(default)]
        max_budget_in_team: Option<f64>,
    },
}

/// Body of `POST /user/new`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NewUserRequest {
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub user_alias: Option<String>,
    pub user_role: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub teams: Vec<TeamSpec>,
    pub team_id: Option<String>,
    pub max_budget: Option<f64>,
    pub budget_duration: Option<String>,
    pub models: Option<Vec<String>>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub auto_create_key: Option<bool>,
    pub duration: Option<String>,
    pub key_alias: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub model_max_budget: Option<Map<String, Value>>,
    pub organization_id: Option<String>,
    pub sso_user_id: Option<String>,
    /// Refused (reference: `password` → 422); Purser never stores passwords.
    pub password: Option<Value>,
}

/// Body of `POST /user/update` (exclude-unset: only sent fields change; `null` clears).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpdateUserRequest {
    pub user_id: Option<String>,
    pub user_email: Patch<String>,
    pub user_alias: Patch<String>,
    pub user_role: Patch<String>,
    pub max_budget: Patch<f64>,
    pub budget_duration: Patch<String>,
    pub models: Patch<Vec<String>>,
    pub tpm_limit: Patch<i64>,
    pub rpm_limit: Patch<i64>,
    pub max_parallel_requests: Patch<i64>,
    pub metadata: Patch<Map<String, Value>>,
    pub model_max_budget: Patch<Map<String, Value>>,
    pub organization_id: Patch<String>,
    pub password: Option<Value>,
}

/// 422 for `password` (Purser has no password login; the field is refused, never stored).
pub fn refuse_password(p: &Option<Value>) -> Result<(), Error> {
    if p.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(Error::validation(
            vec![json!("body"), json!("password")],
            "extra_forbidden",
            "password is not accepted: Purser does not store passwords",
        ));
    }
    Ok(())
}

fn parse_role(r: &str) -> Result<UserRole, Error> {
    UserRole::parse(r).ok_or_else(|| {
        Error::validation(
            vec![json!("body"), json!("user_role")],
            "enum",
            format!(
                "Input should be 'proxy_admin', 'proxy_admin_viewer', 'internal_user' or 'internal_user_viewer'. Received={r}"
            ),
        )
    })
}

fn conflict(field: &str, value: &str) -> Error {
    Error::http(
        StatusCode::CONFLICT,
        format!("User with {field} {value} already exists"),
    )
}

pub fn user_not_found(user_id: &str) -> Error {
    Error::http(StatusCode::NOT_FOUND, format!("User {user_id} not found"))
}

/// Result of `/user/new`: the user, its key (raw + row) and what the membership adds touched.
pub struct Created {
    pub user: UserRow,
    pub teams: Vec<String>,
    pub key: Option<(String, KeyRow)>,
    pub added: Vec<(String, Vec<Added>)>,
}

/// Creates a user (and memberships, and a key) in the open write transaction `h`.
pub async fn create_tx(
    h: &mut WriteTx,
    state: &AppState,
    caller: &Caller,
    req: &NewUserRequest,
) -> Result<Created, Error> {
    refuse_password(&req.password)?;
    let now = store::now();
    // Unset fields take `default_internal_user_params` / `max_internal_user_budget` /
    // `internal_user_budget_duration` from the config, as the member-add path does.
    let settings = &state.config.litellm_settings;
    let defaults = settings
        .default_internal_user_params
        .clone()
        .unwrap_or_default();
    let mut req = req.clone();
    req.user_role = req.user_role.or(defaults.user_role);
    req.max_budget = req
        .max_budget
        .or(defaults.max_budget)
        .or(settings.max_internal_user_budget);
    req.budget_duration = req
        .budget_duration
        .or(defaults.budget_duration)
        .or(settings.internal_user_budget_duration.clone());
    req.models = req.models.or(defaults.models);
    let req = &req;
    let role = match &req.user_role {
        Some(r) => parse_role(r)?,
        None => UserRole::InternalUser,
    };
    if role.can_read_all() && !caller.is_proxy_admin() {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            format!(
                "Only proxy admins can create users with role {}",
                role.as_str()
            ),
        ));
    }
    let user_id = match &req.user_id {
        Some(u) if u.trim().is_empty() => return Err(bad_request("user_id must not be empty")),
        Some(u) => u.clone(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    if let Some(e) = &req.user_email
        && e.trim().is_empty()
    {
        return Err(bad_request("user_email must not be empty"));
    }
    let mut u = UserRow::new(user_id.clone(), now);
    u.user_role = role.as_str().to_string();
    u.user_email = req.user_email.clone();
    u.user_alias = req.user_alias.clone();
    u.organization_id = req.organization_id.clone();
    u.sso_user_id = req.sso_user_id.clone();
    u.max_budget = req
        .max_budget
        .map(|v| money_field("max_budget", v))
        .transpose()?;
    u.tpm_limit = req
        .tpm_limit
        .map(|v| limit_field("tpm_limit", v))
        .transpose()?;
    u.rpm_limit = req
        .rpm_limit
        .map(|v| limit_field("rpm_limit", v))
        .transpose()?;
    u.max_parallel_requests = req
        .max_parallel_requests
        .map(|v| limit_field("max_parallel_requests", v))
        .transpose()?;
    if let Some(d) = &req.budget_duration {
        u.budget_reset_at = Some(budget_reset(d, now)?);
        u.budget_duration = Some(d.clone());
    }
    if let Some(m) = &req.models {
        u.models = Json(m.clone());
    }
    if let Some(m) = &req.metadata {
        u.metadata = Json(Value::Object(m.clone()));
    }
    if let Some(m) = &req.model_max_budget {
        u.model_max_budget = Json(Value::Object(m.clone()));
        crate::service::limits::check_model_max_budget(&u.model_max_budget.0)?;
    }

    // Team list: `team_id` (as role user) first, then `teams`, each once.
    let mut wanted: Vec<(String, TeamRole, Option<f64>)> = Vec::new();
    if let Some(t) = &req.team_id {
        wanted.push((t.clone(), TeamRole::User, None));
    }
    for t in &req.teams {
        let entry = match t {
            TeamSpec::Id(id) => (id.clone(), TeamRole::User, None),
            TeamSpec::Full {
                team_id,
                user_role,
                max_budget_in_team,
            } => (
                team_id.clone(),
                user_role.unwrap_or(TeamRole::User),
                *max_budget_in_team,
            ),
        };
        if !wanted.iter().any(|w| w.0 == entry.0) {
            wanted.push(entry);
        }
    }
    for w in &wanted {
        if let Some(b) = w.2 {
            money_field("max_budget_in_team", b)?;
        }
    }

    // Lock order everywhere: email addresses, then team rows in sorted order (no deadlocks).
    store::users::lock_emails(h, u.user_email.as_deref()).await?;
    let mut team_ids: Vec<&str> = wanted.iter().map(|w| w.0.as_str()).collect();
    team_ids.sort_unstable();
    for team_id in team_ids {
        store::teams::lock(h, team_id).await?;
    }
    if store::users::get(h, &user_id).await?.is_some() {
        return Err(conflict("user_id", &user_id));
    }
    if let Some(e) = &u.user_email
        && !store::users::find_by_email(h, e).await?.is_empty()
    {
        return Err(conflict("user_email", e));
    }
    store::users::insert(h, &u).await.map_err(|e| {
        if store::is_unique_violation(&e) {
            conflict("user_id", &user_id)
        } else {
            e.into()
        }
    })?;
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

    let mut added = Vec::new();
    for (team_id, team_role, budget) in &wanted {
        if !store::teams::lock(h, team_id).await? {
            return Err(Error::http(
                StatusCode::NOT_FOUND,
                format!("Team not found for team_id={team_id}. Nothing was created."),
            ));
        }
        let Some(team) = store::teams::get(h, team_id).await? else {
            return Err(Error::http(
                StatusCode::NOT_FOUND,
                format!("Team not found for team_id={team_id}. Nothing was created."),
            ));
        };
        let member = NewMember {
            user_id: Some(user_id.clone()),
            user_email: u.user_email.clone(),
            role: *team_role,
        };
        let mb = MemberBudget {
            max_budget_in_team: budget.map(|b| Nanos(validate::usd(b).unwrap_or_default())),
            ..Default::default()
        };
        let a = members::add_members_tx(
            h,
            state,
            caller,
            &team,
            &[member],
            &mb,
            OnDuplicate::Skip,
            true,
        )
        .await?;
        added.push((team_id.clone(), a));
    }

    let key = if req.auto_create_key.unwrap_or(true) {
        let kr = GenerateKeyRequest {
            key_alias: req.key_alias.clone(),
            duration: req.duration.clone(),
            models: req.models.clone().unwrap_or_default(),
            user_id: Some(user_id.clone()),
            team_id: req.team_id.clone(),
            ..Default::default()
        };
        Some(keys::generate_tx(h, state, caller, &kr).await?)
    } else {
        None
    };
    let teams = store::users::teams_of(h, &user_id).await?;
    Ok(Created {
        user: u,
        teams,
        key,
        added,
    })
}

/// `NewUserResponse`: the key fields (raw `key` shown once) + the user fields + derived `teams`.
pub fn created_response(c: &Created, duration: Option<&str>) -> Value {
    let mut v = match &c.key {
        Some((raw, k)) => keys::generate_response(Some(raw), k, duration),
        None => {
            json!({"key": null, "token": null, "token_id": null, "key_name": null, "expires": null, "key_alias": null})
        }
    };
    let u = views::user_json(&c.user, &c.teams);
    for f in [
        "user_id",
        "user_email",
        "user_role",
        "user_alias",
        "max_budget",
        "spend",
        "models",
        "metadata",
        "tpm_limit",
        "rpm_limit",
        "max_parallel_requests",
        "budget_duration",
        "budget_reset_at",
        "model_max_budget",
        "organization_id",
        "sso_user_id",
        "teams",
        "created_at",
        "updated_at",
    ] {
        v[f] = u[f].clone();
    }
    v
}

/// Applies an update in the open write transaction; returns (before, after).
pub async fn update_tx(
    h: &mut WriteTx,
    caller: &Caller,
    req: &UpdateUserRequest,
) -> Result<(UserRow, UserRow), Error> {
    refuse_password(&req.password)?;
    if let Some(Some(e)) = req.user_email.as_update() {
        store::users::lock_emails(h, [e.as_str()]).await?;
    }
    let before = match (&req.user_id, req.user_email.value()) {
        (Some(id), _) => store::users::get(h, id)
            .await?
            .ok_or_else(|| user_not_found(id))?,
        (None, Some(email)) => store::users::find_by_email(h, email)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| user_not_found(email))?,
        (None, None) => return Err(bad_request("user_id or user_email is required")),
    };
    let now = store::now();
    let mut u = before.clone();
    if let Some(v) = req.user_role.as_update() {
        let role = match v {
            Some(r) => parse_role(r)?,
            None => UserRole::InternalUser,
        };
        u.user_role = role.as_str().to_string();
    }
    if let Some(v) = req.user_email.as_update() {
        if let Some(e) = v {
            if e.trim().is_empty() {
                return Err(bad_request("user_email must not be empty"));
            }
            if store::users::find_by_email(h, e)
                .await?
                .iter()
                .any(|o| o.user_id != u.user_id)
            {
                return Err(conflict("user_email", e));
            }
        }
        u.user_email = v.cloned();
    }
    if let Some(v) = req.user_alias.as_update() {
        u.user_alias = v.cloned();
    }
    if let Some(v) = req.organization_id.as_update() {
        u.organization_id = v.cloned();
    }
    if let Some(v) = req.max_budget.as_update() {
        u.max_budget = v.map(|x| money_field("max_budget", *x)).transpose()?;
    }
    if let Some(v) = req.tpm_limit.as_update() {
        u.tpm_limit = v.map(|x| limit_field("tpm_limit", *x)).transpose()?;
    }
    if let Some(v) = req.rpm_limit.as_update() {
        u.rpm_limit = v.map(|x| limit_field("rpm_limit", *x)).transpose()?;
    }
    if let Some(v) = req.max_parallel_requests.as_update() {
        u.max_parallel_requests = v
            .map(|x| limit_field("max_parallel_requests", *x))
            .transpose()?;
    }
    if let Some(v) = req.budget_duration.as_update() {
        // Re-sending the same duration keeps the running period (reference bug §10 #24).
        if v.map(String::as_str) != before.budget_duration.as_deref() {
            u.budget_reset_at = v.map(|d| budget_reset(d, now)).transpose()?;
            u.budget_duration = v.cloned();
        }
    }
    if let Some(v) = req.models.as_update() {
        u.models = Json(v.cloned().unwrap_or_default());
    }
    if let Some(v) = req.metadata.as_update() {
        u.metadata = Json(Value::Object(v.cloned().unwrap_or_default()));
    }
    if let Some(v) = req.model_max_budget.as_update() {
        u.model_max_budget = Json(Value::Object(v.cloned().unwrap_or_default()));
        crate::service::limits::check_model_max_budget(&u.model_max_budget.0)?;
    }
    u.updated_at = now;
    store::users::update(h, &u).await?;
    let teams = store::users::teams_of(h, &u.user_id).await?;
    audit::record(
        h,
        caller,
        action::UPDATED,
        table::USER,
        &u.user_id,
        Some(views::user_json(&before, &teams)),
        Some(views::user_json(&u, &teams)),
    )
    .await?;
    Ok((before, u))
}

/// What a user deletion touched, for cache eviction after commit.
#[derive(Default)]
pub struct Deleted {
    pub tokens: Vec<String>,
    /// (team_id, user_id) memberships removed by the cascade.
    pub memberships: Vec<(String, String)>,
}

/// Deletes users (all must exist, else nothing is deleted), their keys and memberships.
pub async fn delete_tx(
    h: &mut Handle,
    caller: &Caller,
    user_ids: &[String],
) -> Result<Deleted, Error> {
    let mut out = Deleted::default();
    let mut rows = Vec::new();
    for id in user_ids {
        match store::users::get(h, id).await? {
            Some(u) => rows.push(u),
            None => {
                return Err(Error::http(
                    StatusCode::NOT_FOUND,
                    format!("User {id} not found. Nothing was deleted."),
                ));
            }
        }
    }
    for u in rows {
        let teams = store::users::teams_of(h, &u.user_id).await?;
        for k in store::keys::list_by_user(h, &u.user_id).await? {
            audit::record(
                h,
                caller,
                action::DELETED,
                table::KEY,
                &k.token,
                Some(views::key_json(&k, false)),
                None,
            )
            .await?;
        }
        out.tokens
            .extend(store::keys::delete_by_user(h, &u.user_id).await?);
        // Memberships go with the user row (ON DELETE CASCADE).
        store::users::delete(h, &u.user_id).await?;
        audit::record(
            h,
            caller,
            action::DELETED,
            table::USER,
            &u.user_id,
            Some(views::user_json(&u, &teams)),
            None,
        )
        .await?;
        out.memberships
            .extend(teams.into_iter().map(|t| (t, u.user_id.clone())));
    }
    Ok(out)
}

/// Records everything a user creation touched, for the after-commit step.
pub fn record_created(w: &mut Write<'_>, c: &Created) {
    w.user(&c.user.user_id);
    for (team_id, added) in &c.added {
        members::record_added(w, team_id, added);
        w.member(team_id, &c.user.user_id);
    }
    if let Some((_, k)) = &c.key {
        w.key(&k.token);
    }
}

/// Records everything a user deletion touched, for the after-commit step.
pub fn record_deleted(w: &mut Write<'_>, user_ids: &[String], d: &Deleted) {
    // Deleted entities forget their spend counters (a user re-created under the same id
    // starts from zero).
    for t in &d.tokens {
        w.key(t);
        w.spend_zeroed(SpendScope::Key(t.clone()));
    }
    for (t, u) in &d.memberships {
        w.member(t, u);
        w.team(t);
        w.spend_zeroed(members::member_scope(t, u));
    }
    for u in user_ids {
        w.user(u);
        w.spend_zeroed(SpendScope::User(u.clone()));
    }
}

// ------------------------------------------------------------------------------------------
// Route use cases: each write is one transaction, and what it touched is evicted from the cache
// after commit and before the handler answers.
// ------------------------------------------------------------------------------------------

/// `POST /user/new`.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    req: &NewUserRequest,
) -> Result<Created, Error> {
    let mut h = Write::begin(state).await?;
    let created = create_tx(&mut h, state, caller, req).await?;
    record_created(&mut h, &created);
    h.commit().await?;
    Ok(created)
}

/// `GET /user/info`: the user (default: the caller) with its keys and its teams, each team with
/// the user's membership and the team's keys. Callers that cannot read everything may only read
/// themselves; hashes of other members' keys are shown only to readers of everything.
pub async fn info(
    state: &AppState,
    caller: &Caller,
    user_id: Option<String>,
) -> Result<Value, Error> {
    let Some(user_id) = user_id.or_else(|| caller.user_id.clone()) else {
        return Err(Error::http(StatusCode::BAD_REQUEST, "user_id is required"));
    };
    if !caller.can_read_all() && caller.user_id.as_deref() != Some(user_id.as_str()) {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            format!(
                "key not allowed to access this user's info. user_id={}, key's user_id={}",
                user_id,
                caller.user_id.as_deref().unwrap_or("None")
            ),
        ));
    }
    let mut h = state.db.conn().await?;
    let Some(user) = store::users::get(&mut h, &user_id).await? else {
        return Err(user_not_found(&user_id));
    };
    let memberships = store::members::list_by_user(&mut h, &user_id).await?;
    let team_ids: Vec<String> = memberships.iter().map(|m| m.team_id.clone()).collect();
    let keys: Vec<Value> = store::keys::list_by_user(&mut h, &user_id)
        .await?
        .iter()
        .map(|k| views::key_json(k, true))
        .collect();
    let mut teams = Vec::new();
    for m in &memberships {
        let Some(team) = store::teams::get(&mut h, &m.team_id).await? else {
            continue;
        };
        let roster = store::members::list_by_team(&mut h, &team.team_id).await?;
        let model_table = match team.model_id {
            Some(id) => store::models::get(&mut h, id).await?,
            None => None,
        };
        let budget = match &m.budget_id {
            Some(b) => store::budgets::get(&mut h, b).await?,
            None => None,
        };
        let team_keys: Vec<Value> = store::keys::list_by_team(&mut h, &team.team_id)
            .await?
            .iter()
            .map(|k| {
                // Hashes of other members' keys are shown only to readers of everything.
                let own = k.user_id.as_deref() == Some(user_id.as_str());
                views::key_json(k, caller.can_read_all() || own)
            })
            .collect();
        let mut t = views::team_json(&team, &roster, model_table.as_ref());
        t["team_memberships"] = json!([views::membership_json(m, budget.as_ref())]);
        t["keys"] = json!(team_keys);
        teams.push(t);
    }
    Ok(json!({
        "user_id": user_id,
        "user_info": views::user_json(&user, &team_ids),
        "keys": keys,
        "teams": teams,
    }))
}

/// `GET /user/list`: one page of users rendered with their derived `teams`, and the total.
pub async fn list(
    state: &AppState,
    filter: &UserFilter,
    page: Page,
) -> Result<(Vec<Value>, i64), Error> {
    let mut h = state.db.conn().await?;
    let offset = (page.number - 1) * page.size;
    let (rows, total) = store::users::list(&mut h, filter, page.size, offset).await?;
    let mut out = Vec::with_capacity(rows.len());
    for u in &rows {
        let teams = store::users::teams_of(&mut h, &u.user_id).await?;
        out.push(views::user_json(u, &teams));
    }
    Ok((out, total))
}

/// `POST /user/update`: returns the updated row and its derived `teams` (read after commit).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    req: &UpdateUserRequest,
) -> Result<(UserRow, Vec<String>), Error> {
    let mut h = Write::begin(state).await?;
    let (_, after) = update_tx(&mut h, caller, req).await?;
    h.user(&after.user_id);
    h.commit().await?;
    let mut h = state.db.conn().await?;
    let teams = store::users::teams_of(&mut h, &after.user_id).await?;
    Ok((after, teams))
}

/// `POST /user/delete`: all or nothing, for distinct `user_ids`.
pub async fn delete(state: &AppState, caller: &Caller, user_ids: &[String]) -> Result<(), Error> {
    let mut h = Write::begin(state).await?;
    let deleted = delete_tx(&mut h, caller, user_ids).await?;
    record_deleted(&mut h, user_ids, &deleted);
    h.commit().await?;
    Ok(())
}
