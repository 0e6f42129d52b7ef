//! Virtual key management (reference §6.1–6.3): generation, lookup, update, block, rotation,
//! deletion and who may do each. Invariants: only the sha256 of a key is stored and the raw key
//! is returned exactly once (generate/regenerate); every write runs in one transaction with its
//! audit row, and the caller evicts the changed tokens from the cache after commit, so a blocked,
//! deleted or rotated key fails on the very next request. Key `models` must fit inside the team's
//! models on create AND update (fixes reference bug §10 #18).

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use purser_core::access::{ALL_PROXY_MODELS, ALL_TEAM_MODELS, AccessGroups, list_allows};
use purser_core::keys::{generate_key, hash_key, key_name, token_of, validate_custom_key};
use purser_core::money::Nanos;
use purser_core::routes;
use purser_core::validate;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::app::AppState;
use crate::error::Error;
use crate::service::audit::{self, action, table};
use crate::service::caller::Caller;
use crate::service::limits;
use crate::service::paging::Page;
use crate::service::patch::{Patch, null_as_default};
use crate::service::spend::SpendScope;
use crate::service::views;
use crate::service::write::Write;
use crate::store::keys::{KeyFilter, KeyRow};
use crate::store::teams::TeamRow;
use crate::store::{self, Handle};

/// Body of `POST /key/generate` (unknown fields are ignored, as pydantic does).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GenerateKeyRequest {
    pub key_alias: Option<String>,
    pub duration: Option<String>,
    pub key: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub models: Vec<String>,
    pub max_budget: Option<f64>,
    pub soft_budget: Option<f64>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    pub budget_id: Option<String>,
    pub max_parallel_requests: Option<i64>,
    pub metadata: Option<Map<String, Value>>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    /// Tokens per UTC day (`limiter`).
    pub tpd_limit: Option<i64>,
    /// Extra budget windows (`service::model_budget`).
    pub budget_limits: Option<Vec<Value>>,
    pub budget_duration: Option<String>,
    pub config: Option<Map<String, Value>>,
    pub permissions: Option<Map<String, Value>>,
    pub model_max_budget: Option<Map<String, Value>>,
    pub aliases: Option<Map<String, Value>>,
    pub blocked: Option<bool>,
    #[serde(deserialize_with = "null_as_default")]
    pub allowed_routes: Vec<String>,
    pub key_type: Option<String>,
    /// Stored in `metadata` (as the reference does); see `service::limits`.
    pub model_rpm_limit: Option<Map<String, Value>>,
    pub model_tpm_limit: Option<Map<String, Value>>,
    /// Stored in `metadata` too; raise `max_budget` until the expiry.
    pub temp_budget_increase: Option<f64>,
    pub temp_budget_expiry: Option<String>,
}

/// Body of `POST /key/update`: `key` names the key; every other field is applied only if sent
/// (explicit `null` clears it).
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateKeyRequest {
    pub key: String,
    #[serde(default)]
    pub key_alias: Patch<String>,
    #[serde(default)]
    pub duration: Patch<String>,
    #[serde(default)]
    pub models: Patch<Vec<String>>,
    #[serde(default)]
    pub max_budget: Patch<f64>,
    #[serde(default)]
    pub soft_budget: Patch<f64>,
    #[serde(default)]
    pub user_id: Patch<String>,
    #[serde(default)]
    pub team_id: Patch<String>,
    #[serde(default)]
    pub max_parallel_requests: Patch<i64>,
    #[serde(default)]
    pub metadata: Patch<Map<String, Value>>,
    #[serde(default)]
    pub tpm_limit: Patch<i64>,
    #[serde(default)]
    pub rpm_limit: Patch<i64>,
    #[serde(default)]
    pub tpd_limit: Patch<i64>,
    #[serde(default)]
    pub budget_limits: Patch<Vec<Value>>,
    #[serde(default)]
    pub budget_duration: Patch<String>,
    #[serde(default)]
    pub config: Patch<Map<String, Value>>,
    #[serde(default)]
    pub permissions: Patch<Map<String, Value>>,
    #[serde(default)]
    pub model_max_budget: Patch<Map<String, Value>>,
    #[serde(default)]
    pub aliases: Patch<Map<String, Value>>,
    #[serde(default)]
    pub blocked: Patch<bool>,
    #[serde(default)]
    pub allowed_routes: Patch<Vec<String>>,
    pub model_rpm_limit: Patch<Map<String, Value>>,
    pub model_tpm_limit: Patch<Map<String, Value>>,
    pub temp_budget_increase: Patch<f64>,
    pub temp_budget_expiry: Patch<String>,
    #[serde(default)]
    pub key_type: Patch<String>,
}

/// `HTTPException(400, {"error": msg})`.
pub fn bad_request(msg: impl AsRef<str>) -> Error {
    Error::http(StatusCode::BAD_REQUEST, msg.as_ref())
}

// Field rules are `purser_core::validate`; these turn their failures into the key routes' refusals.

/// Dollars from a client → nanos, or 400 naming the field.
pub fn money_field(field: &str, usd: f64) -> Result<i64, Error> {
    validate::usd(usd).map_err(|e| bad_request(format!("{field} {e}. Received={usd}")))
}

/// A count limit (tpm/rpm/parallel requests) must not be negative.
pub fn limit_field(field: &str, v: i64) -> Result<i64, Error> {
    validate::count_limit(v).map_err(|_| {
        bad_request(format!(
            "{field} must be a non-negative integer. Received={v}"
        ))
    })
}

