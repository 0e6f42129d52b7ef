//! `GET /audit`: the audit trail of management writes for proxy admins and proxy admin viewers,
//! newest first, paginated and filterable. Values were masked when they were written.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::PagedQuery;
use super::{Gate, Route};
use crate::app::AppState;
use crate::error::{Error, Result};
use crate::service::paging::{PageRules, Paged};
use crate::service::views;
use crate::store::{self, audit::AuditFilter};

pub fn routes() -> Vec<Route> {
    vec![Route::get(
        "/audit",
        Gate::Admin,
        "audit logging",
        "List audit log entries (newest first)",
        audit_list,
    )]
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    page: Option<i64>,
    page_size: Option<i64>,
    object_id: Option<String>,
    table_name: Option<String>,
    action: Option<String>,
    changed_by: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
}

impl Paged for AuditQuery {
    const RULES: PageRules = PageRules::between("page_size", 10, 100);
    fn paging(&self) -> (Option<i64>, Option<i64>) {
        (self.page, self.page_size)
    }
}

/// RFC 3339, or `YYYY-MM-DD` (start of day for `start_date`, end of day for `end_date`).
fn parse_date(field: &str, s: &str, end_of_day: bool) -> Result<DateTime<Utc>, Error> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let time = if end_of_day {
            NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999).unwrap_or(NaiveTime::MIN)
        } else {
            NaiveTime::MIN
        };
        return Ok(d.and_time(time).and_utc());
    }
    Err(Error::http(
        StatusCode::BAD_REQUEST,
        format!("Invalid {field}={s:?}. Use RFC 3339 (2026-01-31T00:00:00Z) or YYYY-MM-DD."),
    ))
}

pub async fn audit_list(
    State(state): State<AppState>,
    PagedQuery(q, paging): PagedQuery<AuditQuery>,
) -> Result<Json<Value>> {
    let (page, page_size) = (paging.number, paging.size);
    let filter = AuditFilter {
        object_id: q.object_id.clone(),
        table_name: q.table_name.clone(),
        action: q.action.clone(),
        changed_by: q.changed_by.clone(),
        start: q
            .start_date
            .as_deref()
            .map(|s| parse_date("start_date", s, false))
            .transpose()?,
        end: q
            .end_date
            .as_deref()
            .map(|s| parse_date("end_date", s, true))
            .transpose()?,
    };
    let mut h = state.db.conn().await?;
    let (rows, total) =
        store::audit::list(&mut h, &filter, page_size, (page - 1) * page_size).await?;
    let logs: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "updated_at": views::ts(r.updated_at),
                "changed_by": r.changed_by,
                "changed_by_api_key": r.changed_by_api_key,
                "action": r.action,
                "table_name": r.table_name,
                "object_id": r.object_id,
                "before_value": r.before_value.map(|j| j.0),
                "updated_values": r.updated_values.map(|j| j.0),
            })
        })
        .collect();
    Ok(Json(json!({
        "audit_logs": logs,
        "total": total,
        "page": page,
        "page_size": page_size,
        "total_pages": (total + page_size - 1) / page_size,
    })))
}
