//! The spend forecast of a team or key (`spend_forecast` in `/team/info` and `/key/info`): its
//! burn rate over the last day of spend logs (or its life, if younger) and when its budget runs
//! out at that rate, before or after its next reset. One indexed aggregate per answer; the rules
//! (and the refusal to guess from thin data) are `purser_core::budget::forecast`.

use chrono::{DateTime, Utc};
use purser_core::budget::{FORECAST_WINDOW_SECS, ForecastInput, ForecastStatus, forecast};
use purser_core::money::Nanos;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::service::spend::SpendScope;
use crate::store::{self, Handle, spend::SpendColumn};

/// What is forecast: the budget's owner, its cap and period, and its current spend.
pub struct Subject<'a> {
    pub column: SpendColumn,
    pub id: &'a str,
    pub scope: SpendScope,
    pub created_at: DateTime<Utc>,
    /// The stored spend (the ledger's, with settled calls not yet written, wins).
    pub spend: i64,
    pub max_budget: Option<i64>,
    pub budget_reset_at: Option<DateTime<Utc>>,
}

/// The `spend_forecast` object.
pub async fn spend_forecast(
    state: &AppState,
    h: &mut Handle,
    s: Subject<'_>,
) -> store::Result<Value> {
    let now = store::now();
    let age = (now - s.created_at).num_seconds().max(0);
    let observed = age.min(FORECAST_WINDOW_SECS);
    // A younger budget is observed from its creation exactly (not from a rounded second).
    let since = if age < FORECAST_WINDOW_SECS {
        s.created_at
    } else {
        now - chrono::Duration::seconds(FORECAST_WINDOW_SECS)
    };
    let (calls, window_spend) = store::spend::window_activity(h, s.column, s.id, since).await?;
    let spend = state.ledger.spend(&s.scope).unwrap_or(s.spend);
    let f = forecast(&ForecastInput {
        window_spend,
        window_calls: calls.max(0) as u64,
        observed_secs: observed,
        spend,
        max_budget: s.max_budget,
        reset_in_secs: s.budget_reset_at.map(|r| (r - now).num_seconds()),
    });
    let usd = |n: i64| Nanos(n).to_usd();
    let exhausted_at = f
        .secs_until_exhausted
        .filter(|_| f.status == ForecastStatus::Projected)
        .map(|secs| now + chrono::Duration::seconds(secs));
    Ok(json!({
        "status": f.status.as_str(),
        "reason": f.reason,
        "window_hours": observed as f64 / 3600.0,
        "window_calls": calls,
        "window_spend": usd(window_spend),
        "burn_rate_per_hour": f.burn_rate_per_hour.map(|r| r / 1e9),
        "spend": usd(spend),
        "max_budget": s.max_budget.map(usd),
        "remaining_budget": s.max_budget.map(|m| usd((m - spend).max(0))),
        "hours_until_exhausted": f.secs_until_exhausted.map(|s| s as f64 / 3600.0),
        "projected_exhausted_at": exhausted_at,
        "budget_reset_at": s.budget_reset_at,
        "exhausts_before_reset": f.exhausts_before_reset,
    }))
}