/// Parses a `budget_duration` and returns the first reset instant after `now`.
pub fn budget_reset(d: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    validate::budget_duration(d)
        .map(|p| p.next_reset(now))
        .map_err(|e| bad_request(e.to_string()))
}

/// Parses a key `duration` and returns the expiry instant.
pub fn expiry(d: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Error> {
    validate::budget_duration(d)
        .map(|p| p.after(now))
        .map_err(|_| {
            bad_request(format!(
                "Invalid duration '{d}'. Use a format like '30s', '1h', '7d', or '30d'."
            ))
        })
}

/// The `allowed_routes` a key ends up with: `key_type` other than `default` sets its route group
/// (as the reference does); an explicit list that says otherwise is refused rather than dropped.
fn route_access(key_type: &str, allowed_routes: &[String]) -> Result<Vec<String>, Error> {
    for entry in allowed_routes {
        routes::check_entry(entry).map_err(bad_request)?;
    }
    match routes::for_key_type(key_type) {
        None => Ok(allowed_routes.to_vec()),
        Some(group) if allowed_routes.is_empty() || allowed_routes == [group] => {
            Ok(vec![group.to_string()])
        }
        Some(group) => Err(bad_request(format!(
            "key_type={key_type} restricts the key to allowed_routes=['{group}']; it cannot be combined with allowed_routes={allowed_routes:?}"
        ))),
    }
}

fn key_type_field(t: &str) -> Result<String, Error> {
    if routes::KEY_TYPES.contains(&t) {
        Ok(t.to_string())
    } else {
        Err(bad_request(format!(
            "Invalid key_type '{t}'. Must be one of {:?}",
            routes::KEY_TYPES
        )))
    }
}

fn non_blank(field: &str, v: &str) -> Result<(), Error> {
    if v.trim().is_empty() {
        return Err(bad_request(format!("{field} must not be empty")));
    }
    Ok(())
}

/// Fix for reference bug §10 #18: a key's models must be a subset of its team's models, unless
/// the team allows every model (empty list or `all-proxy-models`/`*`). `all-team-models` is
/// always allowed because it inherits the team's list.
pub fn check_models_in_team(models: &[String], team: &TeamRow) -> Result<(), Error> {
    let allowed = &team.models.0;
    if allowed.is_empty() || allowed.iter().any(|m| m == ALL_PROXY_MODELS || m == "*") {
        return Ok(());
    }
    let groups = AccessGroups::new();
    for m in models {
        if m == ALL_TEAM_MODELS || list_allows(allowed, m, &groups) {
            continue;
        }
        return Err(bad_request(format!(
            "Model '{m}' is not in the models of team={}. Allowed team models: {}",
            team.team_id,
            allowed.join(", ")
        )));
    }
    Ok(())
}

/// The caller's role on a team's roster, if it is a member.
async fn roster_role(
    h: &mut Handle,
    team_id: &str,
    user_id: Option<&str>,
) -> store::Result<Option<String>> {
    match user_id {
        Some(u) => Ok(store::members::get(h, team_id, u).await?.map(|m| m.role)),
        None => Ok(None),
    }
}

/// The key's metadata as an object (anything else is replaced by `{}`), for fields the reference
/// keeps there (per-model limits, temporary budgets).
fn metadata_object(k: &mut KeyRow) -> &mut Map<String, Value> {
    if !k.metadata.0.is_object() {
        k.metadata = Json(json!({}));
    }
    k.metadata
        .0
        .as_object_mut()
        .expect("metadata was made an object above")
}

/// True when the caller is an admin of the key's team (viewers never count: they do not write).
async fn is_team_admin_of(h: &mut Handle, caller: &Caller, k: &KeyRow) -> Result<bool, Error> {
    let Some(team_id) = &k.team_id else {
        return Ok(false);
    };
    if caller.is_viewer() {
        return Ok(false);
    }
    Ok(roster_role(h, team_id, caller.user_id.as_deref())
        .await?
        .as_deref()
        == Some("admin"))
}

/// The first limit `after` loosens compared with `before`: a cap raised or removed, a model
/// list widened or cleared, an expiry pushed back or removed, a route restriction changed, a
/// budget window or per-model budget changed. Tightening (or setting a limit where none was)
/// is never loosening.
fn loosened(before: &KeyRow, after: &KeyRow) -> Option<&'static str> {
    fn cap(b: Option<i64>, a: Option<i64>) -> bool {
        matches!((b, a), (Some(_), None)) || matches!((b, a), (Some(b), Some(a)) if a > b)
    }
    if cap(before.max_budget, after.max_budget) {
        return Some("max_budget");
    }
    if cap(before.tpm_limit, after.tpm_limit) {
        return Some("tpm_limit");
    }
    if cap(before.rpm_limit, after.rpm_limit) {
        return Some("rpm_limit");
    }
    if cap(before.tpd_limit, after.tpd_limit) {
        return Some("tpd_limit");
    }
    if cap(before.max_parallel_requests, after.max_parallel_requests) {
        return Some("max_parallel_requests");
    }
    let (bm, am) = (&before.models.0, &after.models.0);
    if !bm.is_empty() && (am.is_empty() || am.iter().any(|m| !bm.contains(m))) {
        return Some("models");
    }
    match (before.expires, after.expires) {
        (Some(_), None) => return Some("duration"),
        (Some(b), Some(a)) if a > b => return Some("duration"),
        _ => {}
    }
    if !before.allowed_routes.0.is_empty() && after.allowed_routes.0 != before.allowed_routes.0 {
        return Some("allowed_routes");
    }
    if before.budget_duration.is_some() && after.budget_duration != before.budget_duration {
        return Some("budget_duration");
    }
    if let Some(f) = limits::loosened(&before.metadata.0, &after.metadata.0) {
        return Some(f);
    }
    let empty = |v: &Value| v.as_object().is_none_or(Map::is_empty);
    if !empty(&before.model_max_budget.0) && after.model_max_budget.0 != before.model_max_budget.0 {
        return Some("model_max_budget");
    }
    let windows = |k: &KeyRow| {
        k.budget_limits
            .as_ref()
            .map(|j| j.0.clone())
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    };
    if windows(before).is_some() && windows(after) != windows(before) {
        return Some("budget_limits");
    }
    None
}

