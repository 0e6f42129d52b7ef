//! Spend read routes (reference §5.27; LiteLLM `spend_management_endpoints.py`), proxy admins and
//! proxy admin viewers only (`Gate::Admin`, GET):
//! - `GET /spend/logs` — spend log rows, newest first, filtered by `api_key` (raw `sk-` key or
//!   its hash), `user_id`, `team_id`, `request_id`, `start_date`/`end_date` (`YYYY-MM-DD`, whole
//!   UTC days, both inclusive; or RFC 3339 instants, both inclusive). Always bounded: `page`
//!   (default 1) and `page_size` (default and max 1000); LiteLLM returns every row, unbounded.
//!   When both dates are given and `summarize` is not false (LiteLLM's default), the answer is
//!   LiteLLM's per-day summary instead (see [`summary_json`]); its end day is inclusive (LiteLLM
//!   cuts it at midnight). Invalid dates are a 400 (LiteLLM answers 500).
//! - `GET /global/spend/teams` — spend of the last 30 UTC days (today included) per team:
//!   `{"daily_spend": [{"date": "YYYY-MM-DD", "<team label>": usd, …}], "teams": [labels…],
//!   "total_spend_per_team": [{"team_id", "team_alias", "total_spend"}]}` where a team's label
//!   is its alias, else its id, and logs without a team count as "Unassigned" (team_id null).
//!   `teams` and `total_spend_per_team` are ordered by spend, highest first. Deviations: amounts
//!   are exact (LiteLLM rounds to cents) and every team is listed (LiteLLM keeps the top 10).
//!
//! Invariant: money is summed in integer nanos and converted to dollars only when rendered.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use purser_core::keys::token_of;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::{PagedQuery, QueryBool};
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::paging::{PageRules, Paged};
use crate::service::views::{ts, usd};
use crate::store::spend::{self, LogFilter, SpendLogRow};

/// Most rows one `/spend/logs` call returns.
pub const MAX_PAGE_SIZE: i64 = 1000;
/// Days covered by `/global/spend/teams` (LiteLLM: `CURRENT_DATE - INTERVAL '30 days'`).
const GLOBAL_DAYS: i64 = 30;
const UNASSIGNED: &str = "Unassigned";

pub fn routes() -> Vec<Route> {
    vec![
        Route::get(
            "/spend/logs",
            Gate::Admin,
            "Budget & Spend Tracking",
            "View spend logs (filter by api_key, user_id, team_id, request_id, start_date, end_date)",
            spend_logs,
        ),
        Route::get(
            "/global/spend/teams",
            Gate::Admin,
            "Budget & Spend Tracking",
            "Spend per team over the last 30 days",
            global_spend_teams,
        ),
    ]
}

#[derive(Debug, Deserialize)]
pub struct SpendLogsQuery {
    api_key: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    request_id: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    page: Option<i64>,
    page_size: Option<i64>,
    summarize: Option<QueryBool>,
}

impl Paged for SpendLogsQuery {
    const RULES: PageRules = PageRules::between("page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.page_size)
    }
}

pub async fn spend_logs(
    State(state): State<AppState>,
    PagedQuery(q, paging): PagedQuery<SpendLogsQuery>,
) -> Result<Json<Value>> {
    let (page, page_size) = (paging.number, paging.size);
    let summarize = QueryBool::or(q.summarize, true);
    let start = parse_bound("start_date", q.start_date.as_deref(), false)?;
    let end = parse_bound("end_date", q.end_date.as_deref(), true)?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            "start_date must not be after end_date",
        )
        .with_param("start_date"));
    }
    let filter = LogFilter {
        api_key: non_empty(q.api_key).map(|k| token_of(&k)),
        user_id: non_empty(q.user_id),
        team_id: non_empty(q.team_id),
        request_id: non_empty(q.request_id),
        start,
        end,
    };
    // No stored value can hold NUL (PostgreSQL text refuses it): answer "no match" without
    // sending a query the database would reject.
    let has_nul = [
        &filter.api_key,
        &filter.user_id,
        &filter.team_id,
        &filter.request_id,
    ]
    .iter()
    .any(|v| v.as_deref().is_some_and(|s| s.contains('\0')));
    if has_nul {
        return Ok(Json(json!([])));
    }
    let mut h = state.db.conn().await?;
    if summarize && let (Some(_), Some(end)) = (start, end) {
        let rows = spend::summarize_logs(&mut h, &filter).await?;
        let last_day = (end - Duration::microseconds(1)).date_naive();
        return Ok(Json(summary_json(&rows, last_day)));
    }
    // Saturating: a huge page yields an empty page, never an overflow.
    let offset = (page - 1).saturating_mul(page_size);
    let rows = spend::list_logs(&mut h, &filter, page_size, offset).await?;
    Ok(Json(Value::Array(
        rows.iter().map(spend_log_json).collect(),
    )))
}

