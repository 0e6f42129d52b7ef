//! `teams` (LiteLLM_TeamTable). The roster is not stored here: `members_with_roles` is derived
//! from `team_memberships` (see `members.rs`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TeamRow {
    pub team_id: String,
    pub team_alias: Option<String>,
    pub organization_id: Option<String>,
    pub metadata: Json<Value>,
    pub max_budget: Option<i64>,
    pub soft_budget: Option<i64>,
    pub spend: i64,
    pub models: Json<Vec<String>>,
    pub max_parallel_requests: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpd_limit: Option<i64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub blocked: bool,
    pub model_spend: Json<Value>,
    pub model_max_budget: Json<Value>,
    pub router_settings: Json<Value>,
    pub team_member_permissions: Json<Vec<String>>,
    pub access_group_ids: Json<Vec<String>>,
    pub policies: Json<Vec<String>>,
    pub default_team_member_models: Json<Vec<String>>,
    pub budget_limits: Option<Json<Value>>,
    pub model_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Column list shared by every SELECT of teams.
#[macro_export]
macro_rules! team_columns {
    () => {
        "team_id, team_alias, organization_id, metadata, max_budget, soft_budget, spend, models, max_parallel_requests, \
         tpm_limit, rpm_limit, tpd_limit, budget_duration, budget_reset_at, blocked, model_spend, model_max_budget, \
         router_settings, team_member_permissions, access_group_ids, policies, default_team_member_models, budget_limits, \
         model_id, created_at, updated_at"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", team_columns!(), " FROM teams WHERE team_id = $1");
const INSERT: &str = concat!(
    "INSERT INTO teams (",
    team_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, \
     $24, $25, $26)"
);
const UPDATE: &str = "UPDATE teams SET team_alias = $2, organization_id = $3, metadata = $4, max_budget = $5, \
     soft_budget = $6, spend = $7, models = $8, max_parallel_requests = $9, tpm_limit = $10, rpm_limit = $11, \
     tpd_limit = $12, budget_duration = $13, budget_reset_at = $14, blocked = $15, model_spend = $16, \
     model_max_budget = $17, router_settings = $18, team_member_permissions = $19, access_group_ids = $20, \
     policies = $21, default_team_member_models = $22, budget_limits = $23, model_id = $24, created_at = $25, \
     updated_at = $26 WHERE team_id = $1";
const DELETE: &str = "DELETE FROM teams WHERE team_id = $1";
/// PostgreSQL row lock that serialises roster changes of one team (SQLite: the write lock does).
const LOCK_PG: &str = "SELECT team_id FROM teams WHERE team_id = $1 FOR UPDATE";
const EXISTS: &str = "SELECT team_id FROM teams WHERE team_id = $1";

macro_rules! bind_all {
    ($q:expr, $t:expr) => {
        $q.bind(&$t.team_id)
            .bind(&$t.team_alias)
            .bind(&$t.organization_id)
            .bind(&$t.metadata)
            .bind($t.max_budget)
            .bind($t.soft_budget)
            .bind($t.spend)
            .bind(&$t.models)
            .bind($t.max_parallel_requests)
            .bind($t.tpm_limit)
            .bind($t.rpm_limit)
            .bind($t.tpd_limit)
            .bind(&$t.budget_duration)
            .bind($t.budget_reset_at)
            .bind($t.blocked)
            .bind(&$t.model_spend)
            .bind(&$t.model_max_budget)
            .bind(&$t.router_settings)
            .bind(&$t.team_member_permissions)
            .bind(&$t.access_group_ids)
            .bind(&$t.policies)
            .bind(&$t.default_team_member_models)
            .bind(&$t.budget_limits)
            .bind($t.model_id)
            .bind($t.created_at)
            .bind($t.updated_at)
    };
}

pub async fn get(h: &mut Handle, team_id: &str) -> Result<Option<TeamRow>> {
    on_conn!(h, c => sqlx::query_as::<_, TeamRow>(SELECT_BY_ID).bind(team_id).fetch_optional(c).await)
}

/// Inside a write transaction: locks the team row (PostgreSQL `FOR UPDATE`) and reports whether
/// it exists. On SQLite `BEGIN IMMEDIATE` already serialises writers.
pub async fn lock(h: &mut Handle, team_id: &str) -> Result<bool> {
    let sql = if h.is_postgres() { LOCK_PG } else { EXISTS };
    on_conn!(h, c => sqlx::query_scalar::<_, String>(sql).bind(team_id).fetch_optional(c).await.map(|r| r.is_some()))
}

pub async fn insert(h: &mut Handle, t: &TeamRow) -> Result<()> {
    on_conn!(h, c => bind_all!(sqlx::query(INSERT), t).execute(c).await.map(|_| ()))
}

pub async fn update(h: &mut Handle, t: &TeamRow) -> Result<bool> {
    on_conn!(h, c => bind_all!(sqlx::query(UPDATE), t).execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, team_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(team_id).execute(c).await.map(|r| r.rows_affected() > 0))
}