fn permission_error(route: &str, team: &TeamRow) -> Error {
    let mut allowed = vec!["/key/info".to_string(), "/key/health".to_string()];
    allowed.extend(team.team_member_permissions.0.iter().cloned());
    Error::proxy(
        StatusCode::UNAUTHORIZED,
        "team_member_permission_error",
        format!(
            "Team member does not have permissions for endpoint: {route}. You only have access to the following endpoints: {allowed:?} for team {}. To create keys for this team, ask your proxy admin to grant this permission or make you a team admin.",
            team.team_id
        ),
    )
}

/// What a key minted by a non-admin caller's key may hold.
struct MintingScope {
    team_id: Option<String>,
    models: Vec<String>,
    max_budget: Option<i64>,
}

/// A virtual key mints only inside its own scope: its own team (the default), its models or
/// fewer (the default), its `max_budget` or less (the default). Proxy admins and the master key
/// are not bounded.
fn minting_scope(
    caller: &Caller,
    req: &GenerateKeyRequest,
    max_budget: Option<i64>,
) -> Result<MintingScope, Error> {
    let asked = MintingScope {
        team_id: req.team_id.clone(),
        models: req.models.clone(),
        max_budget,
    };
    let Some(own) = caller.key.as_ref().filter(|_| !caller.is_proxy_admin()) else {
        return Ok(asked);
    };
    let outside = |what: String| {
        Error::http(
            StatusCode::FORBIDDEN,
            format!("A key can only create keys inside its own scope: {what}"),
        )
    };
    let team_id = match (&own.team_id, asked.team_id) {
        (Some(mine), None) => Some(mine.clone()),
        (Some(mine), Some(t)) if &t != mine => {
            return Err(outside(format!(
                "this key belongs to team_id={mine}, requested team_id={t}"
            )));
        }
        (_, t) => t,
    };
    let mine = &own.models.0;
    let models = if mine.is_empty() {
        asked.models
    } else if asked.models.is_empty() {
        mine.clone()
    } else if let Some(m) = asked.models.iter().find(|m| !mine.contains(m)) {
        return Err(outside(format!(
            "model {m} is not in this key's models {mine:?}"
        )));
    } else {
        asked.models
    };
    let max_budget = match (own.max_budget, asked.max_budget) {
        (Some(cap), None) => Some(cap),
        (Some(cap), Some(b)) if b > cap => {
            return Err(outside(format!(
                "max_budget {} is above this key's max_budget {}",
                Nanos(b).to_usd(),
                Nanos(cap).to_usd()
            )));
        }
        (_, b) => b,
    };
    Ok(MintingScope {
        team_id,
        models,
        max_budget,
    })
}

