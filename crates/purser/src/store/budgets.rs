//! `budgets` (LiteLLM_BudgetTable): limit rows linked from team memberships (per-member or the
//! team-default member budget) and keys.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BudgetRow {
    pub budget_id: String,
    pub max_budget: Option<i64>,
    pub soft_budget: Option<i64>,
    pub max_parallel_requests: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub tpd_limit: Option<i64>,
    pub model_max_budget: Option<Json<Value>>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub allowed_models: Json<Vec<String>>,
    pub temp_budget_increase: Option<i64>,
    pub temp_budget_expiry: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const SELECT_ONE: &str = "SELECT budget_id, max_budget, soft_budget, max_parallel_requests, tpm_limit, rpm_limit, \
     tpd_limit, model_max_budget, budget_duration, budget_reset_at, allowed_models, temp_budget_increase, \
     temp_budget_expiry, created_at, created_by, updated_at, updated_by FROM budgets WHERE budget_id = $1";
const INSERT: &str = "INSERT INTO budgets (budget_id, max_budget, soft_budget, max_parallel_requests, tpm_limit, rpm_limit, \
     tpd_limit, model_max_budget, budget_duration, budget_reset_at, allowed_models, temp_budget_increase, \
     temp_budget_expiry, created_at, created_by, updated_at, updated_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
const UPDATE: &str = "UPDATE budgets SET max_budget = $2, soft_budget = $3, max_parallel_requests = $4, tpm_limit = $5, \
     rpm_limit = $6, tpd_limit = $7, model_max_budget = $8, budget_duration = $9, budget_reset_at = $10, \
     allowed_models = $11, temp_budget_increase = $12, temp_budget_expiry = $13, updated_at = $14, updated_by = $15 \
     WHERE budget_id = $1";
const DELETE: &str = "DELETE FROM budgets WHERE budget_id = $1";

pub async fn get(h: &mut Handle, budget_id: &str) -> Result<Option<BudgetRow>> {
    on_conn!(h, c => sqlx::query_as::<_, BudgetRow>(SELECT_ONE).bind(budget_id).fetch_optional(c).await)
}

pub async fn insert(h: &mut Handle, b: &BudgetRow) -> Result<()> {
    on_conn!(h, c => sqlx::query(INSERT)
        .bind(&b.budget_id).bind(b.max_budget).bind(b.soft_budget).bind(b.max_parallel_requests).bind(b.tpm_limit)
        .bind(b.rpm_limit).bind(b.tpd_limit).bind(&b.model_max_budget).bind(&b.budget_duration).bind(b.budget_reset_at)
        .bind(&b.allowed_models).bind(b.temp_budget_increase).bind(b.temp_budget_expiry).bind(b.created_at)
        .bind(&b.created_by).bind(b.updated_at).bind(&b.updated_by)
        .execute(c).await.map(|_| ()))
}

pub async fn update(h: &mut Handle, b: &BudgetRow) -> Result<bool> {
    on_conn!(h, c => sqlx::query(UPDATE)
        .bind(&b.budget_id).bind(b.max_budget).bind(b.soft_budget).bind(b.max_parallel_requests).bind(b.tpm_limit)
        .bind(b.rpm_limit).bind(b.tpd_limit).bind(&b.model_max_budget).bind(&b.budget_duration).bind(b.budget_reset_at)
        .bind(&b.allowed_models).bind(b.temp_budget_increase).bind(b.temp_budget_expiry).bind(b.updated_at)
        .bind(&b.updated_by)
        .execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, budget_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(budget_id).execute(c).await.map(|r| r.rows_affected() > 0))
}

impl BudgetRow {
    /// An empty budget row (no limits) owned by `by`.
    pub fn new(budget_id: String, by: &str, now: DateTime<Utc>) -> BudgetRow {
        BudgetRow {
            budget_id,
            max_budget: None,
            soft_budget: None,
            max_parallel_requests: None,
            tpm_limit: None,
            rpm_limit: None,
            tpd_limit: None,
            model_max_budget: None,
            budget_duration: None,
            budget_reset_at: None,
            allowed_models: Json(vec![]),
            temp_budget_increase: None,
            temp_budget_expiry: None,
            created_at: now,
            created_by: by.to_string(),
            updated_at: now,
            updated_by: by.to_string(),
        }
    }
}

/// How many memberships and keys point at a budget row: a row used by more than one owner (or
/// the team-default member budget) is shared and must be cloned before a per-member change.
const REF_COUNT: &str = "SELECT (SELECT COUNT(*) FROM team_memberships WHERE budget_id = $1) \
     + (SELECT COUNT(*) FROM verification_tokens WHERE budget_id = $1)";

pub async fn ref_count(h: &mut Handle, budget_id: &str) -> Result<i64> {
    on_conn!(h, c => sqlx::query_scalar::<_, i64>(REF_COUNT).bind(budget_id).fetch_one(c).await)
}

impl BudgetRow {
    /// True when any limit is set (LiteLLM: a value counts unless null or an empty list/map).
    pub fn has_limits(&self) -> bool {
        self.max_budget.is_some()
            || self.soft_budget.is_some()
            || self.max_parallel_requests.is_some()
            || self.tpm_limit.is_some()
            || self.rpm_limit.is_some()
            || self.tpd_limit.is_some()
            || self
                .model_max_budget
                .as_ref()
                .is_some_and(|m| !(m.0.is_null() || m.0.as_object().is_some_and(|o| o.is_empty())))
            || self.budget_duration.is_some()
            || !self.allowed_models.0.is_empty()
            || self.temp_budget_increase.is_some()
            || self.temp_budget_expiry.is_some()
    }

    /// Whether two rows carry the same limits (ids, reset instants and authorship aside).
    pub fn same_limits(&self, o: &BudgetRow) -> bool {
        self.max_budget == o.max_budget
            && self.soft_budget == o.soft_budget
            && self.max_parallel_requests == o.max_parallel_requests
            && self.tpm_limit == o.tpm_limit
            && self.rpm_limit == o.rpm_limit
            && self.tpd_limit == o.tpd_limit
            && self.model_max_budget.as_ref().map(|j| &j.0)
                == o.model_max_budget.as_ref().map(|j| &j.0)
            && self.budget_duration == o.budget_duration
            && self.allowed_models.0 == o.allowed_models.0
            && self.temp_budget_increase == o.temp_budget_increase
            && self.temp_budget_expiry == o.temp_budget_expiry
    }
}
