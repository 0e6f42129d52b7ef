//! `verification_tokens`: virtual keys (LiteLLM_VerificationToken). `token` is the lowercase
//! sha256 hex of the raw key; the raw key is never stored.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub token: String,
    pub key_name: Option<String>,
    pub key_alias: Option<String>,
    pub spend: i64,
    pub expires: Option<DateTime<Utc>>,
    pub models: Json<Vec<String>>,
    pub aliases: Json<Value>,
    pub config: Json<Value>,
    pub permissions: Json<Value>,
    pub metadata: Json<Value>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub organization_id: Option<String>,
    pub budget_id: Option<String>,
    pub max_parallel_requests: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub max_budget: Option<i64>,
    pub soft_budget: Option<i64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub blocked: Option<bool>,
    pub allowed_routes: Json<Vec<String>>,
    pub key_type: Option<String>,
    pub model_max_budget: Json<Value>,
    pub model_spend: Json<Value>,
    pub rotation_count: i64,
    pub last_rotation_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Option<String>,
    /// `tpd_limit`: tokens per UTC day (migration 0005).
    pub tpd_limit: Option<i64>,
    /// `budget_limits`: extra budget windows (migration 0006).
    pub budget_limits: Option<Json<Value>>,
    /// Set once per budget period when the spend reaches `soft_budget` (migration 0005). Read
    /// only: it is written by [`claim_soft_budget_cooldown`] and the reset job, never by the
    /// full-row INSERT/UPDATE, so a management write cannot clear a crossing it did not see.
    #[sqlx(default)]
    pub soft_budget_cooldown: bool,
}

/// Column list of every SELECT of keys: the written columns plus `soft_budget_cooldown`.
#[macro_export]
macro_rules! key_columns {
    () => {
        concat!($crate::key_write_columns!(), ", soft_budget_cooldown")
    };
}

/// Columns the full-row INSERT writes (everything but `soft_budget_cooldown`).
#[macro_export]
macro_rules! key_write_columns {
    () => {
        "token, key_name, key_alias, spend, expires, models, aliases, config, permissions, metadata, user_id, team_id, \
         organization_id, budget_id, max_parallel_requests, tpm_limit, rpm_limit, max_budget, soft_budget, budget_duration, \
         budget_reset_at, blocked, allowed_routes, key_type, model_max_budget, model_spend, rotation_count, last_rotation_at, \
         created_at, created_by, updated_at, updated_by, tpd_limit, budget_limits"
    };
}

const SELECT_BY_TOKEN: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM verification_tokens WHERE token = $1"
);
const SELECT_BY_TEAM: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM verification_tokens WHERE team_id = $1 ORDER BY created_at, token"
);
const SELECT_BY_USER: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM verification_tokens WHERE user_id = $1 ORDER BY created_at, token"
);

const INSERT: &str = concat!(
    "INSERT INTO verification_tokens (",
    key_write_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, \
     $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34)"
);

/// Rewrites every column of the row identified by `$35` (the old token: regenerate changes the PK).
const UPDATE: &str = "UPDATE verification_tokens SET token = $1, key_name = $2, key_alias = $3, spend = $4, expires = $5, \
     models = $6, aliases = $7, config = $8, permissions = $9, metadata = $10, user_id = $11, team_id = $12, \
     organization_id = $13, budget_id = $14, max_parallel_requests = $15, tpm_limit = $16, rpm_limit = $17, \
     max_budget = $18, soft_budget = $19, budget_duration = $20, budget_reset_at = $21, blocked = $22, \
     allowed_routes = $23, key_type = $24, model_max_budget = $25, model_spend = $26, rotation_count = $27, \
     last_rotation_at = $28, created_at = $29, created_by = $30, updated_at = $31, updated_by = $32, tpd_limit = $33, budget_limits = $34 WHERE token = $35";

const DELETE: &str = "DELETE FROM verification_tokens WHERE token = $1";
const CLAIM_SOFT_BUDGET_COOLDOWN: &str = "UPDATE verification_tokens SET soft_budget_cooldown = TRUE \
     WHERE token = $1 AND soft_budget_cooldown = FALSE";
const DELETE_BY_TEAM: &str = "DELETE FROM verification_tokens WHERE team_id = $1 RETURNING token";
const DELETE_BY_TEAM_AND_USER: &str =
    "DELETE FROM verification_tokens WHERE team_id = $1 AND user_id = $2 RETURNING token";
const DELETE_BY_USER: &str = "DELETE FROM verification_tokens WHERE user_id = $1 RETURNING token";

pub async fn get(h: &mut Handle, token: &str) -> Result<Option<KeyRow>> {
    on_conn!(h, c => sqlx::query_as::<_, KeyRow>(SELECT_BY_TOKEN).bind(token).fetch_optional(c).await)
}

/// Compare-and-set of the key's soft-budget cooldown: true for exactly one caller per period,
/// whatever the number of instances sharing the database.
pub async fn claim_soft_budget_cooldown(h: &mut Handle, token: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(CLAIM_SOFT_BUDGET_COOLDOWN).bind(token).execute(c).await.map(|r| r.rows_affected() == 1))
}

pub async fn list_by_team(h: &mut Handle, team_id: &str) -> Result<Vec<KeyRow>> {
    on_conn!(h, c => sqlx::query_as::<_, KeyRow>(SELECT_BY_TEAM).bind(team_id).fetch_all(c).await)
}

pub async fn list_by_user(h: &mut Handle, user_id: &str) -> Result<Vec<KeyRow>> {
    on_conn!(h, c => sqlx::query_as::<_, KeyRow>(SELECT_BY_USER).bind(user_id).fetch_all(c).await)
}