pub async fn global_spend_teams(State(state): State<AppState>) -> Result<Json<Value>> {
    let today = Utc.from_utc_datetime(&Utc::now().date_naive().and_time(NaiveTime::MIN));
    let since = today - Duration::days(GLOBAL_DAYS);
    let mut h = state.db.conn().await?;
    let rows = spend::team_daily_spend(&mut h, since).await?;
    Ok(Json(global_spend_json(&rows)))
}

/// LiteLLM's `summarize` view: one object per day with data, `{"startTime": "YYYY-MM-DD",
/// "spend": total, "<api_key>": spend, "users": {user: spend}, "models": {model: spend}}`
/// (a log without user counts under "null", as Python renders a `None` key), followed by zero
/// entries for the days after the last one with data up to `last_day`.
fn summary_json(rows: &[spend::LogDaySpend], last_day: NaiveDate) -> Value {
    // day → (total, per key, per user, per model), in day order.
    type Sums = (
        i64,
        Vec<(String, i64)>,
        Vec<(String, i64)>,
        Vec<(String, i64)>,
    );
    fn add(v: &mut Vec<(String, i64)>, k: &str, n: i64) {
        match v.iter_mut().find(|(x, _)| x == k) {
            Some((_, m)) => *m = m.saturating_add(n),
            None => v.push((k.to_string(), n)),
        }
    }
    let mut days: Vec<(String, Sums)> = Vec::new();
    for r in rows {
        if days.last().is_none_or(|(d, _)| *d != r.day) {
            days.push((r.day.clone(), (0, vec![], vec![], vec![])));
        }
        if let Some((_, s)) = days.last_mut() {
            s.0 = s.0.saturating_add(r.spend);
            add(&mut s.1, &r.api_key, r.spend);
            add(&mut s.2, r.user_id.as_deref().unwrap_or("null"), r.spend);
            add(&mut s.3, &r.model, r.spend);
        }
    }
    let obj = |v: Vec<(String, i64)>| -> Value {
        Value::Object(v.into_iter().map(|(k, n)| (k, usd(n))).collect())
    };
    let final_day = days
        .last()
        .and_then(|(d, _)| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let mut out: Vec<Value> = days
        .into_iter()
        .map(|(day, (total, keys, users, models))| {
            let mut m = Map::new();
            for (k, n) in keys {
                m.insert(k, usd(n));
            }
            m.insert("users".into(), obj(users));
            m.insert("models".into(), obj(models));
            m.insert("spend".into(), usd(total));
            m.insert("startTime".into(), Value::String(day));
            Value::Object(m)
        })
        .collect();
    if let Some(mut d) = final_day {
        // Bounded by the request's date range; capped so a far end_date stays cheap.
        while let Some(next) = d.succ_opt() {
            if next > last_day || out.len() >= 10_000 {
                break;
            }
            out.push(json!({"startTime": next.format("%Y-%m-%d").to_string(), "spend": 0.0, "users": {}, "models": {}}));
            d = next;
        }
    }
    Value::Array(out)
}

/// One team's spend over the window and how it is labelled.
struct TeamTotal {
    alias: Option<String>,
    label: String,
    nanos: i64,
}

/// Builds the `/global/spend/teams` body from (team, day) sums.
fn global_spend_json(rows: &[spend::TeamDaySpend]) -> Value {
    let label = |r: &spend::TeamDaySpend| -> String {
        r.team_alias
            .clone()
            .or_else(|| r.team_id.clone())
            .unwrap_or_else(|| UNASSIGNED.to_string())
    };
    // day → label → nanos, in day order (rows arrive ordered by day).
    let mut days: Vec<(String, Vec<(String, i64)>)> = Vec::new();
    let mut totals: HashMap<Option<String>, TeamTotal> = HashMap::new();
    for r in rows {
        let l = label(r);
        if days.last().is_none_or(|(d, _)| *d != r.day) {
            days.push((r.day.clone(), Vec::new()));
        }
        if let Some((_, per)) = days.last_mut() {
            match per.iter_mut().find(|(x, _)| *x == l) {
                // Two teams sharing an alias share a label: their spend adds up.
                Some((_, n)) => *n = n.saturating_add(r.spend),
                None => per.push((l.clone(), r.spend)),
            }
        }
        let t = totals
            .entry(r.team_id.clone())
            .or_insert_with(|| TeamTotal {
                alias: r.team_alias.clone(),
                label: l,
                nanos: 0,
            });
        t.nanos = t.nanos.saturating_add(r.spend);
    }
    let daily: Vec<Value> = days
        .into_iter()
        .map(|(day, per)| {
            let mut m = Map::new();
            m.insert("date".into(), Value::String(day));
            for (l, n) in per {
                m.insert(l, usd(n));
            }
            Value::Object(m)
        })
        .collect();
    let mut totals: Vec<(Option<String>, TeamTotal)> = totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.nanos.cmp(&a.1.nanos).then_with(|| a.0.cmp(&b.0)));
    let mut labels: Vec<String> = Vec::new();
    for (_, t) in &totals {
        if !labels.contains(&t.label) {
            labels.push(t.label.clone());
        }
    }
    let per_team: Vec<Value> = totals
        .into_iter()
        .map(|(id, t)| json!({"team_id": id, "team_alias": t.alias, "total_spend": usd(t.nanos)}))
        .collect();
    json!({"daily_spend": daily, "teams": labels, "total_spend_per_team": per_team})
}

