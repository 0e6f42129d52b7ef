//! `users`: internal users (LiteLLM_UserTable). A user's `teams` list is derived from
//! `team_memberships`, never stored here, so it cannot disagree with the roster.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result, WriteTx};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: String,
    pub user_alias: Option<String>,
    pub user_email: Option<String>,
    pub user_role: String,
    pub organization_id: Option<String>,
    pub sso_user_id: Option<String>,
    pub max_budget: Option<i64>,
    pub spend: i64,
    pub models: Json<Vec<String>>,
    pub metadata: Json<Value>,
    pub max_parallel_requests: Option<i64>,
    pub tpm_limit: Option<i64>,
    pub rpm_limit: Option<i64>,
    pub budget_duration: Option<String>,
    pub budget_reset_at: Option<DateTime<Utc>>,
    pub model_max_budget: Json<Value>,
    pub model_spend: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Column list shared by every SELECT of users (also for `QueryBuilder` listings).
#[macro_export]
macro_rules! user_columns {
    () => {
        "user_id, user_alias, user_email, user_role, organization_id, sso_user_id, max_budget, spend, \
     models, metadata, max_parallel_requests, tpm_limit, rpm_limit, budget_duration, budget_reset_at, \
     model_max_budget, model_spend, created_at, updated_at"
    };
}

const SELECT_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE user_id = $1");
const SELECT_BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE lower(user_email) = lower($1) ORDER BY created_at, user_id"
);

const INSERT: &str = "INSERT INTO users (user_id, user_alias, user_email, user_role, organization_id, sso_user_id, max_budget, spend, \
     models, metadata, max_parallel_requests, tpm_limit, rpm_limit, budget_duration, budget_reset_at, \
     model_max_budget, model_spend, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)";

const UPDATE: &str = "UPDATE users SET user_alias = $2, user_email = $3, user_role = $4, organization_id = $5, sso_user_id = $6, \
     max_budget = $7, spend = $8, models = $9, metadata = $10, max_parallel_requests = $11, tpm_limit = $12, rpm_limit = $13, \
     budget_duration = $14, budget_reset_at = $15, model_max_budget = $16, model_spend = $17, updated_at = $18 WHERE user_id = $1";

const DELETE: &str = "DELETE FROM users WHERE user_id = $1";

const TEAMS_OF: &str =
    "SELECT team_id FROM team_memberships WHERE user_id = $1 ORDER BY added_at, team_id";

pub async fn get(h: &mut Handle, user_id: &str) -> Result<Option<UserRow>> {
    on_conn!(h, c => sqlx::query_as::<_, UserRow>(SELECT_BY_ID).bind(user_id).fetch_optional(c).await)
}

/// Inside a write transaction, before any team lock: serialises the writers that look a user up
/// by email and may then create one or take the address (member add, `/user/new`,
/// `/user/update`), so two of them cannot both find the address free. PostgreSQL takes a
/// transaction-scoped advisory lock per lowercased address, in sorted order so two writers never
/// wait on each other; re-taking one in the same transaction is free. On SQLite `BEGIN IMMEDIATE`
/// already serialises writers.
pub async fn lock_emails<'a>(
    h: &mut WriteTx,
    emails: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    if !h.is_postgres() {
        return Ok(());
    }
    let mut keys: Vec<String> = emails.into_iter().map(str::to_lowercase).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        on_conn!(h, c => sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1907))")
            .bind(&key).execute(c).await.map(|_| ()))?;
    }
    Ok(())
}

/// Users whose email matches case-insensitively, oldest first.
pub async fn find_by_email(h: &mut Handle, email: &str) -> Result<Vec<UserRow>> {
    on_conn!(h, c => sqlx::query_as::<_, UserRow>(SELECT_BY_EMAIL).bind(email).fetch_all(c).await)
}