/// Creates a key inside the open write transaction `h` and records its audit row. Applies the
/// team rules of §6.2 for callers that are not proxy admins. Returns the raw key and the row.
pub async fn generate_tx(
    h: &mut Handle,
    state: &AppState,
    caller: &Caller,
    req: &GenerateKeyRequest,
) -> Result<(String, KeyRow), Error> {
    let now = store::now();
    let max_budget = req
        .max_budget
        .map(|v| money_field("max_budget", v))
        .transpose()?;
    let soft_budget = req
        .soft_budget
        .map(|v| money_field("soft_budget", v))
        .transpose()?;
    let tpm_limit = req
        .tpm_limit
        .map(|v| limit_field("tpm_limit", v))
        .transpose()?;
    let rpm_limit = req
        .rpm_limit
        .map(|v| limit_field("rpm_limit", v))
        .transpose()?;
    let tpd_limit = req
        .tpd_limit
        .map(|v| limit_field("tpd_limit", v))
        .transpose()?;
    let parallel = req
        .max_parallel_requests
        .map(|v| limit_field("max_parallel_requests", v))
        .transpose()?;
    let expires = req
        .duration
        .as_deref()
        .map(|d| expiry(d, now))
        .transpose()?;
    let budget_reset_at = req
        .budget_duration
        .as_deref()
        .map(|d| budget_reset(d, now))
        .transpose()?;
    let key_type = key_type_field(req.key_type.as_deref().unwrap_or("default"))?;
    let allowed_routes = route_access(&key_type, &req.allowed_routes)?;
    if let Some(m) = &req.model_max_budget {
        limits::check_model_max_budget(&Value::Object(m.clone()))?;
    }
    let budget_limits = req
        .budget_limits
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(|l| crate::service::teams::budget_limits(l, now))
        .transpose()?
        .map(Json);
    let mut metadata = req.metadata.clone().unwrap_or_default();
    for (f, v) in limits::PER_MODEL_FIELDS
        .iter()
        .zip([&req.model_rpm_limit, &req.model_tpm_limit])
    {
        if let Some(m) = v {
            let m = Value::Object(m.clone());
            limits::check_per_model(f, &m)?;
            metadata.insert((*f).to_string(), m);
        }
    }
    if let Some((inc, exp)) =
        limits::temp_budget(req.temp_budget_increase, req.temp_budget_expiry.as_deref())?
    {
        metadata.insert("temp_budget_increase".into(), inc);
        metadata.insert("temp_budget_expiry".into(), exp);
    }
    if let Some(t) = &req.team_id {
        non_blank("team_id", t)?;
    }
    if let Some(u) = &req.user_id {
        non_blank("user_id", u)?;
    }
    let raw = match &req.key {
        Some(k) => {
            validate_custom_key(k).map_err(|e| bad_request(e.to_string()))?;
            if k.as_bytes() == state.settings.master_key.as_bytes() {
                return Err(bad_request("Custom key must not equal the master key"));
            }
            k.clone()
        }
        None => generate_key(),
    };

    // Non-admins create keys for themselves only (reference §6.2).
    let mut user_id = req.user_id.clone();
    if !caller.is_proxy_admin() && user_id.is_none() {
        user_id = caller.user_id.clone();
    }
    let scope = minting_scope(caller, req, max_budget)?;
    let (team_id, models, max_budget) = (scope.team_id, scope.models, scope.max_budget);
    // A team's own key (no user) mints inside its team, as the team's admin would.
    let team_service_account =
        caller.key.as_ref().is_some_and(|k| k.user_id.is_none()) && caller.user_id.is_none();

    let mut team: Option<TeamRow> = None;
    if let Some(team_id) = &team_id {
        team = store::teams::get(h, team_id).await?;
        if !caller.is_proxy_admin() {
            let Some(t) = &team else {
                return Err(bad_request(format!(
                    "Team not found for team_id={team_id}. Non-admin users cannot create keys for non-existent teams."
                )));
            };
            if let Some(u) = &req.user_id
                && store::members::get(h, team_id, u).await?.is_none()
            {
                return Err(bad_request(format!(
                    "User={u} not assigned to team={team_id}"
                )));
            }
            let role = if team_service_account {
                Some("admin".to_string())
            } else {
                roster_role(h, team_id, caller.user_id.as_deref()).await?
            };
            match role.as_deref() {
                None => {
                    return Err(bad_request(format!(
                        "User={} not assigned to team={team_id}",
                        caller.user_id.as_deref().unwrap_or("None")
                    )));
                }
                Some("admin") => {}
                Some(_) => {
                    if !t
                        .team_member_permissions
                        .0
                        .iter()
                        .any(|p| p == "/key/generate")
                    {
                        return Err(permission_error("/key/generate", t));
                    }
                }
            }
        }
    }
    if !caller.is_proxy_admin() && user_id.is_some() && user_id != caller.user_id {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            format!(
                "Non-admin users can only create keys for themselves. Your user_id={}, requested user_id={}",
                caller.user_id.as_deref().unwrap_or("None"),
                user_id.as_deref().unwrap_or("None")
            ),
        ));
    }
    if let Some(t) = &team {
        check_models_in_team(&models, t)?;
    }

    let by = caller.changed_by();
    let row = KeyRow {
        token: hash_key(&raw),
        key_name: Some(key_name(&raw)),
        key_alias: req.key_alias.clone(),
        spend: 0,
        expires,
        models: Json(models),
        aliases: Json(Value::Object(req.aliases.clone().unwrap_or_default())),
        config: Json(Value::Object(req.config.clone().unwrap_or_default())),
        permissions: Json(Value::Object(req.permissions.clone().unwrap_or_default())),
        metadata: Json(Value::Object(metadata)),
        user_id,
        team_id,
        organization_id: req
            .organization_id
            .clone()
            .or_else(|| team.as_ref().and_then(|t| t.organization_id.clone())),
        budget_id: req.budget_id.clone(),
        max_parallel_requests: parallel,
        tpm_limit,
        rpm_limit,
        max_budget,
        soft_budget,
        budget_duration: req.budget_duration.clone(),
        budget_reset_at,
        blocked: req.blocked,
        allowed_routes: Json(allowed_routes),
        key_type: Some(key_type),
        model_max_budget: Json(Value::Object(
            req.model_max_budget.clone().unwrap_or_default(),
        )),
        model_spend: Json(json!({})),
        rotation_count: 0,
        last_rotation_at: None,
        created_at: now,
        created_by: Some(by.clone()),
        updated_at: now,
        updated_by: Some(by),
        tpd_limit,
        budget_limits,
        soft_budget_cooldown: false,
    };
    store::keys::insert(h, &row).await.map_err(|e| {
        if store::is_unique_violation(&e) {
            Error::http(
                StatusCode::CONFLICT,
                "Key with this value already exists. Use a different key.",
            )
        } else {
            e.into()
        }
    })?;
    audit::record(
        h,
        caller,
        action::CREATED,
        table::KEY,
        &row.token,
        None,
        Some(views::key_json(&row, false)),
    )
    .await?;
    Ok((raw, row))
}

