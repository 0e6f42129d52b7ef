//! `audit_log` (LiteLLM_AuditLog): one row per management write, inserted in the same
//! transaction as the change it records, so a failed request leaves no audit row either.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub updated_at: DateTime<Utc>,
    pub changed_by: String,
    pub changed_by_api_key: String,
    pub action: String,
    pub table_name: String,
    pub object_id: String,
    pub before_value: Option<Json<Value>>,
    pub updated_values: Option<Json<Value>>,
}

const INSERT: &str = "INSERT INTO audit_log (id, updated_at, changed_by, changed_by_api_key, action, table_name, object_id, \
     before_value, updated_values) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// Filter for [`list`]; every field is optional.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub object_id: Option<String>,
    pub table_name: Option<String>,
    pub action: Option<String>,
    pub changed_by: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

pub async fn insert(h: &mut Handle, a: &AuditRow) -> Result<()> {
    on_conn!(h, c => sqlx::query(INSERT)
        .bind(&a.id).bind(a.updated_at).bind(&a.changed_by).bind(&a.changed_by_api_key).bind(&a.action)
        .bind(&a.table_name).bind(&a.object_id).bind(&a.before_value).bind(&a.updated_values)
        .execute(c).await.map(|_| ()))
}

/// Newest first; returns the page and the total count of matching rows.
pub async fn list(
    h: &mut Handle,
    f: &AuditFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<AuditRow>, i64)> {
    fn push_where<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, f: &AuditFilter)
    where
        for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> DateTime<Utc>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        qb.push(" WHERE 1=1");
        for (col, v) in [
            ("object_id", &f.object_id),
            ("table_name", &f.table_name),
            ("action", &f.action),
            ("changed_by", &f.changed_by),
        ] {
            if let Some(v) = v {
                qb.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(s) = f.start {
            qb.push(" AND updated_at >= ").push_bind(s);
        }
        if let Some(e) = f.end {
            qb.push(" AND updated_at <= ").push_bind(e);
        }
    }
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new("SELECT id, updated_at, changed_by, changed_by_api_key, action, table_name, object_id, before_value, updated_values FROM audit_log");
        push_where(&mut qb, f);
        qb.push(" ORDER BY updated_at DESC, id DESC LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
        let rows = qb.build_query_as::<AuditRow>().fetch_all(&mut *c).await?;
        let mut qb = sqlx::QueryBuilder::new("SELECT COUNT(*) FROM audit_log");
        push_where(&mut qb, f);
        let total: i64 = qb.build_query_scalar().fetch_one(&mut *c).await?;
        Ok((rows, total))
    })
}