pub async fn insert(h: &mut Handle, u: &UserRow) -> Result<()> {
    on_conn!(h, c => sqlx::query(INSERT)
        .bind(&u.user_id).bind(&u.user_alias).bind(&u.user_email).bind(&u.user_role).bind(&u.organization_id)
        .bind(&u.sso_user_id).bind(u.max_budget).bind(u.spend).bind(&u.models).bind(&u.metadata)
        .bind(u.max_parallel_requests).bind(u.tpm_limit).bind(u.rpm_limit).bind(&u.budget_duration)
        .bind(u.budget_reset_at).bind(&u.model_max_budget).bind(&u.model_spend).bind(u.created_at).bind(u.updated_at)
        .execute(c).await.map(|_| ()))
}

/// Writes every mutable column of `u` (callers read, modify and write inside one transaction).
pub async fn update(h: &mut Handle, u: &UserRow) -> Result<bool> {
    on_conn!(h, c => sqlx::query(UPDATE)
        .bind(&u.user_id).bind(&u.user_alias).bind(&u.user_email).bind(&u.user_role).bind(&u.organization_id)
        .bind(&u.sso_user_id).bind(u.max_budget).bind(u.spend).bind(&u.models).bind(&u.metadata)
        .bind(u.max_parallel_requests).bind(u.tpm_limit).bind(u.rpm_limit).bind(&u.budget_duration)
        .bind(u.budget_reset_at).bind(&u.model_max_budget).bind(&u.model_spend).bind(u.updated_at)
        .execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, user_id: &str) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(user_id).execute(c).await.map(|r| r.rows_affected() > 0))
}

/// Team ids the user belongs to, in join order (the derived `teams` field).
pub async fn teams_of(h: &mut Handle, user_id: &str) -> Result<Vec<String>> {
    on_conn!(h, c => sqlx::query_scalar::<_, String>(TEAMS_OF).bind(user_id).fetch_all(c).await)
}

impl UserRow {
    /// A new user with LiteLLM's defaults (role internal_user, no limits).
    pub fn new(user_id: String, now: DateTime<Utc>) -> UserRow {
        UserRow {
            user_id,
            user_alias: None,
            user_email: None,
            user_role: "internal_user".into(),
            organization_id: None,
            sso_user_id: None,
            max_budget: None,
            spend: 0,
            models: Json(vec![]),
            metadata: Json(Value::Object(Default::default())),
            max_parallel_requests: None,
            tpm_limit: None,
            rpm_limit: None,
            budget_duration: None,
            budget_reset_at: None,
            model_max_budget: Json(Value::Object(Default::default())),
            model_spend: Json(Value::Object(Default::default())),
            created_at: now,
            updated_at: now,
        }
    }
}

/// Filter for [`list`] (LiteLLM `/user/list`); fields combine with AND.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    pub user_ids: Option<Vec<String>>,
    pub role: Option<String>,
    /// Only members of this team.
    pub team: Option<String>,
    /// Case-insensitive substring of the email.
    pub email_contains: Option<String>,
}

/// Oldest first; returns the page and the total count of matching users.
pub async fn list(
    h: &mut Handle,
    f: &UserFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<UserRow>, i64)> {
    fn push_where<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, f: &UserFilter)
    where
        for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        qb.push(" WHERE 1=1");
        if let Some(ids) = &f.user_ids {
            if ids.is_empty() {
                qb.push(" AND 1=0");
            } else {
                qb.push(" AND user_id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
            }
        }
        if let Some(r) = &f.role {
            qb.push(" AND user_role = ").push_bind(r.clone());
        }
        if let Some(t) = &f.team {
            qb.push(" AND user_id IN (SELECT user_id FROM team_memberships WHERE team_id = ")
                .push_bind(t.clone())
                .push(")");
        }
        if let Some(e) = &f.email_contains {
            let pattern = format!(
                "%{}%",
                e.to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            qb.push(" AND lower(user_email) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\'");
        }
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(concat!("SELECT ", user_columns!(), " FROM users"));
        push_where(&mut qb, f);
        qb.push(" ORDER BY created_at, user_id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows = qb.build_query_as::<UserRow>().fetch_all(&mut *c).await?;
        let mut qb = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM users");
        push_where(&mut qb, f);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *c).await?;
        Ok((rows, total))
    })
}