/// `GenerateKeyResponse`: the request echo, the raw `key` (shown once) and the stored row.
pub fn generate_response(raw: Option<&str>, k: &KeyRow, duration: Option<&str>) -> Value {
    json!({
        "key_alias": k.key_alias,
        "duration": duration,
        "models": k.models.0,
        "spend": views::usd(k.spend),
        "max_budget": views::usd_opt(k.max_budget),
        "soft_budget": views::usd_opt(k.soft_budget),
        "user_id": k.user_id,
        "team_id": k.team_id,
        "agent_id": null,
        "max_parallel_requests": k.max_parallel_requests,
        "metadata": k.metadata.0,
        "tpm_limit": k.tpm_limit,
        "rpm_limit": k.rpm_limit,
        "budget_duration": k.budget_duration,
        "budget_reset_at": views::ts_opt(k.budget_reset_at),
        "budget_limits": k.budget_limits.as_ref().map(|j| &j.0),
        "allowed_cache_controls": [],
        "config": k.config.0,
        "permissions": k.permissions.0,
        "model_max_budget": k.model_max_budget.0,
        "budget_fallbacks": {},
        "model_rpm_limit": k.metadata.0.get("model_rpm_limit"),
        "model_tpm_limit": k.metadata.0.get("model_tpm_limit"),
        "mcp_rpm_limit": null,
        "tag_rpm_limit": null,
        "guardrails": null,
        "policies": null,
        "prompts": null,
        "blocked": k.blocked,
        "aliases": k.aliases.0,
        "object_permission": null,
        "key": raw,
        "tpd_limit": k.tpd_limit,
        "default_estimated_output_tokens": null,
        "default_estimated_output_tokens_per_model": null,
        "budget_id": k.budget_id,
        "end_user_budget_id": null,
        "tags": null,
        "disable_global_guardrails": null,
        "enable_prompt_caching": null,
        "throttle_on_budget_exceeded": null,
        "enforced_params": null,
        "allowed_routes": k.allowed_routes.0,
        "allowed_passthrough_routes": null,
        "denied_passthrough_routes": null,
        "allowed_vector_store_indexes": null,
        "rpm_limit_type": null,
        "tpm_limit_type": null,
        "router_settings": {},
        "access_group_ids": [],
        "key_name": k.key_name,
        "key_type": k.key_type,
        "expires": views::ts_opt(k.expires),
        "token_id": k.token,
        "organization_id": k.organization_id,
        "project_id": null,
        "litellm_budget_table": null,
        "token": k.token,
        "rotation_count": k.rotation_count,
        "last_rotation_at": views::ts_opt(k.last_rotation_at),
        "created_by": k.created_by,
        "updated_by": k.updated_by,
        "created_at": views::ts(k.created_at),
        "updated_at": views::ts(k.updated_at),
    })
}

/// Looks a key up by raw key or hash.
pub async fn find(h: &mut Handle, raw_or_hash: &str) -> store::Result<Option<KeyRow>> {
    if raw_or_hash.is_empty() {
        return Ok(None);
    }
    store::keys::get(h, &token_of(raw_or_hash)).await
}

pub fn key_not_found() -> Error {
    Error::proxy(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "Key not found in database",
    )
}

fn is_own(caller: &Caller, k: &KeyRow) -> bool {
    caller.key.as_ref().is_some_and(|c| c.token == k.token)
        || (caller.user_id.is_some() && k.user_id == caller.user_id)
}

/// Read access (`/key/info`): proxy admins and viewers, the key itself, its owner, or an admin
/// of the key's team.
pub async fn authorize_read(h: &mut Handle, caller: &Caller, k: &KeyRow) -> Result<(), Error> {
    if caller.can_read_all() || is_own(caller, k) {
        return Ok(());
    }
    if let Some(team_id) = &k.team_id
        && roster_role(h, team_id, caller.user_id.as_deref())
            .await?
            .as_deref()
            == Some("admin")
    {
        return Ok(());
    }
    Err(Error::http(
        StatusCode::FORBIDDEN,
        format!(
            "You are not allowed to access this key's info. Your role={}",
            caller.role.as_str()
        ),
    ))
}

/// Write access for `route` (`/key/update`, `/key/delete`, `/key/regenerate`): proxy admins, the
/// key itself, its owner, an admin of the key's team, or a team member whose team grants `route`
/// in `team_member_permissions` (§2.5); a member without it gets 401 team_member_permission_error.
pub async fn authorize_write(
    h: &mut Handle,
    caller: &Caller,
    k: &KeyRow,
    route: &str,
) -> Result<(), Error> {
    if caller.is_proxy_admin() {
        return Ok(());
    }
    if caller.is_viewer() {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            format!(
                "Viewers cannot modify keys. Your role={}",
                caller.role.as_str()
            ),
        ));
    }
    if is_own(caller, k) {
        return Ok(());
    }
    if let Some(team_id) = &k.team_id {
        match roster_role(h, team_id, caller.user_id.as_deref())
            .await?
            .as_deref()
        {
            Some("admin") => return Ok(()),
            Some(_) => {
                if let Some(t) = store::teams::get(h, team_id).await? {
                    if t.team_member_permissions.0.iter().any(|p| p == route) {
                        return Ok(());
                    }
                    return Err(permission_error(route, &t));
                }
            }
            None => {}
        }
    }
    Err(Error::http(
        StatusCode::FORBIDDEN,
        format!(
            "You are not allowed to modify this key. Only its owner, an admin of its team or a proxy admin may. Your role={}",
            caller.role.as_str()
        ),
    ))
}