macro_rules! bind_all {
    ($q:expr, $k:expr) => {
        $q.bind(&$k.token)
            .bind(&$k.key_name)
            .bind(&$k.key_alias)
            .bind($k.spend)
            .bind($k.expires)
            .bind(&$k.models)
            .bind(&$k.aliases)
            .bind(&$k.config)
            .bind(&$k.permissions)
            .bind(&$k.metadata)
            .bind(&$k.user_id)
            .bind(&$k.team_id)
            .bind(&$k.organization_id)
            .bind(&$k.budget_id)
            .bind($k.max_parallel_requests)
            .bind($k.tpm_limit)
            .bind($k.rpm_limit)
            .bind($k.max_budget)
            .bind($k.soft_budget)
            .bind(&$k.budget_duration)
            .bind($k.budget_reset_at)
            .bind($k.blocked)
            .bind(&$k.allowed_routes)
            .bind(&$k.key_type)
            .bind(&$k.model_max_budget)
            .bind(&$k.model_spend)
            .bind($k.rotation_count)
            .bind($k.last_rotation_at)
            .bind($k.created_at)
            .bind(&$k.created_by)
            .bind($k.updated_at)
            .bind(&$k.updated_by)
            .bind($k.tpd_limit)
            .bind(&$k.budget_limits)
    };
}

pub async fn insert(h: &mut Handle, k: &KeyRow) -> Result<()> {
    on_conn!(h, c => bind_all!(sqlx::query(INSERT), k).execute(c).await.map(|_| ()))
}

/// Writes every column of `k` over the row whose token is `old_token`.
pub async fn update(h: &mut Handle, old_token: &str, k: &KeyRow) -> Result<bool> {
    on_conn!(h, c => bind_all!(sqlx::query(UPDATE), k).bind(old_token).execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, token: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(token).execute(c).await.map(|r| r.rows_affected() > 0))
}

/// Deletes every key of a team; returns the deleted tokens (for cache eviction).
pub async fn delete_by_team(h: &mut Handle, team_id: &str) -> Result<Vec<String>> {
    on_conn!(h, c => sqlx::query_scalar::<_, String>(DELETE_BY_TEAM).bind(team_id).fetch_all(c).await)
}

/// Deletes a member's keys for one team (member removal); returns the deleted tokens.
pub async fn delete_by_team_and_user(
    h: &mut Handle,
    team_id: &str,
    user_id: &str,
) -> Result<Vec<String>> {
    on_conn!(h, c => sqlx::query_scalar::<_, String>(DELETE_BY_TEAM_AND_USER).bind(team_id).bind(user_id).fetch_all(c).await)
}

/// Deletes every key owned by a user; returns the deleted tokens.
pub async fn delete_by_user(h: &mut Handle, user_id: &str) -> Result<Vec<String>> {
    on_conn!(h, c => sqlx::query_scalar::<_, String>(DELETE_BY_USER).bind(user_id).fetch_all(c).await)
}

const SELECT_BY_ALIAS: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM verification_tokens WHERE key_alias = $1 ORDER BY created_at, token"
);

/// Keys carrying this alias (aliases are not unique), oldest first.
pub async fn find_by_alias(h: &mut Handle, alias: &str) -> Result<Vec<KeyRow>> {
    on_conn!(h, c => sqlx::query_as::<_, KeyRow>(SELECT_BY_ALIAS).bind(alias).fetch_all(c).await)
}

/// Filter for [`list`]; every field is optional and they combine with AND.
#[derive(Debug, Default, Clone)]
pub struct KeyFilter {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub key_alias: Option<String>,
}

/// Oldest first (stable pages); returns the page and the total count of matching keys.
pub async fn list(
    h: &mut Handle,
    f: &KeyFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<KeyRow>, i64)> {
    fn push_where<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, f: &KeyFilter)
    where
        for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        qb.push(" WHERE 1=1");
        for (col, v) in [
            ("user_id", &f.user_id),
            ("team_id", &f.team_id),
            ("key_alias", &f.key_alias),
        ] {
            if let Some(v) = v {
                qb.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", key_columns!(), " FROM verification_tokens"));
        push_where(&mut qb, f);
        qb.push(" ORDER BY created_at, token LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows = qb.build_query_as::<KeyRow>().fetch_all(&mut *c).await?;
        let mut qb = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM verification_tokens");
        push_where(&mut qb, f);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *c).await?;
        Ok((rows, total))
    })
}

impl KeyRow {
    /// A key row with LiteLLM's column defaults for the stored token `token` (sha256 hex).
    pub fn new(token: String, now: DateTime<Utc>) -> KeyRow {
        let empty = || Json(Value::Object(Default::default()));
        KeyRow {
            token,
            key_name: None,
            key_alias: None,
            spend: 0,
            expires: None,
            models: Json(vec![]),
            aliases: empty(),
            config: empty(),
            permissions: empty(),
            metadata: empty(),
            user_id: None,
            team_id: None,
            organization_id: None,
            budget_id: None,
            max_parallel_requests: None,
            tpm_limit: None,
            rpm_limit: None,
            max_budget: None,
            soft_budget: None,
            budget_duration: None,
            budget_reset_at: None,
            blocked: None,
            allowed_routes: Json(vec![]),
            key_type: None,
            model_max_budget: empty(),
            model_spend: empty(),
            rotation_count: 0,
            last_rotation_at: None,
            created_at: now,
            created_by: None,
            updated_at: now,
            updated_by: None,
            tpd_limit: None,
            budget_limits: None,
            soft_budget_cooldown: false,
        }
    }
}
