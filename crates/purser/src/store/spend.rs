//! `spend_logs` (LiteLLM_SpendLogs) and the batched spend increments of keys, users, teams and
//! memberships. Increments are `col = col + delta`, never read-modify-write, so flushes from
//! several instances add up.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::{Handle, Result, WriteTx};
use crate::on_conn;

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SpendLogRow {
    pub request_id: String,
    pub call_type: String,
    pub api_key: String,
    pub spend: i64,
    pub total_tokens: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub model: String,
    pub model_id: Option<String>,
    pub model_group: Option<String>,
    pub custom_llm_provider: Option<String>,
    pub api_base: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub end_user: Option<String>,
    pub status: String,
    pub metadata: Json<Value>,
}

/// A new `spend_logs.request_id`: a UUIDv7, whose leading 48 bits are the Unix time in
/// milliseconds (and a counter within one). The column is the table's primary key, so its index
/// takes every insert: time-ordered ids append to the index's last leaf page, where random (v4)
/// ids dirtied one scattered page per row — measured 4x the writer's CPU on SQLite's WAL.
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Most rows per multi-row `INSERT` (19 binds each: 9,728 parameters, under SQLite's 32,766 and
/// PostgreSQL's 65,535).
pub const ROWS_PER_INSERT: usize = 512;

/// `rows` cut into parts whose lengths are powers of two (full `max`-row parts first, then the
/// binary digits of the rest: 45 rows → 32 + 8 + 4 + 1). Every part's statement text is then
/// one of log2(max) + 1 texts, all kept prepared: a batch never parses SQL (measured: parsing
/// a fresh statement per partial chunk was a third of the writer's instructions at low load),
/// and the statement cache stays small (one statement per distinct row count would hold up to
/// ~55 MiB of SQLite heap after 1M calls). `max` must be a power of two.
fn pow2_parts<T>(rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    debug_assert!(max.is_power_of_two());
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (part, tail) = rest.split_at(n);
        rest = tail;
        Some(part)
    })
}

const INSERT_LOGS_HEAD: &str = "INSERT INTO spend_logs (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, \
     completion_tokens, start_time, end_time, model, model_id, model_group, custom_llm_provider, api_base, user_id, team_id, \
     end_user, status, metadata) ";

/// Inserts spend log rows with multi-row `INSERT`s of up to [`ROWS_PER_INSERT`] rows
/// ([`pow2_parts`]); a replayed request id is ignored (idempotent flush).
pub async fn insert_logs(h: &mut Handle, rows: &[&SpendLogRow]) -> Result<()> {
    if let crate::store::Conn::Postgres(c) = h.conn() {
        return insert_logs_unnest(c, rows).await;
    }
    for part in pow2_parts(rows, ROWS_PER_INSERT) {
        on_conn!(h, c => {
            let mut qb = sqlx::QueryBuilder::new(INSERT_LOGS_HEAD);
            qb.push_values(part, |mut b, r| {
                b.push_bind(&r.request_id).push_bind(&r.call_type).push_bind(&r.api_key).push_bind(r.spend)
                    .push_bind(r.total_tokens).push_bind(r.prompt_tokens).push_bind(r.completion_tokens)
                    .push_bind(r.start_time).push_bind(r.end_time).push_bind(&r.model).push_bind(&r.model_id)
                    .push_bind(&r.model_group).push_bind(&r.custom_llm_provider).push_bind(&r.api_base)
                    .push_bind(&r.user_id).push_bind(&r.team_id).push_bind(&r.end_user).push_bind(&r.status)
                    .push_bind(&r.metadata);
            });
            qb.push(" ON CONFLICT (request_id) DO NOTHING");
            qb.build()
                .execute(&mut *c)
                .await
                .map(|_| ())
        })?;
    }
    Ok(())
}

/// PostgreSQL: the whole batch in one statement of 19 array parameters (`UNNEST`), one text
/// for any row count: no per-row binds to parse and plan (measured in `purser-bench writer`).
const INSERT_LOGS_UNNEST: &str = "INSERT INTO spend_logs (request_id, call_type, api_key, spend, total_tokens, \
     prompt_tokens, completion_tokens, start_time, end_time, model, model_id, model_group, custom_llm_provider, \
     api_base, user_id, team_id, end_user, status, metadata) \
     SELECT r, ct, k, s, tt, pt, ctk, st, et, m, mi, mg, p, ab, u, t, eu, sts, md::jsonb FROM UNNEST(\
     $1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::timestamptz[], \
     $9::timestamptz[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], \
     $17::text[], $18::text[], $19::text[]) AS v(r, ct, k, s, tt, pt, ctk, st, et, m, mi, mg, p, ab, u, t, eu, sts, md) \
     ON CONFLICT (request_id) DO NOTHING";