/// Applies an update request to `k` (validating every sent field) in the open transaction and
/// records the audit row. Returns the new row; the caller evicts `k.token` after commit.
pub async fn update_tx(
    h: &mut Handle,
    caller: &Caller,
    req: &UpdateKeyRequest,
) -> Result<(KeyRow, KeyRow), Error> {
    let Some(before) = find(h, &req.key).await? else {
        return Err(key_not_found());
    };
    authorize_write(h, caller, &before, "/key/update").await?;
    let now = store::now();
    let mut k = before.clone();
    if let Some(v) = req.key_alias.as_update() {
        k.key_alias = v.cloned();
    }
    if let Some(v) = req.duration.as_update() {
        k.expires = v.map(|d| expiry(d, now)).transpose()?;
    }
    if let Some(v) = req.models.as_update() {
        k.models = Json(v.cloned().unwrap_or_default());
    }
    if let Some(v) = req.max_budget.as_update() {
        k.max_budget = v.map(|x| money_field("max_budget", *x)).transpose()?;
    }
    if let Some(v) = req.soft_budget.as_update() {
        k.soft_budget = v.map(|x| money_field("soft_budget", *x)).transpose()?;
    }
    if let Some(v) = req.budget_limits.as_update() {
        k.budget_limits = match v.filter(|l| !l.is_empty()) {
            Some(l) => Some(Json(crate::service::teams::budget_limits(l, store::now())?)),
            None => None,
        };
    }
    if let Some(v) = req.tpd_limit.as_update() {
        k.tpd_limit = v.map(|x| limit_field("tpd_limit", *x)).transpose()?;
    }
    if let Some(v) = req.tpm_limit.as_update() {
        k.tpm_limit = v.map(|x| limit_field("tpm_limit", *x)).transpose()?;
    }
    if let Some(v) = req.rpm_limit.as_update() {
        k.rpm_limit = v.map(|x| limit_field("rpm_limit", *x)).transpose()?;
    }
    if let Some(v) = req.max_parallel_requests.as_update() {
        k.max_parallel_requests = v
            .map(|x| limit_field("max_parallel_requests", *x))
            .transpose()?;
    }
    if let Some(v) = req.budget_duration.as_update() {
        // Re-sending the same duration keeps the running period (reference bug §10 #24).
        if v.map(String::as_str) != before.budget_duration.as_deref() {
            k.budget_reset_at = v.map(|d| budget_reset(d, now)).transpose()?;
            k.budget_duration = v.cloned();
        }
    }
    let obj = |v: Option<&Map<String, Value>>| Json(Value::Object(v.cloned().unwrap_or_default()));
    if let Some(v) = req.metadata.as_update() {
        k.metadata = obj(v);
    }
    for (f, v) in limits::PER_MODEL_FIELDS
        .iter()
        .zip([&req.model_rpm_limit, &req.model_tpm_limit])
    {
        match v.as_update() {
            None => {}
            Some(None) => {
                metadata_object(&mut k).remove(*f);
            }
            Some(Some(m)) => {
                let m = Value::Object(m.clone());
                limits::check_per_model(f, &m)?;
                metadata_object(&mut k).insert((*f).to_string(), m);
            }
        }
    }
    match (
        req.temp_budget_increase.as_update(),
        req.temp_budget_expiry.as_update(),
    ) {
        (None, None) => {}
        (Some(None), Some(None)) => {
            let md = metadata_object(&mut k);
            md.remove("temp_budget_increase");
            md.remove("temp_budget_expiry");
        }
        (inc, exp) => {
            let (inc, exp) =
                limits::temp_budget(inc.flatten().copied(), exp.flatten().map(String::as_str))?
                    .ok_or_else(|| {
                        bad_request(
                            "temp_budget_increase and temp_budget_expiry must be set together",
                        )
                    })?;
            let md = metadata_object(&mut k);
            md.insert("temp_budget_increase".into(), inc);
            md.insert("temp_budget_expiry".into(), exp);
        }
    }
    if let Some(v) = req.config.as_update() {
        k.config = obj(v);
    }
    if let Some(v) = req.permissions.as_update() {
        k.permissions = obj(v);
    }
    if let Some(v) = req.model_max_budget.as_update() {
        k.model_max_budget = obj(v);
        limits::check_model_max_budget(&k.model_max_budget.0)?;
    }
    if let Some(v) = req.aliases.as_update() {
        k.aliases = obj(v);
    }
    if let Some(v) = req.blocked.as_update() {
        // Unblocking is `/key/unblock`'s job (proxy admins); an owner may only block.
        if !caller.is_proxy_admin() && v != Some(&true) && before.blocked == Some(true) {
            return Err(Error::http(
                StatusCode::FORBIDDEN,
                "Only proxy admins can unblock a key. Use /key/unblock.",
            ));
        }
        k.blocked = v.copied();
    }
    if req.allowed_routes.as_update().is_some() || req.key_type.as_update().is_some() {
        if let Some(v) = req.key_type.as_update() {
            k.key_type = v.map(|t| key_type_field(t)).transpose()?;
        }
        let kt = k.key_type.as_deref().unwrap_or("default");
        k.allowed_routes = Json(match req.allowed_routes.as_update() {
            Some(sent) => route_access(kt, sent.map(Vec::as_slice).unwrap_or_default())?,
            // A new key_type alone replaces the group the old one set (none for `default`).
            None => {
                let old_group = routes::for_key_type(before.key_type.as_deref().unwrap_or(""));
                let kept = match old_group {
                    Some(g) if before.allowed_routes.0 == [g] => Vec::new(),
                    _ => before.allowed_routes.0.clone(),
                };
                match routes::for_key_type(kt) {
                    Some(g) => vec![g.to_string()],
                    None => kept,
                }
            }
        });
    }
    if let Some(field) = loosened(&before, &k)
        && !caller.is_proxy_admin()
        && !is_team_admin_of(h, caller, &before).await?
    {
        return Err(Error::http(
            StatusCode::FORBIDDEN,
            format!(
                "Only a proxy admin or an admin of the key's team can raise or remove {field} on this key; its owner may only tighten it."
            ),
        ));
    }
    if let Some(v) = req.user_id.as_update() {
        if let Some(u) = v {
            non_blank("user_id", u)?;
        }
        if !caller.is_proxy_admin() && v.map(String::as_str) != before.user_id.as_deref() {
            return Err(Error::http(
                StatusCode::FORBIDDEN,
                "Only proxy admins can change the user_id of a key",
            ));
        }
        k.user_id = v.cloned();
    }
    if let Some(v) = req.team_id.as_update() {
        if let Some(t) = v {
            non_blank("team_id", t)?;
        }
        if !caller.is_proxy_admin() && v.map(String::as_str) != before.team_id.as_deref() {
            return Err(Error::http(
                StatusCode::FORBIDDEN,
                "Only proxy admins can move a key to another team",
            ));
        }
        k.team_id = v.cloned();
    }
    // The post-update model list is checked against the post-update team (§10 #18).
    if let Some(team_id) = &k.team_id
        && (req.models.is_present() || req.team_id.is_present())
        && let Some(team) = store::teams::get(h, team_id).await?
    {
        check_models_in_team(&k.models.0, &team)?;
    }
    k.updated_at = now;
    k.updated_by = Some(caller.changed_by());
    store::keys::update(h, &before.token, &k).await?;
    audit::record(
        h,
        caller,
        action::UPDATED,
        table::KEY,
        &k.token,
        Some(views::key_json(&before, false)),
        Some(views::key_json(&k, false)),
    )
    .await?;
    Ok((before, k))
}

