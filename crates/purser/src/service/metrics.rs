//! What the request path tells `/metrics`: a call's labels (from its spend-log row and
//! deployment), the budgets it touched, and the gateway state a scrape reads. Invariant: only
//! memory is read (cache entries, ledger counters); nothing here can fail or delay a call.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::AppState;
use crate::metrics::{BudgetState, CallLabels, Snapshot};
use crate::service::spend::SpendScope;
use crate::store::spend::SpendLogRow;
use crate::upstream::Deployment;

/// A budget a call was charged to, watched so its gauges follow the call.
#[derive(Debug, Clone)]
pub struct BudgetWatch {
    pub scope: SpendScope,
    pub alias: String,
    /// Nano-USD.
    pub max: i64,
    pub reset_at: Option<DateTime<Utc>>,
}

/// The labels of a call from its log row and the deployment that answered.
pub fn labels(log: &SpendLogRow, dep: &Deployment) -> CallLabels {
    let meta = |k: &str| {
        log.metadata
            .0
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    CallLabels {
        hashed_api_key: log.api_key.clone(),
        api_key_alias: meta("user_api_key_alias"),
        team: log.team_id.clone().unwrap_or_default(),
        team_alias: meta("user_api_key_team_alias"),
        user: log.user_id.clone().unwrap_or_default(),
        end_user: log.end_user.clone().unwrap_or_default(),
        requested_model: meta("requested_model"),
        model: dep.upstream_model.clone(),
        model_group: dep.model_name.clone(),
        model_id: dep.id.clone(),
        api_provider: dep.provider.clone(),
        api_base: dep.public_api_base().unwrap_or("").to_string(),
    }
}

/// Remembers the capped budgets a settled call was charged to; their gauges are set from the
/// ledger at scrape time, so a call pays one map lookup per budget.
pub fn watch_budgets(state: &AppState, watches: &[BudgetWatch]) {
    for w in watches {
        let (team, id) = match &w.scope {
            SpendScope::Team(id) => (true, id),
            SpendScope::Key(hash) => (false, hash),
            _ => continue,
        };
        state.metrics.watch_budget(
            team,
            id,
            crate::metrics::WatchedBudget {
                alias: w.alias.clone(),
                max: w.max,
                reset_at: w.reset_at,
            },
        );
    }
}

/// Sets the watched budgets' gauges from the ledger (a budget whose counter went idle keeps its
/// last values).
fn budget_gauges(state: &AppState) {
    let now = state.clock.now();
    for ((team, id), w) in state.metrics.watched_budgets() {
        let scope = if team {
            SpendScope::Team(id.clone())
        } else {
            SpendScope::Key(id.clone())
        };
        let Some(spend) = state.ledger.spend(&scope) else {
            continue;
        };
        let b = BudgetState {
            remaining_usd: purser_core::money::Nanos(w.max - spend).to_usd(),
            max_usd: purser_core::money::Nanos(w.max).to_usd(),
            hours_to_reset: w
                .reset_at
                .map(|r| ((r - now).num_seconds().max(0) as f64) / 3600.0),
        };
        if team {
            state.metrics.team_budget(&id, &w.alias, b);
        } else {
            state.metrics.key_budget(&id, &w.alias, b);
        }
    }
}

/// The exposition of `/metrics`, with the gateway's state read now.
pub fn render(state: &AppState) -> String {
    budget_gauges(state);
    let spend = state.ledger.snapshot();
    let n = |k: &str| spend.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (hits, misses) = state.cache.stats();
    let redis = state.cluster.redis.as_ref();
    let mut deployments = Vec::new();
    for name in state.models.names() {
        for d in state.models.deployments(name) {
            deployments.push((
                d.upstream_model.clone(),
                d.id.clone(),
                d.public_api_base().unwrap_or("").to_string(),
                d.provider.clone(),
                d.cooling(),
            ));
        }
    }
    state.metrics.render(&Snapshot {
        spend_queue_depth: n("queued"),
        spend_rows_written: n("rows_written"),
        spend_write_errors: n("write_errors"),
        cache_hits: hits,
        cache_misses: misses,
        counter_backend: if redis.is_some() { "redis" } else { "memory" },
        counter_backend_degraded: redis.is_some_and(|r| !r.up()),
        deployments,
    })
}