async fn insert_logs_unnest(c: &mut sqlx::PgConnection, rows: &[&SpendLogRow]) -> Result<()> {
    fn col<T>(rows: &[&SpendLogRow], f: impl Fn(&SpendLogRow) -> T) -> Vec<T> {
        rows.iter().map(|r| f(r)).collect()
    }
    for part in rows.chunks(4_096) {
        sqlx::query(INSERT_LOGS_UNNEST)
            .bind(col(part, |r| r.request_id.clone()))
            .bind(col(part, |r| r.call_type.clone()))
            .bind(col(part, |r| r.api_key.clone()))
            .bind(col(part, |r| r.spend))
            .bind(col(part, |r| r.total_tokens))
            .bind(col(part, |r| r.prompt_tokens))
            .bind(col(part, |r| r.completion_tokens))
            .bind(col(part, |r| r.start_time))
            .bind(col(part, |r| r.end_time))
            .bind(col(part, |r| r.model.clone()))
            .bind(col(part, |r| r.model_id.clone()))
            .bind(col(part, |r| r.model_group.clone()))
            .bind(col(part, |r| r.custom_llm_provider.clone()))
            .bind(col(part, |r| r.api_base.clone()))
            .bind(col(part, |r| r.user_id.clone()))
            .bind(col(part, |r| r.team_id.clone()))
            .bind(col(part, |r| r.end_user.clone()))
            .bind(col(part, |r| r.status.clone()))
            .bind(col(part, |r| r.metadata.0.to_string()))
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

/// Inserts one spend log row (tests, tools).
pub async fn insert_log(h: &mut Handle, r: &SpendLogRow) -> Result<()> {
    insert_logs(h, &[r]).await
}

/// Most rows per batched increment statement (3 binds each at most), cut by [`pow2_parts`]:
/// with the log inserts, at most 10 + 4 × 10 (+ 4 × 10 row locks on PostgreSQL) prepared
/// statements, inside sqlx's per-connection cache of 100.
const ROWS_PER_INCREMENT: usize = 512;

/// A table whose rows carry a spend column incremented by the spend writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendTable {
    Teams,
    Keys,
    Users,
}

impl SpendTable {
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            SpendTable::Teams => ("teams", "team_id"),
            SpendTable::Keys => ("verification_tokens", "token"),
            SpendTable::Users => ("users", "user_id"),
        }
    }
}

/// Adds `delta` to the spend of each `(id, delta)` row with one statement per part of up to 512
/// rows (`WITH v AS (VALUES …) UPDATE … FROM v`, valid on both backends; parts as for the log
/// inserts, all prepared once). `items` must be sorted
/// by id: on PostgreSQL the rows are locked first in that order (`ORDER BY … FOR UPDATE`), the
/// documented lock order, whatever join order the planner picks for the UPDATE.
pub async fn add_spend(h: &mut WriteTx, table: SpendTable, items: &[(&str, i64)]) -> Result<()> {
    let (name, id) = table.sql();
    for part in pow2_parts(items, ROWS_PER_INCREMENT) {
        if h.is_postgres() {
            on_conn!(h, c => {
                let mut qb = sqlx::QueryBuilder::new(format!("SELECT 1 FROM {name} WHERE {id} IN ("));
                let mut sep = qb.separated(", ");
                for (i, _) in part {
                    sep.push_bind(*i);
                }
                qb.push(format!(") ORDER BY {id} FOR UPDATE"));
                qb.build().execute(&mut *c).await.map(|_| ())
            })?;
        }
        on_conn!(h, c => {
            let mut qb = sqlx::QueryBuilder::new("WITH v(id, d) AS (");
            qb.push_values(part, |mut b, (i, d)| {
                b.push_bind(*i).push_bind(*d);
            });
            qb.push(format!(
                ") UPDATE {name} SET spend = {name}.spend + v.d FROM v WHERE {name}.{id} = v.id"
            ));
            qb.build().execute(&mut *c).await.map(|_| ())
        })?;
    }
    Ok(())
}

