//! Wire rendering of rows into LiteLLM's JSON objects (`LiteLLM_TeamTable`, `LiteLLM_UserTable`,
//! key rows, memberships, budgets). Invariant: money leaves as f64 dollars and times as
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ` only here; key hashes appear only where a caller needs the id.

use chrono::{DateTime, SecondsFormat, Utc};
use purser_core::money::Nanos;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use crate::store::budgets::BudgetRow;
use crate::store::keys::KeyRow;
use crate::store::members::MembershipRow;
use crate::store::models::ModelTableRow;
use crate::store::teams::TeamRow;
use crate::store::users::UserRow;

/// A timestamp as LiteLLM prints it (`2026-11-27T09:42:56.196000Z`). chrono's fixed RFC 3339
/// writer, not a `format` string that would be re-parsed for every timestamp of a listing.
pub fn ts_string(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn ts(t: DateTime<Utc>) -> Value {
    Value::String(ts_string(t))
}

pub fn ts_opt(t: Option<DateTime<Utc>>) -> Value {
    t.map(ts).unwrap_or(Value::Null)
}

/// Nano-USD as JSON dollars.
pub fn usd(n: i64) -> Value {
    json!(Nanos(n).to_usd())
}

pub fn usd_opt(n: Option<i64>) -> Value {
    n.map(usd).unwrap_or(Value::Null)
}

/// A roster entry of `members_with_roles`.
pub fn member_json(m: &MembershipRow) -> Value {
    json!({ "user_id": m.user_id, "user_email": m.user_email, "role": m.role })
}

/// `LiteLLM_BudgetTable`.
pub fn budget_json(b: &BudgetRow) -> Value {
    json!({
        "budget_id": b.budget_id,
        "soft_budget": usd_opt(b.soft_budget),
        "max_budget": usd_opt(b.max_budget),
        "max_parallel_requests": b.max_parallel_requests,
        "tpm_limit": b.tpm_limit,
        "rpm_limit": b.rpm_limit,
        "tpd_limit": b.tpd_limit,
        "model_max_budget": b.model_max_budget.as_ref().map(|j| j.0.clone()),
        "budget_duration": b.budget_duration,
        "budget_reset_at": ts_opt(b.budget_reset_at),
        "allowed_models": b.allowed_models.0,
        "temp_budget_increase": usd_opt(b.temp_budget_increase),
        "temp_budget_expiry": ts_opt(b.temp_budget_expiry),
        "created_at": ts(b.created_at),
        "created_by": b.created_by,
        "updated_at": ts(b.updated_at),
        "updated_by": b.updated_by,
    })
}

/// `LiteLLM_TeamMembership` with its budget row.
pub fn membership_json(m: &MembershipRow, budget: Option<&BudgetRow>) -> Value {
    json!({
        "user_id": m.user_id,
        "team_id": m.team_id,
        "budget_id": m.budget_id,
        "spend": usd(m.spend),
        "total_spend": usd(m.total_spend.max(m.spend)),
        "litellm_budget_table": budget.map(budget_json),
    })
}

/// `LiteLLM_ModelTable` as embedded in teams (`litellm_model_table`).
pub fn model_table_json(m: &ModelTableRow) -> Value {
    json!({
        "id": m.id,
        "model_aliases": m.aliases.0,
        "created_by": m.created_by,
        "updated_by": m.updated_by,
        "created_at": ts(m.created_at),
        "updated_at": ts(m.updated_at),
    })
}

/// `LiteLLM_TeamTable`: the team row with the roster derived from its memberships.
pub fn team_json(
    t: &TeamRow,
    roster: &[MembershipRow],
    model_table: Option<&ModelTableRow>,
) -> Value {
    json!({
        "team_alias": t.team_alias,
        "team_id": t.team_id,
        "organization_id": t.organization_id,
        "admins": [],
        "members": [],
        "members_with_roles": roster.iter().map(member_json).collect::<Vec<_>>(),
        "team_member_permissions": t.team_member_permissions.0,
        "metadata": t.metadata.0,
        "tpm_limit": t.tpm_limit,
        "rpm_limit": t.rpm_limit,
        "tpd_limit": t.tpd_limit,
        "max_budget": usd_opt(t.max_budget),
        "soft_budget": usd_opt(t.soft_budget),
        "budget_duration": t.budget_duration,
        "budget_limits": t.budget_limits.as_ref().map(|j| j.0.clone()),
        "models": t.models.0,
        "blocked": t.blocked,
        "router_settings": t.router_settings.0,
        "access_group_ids": t.access_group_ids.0,
        "default_team_member_models": t.default_team_member_models.0,
        "spend": usd(t.spend),
        "max_parallel_requests": t.max_parallel_requests,
        "budget_reset_at": ts_opt(t.budget_reset_at),
        "model_id": t.model_id,
        "model_spend": t.model_spend.0,
        "model_max_budget": t.model_max_budget.0,
        "policies": t.policies.0,
        "allow_team_guardrail_config": false,
        "litellm_model_table": model_table.map(model_table_json),
        "object_permission": null,
        "object_permission_id": null,
        "updated_at": ts(t.updated_at),
        "created_at": ts(t.created_at),
    })
}

/// `LiteLLM_UserTable` (password never stored, never returned); `teams` is derived from memberships.
pub fn user_json(u: &UserRow, teams: &[String]) -> Value {
    json!({
        "user_id": u.user_id,
        "user_alias": u.user_alias,
        "team_id": null,
        "sso_user_id": u.sso_user_id,
        "organization_id": u.organization_id,
        "object_permission_id": null,
        "teams": teams,
        "user_role": u.user_role,
        "max_budget": usd_opt(u.max_budget),
        "spend": usd(u.spend),
        "user_email": u.user_email,
        "models": u.models.0,
        "metadata": u.metadata.0,
        "max_parallel_requests": u.max_parallel_requests,
        "tpm_limit": u.tpm_limit,
        "rpm_limit": u.rpm_limit,
        "budget_duration": u.budget_duration,
        "budget_reset_at": ts_opt(u.budget_reset_at),
        "allowed_cache_controls": [],
        "policies": [],
        "model_spend": u.model_spend.0,
        "model_max_budget": u.model_max_budget.0,
        "created_at": ts(u.created_at),
        "updated_at": ts(u.updated_at),
        "organization_memberships": null,
        "object_permission": null,
    })
}

/// Status of a key as `/key/info` reports it.
pub fn key_status(k: &KeyRow, now: DateTime<Utc>) -> &'static str {
    match k.expires {
        Some(e) if e < now => "expired",
        _ => "active",
    }
}

/// A key row as `/key/info` and `/key/list` show it. `with_token` adds the hash (`token`), which
/// only the key's managers see; `/team/info` never includes it.
pub fn key_json(k: &KeyRow, with_token: bool) -> Value {
    serde_json::to_value(KeyView::new(k, with_token)).unwrap_or(Value::Null)
}

/// A timestamp serialised as LiteLLM prints it, without an intermediate `String`.
pub struct Ts(pub DateTime<Utc>);

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts_string(self.0))
    }
}

/// `{}`.
pub struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

/// The key object of `/key/info` borrowed from its row, serialised straight to the response
/// (large listings such as `/team/info` of a team with thousands of keys build no `Value` tree).
#[derive(Serialize)]
pub struct KeyView<'a> {
    key_name: &'a Option<String>,
    key_alias: &'a Option<String>,
    soft_budget_cooldown: bool,
    spend: f64,
    total_spend: f64,
    expires: Option<Ts>,
    models: &'a [String],
    aliases: &'a Value,
    config: &'a Value,
    router_settings: EmptyObject,
    user_id: &'a Option<String>,
    team_id: &'a Option<String>,
    agent_id: (),
    project_id: (),
    permissions: &'a Value,
    max_parallel_requests: Option<i64>,
    metadata: &'a Value,
    blocked: Option<bool>,
    tpm_limit: Option<i64>,
    rpm_limit: Option<i64>,
    tpd_limit: Option<i64>,
    max_budget: Option<f64>,
    soft_budget: Option<f64>,
    budget_duration: &'a Option<String>,
    budget_reset_at: Option<Ts>,
    allowed_cache_controls: [(); 0],
    allowed_routes: &'a [String],
    key_type: &'a Option<String>,
    policies: [(); 0],
    access_group_ids: [(); 0],
    model_spend: &'a Value,
    model_max_budget: &'a Value,
    budget_fallbacks: EmptyObject,
    budget_id: &'a Option<String>,
    organization_id: &'a Option<String>,
    object_permission_id: (),
    created_at: Ts,
    created_by: &'a Option<String>,
    updated_at: Ts,
    updated_by: &'a Option<String>,
    settings_updated_at: (),
    last_active: (),
    rotation_count: i64,
    auto_rotate: bool,
    rotation_interval: (),
    last_rotation_at: Option<Ts>,
    key_rotation_at: (),
    budget_limits: Option<&'a Value>,
    litellm_budget_table: (),
    litellm_organization_table: (),
    litellm_project_table: (),
    object_permission: (),
    jwt_key_mappings: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

impl<'a> KeyView<'a> {
    pub fn new(k: &'a KeyRow, with_token: bool) -> KeyView<'a> {
        let dollars = |n: i64| Nanos(n).to_usd();
        KeyView {
            key_name: &k.key_name,
            key_alias: &k.key_alias,
            soft_budget_cooldown: k.soft_budget_cooldown,
            spend: dollars(k.spend),
            total_spend: dollars(k.spend),
            expires: k.expires.map(Ts),
            models: &k.models.0,
            aliases: &k.aliases.0,
            config: &k.config.0,
            router_settings: EmptyObject,
            user_id: &k.user_id,
            team_id: &k.team_id,
            agent_id: (),
            project_id: (),
            permissions: &k.permissions.0,
            max_parallel_requests: k.max_parallel_requests,
            metadata: &k.metadata.0,
            blocked: k.blocked,
            tpm_limit: k.tpm_limit,
            rpm_limit: k.rpm_limit,
            tpd_limit: k.tpd_limit,
            max_budget: k.max_budget.map(dollars),
            soft_budget: k.soft_budget.map(dollars),
            budget_duration: &k.budget_duration,
            budget_reset_at: k.budget_reset_at.map(Ts),
            allowed_cache_controls: [],
            allowed_routes: &k.allowed_routes.0,
            key_type: &k.key_type,
            policies: [],
            access_group_ids: [],
            model_spend: &k.model_spend.0,
            model_max_budget: &k.model_max_budget.0,
            budget_fallbacks: EmptyObject,
            budget_id: &k.budget_id,
            organization_id: &k.organization_id,
            object_permission_id: (),
            created_at: Ts(k.created_at),
            created_by: &k.created_by,
            updated_at: Ts(k.updated_at),
            updated_by: &k.updated_by,
            settings_updated_at: (),
            last_active: (),
            rotation_count: k.rotation_count,
            auto_rotate: false,
            rotation_interval: (),
            last_rotation_at: k.last_rotation_at.map(Ts),
            key_rotation_at: (),
            budget_limits: k.budget_limits.as_ref().map(|j| &j.0),
            litellm_budget_table: (),
            litellm_organization_table: (),
            litellm_project_table: (),
            object_permission: (),
            jwt_key_mappings: (),
            token: with_token.then_some(k.token.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_view_renders_the_litellm_key_object() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T09:42:56.196Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut k = KeyRow::new("abc".into(), now);
        k.max_budget = Some(5_000_000_000);
        let v = key_json(&k, false);
        assert_eq!(v["max_budget"], json!(5.0));
        assert_eq!(v["created_at"], json!("2026-11-27T09:42:56.196000Z"));
        // Sub-microsecond digits are cut, whole seconds keep six zeros.
        let nanos = now + chrono::Duration::nanoseconds(123_999);
        assert_eq!(ts_string(nanos), "2026-11-27T09:42:56.196123Z");
        let whole = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ts(whole), json!("2026-01-02T03:04:05.000000Z"));
        assert_eq!(v["router_settings"], json!({}));
        assert_eq!(v["policies"], json!([]));
        assert_eq!(v["agent_id"], Value::Null);
        assert!(v.get("token").is_none());
        assert_eq!(key_json(&k, true)["token"], "abc");
        assert_eq!(v.as_object().unwrap().keys().next().unwrap(), "key_name");
    }
}