/// Sets `blocked` on a key and records `blocked`/`unblocked`. Returns the new row.
pub async fn set_blocked_tx(
    h: &mut Handle,
    caller: &Caller,
    raw_or_hash: &str,
    blocked: bool,
) -> Result<KeyRow, Error> {
    let Some(before) = find(h, raw_or_hash).await? else {
        return Err(key_not_found());
    };
    let mut k = before.clone();
    k.blocked = Some(blocked);
    k.updated_at = store::now();
    k.updated_by = Some(caller.changed_by());
    store::keys::update(h, &before.token, &k).await?;
    audit::record(
        h,
        caller,
        if blocked {
            action::BLOCKED
        } else {
            action::UNBLOCKED
        },
        table::KEY,
        &k.token,
        Some(views::key_json(&before, false)),
        Some(views::key_json(&k, false)),
    )
    .await?;
    Ok(k)
}

/// Replaces a key's secret: the old hash stops matching at once (same row, new primary key),
/// `rotation_count` grows by one. Returns (old token, new raw key, new row).
pub async fn regenerate_tx(
    h: &mut Handle,
    state: &AppState,
    caller: &Caller,
    raw_or_hash: &str,
    new_key: Option<&str>,
) -> Result<(String, String, KeyRow), Error> {
    let Some(before) = find(h, raw_or_hash).await? else {
        return Err(key_not_found());
    };
    authorize_write(h, caller, &before, "/key/regenerate").await?;
    let raw = match new_key {
        Some(k) => {
            validate_custom_key(k).map_err(|e| bad_request(e.to_string()))?;
            if k.as_bytes() == state.settings.master_key.as_bytes() {
                return Err(bad_request("Custom key must not equal the master key"));
            }
            k.to_string()
        }
        None => generate_key(),
    };
    let now = store::now();
    let mut k = before.clone();
    k.token = hash_key(&raw);
    k.key_name = Some(key_name(&raw));
    k.rotation_count += 1;
    k.last_rotation_at = Some(now);
    k.updated_at = now;
    k.updated_by = Some(caller.changed_by());
    store::keys::update(h, &before.token, &k)
        .await
        .map_err(|e| {
            if store::is_unique_violation(&e) {
                Error::http(
                    StatusCode::CONFLICT,
                    "Key with this value already exists. Use a different key.",
                )
            } else {
                e.into()
            }
        })?;
    audit::record(
        h,
        caller,
        action::ROTATED,
        table::KEY,
        &k.token,
        Some(json!({"key_name": before.key_name, "rotation_count": before.rotation_count})),
        Some(json!({"key_name": k.key_name, "rotation_count": k.rotation_count})),
    )
    .await?;
    Ok((before.token, raw, k))
}

/// Deletes the named keys (raw or hash) and keys with the named aliases, all or nothing.
/// Returns the deleted tokens for cache eviction.
pub async fn delete_tx(
    h: &mut Handle,
    caller: &Caller,
    keys: &[String],
    aliases: &[String],
) -> Result<Vec<String>, Error> {
    let mut rows: Vec<KeyRow> = Vec::new();
    for k in keys {
        match find(h, k).await? {
            Some(r) => rows.push(r),
            None => {
                return Err(Error::http(
                    StatusCode::NOT_FOUND,
                    format!(
                        "Key not found in database: {}. Nothing was deleted.",
                        purser_core::keys::abbreviate(k)
                    ),
                ));
            }
        }
    }
    for a in aliases {
        let found = store::keys::find_by_alias(h, a).await?;
        if found.is_empty() {
            return Err(Error::http(
                StatusCode::NOT_FOUND,
                format!("No key found with key_alias={a}. Nothing was deleted."),
            ));
        }
        rows.extend(found);
    }
    let mut tokens: Vec<String> = Vec::new();
    for r in rows {
        if tokens.contains(&r.token) {
            continue;
        }
        authorize_write(h, caller, &r, "/key/delete").await?;
        store::keys::delete(h, &r.token).await?;
        audit::record(
            h,
            caller,
            action::DELETED,
            table::KEY,
            &r.token,
            Some(views::key_json(&r, false)),
            None,
        )
        .await?;
        tokens.push(r.token);
    }
    Ok(tokens)
}