/// [`add_spend`] for memberships (`spend` and `total_spend`), keyed `(team_id, user_id)`.
pub async fn add_member_spend(h: &mut WriteTx, items: &[(&str, &str, i64)]) -> Result<()> {
    for part in pow2_parts(items, ROWS_PER_INCREMENT) {
        if h.is_postgres() {
            on_conn!(h, c => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT 1 FROM team_memberships WHERE (team_id, user_id) IN (",
                );
                let mut sep = qb.separated(", ");
                for (t, u, _) in part {
                    sep.push("(").push_bind_unseparated(*t).push_unseparated(", ")
                        .push_bind_unseparated(*u).push_unseparated(")");
                }
                qb.push(") ORDER BY team_id, user_id FOR UPDATE");
                qb.build().execute(&mut *c).await.map(|_| ())
            })?;
        }
        on_conn!(h, c => {
            let mut qb = sqlx::QueryBuilder::new("WITH v(team_id, user_id, d) AS (");
            qb.push_values(part, |mut b, (t, u, d)| {
                b.push_bind(*t).push_bind(*u).push_bind(*d);
            });
            qb.push(
                ") UPDATE team_memberships SET spend = team_memberships.spend + v.d, \
                 total_spend = team_memberships.total_spend + v.d FROM v \
                 WHERE team_memberships.team_id = v.team_id AND team_memberships.user_id = v.user_id",
            );
            qb.build().execute(&mut *c).await.map(|_| ())
        })?;
    }
    Ok(())
}

// ---- Read side (spend routes): filters, listings and per-team aggregates. ----

const LOG_COLUMNS: &str = "request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens, \
     start_time, end_time, model, model_id, model_group, custom_llm_provider, api_base, user_id, team_id, end_user, \
     status, metadata";

/// Filter of [`list_logs`]; every field is optional. Times bound `start_time` (inclusive start,
/// exclusive end).
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub api_key: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub request_id: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
}

fn push_log_filter<DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<DB>, f: &LogFilter)
where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> DateTime<Utc>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    for (col, v) in [
        ("api_key", &f.api_key),
        ("user_id", &f.user_id),
        ("team_id", &f.team_id),
        ("request_id", &f.request_id),
    ] {
        if let Some(v) = v {
            qb.push(format_args!(" AND {col} = ")).push_bind(v.clone());
        }
    }
    if let Some(s) = f.start {
        qb.push(" AND start_time >= ").push_bind(s);
    }
    if let Some(e) = f.end {
        qb.push(" AND start_time < ").push_bind(e);
    }
}

/// Spend logs matching `f`, newest first (ties by request id), one page.
pub async fn list_logs(
    h: &mut Handle,
    f: &LogFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<SpendLogRow>> {
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(format!("SELECT {LOG_COLUMNS} FROM spend_logs WHERE 1=1"));
        push_log_filter(&mut qb, f);
        qb.push(" ORDER BY start_time DESC, request_id DESC LIMIT ").push_bind(limit)
            .push(" OFFSET ").push_bind(offset);
        qb.build_query_as::<SpendLogRow>().fetch_all(&mut *c).await
    })
}

/// Spend summed per UTC day, key, user and model (the `summarize` view of `/spend/logs`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LogDaySpend {
    pub day: String,
    pub api_key: String,
    pub user_id: Option<String>,
    pub model: String,
    pub spend: i64,
}

/// Sums of the logs matching `f` per (day, api_key, user, model), ordered by day. The day is
/// taken as in [`team_daily_spend`].
pub async fn summarize_logs(h: &mut Handle, f: &LogFilter) -> Result<Vec<LogDaySpend>> {
    on_conn!(h, c => {
        let mut qb = sqlx::QueryBuilder::new(
            "SELECT substr(CAST(start_time AS TEXT), 1, 10) AS day, api_key, user_id, model, \
             CAST(SUM(spend) AS BIGINT) AS spend FROM spend_logs WHERE 1=1",
        );
        push_log_filter(&mut qb, f);
        qb.push(" GROUP BY substr(CAST(start_time AS TEXT), 1, 10), api_key, user_id, model ORDER BY day, api_key, user_id, model");
        qb.build_query_as::<LogDaySpend>().fetch_all(&mut *c).await
    })
}