/// A spend log row with LiteLLM's field names (`startTime`, `endTime`, `user`).
pub fn spend_log_json(r: &SpendLogRow) -> Value {
    json!({
        "request_id": r.request_id,
        "call_type": r.call_type,
        "api_key": r.api_key,
        "spend": usd(r.spend),
        "total_tokens": r.total_tokens,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "startTime": ts(r.start_time),
        "endTime": ts(r.end_time),
        "model": r.model,
        "model_id": r.model_id,
        "model_group": r.model_group,
        "custom_llm_provider": r.custom_llm_provider,
        "api_base": r.api_base,
        "user": r.user_id,
        "team_id": r.team_id,
        "end_user": r.end_user,
        "status": r.status,
        "metadata": r.metadata.0,
    })
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Parses a date bound. `YYYY-MM-DD` covers the whole UTC day (start: its midnight; end: the
/// next midnight, exclusive); an RFC 3339 instant is inclusive (end: one microsecond later,
/// the stored precision). Returns the bound for `start_time >= start AND start_time < end`.
fn parse_bound(
    field: &str,
    raw: Option<&str>,
    is_end: bool,
) -> Result<Option<DateTime<Utc>>, Error> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        let shown: String = raw.chars().take(64).collect();
        Error::proxy(
            StatusCode::BAD_REQUEST,
            "bad_request_error",
            format!("Invalid {field}='{shown}'. Use YYYY-MM-DD or an RFC 3339 timestamp."),
        )
        .with_param(field)
    };
    if raw.len() == 10 {
        let d = NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| bad())?;
        let d = if is_end {
            d.succ_opt().ok_or_else(bad)?
        } else {
            d
        };
        return Ok(Some(Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN))));
    }
    let t = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    Ok(Some(if is_end {
        t.checked_add_signed(Duration::microseconds(1))
            .ok_or_else(bad)?
    } else {
        t
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(team: Option<&str>, alias: Option<&str>, d: &str, spend: i64) -> spend::TeamDaySpend {
        spend::TeamDaySpend {
            team_id: team.map(String::from),
            team_alias: alias.map(String::from),
            day: d.into(),
            spend,
        }
    }

    #[test]
    fn bounds() {
        let s = parse_bound("start_date", Some("2026-11-27"), false).unwrap();
        assert_eq!(s.unwrap().to_rfc3339(), "2026-11-27T00:00:00+00:00");
        let e = parse_bound("end_date", Some("2026-11-27"), true).unwrap();
        assert_eq!(e.unwrap().to_rfc3339(), "2026-11-28T00:00:00+00:00");
        let e = parse_bound("end_date", Some("2026-11-27T10:00:00+02:00"), true).unwrap();
        assert_eq!(e.unwrap().to_rfc3339(), "2026-11-27T08:00:00.000001+00:00");
        assert_eq!(parse_bound("end_date", Some(""), true).unwrap(), None);
        for bad in [
            "2026-13-01",
            "27/11/2026",
            "2026-11-2x",
            "yesterday",
            "🙂🙂🙂🙂🙂",
            "+262143-12-31",
        ] {
            assert!(
                parse_bound("start_date", Some(bad), false).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn global_shape_sums_exactly() {
        let rows = vec![
            day(Some("t1"), Some("alpha"), "2026-11-26", 100_000_001),
            day(None, None, "2026-11-26", 5),
            day(Some("t1"), Some("alpha"), "2026-11-27", 200_000_002),
            day(Some("t2"), None, "2026-11-27", 1_000_000_000),
        ];
        let v = global_spend_json(&rows);
        assert_eq!(v["daily_spend"][0]["date"], "2026-11-26");
        assert_eq!(v["daily_spend"][0]["alpha"], 0.100000001);
        assert_eq!(v["daily_spend"][0]["Unassigned"], 0.000000005);
        assert_eq!(v["daily_spend"][1]["t2"], 1.0);
        assert_eq!(v["teams"], json!(["t2", "alpha", "Unassigned"]));
        assert_eq!(v["total_spend_per_team"][0]["team_id"], "t2");
        assert_eq!(v["total_spend_per_team"][1]["total_spend"], 0.300000003);
        assert_eq!(v["total_spend_per_team"][1]["team_alias"], "alpha");
        assert_eq!(v["total_spend_per_team"][2]["team_id"], Value::Null);
    }
}
