//! `model_table` (LiteLLM_ModelTable): one row of model aliases per team, linked by `teams.model_id`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result};
use crate::on_conn;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelTableRow {
    pub id: i64,
    pub aliases: Json<Value>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const SELECT_ONE: &str = "SELECT id, aliases, created_at, created_by, updated_at, updated_by FROM model_table WHERE id = $1";
const INSERT: &str = "INSERT INTO model_table (aliases, created_at, created_by, updated_at, updated_by) \
     VALUES ($1, $2, $3, $2, $3) RETURNING id";
const UPDATE: &str =
    "UPDATE model_table SET aliases = $2, updated_at = $3, updated_by = $4 WHERE id = $1";
const DELETE: &str = "DELETE FROM model_table WHERE id = $1";

pub async fn get(h: &mut Handle, id: i64) -> Result<Option<ModelTableRow>> {
    on_conn!(h, c => sqlx::query_as::<_, ModelTableRow>(SELECT_ONE).bind(id).fetch_optional(c).await)
}

/// Inserts an alias row and returns its id.
pub async fn insert(h: &mut Handle, aliases: &Value, by: &str, now: DateTime<Utc>) -> Result<i64> {
    on_conn!(h, c => sqlx::query_scalar::<_, i64>(INSERT).bind(Json(aliases)).bind(now).bind(by).fetch_one(c).await)
}

pub async fn update(
    h: &mut Handle,
    id: i64,
    aliases: &Value,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    on_conn!(h, c => sqlx::query(UPDATE).bind(id).bind(Json(aliases)).bind(now).bind(by).execute(c).await.map(|r| r.rows_affected() > 0))
}

pub async fn delete(h: &mut Handle, id: i64) -> Result<bool> {
    on_conn!(h, c => sqlx::query(DELETE).bind(id).execute(c).await.map(|r| r.rows_affected() > 0))
}