// ------------------------------------------------------------------------------------------
// Route use cases: each write is one transaction, and the changed tokens are evicted from the
// cache after commit and before the handler answers.
// ------------------------------------------------------------------------------------------

/// `POST /key/generate`: returns the raw key (shown once) and the stored row.
pub async fn generate(
    state: &AppState,
    caller: &Caller,
    req: &GenerateKeyRequest,
) -> Result<(String, KeyRow), Error> {
    let mut h = Write::begin(state).await?;
    let (raw, row) = generate_tx(&mut h, state, caller, req).await?;
    // A negative cache entry for this hash may exist (someone tried the key before it existed).
    h.key(&row.token);
    h.commit().await?;
    Ok((raw, row))
}

/// `GET /key/info`: the named key (raw or hash), else the caller's own; returns the key as the
/// caller named it, the row and its spend forecast.
pub async fn info(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
) -> Result<(String, KeyRow, Value), Error> {
    let mut h = state.db.conn().await?;
    let (shown, row) = match key {
        Some(k) => (k.to_string(), find(&mut h, k).await?),
        None => match &caller.key {
            Some(own) => (
                own.token.clone(),
                store::keys::get(&mut h, &own.token).await?,
            ),
            None => return Err(key_not_found()),
        },
    };
    let Some(row) = row else {
        return Err(key_not_found());
    };
    authorize_read(&mut h, caller, &row).await?;
    let forecast = crate::service::forecast::spend_forecast(
        state,
        &mut h,
        crate::service::forecast::Subject {
            column: store::spend::SpendColumn::ApiKey,
            id: &row.token,
            scope: crate::service::spend::SpendScope::Key(row.token.clone()),
            created_at: row.created_at,
            spend: row.spend,
            max_budget: row.max_budget,
            budget_reset_at: row.budget_reset_at,
        },
    )
    .await?;
    Ok((shown, row, forecast))
}

/// `GET /key/list`: one page of keys and the total. Callers that cannot read everything only
/// ever list their own keys; asking for another user's is a 403, and a caller without a user
/// has none.
pub async fn list(
    state: &AppState,
    caller: &Caller,
    mut filter: KeyFilter,
    page: Page,
) -> Result<(Vec<KeyRow>, i64), Error> {
    if !caller.can_read_all() {
        match (&filter.user_id, &caller.user_id) {
            (Some(asked), Some(own)) if asked != own => {
                return Err(Error::http(
                    StatusCode::FORBIDDEN,
                    format!("Only admins can list other users' keys. Your user_id={own}"),
                ));
            }
            (_, Some(own)) => filter.user_id = Some(own.clone()),
            (_, None) => return Ok((Vec::new(), 0)),
        }
    }
    let mut h = state.db.conn().await?;
    let offset = (page.number - 1) * page.size;
    Ok(store::keys::list(&mut h, &filter, page.size, offset).await?)
}

/// `POST /key/update`: returns the updated row.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    req: &UpdateKeyRequest,
) -> Result<KeyRow, Error> {
    let mut h = Write::begin(state).await?;
    let (before, after) = update_tx(&mut h, caller, req).await?;
    h.key(&before.token);
    h.commit().await?;
    Ok(after)
}

/// `POST /key/delete`: all or nothing; deleted keys forget their spend counters.
pub async fn delete(
    state: &AppState,
    caller: &Caller,
    keys: &[String],
    aliases: &[String],
) -> Result<(), Error> {
    if keys.is_empty() && aliases.is_empty() {
        return Err(bad_request("Either keys or key_aliases must be provided"));
    }
    let mut h = Write::begin(state).await?;
    let tokens = delete_tx(&mut h, caller, keys, aliases).await?;
    for t in &tokens {
        h.key(t);
        // A custom key re-created later hashes to the same token: it starts from zero.
        h.spend_zeroed(SpendScope::Key(t.clone()));
    }
    h.commit().await?;
    Ok(())
}

/// `POST /key/block` and `/key/unblock`: returns the new row.
pub async fn set_blocked(
    state: &AppState,
    caller: &Caller,
    key: &str,
    blocked: bool,
) -> Result<KeyRow, Error> {
    let mut h = Write::begin(state).await?;
    let row = set_blocked_tx(&mut h, caller, key, blocked).await?;
    h.key(&row.token);
    h.commit().await?;
    Ok(row)
}

/// `POST /key/regenerate` and `/key/{key}/regenerate`: returns the new raw key (shown once) and
/// the row; both the old and the new token are evicted.
pub async fn regenerate(
    state: &AppState,
    caller: &Caller,
    key: &str,
    new_key: Option<&str>,
) -> Result<(String, KeyRow), Error> {
    // Spend follows the key: the spend writer is held off while the row changes token, then
    // the counter, the unwritten costs and the calls in flight move to the new token, so a key
    // cannot shed its spend by regenerating itself.
    let spend_write = state.ledger.spend_write().await;
    let mut h = Write::begin(state).await?;
    let (old, raw, row) = regenerate_tx(&mut h, state, caller, key, new_key).await?;
    h.key(&old);
    h.key(&row.token);
    h.commit().await?;
    spend_write.rename(
        &SpendScope::Key(old.clone()),
        &SpendScope::Key(row.token.clone()),
    );
    drop(spend_write);
    crate::service::write::after_commit(
        state,
        &[crate::service::write::Changed::KeyRenamed {
            from: old,
            to: row.token.clone(),
        }],
    )
    .await;
    Ok((raw, row))
}