/// Spend of one team (or of logs without a team) on one UTC day.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TeamDaySpend {
    pub team_id: Option<String>,
    pub team_alias: Option<String>,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub spend: i64,
}

/// Per team and UTC day since `since`, ordered by day then team. The day is the first ten
/// characters of the timestamp's text form: RFC 3339 on SQLite, ISO in UTC on PostgreSQL (sqlx
/// sets `TimeZone=UTC` and `DateStyle=ISO` on every connection), so one SQL serves both.
const TEAM_DAILY: &str = "SELECT s.team_id AS team_id, t.team_alias AS team_alias, \
     substr(CAST(s.start_time AS TEXT), 1, 10) AS day, CAST(SUM(s.spend) AS BIGINT) AS spend \
     FROM spend_logs s LEFT JOIN teams t ON t.team_id = s.team_id WHERE s.start_time >= $1 \
     GROUP BY s.team_id, t.team_alias, substr(CAST(s.start_time AS TEXT), 1, 10) \
     ORDER BY day, s.team_id";

pub async fn team_daily_spend(h: &mut Handle, since: DateTime<Utc>) -> Result<Vec<TeamDaySpend>> {
    on_conn!(h, c => sqlx::query_as::<_, TeamDaySpend>(TEAM_DAILY).bind(since).fetch_all(c).await)
}

/// The spend-log column a budget window sums over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendColumn {
    ApiKey,
    Team,
}

impl SpendColumn {
    pub fn name(self) -> &'static str {
        match self {
            SpendColumn::ApiKey => "key",
            SpendColumn::Team => "team",
        }
    }
}

const KEY_WINDOW_SPEND: &str = "SELECT CAST(COALESCE(SUM(spend), 0) AS BIGINT) FROM spend_logs \
     WHERE api_key = $1 AND start_time >= $2";
const TEAM_WINDOW_SPEND: &str = "SELECT CAST(COALESCE(SUM(spend), 0) AS BIGINT) FROM spend_logs \
     WHERE team_id = $1 AND start_time >= $2";

/// Spend logged for a key (hash) or a team since `since` (a budget window's start), through the
/// `(api_key|team_id, start_time)` indexes.
pub async fn window_spend(
    h: &mut Handle,
    column: SpendColumn,
    id: &str,
    since: DateTime<Utc>,
) -> Result<i64> {
    let sql = match column {
        SpendColumn::ApiKey => KEY_WINDOW_SPEND,
        SpendColumn::Team => TEAM_WINDOW_SPEND,
    };
    on_conn!(h, c => sqlx::query_scalar::<_, i64>(sql).bind(id).bind(since).fetch_one(c).await)
}

const KEY_WINDOW_ACTIVITY: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(spend), 0) AS BIGINT) \
     FROM spend_logs WHERE api_key = $1 AND start_time >= $2";
const TEAM_WINDOW_ACTIVITY: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(spend), 0) AS BIGINT) \
     FROM spend_logs WHERE team_id = $1 AND start_time >= $2";

/// Calls and spend logged for a key (hash) or a team since `since` (the spend forecast's
/// window), through the same indexes as [`window_spend`].
pub async fn window_activity(
    h: &mut Handle,
    column: SpendColumn,
    id: &str,
    since: DateTime<Utc>,
) -> Result<(i64, i64)> {
    let sql = match column {
        SpendColumn::ApiKey => KEY_WINDOW_ACTIVITY,
        SpendColumn::Team => TEAM_WINDOW_ACTIVITY,
    };
    on_conn!(h, c => sqlx::query_as::<_, (i64, i64)>(sql).bind(id).bind(since).fetch_one(c).await)
}

#[cfg(test)]
mod tests {
    use super::pow2_parts;

    #[test]
    fn parts_are_powers_of_two_and_cover_the_rows() {
        for n in [0usize, 1, 2, 3, 45, 511, 512, 513, 1500] {
            let rows: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = pow2_parts(&rows, 512).collect();
            assert!(
                parts
                    .iter()
                    .all(|p| p.len().is_power_of_two() && p.len() <= 512)
            );
            assert_eq!(parts.concat(), rows, "order kept, nothing lost ({n})");
            assert!(parts.windows(2).all(|w| w[0].len() >= w[1].len()));
        }
        let lens: Vec<usize> = pow2_parts(&[0; 45], 512).map(<[i32]>::len).collect();
        assert_eq!(lens, [32, 8, 4, 1]);
    }
}
